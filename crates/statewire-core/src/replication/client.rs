//! The client half: decodes packets against the states it holds, applies them to the game's
//! world, and acknowledges them.

use hashbrown::HashMap;
use smallvec::SmallVec;

use super::records::{TailReader, read_full_body, read_update_body};
use super::{AckFrame, Applied, ClientConfig, read_header};
use crate::bits::{BitError, BitReader};
use crate::delta::{DecodeError, field_models, read_gap, read_trailer};
use crate::events::{ByteReader, EventId, EventSink, GameEvent, decode_events};
use crate::ids::{EntityId, Owner, Tick};
use crate::schema::{ComponentId, ComponentView, Registry};
use crate::snapshot::{Snapshot, WorldSink};
use crate::store::Version;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecKind {
    Update,
    Full,
    Despawn,
}

/// The states held for one entity, oldest first: usually one or two, inline.
type States = SmallVec<[Version; 2]>;

#[derive(Debug, Default)]
struct Scratch {
    recs: Vec<(EntityId, RecKind, usize)>,
    versions: Vec<Version>,
    models: Vec<crate::codec::range::IntModel>,
    events: Vec<GameEvent>,
}

/// Client half of replication: decodes snapshot packets, applies them to the local world, and
/// says what to acknowledge.
#[derive(Debug)]
pub struct ClientReplicator {
    config: ClientConfig,
    newest: Option<Tick>,
    /// Bit `i`: the packet `i + 1` ticks before `newest` was applied.
    earlier: u32,
    /// Per entity, received states oldest first; the back is the current state.
    entities: HashMap<EntityId, States>,
    last_event: u64,
    scratch: Scratch,
    late: u64,
}

/// Wraps a [`WorldSink`] that takes no events: passes world changes on and drops events (as
/// [`ClientReplicator::handle_packet`] does).
#[derive(Debug)]
pub struct IgnoreEvents<'a, S: ?Sized>(pub &'a mut S);

impl<S: WorldSink + ?Sized> WorldSink for IgnoreEvents<'_, S> {
    fn spawn(&mut self, id: EntityId, owner: Owner) {
        self.0.spawn(id, owner);
    }
    fn despawn(&mut self, id: EntityId) {
        self.0.despawn(id);
    }
    fn set_owner(&mut self, id: EntityId, owner: Owner) {
        self.0.set_owner(id, owner);
    }
    fn insert(&mut self, id: EntityId, component: ComponentView<'_>) {
        self.0.insert(id, component);
    }
    fn remove(&mut self, id: EntityId, component: ComponentView<'_>) {
        self.0.remove(id, component);
    }
}

impl<S: ?Sized> EventSink for IgnoreEvents<'_, S> {
    fn event(&mut self, _: &GameEvent) {}
}

impl ClientReplicator {
    /// A receiver holding nothing.
    #[must_use]
    pub fn new(config: ClientConfig) -> Self {
        let mut config = config;
        config.history_len = config.history_len.clamp(1, 4096);
        ClientReplicator {
            config,
            newest: None,
            earlier: 0,
            entities: HashMap::new(),
            last_event: 0,
            scratch: Scratch::default(),
            late: 0,
        }
    }

    /// The newest event id applied.
    #[must_use]
    pub fn last_event(&self) -> Option<EventId> {
        (self.last_event > 0).then_some(EventId(self.last_event))
    }

    /// What to acknowledge: the newest packet applied and the 32 before it.
    #[must_use]
    pub fn ack(&self) -> Option<AckFrame> {
        Some(AckFrame {
            newest: self.newest?,
            earlier: self.earlier,
        })
    }

    /// The newest packet tick applied.
    #[must_use]
    pub fn tick(&self) -> Option<Tick> {
        self.newest
    }

    /// Packets dropped because a newer one had been applied.
    #[must_use]
    pub fn late_packets(&self) -> u64 {
        self.late
    }

    /// Number of entities held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entities.len()
    }

    /// Whether no entity is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }

    /// Whether entity `id` is held.
    #[must_use]
    pub fn contains(&self, id: EntityId) -> bool {
        self.entities.contains_key(&id)
    }

    /// The owner of `id`, if held.
    #[must_use]
    pub fn owner(&self, id: EntityId) -> Option<Owner> {
        self.entities.get(&id)?.last().map(|v| v.owner)
    }

    /// The entities held whose owner is `owner`, ascending.
    #[must_use]
    pub fn owned_by(&self, owner: Owner) -> Vec<EntityId> {
        let mut ids: Vec<EntityId> = self
            .entities
            .iter()
            .filter(|(_, v)| v.last().is_some_and(|v| v.owner == owner))
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The entities held, in no particular order.
    pub fn entity_ids(&self) -> impl Iterator<Item = EntityId> + '_ {
        self.entities.keys().copied()
    }

    /// Dequantized component `T` of `id`.
    #[must_use]
    pub fn component<T: crate::Replicate>(&self, registry: &Registry, id: EntityId) -> Option<T> {
        let cid = registry.id_of::<T>()?;
        let v = self.entities.get(&id)?.last()?;
        let (off, n) = crate::store::component_range(registry, v.mask, cid)?;
        registry.view(cid, &v.words[off..off + n])?.get::<T>()
    }

    /// The current state as a [`Snapshot`] (O(entities); for checks).
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        let mut ids: Vec<EntityId> = self.entities.keys().copied().collect();
        ids.sort_unstable();
        let mut out = Snapshot::new();
        for id in ids {
            if let Some(v) = self.entities.get(&id).and_then(|v| v.last()) {
                out.push(id, v.owner, v.mask, &v.words);
            }
        }
        out
    }

    /// Bytes held on the heap for replicated state (states kept as baselines included).
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        let vs = std::mem::size_of::<Version>();
        let mut n = self.entities.capacity() * (std::mem::size_of::<(EntityId, States)>() + 1);
        for v in self.entities.values() {
            if v.spilled() {
                n += v.capacity() * vs;
            }
            n += v
                .iter()
                .filter(|x| x.words.spilled())
                .map(|x| x.words.capacity() * 4)
                .sum::<usize>();
        }
        n
    }

    /// Decodes `bytes` and, if it is newer than every packet applied so far, applies it,
    /// reporting every change to `sink`. Events are dropped (see
    /// [`ClientReplicator::handle_packet_with_events`]). Errors change nothing.
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
    /// its despawns, so an event sees every entity it names that the client holds, and a death
    /// arrives in the same call as its despawn.
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
        let body = r.0;
        // With entropy-coded components: the bits, the tail, the bits' length backwards.
        let (bits, coded) = if registry.uses_entropy() {
            let (len, trailer) = read_trailer(body)?;
            let rest = &body[..body.len() - trailer];
            let (bits, coded) = rest.split_at_checked(len).ok_or(BitError::Eof {
                wanted: 0,
                remaining: rest.len() * 8,
            })?;
            (bits, Some(coded))
        } else {
            (body, None)
        };
        let mut br = BitReader::new(bits);
        let header = read_header(&mut br)?;
        if let Some(n) = self.newest {
            if !header.tick.is_after(n) {
                self.late += 1;
                return Ok(Applied::Stale(header));
            }
        }
        let sc = &mut self.scratch;
        sc.events.clear();
        if !section.is_empty() {
            let mut er = ByteReader(section);
            decode_events(&mut er, &self.config.events, &mut sc.events)?;
            if !er.0.is_empty() {
                return Err(crate::events::EventDecodeError::TrailingBytes.into());
            }
        }
        if let Some(first) = sc.events.first() {
            if self.last_event > 0 && first.id.0 > self.last_event + 1 {
                return Err(DecodeError::EventGap {
                    have: self.last_event,
                    first: first.id.0,
                });
            }
        }
        sc.models.clear();
        let mut tail = match coded {
            Some(c) => {
                sc.models.extend(field_models(registry));
                Some(TailReader {
                    dec: crate::codec::range::RangeDecoder::new(c),
                    models: &mut sc.models,
                })
            }
            None => None,
        };
        // Decode every record before changing anything.
        sc.recs.clear();
        let mut used = 0usize;
        let mut prev: Option<u32> = None;
        let mut spawns = 0usize;
        while br.read_bool()? {
            if sc.recs.len() >= self.config.max_entities.saturating_add(self.entities.len()) {
                return Err(DecodeError::TooManyEntities(self.config.max_entities));
            }
            let gap = read_gap(&mut br)?;
            let id = match prev {
                None => gap.wrapping_sub(1),
                Some(p) => p
                    .checked_add(gap)
                    .ok_or(DecodeError::DuplicateEntity(EntityId(p)))?,
            };
            prev = Some(id);
            let id = EntityId(id);
            if used == sc.versions.len() {
                sc.versions.push(Version::default());
            }
            let kind = if !br.read_bool()? {
                // Against the newest state received at or before the packet's baseline.
                let base_tick = header.baseline.ok_or(DecodeError::BadBaselineOffset)?;
                let base = self
                    .entities
                    .get(&id)
                    .and_then(|vs| vs.iter().rev().find(|v| !v.tick.is_after(base_tick)))
                    .ok_or(DecodeError::MissingBaseline(base_tick))?;
                read_update_body(
                    &mut br,
                    &mut tail,
                    registry,
                    base.view(),
                    &mut sc.versions[used],
                )?;
                RecKind::Update
            } else if !br.read_bool()? {
                read_full_body(&mut br, registry, &mut sc.versions[used])?;
                if !self.entities.contains_key(&id) {
                    spawns += 1;
                }
                RecKind::Full
            } else {
                RecKind::Despawn
            };
            sc.recs.push((id, kind, used));
            if kind != RecKind::Despawn {
                used += 1;
            }
        }
        br.finish()?;
        if let Some(t) = &tail {
            t.dec.finish()?;
        }
        if self.entities.len() + spawns > self.config.max_entities {
            return Err(DecodeError::TooManyEntities(self.config.max_entities));
        }

        // Apply: spawns and updates, then events, then despawns.
        let tick = header.tick;
        let horizon = Tick(tick.0.wrapping_sub(self.config.history_len));
        for &(id, kind, k) in &sc.recs {
            if kind == RecKind::Despawn {
                continue;
            }
            let new = &mut sc.versions[k];
            new.tick = tick;
            let version = Version {
                tick,
                owner: new.owner,
                mask: new.mask,
                words: new.words.clone(),
            };
            match self.entities.get_mut(&id) {
                None => {
                    sink.spawn(id, version.owner);
                    report(registry, id, None, &version, sink);
                    let mut vs = States::new();
                    vs.push(version);
                    self.entities.insert(id, vs);
                }
                Some(vs) => {
                    if let Some(cur) = vs.last() {
                        if cur.owner != version.owner {
                            sink.set_owner(id, version.owner);
                        }
                        report(registry, id, Some(cur), &version, sink);
                    }
                    vs.push(version);
                    // Keep only the states a delta may still name. Baselines never go back:
                    // this packet's is at least every earlier one's, so states older than the
                    // newest one at or before it are done with; and the server never names one
                    // older than the history window, except the newest.
                    let mut drop = 0;
                    while vs.len() - drop >= 2
                        && (horizon.is_after(vs[drop].tick)
                            || header
                                .baseline
                                .is_some_and(|b| !vs[drop + 1].tick.is_after(b)))
                    {
                        drop += 1;
                    }
                    if drop > 0 {
                        vs.drain(..drop);
                    }
                }
            }
        }
        for e in &sc.events {
            if e.id.0 > self.last_event {
                sink.event(e);
                self.last_event = e.id.0;
            }
        }
        for &(id, kind, _) in &sc.recs {
            if kind == RecKind::Despawn && self.entities.remove(&id).is_some() {
                sink.despawn(id);
            }
        }
        if self.entities.capacity() > 64 && self.entities.len() < self.entities.capacity() / 4 {
            self.entities.shrink_to_fit();
        }
        // Acknowledgement bits.
        match self.newest {
            Some(n) => {
                let d = tick.diff(n) as u32;
                self.earlier = if d > 32 {
                    0
                } else {
                    ((u64::from(self.earlier) << d) | (1u64 << (d - 1))) as u32
                };
            }
            None => self.earlier = 0,
        }
        self.newest = Some(tick);
        Ok(Applied::Applied(header))
    }

    /// Forgets everything held (e.g. after reconnecting to a new server).
    pub fn reset(&mut self) {
        self.entities.clear();
        self.newest = None;
        self.earlier = 0;
        self.last_event = 0;
    }
}

/// Reports to `sink` how `old` (or nothing) became `new` for entity `id`: one `insert` per new
/// or changed component, one `remove` per removed one.
fn report<S: WorldSink + ?Sized>(
    registry: &Registry,
    id: EntityId,
    old: Option<&Version>,
    new: &Version,
    sink: &mut S,
) {
    let (om, ow): (u64, &[u32]) = old.map_or((0, &[]), |o| (o.mask, &o.words));
    let (mut oa, mut ob) = (0, 0);
    for i in registry.mask_iter(om | new.mask) {
        let n = registry.schema_at(i).words();
        let bit = 1u64 << i;
        let cid = ComponentId(i as u16);
        let view = |words| ComponentView {
            registry,
            id: cid,
            words,
        };
        match (om & bit != 0, new.mask & bit != 0) {
            (true, true) => {
                if ow[oa..oa + n] != new.words[ob..ob + n] {
                    sink.insert(id, view(&new.words[ob..ob + n]));
                }
                oa += n;
                ob += n;
            }
            (true, false) => {
                sink.remove(id, view(&ow[oa..oa + n]));
                oa += n;
            }
            (false, true) => {
                sink.insert(id, view(&new.words[ob..ob + n]));
                ob += n;
            }
            (false, false) => {}
        }
    }
}
