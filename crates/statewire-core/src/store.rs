//! The server's replicated store: the quantized state of every replicated entity, the tick of
//! its last change, a bounded shared history of earlier values, and where it is (for interest).
//!
//! The engine tells the store what changed ([`Store::spawn`], [`Store::set`],
//! [`Store::remove`], [`Store::despawn`], or a whole [`Snapshot`] diffed once with
//! [`Store::apply_snapshot`]). Setting a component to a value that quantizes to what the store
//! already holds is not a change. Each change is logged once per tick, so the replicator's work
//! per tick grows with the number of changes, not with the size of the world; every client's
//! deltas read their baselines from this one store instead of from copies of the world kept per
//! client.
//!
//! # History
//!
//! For every entity the store keeps its current version and the versions it had during the last
//! [`StoreConfig::history_ticks`] ticks (plus the one current at the start of that window), so a
//! delta against any tick a client acknowledged within the window can be encoded. An entity
//! that has not changed for that long keeps one version.

use std::collections::VecDeque;

use hashbrown::HashMap;
use smallvec::SmallVec;

use crate::ids::{EntityId, Owner, Tick};
use crate::schema::{ComponentId, ComponentView, Registry, Replicate, SchemaError};
use crate::snapshot::Snapshot;

/// Settings of a [`Store`].
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// Most live entities. Default 1,048,576; [`Store::spawn`] refuses more.
    pub max_entities: usize,
    /// Ticks of shared history kept for deltas. Default 32 (about 1 s at 30 Hz). A client whose
    /// newest acknowledged state of an entity is older than this receives that entity in full.
    /// Clients must keep at least as many ([`crate::ClientConfig::history_len`]). At most 4,096.
    pub history_ticks: u32,
    /// Side of a cell of the interest grid, in world units. Default 32.
    pub cell_size: f32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_entities: 1 << 20,
            history_ticks: 32,
            cell_size: 32.0,
        }
    }
}

/// Errors from changing a [`Store`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The entity does not exist (or was despawned).
    #[error("entity {0} does not exist")]
    UnknownEntity(EntityId),
    /// The entity already exists.
    #[error("entity {0} already exists")]
    DuplicateEntity(EntityId),
    /// [`StoreConfig::max_entities`] reached.
    #[error("entity limit of {0} reached")]
    TooManyEntities(usize),
    /// A component could not be quantized.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A position is not finite.
    #[error("position of entity {0} is not finite")]
    BadPosition(EntityId),
    /// The new tick is not after the current one.
    #[error("tick {0} is not after the store's tick")]
    StaleTick(Tick),
    /// A [`WorldSource`](crate::WorldSource) built an invalid snapshot.
    #[error("world source: {0}")]
    Build(#[from] crate::BuildError),
}

/// One state of an entity: what it looked like from `tick` on.
#[derive(Debug, Clone, Default)]
pub(crate) struct Version {
    pub(crate) tick: Tick,
    pub(crate) owner: Owner,
    pub(crate) mask: u64,
    pub(crate) words: Words,
}

/// Quantized words of one entity, inline up to 8 (two positions and a rotation fit).
pub(crate) type Words = SmallVec<[u32; 8]>;

/// Interest grid cell coordinates.
pub(crate) type Cell = (i32, i32);

/// Where a slot is listed for interest queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bucket {
    /// Dead: listed nowhere.
    Unlisted,
    /// Alive without a position, or global: seen at any distance.
    Anywhere,
    /// On the grid.
    Cell(Cell),
}

/// One entity slot. A slot outlives its entity while clients still hold it (`refs > 0`), so a
/// despawn can be delivered; a slot index is never reused while referenced.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) id: EntityId,
    pub(crate) alive: bool,
    /// Tick it was (last) spawned: versions before it belong to an earlier life.
    pub(crate) spawned: Tick,
    /// Tick of the last change of anything (spawn, owner, components, despawn).
    pub(crate) changed: Tick,
    /// The current state.
    pub(crate) cur: Version,
    /// Where its earlier states inside the history window are kept (in the shared archive),
    /// oldest first.
    pub(crate) history: SmallVec<[HistRef; 3]>,
    /// Client views holding this slot.
    pub(crate) refs: u32,
    pub(crate) pos: Option<[f32; 2]>,
    pub(crate) bucket: Bucket,
    /// Index within its bucket's list.
    bucket_pos: u32,
    /// Rooms it belongs to (0: none, seen by everyone).
    pub(crate) rooms: u64,
    /// Replication weight (priority growth), from [`Store::set_weight`].
    pub(crate) weight: f32,
    /// Ignore distance: in every client's interest (rooms and filters still apply).
    pub(crate) global: bool,
}

/// An earlier state of an entity, kept in the shared [`Archive`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct HistRef {
    /// When that state began.
    tick: Tick,
    /// When it was replaced (its archive tick).
    until: Tick,
    /// Index among the versions archived at `until`.
    idx: u32,
}

/// The states replaced during one tick, appended in order: one sequential buffer per tick
/// instead of a history buffer per entity, so recording a change touches memory that is
/// already in cache.
#[derive(Debug, Default)]
pub(crate) struct ArchiveTick {
    tick: Tick,
    /// Plain records (no drop glue, so a tick leaves the archive in O(1))...
    versions: Vec<Archived>,
    /// ...with their words in one buffer.
    words: Vec<u32>,
}

/// A replaced state in an [`ArchiveTick`].
#[derive(Debug, Clone, Copy)]
struct Archived {
    owner: Owner,
    mask: u64,
    start: u32,
    len: u32,
}

/// A borrowed state: the current one or one from the archive.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VersionRef<'a> {
    pub(crate) owner: Owner,
    pub(crate) mask: u64,
    pub(crate) words: &'a [u32],
}

impl Version {
    pub(crate) fn view(&self) -> VersionRef<'_> {
        VersionRef {
            owner: self.owner,
            mask: self.mask,
            words: &self.words,
        }
    }
}

impl Slot {
    pub(crate) fn current(&self) -> &Version {
        &self.cur
    }

    /// The tick of the oldest version after `tick` (the first change `tick` lacks).
    pub(crate) fn first_change_after(&self, tick: Tick) -> Option<Tick> {
        if !self.cur.tick.is_after(tick) {
            return None;
        }
        let mut first = Some(self.cur.tick);
        for h in self.history.iter().rev() {
            if !h.tick.is_after(tick) {
                break;
            }
            first = Some(h.tick);
        }
        first
    }
}

#[derive(Debug, Default)]
pub(crate) struct LogEntry {
    pub(crate) tick: Tick,
    /// Slots whose state changed at `tick` (each once).
    pub(crate) changed: Vec<u32>,
    /// Slots whose position changed at `tick` (each once).
    pub(crate) moved: Vec<u32>,
    /// Slots whose other interest inputs changed at `tick`: spawned, new owner, rooms, global
    /// (each once).
    pub(crate) touched: Vec<u32>,
}

/// The server's replicated world with change tracking and shared history. See the
/// [module docs](self).
#[derive(Debug)]
pub struct Store {
    config: StoreConfig,
    registry: Registry,
    tick: Tick,
    pub(crate) slots: Vec<Slot>,
    free: Vec<u32>,
    index: IdIndex,
    live: usize,
    /// Per tick, newest last; at most `history_ticks` entries.
    pub(crate) log: VecDeque<LogEntry>,
    spare_logs: Vec<LogEntry>,
    pub(crate) grid: HashMap<Cell, Vec<u32>>,
    /// Replaced states of the last `history_ticks` ticks, oldest tick first.
    archive: VecDeque<ArchiveTick>,
    spare_archive: Vec<(Vec<Archived>, Vec<u32>)>,
    /// Alive slots without a position or marked global.
    pub(crate) anywhere: Vec<u32>,
    /// Last tick each slot was logged as changed / moved (dedup).
    moved_at: Vec<Tick>,
    touched_at: Vec<Tick>,
    logged_at: Vec<Tick>,
    started: bool,
    /// Bumped by every change of state.
    revision: u64,
    scratch: Vec<u32>,
}

impl Store {
    /// An empty store at tick 0 quantizing with `registry`.
    #[must_use]
    pub fn new(registry: Registry, config: StoreConfig) -> Self {
        let mut config = config;
        config.history_ticks = config.history_ticks.clamp(1, 4096);
        if !(config.cell_size.is_finite() && config.cell_size > 0.0) {
            config.cell_size = StoreConfig::default().cell_size;
        }
        Store {
            config,
            registry,
            tick: Tick(0),
            slots: Vec::new(),
            free: Vec::new(),
            index: IdIndex::default(),
            live: 0,
            log: VecDeque::new(),
            spare_logs: Vec::new(),
            grid: HashMap::new(),
            archive: VecDeque::new(),
            spare_archive: Vec::new(),
            anywhere: Vec::new(),
            moved_at: Vec::new(),
            touched_at: Vec::new(),
            logged_at: Vec::new(),
            started: false,
            revision: 0,
            scratch: Vec::new(),
        }
    }

    /// The registry used to quantize components.
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The tick changes are recorded at.
    #[must_use]
    pub fn tick(&self) -> Tick {
        self.tick
    }

    /// Starts tick `tick`: later changes are recorded at it. Ticks must increase.
    pub fn begin_tick(&mut self, tick: Tick) -> Result<(), StoreError> {
        if self.started && !tick.is_after(self.tick) {
            return Err(StoreError::StaleTick(tick));
        }
        self.started = true;
        self.tick = tick;
        self.new_log_entry();
        Ok(())
    }

    fn new_log_entry(&mut self) {
        if self.log.back().is_some_and(|e| e.tick == self.tick) {
            return;
        }
        let mut entry = if self.log.len() >= self.config.history_ticks as usize {
            self.log.pop_front().unwrap_or_default()
        } else {
            self.spare_logs.pop().unwrap_or_default()
        };
        entry.tick = self.tick;
        entry.changed.clear();
        entry.moved.clear();
        entry.touched.clear();
        self.log.push_back(entry);
    }

    /// The state of slot `s` current at `tick`, if still held and from its current life.
    pub(crate) fn version_at(&self, s: u32, tick: Tick) -> Option<VersionRef<'_>> {
        let sl = &self.slots[s as usize];
        if sl.spawned.is_after(tick) {
            return None;
        }
        // Newest first: the tick asked for is usually recent. Nothing found means the states
        // around `tick` left the archive.
        if !sl.cur.tick.is_after(tick) {
            return Some(sl.cur.view());
        }
        let h = sl.history.iter().rev().find(|h| !h.tick.is_after(tick))?;
        let front = self.archive.front()?.tick;
        if front.is_after(h.until) {
            return None;
        }
        // Archive ticks are increasing but may skip ticks without changes.
        let i = self.archive.partition_point(|a| h.until.is_after(a.tick));
        let a = self.archive.get(i).filter(|a| a.tick == h.until)?;
        let v = a.versions.get(h.idx as usize)?;
        let words = a.words.get(v.start as usize..(v.start + v.len) as usize)?;
        Some(VersionRef {
            owner: v.owner,
            mask: v.mask,
            words,
        })
    }

    /// A number that changes whenever any replicated state changes (for caches).
    pub(crate) fn revision(&self) -> u64 {
        self.revision
    }

    /// Number of live entities.
    #[must_use]
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether there are no live entities.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Whether entity `id` is alive.
    #[must_use]
    pub fn contains(&self, id: EntityId) -> bool {
        self.live_slot(id).is_some()
    }

    /// The owner of `id`, if alive.
    #[must_use]
    pub fn owner(&self, id: EntityId) -> Option<Owner> {
        Some(self.slots[self.live_slot(id)? as usize].current().owner)
    }

    /// The tick `id` last changed at, if alive.
    #[must_use]
    pub fn changed_at(&self, id: EntityId) -> Option<Tick> {
        Some(self.slots[self.live_slot(id)? as usize].changed)
    }

    /// Dequantized component `T` of `id`.
    #[must_use]
    pub fn component<T: Replicate>(&self, id: EntityId) -> Option<T> {
        let cid = self.registry.id_of::<T>()?;
        self.component_view(id, cid)?.get::<T>()
    }

    /// Quantized view of component `cid` of `id`.
    #[must_use]
    pub fn component_view(&self, id: EntityId, cid: ComponentId) -> Option<ComponentView<'_>> {
        let v = self.slots[self.live_slot(id)? as usize].current();
        let (off, n) = component_range(&self.registry, v.mask, cid)?;
        Some(ComponentView {
            registry: &self.registry,
            id: cid,
            words: &v.words[off..off + n],
        })
    }

    /// Live entity ids, in no particular order.
    pub fn entity_ids(&self) -> impl Iterator<Item = EntityId> + '_ {
        self.slots.iter().filter(|s| s.alive).map(|s| s.id)
    }

    /// The slot of `id`, alive or a despawned one clients still hold.
    pub(crate) fn index_of(&self, id: EntityId) -> Option<&u32> {
        self.index.get(id)
    }

    pub(crate) fn live_slot(&self, id: EntityId) -> Option<u32> {
        let &s = self.index.get(id)?;
        self.slots[s as usize].alive.then_some(s)
    }

    /// Spawns entity `id` (no components yet) owned by `owner`.
    pub fn spawn(&mut self, id: EntityId, owner: Owner) -> Result<(), StoreError> {
        if self.live_slot(id).is_some() {
            return Err(StoreError::DuplicateEntity(id));
        }
        if self.live >= self.config.max_entities {
            return Err(StoreError::TooManyEntities(self.config.max_entities));
        }
        self.new_log_entry();
        let tick = self.tick;
        let version = Version {
            tick,
            owner,
            mask: 0,
            words: Words::new(),
        };
        // A dead slot still referenced by clients gives the entity a new life in the same slot
        // (the clients' records stay); otherwise a free or new slot.
        let revived = self.index.get(id).copied();
        let slot = match revived {
            Some(s) => s,
            None => match self.free.pop() {
                Some(s) => s,
                None => {
                    self.slots.push(Slot {
                        id,
                        alive: false,
                        spawned: tick,
                        changed: tick,
                        cur: Version::default(),
                        history: SmallVec::new(),
                        refs: 0,
                        pos: None,
                        bucket: Bucket::Unlisted,
                        bucket_pos: 0,
                        rooms: 0,
                        weight: 1.0,
                        global: false,
                    });
                    self.moved_at.push(Tick(tick.0.wrapping_sub(1)));
                    self.touched_at.push(Tick(tick.0.wrapping_sub(1)));
                    self.logged_at.push(Tick(tick.0.wrapping_sub(1)));
                    (self.slots.len() - 1) as u32
                }
            },
        };
        // Dead slots are in no bucket and have no position.
        let sl = &mut self.slots[slot as usize];
        debug_assert!(sl.bucket == Bucket::Unlisted && !sl.alive);
        sl.id = id;
        sl.alive = true;
        sl.spawned = tick;
        sl.history.clear();
        sl.cur = version;
        sl.pos = None;
        sl.rooms = 0;
        sl.weight = 1.0;
        sl.global = false;
        if revived.is_none() {
            sl.refs = 0;
            self.index.insert(id, slot);
        }
        self.live += 1;
        self.set_bucket(slot, Bucket::Anywhere);
        self.mark_changed(slot);
        self.touch_interest(slot);
        Ok(())
    }

    /// Despawns `id`. Clients that hold it receive the despawn.
    pub fn despawn(&mut self, id: EntityId) -> Result<(), StoreError> {
        let s = self.live_slot(id).ok_or(StoreError::UnknownEntity(id))?;
        self.new_log_entry();
        self.set_bucket(s, Bucket::Unlisted);
        let sl = &mut self.slots[s as usize];
        sl.alive = false;
        sl.pos = None;
        self.live -= 1;
        self.mark_changed(s);
        self.release_if_unused(s);
        Ok(())
    }

    /// Sets (inserts or changes) component `value` of `id`. Not a change if it quantizes to the
    /// value already held.
    pub fn set<T: Replicate>(&mut self, id: EntityId, value: &T) -> Result<(), StoreError> {
        let s = self.live_slot(id).ok_or(StoreError::UnknownEntity(id))?;
        self.set_in_slot(s, value)
    }

    /// One live entity, to change several of its parts with one lookup.
    pub fn entity_mut(&mut self, id: EntityId) -> Result<EntityMut<'_>, StoreError> {
        let slot = self.live_slot(id).ok_or(StoreError::UnknownEntity(id))?;
        Ok(EntityMut {
            store: self,
            id,
            slot,
        })
    }

    fn set_in_slot<T: Replicate>(&mut self, s: u32, value: &T) -> Result<(), StoreError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let cid = match self.registry.quantize(value, &mut scratch) {
            Ok(c) => c,
            Err(e) => {
                self.scratch = scratch;
                return Err(e.into());
            }
        };
        self.set_words(s, cid, &scratch);
        self.scratch = scratch;
        Ok(())
    }

    /// Sets component `cid` of `id` from already quantized words (e.g. a validated client
    /// write). The words must be valid for the component (one per field, in range).
    pub fn set_quantized(
        &mut self,
        id: EntityId,
        cid: ComponentId,
        words: &[u32],
    ) -> Result<(), StoreError> {
        let s = self.live_slot(id).ok_or(StoreError::UnknownEntity(id))?;
        let schema =
            self.registry
                .schema(cid)
                .ok_or(StoreError::Schema(SchemaError::Unregistered(
                    "unknown component",
                )))?;
        if schema.words() != words.len()
            || schema.codecs.iter().zip(words).any(|(c, &w)| w > c.max_q)
        {
            return Err(StoreError::Schema(SchemaError::Mismatch {
                component: schema.name(),
                reason: "quantized words do not fit the schema",
            }));
        }
        self.set_words(s, cid, words);
        Ok(())
    }

    /// Removes component `T` from `id` (nothing if it has none).
    pub fn remove<T: Replicate>(&mut self, id: EntityId) -> Result<(), StoreError> {
        let s = self.live_slot(id).ok_or(StoreError::UnknownEntity(id))?;
        let cid = self
            .registry
            .id_of::<T>()
            .ok_or(StoreError::Schema(SchemaError::Unregistered(T::NAME)))?;
        self.remove_slot_component(s, cid);
        Ok(())
    }

    /// Removes component `cid` from `id` (nothing if it has none).
    pub fn remove_component(&mut self, id: EntityId, cid: ComponentId) -> Result<(), StoreError> {
        let s = self.live_slot(id).ok_or(StoreError::UnknownEntity(id))?;
        self.remove_slot_component(s, cid);
        Ok(())
    }

    fn remove_slot_component(&mut self, slot: u32, cid: ComponentId) {
        let bit = 1u64 << cid.0;
        if self.slots[slot as usize].current().mask & bit == 0 {
            return;
        }
        let reg = &self.registry;
        let cur = self.slots[slot as usize].current();
        let (off, n) = component_range(reg, cur.mask, cid).unwrap_or((0, 0));
        let mut words = Words::new();
        words.extend_from_slice(&cur.words[..off]);
        words.extend_from_slice(&cur.words[off + n..]);
        let (owner, mask) = (cur.owner, cur.mask & !bit);
        self.push_version(slot, owner, mask, words);
    }

    /// Gives `id` a new owner.
    pub fn set_owner(&mut self, id: EntityId, owner: Owner) -> Result<(), StoreError> {
        let s = self.live_slot(id).ok_or(StoreError::UnknownEntity(id))?;
        let cur = self.slots[s as usize].current();
        if cur.owner == owner {
            return Ok(());
        }
        let words = cur.words.clone();
        let mask = cur.mask;
        self.push_version(s, owner, mask, words);
        // The new owner always sees it.
        self.touch_interest(s);
        Ok(())
    }

    /// Sets where `id` is on the interest grid's plane (x, y in world units); `None` makes it
    /// seen at any distance. Not replicated by itself: replicate a position component too.
    pub fn set_position(&mut self, id: EntityId, pos: Option<[f32; 2]>) -> Result<(), StoreError> {
        let s = self.live_slot(id).ok_or(StoreError::UnknownEntity(id))?;
        self.set_slot_position(s, id, pos)
    }

    fn set_slot_position(
        &mut self,
        s: u32,
        id: EntityId,
        pos: Option<[f32; 2]>,
    ) -> Result<(), StoreError> {
        if pos.is_some_and(|p| !(p[0].is_finite() && p[1].is_finite())) {
            return Err(StoreError::BadPosition(id));
        }
        if self.slots[s as usize].pos == pos {
            return Ok(());
        }
        self.new_log_entry();
        self.slots[s as usize].pos = pos;
        let b = self.bucket_for(s);
        self.set_bucket(s, b);
        if self.moved_at[s as usize] != self.tick {
            self.moved_at[s as usize] = self.tick;
            if let Some(e) = self.log.back_mut() {
                e.moved.push(s);
            }
        }
        Ok(())
    }

    /// Puts `id` in the rooms of `rooms` (bit `i`: room `i`, up to 64 rooms or teams); 0 means
    /// no room, seen by every client. Clients see an entity in rooms only if they share one
    /// ([`crate::ServerReplicator::set_rooms`]).
    pub fn set_rooms(&mut self, id: EntityId, rooms: u64) -> Result<(), StoreError> {
        let s = self.live_slot(id).ok_or(StoreError::UnknownEntity(id))?;
        self.slots[s as usize].rooms = rooms;
        self.touch_interest(s);
        Ok(())
    }

    /// Marks `id` as seen at any distance (rooms and filters still apply).
    pub fn set_global(&mut self, id: EntityId, global: bool) -> Result<(), StoreError> {
        let s = self.live_slot(id).ok_or(StoreError::UnknownEntity(id))?;
        self.slots[s as usize].global = global;
        let b = self.bucket_for(s);
        self.set_bucket(s, b);
        self.touch_interest(s);
        Ok(())
    }

    /// Sets how fast `id` gains replication priority while it has unsent changes (default 1;
    /// clamped to 0.01..=100): a projectile might use 4, a distant prop 0.25.
    pub fn set_weight(&mut self, id: EntityId, weight: f32) -> Result<(), StoreError> {
        let s = self.live_slot(id).ok_or(StoreError::UnknownEntity(id))?;
        let w = if weight.is_finite() { weight } else { 1.0 };
        self.slots[s as usize].weight = w.clamp(0.01, 100.0);
        Ok(())
    }

    /// Makes the whole state equal to `snapshot` (as of the current tick), recording only what
    /// differs: the convenience path for engines that rebuild a [`Snapshot`] every tick.
    pub fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StoreError> {
        self.new_log_entry();
        let mut gone = Vec::new();
        for sl in &self.slots {
            if sl.alive && !snapshot.contains(sl.id) {
                gone.push(sl.id);
            }
        }
        for id in gone {
            self.despawn(id)?;
        }
        for e in &snapshot.entities {
            let words = snapshot.entity_words(e);
            let s = match self.live_slot(e.id) {
                Some(s) => s,
                None => {
                    self.spawn(e.id, e.owner)?;
                    self.live_slot(e.id)
                        .ok_or(StoreError::UnknownEntity(e.id))?
                }
            };
            let cur = self.slots[s as usize].current();
            if cur.owner != e.owner {
                self.touch_interest(s);
            }
            let cur = self.slots[s as usize].current();
            if cur.owner != e.owner || cur.mask != e.mask || !words_eq(&cur.words, words) {
                self.push_version(s, e.owner, e.mask, Words::from_slice(words));
            }
        }
        Ok(())
    }

    /// Makes the whole state equal to what `source` builds (see [`Store::apply_snapshot`]):
    /// for engines that can list their world but not their changes. It costs O(world) per
    /// call; telling the store the changes costs O(changes).
    ///
    /// ```
    /// use statewire_core::*;
    /// # #[derive(Debug, PartialEq)] struct Hp(i64);
    /// # impl Replicate for Hp {
    /// #     const NAME: &'static str = "Hp";
    /// #     fn fields() -> Vec<Field> { vec![Field::new("hp", FieldKind::Int { min: 0, max: 100 })] }
    /// #     fn write(&self, w: &mut FieldWriter<'_>) { w.int(self.0) }
    /// #     fn read(r: &mut FieldReader<'_>) -> Option<Self> { Some(Hp(r.int()?)) }
    /// # }
    /// struct World(Vec<(u32, i64)>);
    /// impl WorldSource for World {
    ///     fn build(&self, b: &mut SnapshotBuilder<'_>) {
    ///         for &(id, hp) in &self.0 {
    ///             b.entity(EntityId(id), Owner::Server).component(&Hp(hp));
    ///         }
    ///     }
    /// }
    /// let mut registry = Registry::new();
    /// registry.register::<Hp>().unwrap();
    /// let mut store = Store::new(registry, StoreConfig::default());
    /// store.begin_tick(Tick(1)).unwrap();
    /// store.apply_source(&World(vec![(1, 90), (2, 50)])).unwrap();
    /// store.begin_tick(Tick(2)).unwrap();
    /// store.apply_source(&World(vec![(2, 40)])).unwrap();
    /// assert!(!store.contains(EntityId(1)));
    /// assert_eq!(store.component::<Hp>(EntityId(2)), Some(Hp(40)));
    /// assert_eq!(store.changed_at(EntityId(2)), Some(Tick(2)));
    /// ```
    pub fn apply_source<S: crate::WorldSource + ?Sized>(
        &mut self,
        source: &S,
    ) -> Result<(), StoreError> {
        let mut builder = crate::SnapshotBuilder::new(&self.registry);
        source.build(&mut builder);
        let snapshot = builder.finish()?;
        self.apply_snapshot(&snapshot)
    }

    /// The whole current state as a [`Snapshot`] (O(world); for tests and checks).
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        let mut ids: Vec<(EntityId, u32)> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.alive)
            .map(|(i, s)| (s.id, i as u32))
            .collect();
        ids.sort_unstable();
        let mut out = Snapshot::new();
        for (id, s) in ids {
            let v = self.slots[s as usize].current();
            out.push(id, v.owner, v.mask, &v.words);
        }
        out
    }

    /// Bytes the store holds on the heap (slots, versions, logs, grid, index), from capacities.
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        let mut n = self.slots.capacity() * std::mem::size_of::<Slot>()
            + (self.moved_at.capacity() + self.touched_at.capacity()) * 4
            + self.free.capacity() * 4
            + self.index.memory_bytes();
        let spilled = |v: &Version| {
            if v.words.spilled() {
                v.words.capacity() * 4
            } else {
                0
            }
        };
        for s in &self.slots {
            if s.history.spilled() {
                n += s.history.capacity() * std::mem::size_of::<HistRef>();
            }
            n += spilled(&s.cur);
        }
        let archived = std::mem::size_of::<Archived>();
        for a in &self.archive {
            n += a.versions.capacity() * archived + a.words.capacity() * 4;
        }
        n += self
            .spare_archive
            .iter()
            .map(|(v, w)| v.capacity() * archived + w.capacity() * 4)
            .sum::<usize>();
        for e in self.log.iter().chain(&self.spare_logs) {
            n += (e.changed.capacity() + e.moved.capacity() + e.touched.capacity()) * 4;
        }
        n += self.grid.capacity() * (std::mem::size_of::<(Cell, Vec<u32>)>() + 1);
        n += self.grid.values().map(|v| v.capacity() * 4).sum::<usize>();
        n += self.anywhere.capacity() * 4;
        n
    }

    pub(crate) fn cell_of(&self, p: [f32; 2]) -> Cell {
        let c = self.config.cell_size;
        // Saturating float-to-int casts keep far positions in the outermost cells.
        ((p[0] / c).floor() as i32, (p[1] / c).floor() as i32)
    }

    fn bucket_for(&self, s: u32) -> Bucket {
        let sl = &self.slots[s as usize];
        match sl.pos {
            _ if !sl.alive => Bucket::Unlisted,
            Some(p) if !sl.global => Bucket::Cell(self.cell_of(p)),
            _ => Bucket::Anywhere,
        }
    }

    fn set_bucket(&mut self, s: u32, to: Bucket) {
        let (from, at) = {
            let sl = &self.slots[s as usize];
            (sl.bucket, sl.bucket_pos as usize)
        };
        if from == to {
            return;
        }
        // Swap-remove from the old list, fixing the moved element's index.
        let list = match from {
            Bucket::Unlisted => None,
            Bucket::Anywhere => Some(&mut self.anywhere),
            Bucket::Cell(c) => self.grid.get_mut(&c),
        };
        if let Some(list) = list {
            if at < list.len() && list[at] == s {
                list.swap_remove(at);
                if let Some(&moved) = list.get(at) {
                    self.slots[moved as usize].bucket_pos = at as u32;
                }
            }
            if let Bucket::Cell(c) = from {
                if self.grid.get(&c).is_some_and(Vec::is_empty) {
                    self.grid.remove(&c);
                }
            }
        }
        let list = match to {
            Bucket::Unlisted => None,
            Bucket::Anywhere => Some(&mut self.anywhere),
            Bucket::Cell(c) => Some(self.grid.entry(c).or_default()),
        };
        let pos = list.map_or(0, |l| {
            l.push(s);
            l.len() - 1
        });
        let sl = &mut self.slots[s as usize];
        sl.bucket = to;
        sl.bucket_pos = pos as u32;
    }

    fn touch_interest(&mut self, s: u32) {
        self.new_log_entry();
        if self.touched_at[s as usize] != self.tick {
            self.touched_at[s as usize] = self.tick;
            if let Some(e) = self.log.back_mut() {
                e.touched.push(s);
            }
        }
    }

    fn set_words(&mut self, s: u32, cid: ComponentId, new: &[u32]) {
        let reg = &self.registry;
        let tick = self.tick;
        let cur = self.slots[s as usize].current();
        let bit = 1u64 << cid.0;
        if cur.mask & bit != 0 {
            let (off, n) = component_range(reg, cur.mask, cid).unwrap_or((0, 0));
            if words_eq(&cur.words[off..off + n], new) {
                return;
            }
            if cur.tick == tick {
                // Already changed this tick: overwrite in place.
                self.slots[s as usize].cur.words[off..off + n].copy_from_slice(new);
                self.mark_changed(s);
                return;
            }
        }
        let mut words = Words::new();
        if cur.mask & bit != 0 {
            let (off, n) = component_range(reg, cur.mask, cid).unwrap_or((0, 0));
            words.extend_from_slice(&cur.words[..off]);
            words.extend_from_slice(new);
            words.extend_from_slice(&cur.words[off + n..]);
        } else {
            // Insert at the position of `cid` in ascending component order.
            let off: usize = reg
                .mask_iter(cur.mask & (bit - 1))
                .map(|i| reg.schema_at(i).words())
                .sum();
            words.extend_from_slice(&cur.words[..off]);
            words.extend_from_slice(new);
            words.extend_from_slice(&cur.words[off..]);
        }
        let (owner, mask) = (cur.owner, cur.mask | bit);
        self.push_version(s, owner, mask, words);
    }

    /// Makes (`owner`, `mask`, `words`) the current version of slot `s` at the current tick.
    fn push_version(&mut self, s: u32, owner: Owner, mask: u64, words: Words) {
        self.new_log_entry();
        let tick = self.tick;
        let horizon = Tick(tick.0.wrapping_sub(self.config.history_ticks));
        let sl = &mut self.slots[s as usize];
        if sl.cur.tick == tick {
            // Changed twice in one tick: only the last state exists for clients.
            sl.cur.owner = owner;
            sl.cur.mask = mask;
            sl.cur.words = words;
        } else {
            let old = std::mem::replace(
                &mut sl.cur,
                Version {
                    tick,
                    owner,
                    mask,
                    words,
                },
            );
            let old_tick = old.tick;
            // Archive the replaced state under this tick; ticks older than the window go.
            if self.archive.back().is_none_or(|a| a.tick != tick) {
                while self
                    .archive
                    .front()
                    .is_some_and(|a| horizon.is_after(a.tick))
                {
                    if let Some(mut a) = self.archive.pop_front() {
                        a.versions.clear();
                        a.words.clear();
                        self.spare_archive.push((a.versions, a.words));
                    }
                }
                let (versions, words) = self.spare_archive.pop().unwrap_or_default();
                self.archive.push_back(ArchiveTick {
                    tick,
                    versions,
                    words,
                });
            }
            let oldest = self.archive.front().map_or(tick, |a| a.tick);
            let Some(arch) = self.archive.back_mut() else {
                return;
            };
            let idx = arch.versions.len() as u32;
            arch.versions.push(Archived {
                owner: old.owner,
                mask: old.mask,
                start: arch.words.len() as u32,
                len: old.words.len() as u32,
            });
            arch.words.extend_from_slice(&old.words);
            let sl = &mut self.slots[s as usize];
            // Forget references into ticks that left the archive.
            if sl.history.first().is_some_and(|h| oldest.is_after(h.until)) {
                sl.history.retain(|h| !oldest.is_after(h.until));
            }
            sl.history.push(HistRef {
                tick: old_tick,
                until: tick,
                idx,
            });
        }
        self.mark_changed(s);
    }

    fn mark_changed(&mut self, s: u32) {
        self.revision = self.revision.wrapping_add(1);
        let tick = self.tick;
        self.slots[s as usize].changed = tick;
        if self.logged_at[s as usize] != tick {
            self.logged_at[s as usize] = tick;
            if let Some(e) = self.log.back_mut() {
                e.changed.push(s);
            }
        }
    }

    /// Frees a dead slot no client holds any more.
    pub(crate) fn release_if_unused(&mut self, s: u32) {
        let sl = &mut self.slots[s as usize];
        if sl.alive || sl.refs > 0 {
            return;
        }
        sl.history = SmallVec::new();
        sl.cur = Version::default();
        if self.index.get(sl.id) == Some(&s) {
            self.index.remove(sl.id);
        }
        self.free.push(s);
    }

    /// Log entries after `since` (all held ones when `since` is `None`), oldest first, and
    /// whether the log still covers everything after `since`.
    pub(crate) fn log_after(&self, since: Option<Tick>) -> (impl Iterator<Item = &LogEntry>, bool) {
        let covered = match (since, self.log.front()) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(t), Some(first)) => !first.tick.is_after(t.next()),
        };
        let iter = self
            .log
            .iter()
            .filter(move |e| since.is_none_or(|t| e.tick.is_after(t)));
        (iter, covered)
    }
}

/// Entity id → slot: a direct table for ids up to a few times the number of entities (the
/// common case of ids handed out in order), a hash map for the rest.
#[derive(Debug, Default)]
struct IdIndex {
    dense: Vec<u32>,
    sparse: HashMap<EntityId, u32>,
    len: usize,
}

impl IdIndex {
    const EMPTY: u32 = u32::MAX;

    fn get(&self, id: EntityId) -> Option<&u32> {
        match self.dense.get(id.0 as usize) {
            Some(s) if *s != Self::EMPTY => Some(s),
            Some(_) => None,
            None => self.sparse.get(&id),
        }
    }

    fn insert(&mut self, id: EntityId, slot: u32) {
        let i = id.0 as usize;
        let limit = 4096usize.max(4 * (self.len + 1));
        if i >= self.dense.len() && i < limit {
            let new_len = (i + 1).max(self.dense.len() * 2).min(limit);
            self.dense.resize(new_len, Self::EMPTY);
            // Ids now covered by the table move out of the map.
            let moved: Vec<EntityId> = self
                .sparse
                .keys()
                .copied()
                .filter(|k| (k.0 as usize) < new_len)
                .collect();
            for k in moved {
                if let Some(s) = self.sparse.remove(&k) {
                    self.dense[k.0 as usize] = s;
                }
            }
        }
        let fresh = match self.dense.get_mut(i) {
            Some(d) => std::mem::replace(d, slot) == Self::EMPTY,
            None => self.sparse.insert(id, slot).is_none(),
        };
        if fresh {
            self.len += 1;
        }
    }

    fn remove(&mut self, id: EntityId) {
        let gone = match self.dense.get_mut(id.0 as usize) {
            Some(d) => std::mem::replace(d, Self::EMPTY) != Self::EMPTY,
            None => self.sparse.remove(&id).is_some(),
        };
        if gone {
            self.len -= 1;
        }
    }

    fn memory_bytes(&self) -> usize {
        self.dense.capacity() * 4
            + self.sparse.capacity() * (std::mem::size_of::<(EntityId, u32)>() + 1)
    }
}

/// A live entity of a [`Store`], from [`Store::entity_mut`]: changes without looking it up
/// again.
#[derive(Debug)]
pub struct EntityMut<'s> {
    store: &'s mut Store,
    id: EntityId,
    slot: u32,
}

impl EntityMut<'_> {
    /// The entity's id.
    #[must_use]
    pub fn id(&self) -> EntityId {
        self.id
    }

    /// Like [`Store::set`].
    pub fn set<T: Replicate>(&mut self, value: &T) -> Result<&mut Self, StoreError> {
        self.store.set_in_slot(self.slot, value)?;
        Ok(self)
    }

    /// Like [`Store::set_position`].
    pub fn set_position(&mut self, pos: Option<[f32; 2]>) -> Result<&mut Self, StoreError> {
        self.store.set_slot_position(self.slot, self.id, pos)?;
        Ok(self)
    }
}

/// Word-slice equality without a `memcmp` call (slices here are a few words long).
#[inline]
pub(crate) fn words_eq(a: &[u32], b: &[u32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// Offset and length (in words) of component `cid` within an entity with `mask`.
pub(crate) fn component_range(
    registry: &Registry,
    mask: u64,
    cid: ComponentId,
) -> Option<(usize, usize)> {
    let bit = 1u64.checked_shl(u32::from(cid.0))?;
    if mask & bit == 0 {
        return None;
    }
    let mut off = 0;
    for i in registry.mask_iter(mask) {
        let n = registry.schema_at(i).words();
        if i == usize::from(cid.0) {
            return Some((off, n));
        }
        off += n;
    }
    None
}
