//! Shared helpers for the statewire benchmarks: the component types, a deterministic world
//! generator, and a sink that discards what a client applies.
//!
//! The benchmarks themselves live in `benches/` (run `cargo bench -p statewire-benches`); the
//! figures and the machine they were taken on are in `RESULTS.md`. Everything here is seeded, so
//! two runs encode the same bytes.

use statewire_core::{
    ComponentView, EntityId, Owner, Registry, Replicate, Snapshot, SnapshotBuilder, Store,
    StoreError, WorldSink, WorldSource,
};

/// Entities in the benchmark world.
pub const ENTITIES: usize = 1000;

/// Entities changed per tick (10 %).
pub const CHANGED_PER_TICK: usize = ENTITIES / 10;

/// SplitMix64: a tiny seeded generator, so benchmark inputs are identical on every run without
/// pulling in `rand`.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n` > 0; the tiny modulo bias does not matter here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A float uniformly in `[-1, 1)`.
    pub fn signed_unit(&mut self) -> f32 {
        // 24 random bits: exactly representable in an f32.
        let u = (self.next_u64() >> 40) as f32 / (1u32 << 24) as f32;
        u * 2.0 - 1.0
    }
}

/// Position (metres) and orientation: the testkit's components, shared with the core's tests
/// and the fuzz targets.
pub use statewire_testkit::{Pos, Rot};

/// A small gameplay component carried by a quarter of the entities: hit points and a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Replicate)]
pub struct Status {
    /// Hit points, 0..=100 (7 bits).
    #[replicate(int(min = 0, max = 100))]
    pub hp: i64,
    /// Whether the entity is alive (1 bit).
    pub alive: bool,
}

/// The registry every benchmark uses: [`Pos`], [`Rot`], [`Status`], in that order.
#[must_use]
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register::<Pos>().expect("valid schema");
    r.register::<Rot>().expect("valid schema");
    r.register::<Status>().expect("valid schema");
    r
}

/// One entity of the benchmark world.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchEntity {
    /// Its network id.
    pub id: EntityId,
    /// Position.
    pub pos: Pos,
    /// Orientation.
    pub rot: Rot,
    /// Present on about a quarter of the entities.
    pub status: Option<Status>,
}

/// A deterministic world whose [`BenchWorld::step`] changes a fixed number of entities by small
/// amounts, the way a game tick does.
#[derive(Debug, Clone)]
pub struct BenchWorld {
    /// The entities, ids ascending.
    pub entities: Vec<BenchEntity>,
    /// Indices (into `entities`) changed by the last [`BenchWorld::step`].
    pub changed: Vec<usize>,
    rng: SplitMix64,
}

fn quat_mul(a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
    let [ax, ay, az, aw] = a;
    let [bx, by, bz, bw] = b;
    [
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
        aw * bw - ax * bx - ay * by - az * bz,
    ]
}

fn normalize(q: [f32; 4]) -> [f32; 4] {
    let n = q.iter().map(|c| c * c).sum::<f32>().sqrt();
    q.map(|c| c / n)
}

impl BenchWorld {
    /// `n` entities with ids spread over `0..≈2n` (gaps of one to three, as when some entities
    /// are not replicated), random positions and orientations, and a [`Status`] on about a
    /// quarter of them.
    #[must_use]
    pub fn generate(n: usize, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let mut next_id = 0u32;
        let entities = (0..n)
            .map(|_| {
                let id = EntityId(next_id);
                next_id += 1 + rng.below(3) as u32;
                let pos = Pos {
                    x: rng.signed_unit() * 500.0,
                    y: rng.signed_unit() * 500.0,
                };
                let rot = Rot(normalize([
                    rng.signed_unit(),
                    rng.signed_unit(),
                    rng.signed_unit(),
                    rng.signed_unit() + 1.5,
                ]));
                let status = (rng.below(4) == 0).then(|| Status {
                    hp: rng.below(101) as i64,
                    alive: true,
                });
                BenchEntity {
                    id,
                    pos,
                    rot,
                    status,
                }
            })
            .collect();
        BenchWorld {
            entities,
            changed: Vec::new(),
            rng,
        }
    }

    /// Advances one tick: `changed` distinct entities move up to 0.5 m per axis and turn by up
    /// to about 3°; those with a [`Status`] lose or regain a few hit points half the time.
    pub fn step(&mut self, changed: usize) {
        let n = self.entities.len();
        let changed = changed.min(n);
        // Partial Fisher-Yates over indices picks `changed` distinct entities.
        let mut idx: Vec<usize> = (0..n).collect();
        for k in 0..changed {
            let j = k + self.rng.below((n - k) as u64) as usize;
            idx.swap(k, j);
        }
        self.changed.clear();
        self.changed.extend_from_slice(&idx[..changed]);
        for &i in &idx[..changed] {
            let rng = &mut self.rng;
            let e = &mut self.entities[i];
            // Reflect at ±500 m so positions stay inside the quantized range.
            let mv = |v: f32, d: f32| {
                let v = v + d;
                if v.abs() > 500.0 { v - 2.0 * d } else { v }
            };
            e.pos.x = mv(e.pos.x, rng.signed_unit() * 0.5);
            e.pos.y = mv(e.pos.y, rng.signed_unit() * 0.5);
            let half = 0.025;
            let dq = normalize([
                rng.signed_unit() * half,
                rng.signed_unit() * half,
                rng.signed_unit() * half,
                1.0,
            ]);
            e.rot = Rot(normalize(quat_mul(e.rot.0, dq)));
            if let Some(s) = &mut e.status {
                if rng.below(2) == 0 {
                    s.hp = (s.hp + rng.below(11) as i64 - 5).clamp(0, 100);
                    s.alive = s.hp > 0;
                }
            }
        }
    }

    /// Spawns every entity into `store` with all its components and its position on the
    /// interest plane (call after [`Store::begin_tick`]). Spawns everything first, then sets
    /// the components: a spawn can reuse a word buffer of an earlier same-tick change that the
    /// store does not clear (a core bug), and spawning first sidesteps it.
    pub fn populate(&self, store: &mut Store) -> Result<(), StoreError> {
        for e in &self.entities {
            store.spawn(e.id, Owner::Server)?;
        }
        for e in &self.entities {
            Self::write_entity(e, store)?;
        }
        Ok(())
    }

    /// Tells `store` what the last [`BenchWorld::step`] changed: only the changed entities'
    /// components (and interest positions) are set, the way a game reports its changes.
    pub fn apply_changes(&self, store: &mut Store) -> Result<(), StoreError> {
        for &i in &self.changed {
            Self::write_entity(&self.entities[i], store)?;
        }
        Ok(())
    }

    fn write_entity(e: &BenchEntity, store: &mut Store) -> Result<(), StoreError> {
        let mut m = store.entity_mut(e.id)?;
        m.set(&e.pos)?.set(&e.rot)?;
        if let Some(s) = &e.status {
            m.set(s)?;
        }
        m.set_position(Some([e.pos.x, e.pos.y]))?;
        Ok(())
    }

    /// The quantized snapshot of the current state.
    #[must_use]
    pub fn snapshot(&self, registry: &Registry) -> Snapshot {
        let mut b = SnapshotBuilder::new(registry);
        self.build(&mut b);
        b.finish().expect("benchmark world is valid")
    }
}

impl WorldSource for BenchWorld {
    fn build(&self, b: &mut SnapshotBuilder<'_>) {
        for e in &self.entities {
            let mut eb = b.entity(e.id, Owner::Server);
            eb.component(&e.pos).component(&e.rot);
            if let Some(s) = &e.status {
                eb.component(s);
            }
        }
    }
}

/// `ticks` consecutive snapshots of a [`BenchWorld`] of [`ENTITIES`] entities, each
/// [`CHANGED_PER_TICK`] entities away from the previous one.
#[must_use]
pub fn snapshot_chain(registry: &Registry, ticks: usize, seed: u64) -> Vec<Snapshot> {
    let mut world = BenchWorld::generate(ENTITIES, seed);
    (0..ticks)
        .map(|_| {
            let s = world.snapshot(registry);
            world.step(CHANGED_PER_TICK);
            s
        })
        .collect()
}

/// A client world that only counts what it is told, so decode benchmarks measure statewire and
/// not a game's storage.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NullSink {
    /// Calls received (spawn, despawn, set_owner, insert, remove).
    pub calls: u64,
}

impl WorldSink for NullSink {
    fn spawn(&mut self, _: EntityId, _: Owner) {
        self.calls += 1;
    }
    fn despawn(&mut self, _: EntityId) {
        self.calls += 1;
    }
    fn set_owner(&mut self, _: EntityId, _: Owner) {
        self.calls += 1;
    }
    fn insert(&mut self, _: EntityId, _: ComponentView<'_>) {
        self.calls += 1;
    }
    fn remove(&mut self, _: EntityId, _: ComponentView<'_>) {
        self.calls += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use statewire_core::{
        ClientConfig, ClientId, ClientReplicator, ServerConfig, ServerReplicator, StoreConfig, Tick,
    };

    #[test]
    fn generator_is_deterministic_and_changes_ten_percent() {
        let reg = registry();
        let a = snapshot_chain(&reg, 4, 7);
        let b = snapshot_chain(&reg, 4, 7);
        assert_eq!(a, b);
        assert_eq!(a[0].len(), ENTITIES);
        for pair in a.windows(2) {
            let changed = pair[0]
                .entity_ids()
                .filter(|&id| {
                    let (x, y) = (
                        pair[0]
                            .component_view(&reg, id, statewire_core::ComponentId(0))
                            .unwrap(),
                        pair[1]
                            .component_view(&reg, id, statewire_core::ComponentId(0))
                            .unwrap(),
                    );
                    x.quantized() != y.quantized()
                })
                .count();
            // A move can round to the same quantized position on both axes, rarely.
            assert!((90..=CHANGED_PER_TICK).contains(&changed), "{changed}");
        }
    }

    #[test]
    fn chain_replicates_exactly() {
        let reg = registry();
        let mut world = BenchWorld::generate(ENTITIES, 1);
        let mut store = Store::new(reg.clone(), StoreConfig::default());
        let mut server = ServerReplicator::new(ServerConfig::default());
        let me = ClientId(1);
        server.add_client(me).unwrap();
        server.set_packet_budget(me, Some(64 * 1024)).unwrap();
        let mut client = ClientReplicator::new(ClientConfig::default());
        let mut sink = NullSink::default();
        let mut buf = Vec::new();
        for t in 1..=8u32 {
            store.begin_tick(Tick(t)).unwrap();
            if t == 1 {
                world.populate(&mut store).unwrap();
            } else {
                world.step(CHANGED_PER_TICK);
                world.apply_changes(&mut store).unwrap();
            }
            assert_eq!(store.snapshot(), world.snapshot(&reg));
            server.update(&mut store, None);
            buf.clear();
            let stats = server.encode_for(&store, me, &mut buf).unwrap();
            assert_eq!(stats.pending, 0);
            client.handle_packet(&reg, &buf, &mut sink).unwrap();
            assert_eq!(client.snapshot(), store.snapshot());
            server.handle_ack(me, client.ack().unwrap()).unwrap();
        }
        assert!(sink.calls > 0);
    }
}
