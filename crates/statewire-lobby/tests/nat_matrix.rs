//! Host and joiner behind every pair of simulated NAT types (full cone, address-restricted,
//! port-restricted, symmetric), with a lobby and a relay on public addresses: punching
//! succeeds where the NATs allow it, the relay carries the game where they do not, and the
//! joiner's world converges to the host's either way. Everything runs on the loopback network
//! on one virtual clock, so each case is deterministic.

mod common;

use std::time::Duration;

use statewire::endpoint::{GameClient, GameClientConfig, GameServer, GameServerConfig, Protocol};
use statewire::{Key, TokenConfig};
use statewire_core::{ClientId, Owner};
use statewire_lobby::{
    HostInfo, JoinCode, LobbyConfig, Path, Rendezvous, RendezvousConfig, RendezvousEvent,
};
use statewire_testkit::Hp;
use statewire_transport::Transport;
use statewire_transport::loopback::{LoopbackConfig, LoopbackEndpoint, LoopbackNet};
use statewire_transport::nat::{NatConfig, NatEndpoint, NatKind};

const STEP: Duration = Duration::from_millis(10);
/// The lobby's wall clock at virtual time zero.
const UNIX_ZERO: Duration = Duration::from_secs(1_800_000_000);
const KINDS: [NatKind; 4] = [
    NatKind::FullCone,
    NatKind::AddressRestricted,
    NatKind::PortRestricted,
    NatKind::Symmetric,
];

/// The public side: a lobby and a relay on their own addresses.
type Backend = common::Backend<LoopbackEndpoint>;

fn backend(net: &LoopbackNet) -> Backend {
    common::Backend::new(
        net.bind("198.51.100.1:7800".parse().unwrap()).unwrap(),
        net.bind("198.51.100.2:3478".parse().unwrap()).unwrap(),
        LobbyConfig::default(),
    )
}

fn protocol() -> Protocol {
    Protocol::new().with::<Hp>().unwrap()
}

fn nat(net: &LoopbackNet, private: &str, kind: NatKind, public: &str) -> NatEndpoint {
    NatEndpoint::new(
        net,
        private.parse().unwrap(),
        NatConfig::new(kind, public.parse().unwrap()),
    )
}

/// What one case saw.
#[derive(Debug)]
struct Case {
    host_path: Option<Path>,
    joiner_path: Option<Path>,
    first_snapshot: Option<Duration>,
    converged: bool,
}

fn run_case(host_kind: NatKind, joiner_kind: NatKind) -> Case {
    let net = LoopbackNet::new(LoopbackConfig::default());
    let mut backend = backend(&net);
    let lobby_addr = backend.lobby_addr();
    let protocol = protocol();
    let token_key = Key::random();
    let host_ep = nat(&net, "10.0.0.2:7777", host_kind, "203.0.113.1");
    let local = host_ep.local_addr();
    let info = HostInfo {
        name: "matrix".into(),
        protocol_id: protocol.fingerprint(),
        version: 1,
        max_players: 8,
        public: true,
        host_client: ClientId(0),
        token_key: token_key.clone(),
    };
    let rv = Rendezvous::host(
        host_ep,
        lobby_addr,
        info,
        RendezvousConfig::default(),
        Duration::ZERO,
    );
    let tokens = TokenConfig {
        key: token_key,
        public_addrs: vec![local],
        unix_time_at_zero: UNIX_ZERO,
    };
    let mut server = GameServer::<_, ()>::with_tokens(
        rv,
        &protocol,
        GameServerConfig::default(),
        Key::random(),
        tokens,
    )
    .unwrap();
    let boss = server.spawn(Owner::Server).unwrap();
    server.store_mut().set(boss, &Hp(100)).unwrap();

    let mut code: Option<JoinCode> = None;
    let mut joiner: Option<Rendezvous<NatEndpoint>> = None;
    let mut client: Option<GameClient<Rendezvous<NatEndpoint>, ()>> = None;
    let mut first_snapshot = None;
    let mut join_started = Duration::ZERO;
    let mut buf = vec![0u8; 2048];
    let mut now = Duration::ZERO;
    for frame in 0..1200u32 {
        now = STEP * frame;
        backend.step(now, UNIX_ZERO + now);
        // Host: rendezvous timers, then the session (which reads through the rendezvous).
        let t = server.session_mut().transport_mut();
        t.inner_mut().advance_to(now);
        t.update(now).unwrap();
        server.update(now).unwrap();
        while server.poll_event().is_some() {}
        while let Some(e) = server.session_mut().transport_mut().poll_event() {
            if let RendezvousEvent::Registered { code: c, .. } = e {
                code = Some(c);
            }
        }
        // The boss loses health until 6 s, then the world is quiet.
        if frame % 3 == 0 && now < Duration::from_secs(6) {
            let hp = 100 - (frame / 3 % 100) as i64;
            server.store_mut().set(boss, &Hp(hp)).unwrap();
        }
        server.flush(now).unwrap();

        // Joiner: asks for the code once the game is registered, then plays.
        if let (Some(c), None, None) = (code, &joiner, &client) {
            let ep = nat(&net, "10.1.0.2:5000", joiner_kind, "203.0.113.2");
            joiner = Some(Rendezvous::join(
                ep,
                lobby_addr,
                c,
                protocol.fingerprint(),
                RendezvousConfig::default(),
                now,
            ));
            join_started = now;
        }
        if let Some(rv) = &mut joiner {
            rv.inner_mut().advance_to(now);
            rv.update(now).unwrap();
            while rv.recv(&mut buf).unwrap().is_some() {}
            let mut joined = None;
            while let Some(e) = rv.poll_event() {
                match e {
                    RendezvousEvent::Joined { token, host, .. } => joined = Some((token, host)),
                    RendezvousEvent::Refused(why) => panic!("lobby refused the join: {why}"),
                    _ => {}
                }
            }
            if let Some((token, host)) = joined {
                let rv = joiner.take().unwrap();
                client = Some(
                    GameClient::with_token(
                        rv,
                        host,
                        &protocol,
                        GameClientConfig::default(),
                        now,
                        &token,
                    )
                    .unwrap(),
                );
            }
        }
        if let Some(c) = &mut client {
            let t = c.session_mut().transport_mut();
            t.inner_mut().advance_to(now);
            t.update(now).unwrap();
            c.update(now).unwrap();
            while c.poll_event().is_some() {}
            if first_snapshot.is_none() && c.tick().is_some() {
                first_snapshot = Some(now - join_started);
            }
            c.flush(now).unwrap();
        }
    }
    let _ = now;
    let client = client.expect("the joiner got a token");
    let host_rv = server.session().transport();
    let joiner_rv = client.session().transport();
    let host_path = host_rv.paths().next().map(|(_, p)| p);
    let joiner_path = joiner_rv.paths().next().map(|(_, p)| p);
    Case {
        host_path,
        joiner_path,
        first_snapshot,
        converged: client.snapshot() == server.store().snapshot(),
    }
}

/// Whether two NATs let a punch through, with peer-reflexive learning: endpoint-independent
/// mappings on both sides always can; a symmetric side can only if the other side's filter
/// lets a new port of a known address in (full cone, address-restricted).
fn punchable(a: NatKind, b: NatKind) -> bool {
    let restrictive = |k| matches!(k, NatKind::PortRestricted | NatKind::Symmetric);
    !((a == NatKind::Symmetric && restrictive(b)) || (b == NatKind::Symmetric && restrictive(a)))
}

#[test]
fn every_pair_of_nat_types_plays_direct_where_it_can_and_relayed_where_it_cannot() {
    let mut table = String::new();
    for host in KINDS {
        for joiner in KINDS {
            let case = run_case(host, joiner);
            let expected = if punchable(host, joiner) {
                Path::Direct
            } else {
                Path::Relayed
            };
            table.push_str(&format!(
                "host {host:?} joiner {joiner:?}: host path {:?}, joiner path {:?}, first snapshot {:?}\n",
                case.host_path, case.joiner_path, case.first_snapshot
            ));
            assert_eq!(
                case.joiner_path,
                Some(expected),
                "{host:?} / {joiner:?}: {case:?}"
            );
            assert_eq!(
                case.host_path,
                Some(expected),
                "{host:?} / {joiner:?}: {case:?}"
            );
            assert!(
                case.converged,
                "{host:?} / {joiner:?} did not converge: {case:?}"
            );
            assert!(
                case.first_snapshot
                    .is_some_and(|t| t < Duration::from_secs(4)),
                "{host:?} / {joiner:?}: {case:?}"
            );
        }
    }
    eprintln!("{table}");
}
