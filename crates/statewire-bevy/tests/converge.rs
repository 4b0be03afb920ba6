//! A whole game with the plugins over loopback: a server app and two client apps. Each client
//! moves only its own player, by input (`LocalInput`) and by writing its own `Aim` (through
//! `NetClient::write`); the server's systems move, spawn, hurt, despawn and hand over NPCs.
//! At the end every client's world holds exactly the server's replicated entities and values,
//! and the server's store equals a snapshot rebuilt from its whole world.

use std::time::Duration;

use bevy_app::prelude::*;
use bevy_ecs::prelude::*;
use statewire::endpoint::{
    GameClient, GameClientConfig, GameServer, GameServerConfig, GameServerEvent,
};
use statewire_bevy::*;
use statewire_core::{ClientId, Owner};
use statewire_testkit::{Aim, Hp, Pos};
use statewire_transport::Transport;
use statewire_transport::loopback::{LoopbackConfig, LoopbackEndpoint, LoopbackNet};

/// Server-only marker.
#[derive(Component)]
struct Npc;

/// A step along x, or none.
type Input = i8;
type Net = LoopbackEndpoint;

const FRAMES: u64 = 300;
const ACTIVE: u64 = 200;
const LIMIT: f32 = 10.0;

/// The frame number, which both sides' systems read.
#[derive(Resource, Default)]
struct Frame(u64);

/// Which way this client walks.
#[derive(Resource)]
struct Walk(Input);

// bevy systems spell their queries out; that is the idiom.
#[allow(clippy::type_complexity)]
fn server_game(
    frame: Res<Frame>,
    mut events: MessageReader<ServerEvent<Input>>,
    mut commands: Commands,
    mut players: Query<(&NetOwner, &mut Pos), Without<Npc>>,
    mut npcs: Query<(Entity, &NetId, &mut Pos, Option<&mut Hp>, &mut NetOwner), With<Npc>>,
    net: Res<NetServer<Net, Input>>,
) {
    for ServerEvent(ev) in events.read() {
        match ev {
            GameServerEvent::Joined(c) => {
                commands.spawn((
                    Replicated,
                    NetOwner(Owner::Client(*c)),
                    Pos { x: 0.0, y: 0.0 },
                    Aim(0.0),
                ));
            }
            GameServerEvent::Input { client, input, .. } => {
                for (owner, mut pos) in &mut players {
                    if owner.0 == Owner::Client(*client) {
                        pos.x = (pos.x + f32::from(*input) * 0.25).clamp(-LIMIT, LIMIT);
                    }
                }
            }
            GameServerEvent::WriteRejected { reason, .. } => panic!("write refused: {reason}"),
            _ => {}
        }
    }
    let f = frame.0;
    if f == 0 {
        for i in 0..10 {
            commands.spawn((
                Replicated,
                Npc,
                NetOwner(Owner::Server),
                Pos {
                    x: i as f32,
                    y: 0.0,
                },
                Hp(100),
            ));
        }
    }
    if f >= ACTIVE {
        return;
    }
    for (_, _, mut pos, _, _) in &mut npcs {
        pos.y = (pos.y + 0.5).min(200.0);
    }
    if f % 20 == 10 {
        let mut sorted: Vec<_> = npcs.iter().map(|(e, id, ..)| (id.0, e)).collect();
        sorted.sort_unstable();
        commands.entity(sorted[0].1).despawn();
        if let Ok((_, _, _, Some(mut hp), _)) = npcs.get_mut(sorted[1].1) {
            hp.0 -= 10;
        }
        let third = sorted[2].1;
        if npcs.get(third).is_ok_and(|n| n.3.is_some()) {
            commands.entity(third).remove::<Hp>();
        } else {
            commands.entity(third).insert(Hp(5));
        }
        // Hand the fourth NPC over: server → first client → second client → server.
        let clients = net.clients().to_vec();
        if let Ok((.., mut owner)) = npcs.get_mut(sorted[3].1) {
            owner.0 = match owner.0 {
                Owner::Server => clients.first().map_or(Owner::Server, |&c| Owner::Client(c)),
                Owner::Client(c) if clients.first() == Some(&c) => {
                    clients.get(1).map_or(Owner::Server, |&c| Owner::Client(c))
                }
                _ => Owner::Server,
            };
        }
        commands.spawn((
            Replicated,
            Npc,
            NetOwner(Owner::Server),
            Pos { x: -5.0, y: 0.0 },
            Hp(100),
        ));
    }
}

fn client_controls(
    frame: Res<Frame>,
    walk: Res<Walk>,
    mut input: ResMut<LocalInput<Input>>,
    mine: Query<(&NetId, &Aim), With<Owned>>,
    mut net: ResMut<NetClient<Net, Input>>,
) {
    let active = frame.0 < ACTIVE;
    input.0 = Some(if active { walk.0 } else { 0 });
    if active {
        for (id, aim) in &mine {
            let next = Aim((aim.0 + 0.05 * f32::from(walk.0)).clamp(-2.0, 2.0));
            net.write(id.0, &next).expect("we own it");
        }
    }
}

fn replicate_all(app: &mut App) -> &mut App {
    app.replicate::<Pos>().replicate::<Hp>().replicate::<Aim>()
}

#[test]
fn two_client_apps_converge_on_the_server_app() {
    let net = LoopbackNet::new(LoopbackConfig::default());
    let server_t = net.endpoint();
    let addr = server_t.local_addr();

    let mut server = App::new();
    server.add_plugins(StatewireServerPlugin::<Net, Input>::default());
    replicate_all(&mut server)
        .init_resource::<Frame>()
        .add_systems(Update, server_game);
    let endpoint =
        GameServer::<_, Input>::new(server_t, &server.protocol(), GameServerConfig::default())
            .unwrap();
    server.insert_resource(NetServer::new(endpoint));

    let mut clients: Vec<App> = [1, -1]
        .into_iter()
        .map(|walk| {
            let mut app = App::new();
            app.add_plugins(StatewireClientPlugin::<Net, Input>::default());
            replicate_all(&mut app)
                .init_resource::<Frame>()
                .insert_resource(Walk(walk))
                .add_systems(Update, client_controls);
            let endpoint = GameClient::<_, Input>::new(
                net.endpoint(),
                addr,
                &app.protocol(),
                GameClientConfig::default(),
                Duration::ZERO,
            )
            .unwrap();
            app.insert_resource(NetClient::new(endpoint));
            app
        })
        .collect();

    let (mut joined, mut writes, mut spawned_events) = (0, 0, 0);
    for frame in 0..FRAMES {
        for app in std::iter::once(&mut server).chain(&mut clients) {
            app.world_mut().resource_mut::<NetClock>().0 = Duration::from_millis(frame * 33);
            app.world_mut().resource_mut::<Frame>().0 = frame;
            app.update();
        }
        // Count what the messages said (read them as a game system would, after the fact).
        let msgs = server.world().resource::<Messages<ServerEvent<Input>>>();
        for ServerEvent(ev) in msgs.iter_current_update_messages() {
            match ev {
                GameServerEvent::Joined(_) => joined += 1,
                GameServerEvent::WriteApplied { .. } => writes += 1,
                _ => {}
            }
        }
        let msgs = clients[0].world().resource::<Messages<ClientEvent>>();
        spawned_events += msgs
            .iter_current_update_messages()
            .filter(|ClientEvent(e)| matches!(e, statewire::endpoint::GameClientEvent::Spawned(..)))
            .count();
    }

    let ns = server.world().resource::<NetServer<Net, Input>>();
    assert!(ns.error().is_none() && ns.sync_error().is_none());
    assert_eq!(joined, 2);
    assert!(writes > 50, "{writes} writes applied");
    assert!(spawned_events >= 22, "{spawned_events} spawns seen");
    let snapshot = ns.store().snapshot();
    let ids: Vec<ClientId> = ns.clients().to_vec();
    // The store missed nothing the world did.
    let rebuilt = {
        let world = server.world_mut();
        world.resource_scope(|world, ns: Mut<NetServer<Net, Input>>| {
            ns.sync().unwrap().snapshot(world).unwrap()
        })
    };
    assert_eq!(rebuilt, snapshot);
    // The players walked (inputs) and aimed (writes), each only its own.
    let mut q = server
        .world_mut()
        .query_filtered::<(&NetOwner, &Pos, &Aim), Without<Npc>>();
    let players: Vec<_> = q
        .iter(server.world())
        .map(|(o, p, a)| (o.0, *p, *a))
        .collect();
    assert_eq!(players.len(), 2);
    for (owner, pos, aim) in players {
        let first = owner == Owner::Client(ids[0]);
        assert_eq!(pos.x, if first { LIMIT } else { -LIMIT }, "{owner}");
        assert_eq!(aim.0, if first { 2.0 } else { -2.0 }, "{owner}");
    }

    let registry = server
        .world()
        .resource::<ReplicationRules>()
        .registry()
        .clone();
    for app in &mut clients {
        let nc = app.world().resource::<NetClient<Net, Input>>();
        assert!(nc.error().is_none());
        assert_eq!(nc.snapshot(), snapshot);
        let me = nc.id().unwrap();
        let entities = app.world().resource::<NetEntities>();
        assert_eq!(entities.errors(), 0);
        assert_eq!(entities.len(), snapshot.len());
        let world = app.world_mut();
        let mut q = world.query::<(
            Entity,
            &NetId,
            &NetOwner,
            Has<Owned>,
            Option<&Pos>,
            Option<&Hp>,
            Option<&Aim>,
        )>();
        let mut seen = 0;
        for (e, id, owner, owned, pos, hp, aim) in q.iter(world) {
            seen += 1;
            let id = id.0;
            assert_eq!(world.resource::<NetEntities>().get(id), Some(e));
            assert_eq!(Some(owner.0), snapshot.owner(id));
            assert_eq!(owned, owner.0 == Owner::Client(me));
            assert_eq!(pos.copied(), snapshot.component::<Pos>(&registry, id));
            assert_eq!(hp.copied(), snapshot.component::<Hp>(&registry, id));
            assert_eq!(aim.copied(), snapshot.component::<Aim>(&registry, id));
        }
        assert_eq!(seen, snapshot.len());
    }
}
