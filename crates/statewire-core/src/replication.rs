//! Per-client snapshot history on the server and the matching receiver on the client.
//!
//! The server keeps, for every client, a ring of the states it sent (what that client will hold
//! if the packet arrives). Each new packet is a delta against the newest state the client
//! acknowledged, or against the empty state when there is none or it fell out of the ring. The
//! client keeps a ring of the states it applied, decodes against the baseline the packet names,
//! and acknowledges the newest tick it applied.
//!
//! # Packet budgets
//!
//! When the changes since the baseline do not fit the packet budget, the encoder sends what
//! fits and the rest later (round-robin). The state a client shows after a packet is that
//! packet's baseline plus its records, so a packet built on an older baseline could take away
//! what a newer packet, not yet acknowledged, had already shown. To prevent that, what the
//! previous packet changed relative to the baseline goes first: entities whose presence
//! changed, then changed values. As long as that fits (it fitted in the previous packet, and
//! the events of a packet take at most half of it), entities do not flicker out and back in
//! while acks are in flight; `statewire sim` counts such flicker and reports 0. With budgets
//! so small that even that does not fit, flicker is possible until acks arrive; a per-entity
//! acknowledgement model would remove that limit and is not built yet.

use std::collections::VecDeque;

use hashbrown::HashMap;

use crate::delta::{
    DecodeError, DecodeLimits, DecodeScratch, EncodeScratch, EncodeStats, PacketHeader, Selection,
    changed_between, decode_delta, encode_delta, read_header,
};
use crate::events::{
    ByteReader, EventConfig, EventId, EventServer, EventSink, GameEvent, decode_events,
    encode_events, put_varint,
};
use crate::ids::{ClientId, EntityId, Tick};
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
    /// The client fell so far behind that events it has not received left the event log;
    /// it cannot be brought up to date and should be disconnected.
    #[error("client {0} fell behind the event log")]
    EventsTrimmed(ClientId),
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

#[derive(Debug)]
struct Sent {
    tick: Tick,
    view: Snapshot,
    /// The newest event id this packet carried (or the client already had).
    events_upto: u64,
}

#[derive(Debug, Default)]
struct ClientHistory {
    sent: VecDeque<Sent>,
    acked: Option<Tick>,
    /// The client holds (or never needs) every event with an id up to this one: a new client
    /// receives the events resolved after it was added.
    events_acked: Option<u64>,
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
    section: Vec<u8>,
    empty: Snapshot,
    /// The newest event id that existed at the last encode: clients added later receive the
    /// events after it.
    events_seen: u64,
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
            section: Vec::new(),
            empty: Snapshot::new(),
            events_seen: 0,
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
        self.clients.insert(
            client,
            ClientHistory {
                events_acked: Some(self.events_seen),
                ..ClientHistory::default()
            },
        );
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
        h.sent.iter().find(|e| e.tick == tick).map(|e| &e.view)
    }

    /// The lowest event id every client has acknowledged: events up to it can be trimmed with
    /// [`EventServer::trim_through`].
    #[must_use]
    pub fn min_acked_event(&self) -> Option<EventId> {
        self.clients
            .values()
            .map(|h| h.events_acked.unwrap_or(u64::MAX))
            .min()
            .filter(|&m| m != u64::MAX)
            .map(EventId)
    }

    /// Encodes `world` (the state at `tick`) for `client`, appending the packet to `out`.
    /// Ticks must increase per client. Carries no events (see
    /// [`ServerReplicator::encode_for_with_events`]).
    pub fn encode_for(
        &mut self,
        registry: &Registry,
        client: ClientId,
        tick: Tick,
        world: &Snapshot,
        out: &mut Vec<u8>,
    ) -> Result<EncodeStats, ReplicationError> {
        self.encode(registry, client, tick, world, None, out)
    }

    /// Like [`ServerReplicator::encode_for`], and also carries the resolved events `client` has
    /// not acknowledged, with the state changes they need: entities an event names are spawned
    /// in the same packet if the client lacks them, and despawns of entities named by events
    /// travel with those events.
    pub fn encode_for_with_events(
        &mut self,
        registry: &Registry,
        client: ClientId,
        tick: Tick,
        world: &Snapshot,
        events: &EventServer,
        out: &mut Vec<u8>,
    ) -> Result<EncodeStats, ReplicationError> {
        self.encode(registry, client, tick, world, Some(events), out)
    }

    fn encode(
        &mut self,
        registry: &Registry,
        client: ClientId,
        tick: Tick,
        world: &Snapshot,
        events: Option<&EventServer>,
        out: &mut Vec<u8>,
    ) -> Result<EncodeStats, ReplicationError> {
        let h = self
            .clients
            .get_mut(&client)
            .ok_or(ReplicationError::UnknownClient(client))?;
        if let Some(last) = h.sent.back() {
            if !tick.is_after(last.tick) {
                return Err(ReplicationError::StaleTick(tick));
            }
        }
        let base = h
            .acked
            .and_then(|a| h.sent.iter().find(|e| e.tick == a))
            .filter(|e| tick.diff(e.tick) <= i32::from(u16::MAX));
        let (baseline_tick, baseline) = match base {
            Some(e) => (Some(e.tick), &e.view),
            None => (None, &self.empty),
        };
        let budget = h.budget.unwrap_or(self.config.max_packet_bytes);

        // Events the client lacks, in order.
        let have = h.events_acked.unwrap_or(0);
        if let Some(ev) = events {
            self.events_seen = ev.next_id().0 - 1;
        }
        let mut pending: Vec<&GameEvent> = Vec::new();
        if let Some(ev) = events {
            let iter = ev
                .after(EventId(have))
                .map_err(|_| ReplicationError::EventsTrimmed(client))?;
            // Look a little past what fits, to hold back despawns that later events explain.
            pending.extend(iter.take(ev.config().max_per_packet * 4));
        }
        // Events take at most half the packet; the rest is state.
        let max_events = events.map_or(0, |e| e.config().max_per_packet);
        let mut chosen = 0;
        let mut section_bytes = 0;
        for e in pending.iter().take(max_events) {
            self.section.clear();
            encode_events(&[e], &mut self.section);
            section_bytes += self.section.len();
            if section_bytes > budget / 2 {
                break;
            }
            chosen += 1;
        }
        // Events already sent in a packet that may have arrived are always sent again until
        // acknowledged: the client may have applied them (and the despawns that came with them),
        // so leaving them out would bring those entities back.
        let sent_upto = h
            .sent
            .iter()
            .filter(|e| baseline_tick.is_none_or(|b| e.tick.is_after(b)))
            .map(|e| e.events_upto)
            .max()
            .unwrap_or(have);
        let must = pending.iter().take_while(|e| e.id.0 <= sent_upto).count();
        chosen = chosen.max(must);
        let start_len = out.len();
        let mut view = h.spare.pop().unwrap_or_default();
        // Entities the last packet changed relative to this baseline: the client may already
        // show them, so they go first, or a packet built on an older baseline would take them
        // away again (entities would flicker out and back in while acks are in flight).
        let (mut resend_presence, mut resend_values) = (Vec::new(), Vec::new());
        if let Some(last) = h.sent.back() {
            changed_between(
                baseline,
                &last.view,
                &mut resend_presence,
                &mut resend_values,
            );
        }
        // Whether the client may hold `id`: it is in the baseline or in any packet sent since.
        let unacked = h
            .sent
            .iter()
            .filter(|e| baseline_tick.is_none_or(|b| e.tick.is_after(b)));
        let may_have =
            |id: EntityId| baseline.contains(id) || unacked.clone().any(|e| e.view.contains(id));
        let mut priority = Vec::new();
        let mut keep = Vec::new();
        let mut kept = Snapshot::new();
        // At most three attempts: if an entity an event needs does not fit, send fewer events.
        let mut attempt = 0;
        let stats = loop {
            attempt += 1;
            priority.clear();
            keep.clear();
            for (i, e) in pending.iter().enumerate() {
                for &id in &e.entities {
                    if world.contains(id) {
                        // Alive: make sure the client has it (current state) before the event.
                        if i < chosen {
                            priority.push(id);
                        }
                    } else if i >= chosen && may_have(id) {
                        // Gone, and the client may still show it, but its event waits for a
                        // later packet: keep it alive on the client until then, so that its
                        // despawn arrives with the event.
                        keep.push(id);
                    }
                }
            }
            // Order: what events need, then entities whose presence the client may already
            // show, then values it may already show.
            priority.extend_from_slice(&keep);
            priority.extend_from_slice(&resend_presence);
            priority.extend_from_slice(&resend_values);
            keep.sort_unstable();
            keep.dedup();
            let target = if keep.is_empty() {
                world
            } else {
                keep_alive(
                    world,
                    &keep,
                    unacked.clone().rev().map(|e| &e.view).chain([baseline]),
                    &mut kept,
                );
                &kept
            };
            // Packet: events section length (varint), events section, state delta.
            out.truncate(start_len);
            self.section.clear();
            if chosen > 0 {
                encode_events(&pending[..chosen], &mut self.section);
            }
            put_varint(out, self.section.len() as u64);
            out.extend_from_slice(&self.section);
            let used = out.len() - start_len;
            let stats = encode_delta(
                registry,
                PacketHeader {
                    tick,
                    baseline: baseline_tick,
                },
                baseline,
                target,
                budget.saturating_sub(used),
                h.cursor,
                Selection {
                    priority: &priority,
                },
                &mut self.scratch,
                out,
                &mut view,
            );
            let missed = self.scratch.missed_priority();
            // Drop the events from the first one that needs an entity that did not fit (but
            // never those that must be repeated), then encode again; at most four rounds.
            let first_bad = pending[..chosen]
                .iter()
                .position(|e| e.entities.iter().any(|id| missed.contains(id)))
                .unwrap_or(chosen);
            let next = if attempt >= 3 {
                must
            } else {
                first_bad.max(must)
            };
            if next >= chosen {
                break stats;
            }
            chosen = next;
        };
        h.cursor = stats.next_cursor;
        let events_upto = pending[..chosen].last().map_or(have, |e| e.id.0);
        if h.sent.len() >= self.config.history_len {
            if let Some(old) = h.sent.pop_front() {
                h.spare.push(old.view);
            }
        }
        h.sent.push_back(Sent {
            tick,
            view,
            events_upto,
        });
        Ok(EncodeStats {
            bytes: out.len() - start_len,
            events: chosen,
            ..stats
        })
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
        let Some(entry) = h.sent.iter().find(|e| e.tick == tick) else {
            return Ok(AckOutcome::Unknown);
        };
        h.events_acked = Some(h.events_acked.unwrap_or(0).max(entry.events_upto));
        h.acked = Some(tick);
        // Older states can never be a baseline again: acks only move forward.
        while h.sent.front().is_some_and(|e| tick.is_after(e.tick)) {
            if let Some(old) = h.sent.pop_front() {
                h.spare.push(old.view);
            }
        }
        Ok(AckOutcome::Advanced)
    }
}

/// `world` plus the `keep` entities (sorted) that it lacks, with their state from the first
/// of `sources` (newest first) that has them.
fn keep_alive<'s>(
    world: &Snapshot,
    keep: &[EntityId],
    sources: impl Iterator<Item = &'s Snapshot> + Clone,
    out: &mut Snapshot,
) {
    out.clear();
    let mut k = 0;
    let push_kept = |id: EntityId, out: &mut Snapshot| {
        for src in sources.clone() {
            if let Ok(i) = src.find_index(id) {
                let e = &src.entities[i];
                out.push(e.id, e.owner, e.mask, src.entity_words(e));
                return;
            }
        }
    };
    for e in &world.entities {
        while k < keep.len() && keep[k] < e.id {
            push_kept(keep[k], out);
            k += 1;
        }
        if k < keep.len() && keep[k] == e.id {
            k += 1;
        }
        out.push(e.id, e.owner, e.mask, world.entity_words(e));
    }
    for &id in &keep[k..] {
        push_kept(id, out);
    }
}

/// The header of a replication packet (as written by [`ServerReplicator::encode_for`]):
/// which tick it produces and which baseline it was encoded against.
pub fn packet_header(bytes: &[u8]) -> Result<PacketHeader, DecodeError> {
    let mut r = ByteReader(bytes);
    let len =
        usize::try_from(r.varint()?).map_err(|_| crate::events::EventDecodeError::Malformed)?;
    r.bytes(len)?;
    read_header(r.0)
}

/// Client-side replication settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Applied states remembered as possible baselines. Default 64; keep it at least the
    /// server's [`ServerConfig::history_len`].
    pub history_len: usize,
    /// Most entities a snapshot may hold. Default 65,536.
    pub max_entities: usize,
    /// Limits on received events (entities and data per event, events per packet); keep them
    /// at least the server's. Default [`EventConfig::default`].
    pub events: EventConfig,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            history_len: 64,
            max_entities: 65_536,
            events: EventConfig::default(),
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
    /// Newest event id applied (0: none).
    last_event: u64,
    event_buf: Vec<GameEvent>,
}

/// Wraps a [`WorldSink`], dropping events, for [`ClientReplicator::handle_packet`].
struct IgnoreEvents<'a, S: ?Sized>(&'a mut S);

impl<S: WorldSink + ?Sized> WorldSink for IgnoreEvents<'_, S> {
    fn spawn(&mut self, id: crate::EntityId, owner: crate::Owner) {
        self.0.spawn(id, owner);
    }
    fn despawn(&mut self, id: crate::EntityId) {
        self.0.despawn(id);
    }
    fn set_owner(&mut self, id: crate::EntityId, owner: crate::Owner) {
        self.0.set_owner(id, owner);
    }
    fn insert(&mut self, id: crate::EntityId, component: crate::ComponentView<'_>) {
        self.0.insert(id, component);
    }
    fn remove(&mut self, id: crate::EntityId, component: crate::ComponentView<'_>) {
        self.0.remove(id, component);
    }
}

impl<S: ?Sized> EventSink for IgnoreEvents<'_, S> {
    fn event(&mut self, _: &GameEvent) {}
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
            last_event: 0,
            event_buf: Vec::new(),
        }
    }

    /// The newest event id applied.
    #[must_use]
    pub fn last_event(&self) -> Option<EventId> {
        (self.last_event > 0).then_some(EventId(self.last_event))
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
    /// change to `sink`. Events the packet carries are dropped (use
    /// [`ClientReplicator::handle_packet_with_events`] to receive them). Errors leave the state
    /// untouched.
    pub fn handle_packet<S: WorldSink + ?Sized>(
        &mut self,
        registry: &Registry,
        bytes: &[u8],
        sink: &mut S,
    ) -> Result<Applied, DecodeError> {
        self.handle_packet_with_events(registry, bytes, &mut IgnoreEvents(sink))
    }

    /// Like [`ClientReplicator::handle_packet`], also delivering the packet's new events to
    /// `sink`, in id order and each exactly once: after the packet's spawns and updates, before
    /// its despawns, so an event sees every entity it names and a death arrives in the same
    /// call as its despawn.
    pub fn handle_packet_with_events<S: WorldSink + EventSink + ?Sized>(
        &mut self,
        registry: &Registry,
        bytes: &[u8],
        sink: &mut S,
    ) -> Result<Applied, DecodeError> {
        let mut r = ByteReader(bytes);
        let section_len =
            usize::try_from(r.varint()?).map_err(|_| crate::events::EventDecodeError::Malformed)?;
        let section = r.bytes(section_len)?;
        let delta = r.0;
        let header = read_header(delta)?;
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
        self.event_buf.clear();
        let mut er = ByteReader(section);
        if !section.is_empty() {
            decode_events(&mut er, &self.config.events, &mut self.event_buf)?;
            if !er.0.is_empty() {
                return Err(crate::events::EventDecodeError::TrailingBytes.into());
            }
        }
        if let Some(first) = self.event_buf.first() {
            // The first packet a client receives may start anywhere; after that, no gaps.
            if self.last_event > 0 && first.id.0 > self.last_event + 1 {
                return Err(DecodeError::EventGap {
                    have: self.last_event,
                    first: first.id.0,
                });
            }
        }
        let mut next = self.spare.pop().unwrap_or_default();
        let limits = DecodeLimits {
            max_entities: self.config.max_entities,
        };
        if let Err(e) = decode_delta(
            registry,
            delta,
            baseline,
            limits,
            &mut self.scratch,
            &mut next,
        ) {
            self.spare.push(next);
            return Err(e);
        }
        let current = self.history.back().map_or(&self.empty, |(_, s)| s);
        current.diff_phase(&next, registry, sink, true, false);
        for e in &self.event_buf {
            if e.id.0 > self.last_event {
                sink.event(e);
                self.last_event = e.id.0;
            }
        }
        current.diff_phase(&next, registry, sink, false, true);
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
