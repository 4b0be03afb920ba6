//! The server half: per-client views over the shared [`Store`], interest, priority, packets and
//! per-packet acknowledgements.

use std::collections::VecDeque;

use hashbrown::HashMap;

use super::records::{TailBuf, copy_bits, write_full, write_update};
use super::{AckFrame, AckOutcome, ReplicationError, ServerConfig};
use crate::bits::BitWriter;
use crate::codec::range::RangeEncoder;
use crate::delta::{EncodeStats, TAIL_FRAMING_BITS, field_models, write_gap};
use crate::events::{EventId, EventServer, GameEvent, encode_events, put_varint};
use crate::ids::{ClientId, EntityId, Owner, Tick};
use crate::schema::ComponentId;
use crate::store::{Slot, Store, VersionRef};

/// Record flags.
const PENDING: u16 = 1;
/// Out of interest (or despawned): the client must be told to despawn it.
const LEAVING: u16 = 2;
/// A despawn is in flight in the packet of tick `sent`.
const DESPAWN_SENT: u16 = 4;
/// An event the client has not acknowledged names it: keep it in view.
const PINNED: u16 = 8;
/// A packet that may have carried a newer state was given up without a definite answer.
const MAYBE_NEWER: u16 = 16;
/// Marked for removal (compacted in the next update).
const DEAD: u16 = 32;
/// The client may hold some state of it that `known` does not name (a despawn was sent and
/// not yet confirmed): only a full record or a despawn is safe.
const HELD: u16 = 64;
/// `known` holds a tick.
const HAS_KNOWN: u16 = 128;
/// `sent` holds a tick.
const HAS_SENT: u16 = 256;

/// What a client holds of one entity: 16 bytes, kept with the entity's slot (one per client
/// that sees it), so a change fans out to exactly the clients that see it.
#[derive(Debug, Clone, Copy)]
struct Rec {
    client: u16,
    flags: u16,
    /// Tick of the newest packet the client acknowledged with this entity's state (if
    /// `HAS_KNOWN`; otherwise the client is not known to hold it).
    known: u32,
    /// Tick of the newest packet in flight carrying it (if `HAS_SENT`).
    sent: u32,
    /// Priority accumulator: grows while changes wait, drops to zero when sent.
    prio: f32,
}

impl Rec {
    fn fresh(client: u16) -> Rec {
        Rec {
            client,
            flags: 0,
            known: 0,
            sent: 0,
            prio: 0.0,
        }
    }

    fn known(&self) -> Option<u32> {
        (self.flags & HAS_KNOWN != 0).then_some(self.known)
    }

    fn sent(&self) -> Option<u32> {
        (self.flags & HAS_SENT != 0).then_some(self.sent)
    }

    fn set_known(&mut self, t: Option<u32>) {
        self.known = t.unwrap_or(0);
        self.flags = (self.flags & !HAS_KNOWN) | if t.is_some() { HAS_KNOWN } else { 0 };
    }

    fn set_sent(&mut self, t: Option<u32>) {
        self.sent = t.unwrap_or(0);
        self.flags = (self.flags & !HAS_SENT) | if t.is_some() { HAS_SENT } else { 0 };
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    State,
    Despawn,
}

#[derive(Debug, Default)]
struct SentPacket {
    tick: Tick,
    entries: Vec<(u32, EntryKind)>,
    events_upto: u64,
}

type Filter = Box<dyn Fn(EntityId) -> bool + Send + Sync>;

struct ClientState {
    id: ClientId,
    viewer: Option<[f32; 2]>,
    radius: f32,
    rooms: u64,
    filter: Option<Filter>,
    /// Slots that may be in its view (compacted at each requery).
    view: Vec<u32>,
    view_len: usize,
    /// Slots with the `PENDING` flag, each with where its record was in the slot's list when
    /// it was added (a hint: lists shift when records come and go).
    pending: Vec<(u32, u32)>,
    in_flight: VecDeque<SentPacket>,
    last_sent: Option<Tick>,
    last_ack: Option<Tick>,
    events_acked: u64,
    pinned: Vec<(u32, u64)>,
    budget: Option<usize>,
    requery: bool,
    /// Where its viewer was at the last full interest pass.
    queried_at: Option<[f32; 2]>,
    /// Whether it has been filled with its initial view.
    populated: bool,
}

impl std::fmt::Debug for ClientState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientState")
            .field("id", &self.id)
            .field("view", &self.view_len)
            .field("pending", &self.pending.len())
            .field("in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

/// A pending record before its body is coded.
#[derive(Debug, Clone, Copy)]
struct Pre {
    slot: u32,
    pos: u32,
    required: bool,
    leaving: bool,
    prio: f32,
}

/// A candidate record for one packet.
#[derive(Debug, Clone, Copy)]
struct Cand {
    slot: u32,
    /// Position of the client's record in the slot's list (stable within one encode).
    pos: u32,
    id: EntityId,
    kind: CandKind,
    required: bool,
    prio: f32,
    /// Body bits in the body cache (or [`DESPAWN_BITS`] for a despawn).
    start: usize,
    len: usize,
    tail: (usize, usize),
    tail_bits: usize,
    staleness: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CandKind {
    Full,
    Update,
    Despawn,
}

/// Clients bucketed by where their viewer is, for "who might want this entity?".
#[derive(Debug, Default)]
struct NearClients {
    /// Side of a bucket: the largest radius + margin, so only the 3 × 3 buckets around an
    /// entity can hold clients that see it.
    cell: f32,
    grid: HashMap<(i32, i32), Vec<u16>>,
    /// Clients that see at any distance (radius 0 or no viewer).
    unbounded: Vec<u16>,
    /// Every populated client.
    everyone: Vec<u16>,
}

impl NearClients {
    fn rebuild(&mut self, clients: &[Option<ClientState>], margin: f32) {
        for v in self.grid.values_mut() {
            v.clear();
        }
        self.unbounded.clear();
        self.everyone.clear();
        self.cell = clients
            .iter()
            .flatten()
            .filter(|c| c.radius > 0.0 && c.viewer.is_some())
            .map(|c| c.radius + margin)
            .fold(0.0, f32::max)
            .max(1.0);
        for (i, c) in clients.iter().enumerate() {
            let Some(c) = c else { continue };
            self.everyone.push(i as u16);
            match c.viewer {
                Some(v) if c.radius > 0.0 => {
                    let key = self.key(v);
                    self.grid.entry(key).or_default().push(i as u16);
                }
                _ => self.unbounded.push(i as u16),
            }
        }
        self.grid.retain(|_, v| !v.is_empty());
    }

    fn key(&self, p: [f32; 2]) -> (i32, i32) {
        (
            (p[0] / self.cell).floor() as i32,
            (p[1] / self.cell).floor() as i32,
        )
    }

    /// Appends the clients whose viewer is within one bucket of `p`.
    fn around(&self, p: [f32; 2], out: &mut Vec<u16>) {
        if self.grid.is_empty() {
            return;
        }
        let (x, y) = self.key(p);
        for dx in -1..=1 {
            for dy in -1..=1 {
                if let Some(v) = self.grid.get(&(x.saturating_add(dx), y.saturating_add(dy))) {
                    out.extend_from_slice(v);
                }
            }
        }
    }
}

/// A record body coded once per tick and shared by every client that needs the same one (same
/// entity, same acknowledged state).
#[derive(Debug, Clone, Copy)]
struct Body {
    start: usize,
    len: usize,
    tail: (usize, usize),
    tail_bits: usize,
}

#[derive(Debug, Default)]
struct BodyCache {
    /// The store tick and revision the bodies were coded from.
    tick: Option<(Tick, u64)>,
    bits: Vec<u8>,
    tail: TailBuf,
    /// (slot, acknowledged tick, full?) -> body
    map: HashMap<(u32, u32, bool), Body>,
}

impl BodyCache {
    fn reset(&mut self, tick: Tick, revision: u64) {
        if self.tick != Some((tick, revision)) {
            self.tick = Some((tick, revision));
            // Scratch sized by the last tick: give back what a crowd that left needed.
            let (used, bits) = (self.map.len(), self.bits.len());
            self.bits.clear();
            self.tail.values.clear();
            self.tail.reserved_bits = 0;
            self.map.clear();
            if self.map.capacity() > 4 * used.max(64) {
                self.map.shrink_to(used * 2);
            }
            if self.bits.capacity() > 4 * bits.max(4096) {
                self.bits.shrink_to(bits * 2);
            }
        }
    }

    /// The body for `key` if it was coded this tick.
    fn cached(&self, key: (u32, u32, bool), shared: bool) -> Option<Body> {
        if shared {
            self.map.get(&key).copied()
        } else {
            None
        }
    }

    /// The body for `key`, coding it with `write` the first time this tick.
    fn get(
        &mut self,
        key: (u32, u32, bool),
        shared: bool,
        write: impl FnOnce(&mut BitWriter<'_>, &mut TailBuf),
    ) -> Body {
        if shared {
            if let Some(b) = self.map.get(&key) {
                return *b;
            }
        }
        let start = self.bits.len() * 8;
        let tail_start = self.tail.values.len();
        let tail_bits0 = self.tail.reserved_bits;
        let mut w = BitWriter::new(&mut self.bits);
        write(&mut w, &mut self.tail);
        let len = w.bit_len();
        w.finish();
        let b = Body {
            start,
            len,
            tail: (tail_start, self.tail.values.len() - tail_start),
            tail_bits: self.tail.reserved_bits - tail_bits0,
        };
        if shared {
            self.map.insert(key, b);
        }
        b
    }

    fn memory_bytes(&self) -> usize {
        self.bits.capacity()
            + self.tail.values.capacity() * std::mem::size_of::<crate::delta::TailValue>()
            + self.map.capacity() * (std::mem::size_of::<((u32, u32, bool), Body)>() + 1)
    }
}

/// The despawn body, two bits, in a buffer of its own.
const DESPAWN_BITS: [u8; 1] = [0b11];

#[derive(Debug, Default)]
struct Scratch {
    /// The pending list being rebuilt (swapped with the client's).
    keep: Vec<(u32, u32)>,
    tail_values: Vec<crate::delta::TailValue>,
    pre: Vec<Pre>,
    cands: Vec<Cand>,
    chosen: Vec<usize>,
    packet_bits: Vec<u8>,
    section: Vec<u8>,
    hold: Vec<u32>,
    need: Vec<u32>,
}

/// Server half of replication. One per [`Store`]. Sans-IO: the caller moves the bytes.
///
/// Per tick: change the store, [`ServerReplicator::update`] once, then
/// [`ServerReplicator::encode_for`] (or `_with_events`) for each client; feed acknowledgements
/// to [`ServerReplicator::handle_ack`] as they arrive.
pub struct ServerReplicator {
    config: ServerConfig,
    clients: Vec<Option<ClientState>>,
    by_id: HashMap<ClientId, u16>,
    free_idx: Vec<u16>,
    /// Per store slot, the clients that hold it, sorted by client index.
    viewers: Vec<Vec<Rec>>,
    /// Slots whose records changed structurally and must be compacted / unreferenced.
    dirty_slots: Vec<u32>,
    /// Store slots that lost a reference (their record was removed).
    unref: Vec<u32>,
    log_seen: Option<Tick>,
    tick_count: u32,
    component_weights: Vec<f32>,
    events_seen: u64,
    scratch: Scratch,
    bodies: BodyCache,
    near: NearClients,
    /// Running average of bits per record written, to size how many candidates to code.
    record_bits: f32,
}

impl std::fmt::Debug for ServerReplicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerReplicator")
            .field("config", &self.config)
            .field("clients", &self.by_id.len())
            .finish_non_exhaustive()
    }
}

impl ServerReplicator {
    /// A replicator with no clients.
    #[must_use]
    pub fn new(config: ServerConfig) -> Self {
        let mut config = config;
        config.max_clients = config.max_clients.clamp(1, usize::from(u16::MAX));
        config.max_in_flight = config.max_in_flight.clamp(1, 1024);
        ServerReplicator {
            config,
            clients: Vec::new(),
            by_id: HashMap::new(),
            free_idx: Vec::new(),
            viewers: Vec::new(),
            dirty_slots: Vec::new(),
            unref: Vec::new(),
            log_seen: None,
            tick_count: 0,
            component_weights: Vec::new(),
            events_seen: 0,
            scratch: Scratch::default(),
            bodies: BodyCache::default(),
            near: NearClients::default(),
            record_bits: 64.0,
        }
    }

    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Starts replicating to `client` (from the empty state); its view is filled at the next
    /// [`ServerReplicator::update`].
    pub fn add_client(&mut self, client: ClientId) -> Result<(), ReplicationError> {
        if self.by_id.contains_key(&client) {
            return Err(ReplicationError::DuplicateClient(client));
        }
        if self.by_id.len() >= self.config.max_clients {
            return Err(ReplicationError::TooManyClients(self.config.max_clients));
        }
        let idx = match self.free_idx.pop() {
            Some(i) => i,
            None => {
                self.clients.push(None);
                (self.clients.len() - 1) as u16
            }
        };
        self.clients[usize::from(idx)] = Some(ClientState {
            id: client,
            viewer: None,
            radius: self.config.interest_radius,
            rooms: u64::MAX,
            filter: None,
            view: Vec::new(),
            view_len: 0,
            pending: Vec::new(),
            in_flight: VecDeque::new(),
            last_sent: None,
            last_ack: None,
            events_acked: self.events_seen,
            pinned: Vec::new(),
            budget: None,
            requery: true,
            queried_at: None,
            populated: false,
        });
        self.by_id.insert(client, idx);
        Ok(())
    }

    /// Forgets `client` and everything kept for it. Returns whether it was known.
    pub fn remove_client(&mut self, client: ClientId) -> bool {
        let Some(idx) = self.by_id.remove(&client) else {
            return false;
        };
        if let Some(c) = self.clients[usize::from(idx)].take() {
            for &s in &c.view {
                if let Some(list) = self.viewers.get_mut(s as usize) {
                    if let Ok(k) = list.binary_search_by_key(&idx, |r| r.client) {
                        if list[k].flags & DEAD == 0 {
                            list[k].flags |= DEAD;
                            self.unref.push(s);
                            self.dirty_slots.push(s);
                        }
                    }
                }
            }
        }
        self.free_idx.push(idx);
        // Give back trailing slots of departed clients.
        while self.clients.last().is_some_and(Option::is_none) {
            self.clients.pop();
            let top = self.clients.len() as u16;
            self.free_idx.retain(|&i| i != top);
        }
        if self.clients.len() < self.clients.capacity() / 4 {
            self.clients.shrink_to(self.clients.len() * 2);
        }
        true
    }

    /// Registered clients, in no particular order.
    pub fn clients(&self) -> impl Iterator<Item = ClientId> + '_ {
        self.by_id.keys().copied()
    }

    /// The newest packet tick `client` acknowledged.
    #[must_use]
    pub fn acked(&self, client: ClientId) -> Option<Tick> {
        self.client(client)?.last_ack
    }

    /// Entities in `client`'s view (including those whose despawn is still on its way).
    #[must_use]
    pub fn view_len(&self, client: ClientId) -> Option<usize> {
        Some(self.client(client)?.view_len)
    }

    /// Whether `id` is in `client`'s view (it holds it or will receive it).
    #[must_use]
    pub fn in_view(&self, store: &Store, client: ClientId, id: EntityId) -> bool {
        let (Some(&idx), Some(s)) = (self.by_id.get(&client), store.live_slot(id)) else {
            return false;
        };
        self.rec_of(s, idx)
            .is_some_and(|r| r.flags & (LEAVING | DEAD | DESPAWN_SENT) == 0)
    }

    /// Sets a per-client packet byte budget (`None`: [`ServerConfig::max_packet_bytes`]), e.g.
    /// to follow a bandwidth estimate. Budgets below [`MIN_PACKET_BYTES`](super::MIN_PACKET_BYTES)
    /// count as that.
    pub fn set_packet_budget(
        &mut self,
        client: ClientId,
        bytes: Option<usize>,
    ) -> Result<(), ReplicationError> {
        self.client_mut(client)?.budget = bytes;
        Ok(())
    }

    /// Sets where `client` looks from (its player's position on the interest plane) and its
    /// interest radius (`None`: [`ServerConfig::interest_radius`]; 0: everything).
    pub fn set_viewer(
        &mut self,
        client: ClientId,
        at: Option<[f32; 2]>,
        radius: Option<f32>,
    ) -> Result<(), ReplicationError> {
        let default = self.config.interest_radius;
        let c = self.client_mut(client)?;
        let viewer = at.filter(|p| p[0].is_finite() && p[1].is_finite());
        let r = radius.unwrap_or(default);
        let radius = if r.is_finite() { r.max(0.0) } else { 0.0 };
        // A new radius, or gaining or losing the viewer, changes what a still viewer sees.
        if radius != c.radius || viewer.is_some() != c.viewer.is_some() {
            c.requery = true;
        }
        c.viewer = viewer;
        c.radius = radius;
        Ok(())
    }

    /// Sets the rooms (or teams) `client` sees: bit `i` is room `i`. Entities in no room are seen
    /// by everyone; others by clients sharing one of their rooms. Default: every room.
    pub fn set_rooms(&mut self, client: ClientId, rooms: u64) -> Result<(), ReplicationError> {
        let c = self.client_mut(client)?;
        c.rooms = rooms;
        c.requery = true;
        Ok(())
    }

    /// Sets a custom filter: `client` sees only entities for which it returns true (on top of
    /// distance and rooms). Entities it owns are always seen.
    pub fn set_filter(
        &mut self,
        client: ClientId,
        filter: Option<Box<dyn Fn(EntityId) -> bool + Send + Sync>>,
    ) -> Result<(), ReplicationError> {
        let c = self.client_mut(client)?;
        c.filter = filter;
        c.requery = true;
        Ok(())
    }

    /// Sets how much a change of component `cid` raises its entity's priority (default 1): a
    /// score at 0.1 goes out about a tenth as often as a position when both wait.
    pub fn set_component_weight(&mut self, cid: ComponentId, weight: f32) {
        let i = usize::from(cid.0);
        if self.component_weights.len() <= i {
            self.component_weights.resize(i + 1, 1.0);
        }
        let w = if weight.is_finite() { weight } else { 1.0 };
        self.component_weights[i] = w.clamp(0.01, 100.0);
    }

    /// The lowest event id every client has acknowledged: events up to it can be trimmed with
    /// [`EventServer::trim_through`].
    #[must_use]
    pub fn min_acked_event(&self) -> Option<EventId> {
        self.clients
            .iter()
            .flatten()
            .map(|c| c.events_acked)
            .min()
            .filter(|&m| m > 0)
            .map(EventId)
    }

    /// Bytes this replicator holds for its clients (records, views, packets in flight), from
    /// capacities: the per-client cost of replication (the shared store is
    /// [`Store::memory_bytes`]).
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        let rec = std::mem::size_of::<Rec>();
        let mut n = self.viewers.capacity() * std::mem::size_of::<Vec<Rec>>()
            + self
                .viewers
                .iter()
                .map(|v| v.capacity() * rec)
                .sum::<usize>()
            + self.clients.capacity() * std::mem::size_of::<Option<ClientState>>()
            + (self.dirty_slots.capacity() + self.unref.capacity()) * 4
            + self.bodies.memory_bytes()
            + self.scratch.keep.capacity() * 8
            + self.scratch.tail_values.capacity() * std::mem::size_of::<crate::delta::TailValue>();
        for c in self.clients.iter().flatten() {
            n += c.view.capacity() * 4 + c.pending.capacity() * 8;
            n += c.pinned.capacity() * 16;
            n += c.in_flight.capacity() * std::mem::size_of::<SentPacket>();
            n += c
                .in_flight
                .iter()
                .map(|p| p.entries.capacity() * 8)
                .sum::<usize>();
        }
        n
    }

    fn client(&self, id: ClientId) -> Option<&ClientState> {
        let &idx = self.by_id.get(&id)?;
        self.clients[usize::from(idx)].as_ref()
    }

    fn client_mut(&mut self, id: ClientId) -> Result<&mut ClientState, ReplicationError> {
        let &idx = self
            .by_id
            .get(&id)
            .ok_or(ReplicationError::UnknownClient(id))?;
        self.clients[usize::from(idx)]
            .as_mut()
            .ok_or(ReplicationError::UnknownClient(id))
    }

    fn rec_of(&self, slot: u32, idx: u16) -> Option<&Rec> {
        let list = self.viewers.get(slot as usize)?;
        let k = list.binary_search_by_key(&idx, |r| r.client).ok()?;
        Some(&list[k]).filter(|r| r.flags & DEAD == 0)
    }

    /// Takes in the store's changes since the last call, once per tick and before encoding:
    /// moves entities in and out of views (distance with hysteresis, rooms, filters, events'
    /// entities) and marks what each client must be sent. `events` (if the game uses them)
    /// keeps entities that unacknowledged events name in view.
    pub fn update(&mut self, store: &mut Store, events: Option<&EventServer>) {
        self.tick_count = self.tick_count.wrapping_add(1);
        // References released by acks or departures.
        for s in std::mem::take(&mut self.unref) {
            if let Some(sl) = store.slots.get_mut(s as usize) {
                sl.refs = sl.refs.saturating_sub(1);
            }
            store.release_if_unused(s);
        }
        let mut dirty = std::mem::take(&mut self.dirty_slots);
        dirty.sort_unstable();
        dirty.dedup();
        for &s in &dirty {
            if let Some(list) = self.viewers.get_mut(s as usize) {
                list.retain(|r| r.flags & DEAD == 0);
                if list.is_empty() {
                    *list = Vec::new();
                } else if list.len() < list.capacity() / 4 {
                    list.shrink_to(list.len() * 2);
                }
            }
        }
        dirty.clear();
        if dirty.capacity() > 4096 {
            dirty.shrink_to(1024);
        }
        self.dirty_slots = dirty;
        if self.unref.capacity() > 4096 {
            self.unref.shrink_to(1024);
        }
        if self.viewers.len() < store.slots.len() {
            self.viewers.resize_with(store.slots.len(), Vec::new);
        }
        if let Some(ev) = events {
            self.events_seen = ev.next_id().0 - 1;
        }

        // Changes since the last update, once for all clients.
        let (entries, covered) = store.log_after(self.log_seen);
        let mut changed: Vec<u32> = Vec::new();
        let mut moved: Vec<u32> = Vec::new();
        let mut touched: Vec<u32> = Vec::new();
        let mut rescan = !covered;
        for e in entries {
            changed.extend_from_slice(&e.changed);
            moved.extend_from_slice(&e.moved);
            touched.extend_from_slice(&e.touched);
        }
        if self.log_seen.is_none() {
            rescan = true;
        }
        self.log_seen = store.log.back().map(|e| e.tick).or(self.log_seen);
        if rescan {
            changed = (0..store.slots.len() as u32).collect();
            moved.clear();
            touched = changed.clone();
        } else {
            changed.sort_unstable();
            changed.dedup();
            touched.sort_unstable();
            touched.dedup();
            // An entity both moved and touched is handled as touched.
            moved.sort_unstable();
            moved.dedup();
            moved.retain(|s| touched.binary_search(s).is_err());
        }
        let weights = std::mem::take(&mut self.component_weights);
        for &s in &changed {
            let sl = &store.slots[s as usize];
            let list = &mut self.viewers[s as usize];
            for (k, r) in list.iter_mut().enumerate() {
                if r.flags & DEAD != 0 {
                    continue;
                }
                if !sl.alive && r.flags & LEAVING == 0 {
                    r.flags |= LEAVING;
                }
                if r.flags & PENDING == 0 && needs_send(r, sl) {
                    r.flags |= PENDING;
                    if let Some(c) = self.clients[usize::from(r.client)].as_mut() {
                        c.pending.push((s, k as u32));
                    }
                }
            }
        }
        self.component_weights = weights;
        // New entities, owner, room and position changes: who should see them now. Only clients
        // that hold the entity (may it leave?) and clients near it or without a radius (may it
        // enter?) are asked; clients are bucketed on a coarse grid once per update for that.
        let margin = self.config.interest_margin;
        let mut near = std::mem::take(&mut self.near);
        near.rebuild(&self.clients, margin);
        let mut asked: Vec<u16> = Vec::new();
        // A moved entity concerns only clients with a radius near it (and those holding it);
        // spawns, owner, room and global changes concern everyone.
        let work = moved
            .iter()
            .map(|&s| (s, false))
            .chain(touched.iter().map(|&s| (s, true)));
        for (s, is_touched) in work {
            let sl = &store.slots[s as usize];
            if !sl.alive {
                continue;
            }
            asked.clear();
            asked.extend(self.viewers[s as usize].iter().map(|r| r.client));
            let placed = sl.pos.filter(|_| !sl.global);
            match placed {
                Some(p) => near.around(p, &mut asked),
                None => asked.extend(near.everyone.iter().copied()),
            }
            if is_touched {
                asked.extend(near.unbounded.iter().copied());
            }
            // The owner always sees it.
            if let Owner::Client(o) = sl.current().owner {
                if let Some(&i) = self.by_id.get(&o) {
                    asked.push(i);
                }
            }
            asked.sort_unstable();
            asked.dedup();
            // `asked` and the slot's records are both in client order: one merge, no searches.
            let mut k = 0;
            for &ci in &asked {
                let sl = &store.slots[s as usize];
                let Some(c) = self.clients[usize::from(ci)].as_ref() else {
                    continue;
                };
                if !c.populated {
                    continue;
                }
                let list = &self.viewers[s as usize];
                while k < list.len() && list[k].client < ci {
                    k += 1;
                }
                let (enter, keep) = wants_both(c, sl, margin);
                if k >= list.len() || list[k].client != ci {
                    if enter {
                        self.add_rec(store, ci, s);
                    }
                    continue;
                }
                let r = &mut self.viewers[s as usize][k];
                if r.flags & DEAD != 0 {
                    continue;
                }
                if !keep && r.flags & (LEAVING | PINNED) == 0 {
                    r.flags |= LEAVING;
                    mark_pending(r, sl, &mut self.clients, s, k);
                } else if enter && r.flags & LEAVING != 0 {
                    r.flags &= !LEAVING;
                    if r.flags & DESPAWN_SENT == 0 {
                        mark_pending(r, sl, &mut self.clients, s, k);
                    }
                }
            }
        }
        self.near = near;
        // Full requeries: new clients, changed rooms/filters, and a staggered periodic pass for
        // clients with a radius (their own movement brings static entities in and out).
        let interval = self.config.interest_interval.max(1);
        for ci in 0..self.clients.len() {
            let due = match self.clients[ci].as_ref() {
                None => false,
                Some(c) => {
                    let moved_far = match (c.viewer, c.queried_at) {
                        (Some(v), Some(q)) => {
                            let d2 = (v[0] - q[0]).powi(2) + (v[1] - q[1]).powi(2);
                            d2 > (self.config.interest_margin / 4.0).powi(2)
                        }
                        (Some(_), None) => true,
                        _ => false,
                    };
                    !c.populated
                        || c.requery
                        || (c.radius > 0.0
                            && moved_far
                            && (self.tick_count.wrapping_add(ci as u32)) % interval == 0)
                }
            };
            if due {
                self.requery(store, ci as u16);
            }
        }
        // Entities named by events a client has not acknowledged stay in (or come into) view.
        if let Some(ev) = events {
            self.pin_event_entities(store, ev);
        }
    }

    fn add_rec(&mut self, store: &mut Store, idx: u16, s: u32) {
        let list = &mut self.viewers[s as usize];
        let pos = match list.binary_search_by_key(&idx, |r| r.client) {
            Ok(k) => {
                if list[k].flags & DEAD == 0 {
                    return;
                }
                // Revive a record marked dead in this tick: its reference is still counted.
                list[k] = Rec::fresh(idx);
                if let Some(i) = self.unref.iter().position(|&x| x == s) {
                    self.unref.swap_remove(i);
                } else {
                    store.slots[s as usize].refs += 1;
                }
                k
            }
            Err(k) => {
                list.insert(k, Rec::fresh(idx));
                store.slots[s as usize].refs += 1;
                k
            }
        };
        let r = &mut list[pos];
        // Entering gets a head start so new entities appear quickly.
        r.prio = self.config.enter_boost;
        let sl = &store.slots[s as usize];
        mark_pending(r, sl, &mut self.clients, s, pos);
        if let Some(c) = self.clients[usize::from(idx)].as_mut() {
            c.view.push(s);
            c.view_len += 1;
        }
    }

    fn requery(&mut self, store: &mut Store, idx: u16) {
        let Some(mut c) = self.clients[usize::from(idx)].take() else {
            return;
        };
        let margin = self.config.interest_margin;
        // Leaving: entities in view that are no longer wanted.
        let mut view = std::mem::take(&mut c.view);
        view.sort_unstable();
        view.dedup();
        view.retain(|&s| {
            let Some(list) = self.viewers.get_mut(s as usize) else {
                return false;
            };
            let Ok(k) = list.binary_search_by_key(&idx, |r| r.client) else {
                return false;
            };
            let r = &mut list[k];
            if r.flags & DEAD != 0 {
                return false;
            }
            let sl = &store.slots[s as usize];
            if r.flags & (LEAVING | PINNED) == 0 && !wants(&c, sl, margin) {
                r.flags |= LEAVING;
                if r.flags & PENDING == 0 && needs_send(r, sl) {
                    r.flags |= PENDING;
                    c.pending.push((s, k as u32));
                }
            }
            true
        });
        c.view_len = view.len();
        c.view = view;
        // Entering.
        let mut enter = Vec::new();
        let spatial = c.radius > 0.0 && c.viewer.is_some();
        if spatial {
            let p = c.viewer.unwrap_or([0.0, 0.0]);
            let r = c.radius;
            let lo = store.cell_of([p[0] - r, p[1] - r]);
            let hi = store.cell_of([p[0] + r, p[1] + r]);
            let cells =
                (i64::from(hi.0) - i64::from(lo.0) + 1) * (i64::from(hi.1) - i64::from(lo.1) + 1);
            if cells <= store.grid.len() as i64 * 2 {
                for x in lo.0..=hi.0 {
                    for y in lo.1..=hi.1 {
                        if let Some(v) = store.grid.get(&(x, y)) {
                            enter.extend_from_slice(v);
                        }
                    }
                }
            } else {
                for v in store.grid.values() {
                    enter.extend_from_slice(v);
                }
            }
            // Entities without a position and global ones are not on the grid.
            enter.extend_from_slice(&store.anywhere);
        } else {
            enter.extend((0..store.slots.len() as u32).filter(|&s| store.slots[s as usize].alive));
        }
        let first = !c.populated;
        c.populated = true;
        c.requery = false;
        c.queried_at = c.viewer;
        self.clients[usize::from(idx)] = Some(c);
        for s in enter {
            let Some(c) = self.clients[usize::from(idx)].as_ref() else {
                return;
            };
            let sl = &store.slots[s as usize];
            if !sl.alive {
                continue;
            }
            let has = self.viewers[s as usize]
                .binary_search_by_key(&idx, |r| r.client)
                .is_ok_and(|k| self.viewers[s as usize][k].flags & DEAD == 0);
            if !has && wants(c, sl, 0.0) {
                self.add_rec(store, idx, s);
            }
        }
        // Owned entities anywhere (later ownership changes come through the store's log).
        if spatial && first {
            let me = self.clients[usize::from(idx)].as_ref().map(|c| c.id);
            let owned: Vec<u32> = store
                .slots
                .iter()
                .enumerate()
                .filter(|(_, sl)| sl.alive && Some(sl.current().owner) == me.map(Owner::Client))
                .map(|(s, _)| s as u32)
                .collect();
            for s in owned {
                let has = self.viewers[s as usize]
                    .binary_search_by_key(&idx, |r| r.client)
                    .is_ok_and(|k| self.viewers[s as usize][k].flags & DEAD == 0);
                if !has {
                    self.add_rec(store, idx, s);
                }
            }
        }
    }

    fn pin_event_entities(&mut self, store: &mut Store, ev: &EventServer) {
        let horizon = ev.config().max_per_packet * 4;
        for ci in 0..self.clients.len() {
            let Some(c) = self.clients[ci].as_mut() else {
                continue;
            };
            let acked = c.events_acked;
            // Unpin what acknowledged events named.
            let mut unpin = Vec::new();
            c.pinned.retain(|&(s, id)| {
                if id <= acked {
                    unpin.push(s);
                    false
                } else {
                    true
                }
            });
            let Ok(iter) = ev.after(EventId(acked)) else {
                continue;
            };
            let mut want: Vec<(u32, u64)> = Vec::new();
            for e in iter.take(horizon) {
                for &id in &e.entities {
                    if let Some(s) = store.live_slot(id) {
                        want.push((s, e.id.0));
                    }
                }
            }
            // Unpinned entities are judged by interest again, right away (only these).
            let margin = self.config.interest_margin;
            for s in unpin {
                let sl = &store.slots[s as usize];
                let Some(c) = self.clients[ci].as_ref() else {
                    break;
                };
                // Still named by a later event: stays pinned.
                if c.pinned.iter().any(|&(p, _)| p == s) {
                    continue;
                }
                let keep = wants(c, sl, margin);
                if let Some((k, r)) = live_rec_mut(&mut self.viewers, s, ci as u16) {
                    r.flags &= !PINNED;
                    if !keep && r.flags & LEAVING == 0 {
                        r.flags |= LEAVING;
                        mark_pending(r, sl, &mut self.clients, s, k);
                    }
                }
            }
            for (s, id) in want {
                let has = self.viewers[s as usize]
                    .binary_search_by_key(&(ci as u16), |r| r.client)
                    .ok()
                    .filter(|&k| self.viewers[s as usize][k].flags & DEAD == 0);
                if has.is_none() {
                    self.add_rec(store, ci as u16, s);
                }
                let list = &mut self.viewers[s as usize];
                if let Ok(k) = list.binary_search_by_key(&(ci as u16), |r| r.client) {
                    let r = &mut list[k];
                    if r.flags & PINNED == 0 {
                        r.flags |= PINNED;
                        if r.flags & LEAVING != 0 && store.slots[s as usize].alive {
                            r.flags &= !LEAVING;
                            if r.flags & DESPAWN_SENT == 0 {
                                let sl = &store.slots[s as usize];
                                mark_pending(r, sl, &mut self.clients, s, k);
                            }
                        }
                        if let Some(c) = self.clients[ci].as_mut() {
                            c.pinned.push((s, id));
                        }
                    }
                }
            }
        }
    }

    /// Encodes the store's current tick for `client`, appending the packet to `out`. Ticks must
    /// increase per client. Carries no events (see
    /// [`ServerReplicator::encode_for_with_events`]).
    pub fn encode_for(
        &mut self,
        store: &Store,
        client: ClientId,
        out: &mut Vec<u8>,
    ) -> Result<EncodeStats, ReplicationError> {
        self.encode(store, client, None, out)
    }

    /// Like [`ServerReplicator::encode_for`], and also carries the resolved events `client` has
    /// not acknowledged, with the state they need: entities an event names are sent in the same
    /// packet if the client is not known to hold them, and the despawn of an entity an event
    /// names travels in the packet that carries the event. An event naming an entity the
    /// client never held and that is gone arrives without it (the client's world lacks it).
    pub fn encode_for_with_events(
        &mut self,
        store: &Store,
        client: ClientId,
        events: &EventServer,
        out: &mut Vec<u8>,
    ) -> Result<EncodeStats, ReplicationError> {
        self.encode(store, client, Some(events), out)
    }

    #[allow(clippy::too_many_lines)]
    fn encode(
        &mut self,
        store: &Store,
        client: ClientId,
        events: Option<&EventServer>,
        out: &mut Vec<u8>,
    ) -> Result<EncodeStats, ReplicationError> {
        let &idx = self
            .by_id
            .get(&client)
            .ok_or(ReplicationError::UnknownClient(client))?;
        let tick = store.tick();
        let registry = store.registry();
        let history = store.config().history_ticks;
        let Some(c) = self.clients[usize::from(idx)].as_mut() else {
            return Err(ReplicationError::UnknownClient(client));
        };
        if c.last_sent.is_some_and(|l| !tick.is_after(l)) {
            return Err(ReplicationError::StaleTick(tick));
        }
        // The header alone takes 8 bytes: smaller budgets are raised to the minimum.
        let budget = c
            .budget
            .unwrap_or(self.config.max_packet_bytes)
            .max(super::MIN_PACKET_BYTES);
        let start_len = out.len();
        let sc = &mut self.scratch;

        // Events the client lacks, in order; at most half the packet.
        let have = c.events_acked;
        let mut pending_events: Vec<&GameEvent> = Vec::new();
        if let Some(ev) = events {
            let iter = ev
                .after(EventId(have))
                .map_err(|_| ReplicationError::EventsTrimmed(client))?;
            pending_events.extend(iter.take(ev.config().max_per_packet * 4));
        }
        let max_events = events.map_or(0, |e| e.config().max_per_packet);
        let mut chosen_events = 0;
        let mut section_bytes = 0;
        for e in pending_events.iter().take(max_events) {
            sc.section.clear();
            encode_events(&[e], &mut sc.section);
            section_bytes += sc.section.len();
            // Events take at most half the packet, except that the oldest one always goes if
            // it fits at all (or the stream would stall behind it).
            let limit = if chosen_events == 0 {
                budget.saturating_sub(16)
            } else {
                budget / 2
            };
            if section_bytes > limit {
                break;
            }
            chosen_events += 1;
        }
        if chosen_events == 0 && !pending_events.is_empty() && max_events > 0 {
            sc.section.clear();
            encode_events(&pending_events[..1], &mut sc.section);
            return Err(ReplicationError::EventTooLarge {
                client,
                bytes: sc.section.len(),
                budget,
            });
        }
        // Entities the chosen events need; despawns of entities that later events name wait.
        sc.need.clear();
        sc.hold.clear();
        for (i, e) in pending_events.iter().enumerate() {
            for &id in &e.entities {
                let Some(&s) = store_index(store, id) else {
                    continue;
                };
                if i < chosen_events {
                    sc.need.push(s);
                } else {
                    sc.hold.push(s);
                }
            }
        }
        sc.need.sort_unstable();
        sc.hold.sort_unstable();

        // Entities a chosen event names that the client is not known to hold go in this packet
        // even if a copy is in flight (it may be lost, and the event must find them).
        for &s in &sc.need {
            if let Some(list) = self.viewers.get_mut(s as usize) {
                if let Ok(k) = list.binary_search_by_key(&idx, |r| r.client) {
                    let r = &mut list[k];
                    let gone = r.flags & LEAVING != 0 || !store.slots[s as usize].alive;
                    let missing = r.flags & DESPAWN_SENT == 0 && r.known().is_none() && !gone;
                    // A despawn in flight may be lost: it goes again with the event.
                    let despawn_again = r.flags & DESPAWN_SENT != 0 && gone;
                    if r.flags & (PENDING | DEAD) == 0 && (missing || despawn_again) {
                        r.flags |= PENDING;
                        c.pending.push((s, k as u32));
                    }
                }
            }
        }
        // Candidates: every pending record, its body coded once per tick for all clients.
        sc.cands.clear();
        sc.pre.clear();
        let bodies = &mut self.bodies;
        bodies.reset(tick, store.revision());
        // With one client nothing is shared: skip the lookups.
        let shared = self.by_id.len() > 1;
        let margin_r = c.radius + self.config.interest_margin;
        let default_base = c
            .last_ack
            .filter(|&a| tick.diff(a) > 0 && tick.diff(a) <= i32::from(u16::MAX));
        {
            // The records still pending, into last encode's spare buffer.
            let mut keep = std::mem::take(&mut sc.keep);
            keep.clear();
            let mut owned_first = self.config.owned_first;
            for &(s, hint) in &c.pending {
                let Some((k, r)) = rec_at_hint(&mut self.viewers, s, hint, idx) else {
                    continue;
                };
                let sl = &store.slots[s as usize];
                let needed = sc.need.binary_search(&s).is_ok();
                let gone = r.flags & LEAVING != 0 || !sl.alive;
                let force = needed
                    && if gone {
                        r.flags & DESPAWN_SENT != 0
                    } else {
                        r.known().is_none() && r.flags & DESPAWN_SENT == 0
                    };
                if !needs_send(r, sl) && !force {
                    r.flags &= !PENDING;
                    // Left before it was ever sent: forget it.
                    if r.flags & LEAVING != 0
                        && r.known().is_none()
                        && r.sent().is_none()
                        && r.flags & HELD == 0
                    {
                        r.flags |= DEAD;
                        self.unref.push(s);
                        self.dirty_slots.push(s);
                        c.view_len = c.view_len.saturating_sub(1);
                    }
                    continue;
                }
                keep.push((s, k as u32));
                let leaving = r.flags & LEAVING != 0 || !sl.alive;
                let required = sc.need.binary_search(&s).is_ok();
                if leaving && sc.hold.binary_search(&s).is_ok() && !required {
                    // Its despawn goes with the event that names it.
                    continue;
                }
                // Priority grows with the entity's weight, the largest weight among the
                // components that changed (all of them for a full record), and nearness.
                let mut g = sl.weight;
                if !self.component_weights.is_empty() && !leaving {
                    let cur = sl.current();
                    let m = base_of(store, s, r, tick, history, default_base)
                        .map_or(cur.mask, |b| changed_components(registry, b, cur.view()));
                    let mut wmax: f32 = 0.0;
                    for i in registry.mask_iter(m) {
                        wmax = wmax.max(self.component_weights.get(i).copied().unwrap_or(1.0));
                    }
                    if m != 0 {
                        g *= wmax;
                    }
                }
                if let (Some(v), Some(p)) = (c.viewer, sl.pos) {
                    if margin_r > 0.0 {
                        let d = ((v[0] - p[0]).powi(2) + (v[1] - p[1]).powi(2)).sqrt();
                        g *= 1.0 / (1.0 + d / margin_r);
                    }
                }
                r.prio += g;
                // A few of the client's own entities go first (`owned_first`): its prediction
                // reconciles against them, and a stale one would read as a misprediction.
                let own = owned_first > 0 && sl.current().owner == Owner::Client(c.id);
                if own {
                    owned_first -= 1;
                }
                sc.pre.push(Pre {
                    slot: s,
                    pos: k as u32,
                    required,
                    leaving,
                    prio: if own { f32::INFINITY } else { r.prio },
                });
            }
            sc.keep = std::mem::replace(&mut c.pending, keep);
        }
        // A long backlog (far more waiting than a packet holds) is narrowed by priority before
        // any record is coded: only about three packets' worth get their bodies.
        let est = f64::from(self.record_bits.max(8.0));
        let want = ((3 * budget * 8) as f64 / est) as usize;
        if sc.pre.len() > want.max(32) {
            let m = want.max(32);
            sc.pre.select_nth_unstable_by(m, |x, y| {
                y.required.cmp(&x.required).then(y.prio.total_cmp(&x.prio))
            });
            sc.pre.truncate(m);
            sc.pre.sort_unstable_by_key(|p| p.slot);
        }
        for p in &sc.pre {
            let (s, k) = (p.slot, p.pos as usize);
            let sl = &store.slots[s as usize];
            let r = self.viewers[s as usize][k];
            let kind;
            let body;
            let mut staleness = 0;
            if p.leaving {
                body = Body {
                    start: 0,
                    len: 2,
                    tail: (0, 0),
                    tail_bits: 0,
                };
                kind = CandKind::Despawn;
            } else {
                let cur = sl.current();
                // A body another client needed this tick is reused without looking up its
                // baseline again.
                let update = base_tick(&r, tick, history, default_base).and_then(|bt| {
                    let key = (s, bt.0, false);
                    if let Some(b) = bodies.cached(key, shared) {
                        return Some(b);
                    }
                    let b = store.version_at(s, bt)?;
                    Some(bodies.get(key, shared, |w, tail| {
                        write_update(w, tail, registry, b, cur.view());
                    }))
                });
                match update {
                    Some(b) => {
                        body = b;
                        kind = CandKind::Update;
                        // How long the oldest change it carries waited.
                        let after = Tick(r.sent().or(r.known()).unwrap_or(0));
                        if let Some(first) = sl.first_change_after(after) {
                            staleness = tick.diff(first).max(0) as u32;
                        }
                    }
                    None => {
                        body = bodies.get((s, 0, true), shared, |w, _| {
                            write_full(w, registry, cur);
                        });
                        kind = CandKind::Full;
                    }
                }
            }
            sc.cands.push(Cand {
                slot: s,
                pos: k as u32,
                id: sl.id,
                kind,
                required: p.required,
                prio: p.prio,
                start: body.start,
                len: body.len,
                tail: body.tail,
                tail_bits: body.tail_bits,
                staleness,
            });
        }
        // Required entities missing from the candidates (the client holds them already or they
        // are in flight) need nothing; required ones the client is not known to hold and that
        // are not pending (in flight) are sent again so the event finds them.
        let entropy = registry.uses_entropy();
        let header_bits = 32 + 1 + 16;
        let framing = if entropy { TAIL_FRAMING_BITS } else { 0 };
        let events_bytes = {
            sc.section.clear();
            if chosen_events > 0 {
                encode_events(&pending_events[..chosen_events], &mut sc.section);
            }
            let mut v = Vec::new();
            put_varint(&mut v, sc.section.len() as u64);
            v.len() + sc.section.len()
        };
        let budget_bits =
            (budget.saturating_sub(events_bytes) * 8).saturating_sub(header_bits + 1 + framing + 7);
        // Choose: everything if it fits; otherwise the highest priority first, sized with a
        // typical gap code, then checked exactly in id order (dropping the lowest until it fits).
        let cands = &sc.cands;
        let exact = |chosen: &[usize]| exact_bits(cands, chosen);
        sc.chosen.clear();
        sc.chosen.extend(0..cands.len());
        let mut oversized = 0;
        let all_fit =
            sc.chosen.is_sorted_by_key(|&k| cands[k].id) && exact(&sc.chosen) <= budget_bits;
        if !all_fit {
            let mut order: Vec<usize> = (0..cands.len()).collect();
            order.sort_unstable_by(|&a, &b| {
                let (x, y) = (&cands[a], &cands[b]);
                y.required
                    .cmp(&x.required)
                    .then(y.prio.total_cmp(&x.prio))
                    .then(x.id.cmp(&y.id))
            });
            const GAP_TYPICAL: usize = 6;
            let mut used = 0;
            let mut picked: Vec<usize> = Vec::new();
            for k in order {
                let cd = &cands[k];
                let b = 1 + GAP_TYPICAL + cd.len + cd.tail_bits;
                if 1 + gap_bits(cd.id.0.wrapping_add(1)) + cd.len + cd.tail_bits > budget_bits {
                    oversized += 1;
                    continue;
                }
                if used + b <= budget_bits {
                    used += b;
                    picked.push(k);
                }
            }
            loop {
                sc.chosen.clear();
                sc.chosen.extend_from_slice(&picked);
                sc.chosen.sort_unstable_by_key(|&k| cands[k].id);
                if exact(&sc.chosen) <= budget_bits || picked.is_empty() {
                    break;
                }
                // Over by the gaps: drop the lowest priority and measure again.
                picked.pop();
            }
        }
        // Events whose entities did not fit wait (except those that must be repeated).
        let sent_upto = c
            .in_flight
            .iter()
            .map(|p| p.events_upto)
            .max()
            .unwrap_or(have);
        let must = pending_events
            .iter()
            .take_while(|e| e.id.0 <= sent_upto)
            .count();
        if chosen_events > must {
            let fitted: Vec<u32> = sc
                .chosen
                .iter()
                .map(|&k| sc.cands[k].slot)
                .collect::<Vec<_>>();
            let mut fitted = fitted;
            fitted.sort_unstable();
            let first_bad = pending_events[..chosen_events].iter().position(|e| {
                e.entities.iter().any(|&id| {
                    store_index(store, id).is_some_and(|&s| {
                        let in_pending = sc.cands.iter().any(|cd| cd.slot == s);
                        in_pending && fitted.binary_search(&s).is_err()
                    })
                })
            });
            if let Some(b) = first_bad {
                chosen_events = b.max(must);
                // Despawns of entities named by dropped events wait too.
                let later: Vec<u32> = pending_events[chosen_events..]
                    .iter()
                    .flat_map(|e| e.entities.iter())
                    .filter_map(|&id| store_index(store, id).copied())
                    .collect();
                sc.chosen.retain(|&k| {
                    let cd = &sc.cands[k];
                    !(cd.kind == CandKind::Despawn && later.contains(&cd.slot))
                });
            }
        }
        if !sc.chosen.is_sorted_by_key(|&k| sc.cands[k].id) {
            sc.chosen.sort_unstable_by_key(|&k| sc.cands[k].id);
        }
        // Dropping held despawns can only merge gaps; if that costs more than it saved, drop
        // the lowest priority records until it fits again.
        while !exact_fits(&sc.cands, &sc.chosen, budget_bits) {
            let Some(pos) = lowest_priority(&sc.cands, &sc.chosen) else {
                break;
            };
            sc.chosen.remove(pos);
        }

        // Assemble: events section, header, records in id order, tail. The range-coded tail's
        // size is only estimated; if it comes out over budget, the lowest priority record
        // leaves and the packet is assembled again (bounded by the number of records).
        let mut tail_values = std::mem::take(&mut sc.tail_values);
        loop {
            out.truncate(start_len);
            sc.section.clear();
            if chosen_events > 0 {
                encode_events(&pending_events[..chosen_events], &mut sc.section);
            }
            put_varint(out, sc.section.len() as u64);
            out.extend_from_slice(&sc.section);
            sc.packet_bits.clear();
            tail_values.clear();
            {
                let mut w = BitWriter::new(if entropy {
                    &mut sc.packet_bits
                } else {
                    &mut *out
                });
                w.write(tick.0, 32);
                match default_base {
                    Some(d) => {
                        w.write_bool(true);
                        w.write(tick.0.wrapping_sub(d.0), 16);
                    }
                    None => w.write_bool(false),
                }
                let mut prev = u32::MAX;
                for &k in &sc.chosen {
                    let cd = sc.cands[k];
                    w.write_bool(true);
                    write_gap(&mut w, cd.id.0.wrapping_sub(prev));
                    prev = cd.id.0;
                    if cd.kind == CandKind::Despawn {
                        copy_bits(&mut w, &DESPAWN_BITS, 0, 2);
                    } else {
                        copy_bits(&mut w, &self.bodies.bits, cd.start, cd.len);
                        let (ts, tl) = cd.tail;
                        tail_values.extend_from_slice(&self.bodies.tail.values[ts..ts + tl]);
                    }
                }
                w.write_bool(false);
                w.finish();
            }
            if !entropy {
                break;
            }
            out.extend_from_slice(&sc.packet_bits);
            let mut models: Vec<_> = field_models(registry).collect();
            let mut enc = RangeEncoder::new(out);
            for v in &tail_values {
                enc.encode_int(&mut models[v.field], v.delta);
            }
            enc.finish();
            crate::bits::put_trailer(out, sc.packet_bits.len());
            if out.len() - start_len <= budget || sc.chosen.is_empty() {
                break;
            }
            if let Some(pos) = lowest_priority(&sc.cands, &sc.chosen) {
                if sc.cands[sc.chosen[pos]].required && chosen_events > must {
                    // Only records events need are left: send fewer events instead.
                    chosen_events = must;
                } else {
                    sc.chosen.remove(pos);
                }
            }
        }

        sc.tail_values = tail_values;

        // Commit: what was sent is in flight and loses its priority.
        let mut packet = SentPacket {
            tick,
            entries: Vec::with_capacity(sc.chosen.len()),
            events_upto: pending_events[..chosen_events]
                .last()
                .map_or(have, |e| e.id.0),
        };
        let mut max_staleness = 0;
        for &k in &sc.chosen {
            let cd = sc.cands[k];
            max_staleness = max_staleness.max(cd.staleness);
            let r = &mut self.viewers[cd.slot as usize][cd.pos as usize];
            r.prio = 0.0;
            r.flags &= !PENDING;
            r.set_sent(Some(tick.0));
            if cd.kind == CandKind::Despawn {
                r.flags |= DESPAWN_SENT | HELD;
                r.set_known(None);
                packet.entries.push((cd.slot, EntryKind::Despawn));
            } else {
                packet.entries.push((cd.slot, EntryKind::State));
            }
        }
        // Pending list: those still flagged (all of `c.pending` was, before the commit).
        let viewers = &self.viewers;
        let cands = &sc.cands;
        if sc.chosen.len() == cands.len() && cands.len() == c.pending.len() {
            c.pending.clear();
        } else {
            c.pending.retain(|&(s, k)| {
                viewers[s as usize]
                    .get(k as usize)
                    .is_some_and(|r| r.client == idx && r.flags & PENDING != 0)
            });
        }
        let records = sc.chosen.len();
        let pending_left = c.pending.len();
        c.last_sent = Some(tick);
        c.in_flight.push_back(packet);
        let bytes = out.len() - start_len;
        if c.in_flight.len() > self.config.max_in_flight {
            // Given up without an answer: the client may or may not hold what it carried.
            if let Some(old) = c.in_flight.pop_front() {
                self.resolve_packet(idx, old, false, true);
            }
        }
        if records > 0 {
            let b = (bytes * 8) as f32 / records as f32;
            self.record_bits = 0.9 * self.record_bits + 0.1 * b;
        }
        Ok(EncodeStats {
            records,
            pending: pending_left,
            oversized,
            bytes,
            events: chosen_events,
            max_staleness_ticks: max_staleness,
            over_budget: bytes > budget,
        })
    }

    /// Records an acknowledgement from `client`: every packet up to `ack.newest` is now known to
    /// have been applied (if `ack` says so) or lost for good (the client applies packets in
    /// tick order only), so what they carried is known or sent again.
    pub fn handle_ack(
        &mut self,
        client: ClientId,
        ack: AckFrame,
    ) -> Result<AckOutcome, ReplicationError> {
        let &idx = self
            .by_id
            .get(&client)
            .ok_or(ReplicationError::UnknownClient(client))?;
        let Some(c) = self.clients[usize::from(idx)].as_mut() else {
            return Err(ReplicationError::UnknownClient(client));
        };
        if c.last_ack.is_some_and(|a| !ack.newest.is_after(a)) {
            return Ok(AckOutcome::Stale);
        }
        if c.last_sent.is_none_or(|l| ack.newest.is_after(l))
            || !c.in_flight.iter().any(|p| p.tick == ack.newest)
        {
            return Ok(AckOutcome::Unknown);
        }
        c.last_ack = Some(ack.newest);
        let mut done = Vec::new();
        while c
            .in_flight
            .front()
            .is_some_and(|p| !p.tick.is_after(ack.newest))
        {
            if let Some(p) = c.in_flight.pop_front() {
                let applied = ack.covers(p.tick);
                // Beyond the 32 packets the frame describes, "not listed" says nothing.
                let uncertain = !applied && ack.newest.diff(p.tick) > 32;
                done.push((p, applied, uncertain));
            }
        }
        for (p, applied, uncertain) in done {
            self.resolve_packet(idx, p, applied, uncertain);
        }
        Ok(AckOutcome::Advanced)
    }

    fn resolve_packet(&mut self, idx: u16, p: SentPacket, applied: bool, uncertain: bool) {
        let Some(c) = self.clients[usize::from(idx)].as_mut() else {
            return;
        };
        if applied {
            c.events_acked = c.events_acked.max(p.events_upto);
        }
        for (s, kind) in p.entries {
            let Some((k, r)) = live_rec_mut(&mut self.viewers, s, idx) else {
                continue;
            };
            match kind {
                EntryKind::State => {
                    if r.flags & DESPAWN_SENT != 0 {
                        continue;
                    }
                    if applied {
                        r.set_known(Some(p.tick.0));
                        r.flags &= !(HELD | MAYBE_NEWER);
                    } else if uncertain {
                        r.flags |= MAYBE_NEWER | HELD;
                    }
                    if r.sent() == Some(p.tick.0) {
                        r.set_sent(None);
                        if !applied && r.flags & PENDING == 0 {
                            r.flags |= PENDING;
                            c.pending.push((s, k as u32));
                        }
                    }
                }
                EntryKind::Despawn => {
                    if r.sent() != Some(p.tick.0) || r.flags & DESPAWN_SENT == 0 {
                        continue;
                    }
                    if applied {
                        r.flags |= DEAD;
                        self.unref.push(s);
                        self.dirty_slots.push(s);
                        c.view_len = c.view_len.saturating_sub(1);
                        // Wanted again meanwhile: the next requery brings it back.
                        if r.flags & LEAVING == 0 {
                            c.requery = true;
                        }
                    } else {
                        r.flags &= !DESPAWN_SENT;
                        r.set_sent(None);
                        // The client may still hold it in any state: only a full record or a
                        // despawn is safe now.
                        r.set_known(None);
                        if r.flags & PENDING == 0 {
                            r.flags |= PENDING;
                            c.pending.push((s, k as u32));
                        }
                    }
                }
            }
        }
    }
}

/// The live (not removed) record of client `idx` for slot `s`, with its position in the
/// slot's list.
/// Like [`live_rec_mut`], trying position `hint` first.
fn rec_at_hint(viewers: &mut [Vec<Rec>], s: u32, hint: u32, idx: u16) -> Option<(usize, &mut Rec)> {
    let hit = viewers
        .get(s as usize)?
        .get(hint as usize)
        .is_some_and(|r| r.client == idx);
    if !hit {
        return live_rec_mut(viewers, s, idx);
    }
    let r = &mut viewers[s as usize][hint as usize];
    (r.flags & DEAD == 0).then_some((hint as usize, r))
}

fn live_rec_mut(viewers: &mut [Vec<Rec>], s: u32, idx: u16) -> Option<(usize, &mut Rec)> {
    let list = viewers.get_mut(s as usize)?;
    let k = list.binary_search_by_key(&idx, |r| r.client).ok()?;
    let r = &mut list[k];
    (r.flags & DEAD == 0).then_some((k, r))
}

/// The state to code an update of slot `s` against for record `r`: the client decodes against
/// the newest state it received at or before the packet's baseline (its newest acknowledged
/// packet), which is the state of `known` unless a packet with a newer one may have arrived
/// unseen, or the client may have pruned it (older than the history window while a newer one
/// is in flight). `None`: send the full state.
fn base_of<'s>(
    store: &'s Store,
    s: u32,
    r: &Rec,
    tick: Tick,
    history: u32,
    default_base: Option<Tick>,
) -> Option<VersionRef<'s>> {
    store.version_at(s, base_tick(r, tick, history, default_base)?)
}

/// The tick of the state [`base_of`] looks up, when the rules allow a delta at all.
fn base_tick(r: &Rec, tick: Tick, history: u32, default_base: Option<Tick>) -> Option<Tick> {
    r.known()
        .filter(|_| r.flags & MAYBE_NEWER == 0 && default_base.is_some())
        .map(Tick)
        .filter(|&k| tick.diff(k) <= history as i32 || r.sent().is_none())
}

/// Components whose value differs between `a` and `b` (or that only one of them has).
fn changed_components(registry: &crate::Registry, a: VersionRef<'_>, b: VersionRef<'_>) -> u64 {
    let mut out = (a.mask ^ b.mask) & (a.mask | b.mask);
    let (mut oa, mut ob) = (0, 0);
    for i in registry.mask_iter(a.mask | b.mask) {
        let n = registry.schema_at(i).words();
        let bit = 1u64 << i;
        match (a.mask & bit != 0, b.mask & bit != 0) {
            (true, true) => {
                if !crate::store::words_eq(&a.words[oa..oa + n], &b.words[ob..ob + n]) {
                    out |= bit;
                }
                oa += n;
                ob += n;
            }
            (true, false) => oa += n,
            (false, true) => ob += n,
            (false, false) => {}
        }
    }
    out
}

/// Bits of the gap code for `gap` (see `delta::write_gap`).
fn gap_bits(gap: u32) -> usize {
    match gap {
        1 => 1,
        2..=17 => 6,
        _ => 2 + 6 + (32 - gap.leading_zeros()).saturating_sub(1) as usize,
    }
}

/// Exact bits of the `chosen` records (in id order) with their gap codes.
fn exact_bits(cands: &[Cand], chosen: &[usize]) -> usize {
    let mut prev = u32::MAX;
    let mut bits = 0;
    for &k in chosen {
        let cd = &cands[k];
        bits += 1 + gap_bits(cd.id.0.wrapping_sub(prev)) + cd.len + cd.tail_bits;
        prev = cd.id.0;
    }
    bits
}

fn exact_fits(cands: &[Cand], chosen: &[usize], budget_bits: usize) -> bool {
    exact_bits(cands, chosen) <= budget_bits
}

/// Position in `chosen` of the record to drop first: not needed by an event, lowest priority.
fn lowest_priority(cands: &[Cand], chosen: &[usize]) -> Option<usize> {
    chosen
        .iter()
        .enumerate()
        .min_by(|a, b| {
            let (x, y) = (&cands[*a.1], &cands[*b.1]);
            x.required.cmp(&y.required).then(x.prio.total_cmp(&y.prio))
        })
        .map(|(i, _)| i)
}

fn store_index(store: &Store, id: EntityId) -> Option<&u32> {
    // Slots of dead entities still held by clients are found through the id index too.
    store.index_of(id)
}

/// Whether `r` (for the entity in `sl`) has something to send.
fn needs_send(r: &Rec, sl: &Slot) -> bool {
    if r.flags & (DESPAWN_SENT | DEAD) != 0 {
        return false;
    }
    if r.flags & LEAVING != 0 || !sl.alive {
        return r.known().is_some() || r.sent().is_some() || r.flags & HELD != 0;
    }
    if r.known().is_none() && r.sent().is_none() {
        return true;
    }
    let after = r.sent().or(r.known()).unwrap_or(0);
    sl.changed.is_after(Tick(after))
}

fn mark_pending(r: &mut Rec, sl: &Slot, clients: &mut [Option<ClientState>], s: u32, k: usize) {
    if r.flags & PENDING == 0 && needs_send(r, sl) {
        r.flags |= PENDING;
        if let Some(c) = clients[usize::from(r.client)].as_mut() {
            c.pending.push((s, k as u32));
        }
    }
}

/// Whether client `c` wants the entity of `sl` at its radius (to enter) and at radius + `margin`
/// (to stay), with the filters evaluated once.
fn wants_both(c: &ClientState, sl: &Slot, margin: f32) -> (bool, bool) {
    if !sl.alive {
        return (false, false);
    }
    if sl.current().owner == Owner::Client(c.id) {
        return (true, true);
    }
    if sl.rooms != 0 && sl.rooms & c.rooms == 0 {
        return (false, false);
    }
    if let Some(f) = &c.filter {
        if !f(sl.id) {
            return (false, false);
        }
    }
    if c.radius <= 0.0 || sl.global {
        return (true, true);
    }
    match (c.viewer, sl.pos) {
        (Some(v), Some(p)) => {
            let d2 = (v[0] - p[0]).powi(2) + (v[1] - p[1]).powi(2);
            let (r, rm) = (c.radius, c.radius + margin);
            (d2 <= r * r, d2 <= rm * rm)
        }
        _ => (true, true),
    }
}

/// Whether client `c` wants the (alive) entity of `sl`, with `slack` added to its radius.
fn wants(c: &ClientState, sl: &Slot, slack: f32) -> bool {
    wants_both(c, sl, slack).1
}
