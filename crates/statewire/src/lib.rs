//! Sessions for statewire: connections with a versioned, challenge-based handshake, channels
//! (unreliable, unreliable-sequenced, reliable-ordered with fragmentation), [`Server`],
//! [`Client`] and [`Host`] (listen-server) endpoints over any [`statewire_transport::Transport`].
//!
//! # Handshake
//!
//! ```text
//! client                                   server
//!   ConnectRequest(protocol, version, salt)  ──►   (no state kept)
//!                                           ◄──   Challenge(salt, cookie)   or Rejected(reason)
//!   ChallengeResponse(salt, cookie)          ──►   cookie checked: per-client state created
//!                                           ◄──   Accepted(salt, client_id, token)
//!   Data(token, payload) ...                ◄─►   Data(token, payload) ...
//! ```
//! The cookie is a keyed hash of the client's address, salt and an expiry, so the server keeps
//! nothing for an unanswered request, and requests are padded so every reply sent before
//! validation is smaller than the request that caused it: a spoofed source cannot use the
//! server as an amplifier.
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
