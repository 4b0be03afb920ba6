//! Replication: the server's per-client views over the shared [`Store`](crate::Store), and the
//! client's receiver.
//!
//! # Model
//!
//! The server keeps one [`Store`](crate::Store) (the quantized world, with the tick of every
//! change and a short shared history). For every client, [`ServerReplicator`] keeps one small
//! record per entity in that client's view (16 bytes: the newest tick the client acknowledged
//! for it, what is in flight, a priority accumulator), stored with the entity so that a change
//! reaches exactly the clients that see it. Each packet carries the entities with unsent changes,
//! the client's own entities first (a few: [`ServerConfig::owned_first`]; its prediction
//! reconciles against them), then the highest
//! accumulated priority first, within the packet's byte budget; each is coded against
//! the state that client acknowledged for that entity (read from the shared history), or in full
//! when it has none. Acknowledgements are per packet ([`AckFrame`]): what a packet carried is
//! known to the client once it is acknowledged, and only what a lost packet carried (and still
//! changing data) is sent again.
//!
//! Interest decides what is in a view: a radius around the client's viewer on a grid
//! ([`ServerConfig::interest_radius`], entering at the radius and leaving beyond radius +
//! [`ServerConfig::interest_margin`]), rooms or teams, a custom filter, and the entities events
//! name. Entering sends the full state; leaving sends a despawn.
//!
//! The client ([`ClientReplicator`]) applies packets in tick order only (an older packet arriving
//! late is dropped and not acknowledged, so its content is sent again), keeps per entity its
//! current state and the few recent states a delta may still name, and acknowledges with an
//! [`AckFrame`] of the packets it applied.
//!
//! # Priority and starvation
//!
//! Each packet, every waiting entity's accumulator grows by its weight
//! ([`Store::set_weight`](crate::Store::set_weight)) × the largest weight of its components
//! ([`ServerReplicator::set_component_weight`]) × a distance factor in (½, 1]; sent entities drop
//! to zero. With `N` entities waiting, at least `M` records fitting a packet and growth rates
//! between `g_min` and `g_max`, an entity waits at most about `N·g_max / (M·g_min) + 1` packets
//! (with equal weights and one distance, `⌈N / M⌉ + 1`); `tests/scale.rs` checks it.
//!
//! # Wire format (bit-packed, least-significant bit first)
//!
//! ```text
//! packet   := events_len:varint events  bits  [range-coded tail  bits_len:rev-varint]
//! bits     := tick:32  has_base:1 [base_offset:16]  record*  end:1(=0)  padding
//! record   := more:1(=1)  gap  body        ids ascending; id = previous + gap (first: gap - 1)
//! gap      := '1' (1) | '01' g:4 (2 + g) | '00' varint
//! body     := '0' update | '10' full | '11' despawn
//! update   := owner_changed:1 [owner]  mask_changed:1 [mask]  component*   against the newest
//!             state of that entity the client received in a packet at or before the base tick
//! full     := owner mask field*       spawns the entity, or replaces the state it holds
//! ```
//! Field values are coded as in [`crate::delta`]. The tail holds the deltas of entropy-coded
//! components ([`crate::ComponentCoding::Entropy`]).

mod client;
mod records;
mod server;

pub use client::{ClientReplicator, IgnoreEvents};
pub use server::ServerReplicator;

use crate::delta::{DecodeError, PacketHeader};
use crate::events::{ByteReader, EventConfig};
use crate::ids::{ClientId, Tick};

/// The smallest packet budget: an empty packet (header, no records) takes 8 bytes. Smaller
/// budgets count as this.
pub const MIN_PACKET_BYTES: usize = 16;

/// Server-side replication settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Byte budget of one snapshot packet. Default 1,200 (fits common path MTUs with room for
    /// transport headers). What does not fit waits for the next packet, by priority. At least
    /// [`MIN_PACKET_BYTES`]. Over statewire sessions the packet must also fit the session's
    /// unreliable channel: the endpoints (`statewire::endpoint`) default to what it carries
    /// (1,134 bytes with the default session) and refuse a larger budget.
    pub max_packet_bytes: usize,
    /// Most clients [`ServerReplicator::add_client`] accepts. Default 1,024 (at most 65,535).
    pub max_clients: usize,
    /// Packets kept per client awaiting an acknowledgement. Default 64; an older packet is
    /// given up (its content is sent again if needed). At most 1,024.
    pub max_in_flight: usize,
    /// Default interest radius around a client's viewer, in world units; 0 (default) means
    /// every entity.
    pub interest_radius: f32,
    /// Hysteresis: an entity leaves a view only beyond radius + margin. Default 8.
    pub interest_margin: f32,
    /// Ticks between full interest passes per client (its own movement brings static entities
    /// in and out; moving entities are checked every tick). Default 4; passes are staggered.
    pub interest_interval: u32,
    /// Priority an entity entering a view starts with (ahead of ordinary changes). Default 4.
    pub enter_boost: f32,
    /// Up to this many of a client's own entities with changes go first in each of its
    /// packets (its prediction reconciles against them, and a deferred one would read as a
    /// misprediction); any more compete by priority like the rest, so a client that owns many
    /// cannot starve its view. Default 8.
    pub owned_first: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_packet_bytes: 1200,
            max_clients: 1024,
            max_in_flight: 64,
            interest_radius: 0.0,
            interest_margin: 8.0,
            interest_interval: 4,
            enter_boost: 4.0,
            owned_first: 8,
        }
    }
}

/// Errors from [`ServerReplicator`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicationError {
    /// The client is not registered.
    #[error("unknown client {0}")]
    UnknownClient(ClientId),
    /// The client is already registered.
    #[error("client {0} already added")]
    DuplicateClient(ClientId),
    /// [`ServerConfig::max_clients`] reached.
    #[error("client limit of {0} reached")]
    TooManyClients(usize),
    /// The client fell so far behind that events it has not received left the event log;
    /// it cannot be brought up to date and should be disconnected.
    #[error("client {0} fell behind the event log")]
    EventsTrimmed(ClientId),
    /// The client's oldest unacknowledged event does not fit its packet budget at all: it can
    /// never be delivered, so the client cannot be kept up to date (disconnect it, or raise
    /// its budget).
    #[error(
        "event of {bytes} bytes does not fit the {budget}-byte packet budget of client {client}"
    )]
    EventTooLarge {
        /// The client.
        client: ClientId,
        /// Encoded size of the event.
        bytes: usize,
        /// The client's packet budget.
        budget: usize,
    },
    /// The store's tick is not after the previous packet's tick for this client.
    #[error("tick {0} is not after the last sent tick")]
    StaleTick(Tick),
}

/// What happened to an acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AckOutcome {
    /// The acknowledgement settled packets.
    Advanced,
    /// Not newer than an earlier acknowledgement: nothing changed.
    Stale,
    /// Names a tick this client was never sent (or that was given up): ignored.
    Unknown,
}

/// A client's acknowledgement: the newest packet it applied and which of the 32 before it it
/// applied too (bit `i`: the packet `i + 1` ticks before `newest`). Packets up to `newest` not
/// listed were dropped by the client and never will be applied. 8 bytes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckFrame {
    /// The newest packet tick applied.
    pub newest: Tick,
    /// Bit `i`: the packet for tick `newest - (i + 1)` was applied too.
    pub earlier: u32,
}

impl AckFrame {
    /// Bytes of [`AckFrame::encode`].
    pub const LEN: usize = 8;

    /// An acknowledgement of `tick` alone.
    #[must_use]
    pub fn single(tick: Tick) -> Self {
        AckFrame {
            newest: tick,
            earlier: 0,
        }
    }

    /// Whether it says the packet of `tick` was applied.
    #[must_use]
    pub fn covers(&self, tick: Tick) -> bool {
        let d = self.newest.diff(tick);
        d == 0 || ((1..=32).contains(&d) && self.earlier >> (d - 1) & 1 == 1)
    }

    /// The 8-byte wire form (two little-endian `u32`s).
    #[must_use]
    pub fn encode(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&self.newest.0.to_le_bytes());
        b[4..].copy_from_slice(&self.earlier.to_le_bytes());
        b
    }

    /// Reads the wire form; `None` unless exactly 8 bytes.
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let b: &[u8; 8] = bytes.try_into().ok()?;
        Some(AckFrame {
            newest: Tick(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            earlier: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        })
    }
}

/// The header of a replication packet (as written by [`ServerReplicator::encode_for`]).
pub fn packet_header(bytes: &[u8]) -> Result<PacketHeader, DecodeError> {
    let mut r = ByteReader(bytes);
    let len =
        usize::try_from(r.varint()?).map_err(|_| crate::events::EventDecodeError::Malformed)?;
    r.bytes(len)?;
    let mut br = crate::bits::BitReader::new(r.0);
    read_header(&mut br)
}

pub(crate) fn read_header(r: &mut crate::bits::BitReader<'_>) -> Result<PacketHeader, DecodeError> {
    let tick = Tick(r.read(32)?);
    let baseline = if r.read_bool()? {
        let off = r.read(16)?;
        if off == 0 {
            return Err(DecodeError::BadBaselineOffset);
        }
        Some(Tick(tick.0.wrapping_sub(off)))
    } else {
        None
    };
    Ok(PacketHeader { tick, baseline })
}

/// Client-side replication settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Ticks of received states kept as possible baselines. Default 32; keep it at least the
    /// server's [`StoreConfig::history_ticks`](crate::StoreConfig::history_ticks). At most
    /// 4,096.
    pub history_len: u32,
    /// Most entities the client holds. Default 65,536.
    pub max_entities: usize,
    /// Limits on received events (entities and data per event, events per packet); keep them
    /// at least the server's. Default [`EventConfig::default`].
    pub events: EventConfig,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            history_len: 32,
            max_entities: 65_536,
            events: EventConfig::default(),
        }
    }
}

/// What [`ClientReplicator::handle_packet`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Applied {
    /// The packet was decoded and applied; it is acknowledged by [`ClientReplicator::ack`].
    Applied(PacketHeader),
    /// Not newer than the newest packet applied (late or duplicate): ignored, not acknowledged.
    Stale(PacketHeader),
}
