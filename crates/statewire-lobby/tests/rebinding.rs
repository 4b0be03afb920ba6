//! A player's NAT moves it to a new address in the middle of a game (a rebinding, common on
//! mobile networks): the host's rendezvous learns the new address from the player's next
//! keep-alive punch and keeps showing it at its old one, so the session goes on without a
//! reconnect. Virtual clock on the loopback network.

mod common;

use std::time::Duration;

use common::play::{FRAME, Player, host, host_step};
use common::{Net, SimNet};
use statewire_core::Owner;
use statewire_lobby::{LobbyConfig, Path};
use statewire_testkit::Hp;
use statewire_transport::Transport;
use statewire_transport::netsim::LinkConfig;

#[test]
fn a_player_whose_address_changes_plays_on() {
    let mut net = SimNet::new(LobbyConfig::default(), LinkConfig::default(), 1);
    let mut server = host(&mut net, false);
    let boss = server.spawn(Owner::Server).unwrap();
    server.store_mut().set(boss, &Hp(100)).unwrap();
    let mut code = None;
    let mut player: Option<Player<SimNet>> = None;
    let mut rebound_at = None;
    let mut hp = 100i64;
    let mut frame = 0u32;
    loop {
        let now = net.now();
        assert!(now < Duration::from_secs(20), "the player did not play on");
        net.step_backend();
        host_step::<SimNet>(&mut server, now, &mut code);
        frame += 1;
        if frame % 20 == 0 {
            hp = if hp == 1 { 100 } else { hp - 1 };
            server.store_mut().set(boss, &Hp(hp)).unwrap();
        }
        server.flush(now).unwrap();
        if let (Some(c), None) = (code, &player) {
            player = Some(Player::join(&mut net, c, false));
        }
        let Some(p) = player.as_mut() else {
            net.wait(FRAME);
            continue;
        };
        if let Some(common::play::PlayerNews::LostHost) = p.step(now) {
            panic!("the player lost its session after the rebinding");
        }
        let playing = p.client().is_some_and(|c| c.tick().is_some());
        if playing && rebound_at.is_none() && now > Duration::from_secs(3) {
            let client = match p {
                Player::Playing { client, .. } => client,
                _ => unreachable!(),
            };
            let rv = client.session_mut().transport_mut();
            assert_eq!(rv.paths().next().map(|(_, path)| path), Some(Path::Direct));
            let old = rv.inner().inner().local_addr();
            *rv.inner_mut().inner_mut() = net.endpoint();
            assert_ne!(rv.inner().inner().local_addr(), old);
            rebound_at = Some(now);
        }
        if let Some(t) = rebound_at
            && now > t + Duration::from_secs(3)
        {
            let c = p.client().unwrap();
            assert_eq!(
                c.get::<Hp>(boss),
                Some(Hp(hp)),
                "the player follows the game"
            );
            assert_eq!(server.session().client_count(), 1, "the same one session");
            break;
        }
        net.wait(FRAME);
    }
}
