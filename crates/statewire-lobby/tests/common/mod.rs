//! What the lobby tests share: a lobby and a relay on sockets of any transport, stepped in the
//! test's own thread; a network (real UDP on 127.0.0.1 on the wall clock, or the simulator on
//! a virtual clock); and the game they play (an `Hp` per entity: a boss and one entity owned by
//! each player), with players that join by code and migrate when their host goes.

#![allow(dead_code, unreachable_pub)]

pub mod play;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use statewire::Key;
use statewire_lobby::relay::{Relay, RelayConfig};
use statewire_lobby::{Lobby, LobbyConfig, MemoryStorage, RelayAccess};
use statewire_transport::Transport;
use statewire_transport::loopback::{LoopbackConfig, LoopbackEndpoint, LoopbackNet};
use statewire_transport::netsim::{LinkConfig, NetSim};
use statewire_transport::udp::{UdpConfig, UdpTransport};

/// Wall clock since the Unix epoch.
pub fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// A non-blocking UDP socket on 127.0.0.1.
pub fn udp() -> UdpTransport {
    UdpTransport::bind("127.0.0.1:0".parse().unwrap(), UdpConfig::default()).unwrap()
}

/// The lobby and relay of a test, on two sockets.
pub struct Backend<T: Transport> {
    pub lobby: Lobby<MemoryStorage>,
    pub lobby_sock: T,
    pub relay: Relay,
    pub relay_sock: T,
    buf: Vec<u8>,
    out: Vec<u8>,
    /// Time spent in `Relay::handle`.
    pub relay_busy: Duration,
}

impl<T: Transport> Backend<T> {
    pub fn new(lobby_sock: T, relay_sock: T, config: LobbyConfig) -> Backend<T> {
        let relay_key = Key::random();
        let config = LobbyConfig {
            relay: Some(RelayAccess {
                addr: relay_sock.local_addr(),
                key: relay_key.clone(),
            }),
            ..config
        };
        Backend {
            lobby: Lobby::new(MemoryStorage::new(), config),
            lobby_sock,
            relay: Relay::new(relay_key, RelayConfig::default()),
            relay_sock,
            buf: vec![0; 2048],
            out: Vec::new(),
            relay_busy: Duration::ZERO,
        }
    }

    pub fn lobby_addr(&self) -> SocketAddr {
        self.lobby_sock.local_addr()
    }

    /// Handles everything pending on both sockets (bounded per call); `unix` is the wall
    /// clock, `now` the relay's clock.
    pub fn step(&mut self, now: Duration, unix: Duration) {
        for _ in 0..4096 {
            let Some(got) = self.lobby_sock.recv(&mut self.buf).unwrap() else {
                break;
            };
            self.lobby.handle(unix, got.from, &self.buf[..got.len]);
        }
        while let Some((to, bytes)) = self.lobby.poll_transmit() {
            let _ = self.lobby_sock.send(to, &bytes);
        }
        for _ in 0..4096 {
            let Some(got) = self.relay_sock.recv(&mut self.buf).unwrap() else {
                break;
            };
            let t = Instant::now();
            let to = self.relay.handle(
                now,
                unix.as_secs(),
                got.from,
                &self.buf[..got.len],
                &mut self.out,
            );
            self.relay_busy += t.elapsed();
            if let Some(to) = to {
                let _ = self.relay_sock.send(to, &self.out);
            }
        }
        self.relay.handle_timeout(now);
    }
}

/// Where a test's peers live and what time it is there.
pub trait Net {
    /// A peer's socket.
    type Socket: Transport;
    /// A fresh socket for a host or player.
    fn socket(&mut self) -> Self::Socket;
    /// Moves a socket's own clock (the simulator's), if it has one.
    fn advance(socket: &mut Self::Socket, now: Duration);
    /// The lobby and relay.
    fn backend(&mut self) -> &mut Backend<Self::Socket>;
    /// Time since the test started.
    fn now(&self) -> Duration;
    /// The wall clock at time zero (for tokens).
    fn unix_at_zero(&self) -> Duration;
    /// Lets one frame pass.
    fn wait(&mut self, frame: Duration);
    /// Steps the lobby and relay.
    fn step_backend(&mut self) {
        let now = self.now();
        let unix = self.unix_at_zero() + now;
        self.backend().step(now, unix);
    }
}

/// Real UDP sockets on 127.0.0.1 and the wall clock.
pub struct UdpNet {
    backend: Backend<UdpTransport>,
    start: Instant,
    unix_zero: Duration,
}

impl UdpNet {
    pub fn new(config: LobbyConfig) -> UdpNet {
        UdpNet {
            backend: Backend::new(udp(), udp(), config),
            start: Instant::now(),
            unix_zero: unix_now(),
        }
    }
}

impl Net for UdpNet {
    type Socket = UdpTransport;
    fn socket(&mut self) -> UdpTransport {
        udp()
    }
    fn advance(_: &mut UdpTransport, _: Duration) {}
    fn backend(&mut self) -> &mut Backend<UdpTransport> {
        &mut self.backend
    }
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
    fn unix_at_zero(&self) -> Duration {
        self.unix_zero
    }
    fn wait(&mut self, frame: Duration) {
        std::thread::sleep(frame);
    }
}

/// The loopback network with every peer's outgoing datagrams impaired by the simulator
/// (seeded), on a virtual clock; the lobby and relay are not impaired.
pub struct SimNet {
    net: LoopbackNet,
    backend: Backend<NetSim<LoopbackEndpoint>>,
    link: LinkConfig,
    seed: u64,
    sockets: u64,
    now: Duration,
}

impl SimNet {
    pub fn new(config: LobbyConfig, link: LinkConfig, seed: u64) -> SimNet {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let clean = |ep| NetSim::new(ep, LinkConfig::default(), 0);
        let backend = Backend::new(clean(net.endpoint()), clean(net.endpoint()), config);
        SimNet {
            net,
            backend,
            link,
            seed,
            sockets: 0,
            now: Duration::ZERO,
        }
    }
}

impl SimNet {
    /// A bare endpoint on the network (to stand in for a socket whose NAT rebound it).
    pub fn endpoint(&self) -> LoopbackEndpoint {
        self.net.endpoint()
    }
}

impl Net for SimNet {
    type Socket = NetSim<LoopbackEndpoint>;
    fn socket(&mut self) -> Self::Socket {
        self.sockets += 1;
        let seed = self.seed.wrapping_mul(1000).wrapping_add(self.sockets);
        NetSim::new(self.net.endpoint(), self.link.clone(), seed)
    }
    fn advance(socket: &mut Self::Socket, now: Duration) {
        socket.advance_to(now).unwrap();
    }
    fn backend(&mut self) -> &mut Backend<Self::Socket> {
        &mut self.backend
    }
    fn now(&self) -> Duration {
        self.now
    }
    fn unix_at_zero(&self) -> Duration {
        Duration::from_secs(1_800_000_000)
    }
    fn wait(&mut self, frame: Duration) {
        self.now += frame;
        let now = self.now;
        self.backend.lobby_sock.advance_to(now).unwrap();
        self.backend.relay_sock.advance_to(now).unwrap();
    }
}
