//! Two lobby nodes sharing one Redis: each test opens two [`RedisStorage`]s on one fresh
//! namespace of the redis-server on 127.0.0.1:6379.
#![cfg(feature = "redis")]

use std::collections::HashSet;
use std::sync::Barrier;
use std::thread;

use statewire_lobby::redis_storage::RedisStorage;
use statewire_lobby::storage::{GameRecord, SECRET_LEN};
use statewire_lobby::{JoinCode, Storage};

const URL: &str = "redis://127.0.0.1:6379/";

/// A fresh namespace, or `None` (after saying so) if no Redis runs here and
/// `STATEWIRE_REQUIRE_REDIS` is not 1.
fn namespace_or_skip() -> Option<String> {
    let namespace = format!("test-{:016x}", getrandom::u64().unwrap());
    match RedisStorage::connect(URL, &namespace) {
        Ok(_) => Some(namespace),
        Err(e) if std::env::var("STATEWIRE_REQUIRE_REDIS").is_ok_and(|v| v == "1") => {
            panic!("STATEWIRE_REQUIRE_REDIS=1 but no redis-server answers on {URL}: {e}")
        }
        Err(_) => {
            eprintln!(
                "skipping: no redis-server on 127.0.0.1:6379 \
                 (set STATEWIRE_REQUIRE_REDIS=1 to require it)"
            );
            None
        }
    }
}

fn node(namespace: &str) -> RedisStorage {
    RedisStorage::connect(URL, namespace).unwrap()
}

fn game(n: u64, purge_at_ms: u64) -> GameRecord {
    GameRecord {
        code: JoinCode::from_u64(n),
        name: format!("game {n}"),
        protocol_id: 7,
        version: 1,
        player_count: 1,
        max_players: 8,
        public: true,
        host_addr: "203.0.113.5:40000".parse().unwrap(),
        host_local_addr: "10.0.0.2:7777".parse().unwrap(),
        host_secret: [n as u8; SECRET_LEN],
        host_nonce: 0,
        revision: 0,
        token_key: [3; 32],
        host_client: 1,
        confirmed: true,
        epoch: 0,
        last_seen_ms: 0,
        expires_at_ms: purge_at_ms / 2,
        purge_at_ms,
        roster: vec![1],
        players: Vec::new(),
        migration: None,
    }
}

#[test]
fn a_game_created_on_one_node_is_seen_on_the_other() {
    let Some(ns) = namespace_or_skip() else {
        return;
    };
    let (mut a, mut b) = (node(&ns), node(&ns));
    let g = game(1, 60_000);
    assert!(a.create(&g, 0).unwrap());
    assert_eq!(b.get(g.code, 1_000).unwrap().as_ref(), Some(&g));
    assert!(
        !b.create(&g, 1_000).unwrap(),
        "the code is taken on every node"
    );

    let mut changed = g.clone();
    changed.player_count = 4;
    assert!(b.put(&changed, 1_000).unwrap());
    changed.revision += 1;
    assert_eq!(a.get(g.code, 2_000).unwrap().unwrap().player_count, 4);
    // A node writing over the revision it read loses to the node that wrote first.
    let mut stale = g.clone();
    stale.player_count = 9;
    assert!(!a.put(&stale, 1_000).unwrap(), "a stale write is refused");
    b.push_notice(g.code, b"from b", 8).unwrap();
    assert_eq!(a.take_notices(g.code).unwrap(), vec![b"from b".to_vec()]);
    assert_eq!(a.list(2_000, 10).unwrap(), vec![changed]);

    // Another namespace on the same server sees nothing.
    let mut other = node(&format!("{ns}-other"));
    assert!(other.get(g.code, 2_000).unwrap().is_none());

    a.remove(g.code).unwrap();
    assert!(b.get(g.code, 2_000).unwrap().is_none());
    assert!(b.list(2_000, 10).unwrap().is_empty());
}

#[test]
fn concurrent_creates_of_one_code_have_one_winner() {
    let Some(ns) = namespace_or_skip() else {
        return;
    };
    const ROUNDS: u64 = 100;
    let barrier = Barrier::new(2);
    let wins: Vec<Vec<bool>> = thread::scope(|scope| {
        let racers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let mut s = node(&ns);
                    (0..ROUNDS)
                        .map(|n| {
                            barrier.wait();
                            s.create(&game(n, 60_000), 0).unwrap()
                        })
                        .collect::<Vec<bool>>()
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(wins[0].len(), ROUNDS as usize);
    for (n, (a, b)) in wins[0].iter().zip(&wins[1]).enumerate() {
        assert!(a ^ b, "round {n}: node a {a}, node b {b}");
    }
    let mut s = node(&ns);
    for n in 0..ROUNDS {
        s.remove(JoinCode::from_u64(n)).unwrap();
    }
}

#[test]
fn client_ids_from_two_nodes_never_repeat() {
    let Some(ns) = namespace_or_skip() else {
        return;
    };
    const CALLS: usize = 1_000;
    let g = game(9, 60_000);
    assert!(node(&ns).create(&g, 0).unwrap());
    let barrier = Barrier::new(2);
    let ids: Vec<Vec<u64>> = thread::scope(|scope| {
        let nodes: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let mut s = node(&ns);
                    barrier.wait();
                    (0..CALLS)
                        .map(|_| s.next_client_id(g.code).unwrap())
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        nodes.into_iter().map(|n| n.join().unwrap()).collect()
    });
    let all: HashSet<u64> = ids.iter().flatten().copied().collect();
    assert_eq!(all.len(), 2 * CALLS, "an id was handed out twice");
    assert!(!all.contains(&0));
    node(&ns).remove(g.code).unwrap();
}

/// Two lobby nodes on one Redis, one handling a host's heartbeats while the other admits 40
/// players, at the same time: every write is a compare and set, so no node overwrites what
/// the other wrote in between (without it, heartbeats dropped players from the record).
#[test]
fn two_lobby_nodes_never_lose_each_others_updates() {
    use statewire_lobby::wire::{Reply, Request};
    use statewire_lobby::{Lobby, LobbyConfig};
    use std::time::Duration;

    let Some(ns) = namespace_or_skip() else {
        return;
    };
    let config = LobbyConfig {
        requests_per_sec_per_ip: 1_000_000,
        request_burst_per_ip: 1_000_000,
        max_pending_joins_per_ip: 1_000,
        ..LobbyConfig::default()
    };
    let unix = Duration::from_secs(1_800_000_000);
    let host: std::net::SocketAddr = "203.0.113.5:40000".parse().unwrap();
    let mut a = Lobby::new(node(&ns), config.clone());
    let mut b = Lobby::new(node(&ns), config);
    let mut out = Vec::new();
    Request::Register {
        protocol_id: 7,
        version: 1,
        max_players: 200,
        public: true,
        host_client: 0,
        local_addr: "10.0.0.2:7777".parse().unwrap(),
        token_key: [1; 32],
        name: "shared".into(),
    }
    .encode(&mut out);
    a.handle(unix, host, &out);
    let Some((_, bytes)) = a.poll_transmit() else {
        panic!("no answer to the registration")
    };
    let Ok(Reply::Registered { code, secret, .. }) = Reply::decode(&bytes) else {
        panic!("not registered")
    };
    let beat = |out: &mut Vec<u8>| {
        Request::Heartbeat {
            code,
            secret,
            players: 1,
            roster: vec![],
        }
        .encode(out);
    };
    beat(&mut out);
    a.handle(unix, host, &out);
    while a.poll_transmit().is_some() {}

    let barrier = Barrier::new(2);
    let (joined, conflicts) = thread::scope(|s| {
        let heartbeats = s.spawn(|| {
            let mut out = Vec::new();
            beat(&mut out);
            barrier.wait();
            // A heartbeat every millisecond (a real host sends one a second).
            for i in 0..400u64 {
                a.handle(unix + Duration::from_millis(i), host, &out);
                while a.poll_transmit().is_some() {}
                thread::sleep(Duration::from_millis(1));
            }
            a.stats().storage_conflicts
        });
        let joins = s.spawn(|| {
            let mut out = Vec::new();
            Request::Join {
                code,
                protocol_id: 7,
            }
            .encode(&mut out);
            barrier.wait();
            let mut ids = Vec::new();
            for i in 0..40u16 {
                let from = std::net::SocketAddr::from(([198, 51, 100, 9], 5000 + i));
                b.handle(unix + Duration::from_millis(u64::from(i) * 10), from, &out);
                while let Some((to, bytes)) = b.poll_transmit() {
                    match (to == from, Reply::decode(&bytes)) {
                        (true, Ok(Reply::Joined { client_id, .. })) => ids.push(client_id),
                        (true, other) => panic!("join {i} answered {other:?}"),
                        _ => {}
                    }
                }
            }
            (ids, b.stats().storage_conflicts)
        });
        let a_conflicts = heartbeats.join().unwrap();
        let (ids, b_conflicts) = joins.join().unwrap();
        (ids, a_conflicts + b_conflicts)
    });
    assert_eq!(joined.len(), 40, "every join was answered");
    let mut check = node(&ns);
    let record = check.get(code, 1_800_000_001_000).unwrap().unwrap();
    let kept: HashSet<u64> = record.players.iter().map(|p| p.client_id).collect();
    for id in &joined {
        assert!(
            kept.contains(id),
            "player {id} lost ({conflicts} conflicts redone)"
        );
    }
    eprintln!("{conflicts} write conflicts between the two nodes, each redone");
    check.remove(code).unwrap();
}
