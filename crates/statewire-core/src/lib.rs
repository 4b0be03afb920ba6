//! The sans-IO replication core of statewire.
//!
//! # Model
//!
//! A game has *entities* ([`EntityId`]) carrying *components*: game types that implement
//! [`Replicate`] to describe their fields and how each is quantized ([`FieldKind`]). Every
//! entity has an [`Owner`]: the server, or one client allowed to write it.
//!
//! The server keeps its replicated world in a [`Store`]. Each tick the engine tells it what
//! changed ([`Store::spawn`], [`Store::set`], [`Store::remove`], [`Store::despawn`]), or builds
//! a whole [`Snapshot`] with a [`SnapshotBuilder`] (implement [`WorldSource`] or call the
//! builder directly) and hands it to [`Store::apply_snapshot`], which records only what
//! differs. A [`ServerReplicator`] takes in the tick's changes once
//! ([`ServerReplicator::update`]) and encodes a packet for each client
//! ([`ServerReplicator::encode_for`]): the entities with unsent changes, by priority within a
//! byte budget, each as a delta against the state that client acknowledged for it. A
//! [`ClientReplicator`] decodes a packet, applies the changes to the client's world through
//! [`WorldSink`], and says what to acknowledge ([`AckFrame`]). Every entity a packet carries is
//! then bit for bit the server's state at that packet's tick; once everything fits, the
//! client's state equals the store's.
//!
//! Who may write what is the server's call ([`Authority`]): clients send inputs stamped with a
//! tick ([`InputBuffer`]) and, for entities they own, state writes that the server validates
//! before applying. Gameplay events are proposed by anyone and resolved once by the server
//! ([`EventServer`]); they travel with the snapshots
//! ([`ServerReplicator::encode_for_with_events`]) and reach every client exactly once, in
//! order, in step with the entities they name (see [`events`]).
//!
//! There are no sockets, threads or clocks here: bytes and ticks go in, bytes and changes come
//! out. The caller moves the bytes (see the `statewire-transport` crate).
//!
//! # Components
//!
//! The usual way to make a game type a component is `#[derive(Replicate)]` (feature `derive`,
//! on by default), with one quantization rule per field:
//!
//! ```
//! use statewire_core::{Replicate, ReplicateEnum};
//!
//! #[derive(Debug, Clone, Copy, PartialEq, ReplicateEnum)]
//! enum Team { Red, Blue }
//!
//! #[derive(Debug, Clone, PartialEq, Replicate)]
//! struct Soldier {
//!     #[replicate(float(min = -512.0, max = 512.0, precision = 1.0 / 64.0))]
//!     x: f32,
//!     #[replicate(quat(bits = 9))]
//!     rotation: [f32; 4],
//!     #[replicate(int(min = 0, max = 100))]
//!     hp: u8,
//!     alive: bool, // a `bool` needs no rule
//!     #[replicate(enumeration)]
//!     team: Team,
//! }
//! assert_eq!(Soldier::NAME, "Soldier");
//! assert_eq!(Soldier::fields().len(), 5);
//! ```
//!
//! The `statewire-derive` crate documents every rule. The hand-written trait stays possible,
//! for layouts the attributes do not cover; this is what the derive above writes for `x`
//! alone:
//!
//! ```
//! use statewire_core::{Field, FieldKind, FieldReader, FieldWriter, Replicate};
//!
//! struct X(f32);
//! impl Replicate for X {
//!     const NAME: &'static str = "X";
//!     fn fields() -> Vec<Field> {
//!         vec![Field::new("0", FieldKind::Float { min: -512.0, max: 512.0, precision: 1.0 / 64.0 })]
//!     }
//!     fn write(&self, w: &mut FieldWriter<'_>) { w.f32(self.0) }
//!     fn read(r: &mut FieldReader<'_>) -> Option<Self> { Some(X(r.f32()?)) }
//! }
//! ```
//!
//! # A whole loop
//!
//! ```
//! use statewire_core::*;
//!
//! #[derive(Debug, PartialEq, Replicate)]
//! // A power-of-two step dequantizes exactly.
//! struct Pos(#[replicate(float(min = -100.0, max = 100.0, precision = 1.0 / 64.0))] f32);
//!
//! // A client world is anything implementing WorldSink; a Vec is enough.
//! #[derive(Default)]
//! struct Positions(Vec<(EntityId, f32)>);
//! impl WorldSink for Positions {
//!     fn spawn(&mut self, id: EntityId, _: Owner) { self.0.push((id, 0.0)); }
//!     fn despawn(&mut self, id: EntityId) { self.0.retain(|e| e.0 != id); }
//!     fn insert(&mut self, id: EntityId, c: ComponentView<'_>) {
//!         if let (Some(p), Some(e)) = (c.get::<Pos>(), self.0.iter_mut().find(|e| e.0 == id)) {
//!             e.1 = p.0;
//!         }
//!     }
//!     fn remove(&mut self, _: EntityId, _: ComponentView<'_>) {}
//! }
//!
//! let mut registry = Registry::new();
//! registry.register::<Pos>().unwrap();
//! let mut store = Store::new(registry.clone(), StoreConfig::default());
//! let mut server = ServerReplicator::new(ServerConfig::default());
//! let mut client = ClientReplicator::new(ClientConfig::default());
//! let me = ClientId(1);
//! server.add_client(me).unwrap();
//! let mut world = Positions::default();
//!
//! for tick in 1..=3u32 {
//!     // The engine records this tick's changes in the store.
//!     store.begin_tick(Tick(tick)).unwrap();
//!     if tick == 1 {
//!         store.spawn(EntityId(7), Owner::Server).unwrap();
//!     }
//!     store.set(EntityId(7), &Pos(tick as f32)).unwrap();
//!     // Once per tick, then one packet per client.
//!     server.update(&mut store, None);
//!     let mut packet = Vec::new();
//!     server.encode_for(&store, me, &mut packet).unwrap();
//!     // ... packet crosses the network ...
//!     client.handle_packet(&registry, &packet, &mut world).unwrap();
//!     // ... the ack crosses back ...
//!     server.handle_ack(me, client.ack().unwrap()).unwrap();
//!     assert_eq!(client.snapshot(), store.snapshot());
//! }
//! assert_eq!(world.0, vec![(EntityId(7), 3.0)]);
//! ```
#![warn(missing_docs)]

pub mod authority;
pub mod bits;
pub mod clock;
pub mod codec;
pub mod delta;
mod derive_support;
pub mod events;
mod ids;
pub mod interpolation;
pub mod lag_compensation;
pub mod prediction;
pub mod replication;
mod schema;
mod snapshot;
pub mod store;
#[cfg(test)]
mod test_rng;

pub use authority::{
    Authority, AuthorityConfig, InputBuffer, InputRejection, RejectionCounts, StateWrite,
    TransferError, WriteRejection,
};
pub use delta::{DecodeError, EncodeStats, PacketHeader};
pub use derive_support::ReplicateEnum;
#[doc(hidden)]
pub use derive_support::private as __private;
pub use events::{
    EventConfig, EventId, EventServer, EventSink, GameEvent, PredictionOutcome, Predictions,
    Proposal,
};
pub use ids::{ClientId, EntityId, Owner, Tick, Writer};
pub use replication::{
    AckFrame, AckOutcome, Applied, ClientConfig, ClientReplicator, IgnoreEvents, MIN_PACKET_BYTES,
    ReplicationError, ServerConfig, ServerReplicator, packet_header,
};
pub use schema::{
    ComponentCoding, ComponentId, ComponentSchema, ComponentView, Field, FieldKind, FieldReader,
    FieldWriter, MAX_COMPONENT_TYPES, RawValue, Registry, Replicate, SchemaError, ValueError,
};
pub use snapshot::{BuildError, EntityBuilder, Snapshot, SnapshotBuilder, WorldSink, WorldSource};
/// `#[derive(Replicate)]`: implements [`Replicate`](trait@Replicate) from per-field
/// quantization attributes (feature `derive`, on by default).
///
/// ```
/// use statewire_core::Replicate;
///
/// #[derive(Replicate)]
/// struct Position {
///     #[replicate(float(min = -512.0, max = 512.0, precision = 1.0 / 64.0))]
///     x: f32,
///     #[replicate(float(min = -512.0, max = 512.0, precision = 1.0 / 64.0))]
///     y: f32,
/// }
/// ```
///
/// The attributes: `float(min, max, precision)`, `int(min, max)`, `bool` (implied on a `bool`
/// field), `quat` / `quat(bits = N)`, `enumeration` (a [`ReplicateEnum`](trait@ReplicateEnum)
/// type), `enumeration(variants = N)`, `skip`, and `name = ".."` on a field; `name = ".."` and
/// `crate = ".."` on the type. The `statewire-derive` crate documents each.
#[cfg(feature = "derive")]
pub use statewire_derive::Replicate;
/// `#[derive(ReplicateEnum)]`: numbers a fieldless enum's variants in declaration order (see
/// the [`ReplicateEnum`](trait@ReplicateEnum) trait).
#[cfg(feature = "derive")]
pub use statewire_derive::ReplicateEnum;
pub use store::{EntityMut, Store, StoreConfig, StoreError};
