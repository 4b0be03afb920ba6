//! Sessions for statewire: connections with a versioned, challenge-based handshake (connect
//! tokens or development mode), AEAD-sealed packets, channels
//! (unreliable, unreliable-sequenced, reliable-ordered with fragmentation), [`Server`],
//! [`Client`] and [`Host`] (listen-server) endpoints over any [`statewire_transport::Transport`].
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
//! Each frame: `update(now)` (reads all pending datagrams, handles timeouts, transmits), then
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
