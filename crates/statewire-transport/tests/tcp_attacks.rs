//! Attacks on a `TcpTransport` server from many loopback source addresses: idle and dripping
//! connections must not lock legitimate clients out, and a frame flood must cost only the
//! flooder its connection.
//!
//! The server runs in a thread the way a game loop would: it drains `recv` every iteration and
//! plays the session layer, calling `mark_validated` on a peer whose first frame is `hello`.
//! Attackers bind to 127.0.0.2 and up before connecting (hence socket2). The tests run one at a
//! time so their timings do not disturb each other on a small machine.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use statewire_transport::Transport;
use statewire_transport::tcp::{DisconnectReason, TcpConfig, TcpStats, TcpTransport};

/// Held by each test: they are heavy enough to skew each other's timings.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

const LOCALHOST: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// What the server thread saw.
#[derive(Default)]
struct Seen {
    stats: TcpStats,
    validated: HashMap<SocketAddr, Instant>,
    /// Frames per sender, zero-length ones included.
    frames: HashMap<SocketAddr, u64>,
    /// Non-empty payloads other than `hello`, per sender.
    payloads: HashMap<SocketAddr, Vec<Vec<u8>>>,
    closed: Vec<(SocketAddr, DisconnectReason)>,
}

struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(config: TcpConfig) -> Self {
        let mut server = TcpTransport::listen(LOCALHOST, config).expect("listen");
        let addr = server.local_addr();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; server.max_payload()];
                while !stop.load(Ordering::Relaxed) {
                    let mut got_any = false;
                    let mut seen = seen.lock().expect("lock");
                    // Bounded, though the frame-rate limit ends any flood well before this.
                    for _ in 0..100_000 {
                        let Some(got) = server.recv(&mut buf).expect("server recv") else {
                            break;
                        };
                        got_any = true;
                        *seen.frames.entry(got.from).or_default() += 1;
                        let payload = &buf[..got.len];
                        if payload == b"hello" && !seen.validated.contains_key(&got.from) {
                            // The "handshake": what the session layer does once it completes.
                            server.mark_validated(got.from);
                            seen.validated.insert(got.from, Instant::now());
                            server.send(got.from, b"welcome").expect("send");
                        } else if !payload.is_empty() {
                            seen.payloads
                                .entry(got.from)
                                .or_default()
                                .push(payload.to_vec());
                        }
                    }
                    while let Some(closed) = server.poll_disconnected() {
                        seen.closed.push(closed);
                    }
                    // Accepting is work too: no nap while connections pour in.
                    got_any |= server.stats().accepted != seen.stats.accepted;
                    seen.stats = server.stats();
                    drop(seen);
                    if !got_any {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            })
        };
        Self {
            addr,
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().expect("lock")
    }

    /// Waits up to `secs` for `done` to hold on what the server saw.
    fn wait_for(&self, secs: u64, what: &str, mut done: impl FnMut(&Seen) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if done(&self.seen()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("{what} not within {secs} s: {:?}", self.seen().stats);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // A panic in the server thread fails the test here, unless it is already failing.
            if thread.join().is_err() && !std::thread::panicking() {
                panic!("server thread panicked");
            }
        }
    }
}

/// A connection from `ip` (a loopback address) to `to`, non-blocking once connected.
fn connect_from(ip: Ipv4Addr, to: SocketAddr) -> io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::from((ip, 0)).into())?;
    sock.connect(&to.into())?;
    let stream: TcpStream = sock.into();
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// Attacker number `i` connects from one of 200 addresses, 127.0.0.2 to 127.0.0.201: five per
/// address, well within the per-IP limit, so only the timeouts and eviction can stop them.
fn attacker_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (i % 200) as u8)
}

/// Whether the server closed this (non-blocking) connection.
fn is_closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 16];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    }
}

/// Attack connections that never complete a frame. Every `DRIP_EVERY`th one announces a
/// 60 000-byte frame and then sends one byte of it per drip; the others say nothing.
struct Attack {
    conns: Vec<Option<TcpStream>>,
    to: SocketAddr,
    reconnects: u64,
}

const DRIP_EVERY: usize = 4;

impl Attack {
    fn open(n: usize, to: SocketAddr) -> Self {
        let mut attack = Self {
            conns: (0..n).map(|_| None).collect(),
            to,
            reconnects: 0,
        };
        for i in 0..n {
            attack.conns[i] = Some(attack.connect(i));
            if i % 64 == 63 {
                // Paced, for the reason given at `reopen`.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        attack
    }

    fn connect(&self, i: usize) -> TcpStream {
        let mut stream = connect_from(attacker_ip(i), self.to).expect("attacker connects");
        if i % DRIP_EVERY == 0 {
            // Non-blocking, but 4 bytes always fit a fresh socket's buffer.
            stream.write_all(&60_000u32.to_le_bytes()).expect("header");
        }
        stream
    }

    /// One byte more from every dripper.
    fn drip(&mut self) {
        for conn in self.conns.iter_mut().step_by(DRIP_EVERY).flatten() {
            // A failed write means the server closed it; `reopen` finds out.
            let _ = conn.write(&[0]);
        }
    }

    /// Replaces up to `max` of the connections the server closed, as a persistent attacker
    /// would. Bounded, because reconnecting faster than the server accepts overflows the
    /// kernel's listen backlog, which then drops everyone's connection attempts for a second
    /// or more: a connection-rate flood, a different attack from holding connections.
    fn reopen(&mut self, max: usize) {
        let mut reopened = 0;
        for i in 0..self.conns.len() {
            if reopened == max {
                break;
            }
            let closed = self.conns[i].as_mut().is_none_or(is_closed);
            if closed {
                reopened += 1;
                self.conns[i] = Some(self.connect(i));
                self.reconnects += 1;
            }
        }
    }

    /// How many connections the server has closed.
    fn closed(&mut self) -> usize {
        let mut closed = 0;
        for conn in &mut self.conns {
            closed += usize::from(conn.as_mut().is_none_or(is_closed));
        }
        closed
    }
}

/// A legitimate client from 127.0.0.1: connects, sends `hello`, and waits for `welcome`.
/// Returns the client and how long the join took.
fn join(server: SocketAddr) -> (TcpTransport, Duration) {
    let start = Instant::now();
    let mut client = TcpTransport::connect(server, TcpConfig::default()).expect("client connects");
    client.send(server, b"hello").expect("send hello");
    let mut buf = vec![0u8; client.max_payload()];
    while start.elapsed() < Duration::from_secs(5) {
        match client.recv(&mut buf).expect("client recv") {
            Some(got) if &buf[..got.len] == b"welcome" => return (client, start.elapsed()),
            Some(other) => panic!("unexpected {:?}", &buf[..other.len]),
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    panic!("no welcome within 5 s");
}

#[test]
fn legitimate_client_joins_within_2_s_while_1000_attack_connections_are_held() {
    let _serial = serial();
    const ATTACKERS: usize = 1000;
    let config = TcpConfig::default();
    let max_connections = config.max_connections;
    let server = Server::start(config);

    let attack_started = Instant::now();
    let attack = Arc::new(Mutex::new(Attack::open(ATTACKERS, server.addr)));
    println!(
        "{ATTACKERS} attack connections opened in {:?}",
        attack_started.elapsed()
    );
    // The attacker keeps its connections open: every ~200 ms it drips and reopens the ones the
    // server closed, which then evict others in turn.
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let (attack, stop) = (attack.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                {
                    let mut attack = attack.lock().expect("lock");
                    attack.drip();
                    attack.reopen(100);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    server.wait_for(5, "the server full of attackers", |s| {
        s.stats.accepted >= ATTACKERS as u64
    });
    std::thread::sleep(Duration::from_millis(300));

    let (mut client, joined_in) = join(server.addr);
    let validated_at = server.seen().validated[&client.local_addr()];
    println!(
        "joined in {joined_in:?} (validated by the server {:?} after the connect began) with \
         {ATTACKERS} attack connections opened",
        joined_in.saturating_sub(validated_at.elapsed())
    );
    assert!(
        joined_in < Duration::from_secs(2),
        "joined in {joined_in:?}"
    );

    // Under continued attack, the validated client is not evicted: its frames keep arriving.
    for i in 0..10u8 {
        client.send(server.addr, &[i; 8]).expect("send");
        std::thread::sleep(Duration::from_millis(50));
    }
    let from = client.local_addr();
    server.wait_for(2, "the client's frames", |s| {
        s.payloads.get(&from).is_some_and(|p| p.len() == 10)
    });
    stop.store(true, Ordering::Relaxed);
    attacker.join().expect("attacker thread");

    let seen = server.seen();
    assert_eq!(
        seen.payloads[&from],
        (0..10u8).map(|i| vec![i; 8]).collect::<Vec<_>>()
    );
    assert!(seen.closed.iter().all(|(addr, _)| *addr != from));
    let st = seen.stats;
    println!(
        "attacker reopened {} connections; server stats {st:?}",
        attack.lock().expect("lock").reconnects
    );
    assert_eq!(
        st.rejected_full, 0,
        "the newcomers evicted attackers instead"
    );
    assert!(st.disconnected_evicted >= (ATTACKERS - max_connections) as u64);
}

#[test]
fn handshake_timeout_closes_1000_idle_and_dripping_attack_connections() {
    let _serial = serial();
    const ATTACKERS: usize = 1000;
    let timeout = Duration::from_millis(300);
    let server = Server::start(TcpConfig {
        // Room for every attacker, so only the timeout can close them.
        max_connections: 1100,
        handshake_timeout: timeout,
        ..TcpConfig::default()
    });
    let mut attack = Attack::open(ATTACKERS, server.addr);
    let opened = Instant::now();
    let (mut client, joined_in) = join(server.addr);
    println!("joined in {joined_in:?} among {ATTACKERS} attack connections");

    let deadline = opened + Duration::from_secs(3);
    let mut closed = 0;
    while Instant::now() < deadline {
        attack.drip();
        closed = attack.closed();
        if closed == ATTACKERS {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "all {closed} attack connections closed {:?} after the last one opened",
        opened.elapsed()
    );
    assert_eq!(closed, ATTACKERS, "attack connections the server closed");
    server.wait_for(2, "every timeout counted", |s| {
        s.stats.disconnected_handshake_timeout == ATTACKERS as u64
    });

    // The validated client outlived the timeout several times over and still gets through.
    client.send(server.addr, b"after").expect("send");
    let from = client.local_addr();
    server.wait_for(2, "the client's frame", |s| s.payloads.contains_key(&from));
    let seen = server.seen();
    let st = seen.stats;
    assert_eq!(st.accepted, ATTACKERS as u64 + 1);
    assert_eq!(
        st.disconnected_evicted + st.rejected_full + st.rejected_per_ip,
        0
    );
    assert!(
        seen.closed
            .iter()
            .all(|&(addr, reason)| addr != from && reason == DisconnectReason::HandshakeTimeout)
    );
    assert_eq!(seen.closed.len(), ATTACKERS);
}

#[test]
fn zero_length_frame_flood_disconnects_the_flooder_and_spares_a_validated_peer() {
    let _serial = serial();
    let config = TcpConfig::default();
    let (rate, burst) = (config.max_frames_per_sec, config.frame_burst);
    let server = Server::start(config);
    // The measured attack: 253 idle connections beside the flood.
    let _idle = Attack::open(253, server.addr);
    let (mut good, _) = join(server.addr);

    // The flooder completes the handshake, then sends 0-byte frames as fast as it can.
    let mut flood = connect_from(Ipv4Addr::LOCALHOST, server.addr).expect("connect");
    flood.set_nonblocking(false).expect("blocking");
    let flood_addr = flood.local_addr().expect("addr");
    flood.write_all(b"\x05\0\0\0hello").expect("hello");
    server.wait_for(2, "the flooder's handshake", |s| {
        s.validated.contains_key(&flood_addr)
    });
    let flood_start = Instant::now();
    let flooder = std::thread::spawn(move || {
        let chunk = [0u8; 64 * 1024];
        let mut sent = 0u64;
        // Ends when the server closes the connection; bounded in case it never does.
        while flood_start.elapsed() < Duration::from_secs(10) {
            match flood.write(&chunk) {
                Ok(n) => sent += n as u64 / 4,
                Err(_) => break,
            }
        }
        sent
    });

    // Meanwhile the validated peer keeps sending.
    for i in 0..20u8 {
        good.send(server.addr, &[i; 16]).expect("send");
        std::thread::sleep(Duration::from_millis(10));
    }
    server.wait_for(3, "the flooder's disconnect", |s| {
        s.closed
            .contains(&(flood_addr, DisconnectReason::FrameRateExceeded))
    });
    let cut_after = flood_start.elapsed();
    let frames_sent = flooder.join().expect("flooder thread");
    let from = good.local_addr();
    server.wait_for(2, "the validated peer's frames", |s| {
        s.payloads.get(&from).is_some_and(|p| p.len() == 20)
    });

    let seen = server.seen();
    // The handshake frame plus at most the burst and what the clock adds.
    let delivered = seen.frames[&flood_addr] - 1;
    let allowed = u64::from(burst) + u64::from(rate) * (cut_after.as_millis() as u64 + 200) / 1000;
    println!(
        "flooder wrote ~{frames_sent} zero-length frames, {delivered} were delivered, cut after \
         {cut_after:?}"
    );
    assert!(delivered <= allowed, "{delivered} flood frames delivered");
    assert_eq!(seen.stats.disconnected_frame_rate, 1);
    assert_eq!(
        seen.payloads[&from],
        (0..20u8).map(|i| vec![i; 16]).collect::<Vec<_>>()
    );
    assert!(seen.closed.iter().all(|(addr, _)| *addr != from));
}
