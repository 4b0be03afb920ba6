//! A lobby and a relay on UDP sockets on 127.0.0.1, stepped in the test's own thread, and the
//! game the tests play (one `Hp` per entity, a boss and one entity owned by each player).

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use statewire::Key;
use statewire_lobby::relay::{Relay, RelayConfig};
use statewire_lobby::{Lobby, LobbyConfig, MemoryStorage, RelayAccess};
use statewire_transport::Transport;
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

/// The lobby and relay of a test.
pub struct Backend {
    pub lobby: Lobby<MemoryStorage>,
    pub lobby_sock: UdpTransport,
    pub relay: Relay,
    pub relay_sock: UdpTransport,
    buf: Vec<u8>,
    out: Vec<u8>,
    /// Datagrams the relay forwarded and the time spent in `Relay::handle` for them.
    pub relay_busy: Duration,
}

impl Backend {
    pub fn new(config: LobbyConfig) -> Backend {
        let relay_key = Key::random();
        let relay_sock = udp();
        let config = LobbyConfig {
            relay: Some(RelayAccess {
                addr: relay_sock.local_addr(),
                key: relay_key.clone(),
            }),
            ..config
        };
        Backend {
            lobby: Lobby::new(MemoryStorage::new(), config),
            lobby_sock: udp(),
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

    /// Handles everything pending on both sockets (bounded per call).
    pub fn step(&mut self, now: Duration) {
        let unix = unix_now();
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
            let t = std::time::Instant::now();
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
