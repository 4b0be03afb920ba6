//! Entropy-coded codec: physics prediction from two baselines, adaptive range coding with
//! context models, and optionally model state carried from packet to packet.
//!
//! # What both sides know
//!
//! Packet `i` is coded against its baseline, frame `i − 6`, which the receiver acknowledged.
//! To decode frame `i − 6` the receiver needed *its* baseline, frame `i − 12`; so a receiver
//! that keeps the frames it decoded, and a sender that keeps the frames it sent, both hold
//! frames `i − 6` and `i − 12`. [`Baselines`] carries both; the second is used only for
//! prediction (`prev: None` predicts rest, e.g. for the first packets or after a full state).
//!
//! The adaptive models can likewise travel with the baseline: after coding packet `i − 6` both
//! sides hold the same final model state ([`EntropyCodec::save_state`]); starting packet `i`
//! from it ([`Baselines::state`]) saves the cost of re-learning the statistics in every
//! packet. The state also records which cubes that packet changed, which are exactly the cubes
//! that moved from `prev` to `base`, so a packet with a state skips comparing those two frames.
//! With `state: None` the models start fresh, and a packet depends on nothing but the two
//! frames. (A state saved after a packet that was not coded against `prev` costs compression,
//! never correctness: both sides use the same state.) Either way a lost packet never
//! desynchronises later ones, because everything a packet depends on was acknowledged.
//!
//! # Prediction (deterministic)
//!
//! Per cube, from baseline `b` and its predecessor `p` (six frames apart, T = 0.1 s):
//!
//! - position: if the cube moved from `p` to `b`, constant velocity `b + (b − p)`, plus an
//!   adaptive bias per context (motion class × off-the-floor × axis; the LOCO-I / JPEG-LS
//!   correction scheme), which learns gravity for falling cubes (starting from `g·T²` = 50
//!   units down) and drag for sliding ones (horizontal residuals are coded relative to the
//!   direction of motion, so slowing down has one sign whichever way the cube goes); never
//!   below the lowest `z` of the baseline frame (the floor). A cube that did not move is
//!   predicted to stay.
//! - orientation: the rotation from `p` to `b` applied once more to `b`, in `f64` with only
//!   `+ − × ÷` and `sqrt` (correctly rounded everywhere, never fused by rustc), re-quantized in
//!   the smallest-three form of the coded largest index, so encoder and decoder agree bit for
//!   bit. A cube that did not turn from `p` to `b` is predicted exactly as it was.
//!
//! # Coding
//!
//! Flags are binary decisions; each residual is one multi-symbol decision for its magnitude
//! bucket (zero, one, or bit length and the bit under the leading one), a modelled sign and
//! raw low bits ([`statewire_core::codec::range::ResidualModel`]), all with
//! [`statewire_core::codec::range`]. Contexts:
//!
//! - changed flag: how much the cube moved from `p` to `b` (six classes), whether it was
//!   interacting, whether the previous cube changed in this packet, and its distance from the
//!   player's new position (cube 0 is coded first). Quiet cubes (at rest, not interacting,
//!   more than 10 m from where the player was in the baseline) are coded after the others,
//!   those of each 64 consecutive cubes behind one "any changed" flag;
//! - residuals: the motion class, and the magnitude of the residual coded just before (the
//!   previous axis of this cube, or the previous changed cube for the first one), so a collision
//!   that breaks one prediction widens the distributions of the others.

use crate::{
    Baselines, CubeField, CubeState, DecodeError, EncodeError, Frame, NUM_CUBES, WORDS, XY_LIMIT,
    Z_LIMIT, set_bits,
};
use statewire_core::bits::{BitError, BitReader, BitWriter};
use statewire_core::codec::range::{BitModel, BitTree, RangeDecoder, RangeEncoder, ResidualModel};

/// Gravity over one baseline interval in position units: 9.81 m/s² × (0.1 s)² × 512 ≈ 50. The
/// starting bias of off-the-floor cubes; the adaptive bias takes over from there.
pub const GRAVITY_UNITS: i32 = 50;

const MOTION_CLASSES: usize = 6;
const NEAR_CLASSES: usize = 3;
const MAG_CLASSES: usize = 4;
const CHANGED_CTX: usize = MOTION_CLASSES * NEAR_CLASSES * 2 * 2;
const RESIDUAL_CTX: usize = MOTION_CLASSES * MAG_CLASSES;
const BIAS_CTX: usize = MOTION_CLASSES * 2 * 3;
/// Height above the floor (units) from which a cube counts as off the floor.
const AIRBORNE: i32 = 64;

/// The adaptive models of the entropy codec (`Copy`: starting a packet is one memcpy).
#[derive(Debug, Clone, Copy)]
struct Models {
    player_changed: BitModel,
    quiet_any: [BitModel; 2],
    quiet_changed: [BitModel; 2],
    changed: [BitModel; CHANGED_CTX],
    interacting: [BitModel; 2 * MOTION_CLASSES],
    largest_differs: [BitModel; MOTION_CLASSES],
    largest: [BitTree<4>; 4],
    pos_xy: [ResidualModel<32>; RESIDUAL_CTX],
    pos_z: [ResidualModel<28>; RESIDUAL_CTX],
    orient: [ResidualModel<20>; RESIDUAL_CTX],
    bias: [Bias; BIAS_CTX],
}

impl Models {
    fn new() -> Models {
        let mut bias = [Bias::default(); BIAS_CTX];
        for motion in 1..MOTION_CLASSES {
            // Off the floor and moving: start from free fall.
            bias[(motion * 2 + 1) * 3 + 2].c = -GRAVITY_UNITS;
        }
        Models {
            player_changed: BitModel::new(),
            quiet_any: [BitModel::new(); 2],
            quiet_changed: [BitModel::new(); 2],
            changed: [BitModel::new(); CHANGED_CTX],
            interacting: [BitModel::new(); 2 * MOTION_CLASSES],
            largest_differs: [BitModel::new(); MOTION_CLASSES],
            largest: std::array::from_fn(|_| BitTree::new()),
            // x and y residuals stay below 2^16 after clamping predictions, z below 2^14,
            // orientation components below 2^10.
            pos_xy: std::array::from_fn(|_| ResidualModel::new()),
            pos_z: std::array::from_fn(|_| ResidualModel::new()),
            orient: std::array::from_fn(|_| ResidualModel::new()),
            bias,
        }
    }
}

/// Adaptive bias correction of a prediction (LOCO-I / JPEG-LS): `c` is the correction, `b`
/// the error accumulated since it last moved and `n` the (halved now and then) count, so `c`
/// tracks the running mean of the residuals with integer arithmetic only.
#[derive(Debug, Clone, Copy, Default)]
struct Bias {
    c: i32,
    b: i32,
    n: i32,
}

impl Bias {
    #[inline(always)]
    fn update(&mut self, residual: i32) {
        self.b += residual.clamp(-1024, 1024);
        self.n += 1;
        if self.b <= -self.n {
            self.c = (self.c - 1).max(-1024);
            self.b = (self.b + self.n).max(-self.n + 1);
        } else if self.b > 0 {
            self.c = (self.c + 1).min(1024);
            self.b = (self.b - self.n).min(0);
        }
        if self.n >= 64 {
            self.n /= 2;
            self.b /= 2;
        }
    }
}

#[inline(always)]
fn mag_class(v: u32) -> usize {
    // Branch-free: 0..=1, 2..=7, 8..=63, more.
    usize::from(v >= 2) + usize::from(v >= 8) + usize::from(v >= 64)
}

/// The adaptive model state after a packet, to store with the frame it produced and pass as
/// [`Baselines::state`] when that frame is the baseline (see the module docs).
#[derive(Debug, Clone)]
pub struct EntropyState {
    models: Box<Models>,
    /// Which cubes that packet changed, i.e. which moved from its baseline to its frame.
    changed: Option<Box<[u64; WORDS]>>,
}

impl Default for EntropyState {
    fn default() -> Self {
        Self::fresh()
    }
}

impl EntropyState {
    /// The state every packet starts from when no state travels with the baseline.
    #[must_use]
    pub fn fresh() -> Self {
        EntropyState {
            models: Box::new(Models::new()),
            changed: None,
        }
    }
}

/// The entropy codec: reusable model and scratch storage, so coding a packet does not allocate.
#[derive(Debug, Clone)]
pub struct EntropyCodec {
    fresh: Box<Models>,
    models: Box<Models>,
    scratch: Frame,
    /// The raw bit stream of the packet being encoded.
    raw: Vec<u8>,
    /// Which cubes the last packet changed.
    changed: [u64; WORDS],
}

impl Default for EntropyCodec {
    fn default() -> Self {
        Self::new()
    }
}

/// The symbol coder, encoding or decoding. The modelling code is written once against it, so
/// the two directions cannot drift apart.
trait Io {
    /// Whether this is the encoder (whose input values may be out of range).
    const ENCODING: bool;
    /// Codes `bit` (ignored when decoding) and returns the bit coded.
    fn bit(&mut self, m: &mut BitModel, bit: bool) -> bool;
    /// Codes `v` (ignored when decoding) and returns the value coded.
    fn int<const N: usize>(&mut self, m: &mut ResidualModel<N>, v: i32) -> i32;
    /// Codes a 2-bit symbol.
    fn tree4(&mut self, m: &mut BitTree<4>, v: u32) -> u32;
}

/// The encoder: modelled decisions into the range coder, the uniformly distributed low bits
/// of residuals into a plain bit stream beside it (see [`EntropyCodec::encode`]).
struct Enc<'a, 'b> {
    rc: RangeEncoder<'a>,
    raw: BitWriter<'b>,
}

impl Io for Enc<'_, '_> {
    const ENCODING: bool = true;
    #[inline(always)]
    fn bit(&mut self, m: &mut BitModel, bit: bool) -> bool {
        self.rc.encode_bit(m, bit);
        bit
    }
    #[inline(always)]
    fn int<const N: usize>(&mut self, m: &mut ResidualModel<N>, v: i32) -> i32 {
        let (low, bits) = self.rc.encode_residual_head(m, v);
        self.raw.write(low, bits);
        v
    }
    #[inline(always)]
    fn tree4(&mut self, m: &mut BitTree<4>, v: u32) -> u32 {
        self.rc.encode_tree(m, v);
        v
    }
}

/// The decoder; a read past the end of the raw bit stream yields zeros and is reported after
/// the frame (`overrun`, the first such error), like the range decoder's.
struct Dec<'a> {
    rc: RangeDecoder<'a>,
    raw: BitReader<'a>,
    overrun: Option<BitError>,
}

impl Io for Dec<'_> {
    const ENCODING: bool = false;
    #[inline(always)]
    fn bit(&mut self, m: &mut BitModel, _: bool) -> bool {
        self.rc.decode_bit(m)
    }
    #[inline(always)]
    fn int<const N: usize>(&mut self, m: &mut ResidualModel<N>, _: i32) -> i32 {
        let head = self.rc.decode_residual_head(m);
        let low = match self.raw.read(head.low_bits()) {
            Ok(v) => v,
            Err(e) => {
                self.overrun.get_or_insert(e);
                0
            }
        };
        head.value(low)
    }
    #[inline(always)]
    fn tree4(&mut self, m: &mut BitTree<4>, _: u32) -> u32 {
        self.rc.decode_tree(m)
    }
}

impl EntropyCodec {
    /// A codec with fresh model storage.
    #[must_use]
    pub fn new() -> Self {
        EntropyCodec {
            fresh: Box::new(Models::new()),
            models: Box::new(Models::new()),
            scratch: Frame::default(),
            raw: Vec::new(),
            changed: [0; WORDS],
        }
    }

    fn start(&mut self, base: &Baselines<'_>) {
        *self.models = match base.state {
            Some(s) => *s.models,
            None => *self.fresh,
        };
    }

    /// Encodes `target` against `base`, appending to `out`; returns the bytes appended.
    ///
    /// The packet is the range-coded stream, then the raw low bits of the residuals (a plain
    /// LSB-first bit stream, zero-padded to a byte), then the raw stream's length in bytes as
    /// a varint written backwards.
    pub fn encode(
        &mut self,
        base: Baselines<'_>,
        target: &Frame,
        out: &mut Vec<u8>,
    ) -> Result<usize, EncodeError> {
        // Out-of-range values of changed cubes fail the range checks of `code_cube`.
        self.start(&base);
        let start = out.len();
        self.raw.clear();
        let mut io = Enc {
            rc: RangeEncoder::new(out),
            raw: BitWriter::new(&mut self.raw),
        };
        code_frame(
            &mut io,
            &mut self.models,
            base,
            base.state.and_then(|s| s.changed.as_deref()),
            target.cubes(),
            self.scratch.cubes_mut(),
            &mut self.changed,
        )
        .map_err(|(cube, field)| EncodeError::OutOfRange { cube, field })?;
        io.rc.finish();
        let raw_len = io.raw.finish();
        out.extend_from_slice(&self.raw);
        statewire_core::bits::put_trailer(out, raw_len);
        Ok(out.len() - start)
    }

    /// Decodes a packet made by [`EntropyCodec::encode`] with the same baselines (and state)
    /// into `out`. On error `out` holds garbage and the codec's state must not be saved.
    pub fn decode(
        &mut self,
        base: Baselines<'_>,
        data: &[u8],
        out: &mut Frame,
    ) -> Result<(), DecodeError> {
        let (raw_len, trailer) =
            statewire_core::bits::read_trailer(data).ok_or(DecodeError::Framing)?;
        let coded_len = data
            .len()
            .checked_sub(trailer)
            .and_then(|n| n.checked_sub(raw_len))
            .ok_or(DecodeError::Framing)?;
        let (coded, raw) = data[..data.len() - trailer].split_at(coded_len);
        self.start(&base);
        let mut io = Dec {
            rc: RangeDecoder::new(coded),
            raw: BitReader::new(raw),
            overrun: None,
        };
        code_frame(
            &mut io,
            &mut self.models,
            base,
            base.state.and_then(|s| s.changed.as_deref()),
            base.base.cubes(),
            out.cubes_mut(),
            &mut self.changed,
        )
        .map_err(|(cube, field)| DecodeError::OutOfRange { cube, field })?;
        io.rc.finish()?;
        if let Some(e) = io.overrun {
            return Err(e.into());
        }
        io.raw.finish()?;
        Ok(())
    }

    /// Copies the model state after the last successful [`EntropyCodec::encode`] or
    /// [`EntropyCodec::decode`] into `into`, to keep with the frame that packet produced.
    pub fn save_state(&self, into: &mut EntropyState) {
        *into.models = *self.models;
        match &mut into.changed {
            Some(c) => **c = self.changed,
            None => into.changed = Some(Box::new(self.changed)),
        }
    }
}

/// How much a cube moved between its two baselines: 0 not at all, 1 by at most 4 units (or
/// orientation steps), 2 by at most 64, 3 more.
#[inline]
fn motion_class(p: &CubeState, b: &CubeState) -> usize {
    if p == b {
        return 0;
    }
    let d = |x: i32, y: i32| x.wrapping_sub(y).unsigned_abs();
    let pos = d(b.x, p.x).max(d(b.y, p.y)).max(d(b.z, p.z));
    let rot = if p.largest != b.largest {
        512
    } else {
        let d16 = |x: u16, y: u16| u32::from(x.abs_diff(y));
        d16(b.a, p.a).max(d16(b.b, p.b)).max(d16(b.c, p.c))
    };
    match pos.max(rot) {
        0..=4 => 1,
        5..=24 => 2,
        25..=64 => 3,
        65..=200 => 4,
        _ => 5,
    }
}

const BOUND: f64 = std::f64::consts::FRAC_1_SQRT_2;

/// The quaternion (x, y, z, w) a smallest-three state stands for.
#[inline]
fn dequantize(c: &CubeState) -> [f64; 4] {
    let f = |v: u16| f64::from(v.min(511)) * (2.0 * BOUND / 511.0) - BOUND;
    let (a, b, cc) = (f(c.a), f(c.b), f(c.c));
    let big = (1.0 - a * a - b * b - cc * cc).max(0.0).sqrt();
    match c.largest & 3 {
        0 => [big, a, b, cc],
        1 => [a, big, b, cc],
        2 => [a, b, big, cc],
        _ => [a, b, cc, big],
    }
}

/// Smallest-three components of `q` written with `largest` as the omitted index (clamped to
/// the 9-bit range when `largest` is not really the largest).
#[inline]
fn components(q: &[f64; 4], largest: usize) -> [i32; 3] {
    let sign = if q[largest] < 0.0 { -1.0 } else { 1.0 };
    let scale = 511.0 / (2.0 * BOUND);
    let quant = |v: f64| {
        let x = (v * sign + BOUND) * scale + 0.5;
        // A saturating cast of a non-negative value is floor, exactly, on every platform.
        if x <= 0.0 { 0 } else { (x as i32).min(511) }
    };
    let [x, y, z, w] = *q;
    match largest {
        0 => [quant(y), quant(z), quant(w)],
        1 => [quant(x), quant(z), quant(w)],
        2 => [quant(x), quant(y), quant(w)],
        _ => [quant(x), quant(y), quant(z)],
    }
}

#[inline]
fn largest_of(q: &[f64; 4]) -> usize {
    let mut l = 0;
    for k in 1..4 {
        if q[k].abs() > q[l].abs() {
            l = k;
        }
    }
    l
}

/// `a · b` for (x, y, z, w) quaternions.
#[inline]
fn mul(a: &[f64; 4], b: &[f64; 4]) -> [f64; 4] {
    [
        a[3] * b[0] + a[0] * b[3] + a[1] * b[2] - a[2] * b[1],
        a[3] * b[1] - a[0] * b[2] + a[1] * b[3] + a[2] * b[0],
        a[3] * b[2] + a[0] * b[1] - a[1] * b[0] + a[2] * b[3],
        a[3] * b[3] - a[0] * b[0] - a[1] * b[1] - a[2] * b[2],
    ]
}

/// The orientation `b` will have if it keeps turning as it did since `p`.
#[inline]
fn predict_rotation(p: &CubeState, b: &CubeState) -> [f64; 4] {
    let qb = dequantize(b);
    let qp = dequantize(p);
    // The turn over one interval, dq = qb · conj(qp), taken the short way round.
    let mut dq = mul(&qb, &[-qp[0], -qp[1], -qp[2], qp[3]]);
    if dq[3] < 0.0 {
        dq = [-dq[0], -dq[1], -dq[2], -dq[3]];
    }
    mul(&dq, &qb)
}

/// Squared horizontal distance from `(x, y)` to `b`. Wrapping: baselines come from the caller
/// and need not be in range (only then can the square overflow).
#[inline(always)]
fn dist2(b: &CubeState, x: i64, y: i64) -> i64 {
    let (dx, dy) = (
        i64::from(b.x).wrapping_sub(x),
        i64::from(b.y).wrapping_sub(y),
    );
    dx.wrapping_mul(dx).wrapping_add(dy.wrapping_mul(dy))
}

/// Codes every cube: `input` holds the target when encoding (any frame when decoding, its
/// values are then ignored); `out` receives the coded frame and `changed` which cubes the
/// packet changed. `moved`, if known, says which cubes moved from `p` to `b`.
#[inline(always)]
fn code_frame<I: Io>(
    io: &mut I,
    m: &mut Models,
    base: Baselines<'_>,
    moved: Option<&[u64; WORDS]>,
    input: &[CubeState; NUM_CUBES],
    out: &mut [CubeState; NUM_CUBES],
    changed: &mut [u64; WORDS],
) -> Result<(), (usize, CubeField)> {
    let bf = base.base.cubes();
    let pf = base.prev.unwrap_or(base.base).cubes();

    // Classify every cube first, in branch-free passes that only set bits (in registers, stored
    // once per 64 cubes) and find the floor. Quiet cubes (at rest, not interacting, more than
    // 10 m from where the player was in the baseline) almost never change: their flags go
    // behind one "any changed" flag per 64 cubes, so a packet spends about one binary decision
    // per word on them instead of one per cube. The passes also find which cubes moved from `p`
    // to `b` (unless the state says it) and, when encoding, which changed from `b` to the
    // target; everything else (motion class, distance class) is computed for active cubes only.
    let (bx, by) = (i64::from(bf[0].x), i64::from(bf[0].y));
    let mut floor = i32::MAX;
    let moved_map = match moved {
        Some(map) => *map,
        None => crate::diff_bitmap(pf, bf),
    };
    *changed = if I::ENCODING {
        crate::diff_bitmap(bf, input)
    } else {
        [0u64; WORDS]
    };
    let mut quiet = [0u64; WORDS];
    // Unchanged cubes are the baseline's: the decoder copies the frame in this same pass (one
    // read of the baseline instead of two) and then writes only changed cubes; the encoder
    // does not need its output at all.
    for (w, (bs, os)) in bf.chunks(64).zip(out.chunks_mut(64)).enumerate() {
        let mut q = 0u64;
        for (k, (b, o)) in bs.iter().zip(os).enumerate() {
            if !I::ENCODING {
                *o = *b;
            }
            let far = dist2(b, bx, by) >= (10 * 512) * (10 * 512);
            // `&`, not `&&`: a branch here mispredicts along the edge of the player's area.
            q |= (u64::from(far) & u64::from(!b.interacting)) << k;
            floor = floor.min(b.z);
        }
        quiet[w] = q & !moved_map[w];
    }
    let mut last_mag = 0;

    // The player (cube 0) first: its new position is context for everyone else.
    let mut c = input[0];
    let player_changed = io.bit(&mut m.player_changed, c != bf[0]);
    if player_changed {
        let motion = motion_class(&pf[0], &bf[0]);
        last_mag = code_cube(io, m, motion, &pf[0], &bf[0], &mut c, floor, last_mag)
            .map_err(|f| (0, f))?;
        out[0] = c;
    } else {
        c = bf[0];
    }
    let (px, py) = (i64::from(c.x), i64::from(c.y));
    let near_class = |b: &CubeState| {
        let d2 = dist2(b, px, py);
        usize::from(d2 >= (4 * 512) * (4 * 512)) + usize::from(d2 >= (10 * 512) * (10 * 512))
    };

    // Cube 0, the player, was coded above.
    quiet[0] &= !1;
    let active_mask = |w: usize| {
        let all = if w + 1 == WORDS && NUM_CUBES % 64 != 0 {
            (1u64 << (NUM_CUBES % 64)) - 1
        } else {
            u64::MAX
        };
        !quiet[w] & all & if w == 0 { !1 } else { u64::MAX }
    };

    let mut prev_changed = true;
    for w in 0..WORDS {
        for k in set_bits(active_mask(w)) {
            let i = w * 64 + k;
            let b = &bf[i];
            let motion = if (moved_map[w] >> k) & 1 == 1 {
                motion_class(&pf[i], b)
            } else {
                0
            };
            let ctx = (motion * NEAR_CLASSES + near_class(b)) * 2 + usize::from(b.interacting);
            let is = io.bit(
                &mut m.changed[ctx * 2 + usize::from(prev_changed)],
                (changed[w] >> k) & 1 == 1,
            );
            prev_changed = is;
            if is {
                changed[w] |= 1 << k;
                let mut c = input[i];
                last_mag = code_cube(io, m, motion, &pf[i], b, &mut c, floor, last_mag)
                    .map_err(|f| (i, f))?;
                out[i] = c;
            }
        }
    }

    let mut prev_any = false;
    for w in 0..WORDS {
        let q = quiet[w];
        if q == 0 {
            continue;
        }
        let any = io.bit(&mut m.quiet_any[usize::from(prev_any)], changed[w] & q != 0);
        prev_any = any;
        if !any {
            continue;
        }
        let mut seen = false;
        let last = 63 - q.leading_zeros() as usize;
        for k in set_bits(q) {
            let i = w * 64 + k;
            // The last flag of a word that has a change and none so far is implied.
            let is = if k == last && !seen {
                true
            } else {
                io.bit(
                    &mut m.quiet_changed[usize::from(seen)],
                    (changed[w] >> k) & 1 == 1,
                )
            };
            seen |= is;
            if is {
                changed[w] |= 1 << k;
                let mut c = input[i];
                last_mag = code_cube(io, m, 0, &pf[i], &bf[i], &mut c, floor, last_mag)
                    .map_err(|f| (i, f))?;
                out[i] = c;
            }
        }
    }
    changed[0] |= u64::from(player_changed);
    Ok(())
}

/// Codes one changed cube; returns the magnitude class of its largest residual.
///
/// Not inlined: `code_frame` calls it from three places, and inlining all three made the
/// encoder and decoder 57 and 40 KB of machine code; out of line they are about 23 and 17 KB
/// together with this function, at the same measured speed (A/B) and 1–2 % more instructions.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn code_cube<I: Io>(
    io: &mut I,
    m: &mut Models,
    motion: usize,
    p: &CubeState,
    b: &CubeState,
    t: &mut CubeState,
    floor: i32,
    last_mag: usize,
) -> Result<usize, CubeField> {
    if I::ENCODING && t.largest > 3 {
        return Err(CubeField::Largest);
    }
    let mctx = motion * MAG_CLASSES;
    t.interacting = io.bit(
        &mut m.interacting[motion * 2 + usize::from(b.interacting)],
        t.interacting,
    );

    // Position. Saturating arithmetic: baselines come from the caller and need not be valid.
    let airborne = usize::from(b.z > floor.saturating_add(AIRBORNE));
    let bctx = (motion * 2 + airborne) * 3;
    let predict = |now: i32, before: i32, bias: i32| {
        let v = if motion > 0 {
            now.saturating_sub(before)
        } else {
            0
        };
        now.saturating_add(v).saturating_add(bias)
    };
    // Horizontal residuals are coded relative to the direction of motion (negated when the
    // cube moves towards -x or -y), so the adaptive bias learns drag and friction, which slow
    // a cube whichever way it goes, instead of averaging them away.
    let dir = |now: i32, before: i32| if motion > 0 && now < before { -1 } else { 1 };
    let (sx, sy) = (dir(b.x, p.x), dir(b.y, p.y));
    let px = predict(b.x, p.x, sx * m.bias[bctx].c).clamp(-XY_LIMIT, XY_LIMIT);
    let py = predict(b.y, p.y, sy * m.bias[bctx + 1].c).clamp(-XY_LIMIT, XY_LIMIT);
    let pz = predict(b.z, p.z, m.bias[bctx + 2].c)
        .max(floor)
        .clamp(0, Z_LIMIT);
    let rx = io.int(
        &mut m.pos_xy[mctx + last_mag],
        t.x.wrapping_sub(px).wrapping_mul(sx),
    );
    t.x = px.wrapping_add(rx.wrapping_mul(sx));
    let ry = io.int(
        &mut m.pos_xy[mctx + mag_class(rx.unsigned_abs())],
        t.y.wrapping_sub(py).wrapping_mul(sy),
    );
    t.y = py.wrapping_add(ry.wrapping_mul(sy));
    let rxy = rx.unsigned_abs().max(ry.unsigned_abs());
    let rz = io.int(&mut m.pos_z[mctx + mag_class(rxy)], t.z.wrapping_sub(pz));
    t.z = pz.wrapping_add(rz);
    if !(-XY_LIMIT..=XY_LIMIT).contains(&t.x) {
        return Err(CubeField::X);
    }
    if !(-XY_LIMIT..=XY_LIMIT).contains(&t.y) {
        return Err(CubeField::Y);
    }
    if !(0..=Z_LIMIT).contains(&t.z) {
        return Err(CubeField::Z);
    }
    if motion > 0 {
        m.bias[bctx].update(rx);
        m.bias[bctx + 1].update(ry);
        m.bias[bctx + 2].update(rz);
    }
    let pos_mag = rxy.max(rz.unsigned_abs());

    // Orientation.
    // A cube that moved without turning is predicted to keep its orientation exactly (no
    // quaternion arithmetic, and no requantization error).
    let turned = (p.largest, p.a, p.b, p.c) != (b.largest, b.a, b.b, b.c);
    let (pred_largest, pred) = if motion > 0 && turned {
        let q = predict_rotation(p, b);
        (largest_of(&q), Some(q))
    } else {
        (usize::from(b.largest & 3), None)
    };
    let differs = io.bit(
        &mut m.largest_differs[motion],
        usize::from(t.largest) != pred_largest,
    );
    let largest = if differs {
        io.tree4(&mut m.largest[pred_largest], u32::from(t.largest)) as usize & 3
    } else {
        pred_largest
    };
    t.largest = largest as u8;
    let comps = match pred {
        Some(q) => components(&q, largest),
        None if largest == usize::from(b.largest) => {
            [i32::from(b.a), i32::from(b.b), i32::from(b.c)]
        }
        None => components(&dequantize(b), largest),
    };
    let ra = io.int(
        &mut m.orient[mctx + mag_class(pos_mag)],
        i32::from(t.a) - comps[0],
    );
    let rb = io.int(
        &mut m.orient[mctx + mag_class(ra.unsigned_abs())],
        i32::from(t.b) - comps[1],
    );
    let rab = ra.unsigned_abs().max(rb.unsigned_abs());
    let rc = io.int(
        &mut m.orient[mctx + mag_class(rab)],
        i32::from(t.c) - comps[2],
    );
    let check = |v: i32, f| {
        u16::try_from(v)
            .ok()
            .filter(|&v| v <= crate::COMPONENT_LIMIT)
            .ok_or(f)
    };
    t.a = check(comps[0].wrapping_add(ra), CubeField::A)?;
    t.b = check(comps[1].wrapping_add(rb), CubeField::B)?;
    t.c = check(comps[2].wrapping_add(rc), CubeField::C)?;
    Ok(mag_class(pos_mag.max(rab).max(rc.unsigned_abs())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::frames;
    use crate::{BASELINE_DISTANCE, Scene, generate, generate_scene};
    use proptest::prelude::*;

    fn round_trip(base: Baselines<'_>, target: &Frame) -> usize {
        let mut codec = EntropyCodec::new();
        let mut out = Vec::new();
        let n = codec.encode(base, target, &mut out).unwrap();
        assert_eq!(n, out.len());
        let mut enc_state = EntropyState::fresh();
        codec.save_state(&mut enc_state);
        let mut decoded = Frame::default();
        let mut other = EntropyCodec::new();
        other.decode(base, &out, &mut decoded).unwrap();
        assert_eq!(&decoded, target);
        let mut dec_state = EntropyState::fresh();
        other.save_state(&mut dec_state);
        assert_eq!(format!("{enc_state:?}"), format!("{dec_state:?}"));
        n
    }

    #[test]
    fn generated_frames_round_trip_with_carried_state() {
        // The stress scene: after the first pounds and pulls many cubes move, tumble and wake.
        let frames = generate_scene(400, 5, Scene::Stress);
        let mut states: Vec<EntropyState> = Vec::new();
        let mut enc = EntropyCodec::new();
        let mut dec = EntropyCodec::new();
        let mut decoded = Frame::default();
        let (mut out, mut again) = (Vec::new(), Vec::new());
        let mut moving = 0;
        for i in BASELINE_DISTANCE..frames.len() {
            let base = Baselines {
                base: &frames[i - 6],
                prev: i.checked_sub(12).map(|k| &frames[k]),
                state: i.checked_sub(12).map(|k| &states[k]),
            };
            out.clear();
            enc.encode(base, &frames[i], &mut out).unwrap();
            dec.decode(base, &out, &mut decoded).unwrap();
            assert_eq!(decoded, frames[i], "frame {i}");
            moving += frames[i]
                .cubes()
                .iter()
                .zip(frames[i - 6].cubes())
                .filter(|(a, b)| a != b)
                .count();
            // The state's record of which cubes its packet changed stands for comparing
            // `prev` with `base`: without it the packet is the same, byte for byte.
            if let Some(state) = base.state {
                let mut blind = state.clone();
                blind.changed = None;
                again.clear();
                enc.encode(
                    Baselines {
                        state: Some(&blind),
                        ..base
                    },
                    &frames[i],
                    &mut again,
                )
                .unwrap();
                assert_eq!(again, out, "frame {i}");
            }
            let mut s = EntropyState::fresh();
            dec.save_state(&mut s);
            states.push(s);
            // Fresh state too, now and then.
            if i % 8 == 0 {
                round_trip(
                    Baselines {
                        base: &frames[i - 6],
                        prev: None,
                        state: None,
                    },
                    &frames[i],
                );
            }
        }
        // The test is only worth something if cubes moved.
        assert!(moving > 2_000, "{moving} cube changes");
    }

    #[test]
    fn unchanged_frame_is_tiny() {
        let f = generate(1, 1).pop().unwrap();
        let n = round_trip(
            Baselines {
                base: &f,
                prev: Some(&f),
                state: None,
            },
            &f,
        );
        assert!(n <= 8, "{n} bytes");
    }

    #[test]
    fn out_of_range_target_is_an_encode_error() {
        let base = Frame::default();
        let mut t = Frame::default();
        t.cubes_mut()[7].z = -5;
        let mut out = Vec::new();
        let r = EntropyCodec::new().encode(
            Baselines {
                base: &base,
                prev: None,
                state: None,
            },
            &t,
            &mut out,
        );
        assert_eq!(
            r,
            Err(EncodeError::OutOfRange {
                cube: 7,
                field: CubeField::Z
            })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn random_frames_round_trip((p, b, t) in frames()) {
            round_trip(Baselines { base: &b, prev: Some(&p), state: None }, &t);
        }

        #[test]
        fn random_bytes_are_errors_not_panics(data in proptest::collection::vec(any::<u8>(), 0..600), seed in 0u64..3) {
            let frames = generate(7 + seed as usize, seed);
            let base = Baselines { base: &frames[0], prev: None, state: None };
            let mut out = Frame::default();
            let _ = EntropyCodec::new().decode(base, &data, &mut out);
        }

        #[test]
        fn damaged_packets_never_panic((p, b, t) in frames(), cut in 1usize..8, flip in any::<usize>()) {
            let base = Baselines { base: &b, prev: Some(&p), state: None };
            let mut out = Vec::new();
            EntropyCodec::new().encode(base, &t, &mut out).unwrap();
            let mut f = Frame::default();
            // A cut packet is an error or, rarely, decodes to other in-range values (a range
            // coder has no redundancy; see `range`).
            let keep = out.len().saturating_sub(cut);
            if EntropyCodec::new().decode(base, &out[..keep], &mut f).is_ok() {
                prop_assert_eq!(f.out_of_range(), None);
            }
            // Flip one bit.
            let mut bad = out.clone();
            let k = flip % (bad.len() * 8);
            bad[k / 8] ^= 1 << (k % 8);
            if EntropyCodec::new().decode(base, &bad, &mut f).is_ok() {
                prop_assert_eq!(f.out_of_range(), None);
            }
        }
    }
}
