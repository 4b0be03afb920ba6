//! Component schemas: which fields a replicated component has and how each is quantized.
//!
//! Replication works on *quantized* values: every field maps to an unsigned integer of a fixed
//! width (at most 32 bits) before anything is compared, stored or sent. Both peers quantize with
//! the same [`Registry`], so after a snapshot is applied the client's quantized state equals the
//! server's bit for bit; dequantizing gives the game the nearest representable value.

use std::any::TypeId;
use std::fmt;

use hashbrown::HashMap;

/// How one field is quantized.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum FieldKind {
    /// A float in `[min, max]` stored in steps of `precision` (values outside are clamped, NaN
    /// becomes `min`).
    Float {
        /// Smallest representable value.
        min: f32,
        /// Largest representable value.
        max: f32,
        /// Step between representable values.
        precision: f32,
    },
    /// A unit quaternion `[x, y, z, w]` in smallest-three form: the index of the largest
    /// component (2 bits) and the other three, each in `[-1/√2, 1/√2]`, on `bits` bits.
    Quat {
        /// Bits per stored component, 2..=10.
        bits: u8,
    },
    /// An integer in `[min, max]` (outside values are clamped).
    Int {
        /// Smallest value.
        min: i64,
        /// Largest value.
        max: i64,
    },
    /// A boolean (1 bit).
    Bool,
    /// One of `variants` values `0..variants`.
    Enum {
        /// Number of variants, at least 1.
        variants: u32,
    },
}

/// Errors in a component schema or in values written against it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// A field's parameters are invalid (empty range, non-finite, too wide).
    #[error("component {component}: field {field}: {reason}")]
    BadField {
        /// Component name.
        component: &'static str,
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// More component types were registered than [`MAX_COMPONENT_TYPES`].
    #[error("at most {MAX_COMPONENT_TYPES} component types can be registered")]
    TooManyComponents,
    /// A component type was registered twice.
    #[error("component {0} registered twice")]
    DuplicateComponent(&'static str),
    /// The component type was never registered.
    #[error("component type {0} is not registered")]
    Unregistered(&'static str),
    /// A component's `write` produced values that do not match its field list.
    #[error("component {component}: wrote {reason}")]
    Mismatch {
        /// Component name.
        component: &'static str,
        /// What did not match.
        reason: &'static str,
    },
}

/// Largest number of component types one [`Registry`] holds (component sets travel as a
/// bitmask of this width).
pub const MAX_COMPONENT_TYPES: usize = 64;

/// One named field of a component.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Field {
    /// Field name (documentation and error messages only; never sent).
    pub name: &'static str,
    /// How the field is quantized.
    pub kind: FieldKind,
}

impl Field {
    /// A field named `name` quantized as `kind`.
    #[must_use]
    pub const fn new(name: &'static str, kind: FieldKind) -> Self {
        Field { name, kind }
    }
}

/// A game type whose state is replicated.
///
/// Usually derived: `#[derive(Replicate)]` with a quantization rule per field (feature
/// `derive`; see the crate docs). By hand:
///
/// ```
/// use statewire_core::{Field, FieldKind, FieldReader, FieldWriter, Replicate};
///
/// struct Position { x: f32, y: f32 }
///
/// impl Replicate for Position {
///     const NAME: &'static str = "Position";
///     fn fields() -> Vec<Field> {
///         let axis = FieldKind::Float { min: -512.0, max: 512.0, precision: 1.0 / 64.0 };
///         vec![Field::new("x", axis), Field::new("y", axis)]
///     }
///     fn write(&self, w: &mut FieldWriter<'_>) {
///         w.f32(self.x);
///         w.f32(self.y);
///     }
///     fn read(r: &mut FieldReader<'_>) -> Option<Self> {
///         Some(Position { x: r.f32()?, y: r.f32()? })
///     }
/// }
/// ```
pub trait Replicate: Sized + 'static {
    /// Unique name of the component type (part of the protocol fingerprint).
    const NAME: &'static str;
    /// The fields, in the order `write` and `read` visit them.
    fn fields() -> Vec<Field>;
    /// Writes every field, in order.
    fn write(&self, w: &mut FieldWriter<'_>);
    /// Reads every field, in order; `None` if the values do not fit the type.
    fn read(r: &mut FieldReader<'_>) -> Option<Self>;
}

/// A registered component type, numbered in registration order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ComponentId(pub u16);

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// A field with its derived quantization parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FieldCodec {
    pub(crate) kind: FieldKind,
    /// Width of the quantized value in bits.
    pub(crate) bits: u32,
    /// Largest valid quantized value.
    pub(crate) max_q: u32,
}

/// Layout of one registered component type.
#[derive(Debug, Clone)]
pub struct ComponentSchema {
    name: &'static str,
    type_id: TypeId,
    fields: Vec<Field>,
    pub(crate) codecs: Vec<FieldCodec>,
    pub(crate) coding: ComponentCoding,
    /// Index of this component's first field among all registered fields.
    pub(crate) first_field: usize,
}

/// How a component type's changed values are coded in snapshot packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ComponentCoding {
    /// Bit-packed small deltas (`'1' + zigzag delta on width/2 bits`, or the raw value).
    #[default]
    Packed,
    /// Deltas of scalar fields (floats and ints wider than 4 bits) range-coded with adaptive
    /// per-field models in a tail after the bit-packed records; fresh models each packet, so
    /// a lost packet costs nothing later. Quaternions, bools and narrow fields stay packed.
    Entropy,
}

impl ComponentSchema {
    /// The component's name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// The component's fields.
    #[must_use]
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }
    /// Number of quantized words the component occupies (one per field).
    #[must_use]
    pub fn words(&self) -> usize {
        self.fields.len()
    }
    /// Bits the full quantized state takes.
    #[must_use]
    pub fn full_bits(&self) -> u32 {
        self.codecs.iter().map(|c| c.bits).sum()
    }
}

fn bits_for(max_value: u64) -> u32 {
    64 - max_value.leading_zeros()
}

fn codec_for(component: &'static str, field: &Field) -> Result<FieldCodec, SchemaError> {
    let bad = |reason| SchemaError::BadField {
        component,
        field: field.name,
        reason,
    };
    let max_q: u64 = match field.kind {
        FieldKind::Float {
            min,
            max,
            precision,
        } => {
            if !(min.is_finite() && max.is_finite() && precision.is_finite()) {
                return Err(bad("bounds and precision must be finite"));
            }
            if max <= min || precision <= 0.0 {
                return Err(bad("needs min < max and precision > 0"));
            }
            let steps = ((f64::from(max) - f64::from(min)) / f64::from(precision)).round();
            if steps >= f64::from(u32::MAX) {
                return Err(bad("range/precision needs more than 32 bits"));
            }
            steps as u64
        }
        FieldKind::Quat { bits } => {
            if !(2..=10).contains(&bits) {
                return Err(bad("quaternion component bits must be 2..=10"));
            }
            (1u64 << (2 + 3 * u32::from(bits))) - 1
        }
        FieldKind::Int { min, max } => {
            if max < min {
                return Err(bad("needs min <= max"));
            }
            let span = (i128::from(max) - i128::from(min)) as u128;
            if span > u128::from(u32::MAX) {
                return Err(bad("range needs more than 32 bits"));
            }
            span as u64
        }
        FieldKind::Bool => 1,
        FieldKind::Enum { variants } => {
            if variants == 0 {
                return Err(bad("an enum needs at least one variant"));
            }
            u64::from(variants - 1)
        }
    };
    Ok(FieldCodec {
        kind: field.kind,
        bits: bits_for(max_q),
        max_q: max_q as u32,
    })
}

/// The component types both peers replicate, in the same order on both.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    schemas: Vec<ComponentSchema>,
    by_type: HashMap<TypeId, ComponentId>,
}

impl Registry {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `T`, validating its fields. Peers must register the same types in the same
    /// order; compare [`Registry::fingerprint`] during the handshake.
    pub fn register<T: Replicate>(&mut self) -> Result<ComponentId, SchemaError> {
        let type_id = TypeId::of::<T>();
        if self.by_type.contains_key(&type_id) || self.schemas.iter().any(|s| s.name == T::NAME) {
            return Err(SchemaError::DuplicateComponent(T::NAME));
        }
        if self.schemas.len() >= MAX_COMPONENT_TYPES {
            return Err(SchemaError::TooManyComponents);
        }
        let fields = T::fields();
        let codecs = fields
            .iter()
            .map(|f| codec_for(T::NAME, f))
            .collect::<Result<Vec<_>, _>>()?;
        let id = ComponentId(self.schemas.len() as u16);
        let first_field = self.schemas.iter().map(|s| s.codecs.len()).sum();
        self.schemas.push(ComponentSchema {
            name: T::NAME,
            type_id,
            fields,
            codecs,
            coding: ComponentCoding::Packed,
            first_field,
        });
        self.by_type.insert(type_id, id);
        Ok(id)
    }

    /// Chooses how `T`'s changed values are coded (default [`ComponentCoding::Packed`]). Part
    /// of the fingerprint: both peers must choose the same.
    pub fn set_coding<T: Replicate>(&mut self, coding: ComponentCoding) -> Result<(), SchemaError> {
        let id = self
            .id_of::<T>()
            .ok_or(SchemaError::Unregistered(T::NAME))?;
        self.schemas[usize::from(id.0)].coding = coding;
        Ok(())
    }

    /// How component `id` is coded.
    #[must_use]
    pub fn coding(&self, id: ComponentId) -> Option<ComponentCoding> {
        self.schema(id).map(|s| s.coding)
    }

    /// Whether any component uses [`ComponentCoding::Entropy`] (packets then carry a
    /// range-coded tail).
    #[must_use]
    pub fn uses_entropy(&self) -> bool {
        self.schemas
            .iter()
            .any(|s| s.coding == ComponentCoding::Entropy)
    }

    /// The id `T` was registered under.
    #[must_use]
    pub fn id_of<T: Replicate>(&self) -> Option<ComponentId> {
        self.by_type.get(&TypeId::of::<T>()).copied()
    }

    /// The schema of a registered component.
    #[must_use]
    pub fn schema(&self, id: ComponentId) -> Option<&ComponentSchema> {
        self.schemas.get(usize::from(id.0))
    }

    /// Number of registered component types.
    #[must_use]
    pub fn len(&self) -> usize {
        self.schemas.len()
    }

    /// Whether nothing is registered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.schemas.is_empty()
    }

    pub(crate) fn schema_at(&self, index: usize) -> &ComponentSchema {
        &self.schemas[index]
    }

    /// Indices of registered components set in `mask`, ascending.
    pub(crate) fn mask_iter(&self, mask: u64) -> impl Iterator<Item = usize> + '_ {
        let valid = self.valid_mask();
        let mut m = mask & valid;
        std::iter::from_fn(move || {
            if m == 0 {
                return None;
            }
            let i = m.trailing_zeros() as usize;
            m &= m - 1;
            Some(i)
        })
    }

    /// Bitmask with a bit set for every registered component.
    pub(crate) fn valid_mask(&self) -> u64 {
        if self.schemas.len() >= 64 {
            u64::MAX
        } else {
            (1u64 << self.schemas.len()) - 1
        }
    }

    /// A stable 64-bit digest of every schema (names, field kinds and order). Peers with
    /// different fingerprints cannot decode each other's snapshots.
    #[must_use]
    pub fn fingerprint(&self) -> u64 {
        // FNV-1a: stable across platforms and Rust versions, unlike `DefaultHasher`.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        for s in &self.schemas {
            eat(s.name.as_bytes());
            eat(&[0xff]);
            if s.coding == ComponentCoding::Entropy {
                eat(&[0xee]);
            }
            for c in &s.codecs {
                match c.kind {
                    FieldKind::Float {
                        min,
                        max,
                        precision,
                    } => {
                        eat(&[1]);
                        eat(&min.to_bits().to_le_bytes());
                        eat(&max.to_bits().to_le_bytes());
                        eat(&precision.to_bits().to_le_bytes());
                    }
                    FieldKind::Quat { bits } => eat(&[2, bits]),
                    FieldKind::Int { min, max } => {
                        eat(&[3]);
                        eat(&min.to_le_bytes());
                        eat(&max.to_le_bytes());
                    }
                    FieldKind::Bool => eat(&[4]),
                    FieldKind::Enum { variants } => {
                        eat(&[5]);
                        eat(&variants.to_le_bytes());
                    }
                }
            }
        }
        h
    }

    /// Quantizes `value` into `out` (one word per field).
    pub(crate) fn quantize<T: Replicate>(
        &self,
        value: &T,
        out: &mut Vec<u32>,
    ) -> Result<ComponentId, SchemaError> {
        let start = out.len();
        self.write_fields(value, Target::Quantized(out))
            .inspect_err(|_| out.truncate(start))
    }

    /// The raw (unquantized) field values of `value`, appended to `out`: what a client sends to
    /// write an entity it owns.
    pub fn raw_values<T: Replicate>(
        &self,
        value: &T,
        out: &mut Vec<RawValue>,
    ) -> Result<ComponentId, SchemaError> {
        let start = out.len();
        self.write_fields(value, Target::Raw(out))
            .inspect_err(|_| out.truncate(start))
    }

    /// Runs `value`'s [`Replicate::write`] into `out`; on error the caller drops what it wrote.
    fn write_fields<T: Replicate>(
        &self,
        value: &T,
        out: Target<'_>,
    ) -> Result<ComponentId, SchemaError> {
        let id = self
            .id_of::<T>()
            .ok_or(SchemaError::Unregistered(T::NAME))?;
        let schema = &self.schemas[usize::from(id.0)];
        let mut w = FieldWriter {
            schema,
            out,
            next: 0,
            error: None,
        };
        value.write(&mut w);
        let short = (w.next != schema.codecs.len()).then_some("fewer values than fields");
        match w.error.or(short) {
            Some(reason) => Err(SchemaError::Mismatch {
                component: schema.name,
                reason,
            }),
            None => Ok(id),
        }
    }

    /// Strictly validates and quantizes raw values received from a peer for `component`:
    /// every value finite, of its field's kind and within its range (no clamping), one per
    /// field. Appends the quantized words to `out` only on success.
    pub fn validate_raw(
        &self,
        component: ComponentId,
        values: &[RawValue],
        out: &mut Vec<u32>,
    ) -> Result<(), ValueError> {
        let schema = self.schema(component).ok_or(ValueError::Mismatch)?;
        if values.len() != schema.codecs.len() {
            return Err(ValueError::Mismatch);
        }
        let start = out.len();
        for (codec, &raw) in schema.codecs.iter().zip(values) {
            match codec.validate(raw) {
                Ok(q) => out.push(q),
                Err(e) => {
                    out.truncate(start);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// A view of quantized words as component `id` (for applying validated writes).
    #[must_use]
    pub fn view<'a>(&'a self, id: ComponentId, words: &'a [u32]) -> Option<ComponentView<'a>> {
        let schema = self.schema(id)?;
        (schema.words() == words.len()).then_some(ComponentView {
            registry: self,
            id,
            words,
        })
    }

    /// The field kinds of component `id`, in order.
    pub fn field_kinds(&self, id: ComponentId) -> impl Iterator<Item = FieldKind> + '_ {
        self.schema(id)
            .into_iter()
            .flat_map(|s| s.codecs.iter().map(|c| c.kind))
    }
}

/// One field value as the game wrote it, before quantization: what a client sends when it
/// writes an entity it owns, so the server can validate it (finite, in range) first.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum RawValue {
    /// For [`FieldKind::Float`].
    F32(f32),
    /// For [`FieldKind::Quat`], `[x, y, z, w]`.
    Quat([f32; 4]),
    /// For [`FieldKind::Int`].
    Int(i64),
    /// For [`FieldKind::Bool`].
    Bool(bool),
    /// For [`FieldKind::Enum`].
    Enum(u32),
}

/// Why a raw value failed strict validation ([`Registry::validate_raw`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// Not a value of the field's kind, or a different number of values than fields.
    #[error("values do not match the component's fields")]
    Mismatch,
    /// NaN or infinite.
    #[error("non-finite value")]
    NotFinite,
    /// Outside the field's range (or not a unit quaternion).
    #[error("value out of range")]
    OutOfRange,
}

impl FieldCodec {
    /// Quantizes leniently (clamping), as the server does with its own state.
    fn quantize(&self, raw: RawValue) -> Option<u32> {
        Some(match (self.kind, raw) {
            (FieldKind::Float { min, precision, .. }, RawValue::F32(v)) => {
                quantize_float(v, min, precision, self.max_q)
            }
            (FieldKind::Quat { bits }, RawValue::Quat(q)) => quantize_quat(q, u32::from(bits)),
            (FieldKind::Int { min, max }, RawValue::Int(v)) => {
                (i128::from(v.clamp(min, max)) - i128::from(min)) as u32
            }
            (FieldKind::Bool, RawValue::Bool(b)) => u32::from(b),
            (FieldKind::Enum { .. }, RawValue::Enum(i)) => i.min(self.max_q),
            _ => return None,
        })
    }

    /// Quantizes strictly: rejects what a well-behaved peer never sends.
    fn validate(&self, raw: RawValue) -> Result<u32, ValueError> {
        match (self.kind, raw) {
            (FieldKind::Float { min, max, .. }, RawValue::F32(v)) => {
                if !v.is_finite() {
                    return Err(ValueError::NotFinite);
                }
                if v < min || v > max {
                    return Err(ValueError::OutOfRange);
                }
            }
            (FieldKind::Quat { .. }, RawValue::Quat(q)) => {
                if !q.iter().all(|c| c.is_finite()) {
                    return Err(ValueError::NotFinite);
                }
                let norm2: f32 = q.iter().map(|c| c * c).sum();
                if (norm2 - 1.0).abs() > 0.02 {
                    return Err(ValueError::OutOfRange);
                }
            }
            (FieldKind::Int { min, max }, RawValue::Int(v)) => {
                if v < min || v > max {
                    return Err(ValueError::OutOfRange);
                }
            }
            (FieldKind::Enum { .. }, RawValue::Enum(i)) => {
                if i > self.max_q {
                    return Err(ValueError::OutOfRange);
                }
            }
            (FieldKind::Bool, RawValue::Bool(_)) => {}
            _ => return Err(ValueError::Mismatch),
        }
        self.quantize(raw).ok_or(ValueError::Mismatch)
    }
}

enum Target<'a> {
    Quantized(&'a mut Vec<u32>),
    Raw(&'a mut Vec<RawValue>),
}

/// Receives a component's field values in order (and quantizes them, or keeps them raw for a
/// client's write).
pub struct FieldWriter<'a> {
    schema: &'a ComponentSchema,
    out: Target<'a>,
    next: usize,
    error: Option<&'static str>,
}

impl std::fmt::Debug for FieldWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FieldWriter")
            .field("component", &self.schema.name)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl FieldWriter<'_> {
    fn push(&mut self, raw: RawValue) {
        if self.error.is_some() {
            return;
        }
        let Some(codec) = self.schema.codecs.get(self.next) else {
            self.error = Some("more values than fields");
            return;
        };
        let Some(q) = codec.quantize(raw) else {
            self.error = Some("a value of the wrong kind for its field");
            return;
        };
        match &mut self.out {
            Target::Quantized(out) => out.push(q),
            Target::Raw(out) => out.push(raw),
        }
        self.next += 1;
    }

    /// Next field is a [`FieldKind::Float`].
    pub fn f32(&mut self, v: f32) {
        self.push(RawValue::F32(v));
    }

    /// Next field is a [`FieldKind::Quat`]; `q` is `[x, y, z, w]` and need not be normalized.
    pub fn quat(&mut self, q: [f32; 4]) {
        self.push(RawValue::Quat(q));
    }

    /// Next field is a [`FieldKind::Int`].
    pub fn int(&mut self, v: i64) {
        self.push(RawValue::Int(v));
    }

    /// Next field is a [`FieldKind::Bool`].
    pub fn bool(&mut self, v: bool) {
        self.push(RawValue::Bool(v));
    }

    /// Next field is a [`FieldKind::Enum`]; out-of-range indices are clamped to the last variant.
    pub fn enumeration(&mut self, index: u32) {
        self.push(RawValue::Enum(index));
    }
}

fn quantize_float(v: f32, min: f32, precision: f32, max_q: u32) -> u32 {
    if v.is_nan() {
        return 0;
    }
    let q = ((f64::from(v) - f64::from(min)) / f64::from(precision)).round();
    q.clamp(0.0, f64::from(max_q)) as u32
}

fn dequantize_float(q: u32, min: f32, precision: f32) -> f32 {
    (f64::from(min) + f64::from(q) * f64::from(precision)) as f32
}

const QUAT_RANGE: f32 = std::f32::consts::FRAC_1_SQRT_2;

fn quantize_quat(q: [f32; 4], bits: u32) -> u32 {
    let norm = q.iter().map(|c| c * c).sum::<f32>().sqrt();
    let q = if norm.is_finite() && norm > 0.0 {
        q.map(|c| c / norm)
    } else {
        [0.0, 0.0, 0.0, 1.0]
    };
    let mut largest = 0;
    for i in 1..4 {
        if q[i].abs() > q[largest].abs() {
            largest = i;
        }
    }
    // q and -q are the same rotation: make the dropped component positive so it can be rebuilt.
    let sign = if q[largest] < 0.0 { -1.0 } else { 1.0 };
    let max = (1u32 << bits) - 1;
    let mut packed = largest as u32;
    for (i, &c) in q.iter().enumerate() {
        if i == largest {
            continue;
        }
        let unit = ((c * sign + QUAT_RANGE) / (2.0 * QUAT_RANGE)).clamp(0.0, 1.0);
        let v = (unit * max as f32).round() as u32;
        packed = packed << bits | v.min(max);
    }
    packed
}

fn dequantize_quat(packed: u32, bits: u32) -> [f32; 4] {
    let max = (1u32 << bits) - 1;
    let mask = max;
    let largest = (packed >> (3 * bits)) as usize & 3;
    let raw = [
        (packed >> (2 * bits)) & mask,
        (packed >> bits) & mask,
        packed & mask,
    ];
    let mut out = [0.0f32; 4];
    let mut sum = 0.0;
    let mut k = 0;
    for (i, slot) in out.iter_mut().enumerate() {
        if i == largest {
            continue;
        }
        let c = raw[k] as f32 / max as f32 * (2.0 * QUAT_RANGE) - QUAT_RANGE;
        *slot = c;
        sum += c * c;
        k += 1;
    }
    out[largest] = (1.0 - sum).max(0.0).sqrt();
    out
}

/// Hands a component's dequantized field values to [`Replicate::read`], in order.
#[derive(Debug)]
pub struct FieldReader<'a> {
    codecs: &'a [FieldCodec],
    words: &'a [u32],
    next: usize,
}

impl<'a> FieldReader<'a> {
    fn take(&mut self) -> Option<(&'a FieldCodec, u32)> {
        let c = self.codecs.get(self.next)?;
        let w = *self.words.get(self.next)?;
        self.next += 1;
        Some((c, w))
    }

    /// Next field as a float; `None` if it is not a [`FieldKind::Float`].
    pub fn f32(&mut self) -> Option<f32> {
        match self.take()? {
            (
                FieldCodec {
                    kind: FieldKind::Float { min, precision, .. },
                    ..
                },
                q,
            ) => Some(dequantize_float(q, *min, *precision)),
            _ => None,
        }
    }

    /// Next field as a unit quaternion `[x, y, z, w]`.
    pub fn quat(&mut self) -> Option<[f32; 4]> {
        match self.take()? {
            (
                FieldCodec {
                    kind: FieldKind::Quat { bits },
                    ..
                },
                q,
            ) => Some(dequantize_quat(q, u32::from(*bits))),
            _ => None,
        }
    }

    /// Next field as an integer.
    pub fn int(&mut self) -> Option<i64> {
        match self.take()? {
            (
                FieldCodec {
                    kind: FieldKind::Int { min, .. },
                    ..
                },
                q,
            ) => Some(min.wrapping_add(i64::from(q))),
            _ => None,
        }
    }

    /// Next field as a boolean.
    pub fn bool(&mut self) -> Option<bool> {
        match self.take()? {
            (
                FieldCodec {
                    kind: FieldKind::Bool,
                    ..
                },
                q,
            ) => Some(q != 0),
            _ => None,
        }
    }

    /// Next field as an enum variant index.
    pub fn enumeration(&mut self) -> Option<u32> {
        match self.take()? {
            (
                FieldCodec {
                    kind: FieldKind::Enum { .. },
                    ..
                },
                q,
            ) => Some(q),
            _ => None,
        }
    }
}

/// One component's quantized state, as handed to a [`crate::WorldSink`].
#[derive(Debug, Clone, Copy)]
pub struct ComponentView<'a> {
    pub(crate) registry: &'a Registry,
    pub(crate) id: ComponentId,
    pub(crate) words: &'a [u32],
}

impl<'a> ComponentView<'a> {
    /// Which component this is.
    #[must_use]
    pub fn id(&self) -> ComponentId {
        self.id
    }

    /// The quantized field values, one per field.
    #[must_use]
    pub fn quantized(&self) -> &'a [u32] {
        self.words
    }

    /// Whether this is a `T`.
    #[must_use]
    pub fn is<T: Replicate>(&self) -> bool {
        self.registry.id_of::<T>() == Some(self.id)
    }

    /// Dequantizes into a `T`; `None` if this component is not a `T`.
    #[must_use]
    pub fn get<T: Replicate>(&self) -> Option<T> {
        if !self.is::<T>() {
            return None;
        }
        let schema = self.registry.schema(self.id)?;
        debug_assert_eq!(schema.type_id, TypeId::of::<T>());
        T::read(&mut FieldReader {
            codecs: &schema.codecs,
            words: self.words,
            next: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Clone, Copy)]
    struct Body {
        x: f32,
        rot: [f32; 4],
        hp: i64,
        alive: bool,
        team: u32,
    }

    impl Replicate for Body {
        const NAME: &'static str = "Body";
        fn fields() -> Vec<Field> {
            vec![
                Field::new(
                    "x",
                    FieldKind::Float {
                        min: -100.0,
                        max: 100.0,
                        precision: 0.01,
                    },
                ),
                Field::new("rot", FieldKind::Quat { bits: 10 }),
                Field::new("hp", FieldKind::Int { min: -5, max: 200 }),
                Field::new("alive", FieldKind::Bool),
                Field::new("team", FieldKind::Enum { variants: 3 }),
            ]
        }
        fn write(&self, w: &mut FieldWriter<'_>) {
            w.f32(self.x);
            w.quat(self.rot);
            w.int(self.hp);
            w.bool(self.alive);
            w.enumeration(self.team);
        }
        fn read(r: &mut FieldReader<'_>) -> Option<Self> {
            Some(Body {
                x: r.f32()?,
                rot: r.quat()?,
                hp: r.int()?,
                alive: r.bool()?,
                team: r.enumeration()?,
            })
        }
    }

    struct Wrong;
    impl Replicate for Wrong {
        const NAME: &'static str = "Wrong";
        fn fields() -> Vec<Field> {
            vec![Field::new("b", FieldKind::Bool)]
        }
        fn write(&self, w: &mut FieldWriter<'_>) {
            w.f32(1.0);
        }
        fn read(_: &mut FieldReader<'_>) -> Option<Self> {
            Some(Wrong)
        }
    }

    fn round_trip(reg: &Registry, b: &Body) -> (Vec<u32>, Body) {
        let mut words = Vec::new();
        let id = reg.quantize(b, &mut words).unwrap();
        let view = ComponentView {
            registry: reg,
            id,
            words: &words,
        };
        (words.clone(), view.get::<Body>().unwrap())
    }

    #[test]
    fn quantize_dequantize_within_precision() {
        let mut reg = Registry::new();
        reg.register::<Body>().unwrap();
        let s = reg.schema(ComponentId(0)).unwrap();
        // 20000 steps -> 15 bits; quat 32; int 206 values -> 8; bool 1; enum 2.
        assert_eq!(
            s.codecs.iter().map(|c| c.bits).collect::<Vec<_>>(),
            vec![15, 32, 8, 1, 2]
        );
        let body = Body {
            x: 12.345,
            rot: [0.1, 0.7, -0.2, -0.6],
            hp: 150,
            alive: true,
            team: 2,
        };
        let (words, back) = round_trip(&reg, &body);
        assert!((back.x - 12.345).abs() <= 0.005, "{}", back.x);
        assert_eq!(back.hp, 150);
        assert!(back.alive);
        assert_eq!(back.team, 2);
        // Same rotation up to sign.
        let n = body.rot.iter().map(|c| c * c).sum::<f32>().sqrt();
        let dot: f32 = body.rot.iter().zip(back.rot).map(|(a, b)| a / n * b).sum();
        assert!(dot.abs() > 0.999, "dot {dot}");
        // Re-quantizing the dequantized value is a fixed point.
        let (words2, _) = round_trip(&reg, &back);
        assert_eq!(words, words2);
    }

    #[test]
    fn clamps_and_nan() {
        let mut reg = Registry::new();
        reg.register::<Body>().unwrap();
        let body = Body {
            x: f32::NAN,
            rot: [f32::NAN; 4],
            hp: 10_000,
            alive: false,
            team: 99,
        };
        let (_, back) = round_trip(&reg, &body);
        assert_eq!(back.x, -100.0);
        assert_eq!(back.hp, 200);
        assert_eq!(back.team, 2);
        let big = Body { x: 1e9, ..body };
        assert!((round_trip(&reg, &big).1.x - 100.0).abs() < 1e-3);
    }

    #[test]
    fn schema_errors() {
        let mut reg = Registry::new();
        reg.register::<Body>().unwrap();
        assert_eq!(
            reg.register::<Body>(),
            Err(SchemaError::DuplicateComponent("Body"))
        );
        reg.register::<Wrong>().unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            reg.quantize(&Wrong, &mut out),
            Err(SchemaError::Mismatch { .. })
        ));
        assert!(out.is_empty());
        let a = reg.fingerprint();
        let mut other = Registry::new();
        other.register::<Wrong>().unwrap();
        other.register::<Body>().unwrap();
        assert_ne!(a, other.fingerprint(), "order must change the fingerprint");
    }
}
