//! Structured round trip: the input is a script that edits a world and moves packets and acks
//! over a lossy, reordering, duplicating link; every packet the server encodes must decode and
//! stay within its budget, and the client's state must agree with every `WorldSink` call.
//!
//! Script operations (one byte each, followed by their arguments):
//! spawn, despawn, move, replace a component, remove a component, change owner, send (budget
//! from the input, so packets can be partial or drop oversized entities), deliver a queued
//! packet (any order; optionally keep it queued to deliver again), deliver a queued ack (any
//! order) and drop a queued packet. The first four bytes give the starting tick (so tick
//! wrap-around is covered). At the end the link turns quiet (a large budget, packets and acks
//! delivered): within a few rounds the client must hold exactly the server's world.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use statewire_core::{
    AckFrame, Applied, ClientConfig, ClientId, ClientReplicator, EntityId, Owner, Registry,
    ServerConfig, ServerReplicator, Snapshot, SnapshotBuilder, Store, StoreConfig, Tick,
};
use statewire_fuzz::{Edge, Health, Input, Mirror, Pos, Rot, check_ranges, registry};

const HISTORY: u32 = 8;
const MAX_ENTITIES: usize = 300;
const MAX_IN_FLIGHT: usize = 16;
const ME: ClientId = ClientId(1);

#[derive(Debug, Clone, Default)]
struct Ent {
    owner: Owner,
    pos: Option<Pos>,
    rot: Option<Rot>,
    health: Option<Health>,
    edge: Option<Edge>,
}

fn owner(input: &mut Input<'_>) -> Owner {
    match input.u8() % 4 {
        0 => Owner::Client(ClientId(input.u64())),
        1 => Owner::Client(ClientId(u64::from(input.u8() % 4))),
        _ => Owner::Server,
    }
}

fn entity_id(input: &mut Input<'_>) -> u32 {
    match input.u8() % 8 {
        0 => input.u32(),
        1 => u32::MAX - u32::from(input.u8()),
        _ => u32::from(input.u8()),
    }
}

fn set_component(e: &mut Ent, which: u8, input: &mut Input<'_>) {
    match which % 4 {
        0 => {
            e.pos = Some(Pos {
                x: input.f32(),
                y: input.f32(),
            })
        }
        1 => e.rot = Some(Rot(input.quat())),
        2 => {
            e.health = Some(Health {
                hp: i64::from(input.u16() as i16),
                alive: input.bool(),
                team: u32::from(input.u8()),
            })
        }
        _ => {
            e.edge = Some(Edge {
                wide: i64::MIN + i64::from(input.u32()) + i64::from(input.u8() % 2) * i64::MAX,
                q10: input.quat(),
                unit: u32::from(input.u8()),
                q2: input.quat(),
                big: input.f32() * 1.0e6,
            })
        }
    }
}

fn snapshot(reg: &Registry, world: &BTreeMap<u32, Ent>) -> Snapshot {
    let mut b = SnapshotBuilder::new(reg);
    // Insert in a scrambled order: the builder must sort.
    for (id, e) in world.iter().rev() {
        let mut eb = b.entity(EntityId(*id), e.owner);
        if let Some(c) = &e.edge {
            eb.component(c);
        }
        if let Some(c) = &e.pos {
            eb.component(c);
        }
        if let Some(c) = &e.health {
            eb.component(c);
        }
        if let Some(c) = &e.rot {
            eb.component(c);
        }
    }
    b.finish().expect("a valid world builds")
}

struct Link {
    reg: Registry,
    store: Store,
    server: ServerReplicator,
    client: ClientReplicator,
    mirror: Mirror,
    tick: Tick,
    packets: Vec<(Tick, Vec<u8>)>,
    acks: Vec<AckFrame>,
}

impl Link {
    fn send(&mut self, world: &BTreeMap<u32, Ent>, budget: usize) -> usize {
        let snap = snapshot(&self.reg, world);
        check_ranges(&self.reg, &snap);
        self.tick = self.tick.next();
        self.store.begin_tick(self.tick).expect("ticks increase");
        self.store
            .apply_snapshot(&snap)
            .expect("the world fits the store");
        assert_eq!(self.store.snapshot(), snap, "the store holds the world");
        self.server.update(&mut self.store, None);
        self.server
            .set_packet_budget(ME, Some(budget))
            .expect("known client");
        let mut out = Vec::new();
        let stats = self
            .server
            .encode_for(&self.store, ME, &mut out)
            .expect("ticks increase");
        assert!(
            out.len() <= budget.max(statewire_core::MIN_PACKET_BYTES),
            "packet over budget"
        );
        assert_eq!(stats.bytes, out.len());
        assert!(!stats.over_budget);
        if self.packets.len() >= MAX_IN_FLIGHT {
            self.packets.remove(0);
        }
        self.packets.push((self.tick, out));
        stats.oversized
    }

    fn deliver(&mut self, index: usize, keep: bool) {
        if self.packets.is_empty() {
            return;
        }
        let i = index % self.packets.len();
        let (tick, bytes) = if keep {
            self.packets[i].clone()
        } else {
            self.packets.remove(i)
        };
        let before = self.client.snapshot();
        self.mirror.begin();
        let applied = self
            .client
            .handle_packet(&self.reg, &bytes, &mut self.mirror)
            .unwrap_or_else(|e| panic!("server packet {tick} rejected: {e}"));
        match applied {
            Applied::Applied(h) => {
                assert_eq!(h.tick, tick);
                self.mirror.check(&self.reg, &self.client.snapshot());
                let ack = self.client.ack().expect("a packet was applied");
                assert_eq!(ack.newest, tick);
                assert_eq!(AckFrame::decode(&ack.encode()), Some(ack));
                self.acks.push(ack);
            }
            Applied::Stale(h) => {
                assert_eq!(h.tick, tick);
                assert_eq!(self.client.snapshot(), before);
                assert_eq!(self.mirror.calls, 0);
            }
            _ => unreachable!(),
        }
    }

    fn ack(&mut self, index: usize) {
        if self.acks.is_empty() {
            return;
        }
        let ack = self.acks.remove(index % self.acks.len());
        self.server.handle_ack(ME, ack).expect("known client");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut server = ServerReplicator::new(ServerConfig {
        max_in_flight: MAX_IN_FLIGHT,
        ..ServerConfig::default()
    });
    server.add_client(ME).expect("first client");
    let reg = registry();
    let store = Store::new(
        reg.clone(),
        StoreConfig {
            history_ticks: HISTORY,
            ..StoreConfig::default()
        },
    );
    let mut link = Link {
        reg,
        store,
        server,
        client: ClientReplicator::new(ClientConfig {
            history_len: HISTORY,
            ..ClientConfig::default()
        }),
        mirror: Mirror::default(),
        tick: Tick(input.u32()),
        packets: Vec::new(),
        acks: Vec::new(),
    };
    let mut world: BTreeMap<u32, Ent> = BTreeMap::new();
    let pick = |world: &BTreeMap<u32, Ent>, b: u8| -> Option<u32> {
        if world.is_empty() {
            return None;
        }
        world.keys().nth(usize::from(b) % world.len()).copied()
    };

    while !input.is_empty() {
        match input.u8() % 10 {
            0 => {
                let id = entity_id(&mut input);
                if world.len() < MAX_ENTITIES && !world.contains_key(&id) {
                    let mut e = Ent {
                        owner: owner(&mut input),
                        ..Ent::default()
                    };
                    let comps = input.u8();
                    for c in 0..4 {
                        if comps & (1 << c) != 0 {
                            set_component(&mut e, c, &mut input);
                        }
                    }
                    world.insert(id, e);
                }
            }
            1 => {
                if let Some(id) = pick(&world, input.u8()) {
                    world.remove(&id);
                }
            }
            2 => {
                if let Some(id) = pick(&world, input.u8()) {
                    let (dx, dy) = (input.u8() as i8, input.u8() as i8);
                    if let Some(p) = &mut world.get_mut(&id).expect("picked").pos {
                        p.x += f32::from(dx) / 64.0;
                        p.y += f32::from(dy) / 64.0;
                    }
                }
            }
            3 => {
                if let Some(id) = pick(&world, input.u8()) {
                    let which = input.u8();
                    set_component(world.get_mut(&id).expect("picked"), which, &mut input);
                }
            }
            4 => {
                if let Some(id) = pick(&world, input.u8()) {
                    let e = world.get_mut(&id).expect("picked");
                    match input.u8() % 4 {
                        0 => e.pos = None,
                        1 => e.rot = None,
                        2 => e.health = None,
                        _ => e.edge = None,
                    }
                }
            }
            5 => {
                if let Some(id) = pick(&world, input.u8()) {
                    world.get_mut(&id).expect("picked").owner = owner(&mut input);
                }
            }
            6 => {
                let budget = usize::from(input.u16() % 4096);
                link.send(&world, budget);
            }
            7 => {
                let (i, keep) = (input.u8(), input.bool());
                link.deliver(usize::from(i), keep);
            }
            8 => {
                let i = input.u8();
                link.ack(usize::from(i));
            }
            _ => {
                if !link.packets.is_empty() {
                    let i = usize::from(input.u8()) % link.packets.len();
                    link.packets.remove(i);
                }
            }
        }
    }

    // Quiet network, room for everything: every packet arrives and is acknowledged, so within
    // a few rounds the client holds the server's world.
    let expect = snapshot(&link.reg, &world);
    for _ in 0..4 {
        let oversized = link.send(&world, 1 << 20);
        assert_eq!(oversized, 0);
        let last = link.packets.len() - 1;
        link.deliver(last, false);
        if let Some(ack) = link.client.ack() {
            link.server.handle_ack(ME, ack).expect("known client");
        }
    }
    assert_eq!(link.client.snapshot(), expect, "client did not converge");
    link.mirror.check(&link.reg, &expect);
});
