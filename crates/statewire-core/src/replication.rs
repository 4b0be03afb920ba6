//! Per-client snapshot history on the server and the matching receiver on the client.
//!
//! The server keeps, for every client, a ring of the states it sent (what that client will hold
//! if the packet arrives). Each new packet is a delta against the newest state the client
//! acknowledged, or against the empty state when there is none or it fell out of the ring. The
//! client keeps a ring of the states it applied, decodes against the baseline the packet names,
//! and acknowledges the newest tick it applied.

use std::collections::VecDeque;

use hashbrown::HashMap;

use crate::delta::{
    DecodeError, DecodeLimits, DecodeScratch, EncodeScratch, EncodeStats, PacketHeader,
    decode_delta, encode_delta, read_header,
};
use crate::ids::{ClientId, Tick};
use crate::schema::Registry;
use crate::snapshot::{Snapshot, WorldSink};

/// Server-side replication settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Sent states remembered per client as possible baselines. Default 64 (about 2 s at
    /// 30 Hz); an ack older than this forces a full-state packet. At most 65,535.
    pub history_len: usize,
    /// Byte budget of one snapshot packet. Default 1,200 (fits common path MTUs with room for
    /// transport headers). Changes that do not fit wait for the next packet.
    pub max_packet_bytes: usize,
    /// Most clients [`ServerReplicator::add_client`] accepts. Default 1,024.
    pub max_clients: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            history_len: 64,
            max_packet_bytes: 1200,
            max_clients: 1024,
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
    /// The tick is not after the previous packet's tick for this client.
    #[error("tick {0} is not after the last sent tick")]
    StaleTick(Tick),
}

/// What happened to an acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AckOutcome {
    /// The ack moved the client's baseline forward.
    Advanced,
    /// Older than (or equal to) the current baseline: nothing changed.
    Stale,
    /// Names a tick this client was never sent (or that left the ring): ignored.
    Unknown,
}

#[derive(Debug, Default)]
struct ClientHistory {
    sent: VecDeque<(Tick, Snapshot)>,
    acked: Option<Tick>,
    cursor: u32,
    /// Per-client override of [`ServerConfig::max_packet_bytes`].
    budget: Option<usize>,
    /// Spare snapshot buffers recycled from the ring.
    spare: Vec<Snapshot>,
}

/// Server half: per-client history, delta encoding and acks. Sans-IO: the caller sends the
/// bytes and feeds back the acks that arrive.
#[derive(Debug)]
pub struct ServerReplicator {
    config: ServerConfig,
    clients: HashMap<ClientId, ClientHistory>,
    scratch: EncodeScratch,
    empty: Snapshot,
}

impl ServerReplicator {
    /// A replicator with no clients.
    #[must_use]
    pub fn new(config: ServerConfig) -> Self {
        let mut config = config;
        config.history_len = config.history_len.clamp(1, usize::from(u16::MAX));
        ServerReplicator {
            config,
            clients: HashMap::new(),
            scratch: EncodeScratch::default(),
            empty: Snapshot::new(),
        }
    }

    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Starts replicating to `client` (from the empty state).
    pub fn add_client(&mut self, client: ClientId) -> Result<(), ReplicationError> {
        if self.clients.contains_key(&client) {
            return Err(ReplicationError::DuplicateClient(client));
        }
        if self.clients.len() >= self.config.max_clients {
            return Err(ReplicationError::TooManyClients(self.config.max_clients));
        }
        self.clients.insert(client, ClientHistory::default());
        Ok(())
    }

    /// Forgets `client` and its history. Returns whether it was known.
    pub fn remove_client(&mut self, client: ClientId) -> bool {
        self.clients.remove(&client).is_some()
    }

    /// Registered clients, in no particular order.
    pub fn clients(&self) -> impl Iterator<Item = ClientId> + '_ {
        self.clients.keys().copied()
    }

    /// The newest tick `client` acknowledged.
    #[must_use]
    pub fn acked(&self, client: ClientId) -> Option<Tick> {
        self.clients.get(&client)?.acked
    }

    /// Sets a per-client packet byte budget (`None`: use [`ServerConfig::max_packet_bytes`]),
    /// e.g. to follow a bandwidth estimate.
    pub fn set_packet_budget(
        &mut self,
        client: ClientId,
        bytes: Option<usize>,
    ) -> Result<(), ReplicationError> {
        let h = self
            .clients
            .get_mut(&client)
            .ok_or(ReplicationError::UnknownClient(client))?;
        h.budget = bytes;
        Ok(())
    }

    /// The state `client` will hold once it applies the packet sent for `tick`, while that
    /// packet is still in the history ring.
    #[must_use]
    pub fn sent_state(&self, client: ClientId, tick: Tick) -> Option<&Snapshot> {
        let h = self.clients.get(&client)?;
        h.sent.iter().find(|(t, _)| *t == tick).map(|(_, s)| s)
    }

    /// Encodes `world` (the state at `tick`) for `client`, appending the packet to `out`.
    /// Ticks must increase per client.
    pub fn encode_for(
        &mut self,
        registry: &Registry,
        client: ClientId,
        tick: Tick,
        world: &Snapshot,
        out: &mut Vec<u8>,
    ) -> Result<EncodeStats, ReplicationError> {
        let h = self
            .clients
            .get_mut(&client)
            .ok_or(ReplicationError::UnknownClient(client))?;
        if let Some((last, _)) = h.sent.back() {
            if !tick.is_after(*last) {
                return Err(ReplicationError::StaleTick(tick));
            }
        }
        let base = h
            .acked
            .and_then(|a| h.sent.iter().find(|(t, _)| *t == a))
            .filter(|(t, _)| tick.diff(*t) <= i32::from(u16::MAX));
        let (baseline_tick, baseline) = match base {
            Some((t, s)) => (Some(*t), s),
            None => (None, &self.empty),
        };
        let mut view = h.spare.pop().unwrap_or_default();
        let stats = encode_delta(
            registry,
            PacketHeader {
                tick,
                baseline: baseline_tick,
            },
            baseline,
            world,
            h.budget.unwrap_or(self.config.max_packet_bytes),
            h.cursor,
            &mut self.scratch,
            out,
            &mut view,
        );
        h.cursor = stats.next_cursor;
        if h.sent.len() >= self.config.history_len {
            if let Some((_, old)) = h.sent.pop_front() {
                h.spare.push(old);
            }
        }
        h.sent.push_back((tick, view));
        Ok(stats)
    }

    /// Records that `client` applied the packet for `tick`.
    pub fn handle_ack(
        &mut self,
        client: ClientId,
        tick: Tick,
    ) -> Result<AckOutcome, ReplicationError> {
        let h = self
            .clients
            .get_mut(&client)
            .ok_or(ReplicationError::UnknownClient(client))?;
        if h.acked.is_some_and(|a| !tick.is_after(a)) {
            return Ok(AckOutcome::Stale);
        }
        if !h.sent.iter().any(|(t, _)| *t == tick) {
            return Ok(AckOutcome::Unknown);
        }
        h.acked = Some(tick);
        // Older states can never be a baseline again: acks only move forward.
        while h.sent.front().is_some_and(|(t, _)| tick.is_after(*t)) {
            if let Some((_, old)) = h.sent.pop_front() {
                h.spare.push(old);
            }
        }
        Ok(AckOutcome::Advanced)
    }
}

/// Client-side replication settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Applied states remembered as possible baselines. Default 64; keep it at least the
    /// server's [`ServerConfig::history_len`].
    pub history_len: usize,
    /// Most entities a snapshot may hold. Default 65,536.
    pub max_entities: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            history_len: 64,
            max_entities: 65_536,
        }
    }
}

/// What [`ClientReplicator::handle_packet`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Applied {
    /// The packet was decoded and applied; its tick is the new ack.
    Applied(PacketHeader),
    /// Not newer than the state already applied (late or duplicate): ignored.
    Stale(PacketHeader),
}

/// Client half: decodes snapshot packets, applies them to the local world, and tells the caller
/// which tick to acknowledge.
#[derive(Debug)]
pub struct ClientReplicator {
    config: ClientConfig,
    current_tick: Option<Tick>,
    /// Applied states, oldest first; the newest is the current state.
    history: VecDeque<(Tick, Snapshot)>,
    scratch: DecodeScratch,
    spare: Vec<Snapshot>,
    empty: Snapshot,
}

impl ClientReplicator {
    /// A receiver holding the empty state.
    #[must_use]
    pub fn new(config: ClientConfig) -> Self {
        let mut config = config;
        config.history_len = config.history_len.max(1);
        ClientReplicator {
            config,
            current_tick: None,
            history: VecDeque::new(),
            scratch: DecodeScratch::default(),
            spare: Vec::new(),
            empty: Snapshot::new(),
        }
    }

    /// The quantized state currently applied.
    #[must_use]
    pub fn state(&self) -> &Snapshot {
        self.history.back().map_or(&self.empty, |(_, s)| s)
    }

    /// The tick to acknowledge: the newest snapshot applied.
    #[must_use]
    pub fn ack(&self) -> Option<Tick> {
        self.current_tick
    }

    /// Decodes `bytes` and, if it is newer than the current state, applies it, reporting every
    /// change to `sink`. Errors leave the state untouched.
    pub fn handle_packet<S: WorldSink + ?Sized>(
        &mut self,
        registry: &Registry,
        bytes: &[u8],
        sink: &mut S,
    ) -> Result<Applied, DecodeError> {
        let header = read_header(bytes)?;
        if let Some(cur) = self.current_tick {
            if !header.tick.is_after(cur) {
                return Ok(Applied::Stale(header));
            }
        }
        let baseline = match header.baseline {
            None => &self.empty,
            Some(b) => match self.history.iter().find(|(t, _)| *t == b) {
                Some((_, s)) => s,
                None => return Err(DecodeError::MissingBaseline(b)),
            },
        };
        let mut next = self.spare.pop().unwrap_or_default();
        let limits = DecodeLimits {
            max_entities: self.config.max_entities,
        };
        if let Err(e) = decode_delta(
            registry,
            bytes,
            baseline,
            limits,
            &mut self.scratch,
            &mut next,
        ) {
            self.spare.push(next);
            return Err(e);
        }
        self.state().diff_into(&next, registry, sink);
        self.current_tick = Some(header.tick);
        if self.history.len() >= self.config.history_len {
            if let Some((_, old)) = self.history.pop_front() {
                self.spare.push(old);
            }
        }
        self.history.push_back((header.tick, next));
        Ok(Applied::Applied(header))
    }
}
