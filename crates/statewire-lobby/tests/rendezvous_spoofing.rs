//! An off-path attacker who spoofs the lobby's address: forged lobby replies (players coming,
//! a new token, a refusal, a new host) reach a host and a player, who ignore them because
//! they do not carry the nonce of anything they asked. (On the loopback network the forger
//! sends from the lobby's own endpoint, which is what spoofing its address amounts to.)

use std::time::Duration;

use statewire::Key;
use statewire_core::ClientId;
use statewire_lobby::wire::{ErrorCode, PeerComing, Reply};
use statewire_lobby::{
    HostInfo, JoinCode, Lobby, LobbyConfig, MemoryStorage, Rendezvous, RendezvousConfig,
    RendezvousEvent,
};
use statewire_transport::Transport;
use statewire_transport::loopback::{LoopbackConfig, LoopbackEndpoint, LoopbackNet};

const UNIX: Duration = Duration::from_secs(1_800_000_000);

struct World {
    net: LoopbackNet,
    lobby: Lobby<MemoryStorage>,
    lobby_ep: LoopbackEndpoint,
    buf: Vec<u8>,
}

impl World {
    fn new() -> World {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let lobby_ep = net.endpoint();
        World {
            net,
            lobby: Lobby::new(MemoryStorage::new(), LobbyConfig::default()),
            lobby_ep,
            buf: vec![0; 2048],
        }
    }

    fn step(&mut self, now: Duration, peers: &mut [&mut Rendezvous<LoopbackEndpoint>]) {
        while let Some(got) = self.lobby_ep.recv(&mut self.buf).unwrap() {
            self.lobby
                .handle(UNIX + now, got.from, &self.buf[..got.len]);
        }
        while let Some((to, bytes)) = self.lobby.poll_transmit() {
            self.lobby_ep.send(to, &bytes).unwrap();
        }
        for p in peers {
            p.update(now).unwrap();
            while p.recv(&mut self.buf).unwrap().is_some() {}
        }
    }

    /// Sends `reply` to `to` from the lobby's address, with a guessed nonce.
    fn forge(&mut self, to: std::net::SocketAddr, reply: &Reply, nonce: u64) {
        let mut out = Vec::new();
        reply.encode_with(nonce, &mut out);
        self.lobby_ep.send(to, &out).unwrap();
    }
}

fn host_info(name: &str) -> HostInfo {
    HostInfo {
        name: name.into(),
        protocol_id: 7,
        version: 1,
        max_players: 8,
        public: true,
        host_client: ClientId(0),
        token_key: Key::random(),
    }
}

fn events(rv: &mut Rendezvous<LoopbackEndpoint>) -> Vec<RendezvousEvent> {
    std::iter::from_fn(|| rv.poll_event()).collect()
}

#[test]
fn forged_lobby_replies_are_ignored_by_hosts_and_players() {
    let mut w = World::new();
    let lobby = w.lobby_ep.local_addr();
    let info = host_info("target");
    let config = RendezvousConfig::default();
    let mut host = Rendezvous::host(
        w.net.endpoint(),
        lobby,
        info,
        config.clone(),
        Duration::ZERO,
    );
    let mut code: Option<JoinCode> = None;
    for frame in 0..20u32 {
        w.step(Duration::from_millis(10) * frame, &mut [&mut host]);
        for e in events(&mut host) {
            if let RendezvousEvent::Registered { code: c, .. } = e {
                code = Some(c);
            }
        }
    }
    let code = code.expect("registered");
    let mut player = Rendezvous::join(w.net.endpoint(), lobby, code, 7, config, Duration::ZERO);
    let mut joined = 0;
    for frame in 20..40u32 {
        w.step(
            Duration::from_millis(10) * frame,
            &mut [&mut host, &mut player],
        );
        joined += events(&mut player)
            .iter()
            .filter(|e| matches!(e, RendezvousEvent::Joined { .. }))
            .count();
    }
    assert_eq!(joined, 1);
    assert_eq!(host.paths().count(), 1);
    let real = events(&mut host);
    assert!(
        real.iter()
            .any(|e| matches!(e, RendezvousEvent::PeerComing { .. })),
        "{real:?}"
    );
    let (host_ignored, player_ignored) = (host.stats().lobby_ignored, player.stats().lobby_ignored);

    // The forger knows the code and both addresses, not the nonces.
    let victim = "192.0.2.1:9".parse().unwrap();
    for guess in [0u64, 1, 0xdead_beef] {
        let coming = Reply::PeerComing(PeerComing {
            code,
            client_id: 99,
            joiner: victim,
            start_ms: 0,
            punch: [1; 8],
            relay: None,
        });
        w.forge(host.local_addr(), &coming, guess);
        let refused = Reply::Error {
            for_kind: 0x51,
            code: ErrorCode::Expired,
        };
        w.forge(host.local_addr(), &refused, guess);
        let stolen = Reply::Joined {
            code,
            client_id: 5,
            secret: [0; 16],
            host: victim,
            start_ms: 0,
            punch: [2; 8],
            relay: None,
            token: vec![0; 340],
        };
        w.forge(player.local_addr(), &stolen, guess);
        w.forge(player.local_addr(), &Reply::Wait { retry_ms: 10 }, guess);
    }
    for frame in 40..80u32 {
        w.step(
            Duration::from_millis(10) * frame,
            &mut [&mut host, &mut player],
        );
    }
    assert!(events(&mut host).iter().all(|e| !matches!(
        e,
        RendezvousEvent::PeerComing { .. } | RendezvousEvent::Refused(_)
    )));
    assert!(events(&mut player).is_empty());
    assert_eq!(host.paths().count(), 1, "no peer added for the victim");
    assert!(host.paths().all(|(addr, _)| addr != victim));
    assert!(player.paths().all(|(addr, _)| addr != victim));
    assert_eq!(host.stats().lobby_ignored - host_ignored, 6);
    assert_eq!(player.stats().lobby_ignored - player_ignored, 6);
}

#[test]
fn a_host_hears_once_when_the_lobby_stops_answering_heartbeats() {
    let mut w = World::new();
    let lobby = w.lobby_ep.local_addr();
    let info = host_info("alone");
    let mut host = Rendezvous::host(
        w.net.endpoint(),
        lobby,
        info,
        RendezvousConfig::default(),
        Duration::ZERO,
    );
    let mut seen = Vec::new();
    for frame in 0..50u32 {
        w.step(Duration::from_millis(10) * frame, &mut [&mut host]);
        seen.extend(events(&mut host));
    }
    assert!(
        seen.iter()
            .any(|e| matches!(e, RendezvousEvent::Registered { .. }))
    );
    // The lobby goes away: its socket still takes datagrams, nobody answers.
    let mut buf = [0u8; 2048];
    let mut unreachable = 0;
    for frame in 50..3050u32 {
        let now = Duration::from_millis(10) * frame;
        while w.lobby_ep.recv(&mut buf).unwrap().is_some() {}
        host.update(now).unwrap();
        while host.recv(&mut buf).unwrap().is_some() {}
        unreachable += events(&mut host)
            .iter()
            .filter(|e| matches!(e, RendezvousEvent::LobbyUnreachable))
            .count();
    }
    assert_eq!(
        unreachable, 1,
        "said once, after about 13 silent heartbeats"
    );
}
