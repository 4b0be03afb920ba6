//! The lobby side under hostile input, one leading selector byte:
//!
//! - 0: `wire::Request::decode` (a decoded request re-encodes and decodes to itself),
//! - 1: `wire::Reply::decode` and `wire::Punch::decode` (the same round trip),
//! - 2: `relay::decode`,
//! - 3: a `Lobby` (with a relay configured and one confirmed game) handling the rest as a
//!   batch of datagrams `[source, len, bytes...]` from 4 sources; no reply is larger than the
//!   datagram that caused it unless the sender proved it is the host (Heartbeat),
//! - 4: a `Relay` with one bound allocation handling the batch; it never answers with more
//!   bytes than it got,
//! - 5: a host's and a player's `Rendezvous` receiving the batch as if from the lobby, the
//!   relay and strangers, then updating; nothing panics and the rendezvous keeps its limits.
//!
//! None may panic.

#![no_main]

use std::net::SocketAddr;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use statewire::Key;
use statewire_core::ClientId;
use statewire_lobby::relay::{self, Relay, RelayConfig};
use statewire_lobby::wire::{Punch, Reply, Request};
use statewire_lobby::{
    AllocId, HostInfo, JoinCode, Lobby, LobbyConfig, MemoryStorage, RelayAccess, RelayTicket,
    Rendezvous, RendezvousConfig, Role, TicketParams,
};
use statewire_transport::Transport;
use statewire_transport::loopback::{LoopbackConfig, LoopbackNet};

const UNIX: Duration = Duration::from_secs(1_800_000_000);

fn sources() -> [SocketAddr; 4] {
    [
        "203.0.113.5:40000".parse().unwrap(),
        "198.51.100.9:5000".parse().unwrap(),
        "198.51.100.9:5001".parse().unwrap(),
        "[2001:db8::1]:7".parse().unwrap(),
    ]
}

/// Splits `data` into `(source index, datagram)` pairs.
fn batch(mut data: &[u8]) -> Vec<(usize, &[u8])> {
    let mut out = Vec::new();
    while let [src, len, rest @ ..] = data {
        let n = usize::from(*len).min(rest.len());
        out.push((usize::from(*src) % 4, &rest[..n]));
        data = &rest[n..];
        if out.len() >= 64 {
            break;
        }
    }
    out
}

fn lobby(data: &[u8]) {
    let relay_key = Key::from_bytes([7; 32]);
    let config = LobbyConfig {
        relay: Some(RelayAccess {
            addr: "198.51.100.2:3478".parse().unwrap(),
            key: relay_key,
        }),
        ..LobbyConfig::default()
    };
    let mut lobby = Lobby::new(MemoryStorage::new(), config);
    let src = sources();
    let mut out = Vec::new();
    Request::Register {
        protocol_id: 7,
        version: 1,
        max_players: 8,
        public: true,
        host_client: 0,
        local_addr: "10.0.0.2:7777".parse().unwrap(),
        token_key: [1; 32],
        name: "fuzz".into(),
    }
    .encode(&mut out);
    lobby.handle(UNIX, src[0], &out);
    if let Some((_, bytes)) = lobby.poll_transmit()
        && let Ok(Reply::Registered { code, secret, .. }) = Reply::decode(&bytes)
    {
        Request::Heartbeat {
            code,
            secret,
            players: 1,
            roster: vec![],
        }
        .encode(&mut out);
        lobby.handle(UNIX, src[0], &out);
    }
    while lobby.poll_transmit().is_some() {}
    for (i, (s, datagram)) in batch(data).into_iter().enumerate() {
        let now = UNIX + Duration::from_millis(i as u64 * 100);
        lobby.handle(now, src[s], datagram);
        let heartbeat = datagram.first() == Some(&0x51);
        while let Some((to, reply)) = lobby.poll_transmit() {
            // A player coming is pushed to the host, whoever asked.
            if to == src[s] && !heartbeat {
                assert!(reply.len() <= datagram.len().max(12), "amplification");
            }
        }
        lobby.handle_timeout(now);
    }
}

fn relay(data: &[u8]) {
    let key = Key::from_bytes([7; 32]);
    let mut relay = Relay::new(key.clone(), RelayConfig::default());
    let src = sources();
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for (role, s) in [(Role::Host, 0), (Role::Joiner, 1)] {
        let ticket = RelayTicket::seal(
            &key,
            &TicketParams {
                alloc_id: AllocId(1),
                role,
                expires_unix_secs: UNIX.as_secs() + 60,
            },
        )
        .unwrap();
        relay::encode_bind(&ticket, &mut buf);
        let _ = relay.handle(Duration::ZERO, UNIX.as_secs(), src[s], &buf, &mut out);
    }
    for (i, (s, datagram)) in batch(data).into_iter().enumerate() {
        let now = Duration::from_millis(i as u64 * 10);
        if relay
            .handle(now, UNIX.as_secs(), src[s], datagram, &mut out)
            .is_some()
        {
            // Forwarded data is the same datagram; answers are never larger.
            assert!(out.len() <= datagram.len(), "amplification");
        }
        relay.handle_timeout(now);
    }
}

fn rendezvous(data: &[u8]) {
    let net = LoopbackNet::new(LoopbackConfig::default());
    let mut lobby = net.endpoint();
    let mut stranger = net.endpoint();
    let info = HostInfo {
        name: "fuzz".into(),
        protocol_id: 7,
        version: 1,
        max_players: 8,
        public: true,
        host_client: ClientId(0),
        token_key: Key::from_bytes([1; 32]),
    };
    let config = RendezvousConfig::default();
    let mut host = Rendezvous::host(
        net.endpoint(),
        lobby.local_addr(),
        info,
        config.clone(),
        Duration::ZERO,
    );
    let mut player = Rendezvous::join(
        net.endpoint(),
        lobby.local_addr(),
        JoinCode::from_u64(1),
        7,
        config,
        Duration::ZERO,
    );
    let mut buf = [0u8; 2048];
    for (i, (s, datagram)) in batch(data).into_iter().enumerate() {
        let now = Duration::from_millis(i as u64 * 50);
        let from = if s % 2 == 0 {
            &mut lobby
        } else {
            &mut stranger
        };
        let _ = from.send(host.local_addr(), datagram);
        let _ = from.send(player.local_addr(), datagram);
        for rv in [&mut host, &mut player] {
            rv.update(now).unwrap();
            while rv.recv(&mut buf).unwrap().is_some() {}
            while rv.poll_event().is_some() {}
        }
    }
    // Drain what the rendezvous sent (lobby requests, punches): it must not have piled up.
    while lobby.recv(&mut buf).unwrap().is_some() {}
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 6 {
        0 => {
            if let Ok((req, nonce)) = Request::decode_with_nonce(rest) {
                let mut out = Vec::new();
                req.encode_with(nonce, &mut out);
                assert_eq!(Request::decode_with_nonce(&out).ok(), Some((req, nonce)));
            }
        }
        1 => {
            if let Ok((reply, nonce)) = Reply::decode_with_nonce(rest) {
                let mut out = Vec::new();
                reply.encode_with(nonce, &mut out);
                assert_eq!(Reply::decode_with_nonce(&out).ok(), Some((reply, nonce)));
            }
            if let Ok(p) = Punch::decode(rest) {
                let mut out = Vec::new();
                p.encode(&mut out);
                assert_eq!(Punch::decode(&out).ok(), Some(p));
            }
        }
        2 => {
            let _ = relay::decode(rest);
        }
        3 => lobby(rest),
        4 => relay(rest),
        _ => rendezvous(rest),
    }
});
