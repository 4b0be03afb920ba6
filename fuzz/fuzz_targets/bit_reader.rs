//! Drives `BitReader` with reads whose kinds and widths come from the input, against a
//! bit-at-a-time reference reader over the same bytes.
//!
//! Input: `n` (one byte), then `n` operation bytes, then the payload the reader reads. Each
//! operation byte picks a read (`op % 5`: raw, bool, varint, varint64, u64) and, for raw reads,
//! a width `(op / 5) % 33` in 0..=32. After every operation the reader and the reference must
//! agree on the value, the error and the bits remaining, and `finish` must agree too. Each
//! value read successfully is written back with `BitWriter` (the matching `write_*` call) and
//! must reproduce the exact bits it was read from.

#![no_main]

use libfuzzer_sys::fuzz_target;
use statewire_core::bits::{BitError, BitReader, BitWriter};

/// The obvious implementation: one bit at a time.
struct Reference<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reference<'_> {
    fn bit(&self, i: usize) -> u64 {
        u64::from((self.data[i / 8] >> (i % 8)) & 1)
    }

    fn remaining(&self) -> usize {
        self.data.len() * 8 - self.pos
    }

    fn read(&mut self, bits: u32) -> Result<u64, BitError> {
        if bits as usize > self.remaining() {
            return Err(BitError::Eof {
                wanted: bits,
                remaining: self.remaining(),
            });
        }
        let v = (0..bits as usize).fold(0u64, |v, k| v | self.bit(self.pos + k) << k);
        self.pos += bits as usize;
        Ok(v)
    }

    fn varint(&mut self, len_bits: u32, max_len: u32) -> Result<u64, BitError> {
        let len = self.read(len_bits)? as u32;
        match len {
            0 | 1 => Ok(u64::from(len)),
            _ if len <= max_len => {
                // Read in pieces of at most 32 bits, as the real reader does, so a truncated
                // value consumes the same bits.
                let rest = len - 1;
                let low = if rest > 32 {
                    self.read(32)? | self.read(rest - 32)? << 32
                } else {
                    self.read(rest)?
                };
                Ok(1u64 << rest | low)
            }
            _ => Err(BitError::BadVarint),
        }
    }

    fn finish(&self) -> Result<(), BitError> {
        let remaining = self.remaining();
        if remaining >= 8 {
            return Err(BitError::TrailingBytes(remaining / 8));
        }
        if (self.pos..self.data.len() * 8).any(|i| self.bit(i) == 1) {
            return Err(BitError::NonZeroPadding);
        }
        Ok(())
    }
}

enum Op {
    Raw(u32),
    Bool,
    Varint,
    Varint64,
    U64,
}

/// Writes `value` with the writer call matching `op` and checks it reproduces `bits` bits of
/// `data` starting at bit `at`.
fn check_rewrite(op: &Op, value: u64, data: &[u8], at: usize, bits: usize) {
    let mut buf = vec![0xA5]; // the writer must leave existing bytes alone
    let mut w = BitWriter::new(&mut buf);
    match *op {
        Op::Raw(width) => w.write(value as u32, width),
        Op::Bool => w.write_bool(value == 1),
        Op::Varint => w.write_varint(value as u32),
        Op::Varint64 => w.write_varint64(value),
        Op::U64 => w.write_u64(value),
    }
    assert_eq!(w.bit_len(), bits, "writer width differs from bits read");
    let n = w.finish();
    assert_eq!(n, bits.div_ceil(8));
    assert_eq!(buf[0], 0xA5);
    let written = Reference {
        data: &buf[1..],
        pos: 0,
    };
    let source = Reference { data, pos: 0 };
    for k in 0..bits {
        assert_eq!(written.bit(k), source.bit(at + k), "bit {k} of a rewrite");
    }
    for k in bits..n * 8 {
        assert_eq!(written.bit(k), 0, "writer padding must be zero");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (ops, payload) = rest.split_at(usize::from(n).min(rest.len()));
    let mut r = BitReader::new(payload);
    let mut model = Reference {
        data: payload,
        pos: 0,
    };
    for &byte in ops {
        let op = match byte % 5 {
            0 => Op::Raw(u32::from(byte / 5) % 33),
            1 => Op::Bool,
            2 => Op::Varint,
            3 => Op::Varint64,
            _ => Op::U64,
        };
        let at = model.pos;
        let (got, want) = match op {
            Op::Raw(width) => (
                r.read(width).map(u64::from),
                model.read(width).inspect(|&v| assert!(v < 1u64 << width)),
            ),
            Op::Bool => (r.read_bool().map(u64::from), model.read(1)),
            Op::Varint => (r.read_varint().map(u64::from), model.varint(6, 32)),
            Op::Varint64 => (r.read_varint64(), model.varint(7, 64)),
            Op::U64 => (
                r.read_u64(),
                model.read(32).and_then(|lo| Ok(lo | model.read(32)? << 32)),
            ),
        };
        assert_eq!(got, want);
        assert_eq!(r.remaining(), model.remaining(), "position after {got:?}");
        assert_eq!(r.finish(), model.finish());
        if let Ok(v) = got {
            check_rewrite(&op, v, payload, at, model.pos - at);
        }
    }
});
