//! Bit-packed codec: changed cubes by relative index, with small-delta codes against the
//! baseline. No prediction and no adaptive state, so it needs only the baseline and costs
//! little CPU.
//!
//! # Wire format (bit-packed with [`statewire_core::bits`], least-significant bit first)
//!
//! ```text
//! packet   := count:10  layout:1  (layout = 1: changed:901 bitmap)  record*count  padding
//! record   := (layout = 0: gap)  interacting:1  orientation  position
//! gap      := cubes skipped since the previous changed cube (the first "previous" is -1):
//!             '1' 0 | '01' g:2 (1 + g) | '001' g:4 (5 + g) | '000' g:10 (any)
//! orientation := '0' same as the baseline
//!             | '1' '0' class:2 da db dc   same largest index, deltas of class width
//!                                          (2, 4, 6 bits two's complement; class 3 = raw 9 bits)
//!             | '1' '1' largest:2 a:9 b:9 c:9
//! position := class:2 dx dy dz              deltas of width 4, 7 or 10 bits (two's complement)
//!             (class 3: raw x + 16383:15, y + 16383:15, z:13)
//! ```
//!
//! The encoder picks the cheaper of gaps and bitmap per packet. The decoder checks that indices
//! increase and stay below 901, that every value is in range, and that only zero padding
//! follows the last record.

use statewire_core::bits::BitError;

use crate::{CubeField, CubeState, DecodeError, EncodeError, Frame, NUM_CUBES, XY_LIMIT, Z_LIMIT};

const COUNT_BITS: u32 = 10;
const ORIENT_WIDTHS: [u32; 3] = [2, 4, 6];
const POS_WIDTHS: [u32; 3] = [4, 7, 10];

/// LSB-first bit writer taking up to 56 bits per call (the same bit order as
/// [`statewire_core::bits::BitWriter`], with fewer, wider writes for speed). It writes into a
/// slice sized for the worst case, always storing a whole 8-byte word and advancing by the bytes
/// completed, so a write is a store and a shift with no length-dependent copy or capacity check.
struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
    acc: u64,
    n: u32,
}

impl<'a> Writer<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Writer {
            buf,
            pos: 0,
            acc: 0,
            n: 0,
        }
    }

    /// Appends the low `bits` (≤ 56) bits of `v`, which must have no higher bits set.
    #[inline(always)]
    fn put(&mut self, v: u64, bits: u32) {
        debug_assert!(bits <= 56 && v >> bits == 0);
        self.acc |= v << self.n; // n < 8, so n + bits < 64
        self.n += bits;
        self.buf[self.pos..self.pos + 8].copy_from_slice(&self.acc.to_le_bytes());
        let k = self.n / 8; // ≤ 7
        self.pos += k as usize;
        self.acc >>= 8 * k;
        self.n -= 8 * k;
    }

    /// Bytes written, counting a partial last byte (already stored by `put`).
    fn finish(self) -> usize {
        self.pos + usize::from(self.n > 0)
    }
}

/// Bounds-checked LSB-first reader: peeks 56 bits at a time (zero past the end) and fails
/// once a read ends beyond the input.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    #[inline(always)]
    fn peek(&self) -> u64 {
        let byte = self.pos / 8;
        let mut w = [0u8; 8];
        match self.data.get(byte..byte + 8) {
            Some(s) => w.copy_from_slice(s),
            None => {
                let tail = self.data.get(byte..).unwrap_or(&[]);
                w[..tail.len()].copy_from_slice(tail);
            }
        }
        u64::from_le_bytes(w) >> (self.pos % 8)
    }

    /// Consumes `bits` (≤ 56) bits.
    #[inline(always)]
    fn take(&mut self, bits: u32) -> Result<u64, BitError> {
        let v = self.peek() & ((1u64 << bits) - 1);
        self.pos += bits as usize;
        if self.pos > self.data.len() * 8 {
            return Err(BitError::Eof {
                wanted: bits,
                remaining: 0,
            });
        }
        Ok(v)
    }

    fn finish(&self) -> Result<(), BitError> {
        let total = self.data.len() * 8;
        let rest = total - self.pos;
        if rest >= 8 {
            return Err(BitError::TrailingBytes(rest / 8));
        }
        if rest > 0 && self.peek() != 0 {
            return Err(BitError::NonZeroPadding);
        }
        Ok(())
    }
}

/// The first class of `widths` whose two's complement holds all of `d` (3 if none), without
/// branches: `v ^ (v >> 31)` maps −2^(w−1)..2^(w−1) onto 0..2^(w−1).
#[inline(always)]
fn width_class(d: [i32; 3], widths: [u32; 3]) -> usize {
    let m = d.iter().map(|&v| (v ^ (v >> 31)) as u32).max().unwrap_or(0);
    widths.iter().map(|&w| usize::from(m >= 1 << (w - 1))).sum()
}

#[inline]
fn mask(v: i32, width: u32) -> u64 {
    u64::from(v as u32) & ((1u64 << width) - 1)
}

/// Length of the gap code for `g`, without branches.
#[inline(always)]
fn gap_len(g: usize) -> usize {
    1 + 3 * usize::from(g >= 1) + 3 * usize::from(g >= 5) + 6 * usize::from(g >= 21)
}

/// Gap code as (bits, length) in stream order.
#[inline(always)]
fn gap_code(g: usize) -> (u64, u32) {
    match g {
        0 => (1, 1),
        1..=4 => (0b10 | ((g as u64 - 1) << 2), 4),
        5..=20 => (0b100 | ((g as u64 - 5) << 3), 7),
        _ => ((g as u64 & 0x3FF) << 3, 13),
    }
}

fn read_gap(r: &mut Reader<'_>) -> Result<usize, DecodeError> {
    let w = r.peek();
    let (g, len) = if w & 1 == 1 {
        (0, 1)
    } else if w & 2 == 2 {
        (1 + ((w >> 2) & 3) as usize, 4)
    } else if w & 4 == 4 {
        (5 + ((w >> 3) & 15) as usize, 7)
    } else {
        (((w >> 3) & 0x3FF) as usize, 13)
    };
    r.take(len)?;
    Ok(g)
}

/// Encodes `target` against `baseline`, appending to `out`; returns the bytes appended.
pub fn encode(baseline: &Frame, target: &Frame, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
    let words = crate::diff_bitmap(baseline.cubes(), target.cubes());
    let mut changed = [0u16; NUM_CUBES];
    let mut n = 0;
    for (w, &word) in words.iter().enumerate() {
        for k in crate::set_bits(word) {
            changed[n] = (w * 64 + k) as u16;
            n += 1;
        }
    }
    let mut gap_cost = 0;
    let mut next = 0; // the first index after the last changed cube
    for &i in &changed[..n] {
        gap_cost += gap_len(usize::from(i) - next);
        next = usize::from(i) + 1;
    }
    let bitmap = gap_cost > NUM_CUBES;
    let start = out.len();
    // Header, bitmap and at most 90 bits per cube, plus the word `put` stores past the end.
    let worst = (COUNT_BITS as usize + 1 + NUM_CUBES + 90 * n).div_ceil(8) + 8;
    out.resize(start + worst, 0);
    let mut w = Writer::new(&mut out[start..]);
    w.put(n as u64 | u64::from(bitmap) << COUNT_BITS, COUNT_BITS + 1);
    if bitmap {
        let mut bits = [0u64; NUM_CUBES.div_ceil(48)];
        for &i in &changed[..n] {
            bits[usize::from(i) / 48] |= 1 << (usize::from(i) % 48);
        }
        for (k, &word) in bits.iter().enumerate() {
            w.put(word, (NUM_CUBES - k * 48).min(48) as u32);
        }
    }
    let mut next = 0;
    for &i in &changed[..n] {
        let i = usize::from(i);
        let t = &target.cubes()[i];
        if let Some(field) = t.out_of_range() {
            out.truncate(start);
            return Err(EncodeError::OutOfRange { cube: i, field });
        }
        let (mut head, mut head_len) = (0, 0);
        if !bitmap {
            (head, head_len) = gap_code(i - next);
            next = i + 1;
        }
        write_cube(&mut w, head, head_len, &baseline.cubes()[i], t);
    }
    let len = w.finish();
    out.truncate(start + len);
    Ok(len)
}

#[inline(always)]
fn write_cube(w: &mut Writer<'_>, head: u64, head_len: u32, b: &CubeState, t: &CubeState) {
    // Gap (≤ 13 bits), interacting and the orientation: at most 13 + 1 + 2 + 2 + 27 = 45 bits.
    let mut v = head | u64::from(t.interacting) << head_len;
    let mut len = head_len + 1;
    if (t.largest, t.a, t.b, t.c) == (b.largest, b.a, b.b, b.c) {
        len += 1; // '0'
    } else if t.largest == b.largest {
        let d = [
            i32::from(t.a) - i32::from(b.a),
            i32::from(t.b) - i32::from(b.b),
            i32::from(t.c) - i32::from(b.c),
        ];
        let class = width_class(d, ORIENT_WIDTHS);
        // '1' '0' class
        v |= (0b01 | (class as u64) << 2) << len;
        len += 4;
        if class < 3 {
            let wd = ORIENT_WIDTHS[class];
            v |= (mask(d[0], wd) | mask(d[1], wd) << wd | mask(d[2], wd) << (2 * wd)) << len;
            len += 3 * wd;
        } else {
            v |= (u64::from(t.a) | u64::from(t.b) << 9 | u64::from(t.c) << 18) << len;
            len += 27;
        }
    } else {
        v |= (0b11 | u64::from(t.largest) << 2) << len;
        len += 4;
        v |= (u64::from(t.a) | u64::from(t.b) << 9 | u64::from(t.c) << 18) << len;
        len += 27;
    }
    w.put(v, len);
    let d = [t.x - b.x, t.y - b.y, t.z - b.z];
    match width_class(d, POS_WIDTHS) {
        class @ 0..3 => {
            let wd = POS_WIDTHS[class];
            let v = class as u64
                | mask(d[0], wd) << 2
                | mask(d[1], wd) << (2 + wd)
                | mask(d[2], wd) << (2 + 2 * wd);
            w.put(v, 2 + 3 * wd);
        }
        _ => {
            let v = 3
                | ((t.x + XY_LIMIT) as u64) << 2
                | ((t.y + XY_LIMIT) as u64) << 17
                | (t.z as u64) << 32;
            w.put(v, 45);
        }
    }
}

#[inline]
fn sign_extend(v: u64, width: u32) -> i32 {
    ((v as u32) << (32 - width)) as i32 >> (32 - width)
}

/// Decodes a packet made by [`encode`] against `baseline` into `out`.
pub fn decode(baseline: &Frame, data: &[u8], out: &mut Frame) -> Result<(), DecodeError> {
    out.cubes_mut().copy_from_slice(baseline.cubes());
    let mut r = Reader { data, pos: 0 };
    let head = r.take(COUNT_BITS + 1)?;
    let n = (head & 0x3FF) as usize;
    let bitmap = head >> COUNT_BITS == 1;
    if n > NUM_CUBES {
        return Err(DecodeError::BadIndex);
    }
    let mut changed = [0u16; NUM_CUBES];
    if bitmap {
        let mut k = 0;
        for word in 0..NUM_CUBES.div_ceil(48) {
            let width = (NUM_CUBES - word * 48).min(48) as u32;
            let mut bits = r.take(width)?;
            while bits != 0 {
                if k == n {
                    return Err(DecodeError::BadIndex);
                }
                changed[k] = (word * 48 + bits.trailing_zeros() as usize) as u16;
                k += 1;
                bits &= bits - 1;
            }
        }
        if k != n {
            return Err(DecodeError::BadIndex);
        }
    }
    let mut prev: isize = -1;
    for &listed in &changed[..n] {
        let i = if bitmap {
            usize::from(listed)
        } else {
            let i = prev + 1 + read_gap(&mut r)? as isize;
            if i >= NUM_CUBES as isize {
                return Err(DecodeError::BadIndex);
            }
            prev = i;
            i as usize
        };
        let cube = read_cube(&mut r, &baseline.cubes()[i]).map_err(|e| match e {
            DecodeError::OutOfRange { field, .. } => DecodeError::OutOfRange { cube: i, field },
            e => e,
        })?;
        out.cubes_mut()[i] = cube;
    }
    r.finish()?;
    Ok(())
}

fn out_of_range(field: CubeField) -> DecodeError {
    DecodeError::OutOfRange { cube: 0, field }
}

#[inline(always)]
fn read_cube(r: &mut Reader<'_>, b: &CubeState) -> Result<CubeState, DecodeError> {
    let mut t = *b;
    let w = r.peek();
    t.interacting = w & 1 == 1;
    if w & 2 == 0 {
        r.take(2)?;
    } else if w & 4 == 4 {
        let raw = r.take(5 + 27)?;
        t.largest = ((raw >> 3) & 3) as u8;
        t.a = ((raw >> 5) & 511) as u16;
        t.b = ((raw >> 14) & 511) as u16;
        t.c = ((raw >> 23) & 511) as u16;
    } else {
        let class = ((w >> 3) & 3) as usize;
        if class == 3 {
            let raw = r.take(5 + 27)?;
            t.a = ((raw >> 5) & 511) as u16;
            t.b = ((raw >> 14) & 511) as u16;
            t.c = ((raw >> 23) & 511) as u16;
        } else {
            let wd = ORIENT_WIDTHS[class];
            let raw = r.take(5 + 3 * wd)? >> 5;
            let m = (1u64 << wd) - 1;
            let comp = |base: u16, v: u64, field| {
                let c = i32::from(base) + sign_extend(v & m, wd);
                u16::try_from(c)
                    .ok()
                    .filter(|&c| c <= crate::COMPONENT_LIMIT)
                    .ok_or(out_of_range(field))
            };
            t.a = comp(b.a, raw, CubeField::A)?;
            t.b = comp(b.b, raw >> wd, CubeField::B)?;
            t.c = comp(b.c, raw >> (2 * wd), CubeField::C)?;
        }
    }
    if t.largest > 3 || t.a > 511 || t.b > 511 || t.c > 511 {
        return Err(out_of_range(CubeField::A));
    }
    let class = (r.peek() & 3) as usize;
    if class == 3 {
        let raw = r.take(45)?;
        t.x = ((raw >> 2) & 0x7FFF) as i32 - XY_LIMIT;
        t.y = ((raw >> 17) & 0x7FFF) as i32 - XY_LIMIT;
        t.z = ((raw >> 32) & 0x1FFF) as i32;
    } else {
        let wd = POS_WIDTHS[class];
        let raw = r.take(2 + 3 * wd)? >> 2;
        let m = (1u64 << wd) - 1;
        t.x = b.x.saturating_add(sign_extend(raw & m, wd));
        t.y = b.y.saturating_add(sign_extend((raw >> wd) & m, wd));
        t.z = b.z.saturating_add(sign_extend((raw >> (2 * wd)) & m, wd));
    }
    if !(-XY_LIMIT..=XY_LIMIT).contains(&t.x) {
        return Err(out_of_range(CubeField::X));
    }
    if !(-XY_LIMIT..=XY_LIMIT).contains(&t.y) {
        return Err(out_of_range(CubeField::Y));
    }
    if !(0..=Z_LIMIT).contains(&t.z) {
        return Err(out_of_range(CubeField::Z));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::frames;
    use crate::{BASELINE_DISTANCE, generate};
    use proptest::prelude::*;

    fn round_trip(base: &Frame, target: &Frame) -> Vec<u8> {
        let mut out = vec![0xEE];
        let n = encode(base, target, &mut out).unwrap();
        assert_eq!(n, out.len() - 1);
        let mut decoded = Frame::default();
        decode(base, &out[1..], &mut decoded).unwrap();
        assert_eq!(&decoded, target);
        out.split_off(1)
    }

    #[test]
    fn generated_frames_round_trip() {
        let frames = generate(90, 2);
        for i in BASELINE_DISTANCE..frames.len() {
            round_trip(&frames[i - BASELINE_DISTANCE], &frames[i]);
        }
    }

    #[test]
    fn unchanged_frame_is_two_bytes() {
        let f = generate(1, 1).pop().unwrap();
        assert_eq!(round_trip(&f, &f).len(), 2);
    }

    #[test]
    fn every_code_path_round_trips() {
        let base = generate(1, 4).pop().unwrap();
        let mut t = base.clone();
        for (k, c) in t.cubes_mut().iter_mut().enumerate() {
            match k % 9 {
                0 => {}
                1 => c.x += 3,
                2 => c.y -= 100,
                3 => c.z += 1000,
                4 => c.x = -c.x,
                5 => c.a = (c.a + 2) % 512,
                6 => c.b = (c.b + 40) % 512,
                7 => c.c = 511 - c.c,
                _ => {
                    c.largest = (c.largest + 1) % 4;
                    c.interacting = !c.interacting;
                }
            }
        }
        round_trip(&base, &t);
        // Every other cube changed: gaps would cost 4 bits each, so the bitmap layout.
        let mut t = base.clone();
        for c in t.cubes_mut().iter_mut().step_by(2) {
            c.z = (c.z + 1).min(Z_LIMIT);
            c.interacting = !c.interacting;
        }
        let bytes = round_trip(&base, &t);
        assert_eq!(bytes[1] >> 2 & 1, 1, "bitmap layout expected");
    }

    #[test]
    fn malformed_packets_are_errors() {
        let frames = generate(8, 1);
        let (b, mut t) = (&frames[0], frames[7].clone());
        t.cubes_mut()[3].x += 5;
        let bytes = round_trip(b, &t);
        let mut out = Frame::default();
        for cut in 1..bytes.len() {
            assert!(decode(b, &bytes[..cut], &mut out).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode(b, &longer, &mut out),
            Err(DecodeError::Bits(BitError::TrailingBytes(1)))
        ));
        // A count above 901.
        assert_eq!(
            decode(b, &[0xFF, 0x03], &mut out),
            Err(DecodeError::BadIndex)
        );
        let mut bad = Vec::new();
        let mut t2 = b.clone();
        t2.cubes_mut()[NUM_CUBES - 1].z = Z_LIMIT;
        encode(b, &t2, &mut bad).unwrap();
        assert!(decode(b, &bad, &mut out).is_ok());
        // Shift the z of a baseline cube near the top: the same delta now leaves the range.
        let mut other = b.clone();
        other.cubes_mut()[NUM_CUBES - 1].z = Z_LIMIT;
        assert!(decode(&other, &bad, &mut out).is_err() || out.cubes()[NUM_CUBES - 1].z <= Z_LIMIT);
    }

    #[test]
    fn out_of_range_target_is_an_encode_error() {
        let base = Frame::default();
        let mut t = Frame::default();
        t.cubes_mut()[2].a = 512;
        assert_eq!(
            encode(&base, &t, &mut Vec::new()),
            Err(EncodeError::OutOfRange {
                cube: 2,
                field: CubeField::A
            })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn random_frames_round_trip((_, b, t) in frames()) {
            round_trip(&b, &t);
        }

        #[test]
        fn random_bytes_are_errors_not_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let base = generate(1, 1).pop().unwrap();
            let mut out = Frame::default();
            if decode(&base, &data, &mut out).is_ok() {
                prop_assert_eq!(out.out_of_range(), None);
            }
        }
    }
}
