//! Snapshot encode and decode for 1,000 entities with 10 % of them changed per tick.
//!
//! Steady state: the server encodes each tick against the client's acknowledgement of the
//! previous tick (`encode_delta` times applying the tick's changes to the store, the update and
//! the encode), with a budget large enough for every change; the client decodes with
//! `ClientReplicator::handle_packet` into a sink that only counts calls. Full-state variants
//! encode for a client that holds nothing. The world is seeded and changes reach the
//! `Store` with `Store::set` for only the changed entities; the game's own step is not timed;
//! the mean packet sizes are printed before the timings.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use statewire_benches::{BenchWorld, CHANGED_PER_TICK, ENTITIES, NullSink, registry};
use statewire_core::{
    AckFrame, ClientConfig, ClientId, ClientReplicator, Registry, ServerConfig, ServerReplicator,
    Store, StoreConfig, Tick,
};

/// Ticks in the precomputed packet chains; a timed decode restarts from the first every
/// `CHAIN - 1`.
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

/// The seeded world, its store holding it as tick 1, and a server that sent it and saw it
/// acknowledged.
fn primed(reg: &Registry) -> (BenchWorld, Store, ServerReplicator) {
    let world = BenchWorld::generate(ENTITIES, SEED);
    let mut store = Store::new(reg.clone(), StoreConfig::default());
    store.begin_tick(tick(0)).expect("tick");
    world.populate(&mut store).expect("populate");
    let mut s = server();
    s.update(&mut store, None);
    let mut out = Vec::new();
    s.encode_for(&store, ME, &mut out).expect("encode");
    s.handle_ack(ME, AckFrame::single(tick(0))).expect("ack");
    (world, store, s)
}

/// One packet per tick of the seeded chain (tick 0 populates the world, later ticks move
/// `CHANGED_PER_TICK` entities), each made by `encode` from the store at that tick.
fn chain_packets(
    reg: &Registry,
    mut encode: impl FnMut(&mut ServerReplicator, &mut Store, usize, &mut Vec<u8>),
) -> Vec<Vec<u8>> {
    let mut world = BenchWorld::generate(ENTITIES, SEED);
    let mut store = Store::new(reg.clone(), StoreConfig::default());
    let mut s = server();
    (0..CHAIN)
        .map(|i| {
            store.begin_tick(tick(i)).expect("tick");
            if i == 0 {
                world.populate(&mut store).expect("populate");
            } else {
                world.step(CHANGED_PER_TICK);
                world.apply_changes(&mut store).expect("apply");
            }
            let mut out = Vec::new();
            encode(&mut s, &mut store, i, &mut out);
            out
        })
        .collect()
}

/// The packets of the steady-state loop: `[0]` is the full state for tick 1, `[i]` the delta
/// of tick `i + 1` against the acknowledged tick `i`.
fn delta_packets(reg: &Registry) -> Vec<Vec<u8>> {
    chain_packets(reg, |s, store, i, out| {
        s.update(store, None);
        let stats = s.encode_for(store, ME, out).expect("encode");
        assert_eq!(stats.pending + stats.oversized, 0, "budget too small");
        s.handle_ack(ME, AckFrame::single(tick(i))).expect("ack");
    })
}

/// Encodes the full state of `store` for a client that holds nothing (a fresh one).
fn encode_full(s: &mut ServerReplicator, store: &mut Store, out: &mut Vec<u8>) {
    s.remove_client(ME);
    s.add_client(ME).expect("client");
    s.set_packet_budget(ME, Some(BUDGET)).expect("client");
    s.update(store, None);
    let stats = s.encode_for(store, ME, out).expect("encode");
    assert_eq!(stats.pending + stats.oversized, 0, "budget too small");
}

/// Full-state packets (to a client holding nothing) for every tick of the chain.
fn full_packets(reg: &Registry) -> Vec<Vec<u8>> {
    chain_packets(reg, |s, store, _, out| encode_full(s, store, out))
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
    let deltas = delta_packets(&reg);
    let fulls = full_packets(&reg);
    report_sizes("delta (10% changed, acked baseline)", &deltas[1..]);
    report_sizes("full state (no baseline)", &fulls);

    let mut g = c.benchmark_group("snapshot_1000");
    g.throughput(Throughput::Elements(ENTITIES as u64));

    // One tick: the changed entities set in the store, update, encode, then the ack.
    g.bench_function("encode_delta", |b| {
        let (mut world, mut store, mut s) = primed(&reg);
        let mut i = 0usize;
        let mut out = Vec::with_capacity(BUDGET);
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                i += 1;
                world.step(CHANGED_PER_TICK);
                let start = Instant::now();
                store.begin_tick(tick(i)).expect("tick");
                world.apply_changes(&mut store).expect("apply");
                s.update(&mut store, None);
                out.clear();
                black_box(s.encode_for(&store, ME, &mut out).expect("encode"));
                black_box(s.handle_ack(ME, AckFrame::single(tick(i))).expect("ack"));
                total += start.elapsed();
            }
            total
        });
    });

    // The whole world for a client that holds nothing (client added, update, encode).
    g.bench_function("encode_full", |b| {
        let (_, mut store, mut s) = primed(&reg);
        let mut out = Vec::with_capacity(BUDGET);
        b.iter(|| {
            out.clear();
            encode_full(&mut s, &mut store, &mut out);
            black_box(out.len())
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
