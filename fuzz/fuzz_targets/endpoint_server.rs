//! A game server endpoint under an authenticated, hostile client: every fuzz input is a batch
//! of session messages (each `[channel & 1, len, bytes...]`) that a connected raw client sends,
//! beside an honest `GameClient` that owns one entity. The server must never panic, never
//! fail its `update`/`flush`, never apply a write to the honest player's entity, and the
//! honest client must stay connected and end in sync.
//!
//! One server, one hostile and one honest client live across iterations (a handshake per
//! input would be most of the work); a hostile client that got itself disconnected is replaced.

#![no_main]

use std::cell::RefCell;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use statewire::endpoint::{GameClient, GameServer, GameServerConfig, GameServerEvent, Protocol};
use statewire::{ChannelId, Client, SessionConfig};
use statewire_core::{EntityId, Owner};
use statewire_testkit::Pos;
use statewire_transport::Transport;
use statewire_transport::loopback::{LoopbackConfig, LoopbackEndpoint, LoopbackNet};

type Input = [i8; 2];

struct World {
    net: LoopbackNet,
    addr: std::net::SocketAddr,
    protocol: Protocol,
    server: GameServer<LoopbackEndpoint, Input>,
    honest: GameClient<LoopbackEndpoint, Input>,
    evil: Client<LoopbackEndpoint>,
    honest_entity: Option<EntityId>,
    now: Duration,
}

impl World {
    fn new() -> World {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let protocol = Protocol::new().with::<Pos>().expect("one component");
        let t = net.endpoint();
        let addr = t.local_addr();
        let config = GameServerConfig {
            session: SessionConfig {
                // The fuzzer sends far faster than a real client may: no rate faults.
                max_messages_per_sec: 1_000_000,
                ..SessionConfig::default()
            },
            ..GameServerConfig::default()
        };
        let server = GameServer::new(t, &protocol, config).expect("valid config");
        let honest = GameClient::connect(net.endpoint(), addr, &protocol, Duration::ZERO)
            .expect("valid config");
        let evil = Self::raw(&net, addr, &protocol, Duration::ZERO);
        let mut w = World {
            net,
            addr,
            protocol,
            server,
            honest,
            evil,
            honest_entity: None,
            now: Duration::ZERO,
        };
        for _ in 0..20 {
            w.frame(&[]);
        }
        assert!(w.honest.is_connected() && w.evil.is_connected());
        w
    }

    fn raw(
        net: &LoopbackNet,
        addr: std::net::SocketAddr,
        p: &Protocol,
        now: Duration,
    ) -> Client<LoopbackEndpoint> {
        let cfg = SessionConfig {
            protocol_id: p.fingerprint(),
            max_messages_per_sec: 1_000_000,
            ..SessionConfig::default()
        };
        Client::new(net.endpoint(), addr, cfg, now, 7).expect("valid config")
    }

    fn frame(&mut self, messages: &[(u8, &[u8])]) {
        self.now += Duration::from_millis(33);
        let now = self.now;
        self.server.update(now).expect("the server never fails on peer input");
        while let Some(ev) = self.server.poll_event() {
            if let GameServerEvent::Joined(c) = ev {
                let e = self.server.spawn(Owner::Client(c)).expect("room");
                self.server.store_mut().set(e, &Pos { x: 1.0, y: 2.0 }).expect("in range");
                if Some(c) == self.honest.id() {
                    self.honest_entity = Some(e);
                }
            }
        }
        let _ = self.server.resolve_events(|p, store| {
            p.entities.first().is_some_and(|&e| store.owner(e) == Some(Owner::Server))
        });
        self.server.flush(now).expect("the server never fails on peer input");
        self.honest.update(now).expect("loopback");
        while self.honest.poll_event().is_some() {}
        self.honest.set_input(&[1, -1]);
        self.honest.flush(now).expect("loopback");
        self.evil.update(now).expect("loopback");
        while self.evil.poll_event().is_some() {}
        for &(ch, m) in messages {
            let _ = self.evil.send(ChannelId(ch & 1), m);
        }
        self.evil.flush(now).expect("loopback");
        if matches!(self.evil.state(), statewire::ClientState::Disconnected(_)) {
            self.evil = Self::raw(&self.net, self.addr, &self.protocol, now);
        }
    }
}

thread_local! {
    static WORLD: RefCell<Option<World>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    let messages = statewire_fuzz::message_batch(data);
    WORLD.with(|w| {
        let mut w = w.borrow_mut();
        let world = w.get_or_insert_with(World::new);
        world.frame(&messages);
        world.frame(&[]);
        assert!(world.honest.is_connected(), "the honest client stays connected");
        if let Some(e) = world.honest_entity {
            assert_eq!(
                world.server.store().component::<Pos>(e),
                Some(Pos { x: 1.0, y: 2.0 }),
                "nobody but the owner writes its entity"
            );
        }
    });
});
