//! The lobby and the relay, per request and per forwarded datagram.
//!
//! * `lobby/join`: one Join handled by a lobby with 1,000 games (look-up, a connect token
//!   sealed with the game's key, two relay tickets, the host's notice queued and pushed).
//! * `lobby/heartbeat`: one host heartbeat (secret checked, record refreshed, notices taken).
//! * `lobby/malformed`: one junk datagram refused (rate limit, decode, count).
//! * `relay/forward_1200`: one 1,200-byte datagram forwarded between the two ends of an
//!   allocation among 1,000 (the relay's CPU per forwarded packet).
//! * `relay/refuse_unbound`: one datagram for an allocation the sender is not bound to.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use statewire::Key;
use statewire_lobby::relay::{self, Relay, RelayConfig};
use statewire_lobby::wire::{Reply, Request};
use statewire_lobby::{
    AllocId, JoinCode, Lobby, LobbyConfig, MemoryStorage, RelayAccess, RelayTicket, Role,
    TicketParams,
};

const UNIX: Duration = Duration::from_secs(1_800_000_000);

fn addr(i: u32) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 40_000))
}

/// A lobby with `games` confirmed games, each from its own address; returns their codes and
/// host secrets.
fn lobby_with(games: u32) -> (Lobby<MemoryStorage>, Vec<(JoinCode, [u8; 16])>) {
    let config = LobbyConfig {
        relay: Some(RelayAccess {
            addr: "198.51.100.2:3478".parse().unwrap(),
            key: Key::random(),
        }),
        // The bench sends from few addresses, far faster than any player.
        requests_per_sec_per_ip: 1_000_000_000,
        request_burst_per_ip: 1_000_000_000,
        ..LobbyConfig::default()
    };
    let mut lobby = Lobby::new(MemoryStorage::new(), config);
    let mut out = Vec::new();
    let mut codes = Vec::new();
    for i in 0..games {
        Request::Register {
            protocol_id: 7,
            version: 1,
            max_players: 64,
            public: true,
            host_client: 0,
            local_addr: addr(i),
            token_key: [1; 32],
            name: format!("game {i}"),
        }
        .encode(&mut out);
        lobby.handle(UNIX, addr(i), &out);
        while let Some((_, reply)) = lobby.poll_transmit() {
            if let Ok(Reply::Registered { code, secret, .. }) = Reply::decode(&reply) {
                codes.push((code, secret));
                Request::Heartbeat {
                    code,
                    secret,
                    players: 1,
                    roster: vec![],
                }
                .encode(&mut out);
                lobby.handle(UNIX, addr(i), &out);
            }
        }
        while lobby.poll_transmit().is_some() {}
    }
    (lobby, codes)
}

fn lobby_benches(c: &mut Criterion) {
    let (mut lobby, codes) = lobby_with(1_000);
    let (code, secret) = codes[500];
    let mut join = Vec::new();
    Request::Join {
        code,
        protocol_id: 7,
    }
    .encode(&mut join);
    let player: SocketAddr = "192.0.2.9:5000".parse().unwrap();
    let mut t = UNIX;
    c.bench_function("lobby/join", |b| {
        b.iter(|| {
            t += Duration::from_micros(1);
            lobby.handle(t, player, black_box(&join));
            while let Some(x) = lobby.poll_transmit() {
                black_box(x);
            }
        })
    });
    let mut beat = Vec::new();
    Request::Heartbeat {
        code,
        secret,
        players: 3,
        roster: vec![1, 2, 3],
    }
    .encode(&mut beat);
    c.bench_function("lobby/heartbeat", |b| {
        b.iter(|| {
            t += Duration::from_micros(1);
            lobby.handle(t, addr(500), black_box(&beat));
            while let Some(x) = lobby.poll_transmit() {
                black_box(x);
            }
        })
    });
    let junk = [0x53u8, 1, 0xff, 0xff, 3, 4, 5];
    c.bench_function("lobby/malformed", |b| {
        b.iter(|| {
            lobby.handle(t, player, black_box(&junk));
        })
    });
}

fn relay_benches(c: &mut Criterion) {
    let key = Key::random();
    let config = RelayConfig {
        bytes_per_sec: u64::MAX / 4,
        packets_per_sec: u64::MAX / 4,
        max_bytes: u64::MAX / 4,
        ..RelayConfig::default()
    };
    let mut relay = Relay::new(key.clone(), config);
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let now = Duration::from_secs(1);
    let unix = UNIX.as_secs();
    for i in 0..1_000u32 {
        for (role, end) in [(Role::Host, 0u32), (Role::Joiner, 1)] {
            let ticket = RelayTicket::seal(
                &key,
                &TicketParams {
                    alloc_id: AllocId(u64::from(i)),
                    role,
                    expires_unix_secs: unix + 3600,
                },
            )
            .unwrap();
            relay::encode_bind(&ticket, &mut buf);
            let _ = relay.handle(now, unix, addr(i * 2 + end), &buf, &mut out);
        }
    }
    let mut data = Vec::new();
    relay::encode_data(AllocId(500), &[7u8; 1200], &mut data);
    let from = addr(1000);
    c.bench_function("relay/forward_1200", |b| {
        b.iter(|| {
            let to = relay.handle(now, unix, from, black_box(&data), &mut out);
            black_box(to);
        })
    });
    let stranger: SocketAddr = "192.0.2.77:9".parse().unwrap();
    c.bench_function("relay/refuse_unbound", |b| {
        b.iter(|| {
            let to = relay.handle(now, unix, stranger, black_box(&data), &mut out);
            black_box(to);
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = lobby_benches, relay_benches
}
criterion_main!(benches);
