//! Snapshot encode and decode for 1,000 entities with 10 % of them changed per tick.
//!
//! Steady state: the server encodes each tick against the client's acknowledgement of the
//! previous tick, with a budget large enough for every change; the client decodes with
//! `ClientReplicator::handle_packet` into a sink that only counts calls. Full-state variants
//! encode against the empty state (a client that never acknowledged). Inputs are a precomputed
//! chain of seeded snapshots, so only statewire is timed; the mean packet sizes are printed
//! before the timings.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use statewire_benches::{ENTITIES, NullSink, registry, snapshot_chain};
use statewire_core::{
    ClientConfig, ClientId, ClientReplicator, Registry, ServerConfig, ServerReplicator, Snapshot,
    Tick,
};

/// Snapshots in the precomputed chain; a timed run restarts from the first every `CHAIN - 1`.
const CHAIN: usize = 257;
const SEED: u64 = 0x5747_1e00;
const BUDGET: usize = 64 * 1024;
const ME: ClientId = ClientId(1);

fn server() -> ServerReplicator {
    let mut s = ServerReplicator::new(ServerConfig::default());
    s.add_client(ME).expect("first client");
    s.set_packet_budget(ME, Some(BUDGET)).expect("known client");
    s
}

fn tick(i: usize) -> Tick {
    Tick(i as u32 + 1)
}

/// A server that sent `chain[0]` (as tick 1) and saw it acknowledged.
fn primed_server(reg: &Registry, chain: &[Snapshot]) -> ServerReplicator {
    let mut s = server();
    let mut out = Vec::new();
    s.encode_for(reg, ME, tick(0), &chain[0], &mut out)
        .expect("encode");
    s.handle_ack(ME, tick(0)).expect("ack");
    s
}

/// The packets of the steady-state loop: `[0]` is the full state for tick 1, `[i]` the delta
/// of `chain[i]` against `chain[i - 1]`.
fn delta_packets(reg: &Registry, chain: &[Snapshot]) -> Vec<Vec<u8>> {
    let mut s = server();
    chain
        .iter()
        .enumerate()
        .map(|(i, snap)| {
            let mut out = Vec::new();
            let stats = s
                .encode_for(reg, ME, tick(i), snap, &mut out)
                .expect("encode");
            assert_eq!(stats.pending + stats.oversized, 0, "budget too small");
            s.handle_ack(ME, tick(i)).expect("ack");
            out
        })
        .collect()
}

/// Full-state packets (never acknowledged) for every snapshot of the chain.
fn full_packets(reg: &Registry, chain: &[Snapshot]) -> Vec<Vec<u8>> {
    let mut s = server();
    chain
        .iter()
        .enumerate()
        .map(|(i, snap)| {
            let mut out = Vec::new();
            s.encode_for(reg, ME, tick(i), snap, &mut out)
                .expect("encode");
            out
        })
        .collect()
}

fn report_sizes(name: &str, packets: &[Vec<u8>]) {
    let sizes: Vec<usize> = packets.iter().map(Vec::len).collect();
    let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
    let (min, max) = (
        sizes.iter().min().copied().unwrap_or(0),
        sizes.iter().max().copied().unwrap_or(0),
    );
    println!(
        "{name}: {} packets, bytes per packet mean {mean:.1} (min {min}, max {max}), \
         {:.2} bits per entity in the world",
        sizes.len(),
        mean * 8.0 / ENTITIES as f64,
    );
}

/// Applies `packets[from..]` in order to clients, restarting a fresh client (untimed, primed
/// with `prime` if given) whenever the chain runs out; times only the `handle_packet` calls.
fn timed_decode(reg: &Registry, iters: u64, prime: Option<&[u8]>, packets: &[Vec<u8>]) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    let mut sink = NullSink::default();
    while left > 0 {
        let mut client = ClientReplicator::new(ClientConfig::default());
        if let Some(p) = prime {
            client.handle_packet(reg, p, &mut sink).expect("prime");
        }
        let n = left.min(packets.len() as u64) as usize;
        let start = Instant::now();
        for p in &packets[..n] {
            black_box(client.handle_packet(reg, black_box(p), &mut sink)).expect("decode");
        }
        total += start.elapsed();
        left -= n as u64;
    }
    black_box(sink);
    total
}

fn bench_snapshot(c: &mut Criterion) {
    let reg = registry();
    let chain = snapshot_chain(&reg, CHAIN, SEED);
    let deltas = delta_packets(&reg, &chain);
    let fulls = full_packets(&reg, &chain);
    report_sizes("delta (10% changed, acked baseline)", &deltas[1..]);
    report_sizes("full state (no baseline)", &fulls);

    let mut g = c.benchmark_group("snapshot_1000");
    g.throughput(Throughput::Elements(ENTITIES as u64));

    g.bench_function("encode_delta", |b| {
        let mut out = Vec::with_capacity(BUDGET);
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let mut s = primed_server(&reg, &chain);
                let n = left.min(CHAIN as u64 - 1) as usize;
                let start = Instant::now();
                for (i, snap) in chain.iter().enumerate().skip(1).take(n) {
                    out.clear();
                    let stats = s.encode_for(&reg, ME, tick(i), black_box(snap), &mut out);
                    black_box(stats.expect("encode"));
                    black_box(s.handle_ack(ME, tick(i)).expect("ack"));
                }
                total += start.elapsed();
                left -= n as u64;
            }
            total
        });
    });

    g.bench_function("encode_full", |b| {
        let mut s = server();
        let mut out = Vec::with_capacity(BUDGET);
        // The client never acknowledges, so every packet is against the empty state and ticks
        // only have to keep increasing.
        let mut t = 0u32;
        let mut i = 0usize;
        b.iter(|| {
            t += 1;
            i = (i + 1) % CHAIN;
            out.clear();
            let stats = s.encode_for(&reg, ME, Tick(t), black_box(&chain[i]), &mut out);
            black_box(stats.expect("encode"))
        });
    });

    g.bench_function("decode_delta", |b| {
        b.iter_custom(|iters| timed_decode(&reg, iters, Some(&deltas[0]), &deltas[1..]));
    });

    g.bench_function("decode_full", |b| {
        b.iter_custom(|iters| timed_decode(&reg, iters, None, &fulls));
    });

    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_snapshot
}
criterion_main!(benches);
