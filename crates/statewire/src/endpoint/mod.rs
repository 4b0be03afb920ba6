//! Endpoints that own the whole game loop: [`GameServer`] (dedicated), [`GameHost`]
//! (listen server with a local player) and [`GameClient`], over any
//! [`Transport`](statewire_transport::Transport).
//!
//! A server endpoint owns the session [`Server`](crate::Server), the replicated
//! [`Store`](statewire_core::Store) and its [`ServerReplicator`](statewire_core::ServerReplicator),
//! [`Authority`](statewire_core::Authority) over client writes (ownership is kept once, in the
//! store), an [`InputBuffer`](statewire_core::InputBuffer), the
//! [`EventServer`](statewire_core::EventServer) with its trimming, and the message envelope
//! ([`envelope`]). A client endpoint owns the session [`Client`](crate::Client), the
//! [`ClientReplicator`](statewire_core::ClientReplicator), acknowledgements, input stamping,
//! writes of its own entities and predicted event proposals. Both speak a [`Protocol`]: the
//! replicated components plus typed user message channels (serde + postcard, size-checked
//! before decoding). Time and bytes go in (`update(now)` reads the transport), game-level
//! events come out (`poll_event`), and `flush(now)` sends.
//!
//! # A whole game: a server and two clients over loopback
//!
//! ```
//! use std::time::Duration;
//! use statewire::endpoint::*;
//! use statewire_core::{EntityId, Field, FieldKind, FieldReader, FieldWriter, Owner, Replicate};
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
//! const KILL: u16 = 1;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let protocol = Protocol::new().with::<Pos>()?;
//! let net = LoopbackNet::new(LoopbackConfig::default());
//! let server_t = net.endpoint();
//! let addr = server_t.local_addr();
//! // Inputs are any serde type; here, a step along x.
//! let mut server: GameServer<_, i8> =
//!     GameServer::new(server_t, &protocol, GameServerConfig::default())?;
//! let enemy = server.spawn(Owner::Server)?;
//! server.store_mut().set(enemy, &Pos(10.0))?;
//! let mut clients = Vec::new();
//! for _ in 0..2 {
//!     let c: GameClient<_, i8> =
//!         GameClient::new(net.endpoint(), addr, &protocol, GameClientConfig::default(), Duration::ZERO)?;
//!     clients.push(c);
//! }
//! let mut kills = [0; 2];
//! for frame in 0..120u64 {
//!     let now = Duration::from_millis(frame * 33);
//!     server.update(now)?;
//!     while let Some(ev) = server.poll_event() {
//!         match ev {
//!             // Each player gets an entity it owns.
//!             GameServerEvent::Joined(c) => {
//!                 let e = server.spawn(Owner::Client(c))?;
//!                 server.store_mut().set(e, &Pos(0.0))?;
//!             }
//!             _ => {}
//!         }
//!     }
//!     // A kill is valid while the enemy lives; the first claim wins.
//!     server.resolve_events(|p, store| {
//!         p.kind == KILL && p.entities.first().is_some_and(|&e| store.despawn(e).is_ok())
//!     });
//!     server.flush(now)?;
//!     for (i, c) in clients.iter_mut().enumerate() {
//!         c.update(now)?;
//!         while let Some(ev) = c.poll_event() {
//!             if let GameClientEvent::Event(e) = ev {
//!                 kills[i] += usize::from(e.kind == KILL);
//!             }
//!         }
//!         // Move only our own entity: the server accepts writes from its owner.
//!         if let Some(&me) = c.owned().first() {
//!             let x = c.get::<Pos>(me).map_or(0.0, |p| p.0);
//!             c.write(me, &Pos((x + 0.25).min(5.0)))?;
//!             if frame == 40 {
//!                 c.propose(KILL, &[enemy], &[])?;
//!             }
//!         }
//!         c.flush(now)?;
//!     }
//! }
//! // Both saw the one kill once, and hold exactly the server's world.
//! assert_eq!(kills, [1, 1]);
//! for c in &clients {
//!     assert_eq!(c.snapshot(), server.store().snapshot());
//! }
//! # Ok(())
//! # }
//! ```

mod client;
pub mod envelope;
mod host;
mod protocol;
mod server;

pub use client::{
    ClientActionError, GameClient, GameClientConfig, GameClientEvent, GameClientStats, NoSink,
};
pub use envelope::{EnvelopeError, MAX_INPUTS_PER_MESSAGE};
pub use host::GameHost;
pub use protocol::{
    Delivery, MAX_MESSAGE_CHANNELS, Message, MessageChannel, MessageError, Protocol, ProtocolError,
};
pub use server::{
    EventRefused, GameServer, GameServerConfig, GameServerEvent, GameServerStats, WriteRefusal,
};

use crate::config::SessionConfig;
use crate::connection::{ChannelId, ChannelKind};

/// The session channel reliable messages use (proposals, refusals, reliable user channels).
pub(crate) const RELIABLE: ChannelId = ChannelId(0);
/// The session channel unreliable messages use (state, acks with inputs, writes, unreliable
/// user channels).
pub(crate) const UNRELIABLE: ChannelId = ChannelId(1);

/// Settings of an endpoint that cannot work together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The session configuration is invalid.
    #[error("session: {0}")]
    Session(#[from] crate::connection::ConfigError),
    /// The endpoints need channel 0 reliable-ordered and channel 1 unreliable.
    #[error(
        "session channels: channel 0 must be reliable-ordered and channel 1 unreliable (as in \
         the default session)"
    )]
    Channels,
    /// The replication packet budget does not fit the session's unreliable channel.
    #[error(
        "replication packet budget of {budget} bytes is over the {limit} bytes the session's \
         unreliable channel carries (less the 1-byte envelope tag)"
    )]
    PacketBudgetTooLarge {
        /// The configured budget.
        budget: usize,
        /// What fits.
        limit: usize,
    },
    /// The replication packet budget is under the smallest workable packet.
    #[error("replication packet budget of {budget} bytes is under the minimum of {min}")]
    PacketBudgetTooSmall {
        /// The configured budget.
        budget: usize,
        /// The minimum.
        min: usize,
    },
    /// The replicator has fewer client slots than the session admits clients.
    #[error(
        "replication.max_clients ({replication}) is below session.max_clients ({session}): \
         clients past it would be admitted and then dropped"
    )]
    TooFewReplicationSlots {
        /// Replicator slots.
        replication: usize,
        /// Session slots.
        session: usize,
    },
    /// `max_input_bytes` is over 255 or over what the unreliable channel carries.
    #[error("max_input_bytes of {0} is over 255 or over what one unreliable message carries")]
    InputSize(usize),
    /// `input_redundancy` is 0 or over [`MAX_INPUTS_PER_MESSAGE`].
    #[error("input_redundancy of {0} is outside 1..={MAX_INPUTS_PER_MESSAGE}")]
    InputRedundancy(usize),
    /// A user channel's limit is over what its session channel carries.
    #[error(
        "message channel {name:?}: {max} bytes is over the {limit} its session channel carries"
    )]
    ChannelTooLarge {
        /// The channel.
        name: &'static str,
        /// Its limit.
        max: usize,
        /// What fits (less the 2-byte envelope).
        limit: usize,
    },
    /// A limit that must be positive is zero.
    #[error("a queue or rate limit is zero")]
    ZeroLimit,
    /// `max_event_entities` or `max_event_data` is over 255 (what a proposal encodes).
    #[error("max_event_entities and max_event_data may be at most 255")]
    EventLimits,
    /// The connect token could not be used.
    #[error("connect token: {0}")]
    Token(String),
    /// No connected client has this id.
    #[error("no connected client {0}")]
    UnknownClient(statewire_core::ClientId),
}

/// Checks what both endpoint kinds need from the session.
fn check_session(
    session: &SessionConfig,
    protocol: &Protocol,
    max_input_bytes: usize,
) -> Result<(), ConfigError> {
    session.connection.validate()?;
    let ch = &session.connection.channels;
    if ch.len() < 2
        || ch[0].kind != ChannelKind::ReliableOrdered
        || ch[1].kind != ChannelKind::Unreliable
    {
        return Err(ConfigError::Channels);
    }
    let limit = |c: ChannelId| session.connection.message_limit(c).unwrap_or(0);
    // TICK: tag, flags, ack, count, first tick, then one input with its length byte.
    let tick_room = limit(UNRELIABLE).saturating_sub(3 + statewire_core::AckFrame::LEN + 4);
    if max_input_bytes > 255 || (max_input_bytes + 1) * MAX_INPUTS_PER_MESSAGE > tick_room {
        return Err(ConfigError::InputSize(max_input_bytes));
    }
    for c in protocol.channels() {
        let on = match c.delivery {
            Delivery::Reliable => RELIABLE,
            Delivery::Unreliable => UNRELIABLE,
        };
        let fits = limit(on).saturating_sub(2);
        if c.max_bytes > fits {
            return Err(ConfigError::ChannelTooLarge {
                name: c.name,
                max: c.max_bytes,
                limit: fits,
            });
        }
    }
    Ok(())
}
