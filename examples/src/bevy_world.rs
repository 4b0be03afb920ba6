//! statewire over [bevy_ecs](https://docs.rs/bevy_ecs) (bevy's ECS alone, without the engine),
//! through the `statewire-bevy` adapter used without an app: a server
//! `bevy_ecs::world::World` tells the server's [`Store`] what changed each tick, found with
//! bevy's own change detection by a [`ServerSync`] ([`BevyServer::sync`]), and each client's
//! own `World` receives the replicated state through a [`BevySink`], over loopback wrapped in
//! netsim with the `poor` profile. The game, the loop and the checks are the same as in
//! [`hecs_world`](crate::hecs_world); only the storage differs. (In a bevy app the adapter's
//! plugins run the same two pieces as systems, and drive the endpoints too.)
//!
//! # Mapping entities
//!
//! As in the hecs example, each replicated entity carries a [`NetId`] from a server-side
//! counter and a [`NetOwner`], and entities without a [`NetId`] (the [`SpawnPoint`]) are not
//! replicated. Clients find their `Entity` for an id in their [`NetEntities`], and the
//! [`NetId`] is on the entity too.
//!
//! # Components
//!
//! [`Transform`] and [`Health`] (from [`game`], which derives bevy's `Component` for them) are
//! replicated (registered in the [`ReplicationRules`]); [`Velocity`] and the [`Npc`] marker
//! exist only on the server.
//!
//! # Finding what changed
//!
//! [`ServerSync::sync`] reads `Changed<NetId>` (spawns), `RemovedComponents<NetId>` (despawns),
//! `Changed<NetOwner>`, and `Changed<T>` / `RemovedComponents<T>` for each replicated `T`, each
//! through a `SystemState` that remembers, like a system, the tick it last ran at and how far
//! it has read the removals. This example drives its world by hand, so after each sync it
//! calls [`World::clear_trackers`], as an app does at the end of every update, so the removal
//! buffers do not grow forever.
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

use std::fmt;

use bevy_ecs::component::Component;
use bevy_ecs::entity::Entity;
use bevy_ecs::query::{QueryFilter, QueryState, With, Without};
use bevy_ecs::resource::IsResource;
use bevy_ecs::world::World;
pub use statewire_bevy::{BevySink, NetEntities, NetId, NetOwner, ReplicationRules, ServerSync};
use statewire_core::{
    ClientId, ComponentView, EntityId, Owner, Registry, Snapshot, SnapshotBuilder, Store,
    StoreError, WorldSink, WorldSource,
};

use crate::game::{self, GameEvents, GameRng, Health, INITIAL_NPCS, TICK_HZ, TickPlan, Transform};
use crate::{RunError, Summary};

use crate::netsim_run::{self, Engine};
pub use crate::netsim_run::{CLIENTS, PROFILE, QUIET_TICKS};

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

/// The replicated components, as both sides register them (the same ids as
/// [`game::registry`]).
///
/// # Panics
///
/// Never: the game's schemas are valid.
#[must_use]
pub fn rules() -> ReplicationRules {
    ReplicationRules::new()
        .with::<Transform>()
        .and_then(|r| r.with::<Health>())
        .expect("the game's schemas are valid")
}

/// The server's game: a bevy world, the counter [`NetId`]s come from, the adapter's
/// [`ServerSync`] that finds the world's changes, and the cached query the end-of-run snapshot
/// reads through.
pub struct BevyServer {
    /// The authoritative world. Any change made to it, through any API, reaches the store at
    /// the next sync.
    pub world: World,
    replicated: QueryState<Replicated>,
    sync: ServerSync,
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
            .field("in_store", &self.sync.len())
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
        let mut s = BevyServer {
            world,
            replicated,
            sync: ServerSync::new(&rules()),
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
            if rng.chance(0.02)
                && let Some(mut v) = self.world.get_mut::<Velocity>(e)
            {
                v.turn = rng.range(-1.0, 1.0);
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
            if let Some(&(_, e)) = without.get(rng.below(without.len()))
                && let Ok(mut em) = self.world.get_entity_mut(e)
            {
                em.insert(Health { hp: 100 });
                self.events.health_restored += 1;
            }
        }
        if plan.hand_over
            && let Some(&(_, e)) = self.npcs::<()>().first()
            && let Some(mut owner) = self.world.get_mut::<NetOwner>(e)
        {
            owner.0 = game::next_owner(owner.0, &self.clients);
            self.events.owner_changes += 1;
        }
    }

    /// Applies to `store` what changed in the world since the last call (on the first call:
    /// everything), for a tick the caller has started with [`Store::begin_tick`].
    pub fn sync(&mut self, store: &mut Store) -> Result<(), StoreError> {
        self.sync.sync(&mut self.world, store)?;
        // What a bevy app does after every update: start new removal buffers (the sync has
        // read these) and a new change tick.
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

/// A client's world: a bevy world kept up to date through the adapter's [`BevySink`].
#[derive(Debug)]
pub struct BevyClient {
    /// The client's own world. Each replicated entity has a [`NetId`], a [`NetOwner`] and the
    /// replicated components it has on the server.
    pub world: World,
    entities: NetEntities,
    rules: ReplicationRules,
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
        let rules = rules();
        rules.register_components(&mut world);
        BevyClient {
            world,
            entities: NetEntities::default(),
            rules,
        }
    }

    /// The bevy entity replicating `id`, if it exists.
    #[must_use]
    pub fn entity(&self, id: EntityId) -> Option<Entity> {
        self.entities.get(id)
    }

    /// Changes that could not be applied (unknown entity or component); always 0 when the
    /// replicator and the sink agree.
    #[must_use]
    pub fn errors(&self) -> u64 {
        self.entities.errors()
    }

    fn sink(&mut self) -> BevySink<'_> {
        // This example's worlds do not mark ownership: no client id.
        BevySink::new(&mut self.world, &mut self.entities, &self.rules, None)
    }
}

impl WorldSink for BevyClient {
    fn spawn(&mut self, id: EntityId, owner: Owner) {
        self.sink().spawn(id, owner);
    }
    fn despawn(&mut self, id: EntityId) {
        self.sink().despawn(id);
    }
    fn set_owner(&mut self, id: EntityId, owner: Owner) {
        self.sink().set_owner(id, owner);
    }
    fn insert(&mut self, id: EntityId, component: ComponentView<'_>) {
        self.sink().insert(id, component);
    }
    fn remove(&mut self, id: EntityId, component: ComponentView<'_>) {
        self.sink().remove(id, component);
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
        game_entities(&client.world),
        |id| client.entity(id),
        server_query.iter(&server.world).map(|(id, t)| (id.0, *t)),
    )
}

/// Entities of `world` other than its resources (which bevy 0.19 keeps as entities too).
fn game_entities(world: &World) -> usize {
    world
        .iter_entities()
        .filter(|e| !e.contains::<IsResource>())
        .count()
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
    fn client(&self) -> BevyClient {
        BevyClient::new()
    }
    fn client_errors(client: &BevyClient) -> u64 {
        client.errors()
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
    fn the_adapter_registers_the_games_components_in_order() {
        assert_eq!(
            rules().registry().fingerprint(),
            game::registry().unwrap().fingerprint()
        );
    }

    #[test]
    fn one_packet_fills_the_client_world_and_skips_server_only_state() {
        let registry = game::registry().unwrap();
        let mut game = new_game();
        let (snapshot, mut client) = replicate_once(&mut game, &registry);
        verify(&registry, &snapshot, &game, &client).unwrap();
        // The spawn point has no NetId; NPC markers and velocities stay on the server.
        assert_eq!(game_entities(&client.world), game_entities(&game.world) - 1);
        assert_eq!(count::<Npc>(&mut client.world), 0);
        assert_eq!(count::<Velocity>(&mut client.world), 0);
        assert_eq!(client.errors(), 0);
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
