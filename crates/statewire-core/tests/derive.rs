//! `#[derive(Replicate)]` and `#[derive(ReplicateEnum)]`: a derived impl has the same fields and
//! puts the same bits on the wire as the hand-written one, replicates through the store and
//! both replicators, and reads a value that does not fit its field's type as `None`.

use proptest::prelude::*;
use statewire_core::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ReplicateEnum)]
enum Team {
    Red,
    Blue,
    Green,
}

/// Every rule the derive knows, on the field types it accepts.
#[derive(Debug, Clone, PartialEq, Replicate)]
#[replicate(name = "Body")]
struct Derived {
    #[replicate(float(min = -100.0, max = 100.0, precision = 1.0 / 64.0))]
    x: f32,
    #[replicate(float(min = 0.0, max = std::f32::consts::TAU, precision = std::f32::consts::TAU / 256.0))]
    angle: f64,
    #[replicate(quat(bits = 9), name = "rotation")]
    rot: [f32; 4],
    #[replicate(quat)]
    fine: [f32; 4],
    #[replicate(int(min = -5, max = 200))]
    hp: i16,
    #[replicate(int(min = 0, max = 4_000_000_000))]
    score: u64,
    alive: bool,
    #[replicate(bool)]
    flag: bool,
    #[replicate(enumeration)]
    team: Team,
    #[replicate(enumeration(variants = 5))]
    slot: u8,
    #[replicate(skip)]
    local: String,
}

/// What the derive should produce for [`Derived`], by hand.
#[derive(Debug, Clone, PartialEq)]
struct Hand {
    x: f32,
    angle: f64,
    rot: [f32; 4],
    fine: [f32; 4],
    hp: i16,
    score: u64,
    alive: bool,
    flag: bool,
    team: Team,
    slot: u8,
}

impl Replicate for Hand {
    const NAME: &'static str = "Body";
    fn fields() -> Vec<Field> {
        use std::f32::consts::TAU;
        vec![
            Field::new(
                "x",
                FieldKind::Float {
                    min: -100.0,
                    max: 100.0,
                    precision: 1.0 / 64.0,
                },
            ),
            Field::new(
                "angle",
                FieldKind::Float {
                    min: 0.0,
                    max: TAU,
                    precision: TAU / 256.0,
                },
            ),
            Field::new("rotation", FieldKind::Quat { bits: 9 }),
            Field::new("fine", FieldKind::Quat { bits: 10 }),
            Field::new("hp", FieldKind::Int { min: -5, max: 200 }),
            Field::new(
                "score",
                FieldKind::Int {
                    min: 0,
                    max: 4_000_000_000,
                },
            ),
            Field::new("alive", FieldKind::Bool),
            Field::new("flag", FieldKind::Bool),
            Field::new("team", FieldKind::Enum { variants: 3 }),
            Field::new("slot", FieldKind::Enum { variants: 5 }),
        ]
    }
    fn write(&self, w: &mut FieldWriter<'_>) {
        w.f32(self.x);
        w.f32(self.angle as f32);
        w.quat(self.rot);
        w.quat(self.fine);
        w.int(i64::from(self.hp));
        w.int(i64::try_from(self.score).unwrap_or(i64::MAX));
        w.bool(self.alive);
        w.bool(self.flag);
        w.enumeration(self.team as u32);
        w.enumeration(u32::from(self.slot));
    }
    fn read(r: &mut FieldReader<'_>) -> Option<Self> {
        Some(Hand {
            x: r.f32()?,
            angle: f64::from(r.f32()?),
            rot: r.quat()?,
            fine: r.quat()?,
            hp: i16::try_from(r.int()?).ok()?,
            score: u64::try_from(r.int()?).ok()?,
            alive: r.bool()?,
            flag: r.bool()?,
            team: [Team::Red, Team::Blue, Team::Green]
                .get(usize::try_from(r.enumeration()?).ok()?)
                .copied()?,
            slot: u8::try_from(r.enumeration()?).ok()?,
        })
    }
}

impl From<&Derived> for Hand {
    fn from(d: &Derived) -> Self {
        Hand {
            x: d.x,
            angle: d.angle,
            rot: d.rot,
            fine: d.fine,
            hp: d.hp,
            score: d.score,
            alive: d.alive,
            flag: d.flag,
            team: d.team,
            slot: d.slot,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Replicate)]
struct Tuple(
    #[replicate(int(min = 0, max = 9))] u32,
    #[replicate(float(min = -1.0, max = 1.0, precision = 0.25))] f32,
);

#[derive(Debug, Clone, Copy, PartialEq, Replicate)]
struct Marker;

/// A path to the core other than `::statewire_core`.
mod reexport {
    pub(crate) use statewire_core as core_again;
}

#[derive(Debug, Clone, Copy, PartialEq, Replicate)]
#[replicate(crate = "reexport::core_again")]
struct ViaPath {
    on: bool,
}

fn unit(q: [f32; 4]) -> [f32; 4] {
    let n = q.iter().map(|c| c * c).sum::<f32>().sqrt();
    q.map(|c| c / n)
}

/// Whether `a` and `b` are the same rotation, within `tolerance` of the dot product.
fn same_rotation(a: [f32; 4], b: [f32; 4], tolerance: f32) -> bool {
    let dot: f32 = unit(a).iter().zip(unit(b)).map(|(x, y)| x * y).sum();
    dot.abs() > 1.0 - tolerance
}

fn sample() -> Derived {
    Derived {
        x: 12.5,
        angle: 1.0,
        rot: unit([0.1, 0.7, -0.2, -0.6]),
        fine: [0.0, 0.0, 0.0, 1.0],
        hp: 150,
        score: 3_999_999_999,
        alive: true,
        flag: false,
        team: Team::Green,
        slot: 4,
        local: "not replicated".into(),
    }
}

/// One server-to-client step: `value` set on entity 1 at tick `tick`.
struct Link {
    registry: Registry,
    store: Store,
    server: ServerReplicator,
    client: ClientReplicator,
    tick: u32,
}

const ME: ClientId = ClientId(1);

impl Link {
    fn new(registry: Registry) -> Self {
        let mut server = ServerReplicator::new(ServerConfig::default());
        server.add_client(ME).unwrap();
        Link {
            store: Store::new(registry.clone(), StoreConfig::default()),
            registry,
            server,
            client: ClientReplicator::new(ClientConfig::default()),
            tick: 0,
        }
    }

    /// Sets `value` on entity 1, encodes a packet, decodes it into `sink`; returns the packet.
    fn send<T: Replicate>(&mut self, value: &T, sink: &mut impl WorldSink) -> Vec<u8> {
        self.tick += 1;
        self.store.begin_tick(Tick(self.tick)).unwrap();
        if self.tick == 1 {
            self.store.spawn(EntityId(1), Owner::Server).unwrap();
        }
        self.store.set(EntityId(1), value).unwrap();
        self.server.update(&mut self.store, None);
        let mut packet = Vec::new();
        self.server
            .encode_for(&self.store, ME, &mut packet)
            .unwrap();
        self.client
            .handle_packet(&self.registry, &packet, sink)
            .unwrap();
        self.server
            .handle_ack(ME, self.client.ack().unwrap())
            .unwrap();
        assert_eq!(self.client.snapshot(), self.store.snapshot());
        packet
    }

    fn received<T: Replicate>(&self) -> Option<T> {
        self.client
            .snapshot()
            .component::<T>(&self.registry, EntityId(1))
    }
}

/// A client world that keeps the last value of `T` it was given, or `None` when the view did
/// not read as a `T`.
struct Last<T>(Option<Option<T>>);

impl<T: Replicate> WorldSink for Last<T> {
    fn spawn(&mut self, _: EntityId, _: Owner) {}
    fn despawn(&mut self, _: EntityId) {}
    fn insert(&mut self, _: EntityId, c: ComponentView<'_>) {
        self.0 = Some(c.get::<T>());
    }
    fn remove(&mut self, _: EntityId, _: ComponentView<'_>) {}
}

fn registry_of<T: Replicate>() -> Registry {
    let mut r = Registry::new();
    r.register::<T>().unwrap();
    r
}

fn quantized<T: Replicate>(registry: &Registry, value: &T) -> Vec<u32> {
    let mut raw = Vec::new();
    let id = registry.raw_values(value, &mut raw).unwrap();
    let mut words = Vec::new();
    // Clamped values would fail strict validation; the samples here are in range.
    registry.validate_raw(id, &raw, &mut words).unwrap();
    words
}

#[test]
fn derived_fields_equal_the_hand_written_ones() {
    assert_eq!(Derived::NAME, Hand::NAME);
    assert_eq!(Derived::fields(), Hand::fields());
    assert_eq!(
        registry_of::<Derived>().fingerprint(),
        registry_of::<Hand>().fingerprint()
    );
    assert_eq!(Team::COUNT, 3);
    assert_eq!(Team::Blue.index(), 1);
    assert_eq!(Team::from_index(2), Some(Team::Green));
    assert_eq!(Team::from_index(3), None);
    assert_eq!(Tuple::NAME, "Tuple");
    assert_eq!(
        Tuple::fields(),
        vec![
            Field::new("0", FieldKind::Int { min: 0, max: 9 }),
            Field::new(
                "1",
                FieldKind::Float {
                    min: -1.0,
                    max: 1.0,
                    precision: 0.25
                }
            ),
        ]
    );
    assert!(Marker::fields().is_empty());
    assert_eq!(ViaPath::fields(), vec![Field::new("on", FieldKind::Bool)]);
}

#[test]
fn derived_encoding_equals_the_hand_written_one() {
    let d = sample();
    let h = Hand::from(&d);
    let (rd, rh) = (registry_of::<Derived>(), registry_of::<Hand>());
    let (mut raw_d, mut raw_h) = (Vec::new(), Vec::new());
    rd.raw_values(&d, &mut raw_d).unwrap();
    rh.raw_values(&h, &mut raw_h).unwrap();
    assert_eq!(raw_d, raw_h);
    assert_eq!(quantized(&rd, &d), quantized(&rh, &h));

    let (mut ld, mut lh) = (Link::new(rd), Link::new(rh));
    let mut moved = sample();
    for step in 0..3 {
        moved.x += 1.0;
        moved.hp -= 7;
        moved.team = [Team::Red, Team::Blue, Team::Green][step];
        let pd = ld.send(&moved, &mut Last::<Derived>(None));
        let ph = lh.send(&Hand::from(&moved), &mut Last::<Hand>(None));
        assert_eq!(pd, ph, "packets differ at step {step}");
    }
    let back = ld.received::<Derived>().unwrap();
    assert_eq!(Hand::from(&back), lh.received::<Hand>().unwrap());
}

#[test]
fn derived_types_replicate_through_the_loop() {
    let mut registry = Registry::new();
    registry.register::<Derived>().unwrap();
    registry.register::<Tuple>().unwrap();
    registry.register::<Marker>().unwrap();
    registry.register::<ViaPath>().unwrap();
    let mut link = Link::new(registry);
    let mut sink = Last::<Derived>(None);
    link.send(&sample(), &mut sink);
    link.send(&Tuple(7, -0.75), &mut Last::<Tuple>(None));
    link.send(&Marker, &mut Last::<Marker>(None));
    link.send(&ViaPath { on: true }, &mut Last::<ViaPath>(None));

    let back = link.received::<Derived>().unwrap();
    let want = sample();
    // 1/64 steps over a range starting at a multiple of 1/64: exact.
    assert_eq!(back.x, want.x);
    assert!((back.angle - want.angle).abs() <= f64::from(std::f32::consts::TAU / 512.0));
    assert_eq!(
        (
            back.hp, back.score, back.alive, back.flag, back.team, back.slot
        ),
        (
            want.hp, want.score, want.alive, want.flag, want.team, want.slot
        )
    );
    assert_eq!(back.local, "", "a skipped field reads as its default");
    assert!(same_rotation(back.rot, want.rot, 1e-3), "{:?}", back.rot);
    assert!(same_rotation(back.fine, want.fine, 1e-5), "{:?}", back.fine);
    assert_eq!(link.received::<Tuple>(), Some(Tuple(7, -0.75)));
    assert_eq!(link.received::<Marker>(), Some(Marker));
    assert_eq!(link.received::<ViaPath>(), Some(ViaPath { on: true }));
    // The first packet's sink got the derived value too.
    assert_eq!(sink.0.unwrap().unwrap().team, Team::Green);
}

/// A narrow field whose range is wider than its type: values past the type read as `None`.
#[derive(Debug, Clone, Copy, PartialEq, Replicate)]
#[replicate(name = "Level")]
struct Narrow {
    #[replicate(int(min = -10, max = 300))]
    level: u8,
}

/// The same schema on the sending side, with room for every value.
#[derive(Debug, Clone, Copy, PartialEq, Replicate)]
#[replicate(name = "Level")]
struct Wide {
    #[replicate(int(min = -10, max = 300))]
    level: i64,
}

#[test]
fn ints_that_do_not_fit_read_as_none() {
    let narrow = registry_of::<Narrow>();
    assert_eq!(narrow.fingerprint(), registry_of::<Wide>().fingerprint());
    // Straight from quantized words.
    let id = narrow.id_of::<Narrow>().unwrap();
    for (value, want) in [
        (-10, None),
        (-1, None),
        (0, Some(0)),
        (255, Some(255)),
        (256, None),
        (300, None),
    ] {
        let mut words = Vec::new();
        narrow
            .validate_raw(id, &[RawValue::Int(value)], &mut words)
            .unwrap();
        let got = narrow.view(id, &words).unwrap().get::<Narrow>();
        assert_eq!(got.map(|n| n.level), want, "{value}");
    }
    // Over the wire: a server with the wide type, a client with the narrow one.
    let mut server = Link::new(registry_of::<Wide>());
    let mut client = ClientReplicator::new(ClientConfig::default());
    for (value, want) in [(200, Some(200u8)), (300, None), (-3, None), (7, Some(7))] {
        let packet = server.send(&Wide { level: value }, &mut Last::<Wide>(None));
        let mut sink = Last::<Narrow>(None);
        client.handle_packet(&narrow, &packet, &mut sink).unwrap();
        assert_eq!(sink.0, Some(want.map(|level| Narrow { level })), "{value}");
    }
    // Writing clamps into the field's range, as the hand-written API does.
    assert_eq!(
        quantized(&narrow, &Narrow { level: 255 }),
        vec![265],
        "255 - (-10)"
    );
}

#[test]
fn wide_integers_saturate_when_written() {
    #[derive(Debug, Clone, Copy, PartialEq, Replicate)]
    struct Big {
        #[replicate(int(min = 0, max = 1000))]
        v: u128,
        #[replicate(int(min = -1000, max = 0))]
        w: i128,
        #[replicate(enumeration(variants = 3))]
        e: i32,
    }
    let reg = registry_of::<Big>();
    let mut raw = Vec::new();
    reg.raw_values(
        &Big {
            v: u128::MAX,
            w: i128::MIN,
            e: -4,
        },
        &mut raw,
    )
    .unwrap();
    assert_eq!(
        raw,
        vec![
            RawValue::Int(i64::MAX),
            RawValue::Int(i64::MIN),
            RawValue::Enum(0)
        ]
    );
    let mut link = Link::new(reg);
    link.send(
        &Big {
            v: u128::MAX,
            w: i128::MIN,
            e: 99,
        },
        &mut Last::<Big>(None),
    );
    assert_eq!(
        link.received::<Big>(),
        Some(Big {
            v: 1000,
            w: -1000,
            e: 2
        })
    );
}

fn team() -> impl Strategy<Value = Team> {
    (0u32..3).prop_map(|i| Team::from_index(i).unwrap())
}

fn quat() -> impl Strategy<Value = [f32; 4]> {
    [-1.0f32..1.0, -1.0f32..1.0, -1.0f32..1.0, 0.1f32..1.0]
}

prop_compose! {
    fn derived()(
        x in -150.0f32..150.0,
        angle in -1.0f64..7.0,
        rot in quat(),
        fine in quat(),
        hp in any::<i16>(),
        score in any::<u64>(),
        alive in any::<bool>(),
        flag in any::<bool>(),
        team in team(),
        slot in any::<u8>(),
    ) -> Derived {
        Derived { x, angle, rot, fine, hp, score, alive, flag, team, slot, local: String::new() }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary values (in range or not) encode to the hand-written impl's packets, read back
    /// within a step of what was written (after clamping), and re-encode to the same words.
    #[test]
    fn round_trip_matches_the_hand_written_impl(values in prop::collection::vec(derived(), 1..4)) {
        let mut ld = Link::new(registry_of::<Derived>());
        let mut lh = Link::new(registry_of::<Hand>());
        for v in &values {
            let pd = ld.send(v, &mut Last::<Derived>(None));
            let ph = lh.send(&Hand::from(v), &mut Last::<Hand>(None));
            prop_assert_eq!(pd, ph);
            let back = ld.received::<Derived>().unwrap();
            prop_assert_eq!(Hand::from(&back), lh.received::<Hand>().unwrap());
            prop_assert!((back.x - v.x.clamp(-100.0, 100.0)).abs() <= 1.0 / 128.0);
            prop_assert_eq!(i64::from(back.hp), i64::from(v.hp).clamp(-5, 200));
            prop_assert_eq!(back.score, v.score.min(4_000_000_000));
            prop_assert_eq!((back.alive, back.flag, back.team), (v.alive, v.flag, v.team));
            prop_assert_eq!(back.slot, v.slot.min(4));
            prop_assert!(same_rotation(back.rot, v.rot, 1e-3));
            prop_assert!(same_rotation(back.fine, v.fine, 1e-5));
            // Dequantized values quantize back to themselves (quaternions aside: one whose
            // largest components tie need not re-quantize to the same word).
            let reg = registry_of::<Derived>();
            let words = quantized(&reg, &back);
            let id = reg.id_of::<Derived>().unwrap();
            let again = reg.view(id, &words).unwrap().get::<Derived>().unwrap();
            prop_assert_eq!(Derived { rot: back.rot, fine: back.fine, ..again }, back);
        }
    }
}
