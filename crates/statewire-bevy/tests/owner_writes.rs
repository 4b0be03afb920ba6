//! Components their owner writes: a client app's game system changes `Aim` on the entity it
//! owns, and the plugin sends it; the server applies it. Changes the replication makes on the
//! client are not sent back (a correction the server makes is taken, not echoed), and a change
//! to an entity the client does not own is never sent.

use std::time::Duration;

use bevy_app::prelude::*;
use bevy_ecs::prelude::*;
use statewire::endpoint::{GameClient, GameServer, GameServerConfig, GameServerEvent};
use statewire_bevy::*;
use statewire_core::Owner;
use statewire_testkit::Aim;
use statewire_transport::Transport;
use statewire_transport::loopback::{LoopbackConfig, LoopbackEndpoint, LoopbackNet};

type Net = LoopbackEndpoint;
const ACTIVE: u64 = 60;

#[derive(Resource, Default)]
struct Frame(u64);

fn server_game(
    frame: Res<Frame>,
    mut events: MessageReader<ServerEvent<()>>,
    mut commands: Commands,
    mut aims: Query<(&NetOwner, &mut Aim)>,
) {
    // Later the server corrects the player's aim itself: the client must take it, not echo it.
    if frame.0 == ACTIVE + 20 {
        for (owner, mut aim) in &mut aims {
            if owner.0 != Owner::Server {
                aim.0 = 0.5;
            }
        }
    }
    for ServerEvent(ev) in events.read() {
        if let GameServerEvent::Joined(c) = ev {
            commands.spawn((Replicated, NetOwner(Owner::Client(*c)), Aim(0.0)));
            // One the client does not own.
            commands.spawn((Replicated, NetOwner(Owner::Server), Aim(1.0)));
        }
    }
}

fn client_aims(frame: Res<Frame>, mut aims: Query<(&mut Aim, Has<Owned>)>) {
    if frame.0 >= ACTIVE {
        return;
    }
    for (mut aim, owned) in &mut aims {
        // The game changes both; only the owned one may be sent.
        aim.0 = if owned {
            (aim.0 + 0.03125).min(1.5)
        } else {
            -1.0
        };
    }
}

#[test]
fn the_owner_writes_its_changes_and_nothing_else() {
    let net = LoopbackNet::new(LoopbackConfig::default());
    let server_t = net.endpoint();
    let addr = server_t.local_addr();
    let mut server = App::new();
    server
        .add_plugins(StatewireServerPlugin::<Net, ()>::default())
        .replicate::<Aim>()
        .init_resource::<Frame>()
        .add_systems(Update, server_game);
    let endpoint =
        GameServer::<_, ()>::new(server_t, &server.protocol(), GameServerConfig::default())
            .unwrap();
    server.insert_resource(NetServer::new(endpoint));
    let mut client = App::new();
    client
        .add_plugins(StatewireClientPlugin::<Net, ()>::default())
        .replicate_owned::<Aim>()
        .init_resource::<Frame>()
        .add_systems(Update, client_aims);
    let endpoint =
        GameClient::<_, ()>::connect(net.endpoint(), addr, &client.protocol(), Duration::ZERO)
            .unwrap();
    client.insert_resource(NetClient::new(endpoint));

    let (mut applied, mut rejected, mut late) = (0, 0, 0);
    for frame in 0..ACTIVE + 60 {
        for app in [&mut server, &mut client] {
            app.world_mut().resource_mut::<NetClock>().0 = Duration::from_millis(frame * 33);
            app.world_mut().resource_mut::<Frame>().0 = frame;
            app.update();
        }
        let msgs = server.world().resource::<Messages<ServerEvent<()>>>();
        for ServerEvent(ev) in msgs.iter_current_update_messages() {
            match ev {
                GameServerEvent::WriteApplied { .. } => {
                    applied += 1;
                    late += usize::from(frame > ACTIVE + 10);
                }
                GameServerEvent::WriteRejected { .. } => rejected += 1,
                _ => {}
            }
        }
    }
    assert!(applied > 20, "{applied} owner writes applied");
    assert_eq!(
        rejected, 0,
        "a write of an entity the client does not own was sent"
    );
    assert_eq!(
        late, 0,
        "writes went on after the game stopped changing the value"
    );
    // The server holds the owner's final value; the other entity kept the server's.
    let mut q = server.world_mut().query::<(&NetOwner, &Aim)>();
    let mut aims: Vec<(bool, f32)> = q
        .iter(server.world())
        .map(|(o, a)| (o.0 == Owner::Server, a.0))
        .collect();
    aims.sort_by_key(|a| a.0);
    assert_eq!(aims, vec![(false, 0.5), (true, 1.0)]);
    // And the client took the correction.
    let mut q = client.world_mut().query_filtered::<&Aim, With<Owned>>();
    assert_eq!(
        q.iter(client.world()).map(|a| a.0).collect::<Vec<_>>(),
        vec![0.5]
    );
}
