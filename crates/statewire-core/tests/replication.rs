//! Property tests: for arbitrary worlds, changes, losses, reordering and acks, the client's
//! quantized state equals the state the server recorded for every packet it applies, and equals
//! the server's world once the network is quiet. Random and mutated bytes only ever give errors.

mod common;

use common::*;
use proptest::prelude::*;
use statewire_core::*;

#[derive(Debug, Clone)]
enum Op {
    Spawn {
        id: u32,
        owner: Option<u64>,
        comps: u8,
        seed: u32,
    },
    Despawn(usize),
    Move {
        idx: usize,
        dx: i16,
        dy: i16,
    },
    Teleport {
        idx: usize,
        x: f32,
        y: f32,
    },
    Rotate {
        idx: usize,
        q: [f32; 4],
    },
    Hurt {
        idx: usize,
        dmg: i16,
    },
    Toggle {
        idx: usize,
        comp: u8,
    },
    Reown {
        idx: usize,
        owner: Option<u64>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u32..200, proptest::option::of(0u64..5), 0u8..8, any::<u32>())
            .prop_map(|(id, owner, comps, seed)| Op::Spawn { id, owner, comps, seed }),
        1 => any::<usize>().prop_map(Op::Despawn),
        6 => (any::<usize>(), -300i16..300, -300i16..300)
            .prop_map(|(idx, dx, dy)| Op::Move { idx, dx, dy }),
        1 => (any::<usize>(), -600.0f32..600.0, -600.0f32..600.0)
            .prop_map(|(idx, x, y)| Op::Teleport { idx, x, y }),
        2 => (any::<usize>(), proptest::array::uniform4(-1.0f32..1.0))
            .prop_map(|(idx, q)| Op::Rotate { idx, q }),
        2 => (any::<usize>(), -50i16..50).prop_map(|(idx, dmg)| Op::Hurt { idx, dmg }),
        1 => (any::<usize>(), 0u8..3).prop_map(|(idx, comp)| Op::Toggle { idx, comp }),
        1 => (any::<usize>(), proptest::option::of(0u64..5))
            .prop_map(|(idx, owner)| Op::Reown { idx, owner }),
    ]
}

fn apply(world: &mut VecWorld, op: &Op) {
    let n = world.ents.len();
    match *op {
        Op::Spawn {
            id,
            owner,
            comps,
            seed,
        } => {
            if world.ents.iter().any(|e| e.id == id) {
                return;
            }
            let f = (seed % 1000) as f32 - 500.0;
            world.ents.push(Ent {
                id,
                owner,
                pos: (comps & 1 != 0).then_some(Pos { x: f, y: -f / 2.0 }),
                rot: (comps & 2 != 0).then_some(Rot([0.0, 0.0, 0.0, 1.0])),
                health: (comps & 4 != 0).then_some(Health {
                    hp: 100,
                    alive: true,
                    team: seed % 4,
                }),
            });
        }
        _ if n == 0 => {}
        Op::Despawn(i) => {
            world.ents.remove(i % n);
        }
        Op::Move { idx, dx, dy } => {
            if let Some(p) = &mut world.ents[idx % n].pos {
                p.x += f32::from(dx) / 64.0;
                p.y += f32::from(dy) / 64.0;
            }
        }
        Op::Teleport { idx, x, y } => {
            if let Some(p) = &mut world.ents[idx % n].pos {
                *p = Pos { x, y };
            }
        }
        Op::Rotate { idx, q } => {
            if let Some(r) = &mut world.ents[idx % n].rot {
                r.0 = q;
            }
        }
        Op::Hurt { idx, dmg } => {
            if let Some(h) = &mut world.ents[idx % n].health {
                h.hp -= i64::from(dmg);
                h.alive = h.hp > 0;
            }
        }
        Op::Toggle { idx, comp } => {
            let e = &mut world.ents[idx % n];
            match comp {
                0 => {
                    e.pos = if e.pos.is_some() {
                        None
                    } else {
                        Some(Pos { x: 1.0, y: 2.0 })
                    }
                }
                1 => {
                    e.rot = if e.rot.is_some() {
                        None
                    } else {
                        Some(Rot([1.0, 0.0, 0.0, 0.0]))
                    }
                }
                _ => {
                    e.health = if e.health.is_some() {
                        None
                    } else {
                        Some(Health {
                            hp: 5,
                            alive: true,
                            team: 1,
                        })
                    }
                }
            }
        }
        Op::Reown { idx, owner } => world.ents[idx % n].owner = owner,
    }
}

/// One tick of network behaviour: whether the snapshot and the ack get through, after how many
/// ticks, and the packet budget used.
#[derive(Debug, Clone)]
struct Net {
    snap_delay: Option<u8>,
    ack_delay: Option<u8>,
    budget: u16,
}

fn net() -> impl Strategy<Value = Net> {
    (
        proptest::option::weighted(0.7, 0u8..4),
        proptest::option::weighted(0.7, 0u8..4),
        prop_oneof![3 => Just(1200u16), 1 => 60u16..400, 1 => Just(u16::MAX)],
    )
        .prop_map(|(snap_delay, ack_delay, budget)| Net {
            snap_delay,
            ack_delay,
            budget,
        })
}

fn run(
    registry: &Registry,
    ops: Vec<Vec<Op>>,
    nets: Vec<Net>,
    history_len: usize,
) -> Result<(), TestCaseError> {
    let me = ClientId(9);
    let mut server = ServerReplicator::new(ServerConfig {
        history_len,
        ..ServerConfig::default()
    });
    server.add_client(me).unwrap();
    let mut client = ClientReplicator::new(ClientConfig {
        history_len,
        ..ClientConfig::default()
    });
    let mut world = VecWorld::default();
    let mut mirror = VecWorld::default();
    let mut in_flight: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut acks: Vec<(u32, Tick)> = Vec::new();
    let quiet = 40u32;
    let total = ops.len() as u32 + quiet;
    for now in 0..total {
        let tick = Tick(now.wrapping_add(u32::MAX - 20)); // exercise wrap-around
        if let Some(batch) = ops.get(now as usize) {
            for o in batch {
                apply(&mut world, o);
            }
        }
        let snap = world.snapshot(registry);
        let quiet_phase = now as usize >= ops.len();
        let n = if quiet_phase {
            Net {
                snap_delay: Some(0),
                ack_delay: Some(0),
                budget: u16::MAX,
            }
        } else {
            nets[now as usize % nets.len()].clone()
        };
        server
            .set_packet_budget(me, Some(usize::from(n.budget)))
            .unwrap();
        let mut pkt = Vec::new();
        let stats = server
            .encode_for(registry, me, tick, &snap, &mut pkt)
            .unwrap();
        prop_assert!(
            pkt.len() <= usize::from(n.budget),
            "packet of {} bytes",
            pkt.len()
        );
        let recorded = server.sent_state(me, tick).unwrap().clone();
        if stats.pending == 0 && stats.oversized == 0 {
            prop_assert_eq!(&recorded, &snap);
        }
        if let Some(d) = n.snap_delay {
            in_flight.push((now + u32::from(d), pkt));
        }
        // Deliver due packets (in arrival order; equal times keep send order).
        let mut due: Vec<_> = in_flight
            .iter()
            .filter(|(t, _)| *t <= now)
            .cloned()
            .collect();
        in_flight.retain(|(t, _)| *t > now);
        due.sort_by_key(|(t, _)| *t);
        for (_, p) in due {
            let header = statewire_core::packet_header(&p).unwrap();
            let expected = server.sent_state(me, header.tick).cloned();
            match client.handle_packet(registry, &p, &mut mirror) {
                Ok(Applied::Applied(h)) => {
                    if let Some(exp) = expected {
                        prop_assert_eq!(client.state(), &exp, "tick {}", h.tick);
                    }
                    let ack = client.ack().unwrap();
                    // The mirror world, rebuilt from dequantized values, re-quantizes to the
                    // same state: the sink saw every change.
                    prop_assert_eq!(
                        mirror.sorted(),
                        VecWorld::from_snapshot(registry, client.state())
                    );
                    if let Some(d) = if quiet_phase { Some(0) } else { n.ack_delay } {
                        acks.push((now + u32::from(d), ack));
                    }
                }
                Ok(_) => {}
                Err(DecodeError::MissingBaseline(_)) => {}
                Err(e) => prop_assert!(false, "decode error {e}"),
            }
        }
        let (due_acks, rest): (Vec<_>, Vec<_>) = acks.iter().partition(|(t, _)| *t <= now);
        acks = rest;
        for (_, a) in due_acks {
            server.handle_ack(me, a).unwrap();
        }
    }
    prop_assert_eq!(client.state(), &world.snapshot(registry), "not converged");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn client_state_matches_server(
        ops in proptest::collection::vec(proptest::collection::vec(op(), 0..12), 1..60),
        nets in proptest::collection::vec(net(), 1..16),
        history_len in prop_oneof![Just(64usize), 2usize..8],
    ) {
        run(&registry(), ops, nets, history_len)?;
    }

    /// The same with positions and health in the range-coded tail.
    #[test]
    fn client_state_matches_server_entropy_coded(
        ops in proptest::collection::vec(proptest::collection::vec(op(), 0..12), 1..60),
        nets in proptest::collection::vec(net(), 1..16),
        history_len in prop_oneof![Just(64usize), 2usize..8],
    ) {
        run(&registry_entropy(), ops, nets, history_len)?;
    }

    #[test]
    fn random_bytes_are_errors_not_panics(
        data in proptest::collection::vec(any::<u8>(), 0..300),
        entropy in any::<bool>(),
    ) {
        let registry = if entropy { registry_entropy() } else { registry() };
        let mut client = ClientReplicator::new(ClientConfig::default());
        let mut sink = VecWorld::default();
        let _ = client.handle_packet(&registry, &data, &mut sink);
        // Whatever happened, the sink and the state agree.
        prop_assert_eq!(sink.sorted(), VecWorld::from_snapshot(&registry, client.state()));
    }

    /// Bit flips and cuts in a delta packet (updates included, so entropy-coded values too):
    /// an error, or a state the sink agrees with; never a panic.
    #[test]
    fn mutated_packets_are_errors_or_consistent(
        ops in proptest::collection::vec(op(), 1..80),
        moves in proptest::collection::vec(op(), 1..40),
        flips in proptest::collection::vec((any::<usize>(), 0u8..8), 1..4),
        cut in proptest::option::of(any::<usize>()),
        entropy in any::<bool>(),
    ) {
        let registry = if entropy { registry_entropy() } else { registry() };
        let mut world = VecWorld::default();
        for o in &ops {
            apply(&mut world, o);
        }
        let mut server = ServerReplicator::new(ServerConfig::default());
        server.add_client(ClientId(1)).unwrap();
        let mut first = Vec::new();
        server.encode_for(&registry, ClientId(1), Tick(5), &world.snapshot(&registry), &mut first).unwrap();
        let mut client = ClientReplicator::new(ClientConfig::default());
        let mut sink = VecWorld::default();
        client.handle_packet(&registry, &first, &mut sink).unwrap();
        server.handle_ack(ClientId(1), Tick(5)).unwrap();
        for o in &moves {
            apply(&mut world, o);
        }
        let mut pkt = Vec::new();
        server.encode_for(&registry, ClientId(1), Tick(6), &world.snapshot(&registry), &mut pkt).unwrap();
        for (at, bit) in flips {
            let i = at % pkt.len();
            pkt[i] ^= 1 << bit;
        }
        if let Some(c) = cut {
            pkt.truncate(c % (pkt.len() + 1));
        }
        let _ = client.handle_packet(&registry, &pkt, &mut sink);
        prop_assert_eq!(sink.sorted(), VecWorld::from_snapshot(&registry, client.state()));
    }

    /// Entropy coding changes the bytes, not the result: both registries give the same state.
    #[test]
    fn entropy_and_packed_agree(
        ops in proptest::collection::vec(op(), 1..80),
        moves in proptest::collection::vec(op(), 1..40),
    ) {
        let mut states = Vec::new();
        let mut sizes = Vec::new();
        for registry in [registry(), registry_entropy()] {
            let mut world = VecWorld::default();
            for o in &ops {
                apply(&mut world, o);
            }
            let mut server = ServerReplicator::new(ServerConfig::default());
            server.add_client(ClientId(1)).unwrap();
            let mut client = ClientReplicator::new(ClientConfig::default());
            let mut sink = VecWorld::default();
            let mut pkt = Vec::new();
            server.encode_for(&registry, ClientId(1), Tick(1), &world.snapshot(&registry), &mut pkt).unwrap();
            client.handle_packet(&registry, &pkt, &mut sink).unwrap();
            server.handle_ack(ClientId(1), Tick(1)).unwrap();
            for o in &moves {
                apply(&mut world, o);
            }
            pkt.clear();
            server.encode_for(&registry, ClientId(1), Tick(2), &world.snapshot(&registry), &mut pkt).unwrap();
            prop_assert!(pkt.len() <= 1200);
            client.handle_packet(&registry, &pkt, &mut sink).unwrap();
            states.push(VecWorld::from_snapshot(&registry, client.state()));
            sizes.push(pkt.len());
        }
        prop_assert_eq!(&states[0], &states[1]);
    }
}

/// A budget too small for everything: every packet stays within it, and the client still
/// converges once changes stop.
#[test]
fn tight_budget_converges_round_robin() {
    let registry = registry();
    let me = ClientId(1);
    let mut server = ServerReplicator::new(ServerConfig {
        max_packet_bytes: 200,
        ..ServerConfig::default()
    });
    server.add_client(me).unwrap();
    let mut client = ClientReplicator::new(ClientConfig::default());
    let mut sink = VecWorld::default();
    let mut world = VecWorld::default();
    for id in 0..500 {
        apply(
            &mut world,
            &Op::Spawn {
                id,
                owner: None,
                comps: 7,
                seed: id * 7,
            },
        );
    }
    let snap = world.snapshot(&registry);
    let mut packets = 0;
    for t in 1..=200u32 {
        let mut pkt = Vec::new();
        let stats = server
            .encode_for(&registry, me, Tick(t), &snap, &mut pkt)
            .unwrap();
        assert!(pkt.len() <= 200, "packet {} bytes", pkt.len());
        assert_eq!(stats.oversized, 0);
        client.handle_packet(&registry, &pkt, &mut sink).unwrap();
        server.handle_ack(me, client.ack().unwrap()).unwrap();
        packets += 1;
        if client.state() == &snap {
            break;
        }
    }
    assert_eq!(
        client.state(),
        &snap,
        "did not converge in {packets} packets"
    );
    // The full state alone needs this many 200-byte packets.
    let bits: u32 = (0..3)
        .map(|i| registry.schema(ComponentId(i)).unwrap().full_bits())
        .sum();
    let floor = (500 * bits).div_ceil(200 * 8);
    assert!(packets >= floor, "{packets} packets < {floor}");
    assert_eq!(sink.sorted(), VecWorld::from_snapshot(&registry, &snap));
}

/// An ack older than the ring forces a full-state packet that still decodes.
#[test]
fn baseline_out_of_ring_falls_back_to_full_state() {
    let registry = registry();
    let me = ClientId(1);
    let mut server = ServerReplicator::new(ServerConfig {
        history_len: 4,
        ..ServerConfig::default()
    });
    server.add_client(me).unwrap();
    let mut client = ClientReplicator::new(ClientConfig {
        history_len: 4,
        ..ClientConfig::default()
    });
    let mut sink = VecWorld::default();
    let mut world = VecWorld::default();
    apply(
        &mut world,
        &Op::Spawn {
            id: 3,
            owner: Some(2),
            comps: 7,
            seed: 1,
        },
    );
    let mut pkt = Vec::new();
    server
        .encode_for(&registry, me, Tick(1), &world.snapshot(&registry), &mut pkt)
        .unwrap();
    client.handle_packet(&registry, &pkt, &mut sink).unwrap();
    assert_eq!(
        server.handle_ack(me, Tick(1)).unwrap(),
        AckOutcome::Advanced
    );
    // Ten packets lost: tick 1 leaves the server's ring.
    for t in 2..12 {
        apply(
            &mut world,
            &Op::Move {
                idx: 0,
                dx: 5,
                dy: 5,
            },
        );
        pkt.clear();
        server
            .encode_for(&registry, me, Tick(t), &world.snapshot(&registry), &mut pkt)
            .unwrap();
    }
    let header = statewire_core::packet_header(&pkt).unwrap();
    assert_eq!(header.baseline, None, "expected a full-state packet");
    client.handle_packet(&registry, &pkt, &mut sink).unwrap();
    assert_eq!(client.state(), &world.snapshot(&registry));
    assert_eq!(server.handle_ack(me, Tick(1)).unwrap(), AckOutcome::Stale);
    assert_eq!(
        server.handle_ack(me, Tick(500)).unwrap(),
        AckOutcome::Unknown
    );
}

#[test]
fn stale_and_duplicate_packets_are_ignored_and_missing_baseline_is_an_error() {
    let registry = registry();
    let me = ClientId(1);
    let mut server = ServerReplicator::new(ServerConfig::default());
    server.add_client(me).unwrap();
    let mut client = ClientReplicator::new(ClientConfig::default());
    let mut sink = VecWorld::default();
    let mut world = VecWorld::default();
    apply(
        &mut world,
        &Op::Spawn {
            id: 3,
            owner: None,
            comps: 1,
            seed: 1,
        },
    );
    let mut p1 = Vec::new();
    server
        .encode_for(&registry, me, Tick(1), &world.snapshot(&registry), &mut p1)
        .unwrap();
    server.handle_ack(me, Tick(1)).unwrap(); // server believes tick 1 arrived
    apply(
        &mut world,
        &Op::Move {
            idx: 0,
            dx: 1,
            dy: 0,
        },
    );
    let mut p2 = Vec::new();
    server
        .encode_for(&registry, me, Tick(2), &world.snapshot(&registry), &mut p2)
        .unwrap();
    // p2 is a delta against tick 1, which this client never got.
    assert_eq!(
        client.handle_packet(&registry, &p2, &mut sink),
        Err(DecodeError::MissingBaseline(Tick(1)))
    );
    assert!(client.state().is_empty());
    assert!(matches!(
        client.handle_packet(&registry, &p1, &mut sink),
        Ok(Applied::Applied(_))
    ));
    assert!(matches!(
        client.handle_packet(&registry, &p1, &mut sink),
        Ok(Applied::Stale(_))
    ));
    assert!(matches!(
        client.handle_packet(&registry, &p2, &mut sink),
        Ok(Applied::Applied(_))
    ));
    assert_eq!(client.state(), &world.snapshot(&registry));
    assert_eq!(
        server.encode_for(&registry, me, Tick(2), &world.snapshot(&registry), &mut p2),
        Err(ReplicationError::StaleTick(Tick(2)))
    );
}
