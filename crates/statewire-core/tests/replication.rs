//! Property tests over the store + per-client replicator: for arbitrary worlds, changes,
//! losses, duplication, reordering, budgets and acks, every entity the client holds after a
//! packet is a state the server's store had (the entities a packet carried: the store's state at
//! that packet's tick), and once the network is quiet the client's quantized state equals the
//! store's bit for bit. Random and mutated bytes only ever give errors.

mod common;

use std::collections::{BTreeMap, BTreeSet};

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

/// A client world that also records what each packet did to it.
#[derive(Debug, Default)]
struct Recorder {
    world: VecWorld,
    /// Entities spawned or changed since the last `clear`.
    touched: BTreeSet<u32>,
    /// Entities despawned since the last `clear`.
    despawned: Vec<u32>,
}

impl Recorder {
    fn clear(&mut self) {
        self.touched.clear();
        self.despawned.clear();
    }
}

impl WorldSink for Recorder {
    fn spawn(&mut self, id: EntityId, owner: Owner) {
        self.world.spawn(id, owner);
        self.touched.insert(id.0);
    }
    fn despawn(&mut self, id: EntityId) {
        self.world.despawn(id);
        self.despawned.push(id.0);
    }
    fn set_owner(&mut self, id: EntityId, owner: Owner) {
        self.world.set_owner(id, owner);
        self.touched.insert(id.0);
    }
    fn insert(&mut self, id: EntityId, c: ComponentView<'_>) {
        self.world.insert(id, c);
        self.touched.insert(id.0);
    }
    fn remove(&mut self, id: EntityId, c: ComponentView<'_>) {
        self.world.remove(id, c);
        self.touched.insert(id.0);
    }
}

/// The dequantized entities of `snap`, by id.
fn ents(registry: &Registry, snap: &Snapshot) -> BTreeMap<u32, Ent> {
    VecWorld::from_snapshot(registry, snap)
        .ents
        .into_iter()
        .map(|e| (e.id, e))
        .collect()
}

/// One server, one client, a lossless link unless the test drops things itself.
struct Loop {
    registry: Registry,
    store: Store,
    server: ServerReplicator,
    client: ClientReplicator,
    sink: Recorder,
    me: ClientId,
}

impl Loop {
    fn new(registry: Registry, history: u32, server: ServerConfig) -> Loop {
        let me = ClientId(1);
        let store = Store::new(
            registry.clone(),
            StoreConfig {
                history_ticks: history,
                ..StoreConfig::default()
            },
        );
        let mut server = ServerReplicator::new(server);
        server.add_client(me).unwrap();
        let client = ClientReplicator::new(ClientConfig {
            history_len: history,
            ..ClientConfig::default()
        });
        Loop {
            registry,
            store,
            server,
            client,
            sink: Recorder::default(),
            me,
        }
    }

    /// Starts tick `t` with the store equal to `world`.
    fn set_world(&mut self, t: u32, world: &VecWorld) {
        self.store.begin_tick(Tick(t)).unwrap();
        self.store
            .apply_snapshot(&world.snapshot(&self.registry))
            .unwrap();
    }

    /// Takes in the tick's changes and encodes the client's packet.
    fn packet(&mut self) -> (Vec<u8>, EncodeStats) {
        self.server.update(&mut self.store, None);
        let mut pkt = Vec::new();
        let stats = self
            .server
            .encode_for(&self.store, self.me, &mut pkt)
            .unwrap();
        (pkt, stats)
    }

    fn deliver(&mut self, pkt: &[u8]) -> Result<Applied, DecodeError> {
        self.sink.clear();
        let r = self
            .client
            .handle_packet(&self.registry, pkt, &mut self.sink);
        assert_eq!(
            self.sink.world.sorted(),
            VecWorld::from_snapshot(&self.registry, &self.client.snapshot()),
            "the sink disagrees with the client's state"
        );
        r
    }

    fn ack(&mut self) -> AckOutcome {
        let a = self.client.ack().expect("nothing to acknowledge");
        self.server.handle_ack(self.me, a).unwrap()
    }

    fn converged(&self) -> bool {
        self.client.snapshot() == self.store.snapshot()
    }
}

/// One tick of network behaviour: whether the packet and the ack get through, after how many
/// ticks, whether the packet is duplicated, and the packet budget used.
#[derive(Debug, Clone)]
struct Net {
    snap_delay: Option<u8>,
    ack_delay: Option<u8>,
    duplicate: bool,
    budget: u16,
}

fn net() -> impl Strategy<Value = Net> {
    (
        proptest::option::weighted(0.7, 0u8..4),
        proptest::option::weighted(0.7, 0u8..4),
        proptest::bool::weighted(0.15),
        prop_oneof![3 => Just(1200u16), 1 => 60u16..400, 1 => Just(u16::MAX)],
    )
        .prop_map(|(snap_delay, ack_delay, duplicate, budget)| Net {
            snap_delay,
            ack_delay,
            duplicate,
            budget,
        })
}

fn run(
    registry: &Registry,
    ops: Vec<Vec<Op>>,
    nets: Vec<Net>,
    history: u32,
) -> Result<(), TestCaseError> {
    let me = ClientId(9);
    let mut store = Store::new(
        registry.clone(),
        StoreConfig {
            history_ticks: history,
            ..StoreConfig::default()
        },
    );
    let mut server = ServerReplicator::new(ServerConfig::default());
    server.add_client(me).unwrap();
    let mut client = ClientReplicator::new(ClientConfig {
        history_len: history,
        ..ClientConfig::default()
    });
    let mut world = VecWorld::default();
    let mut mirror = Recorder::default();
    // The store's (dequantized) state at the end of every tick, by tick index.
    let mut past: Vec<BTreeMap<u32, Ent>> = Vec::new();
    let mut in_flight: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut acks: Vec<(u32, AckFrame)> = Vec::new();
    // Exercise wrap-around, tick u32::MAX included.
    let first = u32::MAX - 20;
    let tick_at = |now: u32| Tick(first.wrapping_add(now));
    let quiet = 40u32;
    let total = ops.len() as u32 + quiet;
    for now in 0..total {
        let tick = tick_at(now);
        store.begin_tick(tick).unwrap();
        if let Some(batch) = ops.get(now as usize) {
            for o in batch {
                apply(&mut world, o);
            }
        }
        let snap = world.snapshot(registry);
        store.apply_snapshot(&snap).unwrap();
        prop_assert_eq!(&store.snapshot(), &snap);
        past.push(ents(registry, &snap));
        let quiet_phase = now as usize >= ops.len();
        let n = if quiet_phase {
            Net {
                snap_delay: Some(0),
                ack_delay: Some(0),
                duplicate: false,
                budget: u16::MAX,
            }
        } else {
            nets[now as usize % nets.len()].clone()
        };
        let budget = usize::from(n.budget);
        server.set_packet_budget(me, Some(budget)).unwrap();
        server.update(&mut store, None);
        let mut pkt = Vec::new();
        let stats = server.encode_for(&store, me, &mut pkt).unwrap();
        prop_assert!(
            pkt.len() <= budget && !stats.over_budget,
            "packet of {} bytes, budget {}",
            pkt.len(),
            budget
        );
        if let Some(d) = n.snap_delay {
            if n.duplicate {
                in_flight.push((now + u32::from(d) + 1, pkt.clone()));
            }
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
            let before = client.snapshot();
            let newest = client.tick();
            mirror.clear();
            match client.handle_packet(registry, &p, &mut mirror) {
                Ok(Applied::Applied(h)) => {
                    prop_assert_eq!(h.tick, header.tick);
                    prop_assert!(newest.is_none_or(|n| h.tick.is_after(n)));
                    let at = (0..total)
                        .position(|k| tick_at(k) == h.tick)
                        .expect("a tick the server sent");
                    // What the packet carried is the store's state at its tick; everything
                    // else the client holds is a state the store had before.
                    for (id, e) in &ents(registry, &client.snapshot()) {
                        if mirror.touched.contains(id) {
                            prop_assert_eq!(
                                Some(e),
                                past[at].get(id),
                                "entity {} after packet {}",
                                id,
                                h.tick
                            );
                        } else {
                            prop_assert!(
                                past[..=at].iter().any(|s| s.get(id) == Some(e)),
                                "entity {} after packet {}: never the server's state",
                                id,
                                h.tick
                            );
                        }
                    }
                    // The mirror world, rebuilt from dequantized values, matches: the sink
                    // saw every change.
                    prop_assert_eq!(
                        mirror.world.sorted(),
                        VecWorld::from_snapshot(registry, &client.snapshot())
                    );
                    let ack = client.ack().unwrap();
                    prop_assert!(ack.covers(h.tick));
                    if let Some(d) = if quiet_phase { Some(0) } else { n.ack_delay } {
                        acks.push((now + u32::from(d), ack));
                    }
                }
                Ok(Applied::Stale(h)) => {
                    // Late or duplicate: ignored.
                    prop_assert!(newest.is_some_and(|n| !h.tick.is_after(n)));
                    prop_assert_eq!(client.snapshot(), before);
                    prop_assert!(mirror.touched.is_empty() && mirror.despawned.is_empty());
                }
                Ok(other) => prop_assert!(false, "unexpected {other:?}"),
                Err(e) => prop_assert!(false, "decode error {e} on packet {}", header.tick),
            }
        }
        let (due_acks, rest): (Vec<_>, Vec<_>) = acks.iter().partition(|(t, _)| *t <= now);
        acks = rest;
        for (_, a) in due_acks {
            server.handle_ack(me, a).unwrap();
        }
    }
    prop_assert_eq!(client.snapshot(), store.snapshot(), "not converged");
    prop_assert_eq!(client.snapshot(), world.snapshot(registry));
    prop_assert_eq!(
        mirror.world.sorted(),
        VecWorld::from_snapshot(registry, &store.snapshot())
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn client_state_matches_server(
        ops in proptest::collection::vec(proptest::collection::vec(op(), 0..12), 1..60),
        nets in proptest::collection::vec(net(), 1..16),
        history in prop_oneof![Just(64u32), 2u32..8],
    ) {
        run(&registry(), ops, nets, history)?;
    }

    /// The same with positions and health in the range-coded tail.
    #[test]
    fn client_state_matches_server_entropy_coded(
        ops in proptest::collection::vec(proptest::collection::vec(op(), 0..12), 1..60),
        nets in proptest::collection::vec(net(), 1..16),
        history in prop_oneof![Just(64u32), 2u32..8],
    ) {
        run(&registry_entropy(), ops, nets, history)?;
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
        prop_assert_eq!(sink.sorted(), VecWorld::from_snapshot(&registry, &client.snapshot()));
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
        let mut l = Loop::new(registry, 32, ServerConfig::default());
        l.set_world(5, &world);
        let (first, _) = l.packet();
        prop_assert!(matches!(l.deliver(&first), Ok(Applied::Applied(_))));
        l.ack();
        for o in &moves {
            apply(&mut world, o);
        }
        l.set_world(6, &world);
        let (mut pkt, _) = l.packet();
        for (at, bit) in flips {
            let i = at % pkt.len();
            pkt[i] ^= 1 << bit;
        }
        if let Some(c) = cut {
            pkt.truncate(c % (pkt.len() + 1));
        }
        // `deliver` checks that the sink agrees with the client's state.
        let _ = l.deliver(&pkt);
    }

    /// Entropy coding changes the bytes, not the result: both registries give the same state,
    /// the store's.
    #[test]
    fn entropy_and_packed_agree(
        ops in proptest::collection::vec(op(), 1..80),
        moves in proptest::collection::vec(op(), 1..40),
    ) {
        let mut states = Vec::new();
        for registry in [registry(), registry_entropy()] {
            let mut world = VecWorld::default();
            for o in &ops {
                apply(&mut world, o);
            }
            let mut l = Loop::new(registry, 32, ServerConfig {
                max_packet_bytes: 1 << 16,
                ..ServerConfig::default()
            });
            l.set_world(1, &world);
            let (pkt, stats) = l.packet();
            prop_assert_eq!(stats.pending, 0);
            l.deliver(&pkt).unwrap();
            l.ack();
            for o in &moves {
                apply(&mut world, o);
            }
            l.set_world(2, &world);
            let (pkt, stats) = l.packet();
            prop_assert_eq!(stats.pending, 0);
            l.deliver(&pkt).unwrap();
            prop_assert!(l.converged());
            states.push(l.client.snapshot());
        }
        prop_assert_eq!(&states[0], &states[1]);
    }
}

/// One client with a 200-byte budget, and a world of `n` entities (none sent yet).
fn tight_budget_world(n: u32) -> (Loop, VecWorld) {
    let l = Loop::new(
        registry(),
        32,
        ServerConfig {
            max_packet_bytes: 200,
            ..ServerConfig::default()
        },
    );
    let mut world = VecWorld::default();
    spawn_many(&mut world, n);
    (l, world)
}

/// Moves every entity with a position one step along x.
fn walk_all(world: &mut VecWorld) {
    for e in &mut world.ents {
        if let Some(p) = &mut e.pos {
            p.x = (p.x + 1.0 / 64.0).clamp(-500.0, 500.0);
        }
    }
}

fn spawn_many(world: &mut VecWorld, n: u32) {
    for id in 0..n {
        apply(
            world,
            &Op::Spawn {
                id,
                owner: None,
                comps: 7,
                seed: id * 7,
            },
        );
    }
}

/// A budget far too small for the world: every packet stays within it, every entity is
/// eventually sent, and the client converges in about as few packets as the full state needs.
/// (Replaces the round-robin cursor test of the snapshot-per-client model.)
#[test]
fn tight_budget_sends_every_entity_and_converges() {
    let mut l = Loop::new(
        registry(),
        32,
        ServerConfig {
            max_packet_bytes: 200,
            ..ServerConfig::default()
        },
    );
    let mut world = VecWorld::default();
    spawn_many(&mut world, 500);
    let mut received = BTreeSet::new();
    let mut packets = 0u32;
    for t in 1..=200u32 {
        if t == 1 {
            l.set_world(t, &world);
        } else {
            l.store.begin_tick(Tick(t)).unwrap();
        }
        let (pkt, stats) = l.packet();
        assert!(pkt.len() <= 200, "packet {} bytes", pkt.len());
        assert_eq!(stats.oversized, 0);
        assert!(!stats.over_budget);
        assert!(matches!(l.deliver(&pkt), Ok(Applied::Applied(_))));
        assert!(l.sink.despawned.is_empty(), "despawn of a live entity");
        received.extend(l.sink.touched.iter().copied());
        assert_eq!(l.ack(), AckOutcome::Advanced);
        packets += 1;
        if l.converged() {
            break;
        }
    }
    assert!(l.converged(), "did not converge in {packets} packets");
    assert_eq!(received.len(), 500);
    // The full state alone needs this many 200-byte packets.
    let bits: u32 = (0..3)
        .map(|i| l.registry.schema(ComponentId(i)).unwrap().full_bits())
        .sum();
    let floor = (500 * bits).div_ceil(200 * 8);
    assert!(packets >= floor, "{packets} packets < {floor}");
    assert!(
        packets <= floor * 2 + 2,
        "{packets} packets for a floor of {floor}"
    );
    assert_eq!(
        l.sink.world.sorted(),
        VecWorld::from_snapshot(&l.registry, &world.snapshot(&l.registry))
    );
}

/// Every entity changes every tick and a packet holds a fraction of them: priority still sends
/// each one within a bounded number of packets (nothing starves), and the client converges
/// once the changes stop.
#[test]
fn tight_budget_with_constant_changes_starves_nothing() {
    let n = 300u32;
    let (mut l, mut world) = tight_budget_world(n);
    let mut last_seen = vec![0u32; n as usize];
    let mut min_records = usize::MAX;
    let mut worst = 0u32;
    let moving = 300u32;
    for t in 1..=moving + 200 {
        if t <= moving {
            for e in &mut world.ents {
                if let Some(p) = &mut e.pos {
                    p.x = (p.x + 1.0 / 64.0).clamp(-500.0, 500.0);
                }
            }
        }
        l.set_world(t, &world);
        let (pkt, stats) = l.packet();
        assert!(pkt.len() <= 200 && !stats.over_budget);
        if t <= moving {
            min_records = min_records.min(stats.records);
        }
        l.deliver(&pkt).unwrap();
        l.ack();
        for &id in &l.sink.touched {
            last_seen[id as usize] = t;
        }
        if t <= moving && t > 50 {
            for (id, &s) in last_seen.iter().enumerate() {
                worst = worst.max(t - s);
                assert!(
                    t - s <= 2 * n.div_ceil(min_records as u32) + 2,
                    "entity {id} waited {} packets at tick {t} (min {min_records} records/packet)",
                    t - s
                );
            }
        }
        if t > moving && l.converged() {
            break;
        }
    }
    assert!(l.converged(), "did not converge after the changes stopped");
    assert!(worst > 0);
}

/// Every entity changes every tick and a packet holds a fraction of them: the entity the
/// client owns is in every packet all the same (its prediction reconciles against it), while
/// the others take turns.
#[test]
fn the_clients_own_entity_goes_first() {
    let n = 300u32;
    let (mut l, mut world) = tight_budget_world(n);
    let mine = 250u32;
    world.ents[mine as usize].owner = Some(l.me.0);
    let (mut with_mine, mut others_missed) = (0, 0);
    for t in 1..=60u32 {
        walk_all(&mut world);
        l.set_world(t, &world);
        let (pkt, stats) = l.packet();
        assert!(pkt.len() <= 200 && !stats.over_budget);
        l.deliver(&pkt).unwrap();
        l.ack();
        if l.sink.touched.contains(&mine) {
            with_mine += 1;
        }
        others_missed += (0..n).filter(|id| !l.sink.touched.contains(id)).count();
    }
    assert_eq!(with_mine, 60, "the owned entity missed a packet");
    // The budget really was too small for everything.
    assert!(others_missed > 60 * 100, "{others_missed}");
}

/// A client that owns more than `owned_first` changing entities cannot starve its view: past
/// the first few, its own entities compete by priority like the rest.
#[test]
fn owning_many_entities_starves_nothing() {
    let n = 300u32;
    let (mut l, mut world) = tight_budget_world(n);
    for e in world.ents.iter_mut().take(60) {
        e.owner = Some(l.me.0);
    }
    let mut last_seen = vec![0u32; n as usize];
    let mut worst_other = 0;
    for t in 1..=150u32 {
        walk_all(&mut world);
        l.set_world(t, &world);
        let (pkt, stats) = l.packet();
        assert!(pkt.len() <= 200 && !stats.over_budget);
        l.deliver(&pkt).unwrap();
        l.ack();
        for &id in &l.sink.touched {
            last_seen[id as usize] = t;
        }
        if t > 60 {
            for (id, &seen) in last_seen.iter().enumerate().skip(60) {
                worst_other = worst_other.max(t - seen);
                assert!(seen > 0, "entity {id} never sent by tick {t}");
            }
        }
    }
    // Everything else still goes out, within a bounded wait.
    assert!(worst_other < 60, "an entity waited {worst_other} packets");
}

/// A small xorshift generator for the seeded tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// A small budget while packets and acks are lost in bursts: entities the server keeps never
/// disappear from the client (no flicker: no despawn, no double spawn), and the client
/// converges once the link is clean. (Replaces the history-ring "flicker" caveat of the
/// snapshot-per-client model.)
#[test]
fn tight_budget_and_lost_acks_never_flicker() {
    for seed in 1..=8u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut l = Loop::new(
            registry(),
            8,
            ServerConfig {
                max_packet_bytes: 150,
                ..ServerConfig::default()
            },
        );
        let mut world = VecWorld::default();
        spawn_many(&mut world, 150);
        let mut held = 0;
        let mut burst = 0;
        for t in 1..=600u32 {
            let noisy = t <= 300;
            if noisy {
                for _ in 0..10 {
                    let i = (rng.next() % 150) as usize;
                    if let Some(p) = &mut world.ents[i].pos {
                        p.y = ((rng.next() % 512) as f32) / 4.0;
                    }
                }
            }
            l.set_world(t, &world);
            let (pkt, stats) = l.packet();
            assert!(pkt.len() <= 150 && !stats.over_budget, "seed {seed}");
            if noisy && burst == 0 && rng.chance(10) {
                burst = 1 + rng.next() % 12;
            }
            let lost = noisy && (burst > 0 || rng.chance(20));
            burst = burst.saturating_sub(1);
            if !lost {
                l.deliver(&pkt)
                    .unwrap_or_else(|e| panic!("seed {seed} tick {t}: {e}"));
                assert!(
                    l.sink.despawned.is_empty(),
                    "seed {seed} tick {t}: despawned {:?}",
                    l.sink.despawned
                );
                assert!(
                    l.client.len() >= held,
                    "seed {seed} tick {t}: entities vanished"
                );
                held = l.client.len();
                if !noisy || !rng.chance(40) {
                    l.ack();
                }
            }
            if !noisy && l.converged() {
                break;
            }
        }
        assert!(l.converged(), "seed {seed}: did not converge");
    }
}

/// Lost packets for longer than the shared history: the entity's next record is a full state
/// (a client holding nothing can apply it), and acks are judged per packet.
#[test]
fn baseline_older_than_history_falls_back_to_full_state() {
    let mut l = Loop::new(registry(), 4, ServerConfig::default());
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
    l.set_world(1, &world);
    let (pkt, _) = l.packet();
    l.deliver(&pkt).unwrap();
    assert_eq!(l.ack(), AckOutcome::Advanced);
    // Ten packets lost: the acknowledged tick 1 leaves the history window.
    let mut pkt = Vec::new();
    for t in 2..12 {
        apply(
            &mut world,
            &Op::Move {
                idx: 0,
                dx: 5,
                dy: 5,
            },
        );
        l.set_world(t, &world);
        pkt = l.packet().0;
    }
    let mut fresh = ClientReplicator::new(ClientConfig::default());
    let mut fresh_sink = VecWorld::default();
    assert!(
        matches!(
            fresh.handle_packet(&l.registry, &pkt, &mut fresh_sink),
            Ok(Applied::Applied(_))
        ),
        "expected a full-state record"
    );
    assert_eq!(fresh.snapshot(), l.store.snapshot());
    l.deliver(&pkt).unwrap();
    assert!(l.converged());
    let me = l.me;
    assert_eq!(
        l.server.handle_ack(me, AckFrame::single(Tick(1))).unwrap(),
        AckOutcome::Stale
    );
    assert_eq!(
        l.server
            .handle_ack(me, AckFrame::single(Tick(500)))
            .unwrap(),
        AckOutcome::Unknown
    );
    assert_eq!(l.ack(), AckOutcome::Advanced);
    assert_eq!(l.server.acked(me), Some(Tick(11)));
    // Acknowledged again: the next change is a delta (a client holding nothing cannot use it).
    apply(
        &mut world,
        &Op::Move {
            idx: 0,
            dx: 1,
            dy: 0,
        },
    );
    l.set_world(12, &world);
    let (pkt, _) = l.packet();
    let mut fresh = ClientReplicator::new(ClientConfig::default());
    assert!(matches!(
        fresh.handle_packet(&l.registry, &pkt, &mut VecWorld::default()),
        Err(DecodeError::MissingBaseline(Tick(11)))
    ));
    l.deliver(&pkt).unwrap();
    assert!(l.converged());
}

/// An entity that does not change for longer than the history window keeps its one version,
/// and its next change is still a delta against the state the client acknowledged.
#[test]
fn idle_entity_deltas_against_its_old_acknowledged_state() {
    let mut l = Loop::new(registry(), 4, ServerConfig::default());
    let mut world = VecWorld::default();
    spawn_many(&mut world, 2);
    l.set_world(1, &world);
    let (pkt, _) = l.packet();
    l.deliver(&pkt).unwrap();
    l.ack();
    // Entity 1 keeps changing; entity 0 sits still for 40 ticks.
    for t in 2..=41 {
        world.ents[1].health.as_mut().unwrap().hp = i64::from(t);
        l.set_world(t, &world);
        let (pkt, _) = l.packet();
        l.deliver(&pkt).unwrap();
        l.ack();
    }
    world.ents[0].health.as_mut().unwrap().hp = 7;
    l.set_world(42, &world);
    let (pkt, _) = l.packet();
    // Both records are deltas: a client holding nothing cannot apply the packet.
    let mut fresh = ClientReplicator::new(ClientConfig::default());
    assert!(matches!(
        fresh.handle_packet(&l.registry, &pkt, &mut VecWorld::default()),
        Err(DecodeError::MissingBaseline(_))
    ));
    l.deliver(&pkt).unwrap();
    assert!(l.converged());
    assert_eq!(l.sink.touched, BTreeSet::from([0]));
}

#[test]
fn stale_and_duplicate_packets_are_ignored_and_missing_baseline_is_an_error() {
    let mut l = Loop::new(registry(), 32, ServerConfig::default());
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
    l.set_world(1, &world);
    let (p1, _) = l.packet();
    // The server is told tick 1 arrived, though this client never got it.
    assert_eq!(
        l.server
            .handle_ack(l.me, AckFrame::single(Tick(1)))
            .unwrap(),
        AckOutcome::Advanced
    );
    apply(
        &mut world,
        &Op::Move {
            idx: 0,
            dx: 1,
            dy: 0,
        },
    );
    l.set_world(2, &world);
    let (p2, _) = l.packet();
    // p2 is a delta against tick 1.
    assert_eq!(l.deliver(&p2), Err(DecodeError::MissingBaseline(Tick(1))));
    assert!(l.client.is_empty());
    assert_eq!(l.client.ack(), None);
    assert!(matches!(l.deliver(&p1), Ok(Applied::Applied(_))));
    assert!(matches!(l.deliver(&p1), Ok(Applied::Stale(_))));
    assert!(matches!(l.deliver(&p2), Ok(Applied::Applied(_))));
    assert!(matches!(l.deliver(&p2), Ok(Applied::Stale(_))));
    assert_eq!(l.client.late_packets(), 2);
    assert_eq!(l.client.tick(), Some(Tick(2)));
    assert!(l.converged());
    let mut out = Vec::new();
    assert_eq!(
        l.server.encode_for(&l.store, l.me, &mut out),
        Err(ReplicationError::StaleTick(Tick(2)))
    );
}

/// A packet overtaken by a newer one is dropped and not acknowledged; the server learns from
/// the ack that it was lost and sends what it carried again.
#[test]
fn reordered_packet_is_dropped_and_its_content_resent() {
    let mut l = Loop::new(registry(), 32, ServerConfig::default());
    let mut world = VecWorld::default();
    let spawn = |world: &mut VecWorld, id| {
        apply(
            world,
            &Op::Spawn {
                id,
                owner: None,
                comps: 5,
                seed: id,
            },
        );
    };
    spawn(&mut world, 1);
    l.set_world(1, &world);
    let (p1, _) = l.packet();
    spawn(&mut world, 2);
    l.set_world(2, &world);
    let (p2, s2) = l.packet();
    assert_eq!(s2.records, 1, "entity 1 is in flight, only entity 2 is new");
    assert!(matches!(l.deliver(&p2), Ok(Applied::Applied(_))));
    assert!(matches!(l.deliver(&p1), Ok(Applied::Stale(_))));
    assert_eq!(l.client.late_packets(), 1);
    let ack = l.client.ack().unwrap();
    assert_eq!(ack, AckFrame::single(Tick(2)));
    assert!(!ack.covers(Tick(1)));
    assert!(!l.client.contains(EntityId(1)));
    assert_eq!(
        l.server.handle_ack(l.me, ack).unwrap(),
        AckOutcome::Advanced
    );
    l.store.begin_tick(Tick(3)).unwrap();
    let (p3, s3) = l.packet();
    assert_eq!(s3.records, 1, "entity 1 again");
    l.deliver(&p3).unwrap();
    assert!(l.converged());
    assert_eq!(l.ack(), AckOutcome::Advanced);
    l.store.begin_tick(Tick(4)).unwrap();
    assert_eq!(l.packet().1.records, 0, "nothing left to send");
}

#[test]
fn ack_frames_cover_the_packets_they_name_and_round_trip() {
    let a = AckFrame {
        newest: Tick(1),
        earlier: 0b101,
    };
    assert!(a.covers(Tick(1)));
    assert!(a.covers(Tick(0)));
    assert!(!a.covers(Tick(u32::MAX)));
    assert!(a.covers(Tick(u32::MAX - 1)), "across wrap-around");
    assert!(!a.covers(Tick(2)));
    assert_eq!(AckFrame::decode(&a.encode()), Some(a));
    assert_eq!(AckFrame::decode(&a.encode()[..7]), None);
    // The client's frame after applying ticks 10, 11 and 13.
    let mut l = Loop::new(registry(), 32, ServerConfig::default());
    let mut world = VecWorld::default();
    spawn_many(&mut world, 1);
    for t in 10..=13 {
        world.ents[0].health.as_mut().unwrap().hp = i64::from(t);
        l.set_world(t, &world);
        let (pkt, _) = l.packet();
        if t != 12 {
            l.deliver(&pkt).unwrap();
        }
    }
    assert_eq!(
        l.client.ack(),
        Some(AckFrame {
            newest: Tick(13),
            earlier: 0b110
        })
    );
    assert_eq!(l.ack(), AckOutcome::Advanced);
    assert!(l.converged());
}

/// Regression: tick `u32::MAX` is an ordinary tick (records once used it as "no tick", so an
/// entity sent at `u32::MAX` and despawned at 0 kept living on the client).
#[test]
fn entity_sent_at_tick_u32_max_gets_its_despawn() {
    let mut l = Loop::new(registry(), 32, ServerConfig::default());
    let mut world = VecWorld::default();
    spawn_many(&mut world, 1);
    l.set_world(u32::MAX, &world);
    let (pkt, _) = l.packet();
    l.deliver(&pkt).unwrap();
    assert_eq!(l.ack(), AckOutcome::Advanced);
    assert!(l.client.contains(EntityId(0)));
    world.ents.clear();
    l.set_world(0, &world);
    let (pkt, _) = l.packet();
    l.deliver(&pkt).unwrap();
    l.ack();
    assert!(
        !l.client.contains(EntityId(0)),
        "the client still holds entity 0, despawned at tick 0"
    );
    assert!(l.converged());
}

/// A client world that also collects events and despawns per packet.
#[derive(Debug, Default)]
struct EventWorld {
    world: VecWorld,
    events: Vec<GameEvent>,
    despawned: Vec<EntityId>,
}

impl WorldSink for EventWorld {
    fn spawn(&mut self, id: EntityId, owner: Owner) {
        self.world.spawn(id, owner);
    }
    fn despawn(&mut self, id: EntityId) {
        self.world.despawn(id);
        self.despawned.push(id);
    }
    fn insert(&mut self, id: EntityId, c: ComponentView<'_>) {
        self.world.insert(id, c);
    }
    fn remove(&mut self, id: EntityId, c: ComponentView<'_>) {
        self.world.remove(id, c);
    }
}

impl EventSink for EventWorld {
    fn event(&mut self, e: &GameEvent) {
        self.events.push(e.clone());
    }
}

/// Regression: the despawn of an entity an event names travels in every packet that carries
/// the event, even while an earlier copy of the despawn is still in flight (it may be lost).
#[test]
fn event_resent_after_loss_carries_its_despawn() {
    let registry = registry();
    let me = ClientId(1);
    let mut store = Store::new(registry.clone(), StoreConfig::default());
    let mut server = ServerReplicator::new(ServerConfig::default());
    server.add_client(me).unwrap();
    let mut events = EventServer::new(EventConfig::default());
    let mut client = ClientReplicator::new(ClientConfig::default());
    let mut sink = EventWorld::default();
    let enemy = EntityId(100);
    // Tick 1: the enemy exists; delivered and acknowledged.
    store.begin_tick(Tick(1)).unwrap();
    store.spawn(enemy, Owner::Server).unwrap();
    server.update(&mut store, Some(&events));
    let mut pkt = Vec::new();
    server
        .encode_for_with_events(&store, me, &events, &mut pkt)
        .unwrap();
    client
        .handle_packet_with_events(&registry, &pkt, &mut sink)
        .unwrap();
    server.handle_ack(me, client.ack().unwrap()).unwrap();
    // Tick 2: it is killed and despawned; the packet is lost.
    store.begin_tick(Tick(2)).unwrap();
    events
        .propose(Proposal {
            proposer: Writer::Server,
            seq: 0,
            tick: Tick(2),
            kind: 1,
            entities: [enemy].into_iter().collect(),
            data: Default::default(),
        })
        .unwrap();
    assert_eq!(events.resolve(Tick(2), |_| true).len(), 1);
    store.despawn(enemy).unwrap();
    server.update(&mut store, Some(&events));
    pkt.clear();
    server
        .encode_for_with_events(&store, me, &events, &mut pkt)
        .unwrap();
    // Tick 3: the event is sent again, and must bring the despawn with it.
    store.begin_tick(Tick(3)).unwrap();
    server.update(&mut store, Some(&events));
    pkt.clear();
    server
        .encode_for_with_events(&store, me, &events, &mut pkt)
        .unwrap();
    client
        .handle_packet_with_events(&registry, &pkt, &mut sink)
        .unwrap();
    assert_eq!(sink.events.len(), 1, "the death arrives");
    assert_eq!(
        sink.despawned,
        vec![enemy],
        "the death arrived without the despawn of the entity it names"
    );
}

/// One tick of a lossless one-client loop.
fn lossless_step(
    store: &mut Store,
    server: &mut ServerReplicator,
    client: &mut ClientReplicator,
    reg: &Registry,
    sink: &mut VecWorld,
    me: ClientId,
    t: u32,
) {
    store.begin_tick(Tick(t)).unwrap();
    server.update(store, None);
    let mut pkt = Vec::new();
    server.encode_for(store, me, &mut pkt).unwrap();
    client.handle_packet(reg, &pkt, sink).unwrap();
    server.handle_ack(me, client.ack().unwrap()).unwrap();
}

/// Regression (review): a new radius for a viewer that does not move (0 = everything, or a
/// larger one) brings static entities in.
#[test]
fn radius_change_without_moving_brings_static_entities_in() {
    for new_radius in [0.0f32, 200.0] {
        let reg = registry();
        let me = ClientId(1);
        let mut store = Store::new(reg.clone(), StoreConfig::default());
        let mut server = ServerReplicator::new(ServerConfig {
            interest_radius: 10.0,
            ..ServerConfig::default()
        });
        server.add_client(me).unwrap();
        server.set_viewer(me, Some([0.0, 0.0]), None).unwrap();
        let mut client = ClientReplicator::new(ClientConfig::default());
        let mut sink = VecWorld::default();
        store.begin_tick(Tick(1)).unwrap();
        let far = EntityId(7);
        store.spawn(far, Owner::Server).unwrap();
        store.set_position(far, Some([100.0, 0.0])).unwrap();
        server.update(&mut store, None);
        let mut pkt = Vec::new();
        server.encode_for(&store, me, &mut pkt).unwrap();
        client.handle_packet(&reg, &pkt, &mut sink).unwrap();
        server.handle_ack(me, client.ack().unwrap()).unwrap();
        assert!(!client.contains(far));
        server
            .set_viewer(me, Some([0.0, 0.0]), Some(new_radius))
            .unwrap();
        for t in 2..10 {
            lossless_step(&mut store, &mut server, &mut client, &reg, &mut sink, me, t);
        }
        assert!(
            client.contains(far),
            "radius {new_radius}: the static entity never entered"
        );
        // And back: a small radius again lets it go.
        server.set_viewer(me, Some([0.0, 0.0]), Some(10.0)).unwrap();
        for t in 10..20 {
            lossless_step(&mut store, &mut server, &mut client, &reg, &mut sink, me, t);
        }
        assert!(
            !client.contains(far),
            "radius {new_radius} then 10: it never left"
        );
    }
}

/// Regression (review): an event larger than half the budget still goes out (alone), so the
/// event stream does not stall behind it; one that cannot fit at all is an error for that
/// client instead of a silent stall.
#[test]
fn big_event_under_small_budget_is_sent_or_refused() {
    let reg = registry();
    let me = ClientId(1);
    let mut store = Store::new(reg.clone(), StoreConfig::default());
    let mut server = ServerReplicator::new(ServerConfig::default());
    server.add_client(me).unwrap();
    server.set_packet_budget(me, Some(100)).unwrap();
    let mut events = EventServer::new(EventConfig::default());
    let mut client = ClientReplicator::new(ClientConfig::default());
    let mut sink = VecWorld::default();
    store.begin_tick(Tick(1)).unwrap();
    let big = |data: usize| Proposal {
        proposer: Writer::Server,
        seq: 0,
        tick: Tick(1),
        kind: 1,
        entities: Default::default(),
        data: vec![7u8; data].into_iter().collect(),
    };
    events.propose(big(60)).unwrap();
    events.resolve(Tick(1), |_| true);
    let mut got = 0;
    for t in 1..10u32 {
        if t > 1 {
            store.begin_tick(Tick(t)).unwrap();
        }
        server.update(&mut store, Some(&events));
        let mut pkt = Vec::new();
        let st = server
            .encode_for_with_events(&store, me, &events, &mut pkt)
            .unwrap();
        assert!(pkt.len() <= 100);
        got += st.events;
        client.handle_packet(&reg, &pkt, &mut sink).unwrap();
        server.handle_ack(me, client.ack().unwrap()).unwrap();
    }
    assert!(
        got > 0,
        "a 60-byte event never went out under a 100-byte budget"
    );
    server.set_packet_budget(me, Some(40)).unwrap();
    store.begin_tick(Tick(10)).unwrap();
    events.propose(big(64)).unwrap();
    events.resolve(Tick(10), |_| true);
    server.update(&mut store, Some(&events));
    let mut pkt = Vec::new();
    let err = server
        .encode_for_with_events(&store, me, &events, &mut pkt)
        .unwrap_err();
    assert!(
        matches!(err, ReplicationError::EventTooLarge { .. }),
        "{err}"
    );
}
