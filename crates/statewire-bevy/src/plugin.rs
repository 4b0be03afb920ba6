//! The plugins, their resources, messages and system sets, and the `App` extension.

use std::marker::PhantomData;
use std::time::Duration;

use bevy_app::{App, Plugin, PostUpdate, PreUpdate};
use bevy_ecs::component::Component;
use bevy_ecs::message::Message;
use bevy_ecs::resource::Resource;
use bevy_ecs::schedule::{IntoScheduleConfigs, SystemSet};
use bevy_ecs::world::{Mut, World};
use serde::Serialize;
use serde::de::DeserializeOwned;
use statewire::endpoint::{
    GameClient, GameClientEvent, GameServer, GameServerEvent, Protocol, ProtocolError,
};
use statewire_core::{Replicate, StoreError};
use statewire_transport::{Transport, TransportError};

use crate::NetOwner;
use crate::rules::ReplicationRules;
use crate::sink::{BevySink, NetEntities, mark_owned};
use crate::sync::{ServerSync, SyncStats};

/// The time the endpoints see, which the app advances (for example from bevy's `Time`, or by
/// a fixed step per update). Read by the receive and send systems; nothing in this crate reads
/// a clock of its own, so a test that steps it is deterministic.
#[derive(Resource, Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct NetClock(pub Duration);

impl NetClock {
    /// Moves the clock forward by `dt`.
    pub fn advance(&mut self, dt: Duration) {
        self.0 += dt;
    }
}

/// Where the plugins' systems run, to order the game's own against them.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatewireSet {
    /// `PreUpdate`: read the network; events come out as messages, client state reaches the
    /// world.
    Receive,
    /// `PostUpdate`: after the game's systems; the server records the world's changes and
    /// replicates, the client sends its input and writes.
    Send,
}

/// A [`GameServerEvent`], as a bevy message (read it with
/// `MessageReader<ServerEvent<I>>`). A client's applied write
/// ([`GameServerEvent::WriteApplied`]) has already been copied into the world when it comes
/// out.
#[derive(Message, Debug, Clone, PartialEq)]
pub struct ServerEvent<I: Send + Sync + 'static>(pub GameServerEvent<I>);

/// A [`GameClientEvent`], as a bevy message. Spawns and despawns have already been applied to
/// the world when they come out.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct ClientEvent(pub GameClientEvent);

/// The server endpoint as a resource: a [`GameServer`] (reach it through `Deref`, for
/// example to `resolve_events`, `send` or read `store()`) and the [`ServerSync`] that feeds
/// its store from the world.
///
/// A plain (`Send + Sync`) resource, so game systems take it as `ResMut<NetServer<T, I>>`;
/// every statewire transport is `Send + Sync` (UDP sockets, the loopback's shared queues). A
/// transport that is not could not be held here.
///
/// The world is the source of truth: change replicated state in the world, not through
/// `store_mut()`, or the next sync and the store disagree. (Despawning an entity from the store
/// in `resolve_events` is tolerated: the world's despawn that follows is then no error.)
#[derive(Resource)]
pub struct NetServer<T: Transport + Send + Sync + 'static, I: Send + Sync + 'static> {
    server: GameServer<T, I>,
    sync: Option<ServerSync>,
    error: Option<TransportError>,
    sync_error: Option<StoreError>,
    stats: SyncStats,
}

impl<T: Transport + Send + Sync + 'static, I: Send + Sync + 'static> NetServer<T, I> {
    /// Wraps `server` (built with the app's [`AppReplicateExt::protocol`]).
    #[must_use]
    pub fn new(server: GameServer<T, I>) -> Self {
        NetServer {
            server,
            sync: None,
            error: None,
            sync_error: None,
            stats: SyncStats::default(),
        }
    }

    /// The first transport error the endpoint met, if any (the systems then stop calling it).
    #[must_use]
    pub fn error(&self) -> Option<&TransportError> {
        self.error.as_ref()
    }

    /// The last error a sync met (a game bug: a duplicate [`NetId`](crate::NetId), a value
    /// outside its schema), if any.
    #[must_use]
    pub fn sync_error(&self) -> Option<&StoreError> {
        self.sync_error.as_ref()
    }

    /// What the last sync recorded.
    #[must_use]
    pub fn last_sync(&self) -> SyncStats {
        self.stats
    }

    /// The sync (its entity map, a whole-world snapshot for checks); `None` before the first
    /// `PostUpdate`.
    #[must_use]
    pub fn sync(&self) -> Option<&ServerSync> {
        self.sync.as_ref()
    }

    /// The endpoint, out of the resource.
    #[must_use]
    pub fn into_inner(self) -> GameServer<T, I> {
        self.server
    }
}

impl<T: Transport + Send + Sync + 'static, I: Send + Sync + 'static> std::ops::Deref
    for NetServer<T, I>
{
    type Target = GameServer<T, I>;
    fn deref(&self) -> &GameServer<T, I> {
        &self.server
    }
}

impl<T: Transport + Send + Sync + 'static, I: Send + Sync + 'static> std::ops::DerefMut
    for NetServer<T, I>
{
    fn deref_mut(&mut self) -> &mut GameServer<T, I> {
        &mut self.server
    }
}

/// The client endpoint as a resource: a [`GameClient`] (through `Deref`: `write`, `propose`,
/// `send`, `owned`, `id`…). `Send + Sync` like [`NetServer`].
#[derive(Resource)]
pub struct NetClient<T: Transport + Send + Sync + 'static, I: Send + Sync + 'static> {
    client: GameClient<T, I>,
    error: Option<TransportError>,
}

impl<T: Transport + Send + Sync + 'static, I: Send + Sync + 'static> NetClient<T, I> {
    /// Wraps `client` (built with the app's [`AppReplicateExt::protocol`]).
    #[must_use]
    pub fn new(client: GameClient<T, I>) -> Self {
        NetClient {
            client,
            error: None,
        }
    }

    /// The first transport error the endpoint met, if any (the systems then stop calling it).
    #[must_use]
    pub fn error(&self) -> Option<&TransportError> {
        self.error.as_ref()
    }

    /// The endpoint, out of the resource.
    #[must_use]
    pub fn into_inner(self) -> GameClient<T, I> {
        self.client
    }
}

impl<T: Transport + Send + Sync + 'static, I: Send + Sync + 'static> std::ops::Deref
    for NetClient<T, I>
{
    type Target = GameClient<T, I>;
    fn deref(&self) -> &GameClient<T, I> {
        &self.client
    }
}

impl<T: Transport + Send + Sync + 'static, I: Send + Sync + 'static> std::ops::DerefMut
    for NetClient<T, I>
{
    fn deref_mut(&mut self) -> &mut GameClient<T, I> {
        &mut self.client
    }
}

/// The local player's input, which the client plugin hands to `GameClient::set_input` in
/// every `PostUpdate` while it is `Some` (the server then receives it as
/// [`GameServerEvent::Input`]). The game sets it from its controls.
#[derive(Resource, Debug, Clone, PartialEq)]
pub struct LocalInput<I: Send + Sync + 'static>(pub Option<I>);

impl<I: Send + Sync + 'static> Default for LocalInput<I> {
    fn default() -> Self {
        LocalInput(None)
    }
}

/// Registering replicated components on an [`App`].
pub trait AppReplicateExt {
    /// Replicates bevy component `T`: registers it in the app's [`ReplicationRules`] (made
    /// if missing). Server and client apps must register the same components in the same
    /// order, before building their endpoints with [`protocol`](Self::protocol).
    ///
    /// # Panics
    ///
    /// If `T`'s schema is invalid (see [`try_replicate`](Self::try_replicate)).
    fn replicate<T: Replicate + Component>(&mut self) -> &mut Self;

    /// [`replicate`](Self::replicate), returning the schema error instead of panicking.
    fn try_replicate<T: Replicate + Component>(&mut self) -> Result<&mut Self, ProtocolError>;

    /// Replicates `T` and lets its owner write it: on a client, a game system's change of `T`
    /// on an [`Owned`](crate::Owned) entity is sent to the server as a state write (see
    /// [`ReplicationRules::replicate_owned`]).
    ///
    /// # Panics
    ///
    /// If `T`'s schema is invalid.
    fn replicate_owned<T: Replicate + Component>(&mut self) -> &mut Self;

    /// The protocol the registered components make, to build the endpoint with.
    fn protocol(&self) -> Protocol;
}

impl AppReplicateExt for App {
    fn replicate<T: Replicate + Component>(&mut self) -> &mut Self {
        self.try_replicate::<T>()
            .unwrap_or_else(|e| panic!("cannot replicate {}: {e}", T::NAME))
    }

    fn try_replicate<T: Replicate + Component>(&mut self) -> Result<&mut Self, ProtocolError> {
        let world = self.world_mut();
        world.init_resource::<ReplicationRules>();
        world.resource_mut::<ReplicationRules>().replicate::<T>()?;
        world.register_component::<T>();
        Ok(self)
    }

    fn replicate_owned<T: Replicate + Component>(&mut self) -> &mut Self {
        let world = self.world_mut();
        world.init_resource::<ReplicationRules>();
        if let Err(e) = world
            .resource_mut::<ReplicationRules>()
            .replicate_owned::<T>()
        {
            panic!("cannot replicate {}: {e}", T::NAME);
        }
        world.register_component::<T>();
        self
    }

    fn protocol(&self) -> Protocol {
        self.world()
            .get_resource::<ReplicationRules>()
            .map(|r| r.protocol().clone())
            .unwrap_or_default()
    }
}

fn common(app: &mut App) {
    let world = app.world_mut();
    world.init_resource::<ReplicationRules>();
    world.init_resource::<NetClock>();
    world.register_component::<crate::NetId>();
    world.register_component::<NetOwner>();
    world.register_component::<crate::Owned>();
    app.configure_sets(PreUpdate, StatewireSet::Receive);
    app.configure_sets(PostUpdate, StatewireSet::Send);
}

/// The server plugin, for transport `T` and inputs `I`. Add it, [`replicate`] the
/// components, then insert a [`NetServer`] built with the app's [`protocol`]; until then its
/// systems do nothing. It adds [`NetClock`], [`ReplicationRules`], the [`ServerEvent<I>`]
/// message, and two exclusive systems:
///
/// - `PreUpdate` ([`StatewireSet::Receive`]): `GameServer::update`, client writes copied into
///   the world, events out as [`ServerEvent`]s;
/// - `PostUpdate` ([`StatewireSet::Send`]): [`ServerSync::sync`] (the world's changes, found
///   with `Changed`/`RemovedComponents`, into the store), then `GameServer::flush`.
///
/// [`replicate`]: AppReplicateExt::replicate
/// [`protocol`]: AppReplicateExt::protocol
pub struct StatewireServerPlugin<T, I>(PhantomData<fn() -> (T, I)>);

impl<T, I> Default for StatewireServerPlugin<T, I> {
    fn default() -> Self {
        StatewireServerPlugin(PhantomData)
    }
}

impl<T, I> Plugin for StatewireServerPlugin<T, I>
where
    T: Transport + Send + Sync + 'static,
    I: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    fn build(&self, app: &mut App) {
        common(app);
        app.add_message::<ServerEvent<I>>();
        app.add_systems(
            PreUpdate,
            server_receive::<T, I>.in_set(StatewireSet::Receive),
        );
        app.add_systems(PostUpdate, server_send::<T, I>.in_set(StatewireSet::Send));
    }
}

fn server_receive<T, I>(world: &mut World)
where
    T: Transport + Send + Sync + 'static,
    I: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    if !world.contains_resource::<NetServer<T, I>>() {
        return;
    }
    let now = world
        .get_resource::<NetClock>()
        .copied()
        .unwrap_or_default()
        .0;
    world.resource_scope(|world, mut net: Mut<NetServer<T, I>>| {
        let net = &mut *net;
        if net.error.is_some() {
            return;
        }
        if let Err(e) = net.server.update(now) {
            net.error = Some(e);
            return;
        }
        while let Some(ev) = net.server.poll_event() {
            if let (
                GameServerEvent::WriteApplied {
                    entity, component, ..
                },
                Some(sync),
            ) = (&ev, &net.sync)
            {
                sync.apply_write(world, net.server.store(), *entity, *component);
            }
            world.write_message(ServerEvent(ev));
        }
    });
}

fn server_send<T, I>(world: &mut World)
where
    T: Transport + Send + Sync + 'static,
    I: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    if !world.contains_resource::<NetServer<T, I>>() {
        return;
    }
    let now = world
        .get_resource::<NetClock>()
        .copied()
        .unwrap_or_default()
        .0;
    world.resource_scope(|world, mut net: Mut<NetServer<T, I>>| {
        let net = &mut *net;
        if net.error.is_some() {
            return;
        }
        if net.sync.is_none() {
            let rules = world
                .get_resource::<ReplicationRules>()
                .cloned()
                .unwrap_or_default();
            net.sync = Some(ServerSync::new(&rules));
        }
        if let Some(sync) = net.sync.as_mut() {
            // A store error is a game bug (a duplicate NetId, a value outside its schema): kept
            // for `sync_error`, and the tick's other changes are still sent.
            match sync.sync(world, net.server.store_mut()) {
                Ok(stats) => net.stats = stats,
                Err(e) => net.sync_error = Some(e),
            }
        }
        if let Err(e) = net.server.flush(now) {
            net.error = Some(e);
        }
    });
}

/// The client plugin, for transport `T` and inputs `I`. Add it, [`replicate`] the same
/// components as the server, then insert a [`NetClient`] built with the app's [`protocol`].
/// It adds [`NetClock`], [`ReplicationRules`], [`NetEntities`], [`LocalInput<I>`], the
/// [`ClientEvent`] message, and two exclusive systems:
///
/// - `PreUpdate` ([`StatewireSet::Receive`]): `GameClient::update_with` a [`BevySink`] into
///   the world (spawns with [`NetId`](crate::NetId), [`NetOwner`] and
///   [`Owned`](crate::Owned), component inserts and removals, despawns), events out as
///   [`ClientEvent`]s;
/// - `PostUpdate` ([`StatewireSet::Send`]): the [`LocalInput`] to `GameClient::set_input`,
///   the game's changes of [`replicate_owned`](AppReplicateExt::replicate_owned) components
///   on [`Owned`](crate::Owned) entities as writes, then `GameClient::flush` (with any writes
///   the game queued through [`NetClient`]).
///
/// [`replicate`]: AppReplicateExt::replicate
/// [`protocol`]: AppReplicateExt::protocol
pub struct StatewireClientPlugin<T, I>(PhantomData<fn() -> (T, I)>);

impl<T, I> Default for StatewireClientPlugin<T, I> {
    fn default() -> Self {
        StatewireClientPlugin(PhantomData)
    }
}

impl<T, I> Plugin for StatewireClientPlugin<T, I>
where
    T: Transport + Send + Sync + 'static,
    I: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn build(&self, app: &mut App) {
        common(app);
        app.init_resource::<NetEntities>();
        app.init_resource::<LocalInput<I>>();
        app.add_message::<ClientEvent>();
        app.add_systems(
            PreUpdate,
            client_receive::<T, I>.in_set(StatewireSet::Receive),
        );
        app.add_systems(PostUpdate, client_send::<T, I>.in_set(StatewireSet::Send));
    }
}

fn client_receive<T, I>(world: &mut World)
where
    T: Transport + Send + Sync + 'static,
    I: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    if !world.contains_resource::<NetClient<T, I>>() {
        return;
    }
    let now = world
        .get_resource::<NetClock>()
        .copied()
        .unwrap_or_default()
        .0;
    world.init_resource::<NetEntities>();
    world.init_resource::<ReplicationRules>();
    world.resource_scope(|world, mut net: Mut<NetClient<T, I>>| {
        let net = &mut *net;
        if net.error.is_some() {
            return;
        }
        world.resource_scope(|world, mut entities: Mut<NetEntities>| {
            world.resource_scope(|world, rules: Mut<ReplicationRules>| {
                let before = net.client.id();
                let mut sink = BevySink::new(world, &mut entities, &rules, before);
                if let Err(e) = net.client.update_with(now, &mut sink) {
                    net.error = Some(e);
                }
                // What the replication changed is not the owner's to send back.
                for f in rules.owner_writes() {
                    (f.consume)(world);
                }
                let me = net.client.id();
                if me != before {
                    // We learnt our id in this update: mark what we own.
                    for (_, e) in entities.iter() {
                        if let Some(owner) = world.get::<NetOwner>(e).map(|o| o.0) {
                            mark_owned(world, e, owner, me);
                        }
                    }
                }
            });
        });
        while let Some(ev) = net.client.poll_event() {
            world.write_message(ClientEvent(ev));
        }
    });
}

fn client_send<T, I>(world: &mut World)
where
    T: Transport + Send + Sync + 'static,
    I: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    if !world.contains_resource::<NetClient<T, I>>() {
        return;
    }
    let now = world
        .get_resource::<NetClock>()
        .copied()
        .unwrap_or_default()
        .0;
    world.resource_scope(|world, mut net: Mut<NetClient<T, I>>| {
        let net = &mut *net;
        if net.error.is_some() {
            return;
        }
        if let Some(input) = world
            .get_resource::<LocalInput<I>>()
            .and_then(|i| i.0.as_ref())
        {
            net.client.set_input(input);
        }
        // The owner's own changes, as writes.
        let mut writes = Vec::new();
        world.init_resource::<ReplicationRules>();
        world.resource_scope(|world, rules: Mut<ReplicationRules>| {
            for f in rules.owner_writes() {
                (f.collect)(world, rules.registry(), &mut writes);
            }
        });
        for w in writes {
            // Refused locally only if ownership moved since the query ran.
            let _ = net.client.write_raw(w);
        }
        if let Err(e) = net.client.flush(now) {
            net.error = Some(e);
        }
    });
}
