//! The game endpoints' cost per tick: a [`GameServer`] with 8 connected [`GameClient`]s over
//! the loopback network, 1,000 server-owned entities of which 100 change per tick (the
//! [`BenchWorld`] of `general.rs`: the testkit's `Pos` and `Rot` on every entity, the bench
//! crate's `Status` on a quarter), the endpoint's default 1,134-byte replication budget, and a
//! virtual clock advanced by 33 ms per tick (no wall clock in the loop).
//!
//! - `endpoint/server_tick_8_clients`: one server tick, timed alone: `update` (the session
//!   reads and opens the clients' 8 sealed acknowledgements, the tick starts), draining
//!   `poll_event`, the game's changes into the store, `resolve_events` (nothing proposed) and
//!   `flush` (replicate: one envelope-tagged packet per client; then seal and send). The
//!   clients' frames run between the timed ticks, so every client reads its packet and
//!   acknowledges it before the next tick (steady state).
//! - `endpoint/client_frame`: one client's `update` (receive, open, decode and apply one tick's
//!   packet, queue its events) + draining `poll_event` + `flush` (its sealed acknowledgement).
//!   The server's tick and the other 7 clients run untimed.
//! - `endpoint/raw_server_tick_8_clients` and `endpoint/raw_client_decode`: the same world and
//!   budget through the bare replicators (`Store` + `ServerReplicator` for 8 clients, each with a
//!   `ClientReplicator`), as `general_tick/*` times them: no session, no sealing, no envelope,
//!   no event queue, acknowledgements handed over directly. The differences to the two above
//!   are what the endpoints add.
//!
//! Before the timings, the setup checks the steady state (all 8 joined, every client holds
//! the server's world, nothing deferred) and prints the bytes of a replication packet.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use statewire::endpoint::{
    GameClient, GameServer, GameServerConfig, GameServerEvent, NoSink, Protocol,
};
use statewire_benches::{BenchWorld, registry};
use statewire_core::{
    ClientConfig, ClientId, ClientReplicator, Registry, ServerConfig, ServerReplicator, Store,
    StoreConfig, Tick,
};
use statewire_transport::Transport;
use statewire_transport::loopback::{LoopbackConfig, LoopbackEndpoint, LoopbackNet};

const SEED: u64 = 0x6e65_7261;
const ENTITIES: usize = 1_000;
const CHANGED: usize = 100;
const CLIENTS: usize = 8;
/// 30 Hz.
const FRAME: Duration = Duration::from_millis(33);

/// Inputs are not sent in these benches (the clients only acknowledge).
type Input = u8;

/// A server and its clients on one loopback network, in steady state.
struct Game {
    world: BenchWorld,
    server: GameServer<LoopbackEndpoint, Input>,
    clients: Vec<GameClient<LoopbackEndpoint, Input>>,
    now: Duration,
    _net: LoopbackNet,
}

impl Game {
    fn new() -> Self {
        let protocol = Protocol::from_registry(registry());
        let net = LoopbackNet::new(LoopbackConfig::default());
        let server_t = net.endpoint();
        let addr = server_t.local_addr();
        let server = GameServer::new(server_t, &protocol, GameServerConfig::default())
            .expect("server config");
        let clients = (0..CLIENTS)
            .map(|_| {
                GameClient::connect(net.endpoint(), addr, &protocol, Duration::ZERO)
                    .expect("client config")
            })
            .collect();
        let mut game = Game {
            world: BenchWorld::generate(ENTITIES, SEED),
            server,
            clients,
            now: Duration::ZERO,
            _net: net,
        };
        // The first tick spawns the world; later ticks carry it to the clients within the
        // budget. Run until everyone joined, holds the whole world and nothing waits.
        let mut joined = 0;
        game.server.update(game.now).expect("update");
        game.world
            .populate(game.server.store_mut())
            .expect("populate");
        game.server.flush(game.now).expect("flush");
        game.clients_frame(None);
        for _ in 0..400 {
            game.now += FRAME;
            game.server.update(game.now).expect("update");
            while let Some(ev) = game.server.poll_event() {
                joined += usize::from(matches!(ev, GameServerEvent::Joined(_)));
            }
            game.server.resolve_events(|_, _| false);
            let deferred = game.server.stats().deferred;
            game.server.flush(game.now).expect("flush");
            game.clients_frame(None);
            if joined == CLIENTS
                && game.server.stats().deferred == deferred
                && game
                    .clients
                    .iter()
                    .all(|c| c.tick() == Some(game.server.tick()))
            {
                break;
            }
        }
        assert_eq!(joined, CLIENTS, "every client joined");
        // A few moving ticks, then check the steady state.
        let before = game.server.stats();
        for _ in 0..8 {
            game.world.step(CHANGED);
            game.server_tick();
            game.clients_frame(None);
        }
        let after = game.server.stats();
        assert_eq!(after.deferred, before.deferred, "nothing deferred");
        assert_eq!(after.budget_exceeded, 0);
        assert_eq!(after.packets - before.packets, 8 * CLIENTS as u64);
        let snap = game.server.store().snapshot();
        for c in &game.clients {
            assert_eq!(c.snapshot(), snap, "client holds the server's world");
        }
        println!(
            "endpoint: {CLIENTS} clients, {ENTITIES} entities, {CHANGED} changed per tick: \
             {:.1} bytes per replication packet (+1 envelope tag byte), {:.1} records",
            (after.replication_bytes - before.replication_bytes) as f64
                / (after.packets - before.packets) as f64,
            (after.records - before.records) as f64 / (after.packets - before.packets) as f64,
        );
        game
    }

    /// One server tick at `self.now + FRAME`: update, events, the world's changes, resolve,
    /// flush.
    fn server_tick(&mut self) {
        self.now += FRAME;
        self.server.update(self.now).expect("update");
        while let Some(ev) = self.server.poll_event() {
            black_box(ev);
        }
        self.world
            .apply_changes(self.server.store_mut())
            .expect("apply");
        black_box(self.server.resolve_events(|_, _| false));
        self.server.flush(self.now).expect("flush");
    }

    /// Every client's frame; the frame of client `timed` (if any) is timed and returned.
    fn clients_frame(&mut self, timed: Option<usize>) -> Duration {
        let mut elapsed = Duration::ZERO;
        let now = self.now;
        for (i, c) in self.clients.iter_mut().enumerate() {
            let start = Instant::now();
            c.update_with_events(now, &mut NoSink)
                .expect("client update");
            while let Some(ev) = c.poll_event() {
                black_box(ev);
            }
            c.flush(now).expect("client flush");
            if timed == Some(i) {
                elapsed = start.elapsed();
            }
        }
        elapsed
    }

    fn timed_server(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            self.world.step(CHANGED);
            let start = Instant::now();
            self.server_tick();
            total += start.elapsed();
            self.clients_frame(None);
        }
        total
    }

    fn timed_client(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            self.world.step(CHANGED);
            self.server_tick();
            total += self.clients_frame(Some(0));
        }
        total
    }
}

/// The same world through the bare replicators, as `general_tick/*` runs it, with 8 clients
/// and the endpoint's budget.
struct Raw {
    world: BenchWorld,
    reg: Registry,
    store: Store,
    server: ServerReplicator,
    clients: Vec<ClientReplicator>,
    packets: Vec<Vec<u8>>,
    tick: u32,
}

impl Raw {
    fn new() -> Self {
        let reg = registry();
        let budget = GameServerConfig::default().replication.max_packet_bytes;
        let mut raw = Raw {
            world: BenchWorld::generate(ENTITIES, SEED),
            store: Store::new(reg.clone(), StoreConfig::default()),
            server: ServerReplicator::new(ServerConfig {
                max_clients: CLIENTS,
                max_packet_bytes: budget,
                ..ServerConfig::default()
            }),
            clients: (0..CLIENTS)
                .map(|_| ClientReplicator::new(ClientConfig::default()))
                .collect(),
            packets: (0..CLIENTS).map(|_| Vec::with_capacity(2048)).collect(),
            reg,
            tick: 1,
        };
        for c in 1..=CLIENTS {
            raw.server.add_client(ClientId(c as u64)).expect("client");
        }
        raw.store.begin_tick(Tick(1)).expect("tick");
        raw.world.populate(&mut raw.store).expect("populate");
        raw.encode_all();
        raw.decode_all(None);
        // Carry the whole world over within the budget, then some moving ticks.
        for _ in 0..64 {
            raw.tick += 1;
            raw.store.begin_tick(Tick(raw.tick)).expect("tick");
            raw.encode_all();
            raw.decode_all(None);
        }
        for _ in 0..8 {
            raw.world.step(CHANGED);
            raw.server_tick();
            raw.decode_all(None);
        }
        let snap = raw.store.snapshot();
        assert!(raw.clients.iter().all(|c| c.snapshot() == snap));
        println!(
            "raw: {} bytes in the last packet to client 1",
            raw.packets[0].len()
        );
        raw
    }

    fn encode_all(&mut self) {
        self.server.update(&mut self.store, None);
        for (c, out) in self.packets.iter_mut().enumerate() {
            out.clear();
            let stats = self
                .server
                .encode_for(&self.store, ClientId(c as u64 + 1), out)
                .expect("encode");
            black_box(stats);
        }
    }

    /// Timed by the caller: the changes into the store, update, 8 packets.
    fn server_tick(&mut self) {
        self.tick += 1;
        self.store.begin_tick(Tick(self.tick)).expect("tick");
        self.world.apply_changes(&mut self.store).expect("apply");
        self.encode_all();
    }

    /// Every client applies its packet and acknowledges; client `timed`'s decode is timed.
    fn decode_all(&mut self, timed: Option<usize>) -> Duration {
        let mut elapsed = Duration::ZERO;
        for (i, (c, p)) in self.clients.iter_mut().zip(&self.packets).enumerate() {
            let start = Instant::now();
            black_box(c.handle_packet(&self.reg, p, &mut NoSink)).expect("decode");
            let ack = c.ack();
            if timed == Some(i) {
                elapsed = start.elapsed();
            }
            self.server
                .handle_ack(ClientId(i as u64 + 1), ack.expect("holds a tick"))
                .expect("ack");
        }
        elapsed
    }

    fn timed_server(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            self.world.step(CHANGED);
            let start = Instant::now();
            self.server_tick();
            total += start.elapsed();
            self.decode_all(None);
        }
        total
    }

    fn timed_client(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            self.world.step(CHANGED);
            self.server_tick();
            total += self.decode_all(Some(0));
        }
        total
    }
}

fn endpoint(c: &mut Criterion) {
    let mut g = c.benchmark_group("endpoint");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let mut game = Game::new();
    let mut raw = Raw::new();
    g.bench_function("server_tick_8_clients", |b| {
        b.iter_custom(|iters| game.timed_server(iters));
    });
    g.bench_function("raw_server_tick_8_clients", |b| {
        b.iter_custom(|iters| raw.timed_server(iters));
    });
    g.bench_function("client_frame", |b| {
        b.iter_custom(|iters| game.timed_client(iters));
    });
    g.bench_function("raw_client_decode", |b| {
        b.iter_custom(|iters| raw.timed_client(iters));
    });
    g.finish();
}

criterion_group!(benches, endpoint);
criterion_main!(benches);
