//! The general replication path at scale: one server tick on the incremental [`Store`] — the
//! game's changes applied with `Store::set` (only the entities that changed), one
//! `ServerReplicator::update`, then one packet encoded for every client — for 1,000 and 10,000
//! entities, 1 and 64 clients, 10 % of the entities changed per tick, with positions bit-packed
//! or entropy-coded (`ComponentCoding`). Every client acknowledged the previous tick (steady
//! state) and the budget holds every change. Bytes per client packet and per changed entity are
//! printed before the timings.
//!
//! `scale/*`: 10,000 entities of which 1,000 move per tick, with one and two clients (their
//! difference is the cost of an extra client), and 64 clients with interest (radius ≈ 178 over
//! a 1000 × 1000 plane, about 10 % of it) and a 1,200-byte budget.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use statewire_benches::{BenchWorld, Pos, SplitMix64, registry};
use statewire_core::{
    AckFrame, ClientId, ComponentCoding, Registry, ServerConfig, ServerReplicator, Store,
    StoreConfig, Tick,
};

const SEED: u64 = 0x6e65_7261;
const BUDGET: usize = 1 << 20;

fn reg(coding: ComponentCoding) -> Registry {
    let mut r = registry();
    r.set_coding::<Pos>(coding).expect("Pos is registered");
    r
}

/// A game world, its store and a server with `clients` clients, all of which received and
/// acknowledged the full state as tick 1.
struct Rig {
    world: BenchWorld,
    store: Store,
    server: ServerReplicator,
    clients: u64,
    tick: u32,
    out: Vec<u8>,
}

impl Rig {
    fn new(reg: &Registry, entities: usize, clients: u64, config: ServerConfig) -> Self {
        let world = BenchWorld::generate(entities, SEED);
        let mut store = Store::new(reg.clone(), StoreConfig::default());
        store.begin_tick(Tick(1)).expect("tick");
        world.populate(&mut store).expect("populate");
        let mut server = ServerReplicator::new(ServerConfig {
            max_clients: clients as usize,
            ..config
        });
        for c in 1..=clients {
            server.add_client(ClientId(c)).expect("client");
        }
        let mut rig = Rig {
            world,
            store,
            server,
            clients,
            tick: 1,
            out: Vec::with_capacity(BUDGET),
        };
        rig.encode_all();
        rig.ack_all();
        rig
    }

    /// Encodes the current tick for every client; returns the bytes of the last packet.
    fn encode_all(&mut self) -> usize {
        self.server.update(&mut self.store, None);
        let mut last = 0;
        for c in 1..=self.clients {
            self.out.clear();
            let stats = self
                .server
                .encode_for(&self.store, ClientId(c), &mut self.out)
                .expect("encode");
            black_box(stats);
            last = self.out.len();
        }
        last
    }

    fn ack_all(&mut self) {
        for c in 1..=self.clients {
            self.server
                .handle_ack(ClientId(c), AckFrame::single(Tick(self.tick)))
                .expect("ack");
        }
    }

    /// The game's step, untimed: `changed` entities change.
    fn step_world(&mut self, changed: usize) {
        self.tick += 1;
        self.world.step(changed);
    }

    /// One server tick, timed by the caller: the changes into the store, update, encode.
    fn server_tick(&mut self) -> usize {
        self.store.begin_tick(Tick(self.tick)).expect("tick");
        self.world.apply_changes(&mut self.store).expect("apply");
        self.encode_all()
    }

    /// Times `iters` steady-state ticks with `changed` changes each.
    fn timed(&mut self, iters: u64, changed: usize) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            self.step_world(changed);
            let start = Instant::now();
            black_box(self.server_tick());
            total += start.elapsed();
            self.ack_all();
        }
        total
    }

    /// A few untimed ticks; prints the bytes of one client packet.
    fn report(&mut self, name: &str, changed: usize) {
        let mut bytes = 0;
        for _ in 0..4 {
            self.step_world(changed);
            bytes = self.server_tick();
            self.ack_all();
        }
        println!(
            "{name}: {bytes} bytes per client packet, {:.2} bytes per changed entity",
            bytes as f64 / changed as f64
        );
    }
}

/// Every change fits (the first packet included).
fn unlimited() -> ServerConfig {
    ServerConfig {
        max_packet_bytes: BUDGET,
        ..ServerConfig::default()
    }
}

fn general(c: &mut Criterion) {
    let mut g = c.benchmark_group("general_tick");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for entities in [1_000usize, 10_000] {
        let changed = entities / 10;
        for coding in [ComponentCoding::Packed, ComponentCoding::Entropy] {
            let reg = reg(coding);
            for clients in [1u64, 64] {
                let name = format!("{entities}e_{clients}c_{coding:?}").to_lowercase();
                let mut rig = Rig::new(&reg, entities, clients, unlimited());
                if clients == 1 {
                    rig.report(&name, changed);
                }
                g.throughput(Throughput::Elements(entities as u64 * clients));
                g.bench_function(BenchmarkId::from_parameter(&name), |b| {
                    b.iter_custom(|iters| rig.timed(iters, changed));
                });
            }
        }
    }
    g.finish();
}

fn scale(c: &mut Criterion) {
    let mut g = c.benchmark_group("scale");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let reg = reg(ComponentCoding::Packed);
    for clients in [1u64, 2] {
        let name = format!("10000e_1000m_{clients}c");
        let mut rig = Rig::new(&reg, 10_000, clients, unlimited());
        if clients == 1 {
            rig.report(&name, 1_000);
        }
        g.bench_function(BenchmarkId::from_parameter(&name), |b| {
            b.iter_custom(|iters| rig.timed(iters, 1_000));
        });
    }

    // 64 clients with interest: radius covering ~10 % of the 1000 × 1000 plane, each viewer at
    // a random entity's position, a 1,200-byte budget.
    let radius = (0.1f32 * 1000.0 * 1000.0 / std::f32::consts::PI).sqrt();
    let config = ServerConfig {
        max_packet_bytes: 1200,
        interest_radius: radius,
        ..ServerConfig::default()
    };
    let world = BenchWorld::generate(10_000, SEED);
    let mut rng = SplitMix64::new(SEED ^ 0x1e);
    let viewers: Vec<[f32; 2]> = (0..64)
        .map(|_| {
            let e = &world.entities[rng.below(world.entities.len() as u64) as usize];
            [e.pos.x, e.pos.y]
        })
        .collect();
    drop(world);
    let mut rig = Rig::new(&reg, 10_000, 64, config);
    for (c, v) in viewers.iter().enumerate() {
        rig.server
            .set_viewer(ClientId(c as u64 + 1), Some(*v), None)
            .expect("client");
    }
    // Let the views fill (full interest passes, entering entities) before measuring.
    let mut bytes = 0;
    for _ in 0..64 {
        rig.step_world(1_000);
        bytes = rig.server_tick();
        rig.ack_all();
    }
    let views: usize = (1..=64)
        .map(|c| rig.server.view_len(ClientId(c)).unwrap_or(0))
        .sum();
    println!(
        "64c_10000e_interest: radius {radius:.1}, mean view {:.0} entities, last packet {bytes} \
         bytes, replication memory {} bytes (store {} + server {})",
        views as f64 / 64.0,
        rig.store.memory_bytes() + rig.server.memory_bytes(),
        rig.store.memory_bytes(),
        rig.server.memory_bytes(),
    );
    g.bench_function("64c_10000e_interest", |b| {
        b.iter_custom(|iters| rig.timed(iters, 1_000));
    });
    g.finish();
}

criterion_group!(benches, general, scale);
criterion_main!(benches);
