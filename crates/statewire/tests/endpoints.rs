//! The game endpoints as a game and as an attacker meets them: a converging game over
//! loopback, UDP on 127.0.0.1 and a lossy simulated link; writes to entities a client does not
//! own; malformed envelopes from an authenticated client; a client that never acknowledges
//! (it falls behind the event log and is disconnected, the others go on); typed messages; a
//! host with a local player; memory returned when clients leave; configurations that cannot
//! work refused at construction.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use statewire::endpoint::*;
use statewire::{ChannelId, Client, DisconnectReason, Fault, SessionConfig};
use statewire_core::{EventConfig, Owner, ServerConfig};
use statewire_testkit::{Pos, Tag};
use statewire_transport::Transport;
use statewire_transport::loopback::{LoopbackConfig, LoopbackEndpoint, LoopbackNet};
use statewire_transport::netsim::{LinkConfig, NetSim};
use statewire_transport::udp::{UdpConfig, UdpTransport};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
struct Steer {
    dx: i8,
    dy: i8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Chat(String);

const KILL: u16 = 7;
const DT: Duration = Duration::from_millis(33);

fn protocol() -> (Protocol, MessageChannel<Chat>) {
    let mut p = Protocol::new().with::<Pos>().unwrap();
    let chat = p.channel::<Chat>("chat", Delivery::Reliable, 200).unwrap();
    (p, chat)
}

/// What a test game saw.
#[derive(Debug, Default)]
struct Outcome {
    kills: Vec<usize>,
    inputs: usize,
    rejected_writes: usize,
    chats: usize,
    in_sync: bool,
}

/// A server with one enemy; each client moves its own entity by writes and by inputs;
/// client 0 claims the kill at frame 30; after `frames` a settle period.
fn play<T: Transport>(
    server_t: T,
    client_ts: Vec<T>,
    frames: u64,
    mut advance: impl FnMut(&mut GameServer<T, Steer>, &mut [GameClient<T, Steer>], Duration),
) -> Outcome {
    let (protocol, chat) = protocol();
    let addr = server_t.local_addr();
    let mut server: GameServer<T, Steer> =
        GameServer::new(server_t, &protocol, GameServerConfig::default()).unwrap();
    let enemy = server.spawn(Owner::Server).unwrap();
    server
        .store_mut()
        .set(enemy, &Pos { x: 9.0, y: 9.0 })
        .unwrap();
    let mut clients: Vec<GameClient<T, Steer>> = client_ts
        .into_iter()
        .map(|t| {
            GameClient::new(
                t,
                addr,
                &protocol,
                GameClientConfig::default(),
                Duration::ZERO,
            )
            .unwrap()
        })
        .collect();
    let mut out = Outcome {
        kills: vec![0; clients.len()],
        ..Outcome::default()
    };
    let mut players = std::collections::HashMap::new();
    let mut proposed = false;
    for frame in 0..frames + 150 {
        let now = DT * frame as u32;
        advance(&mut server, &mut clients, now);
        server.update(now).unwrap();
        while let Some(ev) = server.poll_event() {
            match ev {
                GameServerEvent::Joined(c) => {
                    let e = server.spawn(Owner::Client(c)).unwrap();
                    server.store_mut().set(e, &Pos { x: 0.0, y: 0.0 }).unwrap();
                    players.insert(c, e);
                    server.send(c, chat, &Chat("welcome".into())).unwrap();
                }
                GameServerEvent::Input { client, input, .. } => {
                    out.inputs += 1;
                    // Inputs move the player's y (server-simulated); writes its x.
                    let e = players[&client];
                    let p = server.store().component::<Pos>(e).unwrap();
                    let y = (p.y + f32::from(input.dy) / 8.0).clamp(-200.0, 200.0);
                    server.store_mut().set(e, &Pos { x: p.x, y }).unwrap();
                }
                GameServerEvent::WriteRejected { .. } => out.rejected_writes += 1,
                GameServerEvent::Message(_, m) => {
                    assert_eq!(m.read(chat), Some(Ok(Chat("hi".into()))));
                    out.chats += 1;
                }
                _ => {}
            }
        }
        server.resolve_events(|p, store| {
            p.kind == KILL
                && p.entities
                    .first()
                    .is_some_and(|&e| store.despawn(e).is_ok())
        });
        server.flush(now).unwrap();
        let playing = frame < frames;
        for (i, c) in clients.iter_mut().enumerate() {
            c.update(now).unwrap();
            while let Some(ev) = c.poll_event() {
                match ev {
                    GameClientEvent::Event(e) if e.kind == KILL => out.kills[i] += 1,
                    GameClientEvent::Message(m) => {
                        assert_eq!(m.read(chat), Some(Ok(Chat("welcome".into()))));
                        c.send(chat, &Chat("hi".into())).unwrap();
                    }
                    _ => {}
                }
            }
            let Some(&me) = c.owned().first() else {
                c.flush(now).unwrap();
                continue;
            };
            if playing {
                let p = c.get::<Pos>(me).unwrap();
                c.write(
                    me,
                    &Pos {
                        x: (p.x + 0.25).min(50.0),
                        y: p.y,
                    },
                )
                .unwrap();
                c.set_input(&Steer { dx: 0, dy: 1 });
                // Nobody may write another's entity: refused locally...
                for other in c.snapshot().entity_ids().filter(|&e| e != me) {
                    assert!(c.write(other, &Pos { x: 1.0, y: 1.0 }).is_err());
                }
                if i == 0 && frame >= 30 && !proposed {
                    c.propose(KILL, &[enemy], &[]).unwrap();
                    proposed = true;
                }
            } else {
                c.set_input(&Steer::default());
            }
            c.flush(now).unwrap();
        }
    }
    let truth = server.store().snapshot();
    out.in_sync = clients.iter().all(|c| c.snapshot() == truth);
    assert!(!server.store().contains(enemy));
    assert_eq!(server.stats().malformed, 0);
    assert_eq!(server.stats().budget_exceeded, 0);
    out
}

fn check(o: &Outcome, clients: usize) {
    assert_eq!(
        o.kills,
        vec![1; clients],
        "each client sees the kill exactly once"
    );
    assert!(o.in_sync, "every client holds the server's world");
    assert_eq!(o.chats, clients);
    assert_eq!(o.rejected_writes, 0);
}

#[test]
fn game_converges_over_loopback() {
    let net = LoopbackNet::new(LoopbackConfig::default());
    let o = play(
        net.endpoint(),
        vec![net.endpoint(), net.endpoint()],
        120,
        |_, _, _| {},
    );
    check(&o, 2);
    // Inputs arrive (stamped ahead, taken at their tick) for nearly every frame played.
    assert!(o.inputs >= 2 * 100, "{o:?}");
}

#[test]
fn game_converges_over_udp() {
    let bind = || UdpTransport::bind("127.0.0.1:0".parse().unwrap(), UdpConfig::default()).unwrap();
    let o = play(bind(), vec![bind(), bind()], 120, |_, _, _| {
        // Real sockets: give datagrams time to cross.
        std::thread::sleep(Duration::from_millis(1));
    });
    check(&o, 2);
}

#[test]
fn game_converges_over_a_lossy_link() {
    for seed in [1u64, 2, 3] {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let link = LinkConfig::profile("poor").unwrap();
        let wrap = |t: LoopbackEndpoint, s: u64| NetSim::new(t, link.clone(), seed * 100 + s);
        let o = play(
            wrap(net.endpoint(), 0),
            vec![wrap(net.endpoint(), 1), wrap(net.endpoint(), 2)],
            240,
            |s, cs, now| {
                s.session_mut().transport_mut().advance_to(now).unwrap();
                for c in cs {
                    c.session_mut().transport_mut().advance_to(now).unwrap();
                }
            },
        );
        assert_eq!(o.kills, vec![1, 1], "seed {seed}");
        assert!(o.in_sync, "seed {seed}");
        // 4 % loss with three copies of each input: nearly all arrive.
        assert!(o.inputs >= 2 * 200, "seed {seed}: {o:?}");
    }
}

/// A server on a new endpoint of `net`, and its address.
fn server_on(
    net: &LoopbackNet,
    protocol: &Protocol,
    config: GameServerConfig,
) -> (GameServer<LoopbackEndpoint, Steer>, std::net::SocketAddr) {
    let t = net.endpoint();
    let addr = t.local_addr();
    (GameServer::new(t, protocol, config).unwrap(), addr)
}

/// Connects a raw session client with the game's protocol id (an attacker that knows it).
fn raw_client(net: &LoopbackNet, addr: std::net::SocketAddr) -> Client<LoopbackEndpoint> {
    let (p, _) = protocol();
    let cfg = SessionConfig {
        protocol_id: p.fingerprint(),
        ..SessionConfig::default()
    };
    Client::new(net.endpoint(), addr, cfg, Duration::ZERO, 99).unwrap()
}

#[test]
fn hostile_client_costs_only_itself() {
    let net = LoopbackNet::new(LoopbackConfig::default());
    let (protocol, _) = protocol();
    let (mut server, addr) = server_on(&net, &protocol, GameServerConfig::default());
    let mut honest: GameClient<_, Steer> =
        GameClient::connect(net.endpoint(), addr, &protocol, Duration::ZERO).unwrap();
    let mut evil = raw_client(&net, addr);
    let seed = 0x5eed_e71c;
    println!("random envelopes from seed {seed:#x}");
    let mut rng = statewire_transport::netsim::SimRng::new(seed);
    let mut owned = std::collections::HashMap::new();
    let mut rejected = 0;
    for frame in 0..200u32 {
        let now = DT * frame;
        server.update(now).unwrap();
        while let Some(ev) = server.poll_event() {
            match ev {
                GameServerEvent::Joined(c) => {
                    let e = server.spawn(Owner::Client(c)).unwrap();
                    server.store_mut().set(e, &Pos { x: 1.0, y: 1.0 }).unwrap();
                    owned.insert(c, e);
                }
                GameServerEvent::WriteRejected { client, .. } => {
                    assert_eq!(Some(client), evil.id());
                    rejected += 1;
                }
                _ => {}
            }
        }
        server.flush(now).unwrap();
        honest.update(now).unwrap();
        while honest.poll_event().is_some() {}
        honest.flush(now).unwrap();
        evil.update(now).unwrap();
        while evil.poll_event().is_some() {}
        if evil.is_connected() && frame % 2 == 1 {
            // Seeded random envelopes: a valid tag (or not) and random bytes after it.
            for _ in 0..8 {
                let mut m = vec![rng.range_u64(0..=5) as u8];
                m.extend((0..rng.range_u64(0..=40)).map(|_| rng.range_u64(0..=255) as u8));
                let ch = ChannelId(rng.range_u64(0..=1) as u8);
                let _ = evil.send(ch, &m);
            }
        }
        if evil.is_connected() && frame % 2 == 0 {
            // Garbage of every shape on both channels.
            for m in [
                &[][..],
                &[0xff],
                &[1, 2],
                &[1, 0, 9],
                &[2, 1],
                &[3, 0],
                &[4, 200, 1],
                &[4],
            ] {
                let _ = evil.send(ChannelId(1), m);
                let _ = evil.send(ChannelId(0), m);
            }
            // A well-formed write of the honest player's entity.
            if let Some(&victim) = honest.id().and_then(|h| owned.get(&h)) {
                let mut values = Vec::new();
                let cid = protocol
                    .registry()
                    .raw_values(&Pos { x: -50.0, y: -50.0 }, &mut values)
                    .unwrap();
                let msg = writes_message(&[statewire_core::StateWrite {
                    entity: victim,
                    component: cid,
                    values,
                }]);
                evil.send(ChannelId(1), &msg).unwrap();
            }
        }
        evil.flush(now).unwrap();
    }
    let victim = owned[&honest.id().unwrap()];
    assert_eq!(
        server.store().component::<Pos>(victim),
        Some(Pos { x: 1.0, y: 1.0 }),
        "no write of another's entity is applied"
    );
    assert!(rejected > 50, "{rejected}");
    assert!(server.stats().malformed > 500, "{:?}", server.stats());
    assert!(honest.is_connected());
    assert_eq!(honest.snapshot(), server.store().snapshot());
}

#[test]
fn client_that_never_acks_falls_behind_and_is_disconnected_alone() {
    let net = LoopbackNet::new(LoopbackConfig::default());
    let (protocol, _) = protocol();
    let config = GameServerConfig {
        events: EventConfig {
            max_log: 64,
            ..EventConfig::default()
        },
        ..GameServerConfig::default()
    };
    let (mut server, addr) = server_on(&net, &protocol, config);
    let mut honest: GameClient<_, Steer> =
        GameClient::connect(net.endpoint(), addr, &protocol, Duration::ZERO).unwrap();
    // Keeps its session alive but never acknowledges a snapshot.
    let mut mute = raw_client(&net, addr);
    let mut mute_id = None;
    let mut left = None;
    let mut events_seen = Vec::new();
    for frame in 0..400u32 {
        let now = DT * frame;
        server.update(now).unwrap();
        while let Some(ev) = server.poll_event() {
            if let GameServerEvent::Left(c, r) = ev {
                assert!(left.is_none(), "one Left per client");
                left = Some((c, r));
            }
        }
        // Four server events a tick.
        for _ in 0..4 {
            server.emit(KILL, &[], &[]).unwrap();
        }
        server.resolve_events(|_, _| false);
        server.flush(now).unwrap();
        honest.update(now).unwrap();
        while let Some(ev) = honest.poll_event() {
            if let GameClientEvent::Event(e) = ev {
                events_seen.push(e.id.0);
            }
        }
        honest.flush(now).unwrap();
        mute.update(now).unwrap();
        while mute.poll_event().is_some() {}
        mute_id = mute_id.or(mute.id());
        mute.flush(now).unwrap();
    }
    let (who, why) = left.expect("the mute client is disconnected");
    assert_eq!(Some(who), mute_id);
    assert_eq!(why, DisconnectReason::Fault(Fault::FellBehind));
    assert_eq!(server.stats().fault_disconnects, 1);
    assert!(honest.is_connected());
    // The honest client got every event since it joined, once and in order, and the log
    // stays bounded.
    assert!(events_seen.windows(2).all(|w| w[1] == w[0] + 1));
    assert!(
        events_seen.len() >= 400 * 4 - 5 * 4,
        "{}",
        events_seen.len()
    );
    assert!(server.events().log().len() <= 64);
}

#[test]
fn memory_is_returned_when_clients_leave() {
    let net = LoopbackNet::new(LoopbackConfig::default());
    let (protocol, _) = protocol();
    let (mut server, addr) = server_on(&net, &protocol, GameServerConfig::default());
    for i in 0..200 {
        let e = server.spawn(Owner::Server).unwrap();
        server
            .store_mut()
            .set(
                e,
                &Pos {
                    x: i as f32,
                    y: 0.0,
                },
            )
            .unwrap();
    }
    let clock = std::cell::Cell::new(Duration::ZERO);
    let join = || {
        GameClient::<_, Steer>::new(
            net.endpoint(),
            addr,
            &protocol,
            GameClientConfig::default(),
            clock.get(),
        )
        .unwrap()
    };
    let step = |server: &mut GameServer<_, Steer>, cs: &mut Vec<GameClient<_, Steer>>| {
        clock.set(clock.get() + DT);
        let now = clock.get();
        server.update(now).unwrap();
        while let Some(ev) = server.poll_event() {
            // Each player owns an entity that it leaves behind (despawned on leave).
            match ev {
                GameServerEvent::Joined(c) => {
                    let e = server.spawn(Owner::Client(c)).unwrap();
                    server.store_mut().set(e, &Pos { x: 0.0, y: 0.0 }).unwrap();
                }
                GameServerEvent::Left(c, _) => {
                    let mine: Vec<_> = server
                        .store()
                        .entity_ids()
                        .filter(|&e| server.store().owner(e) == Some(Owner::Client(c)))
                        .collect();
                    for e in mine {
                        server.store_mut().despawn(e).unwrap();
                    }
                }
                _ => {}
            }
        }
        server.flush(now).unwrap();
        for c in cs.iter_mut() {
            c.update(now).unwrap();
            while c.poll_event().is_some() {}
            if let Some(&me) = c.owned().first() {
                c.write(
                    me,
                    &Pos {
                        x: 1.0,
                        y: clock.get().as_secs_f32(),
                    },
                )
                .unwrap();
            }
            c.set_input(&Steer { dx: 1, dy: 1 });
            c.flush(now).unwrap();
        }
    };
    // A long-lived client warms the steady-state buffers up.
    let mut stay = vec![join()];
    for _ in 0..60 {
        step(&mut server, &mut stay);
    }
    let base = server.replicator().memory_bytes();
    let mut peak = 0;
    let mut after = Vec::new();
    for _wave in 0..3 {
        let mut clients: Vec<_> = (0..4).map(|_| join()).collect();
        for _ in 0..60 {
            step(&mut server, &mut clients);
            step(&mut server, &mut stay);
        }
        assert_eq!(server.clients().len(), 5);
        peak = peak.max(server.replicator().memory_bytes());
        for c in &mut clients {
            c.disconnect();
            c.flush(clock.get()).unwrap();
        }
        for _ in 0..60 {
            step(&mut server, &mut stay);
        }
        assert_eq!(server.clients().len(), 1);
        after.push((
            server.replicator().memory_bytes(),
            server.store().memory_bytes(),
        ));
    }
    // Nothing of the departed is kept by the replicator: no growth from wave to wave, and
    // well under the peak. (Each entity's viewer list keeps room for up to 4x its viewers, so
    // it does not reallocate as players come and go: the rest above `base`.) The store keeps
    // its pooled history buffers (shared, not per client), and its id index spans the ids
    // handed out, which keep increasing: a few bytes per id (it grows in steps).
    assert_eq!(after[0].0, after[2].0, "{after:?}");
    assert!(
        after[2].0 * 3 < peak * 2,
        "{base} B before, {peak} B peak, {after:?} after"
    );
    assert!(after[2].0 < base * 2, "{base} B before, {after:?} after");
    assert!(after[2].1 - after[1].1 <= 4 * 64, "{after:?}");
    // Only the long-lived player's entity is in the authority table.
    assert!(server.authority().len() <= 1);
}

#[test]
fn host_plays_with_the_same_game_code() {
    let net = LoopbackNet::new(LoopbackConfig::default());
    let (protocol, chat) = protocol();
    let st = net.endpoint();
    let addr = st.local_addr();
    let mut host: GameHost<_, Steer> =
        GameHost::new(st, &protocol, GameServerConfig::default()).unwrap();
    let mut remote: GameClient<_, Steer> =
        GameClient::connect(net.endpoint(), addr, &protocol, Duration::ZERO).unwrap();
    let mut players = std::collections::HashMap::new();
    let mut host_inputs = 0;
    let mut kills_remote = 0;
    let local = host.local_id();
    for frame in 0..120u32 {
        let now = DT * frame;
        host.set_input(Steer { dx: 1, dy: 0 });
        if frame == 20 {
            let target = players.get(&remote.id().unwrap_or(local)).copied();
            if let Some(t) = target {
                host.propose(KILL, &[t], &[]).unwrap();
            }
        }
        let server = host.server();
        server.update(now).unwrap();
        while let Some(ev) = server.poll_event() {
            match ev {
                GameServerEvent::Joined(c) => {
                    let e = server.spawn(Owner::Client(c)).unwrap();
                    server.store_mut().set(e, &Pos { x: 0.0, y: 0.0 }).unwrap();
                    players.insert(c, e);
                    server.send(c, chat, &Chat(format!("hello {c}"))).unwrap();
                }
                GameServerEvent::Input { client, input, .. } => {
                    host_inputs += usize::from(client == local);
                    let e = players[&client];
                    let p = server.store().component::<Pos>(e).unwrap();
                    let x = p.x + f32::from(input.dx);
                    server.store_mut().set(e, &Pos { x, y: p.y }).unwrap();
                }
                _ => {}
            }
        }
        server.resolve_events(|p, _| p.kind == KILL);
        server.flush(now).unwrap();
        remote.update(now).unwrap();
        while let Some(ev) = remote.poll_event() {
            kills_remote += usize::from(matches!(ev, GameClientEvent::Event(e) if e.kind == KILL));
        }
        remote.flush(now).unwrap();
    }
    assert_eq!(
        host.poll_message().and_then(|m| m.read(chat)),
        Some(Ok(Chat(format!("hello {local}"))))
    );
    assert!(host_inputs >= 115, "{host_inputs}");
    assert_eq!(kills_remote, 1);
    // The remote client sees the host's player moving.
    let hp = players[&local];
    assert!(remote.get::<Pos>(hp).unwrap().x > 100.0);
    assert_eq!(remote.snapshot(), host.server_ref().store().snapshot());
}

#[test]
fn configurations_that_cannot_work_are_refused() {
    let net = LoopbackNet::new(LoopbackConfig::default());
    let (protocol, _) = protocol();
    let too_big = GameServerConfig {
        replication: ServerConfig {
            max_packet_bytes: 1200,
            ..ServerConfig::default()
        },
        ..GameServerConfig::default()
    };
    let err = GameServer::<_, Steer>::new(net.endpoint(), &protocol, too_big).unwrap_err();
    assert_eq!(
        err,
        ConfigError::PacketBudgetTooLarge {
            budget: 1200,
            limit: 1134
        }
    );
    assert!(err.to_string().contains("unreliable channel"), "{err}");
    // The default fits exactly.
    assert_eq!(
        GameServerConfig::default().replication.max_packet_bytes,
        1134
    );
    let few = GameServerConfig {
        replication: ServerConfig {
            max_clients: 8,
            ..GameServerConfig::default().replication
        },
        ..GameServerConfig::default()
    };
    assert!(matches!(
        GameServer::<_, Steer>::new(net.endpoint(), &protocol, few),
        Err(ConfigError::TooFewReplicationSlots {
            replication: 8,
            session: 64
        })
    ));
    let mut p = protocol.clone();
    p.channel::<Vec<u8>>("huge", Delivery::Unreliable, 5000)
        .unwrap();
    assert!(matches!(
        GameServer::<_, Steer>::new(net.endpoint(), &p, GameServerConfig::default()),
        Err(ConfigError::ChannelTooLarge { name: "huge", .. })
    ));
    let input = GameClientConfig {
        max_input_bytes: 300,
        ..GameClientConfig::default()
    };
    assert!(matches!(
        GameClient::<_, Steer>::new(
            net.endpoint(),
            "127.0.0.1:1".parse().unwrap(),
            &protocol,
            input,
            Duration::ZERO
        ),
        Err(ConfigError::InputSize(300))
    ));
}

#[test]
fn peers_with_different_protocols_refuse_each_other() {
    let net = LoopbackNet::new(LoopbackConfig::default());
    let (protocol, _) = protocol();
    let mut other = protocol.clone();
    other.channel::<u8>("extra", Delivery::Reliable, 4).unwrap();
    let (mut server, addr) = server_on(&net, &protocol, GameServerConfig::default());
    let mut c: GameClient<_, Steer> =
        GameClient::connect(net.endpoint(), addr, &other, Duration::ZERO).unwrap();
    let mut ended = None;
    for frame in 0..100u32 {
        let now = DT * frame;
        server.update(now).unwrap();
        while server.poll_event().is_some() {}
        server.flush(now).unwrap();
        c.update(now).unwrap();
        while let Some(ev) = c.poll_event() {
            if let GameClientEvent::Disconnected(r) = ev {
                ended = Some(r);
            }
        }
        c.flush(now).unwrap();
    }
    assert!(
        matches!(ended, Some(DisconnectReason::Rejected { .. })),
        "{ended:?}"
    );
    assert!(server.clients().is_empty());
}

/// A raw write message (the envelope's WRITES tag and the core's format).
fn writes_message(writes: &[statewire_core::StateWrite]) -> Vec<u8> {
    let mut m = vec![2u8];
    statewire_core::authority::encode_writes(writes, &mut m);
    m
}

#[test]
fn one_client_cannot_crowd_out_the_others_events() {
    let net = LoopbackNet::new(LoopbackConfig::default());
    let (protocol, _) = protocol();
    let (mut server, addr) = server_on(&net, &protocol, GameServerConfig::default());
    let mut evil = raw_client(&net, addr);
    let mut now = Duration::ZERO;
    for _ in 0..10 {
        now += DT;
        server.update(now).unwrap();
        while server.poll_event().is_some() {}
        server.flush(now).unwrap();
        evil.update(now).unwrap();
        evil.flush(now).unwrap();
    }
    assert!(evil.is_connected());
    // 64 writes of an entity that does not exist, per message.
    let mut values = Vec::new();
    let component = protocol
        .registry()
        .raw_values(&Pos { x: 1.0, y: 1.0 }, &mut values)
        .unwrap();
    let batch: Vec<_> = (0..64)
        .map(|i| statewire_core::StateWrite {
            entity: statewire_core::EntityId(900_000 + i),
            component,
            values: values.clone(),
        })
        .collect();
    let msg = writes_message(&batch);
    // Twenty flushes of 64 messages (a flush sends at most 64 packets) reach the server
    // before it reads: 81,920 refused writes in one update, more than the event queue holds.
    let mut sent = 0;
    for _ in 0..20 {
        for _ in 0..64 {
            sent += usize::from(evil.send(ChannelId(1), &msg).is_ok());
        }
        evil.flush(now).unwrap();
    }
    assert!(sent >= 1200, "{sent}");
    let mut honest: GameClient<_, Steer> =
        GameClient::connect(net.endpoint(), addr, &protocol, now).unwrap();
    let mut joined = Vec::new();
    let mut rejected_events = 0;
    let mut honest_inputs = 0;
    for _ in 0..30 {
        now += DT;
        server.update(now).unwrap();
        let mut this_tick = 0;
        while let Some(ev) = server.poll_event() {
            match ev {
                GameServerEvent::Joined(c) => joined.push(c),
                GameServerEvent::WriteRejected { .. } => this_tick += 1,
                GameServerEvent::Input { client, .. } if Some(client) == honest.id() => {
                    honest_inputs += 1
                }
                _ => {}
            }
        }
        assert!(
            this_tick <= 64,
            "{this_tick} write events from one client in a tick"
        );
        rejected_events += this_tick;
        server.flush(now).unwrap();
        honest.update(now).unwrap();
        while honest.poll_event().is_some() {}
        honest.set_input(&Steer { dx: 1, dy: 0 });
        honest.flush(now).unwrap();
        evil.update(now).unwrap();
        evil.flush(now).unwrap();
    }
    // The flood was refused and counted in full, its events capped; the honest client was
    // seen joining and its inputs arrived.
    assert!(
        server.stats().writes_rejected >= 60_000,
        "{:?}",
        server.stats()
    );
    assert!(rejected_events <= 64 * 30);
    assert!(server.stats().events_dropped > 0);
    assert!(
        honest.id().is_some_and(|h| joined.contains(&h)),
        "the honest client's join was not dropped"
    );
    assert!(honest.is_connected());
    assert!(honest_inputs > 10, "{honest_inputs}");
}

#[test]
fn writes_change_components_but_never_add_them() {
    let net = LoopbackNet::new(LoopbackConfig::default());
    let mut protocol = Protocol::new()
        .with::<Pos>()
        .unwrap()
        .with::<Tag>()
        .unwrap();
    let _ = &mut protocol;
    let (mut server, addr) = server_on(&net, &protocol, GameServerConfig::default());
    let mut c: GameClient<_, Steer> =
        GameClient::connect(net.endpoint(), addr, &protocol, Duration::ZERO).unwrap();
    let mut refusals = Vec::new();
    let mut player = None;
    for frame in 0..60u32 {
        let now = DT * frame;
        server.update(now).unwrap();
        while let Some(ev) = server.poll_event() {
            match ev {
                GameServerEvent::Joined(id) => {
                    let e = server.spawn(Owner::Client(id)).unwrap();
                    server.store_mut().set(e, &Pos { x: 0.0, y: 0.0 }).unwrap();
                    player = Some(e);
                }
                GameServerEvent::WriteRejected { reason, .. } => refusals.push(reason),
                _ => {}
            }
        }
        server.flush(now).unwrap();
        c.update(now).unwrap();
        while c.poll_event().is_some() {}
        if let Some(&me) = c.owned().first() {
            c.write(me, &Pos { x: 3.0, y: 3.0 }).unwrap();
            c.write(me, &Tag(true)).unwrap();
        }
        c.flush(now).unwrap();
    }
    let e = player.unwrap();
    assert_eq!(
        server.store().component::<Pos>(e),
        Some(Pos { x: 3.0, y: 3.0 })
    );
    assert_eq!(
        server.store().component::<Tag>(e),
        None,
        "a write added a component"
    );
    assert!(!refusals.is_empty());
    assert!(refusals.iter().all(|r| *r == WriteRefusal::NoSuchComponent));
}

#[test]
fn a_kicked_client_leaves_once() {
    let net = LoopbackNet::new(LoopbackConfig::default());
    let (protocol, _) = protocol();
    let (mut server, addr) = server_on(&net, &protocol, GameServerConfig::default());
    let mut c: GameClient<_, Steer> =
        GameClient::connect(net.endpoint(), addr, &protocol, Duration::ZERO).unwrap();
    let mut lefts = Vec::new();
    for frame in 0..60u32 {
        let now = DT * frame;
        server.update(now).unwrap();
        while let Some(ev) = server.poll_event() {
            if let GameServerEvent::Left(id, reason) = ev {
                lefts.push((id, reason));
            }
        }
        if frame == 20 {
            let id = server.clients()[0];
            assert!(server.kick(id));
        }
        server.flush(now).unwrap();
        c.update(now).unwrap();
        while c.poll_event().is_some() {}
        c.flush(now).unwrap();
    }
    assert_eq!(lefts.len(), 1, "{lefts:?}");
    assert_eq!(lefts[0].1, DisconnectReason::Kicked);
    assert!(!c.is_connected());
}

#[test]
fn owned_follows_transfers() {
    let net = LoopbackNet::new(LoopbackConfig::default());
    let (protocol, _) = protocol();
    let (mut server, addr) = server_on(&net, &protocol, GameServerConfig::default());
    let mut cs: Vec<GameClient<_, Steer>> = (0..2)
        .map(|_| GameClient::connect(net.endpoint(), addr, &protocol, Duration::ZERO).unwrap())
        .collect();
    let ball = server.spawn(Owner::Server).unwrap();
    server
        .store_mut()
        .set(ball, &Pos { x: 0.0, y: 0.0 })
        .unwrap();
    let mut held = [0u32; 2];
    for frame in 0..120u32 {
        let now = DT * frame;
        server.update(now).unwrap();
        while server.poll_event().is_some() {}
        // The ball goes to the first client, then the second, then back to the server.
        let ids = server.clients().to_vec();
        let owner = match frame {
            30..60 if !ids.is_empty() => Owner::Client(ids[0]),
            60..90 if ids.len() > 1 => Owner::Client(ids[1]),
            _ => Owner::Server,
        };
        server.store_mut().set_owner(ball, owner).unwrap();
        server.flush(now).unwrap();
        for (i, c) in cs.iter_mut().enumerate() {
            c.update(now).unwrap();
            while c.poll_event().is_some() {}
            let me = c.id().map(Owner::Client);
            let truth = me.map_or_else(Vec::new, |o| c.replicator().owned_by(o));
            assert_eq!(c.owned(), truth.as_slice(), "frame {frame}");
            held[i] += u32::from(c.owned() == [ball]);
            c.flush(now).unwrap();
        }
    }
    assert!(held[0] > 20 && held[1] > 20, "{held:?}");
    assert!(cs.iter().all(|c| c.owned().is_empty()));
}
