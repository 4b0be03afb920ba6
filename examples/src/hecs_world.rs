//! statewire over the [hecs](https://docs.rs/hecs) ECS: a server `hecs::World` tells the
//! server's [`Store`] what changed each tick ([`HecsServer::sync`]), and each client's own
//! `hecs::World` receives the replicated state through [`WorldSink`], over loopback wrapped in
//! netsim with the `poor` profile.
//!
//! # Mapping entities
//!
//! statewire names entities with [`EntityId`]s that the game chooses. On the server each
//! replicated entity carries a [`NetId`] allocated from a counter; entities without one (here a
//! [`SpawnPoint`]) are simply not replicated. The server does not reuse `hecs::Entity` bits as
//! ids: hecs entities are 64 bits (index plus generation) and hecs reuses an index as soon as an
//! entity is despawned, so a despawn and a spawn in the same tick would look like one entity
//! changing. Clients keep an `EntityId → hecs::Entity` map in their [`HecsClient`] sink and
//! store the [`NetId`] on the entity too, so either side can be found from the other.
//!
//! # Components
//!
//! [`Transform`] and [`Health`] are replicated (they implement `Replicate`); [`Velocity`] and
//! the [`Npc`] marker exist only on the server; the [`Owner`] is stored as a component on both
//! sides.
//!
//! # Finding what changed
//!
//! The replicator's work per tick grows with the number of changes the store is told about, so
//! the server tells it only those. hecs has no built-in change flags, but it ships
//! [`hecs::ChangeTracker`]: for each entity with a `T` it keeps (as a private component) a copy
//! of the value seen at the previous `track` call, and reports what was added, changed
//! (`PartialEq`) or removed since. [`HecsServer`] keeps one tracker per replicated piece of
//! state, so the game systems mutate the world as they like and need not report anything:
//!
//! - [`Owner`]: *added* means a new replicated entity, spawned in the store with that owner;
//!   *changed* is an ownership change;
//! - [`Transform`] and [`Health`]: *added* or *changed* is a `set`, *removed* a `remove`.
//!
//! The trackers report hecs entities; the store wants [`NetId`]s, read from the entity (so the
//! spawn point, which has a `Transform` but no `NetId`, is skipped). Despawns are the one thing
//! the trackers cannot report (the entity and its tracked copy are gone), so
//! [`HecsServer::despawn`] notes the `NetId` of every replicated entity it despawns.
//!
//! A replicated entity is one with a [`NetId`] and an [`Owner`]; the game gives it both, and a
//! [`Transform`], when it spawns it, and never takes them away (the end-of-run snapshot reads
//! the same three).
//!
//! A tracker still compares every tracked entity each tick: cheap for small `Copy` components,
//! and it spares the store (and the replicator after it) everything that did not change. A
//! world where that comparison is too slow would set a flag where it mutates instead.
//!
//! [`WorldSource`] over the whole world remains, for the end-of-run check that the store missed
//! no change.
use std::collections::HashMap;
use std::fmt;

use hecs::ChangeTracker;
use statewire_core::{
    ClientId, ComponentView, EntityId, Owner, Registry, Snapshot, SnapshotBuilder, Store,
    StoreError, WorldSink, WorldSource,
};

use crate::game::{self, GameEvents, GameRng, Health, INITIAL_NPCS, TICK_HZ, TickPlan, Transform};
use crate::{RunError, Summary};

use crate::netsim_run::{self, Engine};
pub use crate::netsim_run::{CLIENTS, PROFILE, QUIET_TICKS};

/// The wire name of a replicated entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetId(pub EntityId);

/// Server-only: how an entity moves, in m/s and rad/s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Velocity {
    /// Forward speed.
    pub speed: f32,
    /// Turn rate.
    pub turn: f32,
}

/// Server-only marker: an NPC, moved by the server's wandering AI (players are not NPCs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Npc;

/// Server-only marker of the entity NPC waves spawn around. It has a [`Transform`] but no
/// [`NetId`], so it is never replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpawnPoint;

/// The server's game: a hecs world, the counter [`NetId`]s come from, and what
/// [`sync`](Self::sync) needs to find the world's changes.
pub struct HecsServer {
    /// The authoritative world. Despawn replicated entities through [`HecsServer::despawn`],
    /// which notes them for the store; every other change is found by the trackers.
    pub world: hecs::World,
    clients: Vec<ClientId>,
    next_id: u32,
    /// Replicated entities despawned since the last sync.
    despawned: Vec<EntityId>,
    /// One tracker per replicated piece of state (see the [module docs](self)). Each must
    /// only ever be used with this world.
    owners: ChangeTracker<Owner>,
    transforms: ChangeTracker<Transform>,
    healths: ChangeTracker<Health>,
    /// What changed so far.
    pub events: GameEvents,
}

impl HecsServer {
    /// A world with a spawn point, one player per client and [`INITIAL_NPCS`] NPCs.
    pub fn new(clients: &[ClientId], rng: &mut GameRng) -> Self {
        let mut s = HecsServer {
            world: hecs::World::new(),
            clients: clients.to_vec(),
            next_id: 0,
            despawned: Vec::new(),
            owners: ChangeTracker::new(),
            transforms: ChangeTracker::new(),
            healths: ChangeTracker::new(),
            events: GameEvents::default(),
        };
        s.world.spawn((
            SpawnPoint,
            Transform {
                x: 100.0,
                y: -60.0,
                angle: 0.0,
            },
        ));
        for (i, &c) in clients.iter().enumerate() {
            let id = s.allocate();
            let t = Transform {
                x: i as f32 * 20.0 - 10.0,
                y: 0.0,
                angle: 0.0,
            };
            let v = Velocity {
                speed: 4.0,
                turn: 0.5,
            };
            s.world
                .spawn((id, Owner::Client(c), t, v, Health { hp: 100 }));
        }
        for _ in 0..INITIAL_NPCS {
            s.spawn_npc(rng);
        }
        s
    }

    fn allocate(&mut self) -> NetId {
        let id = NetId(EntityId(self.next_id));
        self.next_id += 1;
        id
    }

    fn spawn_npc(&mut self, rng: &mut GameRng) {
        let (x, y) = self
            .world
            .query::<&Transform>()
            .with::<&SpawnPoint>()
            .iter()
            .next()
            .map_or((0.0, 0.0), |t| (t.x, t.y));
        let (t, speed, turn) = game::npc_motion(rng, x, y);
        let id = self.allocate();
        self.world.spawn((
            id,
            Owner::Server,
            t,
            Velocity { speed, turn },
            Health { hp: 100 },
            Npc,
        ));
    }

    /// NPCs matching query filter `F`, sorted by [`NetId`] so random picks do not depend on
    /// hecs's storage order.
    fn npcs<F: hecs::Query>(&self) -> Vec<(NetId, hecs::Entity)> {
        let mut v: Vec<_> = self
            .world
            .query::<(hecs::Entity, &NetId)>()
            .with::<(&Npc, F)>()
            .iter()
            .map(|(e, id)| (*id, e))
            .collect();
        v.sort_unstable_by_key(|&(id, _)| id);
        v
    }

    fn npcs_without_health(&self) -> Vec<(NetId, hecs::Entity)> {
        let mut v: Vec<_> = self
            .world
            .query::<(hecs::Entity, &NetId)>()
            .with::<&Npc>()
            .without::<&Health>()
            .iter()
            .map(|(e, id)| (*id, e))
            .collect();
        v.sort_unstable_by_key(|&(id, _)| id);
        v
    }

    /// Despawns `e`, noting its [`NetId`] for the next sync: once the entity is gone, nothing
    /// in the world says it ever existed.
    pub fn despawn(&mut self, e: hecs::Entity) {
        let id = self.world.get::<&NetId>(e).ok().map(|id| id.0);
        if self.world.despawn(e).is_ok() {
            self.despawned.extend(id);
            self.events.despawned += 1;
        }
    }

    /// Advances one active tick (0-based `tick`): movement, then the tick's [`TickPlan`].
    pub fn step(&mut self, tick: u32, rng: &mut GameRng) {
        let dt = 1.0 / TICK_HZ as f32;
        for (t, v) in self
            .world
            .query_mut::<(&mut Transform, &mut Velocity)>()
            .with::<&Npc>()
        {
            if rng.chance(0.02) {
                v.turn = rng.range(-1.0, 1.0);
            }
            game::advance(t, v.speed, v.turn, dt);
        }
        for (t, v) in self
            .world
            .query_mut::<(&mut Transform, &Velocity)>()
            .without::<&Npc>()
        {
            game::advance(t, v.speed, v.turn, dt);
        }

        let plan = TickPlan::draw(tick, rng);
        for _ in 0..plan.spawn {
            self.spawn_npc(rng);
            self.events.spawned += 1;
        }
        for _ in 0..plan.despawn {
            let npcs = self.npcs::<()>();
            if let Some(&(_, e)) = npcs.get(rng.below(npcs.len())) {
                self.despawn(e);
            }
        }
        if plan.damage > 0 {
            let hurt = self.npcs::<&Health>();
            if let Some(&(_, e)) = hurt.get(rng.below(hurt.len())) {
                let dead = self.world.get::<&mut Health>(e).is_ok_and(|mut h| {
                    h.hp -= plan.damage;
                    h.hp <= 0
                });
                if dead {
                    self.despawn(e);
                }
            }
        }
        if plan.remove_health {
            let with = self.npcs::<&Health>();
            if let Some(&(_, e)) = with.get(rng.below(with.len())) {
                if self.world.remove_one::<Health>(e).is_ok() {
                    self.events.health_removed += 1;
                }
            }
        }
        if plan.restore_health {
            let without = self.npcs_without_health();
            if let Some(&(_, e)) = without.get(rng.below(without.len())) {
                if self.world.insert_one(e, Health { hp: 100 }).is_ok() {
                    self.events.health_restored += 1;
                }
            }
        }
        if plan.hand_over {
            if let Some(&(_, e)) = self.npcs::<()>().first() {
                if let Ok(mut owner) = self.world.get::<&mut Owner>(e) {
                    *owner = game::next_owner(*owner, &self.clients);
                    self.events.owner_changes += 1;
                }
            }
        }
    }

    /// Applies to `store` what changed in the world since the last call (on the first call:
    /// everything), for a tick the caller has started with [`Store::begin_tick`].
    pub fn sync(&mut self, store: &mut Store) -> Result<(), StoreError> {
        for id in self.despawned.drain(..) {
            // An entity spawned and despawned within one tick never reached the store.
            if store.contains(id) {
                store.despawn(id)?;
            }
        }
        // Owners first: a new entity must exist in the store before its components are set.
        for (e, owner) in changes(&mut self.owners, &mut self.world) {
            let Some(id) = net_id(&self.world, e) else {
                continue;
            };
            match owner {
                Some(owner) if store.contains(id) => store.set_owner(id, owner)?,
                Some(owner) => store.spawn(id, owner)?,
                // The game never takes an owner away; if something did, the entity would
                // leave replication, as it leaves the snapshot.
                None if store.contains(id) => store.despawn(id)?,
                None => {}
            }
        }
        // From here on, an entity the store does not hold is not replicated: the spawn point
        // (no `NetId`), or an entity without an `Owner`.
        let replicated = |world: &hecs::World, store: &Store, e| {
            net_id(world, e).filter(|&id| store.contains(id))
        };
        for (e, t) in changes(&mut self.transforms, &mut self.world) {
            let Some(id) = replicated(&self.world, store, e) else {
                continue;
            };
            match t {
                Some(t) => store.set(id, &t)?,
                None => store.remove::<Transform>(id)?,
            }
        }
        for (e, h) in changes(&mut self.healths, &mut self.world) {
            let Some(id) = replicated(&self.world, store, e) else {
                continue;
            };
            match h {
                Some(h) => store.set(id, &h)?,
                None => store.remove::<Health>(id)?,
            }
        }
        Ok(())
    }

    /// Number of replicated entities (those with a [`NetId`]).
    #[must_use]
    pub fn replicated_len(&self) -> usize {
        self.world.query::<&NetId>().iter().count()
    }
}

/// What `tracker` saw change in `world` since its previous call: `(entity, Some(value))` for a
/// component added or changed, `(entity, None)` for one removed from a live entity. Despawned
/// entities are not reported.
///
/// The changes are collected because `track` borrows the world, and the caller needs the world
/// again to read each entity's [`NetId`].
fn changes<T>(
    tracker: &mut ChangeTracker<T>,
    world: &mut hecs::World,
) -> Vec<(hecs::Entity, Option<T>)>
where
    T: hecs::Component + Copy + PartialEq,
{
    let mut changes = tracker.track(world);
    let mut out: Vec<_> = changes.added().map(|(e, v)| (e, Some(*v))).collect();
    out.extend(changes.changed().map(|(e, _old, new)| (e, Some(*new))));
    out.extend(changes.removed().map(|(e, _old)| (e, None)));
    out
}

/// The wire id of `e`, if it is replicated.
fn net_id(world: &hecs::World, e: hecs::Entity) -> Option<EntityId> {
    world.get::<&NetId>(e).ok().map(|id| id.0)
}

// `hecs::World` has no `Debug`; show its size.
impl fmt::Debug for HecsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HecsServer")
            .field("entities", &self.world.len())
            .field("next_id", &self.next_id)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// The whole world as a snapshot; the runner uses it only to check that the store missed
/// nothing.
impl WorldSource for HecsServer {
    fn build(&self, builder: &mut SnapshotBuilder<'_>) {
        // One query per snapshot; the builder sorts, so hecs's archetype order does not matter.
        // `Velocity`, `Npc` and entities without a `NetId` are left out.
        for (id, owner, t, health) in self
            .world
            .query::<(&NetId, &Owner, &Transform, Option<&Health>)>()
            .iter()
        {
            let mut e = builder.entity(id.0, *owner);
            e.component(t);
            if let Some(h) = health {
                e.component(h);
            }
        }
    }
}

/// A client's world: a hecs world kept up to date through [`WorldSink`].
pub struct HecsClient {
    /// The client's own world. Each replicated entity has a [`NetId`], an [`Owner`] and the
    /// replicated components it has on the server.
    pub world: hecs::World,
    entities: HashMap<EntityId, hecs::Entity>,
    /// Changes that could not be applied (unknown entity or component); always 0 when the
    /// replicator and the sink agree.
    pub errors: u64,
}

impl Default for HecsClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HecsClient {
    /// An empty world.
    #[must_use]
    pub fn new() -> Self {
        HecsClient {
            world: hecs::World::new(),
            entities: HashMap::new(),
            errors: 0,
        }
    }

    /// The hecs entity replicating `id`, if it exists.
    #[must_use]
    pub fn entity(&self, id: EntityId) -> Option<hecs::Entity> {
        self.entities.get(&id).copied()
    }
}

impl fmt::Debug for HecsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HecsClient")
            .field("entities", &self.world.len())
            .field("errors", &self.errors)
            .finish_non_exhaustive()
    }
}

impl WorldSink for HecsClient {
    fn spawn(&mut self, id: EntityId, owner: Owner) {
        let e = self.world.spawn((NetId(id), owner));
        if let Some(old) = self.entities.insert(id, e) {
            // The protocol never spawns a live id twice; keep the newer entity.
            let _ = self.world.despawn(old);
            self.errors += 1;
        }
    }

    fn despawn(&mut self, id: EntityId) {
        let gone = self
            .entities
            .remove(&id)
            .is_some_and(|e| self.world.despawn(e).is_ok());
        if !gone {
            self.errors += 1;
        }
    }

    fn set_owner(&mut self, id: EntityId, owner: Owner) {
        let set = self.entity(id).is_some_and(|e| {
            self.world
                .get::<&mut Owner>(e)
                .map(|mut o| *o = owner)
                .is_ok()
        });
        if !set {
            self.errors += 1;
        }
    }

    fn insert(&mut self, id: EntityId, component: ComponentView<'_>) {
        let Some(e) = self.entity(id) else {
            self.errors += 1;
            return;
        };
        // hecs's `insert_one` adds or replaces, which is exactly "added or changed".
        let done = if let Some(t) = component.get::<Transform>() {
            self.world.insert_one(e, t).is_ok()
        } else if let Some(h) = component.get::<Health>() {
            self.world.insert_one(e, h).is_ok()
        } else {
            false
        };
        if !done {
            self.errors += 1;
        }
    }

    fn remove(&mut self, id: EntityId, component: ComponentView<'_>) {
        let Some(e) = self.entity(id) else {
            self.errors += 1;
            return;
        };
        let done = if component.is::<Transform>() {
            self.world.remove_one::<Transform>(e).is_ok()
        } else if component.is::<Health>() {
            self.world.remove_one::<Health>(e).is_ok()
        } else {
            false
        };
        if !done {
            self.errors += 1;
        }
    }
}

/// Checks that `client` holds exactly what `snapshot` (the server's quantized state) says, by
/// walking the client's hecs world, and that each replicated [`Transform`] is within half a
/// quantization step of the server's own unquantized one. Returns the first difference.
pub fn verify(
    registry: &Registry,
    snapshot: &Snapshot,
    server: &HecsServer,
    client: &HecsClient,
) -> Result<(), String> {
    let mut query = client.world.query::<(
        hecs::Entity,
        &NetId,
        &Owner,
        Option<&Transform>,
        Option<&Health>,
    )>();
    let entries = query
        .iter()
        .map(|(e, id, owner, t, h)| (id.0, (e, *owner, t.copied(), h.copied())));
    let mut server_query = server.world.query::<(&NetId, &Transform)>();
    netsim_run::verify_client_world(
        "hecs",
        "Owner",
        registry,
        snapshot,
        entries,
        client.world.len() as usize,
        |id| client.entity(id),
        server_query.iter().map(|(id, t)| (id.0, *t)),
    )
}

/// Runs `ticks` active ticks and [`QUIET_TICKS`] quiet ones with [`CLIENTS`] clients over
/// loopback + netsim ([`PROFILE`]), all randomness drawn from `seed`, then checks every client
/// against the server (see [`verify`]).
///
/// Snapshots travel server → client as the replicator's packets, unframed; acks travel back as
/// the acknowledged tick in 4 little-endian bytes. Both directions are impaired.
pub fn run(seed: u64, ticks: u32) -> Result<Summary, RunError> {
    netsim_run::run::<HecsServer>(seed, ticks)
}

impl Engine for HecsServer {
    type Client = HecsClient;
    const EXAMPLE: &'static str = "hecs_world";
    const WORLD: &'static str = "hecs";
    fn new(clients: &[ClientId], rng: &mut GameRng) -> Self {
        HecsServer::new(clients, rng)
    }
    fn step(&mut self, tick: u32, rng: &mut GameRng) {
        HecsServer::step(self, tick, rng);
    }
    fn sync(&mut self, store: &mut Store) -> Result<(), StoreError> {
        HecsServer::sync(self, store)
    }
    fn build(&mut self, builder: &mut SnapshotBuilder<'_>) {
        WorldSource::build(self, builder);
    }
    fn replicated_len(&mut self) -> usize {
        HecsServer::replicated_len(self)
    }
    fn events(&self) -> GameEvents {
        self.events
    }
    fn client() -> HecsClient {
        HecsClient::new()
    }
    fn client_errors(client: &HecsClient) -> u64 {
        client.errors
    }
    fn verify(
        &self,
        registry: &Registry,
        snapshot: &Snapshot,
        client: &HecsClient,
    ) -> Result<(), String> {
        verify(registry, snapshot, self, client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use statewire_core::{
        ClientConfig, ClientReplicator, ServerConfig, ServerReplicator, Store, StoreConfig, Tick,
    };

    /// A fresh one-client game (the same world every time).
    fn new_game() -> HecsServer {
        HecsServer::new(&[ClientId(1)], &mut GameRng::new(3))
    }

    /// Syncs `game` into a new store and sends it to a new client in one packet. The game's
    /// trackers then have nothing left to report, so each call needs a game never synced.
    fn replicate_once(game: &mut HecsServer, registry: &Registry) -> (Snapshot, HecsClient) {
        let mut store = Store::new(registry.clone(), StoreConfig::default());
        store.begin_tick(Tick(1)).unwrap();
        game.sync(&mut store).unwrap();
        let snapshot = store.snapshot();
        let mut b = SnapshotBuilder::new(registry);
        game.build(&mut b);
        assert_eq!(snapshot, b.finish().unwrap(), "the store is the world");
        let mut server = ServerReplicator::new(ServerConfig::default());
        server.add_client(ClientId(1)).unwrap();
        server
            .set_packet_budget(ClientId(1), Some(1 << 20))
            .unwrap();
        server.update(&mut store, None);
        let mut packet = Vec::new();
        server.encode_for(&store, ClientId(1), &mut packet).unwrap();
        let mut repl = ClientReplicator::new(ClientConfig::default());
        let mut client = HecsClient::new();
        repl.handle_packet(registry, &packet, &mut client).unwrap();
        assert_eq!(repl.snapshot(), snapshot);
        (snapshot, client)
    }

    #[test]
    fn one_packet_fills_the_client_world_and_skips_server_only_state() {
        let registry = game::registry().unwrap();
        let mut game = new_game();
        let (snapshot, client) = replicate_once(&mut game, &registry);
        verify(&registry, &snapshot, &game, &client).unwrap();
        // The spawn point has no NetId; NPC markers and velocities stay on the server.
        assert_eq!(client.world.len() as usize, game.world.len() as usize - 1);
        assert_eq!(client.world.query::<&Npc>().iter().count(), 0);
        assert_eq!(client.world.query::<&Velocity>().iter().count(), 0);
        assert_eq!(client.errors, 0);
    }

    #[test]
    fn the_store_matches_the_world_after_every_tick() {
        let mut rng = GameRng::new(11);
        let mut game = HecsServer::new(&[ClientId(1), ClientId(2)], &mut rng);
        netsim_run::assert_store_tracks_world(
            &mut game,
            &mut rng,
            300,
            |g, t, rng| g.step(t, rng),
            HecsServer::sync,
            |g, b| g.build(b),
        );
        let e = game.events;
        assert!(e.despawned > 0 && e.health_removed > 0 && e.health_restored > 0);
        assert!(e.owner_changes > 0);
    }

    #[test]
    fn a_despawn_behind_the_servers_back_is_caught() {
        // Why despawns go through `HecsServer::despawn`: the trackers cannot see an entity that
        // is gone, and only the comparison with the whole world finds it.
        let registry = game::registry().unwrap();
        let mut game = new_game();
        let mut store = Store::new(registry.clone(), StoreConfig::default());
        store.begin_tick(Tick(1)).unwrap();
        game.sync(&mut store).unwrap();
        let (_, e) = game.npcs::<()>()[0];
        game.world.despawn(e).unwrap();
        store.begin_tick(Tick(2)).unwrap();
        game.sync(&mut store).unwrap();
        let mut b = SnapshotBuilder::new(&registry);
        game.build(&mut b);
        let err = netsim_run::check_store(&registry, &store, &b.finish().unwrap()).unwrap_err();
        assert!(err.contains("e1:"), "{err}");
    }

    #[test]
    fn verify_reports_a_tampered_client() {
        let registry = game::registry().unwrap();

        let mut game = new_game();
        let (snapshot, client) = replicate_once(&mut game, &registry);
        let e = client.entity(EntityId(5)).unwrap();
        client.world.get::<&mut Transform>(e).unwrap().x += 1.0;
        let err = verify(&registry, &snapshot, &game, &client).unwrap_err();
        assert!(err.starts_with("e5: transform"), "{err}");

        let mut game = new_game();
        let (snapshot, mut client) = replicate_once(&mut game, &registry);
        let e = client.entity(EntityId(7)).unwrap();
        client.world.remove_one::<Health>(e).unwrap();
        let err = verify(&registry, &snapshot, &game, &client).unwrap_err();
        assert!(err.starts_with("e7: health"), "{err}");

        let mut game = new_game();
        let (snapshot, mut client) = replicate_once(&mut game, &registry);
        client.world.spawn((NetId(EntityId(999)), Owner::Server));
        let err = verify(&registry, &snapshot, &game, &client).unwrap_err();
        assert!(err.contains("only on the client [EntityId(999)]"), "{err}");
    }
}
