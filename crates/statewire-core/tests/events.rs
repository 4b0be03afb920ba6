//! Events: resolved once, delivered exactly once and in order to every client over loss,
//! duplication and reordering, never before the entities they name exist on the client, and in
//! the same client step as the despawns they cause.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use proptest::prelude::*;
use statewire_core::events::{EntityRefs, EventData};
use statewire_core::*;

const KILL: u16 = 1;
const HIT: u16 = 2;
const FIRST_ENEMY: u32 = 100;

/// A client world that checks the event rules as changes arrive.
#[derive(Default)]
struct Checked {
    world: VecWorld,
    events: Vec<GameEvent>,
    despawned_now: Vec<EntityId>,
    deaths_now: Vec<EntityId>,
    /// Every entity this client ever had, and the entities events named while it lacked them.
    ever: BTreeSet<u32>,
    named_unknown: BTreeSet<u32>,
    violations: Vec<String>,
}

impl WorldSink for Checked {
    fn spawn(&mut self, id: EntityId, owner: Owner) {
        self.world.spawn(id, owner);
        self.ever.insert(id.0);
    }
    fn despawn(&mut self, id: EntityId) {
        self.world.despawn(id);
        self.despawned_now.push(id);
    }
    fn set_owner(&mut self, id: EntityId, owner: Owner) {
        self.world.set_owner(id, owner);
    }
    fn insert(&mut self, id: EntityId, c: ComponentView<'_>) {
        self.world.insert(id, c);
    }
    fn remove(&mut self, id: EntityId, c: ComponentView<'_>) {
        self.world.remove(id, c);
    }
}

impl EventSink for Checked {
    fn event(&mut self, e: &GameEvent) {
        if let Some(last) = self.events.last() {
            if e.id.0 != last.id.0 + 1 {
                self.violations
                    .push(format!("{} right after {}", e.id, last.id));
            }
        }
        for id in &e.entities {
            if !self.world.ents.iter().any(|x| x.id == id.0) {
                // Allowed only for an entity this client never had and never will (it lived
                // and died between two packets to this client); checked again at the end.
                if self.ever.contains(&id.0) {
                    self.violations
                        .push(format!("{} names {id}, already despawned here", e.id));
                }
                self.named_unknown.insert(id.0);
            }
        }
        if e.kind == KILL {
            self.deaths_now.push(e.entities[1]);
        }
        self.events.push(e.clone());
    }
}

impl Checked {
    /// After each applied packet: an enemy that was killed despawned together with its death.
    fn end_packet(&mut self) {
        for id in std::mem::take(&mut self.despawned_now) {
            if id.0 >= FIRST_ENEMY && !self.deaths_now.contains(&id) {
                self.violations
                    .push(format!("{id} despawned without its death in the same step"));
            }
        }
        self.deaths_now.clear();
    }
}

#[derive(Debug, Clone)]
struct Net {
    deliver: bool,
    duplicate: bool,
    delay: u8,
    ack: bool,
}

fn net() -> impl Strategy<Value = Net> {
    (
        prop::bool::weighted(0.7),
        prop::bool::weighted(0.2),
        0u8..4,
        prop::bool::weighted(0.7),
    )
        .prop_map(|(deliver, duplicate, delay, ack)| Net {
            deliver,
            duplicate,
            delay,
            ack,
        })
}

struct Outcome {
    killers: BTreeMap<u32, ClientId>,
    resolved: Vec<GameEvent>,
    clients: Vec<Checked>,
    repls: Vec<ClientReplicator>,
    world: Snapshot,
}

/// A little war: each tick some clients claim kills on live enemies (often the same enemy in
/// the same tick); the server resolves, despawns the dead at once and spawns replacements;
/// snapshots with events go out through a lossy, duplicating, reordering pipe.
fn war(claims: &[Vec<(u8, u8)>], nets: &[Net], budget: usize, clients: usize) -> Outcome {
    let registry = registry();
    let mut store = Store::new(registry.clone(), StoreConfig::default());
    let mut server = ServerReplicator::new(ServerConfig::default());
    let mut events = EventServer::new(EventConfig::default());
    let mut world = VecWorld::default();
    for c in 0..clients as u32 {
        world.ents.push(Ent {
            id: c,
            owner: Some(u64::from(c) + 1),
            pos: Some(Pos {
                x: 0.0,
                y: c as f32,
            }),
            ..Ent::default()
        });
    }
    let mut next_enemy = FIRST_ENEMY;
    let spawn_enemy = |world: &mut VecWorld, next: &mut u32| {
        world.ents.push(Ent {
            id: *next,
            health: Some(Health {
                hp: 100,
                alive: true,
                team: 1,
            }),
            pos: Some(Pos {
                x: *next as f32 / 8.0,
                y: 1.0,
            }),
            ..Ent::default()
        });
        *next += 1;
    };
    for _ in 0..12 {
        spawn_enemy(&mut world, &mut next_enemy);
    }
    let ids: Vec<ClientId> = (1..=clients as u64).map(ClientId).collect();
    let mut sinks: Vec<Checked> = (0..clients).map(|_| Checked::default()).collect();
    let mut repls: Vec<ClientReplicator> = (0..clients)
        .map(|_| ClientReplicator::new(ClientConfig::default()))
        .collect();
    for &id in &ids {
        server.add_client(id).unwrap();
        server.set_packet_budget(id, Some(budget)).unwrap();
    }
    let mut in_flight: Vec<(u32, usize, Vec<u8>)> = Vec::new();
    let mut killers = BTreeMap::new();
    let mut all = Vec::new();
    let active = claims.len() as u32;
    let mut snap = Snapshot::new();
    for now in 0..active + 80 {
        let tick = Tick(now + 1);
        store.begin_tick(tick).unwrap();
        if let Some(batch) = claims.get(now as usize) {
            let alive: Vec<u32> = world
                .ents
                .iter()
                .filter(|e| e.id >= FIRST_ENEMY)
                .map(|e| e.id)
                .collect();
            for (k, &(c, target)) in batch.iter().enumerate() {
                if alive.is_empty() {
                    break;
                }
                let c = usize::from(c) % clients;
                let mut ents = EntityRefs::new();
                ents.push(EntityId(c as u32));
                ents.push(EntityId(alive[usize::from(target) % alive.len()]));
                let _ = events.propose(Proposal {
                    proposer: Writer::Client(ids[c]),
                    seq: now * 64 + k as u32,
                    tick,
                    kind: KILL,
                    entities: ents,
                    data: EventData::new(),
                });
            }
        }
        if now % 7 == 3 && now < active {
            let mut ents = EntityRefs::new();
            ents.push(EntityId(now % clients as u32));
            events
                .propose(Proposal {
                    proposer: Writer::Server,
                    seq: 0,
                    tick,
                    kind: HIT,
                    entities: ents,
                    data: EventData::from_slice(&[now as u8]),
                })
                .unwrap();
        }
        let mut dead = Vec::new();
        let resolved = events
            .resolve(tick, |p| {
                if p.kind != KILL {
                    return true;
                }
                let target = p.entities[1].0;
                // The first claim in resolution order wins; later ones see the enemy dead.
                if dead.contains(&target) || !world.ents.iter().any(|e| e.id == target) {
                    return false;
                }
                dead.push(target);
                true
            })
            .to_vec();
        for e in &resolved {
            if e.kind == KILL {
                if let Writer::Client(k) = e.proposer {
                    assert!(
                        killers.insert(e.entities[1].0, k).is_none(),
                        "{} killed twice",
                        e.entities[1]
                    );
                }
            }
        }
        all.extend(resolved);
        // The dead despawn in the same tick; replacements arrive now and then.
        world.ents.retain(|e| !dead.contains(&e.id));
        if now % 5 == 0 && now < active {
            spawn_enemy(&mut world, &mut next_enemy);
        }
        store.apply_snapshot(&world.snapshot(&registry)).unwrap();
        server.update(&mut store, Some(&events));
        snap = store.snapshot();
        let quiet = now >= active;
        for (i, &id) in ids.iter().enumerate() {
            let mut pkt = Vec::new();
            let stats = server
                .encode_for_with_events(&store, id, &events, &mut pkt)
                .unwrap();
            assert!(!stats.over_budget);
            assert!(
                pkt.len() <= budget,
                "packet {} > budget {budget}",
                pkt.len()
            );
            let n = if quiet {
                Net {
                    deliver: true,
                    duplicate: false,
                    delay: 0,
                    ack: true,
                }
            } else {
                nets[(now as usize * 7 + i) % nets.len()].clone()
            };
            if n.deliver {
                if n.duplicate {
                    in_flight.push((now + u32::from(n.delay) + 1, i, pkt.clone()));
                }
                in_flight.push((now + u32::from(n.delay), i, pkt));
            }
        }
        let mut due: Vec<_> = in_flight.iter().filter(|p| p.0 <= now).cloned().collect();
        in_flight.retain(|p| p.0 > now);
        due.sort_by_key(|p| p.0);
        for (_, i, pkt) in due {
            match repls[i].handle_packet_with_events(&registry, &pkt, &mut sinks[i]) {
                Ok(Applied::Applied(_)) => {}
                Ok(Applied::Stale(_)) => continue,
                Ok(other) => panic!("client {i}: unexpected {other:?}"),
                Err(e) => panic!("client {i}: {e}"),
            }
            sinks[i].end_packet();
        }
        for (i, r) in repls.iter().enumerate() {
            if let Some(a) = r.ack() {
                if quiet || nets[(now as usize * 3 + i) % nets.len()].ack {
                    server.handle_ack(ids[i], a).unwrap();
                }
            }
        }
        if let Some(min) = server.min_acked_event() {
            events.trim_through(min);
        }
    }
    Outcome {
        killers,
        resolved: all,
        clients: sinks,
        repls,
        world: snap,
    }
}

fn check(o: &Outcome) -> Result<(), TestCaseError> {
    for (i, c) in o.clients.iter().enumerate() {
        prop_assert!(c.violations.is_empty(), "client {i}: {:?}", c.violations);
        let late: Vec<_> = c.named_unknown.intersection(&c.ever).collect();
        prop_assert!(
            late.is_empty(),
            "client {i}: events named {late:?} before they arrived"
        );
        // Exactly the server's events, once each, in order.
        prop_assert_eq!(&c.events, &o.resolved, "client {}", i);
        let seen: BTreeMap<u32, ClientId> = c
            .events
            .iter()
            .filter(|e| e.kind == KILL)
            .filter_map(|e| match e.proposer {
                Writer::Client(k) => Some((e.entities[1].0, k)),
                _ => None,
            })
            .collect();
        prop_assert_eq!(&seen, &o.killers, "client {} disagrees on killers", i);
        prop_assert_eq!(&o.repls[i].snapshot(), &o.world, "client {} state", i);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn events_exactly_once_in_order_with_their_entities(
        claims in prop::collection::vec(prop::collection::vec((0u8..6, 0u8..4), 0..5), 1..50),
        nets in prop::collection::vec(net(), 1..12),
        // Small budgets too: events wait for the entities they name, entities wait by priority.
        budget in prop_oneof![Just(1200usize), 400usize..1200, 100usize..400],
    ) {
        let o = war(&claims, &nets, budget, 4);
        check(&o)?;
    }
}

/// 16 clients race for the same enemies every tick: one death each, one killer, and every
/// client agrees.
#[test]
fn racing_claims_resolve_once_and_everyone_agrees() {
    let claims: Vec<Vec<(u8, u8)>> = (0..120u8)
        .map(|t| (0..16u8).map(|c| (c, t % 3)).collect())
        .collect();
    let nets = vec![
        Net {
            deliver: true,
            duplicate: true,
            delay: 2,
            ack: true,
        },
        Net {
            deliver: false,
            duplicate: false,
            delay: 0,
            ack: false,
        },
        Net {
            deliver: true,
            duplicate: false,
            delay: 0,
            ack: true,
        },
        Net {
            deliver: true,
            duplicate: false,
            delay: 3,
            ack: false,
        },
    ];
    let o = war(&claims, &nets, 1200, 16);
    check(&o).unwrap();
    let kills = o.resolved.iter().filter(|e| e.kind == KILL).count();
    assert!(kills >= 25, "only {kills} kills");
    // The winner of each race is the lowest client id among those claiming (same tick).
    assert!(
        o.killers.values().all(|&k| k == ClientId(1)),
        "{:?}",
        o.killers
    );
    let _ = BTreeSet::<u32>::new();
}

/// Claims stamped with ticks a hostile client chose (far past, far future, spread around the
/// tick circle, where a wrapping comparison is not a total order) resolve without a panic, in
/// an order that does not depend on the order they arrived in, and a stamp older than the claim
/// window does not win over a fresh one.
#[test]
fn hostile_claim_ticks_resolve_in_a_total_order() {
    let ticks = [0u32, 0x5555_5556, 0xAAAA_AAAC, 7, u32::MAX, 100, 95];
    let run = |order: &[usize]| {
        let mut events = EventServer::new(EventConfig {
            max_per_client_per_tick: 64,
            ..EventConfig::default()
        });
        for &i in order {
            let c = (i % 5) as u64 + 1;
            events
                .propose(Proposal {
                    proposer: Writer::Client(ClientId(c)),
                    seq: i as u32,
                    tick: Tick(ticks[i % ticks.len()]),
                    kind: 1,
                    entities: Default::default(),
                    data: Default::default(),
                })
                .unwrap();
        }
        let mut seen = Vec::new();
        let _ = events.resolve(Tick(100), |p| {
            seen.push(p.seq);
            true
        });
        seen
    };
    let forward: Vec<usize> = (0..64).collect();
    let backward: Vec<usize> = (0..64).rev().collect();
    let a = run(&forward);
    assert_eq!(a.len(), 64);
    assert_eq!(a, run(&backward));
    // Tick 95 (5 ticks old) is older than tick 100 but both are in the window: 95 goes first;
    // every stamp beyond the 90-tick window (or in the future) counts as exactly that old or
    // as now, so it cannot claim to be older than the window.
    let pos = |seq: u32| a.iter().position(|&s| s == seq).unwrap();
    assert!(pos(6) < pos(5), "tick 95 before tick 100");
}
