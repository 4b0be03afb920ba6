//! Who may write what, and what the server does with writes and inputs from clients.
//!
//! The server is the arbiter. By default it simulates every entity and clients only send
//! inputs, stamped with the tick they are meant for ([`InputBuffer`]). An entity may be owned
//! by a client ([`Owner::Client`]); its owner sends state writes ([`StateWrite`]) that the
//! server validates ([`Authority::accept_write`]: owner only, finite, in range, rate-limited)
//! before applying. Ownership moves only when the server says so ([`Authority::grant`],
//! [`Authority::revoke`]), so at any tick exactly one peer may write an entity; writes that
//! the previous owner sent before it learned of a transfer are rejected and counted apart from
//! hostile ones.

use std::collections::BTreeMap;

use hashbrown::HashMap;

use crate::ids::{ClientId, EntityId, Owner, Tick};
use crate::schema::{ComponentId, FieldKind, RawValue, Registry, ValueError};

/// One client write of one component of one entity, with raw (unquantized) values.
#[derive(Debug, Clone, PartialEq)]
pub struct StateWrite {
    /// The entity written.
    pub entity: EntityId,
    /// The component written.
    pub component: ComponentId,
    /// One raw value per field of the component.
    pub values: Vec<RawValue>,
}

/// Errors decoding a batch of writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteDecodeError {
    /// The message ended early.
    #[error("truncated write message")]
    Truncated,
    /// Bytes left after the last write.
    #[error("trailing bytes after the writes")]
    TrailingBytes,
    /// More writes than the caller allows in one message.
    #[error("more than {0} writes in one message")]
    TooMany(usize),
    /// A component id that is not registered.
    #[error("unknown component {0}")]
    UnknownComponent(u16),
    /// A boolean byte other than 0 or 1.
    #[error("bad boolean")]
    BadBool,
}

/// Encodes writes as: `count:u16le`, then per write `entity:u32le component:u16le` and each
/// field's raw value (f32 and enum: 4 bytes, quaternion: 16, int: 8, bool: 1), little-endian.
pub fn encode_writes(writes: &[StateWrite], out: &mut Vec<u8>) {
    out.extend_from_slice(&(writes.len().min(usize::from(u16::MAX)) as u16).to_le_bytes());
    for w in writes.iter().take(usize::from(u16::MAX)) {
        out.extend_from_slice(&w.entity.0.to_le_bytes());
        out.extend_from_slice(&w.component.0.to_le_bytes());
        for v in &w.values {
            match *v {
                RawValue::F32(f) => out.extend_from_slice(&f.to_bits().to_le_bytes()),
                RawValue::Quat(q) => {
                    for c in q {
                        out.extend_from_slice(&c.to_bits().to_le_bytes());
                    }
                }
                RawValue::Int(i) => out.extend_from_slice(&i.to_le_bytes()),
                RawValue::Bool(b) => out.push(u8::from(b)),
                RawValue::Enum(e) => out.extend_from_slice(&e.to_le_bytes()),
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], WriteDecodeError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(WriteDecodeError::Truncated)?;
        self.0 = rest;
        Ok(*head)
    }
    fn f32(&mut self) -> Result<f32, WriteDecodeError> {
        Ok(f32::from_bits(u32::from_le_bytes(self.take()?)))
    }
}

/// Decodes writes encoded by [`encode_writes`], at most `max_writes` of them. The value layout
/// comes from `registry`; values are not validated here (see [`Authority::accept_write`]).
pub fn decode_writes(
    registry: &Registry,
    bytes: &[u8],
    max_writes: usize,
) -> Result<Vec<StateWrite>, WriteDecodeError> {
    let mut r = Reader(bytes);
    let count = usize::from(u16::from_le_bytes(r.take()?));
    if count > max_writes {
        return Err(WriteDecodeError::TooMany(max_writes));
    }
    let mut writes = Vec::with_capacity(count);
    for _ in 0..count {
        let entity = EntityId(u32::from_le_bytes(r.take()?));
        let cid = u16::from_le_bytes(r.take()?);
        let component = ComponentId(cid);
        if registry.schema(component).is_none() {
            return Err(WriteDecodeError::UnknownComponent(cid));
        }
        let mut values = Vec::new();
        for kind in registry.field_kinds(component) {
            values.push(match kind {
                FieldKind::Float { .. } => RawValue::F32(r.f32()?),
                FieldKind::Quat { .. } => RawValue::Quat([r.f32()?, r.f32()?, r.f32()?, r.f32()?]),
                FieldKind::Int { .. } => RawValue::Int(i64::from_le_bytes(r.take()?)),
                FieldKind::Bool => match r.take::<1>()?[0] {
                    0 => RawValue::Bool(false),
                    1 => RawValue::Bool(true),
                    _ => return Err(WriteDecodeError::BadBool),
                },
                FieldKind::Enum { .. } => RawValue::Enum(u32::from_le_bytes(r.take()?)),
            });
        }
        writes.push(StateWrite {
            entity,
            component,
            values,
        });
    }
    if !r.0.is_empty() {
        return Err(WriteDecodeError::TrailingBytes);
    }
    Ok(writes)
}

/// Why the server refused a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteRejection {
    /// No such entity.
    #[error("unknown entity")]
    UnknownEntity,
    /// The server owns the entity.
    #[error("entity is server-owned")]
    ServerOwned,
    /// Another client owns the entity.
    #[error("entity is owned by another client")]
    OtherOwner,
    /// The writer owned the entity until a recent transfer (a write in flight, not hostile).
    #[error("authority moved away from the writer")]
    AuthorityMoved,
    /// More than [`AuthorityConfig::max_writes_per_tick`] writes this tick.
    #[error("write rate limit exceeded")]
    RateLimited,
    /// Authority moved to the writer this tick after the previous owner had already written:
    /// the new owner's writes count from the next tick.
    #[error("another client wrote this entity earlier in the tick")]
    Contended,
    /// The values are invalid.
    #[error("invalid values: {0}")]
    Invalid(#[from] ValueError),
}

/// Counts of rejected writes, per reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RejectionCounts {
    /// [`WriteRejection::UnknownEntity`].
    pub unknown_entity: u64,
    /// [`WriteRejection::ServerOwned`].
    pub server_owned: u64,
    /// [`WriteRejection::OtherOwner`].
    pub other_owner: u64,
    /// [`WriteRejection::AuthorityMoved`].
    pub authority_moved: u64,
    /// [`WriteRejection::RateLimited`].
    pub rate_limited: u64,
    /// [`WriteRejection::Contended`].
    pub contended: u64,
    /// [`WriteRejection::Invalid`].
    pub invalid: u64,
}

impl RejectionCounts {
    /// All rejections.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.unknown_entity
            + self.server_owned
            + self.other_owner
            + self.authority_moved
            + self.rate_limited
            + self.contended
            + self.invalid
    }

    fn add(&mut self, r: &RejectionCounts) {
        self.unknown_entity += r.unknown_entity;
        self.server_owned += r.server_owned;
        self.other_owner += r.other_owner;
        self.authority_moved += r.authority_moved;
        self.rate_limited += r.rate_limited;
        self.contended += r.contended;
        self.invalid += r.invalid;
    }

    fn count(&mut self, r: WriteRejection) {
        match r {
            WriteRejection::UnknownEntity => self.unknown_entity += 1,
            WriteRejection::ServerOwned => self.server_owned += 1,
            WriteRejection::OtherOwner => self.other_owner += 1,
            WriteRejection::AuthorityMoved => self.authority_moved += 1,
            WriteRejection::RateLimited => self.rate_limited += 1,
            WriteRejection::Contended => self.contended += 1,
            WriteRejection::Invalid(_) => self.invalid += 1,
        }
    }
}

/// Limits for [`Authority`] and [`InputBuffer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityConfig {
    /// Writes accepted per client per tick; more are rejected. Default 8.
    pub max_writes_per_tick: u32,
    /// Ticks after a transfer during which the previous owner's writes count as
    /// [`WriteRejection::AuthorityMoved`] rather than [`WriteRejection::OtherOwner`].
    /// Default 90 (3 s at 30 Hz).
    pub transfer_grace_ticks: u32,
    /// Open transfer requests kept. Default 1,024.
    pub max_pending_requests: usize,
}

impl Default for AuthorityConfig {
    fn default() -> Self {
        AuthorityConfig {
            max_writes_per_tick: 8,
            transfer_grace_ticks: 90,
            max_pending_requests: 1024,
        }
    }
}

/// Errors from ownership transfers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// No such entity.
    #[error("unknown entity")]
    UnknownEntity,
    /// Too many open requests.
    #[error("too many pending transfer requests")]
    TooManyRequests,
}

/// The server's record of who owns each entity, and its gate for client writes.
#[derive(Debug)]
pub struct Authority {
    config: AuthorityConfig,
    owners: HashMap<EntityId, Owner>,
    /// Previous owner and the tick authority left it.
    moved: HashMap<EntityId, (ClientId, Tick)>,
    requests: BTreeMap<(EntityId, ClientId), Tick>,
    tick: Tick,
    writes: HashMap<ClientId, u32>,
    rejections: HashMap<ClientId, RejectionCounts>,
    /// Rejections of clients forgotten by [`Authority::remove_client`], kept for the totals.
    departed_rejections: RejectionCounts,
    /// Who wrote each entity this tick: after a mid-tick transfer the new owner waits.
    written_by: HashMap<EntityId, ClientId>,
}

impl Authority {
    /// An empty table.
    #[must_use]
    pub fn new(config: AuthorityConfig) -> Self {
        Authority {
            config,
            owners: HashMap::new(),
            moved: HashMap::new(),
            requests: BTreeMap::new(),
            tick: Tick(0),
            writes: HashMap::new(),
            rejections: HashMap::new(),
            departed_rejections: RejectionCounts::default(),
            written_by: HashMap::new(),
        }
    }

    /// Forgets everything kept for `client` (call it when the client leaves): its rejection
    /// counts (still included in [`Authority::total_rejections`]), its open transfer requests,
    /// this tick's write budget and the record of authority it lost. Entities it owns keep
    /// their owner: [`Authority::revoke`], [`Authority::grant`] or [`Authority::remove`] them.
    pub fn remove_client(&mut self, client: ClientId) {
        if let Some(r) = self.rejections.remove(&client) {
            self.departed_rejections.add(&r);
        }
        self.requests.retain(|(_, c), _| *c != client);
        self.writes.remove(&client);
        self.moved.retain(|_, (c, _)| *c != client);
    }

    /// Records a new entity and its owner.
    pub fn insert(&mut self, entity: EntityId, owner: Owner) {
        self.owners.insert(entity, owner);
    }

    /// Forgets an entity (despawned).
    pub fn remove(&mut self, entity: EntityId) {
        self.owners.remove(&entity);
        self.moved.remove(&entity);
        self.requests.retain(|(e, _), _| *e != entity);
    }

    /// Forgets every entity for which `keep` returns false (e.g. those no longer in the
    /// store), so the table holds only live entities.
    pub fn retain(&mut self, mut keep: impl FnMut(EntityId) -> bool) {
        self.owners.retain(|&e, _| keep(e));
        let owners = &self.owners;
        self.moved.retain(|e, _| owners.contains_key(e));
        self.requests.retain(|(e, _), _| owners.contains_key(e));
    }

    /// Entities in the table.
    #[must_use]
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// Whether the table is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// Who owns `entity`.
    #[must_use]
    pub fn owner(&self, entity: EntityId) -> Option<Owner> {
        self.owners.get(&entity).copied()
    }

    /// Starts tick `tick`: resets the per-tick write budgets.
    pub fn begin_tick(&mut self, tick: Tick) {
        self.tick = tick;
        self.writes.clear();
        self.written_by.clear();
        let grace = self.config.transfer_grace_ticks;
        self.moved
            .retain(|_, (_, at)| tick.diff(*at) <= grace as i32);
    }

    /// Checks a write from `writer` and, if it may be applied, appends its quantized words to
    /// `out`. Every rejection is counted against `writer`; nothing is applied by this call.
    pub fn accept_write(
        &mut self,
        registry: &Registry,
        writer: ClientId,
        write: &StateWrite,
        out: &mut Vec<u32>,
    ) -> Result<(), WriteRejection> {
        let result = self.check(registry, writer, write, out);
        if let Err(r) = result {
            self.rejections.entry(writer).or_default().count(r);
        }
        result
    }

    fn check(
        &mut self,
        registry: &Registry,
        writer: ClientId,
        write: &StateWrite,
        out: &mut Vec<u32>,
    ) -> Result<(), WriteRejection> {
        let owner = self
            .owners
            .get(&write.entity)
            .copied()
            .ok_or(WriteRejection::UnknownEntity)?;
        if owner != Owner::Client(writer) {
            if self.moved.get(&write.entity).is_some_and(|m| m.0 == writer) {
                return Err(WriteRejection::AuthorityMoved);
            }
            return Err(match owner {
                Owner::Server => WriteRejection::ServerOwned,
                _ => WriteRejection::OtherOwner,
            });
        }
        if self
            .written_by
            .get(&write.entity)
            .is_some_and(|w| *w != writer)
        {
            return Err(WriteRejection::Contended);
        }
        let n = self.writes.entry(writer).or_insert(0);
        if *n >= self.config.max_writes_per_tick {
            return Err(WriteRejection::RateLimited);
        }
        registry.validate_raw(write.component, &write.values, out)?;
        *n += 1;
        self.written_by.insert(write.entity, writer);
        Ok(())
    }

    /// Records `client`'s request for authority over `entity`; the game decides with
    /// [`Authority::grant`] (or ignores it).
    pub fn request(&mut self, client: ClientId, entity: EntityId) -> Result<(), TransferError> {
        if !self.owners.contains_key(&entity) {
            return Err(TransferError::UnknownEntity);
        }
        if self.requests.len() >= self.config.max_pending_requests
            && !self.requests.contains_key(&(entity, client))
        {
            return Err(TransferError::TooManyRequests);
        }
        self.requests.insert((entity, client), self.tick);
        Ok(())
    }

    /// Open requests, by entity then client.
    pub fn requests(&self) -> impl Iterator<Item = (EntityId, ClientId, Tick)> + '_ {
        self.requests.iter().map(|(&(e, c), &t)| (e, c, t))
    }

    /// Gives `entity` to `client` from this tick on. Returns the previous owner.
    pub fn grant(&mut self, entity: EntityId, client: ClientId) -> Result<Owner, TransferError> {
        self.set(entity, Owner::Client(client))
    }

    /// Takes `entity` back to the server. Returns the previous owner.
    pub fn revoke(&mut self, entity: EntityId) -> Result<Owner, TransferError> {
        self.set(entity, Owner::Server)
    }

    fn set(&mut self, entity: EntityId, owner: Owner) -> Result<Owner, TransferError> {
        let slot = self
            .owners
            .get_mut(&entity)
            .ok_or(TransferError::UnknownEntity)?;
        let prev = std::mem::replace(slot, owner);
        if let Owner::Client(c) = prev {
            if prev != owner {
                self.moved.insert(entity, (c, self.tick));
            }
        }
        if let Owner::Client(c) = owner {
            self.moved.retain(|e, m| !(*e == entity && m.0 == c));
        }
        self.requests.retain(|(e, _), _| *e != entity);
        // `written_by` keeps this tick's writer, so a new owner waits for the next tick.
        Ok(prev)
    }

    /// Rejected writes from `client`.
    #[must_use]
    pub fn rejections(&self, client: ClientId) -> RejectionCounts {
        self.rejections.get(&client).copied().unwrap_or_default()
    }

    /// Rejected writes from everyone, including clients since removed.
    #[must_use]
    pub fn total_rejections(&self) -> RejectionCounts {
        let mut t = self.departed_rejections;
        for r in self.rejections.values() {
            t.add(r);
        }
        t
    }
}

/// Why an input was not buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputRejection {
    /// Stamped for a tick already simulated (or older than the window).
    #[error("input for a past tick")]
    TooOld,
    /// Stamped too far in the future.
    #[error("input too far ahead")]
    TooFarAhead,
    /// The client's buffer is full.
    #[error("input buffer full")]
    Full,
}

/// Inputs from clients, stamped with the tick they are for, applied by the server at that tick.
#[derive(Debug)]
pub struct InputBuffer<I> {
    /// Ticks ahead of the current one an input may be stamped for.
    max_ahead: u32,
    /// Inputs held per client.
    capacity: usize,
    now: Tick,
    inputs: HashMap<ClientId, BTreeMap<u32, I>>,
    rejected: HashMap<ClientId, u64>,
    /// Rejections of clients forgotten by [`InputBuffer::remove_client`], for the total.
    departed_rejected: u64,
}

impl<I> InputBuffer<I> {
    /// Accepts inputs for ticks `now..=now + max_ahead`, at most `capacity` per client.
    #[must_use]
    pub fn new(max_ahead: u32, capacity: usize) -> Self {
        InputBuffer {
            max_ahead,
            capacity,
            now: Tick(0),
            inputs: HashMap::new(),
            rejected: HashMap::new(),
            departed_rejected: 0,
        }
    }

    /// Buffers `input` from `client` for tick `tick` (a later input for the same tick replaces
    /// the earlier one).
    pub fn push(&mut self, client: ClientId, tick: Tick, input: I) -> Result<(), InputRejection> {
        let ahead = tick.diff(self.now);
        let verdict = if ahead < 0 {
            Err(InputRejection::TooOld)
        } else if ahead as u32 > self.max_ahead {
            Err(InputRejection::TooFarAhead)
        } else {
            Ok(())
        };
        let q = self.inputs.entry(client).or_default();
        let verdict = verdict.and_then(|()| {
            if q.len() >= self.capacity && !q.contains_key(&tick.0) {
                Err(InputRejection::Full)
            } else {
                Ok(())
            }
        });
        match verdict {
            Ok(()) => {
                q.insert(tick.0, input);
                Ok(())
            }
            Err(e) => {
                *self.rejected.entry(client).or_default() += 1;
                Err(e)
            }
        }
    }

    /// Moves to tick `tick` and returns each client's input for it (if any); older inputs are
    /// dropped.
    pub fn take(&mut self, tick: Tick) -> Vec<(ClientId, I)> {
        self.now = tick;
        let mut out = Vec::new();
        for (&c, q) in &mut self.inputs {
            // Keys are raw tick numbers; drop everything not after `tick` except `tick` itself.
            let keys: Vec<u32> = q
                .keys()
                .copied()
                .filter(|&k| !Tick(k).is_after(tick))
                .collect();
            for k in keys {
                if let Some(i) = q.remove(&k) {
                    if k == tick.0 {
                        out.push((c, i));
                    }
                }
            }
        }
        out.sort_by_key(|(c, _)| *c);
        self.now = tick.next();
        out
    }

    /// Forgets a client (call it when the client leaves): its buffered inputs and its
    /// rejection count (still included in [`InputBuffer::total_rejected`]).
    pub fn remove_client(&mut self, client: ClientId) {
        self.inputs.remove(&client);
        if let Some(n) = self.rejected.remove(&client) {
            self.departed_rejected += n;
        }
    }

    /// Inputs rejected from `client`.
    #[must_use]
    pub fn rejected(&self, client: ClientId) -> u64 {
        self.rejected.get(&client).copied().unwrap_or(0)
    }

    /// Inputs rejected from everyone, including clients since removed.
    #[must_use]
    pub fn total_rejected(&self) -> u64 {
        self.departed_rejected + self.rejected.values().sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(entity: u32) -> StateWrite {
        StateWrite {
            entity: EntityId(entity),
            component: ComponentId(0),
            values: Vec::new(),
        }
    }

    #[test]
    fn remove_client_forgets_it_but_keeps_the_totals() {
        let (gone, stays) = (ClientId(1), ClientId(2));
        let registry = Registry::new();
        let mut a = Authority::new(AuthorityConfig::default());
        a.insert(EntityId(10), Owner::Client(gone));
        a.insert(EntityId(20), Owner::Server);
        let mut out = Vec::new();
        for c in [gone, stays] {
            // Unknown entity, then someone else's entity.
            assert!(a.accept_write(&registry, c, &write(99), &mut out).is_err());
            assert!(a.accept_write(&registry, c, &write(20), &mut out).is_err());
            a.request(c, EntityId(20)).unwrap();
        }
        // `gone` loses entity 10 to `stays`, so a `moved` record names it.
        a.grant(EntityId(10), stays).unwrap();
        a.request(gone, EntityId(10)).unwrap();
        a.writes.insert(gone, 1);
        let before = a.total_rejections();
        assert_eq!(before.total(), 4);

        a.remove_client(gone);
        assert!(!a.rejections.contains_key(&gone));
        assert!(!a.writes.contains_key(&gone));
        assert!(a.requests().all(|(_, c, _)| c != gone));
        assert!(a.moved.values().all(|(c, _)| *c != gone));
        assert_eq!(a.rejections(gone), RejectionCounts::default());
        assert_eq!(a.rejections(stays).total(), 2);
        assert_eq!(a.requests().count(), 1);
        assert_eq!(a.total_rejections(), before);
        // Removing it again, or a client never seen, changes nothing.
        a.remove_client(gone);
        a.remove_client(ClientId(3));
        assert_eq!(a.total_rejections(), before);
    }

    #[test]
    fn input_buffer_remove_client_forgets_inputs_and_rejections() {
        let (gone, stays) = (ClientId(1), ClientId(2));
        let mut inputs: InputBuffer<u8> = InputBuffer::new(4, 8);
        inputs.take(Tick(10));
        for c in [gone, stays] {
            inputs.push(c, Tick(12), 1).unwrap();
            assert_eq!(inputs.push(c, Tick(5), 1), Err(InputRejection::TooOld));
            assert_eq!(
                inputs.push(c, Tick(99), 1),
                Err(InputRejection::TooFarAhead)
            );
        }
        assert_eq!(inputs.total_rejected(), 4);

        inputs.remove_client(gone);
        assert!(!inputs.inputs.contains_key(&gone));
        assert!(!inputs.rejected.contains_key(&gone));
        assert_eq!(inputs.rejected(gone), 0);
        assert_eq!(inputs.rejected(stays), 2);
        assert_eq!(inputs.total_rejected(), 4);
        assert_eq!(inputs.take(Tick(12)), vec![(stays, 1)]);
    }
}
