//! The same session scenarios over loopback (virtual clock), UDP and TCP (real sockets on
//! 127.0.0.1, real clock). Every loop is bounded in iterations and in wall time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use statewire::packet::{Cookie, Packet};
use statewire::*;
use statewire_core::ClientId;
use statewire_transport::Transport;
use statewire_transport::loopback::{LoopbackConfig, LoopbackNet};
use statewire_transport::netsim::{LinkConfig, NetSim, SimRng};
use statewire_transport::tcp::{TcpConfig, TcpTransport};
use statewire_transport::udp::{UdpConfig, UdpTransport};

type Dyn = Box<dyn Transport>;
const KEY: statewire::Key = statewire::Key::from_bytes([7; 32]);
const RELIABLE: ChannelId = ChannelId(0);
const WALL_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
enum Kind {
    Loopback,
    Udp,
    Tcp,
}

struct Env {
    kind: Kind,
    net: LoopbackNet,
    start: Instant,
    virtual_now: Duration,
}

impl Env {
    fn new(kind: Kind) -> Env {
        Env {
            kind,
            net: LoopbackNet::new(LoopbackConfig {
                max_queued_datagrams: 50_000,
                ..LoopbackConfig::default()
            }),
            start: Instant::now(),
            virtual_now: Duration::ZERO,
        }
    }

    fn local() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    fn server(&self) -> Dyn {
        match self.kind {
            Kind::Loopback => Box::new(self.net.endpoint()),
            Kind::Udp => Box::new(UdpTransport::bind(Self::local(), UdpConfig::default()).unwrap()),
            Kind::Tcp => {
                // Every test client connects from 127.0.0.1: allow them all from one address.
                let config = TcpConfig {
                    max_connections_per_ip: 256,
                    ..TcpConfig::default()
                };
                Box::new(TcpTransport::listen(Self::local(), config).unwrap())
            }
        }
    }

    fn client(&self, server: SocketAddr) -> Dyn {
        match self.kind {
            Kind::Loopback => Box::new(self.net.endpoint()),
            Kind::Udp => Box::new(UdpTransport::bind(Self::local(), UdpConfig::default()).unwrap()),
            Kind::Tcp => Box::new(TcpTransport::connect(server, TcpConfig::default()).unwrap()),
        }
    }

    /// Advances time: 10 ms of virtual time, or a short real sleep.
    fn tick(&mut self) -> Duration {
        match self.kind {
            Kind::Loopback => {
                self.virtual_now += Duration::from_millis(10);
                self.virtual_now
            }
            _ => {
                std::thread::sleep(Duration::from_millis(1));
                self.start.elapsed()
            }
        }
    }

    fn out_of_time(&self) -> bool {
        self.start.elapsed() > WALL_LIMIT
    }
}

fn message(client: usize, seq: usize) -> Vec<u8> {
    let len = 4 + (client * 131 + seq * 977) % 3000;
    (0..len).map(|i| (i ^ client ^ (seq << 3)) as u8).collect()
}

fn many_clients(kind: Kind) {
    let mut env = Env::new(kind);
    let mut server: Server<Dyn, usize> =
        Server::with_user_data(env.server(), SessionConfig::default(), KEY, None).unwrap();
    let addr = server.local_addr();
    // More messages on the virtual clock, where they cost no wall time.
    let (n, per_client) = (
        64,
        if matches!(kind, Kind::Loopback) {
            20
        } else {
            10
        },
    );
    let mut clients: Vec<Client<Dyn>> = (0..n)
        .map(|i| {
            Client::new(
                env.client(addr),
                addr,
                SessionConfig::default(),
                Duration::ZERO,
                100 + i as u64,
            )
            .unwrap()
        })
        .collect();
    let mut ids = vec![None; n];
    let mut at_server: hashbrown::HashMap<ClientId, Vec<Vec<u8>>> = Default::default();
    let mut echoes: Vec<Vec<Vec<u8>>> = vec![Vec::new(); n];
    let mut sent = vec![false; n];
    for _ in 0..20_000 {
        let now = env.tick();
        server.update(now).unwrap();
        while let Some(ev) = server.poll_event() {
            match ev {
                ServerEvent::Connected(id) => {
                    server.set_user_data(id, id.0 as usize);
                }
                ServerEvent::Message(id, ch, msg) => {
                    assert_eq!(ch, RELIABLE, "{kind:?}");
                    server.send(id, ch, &msg).unwrap();
                    at_server.entry(id).or_default().push(msg);
                }
                ServerEvent::Disconnected(id, r) => panic!("{kind:?}: {id} dropped: {r}"),
                _ => {}
            }
        }
        for (i, c) in clients.iter_mut().enumerate() {
            c.update(now).unwrap();
            while let Some(ev) = c.poll_event() {
                match ev {
                    ClientEvent::Connected(id) => ids[i] = Some(id),
                    ClientEvent::Message(_, m) => echoes[i].push(m),
                    ClientEvent::Disconnected(r) => panic!("{kind:?}: client {i} dropped: {r}"),
                    _ => {}
                }
            }
            if c.is_connected() && !sent[i] {
                for s in 0..per_client {
                    c.send(RELIABLE, &message(i, s)).unwrap();
                }
                sent[i] = true;
            }
        }
        if echoes.iter().all(|e| e.len() >= per_client) || env.out_of_time() {
            break;
        }
    }
    assert_eq!(server.client_count(), n, "{kind:?}");
    for i in 0..n {
        let id = ids[i].unwrap_or_else(|| panic!("{kind:?}: client {i} never connected"));
        let expect: Vec<Vec<u8>> = (0..per_client).map(|s| message(i, s)).collect();
        assert_eq!(
            at_server.get(&id),
            Some(&expect),
            "{kind:?}: server side of client {i}"
        );
        assert_eq!(echoes[i], expect, "{kind:?}: echoes of client {i}");
        assert_eq!(server.user_data(id), Some(&(id.0 as usize)));
    }
    // A client hears its own leave at once; the server hears each leave once.
    for c in &mut clients {
        c.disconnect();
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Disconnected(DisconnectReason::Left)),
            "{kind:?}"
        );
    }
    let mut left = 0;
    for _ in 0..2000 {
        let now = env.tick();
        server.update(now).unwrap();
        while let Some(ev) = server.poll_event() {
            match ev {
                // Only a connection-oriented transport can also see the socket close first.
                ServerEvent::Disconnected(_, DisconnectReason::Left) => left += 1,
                ServerEvent::Disconnected(_, DisconnectReason::ConnectionClosed)
                    if matches!(kind, Kind::Tcp) =>
                {
                    left += 1
                }
                other => panic!("{kind:?}: unexpected {other:?}"),
            }
        }
        if left == n || env.out_of_time() {
            break;
        }
    }
    assert_eq!(left, n, "{kind:?}: every leave is seen exactly once");
    assert_eq!(server.client_count(), 0);
}

/// Records every datagram sent through it, so a rogue can replay them.
struct Recorder {
    inner: Dyn,
    log: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl Transport for Recorder {
    fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }
    fn max_payload(&self) -> usize {
        self.inner.max_payload()
    }
    fn send(
        &mut self,
        to: SocketAddr,
        p: &[u8],
    ) -> Result<(), statewire_transport::TransportError> {
        if let Ok(mut log) = self.log.lock() {
            log.push(p.to_vec());
        }
        self.inner.send(to, p)
    }
    fn recv(
        &mut self,
        buf: &mut [u8],
    ) -> Result<Option<statewire_transport::Received>, statewire_transport::TransportError> {
        self.inner.recv(buf)
    }
}

fn rogue_input(kind: Kind) {
    let seed = 11;
    let mut env = Env::new(kind);
    let mut server: Server<Dyn> = Server::new(env.server(), SessionConfig::default(), KEY).unwrap();
    let addr = server.local_addr();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded: Dyn = Box::new(Recorder {
        inner: env.client(addr),
        log: log.clone(),
    });
    let mut good =
        Client::new(recorded, addr, SessionConfig::default(), Duration::ZERO, 1).unwrap();
    let mut rogue = env.client(addr);
    let mut rng = SimRng::new(seed);
    let (mut sent, mut got) = (Vec::new(), Vec::new());
    let mut pkt = Vec::new();
    for step in 0..3000usize {
        let now = env.tick();
        if step < 300 {
            // Random, truncated, oversized and forged datagrams (or frames) from one peer.
            let len = rng.range_u64(0..=1500) as usize;
            let junk: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let _ = rogue.send(addr, &junk);
            pkt.clear();
            // A sealed data packet under a guessed key: kind, sequence number, body, tag.
            pkt.push(0x24);
            pkt.extend_from_slice(&rng.next_u64().to_le_bytes());
            pkt.extend_from_slice(&junk[..len.min(64)]);
            pkt.extend_from_slice(&rng.next_u64().to_le_bytes());
            pkt.extend_from_slice(&rng.next_u64().to_le_bytes());
            let _ = rogue.send(addr, &pkt);
            let _ = rogue.send(addr, &pkt[..pkt.len() / 2]);
            pkt.clear();
            Packet::ChallengeResponse {
                salt: 1,
                cookie: Cookie {
                    expires_ms: u64::MAX,
                    mac: rng.next_u64(),
                },
            }
            .encode(&mut pkt);
            let _ = rogue.send(addr, &pkt);
            // Replays of the good client's own datagrams (handshake and data), from the
            // rogue's address.
            let replays: Vec<Vec<u8>> = log
                .lock()
                .map(|l| {
                    let n = l.len();
                    [0, n / 2, n.saturating_sub(1)]
                        .iter()
                        .filter_map(|&i| l.get(i).cloned())
                        .collect()
                })
                .unwrap_or_default();
            for r in replays {
                let _ = rogue.send(addr, &r);
            }
            let mut sink = [0u8; 2048];
            while let Ok(Some(_)) = rogue.recv(&mut sink) {}
        }
        server.update(now).unwrap();
        while let Some(ev) = server.poll_event() {
            if let ServerEvent::Message(id, ch, m) = ev {
                server.send(id, ch, &m).unwrap();
            }
        }
        good.update(now).unwrap();
        while let Some(ev) = good.poll_event() {
            match ev {
                ClientEvent::Message(_, m) => got.push(m),
                ClientEvent::Disconnected(r) => {
                    panic!("{kind:?} seed {seed}: good client lost: {r}")
                }
                _ => {}
            }
        }
        if good.is_connected() && step % 3 == 0 && sent.len() < 100 {
            let m = message(7, step);
            good.send(RELIABLE, &m).unwrap();
            sent.push(m);
        }
        if sent.len() == 100 && got.len() == 100 || env.out_of_time() {
            break;
        }
    }
    assert_eq!(got, sent, "{kind:?} seed {seed}");
    assert_eq!(sent.len(), 100, "{kind:?} seed {seed}");
    assert_eq!(server.client_count(), 1, "{kind:?} seed {seed}");
    let s = server.stats();
    // Over TCP the transport cuts the rogue off at its first bad frame header; the session
    // layer then sees only what arrived before.
    assert!(
        s.malformed + s.unknown_peer + s.rejected_cookie > 0,
        "{kind:?}: {s:?}"
    );
}

fn amplification(kind: Kind) {
    let seed = 5;
    let mut env = Env::new(kind);
    let mut server: Server<Dyn> = Server::new(env.server(), SessionConfig::default(), KEY).unwrap();
    let addr = server.local_addr();
    let mut rogue = env.client(addr);
    let mut rng = SimRng::new(seed);
    let mut pkt = Vec::new();
    let mut sink = [0u8; 2048];
    for i in 0..10_000u64 {
        pkt.clear();
        match i % 2 {
            0 => Packet::ConnectRequest {
                protocol: SessionConfig::default().protocol_id,
                version: 1,
                salt: rng.next_u64(),
                channels: SessionConfig::default().connection.fingerprint(),
            },
            _ => Packet::ChallengeResponse {
                salt: rng.next_u64(),
                cookie: Cookie {
                    expires_ms: u64::MAX,
                    mac: rng.next_u64(),
                },
            },
        }
        .encode(&mut pkt);
        let _ = rogue.send(addr, &pkt);
        if i % 100 == 99 {
            let now = env.tick();
            server.update(now).unwrap();
            while let Ok(Some(_)) = rogue.recv(&mut sink) {}
        }
    }
    for _ in 0..200 {
        let now = env.tick();
        server.update(now).unwrap();
        while let Ok(Some(_)) = rogue.recv(&mut sink) {}
    }
    let s = server.stats();
    assert!(
        s.unvalidated_bytes_received > 100_000,
        "{kind:?}: only {s:?}"
    );
    assert!(
        s.unvalidated_bytes_sent <= s.unvalidated_bytes_received,
        "{kind:?} seed {seed}: replied {} to {}",
        s.unvalidated_bytes_sent,
        s.unvalidated_bytes_received
    );
    assert_eq!(server.client_count(), 0, "{kind:?}");
    assert_eq!(s.accepted, 0, "{kind:?}");
}

/// Advances both simulators to `now` (the clock of the netsim layer is virtual for every
/// transport kind; real sockets under it are paced by `Env::tick`).
fn pair_update(
    env: &mut Env,
    vnow: &mut Duration,
    server: &mut Server<NetSim<Dyn>>,
    client: &mut Client<NetSim<Dyn>>,
) {
    let _ = env.tick();
    *vnow += Duration::from_millis(20);
    server.transport_mut().advance_to(*vnow).unwrap();
    client.transport_mut().advance_to(*vnow).unwrap();
    server.update(*vnow).unwrap();
    client.update(*vnow).unwrap();
}

fn connected_pair(
    env: &mut Env,
    seed: u64,
) -> (Server<NetSim<Dyn>>, Client<NetSim<Dyn>>, Duration) {
    let perfect = LinkConfig::default();
    let mut server = Server::new(
        NetSim::new(env.server(), perfect.clone(), seed),
        SessionConfig::default(),
        KEY,
    )
    .unwrap();
    let addr = server.local_addr();
    let mut client = Client::new(
        NetSim::new(env.client(addr), perfect, seed + 1),
        addr,
        SessionConfig::default(),
        Duration::ZERO,
        seed,
    )
    .unwrap();
    let mut vnow = Duration::ZERO;
    for _ in 0..500 {
        pair_update(env, &mut vnow, &mut server, &mut client);
        if client.is_connected() && server.client_count() == 1 {
            break;
        }
    }
    assert!(
        client.is_connected(),
        "{:?} seed {seed}: no connection",
        env.kind
    );
    while server.poll_event().is_some() {}
    while client.poll_event().is_some() {}
    (server, client, vnow)
}

/// 10,000 reliable messages client → server through netsim `hostile` (25% loss, 25%
/// duplicates, 10% reordering, 250 ± 100 ms) on both sides: none lost, duplicated or reordered.
fn reliable_hostile(kind: Kind) {
    let seed = 21;
    let mut env = Env::new(kind);
    let (mut server, mut client, mut vnow) = connected_pair(&mut env, seed);
    let hostile = LinkConfig::profile("hostile").unwrap();
    server.transport_mut().set_config(hostile.clone());
    client.transport_mut().set_config(hostile);
    let total = 10_000usize;
    let msg = |i: usize| -> Vec<u8> {
        (i as u32)
            .to_le_bytes()
            .iter()
            .copied()
            .cycle()
            .take(4 + i % 60)
            .collect()
    };
    let (mut next, mut got) = (0usize, 0usize);
    for _ in 0..20_000 {
        while next < total {
            match client.send(RELIABLE, &msg(next)) {
                Ok(()) => next += 1,
                Err(_) => break, // queue full: try again next tick
            }
        }
        pair_update(&mut env, &mut vnow, &mut server, &mut client);
        while let Some(ev) = server.poll_event() {
            match ev {
                ServerEvent::Message(_, RELIABLE, m) => {
                    assert_eq!(
                        m,
                        msg(got),
                        "{kind:?} seed {seed}: message {got} wrong or out of order"
                    );
                    got += 1;
                }
                ServerEvent::Disconnected(_, r) => panic!("{kind:?} seed {seed}: dropped: {r}"),
                _ => {}
            }
        }
        if got == total || env.out_of_time() {
            break;
        }
    }
    assert_eq!(got, total, "{kind:?} seed {seed}");
    let dup = client.transport().stats().duplicated + server.transport().stats().duplicated;
    assert!(
        dup > 100,
        "{kind:?}: the link duplicated only {dup} datagrams"
    );
}

/// 64 messages server → client at 90% loss each way all arrive within 1000 ticks of 20 ms.
fn ninety_percent_loss(kind: Kind) {
    let seed = 33;
    let mut env = Env::new(kind);
    let (mut server, mut client, mut vnow) = connected_pair(&mut env, seed);
    let lossy = LinkConfig {
        latency: Duration::from_millis(50),
        loss: 0.9,
        ..LinkConfig::default()
    };
    server.transport_mut().set_config(lossy.clone());
    client.transport_mut().set_config(lossy);
    let id = server.clients().next().unwrap();
    for i in 0..64u8 {
        server.send(id, RELIABLE, &[i; 40]).unwrap();
    }
    let mut got = Vec::new();
    let mut ticks = 0;
    // The idle timeout must not end the session while 90% of keepalives are lost.
    while ticks < 1000 && got.len() < 64 {
        pair_update(&mut env, &mut vnow, &mut server, &mut client);
        ticks += 1;
        while let Some(ev) = client.poll_event() {
            match ev {
                ClientEvent::Message(_, m) => got.push(m[0]),
                ClientEvent::Disconnected(r) => panic!("{kind:?} seed {seed}: dropped: {r}"),
                _ => {}
            }
        }
    }
    assert_eq!(
        got,
        (0..64).collect::<Vec<u8>>(),
        "{kind:?} seed {seed}: after {ticks} ticks"
    );
}

#[test]
fn reliable_hostile_loopback() {
    reliable_hostile(Kind::Loopback);
}
#[test]
fn reliable_hostile_udp() {
    reliable_hostile(Kind::Udp);
}
#[test]
fn reliable_hostile_tcp() {
    reliable_hostile(Kind::Tcp);
}
#[test]
fn ninety_percent_loss_loopback() {
    ninety_percent_loss(Kind::Loopback);
}
#[test]
fn ninety_percent_loss_udp() {
    ninety_percent_loss(Kind::Udp);
}
#[test]
fn ninety_percent_loss_tcp() {
    ninety_percent_loss(Kind::Tcp);
}

#[test]
fn many_clients_loopback() {
    many_clients(Kind::Loopback);
}
#[test]
fn many_clients_udp() {
    many_clients(Kind::Udp);
}
#[test]
fn many_clients_tcp() {
    many_clients(Kind::Tcp);
}
#[test]
fn rogue_input_loopback() {
    rogue_input(Kind::Loopback);
}
#[test]
fn rogue_input_udp() {
    rogue_input(Kind::Udp);
}
#[test]
fn rogue_input_tcp() {
    rogue_input(Kind::Tcp);
}
#[test]
fn amplification_loopback() {
    amplification(Kind::Loopback);
}
#[test]
fn amplification_udp() {
    amplification(Kind::Udp);
}
#[test]
fn amplification_tcp() {
    amplification(Kind::Tcp);
}
