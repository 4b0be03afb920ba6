//! The general snapshot path at scale: one server tick encoded for every client, for 1,000 and
//! 10,000 entities, 1 and 64 clients, 10 % of the entities changed per tick, with positions
//! bit-packed or entropy-coded (`ComponentCoding`). Every client acknowledged the previous
//! tick (steady state) and the budget holds every change. Bytes per client packet are printed
//! before the timings.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use statewire_benches::{BenchWorld, Pos, registry};
use statewire_core::{
    ClientId, ComponentCoding, Registry, ServerConfig, ServerReplicator, Snapshot, Tick,
};

const SEED: u64 = 0x6e65_7261;
const BUDGET: usize = 1 << 20;
const CHAIN: usize = 9;

fn reg(coding: ComponentCoding) -> Registry {
    let mut r = registry();
    r.set_coding::<Pos>(coding).expect("Pos is registered");
    r
}

fn chain(reg: &Registry, entities: usize) -> Vec<Snapshot> {
    let mut world = BenchWorld::generate(entities, SEED);
    (0..CHAIN)
        .map(|i| {
            if i > 0 {
                world.step(entities / 10);
            }
            world.snapshot(reg)
        })
        .collect()
}

/// A server with `clients` clients that all received and acknowledged `chain[0]` as tick 1.
fn server(reg: &Registry, clients: u64, first: &Snapshot) -> ServerReplicator {
    let mut s = ServerReplicator::new(ServerConfig {
        max_clients: clients as usize,
        ..ServerConfig::default()
    });
    let mut out = Vec::new();
    for c in 1..=clients {
        s.add_client(ClientId(c)).expect("client");
        s.set_packet_budget(ClientId(c), Some(BUDGET))
            .expect("client");
        out.clear();
        s.encode_for(reg, ClientId(c), Tick(1), first, &mut out)
            .expect("encode");
        s.handle_ack(ClientId(c), Tick(1)).expect("ack");
    }
    s
}

fn general(c: &mut Criterion) {
    let mut g = c.benchmark_group("general_tick");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for entities in [1_000usize, 10_000] {
        for coding in [ComponentCoding::Packed, ComponentCoding::Entropy] {
            let reg = reg(coding);
            let snaps = chain(&reg, entities);
            for clients in [1u64, 64] {
                let name = format!("{entities}e_{clients}c_{coding:?}").to_lowercase();
                // Size of one client's steady-state packet, for the record.
                let mut s = server(&reg, 1, &snaps[0]);
                let mut out = Vec::new();
                s.encode_for(&reg, ClientId(1), Tick(2), &snaps[1], &mut out)
                    .expect("encode");
                println!("{name}: {} bytes per client packet", out.len());
                g.throughput(Throughput::Elements(entities as u64 * clients));
                g.bench_function(BenchmarkId::from_parameter(&name), |b| {
                    b.iter_batched_ref(
                        || (server(&reg, clients, &snaps[0]), Vec::with_capacity(BUDGET)),
                        |(s, out)| {
                            // One tick: every client gets the delta of chain[1] against tick 1.
                            for c in 1..=clients {
                                out.clear();
                                s.encode_for(&reg, ClientId(c), Tick(2), &snaps[1], out)
                                    .expect("encode");
                                black_box(out.len());
                            }
                        },
                        criterion::BatchSize::LargeInput,
                    );
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, general);
criterion_main!(benches);
