//! The hand-written `statewire_core::bits::{BitWriter, BitReader}` against the same job done
//! with `bitvec` (`BitVec<u8, Lsb0>`, the same LSB-first byte layout): writing and reading
//! 10,000 fields of seeded values and widths 1..=32.
//!
//! bitvec is measured two ways: pushing a field one bit at a time (the direct translation of
//! "append these bits") and with its field API (`store_le` / `load_le` on a sub-slice), which is
//! the fair, word-at-a-time use of the crate.

use std::hint::black_box;
use std::time::Duration;

use bitvec::field::BitField;
use bitvec::order::Lsb0;
use bitvec::vec::BitVec;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use statewire_benches::SplitMix64;
use statewire_core::bits::{BitReader, BitWriter};

const FIELDS: usize = 10_000;

/// (value, width) pairs; values already fit their width.
fn fields() -> Vec<(u32, u32)> {
    let mut rng = SplitMix64::new(0xb175);
    (0..FIELDS)
        .map(|_| {
            let bits = 1 + rng.below(32) as u32;
            let v = rng.next_u64() as u32;
            let v = if bits == 32 { v } else { v & ((1 << bits) - 1) };
            (v, bits)
        })
        .collect()
}

fn write_statewire(fields: &[(u32, u32)], buf: &mut Vec<u8>) {
    buf.clear();
    let mut w = BitWriter::new(buf);
    for &(v, bits) in fields {
        w.write(v, bits);
    }
    w.finish();
}

fn write_bitvec_push(fields: &[(u32, u32)], bv: &mut BitVec<u8, Lsb0>) {
    bv.clear();
    for &(v, bits) in fields {
        for k in 0..bits {
            bv.push((v >> k) & 1 != 0);
        }
    }
}

fn write_bitvec_store(fields: &[(u32, u32)], bv: &mut BitVec<u8, Lsb0>) {
    bv.clear();
    for &(v, bits) in fields {
        let at = bv.len();
        bv.resize(at + bits as usize, false);
        bv[at..].store_le(v);
    }
}

fn read_statewire(fields: &[(u32, u32)], bytes: &[u8]) -> u64 {
    let mut r = BitReader::new(bytes);
    let mut sum = 0u64;
    for &(_, bits) in fields {
        sum += u64::from(r.read(bits).expect("in bounds"));
    }
    sum
}

fn read_bitvec_load(fields: &[(u32, u32)], bv: &BitVec<u8, Lsb0>) -> u64 {
    let mut pos = 0;
    let mut sum = 0u64;
    for &(_, bits) in fields {
        let end = pos + bits as usize;
        sum += u64::from(bv[pos..end].load_le::<u32>());
        pos = end;
    }
    sum
}

fn read_bitvec_bits(fields: &[(u32, u32)], bv: &BitVec<u8, Lsb0>) -> u64 {
    let mut pos = 0;
    let mut sum = 0u64;
    for &(_, bits) in fields {
        let mut v = 0u32;
        for k in 0..bits as usize {
            v |= u32::from(bv[pos + k]) << k;
        }
        sum += u64::from(v);
        pos += bits as usize;
    }
    sum
}

/// All writers produce the same bits and all readers the same values.
fn check_equivalent(fields: &[(u32, u32)]) -> (Vec<u8>, BitVec<u8, Lsb0>) {
    let mut buf = Vec::new();
    write_statewire(fields, &mut buf);
    let mut pushed = BitVec::new();
    write_bitvec_push(fields, &mut pushed);
    let mut stored = BitVec::new();
    write_bitvec_store(fields, &mut stored);
    let total_bits: usize = fields.iter().map(|&(_, b)| b as usize).sum();
    assert_eq!(pushed.len(), total_bits);
    assert_eq!(stored, pushed);
    assert_eq!(buf.len(), total_bits.div_ceil(8));
    let expect: u64 = fields.iter().map(|&(v, _)| u64::from(v)).sum();
    assert_eq!(read_statewire(fields, &buf), expect);
    assert_eq!(read_statewire(fields, pushed.as_raw_slice()), expect);
    let from_statewire = BitVec::<u8, Lsb0>::from_slice(&buf);
    assert_eq!(read_bitvec_load(fields, &from_statewire), expect);
    assert_eq!(read_bitvec_bits(fields, &pushed), expect);
    (buf, pushed)
}

fn bench_bits(c: &mut Criterion) {
    let fields = fields();
    let (bytes, bv) = check_equivalent(&fields);
    let total_bits: usize = fields.iter().map(|&(_, b)| b as usize).sum();
    println!(
        "bits: {FIELDS} fields, {total_bits} bits ({} bytes), mean width {:.1}",
        bytes.len(),
        total_bits as f64 / FIELDS as f64
    );

    let mut g = c.benchmark_group("bits_10k_fields");
    g.throughput(Throughput::Elements(FIELDS as u64));

    g.bench_function("write/statewire", |b| {
        let mut buf = Vec::with_capacity(bytes.len() + 8);
        b.iter(|| {
            write_statewire(black_box(&fields), &mut buf);
            black_box(buf.len())
        });
    });
    g.bench_function("write/bitvec_push", |b| {
        let mut out = BitVec::<u8, Lsb0>::with_capacity(total_bits);
        b.iter(|| {
            write_bitvec_push(black_box(&fields), &mut out);
            black_box(out.len())
        });
    });
    g.bench_function("write/bitvec_store_le", |b| {
        let mut out = BitVec::<u8, Lsb0>::with_capacity(total_bits);
        b.iter(|| {
            write_bitvec_store(black_box(&fields), &mut out);
            black_box(out.len())
        });
    });
    g.bench_function("read/statewire", |b| {
        b.iter(|| read_statewire(black_box(&fields), black_box(&bytes)));
    });
    g.bench_function("read/bitvec_load_le", |b| {
        b.iter(|| read_bitvec_load(black_box(&fields), black_box(&bv)));
    });
    g.bench_function("read/bitvec_per_bit", |b| {
        b.iter(|| read_bitvec_bits(black_box(&fields), black_box(&bv)));
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_bits
}
criterion_main!(benches);
