//! `ServerSync` on a `World` driven by hand, against `Store::snapshot()`: every kind of change
//! reaches the store, found with bevy's change detection, and only what changed does.

use bevy_ecs::prelude::*;
use statewire_bevy::{NetId, NetOwner, Replicated, ReplicationRules, ServerSync, SyncStats};
use statewire_core::{
    ClientConfig, ClientId, ClientReplicator, EntityId, Owner, ServerConfig, ServerReplicator,
    Store, StoreConfig, Tick,
};
use statewire_testkit::{Hp, X};

/// Server-only.
#[derive(Component, Debug, Clone, Copy, PartialEq)]
struct Secret(u32);

struct Rig {
    rules: ReplicationRules,
    sync: ServerSync,
    world: World,
    store: Store,
    tick: u32,
}

impl Rig {
    fn new() -> Self {
        let rules = ReplicationRules::new()
            .with::<X>()
            .unwrap()
            .with::<Hp>()
            .unwrap();
        let store = Store::new(rules.registry().clone(), StoreConfig::default());
        let mut world = World::new();
        rules.register_components(&mut world);
        Rig {
            sync: ServerSync::new(&rules),
            rules,
            world,
            store,
            tick: 0,
        }
    }

    /// One tick: sync (then clear the removal buffers, as an app does), and the store must
    /// equal the whole world. Returns the entities the store saw change this tick.
    fn tick(&mut self) -> (SyncStats, Vec<EntityId>) {
        self.tick += 1;
        self.store.begin_tick(Tick(self.tick)).unwrap();
        let stats = self.sync.sync(&mut self.world, &mut self.store).unwrap();
        self.world.clear_trackers();
        assert_eq!(
            self.store.snapshot(),
            self.sync.snapshot(&mut self.world).unwrap(),
            "tick {}",
            self.tick
        );
        let changed = self
            .store
            .entity_ids()
            .filter(|&id| self.store.changed_at(id) == Some(Tick(self.tick)))
            .collect();
        (stats, changed)
    }
}

#[test]
fn spawn_change_remove_despawn_and_owner_reach_the_store() {
    let mut r = Rig::new();
    let a = r
        .world
        .spawn((NetId(EntityId(1)), NetOwner(Owner::Server), X(1.0), Hp(50)))
        .id();
    let b = r.world.spawn((NetId(EntityId(2)), X(2.0), Secret(7))).id();
    let c = r.world.spawn(X(3.0)).id();
    let (stats, _) = r.tick();
    assert_eq!(stats.spawned, 2);
    assert_eq!(r.store.component::<Hp>(EntityId(1)), Some(Hp(50)));
    assert_eq!(r.store.owner(EntityId(2)), Some(Owner::Server));
    assert_eq!(r.sync.entity(EntityId(2)), Some(b));

    // Nothing changed: nothing recorded.
    let (stats, changed) = r.tick();
    assert_eq!(stats, SyncStats::default());
    assert!(changed.is_empty(), "{changed:?}");

    // A mutable access that writes the same value is no change for the store.
    r.world.get_mut::<X>(a).unwrap().0 = 1.0;
    let (_, changed) = r.tick();
    assert!(changed.is_empty(), "{changed:?}");

    // One change; a non-replicated entity's and a server-only component's are ignored.
    r.world.get_mut::<X>(a).unwrap().0 = 5.0;
    r.world.get_mut::<X>(c).unwrap().0 = 9.0;
    r.world.get_mut::<Secret>(b).unwrap().0 = 8;
    let (_, changed) = r.tick();
    assert_eq!(changed, vec![EntityId(1)]);
    assert_eq!(r.store.component::<X>(EntityId(1)), Some(X(5.0)));

    // Removed; added; removed and given back within one tick.
    r.world.entity_mut(a).remove::<Hp>();
    let (stats, _) = r.tick();
    assert_eq!(stats.removed, 1);
    assert_eq!(r.store.component::<Hp>(EntityId(1)), None);
    r.world.entity_mut(b).insert(Hp(10));
    r.tick();
    assert_eq!(r.store.component::<Hp>(EntityId(2)), Some(Hp(10)));
    r.world.entity_mut(b).remove::<Hp>();
    r.world.entity_mut(b).insert(Hp(11));
    r.tick();
    assert_eq!(r.store.component::<Hp>(EntityId(2)), Some(Hp(11)));

    // Owner: changed, added, removed.
    r.world.get_mut::<NetOwner>(a).unwrap().0 = Owner::Client(ClientId(3));
    let (stats, _) = r.tick();
    assert_eq!(stats.owner_changes, 1);
    assert_eq!(r.store.owner(EntityId(1)), Some(Owner::Client(ClientId(3))));
    r.world
        .entity_mut(b)
        .insert(NetOwner(Owner::Client(ClientId(4))));
    r.tick();
    assert_eq!(r.store.owner(EntityId(2)), Some(Owner::Client(ClientId(4))));
    r.world.entity_mut(a).remove::<NetOwner>();
    r.tick();
    assert_eq!(r.store.owner(EntityId(1)), Some(Owner::Server));

    // Despawn, with the id given to a new entity in the same tick.
    r.world.despawn(a);
    let a2 = r.world.spawn((NetId(EntityId(1)), X(-4.0))).id();
    let (stats, _) = r.tick();
    assert_eq!((stats.despawned, stats.spawned), (1, 1));
    assert_eq!(r.store.component::<Hp>(EntityId(1)), None);
    assert_eq!(r.sync.entity(EntityId(1)), Some(a2));

    // NetId taken away: leaves replication, stays in the world; a new one: back, with what it
    // has; replaced: despawned under the old id, spawned under the new.
    r.world.entity_mut(a2).remove::<NetId>();
    r.tick();
    assert!(!r.store.contains(EntityId(1)));
    r.world.entity_mut(a2).insert(NetId(EntityId(9)));
    r.tick();
    assert_eq!(r.store.component::<X>(EntityId(9)), Some(X(-4.0)));
    r.world.entity_mut(a2).insert(NetId(EntityId(10)));
    r.tick();
    assert!(!r.store.contains(EntityId(9)));
    assert_eq!(r.store.component::<X>(EntityId(10)), Some(X(-4.0)));

    // A NetId added to an entity whose components were already there: they come along.
    r.world.entity_mut(c).insert(NetId(EntityId(3)));
    r.tick();
    assert_eq!(r.store.component::<X>(EntityId(3)), Some(X(9.0)));
    assert_eq!(r.sync.len(), 3);
}

#[test]
fn replicated_entities_get_free_ids() {
    let mut r = Rig::new();
    r.world.spawn((NetId(EntityId(1)), X(0.0)));
    let x = r.world.spawn((Replicated, X(1.0))).id();
    let y = r
        .world
        .spawn((Replicated, NetOwner(Owner::Client(ClientId(2)))))
        .id();
    let (stats, _) = r.tick();
    assert_eq!((stats.ids_assigned, stats.spawned), (2, 3));
    let ix = r.world.get::<NetId>(x).unwrap().0;
    let iy = r.world.get::<NetId>(y).unwrap().0;
    assert!(ix != iy && ix != EntityId(1) && iy != EntityId(1));
    assert_eq!(r.store.owner(iy), Some(Owner::Client(ClientId(2))));
    // Once assigned, the id stays.
    let (stats, changed) = r.tick();
    assert_eq!(stats, SyncStats::default());
    assert!(changed.is_empty());
}

#[test]
fn spawned_and_despawned_within_a_tick_never_reaches_the_store() {
    let mut r = Rig::new();
    r.tick();
    let e = r.world.spawn((NetId(EntityId(1)), X(0.0))).id();
    r.world.despawn(e);
    let (stats, _) = r.tick();
    assert_eq!(stats, SyncStats::default());
    assert!(r.store.is_empty());
}

#[test]
fn a_client_write_reaches_the_world() {
    let mut r = Rig::new();
    let e = r.world.spawn((NetId(EntityId(1)), X(0.0))).id();
    r.tick();
    // What GameServer does with a validated write: straight into the store.
    r.store.begin_tick(Tick(100)).unwrap();
    r.store.set(EntityId(1), &X(7.0)).unwrap();
    let cid = r.rules.registry().id_of::<X>().unwrap();
    assert!(r.sync.apply_write(&mut r.world, &r.store, EntityId(1), cid));
    assert_eq!(r.world.get::<X>(e), Some(&X(7.0)));
    r.tick = 100;
    // The world now agrees with the store; the next sync changes nothing.
    let (_, changed) = r.tick();
    assert!(changed.is_empty());
}

#[test]
fn the_sink_mirrors_the_server_world_and_gives_back_despawned_entities() {
    use statewire_bevy::{BevySink, NetEntities, Owned};
    let mut r = Rig::new();
    let mut server = ServerReplicator::new(ServerConfig::default());
    server.add_client(ClientId(1)).unwrap();
    server
        .set_packet_budget(ClientId(1), Some(1 << 20))
        .unwrap();
    let mut client = ClientReplicator::new(ClientConfig::default());
    let mut cworld = World::new();
    r.rules.register_components(&mut cworld);
    let mut entities = NetEntities::default();
    // The world's own entities (its resources, in bevy 0.19).
    let base = cworld.entities().count_spawned() as usize;
    let mut es: Vec<Entity> = (0..50)
        .map(|i| {
            r.world
                .spawn((NetId(EntityId(i)), X(i as f32), Hp(i as i64), Secret(1)))
                .id()
        })
        .collect();
    for round in 0..7u32 {
        r.tick();
        server.update(&mut r.store, None);
        let mut packet = Vec::new();
        server
            .encode_for(&r.store, ClientId(1), &mut packet)
            .unwrap();
        let mut sink = BevySink::new(&mut cworld, &mut entities, &r.rules, Some(ClientId(1)));
        client
            .handle_packet(r.rules.registry(), &packet, &mut sink)
            .unwrap();
        server
            .handle_ack(ClientId(1), client.ack().unwrap())
            .unwrap();
        assert_eq!(client.snapshot(), r.store.snapshot(), "round {round}");
        assert_eq!(entities.errors(), 0);
        assert_eq!(entities.len(), r.store.len());
        assert_eq!(
            cworld.entities().count_spawned() as usize - base,
            r.store.len()
        );
        for id in r.store.entity_ids() {
            let e = entities.get(id).unwrap();
            assert_eq!(cworld.get::<NetId>(e).unwrap().0, id);
            let owner = cworld.get::<NetOwner>(e).unwrap().0;
            assert_eq!(Some(owner), r.store.owner(id));
            assert_eq!(
                cworld.get::<Owned>(e).is_some(),
                owner == Owner::Client(ClientId(1))
            );
            assert_eq!(cworld.get::<X>(e).copied(), r.store.component::<X>(id));
            assert_eq!(cworld.get::<Hp>(e).copied(), r.store.component::<Hp>(id));
            assert!(cworld.get::<Secret>(e).is_none());
        }
        if round == 6 {
            break;
        }
        for (i, &e) in es.iter().enumerate() {
            if i % 3 == 0 {
                r.world.get_mut::<X>(e).unwrap().0 += 1.0;
            }
            if i % 7 == round as usize {
                r.world.entity_mut(e).remove::<Hp>();
            }
            if i % 11 == round as usize {
                let o = if round % 2 == 0 {
                    Owner::Client(ClientId(1))
                } else {
                    Owner::Server
                };
                r.world.entity_mut(e).insert(NetOwner(o));
            }
        }
        for e in es.drain(..8) {
            r.world.despawn(e);
        }
    }
    assert_eq!(entities.len(), 2);
}
