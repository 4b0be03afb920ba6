//! `HecsReplication::sync` against `Store::snapshot()`: every kind of change a hecs world can
//! make reaches the store, and only what changed does.

use statewire_core::{
    ClientConfig, ClientId, ClientReplicator, EntityId, Owner, ServerConfig, ServerReplicator,
    Store, StoreConfig, Tick,
};
use statewire_hecs::{HecsReplication, HecsSink, NetId, NetOwner};
use statewire_testkit::{Hp, X};

/// Server-only.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Secret(u32);

struct Rig {
    repl: HecsReplication,
    world: hecs::World,
    store: Store,
    tick: u32,
}

impl Rig {
    fn new() -> Self {
        let repl = HecsReplication::new()
            .component::<X>()
            .unwrap()
            .component::<Hp>()
            .unwrap();
        let store = Store::new(repl.registry().clone(), StoreConfig::default());
        Rig {
            repl,
            world: hecs::World::new(),
            store,
            tick: 0,
        }
    }

    /// One tick: sync, then the store must equal the whole world. Returns the entities the
    /// store saw change this tick.
    fn tick(&mut self) -> (statewire_hecs::SyncStats, Vec<EntityId>) {
        self.tick += 1;
        self.store.begin_tick(Tick(self.tick)).unwrap();
        let stats = self.repl.sync(&mut self.world, &mut self.store).unwrap();
        assert_eq!(
            self.store.snapshot(),
            self.repl.snapshot(&self.world).unwrap(),
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
        .spawn((NetId(EntityId(1)), NetOwner(Owner::Server), X(1.0), Hp(50)));
    let b = r.world.spawn((NetId(EntityId(2)), X(2.0), Secret(7)));
    // Not replicated: no NetId.
    let c = r.world.spawn((X(3.0),));
    let (stats, _) = r.tick();
    assert_eq!(stats.spawned, 2);
    assert_eq!(r.store.len(), 2);
    assert_eq!(r.store.component::<X>(EntityId(1)), Some(X(1.0)));
    assert_eq!(r.store.component::<Hp>(EntityId(1)), Some(Hp(50)));
    assert_eq!(r.store.owner(EntityId(2)), Some(Owner::Server));
    assert_eq!(r.repl.entity(EntityId(2)), Some(b));

    // Nothing changed: nothing recorded.
    let (stats, changed) = r.tick();
    assert_eq!(stats, statewire_hecs::SyncStats::default());
    assert!(changed.is_empty(), "{changed:?}");

    // A change, on one entity only; the non-replicated entity's change is ignored.
    r.world.get::<&mut X>(a).unwrap().0 = 5.0;
    r.world.get::<&mut X>(c).unwrap().0 = 9.0;
    r.world.get::<&mut Secret>(b).unwrap().0 = 8;
    let (stats, changed) = r.tick();
    assert_eq!(changed, vec![EntityId(1)]);
    assert_eq!(stats.set, 1);
    assert_eq!(r.store.component::<X>(EntityId(1)), Some(X(5.0)));

    // Component removed, then added.
    r.world.remove_one::<Hp>(a).unwrap();
    let (stats, _) = r.tick();
    assert_eq!(stats.removed, 1);
    assert_eq!(r.store.component::<Hp>(EntityId(1)), None);
    r.world.insert_one(b, Hp(10)).unwrap();
    r.tick();
    assert_eq!(r.store.component::<Hp>(EntityId(2)), Some(Hp(10)));

    // Owner: changed, added, removed.
    r.world.get::<&mut NetOwner>(a).unwrap().0 = Owner::Client(ClientId(3));
    let (stats, _) = r.tick();
    assert_eq!(stats.owner_changes, 1);
    assert_eq!(r.store.owner(EntityId(1)), Some(Owner::Client(ClientId(3))));
    r.world
        .insert_one(b, NetOwner(Owner::Client(ClientId(4))))
        .unwrap();
    r.tick();
    assert_eq!(r.store.owner(EntityId(2)), Some(Owner::Client(ClientId(4))));
    r.world.remove_one::<NetOwner>(a).unwrap();
    r.tick();
    assert_eq!(r.store.owner(EntityId(1)), Some(Owner::Server));

    // Despawn through the adapter: no walk.
    assert!(r.repl.despawn(&mut r.world, a));
    let (stats, _) = r.tick();
    assert_eq!((stats.despawned, stats.despawned_unnoticed), (1, 0));
    assert!(!r.store.contains(EntityId(1)));
    assert_eq!(r.repl.entity(EntityId(1)), None);

    // Despawn behind its back, with the id given to a new entity in the same tick.
    r.world.despawn(b).unwrap();
    let b2 = r.world.spawn((NetId(EntityId(2)), X(-4.0)));
    let (stats, _) = r.tick();
    assert_eq!((stats.despawned, stats.despawned_unnoticed), (1, 1));
    assert_eq!(stats.spawned, 1);
    assert_eq!(r.store.component::<Hp>(EntityId(2)), None);
    assert_eq!(r.repl.entity(EntityId(2)), Some(b2));

    // NetId taken away: the entity leaves replication but stays in the world; given a new
    // one, it comes back under that id with the components it has.
    r.world.remove_one::<NetId>(b2).unwrap();
    r.tick();
    assert!(r.store.is_empty());
    r.world.insert_one(b2, NetId(EntityId(9))).unwrap();
    r.tick();
    assert_eq!(r.store.component::<X>(EntityId(9)), Some(X(-4.0)));
    r.world.insert_one(b2, NetId(EntityId(10))).unwrap();
    r.tick();
    assert_eq!(r.store.entity_ids().collect::<Vec<_>>(), vec![EntityId(10)]);

    // A NetId added to an entity whose components were tracked before: they come along.
    r.world.insert_one(c, NetId(EntityId(3))).unwrap();
    r.tick();
    assert_eq!(r.store.component::<X>(EntityId(3)), Some(X(9.0)));
    assert_eq!(r.repl.len(), 2);
}

#[test]
fn spawned_and_despawned_within_a_tick_never_reaches_the_store() {
    let mut r = Rig::new();
    r.tick();
    let e = r.world.spawn((NetId(EntityId(1)), X(0.0)));
    assert!(r.repl.despawn(&mut r.world, e));
    let e = r.world.spawn((NetId(EntityId(2)), X(0.0)));
    r.world.despawn(e).unwrap();
    let (stats, _) = r.tick();
    assert_eq!(stats, statewire_hecs::SyncStats::default());
    assert!(r.store.is_empty());
}

#[test]
fn a_duplicate_net_id_is_an_error() {
    let mut r = Rig::new();
    r.world.spawn((NetId(EntityId(1)),));
    r.world.spawn((NetId(EntityId(1)),));
    r.store.begin_tick(Tick(1)).unwrap();
    assert!(r.repl.sync(&mut r.world, &mut r.store).is_err());
}

/// Sends the store to a client in one packet and applies it to `sink`.
fn replicate(
    store: &mut Store,
    server: &mut ServerReplicator,
    client: &mut ClientReplicator,
    sink: &mut HecsSink,
) {
    server.update(store, None);
    let mut packet = Vec::new();
    server.encode_for(store, ClientId(1), &mut packet).unwrap();
    client
        .handle_packet(store.registry(), &packet, sink)
        .unwrap();
    let ack = client.ack().unwrap();
    server.handle_ack(ClientId(1), ack).unwrap();
}

#[test]
fn the_sink_mirrors_the_server_world_and_gives_back_despawned_entities() {
    let mut r = Rig::new();
    let mut server = ServerReplicator::new(ServerConfig::default());
    server.add_client(ClientId(1)).unwrap();
    server
        .set_packet_budget(ClientId(1), Some(1 << 20))
        .unwrap();
    let mut client = ClientReplicator::new(ClientConfig::default());
    let mut sink = r.repl.sink();
    let mut es: Vec<hecs::Entity> = (0..50)
        .map(|i| {
            r.world
                .spawn((NetId(EntityId(i)), X(i as f32), Hp(i as i64), Secret(1)))
        })
        .collect();
    for round in 0..6u32 {
        r.tick();
        replicate(&mut r.store, &mut server, &mut client, &mut sink);
        assert_eq!(client.snapshot(), r.store.snapshot(), "round {round}");
        assert_eq!(sink.errors(), 0);
        // The client world holds exactly the replicated entities, with their values.
        assert_eq!(sink.len(), r.store.len());
        assert_eq!(sink.world().len() as usize, r.store.len());
        for id in r.store.entity_ids() {
            let e = sink.entity(id).unwrap();
            let w = sink.world();
            assert_eq!(w.get::<&NetId>(e).unwrap().0, id);
            assert_eq!(Some(w.get::<&NetOwner>(e).unwrap().0), r.store.owner(id));
            assert_eq!(w.get::<&X>(e).ok().map(|p| *p), r.store.component::<X>(id));
            assert_eq!(
                w.get::<&Hp>(e).ok().map(|h| *h),
                r.store.component::<Hp>(id)
            );
            assert!(w.get::<&Secret>(e).is_err());
        }
        // Next round: change some, remove some, despawn some.
        for (i, &e) in es.iter().enumerate() {
            if i % 3 == 0 {
                r.world.get::<&mut X>(e).unwrap().0 += 1.0;
            }
            if i % 7 == round as usize {
                let _ = r.world.remove_one::<Hp>(e);
            }
            if i % 11 == 0 {
                r.world
                    .insert_one(e, NetOwner(Owner::Client(ClientId(1))))
                    .unwrap();
            }
        }
        let gone: Vec<_> = es.drain(..8.min(es.len())).collect();
        for e in gone {
            r.repl.despawn(&mut r.world, e);
        }
    }
    r.tick();
    replicate(&mut r.store, &mut server, &mut client, &mut sink);
    // 48 of 50 despawned: the client world is down to 2 entities.
    assert_eq!(sink.world().len(), 2);
    assert_eq!(r.repl.len(), 2);
}
