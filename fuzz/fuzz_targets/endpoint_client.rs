//! A game client endpoint under an authenticated, hostile server: every fuzz input is a batch
//! of session messages (each `[channel & 1, len, bytes...]`) that a raw session `Server`, with
//! which the `GameClient` completed an honest handshake, sends to it on channel 0 (reliable)
//! or 1 (unreliable). The bodies go as they are: STATE (0x01) and PARTIAL (0x06) reach the
//! replication decoder, REFUSED, TIMING and USER their own decoders, anything else the
//! client's malformed counter. The protocol has one component (`Pos`) and one user channel
//! of each delivery (0: reliable, at most 64 bytes; 1: unreliable, at most 16).
//!
//! After the messages the client runs one frame of everything a game calls: `update`, its
//! events, `advance` and an input for each tick it hands out, `render_time`, `input_tick`,
//! `snapshot_complete`, `owned`, `snapshot`, a proposal, `flush`. It must never panic, its
//! `update`/`flush` never fail (the loopback never does), a render time is finite, and
//! `advance` hands out at most `max_catch_up` ticks.
//!
//! One server and one client live across iterations (a handshake per input would be most of
//! the work); a client the hostile server got disconnected (it may legitimately kick it, or
//! stop acknowledging) is replaced by a new world.

#![no_main]

use std::cell::RefCell;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use statewire::endpoint::{Delivery, GameClient, GameClientConfig, GameClientEvent, Protocol};
use statewire::{ChannelId, ClientState, Key, Server, ServerEvent, SessionConfig};
use statewire_core::{ClientId, Tick};
use statewire_testkit::Pos;
use statewire_transport::Transport;
use statewire_transport::loopback::{LoopbackConfig, LoopbackEndpoint, LoopbackNet};

type Input = [i8; 2];

/// Frames to complete the handshake in (it takes a few on the loopback).
const HANDSHAKE_FRAMES: usize = 50;

struct World {
    /// Kept alive for the endpoints (they share its queues).
    _net: LoopbackNet,
    server: Server<LoopbackEndpoint>,
    client: GameClient<LoopbackEndpoint, Input>,
    /// The client's id, as the server knows it.
    id: Option<ClientId>,
    /// The session ended (on either side): build a new world for the next input.
    dead: bool,
    now: Duration,
    frames: u64,
}

impl World {
    fn new() -> World {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let mut protocol = Protocol::new().with::<Pos>().expect("one component");
        // One user channel of each delivery, so that USER messages can also be accepted.
        protocol
            .channel::<Vec<u8>>("chat", Delivery::Reliable, 64)
            .expect("valid channel");
        protocol
            .channel::<u32>("ping", Delivery::Unreliable, 16)
            .expect("valid channel");
        let t = net.endpoint();
        let addr = t.local_addr();
        let session = SessionConfig {
            protocol_id: protocol.fingerprint(),
            // Our honest client sends a TICK and a proposal per frame: far under the default,
            // but nothing here should fault on rate.
            max_messages_per_sec: 1_000_000,
            ..SessionConfig::default()
        };
        let server =
            Server::new(t, session.clone(), Key::from_bytes([7; 32])).expect("valid config");
        let config = GameClientConfig {
            session,
            handshake_salt: Some(1),
            ..GameClientConfig::default()
        };
        let client = GameClient::new(net.endpoint(), addr, &protocol, config, Duration::ZERO)
            .expect("valid config");
        let mut w = World {
            _net: net,
            server,
            client,
            id: None,
            dead: false,
            now: Duration::ZERO,
            frames: 0,
        };
        for _ in 0..HANDSHAKE_FRAMES {
            if w.id.is_some() && w.client.is_connected() {
                break;
            }
            w.frame(&[]);
        }
        assert!(
            w.id.is_some() && w.client.is_connected() && !w.dead,
            "the handshake completes on the loopback"
        );
        w
    }

    fn frame(&mut self, messages: &[(u8, &[u8])]) {
        self.now += Duration::from_millis(33);
        self.frames += 1;
        let now = self.now;

        // The hostile server.
        self.server.update(now).expect("loopback");
        while let Some(ev) = self.server.poll_event() {
            match ev {
                ServerEvent::Connected(c) => self.id = Some(c),
                ServerEvent::Disconnected(c, _) if Some(c) == self.id => self.dead = true,
                _ => {}
            }
        }
        if let Some(id) = self.id {
            for &(ch, m) in messages {
                // A refused reliable message (the client stopped acknowledging) kicks it:
                // noticed below through the client's state.
                let _ = self.server.send(id, ChannelId(ch & 1), m);
            }
        }
        self.server.flush(now).expect("loopback");

        // The game client, one frame of everything a game calls.
        let c = &mut self.client;
        c.update(now)
            .expect("the client never fails on server input");
        let mut bounded = 0;
        while let Some(ev) = c.poll_event() {
            if let GameClientEvent::Disconnected(_) = ev {
                self.dead = true;
            }
            bounded += 1;
            assert!(bounded <= 1 << 20, "events are bounded");
        }
        let max_catch_up = c.clock().config().max_catch_up;
        let a = c.advance(now);
        assert!(
            a.count <= max_catch_up,
            "advance hands out {} ticks, over max_catch_up {max_catch_up}",
            a.count
        );
        if let Some(p) = a.position {
            assert!(p.is_finite(), "clock position {p}");
        }
        for (i, tick) in a.ticks().enumerate() {
            assert!(i < max_catch_up as usize, "ticks() yields at most count");
            c.set_input_at(tick, &[1, -1]);
        }
        if let Some(r) = c.render_time(now) {
            let f = r.fraction();
            assert!(
                f.is_finite() && (0.0..1.0).contains(&f),
                "render fraction {f}"
            );
            let _ = r.tick();
        }
        let tick = c.input_tick();
        let _ = c.snapshot_complete();
        let owned: Vec<_> = c.owned().iter().copied().take(2).collect();
        for e in &owned {
            assert!(c.contains(*e), "an owned entity {e:?} is in our view");
        }
        let snap = c.snapshot();
        let _ = snap;
        let _ = c.propose_at(
            tick.unwrap_or(Tick(0)),
            (self.frames & 0xffff) as u16,
            &owned,
            &[0xab; 4],
        );
        c.flush(now)
            .expect("the client never fails on server input");
        if matches!(c.session().state(), ClientState::Disconnected(_)) {
            self.dead = true;
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
        // A frame without hostile messages: the reliable ones' acks, the clock catching up.
        world.frame(&[]);
        if world.dead {
            *w = None;
        }
    });
});
