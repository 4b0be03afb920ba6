//! Client side: components the owner writes. A game system changes such a component on an
//! entity the client [`Owned`](crate::Owned); the client plugin sends the new value as a
//! state write, which the server validates and applies (and copies into its world).
//! Changes the replication itself made (the sink, in `PreUpdate`) are not sent back: each
//! type's change query is read once right after the sink, so by `PostUpdate` it reports only
//! what the game's systems changed since.

use bevy_ecs::component::Component;
use bevy_ecs::query::{Changed, With};
use bevy_ecs::resource::Resource;
use bevy_ecs::system::{Query, SystemState};
use bevy_ecs::world::{Mut, World};
use statewire_core::{Registry, Replicate, StateWrite};

use crate::{NetId, Owned};

/// Per type: the change query over the entities we own.
type OwnedChanges<T> =
    SystemState<Query<'static, 'static, (&'static NetId, &'static T), (With<Owned>, Changed<T>)>>;

#[derive(Resource)]
struct OwnerWrites<T: Component>(OwnedChanges<T>);

/// The two steps for one type, as function pointers ([`crate::ReplicationRules`] keeps them).
#[derive(Clone, Copy)]
pub(crate) struct OwnerWriteFns {
    /// Right after replication applied a packet: mark everything changed so far as seen.
    pub(crate) consume: fn(&mut World),
    /// Before sending: the values the game changed since, as writes.
    pub(crate) collect: fn(&mut World, &Registry, &mut Vec<StateWrite>),
}

impl std::fmt::Debug for OwnerWriteFns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OwnerWriteFns")
    }
}

pub(crate) fn fns<T: Replicate + Component>() -> OwnerWriteFns {
    OwnerWriteFns {
        consume: consume::<T>,
        collect: collect::<T>,
    }
}

fn with_state<T: Component>(world: &mut World, f: impl FnOnce(&World, &mut OwnedChanges<T>)) {
    if !world.contains_resource::<OwnerWrites<T>>() {
        let state = SystemState::new(world);
        world.insert_resource(OwnerWrites::<T>(state));
    }
    world.resource_scope(|world, mut s: Mut<OwnerWrites<T>>| f(world, &mut s.0));
}

fn consume<T: Replicate + Component>(world: &mut World) {
    with_state::<T>(world, |world, state| {
        // Reading advances the query's last run past the replication's own changes.
        if let Ok(q) = state.get(world) {
            let _ = q.iter().count();
        }
    });
}

fn collect<T: Replicate + Component>(
    world: &mut World,
    registry: &Registry,
    out: &mut Vec<StateWrite>,
) {
    with_state::<T>(world, |world, state| {
        let Ok(q) = state.get(world) else {
            return;
        };
        for (id, value) in q.iter() {
            let mut values = Vec::new();
            if let Ok(component) = registry.raw_values(value, &mut values) {
                out.push(StateWrite {
                    entity: id.0,
                    component,
                    values,
                });
            }
        }
    });
}
