//! Delta encoding of a snapshot against a baseline, and its exact decoder.
//!
//! # Wire format (bit-packed, least-significant bit first)
//!
//! ```text
//! packet  := tick:32  has_base:1  [base_offset:16]  record*  end:1(=0)  zero-padding
//! record  := more:1(=1)  gap  body
//! gap     := '1' (gap = 1) | '01' g:4 (gap = 2 + g) | '00' varint (any u32)
//!            id = previous id + gap (wrapping; the first "previous id" is u32::MAX)
//! body    := '0' update | '10' spawn | '11' despawn
//! spawn   := owner  mask  field*            every field of every component, full width
//! update  := owner_changed:1 [owner]  mask_changed:1 [mask]  component*
//!            per component in the new mask: if it was in the old mask, changed:1 then per
//!            field changed:1 [value]; otherwise every field full width
//! owner   := '0' server | '1' client_id:varint64
//! value   := width ≤ 4: raw  |  '1' zigzag(new − old):width/2  |  '0' raw
//!            quaternions with the same largest index: '1' + three component values; else
//!            '0' raw
//! ```
//!
//! Records follow the encoder's round-robin order (ids ascending from a cursor, wrapping once),
//! so a packet that cannot hold every change starts the next one where it stopped. The decoder
//! checks every length against the slice, every value against its field range, and that an id
//! appears once, that spawns are new and updates and despawns refer to baseline entities.

use crate::bits::{BitError, BitReader, BitWriter};
use crate::codec::range::{IntModel, RangeDecoder, RangeEncoder};
use crate::ids::{ClientId, EntityId, Owner, Tick};
use crate::schema::{ComponentCoding, FieldCodec, FieldKind, Registry};
use crate::snapshot::{EntityEntry, Snapshot};

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
    /// The baseline the packet was encoded against is not (or no longer) held.
    #[error("baseline {0} is not available")]
    MissingBaseline(Tick),
    /// Applying the packet would exceed the configured entity limit.
    #[error("more than {0} entities")]
    TooManyEntities(usize),
    /// An entity id appears twice in one packet.
    #[error("entity {0} appears twice")]
    DuplicateEntity(EntityId),
    /// An update or despawn names an entity the baseline does not have.
    #[error("entity {0} is not in the baseline")]
    UnknownEntity(EntityId),
    /// A spawn names an entity the baseline already has.
    #[error("entity {0} spawned twice")]
    SpawnExisting(EntityId),
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

/// Fixed header of every snapshot packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketHeader {
    /// Tick of the state this packet produces.
    pub tick: Tick,
    /// Tick of the snapshot it was encoded against; `None` means against the empty state.
    pub baseline: Option<Tick>,
}

/// What one call to [`encode_delta`] did.
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
    /// Where the next packet should start its round-robin walk (0 for replicator packets,
    /// which choose by priority).
    pub next_cursor: u32,
    /// The longest a change carried by this packet waited for it, in ticks.
    pub max_staleness_ticks: u32,
    /// Whether the packet came out larger than its budget (never expected; counted by callers).
    pub over_budget: bool,
}

/// Decoder limits, from the receiving peer's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Most entities a decoded snapshot may hold.
    pub max_entities: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Spawn,
    Update,
    Despawn,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    id: EntityId,
    kind: Kind,
    base: usize,
    target: usize,
}

/// A delta of an entropy-coded field, waiting for the range-coded tail.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TailValue {
    /// Index of the field among all registered fields (its model).
    pub(crate) field: usize,
    pub(crate) delta: i32,
}

/// Values of [`ComponentCoding::Entropy`] components, coded after the bit-packed records.
#[derive(Debug, Default)]
struct Tail {
    values: Vec<TailValue>,
    /// Upper estimate of their coded size, for the packet budget.
    reserved_bits: usize,
}

/// Whether `codec` (of a component coded `coding`) goes to the range-coded tail.
pub(crate) fn in_tail(coding: ComponentCoding, codec: &FieldCodec) -> bool {
    coding == ComponentCoding::Entropy
        && matches!(codec.kind, FieldKind::Float { .. } | FieldKind::Int { .. })
        && (5..=30).contains(&codec.bits)
}

/// Bits reserved for a tail value: what the bit-packed code would take. The range coder is
/// usually below that once its models have seen a few values; when a packet still comes out
/// over budget, `encode_delta` encodes it again with a smaller budget.
pub(crate) fn tail_cost(bits: u32, delta: i32) -> usize {
    let s = bits / 2;
    let z = zigzag(i64::from(delta));
    1 + if z < (1u64 << s) { s } else { bits } as usize
}

/// Bytes the tail framing adds: a 2-byte length of the bit-packed part and the coder's flush.
pub(crate) const TAIL_FRAMING_BITS: usize = 8 * 4;

/// Reusable buffers for [`encode_delta`], so a server does not allocate per packet.
#[derive(Debug, Default)]
pub struct EncodeScratch {
    candidates: Vec<Candidate>,
    included: Vec<bool>,
    order: Vec<usize>,
    in_priority: Vec<bool>,
    missed: Vec<EntityId>,
    tail: Tail,
    bits: Vec<u8>,
    models: Vec<IntModel>,
}

impl EncodeScratch {
    /// Priority entities of the last [`encode_delta`] whose records did not fit.
    #[must_use]
    pub fn missed_priority(&self) -> &[EntityId] {
        &self.missed
    }
}

const HEADER_BITS: usize = 32 + 1 + 16;

/// Which records go first and which must wait, for [`encode_delta`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Selection<'a> {
    /// Entities whose differences are written before any other, most important first. Those
    /// that do not fit are listed by [`EncodeScratch::missed_priority`].
    pub priority: &'a [EntityId],
}

/// Encodes `target` as a delta against `baseline`, in at most `budget_bytes` bytes, appending to
/// `out`, and writes into `view` the state a peer holding `baseline` will have after applying it
/// (equal to `target` when everything fitted).
#[allow(clippy::too_many_arguments)]
pub fn encode_delta(
    registry: &Registry,
    header: PacketHeader,
    baseline: &Snapshot,
    target: &Snapshot,
    budget_bytes: usize,
    cursor: u32,
    selection: Selection<'_>,
    scratch: &mut EncodeScratch,
    out: &mut Vec<u8>,
    view: &mut Snapshot,
) -> EncodeStats {
    let Selection { priority } = selection;
    let cands = &mut scratch.candidates;
    cands.clear();
    merge_walk(baseline, target, |a, b| {
        let differs = match (a, b) {
            (Some(i), Some(j)) => !same_entity(baseline, i, target, j),
            _ => true,
        };
        if differs {
            let (kind, id) = match (a, b) {
                (Some(_), Some(j)) => (Kind::Update, target.entities[j].id),
                (None, Some(j)) => (Kind::Spawn, target.entities[j].id),
                (Some(i), None) => (Kind::Despawn, baseline.entities[i].id),
                (None, None) => unreachable!(),
            };
            cands.push(Candidate {
                id,
                kind,
                base: a.unwrap_or(usize::MAX),
                target: b.unwrap_or(usize::MAX),
            });
        }
    });
    scratch.included.clear();
    scratch.included.resize(cands.len(), false);

    let start_len = out.len();
    let entropy = registry.uses_entropy();
    let budget_bits =
        (budget_bytes * 8).saturating_sub(if entropy { TAIL_FRAMING_BITS } else { 0 });
    let mut stats = EncodeStats {
        next_cursor: cursor,
        ..EncodeStats::default()
    };
    // With entropy-coded components the bit-packed part goes to a scratch buffer first: the
    // packet is its length, the bits, then the range-coded tail.
    let mut bits_buf = std::mem::take(&mut scratch.bits);
    bits_buf.clear();
    let tail = &mut scratch.tail;
    tail.values.clear();
    tail.reserved_bits = 0;
    let mut w = BitWriter::new(if entropy { &mut bits_buf } else { &mut *out });
    w.write(header.tick.0, 32);
    match header.baseline {
        Some(b) => {
            w.write_bool(true);
            w.write(header.tick.0.wrapping_sub(b.0), 16);
        }
        None => w.write_bool(false),
    }
    // Order: priority entities first (ascending), then everything else round-robin from the
    // cursor.
    let order = &mut scratch.order;
    order.clear();
    scratch.missed.clear();
    // `priority` is in the caller's order (most important first) and may repeat ids.
    scratch.in_priority.clear();
    scratch.in_priority.resize(cands.len(), false);
    for id in priority {
        if let Ok(k) = cands.binary_search_by_key(id, |c| c.id) {
            if !scratch.in_priority[k] {
                scratch.in_priority[k] = true;
                order.push(k);
            }
        }
    }
    let n_priority = order.len();
    let first = cands.partition_point(|c| c.id.0 < cursor);
    let n = cands.len();
    for step in 0..n {
        let k = (first + step) % n;
        if !scratch.in_priority[k] {
            order.push(k);
        }
    }
    let mut prev = u32::MAX;
    let mut full = false;
    for (pos, &k) in order.iter().enumerate() {
        let c = cands[k];
        let is_priority = pos < n_priority;
        if full {
            stats.pending += 1;
            if is_priority {
                scratch.missed.push(c.id);
            }
            continue;
        }
        let mark = w.mark();
        let tail_mark = (tail.values.len(), tail.reserved_bits);
        let before = w.bit_len() + tail.reserved_bits;
        w.write_bool(true);
        write_gap(&mut w, c.id.0.wrapping_sub(prev));
        write_record(&mut w, tail, registry, baseline, target, c);
        let record_bits = w.bit_len() + tail.reserved_bits - before;
        if w.bit_len() + tail.reserved_bits + 1 > budget_bits {
            w.rewind(mark);
            tail.values.truncate(tail_mark.0);
            tail.reserved_bits = tail_mark.1;
            if is_priority {
                scratch.missed.push(c.id);
            }
            if HEADER_BITS + record_bits + 1 > budget_bits {
                stats.oversized += 1;
                continue;
            }
            full = true;
            stats.pending += 1;
            if !is_priority {
                stats.next_cursor = c.id.0;
            }
            continue;
        }
        prev = c.id.0;
        scratch.included[k] = true;
        stats.records += 1;
    }
    w.write_bool(false);
    w.finish();
    if entropy {
        // Bits first (so the header stays at the start), then the tail, then the length of the
        // bits as a varint written backwards, read from the end.
        out.extend_from_slice(&bits_buf);
        let models = &mut scratch.models;
        models.clear();
        models.extend(field_models(registry));
        let mut enc = RangeEncoder::new(out);
        for v in &tail.values {
            enc.encode_int(&mut models[v.field], v.delta);
        }
        enc.finish();
        crate::bits::put_trailer(out, bits_buf.len());
    }
    scratch.bits = bits_buf;
    stats.bytes = out.len() - start_len;
    let smaller = budget_bytes.saturating_sub(stats.bytes.saturating_sub(budget_bytes) + 8);
    if entropy && stats.bytes > budget_bytes && smaller >= 8 {
        // The tail's size was estimated; adaptive models that guessed wrong can exceed it.
        // Encode again with the overflow taken off the budget (each retry shrinks it).
        out.truncate(start_len);
        return encode_delta(
            registry,
            header,
            baseline,
            target,
            smaller,
            cursor,
            Selection { priority },
            scratch,
            out,
            view,
        );
    }

    // The peer's resulting state: the baseline, with the included records applied. Entities
    // that are not candidates are equal in baseline and target, so they are copied from the
    // baseline without comparing them again.
    view.clear();
    let push = |view: &mut Snapshot, s: &Snapshot, i: usize| {
        let e = &s.entities[i];
        view.push(e.id, e.owner, e.mask, s.entity_words(e));
    };
    let mut bi = 0;
    for (k, c) in cands.iter().enumerate() {
        while bi < baseline.entities.len() && baseline.entities[bi].id < c.id {
            push(view, baseline, bi);
            bi += 1;
        }
        let included = scratch.included[k];
        match c.kind {
            Kind::Update => {
                if included {
                    push(view, target, c.target);
                } else {
                    push(view, baseline, c.base);
                }
                bi += 1;
            }
            Kind::Spawn => {
                if included {
                    push(view, target, c.target);
                }
            }
            Kind::Despawn => {
                if !included {
                    push(view, baseline, c.base);
                }
                bi += 1;
            }
        }
    }
    while bi < baseline.entities.len() {
        push(view, baseline, bi);
        bi += 1;
    }
    stats
}

/// Calls `f` once per entity id in either snapshot, ascending, with its index in each.
fn merge_walk(a: &Snapshot, b: &Snapshot, mut f: impl FnMut(Option<usize>, Option<usize>)) {
    let (mut i, mut j) = (0, 0);
    loop {
        match (a.entities.get(i), b.entities.get(j)) {
            (Some(x), Some(y)) if x.id == y.id => {
                f(Some(i), Some(j));
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x.id < y.id => {
                f(Some(i), None);
                i += 1;
            }
            (Some(_), None) => {
                f(Some(i), None);
                i += 1;
            }
            (_, Some(_)) => {
                f(None, Some(j));
                j += 1;
            }
            (None, None) => break,
        }
    }
}

fn same_entity(a: &Snapshot, i: usize, b: &Snapshot, j: usize) -> bool {
    let (x, y) = (&a.entities[i], &b.entities[j]);
    x.owner == y.owner && x.mask == y.mask && a.entity_words(x) == b.entity_words(y)
}

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

fn write_record(
    w: &mut BitWriter<'_>,
    tail: &mut Tail,
    registry: &Registry,
    baseline: &Snapshot,
    target: &Snapshot,
    c: Candidate,
) {
    match c.kind {
        Kind::Spawn => {
            w.write(0b01, 2); // '1','0'
            let e = &target.entities[c.target];
            write_owner(w, e.owner);
            write_mask(w, registry, e.mask);
            let words = target.entity_words(e);
            let mut o = 0;
            for i in registry.mask_iter(e.mask) {
                for codec in &registry.schema_at(i).codecs {
                    w.write(words[o], codec.bits);
                    o += 1;
                }
            }
        }
        Kind::Despawn => w.write(0b11, 2),
        Kind::Update => {
            w.write_bool(false);
            let (a, b) = (&baseline.entities[c.base], &target.entities[c.target]);
            w.write_bool(a.owner != b.owner);
            if a.owner != b.owner {
                write_owner(w, b.owner);
            }
            w.write_bool(a.mask != b.mask);
            if a.mask != b.mask {
                write_mask(w, registry, b.mask);
            }
            write_update_fields(w, tail, registry, baseline, a, target, b);
        }
    }
}

fn write_update_fields(
    w: &mut BitWriter<'_>,
    tail: &mut Tail,
    registry: &Registry,
    baseline: &Snapshot,
    a: &EntityEntry,
    target: &Snapshot,
    b: &EntityEntry,
) {
    let (wa, wb) = (baseline.entity_words(a), target.entity_words(b));
    let (mut oa, mut ob) = (0, 0);
    for i in registry.mask_iter(a.mask | b.mask) {
        let schema = registry.schema_at(i);
        let codecs = &schema.codecs;
        let n = codecs.len();
        let bit = 1u64 << i;
        match (a.mask & bit != 0, b.mask & bit != 0) {
            (true, true) => {
                let (old, new) = (&wa[oa..oa + n], &wb[ob..ob + n]);
                let changed = old != new;
                w.write_bool(changed);
                if changed {
                    for (f, ((codec, &o), &v)) in codecs.iter().zip(old).zip(new).enumerate() {
                        w.write_bool(o != v);
                        if o == v {
                            continue;
                        }
                        if in_tail(schema.coding, codec) {
                            // Fields of at most 30 bits: the delta fits an i32.
                            let delta = (i64::from(v) - i64::from(o)) as i32;
                            tail.reserved_bits += tail_cost(codec.bits, delta);
                            tail.values.push(TailValue {
                                field: schema.first_field + f,
                                delta,
                            });
                        } else {
                            write_value(w, codec, o, v);
                        }
                    }
                }
                oa += n;
                ob += n;
            }
            (false, true) => {
                for (codec, &v) in codecs.iter().zip(&wb[ob..ob + n]) {
                    w.write(v, codec.bits);
                }
                ob += n;
            }
            (true, false) => oa += n,
            (false, false) => {}
        }
    }
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

/// Reads only the header of a snapshot packet.
pub fn read_header(bytes: &[u8]) -> Result<PacketHeader, DecodeError> {
    let mut r = BitReader::new(bytes);
    read_header_from(&mut r)
}

fn read_header_from(r: &mut BitReader<'_>) -> Result<PacketHeader, DecodeError> {
    let tick = Tick(r.read(32)?);
    let baseline = if r.read_bool()? {
        let off = r.read(16)?;
        if off == 0 {
            return Err(DecodeError::BadBaselineOffset);
        }
        Some(Tick(tick.0.wrapping_sub(off)))
    } else {
        None
    };
    Ok(PacketHeader { tick, baseline })
}

#[derive(Debug, Clone, Copy)]
struct Rec {
    id: EntityId,
    kind: Kind,
    owner: Owner,
    mask: u64,
    start: usize,
    len: usize,
}

/// Reusable buffers for [`decode_delta`].
#[derive(Debug, Default)]
pub struct DecodeScratch {
    recs: Vec<Rec>,
    words: Vec<u32>,
    models: Vec<IntModel>,
}

/// The range-coded tail of a packet with entropy-coded components, read along the records.
struct TailDecoder<'a> {
    dec: RangeDecoder<'a>,
    models: &'a mut Vec<IntModel>,
}

/// Reads the backwards varint at the end of an entropy-framed packet: (value, its length).
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

/// Decodes a packet encoded by [`encode_delta`] against `baseline` (which must be the snapshot
/// its header names; `None` baseline means the empty state) and writes the resulting state into
/// `out`. On error `out` is left empty and nothing else changes.
pub fn decode_delta(
    registry: &Registry,
    bytes: &[u8],
    baseline: &Snapshot,
    limits: DecodeLimits,
    scratch: &mut DecodeScratch,
    out: &mut Snapshot,
) -> Result<PacketHeader, DecodeError> {
    out.clear();
    let result = decode_inner(registry, bytes, baseline, limits, scratch, out);
    if result.is_err() {
        out.clear();
    }
    result
}

fn decode_inner(
    registry: &Registry,
    bytes: &[u8],
    baseline: &Snapshot,
    limits: DecodeLimits,
    scratch: &mut DecodeScratch,
    out: &mut Snapshot,
) -> Result<PacketHeader, DecodeError> {
    // With entropy-coded components: the bits, the tail, the bits' length backwards.
    let (bits, mut tail) = if registry.uses_entropy() {
        let (len, trailer) = read_trailer(bytes)?;
        let body = &bytes[..bytes.len() - trailer];
        let (bits, coded) = body.split_at_checked(len).ok_or(BitError::Eof {
            wanted: 0,
            remaining: body.len() * 8,
        })?;
        scratch.models.clear();
        scratch.models.extend(field_models(registry));
        (
            bits,
            Some(TailDecoder {
                dec: RangeDecoder::new(coded),
                models: &mut scratch.models,
            }),
        )
    } else {
        (bytes, None)
    };
    let mut r = BitReader::new(bits);
    let header = read_header_from(&mut r)?;
    let recs = &mut scratch.recs;
    let words = &mut scratch.words;
    recs.clear();
    words.clear();
    let mut prev = u32::MAX;
    let mut spawns = 0usize;
    while r.read_bool()? {
        // Every record costs at least three bits, so this loop is bounded by the packet size;
        // the entity limit bounds it more tightly.
        if recs.len() >= limits.max_entities.saturating_add(baseline.len()) {
            return Err(DecodeError::TooManyEntities(limits.max_entities));
        }
        let id = EntityId(prev.wrapping_add(read_gap(&mut r)?));
        prev = id.0;
        let base = baseline.find_index(id).ok();
        let start = words.len();
        let rec = if !r.read_bool()? {
            let Some(bi) = base else {
                return Err(DecodeError::UnknownEntity(id));
            };
            let a = &baseline.entities[bi];
            let owner = if r.read_bool()? {
                read_owner(&mut r)?
            } else {
                a.owner
            };
            let mask = if r.read_bool()? {
                read_mask(&mut r, registry)?
            } else {
                a.mask
            };
            read_update_fields(
                &mut r,
                &mut tail,
                registry,
                baseline.entity_words(a),
                a.mask,
                mask,
                words,
            )?;
            Rec {
                id,
                kind: Kind::Update,
                owner,
                mask,
                start,
                len: words.len() - start,
            }
        } else if !r.read_bool()? {
            if base.is_some() {
                return Err(DecodeError::SpawnExisting(id));
            }
            spawns += 1;
            let owner = read_owner(&mut r)?;
            let mask = read_mask(&mut r, registry)?;
            for i in registry.mask_iter(mask) {
                for codec in &registry.schema_at(i).codecs {
                    words.push(read_full(&mut r, codec)?);
                }
            }
            Rec {
                id,
                kind: Kind::Spawn,
                owner,
                mask,
                start,
                len: words.len() - start,
            }
        } else {
            if base.is_none() {
                return Err(DecodeError::UnknownEntity(id));
            }
            Rec {
                id,
                kind: Kind::Despawn,
                owner: Owner::Server,
                mask: 0,
                start,
                len: 0,
            }
        };
        recs.push(rec);
    }
    r.finish()?;
    if let Some(t) = &tail {
        t.dec.finish()?;
    }
    if baseline.len() + spawns > limits.max_entities {
        return Err(DecodeError::TooManyEntities(limits.max_entities));
    }
    recs.sort_unstable_by_key(|r| r.id);
    if let Some(w) = recs.windows(2).find(|w| w[0].id == w[1].id) {
        return Err(DecodeError::DuplicateEntity(w[0].id));
    }
    // Merge the baseline with the records (both sorted by id).
    let mut k = 0;
    for e in &baseline.entities {
        while k < recs.len() && recs[k].id < e.id {
            let s = recs[k];
            out.push(s.id, s.owner, s.mask, &words[s.start..s.start + s.len]);
            k += 1;
        }
        if k < recs.len() && recs[k].id == e.id {
            let s = recs[k];
            if s.kind == Kind::Update {
                out.push(s.id, s.owner, s.mask, &words[s.start..s.start + s.len]);
            }
            k += 1;
        } else {
            out.push(e.id, e.owner, e.mask, baseline.entity_words(e));
        }
    }
    for s in &recs[k..] {
        out.push(s.id, s.owner, s.mask, &words[s.start..s.start + s.len]);
    }
    Ok(header)
}

fn read_update_fields(
    r: &mut BitReader<'_>,
    tail: &mut Option<TailDecoder<'_>>,
    registry: &Registry,
    old_words: &[u32],
    old_mask: u64,
    new_mask: u64,
    words: &mut Vec<u32>,
) -> Result<(), DecodeError> {
    let mut oa = 0;
    for i in registry.mask_iter(old_mask | new_mask) {
        let schema = registry.schema_at(i);
        let codecs = &schema.codecs;
        let n = codecs.len();
        let bit = 1u64 << i;
        match (old_mask & bit != 0, new_mask & bit != 0) {
            (true, true) => {
                let old = &old_words[oa..oa + n];
                if r.read_bool()? {
                    for (f, (codec, &o)) in codecs.iter().zip(old).enumerate() {
                        let v = if !r.read_bool()? {
                            o
                        } else if let (true, Some(t)) =
                            (in_tail(schema.coding, codec), tail.as_mut())
                        {
                            let delta = t.dec.decode_int(&mut t.models[schema.first_field + f]);
                            let v = i64::from(o) + i64::from(delta);
                            match u32::try_from(v) {
                                Ok(v) if v <= codec.max_q && delta != 0 => v,
                                _ => return Err(DecodeError::ValueOutOfRange),
                            }
                        } else {
                            read_value(r, codec, o)?
                        };
                        words.push(v);
                    }
                } else {
                    words.extend_from_slice(old);
                }
                oa += n;
            }
            (false, true) => {
                for codec in codecs {
                    words.push(read_full(r, codec)?);
                }
            }
            (true, false) => oa += n,
            (false, false) => {}
        }
    }
    Ok(())
}
