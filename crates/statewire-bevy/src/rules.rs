//! The replicated components and what the adapter does with each, registered once.

use bevy_ecs::component::Component;
use bevy_ecs::entity::Entity;
use bevy_ecs::resource::Resource;
use bevy_ecs::world::World;
use statewire::endpoint::{Protocol, ProtocolError};
use statewire_core::{
    ComponentId, ComponentView, EntityBuilder, EntityId, Registry, Replicate, Store, StoreError,
};

use crate::sync::{TrackComponent, Tracker};

/// What the adapter does with one component type; plain function pointers, made at
/// registration and indexed by [`ComponentId`].
#[derive(Clone, Copy)]
pub(crate) struct ComponentFns {
    /// Client: insert (add or replace) the view's value.
    pub(crate) insert: fn(&mut World, Entity, ComponentView<'_>) -> bool,
    /// Client: remove the component; whether it was there.
    pub(crate) remove: fn(&mut World, Entity) -> bool,
    /// Server: a change tracker for the type.
    pub(crate) tracker: fn() -> Box<dyn TrackComponent>,
    /// Server: set the value the entity has now, if any.
    pub(crate) write_current: fn(&World, Entity, EntityId, &mut Store) -> Result<bool, StoreError>,
    /// Server: add the value the entity has now to a snapshot entity.
    pub(crate) build: fn(&World, Entity, &mut EntityBuilder<'_, '_>),
    /// Both: register the bevy component, so `&World` queries work before the first spawn.
    pub(crate) register: fn(&mut World),
}

fn insert_view<T: Replicate + Component>(
    world: &mut World,
    e: Entity,
    view: ComponentView<'_>,
) -> bool {
    let Some(v) = view.get::<T>() else {
        return false;
    };
    match world.get_entity_mut(e) {
        Ok(mut em) => {
            // bevy's `insert` adds or replaces: exactly "added or changed".
            em.insert(v);
            true
        }
        Err(_) => false,
    }
}

fn remove_typed<T: Component>(world: &mut World, e: Entity) -> bool {
    // `take` rather than `remove`: it says whether the component was there.
    world
        .get_entity_mut(e)
        .is_ok_and(|mut em| em.take::<T>().is_some())
}

fn write_current<T: Replicate + Component>(
    world: &World,
    e: Entity,
    id: EntityId,
    store: &mut Store,
) -> Result<bool, StoreError> {
    match world.get::<T>(e) {
        Some(v) => store.set(id, v).map(|()| true),
        None => Ok(false),
    }
}

fn build<T: Replicate + Component>(world: &World, e: Entity, b: &mut EntityBuilder<'_, '_>) {
    if let Some(v) = world.get::<T>(e) {
        b.component(v);
    }
}

fn register<T: Component>(world: &mut World) {
    world.register_component::<T>();
}

fn tracker<T: Replicate + Component>() -> Box<dyn TrackComponent> {
    Box::new(Tracker::<T>::default())
}

/// The replicated components (a statewire [`Protocol`], which can also declare message
/// channels) and, for each, how the adapter reads and writes it in a bevy `World`.
///
/// In an app it is a resource that [`AppReplicateExt::replicate`](crate::AppReplicateExt)
/// fills; server and client must register the same components in the same order. Outside an
/// app (a `World` driven by hand) build one with [`ReplicationRules::with`].
#[derive(Resource, Clone, Default)]
pub struct ReplicationRules {
    protocol: Protocol,
    /// Indexed by `ComponentId.0`.
    fns: Vec<Option<ComponentFns>>,
    /// Components their owner writes (client side), each once.
    owner_writes: Vec<(ComponentId, crate::owner_writes::OwnerWriteFns)>,
}

impl std::fmt::Debug for ReplicationRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationRules")
            .field("components", &self.registry().len())
            .field("fingerprint", &self.protocol.fingerprint())
            .finish()
    }
}

impl ReplicationRules {
    /// No components.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts from `protocol` (its channels, and components that keep their ids; those the
    /// adapter should handle must still be [`replicate`](Self::replicate)d).
    #[must_use]
    pub fn from_protocol(protocol: Protocol) -> Self {
        ReplicationRules {
            protocol,
            fns: Vec::new(),
            owner_writes: Vec::new(),
        }
    }

    /// Replicates bevy component `T`: registers it in the protocol (unless it is there
    /// already) and records how to track and apply it. Registering it twice is harmless.
    pub fn replicate<T: Replicate + Component>(&mut self) -> Result<ComponentId, ProtocolError> {
        let id = match self.protocol.registry().id_of::<T>() {
            Some(id) => id,
            None => self.protocol.register::<T>()?,
        };
        let slot = usize::from(id.0);
        if self.fns.len() <= slot {
            self.fns.resize(slot + 1, None);
        }
        self.fns[slot] = Some(ComponentFns {
            insert: insert_view::<T>,
            remove: remove_typed::<T>,
            tracker: tracker::<T>,
            write_current: write_current::<T>,
            build: build::<T>,
            register: register::<T>,
        });
        Ok(id)
    }

    /// Replicates `T` (as [`replicate`](Self::replicate)) and lets its owner write it: on a
    /// client, when a game system changes `T` on an entity marked [`Owned`](crate::Owned), the
    /// client plugin sends the new value to the server, which validates it (owner, rate,
    /// range; see `GameServer::set_client_writable` for the server's own policy) and applies
    /// it. Changes the replication made are not echoed back.
    pub fn replicate_owned<T: Replicate + Component>(
        &mut self,
    ) -> Result<ComponentId, ProtocolError> {
        let id = self.replicate::<T>()?;
        if !self.owner_writes.iter().any(|(c, _)| *c == id) {
            self.owner_writes
                .push((id, crate::owner_writes::fns::<T>()));
        }
        Ok(id)
    }

    pub(crate) fn owner_writes(
        &self,
    ) -> impl Iterator<Item = crate::owner_writes::OwnerWriteFns> + '_ {
        self.owner_writes.iter().map(|(_, f)| *f)
    }

    /// Builder form of [`replicate`](Self::replicate).
    pub fn with<T: Replicate + Component>(mut self) -> Result<Self, ProtocolError> {
        self.replicate::<T>()?;
        Ok(self)
    }

    /// The protocol both ends must share: give it to `GameServer::new` / `GameClient::new`.
    #[must_use]
    pub fn protocol(&self) -> &Protocol {
        &self.protocol
    }

    /// The protocol, to declare message channels.
    pub fn protocol_mut(&mut self) -> &mut Protocol {
        &mut self.protocol
    }

    /// The replicated components.
    #[must_use]
    pub fn registry(&self) -> &Registry {
        self.protocol.registry()
    }

    pub(crate) fn fns(&self, id: ComponentId) -> Option<ComponentFns> {
        self.fns.get(usize::from(id.0)).copied().flatten()
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = ComponentFns> + '_ {
        self.fns.iter().flatten().copied()
    }

    /// Registers every replicated component (and the adapter's own) in `world`, so that
    /// queries from `&World` work before anything was spawned.
    pub fn register_components(&self, world: &mut World) {
        world.register_component::<crate::NetId>();
        world.register_component::<crate::NetOwner>();
        world.register_component::<crate::Owned>();
        for f in self.all() {
            (f.register)(world);
        }
    }
}
