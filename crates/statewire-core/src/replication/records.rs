//! Entity records of a replication packet, coded from store versions (see the wire format in
//! the [module docs](super)).

use crate::bits::{BitReader, BitWriter};
use crate::codec::range::{IntModel, RangeDecoder};
use crate::delta::{
    DecodeError, TailValue, in_tail, read_full, read_mask, read_owner, read_value, tail_cost,
    write_mask, write_owner, write_value,
};
use crate::schema::Registry;
use crate::store::{Version, VersionRef};

/// Values of entropy-coded components waiting for the range-coded tail, and their size bound.
#[derive(Debug, Default)]
pub(crate) struct TailBuf {
    pub(crate) values: Vec<TailValue>,
    pub(crate) reserved_bits: usize,
}

/// Writes a full record body: `'10'`, owner, mask, every field at full width.
pub(crate) fn write_full(w: &mut BitWriter<'_>, registry: &Registry, v: &Version) {
    w.write(0b01, 2); // '1','0' in stream order
    write_owner(w, v.owner);
    write_mask(w, registry, v.mask);
    let mut o = 0;
    for i in registry.mask_iter(v.mask) {
        for codec in &registry.schema_at(i).codecs {
            w.write(v.words[o], codec.bits);
            o += 1;
        }
    }
}

/// Writes an update record body against `base`: `'0'`, owner and mask changes, then per
/// component and field what changed.
pub(crate) fn write_update(
    w: &mut BitWriter<'_>,
    tail: &mut TailBuf,
    registry: &Registry,
    base: VersionRef<'_>,
    cur: VersionRef<'_>,
) {
    w.write_bool(false);
    w.write_bool(base.owner != cur.owner);
    if base.owner != cur.owner {
        write_owner(w, cur.owner);
    }
    w.write_bool(base.mask != cur.mask);
    if base.mask != cur.mask {
        write_mask(w, registry, cur.mask);
    }
    let (wa, wb) = (base.words, cur.words);
    let (mut oa, mut ob) = (0, 0);
    for i in registry.mask_iter(base.mask | cur.mask) {
        let schema = registry.schema_at(i);
        let codecs = &schema.codecs;
        let n = codecs.len();
        let bit = 1u64 << i;
        match (base.mask & bit != 0, cur.mask & bit != 0) {
            (true, true) => {
                let (old, new) = (&wa[oa..oa + n], &wb[ob..ob + n]);
                let changed = !crate::store::words_eq(old, new);
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

/// The range-coded tail of a packet with entropy-coded components, read along the records.
pub(crate) struct TailReader<'a> {
    pub(crate) dec: RangeDecoder<'a>,
    pub(crate) models: &'a mut Vec<IntModel>,
}

/// Reads the body of a full record (after its kind bits) into `out` (tick left to the caller).
pub(crate) fn read_full_body(
    r: &mut BitReader<'_>,
    registry: &Registry,
    out: &mut Version,
) -> Result<(), DecodeError> {
    out.owner = read_owner(r)?;
    out.mask = read_mask(r, registry)?;
    out.words.clear();
    for i in registry.mask_iter(out.mask) {
        for codec in &registry.schema_at(i).codecs {
            out.words.push(read_full(r, codec)?);
        }
    }
    Ok(())
}

/// Reads an update record's changes against `base` into `out`.
pub(crate) fn read_update_body(
    r: &mut BitReader<'_>,
    tail: &mut Option<TailReader<'_>>,
    registry: &Registry,
    base: VersionRef<'_>,
    out: &mut Version,
) -> Result<(), DecodeError> {
    out.owner = if r.read_bool()? {
        read_owner(r)?
    } else {
        base.owner
    };
    out.mask = if r.read_bool()? {
        read_mask(r, registry)?
    } else {
        base.mask
    };
    out.words.clear();
    let mut oa = 0;
    for i in registry.mask_iter(base.mask | out.mask) {
        let schema = registry.schema_at(i);
        let codecs = &schema.codecs;
        let n = codecs.len();
        let bit = 1u64 << i;
        match (base.mask & bit != 0, out.mask & bit != 0) {
            (true, true) => {
                let old = base
                    .words
                    .get(oa..oa + n)
                    .ok_or(DecodeError::ValueOutOfRange)?;
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
                        out.words.push(v);
                    }
                } else {
                    out.words.extend_from_slice(old);
                }
                oa += n;
            }
            (false, true) => {
                for codec in codecs {
                    out.words.push(read_full(r, codec)?);
                }
            }
            (true, false) => oa += n,
            (false, false) => {}
        }
    }
    Ok(())
}

/// Reads `n` (≤ 32) bits starting at bit `pos` of `buf` (LSB-first, as [`BitWriter`] writes).
pub(crate) fn bits_at(buf: &[u8], pos: usize, n: u32) -> u32 {
    let byte = pos / 8;
    let shift = pos % 8;
    let mut tmp = [0u8; 8];
    let end = (byte + 8).min(buf.len());
    if byte < end {
        tmp[..end - byte].copy_from_slice(&buf[byte..end]);
    }
    let v = u64::from_le_bytes(tmp) >> shift;
    if n >= 32 {
        v as u32
    } else {
        (v as u32) & ((1u32 << n) - 1)
    }
}

/// Appends `len` bits of `buf` starting at bit `start` to `w`.
pub(crate) fn copy_bits(w: &mut BitWriter<'_>, buf: &[u8], start: usize, len: usize) {
    let mut pos = start;
    let end = start + len;
    while pos < end {
        let n = (end - pos).min(32) as u32;
        w.write(bits_at(buf, pos, n), n);
        pos += n as usize;
    }
}
