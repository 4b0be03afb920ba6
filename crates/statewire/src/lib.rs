//! statewire: sessions and game endpoints over any [`statewire_transport::Transport`].
//!
//! Start with [`endpoint`]: a [`GameServer`](endpoint::GameServer) (dedicated server), a
//! [`GameHost`](endpoint::GameHost) (listen server with a local player) or a
//! [`GameClient`](endpoint::GameClient) owns the whole game loop: session, replication of the
//! server's [`Store`](statewire_core::Store), authority, inputs, events and messages. Below
//! them are the sessions: [`Server`], [`Client`] and [`Host`] with a versioned, challenge-based
//! handshake (connect tokens or development mode), AEAD-sealed packets, and channels
//! (unreliable, unreliable-sequenced, reliable-ordered with fragmentation).
//!
//! # A game loop: a server and a client over loopback
//!
//! ```
//! use std::time::Duration;
//! use statewire::endpoint::*;
//! use statewire_core::{Owner, Replicate};
//! use statewire_transport::{Transport, loopback::{LoopbackConfig, LoopbackNet}};
//!
//! #[derive(Replicate, Debug, PartialEq)]
//! struct Hp(#[replicate(int(min = 0, max = 100))] u8);
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let protocol = Protocol::new().with::<Hp>()?;
//! let net = LoopbackNet::new(LoopbackConfig::default());
//! let (server_t, client_t) = (net.endpoint(), net.endpoint());
//! let addr = server_t.local_addr();
//! // Inputs are any serde type; this game has none.
//! let mut server = GameServer::<_, ()>::new(server_t, &protocol, GameServerConfig::default())?;
//! let mut client = GameClient::<_, ()>::connect(client_t, addr, &protocol, Duration::ZERO)?;
//! let boss = server.spawn(Owner::Server)?;
//! for frame in 0..60u32 {
//!     let now = Duration::from_millis(33) * frame;
//!     // Server tick: read, handle events, change the world, replicate and send.
//!     server.update(now)?;
//!     while let Some(event) = server.poll_event() {
//!         if let GameServerEvent::Joined(id) = event {
//!             println!("{id} joined");
//!         }
//!     }
//!     server.store_mut().set(boss, &Hp(100 - frame.min(50) as u8))?;
//!     server.flush(now)?;
//!     // Client frame: read, handle events, send acks and inputs.
//!     client.update(now)?;
//!     while client.poll_event().is_some() {}
//!     client.flush(now)?;
//! }
//! assert_eq!(client.get::<Hp>(boss), Some(Hp(50)));
//! assert_eq!(client.snapshot(), server.store().snapshot());
//! # Ok(())
//! # }
//! ```
//!
//! # Handshake
//!
//! With connect tokens (`Server::with_tokens`, for anything reachable from the internet):
//! ```text
//! client                                        server
//!   TokenRequest(sealed token), padded     ──►   token opened, checked; no state kept
//!                                         ◄──   sealed Challenge(cookie)   or sealed Rejected
//!   TokenResponse(token, sealed cookie)    ──►   cookie checked: per-client state created
//!                                         ◄──   sealed Accepted(client_id)
//!   sealed Data ...                       ◄─►   sealed Data ...
//! ```
//! In development mode (`Server::new`, for LAN play and tests) the same challenge runs in
//! clear and `Accepted` carries the session keys. Either way the cookie is a keyed hash of the
//! client's address and attempt, so the server keeps nothing for an unanswered request;
//! requests are padded so every reply before validation is smaller than its request (no
//! amplification); and every packet after the handshake is ChaCha20-Poly1305 sealed per
//! direction behind a replay window. The threat model is in `docs/SECURITY.md`.
//!
//! ```
//! use std::time::Duration;
//! use statewire::{Client, ClientEvent, ConnectToken, Key, Server, SessionConfig, TokenConfig,
//!     TokenParams};
//! use statewire_core::ClientId;
//! use statewire_transport::loopback::{LoopbackConfig, LoopbackNet};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let net = LoopbackNet::new(LoopbackConfig::default());
//! let backend = Key::random(); // shared by the token backend and its servers
//! let server_t = net.endpoint();
//! let addr = statewire_transport::Transport::local_addr(&server_t);
//! let tokens = TokenConfig { key: backend.clone(), public_addrs: vec![addr],
//!     unix_time_at_zero: Duration::from_secs(1_700_000_000) };
//! let mut server =
//!     Server::with_tokens(server_t, SessionConfig::default(), Key::random(), tokens)?;
//!
//! // The backend (e.g. a lobby) makes a token and hands it to the player over a secure channel.
//! let token = ConnectToken::generate(&backend, &TokenParams {
//!     protocol_id: SessionConfig::default().protocol_id,
//!     client_id: ClientId(42),
//!     server_addrs: vec![addr],
//!     expires_unix_secs: 1_700_000_300,
//!     timeout_secs: 10,
//!     user_data: [0; 32],
//! })?;
//! let mut client =
//!     Client::with_token(net.endpoint(), addr, SessionConfig::default(), Duration::ZERO, &token)?;
//!
//! let mut now = Duration::ZERO;
//! let mut joined = None;
//! for _ in 0..100 {
//!     now += Duration::from_millis(10);
//!     client.update(now)?;
//!     server.update(now)?;
//!     while let Some(ev) = client.poll_event() {
//!         if let ClientEvent::Connected(id) = ev {
//!             joined = Some(id);
//!         }
//!     }
//!     while server.poll_event().is_some() {}
//! }
//! assert_eq!(joined, Some(ClientId(42)));
//! # Ok(())
//! # }
//! ```
//!
//! # Drain rule
//!
//! The same for sessions and endpoints. Each frame: `update(now)` (reads all pending datagrams, handles timeouts, transmits), then
//! `poll_event()` until `None`, then queue sends; they leave on the next `update` (or call
//! `flush(now)` to send them at once).
#![warn(missing_docs)]

pub mod client;
mod config;
pub mod connection;
pub mod crypto;
pub mod discovery;
pub mod endpoint;
mod host;
mod limiter;
pub mod packet;
pub mod server;

pub use client::{Client, ClientEvent, ClientSendError, ClientState, ClientTokenError};
pub use config::{DisconnectReason, Fault, SessionConfig};
pub use connection::{ChannelId, ConnectionConfig};
pub use crypto::{ConnectToken, Key, TokenParams};
pub use host::{Host, LocalClient, PlayerLink};
pub use server::{PeerStats, Server, ServerEvent, ServerSendError, ServerStats, TokenConfig};

// Compiles and runs the README's examples as doctests (they use the endpoints, the core and the
// transports, which this crate has).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
