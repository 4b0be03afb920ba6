//! The run loop the hecs and bevy examples share: a server world and [`CLIENTS`] client worlds
//! of one ECS, over loopback wrapped in netsim ([`PROFILE`] both ways), driven tick by tick.
//! Each example supplies its ECS through [`Engine`]. The end-of-run checks ([`check_store`],
//! [`check_client`], [`verify_client_world`]) are here too; the plain-`Vec` example uses the
//! first two.
//!
//! # Feeding the store
//!
//! Once per tick the runner starts a tick on the server's [`Store`] and asks the engine to
//! [`sync`](Engine::sync) into it: to tell the store what changed since the previous tick, and
//! nothing else. That is what keeps the store's and the replicator's work per tick proportional
//! to the number of changes: an entity nobody touched costs them nothing. Each engine finds its
//! changes its own way (a list of dirty ids, hecs's `ChangeTracker`, bevy's change detection);
//! see the examples' module docs.
//!
//! [`Engine::build`] still writes the whole replicated state into a snapshot, but only for the
//! end-of-run check that the store equals the world ([`check_store`]), so that a change the
//! sync missed shows up as an error instead of as a client that quietly agrees with a wrong
//! server. An engine that truly cannot say what changed could implement `sync` as `build` plus
//! [`Store::apply_snapshot`] (the store then diffs the whole world every tick); none of these
//! examples needs that fallback.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use statewire_core::{
    AckFrame, Applied, ClientConfig, ClientId, ClientReplicator, EntityId, Owner, Registry,
    ServerConfig, ServerReplicator, Snapshot, SnapshotBuilder, Store, StoreConfig, StoreError,
    Tick, WorldSink,
};
use statewire_transport::Transport;
use statewire_transport::loopback::{LoopbackConfig, LoopbackEndpoint, LoopbackNet};
use statewire_transport::netsim::{LinkConfig, NetSim};

use crate::game::{
    self, ANGLE_STEP, GameEvents, GameRng, Health, POSITION_STEP, TICK_HZ, Transform,
};
use crate::{ClientSummary, RunError, Summary};

/// Ticks without changes after the active ones. Three seconds: the `poor` profile's round trip
/// is about 400 ms, and a few lost packets in a row only cost a tick each.
pub const QUIET_TICKS: u32 = 90;
/// Clients in a run.
pub const CLIENTS: u64 = 2;
/// The netsim profile both directions use.
pub const PROFILE: &str = "poor";

/// One ECS plugged into [`run`]: its server world and its client worlds.
pub(crate) trait Engine: Sized {
    /// The client-side world (a [`WorldSink`]).
    type Client: WorldSink;
    /// The example's name in the summary.
    const EXAMPLE: &'static str;
    /// The ECS's name in error messages.
    const WORLD: &'static str;
    /// A server world with one player per client.
    fn new(clients: &[ClientId], rng: &mut GameRng) -> Self;
    /// One tick of the game script.
    fn step(&mut self, tick: u32, rng: &mut GameRng);
    /// Applies to `store` what changed in the world since the previous call (on the first call:
    /// everything). The runner has already called [`Store::begin_tick`].
    fn sync(&mut self, store: &mut Store) -> Result<(), StoreError>;
    /// Writes every replicated entity into `builder`. Only for checks: the runner compares the
    /// snapshot it makes with the store ([`check_store`]).
    fn build(&mut self, builder: &mut SnapshotBuilder<'_>);
    /// Replicated entities now.
    fn replicated_len(&mut self) -> usize;
    /// What the script did so far.
    fn events(&self) -> GameEvents;
    /// An empty client world.
    fn client(&self) -> Self::Client;
    /// Changes the client world could not apply.
    fn client_errors(client: &Self::Client) -> u64;
    /// Checks `client` against `snapshot` and the server's own state.
    fn verify(
        &self,
        registry: &Registry,
        snapshot: &Snapshot,
        client: &Self::Client,
    ) -> Result<(), String>;
}

/// The end-of-run check every example makes of its server: the store, fed only with the
/// changes the engine tracked, holds exactly what a snapshot rebuilt from the whole world
/// (`rebuilt`) holds. Returns the first entity that differs.
pub(crate) fn check_store(
    registry: &Registry,
    store: &Store,
    rebuilt: &Snapshot,
) -> Result<(), String> {
    let state = store.snapshot();
    if state == *rebuilt {
        return Ok(());
    }
    // What one side holds for `id`, dequantized: enough to name the difference.
    let entry = |s: &Snapshot, id| {
        (
            s.owner(id),
            s.component::<Transform>(registry, id),
            s.component::<Health>(registry, id),
        )
    };
    let first = state
        .entity_ids()
        .chain(rebuilt.entity_ids())
        .filter(|&id| entry(&state, id) != entry(rebuilt, id))
        .min();
    let detail = match first {
        Some(id) => format!(
            "{id}: {:?} in the store, {:?} in the world (owner, transform, health)",
            entry(&state, id),
            entry(rebuilt, id)
        ),
        None => "they differ below the dequantized values".to_string(),
    };
    Err(format!(
        "the store ({} entities) does not match a snapshot rebuilt from the world ({}): \
         {detail}",
        state.len(),
        rebuilt.len()
    ))
}

/// The end-of-run checks every example makes of a client before comparing its world: its
/// replicator's `state` is bit-exact the server's (`snapshot`, taken from the server's store),
/// and its `world` sink rejected nothing.
pub(crate) fn check_client(
    state: &Snapshot,
    snapshot: &Snapshot,
    world: &str,
    sink_errors: u64,
) -> Result<(), String> {
    if state != snapshot {
        return Err(format!(
            "its replicator holds {} entities (state hash {:016x}), the server's store {} \
             ({:016x})",
            state.len(),
            state.state_hash(),
            snapshot.len(),
            snapshot.state_hash()
        ));
    }
    if sink_errors != 0 {
        return Err(format!("its {world} world rejected {sink_errors} changes"));
    }
    Ok(())
}

/// What a client's ECS world holds for one replicated entity: the ECS's entity handle, the
/// owner and the replicated components.
pub(crate) type ClientEntity<H> = (H, Owner, Option<Transform>, Option<Health>);

/// The ECS-independent part of the hecs and bevy examples' `verify`: checks a client world
/// against `snapshot` (the server's quantized state) and the server's unquantized transforms.
///
/// - `world`: the ECS's name, `owner`: its owner component's name (for messages);
/// - `entries`: every entity of the client world with a net id and an owner, as (id, what it
///   holds); `total`: all entities of the client world;
/// - `handle`: the client's id map; `server`: the server's (id, transform) pairs.
///
/// Returns the first difference.
#[allow(clippy::too_many_arguments)]
pub(crate) fn verify_client_world<H: Copy + PartialEq>(
    world: &str,
    owner: &str,
    registry: &Registry,
    snapshot: &Snapshot,
    entries: impl IntoIterator<Item = (EntityId, ClientEntity<H>)>,
    total: usize,
    handle: impl Fn(EntityId) -> Option<H>,
    server: impl IntoIterator<Item = (EntityId, Transform)>,
) -> Result<(), String> {
    let mut seen: BTreeMap<EntityId, ClientEntity<H>> = BTreeMap::new();
    for (id, entry) in entries {
        if seen.insert(id, entry).is_some() {
            return Err(format!("{id} appears twice in the client's {world} world"));
        }
    }
    if total != seen.len() {
        return Err(format!(
            "the client's {world} world has {} entities without a NetId or {owner}",
            total - seen.len()
        ));
    }
    let expected: Vec<EntityId> = snapshot.entity_ids().collect();
    if !seen.keys().eq(expected.iter()) {
        let only_client: Vec<_> = seen.keys().filter(|id| !snapshot.contains(**id)).collect();
        let only_server: Vec<_> = expected
            .iter()
            .filter(|id| !seen.contains_key(id))
            .collect();
        return Err(format!(
            "entity sets differ: only on the client {only_client:?}, only on the server \
             {only_server:?}"
        ));
    }
    for (&id, &(e, owner, t, h)) in &seen {
        if handle(id) != Some(e) {
            return Err(format!("{id}: the client's id map points elsewhere"));
        }
        let server_owner = snapshot.owner(id);
        if server_owner != Some(owner) {
            return Err(format!(
                "{id}: owner {owner} on the client, {server_owner:?} on the server"
            ));
        }
        let st = snapshot.component::<Transform>(registry, id);
        if st != t {
            return Err(format!(
                "{id}: transform {t:?} on the client, {st:?} in the server's snapshot"
            ));
        }
        let sh = snapshot.component::<Health>(registry, id);
        if sh != h {
            return Err(format!(
                "{id}: health {h:?} on the client, {sh:?} in the server's snapshot"
            ));
        }
    }
    // Half a step, plus the rounding of converting the dequantized f64 back to f32.
    let near = |a: f32, b: f32, step: f32| (a - b).abs() <= step * 0.5 + 1e-4;
    for (id, t) in server {
        let Some(c) = seen.get(&id).and_then(|s| s.2) else {
            return Err(format!("{id}: no transform on the client"));
        };
        if !(near(c.x, t.x, POSITION_STEP)
            && near(c.y, t.y, POSITION_STEP)
            && near(c.angle, t.angle, ANGLE_STEP))
        {
            return Err(format!(
                "{id}: client transform {c:?} is not within half a step of the server's {t:?}"
            ));
        }
    }
    Ok(())
}

/// One client: its link, replicator and world.
struct Peer<E: Engine> {
    id: ClientId,
    addr: SocketAddr,
    net: NetSim<LoopbackEndpoint>,
    repl: ClientReplicator,
    world: E::Client,
    summary: ClientSummary,
}

/// Runs engine `E` for `ticks` active ticks and [`QUIET_TICKS`] quiet ones with [`CLIENTS`] clients over
/// loopback + netsim ([`PROFILE`]), all randomness drawn from `seed`, then checks every client
/// against the server ([`Engine::verify`]).
///
/// Snapshots travel server → client as the replicator's packets, unframed; acks travel back as
/// the acknowledged tick in 4 little-endian bytes. Both directions are impaired.
pub(crate) fn run<E: Engine>(seed: u64, ticks: u32) -> Result<Summary, RunError> {
    let registry = game::registry()?;
    let link = LinkConfig::profile(PROFILE).expect("a built-in netsim profile");
    let net = LoopbackNet::new(LoopbackConfig::default());
    let mut server_net = NetSim::new(net.endpoint(), link.clone(), seed);
    let server_addr = server_net.local_addr();

    let ids: Vec<ClientId> = (1..=CLIENTS).map(ClientId).collect();
    let mut server = ServerReplicator::new(ServerConfig::default());
    // The replicator reads the server's state from this store; the engine tells it what changed
    // each tick (`Engine::sync`).
    let mut store = Store::new(registry.clone(), StoreConfig::default());
    let mut rng = GameRng::new(seed);
    let mut game = E::new(&ids, &mut rng);
    let mut peers: Vec<Peer<E>> = Vec::new();
    let mut by_addr = HashMap::new();
    for (i, &id) in ids.iter().enumerate() {
        server.add_client(id)?;
        let endpoint = net.endpoint();
        let addr = endpoint.local_addr();
        by_addr.insert(addr, id);
        // Each link gets its own stream of randomness derived from the seed.
        let link_seed = seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        peers.push(Peer {
            id,
            addr,
            net: NetSim::new(endpoint, link.clone(), link_seed),
            repl: ClientReplicator::new(ClientConfig::default()),
            world: game.client(),
            summary: ClientSummary {
                client: id,
                applied: 0,
                stale: 0,
                decode_errors: 0,
                sink_errors: 0,
                bytes_received: 0,
                matched_after: None,
            },
        });
    }

    let mut buf = vec![0u8; 65_536];
    let mut packet = Vec::new();
    let (mut acks_sent, mut bad_acks) = (0u64, 0u64);

    for t in 0..ticks + QUIET_TICKS {
        let active = t < ticks;
        let now = Duration::from_micros(u64::from(t) * 1_000_000 / u64::from(TICK_HZ));
        let tick = Tick(t + 1);
        // The drain rule: advance every simulator, then read until empty, then send.
        server_net.advance_to(now)?;
        for p in &mut peers {
            p.net.advance_to(now)?;
        }

        while let Some(got) = server_net.recv(&mut buf)? {
            let from = by_addr.get(&got.from);
            let ack = AckFrame::decode(&buf[..got.len]);
            let (Some(&from), Some(ack)) = (from, ack) else {
                bad_acks += 1;
                continue;
            };
            // A peer's bad ack is that peer's problem: count it, never stop the server.
            if server.handle_ack(from, ack).is_err() {
                bad_acks += 1;
            }
        }

        if active {
            game.step(t, &mut rng);
        }
        // Only what the step changed reaches the store; in the quiet ticks that is nothing.
        store.begin_tick(tick)?;
        game.sync(&mut store)?;
        server.update(&mut store, None);
        // The server's whole state, to see when each client first matches it. Rebuilding it
        // walks the store, so only while some client has yet to match in the quiet period.
        let server_state = (!active && peers.iter().any(|p| p.summary.matched_after.is_none()))
            .then(|| store.snapshot());
        for p in &peers {
            packet.clear();
            // One client's failure (a send error) skips that client this tick.
            if server.encode_for(&store, p.id, &mut packet).is_err() {
                continue;
            }
            let _ = server_net.send(p.addr, &packet);
        }

        for p in &mut peers {
            while let Some(got) = p.net.recv(&mut buf)? {
                p.summary.bytes_received += got.len as u64;
                match p
                    .repl
                    .handle_packet(&registry, &buf[..got.len], &mut p.world)
                {
                    Ok(Applied::Applied(_)) => p.summary.applied += 1,
                    Ok(_) => p.summary.stale += 1,
                    Err(_) => p.summary.decode_errors += 1,
                }
            }
            if let Some(ack) = p.repl.ack() {
                p.net.send(server_addr, &ack.encode())?;
                acks_sent += 1;
            }
            if p.summary.matched_after.is_none()
                && server_state
                    .as_ref()
                    .is_some_and(|state| p.repl.snapshot() == *state)
            {
                p.summary.matched_after = Some(t - ticks + 1);
            }
        }
    }

    // The store was only ever told about changes; check that it missed none by comparing it
    // with a snapshot rebuilt from the whole world. Then the clients are compared with the
    // store, which is what the replicator actually sent from.
    let mut builder = SnapshotBuilder::new(&registry);
    game.build(&mut builder);
    let rebuilt = builder.finish()?;
    check_store(&registry, &store, &rebuilt)
        .map_err(|detail| RunError::StoreOutOfSync { seed, detail })?;
    let snapshot = store.snapshot();
    for p in &mut peers {
        p.summary.sink_errors = E::client_errors(&p.world);
        let diverged = |detail: String| RunError::Diverged {
            seed,
            client: p.id,
            detail,
        };
        check_client(
            &p.repl.snapshot(),
            &snapshot,
            E::WORLD,
            p.summary.sink_errors,
        )
        .map_err(diverged)?;
        game.verify(&registry, &snapshot, &p.world)
            .map_err(diverged)?;
    }

    let down = server_net.stats();
    let lost = |s: statewire_transport::netsim::NetSimStats| {
        s.dropped_loss + s.dropped_burst + s.dropped_mtu + s.dropped_bandwidth + s.dropped_overflow
    };
    Ok(Summary {
        example: E::EXAMPLE,
        seed,
        link: format!(
            "loopback + netsim profile {PROFILE:?} both ways ({bad_acks} malformed acks)"
        ),
        ticks,
        quiet_ticks: QUIET_TICKS,
        entities: game.replicated_len(),
        events: game.events(),
        packets_sent: down.sent,
        packets_lost: lost(down),
        acks_sent,
        acks_lost: peers.iter().map(|p| lost(p.net.stats())).sum(),
        clients: peers.into_iter().map(|p| p.summary).collect(),
    })
}

/// Test helper for every example: runs `game` for `ticks` active ticks and a few quiet ones,
/// feeding `store` only through `sync`, and after every tick asserts that the store equals a
/// snapshot rebuilt from the whole world (`build`), so a change the sync misses fails on the
/// tick it happens. Quiet ticks must record no change at all. Returns the store.
#[cfg(test)]
pub(crate) fn assert_store_tracks_world<G>(
    game: &mut G,
    rng: &mut GameRng,
    ticks: u32,
    step: impl Fn(&mut G, u32, &mut GameRng),
    sync: impl Fn(&mut G, &mut Store) -> Result<(), StoreError>,
    build: impl Fn(&mut G, &mut SnapshotBuilder<'_>),
) -> Store {
    let registry = game::registry().unwrap();
    let mut store = Store::new(registry.clone(), StoreConfig::default());
    let mut builder = SnapshotBuilder::new(&registry);
    const QUIET: u32 = 3;
    // Tick 1 syncs the initial world; then every tick steps (while active) and syncs.
    for t in 0..=ticks + QUIET {
        if (1..=ticks).contains(&t) {
            step(game, t - 1, rng);
        }
        store.begin_tick(Tick(t + 1)).unwrap();
        sync(game, &mut store).unwrap();
        build(game, &mut builder);
        let rebuilt = builder.finish().unwrap();
        if let Err(e) = check_store(&registry, &store, &rebuilt) {
            panic!("tick {}: {e}", t + 1);
        }
        if t > ticks {
            let changed: Vec<EntityId> = store
                .entity_ids()
                .filter(|&id| store.changed_at(id) == Some(Tick(t + 1)))
                .collect();
            assert!(
                changed.is_empty(),
                "quiet tick {}: {changed:?} changed",
                t + 1
            );
        }
    }
    store
}
