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
//!
//! # Smooth play over a 200 ms link
//!
//! Far from the server, a client that waited for the server's word would see its own player
//! move a round trip late and everyone else jerk with every late packet. The endpoints carry
//! the clocks that fix both; `statewire_core` has the state machines the game drives with them:
//!
//! * **Tick clock.** [`GameClient::advance`] says which ticks to simulate this frame: the
//!   client runs ahead of the server by half the round trip plus a margin for jitter, so that
//!   the input it makes for tick `T` ([`GameClient::set_input_at`]) arrives just before the
//!   server runs `T`. The server counts how early each input arrives
//!   ([`GameServer::input_timing`]) and tells each client about its least early recent input
//!   ([`envelope`]'s TIMING message), which moves the lead until almost none are late. The
//!   clock drifts by a few percent and jumps only at the start and after a large error.
//! * **Prediction** (`statewire_core::prediction`). The game applies each input to its own
//!   copy of what it controls at once, with the same deterministic step the server runs, and
//!   hands the server's state for each tick to a `Predictor`, which replays the inputs after
//!   it and smooths any difference out (snapping only past a distance).
//! * **Interpolation** (`statewire_core::interpolation`). [`GameClient::render_time`] says
//!   where to show remote entities: a server tick and fraction about 100 ms behind the newest
//!   snapshot, adapted to measured jitter and loss; the game keeps an `Interpolator` of their
//!   values per tick and samples it there (extrapolating briefly when a snapshot is late).
//! * **Lag compensation** (`statewire_core::lag_compensation`). A shot is proposed with
//!   [`GameClient::propose_at`] at the tick the client fired in, carrying the view time it
//!   saw; the server holds proposals stamped ahead of it until that tick
//!   (`EventConfig::max_hold_ticks`) and judges the hit against a `HitHistory`, with the target
//!   where the shooter saw it, then resolves it once like any event.
//!
//! A client predicting the entity it owns over a simulated 200 ms ± 50 ms link with 4 % loss:
//!
//! ```
//! use std::time::Duration;
//! use statewire::endpoint::*;
//! use statewire_core::prediction::{PredictionConfig, Predictor, Simulate};
//! use statewire_core::{Field, FieldKind, FieldReader, FieldWriter, Owner, Replicate, Tick};
//! use statewire_transport::Transport;
//! use statewire_transport::loopback::{LoopbackConfig, LoopbackNet};
//! use statewire_transport::netsim::{LinkConfig, NetSim};
//!
//! #[derive(Debug, Clone, Copy, PartialEq)]
//! struct Pos(f32);
//! impl Replicate for Pos {
//!     const NAME: &'static str = "Pos";
//!     fn fields() -> Vec<Field> {
//!         vec![Field::new("x", FieldKind::Float { min: -512.0, max: 512.0, precision: 1.0 / 16.0 })]
//!     }
//!     fn write(&self, w: &mut FieldWriter<'_>) { w.f32(self.0) }
//!     fn read(r: &mut FieldReader<'_>) -> Option<Self> { Some(Pos(r.f32()?)) }
//! }
//! /// The game's step, run by the server and by the client: each input moves by 1/16.
//! struct Walk;
//! impl Simulate for Walk {
//!     type State = f32;
//!     type Input = i8;
//!     fn step(&self, x: &f32, v: &i8) -> f32 { (x + f32::from(*v) / 16.0).clamp(-500.0, 500.0) }
//!     fn distance(&self, a: &f32, b: &f32) -> f32 { (a - b).abs() }
//!     fn blend(&self, from: &f32, to: &f32, t: f32) -> f32 { from + (to - from) * t }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let protocol = Protocol::new().with::<Pos>()?;
//! let net = LoopbackNet::new(LoopbackConfig::default());
//! let link = LinkConfig::profile("poor").unwrap();
//! let server_t = NetSim::new(net.endpoint(), link.clone(), 1);
//! let addr = server_t.local_addr();
//! let mut server: GameServer<_, i8> =
//!     GameServer::new(server_t, &protocol, GameServerConfig::default())?;
//! let config = GameClientConfig { handshake_salt: Some(7), ..GameClientConfig::default() };
//! let mut client: GameClient<_, i8> =
//!     GameClient::new(NetSim::new(net.endpoint(), link, 2), addr, &protocol, config, Duration::ZERO)?;
//! let mut players = Vec::new();
//! let mut predictor: Option<Predictor<Walk>> = None;
//! let mut fed = None;
//! for frame in 0..600u32 {
//!     let now = Duration::from_secs(1) * frame / 30;
//!     server.session_mut().transport_mut().advance_to(now)?;
//!     client.session_mut().transport_mut().advance_to(now)?;
//!     // The server: each player's entity follows its latest input.
//!     server.update(now)?;
//!     while let Some(ev) = server.poll_event() {
//!         if let GameServerEvent::Joined(c) = ev {
//!             let e = server.spawn(Owner::Client(c))?;
//!             server.store_mut().set(e, &Pos(0.0))?;
//!             players.push((c, e));
//!         }
//!     }
//!     for &(c, e) in &players {
//!         let v = server.input(c).copied().unwrap_or(0);
//!         let x = server.store().component::<Pos>(e).map_or(0.0, |p| p.0);
//!         server.store_mut().set(e, &Pos(Walk.step(&x, &v)))?;
//!     }
//!     server.flush(now)?;
//!
//!     // The client: reconcile with each new server state of our entity...
//!     client.update(now)?;
//!     while client.poll_event().is_some() {}
//!     if let (Some(tick), Some(&me)) = (client.tick(), client.owned().first()) {
//!         if fed != Some(tick) {
//!             fed = Some(tick);
//!             let x = client.get::<Pos>(me).map_or(0.0, |p| p.0);
//!             match &mut predictor {
//!                 Some(p) => drop(p.on_authoritative(tick, x, now)),
//!                 None => predictor = Some(Predictor::new(Walk, tick, x, PredictionConfig::default())),
//!             }
//!         }
//!     }
//!     // ... and move at once: one input per tick the clock hands out.
//!     for tick in client.advance(now).ticks() {
//!         let v: i8 = if (tick.0 / 60) % 2 == 0 { 1 } else { -1 };
//!         client.set_input_at(tick, &v);
//!         if let Some(p) = &mut predictor {
//!             let _ = p.apply_input(tick, v);
//!         }
//!     }
//!     client.flush(now)?;
//! }
//! let p = predictor.expect("our entity arrived");
//! // The client runs ahead of the newest state it holds (about a round trip: 400 ms is 12
//! // ticks), with those inputs unacknowledged, and never had to snap.
//! let ahead = p.predicted_tick().diff(client.tick().unwrap());
//! assert!(ahead >= 12, "ahead by {ahead} ticks");
//! assert_eq!(p.pending_inputs(), ahead as usize);
//! assert_eq!(p.stats().snaps, 0);
//! // Almost every input arrived before its tick.
//! let timing = server.input_timing(players[0].0).unwrap();
//! assert!(timing.late * 100 <= timing.received, "{timing:?}");
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
    EventRefused, GameServer, GameServerConfig, GameServerEvent, GameServerStats, ResumeError,
    WriteRefusal,
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
