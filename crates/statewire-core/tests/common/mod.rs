//! The shared test components and a plain-Vec world for the integration tests.
#![allow(dead_code, unreachable_pub)]

use statewire_core::*;

/// The components (`Pos`, `Rot`, `Health`) and their registry are the testkit's, shared with
/// the fuzz targets and the benchmarks.
pub use statewire_testkit::{Health, Pos, Rot, registry};

/// The same components, with positions and health range-coded.
pub fn registry_entropy() -> Registry {
    let mut r = registry();
    r.set_coding::<Pos>(ComponentCoding::Entropy).unwrap();
    r.set_coding::<Health>(ComponentCoding::Entropy).unwrap();
    r
}

/// One entity of the plain world: optional components.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Ent {
    pub id: u32,
    pub owner: Option<u64>,
    pub pos: Option<Pos>,
    pub rot: Option<Rot>,
    pub health: Option<Health>,
}

/// A world that is just a Vec: enough to drive the core from both sides.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VecWorld {
    pub ents: Vec<Ent>,
}

fn owner_of(e: &Ent) -> Owner {
    match e.owner {
        Some(c) => Owner::Client(ClientId(c)),
        None => Owner::Server,
    }
}

impl WorldSource for VecWorld {
    fn build(&self, b: &mut SnapshotBuilder<'_>) {
        for e in &self.ents {
            let mut eb = b.entity(EntityId(e.id), owner_of(e));
            if let Some(p) = &e.pos {
                eb.component(p);
            }
            if let Some(r) = &e.rot {
                eb.component(r);
            }
            if let Some(h) = &e.health {
                eb.component(h);
            }
        }
    }
}

impl VecWorld {
    pub fn snapshot(&self, registry: &Registry) -> Snapshot {
        let mut b = SnapshotBuilder::new(registry);
        self.build(&mut b);
        b.finish().unwrap()
    }

    /// The world a client should see for `snap`: every entity with its dequantized components.
    /// (Comparing dequantized worlds rather than re-quantizing them: smallest-three
    /// quaternions that tie on their largest component do not re-quantize to the same word.)
    pub fn from_snapshot(registry: &Registry, snap: &Snapshot) -> VecWorld {
        let mut ents: Vec<Ent> = snap
            .entity_ids()
            .map(|id| Ent {
                id: id.0,
                owner: match snap.owner(id) {
                    Some(Owner::Client(c)) => Some(c.0),
                    _ => None,
                },
                pos: snap.component::<Pos>(registry, id),
                rot: snap.component::<Rot>(registry, id),
                health: snap.component::<Health>(registry, id),
            })
            .collect();
        ents.sort_by_key(|e| e.id);
        VecWorld { ents }
    }

    /// Entities sorted by id, for comparisons.
    pub fn sorted(&self) -> VecWorld {
        let mut w = self.clone();
        w.ents.sort_by_key(|e| e.id);
        w
    }

    fn get(&mut self, id: EntityId) -> &mut Ent {
        let i = self
            .ents
            .iter()
            .position(|e| e.id == id.0)
            .expect("sink got an unknown id");
        &mut self.ents[i]
    }
}

impl WorldSink for VecWorld {
    fn spawn(&mut self, id: EntityId, owner: Owner) {
        assert!(
            self.ents.iter().all(|e| e.id != id.0),
            "double spawn of {id}"
        );
        self.ents.push(Ent {
            id: id.0,
            owner: match owner {
                Owner::Client(c) => Some(c.0),
                _ => None,
            },
            ..Ent::default()
        });
    }
    fn despawn(&mut self, id: EntityId) {
        let before = self.ents.len();
        self.ents.retain(|e| e.id != id.0);
        assert_eq!(before, self.ents.len() + 1, "despawn of unknown {id}");
    }
    fn set_owner(&mut self, id: EntityId, owner: Owner) {
        self.get(id).owner = match owner {
            Owner::Client(c) => Some(c.0),
            _ => None,
        };
    }
    fn insert(&mut self, id: EntityId, c: ComponentView<'_>) {
        let e = self.get(id);
        if let Some(p) = c.get::<Pos>() {
            e.pos = Some(p);
        } else if let Some(r) = c.get::<Rot>() {
            e.rot = Some(r);
        } else if let Some(h) = c.get::<Health>() {
            e.health = Some(h);
        } else {
            panic!("unknown component {}", c.id());
        }
    }
    fn remove(&mut self, id: EntityId, c: ComponentView<'_>) {
        let e = self.get(id);
        if c.is::<Pos>() {
            e.pos = None;
        } else if c.is::<Rot>() {
            e.rot = None;
        } else if c.is::<Health>() {
            e.health = None;
        } else {
            panic!("unknown component {}", c.id());
        }
    }
}
