//! Runnable integration examples for statewire, and the code they share.
//!
//! | example | world storage | link | run it |
//! |---------|---------------|------|--------|
//! | [`hecs_world`] | a [`hecs::World`] per peer | loopback wrapped in netsim, profile `poor` | `cargo run -p statewire-examples --example hecs_world [-- SEED]` |
//! | [`bevy_world`] | a [`bevy_ecs::world::World`] per peer | loopback wrapped in netsim, profile `poor` | `cargo run -p statewire-examples --example bevy_world [-- SEED]` |
//! | [`plain_vec`] | a `Vec` of structs per peer | none: bytes handed over directly, every third packet dropped | `cargo run -p statewire-examples --example plain_vec [-- SEED]` |
//!
//! All run the same small [`game`]: a server with one player per client and a few dozen NPCs
//! that wander, take damage and die, spawn in waves, lose and regain their [`game::Health`] and
//! change owner; two clients follow it.
//!
//! Each tick the server tells its replicated [`Store`](statewire_core::Store) only what changed,
//! each example finding its changes the way its storage allows: the `Vec` world notes the ids
//! it touches, the hecs world uses `hecs::ChangeTracker` (through the `statewire-hecs` adapter),
//! the bevy world bevy's own change detection (`Changed`, `RemovedComponents`, through the
//! `statewire-bevy` adapter). The replicator's work per tick then grows with the number of
//! changes, not with the size of the world.
//!
//! After the active ticks comes a quiet period with no changes, and each run then checks two
//! things. The server's store equals a snapshot rebuilt from the game's whole world, so a
//! change the game failed to report is a [`RunError::StoreOutOfSync`] rather than a client
//! that quietly agrees with a wrong server. And every client's world equals the server's: the
//! client replicator's quantized state is bit-exact the store's, and walking the client's own
//! storage finds the same entities, owners and dequantized components; a mismatch is a
//! [`RunError::Diverged`]. Both name the seed, and the example binaries panic with them.
//!
//! The examples' binaries are thin: the whole loop lives in this library as
//! [`hecs_world::run`], [`bevy_world::run`] and [`plain_vec::run`], which the crate's tests also
//! call.
//!
//! ```
//! // The core alone, no transport: 60 active ticks with every third packet lost.
//! let summary = statewire_examples::plain_vec::run(7, 60).expect("clients match the server");
//! assert_eq!(summary.clients.len(), 2);
//! println!("{summary}");
//! ```

use std::fmt;

use statewire_core::{BuildError, ClientId, ReplicationError, SchemaError, StoreError};
use statewire_transport::TransportError;

pub mod bevy_world;
pub mod game;
pub mod hecs_world;
mod netsim_run;
pub mod plain_vec;

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The component registry was rejected.
    #[error("schema: {0}")]
    Schema(#[from] SchemaError),
    /// The server's world could not be turned into a snapshot (for the end-of-run check).
    #[error("snapshot: {0}")]
    Build(#[from] BuildError),
    /// The server replicator refused a call.
    #[error("replication: {0}")]
    Replication(#[from] ReplicationError),
    /// The server's replicated store refused a change.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The in-memory transport failed (not a simulated loss: those are expected).
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// The server's store, fed with the changes the game tracked, does not match a snapshot
    /// rebuilt from the game's whole world at the end of the run: the game missed a change.
    #[error("seed {seed}: the server's store missed a change: {detail}")]
    StoreOutOfSync {
        /// The run's seed, to reproduce it.
        seed: u64,
        /// The first difference found.
        detail: String,
    },
    /// A client's world does not match the server's at the end of the quiet period.
    #[error("seed {seed}: {client} does not match the server after the quiet period: {detail}")]
    Diverged {
        /// The run's seed, to reproduce it.
        seed: u64,
        /// The client that differs.
        client: ClientId,
        /// The first difference found.
        detail: String,
    },
}

/// What one client saw during a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSummary {
    /// The client.
    pub client: ClientId,
    /// Snapshot packets decoded and applied.
    pub applied: u64,
    /// Packets ignored as older than the state already applied (late or duplicated).
    pub stale: u64,
    /// Packets the replicator could not decode.
    pub decode_errors: u64,
    /// Changes the client's world could not apply (for example an unknown entity); the
    /// `WorldSink` methods cannot return errors, so the sinks count them.
    pub sink_errors: u64,
    /// Snapshot bytes received.
    pub bytes_received: u64,
    /// Ticks into the quiet period until the client's state first equalled the server's.
    pub matched_after: Option<u32>,
}

/// The outcome of a run that converged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Which example ran.
    pub example: &'static str,
    /// The seed everything random was drawn from.
    pub seed: u64,
    /// How snapshots and acks travelled.
    pub link: String,
    /// Ticks with changes.
    pub ticks: u32,
    /// Ticks without changes that followed.
    pub quiet_ticks: u32,
    /// Replicated entities on the server at the end.
    pub entities: usize,
    /// What changed on the server during the active ticks.
    pub events: game::GameEvents,
    /// Snapshot packets the server sent (to all clients).
    pub packets_sent: u64,
    /// Snapshot packets lost on the way.
    pub packets_lost: u64,
    /// Acknowledgements the clients sent.
    pub acks_sent: u64,
    /// Acknowledgements lost on the way.
    pub acks_lost: u64,
    /// One entry per client.
    pub clients: Vec<ClientSummary>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.events;
        writeln!(
            f,
            "{}: seed {}, {} active + {} quiet ticks at {} Hz, link: {}",
            self.example,
            self.seed,
            self.ticks,
            self.quiet_ticks,
            game::TICK_HZ,
            self.link
        )?;
        writeln!(
            f,
            "  server   {} replicated entities at the end; {} spawned, {} despawned, health \
             removed {}x / restored {}x, {} ownership changes",
            self.entities,
            e.spawned,
            e.despawned,
            e.health_removed,
            e.health_restored,
            e.owner_changes
        )?;
        writeln!(
            f,
            "  packets  {} snapshots sent, {} lost; {} acks sent, {} lost",
            self.packets_sent, self.packets_lost, self.acks_sent, self.acks_lost
        )?;
        for c in &self.clients {
            let matched = match c.matched_after {
                Some(1) => "matched the server 1 tick into the quiet period".to_string(),
                Some(t) => format!("matched the server {t} ticks into the quiet period"),
                None => "never matched the server".to_string(),
            };
            writeln!(
                f,
                "  {:<9} {} applied, {} stale, {} decode errors, {} sink errors, {} bytes; {}",
                c.client.to_string(),
                c.applied,
                c.stale,
                c.decode_errors,
                c.sink_errors,
                c.bytes_received,
                matched
            )?;
        }
        write!(
            f,
            "  result   every client's world equals the server's ({} entities; owners and \
             dequantized components identical)",
            self.entities
        )
    }
}

/// The seed an example binary uses: its first argument, or `default`.
///
/// # Panics
///
/// If the argument is not a `u64`, with a usage message.
#[must_use]
pub fn seed_from_args(default: u64) -> u64 {
    match std::env::args().nth(1) {
        None => default,
        Some(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("usage: <example> [SEED]; {s:?} is not a u64")),
    }
}
