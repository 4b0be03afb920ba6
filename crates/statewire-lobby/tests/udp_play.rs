//! In one process over UDP on 127.0.0.1: a lobby, a relay, a host and 8 players who join by
//! code, through the direct path and through the relay; and a host migration: the host leaves,
//! the player with the lowest client id takes over from its last state, the others reconnect
//! to it through the lobby, and the game goes on with the same entities and owners.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, udp, unix_now};
use statewire::endpoint::{
    GameClient, GameClientConfig, GameClientEvent, GameServer, GameServerConfig, GameServerEvent,
    Protocol,
};
use statewire::{Key, TokenConfig};
use statewire_core::{ClientId, EntityId, Owner, Tick};
use statewire_lobby::{
    HostInfo, JoinCode, LobbyConfig, Membership, Path, Rendezvous, RendezvousConfig,
    RendezvousEvent,
};
use statewire_testkit::Hp;
use statewire_transport::Transport;
use statewire_transport::udp::UdpTransport;

type Rv = Rendezvous<UdpTransport>;
type Server = GameServer<Rv, ()>;
type Client = GameClient<Rv, ()>;

const FRAME: Duration = Duration::from_millis(5);
/// Hard bound of every phase.
const PHASE_LIMIT: Duration = Duration::from_secs(20);

fn protocol() -> Protocol {
    Protocol::new().with::<Hp>().unwrap()
}

fn rv_config(relay_only: bool) -> RendezvousConfig {
    RendezvousConfig {
        relay_only,
        ..RendezvousConfig::default()
    }
}

/// A host's game server on a rendezvous registered at the lobby.
fn host(backend: &Backend, relay_only: bool, now: Duration) -> Server {
    let protocol = protocol();
    let key = Key::random();
    let sock = udp();
    let local = sock.local_addr();
    let info = HostInfo {
        name: "udp play".into(),
        protocol_id: protocol.fingerprint(),
        version: 1,
        max_players: 16,
        public: true,
        host_client: ClientId(0),
        token_key: key.clone(),
    };
    let rv = Rendezvous::host(sock, backend.lobby_addr(), info, rv_config(relay_only), now);
    server_on(rv, key, local)
}

fn server_on(rv: Rv, key: Key, local: std::net::SocketAddr) -> Server {
    let tokens = TokenConfig {
        key,
        public_addrs: vec![local],
        unix_time_at_zero: unix_now(),
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
enum Player {
    Asking(Box<Rv>, Instant),
    Playing {
        client: Box<Client>,
        membership: Membership,
        asked: Instant,
        first_snapshot: Option<Duration>,
    },
    Gone,
}

impl Player {
    fn join(backend: &Backend, code: JoinCode, relay_only: bool, now: Duration) -> Player {
        let rv = Rendezvous::join(
            udp(),
            backend.lobby_addr(),
            code,
            protocol().fingerprint(),
            rv_config(relay_only),
            now,
        );
        Player::Asking(Box::new(rv), Instant::now())
    }

    /// One frame. Returns an event the test cares about.
    fn step(&mut self, now: Duration) -> Option<PlayerNews> {
        let mut news = None;
        match self {
            Player::Asking(rv, asked) => {
                let mut buf = [0u8; 2048];
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
                client.session_mut().transport_mut().update(now).unwrap();
                client.update(now).unwrap();
                while let Some(e) = client.poll_event() {
                    if let GameClientEvent::Disconnected(_) = e {
                        news = Some(PlayerNews::LostHost);
                    }
                }
                if first_snapshot.is_none() && client.tick().is_some() {
                    *first_snapshot = Some(asked.elapsed());
                }
                client.flush(now).unwrap();
            }
            Player::Gone => {}
        }
        news
    }

    fn client(&self) -> Option<&Client> {
        match self {
            Player::Playing { client, .. } => Some(client),
            _ => None,
        }
    }
}

enum PlayerNews {
    LostHost,
    BecameHost,
}

/// Runs the host's frame: rendezvous timers, session, events.
fn host_step(server: &mut Server, now: Duration, code: &mut Option<JoinCode>) {
    server.session_mut().transport_mut().update(now).unwrap();
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

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Host + 8 players by code; returns the players' join-to-first-snapshot times.
fn eight_players(relay_only: bool) -> Vec<Duration> {
    let start = Instant::now();
    let mut backend = Backend::new(LobbyConfig::default());
    let mut server = host(&backend, relay_only, Duration::ZERO);
    let boss = server.spawn(Owner::Server).unwrap();
    server.store_mut().set(boss, &Hp(100)).unwrap();
    let mut code = None;
    let mut players: Vec<Player> = Vec::new();
    let mut quiet_since: Option<Duration> = None;
    let mut frame = 0u32;
    loop {
        let now = start.elapsed();
        assert!(
            now < PHASE_LIMIT,
            "8 players did not converge in {PHASE_LIMIT:?}"
        );
        backend.step(now);
        host_step(&mut server, now, &mut code);
        if let (Some(c), true) = (code, players.is_empty()) {
            players = (0..8)
                .map(|_| Player::join(&backend, c, relay_only, now))
                .collect();
        }
        let all_in = players.len() == 8 && server.session().client_count() == 8;
        // Health drops while players arrive and for a second after, then the world is quiet.
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
            if players
                .iter()
                .all(|p| p.client().is_some_and(|c| c.snapshot() == truth))
            {
                break;
            }
        }
        std::thread::sleep(FRAME);
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
        assert!(backend.relay.stats().forwarded_packets > 0);
        eprintln!(
            "relay: {} datagrams forwarded, {:?} in Relay::handle ({:?} per datagram)",
            backend.relay.stats().forwarded_packets,
            backend.relay_busy,
            backend.relay_busy / backend.relay.stats().forwarded_packets.max(1) as u32
        );
    }
    times
}

#[test]
fn eight_players_join_by_code_directly() {
    let times = eight_players(false);
    eprintln!(
        "direct: join to first snapshot p50 {:?}, max {:?}",
        median(times.clone()),
        times.iter().max().unwrap()
    );
}

#[test]
fn eight_players_join_by_code_through_the_relay() {
    let times = eight_players(true);
    eprintln!(
        "relayed: join to first snapshot p50 {:?}, max {:?}",
        median(times.clone()),
        times.iter().max().unwrap()
    );
}

#[test]
fn the_game_goes_on_after_the_host_leaves() {
    migration(true);
}

#[test]
fn the_game_goes_on_after_the_host_vanishes() {
    migration(false);
}

/// A host with 3 players leaves (`clean`: saying so to the lobby and the players; else it
/// just stops) and the game goes on under the player with the lowest client id.
fn migration(clean: bool) {
    let start = Instant::now();
    let mut backend = Backend::new(LobbyConfig {
        migration_turn: Duration::from_secs(2),
        // A vanished host is noticed by the players' session timeout and the lobby's host
        // timeout: short ones keep the test short.
        session_timeout_secs: 2,
        host_timeout: Duration::from_secs(1),
        heartbeat_interval: Duration::from_millis(200),
        ..LobbyConfig::default()
    });
    let mut server = host(&backend, false, Duration::ZERO);
    let boss = server.spawn(Owner::Server).unwrap();
    server.store_mut().set(boss, &Hp(100)).unwrap();
    let mut code = None;
    let mut players: Vec<Player> = Vec::new();
    let mut frame = 0i64;
    // Phase 1: 3 players join and play a while.
    let old_host_last_tick = loop {
        let now = start.elapsed();
        assert!(now < PHASE_LIMIT, "players did not join");
        backend.step(now);
        host_step(&mut server, now, &mut code);
        if let (Some(c), true) = (code, players.is_empty()) {
            players = (0..3)
                .map(|_| Player::join(&backend, c, false, now))
                .collect();
        }
        frame += 1;
        server.store_mut().set(boss, &Hp(100 - frame % 90)).unwrap();
        server.flush(now).unwrap();
        for p in &mut players {
            p.step(now);
        }
        let joined = players
            .iter()
            .filter(|p| p.client().is_some_and(|c| c.tick().is_some()));
        if joined.count() == 3 && server.store().len() == 4 && frame > 200 {
            break server.tick();
        }
        std::thread::sleep(FRAME);
    };
    let entities_before: Vec<(EntityId, Option<Owner>)> = server
        .store()
        .entity_ids()
        .map(|e| (e, server.store().owner(e)))
        .collect();
    if clean {
        // The host leaves and says so to the lobby and its players.
        server.session_mut().transport_mut().leave(true);
        server.session_mut().shutdown();
        let _ = server.flush(start.elapsed());
    }
    drop(server);
    let left_at = start.elapsed();

    // Phase 2: each player notices, asks the lobby; the lowest client id hosts.
    let mut migrants: Vec<(Player, Membership, Key, Tick, statewire_core::Snapshot)> = Vec::new();
    let mut new_server: Option<(Server, ClientId, Tick)> = None;
    let mut moved: Vec<Player> = Vec::new();
    let mut resumed_at = None;
    loop {
        let now = start.elapsed();
        assert!(now < left_at + PHASE_LIMIT, "migration did not finish");
        backend.step(now);
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
                let rv = Rendezvous::migrate(
                    udp(),
                    backend.lobby_addr(),
                    membership,
                    last.0,
                    &key,
                    rv_config(false),
                    now,
                );
                migrants.push((
                    Player::Asking(Box::new(rv), Instant::now()),
                    membership,
                    key,
                    last,
                    client.snapshot(),
                ));
            }
        }
        let mut i = 0;
        while i < migrants.len() {
            let news = migrants[i].0.step(now);
            if let Some(PlayerNews::BecameHost) = news {
                let (Player::Asking(rv, _), m, key, last, snapshot) = migrants.remove(i) else {
                    unreachable!()
                };
                let local = rv.local_addr();
                let mut s = server_on(*rv, key, local);
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
            host_step(s, now, &mut none);
            s.flush(now).unwrap();
        }
        for p in &mut moved {
            p.step(now);
        }
        if new_server.is_some()
            && moved.len() == 2
            && moved
                .iter()
                .all(|p| p.client().is_some_and(|c| c.tick().is_some()))
        {
            break;
        }
        std::thread::sleep(FRAME);
    }
    let (mut s, new_host_id, resumed_tick) = new_server.unwrap();
    let lowest = players_ids(&moved)
        .into_iter()
        .chain([new_host_id])
        .min()
        .unwrap();
    assert_eq!(new_host_id, lowest, "the lowest client id hosts");
    // Same entities, same owners (the old host's own spawns for each player included).
    let entities_after: Vec<(EntityId, Option<Owner>)> = s
        .store()
        .entity_ids()
        .map(|e| (e, s.store().owner(e)))
        .collect();
    assert_eq!(entities_after, entities_before);
    let gap = old_host_last_tick.0 - resumed_tick.0;
    eprintln!(
        "host migration ({}): old host's last tick {}, new host resumed at {} (gap {} ticks); \
         {:?} from the host leaving to the new host serving, {:?} to every player back",
        if clean { "host left" } else { "host vanished" },
        old_host_last_tick.0,
        resumed_tick.0,
        gap,
        resumed_at.unwrap() - left_at,
        start.elapsed() - left_at
    );
    assert!(gap <= 30, "the new host lost {gap} ticks");

    // Phase 3: the game continues: the new host changes the boss, everyone sees it.
    let until = start.elapsed() + PHASE_LIMIT;
    loop {
        let now = start.elapsed();
        assert!(now < until, "players did not converge with the new host");
        backend.step(now);
        let mut none = None;
        host_step(&mut s, now, &mut none);
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
        std::thread::sleep(FRAME);
    }
}

fn players_ids(players: &[Player]) -> Vec<ClientId> {
    players
        .iter()
        .filter_map(|p| p.client().and_then(|c| c.id()))
        .collect()
}
