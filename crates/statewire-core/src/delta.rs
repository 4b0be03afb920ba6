//! The field value codes shared by replication records (see the wire format in
//! [`crate::replication`]), and the errors of decoding a replication packet.
//!
//! ```text
//! gap     := '1' (gap = 1) | '01' g:4 (gap = 2 + g) | '00' varint (any u32)
//! owner   := '0' server | '1' client_id:varint64
//! mask    := one bit per registered component
//! value   := width ≤ 4: raw  |  '1' zigzag(new − old):width/2  |  '0' raw
//!            quaternions with the same largest index: '1' + three component values; else
//!            '0' raw
//! ```
//! Every read is checked against the slice and every value against its field's range.

use crate::bits::{BitError, BitReader, BitWriter};
use crate::codec::range::IntModel;
use crate::ids::{ClientId, EntityId, Owner, Tick};
use crate::schema::{ComponentCoding, FieldCodec, FieldKind, Registry};

/// Errors from decoding a snapshot packet. A packet that fails to decode changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Truncated input, trailing bytes or a malformed integer.
    #[error("malformed packet: {0}")]
    Bits(#[from] BitError),
    /// The header names a baseline offset of zero.
    #[error("baseline offset of zero")]
    BadBaselineOffset,
    /// An update names an entity with no state at or before the packet's baseline.
    #[error("no state at or before baseline {0} for an updated entity")]
    MissingBaseline(Tick),
    /// Applying the packet would exceed the configured entity limit.
    #[error("more than {0} entities")]
    TooManyEntities(usize),
    /// An entity id appears twice in one packet.
    #[error("entity {0} appears twice")]
    DuplicateEntity(EntityId),
    /// A component mask names an unregistered component type.
    #[error("component mask {0:#x} names unregistered components")]
    UnknownComponent(u64),
    /// A quantized value lies outside its field's range.
    #[error("value out of range for its field")]
    ValueOutOfRange,
    /// The events section is malformed.
    #[error("events: {0}")]
    Events(#[from] crate::events::EventDecodeError),
    /// The range-coded tail of entropy-coded values is malformed.
    #[error("entropy-coded values: {0}")]
    Tail(#[from] crate::codec::range::RangeError),
    /// The packet's events start after an event this client never received.
    #[error("events start at {first}, after a gap from {have}")]
    EventGap {
        /// The newest event id held.
        have: u64,
        /// The first event id in the packet.
        first: u64,
    },
}

/// Fixed header of every replication packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketHeader {
    /// Tick of the state this packet carries.
    pub tick: Tick,
    /// The client's newest acknowledged packet when it was encoded: updates are coded against
    /// the newest state the client received at or before it (`None`: none acknowledged yet).
    pub baseline: Option<Tick>,
}

/// What one [`crate::ServerReplicator::encode_for`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncodeStats {
    /// Entity records written (spawns, updates and despawns).
    pub records: usize,
    /// Differences left out because the packet was full; they go in a later packet.
    pub pending: usize,
    /// Entities whose record alone exceeds the packet budget: never sent, raise the budget.
    pub oversized: usize,
    /// Bytes appended to the output.
    pub bytes: usize,
    /// Events carried (see [`crate::ServerReplicator::encode_for_with_events`]).
    pub events: usize,
    /// The longest a change carried by this packet waited for it, in ticks.
    pub max_staleness_ticks: u32,
    /// Whether the packet came out larger than its budget (never expected; counted by callers).
    pub over_budget: bool,
}

/// A delta of an entropy-coded field, waiting for the range-coded tail.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TailValue {
    /// Index of the field among all registered fields (its model).
    pub(crate) field: usize,
    pub(crate) delta: i32,
}

/// Whether `codec` (of a component coded `coding`) goes to the range-coded tail.
pub(crate) fn in_tail(coding: ComponentCoding, codec: &FieldCodec) -> bool {
    coding == ComponentCoding::Entropy
        && matches!(codec.kind, FieldKind::Float { .. } | FieldKind::Int { .. })
        && (5..=30).contains(&codec.bits)
}

/// Bits reserved for a tail value: what the bit-packed code would take. The range coder is
/// usually below that once its models have seen a few values; when a packet still comes out
/// over budget, the replicator assembles it again with fewer records.
pub(crate) fn tail_cost(bits: u32, delta: i32) -> usize {
    let s = bits / 2;
    let z = zigzag(i64::from(delta));
    1 + if z < (1u64 << s) { s } else { bits } as usize
}

/// Bytes the tail framing adds: a 2-byte length of the bit-packed part and the coder's flush.
pub(crate) const TAIL_FRAMING_BITS: usize = 8 * 4;

pub(crate) fn write_gap(w: &mut BitWriter<'_>, gap: u32) {
    if gap == 1 {
        w.write_bool(true);
    } else if (2..18).contains(&gap) {
        w.write(0b10, 2); // bits '0','1' in stream order
        w.write(gap - 2, 4);
    } else {
        w.write(0b00, 2);
        w.write_varint(gap);
    }
}

pub(crate) fn read_gap(r: &mut BitReader<'_>) -> Result<u32, BitError> {
    if r.read_bool()? {
        return Ok(1);
    }
    if r.read_bool()? {
        return Ok(2 + r.read(4)?);
    }
    r.read_varint()
}

pub(crate) fn write_owner(w: &mut BitWriter<'_>, owner: Owner) {
    match owner {
        Owner::Server => w.write_bool(false),
        Owner::Client(c) => {
            w.write_bool(true);
            w.write_varint64(c.0);
        }
    }
}

pub(crate) fn read_owner(r: &mut BitReader<'_>) -> Result<Owner, BitError> {
    Ok(if r.read_bool()? {
        Owner::Client(ClientId(r.read_varint64()?))
    } else {
        Owner::Server
    })
}

pub(crate) fn write_mask(w: &mut BitWriter<'_>, registry: &Registry, mask: u64) {
    let n = registry.len() as u32;
    if n > 32 {
        w.write(mask as u32, 32);
        w.write((mask >> 32) as u32, n - 32);
    } else {
        w.write(mask as u32, n);
    }
}

pub(crate) fn read_mask(r: &mut BitReader<'_>, registry: &Registry) -> Result<u64, DecodeError> {
    let n = registry.len() as u32;
    let mask = if n > 32 {
        u64::from(r.read(32)?) | u64::from(r.read(n - 32)?) << 32
    } else {
        u64::from(r.read(n)?)
    };
    // Reading exactly `len` bits cannot set a higher bit; the check guards future changes.
    if mask & !registry.valid_mask() != 0 {
        return Err(DecodeError::UnknownComponent(mask));
    }
    Ok(mask)
}

fn zigzag(d: i64) -> u64 {
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(z: u64) -> i64 {
    (z >> 1) as i64 ^ -((z & 1) as i64)
}

/// Small-delta code for a `bits`-wide value: '1' + zigzag delta on `bits / 2` bits, or '0' +
/// the raw value.
fn write_small(w: &mut BitWriter<'_>, bits: u32, old: u32, new: u32) {
    if bits <= 4 {
        w.write(new, bits);
        return;
    }
    let s = bits / 2;
    let z = zigzag(i64::from(new) - i64::from(old));
    if z < (1u64 << s) {
        w.write_bool(true);
        w.write(z as u32, s);
    } else {
        w.write_bool(false);
        w.write(new, bits);
    }
}

fn read_small(r: &mut BitReader<'_>, bits: u32, old: u32, max: u32) -> Result<u32, DecodeError> {
    let v = if bits <= 4 {
        r.read(bits)?
    } else if r.read_bool()? {
        let d = unzigzag(u64::from(r.read(bits / 2)?));
        let v = i64::from(old) + d;
        u32::try_from(v).map_err(|_| DecodeError::ValueOutOfRange)?
    } else {
        r.read(bits)?
    };
    if v > max {
        return Err(DecodeError::ValueOutOfRange);
    }
    Ok(v)
}

pub(crate) fn write_value(w: &mut BitWriter<'_>, codec: &FieldCodec, old: u32, new: u32) {
    if let FieldKind::Quat { bits } = codec.kind {
        let b = u32::from(bits);
        if old >> (3 * b) == new >> (3 * b) {
            w.write_bool(true);
            let m = (1u32 << b) - 1;
            for shift in [2 * b, b, 0] {
                write_small(w, b, (old >> shift) & m, (new >> shift) & m);
            }
        } else {
            w.write_bool(false);
            w.write(new, codec.bits);
        }
        return;
    }
    write_small(w, codec.bits, old, new);
}

pub(crate) fn read_value(
    r: &mut BitReader<'_>,
    codec: &FieldCodec,
    old: u32,
) -> Result<u32, DecodeError> {
    if let FieldKind::Quat { bits } = codec.kind {
        let b = u32::from(bits);
        if r.read_bool()? {
            let m = (1u32 << b) - 1;
            let mut v = old >> (3 * b);
            for shift in [2 * b, b, 0] {
                v = v << b | read_small(r, b, (old >> shift) & m, m)?;
            }
            return Ok(v);
        }
        return Ok(r.read(codec.bits)?);
    }
    read_small(r, codec.bits, old, codec.max_q)
}

pub(crate) fn read_full(r: &mut BitReader<'_>, codec: &FieldCodec) -> Result<u32, DecodeError> {
    let v = r.read(codec.bits)?;
    if v > codec.max_q {
        return Err(DecodeError::ValueOutOfRange);
    }
    Ok(v)
}

pub(crate) fn read_trailer(bytes: &[u8]) -> Result<(usize, usize), DecodeError> {
    crate::bits::read_trailer(bytes)
        .ok_or_else(|| crate::events::EventDecodeError::Malformed.into())
}

/// Fresh models, one per registered field (only entropy-coded fields use theirs).
pub(crate) fn field_models(registry: &Registry) -> impl Iterator<Item = IntModel> + '_ {
    (0..registry.len()).flat_map(move |i| {
        registry
            .schema_at(i)
            .codecs
            .iter()
            .map(|c| IntModel::new(c.bits))
    })
}
