//! statewire over [bevy_ecs](https://docs.rs/bevy_ecs) (bevy's ECS alone, without the engine): a
//! server `bevy_ecs::world::World` tells the server's [`Store`] what changed each tick, found
//! with bevy's own change detection ([`BevyServer::sync`]), and each client's own `World`
//! receives the replicated state through [`WorldSink`], over loopback wrapped in netsim with
//! the `poor` profile. The game, the loop and the checks are the same as in
//! [`hecs_world`](crate::hecs_world); only the storage differs.
//!
//! # Mapping entities
//!
//! As in the hecs example, each replicated entity carries a [`NetId`] from a server-side
//! counter, and entities without one (the [`SpawnPoint`]) are not replicated. bevy's `Entity`
//! is an index plus a generation and bevy reuses indices after a despawn, so it is not used as
//! the wire id. Clients keep an `EntityId → Entity` map in their [`BevyClient`] sink and store
//! the [`NetId`] on the entity too.
//!
//! # Components
//!
//! [`Transform`] and [`Health`] (from [`game`], which derives bevy's `Component` for them) are
//! replicated; [`Velocity`] and the [`Npc`] marker exist only on the server. statewire's
//! [`Owner`] is a foreign type, so the orphan rule forbids making it a bevy `Component` here:
//! both sides store it wrapped in [`NetOwner`].
//!
//! # Finding what changed
//!
//! The replicator's work per tick grows with the number of changes the store is told about, so
//! the server tells it only those, and bevy already knows them: every component carries the
//! change tick of its insertion and of its last mutable access, and every removal is recorded.
//! [`BevyServer::sync`] reads them through the system parameters a bevy system would declare:
//!
//! - `Query<.., Added<NetId>>`: new replicated entities, spawned in the store with their owner;
//! - `Query<.., Changed<NetOwner>>`, `Changed<Transform>`, `Changed<Health>`: values to `set`
//!   (an insertion counts as a change, so a restored `Health` is among them);
//! - `RemovedComponents<NetId>`: despawns (bevy reports a despawned entity as having lost each
//!   of its components), and `RemovedComponents<Health>`: removals.
//!
//! bevy marks a component changed on any mutable access, even one that writes the same value;
//! the store ignores a value that quantizes to what it already holds, so that costs a
//! comparison and nothing else. A removal names the bevy [`Entity`], whose [`NetId`] is gone
//! with it, so the server keeps an `Entity → EntityId` map of what it has spawned in the
//! store.
//!
//! A replicated entity is spawned with its [`NetId`], [`NetOwner`] and [`Transform`] together
//! (the queries above, and the end-of-run snapshot, read them together) and keeps them until
//! it is despawned.
//!
//! In a bevy app `sync` would be a system (taking the store as a resource, say) scheduled
//! after the game's systems. This example drives its world by hand, so it keeps the same
//! parameters in a [`SystemState`], which remembers, like a system, the tick it last ran at
//! and how far it has read the removals, and calls [`World::clear_trackers`] after each sync,
//! as an app does at the end of every update, so the removal buffers do not grow forever.
//!
//! # Reading the server's world
//!
//! The snapshot [`WorldSource`] builds is now only for the end-of-run check that the store
//! missed no change. `WorldSource::build` takes `&self`, but bevy's `World::query` needs `&mut World` (it may
//! register components and it fills the new `QueryState`'s archetype cache), and so does
//! `QueryState::iter` (it refreshes that cache). [`BevyServer`] therefore keeps one
//! `QueryState` for the replicated data, and [`BevyServer::source`] takes `&mut self`, refreshes
//! the cache and lends a read-only [`BevySource`] whose `build` iterates without touching it.
//! The `&mut` borrow is what guarantees the cache is current: no structural change can happen
//! while the source is alive. The alternatives were worse: `World::try_query` works from
//! `&World` but rebuilds the state (walking every archetype) on every snapshot, and a `RefCell`
//! or `Mutex` around the state hides a mutation behind `&self` for no benefit.

use std::collections::HashMap;
use std::fmt;

use bevy_ecs::component::Component;
use bevy_ecs::entity::Entity;
use bevy_ecs::query::{Added, Changed, QueryFilter, QueryState, With, Without};
use bevy_ecs::removal_detection::RemovedComponents;
use bevy_ecs::system::{Query, SystemState};
use bevy_ecs::world::World;
use statewire_core::{
    ClientId, ComponentView, EntityId, Owner, Registry, Snapshot, SnapshotBuilder, Store,
    StoreError, WorldSink, WorldSource,
};

use crate::game::{self, GameEvents, GameRng, Health, INITIAL_NPCS, TICK_HZ, TickPlan, Transform};
use crate::{RunError, Summary};

use crate::netsim_run::{self, Engine};
pub use crate::netsim_run::{CLIENTS, PROFILE, QUIET_TICKS};

/// The wire name of a replicated entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Component)]
pub struct NetId(pub EntityId);

/// Who may change the entity, stored as a component on both sides (statewire's [`Owner`] cannot
/// derive bevy's `Component` from this crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Component)]
pub struct NetOwner(pub Owner);

/// Server-only: how an entity moves, in m/s and rad/s.
#[derive(Debug, Clone, Copy, PartialEq, Component)]
pub struct Velocity {
    /// Forward speed.
    pub speed: f32,
    /// Turn rate.
    pub turn: f32,
}

/// Server-only marker: an NPC, moved by the server's wandering AI (players are not NPCs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Component)]
pub struct Npc;

/// Server-only marker of the entity NPC waves spawn around. It has a [`Transform`] but no
/// [`NetId`], so it is never replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Component)]
pub struct SpawnPoint;

/// What a snapshot reads from each replicated entity.
type Replicated = (
    &'static NetId,
    &'static NetOwner,
    &'static Transform,
    Option<&'static Health>,
);

/// The change-detection parameters [`BevyServer::sync`] reads, as a system would declare them
/// (a `SystemState` needs them spelled with `'static` lifetimes).
type Changes = (
    Query<'static, 'static, (Entity, &'static NetId, &'static NetOwner), Added<NetId>>,
    Query<'static, 'static, (&'static NetId, &'static NetOwner), Changed<NetOwner>>,
    Query<'static, 'static, (&'static NetId, &'static Transform), Changed<Transform>>,
    Query<'static, 'static, (&'static NetId, &'static Health), Changed<Health>>,
    RemovedComponents<'static, 'static, NetId>,
    RemovedComponents<'static, 'static, Health>,
);

/// The server's game: a bevy world, the counter [`NetId`]s come from, what
/// [`sync`](Self::sync) needs to find the world's changes, and the cached query the end-of-run
/// snapshot reads through.
pub struct BevyServer {
    /// The authoritative world. Any change made to it, through any API, reaches the store at
    /// the next sync.
    pub world: World,
    replicated: QueryState<Replicated>,
    /// The parameters of the sync "system" and its change ticks (see the [module docs](self)).
    changes: SystemState<Changes>,
    /// The wire id of every entity spawned in the store, to name an entity bevy reports as
    /// despawned or as having lost a component.
    net_ids: HashMap<Entity, EntityId>,
    clients: Vec<ClientId>,
    next_id: u32,
    /// What changed so far.
    pub events: GameEvents,
}

// `SystemState` has no `Debug`; show the sizes.
impl fmt::Debug for BevyServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BevyServer")
            .field("entities", &self.world.entities().len())
            .field("in_store", &self.net_ids.len())
            .field("next_id", &self.next_id)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl BevyServer {
    /// A world with a spawn point, one player per client and [`INITIAL_NPCS`] NPCs.
    pub fn new(clients: &[ClientId], rng: &mut GameRng) -> Self {
        let mut world = World::new();
        let replicated = world.query::<Replicated>();
        // Created before anything is spawned, but that does not matter: a new `SystemState`
        // treats everything already in the world as added.
        let changes = SystemState::new(&mut world);
        let mut s = BevyServer {
            world,
            replicated,
            changes,
            net_ids: HashMap::new(),
            clients: clients.to_vec(),
            next_id: 0,
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
                .spawn((id, NetOwner(Owner::Client(c)), t, v, Health { hp: 100 }));
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
            .query_filtered::<&Transform, With<SpawnPoint>>()
            .iter(&self.world)
            .next()
            .map_or((0.0, 0.0), |t| (t.x, t.y));
        let (t, speed, turn) = game::npc_motion(rng, x, y);
        let id = self.allocate();
        self.world.spawn((
            id,
            NetOwner(Owner::Server),
            t,
            Velocity { speed, turn },
            Health { hp: 100 },
            Npc,
        ));
    }

    /// NPCs matching filter `F` (`()`, `With<Health>`, `Without<Health>`), sorted by [`NetId`]
    /// so random picks do not depend on bevy's storage order.
    fn npcs<F: QueryFilter>(&mut self) -> Vec<(NetId, Entity)> {
        let mut v: Vec<_> = self
            .world
            .query_filtered::<(Entity, &NetId), (With<Npc>, F)>()
            .iter(&self.world)
            .map(|(e, id)| (*id, e))
            .collect();
        v.sort_unstable_by_key(|&(id, _)| id);
        v
    }

    fn despawn(&mut self, e: Entity) {
        if self.world.despawn(e) {
            self.events.despawned += 1;
        }
    }

    /// Advances one active tick (0-based `tick`): movement, then the tick's [`TickPlan`].
    pub fn step(&mut self, tick: u32, rng: &mut GameRng) {
        let dt = 1.0 / TICK_HZ as f32;
        // The NPCs' random turns are drawn in NetId order, then everything with a velocity
        // moves; the movement itself draws nothing, so its storage order does not matter.
        for (_, e) in self.npcs::<()>() {
            if rng.chance(0.02) {
                if let Some(mut v) = self.world.get_mut::<Velocity>(e) {
                    v.turn = rng.range(-1.0, 1.0);
                }
            }
        }
        for (mut t, v) in self
            .world
            .query::<(&mut Transform, &Velocity)>()
            .iter_mut(&mut self.world)
        {
            game::advance(&mut t, v.speed, v.turn, dt);
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
            let hurt = self.npcs::<With<Health>>();
            if let Some(&(_, e)) = hurt.get(rng.below(hurt.len())) {
                let dead = self.world.get_mut::<Health>(e).is_some_and(|mut h| {
                    h.hp -= plan.damage;
                    h.hp <= 0
                });
                if dead {
                    self.despawn(e);
                }
            }
        }
        if plan.remove_health {
            let with = self.npcs::<With<Health>>();
            if let Some(&(_, e)) = with.get(rng.below(with.len())) {
                // `take` reports whether the component was there; `remove` does not.
                let removed = self
                    .world
                    .get_entity_mut(e)
                    .is_ok_and(|mut em| em.take::<Health>().is_some());
                if removed {
                    self.events.health_removed += 1;
                }
            }
        }
        if plan.restore_health {
            let without = self.npcs::<Without<Health>>();
            if let Some(&(_, e)) = without.get(rng.below(without.len())) {
                if let Ok(mut em) = self.world.get_entity_mut(e) {
                    em.insert(Health { hp: 100 });
                    self.events.health_restored += 1;
                }
            }
        }
        if plan.hand_over {
            if let Some(&(_, e)) = self.npcs::<()>().first() {
                if let Some(mut owner) = self.world.get_mut::<NetOwner>(e) {
                    owner.0 = game::next_owner(owner.0, &self.clients);
                    self.events.owner_changes += 1;
                }
            }
        }
    }

    /// Applies to `store` what changed in the world since the last call (on the first call:
    /// everything), for a tick the caller has started with [`Store::begin_tick`].
    pub fn sync(&mut self, store: &mut Store) -> Result<(), StoreError> {
        let (spawned, owners, transforms, healths, mut despawned, mut lost_health) =
            self.changes.get_mut(&mut self.world);
        // Despawns first. An entity spawned and despawned within one tick was never in the
        // store, so it is not in the map either.
        for e in despawned.read() {
            if let Some(id) = self.net_ids.remove(&e) {
                store.despawn(id)?;
            }
        }
        // Spawns before any component: the store needs the entity before its values.
        for (e, id, owner) in &spawned {
            store.spawn(id.0, owner.0)?;
            self.net_ids.insert(e, id.0);
        }
        // Includes the entities just spawned (`Added` implies `Changed`); for them this is
        // the owner they already have, which is not a change.
        for (id, owner) in &owners {
            store.set_owner(id.0, owner.0)?;
        }
        // Removals before sets: a `Health` removed and given back within one tick is reported
        // by both, and must end up present.
        for e in lost_health.read() {
            // Not in the map: the entity was despawned (and handled above).
            if let Some(&id) = self.net_ids.get(&e) {
                store.remove::<Health>(id)?;
            }
        }
        for (id, t) in &transforms {
            store.set(id.0, t)?;
        }
        for (id, h) in &healths {
            store.set(id.0, h)?;
        }
        // What a bevy app does after every update: start new removal buffers (the reader has
        // consumed these) and a new change tick.
        self.world.clear_trackers();
        Ok(())
    }

    /// The world as a [`WorldSource`], with the snapshot query's archetype cache brought up to
    /// date (see the [module docs](self)).
    pub fn source(&mut self) -> BevySource<'_> {
        self.replicated.update_archetypes(&self.world);
        BevySource {
            world: &self.world,
            replicated: &self.replicated,
        }
    }

    /// Number of replicated entities (those [`BevySource`] reads).
    #[must_use]
    pub fn replicated_len(&mut self) -> usize {
        self.replicated.iter(&self.world).count()
    }
}

/// A read-only view of a [`BevyServer`]'s world whose query cache is current; made by
/// [`BevyServer::source`].
#[derive(Debug, Clone, Copy)]
pub struct BevySource<'a> {
    world: &'a World,
    replicated: &'a QueryState<Replicated>,
}

impl WorldSource for BevySource<'_> {
    fn build(&self, builder: &mut SnapshotBuilder<'_>) {
        // `iter_manual` reads through the cache `BevyServer::source` just refreshed. The builder
        // sorts, so bevy's table order does not matter. `Velocity`, `Npc` and entities without a
        // `NetId` are left out.
        for (id, owner, t, health) in self.replicated.iter_manual(self.world) {
            let mut e = builder.entity(id.0, owner.0);
            e.component(t);
            if let Some(h) = health {
                e.component(h);
            }
        }
    }
}

/// A client's world: a bevy world kept up to date through [`WorldSink`].
///
/// The sink changes the world directly rather than through bevy's deferred `Commands`: it holds
/// the world exclusively, and applying each change at once tells it whether the entity or
/// component was there, which is how it counts [`errors`](Self::errors). In a bevy app the
/// same code runs in an exclusive system (one taking `&mut World`).
#[derive(Debug)]
pub struct BevyClient {
    /// The client's own world. Each replicated entity has a [`NetId`], a [`NetOwner`] and the
    /// replicated components it has on the server.
    pub world: World,
    entities: HashMap<EntityId, Entity>,
    /// Changes that could not be applied (unknown entity or component); always 0 when the
    /// replicator and the sink agree.
    pub errors: u64,
}

impl Default for BevyClient {
    fn default() -> Self {
        Self::new()
    }
}

impl BevyClient {
    /// An empty world, with the replicated components registered so that [`verify`]'s
    /// `&World` queries work before the first snapshot.
    #[must_use]
    pub fn new() -> Self {
        let mut world = World::new();
        world.register_component::<NetId>();
        world.register_component::<NetOwner>();
        world.register_component::<Transform>();
        world.register_component::<Health>();
        BevyClient {
            world,
            entities: HashMap::new(),
            errors: 0,
        }
    }

    /// The bevy entity replicating `id`, if it exists.
    #[must_use]
    pub fn entity(&self, id: EntityId) -> Option<Entity> {
        self.entities.get(&id).copied()
    }
}

impl WorldSink for BevyClient {
    fn spawn(&mut self, id: EntityId, owner: Owner) {
        let e = self.world.spawn((NetId(id), NetOwner(owner))).id();
        if let Some(old) = self.entities.insert(id, e) {
            // The protocol never spawns a live id twice; keep the newer entity.
            self.world.despawn(old);
            self.errors += 1;
        }
    }

    fn despawn(&mut self, id: EntityId) {
        let gone = self
            .entities
            .remove(&id)
            .is_some_and(|e| self.world.despawn(e));
        if !gone {
            self.errors += 1;
        }
    }

    fn set_owner(&mut self, id: EntityId, owner: Owner) {
        let set = self.entity(id).is_some_and(|e| {
            self.world
                .get_mut::<NetOwner>(e)
                .map(|mut o| o.0 = owner)
                .is_some()
        });
        if !set {
            self.errors += 1;
        }
    }

    fn insert(&mut self, id: EntityId, component: ComponentView<'_>) {
        let Some(mut em) = self
            .entity(id)
            .and_then(|e| self.world.get_entity_mut(e).ok())
        else {
            self.errors += 1;
            return;
        };
        // bevy's `insert` adds or replaces, which is exactly "added or changed".
        if let Some(t) = component.get::<Transform>() {
            em.insert(t);
        } else if let Some(h) = component.get::<Health>() {
            em.insert(h);
        } else {
            self.errors += 1;
        }
    }

    fn remove(&mut self, id: EntityId, component: ComponentView<'_>) {
        let Some(mut em) = self
            .entity(id)
            .and_then(|e| self.world.get_entity_mut(e).ok())
        else {
            self.errors += 1;
            return;
        };
        // `take` rather than `remove`: it says whether the component was there.
        let done = if component.is::<Transform>() {
            em.take::<Transform>().is_some()
        } else if component.is::<Health>() {
            em.take::<Health>().is_some()
        } else {
            false
        };
        if !done {
            self.errors += 1;
        }
    }
}

/// Checks that `client` holds exactly what `snapshot` (the server's quantized state) says, by
/// walking the client's bevy world, and that each replicated [`Transform`] is within half a
/// quantization step of the server's own unquantized one. Returns the first difference.
///
/// It runs once per run, so it builds its queries with `World::try_query` from `&World` instead
/// of caching them.
pub fn verify(
    registry: &Registry,
    snapshot: &Snapshot,
    server: &BevyServer,
    client: &BevyClient,
) -> Result<(), String> {
    let mut query = client
        .world
        .try_query::<(
            Entity,
            &NetId,
            &NetOwner,
            Option<&Transform>,
            Option<&Health>,
        )>()
        .ok_or("the client's bevy world has not registered the replicated components")?;
    let entries = query
        .iter(&client.world)
        .map(|(e, id, owner, t, h)| (id.0, (e, owner.0, t.copied(), h.copied())));
    let mut server_query = server
        .world
        .try_query::<(&NetId, &Transform)>()
        .ok_or("the server's bevy world has not registered NetId and Transform")?;
    netsim_run::verify_client_world(
        "bevy",
        "NetOwner",
        registry,
        snapshot,
        entries,
        client.world.iter_entities().count(),
        |id| client.entity(id),
        server_query.iter(&server.world).map(|(id, t)| (id.0, *t)),
    )
}

/// Runs `ticks` active ticks and [`QUIET_TICKS`] quiet ones with [`CLIENTS`] clients over
/// loopback + netsim ([`PROFILE`]), all randomness drawn from `seed`, then checks every client
/// against the server (see [`verify`]).
///
/// Snapshots travel server → client as the replicator's packets, unframed; acks travel back as
/// the acknowledged tick in 4 little-endian bytes. Both directions are impaired.
pub fn run(seed: u64, ticks: u32) -> Result<Summary, RunError> {
    netsim_run::run::<BevyServer>(seed, ticks)
}

impl Engine for BevyServer {
    type Client = BevyClient;
    const EXAMPLE: &'static str = "bevy_world";
    const WORLD: &'static str = "bevy";
    fn new(clients: &[ClientId], rng: &mut GameRng) -> Self {
        BevyServer::new(clients, rng)
    }
    fn step(&mut self, tick: u32, rng: &mut GameRng) {
        BevyServer::step(self, tick, rng);
    }
    fn sync(&mut self, store: &mut Store) -> Result<(), StoreError> {
        BevyServer::sync(self, store)
    }
    fn build(&mut self, builder: &mut SnapshotBuilder<'_>) {
        self.source().build(builder);
    }
    fn replicated_len(&mut self) -> usize {
        BevyServer::replicated_len(self)
    }
    fn events(&self) -> GameEvents {
        self.events
    }
    fn client() -> BevyClient {
        BevyClient::new()
    }
    fn client_errors(client: &BevyClient) -> u64 {
        client.errors
    }
    fn verify(
        &self,
        registry: &Registry,
        snapshot: &Snapshot,
        client: &BevyClient,
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
    fn new_game() -> BevyServer {
        BevyServer::new(&[ClientId(1)], &mut GameRng::new(3))
    }

    /// Syncs `game` into a new store and sends it to a new client in one packet. The game's
    /// change detection then has nothing left to report, so each call needs a game never
    /// synced.
    fn replicate_once(game: &mut BevyServer, registry: &Registry) -> (Snapshot, BevyClient) {
        let mut store = Store::new(registry.clone(), StoreConfig::default());
        store.begin_tick(Tick(1)).unwrap();
        game.sync(&mut store).unwrap();
        let snapshot = store.snapshot();
        let mut b = SnapshotBuilder::new(registry);
        game.source().build(&mut b);
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
        let mut client = BevyClient::new();
        repl.handle_packet(registry, &packet, &mut client).unwrap();
        assert_eq!(repl.snapshot(), snapshot);
        (snapshot, client)
    }

    fn count<T: Component>(world: &mut World) -> usize {
        world.query::<&T>().iter(world).count()
    }

    #[test]
    fn one_packet_fills_the_client_world_and_skips_server_only_state() {
        let registry = game::registry().unwrap();
        let mut game = new_game();
        let (snapshot, mut client) = replicate_once(&mut game, &registry);
        verify(&registry, &snapshot, &game, &client).unwrap();
        // The spawn point has no NetId; NPC markers and velocities stay on the server.
        assert_eq!(
            client.world.iter_entities().count(),
            game.world.iter_entities().count() - 1
        );
        assert_eq!(count::<Npc>(&mut client.world), 0);
        assert_eq!(count::<Velocity>(&mut client.world), 0);
        assert_eq!(client.errors, 0);
    }

    #[test]
    fn the_snapshot_sees_archetypes_created_after_the_server_started() {
        // Removing Health moves an NPC to an archetype the cached query has never seen; a stale
        // cache would leave it out of the snapshot.
        let registry = game::registry().unwrap();
        let mut game = new_game();
        let before = game.replicated_len();
        let (_, e) = game.npcs::<()>()[0];
        game.world.entity_mut(e).remove::<Health>();
        game.world.spawn((
            NetId(EntityId(500)),
            NetOwner(Owner::Server),
            Transform {
                x: 0.0,
                y: 0.0,
                angle: 0.0,
            },
            Npc,
        ));
        let (snapshot, client) = replicate_once(&mut game, &registry);
        assert_eq!(snapshot.len(), before + 1);
        verify(&registry, &snapshot, &game, &client).unwrap();
    }

    #[test]
    fn the_store_matches_the_world_after_every_tick() {
        let mut rng = GameRng::new(11);
        let mut game = BevyServer::new(&[ClientId(1), ClientId(2)], &mut rng);
        netsim_run::assert_store_tracks_world(
            &mut game,
            &mut rng,
            300,
            |g, t, rng| g.step(t, rng),
            BevyServer::sync,
            |g, b| g.source().build(b),
        );
        let e = game.events;
        assert!(e.despawned > 0 && e.health_removed > 0 && e.health_restored > 0);
        assert!(e.owner_changes > 0);
    }

    #[test]
    fn changes_made_anywhere_reach_the_store() {
        // bevy's change detection needs no cooperation from the code that changes the world:
        // changes made directly, not by the game script, all reach the store at the next sync,
        // including a removal and re-insertion within one tick.
        let registry = game::registry().unwrap();
        let mut game = new_game();
        let mut store = Store::new(registry.clone(), StoreConfig::default());
        store.begin_tick(Tick(1)).unwrap();
        game.sync(&mut store).unwrap();

        let npcs = game.npcs::<()>();
        let (a, b, c, d) = (npcs[0].1, npcs[1].1, npcs[2].1, npcs[3].1);
        game.world.entity_mut(a).remove::<Health>();
        game.world.entity_mut(b).remove::<Health>();
        game.world.entity_mut(b).insert(Health { hp: 42 });
        game.world.get_mut::<NetOwner>(c).unwrap().0 = Owner::Client(ClientId(1));
        game.world.despawn(d);
        game.world.spawn((
            NetId(EntityId(500)),
            NetOwner(Owner::Server),
            Transform {
                x: 1.0,
                y: 2.0,
                angle: 0.5,
            },
        ));
        store.begin_tick(Tick(2)).unwrap();
        game.sync(&mut store).unwrap();

        let mut builder = SnapshotBuilder::new(&registry);
        game.source().build(&mut builder);
        netsim_run::check_store(&registry, &store, &builder.finish().unwrap()).unwrap();
        let (ia, ib, ic, id) = (npcs[0].0.0, npcs[1].0.0, npcs[2].0.0, npcs[3].0.0);
        assert_eq!(store.component::<Health>(ia), None);
        assert_eq!(store.component::<Health>(ib), Some(Health { hp: 42 }));
        assert_eq!(store.owner(ic), Some(Owner::Client(ClientId(1))));
        assert!(!store.contains(id));
        assert!(store.contains(EntityId(500)));
    }

    #[test]
    fn verify_reports_a_tampered_client() {
        let registry = game::registry().unwrap();

        let mut game = new_game();
        let (snapshot, mut client) = replicate_once(&mut game, &registry);
        let e = client.entity(EntityId(5)).unwrap();
        client.world.get_mut::<Transform>(e).unwrap().x += 1.0;
        let err = verify(&registry, &snapshot, &game, &client).unwrap_err();
        assert!(err.starts_with("e5: transform"), "{err}");

        let mut game = new_game();
        let (snapshot, mut client) = replicate_once(&mut game, &registry);
        let e = client.entity(EntityId(7)).unwrap();
        client.world.entity_mut(e).remove::<Health>();
        let err = verify(&registry, &snapshot, &game, &client).unwrap_err();
        assert!(err.starts_with("e7: health"), "{err}");

        let mut game = new_game();
        let (snapshot, mut client) = replicate_once(&mut game, &registry);
        client
            .world
            .spawn((NetId(EntityId(999)), NetOwner(Owner::Server)));
        let err = verify(&registry, &snapshot, &game, &client).unwrap_err();
        assert!(err.contains("only on the client [EntityId(999)]"), "{err}");
    }
}
