//! Where a server tick goes, and its percentiles: 10,000 entities of which 1,000 move per
//! tick, with N clients that all see everything (no budget), or with `--interest` 64 clients
//! each seeing about 10 % of a 1000 × 1000 plane under a 1,200-byte budget. Prints the mean
//! time of the store changes, `update` and encoding, the median and 99th percentile of the
//! whole tick over 300 ticks, and the replication memory (library accounting).
//!
//! ```sh
//! cargo run --release -p statewire-benches --example tick_profile -- 1
//! cargo run --release -p statewire-benches --example tick_profile -- --interest
//! ```
//! Timed with `Instant` around library calls only (the world's own step and the acks are
//! outside); criterion benches in `benches/general.rs` hold the same workloads.

use std::process::ExitCode;
use std::time::Instant;

use statewire_benches::{BenchWorld, SplitMix64, registry};
use statewire_core::{
    AckFrame, ClientId, ServerConfig, ServerReplicator, Store, StoreConfig, Tick,
};

const SEED: u64 = 0x6e65_7261;
const TICKS: u32 = 300;
const WARM_UP: u32 = 64;

fn main() -> ExitCode {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "1".into());
    let interest = arg == "--interest";
    let clients: u64 = if interest {
        64
    } else {
        match arg.parse() {
            Ok(n) if (1..=1024).contains(&n) => n,
            _ => {
                eprintln!("tick_profile: expected a client count (1..=1024) or --interest");
                return ExitCode::from(2);
            }
        }
    };
    let reg = registry();
    let mut world = BenchWorld::generate(10_000, SEED);
    let mut store = Store::new(reg.clone(), StoreConfig::default());
    store.begin_tick(Tick(1)).expect("tick");
    world.populate(&mut store).expect("populate");
    let config = if interest {
        ServerConfig {
            max_packet_bytes: 1200,
            interest_radius: (0.1f32 * 1000.0 * 1000.0 / std::f32::consts::PI).sqrt(),
            max_clients: clients as usize,
            ..ServerConfig::default()
        }
    } else {
        ServerConfig {
            max_packet_bytes: 1 << 20,
            max_clients: clients as usize,
            ..ServerConfig::default()
        }
    };
    let mut server = ServerReplicator::new(config);
    let mut rng = SplitMix64::new(SEED ^ 0x1e);
    for c in 1..=clients {
        server.add_client(ClientId(c)).expect("client");
        if interest {
            let e = &world.entities[rng.below(world.entities.len() as u64) as usize];
            server
                .set_viewer(ClientId(c), Some([e.pos.x, e.pos.y]), None)
                .expect("client");
        }
    }
    let mut out = Vec::new();
    let (mut store_ns, mut update_ns, mut encode_ns) = (0u128, 0u128, 0u128);
    let mut ticks_us = Vec::new();
    for t in 1..=WARM_UP + TICKS {
        if t > 1 {
            world.step(1000);
        }
        let a = Instant::now();
        if t > 1 {
            store.begin_tick(Tick(t)).expect("tick");
            world.apply_changes(&mut store).expect("apply");
        }
        let b = Instant::now();
        server.update(&mut store, None);
        let c0 = Instant::now();
        for c in 1..=clients {
            out.clear();
            server
                .encode_for(&store, ClientId(c), &mut out)
                .expect("encode");
        }
        let d = Instant::now();
        for c in 1..=clients {
            server
                .handle_ack(ClientId(c), AckFrame::single(Tick(t)))
                .expect("ack");
        }
        if t > WARM_UP {
            store_ns += (b - a).as_nanos();
            update_ns += (c0 - b).as_nanos();
            encode_ns += (d - c0).as_nanos();
            ticks_us.push((d - a).as_micros());
        }
    }
    ticks_us.sort_unstable();
    let n = u128::from(TICKS) * 1000;
    println!(
        "{} clients{}: store {} µs, update {} µs, encode {} µs ({} µs per client); tick p50 {} µs, \
         p99 {} µs; replication memory {} B (store {} + server {})",
        clients,
        if interest { " with interest" } else { "" },
        store_ns / n,
        update_ns / n,
        encode_ns / n,
        encode_ns / n / u128::from(clients),
        ticks_us[ticks_us.len() / 2],
        ticks_us[ticks_us.len() * 99 / 100],
        store.memory_bytes() + server.memory_bytes(),
        store.memory_bytes(),
        server.memory_bytes(),
    );
    ExitCode::SUCCESS
}
