//! Shared pieces of the statewire fuzz targets: a fixed component registry (the testkit's
//! components plus [`Edge`]) that covers every field kind, including the 0- and 32-bit edge
//! widths; a mirror world that checks the `WorldSink` contract; independent validity checks of a
//! decoded snapshot; and a byte cursor that turns fuzzer input into decisions.

use std::collections::BTreeMap;

use statewire_core::{
    ClientConfig, ClientId, ClientReplicator, ComponentId, ComponentView, EntityId, FieldKind,
    Owner, Registry, Replicate, ServerConfig, ServerReplicator, Snapshot, SnapshotBuilder, Store,
    StoreConfig, Tick, WorldSink,
};

pub use statewire_testkit::{Health, Pos, Rot};

/// Edge widths: a 32-bit int, a 32-bit quaternion, a 0-bit enum, an 8-bit quaternion and a
/// 32-bit float whose range is not a power of two.
#[derive(Debug, Clone, Copy, PartialEq, Replicate)]
pub struct Edge {
    /// i64::MIN ..= i64::MIN + u32::MAX (32 bits).
    #[replicate(int(min = i64::MIN, max = EDGE_WIDE_MAX))]
    pub wide: i64,
    /// Quaternion at 10 bits per component (32 bits).
    #[replicate(quat(bits = 10))]
    pub q10: [f32; 4],
    /// The only variant of a one-variant enum (0 bits).
    #[replicate(enumeration(variants = 1))]
    pub unit: u32,
    /// Quaternion at 2 bits per component (8 bits).
    #[replicate(quat(bits = 2))]
    pub q2: [f32; 4],
    /// 0 ..= 4e9 in steps of 1 (32 bits, max below u32::MAX).
    #[replicate(float(min = 0.0, max = 4.0e9, precision = 1.0))]
    pub big: f32,
}

/// Largest value of [`Edge::wide`].
pub const EDGE_WIDE_MAX: i64 = i64::MIN + u32::MAX as i64;

/// Sets the coding of every component type of [`registry`].
pub fn set_entropy(registry: &mut Registry, coding: statewire_core::ComponentCoding) {
    let _ = registry.set_coding::<Pos>(coding);
    let _ = registry.set_coding::<Rot>(coding);
    let _ = registry.set_coding::<Health>(coding);
    let _ = registry.set_coding::<Edge>(coding);
}

/// The registry every target uses: [`Pos`], [`Rot`], [`Health`], [`Edge`] (ids 0..=3).
#[must_use]
pub fn registry() -> Registry {
    let mut r = statewire_testkit::registry();
    r.register::<Edge>().expect("valid");
    r
}

/// Largest valid quantized value of a field, computed here independently of statewire-core.
#[must_use]
pub fn field_max(kind: FieldKind) -> u64 {
    match kind {
        FieldKind::Float {
            min,
            max,
            precision,
        } => ((f64::from(max) - f64::from(min)) / f64::from(precision)).round() as u64,
        FieldKind::Quat { bits } => (1u64 << (2 + 3 * u32::from(bits))) - 1,
        FieldKind::Int { min, max } => (i128::from(max) - i128::from(min)) as u64,
        FieldKind::Bool => 1,
        FieldKind::Enum { variants } => u64::from(variants) - 1,
        _ => u64::from(u32::MAX),
    }
}

/// Panics unless every quantized value in `snap` is within its field's range.
pub fn check_ranges(registry: &Registry, snap: &Snapshot) {
    for id in snap.entity_ids() {
        for c in 0..registry.len() as u16 {
            let cid = ComponentId(c);
            let Some(view) = snap.component_view(registry, id, cid) else {
                continue;
            };
            let schema = registry.schema(cid).expect("registered");
            assert_eq!(view.quantized().len(), schema.fields().len());
            for (f, &v) in schema.fields().iter().zip(view.quantized()) {
                assert!(
                    u64::from(v) <= field_max(f.kind),
                    "{id} {}.{} = {v} out of range",
                    schema.name(),
                    f.name
                );
            }
        }
    }
}

/// Dequantizes every component of `snap` through its type (must succeed for a valid state).
pub fn check_dequantize(registry: &Registry, snap: &Snapshot) {
    for id in snap.entity_ids() {
        let has = |c: u16| snap.component_view(registry, id, ComponentId(c)).is_some();
        assert_eq!(snap.component::<Pos>(registry, id).is_some(), has(0));
        assert_eq!(snap.component::<Rot>(registry, id).is_some(), has(1));
        assert_eq!(snap.component::<Health>(registry, id).is_some(), has(2));
        assert_eq!(snap.component::<Edge>(registry, id).is_some(), has(3));
    }
}

/// Encodes `snap` as a full state and decodes it on a fresh client: every state the decoder
/// accepts must survive the trip unchanged.
pub fn check_reencode(registry: &Registry, snap: &Snapshot) {
    let me = ClientId(9);
    let mut server = ServerReplicator::new(ServerConfig::default());
    server.add_client(me).expect("client");
    server.set_packet_budget(me, Some(1 << 24)).expect("client");
    let mut store = Store::new(registry.clone(), StoreConfig::default());
    store.begin_tick(Tick(1)).expect("first tick");
    store
        .apply_snapshot(snap)
        .expect("decoded state fits the store");
    server.update(&mut store, None);
    let mut out = Vec::new();
    let stats = server.encode_for(&store, me, &mut out).expect("encode");
    assert_eq!(stats.pending + stats.oversized, 0);
    let mut client = ClientReplicator::new(ClientConfig::default());
    let mut mirror = Mirror::default();
    client
        .handle_packet(registry, &out, &mut mirror)
        .expect("re-encoded state decodes");
    assert_eq!(&client.snapshot(), snap);
    mirror.check(registry, snap);
}

/// One entity of a [`Mirror`]: owner and quantized words per component id.
pub type MirrorEntity = (Owner, BTreeMap<u16, Vec<u32>>);

/// A client world built only from `WorldSink` calls; panics when a call breaks the documented
/// contract (unknown entity, double spawn, ids out of order within one packet).
#[derive(Debug, Default, Clone)]
pub struct Mirror {
    /// Entities by id.
    pub entities: BTreeMap<EntityId, MirrorEntity>,
    /// Calls since [`Mirror::begin`].
    pub calls: usize,
    last: Option<EntityId>,
    /// Whether the despawns (which come after every spawn and update) have started.
    despawning: bool,
}

impl Mirror {
    /// Starts a packet: resets the call count and the id-order check.
    pub fn begin(&mut self) {
        self.calls = 0;
        self.last = None;
        self.despawning = false;
    }

    /// Checks the call order: spawns and updates in id order, then despawns in id order.
    fn visit_phase(&mut self, id: EntityId, despawn: bool) {
        self.calls += 1;
        if despawn && !self.despawning {
            self.despawning = true;
            self.last = None;
        }
        assert!(
            despawn || !self.despawning,
            "a spawn or update of {id} after the despawns"
        );
        if let Some(last) = self.last {
            assert!(last <= id, "sink calls out of id order: {last} then {id}");
        }
        self.last = Some(id);
    }

    fn visit(&mut self, id: EntityId) {
        self.visit_phase(id, false);
    }

    fn get(&mut self, id: EntityId) -> &mut MirrorEntity {
        self.entities
            .get_mut(&id)
            .unwrap_or_else(|| panic!("sink call for unknown entity {id}"))
    }

    /// Panics unless the mirror holds exactly the entities, owners and values of `snap`.
    pub fn check(&self, registry: &Registry, snap: &Snapshot) {
        assert_eq!(self.entities.len(), snap.len(), "entity count");
        for (id, (owner, comps)) in &self.entities {
            assert_eq!(snap.owner(*id), Some(*owner), "owner of {id}");
            for c in 0..registry.len() as u16 {
                let theirs = snap
                    .component_view(registry, *id, ComponentId(c))
                    .map(|v| v.quantized().to_vec());
                assert_eq!(comps.get(&c).cloned(), theirs, "{id} component {c}");
            }
        }
    }
}

impl WorldSink for Mirror {
    fn spawn(&mut self, id: EntityId, owner: Owner) {
        self.visit(id);
        assert!(
            self.entities.insert(id, (owner, BTreeMap::new())).is_none(),
            "double spawn of {id}"
        );
    }
    fn despawn(&mut self, id: EntityId) {
        self.visit_phase(id, true);
        assert!(
            self.entities.remove(&id).is_some(),
            "despawn of unknown {id}"
        );
    }
    fn set_owner(&mut self, id: EntityId, owner: Owner) {
        self.visit(id);
        let e = self.get(id);
        assert_ne!(e.0, owner, "set_owner without a change");
        e.0 = owner;
    }
    fn insert(&mut self, id: EntityId, c: ComponentView<'_>) {
        self.visit(id);
        // Exercise dequantization through the right type.
        let ok = match c.id().0 {
            0 => c.get::<Pos>().is_some(),
            1 => c.get::<Rot>().is_some(),
            2 => c.get::<Health>().is_some(),
            3 => c.get::<Edge>().is_some(),
            other => panic!("insert of unknown component {other}"),
        };
        assert!(ok, "component {} does not dequantize", c.id());
        let words = c.quantized().to_vec();
        let e = self.get(id);
        if let Some(old) = e.1.insert(c.id().0, words.clone()) {
            assert_ne!(old, words, "insert without a change");
        }
    }
    fn remove(&mut self, id: EntityId, c: ComponentView<'_>) {
        self.visit(id);
        let words = c.quantized().to_vec();
        let removed = self.get(id).1.remove(&c.id().0);
        assert_eq!(
            removed,
            Some(words),
            "remove of absent or different {} from {id}",
            c.id()
        );
    }
}

/// The world of the baseline packet `snapshot_decode` applies first: a few entities with
/// different component sets, owners and id gaps (1, 2..17 and a long one).
#[must_use]
pub fn baseline_snapshot(registry: &Registry) -> Snapshot {
    let mut b = SnapshotBuilder::new(registry);
    b.entity(EntityId(0), Owner::Server)
        .component(&Pos { x: 1.0, y: -2.5 })
        .component(&Rot([0.0, 0.0, 0.3, 0.95]));
    b.entity(EntityId(1), Owner::Client(ClientId(3)))
        .component(&Health {
            hp: 50,
            alive: true,
            team: 2,
        });
    b.entity(EntityId(5), Owner::Server)
        .component(&Pos { x: 100.0, y: 7.0 })
        .component(&Health {
            hp: -100,
            alive: false,
            team: 0,
        });
    b.entity(EntityId(1000), Owner::Client(ClientId(u64::MAX)))
        .component(&Edge {
            wide: -5,
            q10: [0.5, 0.5, 0.5, 0.5],
            unit: 0,
            q2: [1.0, 0.0, 0.0, 0.0],
            big: 123_456.0,
        });
    b.entity(EntityId(1001), Owner::Server);
    b.finish().expect("valid baseline")
}

/// Tick of the baseline packet.
pub const BASELINE_TICK: Tick = Tick(1);

/// The full-state packet carrying [`baseline_snapshot`] at [`BASELINE_TICK`].
#[must_use]
pub fn baseline_packet(registry: &Registry) -> Vec<u8> {
    let me = ClientId(1);
    let mut server = ServerReplicator::new(ServerConfig::default());
    server.add_client(me).expect("client");
    let mut store = Store::new(registry.clone(), StoreConfig::default());
    store.begin_tick(BASELINE_TICK).expect("first tick");
    store
        .apply_snapshot(&baseline_snapshot(registry))
        .expect("baseline fits the store");
    server.update(&mut store, None);
    let mut out = Vec::new();
    server.encode_for(&store, me, &mut out).expect("encode");
    out
}

/// Reads decisions from fuzzer bytes; yields zeros once the input is used up.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A cursor over `data`.
    #[must_use]
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// Whether every byte was consumed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte.
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// Two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// Four bytes, little-endian.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Eight bytes, little-endian.
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }

    /// One byte's low bit.
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// A float: usually a small value, sometimes any bit pattern (NaN, infinities, huge).
    pub fn f32(&mut self) -> f32 {
        if self.u8().is_multiple_of(4) {
            f32::from_bits(self.u32())
        } else {
            f32::from(self.u16() as i16) / 32.0
        }
    }

    /// Four floats.
    pub fn quat(&mut self) -> [f32; 4] {
        [self.f32(), self.f32(), self.f32(), self.f32()]
    }
}

/// Splits fuzzer input into session messages `[channel, len, bytes...]` (the last one may be
/// cut short by the input's end): the batch format of the endpoint targets.
pub fn message_batch(data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut messages = Vec::new();
    let mut rest = data;
    while let [ch, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        messages.push((*ch, &tail[..n]));
        rest = &tail[n..];
    }
    messages
}
