//! A UDP server under a junk flood from 127.0.0.1 still hears its legitimate client.
//!
//! One client sends a small unreliable message every 5 ms for 2 s while attacker threads send
//! random junk and well-formed (padded) connect requests from several source ports for 2.5 s
//! (at 200,000 datagrams a second for the asserted run, flat out for comparison). The server runs as the CLI's `serve` does: `receive` in a loop between
//! 30 Hz `update`s. For comparison, the same run with reads only at the tick (`update` alone)
//! is measured and printed, without an assertion.
//!
//! Run with `cargo test -p statewire --test udp_flood -- --nocapture` to see the figures.
//! Everything binds 127.0.0.1; every loop is bounded in time and count.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use statewire::packet::{Packet, REQUEST_LEN};
use statewire::*;
use statewire_transport::udp::{UdpConfig, UdpStats, UdpTransport};

const KEY: Key = Key::from_bytes([7; 32]);
const UNRELIABLE: ChannelId = ChannelId(1);
const TICK: Duration = Duration::from_millis(33);
const SEND_EVERY: Duration = Duration::from_millis(5);
const SEND_FOR: Duration = Duration::from_secs(2);
const ATTACK_FOR: Duration = Duration::from_millis(2500);
const PORTS_PER_ATTACKER: usize = 4;
/// Bound on one attacker thread's datagrams, whatever its speed.
const MAX_JUNK_PER_ATTACKER: u64 = 10_000_000;
/// Bound on the whole run, from connecting to the last drain.
const WALL_LIMIT: Duration = Duration::from_secs(15);

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// xorshift64*: junk needs no quality, only speed and no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerLoop {
    /// `receive` between ticks, `update` every 33 ms, as `statewire serve` runs.
    Drain,
    /// `update` every 33 ms and nothing in between.
    TickOnly,
}

struct Outcome {
    sent: u32,
    delivered: usize,
    junk: u64,
    junk_secs: f64,
    stats: ServerStats,
    udp: UdpStats,
    recv_buffer: usize,
    updates: u64,
    attackers: usize,
    /// Datagrams the kernel dropped for a full receive buffer during the run, on this whole
    /// machine (`RcvbufErrors` of /proc/net/snmp; None where it cannot be read).
    kernel_drops: Option<u64>,
    /// The client's packets sent, and unreliable messages it dropped unsent for want of
    /// acknowledgements.
    client_packets: u64,
    client_dropped_unacked: u64,
}

/// Linux's count of UDP datagrams dropped because a socket's receive buffer was full.
fn udp_rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let at = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// The attacker: junk (random bytes, 50-200 B) and every 8th datagram a connect request with
/// the right protocol, version and channels, padded to [`REQUEST_LEN`], from several ports.
/// With `pace`, at most that many datagrams a second (checked every 256); without, as fast as
/// the thread can.
fn attack(
    to: SocketAddr,
    seed: u64,
    pace: Option<u64>,
    go: &AtomicBool,
    stop: &AtomicBool,
) -> (u64, Duration) {
    let sockets: Vec<UdpSocket> = (0..PORTS_PER_ATTACKER)
        .map(|_| UdpSocket::bind(local()).expect("bind attacker"))
        .collect();
    for s in &sockets {
        // Never wait long on a full send buffer; a refused send is just not counted.
        s.set_write_timeout(Some(Duration::from_millis(10)))
            .unwrap();
    }
    let config = SessionConfig::default();
    let mut request = Vec::new();
    let mut rng = Rng(seed | 1);
    let mut junk = [0u8; 200];
    let limit = Instant::now() + WALL_LIMIT;
    while !go.load(Ordering::Acquire) {
        if stop.load(Ordering::Acquire) || Instant::now() > limit {
            return (0, Duration::ZERO);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let start = Instant::now();
    let mut sent = 0u64;
    for i in 0..MAX_JUNK_PER_ATTACKER {
        // Checking the clock every datagram would cost a share of the rate.
        if i % 256 == 0 {
            let t = start.elapsed();
            if t >= ATTACK_FOR || stop.load(Ordering::Relaxed) {
                break;
            }
            if let Some(rate) = pace {
                let due = Duration::from_secs_f64(i as f64 / rate as f64);
                if due > t {
                    std::thread::sleep(due - t);
                }
            }
        }
        let socket = &sockets[(i as usize) % sockets.len()];
        let r = rng.next();
        let ok = if i % 8 == 0 {
            request.clear();
            Packet::ConnectRequest {
                protocol: config.protocol_id,
                version: config.version,
                salt: r,
                channels: config.connection.fingerprint(),
            }
            .encode(&mut request);
            assert_eq!(request.len(), REQUEST_LEN);
            socket.send_to(&request, to)
        } else {
            let len = 50 + (r % 151) as usize;
            for chunk in junk[..len].chunks_mut(8) {
                let w = rng.next().to_le_bytes();
                chunk.copy_from_slice(&w[..chunk.len()]);
            }
            socket.send_to(&junk[..len], to)
        };
        if ok.is_ok() {
            sent += 1;
        }
    }
    (sent, start.elapsed())
}

fn run(mode: ServerLoop, recv_buffer_bytes: usize, attackers: usize, pace: Option<u64>) -> Outcome {
    let wall = Instant::now();
    let drops_before = udp_rcvbuf_errors();
    let config = UdpConfig {
        recv_buffer_bytes,
        ..UdpConfig::default()
    };
    let transport = UdpTransport::bind(local(), config).expect("bind server");
    let recv_buffer = transport.recv_buffer_size().expect("SO_RCVBUF");
    let mut server: Server<UdpTransport> =
        Server::new(transport, SessionConfig::default(), KEY).expect("server");
    let addr = server.local_addr();
    let go = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));

    let attacker_count = attackers;
    let attackers: Vec<_> = (0..attackers)
        .map(|k| {
            let (go, stop) = (Arc::clone(&go), Arc::clone(&stop));
            std::thread::spawn(move || attack(addr, 0x5eed + k as u64, pace, &go, &stop))
        })
        .collect();

    let server_stop = Arc::clone(&stop);
    let server_thread = std::thread::spawn(move || {
        let start = Instant::now();
        let mut counters: HashSet<u32> = HashSet::new();
        let mut updates = 0u64;
        let mut next_tick = Duration::ZERO;
        while !server_stop.load(Ordering::Acquire) && start.elapsed() < WALL_LIMIT {
            let now = start.elapsed();
            if now >= next_tick {
                server.update(now).expect("server update");
                updates += 1;
                next_tick += TICK;
                while let Some(ev) = server.poll_event() {
                    if let ServerEvent::Message(_, UNRELIABLE, m) = ev {
                        let n = u32::from_le_bytes(m[..4].try_into().unwrap());
                        counters.insert(n);
                    }
                }
                continue;
            }
            match mode {
                ServerLoop::Drain => {
                    let wait = next_tick - now;
                    if server.receive(now).expect("server receive") == 0 {
                        std::thread::sleep(wait.min(Duration::from_millis(1)));
                    }
                }
                ServerLoop::TickOnly => std::thread::sleep(next_tick - now),
            }
        }
        (server, counters, updates)
    });

    // The client connects before the flood: its handshake shares 127.0.0.1's handshake rate
    // limit with the attacker's connect requests.
    let mut client = Client::new(
        UdpTransport::bind(local(), UdpConfig::default()).expect("bind client"),
        addr,
        SessionConfig::default(),
        Duration::ZERO,
        42,
    )
    .expect("client");
    let start = Instant::now();
    for _ in 0..2000 {
        client.update(start.elapsed()).expect("client update");
        if client.is_connected() || start.elapsed() > Duration::from_secs(5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(client.is_connected(), "{mode:?}: {:?}", client.state());

    go.store(true, Ordering::Release);
    let flood_start = Instant::now();
    let mut sent = 0u32;
    let mut msg = [0u8; 32];
    // Send for 2 s, then keep the session going until the flood is over and a little after,
    // so late acknowledgements and the last tick are in.
    let end = ATTACK_FOR + Duration::from_millis(300);
    for _ in 0..10_000 {
        let t = flood_start.elapsed();
        if t >= end || wall.elapsed() > WALL_LIMIT {
            break;
        }
        if t < SEND_FOR && SEND_EVERY * sent <= t {
            msg[..4].copy_from_slice(&sent.to_le_bytes());
            msg[4..].fill(sent as u8);
            client.send(UNRELIABLE, &msg).expect("client send");
            sent += 1;
        }
        client.update(start.elapsed()).expect("client update");
        while let Some(ev) = client.poll_event() {
            if let ClientEvent::Disconnected(r) = ev {
                panic!("{mode:?}: the client was dropped: {r}");
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Release);
    let client_stats = client.connection_stats().expect("connected");
    let (mut junk_total, mut junk_time) = (0u64, Duration::ZERO);
    for a in attackers {
        let (n, t) = a.join().expect("attacker thread");
        junk_total += n;
        junk_time = junk_time.max(t);
    }
    let (server, counters, updates) = server_thread.join().expect("server thread");
    let delivered = counters.iter().filter(|&&n| n < sent).count();
    Outcome {
        sent,
        delivered,
        junk: junk_total,
        junk_secs: junk_time.as_secs_f64(),
        stats: server.stats(),
        udp: server.transport().stats(),
        recv_buffer,
        updates,
        attackers: attacker_count,
        kernel_drops: udp_rcvbuf_errors().zip(drops_before).map(|(a, b)| a - b),
        client_packets: client_stats.packets_sent,
        client_dropped_unacked: client_stats.dropped_unacked,
    }
}

fn report(label: &str, o: &Outcome) -> f64 {
    let rate = o.junk as f64 / o.junk_secs.max(1e-3);
    let delivery = o.delivered as f64 / f64::from(o.sent.max(1));
    println!(
        "{label}: junk {} datagrams in {:.2} s = {:.0}/s from {} thread(s); delivered \
         {}/{} = {:.1}%; SO_RCVBUF {} B; {} updates",
        o.junk,
        o.junk_secs,
        rate,
        o.attackers,
        o.delivered,
        o.sent,
        delivery * 100.0,
        o.recv_buffer,
        o.updates,
    );
    println!(
        "{label}: server datagrams_received {}, malformed {}, rate_limited {}, unknown_peer {}, \
         unvalidated bytes in {} out {}; udp received {} sent {} would_block {}; kernel \
         receive-buffer drops {:?}; client packets {} dropped_unacked {}",
        o.stats.datagrams_received,
        o.stats.malformed,
        o.stats.rate_limited,
        o.stats.unknown_peer,
        o.stats.unvalidated_bytes_received,
        o.stats.unvalidated_bytes_sent,
        o.udp.received,
        o.udp.sent,
        o.udp.dropped_would_block,
        o.kernel_drops,
        o.client_packets,
        o.client_dropped_unacked,
    );
    delivery
}

/// The runs go one after the other, so they do not compete for the cores.
///
/// Asserted: the drain loop with the default 4 MiB receive buffer against one attacker
/// thread sending 200,000 datagrams a second. Printed for comparison: one attacker thread
/// flat out, two of them, the tick-only loop, and the drain loop with the system's default
/// buffer.
///
/// Why a paced attacker for the assertion: the attacker runs on the server's own two cores.
/// In a debug build a junk datagram costs the sender about 2.5-3.5 us and the server about
/// 1.5-3 us (1.1 us of it the `recvfrom` call), and on this shared 2-vCPU VM both vary by up
/// to 2x from minute to minute. An attacker flat out then sends about as fast as the server
/// can read, and the receive buffer overflows by however much CPU the machine's other work
/// takes from the server (0-16 % of the client's messages lost in runs here): a CPU race the
/// test itself stages, not a property of the server. 200,000 datagrams a second is a flood
/// (about 24 MB/s of junk) that the server can read even in the machine's slow phases.
#[test]
fn legit_client_is_heard_through_a_junk_flood() {
    let default = UdpConfig::default().recv_buffer_bytes;
    let drain = run(ServerLoop::Drain, default, 1, Some(200_000));
    let drain_delivery = report("drain, 4 MiB buffer, 1 attacker at 200k/s", &drain);
    let flat_out = run(ServerLoop::Drain, default, 1, None);
    report("drain, 4 MiB buffer, 1 attacker flat out", &flat_out);
    let two = run(ServerLoop::Drain, default, 2, None);
    report("drain, 4 MiB buffer, 2 attackers", &two);
    let tick = run(ServerLoop::TickOnly, default, 1, Some(200_000));
    report("tick only, 4 MiB buffer, 1 attacker at 200k/s", &tick);
    let small = run(ServerLoop::Drain, 0, 1, Some(200_000));
    report("drain, system default buffer, 1 attacker at 200k/s", &small);
    assert!(drain.sent >= 300, "the client sent only {}", drain.sent);
    assert!(
        drain.junk as f64 / drain.junk_secs.max(1e-3) >= 150_000.0,
        "the attacker sent only {} datagrams in {:.2} s",
        drain.junk,
        drain.junk_secs
    );
    assert!(
        drain_delivery >= 0.95,
        "drain loop delivered {:.1}% of the client's messages",
        drain_delivery * 100.0
    );
}
