//! The server side: a bevy `World`'s changes, found with bevy's change ticks, into a `Store`.

use std::collections::HashMap;

use bevy_ecs::component::Component;
use bevy_ecs::entity::Entity;
use bevy_ecs::lifecycle::RemovedComponents;
use bevy_ecs::query::{Changed, QueryState, With, Without};
use bevy_ecs::system::{Query, SystemState};
use bevy_ecs::world::World;
use statewire_core::{
    BuildError, ComponentId, EntityId, Owner, Registry, Replicate, Snapshot, SnapshotBuilder,
    Store, StoreError,
};

use crate::rules::{ComponentFns, ReplicationRules};
use crate::{NetId, NetOwner, Replicated};

/// What [`ServerSync::sync`] recorded into the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncStats {
    /// Entities spawned in the store.
    pub spawned: usize,
    /// Entities despawned from the store.
    pub despawned: usize,
    /// Component values set (added or changed; a value that quantizes to what the store
    /// holds is counted here but is no change for the store).
    pub set: usize,
    /// Components removed.
    pub removed: usize,
    /// Ownership changes.
    pub owner_changes: usize,
    /// [`NetId`]s given to [`Replicated`] entities.
    pub ids_assigned: usize,
}

/// Entities the store holds, both ways.
#[derive(Default)]
pub(crate) struct Live {
    pub(crate) by_entity: HashMap<Entity, EntityId>,
    pub(crate) by_id: HashMap<EntityId, Entity>,
}

impl Live {
    fn insert(&mut self, e: Entity, id: EntityId) {
        self.by_entity.insert(e, id);
        self.by_id.insert(id, e);
    }

    fn forget(&mut self, e: Entity) -> Option<EntityId> {
        let id = self.by_entity.remove(&e)?;
        if self.by_id.get(&id) == Some(&e) {
            self.by_id.remove(&id);
        }
        crate::shrink(&mut self.by_entity);
        crate::shrink(&mut self.by_id);
        Some(id)
    }
}

/// One replicated type's change detection on the server.
pub(crate) trait TrackComponent: Send + Sync {
    fn sync(
        &mut self,
        world: &mut World,
        live: &Live,
        store: &mut Store,
        stats: &mut SyncStats,
    ) -> Result<(), StoreError>;
}

type TypeParams<T> = (
    Query<'static, 'static, (Entity, &'static T), (Changed<T>, With<NetId>)>,
    RemovedComponents<'static, 'static, T>,
);

/// `Changed<T>` and `RemovedComponents<T>`, kept in a `SystemState` (made at the first sync)
/// that remembers, like a system, the tick it last ran at and how far it read the removals.
pub(crate) struct Tracker<T: Component> {
    state: Option<SystemState<TypeParams<T>>>,
    removed: Vec<Entity>,
}

impl<T: Component> Default for Tracker<T> {
    fn default() -> Self {
        Tracker {
            state: None,
            removed: Vec::new(),
        }
    }
}

impl<T: Replicate + Component> TrackComponent for Tracker<T> {
    fn sync(
        &mut self,
        world: &mut World,
        live: &Live,
        store: &mut Store,
        stats: &mut SyncStats,
    ) -> Result<(), StoreError> {
        let state = self.state.get_or_insert_with(|| SystemState::new(world));
        let Ok((changed, mut removed)) = state.get_mut(world) else {
            return Ok(());
        };
        // Removals first, for entities still replicated that still lack the component (a
        // component taken and given back within one tick is reported by both, and must end
        // up present; a despawned entity is no longer in `live`).
        self.removed.clear();
        self.removed
            .extend(removed.read().filter(|e| live.by_entity.contains_key(e)));
        for (e, v) in &changed {
            if let Some(&id) = live.by_entity.get(&e) {
                store.set(id, v)?;
                stats.set += 1;
            }
        }
        for &e in &self.removed {
            let still = world
                .get_entity(e)
                .is_ok_and(|er| er.contains::<NetId>() && !er.contains::<T>());
            if let (true, Some(&id)) = (still, live.by_entity.get(&e)) {
                store.remove::<T>(id)?;
                stats.removed += 1;
            }
        }
        Ok(())
    }
}

/// [`Replicated`] entities still waiting for a [`NetId`].
type Unassigned = QueryState<Entity, (With<Replicated>, Without<NetId>)>;

type CoreParams = (
    Query<'static, 'static, (Entity, &'static NetId, Option<&'static NetOwner>), Changed<NetId>>,
    Query<'static, 'static, (Entity, &'static NetOwner), Changed<NetOwner>>,
    RemovedComponents<'static, 'static, NetId>,
    RemovedComponents<'static, 'static, NetOwner>,
);

/// The server side of the adapter, usable in an app (the server plugin runs it in
/// `PostUpdate`) or on a `World` driven by hand: [`sync`](Self::sync) records into a
/// [`Store`] what changed in the world since the previous call, found with bevy's own change
/// detection, so that the game's systems report nothing:
///
/// - `Changed<NetId>` (which includes `Added`): a spawn, with the entity's [`NetOwner`] and
///   every replicated component it has; a [`NetId`] replaced by another: a despawn and a
///   spawn;
/// - `RemovedComponents<NetId>` (bevy reports a despawned entity as having lost each of its
///   components): a despawn;
/// - `Changed<NetOwner>`: an ownership change; `RemovedComponents<NetOwner>`: back to the
///   server;
/// - for each replicated `T`, `Changed<T>` on an entity with a [`NetId`]: a `set`;
///   `RemovedComponents<T>`: a `remove`.
///
/// Entities with [`Replicated`] and no [`NetId`] are first given one from a counter.
///
/// bevy marks a component changed on any mutable access, even one that writes the same value;
/// the store ignores a value that quantizes to what it holds, so that costs a comparison. A
/// removal names the bevy `Entity`, whose [`NetId`] is gone with it, so the sync keeps an
/// `Entity ↔ EntityId` map of what it spawned in the store.
///
/// Removals are read from bevy's double-buffered removal messages: an app clears them once
/// per update (`World::clear_trackers`), and so must a caller driving a `World` by hand, after
/// each sync (or the buffers grow). A sync must run at least once per such clear, or it misses
/// removals.
pub struct ServerSync {
    registry: Registry,
    fns: Vec<(ComponentId, ComponentFns)>,
    core: Option<SystemState<CoreParams>>,
    types: Vec<Box<dyn TrackComponent>>,
    unassigned: Option<Unassigned>,
    live: Live,
    next_id: u32,
    // Reused between syncs.
    gone: Vec<Entity>,
    spawns: Vec<(Entity, EntityId, Owner)>,
    owners: Vec<(Entity, Owner)>,
}

impl std::fmt::Debug for ServerSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSync")
            .field("components", &self.types.len())
            .field("replicated", &self.live.by_entity.len())
            .finish_non_exhaustive()
    }
}

impl ServerSync {
    /// A sync for the components of `rules`. Use one per world, always with the same store.
    #[must_use]
    pub fn new(rules: &ReplicationRules) -> Self {
        let registry = rules.registry().clone();
        let fns: Vec<(ComponentId, ComponentFns)> = (0..registry.len())
            .filter_map(|i| {
                let id = ComponentId(i as u16);
                rules.fns(id).map(|f| (id, f))
            })
            .collect();
        ServerSync {
            types: fns.iter().map(|(_, f)| (f.tracker)()).collect(),
            registry,
            fns,
            core: None,
            unassigned: None,
            live: Live::default(),
            next_id: 1,
            gone: Vec::new(),
            spawns: Vec::new(),
            owners: Vec::new(),
        }
    }

    /// Records into `store` what changed in `world` since the previous call (on the first
    /// call: every replicated entity), for the tick the store is on; see the type's docs.
    /// Errors come from the store (a duplicate [`NetId`], the entity limit, a value outside
    /// its schema); the changes before the failing one are recorded.
    pub fn sync(&mut self, world: &mut World, store: &mut Store) -> Result<SyncStats, StoreError> {
        let mut stats = SyncStats::default();
        let core = self.core.get_or_insert_with(|| SystemState::new(world));
        let Ok((ids, owners, mut ids_removed, mut owners_removed)) = core.get_mut(world) else {
            return Ok(stats);
        };
        // Despawns (and lost or replaced ids) before spawns: a game may give a despawned
        // entity's id to a new one within the same tick.
        self.gone.clear();
        self.gone.extend(ids_removed.read());
        self.spawns.clear();
        for (e, id, owner) in &ids {
            match self.live.by_entity.get(&e) {
                // A mutable access that kept the id.
                Some(&held) if held == id.0 => {}
                Some(_) => {
                    self.gone.push(e);
                    self.spawns
                        .push((e, id.0, owner.map_or(Owner::Server, |o| o.0)));
                }
                None => self
                    .spawns
                    .push((e, id.0, owner.map_or(Owner::Server, |o| o.0))),
            }
        }
        self.owners.clear();
        self.owners.extend(owners.iter().map(|(e, o)| (e, o.0)));
        self.owners
            .extend(owners_removed.read().map(|e| (e, Owner::Server)));
        self.assign_ids(world, store, &mut stats);

        for i in 0..self.gone.len() {
            let e = self.gone[i];
            // A NetId taken and given back within a tick: it is among the spawns too.
            if let Some(id) = self.live.forget(e) {
                // The game may have despawned it from the store itself (in `resolve_events`).
                if store.contains(id) {
                    store.despawn(id)?;
                    stats.despawned += 1;
                }
            }
        }
        for i in 0..self.spawns.len() {
            let (e, id, owner) = self.spawns[i];
            if self.live.by_entity.contains_key(&e) {
                continue;
            }
            store.spawn(id, owner)?;
            stats.spawned += 1;
            self.live.insert(e, id);
            for (_, f) in &self.fns {
                if (f.write_current)(world, e, id, store)? {
                    stats.set += 1;
                }
            }
        }
        for i in 0..self.owners.len() {
            let (e, owner) = self.owners[i];
            let Some(&id) = self.live.by_entity.get(&e) else {
                continue;
            };
            // A removal only counts if the entity has no owner now.
            let owner = world.get::<NetOwner>(e).map_or(owner, |o| o.0);
            if store.owner(id) != Some(owner) {
                store.set_owner(id, owner)?;
                stats.owner_changes += 1;
            }
        }
        for t in &mut self.types {
            t.sync(world, &self.live, store, &mut stats)?;
        }
        Ok(stats)
    }

    /// Gives every [`Replicated`] entity without a [`NetId`] the next id that is free (in the
    /// store, and among this sync's spawns), and adds it to the spawns.
    fn assign_ids(&mut self, world: &mut World, store: &Store, stats: &mut SyncStats) {
        let q = self
            .unassigned
            .get_or_insert_with(|| world.query_filtered());
        let todo: Vec<Entity> = q.iter(world).collect();
        if todo.is_empty() {
            return;
        }
        let mut taken: std::collections::HashSet<EntityId> =
            self.spawns.iter().map(|s| s.1).collect();
        for e in todo {
            let mut id = EntityId(self.next_id);
            let mut guard = 0u32;
            while (store.contains(id) || self.live.by_id.contains_key(&id) || taken.contains(&id))
                && guard < 1_000_000
            {
                id = EntityId(id.0.wrapping_add(1).max(1));
                guard += 1;
            }
            self.next_id = id.0.wrapping_add(1).max(1);
            taken.insert(id);
            let owner = world.get::<NetOwner>(e).map_or(Owner::Server, |o| o.0);
            world.entity_mut(e).insert(NetId(id));
            self.spawns.push((e, id, owner));
            stats.ids_assigned += 1;
        }
    }

    /// Copies component `component` of `id` from `store` into `world`: the server plugin does
    /// it for every `GameServerEvent::WriteApplied` (a client's validated write of an entity
    /// it owns, applied to the store), so the world stays the source of truth. Returns whether
    /// it was copied.
    pub fn apply_write(
        &self,
        world: &mut World,
        store: &Store,
        id: EntityId,
        component: ComponentId,
    ) -> bool {
        let f = self
            .fns
            .iter()
            .find(|(c, _)| *c == component)
            .map(|(_, f)| *f);
        let (Some(e), Some(f), Some(view)) =
            (self.entity(id), f, store.component_view(id, component))
        else {
            return false;
        };
        (f.insert)(world, e, view)
    }

    /// The server-world entity replicated as `id` (as of the last sync).
    #[must_use]
    pub fn entity(&self, id: EntityId) -> Option<Entity> {
        self.live.by_id.get(&id).copied()
    }

    /// Entities replicated as of the last sync.
    #[must_use]
    pub fn len(&self) -> usize {
        self.live.by_entity.len()
    }

    /// Whether nothing was replicated at the last sync.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.live.by_entity.is_empty()
    }

    /// The whole replicated state of `world` as a snapshot, walking every entity with a
    /// [`NetId`] (O(world): for checks, such as that the store missed no change).
    pub fn snapshot(&self, world: &mut World) -> Result<Snapshot, BuildError> {
        let mut q = world.query::<(Entity, &NetId, Option<&NetOwner>)>();
        let mut b = SnapshotBuilder::new(&self.registry);
        for (e, id, owner) in q.iter(world) {
            let mut entity = b.entity(id.0, owner.map_or(Owner::Server, |o| o.0));
            for (_, f) in &self.fns {
                (f.build)(world, e, &mut entity);
            }
        }
        b.finish()
    }
}
