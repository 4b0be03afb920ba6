//! The client side: replicated state into a bevy `World`.

use std::collections::HashMap;

use bevy_ecs::entity::Entity;
use bevy_ecs::resource::Resource;
use bevy_ecs::world::World;
use statewire_core::{ClientId, ComponentView, EntityId, Owner, WorldSink};

use crate::rules::ReplicationRules;
use crate::{NetId, NetOwner, Owned};

/// The client's map from replicated ids to its own bevy entities (a resource in a client
/// app), and a count of changes that could not be applied.
#[derive(Resource, Debug, Default)]
pub struct NetEntities {
    map: HashMap<EntityId, Entity>,
    errors: u64,
}

impl NetEntities {
    /// The bevy entity replicating `id`.
    #[must_use]
    pub fn get(&self, id: EntityId) -> Option<Entity> {
        self.map.get(&id).copied()
    }

    /// Replicated entities held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every replicated id and its entity, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (EntityId, Entity)> + '_ {
        self.map.iter().map(|(&id, &e)| (id, e))
    }

    /// Changes that could not be applied (an unknown entity, an unregistered component);
    /// always 0 while server and client agree on the protocol.
    #[must_use]
    pub fn errors(&self) -> u64 {
        self.errors
    }
}

/// A [`WorldSink`] into a bevy `World`: hand it to `GameClient::update_with` (the client
/// plugin does) or `ClientReplicator::handle_packet`.
///
/// Each replicated entity is spawned with a [`NetId`] and a [`NetOwner`], plus [`Owned`] when
/// its owner is `me`, and gets the replicated components it has on the server; a
/// [`ComponentView`] reaches its type through a table indexed by its `ComponentId`. A despawn
/// despawns the bevy entity and drops it from the map. Changes are applied to the world at
/// once (not through `Commands`), so each one knows whether its entity or component was there.
#[derive(Debug)]
pub struct BevySink<'a> {
    world: &'a mut World,
    entities: &'a mut NetEntities,
    rules: &'a ReplicationRules,
    me: Option<ClientId>,
}

impl<'a> BevySink<'a> {
    /// A sink into `world`, keeping `entities` current, for the components of `rules`; `me`
    /// is this client's id (for [`Owned`]), if known.
    pub fn new(
        world: &'a mut World,
        entities: &'a mut NetEntities,
        rules: &'a ReplicationRules,
        me: Option<ClientId>,
    ) -> Self {
        BevySink {
            world,
            entities,
            rules,
            me,
        }
    }

    fn entity(&self, id: EntityId) -> Option<Entity> {
        self.entities.get(id)
    }

    fn mark_owned(&mut self, e: Entity, owner: Owner) {
        mark_owned(self.world, e, owner, self.me);
    }
}

/// Adds or removes [`Owned`] on `e` by whether `owner` is `me`.
pub(crate) fn mark_owned(world: &mut World, e: Entity, owner: Owner, me: Option<ClientId>) {
    let Ok(mut em) = world.get_entity_mut(e) else {
        return;
    };
    let mine = me.is_some_and(|me| owner == Owner::Client(me));
    if mine && !em.contains::<Owned>() {
        em.insert(Owned);
    } else if !mine && em.contains::<Owned>() {
        em.remove::<Owned>();
    }
}

impl WorldSink for BevySink<'_> {
    fn spawn(&mut self, id: EntityId, owner: Owner) {
        let e = self.world.spawn((NetId(id), NetOwner(owner))).id();
        self.mark_owned(e, owner);
        if let Some(old) = self.entities.map.insert(id, e) {
            // The protocol never spawns a live id twice; keep the newer entity.
            self.world.despawn(old);
            self.entities.errors += 1;
        }
    }

    fn despawn(&mut self, id: EntityId) {
        let gone = self
            .entities
            .map
            .remove(&id)
            .is_some_and(|e| self.world.despawn(e));
        crate::shrink(&mut self.entities.map);
        if !gone {
            self.entities.errors += 1;
        }
    }

    fn set_owner(&mut self, id: EntityId, owner: Owner) {
        let set = self.entity(id).is_some_and(|e| {
            let ok = self
                .world
                .get_entity_mut(e)
                .map(|mut em| {
                    em.insert(NetOwner(owner));
                })
                .is_ok();
            self.mark_owned(e, owner);
            ok
        });
        if !set {
            self.entities.errors += 1;
        }
    }

    fn insert(&mut self, id: EntityId, component: ComponentView<'_>) {
        let done = match (self.entity(id), self.rules.fns(component.id())) {
            (Some(e), Some(f)) => (f.insert)(self.world, e, component),
            _ => false,
        };
        if !done {
            self.entities.errors += 1;
        }
    }

    fn remove(&mut self, id: EntityId, component: ComponentView<'_>) {
        let done = match (self.entity(id), self.rules.fns(component.id())) {
            (Some(e), Some(f)) => (f.remove)(self.world, e),
            _ => false,
        };
        if !done {
            self.entities.errors += 1;
        }
    }
}
