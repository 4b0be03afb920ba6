//! A whole game over loopback: a `GameServer` whose world is a `hecs::World` synced with
//! `HecsReplication`, and two `GameClient`s each filling a `HecsSink`. Each client moves only
//! its own entity (by writing it); the server moves, spawns, hurts and despawns NPCs. At the
//! end every client's hecs world holds exactly the server's replicated entities and values.

use std::time::Duration;

use statewire::endpoint::{
    GameClient, GameClientConfig, GameServer, GameServerConfig, GameServerEvent, Protocol,
};
use statewire_core::{EntityId, Owner};
use statewire_hecs::{HecsReplication, HecsSink, NetId, NetOwner};
use statewire_testkit::{Hp, Pos};
use statewire_transport::Transport;
use statewire_transport::loopback::{LoopbackConfig, LoopbackEndpoint, LoopbackNet};

/// Server-only marker.
struct Npc;

type Client = GameClient<LoopbackEndpoint, ()>;

#[test]
fn two_clients_converge_on_the_servers_hecs_world() {
    let mut repl = HecsReplication::new()
        .component::<Pos>()
        .unwrap()
        .component::<Hp>()
        .unwrap();
    let protocol = Protocol::from_registry(repl.registry().clone());
    let net = LoopbackNet::new(LoopbackConfig::default());
    let server_t = net.endpoint();
    let addr = server_t.local_addr();
    let mut server: GameServer<LoopbackEndpoint, ()> =
        GameServer::new(server_t, &protocol, GameServerConfig::default()).unwrap();
    let mut world = hecs::World::new();
    let mut next_id = 100u32;
    for i in 0..10 {
        world.spawn((
            NetId(EntityId(next_id)),
            Pos {
                x: i as f32,
                y: 0.0,
            },
            Hp(100),
            Npc,
        ));
        next_id += 1;
    }
    let mut clients: Vec<(Client, HecsSink)> = (0..2)
        .map(|_| {
            let c = GameClient::new(
                net.endpoint(),
                addr,
                &protocol,
                GameClientConfig::default(),
                Duration::ZERO,
            )
            .unwrap();
            (c, repl.sink())
        })
        .collect();

    let (mut joined, mut writes_applied) = (0, 0);
    const FRAMES: u64 = 300;
    const ACTIVE: u64 = 200;
    for frame in 0..FRAMES {
        let now = Duration::from_millis(frame * 33);
        server.update(now).unwrap();
        while let Some(ev) = server.poll_event() {
            match ev {
                GameServerEvent::Joined(c) => {
                    joined += 1;
                    world.spawn((
                        NetId(EntityId(next_id)),
                        NetOwner(Owner::Client(c)),
                        Pos { x: 0.0, y: 0.0 },
                    ));
                    next_id += 1;
                }
                GameServerEvent::WriteApplied {
                    entity, component, ..
                } => {
                    assert!(repl.apply_write(&mut world, server.store(), entity, component));
                    writes_applied += 1;
                }
                GameServerEvent::WriteRejected { reason, .. } => panic!("write refused: {reason}"),
                _ => {}
            }
        }
        if frame < ACTIVE {
            // The server's systems: NPCs drift; every 20 frames one dies, one spawns, one is
            // hurt, one loses or regains its Hp.
            for (pos, _) in world.query_mut::<(&mut Pos, &Npc)>() {
                pos.y = (pos.y + 0.5).min(200.0);
            }
            if frame % 20 == 10 {
                let mut npcs: Vec<(EntityId, hecs::Entity)> = world
                    .query::<(hecs::Entity, &NetId, &Npc)>()
                    .iter()
                    .map(|(e, id, _)| (id.0, e))
                    .collect();
                npcs.sort_unstable();
                let (_, first) = npcs[0];
                assert!(repl.despawn(&mut world, first));
                let (_, second) = npcs[1];
                if let Ok(mut hp) = world.get::<&mut Hp>(second) {
                    hp.0 -= 10;
                }
                let (_, third) = npcs[2];
                if world.remove_one::<Hp>(third).is_err() {
                    world.insert_one(third, Hp(5)).unwrap();
                }
                world.spawn((
                    NetId(EntityId(next_id)),
                    Pos { x: -5.0, y: 0.0 },
                    Hp(100),
                    Npc,
                ));
                next_id += 1;
            }
        }
        repl.sync(&mut world, server.store_mut()).unwrap();
        server.flush(now).unwrap();

        for (c, sink) in &mut clients {
            c.update_with(now, sink).unwrap();
            while c.poll_event().is_some() {}
            // Move only our own entity, reading where it is from our hecs world.
            if frame < ACTIVE {
                for me in c.owned().to_vec() {
                    let e = sink.entity(me).expect("an owned entity is in the world");
                    let p = *sink.world().get::<&Pos>(e).unwrap();
                    let step = if me.0 % 2 == 0 { 0.25 } else { -0.25 };
                    c.write(
                        me,
                        &Pos {
                            x: (p.x + step).clamp(-20.0, 20.0),
                            y: p.y,
                        },
                    )
                    .unwrap();
                }
            }
            c.flush(now).unwrap();
        }
    }

    assert_eq!(joined, 2);
    assert!(writes_applied > 50, "{writes_applied} writes applied");
    // The store missed nothing the world did, and the players moved.
    let snapshot = server.store().snapshot();
    assert_eq!(repl.snapshot(&world).unwrap(), snapshot);
    let players: Vec<Pos> = world
        .query::<(&Pos, &NetOwner)>()
        .iter()
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(players.len(), 2);
    assert!(players.iter().all(|p| p.x.abs() == 20.0), "{players:?}");
    for (c, sink) in &clients {
        assert_eq!(c.snapshot(), snapshot);
        assert_eq!(sink.errors(), 0);
        let w = sink.world();
        assert_eq!(w.len() as usize, snapshot.len());
        for id in snapshot.entity_ids() {
            let e = sink.entity(id).expect("every replicated entity");
            assert_eq!(w.get::<&NetId>(e).unwrap().0, id);
            assert_eq!(Some(w.get::<&NetOwner>(e).unwrap().0), snapshot.owner(id));
            assert_eq!(
                w.get::<&Pos>(e).ok().map(|p| *p),
                snapshot.component::<Pos>(repl.registry(), id)
            );
            assert_eq!(
                w.get::<&Hp>(e).ok().map(|h| *h),
                snapshot.component::<Hp>(repl.registry(), id)
            );
            assert!(w.get::<&Npc>(e).is_err());
        }
    }
}
