//! statewire for [bevy](https://bevyengine.org): server and client plugins that replicate
//! bevy components, on `bevy_ecs` and `bevy_app` 0.19 alone (no engine, no reflection, no
//! task executor).
//!
//! # Quick start
//!
//! Declare replicated components as bevy [`Component`]s
//! that also implement statewire's [`Replicate`](statewire_core::Replicate) (the fields and
//! their quantization). Register them on both apps, in the same order, with
//! [`AppReplicateExt::replicate`], add [`StatewireServerPlugin`] or
//! [`StatewireClientPlugin`], and insert the endpoint, built with
//! [`AppReplicateExt::protocol`], as a resource ([`NetServer`], [`NetClient`]).
//!
//! ```
//! use std::time::Duration;
//! use bevy_app::prelude::*;
//! use bevy_ecs::prelude::*;
//! use statewire::endpoint::*;
//! use statewire_bevy::*;
//! use statewire_core::{Field, FieldKind, FieldReader, FieldWriter, Owner, Replicate};
//! use statewire_transport::{Transport, loopback::{LoopbackConfig, LoopbackEndpoint, LoopbackNet}};
//!
//! #[derive(Component, Debug, Clone, Copy, PartialEq)]
//! struct Pos(f32);
//! impl Replicate for Pos {
//!     const NAME: &'static str = "Pos";
//!     fn fields() -> Vec<Field> {
//!         vec![Field::new("x", FieldKind::Float { min: -64.0, max: 64.0, precision: 1.0 / 16.0 })]
//!     }
//!     fn write(&self, w: &mut FieldWriter<'_>) { w.f32(self.0) }
//!     fn read(r: &mut FieldReader<'_>) -> Option<Self> { Some(Pos(r.f32()?)) }
//! }
//! // Inputs are any serde type: here a step along x.
//! type Input = i8;
//!
//! /// Server game: a player entity per client, moved by that client's input.
//! fn server_game(
//!     mut events: MessageReader<ServerEvent<Input>>,
//!     mut commands: Commands,
//!     mut players: Query<(&NetOwner, &mut Pos)>,
//! ) {
//!     for ServerEvent(ev) in events.read() {
//!         match ev {
//!             GameServerEvent::Joined(c) => {
//!                 // `Replicated` asks for a NetId; the plugin finds the spawn by itself.
//!                 commands.spawn((Replicated, NetOwner(Owner::Client(*c)), Pos(0.0)));
//!             }
//!             GameServerEvent::Input { client, input, .. } => {
//!                 for (owner, mut pos) in &mut players {
//!                     if owner.0 == Owner::Client(*client) {
//!                         pos.0 = (pos.0 + f32::from(*input) * 0.25).min(5.0);
//!                     }
//!                 }
//!             }
//!             _ => {}
//!         }
//!     }
//! }
//!
//! /// Client game: always walk right.
//! fn controls(mut input: ResMut<LocalInput<Input>>) {
//!     input.0 = Some(1);
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let net = LoopbackNet::new(LoopbackConfig::default());
//! let server_t = net.endpoint();
//! let addr = server_t.local_addr();
//!
//! let mut server = App::new();
//! server
//!     .add_plugins(StatewireServerPlugin::<LoopbackEndpoint, Input>::default())
//!     .replicate::<Pos>()
//!     .add_systems(Update, server_game);
//! let endpoint = GameServer::<_, Input>::new(server_t, &server.protocol(), GameServerConfig::default())?;
//! server.insert_resource(NetServer::new(endpoint));
//!
//! let mut clients = Vec::new();
//! for _ in 0..2 {
//!     let mut app = App::new();
//!     app.add_plugins(StatewireClientPlugin::<LoopbackEndpoint, Input>::default())
//!         .replicate::<Pos>()
//!         .add_systems(Update, controls);
//!     let endpoint = GameClient::<_, Input>::new(
//!         net.endpoint(), addr, &app.protocol(), GameClientConfig::default(), Duration::ZERO,
//!     )?;
//!     app.insert_resource(NetClient::new(endpoint));
//!     clients.push(app);
//! }
//!
//! // The apps read time from `NetClock`, which we step: 120 frames at 30 Hz.
//! for frame in 0..120 {
//!     for app in std::iter::once(&mut server).chain(&mut clients) {
//!         app.world_mut().resource_mut::<NetClock>().0 = Duration::from_millis(frame * 33);
//!         app.update();
//!     }
//! }
//!
//! // Each client holds both players at the end of their walk, and owns one of them.
//! for app in &mut clients {
//!     let mut q = app.world_mut().query::<(&Pos, &NetOwner, Has<Owned>)>();
//!     let players: Vec<_> = q.iter(app.world()).map(|(p, _, owned)| (*p, owned)).collect();
//!     assert_eq!(players.len(), 2);
//!     assert!(players.iter().all(|(p, _)| *p == Pos(5.0)));
//!     assert_eq!(players.iter().filter(|(_, owned)| *owned).count(), 1);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Server
//!
//! The world is the source of truth; the replicated [`Store`](statewire_core::Store) inside the
//! `GameServer` mirrors it. A replicated entity is one with a [`NetId`] (its wire name): give
//! it one yourself, or add [`Replicated`] and the plugin gives it the next free id. Its owner
//! is its [`NetOwner`] (the server's if it has none). Entities without a [`NetId`], and
//! components that were not registered, stay on the server.
//!
//! [`StatewireServerPlugin`] runs two exclusive systems:
//!
//! - in `PreUpdate` ([`StatewireSet::Receive`]): `GameServer::update` reads the network, and
//!   every [`GameServerEvent`](statewire::endpoint::GameServerEvent) comes out as a
//!   [`ServerEvent`] message: `Joined`, `Left`, `Input` (the input a client stamped for this
//!   tick), `EventResolved`, `Message`, and the writes. A client's write of an entity it owns
//!   (`GameClient::write`) that the server validated is copied into the world before its
//!   `WriteApplied` comes out;
//! - in `PostUpdate` ([`StatewireSet::Send`]), after the game's systems: [`ServerSync::sync`]
//!   records into the store what changed in the world this frame, found with bevy's own change
//!   ticks (`Changed<NetId>` for spawns, `RemovedComponents<NetId>` for despawns,
//!   `Changed<NetOwner>`, and `Changed<T>` / `RemovedComponents<T>` per replicated `T`), so its
//!   cost follows the changes; then `GameServer::flush` replicates to every client.
//!
//! Proposals of events (`GameClient::propose`) are resolved by the game, from a system taking
//! `ResMut<NetServer<T, I>>`, with `resolve_events`; those left unresolved at the flush are
//! refused.
//!
//! # Client
//!
//! [`StatewireClientPlugin`] runs:
//!
//! - in `PreUpdate`: `GameClient::update_with` a [`BevySink`] into the world: each
//!   replicated entity is spawned with [`NetId`], [`NetOwner`] and, if this client owns it,
//!   [`Owned`]; components are inserted, replaced and removed as on the server; despawns
//!   despawn. [`NetEntities`] maps ids to the client's entities. Every
//!   [`GameClientEvent`](statewire::endpoint::GameClientEvent) comes out as a [`ClientEvent`]
//!   message;
//! - in `PostUpdate`: the [`LocalInput<I>`] resource, when `Some`, goes to
//!   `GameClient::set_input`, and `GameClient::flush` sends it with the writes and proposals
//!   the game queued through `ResMut<NetClient<T, I>>`.
//!
//! # Time, and where the endpoints live
//!
//! Nothing here reads a clock: both plugins take the time from the [`NetClock`] resource,
//! which the app advances (from bevy's `Time`, a fixed step, or a test's loop), so a test is
//! deterministic. The endpoints are plain resources ([`NetServer`], [`NetClient`]):
//! statewire's transports are `Send + Sync`, so game systems reach them with `Res`/`ResMut`,
//! and the plugins' own systems are exclusive (`&mut World`), since they change the world and
//! the endpoint together. Nothing runs on other threads.
//!
//! # Without an app
//!
//! [`ServerSync`] and [`BevySink`] work on a `World` driven by hand too (the
//! `statewire-examples` crate's `bevy_world` does): build [`ReplicationRules`] with
//! [`ReplicationRules::with`], call `ServerSync::sync(&mut world, &mut store)` once per tick
//! followed by `world.clear_trackers()` (as an app does after each update), and hand a
//! `BevySink` to `ClientReplicator::handle_packet`.
//!
//! # Compile time
//!
//! Both bevy crates are used with `default-features = false` and the `std` feature only (no
//! `bevy_reflect`, no multi-threaded executor, no backtraces). Measured on a shared 2-core
//! machine, debug profile: the ten `bevy_*` crates build in about 15 s (17 s of CPU) once
//! their few small dependencies are built; the first build of this crate after the rest of
//! the workspace, all new dependencies included, took 1 min 49 s (44 s of CPU).

mod owner_writes;
mod plugin;
mod rules;
mod sink;
mod sync;

use std::collections::HashMap;

use bevy_ecs::component::Component;
use statewire_core::{EntityId, Owner};

pub use plugin::{
    AppReplicateExt, ClientEvent, LocalInput, NetClient, NetClock, NetServer, ServerEvent,
    StatewireClientPlugin, StatewireServerPlugin, StatewireSet,
};
pub use rules::ReplicationRules;
pub use sink::{BevySink, NetEntities};
pub use sync::{ServerSync, SyncStats};

/// The wire name of a replicated entity, on both sides. On the server, give it yourself
/// (unique among live entities) or add [`Replicated`] to have one assigned.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetId(pub EntityId);

/// Who may write a replicated entity's state (statewire's [`Owner`], which cannot be a bevy
/// component itself). On the server, missing means [`Owner::Server`]; on clients every
/// replicated entity has one.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetOwner(pub Owner);

/// Client side: this client owns the entity (its [`NetOwner`] is this client), so it may
/// write it with `GameClient::write`. Added and removed as ownership moves.
#[derive(Component, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owned;

/// Server side: replicate this entity, with a [`NetId`] the server plugin assigns (the next
/// id free in the store) if it has none. A game that also chooses ids itself must keep them
/// apart from the assigned ones (which count up from 1): two live entities with one id are a
/// store error ([`NetServer::sync_error`]).
#[derive(Component, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replicated;

/// Shrinks a map that has emptied to a quarter of its capacity.
pub(crate) fn shrink<K: std::hash::Hash + Eq, V>(m: &mut HashMap<K, V>) {
    if m.capacity() > 64 && m.len() < m.capacity() / 4 {
        m.shrink_to(m.len() * 2);
    }
}
