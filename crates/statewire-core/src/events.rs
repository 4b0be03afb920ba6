//! Gameplay events resolved once by the server and delivered exactly once, in order, to every
//! client, in step with the replicated state.
//!
//! # Model
//!
//! Any peer *proposes* an event ([`Proposal`]: a kind, the entities it is about, a few bytes of
//! game data, and the tick the proposer saw when it acted). The server collects proposals and,
//! once per tick, [`EventServer::resolve`]s them in a deterministic order: by proposal tick
//! (older first; a tick is taken as at most [`EventConfig::max_claim_age_ticks`] old and at
//! most the resolving tick, so a claim stamped far in the past or the future cannot jump the
//! queue), then server before clients, then by [`ClientId`], then by the proposer's sequence
//! number.
//! With [`EventConfig::max_hold_ticks`], a proposal stamped a little after the resolving tick
//! (a client running its simulation ahead of the server stamps a shot with the tick it fired
//! in) waits until the server resolves that tick.
//! The game's `decide` callback sees them in that order and accepts or rejects each against its
//! own state, so two players claiming the same kill in the same tick yield exactly one death
//! (the first in that order) and everyone learns the same killer. Accepted proposals become
//! [`GameEvent`]s with consecutive [`EventId`]s.
//!
//! Events travel inside snapshot packets
//! ([`crate::ServerReplicator::encode_for_with_events`]): every packet carries the events the
//! client has not acknowledged yet, so loss and duplication cannot lose or repeat one, and the
//! client applies them with the state of the same packet. The encoder makes sure every entity
//! an event names exists on the client when the event is applied, and that an entity's
//! despawn travels in the same packet as the events about it (a death and its despawn land in
//! the same client tick).
//!
//! A client may apply its own proposal at once ([`Predictions`]) and later learn that the
//! server confirmed it (the event arrives with the client's sequence number) or rejected it.

use std::collections::VecDeque;
use std::fmt;

use smallvec::SmallVec;

use crate::ids::{ClientId, EntityId, Tick, Writer};

/// Identifies a resolved event; ids are consecutive in resolution order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(pub u64);

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ev#{}", self.0)
    }
}

/// Entities an event refers to.
pub type EntityRefs = SmallVec<[EntityId; 4]>;
/// Game-defined bytes of an event.
pub type EventData = SmallVec<[u8; 16]>;

/// An event a peer asks the server to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// Who proposes.
    pub proposer: Writer,
    /// The proposer's own sequence number (for matching predictions).
    pub seq: u32,
    /// The tick the proposer acted on.
    pub tick: Tick,
    /// Game-defined kind.
    pub kind: u16,
    /// Entities the event is about.
    pub entities: EntityRefs,
    /// Game-defined data.
    pub data: EventData,
}

/// A resolved event, as every peer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GameEvent {
    /// Unique, consecutive id.
    pub id: EventId,
    /// Server tick at which it was resolved.
    pub tick: Tick,
    /// Who proposed it.
    pub proposer: Writer,
    /// The proposer's sequence number.
    pub seq: u32,
    /// Game-defined kind.
    pub kind: u16,
    /// Entities the event is about.
    pub entities: EntityRefs,
    /// Game-defined data.
    pub data: EventData,
}

/// Limits on proposals and the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventConfig {
    /// Entities one event may name. Default 8.
    pub max_entities: usize,
    /// Data bytes one event may carry. Default 64.
    pub max_data: usize,
    /// Proposals waiting for resolution, all clients together. Default 4,096.
    pub max_pending: usize,
    /// Proposals one client may make per tick. Default 16.
    pub max_per_client_per_tick: u32,
    /// Resolved events kept for clients that have not acknowledged them. Default 65,536.
    pub max_log: usize,
    /// Events carried by one snapshot packet. Default 32.
    pub max_per_packet: usize,
    /// Oldest a proposal's tick counts as when ordering claims, in ticks before the resolving
    /// tick (older stamps count as this old; stamps after the resolving tick count as it).
    /// Default 90 (3 s at 30 Hz).
    pub max_claim_age_ticks: u32,
    /// A proposal stamped up to this many ticks after the resolving tick waits until
    /// [`EventServer::resolve`] reaches its tick, instead of being decided at once: a client
    /// that runs ahead of the server (its tick clock leads by about half a round trip) stamps
    /// a shot with the tick it fired in, and the shot is judged when the server simulates
    /// that tick (with the shooter where it was then). Stamps further ahead are decided at
    /// once, as if for the resolving tick. Waiting proposals count against `max_pending`.
    /// Default 0 (nothing waits).
    pub max_hold_ticks: u32,
    /// Proposals one client may have waiting for their tick; beyond it, a proposal stamped
    /// ahead is refused when it would wait (counted, and the client told), so that a few
    /// clients stamping far ahead cannot fill `max_pending` for everyone. Default 16.
    pub max_held_per_client: u32,
}

impl Default for EventConfig {
    fn default() -> Self {
        EventConfig {
            max_entities: 8,
            max_data: 64,
            max_pending: 4096,
            max_per_client_per_tick: 16,
            max_log: 65_536,
            max_per_packet: 32,
            max_claim_age_ticks: 90,
            max_hold_ticks: 0,
            max_held_per_client: 16,
        }
    }
}

/// Why a proposal was refused before resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposalRejection {
    /// Too many entities or data bytes.
    #[error("proposal too large")]
    TooLarge,
    /// The pending queue is full.
    #[error("too many pending proposals")]
    QueueFull,
    /// The client exceeded its per-tick proposal budget.
    #[error("proposal rate limit exceeded")]
    RateLimited,
}

/// The server's event resolver and log.
#[derive(Debug)]
pub struct EventServer {
    config: EventConfig,
    next_id: u64,
    pending: Vec<Proposal>,
    per_client: hashbrown::HashMap<ClientId, u32>,
    log: VecDeque<GameEvent>,
    rejected: Vec<(ClientId, u32)>,
    refused: u64,
    /// The tick of the last [`EventServer::resolve`].
    last_resolved: Option<Tick>,
}

impl EventServer {
    /// An empty resolver.
    #[must_use]
    pub fn new(config: EventConfig) -> Self {
        EventServer {
            config,
            next_id: 1,
            pending: Vec::new(),
            per_client: hashbrown::HashMap::new(),
            log: VecDeque::new(),
            rejected: Vec::new(),
            refused: 0,
            last_resolved: None,
        }
    }

    /// The limits in use.
    #[must_use]
    pub fn config(&self) -> &EventConfig {
        &self.config
    }

    /// Queues a proposal for the next [`EventServer::resolve`].
    pub fn propose(&mut self, p: Proposal) -> Result<(), ProposalRejection> {
        let verdict =
            if p.entities.len() > self.config.max_entities || p.data.len() > self.config.max_data {
                Err(ProposalRejection::TooLarge)
            } else if self.pending.len() >= self.config.max_pending {
                Err(ProposalRejection::QueueFull)
            } else if let Writer::Client(c) = p.proposer {
                let n = self.per_client.entry(c).or_insert(0);
                if *n >= self.config.max_per_client_per_tick {
                    Err(ProposalRejection::RateLimited)
                } else {
                    *n += 1;
                    Ok(())
                }
            } else {
                Ok(())
            };
        match verdict {
            Ok(()) => self.pending.push(p),
            Err(_) => {
                self.refused += 1;
                if let Writer::Client(c) = p.proposer {
                    self.rejected.push((c, p.seq));
                }
            }
        }
        verdict
    }

    /// Resolves the pending proposals at `tick`, in the deterministic order described in the
    /// module docs; those stamped up to [`EventConfig::max_hold_ticks`] after `tick` wait for
    /// a later call (at most [`EventConfig::max_held_per_client`] per client). `decide` returns whether to accept each (it may update game state as it
    /// goes, so a later conflicting proposal sees the effect of an earlier one). Returns the
    /// events resolved now.
    pub fn resolve(
        &mut self,
        tick: Tick,
        mut decide: impl FnMut(&Proposal) -> bool,
    ) -> &[GameEvent] {
        let mut pending = std::mem::take(&mut self.pending);
        // A total order (wrapping tick comparison is not one, and sorting with it can panic):
        // the claim's age relative to `tick`, clamped to the window, oldest first.
        let max_age = i64::from(self.config.max_claim_age_ticks);
        pending.sort_by_key(|p| {
            let age = i64::from(tick.diff(p.tick)).clamp(0, max_age);
            (std::cmp::Reverse(age), writer_order(p.proposer), p.seq)
        });
        let first = self.log.len();
        let hold = i64::from(self.config.max_hold_ticks);
        let mut held = Vec::new();
        let mut held_by: hashbrown::HashMap<ClientId, u32> = hashbrown::HashMap::new();
        self.last_resolved = Some(tick);
        for p in pending.drain(..) {
            let ahead = i64::from(p.tick.diff(tick));
            if ahead > 0 && ahead <= hold {
                if let Writer::Client(c) = p.proposer {
                    let n = held_by.entry(c).or_insert(0);
                    if *n >= self.config.max_held_per_client {
                        self.refused += 1;
                        self.rejected.push((c, p.seq));
                        continue;
                    }
                    *n += 1;
                }
                held.push(p);
                continue;
            }
            if decide(&p) {
                let id = EventId(self.next_id);
                self.next_id += 1;
                self.log.push_back(GameEvent {
                    id,
                    tick,
                    proposer: p.proposer,
                    seq: p.seq,
                    kind: p.kind,
                    entities: p.entities,
                    data: p.data,
                });
            } else if let Writer::Client(c) = p.proposer {
                self.rejected.push((c, p.seq));
            }
        }
        pending.append(&mut held);
        self.pending = pending;
        self.per_client.clear();
        // Keep the log bounded; `encode_for_with_events` reports clients that fall behind it.
        let mut resolved = self.log.len() - first;
        while self.log.len() > self.config.max_log {
            self.log.pop_front();
            resolved = resolved.min(self.log.len());
        }
        let n = self.log.len();
        self.log.make_contiguous();
        &self.log.as_slices().0[n - resolved..]
    }

    /// Proposals from clients that were refused or rejected since the last call, as
    /// (client, seq): send them to the proposers (reliably) so they can roll predictions back.
    pub fn take_rejections(&mut self) -> Vec<(ClientId, u32)> {
        std::mem::take(&mut self.rejected)
    }

    /// Forgets `client` (call it when the client leaves): its proposal budget for this tick and
    /// the rejections queued for it, which nobody is left to receive. Its proposals due now
    /// are still resolved, like any other (they were made while it was connected); those
    /// waiting for a later tick ([`EventConfig::max_hold_ticks`]) are dropped, as nobody is
    /// left to hear their outcome.
    pub fn remove_client(&mut self, client: ClientId) {
        self.per_client.remove(&client);
        self.rejected.retain(|(c, _)| *c != client);
        if let Some(last) = self.last_resolved {
            // Due at the next resolve: stamped at most one tick after the last one.
            self.pending
                .retain(|p| p.proposer != Writer::Client(client) || p.tick.diff(last) <= 1);
        }
    }

    /// The id the next resolved event will get.
    #[must_use]
    pub fn next_id(&self) -> EventId {
        EventId(self.next_id)
    }

    /// Every resolved event still in the log.
    pub fn log(&self) -> impl ExactSizeIterator<Item = &GameEvent> + '_ {
        self.log.iter()
    }

    /// Events with ids greater than `after`, in order (`None` for a client that was never sent
    /// any: starts at the oldest held).
    pub(crate) fn after(
        &self,
        after: EventId,
    ) -> Result<impl Iterator<Item = &GameEvent> + '_, EventId> {
        let first = self.log.front().map_or(self.next_id, |e| e.id.0);
        if after.0 + 1 < first {
            return Err(EventId(first));
        }
        let skip = (after.0 + 1 - first) as usize;
        Ok(self.log.iter().skip(skip))
    }

    /// Drops events every client has acknowledged (ids up to and including `upto`).
    pub fn trim_through(&mut self, upto: EventId) {
        while self.log.front().is_some_and(|e| e.id <= upto) {
            self.log.pop_front();
        }
    }

    /// Proposals refused before resolution (too large, queue full, rate limit).
    #[must_use]
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

fn writer_order(w: Writer) -> (u8, u64) {
    match w {
        Writer::Server => (0, 0),
        Writer::Client(c) => (1, c.0),
    }
}

/// Errors decoding events or proposals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventDecodeError {
    /// Input ended early.
    #[error("truncated")]
    Truncated,
    /// Bytes left over.
    #[error("trailing bytes")]
    TrailingBytes,
    /// Over a configured limit.
    #[error("over a limit")]
    TooLarge,
    /// A malformed integer or tag.
    #[error("malformed")]
    Malformed,
    /// Event ids in one packet are not consecutive.
    #[error("event ids not consecutive")]
    NotConsecutive,
}

pub(crate) struct ByteReader<'a>(pub(crate) &'a [u8]);

impl<'a> ByteReader<'a> {
    pub(crate) fn take<const N: usize>(&mut self) -> Result<[u8; N], EventDecodeError> {
        let (h, r) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(EventDecodeError::Truncated)?;
        self.0 = r;
        Ok(*h)
    }
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], EventDecodeError> {
        let (h, r) = self
            .0
            .split_at_checked(n)
            .ok_or(EventDecodeError::Truncated)?;
        self.0 = r;
        Ok(h)
    }
    pub(crate) fn varint(&mut self) -> Result<u64, EventDecodeError> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.take::<1>()?[0];
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                // Reject non-canonical encodings (a trailing zero group) and overflow.
                if (i > 0 && b == 0) || (i == 9 && b > 1) {
                    return Err(EventDecodeError::Malformed);
                }
                return Ok(v);
            }
        }
        Err(EventDecodeError::Malformed)
    }
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn put_writer(out: &mut Vec<u8>, w: Writer, seq: u32) {
    match w {
        Writer::Server => out.push(0),
        Writer::Client(c) => {
            out.push(1);
            put_varint(out, c.0);
            put_varint(out, u64::from(seq));
        }
    }
}

fn read_writer(r: &mut ByteReader<'_>) -> Result<(Writer, u32), EventDecodeError> {
    match r.take::<1>()?[0] {
        0 => Ok((Writer::Server, 0)),
        1 => {
            let c = r.varint()?;
            let seq = u32::try_from(r.varint()?).map_err(|_| EventDecodeError::Malformed)?;
            Ok((Writer::Client(ClientId(c)), seq))
        }
        _ => Err(EventDecodeError::Malformed),
    }
}

fn put_body(out: &mut Vec<u8>, kind: u16, entities: &[EntityId], data: &[u8]) {
    out.extend_from_slice(&kind.to_le_bytes());
    out.push(entities.len() as u8);
    for e in entities {
        put_varint(out, u64::from(e.0));
    }
    out.push(data.len() as u8);
    out.extend_from_slice(data);
}

fn read_body(
    r: &mut ByteReader<'_>,
    config: &EventConfig,
) -> Result<(u16, EntityRefs, EventData), EventDecodeError> {
    let kind = u16::from_le_bytes(r.take()?);
    let n = usize::from(r.take::<1>()?[0]);
    if n > config.max_entities {
        return Err(EventDecodeError::TooLarge);
    }
    let mut entities = EntityRefs::new();
    for _ in 0..n {
        let id = u32::try_from(r.varint()?).map_err(|_| EventDecodeError::Malformed)?;
        entities.push(EntityId(id));
    }
    let len = usize::from(r.take::<1>()?[0]);
    if len > config.max_data {
        return Err(EventDecodeError::TooLarge);
    }
    Ok((kind, entities, EventData::from_slice(r.bytes(len)?)))
}

/// Encodes a proposal (client → server): `tick:u32le seq:varint kind:u16le n:u8
/// entity:varint* len:u8 data`. The proposer is the sender, known from the session.
pub fn encode_proposal(p: &Proposal, out: &mut Vec<u8>) {
    out.extend_from_slice(&p.tick.0.to_le_bytes());
    put_varint(out, u64::from(p.seq));
    put_body(
        out,
        p.kind,
        &p.entities[..p.entities.len().min(255)],
        &p.data[..p.data.len().min(255)],
    );
}

/// Decodes a proposal from `sender`, within `config`'s limits.
pub fn decode_proposal(
    bytes: &[u8],
    sender: ClientId,
    config: &EventConfig,
) -> Result<Proposal, EventDecodeError> {
    let mut r = ByteReader(bytes);
    let tick = Tick(u32::from_le_bytes(r.take()?));
    let seq = u32::try_from(r.varint()?).map_err(|_| EventDecodeError::Malformed)?;
    let (kind, entities, data) = read_body(&mut r, config)?;
    if !r.0.is_empty() {
        return Err(EventDecodeError::TrailingBytes);
    }
    Ok(Proposal {
        proposer: Writer::Client(sender),
        seq,
        tick,
        kind,
        entities,
        data,
    })
}

/// Encodes consecutive events: `count:varint` then, for the first, `id:varint`, and for each
/// `tick:u32le proposer body`.
pub(crate) fn encode_events(events: &[&GameEvent], out: &mut Vec<u8>) {
    put_varint(out, events.len() as u64);
    if let Some(first) = events.first() {
        put_varint(out, first.id.0);
    }
    for e in events {
        out.extend_from_slice(&e.tick.0.to_le_bytes());
        put_writer(out, e.proposer, e.seq);
        put_body(out, e.kind, &e.entities, &e.data);
    }
}

/// Decodes what [`encode_events`] wrote, at most `config.max_per_packet` events.
pub(crate) fn decode_events(
    r: &mut ByteReader<'_>,
    config: &EventConfig,
    out: &mut Vec<GameEvent>,
) -> Result<(), EventDecodeError> {
    let n = r.varint()?;
    if n > config.max_per_packet as u64 {
        return Err(EventDecodeError::TooLarge);
    }
    if n == 0 {
        return Ok(());
    }
    let first = r.varint()?;
    if first.checked_add(n).is_none() {
        return Err(EventDecodeError::Malformed);
    }
    for k in 0..n {
        let tick = Tick(u32::from_le_bytes(r.take()?));
        let (proposer, seq) = read_writer(r)?;
        let (kind, entities, data) = read_body(r, config)?;
        out.push(GameEvent {
            id: EventId(first + k),
            tick,
            proposer,
            seq,
            kind,
            entities,
            data,
        });
    }
    Ok(())
}

/// What a client-side engine implements to receive events.
pub trait EventSink {
    /// A resolved event, delivered once, in id order, after the state changes of the same
    /// packet that spawn or update entities and before those that despawn them.
    fn event(&mut self, event: &GameEvent);
}

impl EventSink for Vec<GameEvent> {
    fn event(&mut self, event: &GameEvent) {
        self.push(event.clone());
    }
}

/// What became of a predicted event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PredictionOutcome {
    /// The server resolved it as proposed.
    Confirmed {
        /// The proposer's sequence number.
        seq: u32,
        /// The resolved event.
        event: GameEvent,
    },
    /// The server rejected it: undo the local effect.
    Rejected {
        /// The proposer's sequence number.
        seq: u32,
    },
}

/// A client's predicted events: applied locally at once, then confirmed or rejected.
#[derive(Debug, Default)]
pub struct Predictions {
    next_seq: u32,
    open: VecDeque<(u32, Proposal)>,
    outcomes: VecDeque<PredictionOutcome>,
}

impl Predictions {
    /// No predictions yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a prediction of `me` and returns the proposal to send to the server (its `seq`
    /// is assigned here).
    pub fn predict(
        &mut self,
        me: ClientId,
        tick: Tick,
        kind: u16,
        entities: EntityRefs,
        data: EventData,
    ) -> Proposal {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let p = Proposal {
            proposer: Writer::Client(me),
            seq,
            tick,
            kind,
            entities,
            data,
        };
        self.open.push_back((seq, p.clone()));
        p
    }

    /// Feeds a delivered event; if it resolves one of our predictions, records the
    /// confirmation.
    pub fn on_event(&mut self, me: ClientId, event: &GameEvent) {
        if event.proposer != Writer::Client(me) {
            return;
        }
        if let Some(i) = self.open.iter().position(|(s, _)| *s == event.seq) {
            self.open.remove(i);
            self.outcomes.push_back(PredictionOutcome::Confirmed {
                seq: event.seq,
                event: event.clone(),
            });
        }
    }

    /// The server rejected proposal `seq`.
    pub fn on_rejected(&mut self, seq: u32) {
        if let Some(i) = self.open.iter().position(|(s, _)| *s == seq) {
            self.open.remove(i);
            self.outcomes.push_back(PredictionOutcome::Rejected { seq });
        }
    }

    /// Next outcome: apply confirmations, roll back rejections.
    pub fn poll_outcome(&mut self) -> Option<PredictionOutcome> {
        self.outcomes.pop_front()
    }

    /// Predictions still waiting for the server.
    pub fn open(&self) -> impl Iterator<Item = &Proposal> + '_ {
        self.open.iter().map(|(_, p)| p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_client_drops_its_budget_and_queued_rejections() {
        let (gone, stays) = (ClientId(1), ClientId(2));
        let config = EventConfig {
            max_per_client_per_tick: 1,
            ..EventConfig::default()
        };
        let mut server = EventServer::new(config);
        let proposal = |c: ClientId, seq: u32| Proposal {
            proposer: Writer::Client(c),
            seq,
            tick: Tick(1),
            kind: 0,
            entities: EntityRefs::new(),
            data: EventData::new(),
        };
        for c in [gone, stays] {
            server.propose(proposal(c, 1)).unwrap();
            assert_eq!(
                server.propose(proposal(c, 2)),
                Err(ProposalRejection::RateLimited)
            );
        }
        server.remove_client(gone);
        assert!(!server.per_client.contains_key(&gone));
        assert_eq!(server.take_rejections(), vec![(stays, 2)]);
        // Its budget is gone too: a proposal under its id (a reused id) is not rate limited.
        server.propose(proposal(gone, 3)).unwrap();
        // Pending proposals of the departed client are still resolved.
        assert_eq!(server.resolve(Tick(2), |_| true).len(), 3);
    }

    #[test]
    fn proposals_from_the_near_future_wait_for_their_tick() {
        let config = EventConfig {
            max_hold_ticks: 5,
            ..EventConfig::default()
        };
        let mut server = EventServer::new(config);
        let at = |seq: u32, tick: u32| Proposal {
            proposer: Writer::Client(ClientId(1)),
            seq,
            tick: Tick(tick),
            kind: 0,
            entities: EntityRefs::new(),
            data: EventData::new(),
        };
        // Resolving at tick 10: 9 and 10 are due, 13 and 15 wait, 16 is too far to wait for.
        for (seq, tick) in [(1, 9), (2, 10), (3, 13), (4, 15), (5, 16)] {
            server.propose(at(seq, tick)).unwrap();
        }
        let mut decided = Vec::new();
        let mut resolve = |server: &mut EventServer, t: u32| {
            server.resolve(Tick(t), |p| {
                decided.push((t, p.seq));
                true
            });
        };
        resolve(&mut server, 10);
        resolve(&mut server, 12);
        resolve(&mut server, 13);
        resolve(&mut server, 20);
        decided.sort_unstable();
        assert_eq!(decided, vec![(10, 1), (10, 2), (10, 5), (13, 3), (20, 4)]);
        // Each was decided once; the log holds them all, stamped with the tick they were
        // resolved at.
        let ticks: Vec<u32> = server.log().map(|e| e.tick.0).collect();
        assert_eq!(ticks.len(), 5);
        assert!(ticks.iter().all(|&t| t == 10 || t == 13 || t == 20));
        // With the default nothing waits.
        let mut server = EventServer::new(EventConfig::default());
        server.propose(at(1, 13)).unwrap();
        assert_eq!(server.resolve(Tick(10), |_| true).len(), 1);
        // One client may keep only so many waiting; the rest are refused and it is told.
        let config = EventConfig {
            max_hold_ticks: 30,
            max_held_per_client: 3,
            ..EventConfig::default()
        };
        let mut server = EventServer::new(config);
        for seq in 0..5 {
            server.propose(at(seq, 20 + seq)).unwrap();
        }
        assert!(server.resolve(Tick(10), |_| true).is_empty());
        assert_eq!(
            server.take_rejections(),
            vec![(ClientId(1), 3), (ClientId(1), 4)]
        );
        assert_eq!(server.pending.len(), 3);
        // A client that leaves takes its waiting proposals with it (nobody would hear of
        // them); one due at the next tick is still resolved.
        server.propose(at(9, 11)).unwrap();
        server.remove_client(ClientId(1));
        assert_eq!(server.pending.len(), 1);
        assert_eq!(server.resolve(Tick(11), |_| true).len(), 1);
        assert!(server.take_rejections().is_empty());
    }

    fn refs(ids: &[u32]) -> EntityRefs {
        ids.iter().map(|&i| EntityId(i)).collect()
    }

    #[test]
    fn predictions_are_confirmed_or_rolled_back() {
        let me = ClientId(7);
        let mut server = EventServer::new(EventConfig::default());
        let mut preds = Predictions::new();
        let a = preds.predict(me, Tick(1), 1, refs(&[1, 2]), EventData::new());
        let b = preds.predict(me, Tick(1), 1, refs(&[1, 3]), EventData::new());
        assert_eq!(preds.open().count(), 2);
        server.propose(a.clone()).unwrap();
        server.propose(b.clone()).unwrap();
        // The server accepts the first claim only.
        let resolved = server
            .resolve(Tick(2), |p| p.entities[1] == EntityId(2))
            .to_vec();
        assert_eq!(resolved.len(), 1);
        for e in &resolved {
            preds.on_event(me, e);
        }
        for (c, seq) in server.take_rejections() {
            assert_eq!(c, me);
            preds.on_rejected(seq);
        }
        assert_eq!(
            preds.poll_outcome(),
            Some(PredictionOutcome::Confirmed {
                seq: a.seq,
                event: resolved[0].clone()
            })
        );
        assert_eq!(
            preds.poll_outcome(),
            Some(PredictionOutcome::Rejected { seq: b.seq })
        );
        assert_eq!(preds.poll_outcome(), None);
        assert_eq!(preds.open().count(), 0);
        // Someone else's event with our seq number does not confirm anything.
        let c = preds.predict(me, Tick(3), 1, refs(&[1]), EventData::new());
        let mut other = resolved[0].clone();
        other.proposer = Writer::Client(ClientId(8));
        other.seq = c.seq;
        preds.on_event(me, &other);
        assert_eq!(preds.poll_outcome(), None);
    }

    #[test]
    fn resolution_order_is_tick_then_server_then_client_id_then_seq() {
        let mut server = EventServer::new(EventConfig::default());
        let p = |who: Writer, seq, tick| Proposal {
            proposer: who,
            seq,
            tick: Tick(tick),
            kind: 1,
            entities: refs(&[9]),
            data: EventData::new(),
        };
        server
            .propose(p(Writer::Client(ClientId(5)), 0, 10))
            .unwrap();
        server
            .propose(p(Writer::Client(ClientId(2)), 1, 10))
            .unwrap();
        server
            .propose(p(Writer::Client(ClientId(2)), 0, 10))
            .unwrap();
        server.propose(p(Writer::Server, 0, 10)).unwrap();
        server
            .propose(p(Writer::Client(ClientId(9)), 0, 9))
            .unwrap();
        let mut seen = Vec::new();
        server.resolve(Tick(11), |p| {
            seen.push((p.proposer, p.seq));
            false
        });
        assert_eq!(
            seen,
            vec![
                (Writer::Client(ClientId(9)), 0),
                (Writer::Server, 0),
                (Writer::Client(ClientId(2)), 0),
                (Writer::Client(ClientId(2)), 1),
                (Writer::Client(ClientId(5)), 0),
            ]
        );
        // Rejected client proposals are reported back; the server's own is not.
        assert_eq!(server.take_rejections().len(), 4);
    }

    #[test]
    fn proposals_are_bounded_and_decode_strictly() {
        let cfg = EventConfig::default();
        let mut server = EventServer::new(cfg.clone());
        let big = Proposal {
            proposer: Writer::Client(ClientId(1)),
            seq: 3,
            tick: Tick(4),
            kind: 2,
            entities: refs(&[1; 9]),
            data: EventData::new(),
        };
        assert_eq!(server.propose(big), Err(ProposalRejection::TooLarge));
        let ok = Proposal {
            entities: refs(&[1, 2]),
            data: EventData::from_slice(b"hi"),
            ..Proposal {
                proposer: Writer::Client(ClientId(1)),
                seq: 3,
                tick: Tick(4),
                kind: 2,
                entities: refs(&[]),
                data: EventData::new(),
            }
        };
        let mut bytes = Vec::new();
        encode_proposal(&ok, &mut bytes);
        assert_eq!(decode_proposal(&bytes, ClientId(1), &cfg), Ok(ok));
        assert!(decode_proposal(&bytes[..bytes.len() - 1], ClientId(1), &cfg).is_err());
        bytes.push(0);
        assert_eq!(
            decode_proposal(&bytes, ClientId(1), &cfg),
            Err(EventDecodeError::TrailingBytes)
        );
        for _ in 0..cfg.max_per_client_per_tick {
            let mut p = server_prop();
            p.seq = 1;
            server.propose(p).unwrap();
        }
        assert_eq!(
            server.propose(server_prop()),
            Err(ProposalRejection::RateLimited)
        );
    }

    fn server_prop() -> Proposal {
        Proposal {
            proposer: Writer::Client(ClientId(1)),
            seq: 0,
            tick: Tick(1),
            kind: 1,
            entities: refs(&[1]),
            data: EventData::new(),
        }
    }
}
