//! An adaptive binary range coder with context models.
//!
//! # The coder
//!
//! LZMA-style: a 32-bit `range`, a 33-bit `low` with carry propagation through a cached byte
//! and a run of pending `0xFF` bytes, byte-wise renormalisation whenever `range` drops below
//! 2^24, and a binary split `bound = (range >> 15) * p` where `p` is the 15-bit probability that
//! the next bit is 0. Two changes from LZMA make packets shorter and decoding strict:
//!
//! - LZMA's first output byte is always zero; it is not written (the decoder starts as if it had
//!   read it).
//! - The flush writes one byte instead of four: at the end `range ≥ 2^24`, so the interval
//!   `[low, low + range)` contains a multiple of 2^24; the encoder moves `low` there, so the
//!   three bytes that would follow are zero and are left out. The decoder reads those three
//!   bytes as zeros and checks, when the message ends, that it consumed the input exactly plus
//!   those three virtual bytes: a message that ends early fails with [`RangeError::Truncated`]
//!   and one with bytes appended with [`RangeError::TrailingBytes`].
//!
//! Any byte string decodes without panicking: reads past the end yield zero bytes and are
//! reported by [`RangeDecoder::finish`] (and by [`RangeDecoder::check_overrun`], which bounded
//! loops may call early). A range coder has no redundancy, though: a cut or corrupted message
//! decodes to *some* symbols, and is caught only when the decoder's byte count or the caller's
//! range checks disagree, which is usual but not certain. Datagram transports deliver whole
//! packets or none; anything that can truncate or flip bits needs a checksum.
//!
//! # Models
//!
//! A [`BitModel`] is one adaptive probability. It adapts quickly while it is young (the update
//! rate follows roughly 1/(n+1) for the first observations, like a frequency count) and then
//! settles at a shift of [`BitModel::RATE_LIMIT`], so a model that starts at 1/2 in every packet
//! learns a skewed flag within a few uses. [`BitTree`] codes a multi-bit symbol MSB first with
//! one model per tree node, and [`IntModel`] is an adaptive Elias-gamma (exp-Golomb-like) code
//! for signed integers: zero flag, a raw sign bit, the bit length in unary with one model per
//! position, the top mantissa bit modelled per length and the remaining mantissa bits sent raw.
//! [`SymbolModel`] codes one of up to 64 symbols in a single step from an adaptive cumulative
//! distribution, and [`ResidualModel`] uses it for signed residuals: the magnitude's bucket
//! (bit length and the bit under the leading one) as one symbol, a modelled sign, and the low
//! bits raw ([`RangeEncoder::encode_bits`]), a third or less of the dependent steps of the
//! unary length code.
//!
//! Encoding and decoding are exact mirrors, so any sequence of `encode_*` calls is reproduced
//! by the same sequence of `decode_*` calls on models in the same state.

/// Errors from [`RangeDecoder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RangeError {
    /// The decoder needed bytes past the end of the input: the message is cut short.
    #[error("range-coded message is truncated")]
    Truncated,
    /// Whole bytes remain after the last symbol.
    #[error("{0} trailing bytes after the range-coded message")]
    TrailingBytes(usize),
    /// The decoder state is impossible for any encoder output (corrupt input).
    #[error("corrupt range-coded message")]
    Corrupt,
}

const PROB_BITS: u32 = 15;
const PROB_ONE: u32 = 1 << PROB_BITS;
const TOP: u32 = 1 << 24;
/// Bytes the decoder reads ahead; the encoder's flush leaves the last three of them out.
const VIRTUAL_TAIL: usize = 3;

/// One adaptive binary probability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitModel {
    /// Probability of a 0 bit, in units of 2^-15, always in `1..=32767`.
    p: u16,
    /// Observations so far, saturating at the end of the rate table.
    n: u16,
}

// Update shifts by observation count: approximately 1/(n+1) while young.
const RATE: [u8; 24] = [
    1, 2, 2, 2, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 5, 5,
];

impl Default for BitModel {
    fn default() -> Self {
        Self::new()
    }
}

impl BitModel {
    /// Update shift once a model has seen 24 bits (it adapts faster before).
    pub const RATE_LIMIT: u8 = 5;

    /// A model at probability 1/2 that has seen nothing.
    #[must_use]
    pub const fn new() -> Self {
        BitModel {
            p: (PROB_ONE / 2) as u16,
            n: 0,
        }
    }

    /// A model starting at `p0` (probability of a 0 bit, in 2^-15 units, clamped to
    /// `1..=32767`) with the confidence of `n` earlier observations (lower `n` adapts faster).
    #[must_use]
    pub const fn with_prior(p0: u16, n: u16) -> Self {
        let p = if p0 == 0 {
            1
        } else if p0 as u32 >= PROB_ONE {
            (PROB_ONE - 1) as u16
        } else {
            p0
        };
        let n = if n as usize >= RATE.len() {
            RATE.len() as u16
        } else {
            n
        };
        BitModel { p, n }
    }

    /// Current probability of a 0 bit, in 2^-15 units.
    #[must_use]
    pub const fn p0(&self) -> u16 {
        self.p
    }

    #[inline(always)]
    fn shift(&mut self) -> u32 {
        let n = self.n as usize;
        if n < RATE.len() {
            self.n += 1;
            u32::from(RATE[n])
        } else {
            u32::from(Self::RATE_LIMIT)
        }
    }

    #[inline(always)]
    fn update(&mut self, bit: bool) {
        let s = self.shift();
        let p = u32::from(self.p);
        // Both branches keep p in 1..=32767: from 32767 the increase rounds to zero, from 1 the
        // decrease does.
        let p = if bit {
            p - (p >> s)
        } else {
            p + ((PROB_ONE - p) >> s)
        };
        self.p = p as u16;
    }

    /// Cost of coding `bit` with this model now, in 1/256 bits (an estimate for encoders that
    /// choose between representations).
    #[must_use]
    pub fn cost(&self, bit: bool) -> u32 {
        let p = if bit {
            PROB_ONE - u32::from(self.p)
        } else {
            u32::from(self.p)
        };
        cost_q8(p)
    }
}

/// -log2(p / 2^15) in 1/256 bits, by a piecewise-linear log2.
fn cost_q8(p: u32) -> u32 {
    let p = p.max(1);
    let lz = p.leading_zeros(); // p < 2^15, so lz >= 17
    let exp = 31 - lz; // floor(log2 p)
    let frac = ((p << lz) >> 23) & 0xFF; // next 8 bits below the leading one
    (PROB_BITS - exp) * 256 - frac
}

/// Range encoder appending to a caller-supplied buffer. Call [`RangeEncoder::finish`] to flush;
/// until then the buffer does not hold the whole message.
#[derive(Debug)]
pub struct RangeEncoder<'a> {
    out: &'a mut Vec<u8>,
    low: u64,
    range: u32,
    cache: u8,
    has_cache: bool,
    ff_run: u32,
    start_len: usize,
}

impl<'a> RangeEncoder<'a> {
    /// Starts a message at the end of `out` (existing bytes are kept).
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        let start_len = out.len();
        RangeEncoder {
            out,
            low: 0,
            range: u32::MAX,
            cache: 0,
            has_cache: false,
            ff_run: 0,
            start_len,
        }
    }

    #[inline(always)]
    fn shift_low(&mut self) {
        if self.low < 0xFF00_0000 || self.low >= 1 << 32 {
            let carry = (self.low >> 32) as u8;
            if self.has_cache {
                self.out.push(self.cache.wrapping_add(carry));
            }
            for _ in 0..self.ff_run {
                self.out.push(0xFFu8.wrapping_add(carry));
            }
            self.ff_run = 0;
            self.cache = (self.low >> 24) as u8;
            self.has_cache = true;
        } else {
            self.ff_run += 1;
        }
        self.low = (self.low & 0x00FF_FFFF) << 8;
    }

    #[inline(always)]
    fn normalize(&mut self) {
        while self.range < TOP {
            self.range <<= 8;
            self.shift_low();
        }
    }

    /// Codes `bit` with `model` and adapts the model.
    #[inline(always)]
    pub fn encode_bit(&mut self, model: &mut BitModel, bit: bool) {
        let bound = (self.range >> PROB_BITS) * u32::from(model.p);
        // Written without branches on `bit` so unpredictable bits do not stall the pipeline.
        let mask = 0u32.wrapping_sub(u32::from(bit));
        self.low += u64::from(bound & mask);
        self.range = (bound & !mask) | (self.range.wrapping_sub(bound) & mask);
        model.update(bit);
        if self.range < TOP {
            self.range <<= 8;
            self.shift_low();
        }
    }

    /// Codes the low `bits` bits of `value` (`bits` ≤ 32) with probability 1/2 each, MSB first,
    /// without a model.
    #[inline]
    pub fn encode_direct(&mut self, value: u32, bits: u32) {
        let mut left = bits.min(32);
        while left > 0 {
            // Up to 8 bits at a time keeps range ≥ 2^16 before renormalising.
            let n = left.min(8);
            left -= n;
            let chunk = (value >> left) & ((1u32 << n) - 1);
            self.range >>= n;
            self.low += u64::from(self.range) * u64::from(chunk);
            self.normalize();
        }
    }

    /// Codes `symbol`'s low `N` bits with `tree`, MSB first.
    #[inline]
    pub fn encode_tree<const S: usize>(&mut self, tree: &mut BitTree<S>, symbol: u32) {
        let bits = BitTree::<S>::BITS;
        let mut node = 1usize;
        for i in (0..bits).rev() {
            let bit = (symbol >> i) & 1 == 1;
            self.encode_bit(&mut tree.nodes[node], bit);
            node = (node << 1) | usize::from(bit);
        }
    }

    /// Codes the signed integer `value` with `model`.
    ///
    /// `|value|` must fit in `model`'s `max_bits`; larger magnitudes are clamped (so callers
    /// that need losslessness check ranges first).
    #[inline]
    pub fn encode_int(&mut self, model: &mut IntModel, value: i32) {
        if value == 0 {
            self.encode_bit(&mut model.zero, false);
            return;
        }
        self.encode_bit(&mut model.zero, true);
        // Signs of prediction residuals are close to fair coins: a direct bit is as small and
        // cheaper than a modelled one.
        self.encode_direct(u32::from(value < 0), 1);
        self.encode_magnitude(model, value.unsigned_abs());
    }

    /// Codes the unsigned integer `value` ≥ 1 with `model`'s length and mantissa models (no zero
    /// flag, no sign).
    #[inline]
    pub fn encode_magnitude(&mut self, model: &mut IntModel, value: u32) {
        let max_len = model.max_bits;
        let mut v = value.max(1);
        let mut len = 32 - v.leading_zeros();
        if len > max_len {
            len = max_len;
            v = (1u32 << max_len) - 1;
        }
        // Unary length: (len - 1) ones then a zero, the zero left out at the maximum.
        for i in 1..len {
            self.encode_bit(&mut model.len[i as usize - 1], true);
        }
        if len < max_len {
            self.encode_bit(&mut model.len[len as usize - 1], false);
        }
        if len >= 2 {
            let below = len - 1; // mantissa bits under the leading one
            let top = (v >> (below - 1)) & 1 == 1;
            self.encode_bit(&mut model.top[len as usize - 2], top);
            if below >= 2 {
                self.encode_direct(v, below - 1);
            }
        }
    }

    /// Codes the low `bits` bits of `value` with probability 1/2 each, MSB first, one halving
    /// of the range per bit (LZMA's direct bits): the decoder needs no division, unlike
    /// [`RangeEncoder::encode_direct`], whose stream it does not share.
    #[inline(always)]
    pub fn encode_bits(&mut self, value: u32, bits: u32) {
        for i in (0..bits.min(32)).rev() {
            self.range >>= 1;
            self.low += u64::from(self.range & 0u32.wrapping_sub((value >> i) & 1));
            if self.range < TOP {
                self.range <<= 8;
                self.shift_low();
            }
        }
    }

    #[inline(always)]
    fn sign_class(len: u32) -> usize {
        usize::from(len >= 2) + usize::from(len >= 4) + usize::from(len >= 7)
    }

    /// Codes `symbol` (< `N`) with `model` and adapts the model.
    #[inline(always)]
    pub fn encode_symbol<const N: usize>(&mut self, model: &mut SymbolModel<N>, symbol: usize) {
        debug_assert!(symbol < N);
        let (lo, hi) = model.bounds(symbol.min(N - 1));
        let r = self.range >> PROB_BITS;
        self.low += u64::from(r * lo);
        self.range = r * (hi - lo);
        model.update(symbol);
        self.normalize();
    }

    /// Codes the signed integer `value` with `model`: the magnitude's bucket (zero, one, or bit
    /// length and the bit below the leading one) as one symbol, then the sign and the remaining
    /// mantissa bits raw. Magnitudes above [`ResidualModel::MAX_MAGNITUDE`] are clamped (callers
    /// that need losslessness check ranges).
    #[inline(always)]
    pub fn encode_residual<const N: usize>(&mut self, model: &mut ResidualModel<N>, value: i32) {
        let (low, bits) = self.encode_residual_head(model, value);
        self.encode_bits(low, bits);
    }

    /// Codes the magnitude bucket and the sign of `value` like
    /// [`RangeEncoder::encode_residual`], but returns its low mantissa bits as `(bits, count)`
    /// instead of coding them: they are uniformly distributed, so a caller can store them in a
    /// plain bit stream (cheaper than halving the range once per bit) and hand them back to
    /// [`ResidualHead::value`] when decoding.
    #[inline(always)]
    pub fn encode_residual_head<const N: usize>(
        &mut self,
        model: &mut ResidualModel<N>,
        value: i32,
    ) -> (u32, u32) {
        let m = value.unsigned_abs().min(ResidualModel::<N>::MAX_MAGNITUDE);
        let len = 32 - m.leading_zeros();
        if len <= 1 {
            self.encode_symbol(&mut model.sym, m as usize);
            if m == 1 {
                self.encode_bit(&mut model.sign[0], value < 0);
            }
            return (0, 0);
        }
        let below = len - 2;
        let top = (m >> below) & 1;
        self.encode_symbol(&mut model.sym, (2 * (len - 1) + top) as usize);
        self.encode_bit(&mut model.sign[Self::sign_class(len)], value < 0);
        (m & ((1 << below) - 1), below)
    }

    /// Information coded so far, in bits: bytes output (and held back for carries) plus the
    /// fraction of the current range used up. For diagnostics and cost accounting.
    #[must_use]
    pub fn bits_coded(&self) -> f64 {
        let bytes =
            self.out.len() - self.start_len + usize::from(self.has_cache) + self.ff_run as usize;
        bytes as f64 * 8.0 + 32.0 - f64::from(self.range).log2()
    }

    /// Bytes this message would take if flushed now.
    #[must_use]
    pub fn len_estimate(&self) -> usize {
        self.out.len() - self.start_len + usize::from(self.has_cache) + self.ff_run as usize + 1
    }

    /// Flushes the message; returns the number of bytes this encoder appended.
    pub fn finish(mut self) -> usize {
        // Any interval of length ≥ 2^24 holds a multiple of 2^24: stop there, so the three
        // bytes below are zero and need not be written.
        self.low = (self.low + u64::from(TOP - 1)) & !u64::from(TOP - 1);
        self.shift_low();
        self.shift_low();
        self.out.len() - self.start_len
    }
}

/// Range decoder over a bounded byte slice. Never panics; see [`RangeDecoder::finish`].
#[derive(Debug, Clone)]
pub struct RangeDecoder<'a> {
    data: &'a [u8],
    pos: usize,
    range: u32,
    code: u32,
}

impl<'a> RangeDecoder<'a> {
    /// Starts decoding the message in `data`.
    #[must_use]
    pub fn new(data: &'a [u8]) -> Self {
        let mut d = RangeDecoder {
            data,
            pos: 0,
            range: u32::MAX,
            code: 0,
        };
        for _ in 0..4 {
            d.code = (d.code << 8) | u32::from(d.next_byte());
        }
        d
    }

    #[inline(always)]
    fn next_byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    #[inline(always)]
    fn normalize(&mut self) {
        while self.range < TOP {
            self.range <<= 8;
            self.code = (self.code << 8) | u32::from(self.next_byte());
        }
    }

    /// Decodes one bit with `model` and adapts the model.
    #[inline(always)]
    pub fn decode_bit(&mut self, model: &mut BitModel) -> bool {
        let bound = (self.range >> PROB_BITS) * u32::from(model.p);
        let bit = self.code >= bound;
        let mask = 0u32.wrapping_sub(u32::from(bit));
        self.code = self.code.wrapping_sub(bound & mask);
        self.range = (bound & !mask) | (self.range.wrapping_sub(bound) & mask);
        model.update(bit);
        if self.range < TOP {
            self.range <<= 8;
            self.code = (self.code << 8) | u32::from(self.next_byte());
        }
        bit
    }

    /// Decodes `bits` raw bits (≤ 32) written by [`RangeEncoder::encode_direct`].
    #[inline]
    pub fn decode_direct(&mut self, bits: u32) -> u32 {
        let mut left = bits.min(32);
        let mut value = 0u32;
        while left > 0 {
            let n = left.min(8);
            left -= n;
            self.range >>= n;
            // Corrupt input can make code / range exceed the chunk; clamp instead of trusting it
            // (finish reports the corruption).
            let chunk = (self.code / self.range).min((1 << n) - 1);
            self.code -= chunk * self.range;
            value = (value << n) | chunk;
            self.normalize();
        }
        value
    }

    /// Decodes a symbol coded with [`RangeEncoder::encode_tree`].
    #[inline]
    pub fn decode_tree<const S: usize>(&mut self, tree: &mut BitTree<S>) -> u32 {
        let mut node = 1usize;
        for _ in 0..BitTree::<S>::BITS {
            let bit = self.decode_bit(&mut tree.nodes[node]);
            node = (node << 1) | usize::from(bit);
        }
        (node - S) as u32
    }

    /// Decodes an integer coded with [`RangeEncoder::encode_int`].
    #[inline]
    pub fn decode_int(&mut self, model: &mut IntModel) -> i32 {
        if !self.decode_bit(&mut model.zero) {
            return 0;
        }
        let negative = self.decode_direct(1) == 1;
        let m = self.decode_magnitude(model);
        // m < 2^31 because max_bits ≤ 31.
        let m = m as i32;
        if negative { -m } else { m }
    }

    /// Decodes a magnitude coded with [`RangeEncoder::encode_magnitude`].
    #[inline]
    pub fn decode_magnitude(&mut self, model: &mut IntModel) -> u32 {
        let max_len = model.max_bits;
        let mut len = 1;
        while len < max_len && self.decode_bit(&mut model.len[len as usize - 1]) {
            len += 1;
        }
        if len == 1 {
            return 1;
        }
        let below = len - 1;
        let top = u32::from(self.decode_bit(&mut model.top[len as usize - 2]));
        let mut v = (1u32 << below) | (top << (below - 1));
        if below >= 2 {
            v |= self.decode_direct(below - 1);
        }
        v
    }

    /// Decodes `bits` raw bits (≤ 32) written by [`RangeEncoder::encode_bits`].
    #[inline(always)]
    pub fn decode_bits(&mut self, bits: u32) -> u32 {
        let mut value = 0;
        for _ in 0..bits.min(32) {
            self.range >>= 1;
            // code < 2 × range here (for valid input), so the subtraction wraps exactly when
            // the bit is 0; wrapping arithmetic keeps corrupt input from panicking.
            self.code = self.code.wrapping_sub(self.range);
            let zero = 0u32.wrapping_sub(self.code >> 31);
            self.code = self.code.wrapping_add(self.range & zero);
            value = (value << 1) | (zero.wrapping_add(1));
            if self.range < TOP {
                self.range <<= 8;
                self.code = (self.code << 8) | u32::from(self.next_byte());
            }
        }
        value
    }

    /// Decodes a symbol coded with [`RangeEncoder::encode_symbol`].
    #[inline(always)]
    pub fn decode_symbol<const N: usize>(&mut self, model: &mut SymbolModel<N>) -> usize {
        let r = self.range >> PROB_BITS;
        // Corrupt input can put code above the range; clamp (finish reports the corruption).
        let v = (self.code / r).min(PROB_ONE - 1) as i16;
        // The symbol is the number of cdf entries at or below v, less one for cdf[0] = 0: a
        // compare-and-add over the whole fixed-size array, which vectorises (a filtered count
        // over `cdf[1..]` did not).
        let s = model.cdf.iter().fold(0u16, |n, &c| n + u16::from(c <= v)) as usize - 1;
        let (lo, hi) = model.bounds(s);
        self.code -= r * lo;
        self.range = r * (hi - lo);
        model.update(s);
        self.normalize();
        s
    }

    /// Decodes an integer coded with [`RangeEncoder::encode_residual`].
    #[inline(always)]
    pub fn decode_residual<const N: usize>(&mut self, model: &mut ResidualModel<N>) -> i32 {
        let head = self.decode_residual_head(model);
        let low = self.decode_bits(head.low_bits());
        head.value(low)
    }

    /// Decodes what [`RangeEncoder::encode_residual_head`] coded: complete it with the low
    /// bits from wherever the encoder's caller stored them.
    #[inline(always)]
    pub fn decode_residual_head<const N: usize>(
        &mut self,
        model: &mut ResidualModel<N>,
    ) -> ResidualHead {
        let b = self.decode_symbol(&mut model.sym) as u32;
        if b <= 1 {
            let negative = b == 1 && self.decode_bit(&mut model.sign[0]);
            ResidualHead {
                high: b,
                low_bits: 0,
                negative,
            }
        } else {
            let len = b / 2 + 1;
            let below = len - 2;
            let negative = self.decode_bit(&mut model.sign[RangeEncoder::sign_class(len)]);
            ResidualHead {
                high: 1 << (len - 1) | (b & 1) << below,
                low_bits: below,
                negative,
            }
        }
    }

    /// Fails with [`RangeError::Truncated`] if the decoder has already read past the end of
    /// the input by more than the flush allows. Cheap; long decode loops may call it to stop
    /// early on garbage.
    pub fn check_overrun(&self) -> Result<(), RangeError> {
        if self.pos > self.data.len() + VIRTUAL_TAIL {
            Err(RangeError::Truncated)
        } else {
            Ok(())
        }
    }

    /// Checks that the message ended exactly at the end of the input.
    pub fn finish(&self) -> Result<(), RangeError> {
        let expected = self.data.len() + VIRTUAL_TAIL;
        if self.pos > expected {
            return Err(RangeError::Truncated);
        }
        if self.pos < expected {
            return Err(RangeError::TrailingBytes(expected - self.pos));
        }
        // The encoder stops on a multiple of 2^24 inside the final interval, and the decoder's
        // code is that point's offset from `low`, which is below `range`.
        if self.code >= self.range {
            return Err(RangeError::Corrupt);
        }
        Ok(())
    }
}

/// Models for a multi-bit symbol coded MSB first: `S` is the number of symbols, a power of two
/// (`S = 1 << bits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitTree<const S: usize> {
    nodes: [BitModel; S],
}

impl<const S: usize> Default for BitTree<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const S: usize> BitTree<S> {
    /// Bits per symbol.
    pub const BITS: u32 = {
        assert!(
            S.is_power_of_two() && S >= 2,
            "S must be a power of two ≥ 2"
        );
        S.trailing_zeros()
    };

    /// A tree with every node at probability 1/2.
    #[must_use]
    pub const fn new() -> Self {
        BitTree {
            nodes: [BitModel::new(); S],
        }
    }
}

/// An adaptive distribution over `N` symbols (2 ≤ `N` ≤ 64), coded in one range-coder step:
/// one multiply to encode, one division and a count of the cumulative frequencies below the
/// target to decode, where a binary tree or unary code would take several dependent steps.
///
/// The cumulative distribution is kept in 2^-15 units and moved towards each coded symbol by a
/// fraction that shrinks as the model ages (like [`BitModel`]). Every symbol keeps a frequency
/// of at least 1/2^15: the update aims at a distribution with that floor, and its integer
/// rounding never closes a gap (each new gap is an integer above a convex combination of two
/// gaps of at least 1), so any symbol can always be coded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymbolModel<const N: usize> {
    /// `cdf[i]` = 2^15 × P(symbol < i); `cdf[0]` = 0 and the implied `cdf[N]` = 2^15.
    cdf: [i16; N],
    n: u16,
}

impl<const N: usize> Default for SymbolModel<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> SymbolModel<N> {
    const VALID: () = assert!(N >= 2 && N <= 64, "2 ≤ N ≤ 64");
    const INDEX: [i16; N] = {
        let mut a = [0i16; N];
        let mut i = 0;
        while i < N {
            a[i] = i as i16;
            i += 1;
        }
        a
    };

    /// Every symbol equally likely.
    #[must_use]
    pub const fn new() -> Self {
        let () = Self::VALID;
        let mut cdf = [0i16; N];
        let mut i = 1;
        while i < N {
            cdf[i] = (i as u32 * PROB_ONE / N as u32) as i16;
            i += 1;
        }
        SymbolModel { cdf, n: 0 }
    }

    #[inline(always)]
    fn bounds(&self, s: usize) -> (u32, u32) {
        let lo = self.cdf[s] as u32;
        let hi = match self.cdf.get(s + 1) {
            Some(&c) => c as u32,
            None => PROB_ONE,
        };
        (lo, hi)
    }

    #[inline(always)]
    fn update(&mut self, s: usize) {
        let rate = match self.n {
            0..8 => 3,
            8..32 => 4,
            32..128 => 5,
            128..512 => 6,
            _ => 7,
        };
        self.n = self.n.saturating_add(1);
        // Target: cdf[i] = i below and at s, 2^15 − (N − i) above (the 1/2^15 floor per symbol).
        // All values stay in 0..=32767, so i16 arithmetic does not overflow, and the loop over
        // whole arrays (cdf[0] stays 0) vectorises.
        let lift = (PROB_ONE as usize - N) as i16;
        let s = s as i16;
        for (c, &i) in self.cdf.iter_mut().zip(Self::INDEX.iter()) {
            let t = i + (lift & -i16::from(i > s));
            *c += (t - *c) >> rate;
        }
    }
}

/// A residual decoded up to its low mantissa bits ([`RangeDecoder::decode_residual_head`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResidualHead {
    high: u32,
    low_bits: u32,
    negative: bool,
}

impl ResidualHead {
    /// How many low bits the value still needs (below 31).
    #[must_use]
    pub const fn low_bits(&self) -> u32 {
        self.low_bits
    }

    /// The residual, given its low bits (higher bits of `low` are ignored).
    #[must_use]
    pub const fn value(self, low: u32) -> i32 {
        // `high` < 2^31 because N ≤ 62 for a ResidualModel.
        let m = (self.high | (low & ((1u32 << self.low_bits) - 1))) as i32;
        if self.negative { -m } else { m }
    }
}

/// Adaptive model of a signed integer (a prediction residual) coded with
/// [`RangeEncoder::encode_residual`]: magnitudes below 2^(`N`/2), `N` even, 4 ≤ `N` ≤ 62.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResidualModel<const N: usize> {
    sym: SymbolModel<N>,
    /// The sign, by magnitude class (1, 2..=7, 8..=63, more).
    sign: [BitModel; 4],
}

impl<const N: usize> ResidualModel<N> {
    const VALID: () = assert!(N % 2 == 0 && N >= 4 && N <= 62, "N even, 4 ≤ N ≤ 62");
    /// Largest magnitude coded exactly.
    pub const MAX_MAGNITUDE: u32 = {
        let () = Self::VALID;
        (1u32 << (N / 2)) - 1
    };

    /// Starts from a broad prior peaked at magnitudes of 16 to 23 (typical residuals of moving
    /// objects at this scale), which models that start fresh in every packet learn from faster
    /// than from a uniform start.
    #[must_use]
    pub const fn new() -> Self {
        let () = Self::VALID;
        let mut w = [0u32; N];
        let mut total = 0;
        let mut k = 0;
        while k < N {
            let d = k.abs_diff(8);
            w[k] = if d >= 8 { 1 } else { 1 + 2 * (8 - d as u32) };
            total += w[k];
            k += 1;
        }
        let mut cdf = [0i16; N];
        let mut acc = 0;
        let mut i = 1;
        while i < N {
            acc += w[i - 1];
            // Every weight is at least 1 and the total well below 2^15: gaps stay ≥ 1.
            cdf[i] = (acc * PROB_ONE / total) as i16;
            i += 1;
        }
        ResidualModel {
            sym: SymbolModel { cdf, n: 0 },
            sign: [BitModel::new(); 4],
        }
    }
}

/// Longest magnitude an [`IntModel`] can code, in bits.
pub const INT_MAX_BITS: u32 = 31;

/// Adaptive models for an Elias-gamma-like signed integer code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntModel {
    zero: BitModel,
    len: [BitModel; INT_MAX_BITS as usize],
    top: [BitModel; INT_MAX_BITS as usize],
    max_bits: u32,
}

impl Default for IntModel {
    fn default() -> Self {
        Self::new(INT_MAX_BITS)
    }
}

impl IntModel {
    /// Models for magnitudes below `2^max_bits` (`max_bits` is clamped to `1..=31`); knowing
    /// the bound saves the last unary bit.
    #[must_use]
    pub const fn new(max_bits: u32) -> Self {
        let max_bits = if max_bits == 0 {
            1
        } else if max_bits > INT_MAX_BITS {
            INT_MAX_BITS
        } else {
            max_bits
        };
        IntModel {
            zero: BitModel::new(),
            len: [BitModel::new(); INT_MAX_BITS as usize],
            top: [BitModel::new(); INT_MAX_BITS as usize],
            max_bits,
        }
    }

    /// Largest magnitude this model codes exactly.
    #[must_use]
    pub const fn max_magnitude(&self) -> u32 {
        (1u32 << self.max_bits) - 1
    }

    /// The zero-flag model (probability that the value is 0), for callers that set priors.
    pub fn zero_model(&mut self) -> &mut BitModel {
        &mut self.zero
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_message_is_one_byte_and_decodes() {
        let mut buf = Vec::new();
        let n = RangeEncoder::new(&mut buf).finish();
        assert_eq!(n, buf.len());
        assert!(n <= 1, "{buf:?}");
        assert_eq!(RangeDecoder::new(&buf).finish(), Ok(()));
    }

    #[test]
    fn skewed_bits_compress() {
        let mut buf = Vec::new();
        let mut enc = RangeEncoder::new(&mut buf);
        let mut m = BitModel::new();
        for i in 0..10_000 {
            enc.encode_bit(&mut m, i % 100 == 0);
        }
        enc.finish();
        // Entropy of p = 0.01 is 0.081 bits; allow adaptation overhead.
        assert!(buf.len() < 10_000 / 8 / 8, "{} bytes", buf.len());
        let mut dec = RangeDecoder::new(&buf);
        let mut m = BitModel::new();
        for i in 0..10_000 {
            assert_eq!(dec.decode_bit(&mut m), i % 100 == 0);
        }
        assert_eq!(dec.finish(), Ok(()));
    }

    #[test]
    fn truncation_and_trailing_bytes_are_errors() {
        let mut buf = Vec::new();
        let mut enc = RangeEncoder::new(&mut buf);
        let mut m = IntModel::default();
        for v in -300..300 {
            enc.encode_int(&mut m, v * 7);
        }
        enc.finish();
        let decode = |data: &[u8]| {
            let mut dec = RangeDecoder::new(data);
            let mut m = IntModel::default();
            let ok = (-300..300).all(|v| dec.decode_int(&mut m) == v * 7);
            dec.finish().map(|()| ok)
        };
        assert_eq!(decode(&buf), Ok(true));
        // A range coder carries no redundancy: a cut message decodes as if zero-padded and is
        // caught when the decoder runs past the end or the values stop making sense, usually
        // but not always (transports that can truncate need a checksum).
        let mut caught = 0;
        for cut in 1..buf.len() {
            match decode(&buf[..buf.len() - cut]) {
                Err(_) | Ok(false) => caught += 1,
                Ok(true) => panic!("cut {cut} decoded to the original values"),
            }
        }
        assert_eq!(caught, buf.len() - 1);
        assert_eq!(decode(&buf[..buf.len() - 1]), Err(RangeError::Truncated));
        let mut longer = buf.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(RangeError::TrailingBytes(1)));
    }

    #[test]
    fn carries_propagate_through_ff_runs() {
        // Bits that are almost always 1 with a model that believes 0 push `low` up into long
        // 0xFF runs and carries.
        let mut buf = Vec::new();
        let mut enc = RangeEncoder::new(&mut buf);
        let mut models = vec![BitModel::with_prior(32000, 24); 4000];
        let bits: Vec<bool> = (0..4000).map(|i| i % 3 != 0).collect();
        for (m, &b) in models.iter_mut().zip(&bits) {
            enc.encode_bit(m, b);
        }
        enc.finish();
        let mut dec = RangeDecoder::new(&buf);
        let mut models = vec![BitModel::with_prior(32000, 24); 4000];
        for (m, &b) in models.iter_mut().zip(&bits) {
            assert_eq!(dec.decode_bit(m), b);
        }
        assert_eq!(dec.finish(), Ok(()));
    }

    #[test]
    fn symbol_model_keeps_every_symbol_codable() {
        // Train hard on one symbol, then code the others: the 1/2^15 floor must hold.
        let seq: Vec<usize> = std::iter::repeat_n(3, 5000).chain(0..32).collect();
        let mut buf = Vec::new();
        let mut enc = RangeEncoder::new(&mut buf);
        let mut m = SymbolModel::<32>::new();
        for &s in &seq {
            enc.encode_symbol(&mut m, s);
        }
        for w in m.cdf.windows(2) {
            assert!(w[1] > w[0], "{:?}", m.cdf);
        }
        enc.finish();
        let mut dec = RangeDecoder::new(&buf);
        let mut m = SymbolModel::<32>::new();
        for &s in &seq {
            assert_eq!(dec.decode_symbol(&mut m), s);
        }
        assert_eq!(dec.finish(), Ok(()));
    }

    #[test]
    fn cost_is_about_minus_log2() {
        let m = BitModel::with_prior(16384, 0);
        assert_eq!(m.cost(false), 256);
        let m = BitModel::with_prior(32768 / 8, 0);
        assert_eq!(m.cost(false), 3 * 256);
        // -log2(7/8) = 0.19 bits = 49/256; the piecewise-linear log2 overestimates a little.
        assert!((45..70).contains(&m.cost(true)), "{}", m.cost(true));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Bit(u16, bool),
        Direct(u32, u32),
        Tree(u32),
        Int(i32),
        Symbol(usize),
        Residual(i32),
        Bits(u32, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u16..32768, any::<bool>()).prop_map(|(p, b)| Op::Bit(p, b)),
            (any::<u32>(), 0u32..=32).prop_map(|(v, n)| Op::Direct(v, n)),
            (0u32..16).prop_map(Op::Tree),
            any::<i32>().prop_map(|v| Op::Int(v.clamp(-(1 << 30), 1 << 30))),
            (0usize..24).prop_map(Op::Symbol),
            prop_oneof![-40i32..40, -65535i32..=65535].prop_map(Op::Residual),
            (any::<u32>(), 0u32..=32).prop_map(|(v, n)| Op::Bits(v, n)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn random_streams_round_trip(ops in proptest::collection::vec(op(), 0..400)) {
            let mut buf = vec![0xAB];
            let mut enc = RangeEncoder::new(&mut buf);
            let mut tree = BitTree::<16>::new();
            let mut int = IntModel::default();
            let mut sym = SymbolModel::<24>::new();
            let mut res = ResidualModel::<32>::new();
            // A fixed-prior model per op, so random probabilities are exercised exactly.
            for o in &ops {
                match *o {
                    Op::Bit(p, b) => enc.encode_bit(&mut BitModel::with_prior(p, 24), b),
                    Op::Direct(v, n) => enc.encode_direct(v, n),
                    Op::Tree(s) => enc.encode_tree(&mut tree, s),
                    Op::Int(v) => enc.encode_int(&mut int, v),
                    Op::Symbol(v) => enc.encode_symbol(&mut sym, v),
                    Op::Residual(v) => enc.encode_residual(&mut res, v),
                    Op::Bits(v, n) => enc.encode_bits(v, n),
                }
            }
            let n = enc.finish();
            prop_assert_eq!(n, buf.len() - 1);
            let mut dec = RangeDecoder::new(&buf[1..]);
            let mut tree = BitTree::<16>::new();
            let mut int = IntModel::default();
            let mut sym = SymbolModel::<24>::new();
            let mut res = ResidualModel::<32>::new();
            for o in &ops {
                match *o {
                    Op::Bit(p, b) => prop_assert_eq!(dec.decode_bit(&mut BitModel::with_prior(p, 24)), b),
                    Op::Direct(v, n) => {
                        let mask = if n == 32 { u32::MAX } else { (1u32 << n) - 1 };
                        prop_assert_eq!(dec.decode_direct(n), v & mask);
                    }
                    Op::Tree(s) => prop_assert_eq!(dec.decode_tree(&mut tree), s),
                    Op::Int(v) => prop_assert_eq!(dec.decode_int(&mut int), v),
                    Op::Symbol(v) => prop_assert_eq!(dec.decode_symbol(&mut sym), v),
                    Op::Residual(v) => prop_assert_eq!(dec.decode_residual(&mut res), v),
                    Op::Bits(v, n) => {
                        let mask = if n == 32 { u32::MAX } else { (1u32 << n) - 1 };
                        prop_assert_eq!(dec.decode_bits(n), v & mask);
                    }
                }
            }
            prop_assert_eq!(dec.finish(), Ok(()));
        }

        #[test]
        fn adaptive_bits_round_trip(bits in proptest::collection::vec(any::<bool>(), 0..2000), ctx in proptest::collection::vec(0usize..4, 2000)) {
            let mut buf = Vec::new();
            let mut enc = RangeEncoder::new(&mut buf);
            let mut models = [BitModel::new(); 4];
            for (b, c) in bits.iter().zip(&ctx) {
                enc.encode_bit(&mut models[*c], *b);
            }
            enc.finish();
            let mut dec = RangeDecoder::new(&buf);
            let mut models = [BitModel::new(); 4];
            for (b, c) in bits.iter().zip(&ctx) {
                prop_assert_eq!(dec.decode_bit(&mut models[*c]), *b);
            }
            prop_assert_eq!(dec.finish(), Ok(()));
        }

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut dec = RangeDecoder::new(&data);
            let mut m = BitModel::new();
            let mut int = IntModel::new(20);
            let mut tree = BitTree::<8>::new();
            let mut res = ResidualModel::<20>::new();
            for _ in 0..50 {
                let _ = dec.decode_residual(&mut res);
                let _ = dec.decode_bits(7);
                let _ = dec.decode_bit(&mut m);
                let _ = dec.decode_int(&mut int);
                let _ = dec.decode_direct(13);
                let _ = dec.decode_tree(&mut tree);
            }
            let _ = dec.check_overrun();
            let _ = dec.finish();
        }
    }
}
