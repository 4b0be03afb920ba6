//! statewire for the [hecs](https://docs.rs/hecs) ECS.
//!
//! - **Server**: [`HecsReplication`] knows which component types replicate. Each tick,
//!   [`HecsReplication::sync`] finds what changed in the server's `hecs::World` since the
//!   previous call (spawns, component changes and removals, owner changes, despawns) and
//!   records exactly that into the replicated [`Store`]; the game systems mutate the world as
//!   they like and report nothing.
//! - **Client**: [`HecsSink`] is a [`WorldSink`]: handed to
//!   `GameClient::update_with` (or `ClientReplicator::handle_packet`), it spawns, fills,
//!   changes and despawns entities in the client's own `hecs::World`.
//!
//! A replicated entity is one with a [`NetId`], its wire name, chosen by the game (hecs's own
//! `Entity` bits are not used: hecs reuses an index as soon as an entity is despawned, so a
//! despawn and a spawn within one tick would look like one entity changing). Its owner is its
//! [`NetOwner`] ([`Owner::Server`] if it has none). Entities without a [`NetId`] are never
//! replicated, and neither are components that were not registered.
//!
//! # A game: a server and a client over loopback
//!
//! ```
//! use std::time::Duration;
//! use statewire::endpoint::*;
//! use statewire_core::{EntityId, Field, FieldKind, FieldReader, FieldWriter, Owner, Replicate};
//! use statewire_hecs::{HecsReplication, NetId, NetOwner};
//! use statewire_transport::{Transport, loopback::{LoopbackConfig, LoopbackNet}};
//!
//! #[derive(Debug, Clone, Copy, PartialEq)]
//! struct Pos(f32);
//! impl Replicate for Pos {
//!     const NAME: &'static str = "Pos";
//!     fn fields() -> Vec<Field> {
//!         vec![Field::new("x", FieldKind::Float { min: -64.0, max: 64.0, precision: 1.0 / 16.0 })]
//!     }
//!     fn write(&self, w: &mut FieldWriter<'_>) { w.f32(self.0) }
//!     fn read(r: &mut FieldReader<'_>) -> Option<Self> { Some(Pos(r.f32()?)) }
//! }
//! /// Server-only state: not registered, never replicated.
//! struct Speed(f32);
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Both ends register the same components in the same order.
//! let mut replication = HecsReplication::new().component::<Pos>()?;
//! let protocol = Protocol::from_registry(replication.registry().clone());
//!
//! let net = LoopbackNet::new(LoopbackConfig::default());
//! let server_t = net.endpoint();
//! let addr = server_t.local_addr();
//! let mut server: GameServer<_, ()> =
//!     GameServer::new(server_t, &protocol, GameServerConfig::default())?;
//! let mut world = hecs::World::new();
//! world.spawn((NetId(EntityId(1)), NetOwner(Owner::Server), Pos(0.0), Speed(0.5)));
//!
//! let mut client: GameClient<_, ()> =
//!     GameClient::new(net.endpoint(), addr, &protocol, GameClientConfig::default(), Duration::ZERO)?;
//! let mut client_world = replication.sink();
//!
//! for frame in 0..60u64 {
//!     let now = Duration::from_millis(frame * 33);
//!     server.update(now)?;
//!     while server.poll_event().is_some() {}
//!     // The game's systems: plain hecs.
//!     for (pos, speed) in world.query_mut::<(&mut Pos, &Speed)>() {
//!         pos.0 = (pos.0 + speed.0).min(20.0);
//!     }
//!     // What changed reaches the store; then it replicates.
//!     replication.sync(&mut world, server.store_mut())?;
//!     server.flush(now)?;
//!
//!     client.update_with(now, &mut client_world)?;
//!     while client.poll_event().is_some() {}
//!     client.flush(now)?;
//! }
//! // The client's hecs world holds the entity, its owner and its replicated component.
//! let e = client_world.entity(EntityId(1)).expect("replicated");
//! assert_eq!(*client_world.world().get::<&Pos>(e)?, Pos(20.0));
//! assert_eq!(client_world.world().get::<&NetOwner>(e)?.0, Owner::Server);
//! assert!(client_world.world().get::<&Speed>(e).is_err());
//! assert_eq!(replication.snapshot(&world)?, server.store().snapshot());
//! # Ok(())
//! # }
//! ```
//!
//! # Finding what changed
//!
//! hecs has no built-in change flags, but it ships [`hecs::ChangeTracker`]: for each entity
//! with a `T` it keeps (as a hidden component) a copy of the value seen at the previous call,
//! and reports what was added, changed (by `PartialEq`) or removed since. [`HecsReplication`]
//! keeps one tracker for [`NetId`], one for [`NetOwner`] and one per registered component, and
//! [`sync`](HecsReplication::sync) turns what they report into store calls:
//!
//! - a [`NetId`] added: a spawn (with the entity's [`NetOwner`] and every registered component
//!   it already has); removed or replaced: a despawn (and a spawn under the new id);
//! - a [`NetOwner`] added or changed: an ownership change; removed: back to the server;
//! - a registered component added or changed: a `set`; removed: a `remove`.
//!
//! The store, and the replicator after it, then work in proportion to the changes. The trackers
//! themselves still compare every entity holding a tracked type each tick: hecs offers no
//! cheaper way to learn what a system mutated through `&mut T`. That comparison is cheap for
//! small `Copy` components; a world where it is not would set flags where it mutates instead.
//!
//! Despawns are the one thing a tracker cannot report (the entity and its hidden copy are gone
//! together). Despawn replicated entities with [`HecsReplication::despawn`], which notes the
//! [`NetId`] and costs nothing more. An entity despawned behind the adapter's back (plain
//! `World::despawn`) is still found: `sync` compares the number of [`NetId`]s in the world
//! (hecs counts them per archetype, without visiting entities) with the number it expects, and
//! only on a mismatch walks its own list of replicated entities, so such a tick costs
//! O(replicated entities) instead of O(changes).
//!
//! # Client writes
//!
//! A client's write of an entity it owns is validated and applied by `GameServer` to its store
//! directly (`GameServerEvent::WriteApplied`). The world is the source of truth here, so copy
//! the value into it with [`HecsReplication::apply_write`]; otherwise the next change the game
//! makes would be computed from the stale value, and a snapshot of the world would not match
//! the store.

use std::collections::HashMap;
use std::fmt;

use hecs::{ChangeTracker, Entity, World};
use statewire_core::{
    BuildError, ComponentId, ComponentView, EntityBuilder, EntityId, Owner, Registry, Replicate,
    SchemaError, Snapshot, SnapshotBuilder, Store, StoreError, WorldSink,
};

/// The wire name of a replicated entity: give it to every entity that replicates (the id
/// is the game's to choose, unique among live entities).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetId(pub EntityId);

/// Who may write a replicated entity's state. An entity with a [`NetId`] and no `NetOwner` is
/// the server's. On clients every replicated entity has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetOwner(pub Owner);

/// What [`HecsReplication::sync`] recorded into the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncStats {
    /// Entities spawned in the store.
    pub spawned: usize,
    /// Entities despawned from the store.
    pub despawned: usize,
    /// Of those, entities that were despawned from the world without
    /// [`HecsReplication::despawn`] (found by the slower walk).
    pub despawned_unnoticed: usize,
    /// Component values set (added or changed).
    pub set: usize,
    /// Components removed.
    pub removed: usize,
    /// Ownership changes.
    pub owner_changes: usize,
}

/// How the client side applies a component of one type (built at registration, indexed by
/// [`ComponentId`]).
#[derive(Clone, Copy)]
struct ClientOps {
    insert: fn(&mut World, Entity, ComponentView<'_>) -> bool,
    remove: fn(&mut World, Entity) -> bool,
}

fn insert_view<T: Replicate + hecs::Component>(
    world: &mut World,
    e: Entity,
    view: ComponentView<'_>,
) -> bool {
    // `insert_one` adds or replaces: exactly "added or changed".
    view.get::<T>()
        .is_some_and(|v| world.insert_one(e, v).is_ok())
}

fn remove_typed<T: hecs::Component>(world: &mut World, e: Entity) -> bool {
    world.remove_one::<T>(e).is_ok()
}

/// One registered component type on the server: its tracker and what it found.
trait Tracked {
    /// Runs the tracker over `world`, keeping what changed for [`Tracked::apply`].
    fn collect(&mut self, world: &mut World);
    /// Records what [`Tracked::collect`] found into `store`, for replicated entities only.
    fn apply(
        &mut self,
        live: &HashMap<Entity, EntityId>,
        store: &mut Store,
        stats: &mut SyncStats,
    ) -> Result<(), StoreError>;
    /// Sets the value `e` has now, if any (for an entity just spawned in the store).
    fn write_current(
        &self,
        world: &World,
        e: Entity,
        id: EntityId,
        store: &mut Store,
    ) -> Result<bool, StoreError>;
    /// Adds the value `e` has now to a snapshot entity.
    fn build(&self, world: &World, e: Entity, b: &mut EntityBuilder<'_, '_>);
}

struct TrackedComponent<T: hecs::Component> {
    tracker: ChangeTracker<T>,
    changes: Vec<(Entity, Option<T>)>,
}

impl<T> Tracked for TrackedComponent<T>
where
    T: Replicate + hecs::Component + Clone + PartialEq,
{
    fn collect(&mut self, world: &mut World) {
        self.changes.clear();
        let mut changes = self.tracker.track(world);
        self.changes
            .extend(changes.added().map(|(e, v)| (e, Some(v.clone()))));
        self.changes.extend(
            changes
                .changed()
                .map(|(e, _old, new)| (e, Some(new.clone()))),
        );
        self.changes
            .extend(changes.removed().map(|(e, _old)| (e, None)));
    }

    fn apply(
        &mut self,
        live: &HashMap<Entity, EntityId>,
        store: &mut Store,
        stats: &mut SyncStats,
    ) -> Result<(), StoreError> {
        for (e, value) in self.changes.drain(..) {
            // Entities the store does not hold are not replicated (no `NetId`).
            let Some(&id) = live.get(&e) else {
                continue;
            };
            match value {
                Some(v) => {
                    store.set(id, &v)?;
                    stats.set += 1;
                }
                None => {
                    store.remove::<T>(id)?;
                    stats.removed += 1;
                }
            }
        }
        Ok(())
    }

    fn write_current(
        &self,
        world: &World,
        e: Entity,
        id: EntityId,
        store: &mut Store,
    ) -> Result<bool, StoreError> {
        match world.get::<&T>(e) {
            Ok(v) => store.set(id, &*v).map(|()| true),
            Err(_) => Ok(false),
        }
    }

    fn build(&self, world: &World, e: Entity, b: &mut EntityBuilder<'_, '_>) {
        if let Ok(v) = world.get::<&T>(e) {
            b.component(&*v);
        }
    }
}

/// The server side: which components replicate, and what [`sync`](Self::sync) needs to find
/// a `hecs::World`'s changes (see the [crate docs](crate)). Use one per world.
///
/// It is not `Send`: `hecs::ChangeTracker` caches query state that is not. Keep it on the
/// thread that runs the world's systems.
pub struct HecsReplication {
    registry: Registry,
    /// Indexed by `ComponentId.0`.
    client_ops: Vec<Option<ClientOps>>,
    components: Vec<Box<dyn Tracked>>,
    ids: ChangeTracker<NetId>,
    owners: ChangeTracker<NetOwner>,
    /// Every entity spawned in the store, both ways.
    live: HashMap<Entity, EntityId>,
    by_id: HashMap<EntityId, Entity>,
    /// Entities despawned through [`Self::despawn`] since the last sync.
    despawned: Vec<Entity>,
    // Reused between syncs.
    id_changes: Vec<(Entity, Option<EntityId>, Option<EntityId>)>,
    owner_changes: Vec<(Entity, Owner)>,
}

impl Default for HecsReplication {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for HecsReplication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HecsReplication")
            .field("components", &self.components.len())
            .field("replicated", &self.live.len())
            .finish_non_exhaustive()
    }
}

impl HecsReplication {
    /// No components yet, and a registry of its own that [`component`](Self::component)
    /// fills: give [`registry`](Self::registry) to the store (or the `Protocol`).
    #[must_use]
    pub fn new() -> Self {
        Self::with_registry(Registry::new())
    }

    /// Starts from an existing registry (for example a `Protocol`'s): components it already
    /// holds keep their ids.
    #[must_use]
    pub fn with_registry(registry: Registry) -> Self {
        HecsReplication {
            registry,
            client_ops: Vec::new(),
            components: Vec::new(),
            ids: ChangeTracker::new(),
            owners: ChangeTracker::new(),
            live: HashMap::new(),
            by_id: HashMap::new(),
            despawned: Vec::new(),
            id_changes: Vec::new(),
            owner_changes: Vec::new(),
        }
    }

    /// Replicates component `T`: registers it (unless the registry holds it already) and
    /// tracks it. Fails if the schema is invalid.
    pub fn component<T>(mut self) -> Result<Self, SchemaError>
    where
        T: Replicate + hecs::Component + Clone + PartialEq,
    {
        let id = match self.registry.id_of::<T>() {
            Some(id) => id,
            None => self.registry.register::<T>()?,
        };
        let slot = usize::from(id.0);
        if self.client_ops.len() <= slot {
            self.client_ops.resize(slot + 1, None);
        }
        if self.client_ops[slot].is_none() {
            self.client_ops[slot] = Some(ClientOps {
                insert: insert_view::<T>,
                remove: remove_typed::<T>,
            });
            self.components.push(Box::new(TrackedComponent::<T> {
                tracker: ChangeTracker::new(),
                changes: Vec::new(),
            }));
        }
        Ok(self)
    }

    /// The replicated components, in id order; both ends must use the same.
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Records into `store` what changed in `world` since the previous call (on the first
    /// call: every replicated entity), for the tick the store is on. Call it once per tick
    /// after the game's systems, always with the same world and the same store.
    ///
    /// Errors come from the store (a duplicate [`NetId`], the entity limit, a value outside
    /// its schema); the changes before the failing one are recorded.
    pub fn sync(&mut self, world: &mut World, store: &mut Store) -> Result<SyncStats, StoreError> {
        let mut stats = SyncStats::default();
        // Everything the trackers report is collected first: each needs the world mutably.
        self.id_changes.clear();
        {
            let mut changes = self.ids.track(world);
            self.id_changes
                .extend(changes.added().map(|(e, id)| (e, None, Some(id.0))));
            self.id_changes.extend(
                changes
                    .changed()
                    .map(|(e, old, new)| (e, Some(old.0), Some(new.0))),
            );
            self.id_changes
                .extend(changes.removed().map(|(e, old)| (e, Some(old.0), None)));
        }
        self.owner_changes.clear();
        {
            let mut changes = self.owners.track(world);
            self.owner_changes
                .extend(changes.added().map(|(e, o)| (e, o.0)));
            self.owner_changes
                .extend(changes.changed().map(|(e, _, o)| (e, o.0)));
            self.owner_changes
                .extend(changes.removed().map(|(e, _)| (e, Owner::Server)));
        }
        for c in &mut self.components {
            c.collect(world);
        }
        let world = &*world;

        // Despawns before spawns: a game may give a despawned entity's id to a new one.
        for e in std::mem::take(&mut self.despawned) {
            if let Some(id) = self.forget(e) {
                store.despawn(id)?;
                stats.despawned += 1;
            }
        }
        let added = self.id_changes.iter().filter(|c| c.1.is_none()).count();
        let removed = self.id_changes.iter().filter(|c| c.2.is_none()).count();
        let expected = (self.live.len() + added).saturating_sub(removed);
        if world.query::<&NetId>().iter().len() < expected {
            // Some replicated entity left the world without `despawn`.
            let gone: Vec<Entity> = self
                .live
                .keys()
                .copied()
                .filter(|&e| !world.contains(e))
                .collect();
            for e in gone {
                if let Some(id) = self.forget(e) {
                    store.despawn(id)?;
                    stats.despawned += 1;
                    stats.despawned_unnoticed += 1;
                }
            }
        }
        for i in 0..self.id_changes.len() {
            let (e, old, _) = self.id_changes[i];
            if old.is_none() {
                continue;
            }
            if let Some(id) = self.forget(e).filter(|&id| store.contains(id)) {
                store.despawn(id)?;
                stats.despawned += 1;
            }
        }
        for i in 0..self.id_changes.len() {
            let (e, _, new) = self.id_changes[i];
            let Some(id) = new else { continue };
            let owner = world.get::<&NetOwner>(e).map_or(Owner::Server, |o| o.0);
            store.spawn(id, owner)?;
            stats.spawned += 1;
            self.live.insert(e, id);
            self.by_id.insert(id, e);
            for c in &self.components {
                if c.write_current(world, e, id, store)? {
                    stats.set += 1;
                }
            }
        }
        for &(e, owner) in &self.owner_changes {
            let Some(&id) = self.live.get(&e) else {
                continue;
            };
            if store.owner(id) != Some(owner) {
                store.set_owner(id, owner)?;
                stats.owner_changes += 1;
            }
        }
        for c in &mut self.components {
            c.apply(&self.live, store, &mut stats)?;
        }
        Ok(stats)
    }

    /// Despawns `entity` from `world`, noting its [`NetId`] for the next sync (which then
    /// needs no walk to find it). Returns whether the entity existed.
    pub fn despawn(&mut self, world: &mut World, entity: Entity) -> bool {
        let ok = world.despawn(entity).is_ok();
        if ok && self.live.contains_key(&entity) {
            self.despawned.push(entity);
        }
        ok
    }

    /// Drops `e` from the maps, giving back their memory as they empty.
    fn forget(&mut self, e: Entity) -> Option<EntityId> {
        let id = self.live.remove(&e)?;
        if self.by_id.get(&id) == Some(&e) {
            self.by_id.remove(&id);
        }
        shrink(&mut self.live);
        shrink(&mut self.by_id);
        Some(id)
    }

    /// The server-world entity replicated as `id` (as of the last sync).
    #[must_use]
    pub fn entity(&self, id: EntityId) -> Option<Entity> {
        self.by_id.get(&id).copied()
    }

    /// Entities replicated as of the last sync.
    #[must_use]
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no entity was replicated at the last sync.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Copies component `component` of `id` from `store` into `world`: call it for every
    /// `GameServerEvent::WriteApplied` (a client's validated write of an entity it owns,
    /// which the server applied to its store). Returns whether it was copied (the entity is
    /// replicated, the component registered here and present in the store).
    pub fn apply_write(
        &self,
        world: &mut World,
        store: &Store,
        id: EntityId,
        component: ComponentId,
    ) -> bool {
        let (Some(e), Some(ops), Some(view)) = (
            self.entity(id),
            self.client_ops
                .get(usize::from(component.0))
                .copied()
                .flatten(),
            store.component_view(id, component),
        ) else {
            return false;
        };
        (ops.insert)(world, e, view)
    }

    /// The whole replicated state of `world` as a snapshot, walking every entity with a
    /// [`NetId`] (O(world): for checks, such as that the store missed no change).
    pub fn snapshot(&self, world: &World) -> Result<Snapshot, BuildError> {
        let mut b = SnapshotBuilder::new(&self.registry);
        for (e, id, owner) in world.query::<(Entity, &NetId, Option<&NetOwner>)>().iter() {
            let mut entity = b.entity(id.0, owner.map_or(Owner::Server, |o| o.0));
            for c in &self.components {
                c.build(world, e, &mut entity);
            }
        }
        b.finish()
    }

    /// An empty client world that applies this registry's components.
    #[must_use]
    pub fn sink(&self) -> HecsSink {
        HecsSink::from_parts(self.registry.clone(), self.client_ops.clone())
    }
}

/// Shrinks a map that has emptied to a quarter of its capacity.
fn shrink<K: std::hash::Hash + Eq, V>(m: &mut HashMap<K, V>) {
    if m.capacity() > 64 && m.len() < m.capacity() / 4 {
        m.shrink_to(m.len() * 2);
    }
}

/// A client's world: a `hecs::World` kept up to date as a [`WorldSink`], and the
/// `EntityId ↔ hecs::Entity` map. Made by [`HecsReplication::sink`] (the client registers the
/// same components as the server).
///
/// Each replicated entity gets a [`NetId`], a [`NetOwner`] and the registered components it
/// has on the server; a [`ComponentView`] reaches its type through a table indexed by its
/// [`ComponentId`]. A despawn despawns the hecs entity and drops it from the map.
pub struct HecsSink {
    world: World,
    registry: Registry,
    ops: Vec<Option<ClientOps>>,
    entities: HashMap<EntityId, Entity>,
    errors: u64,
}

impl fmt::Debug for HecsSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HecsSink")
            .field("entities", &self.entities.len())
            .field("errors", &self.errors)
            .finish_non_exhaustive()
    }
}

impl HecsSink {
    fn from_parts(registry: Registry, ops: Vec<Option<ClientOps>>) -> Self {
        HecsSink {
            world: World::new(),
            registry,
            ops,
            entities: HashMap::new(),
            errors: 0,
        }
    }

    /// The client's world.
    #[must_use]
    pub fn world(&self) -> &World {
        &self.world
    }

    /// The client's world, to add local-only components or entities. Do not despawn or
    /// change replicated ones: the next snapshot would not find what it expects.
    pub fn world_mut(&mut self) -> &mut World {
        &mut self.world
    }

    /// The world, with the sink gone.
    #[must_use]
    pub fn into_world(self) -> World {
        self.world
    }

    /// The hecs entity replicating `id`.
    #[must_use]
    pub fn entity(&self, id: EntityId) -> Option<Entity> {
        self.entities.get(&id).copied()
    }

    /// Replicated entities held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entities.len()
    }

    /// Whether no replicated entity is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }

    /// Changes that could not be applied (an unknown entity, an unregistered component);
    /// always 0 while server and client agree on the registry.
    #[must_use]
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// The registry this sink applies.
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn ops(&self, id: ComponentId) -> Option<ClientOps> {
        self.ops.get(usize::from(id.0)).copied().flatten()
    }
}

impl WorldSink for HecsSink {
    fn spawn(&mut self, id: EntityId, owner: Owner) {
        let e = self.world.spawn((NetId(id), NetOwner(owner)));
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
        shrink(&mut self.entities);
        if !gone {
            self.errors += 1;
        }
    }

    fn set_owner(&mut self, id: EntityId, owner: Owner) {
        let set = self
            .entity(id)
            .is_some_and(|e| self.world.insert_one(e, NetOwner(owner)).is_ok());
        if !set {
            self.errors += 1;
        }
    }

    fn insert(&mut self, id: EntityId, component: ComponentView<'_>) {
        let done = match (self.entity(id), self.ops(component.id())) {
            (Some(e), Some(ops)) => (ops.insert)(&mut self.world, e, component),
            _ => false,
        };
        if !done {
            self.errors += 1;
        }
    }

    fn remove(&mut self, id: EntityId, component: ComponentView<'_>) {
        let done = match (self.entity(id), self.ops(component.id())) {
            (Some(e), Some(ops)) => (ops.remove)(&mut self.world, e),
            _ => false,
        };
        if !done {
            self.errors += 1;
        }
    }
}
