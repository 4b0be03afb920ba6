//! Quantized world state and the traits an engine implements to feed and receive it.

use crate::ids::{EntityId, Owner};
use crate::schema::{ComponentId, ComponentView, Registry, Replicate, SchemaError};

/// One entity inside a [`Snapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntityEntry {
    pub(crate) id: EntityId,
    pub(crate) owner: Owner,
    /// Bit `i` set: the entity has component `ComponentId(i)`.
    pub(crate) mask: u64,
    /// First quantized word in [`Snapshot::words`]; components follow in ascending id order.
    pub(crate) start: u32,
    pub(crate) len: u32,
}

/// The quantized state of a set of entities at one moment: what the server replicates and
/// what a client holds after applying a snapshot.
///
/// Entities are kept sorted by id; two snapshots compare equal when they hold the same entities
/// with the same owners, components and quantized values.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub(crate) entities: Vec<EntityEntry>,
    pub(crate) words: Vec<u32>,
}

impl PartialEq for Snapshot {
    fn eq(&self, other: &Self) -> bool {
        self.entities.len() == other.entities.len()
            && self.entities.iter().zip(&other.entities).all(|(a, b)| {
                a.id == b.id
                    && a.owner == b.owner
                    && a.mask == b.mask
                    && self.entity_words(a) == other.entity_words(b)
            })
    }
}

impl Eq for Snapshot {}

impl Snapshot {
    /// A snapshot with no entities.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entities.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entities.len()
    }

    /// Whether there are no entities.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }

    /// Entity ids, ascending.
    pub fn entity_ids(&self) -> impl ExactSizeIterator<Item = EntityId> + '_ {
        self.entities.iter().map(|e| e.id)
    }

    /// Whether `id` is present.
    #[must_use]
    pub fn contains(&self, id: EntityId) -> bool {
        self.find(id).is_some()
    }

    /// The owner of `id`, if present.
    #[must_use]
    pub fn owner(&self, id: EntityId) -> Option<Owner> {
        self.find(id).map(|e| e.owner)
    }

    /// Dequantized component `T` of entity `id`.
    #[must_use]
    pub fn component<T: Replicate>(&self, registry: &Registry, id: EntityId) -> Option<T> {
        let cid = registry.id_of::<T>()?;
        self.component_view(registry, id, cid)?.get::<T>()
    }

    /// Quantized view of component `cid` of entity `id`.
    #[must_use]
    pub fn component_view<'a>(
        &'a self,
        registry: &'a Registry,
        id: EntityId,
        cid: ComponentId,
    ) -> Option<ComponentView<'a>> {
        let e = self.find(id)?;
        let bit = 1u64.checked_shl(u32::from(cid.0))?;
        if e.mask & bit == 0 {
            return None;
        }
        let mut offset = e.start as usize;
        for i in registry.mask_iter(e.mask) {
            let n = registry.schema_at(i).words();
            if i == usize::from(cid.0) {
                return Some(ComponentView {
                    registry,
                    id: cid,
                    words: &self.words[offset..offset + n],
                });
            }
            offset += n;
        }
        None
    }

    /// A stable 64-bit digest of the whole quantized state (FNV-1a), for cheap equality checks
    /// across processes.
    #[must_use]
    pub fn state_hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |v: u64| {
            for b in v.to_le_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        for e in &self.entities {
            eat(u64::from(e.id.0));
            eat(match e.owner {
                Owner::Server => u64::MAX,
                Owner::Client(c) => c.0,
            });
            eat(e.mask);
            for &w in self.entity_words(e) {
                eat(u64::from(w));
            }
        }
        h
    }

    pub(crate) fn find_index(&self, id: EntityId) -> Result<usize, usize> {
        self.entities.binary_search_by_key(&id, |e| e.id)
    }

    fn find(&self, id: EntityId) -> Option<&EntityEntry> {
        self.find_index(id).ok().map(|i| &self.entities[i])
    }

    pub(crate) fn entity_words(&self, e: &EntityEntry) -> &[u32] {
        &self.words[e.start as usize..(e.start + e.len) as usize]
    }

    pub(crate) fn clear(&mut self) {
        self.entities.clear();
        self.words.clear();
    }

    /// Appends an entity; callers keep ids ascending.
    pub(crate) fn push(&mut self, id: EntityId, owner: Owner, mask: u64, words: &[u32]) {
        debug_assert!(self.entities.last().is_none_or(|l| l.id < id));
        self.entities.push(EntityEntry {
            id,
            owner,
            mask,
            start: self.words.len() as u32,
            len: words.len() as u32,
        });
        self.words.extend_from_slice(words);
    }

    /// Tells `sink` how to turn the state `self` into `next`.
    pub fn diff_into<S: WorldSink + ?Sized>(
        &self,
        next: &Snapshot,
        registry: &Registry,
        sink: &mut S,
    ) {
        self.diff_phase(next, registry, sink, true, true);
    }

    /// Like [`Snapshot::diff_into`], limited to spawns and updates (`upserts`) and/or despawns.
    pub(crate) fn diff_phase<S: WorldSink + ?Sized>(
        &self,
        next: &Snapshot,
        registry: &Registry,
        sink: &mut S,
        upserts: bool,
        despawns: bool,
    ) {
        let (mut i, mut j) = (0, 0);
        while i < self.entities.len() || j < next.entities.len() {
            let a = self.entities.get(i);
            let b = next.entities.get(j);
            match (a, b) {
                (Some(a), Some(b)) if a.id == b.id => {
                    if upserts {
                        if a.owner != b.owner {
                            sink.set_owner(b.id, b.owner);
                        }
                        self.diff_components(a, next, b, registry, sink);
                    }
                    i += 1;
                    j += 1;
                }
                (Some(a), Some(b)) if b.id < a.id => {
                    if upserts {
                        Self::spawn_into(next, b, registry, sink);
                    }
                    j += 1;
                }
                (Some(a), _) => {
                    if despawns {
                        sink.despawn(a.id);
                    }
                    i += 1;
                }
                (None, Some(b)) => {
                    if upserts {
                        Self::spawn_into(next, b, registry, sink);
                    }
                    j += 1;
                }
                (None, None) => break,
            }
        }
    }

    fn spawn_into<S: WorldSink + ?Sized>(
        next: &Snapshot,
        b: &EntityEntry,
        registry: &Registry,
        sink: &mut S,
    ) {
        sink.spawn(b.id, b.owner);
        Snapshot::new().diff_components(&EMPTY, next, b, registry, sink);
    }

    fn diff_components<S: WorldSink + ?Sized>(
        &self,
        a: &EntityEntry,
        next: &Snapshot,
        b: &EntityEntry,
        registry: &Registry,
        sink: &mut S,
    ) {
        let (wa, wb) = (self.entity_words(a), next.entity_words(b));
        let (mut oa, mut ob) = (0, 0);
        for i in registry.mask_iter(a.mask | b.mask) {
            let n = registry.schema_at(i).words();
            let bit = 1u64 << i;
            let cid = ComponentId(i as u16);
            let view = |words| ComponentView {
                registry,
                id: cid,
                words,
            };
            match (a.mask & bit != 0, b.mask & bit != 0) {
                (true, true) => {
                    if wa[oa..oa + n] != wb[ob..ob + n] {
                        sink.insert(b.id, view(&wb[ob..ob + n]));
                    }
                    oa += n;
                    ob += n;
                }
                (true, false) => {
                    sink.remove(b.id, view(&wa[oa..oa + n]));
                    oa += n;
                }
                (false, true) => {
                    sink.insert(b.id, view(&wb[ob..ob + n]));
                    ob += n;
                }
                (false, false) => {}
            }
        }
    }
}

const EMPTY: EntityEntry = EntityEntry {
    id: EntityId(0),
    owner: Owner::Server,
    mask: 0,
    start: 0,
    len: 0,
};

/// Errors from [`SnapshotBuilder`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A component could not be quantized.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The same entity id was added twice.
    #[error("entity {0} added twice")]
    DuplicateEntity(EntityId),
    /// The same component was added twice to one entity.
    #[error("entity {0} has component {1} twice")]
    DuplicateComponent(EntityId, ComponentId),
}

/// Collects the replicated state of a world, in any order, into a [`Snapshot`].
#[derive(Debug)]
pub struct SnapshotBuilder<'r> {
    registry: &'r Registry,
    entities: Vec<(EntityId, Owner, u32)>,
    /// (entity index, component, first word in `scratch`)
    components: Vec<(u32, ComponentId, u32)>,
    scratch: Vec<u32>,
    error: Option<BuildError>,
}

impl<'r> SnapshotBuilder<'r> {
    /// An empty builder quantizing with `registry`.
    #[must_use]
    pub fn new(registry: &'r Registry) -> Self {
        SnapshotBuilder {
            registry,
            entities: Vec::new(),
            components: Vec::new(),
            scratch: Vec::new(),
            error: None,
        }
    }

    /// Starts entity `id`; add its components on the returned handle.
    pub fn entity(&mut self, id: EntityId, owner: Owner) -> EntityBuilder<'_, 'r> {
        let index = self.entities.len() as u32;
        self.entities.push((id, owner, index));
        EntityBuilder {
            builder: self,
            index,
        }
    }

    /// Sorts and checks what was added. Reuses `out`'s allocations.
    pub fn finish_into(&mut self, out: &mut Snapshot) -> Result<(), BuildError> {
        out.clear();
        if let Some(e) = self.error.take() {
            self.reset();
            return Err(e);
        }
        self.entities.sort_unstable_by_key(|e| e.0);
        if let Some(w) = self.entities.windows(2).find(|w| w[0].0 == w[1].0) {
            let id = w[0].0;
            self.reset();
            return Err(BuildError::DuplicateEntity(id));
        }
        self.components.sort_unstable_by_key(|c| (c.0, c.1));
        let mut words = Vec::new();
        for &(id, owner, index) in &self.entities {
            // `components` is sorted by (entity index, component id); find this entity's run.
            let mut k = self.components.partition_point(|c| c.0 < index);
            let mut mask = 0u64;
            words.clear();
            while k < self.components.len() && self.components[k].0 == index {
                let (_, cid, start) = self.components[k];
                let bit = 1u64 << cid.0;
                if mask & bit != 0 {
                    self.reset();
                    return Err(BuildError::DuplicateComponent(id, cid));
                }
                mask |= bit;
                let n = self.registry.schema_at(usize::from(cid.0)).words();
                words.extend_from_slice(&self.scratch[start as usize..start as usize + n]);
                k += 1;
            }
            out.push(id, owner, mask, &words);
        }
        self.reset();
        Ok(())
    }

    /// Like [`SnapshotBuilder::finish_into`], returning a new snapshot.
    pub fn finish(&mut self) -> Result<Snapshot, BuildError> {
        let mut s = Snapshot::new();
        self.finish_into(&mut s)?;
        Ok(s)
    }

    fn reset(&mut self) {
        self.entities.clear();
        self.components.clear();
        self.scratch.clear();
        self.error = None;
    }
}

/// Adds components to one entity of a [`SnapshotBuilder`].
#[derive(Debug)]
pub struct EntityBuilder<'b, 'r> {
    builder: &'b mut SnapshotBuilder<'r>,
    index: u32,
}

impl EntityBuilder<'_, '_> {
    /// Adds component `value`. Errors (an unregistered type, values that do not fit the schema)
    /// are also reported by [`SnapshotBuilder::finish`].
    pub fn component<T: Replicate>(&mut self, value: &T) -> &mut Self {
        let b = &mut *self.builder;
        let start = b.scratch.len() as u32;
        match b.registry.quantize(value, &mut b.scratch) {
            Ok(cid) => b.components.push((self.index, cid, start)),
            Err(e) => {
                b.error.get_or_insert(BuildError::Schema(e));
            }
        }
        self
    }
}

/// What a server-side engine implements if it can list its world but not its changes: write
/// its replicated entities into a builder. [`Store::apply_source`](crate::Store::apply_source)
/// builds the snapshot and records only what differs.
pub trait WorldSource {
    /// Adds every replicated entity with its owner and components.
    fn build(&self, builder: &mut SnapshotBuilder<'_>);
}

/// What a client-side engine implements: apply replicated changes to its world.
///
/// Calls for one packet come in two runs, each in entity-id order: first, for a new entity
/// `spawn` then one `insert` per component, and for a changed entity `set_owner` / `insert` /
/// `remove` as needed; then (after the packet's events, see
/// [`EventSink`](crate::EventSink)) `despawn` for each removed one.
pub trait WorldSink {
    /// Entity `id` appeared.
    fn spawn(&mut self, id: EntityId, owner: Owner);
    /// Entity `id` is gone.
    fn despawn(&mut self, id: EntityId);
    /// Entity `id` changed owner. The default does nothing.
    fn set_owner(&mut self, id: EntityId, owner: Owner) {
        let _ = (id, owner);
    }
    /// Component added to entity `id`, or its value changed. Use [`ComponentView::get`].
    fn insert(&mut self, id: EntityId, component: ComponentView<'_>);
    /// Component removed from entity `id`; `component` holds its last value (use
    /// [`ComponentView::is`] to tell which type it was).
    fn remove(&mut self, id: EntityId, component: ComponentView<'_>);
}
