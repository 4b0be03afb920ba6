//! The game of the lobby tests, generic over the [`Net`] it runs on.

use std::time::Duration;

use statewire::endpoint::{
    GameClient, GameClientConfig, GameClientEvent, GameServer, GameServerConfig, GameServerEvent,
    Protocol,
};
use statewire::{Key, TokenConfig};
use statewire_core::{ClientId, EntityId, Owner, Snapshot, Tick};
use statewire_lobby::{
    HostInfo, JoinCode, Membership, Path, Rendezvous, RendezvousConfig, RendezvousEvent, Storage,
};
use statewire_testkit::Hp;
use statewire_transport::Transport;

use super::Net;

/// One frame of every peer.
pub const FRAME: Duration = Duration::from_millis(5);
/// Hard bound of every phase, in the net's time.
pub const PHASE_LIMIT: Duration = Duration::from_secs(20);

pub type Rv<N> = Rendezvous<<N as Net>::Socket>;
pub type Server<N> = GameServer<Rv<N>, ()>;
pub type Client<N> = GameClient<Rv<N>, ()>;

pub fn protocol() -> Protocol {
    Protocol::new().with::<Hp>().unwrap()
}

pub fn rv_config(relay_only: bool) -> RendezvousConfig {
    RendezvousConfig {
        relay_only,
        ..RendezvousConfig::default()
    }
}

/// A host's game server on a rendezvous registering at the lobby.
pub fn host<N: Net>(net: &mut N, relay_only: bool) -> Server<N> {
    let protocol = protocol();
    let key = Key::random();
    let sock = net.socket();
    let info = HostInfo {
        name: "lobby test".into(),
        protocol_id: protocol.fingerprint(),
        version: 1,
        max_players: 16,
        public: true,
        host_client: ClientId(0),
        token_key: key.clone(),
    };
    let lobby = net.backend().lobby_addr();
    let rv = Rendezvous::host(sock, lobby, info, rv_config(relay_only), net.now());
    server_on::<N>(net, rv, key)
}

/// A game server admitting the lobby's tokens for `key`, on `rv`.
pub fn server_on<N: Net>(net: &N, rv: Rv<N>, key: Key) -> Server<N> {
    let tokens = TokenConfig {
        key,
        public_addrs: vec![rv.local_addr()],
        unix_time_at_zero: net.unix_at_zero(),
    };
    GameServer::with_tokens(
        rv,
        &protocol(),
        GameServerConfig::default(),
        Key::random(),
        tokens,
    )
    .unwrap()
}

/// A player: asking the lobby, then playing.
pub enum Player<N: Net> {
    Asking(Box<Rv<N>>, Duration),
    Playing {
        client: Box<Client<N>>,
        membership: Membership,
        asked: Duration,
        first_snapshot: Option<Duration>,
    },
    Gone,
}

/// What a player's frame brought.
pub enum PlayerNews {
    LostHost,
    BecameHost,
}

impl<N: Net> Player<N> {
    pub fn join(net: &mut N, code: JoinCode, relay_only: bool) -> Player<N> {
        let lobby = net.backend().lobby_addr();
        let rv = Rendezvous::join(
            net.socket(),
            lobby,
            code,
            protocol().fingerprint(),
            rv_config(relay_only),
            net.now(),
        );
        Player::Asking(Box::new(rv), net.now())
    }

    /// One frame at `now`.
    pub fn step(&mut self, now: Duration) -> Option<PlayerNews> {
        let mut news = None;
        match self {
            Player::Asking(rv, asked) => {
                let mut buf = [0u8; 2048];
                N::advance(rv.inner_mut(), now);
                rv.update(now).unwrap();
                while rv.recv(&mut buf).unwrap().is_some() {}
                while let Some(e) = rv.poll_event() {
                    match e {
                        RendezvousEvent::Joined {
                            token,
                            host,
                            membership,
                        } => {
                            let asked = *asked;
                            let Player::Asking(rv, _) = std::mem::replace(self, Player::Gone)
                            else {
                                unreachable!()
                            };
                            let client = GameClient::with_token(
                                *rv,
                                host,
                                &protocol(),
                                GameClientConfig::default(),
                                now,
                                &token,
                            )
                            .unwrap();
                            *self = Player::Playing {
                                client: Box::new(client),
                                membership,
                                asked,
                                first_snapshot: None,
                            };
                            return None;
                        }
                        RendezvousEvent::NewHost { .. } => news = Some(PlayerNews::BecameHost),
                        RendezvousEvent::Refused(why) => panic!("the lobby refused: {why}"),
                        RendezvousEvent::LobbyUnreachable => panic!("the lobby did not answer"),
                        _ => {}
                    }
                }
            }
            Player::Playing {
                client,
                asked,
                first_snapshot,
                ..
            } => {
                let rv = client.session_mut().transport_mut();
                N::advance(rv.inner_mut(), now);
                rv.update(now).unwrap();
                client.update(now).unwrap();
                while let Some(e) = client.poll_event() {
                    if let GameClientEvent::Disconnected(_) = e {
                        news = Some(PlayerNews::LostHost);
                    }
                }
                if first_snapshot.is_none() && client.tick().is_some() {
                    *first_snapshot = Some(now - *asked);
                }
                client.flush(now).unwrap();
            }
            Player::Gone => {}
        }
        news
    }

    pub fn client(&self) -> Option<&Client<N>> {
        match self {
            Player::Playing { client, .. } => Some(client),
            _ => None,
        }
    }
}

/// The host's frame up to its flush: rendezvous timers, session, a player entity for each new
/// player, the roster for the lobby, and the join code once registered.
pub fn host_step<N: Net>(server: &mut Server<N>, now: Duration, code: &mut Option<JoinCode>) {
    let rv = server.session_mut().transport_mut();
    N::advance(rv.inner_mut(), now);
    rv.update(now).unwrap();
    server.update(now).unwrap();
    while let Some(e) = server.poll_event() {
        if let GameServerEvent::Joined(id) = e {
            // A player who comes back (after a migration) has its entity already.
            let store = server.store();
            if store
                .entity_ids()
                .any(|e| store.owner(e) == Some(Owner::Client(id)))
            {
                continue;
            }
            let me = server.spawn(Owner::Client(id)).unwrap();
            server.store_mut().set(me, &Hp(50)).unwrap();
        }
    }
    let roster: Vec<ClientId> = server.session().clients().collect();
    let rv = server.session_mut().transport_mut();
    rv.set_players(&roster);
    while let Some(e) = rv.poll_event() {
        if let RendezvousEvent::Registered { code: c, .. } = e {
            *code = Some(c);
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A host and `n` players by code until every player has the host's state; returns each
/// player's time from asking the lobby to its first snapshot.
pub fn players_join<N: Net>(net: &mut N, n: usize, relay_only: bool) -> Vec<Duration> {
    // The host punches as usual: a relay-only player must not answer, so that the host too
    // falls back on the relay.
    let mut server = host(net, false);
    let boss = server.spawn(Owner::Server).unwrap();
    server.store_mut().set(boss, &Hp(100)).unwrap();
    let mut code = None;
    let mut players: Vec<Player<N>> = Vec::new();
    let mut quiet_since: Option<Duration> = None;
    let mut frame = 0u32;
    loop {
        let now = net.now();
        assert!(
            now < PHASE_LIMIT,
            "{n} players did not converge in {PHASE_LIMIT:?}"
        );
        net.step_backend();
        host_step::<N>(&mut server, now, &mut code);
        if let (Some(c), true) = (code, players.is_empty()) {
            players = (0..n).map(|_| Player::join(net, c, relay_only)).collect();
        }
        let all_in = players.len() == n && server.session().client_count() == n;
        // Health drops while players arrive, then the world is quiet.
        if quiet_since.is_none() {
            frame += 1;
            server
                .store_mut()
                .set(boss, &Hp(100 - i64::from(frame % 90)))
                .unwrap();
            if all_in {
                quiet_since = Some(now);
            }
        }
        server.flush(now).unwrap();
        for p in &mut players {
            p.step(now);
        }
        if let Some(q) = quiet_since
            && now > q + Duration::from_millis(500)
        {
            let truth = server.store().snapshot();
            let settled = server
                .session()
                .transport()
                .paths()
                .all(|(_, p)| p != Path::Punching);
            if settled
                && players
                    .iter()
                    .all(|p| p.client().is_some_and(|c| c.snapshot() == truth))
            {
                break;
            }
        }
        net.wait(FRAME);
    }
    let want = if relay_only {
        Path::Relayed
    } else {
        Path::Direct
    };
    let mut times = Vec::new();
    for p in &players {
        let Player::Playing {
            client,
            first_snapshot,
            ..
        } = p
        else {
            panic!("a player never joined");
        };
        let rv = client.session().transport();
        assert_eq!(rv.paths().next().map(|(_, p)| p), Some(want));
        times.push(first_snapshot.expect("a snapshot arrived"));
    }
    for (addr, path) in server.session().transport().paths() {
        assert_eq!(path, want, "host's path to {addr}");
    }
    if relay_only {
        let b = net.backend();
        let forwarded = b.relay.stats().forwarded_packets;
        assert!(forwarded > 0);
        eprintln!(
            "relay: {forwarded} datagrams forwarded, {:?} in Relay::handle ({:?} per datagram)",
            b.relay_busy,
            b.relay_busy / forwarded.max(1) as u32
        );
    }
    times
}

/// Short timeouts, so that a vanished host is noticed (by the players' sessions and the
/// lobby) in about two seconds.
pub fn migration_config() -> statewire_lobby::LobbyConfig {
    statewire_lobby::LobbyConfig {
        migration_turn: Duration::from_secs(2),
        session_timeout_secs: 2,
        host_timeout: Duration::from_secs(1),
        heartbeat_interval: Duration::from_millis(200),
        ..statewire_lobby::LobbyConfig::default()
    }
}

/// What a migration cost.
#[derive(Debug)]
pub struct Migration {
    /// The old host's last tick.
    pub old_last_tick: Tick,
    /// The tick the new host resumed from (its last snapshot).
    pub resumed_tick: Tick,
    /// From the host leaving to the new host serving.
    pub to_new_host: Duration,
    /// From the host leaving to every other player having a snapshot from the new host.
    pub to_all_back: Duration,
}

type Migrant<N> = (Player<N>, Membership, Key, Tick, Snapshot);

/// A host with 3 players leaves (`clean`: saying so to the lobby and the players; else it just
/// stops); the game goes on under the player with the lowest client id, with the same
/// entities and owners, and the others converge to it.
pub fn migration<N: Net>(net: &mut N, clean: bool) -> Migration {
    let mut server = host(net, false);
    let boss = server.spawn(Owner::Server).unwrap();
    server.store_mut().set(boss, &Hp(100)).unwrap();
    let mut code = None;
    let mut players: Vec<Player<N>> = Vec::new();
    let mut frame = 0i64;
    // Phase 1: 3 players join and play a while.
    let old_last_tick = loop {
        let now = net.now();
        assert!(now < PHASE_LIMIT, "players did not join");
        net.step_backend();
        host_step::<N>(&mut server, now, &mut code);
        if let (Some(c), true) = (code, players.is_empty()) {
            players = (0..3).map(|_| Player::join(net, c, false)).collect();
        }
        frame += 1;
        server.store_mut().set(boss, &Hp(100 - frame % 90)).unwrap();
        server.flush(now).unwrap();
        for p in &mut players {
            p.step(now);
        }
        let joined = players
            .iter()
            .filter(|p| p.client().is_some_and(|c| c.tick().is_some()))
            .count();
        // The lobby must know all three (from a heartbeat) for the rule "the lowest client
        // id of the last roster hosts" to name the lowest of them.
        let reported = code.is_some_and(|c| {
            let unix = net.unix_at_zero() + now;
            let stored = net.backend().lobby.storage_mut().get(c, ms(unix)).unwrap();
            stored.is_some_and(|g| g.roster.len() == 3)
        });
        // Every player must have every entity: a new host resumes only what it has.
        let ids: Vec<EntityId> = server.store().entity_ids().collect();
        let complete = players.iter().all(|p| {
            p.client()
                .is_some_and(|c| c.snapshot().entity_ids().eq(ids.iter().copied()))
        });
        if joined == 3 && reported && complete && ids.len() == 4 && frame > 400 {
            break server.tick();
        }
        net.wait(FRAME);
    };
    let owners = |s: &Server<N>| -> Vec<(EntityId, Option<Owner>)> {
        s.store()
            .entity_ids()
            .map(|e| (e, s.store().owner(e)))
            .collect()
    };
    let entities_before = owners(&server);
    if clean {
        server.session_mut().transport_mut().leave(true);
        server.session_mut().shutdown();
        let _ = server.flush(net.now());
    }
    // A host that leaves cleanly keeps its socket a while so that its goodbyes get out (the
    // simulator holds them for the link's latency); one that vanishes drops everything.
    let mut departed = if clean { Some(server) } else { None };
    let left_at = net.now();

    // Phase 2: each player notices and asks the lobby; the lowest client id hosts.
    let mut migrants: Vec<Migrant<N>> = Vec::new();
    let mut new_server: Option<(Server<N>, ClientId, Tick)> = None;
    let mut moved: Vec<Player<N>> = Vec::new();
    let mut resumed_at = None;
    let all_back = loop {
        let now = net.now();
        assert!(now < left_at + PHASE_LIMIT, "migration did not finish");
        net.step_backend();
        if let Some(old) = &mut departed {
            N::advance(old.session_mut().transport_mut().inner_mut(), now);
        }
        for p in &mut players {
            if let Some(PlayerNews::LostHost) = p.step(now) {
                let Player::Playing {
                    client, membership, ..
                } = std::mem::replace(p, Player::Gone)
                else {
                    unreachable!()
                };
                let last = client.tick().unwrap_or(Tick(0));
                let key = Key::random();
                let lobby = net.backend().lobby_addr();
                let rv = Rendezvous::migrate(
                    net.socket(),
                    lobby,
                    membership,
                    last.0,
                    &key,
                    rv_config(false),
                    now,
                );
                let asking = Player::Asking(Box::new(rv), now);
                migrants.push((asking, membership, key, last, client.snapshot()));
            }
        }
        let mut i = 0;
        while i < migrants.len() {
            if let Some(PlayerNews::BecameHost) = migrants[i].0.step(now) {
                let (Player::Asking(rv, _), m, key, last, snapshot) = migrants.remove(i) else {
                    unreachable!()
                };
                let mut s = server_on::<N>(net, *rv, key);
                assert_eq!(s.add_local_player_as(m.client_id), Some(m.client_id));
                s.resume(&snapshot, last).unwrap();
                resumed_at = Some(now);
                new_server = Some((s, m.client_id, last));
                continue;
            }
            if matches!(migrants[i].0, Player::Playing { .. }) {
                moved.push(migrants.remove(i).0);
                continue;
            }
            i += 1;
        }
        if let Some((s, _, _)) = &mut new_server {
            let mut none = None;
            host_step::<N>(s, now, &mut none);
            s.flush(now).unwrap();
        }
        for p in &mut moved {
            p.step(now);
        }
        let back = moved
            .iter()
            .filter(|p| p.client().is_some_and(|c| c.tick().is_some()))
            .count();
        if new_server.is_some() && back == 2 {
            break now;
        }
        net.wait(FRAME);
    };
    let (mut s, new_host_id, resumed_tick) = new_server.unwrap();
    let ids: Vec<ClientId> = moved
        .iter()
        .filter_map(|p| p.client().and_then(|c| c.id()))
        .collect();
    assert!(
        ids.iter().all(|&id| id > new_host_id),
        "the lowest client id hosts: {new_host_id} vs {ids:?}"
    );
    assert_eq!(owners(&s), entities_before, "same entities, same owners");

    // Phase 3: the game continues; the new host changes the boss, everyone sees it.
    let until = net.now() + PHASE_LIMIT;
    loop {
        let now = net.now();
        assert!(now < until, "players did not converge with the new host");
        net.step_backend();
        let mut none = None;
        host_step::<N>(&mut s, now, &mut none);
        s.store_mut().set(boss, &Hp(7)).unwrap();
        s.flush(now).unwrap();
        for p in &mut moved {
            p.step(now);
        }
        let truth = s.store().snapshot();
        if moved
            .iter()
            .all(|p| p.client().is_some_and(|c| c.snapshot() == truth))
        {
            assert_eq!(moved[0].client().unwrap().get::<Hp>(boss), Some(Hp(7)));
            break;
        }
        net.wait(FRAME);
    }
    Migration {
        old_last_tick,
        resumed_tick,
        to_new_host: resumed_at.unwrap() - left_at,
        to_all_back: all_back - left_at,
    }
}
