//! Attacks on sessions over the in-memory loopback network on a virtual clock: connect
//! tokens (expired, forged, tampered, for another server, replayed from another address),
//! replayed and reflected datagrams, injected and spoofed packets, per-client faults (a peer
//! that never acknowledges, a message flood, a send error to one address) and amplification
//! of token requests.
//!
//! The loopback network stamps every datagram with the sender's own address, so spoofing is
//! done by [`Tap`], a wrapper transport around the server's endpoint that can hand the server
//! datagrams "from" any address; it also records sends, counts bytes per destination, drops
//! traffic and fails sends to one address on demand.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use statewire::packet::{Packet, RejectReason, TokenFields};
use statewire::*;
use statewire_core::ClientId;
use statewire_transport::loopback::{LoopbackConfig, LoopbackEndpoint, LoopbackNet};
use statewire_transport::netsim::SimRng;
use statewire_transport::{Received, Transport, TransportError};

const SECRET: Key = Key::from_bytes([7; 32]);
const BACKEND: Key = Key::from_bytes([42; 32]);
const OTHER_BACKEND: Key = Key::from_bytes([43; 32]);
const RELIABLE: ChannelId = ChannelId(0);
const UNRELIABLE: ChannelId = ChannelId(1);
const STEP: Duration = Duration::from_millis(10);
/// Unix time at the server's `now` = 0.
const UNIX0: u64 = 1_700_000_000;

// ---------------------------------------------------------------------------------------------
// A transport wrapper for spoofing, recording and failing.

#[derive(Default)]
struct TapState {
    /// Record every sent datagram in `sent`.
    record: bool,
    sent: Vec<(SocketAddr, Vec<u8>)>,
    /// Handed to `recv` before anything from the network, with the given source address.
    inject: VecDeque<(SocketAddr, Vec<u8>)>,
    /// `send` to this address fails with an I/O error.
    fail_to: Option<SocketAddr>,
    /// Sends are swallowed (reported as sent).
    drop_sends: bool,
    /// Datagrams from the network are discarded.
    drop_recvs: bool,
    /// Bytes of successful sends, by destination.
    bytes_to: HashMap<SocketAddr, u64>,
}

type Ctl = Rc<RefCell<TapState>>;

struct Tap<T> {
    inner: T,
    ctl: Ctl,
}

type Ep = Tap<LoopbackEndpoint>;

fn tap(inner: LoopbackEndpoint) -> (Ep, Ctl) {
    let ctl: Ctl = Rc::default();
    (
        Tap {
            inner,
            ctl: ctl.clone(),
        },
        ctl,
    )
}

impl<T: Transport> Transport for Tap<T> {
    fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }

    fn max_payload(&self) -> usize {
        self.inner.max_payload()
    }

    fn send(&mut self, to: SocketAddr, payload: &[u8]) -> Result<(), TransportError> {
        let mut s = self.ctl.borrow_mut();
        if s.fail_to == Some(to) {
            return Err(TransportError::Io(std::io::Error::other(
                "injected send failure",
            )));
        }
        if s.record {
            s.sent.push((to, payload.to_vec()));
        }
        if s.drop_sends {
            return Ok(());
        }
        self.inner.send(to, payload)?;
        *s.bytes_to.entry(to).or_default() += payload.len() as u64;
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<Received>, TransportError> {
        let mut s = self.ctl.borrow_mut();
        if let Some((from, data)) = s.inject.pop_front() {
            if data.len() > buf.len() {
                let needed = data.len();
                s.inject.push_front((from, data));
                return Err(TransportError::BufferTooSmall {
                    needed,
                    capacity: buf.len(),
                });
            }
            buf[..data.len()].copy_from_slice(&data);
            return Ok(Some(Received {
                len: data.len(),
                from,
            }));
        }
        // Bounded: the loopback queue holds at most its configured number of datagrams.
        loop {
            let got = self.inner.recv(buf)?;
            match got {
                Some(_) if s.drop_recvs => continue,
                other => return Ok(other),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A server and its clients on one virtual clock.

struct World {
    net: LoopbackNet,
    server: Server<Ep>,
    sctl: Ctl,
    now: Duration,
    events: Vec<ServerEvent>,
}

struct Player {
    client: Client<Ep>,
    ctl: Ctl,
    events: Vec<ClientEvent>,
}

impl Player {
    fn messages(&self) -> Vec<(ChannelId, Vec<u8>)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Message(ch, m) => Some((*ch, m.clone())),
                _ => None,
            })
            .collect()
    }

    fn addr(&self) -> SocketAddr {
        self.client.transport().local_addr()
    }
}

fn net() -> LoopbackNet {
    LoopbackNet::new(LoopbackConfig {
        max_queued_datagrams: 50_000,
        max_queued_bytes: 64 * 1024 * 1024,
        ..LoopbackConfig::default()
    })
}

impl World {
    fn dev(config: SessionConfig) -> World {
        let net = net();
        let (ep, sctl) = tap(net.endpoint());
        let server = Server::new(ep, config, SECRET).unwrap();
        World {
            net,
            server,
            sctl,
            now: Duration::ZERO,
            events: Vec::new(),
        }
    }

    /// A token server that knows itself as `public` (its own address if `None`).
    fn tokens(config: SessionConfig, public: Option<SocketAddr>) -> World {
        let net = net();
        let (ep, sctl) = tap(net.endpoint());
        let public = public.unwrap_or(ep.local_addr());
        let server = Server::with_tokens(
            ep,
            config,
            SECRET,
            TokenConfig {
                key: BACKEND,
                public_addrs: vec![public],
                unix_time_at_zero: Duration::from_secs(UNIX0),
            },
        )
        .unwrap();
        World {
            net,
            server,
            sctl,
            now: Duration::ZERO,
            events: Vec::new(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    fn dev_player(&self, config: SessionConfig, salt: u64) -> Player {
        let (ep, ctl) = tap(self.net.endpoint());
        Player {
            client: Client::new(ep, self.addr(), config, self.now, salt).unwrap(),
            ctl,
            events: Vec::new(),
        }
    }

    fn token_player(&self, token: &ConnectToken) -> Player {
        let (ep, ctl) = tap(self.net.endpoint());
        Player {
            client: Client::with_token(ep, self.addr(), SessionConfig::default(), self.now, token)
                .unwrap(),
            ctl,
            events: Vec::new(),
        }
    }

    fn step(&mut self, players: &mut [&mut Player]) {
        self.step_by(STEP, players);
    }

    fn step_by(&mut self, dt: Duration, players: &mut [&mut Player]) {
        self.now += dt;
        self.server.update(self.now).unwrap();
        while let Some(ev) = self.server.poll_event() {
            self.events.push(ev);
        }
        for p in players.iter_mut() {
            p.client.update(self.now).unwrap();
            while let Some(ev) = p.client.poll_event() {
                p.events.push(ev);
            }
        }
    }

    fn run(&mut self, steps: usize, players: &mut [&mut Player]) {
        for _ in 0..steps {
            self.step(players);
        }
    }

    /// Steps until every player is connected (at most 1 s).
    fn connect(&mut self, players: &mut [&mut Player]) {
        for _ in 0..100 {
            if players.iter().all(|p| p.client.is_connected()) {
                return;
            }
            self.step(players);
        }
        let states: Vec<_> = players.iter().map(|p| p.client.state()).collect();
        panic!("players did not connect: {states:?}");
    }

    fn messages_from(&self, id: ClientId) -> Vec<(ChannelId, Vec<u8>)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                ServerEvent::Message(c, ch, m) if *c == id => Some((*ch, m.clone())),
                _ => None,
            })
            .collect()
    }

    fn disconnect_reason(&self, id: ClientId) -> Option<DisconnectReason> {
        self.events.iter().find_map(|e| match e {
            ServerEvent::Disconnected(c, r) if *c == id => Some(*r),
            _ => None,
        })
    }

    /// Hands the server `data` as if it came from `from`.
    fn spoof(&self, from: SocketAddr, data: &[u8]) {
        self.sctl
            .borrow_mut()
            .inject
            .push_back((from, data.to_vec()));
    }
}

/// The user data a test token for client `id` carries.
fn user_data_for(id: u64) -> [u8; 32] {
    let mut user_data = [0u8; 32];
    for (i, b) in user_data.iter_mut().enumerate() {
        *b = (id as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
    user_data
}

fn token_for(key: &Key, id: u64, servers: Vec<SocketAddr>, expires: u64) -> ConnectToken {
    ConnectToken::generate(
        key,
        &TokenParams {
            protocol_id: SessionConfig::default().protocol_id,
            client_id: ClientId(id),
            server_addrs: servers,
            expires_unix_secs: expires,
            timeout_secs: 10,
            user_data: user_data_for(id),
        },
    )
    .unwrap()
}

fn valid_token(world: &World, id: u64) -> ConnectToken {
    token_for(&BACKEND, id, vec![world.addr()], UNIX0 + 3600)
}

/// Runs a refused player to its end (at most 6 s, past the connect timeout).
fn run_to_end(world: &mut World, p: &mut Player) -> DisconnectReason {
    for _ in 0..600 {
        if let ClientState::Disconnected(r) = p.client.state() {
            return r;
        }
        world.step(&mut [&mut *p]);
    }
    panic!("client never ended: {:?}", p.client.state());
}

fn rejected(reason: RejectReason) -> DisconnectReason {
    DisconnectReason::Rejected {
        reason,
        server_version: 1,
    }
}

/// Sends a numbered reliable message each way between the server and `p` and checks both
/// arrive.
fn exchange(world: &mut World, p: &mut Player, tag: u32) {
    let id = p.client.id().expect("connected");
    let up = format!("up {tag}").into_bytes();
    let down = format!("down {tag}").into_bytes();
    let before_up = world.messages_from(id).len();
    let before_down = p.messages().len();
    p.client.send(RELIABLE, &up).unwrap();
    world.server.send(id, RELIABLE, &down).unwrap();
    world.run(10, &mut [&mut *p]);
    assert_eq!(
        world.messages_from(id)[before_up..],
        [(RELIABLE, up)],
        "message {tag} to the server"
    );
    assert_eq!(
        p.messages()[before_down..],
        [(RELIABLE, down)],
        "message {tag} to the client"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Tokens.

#[test]
fn token_valid_connects_with_its_id_and_user_data() {
    let mut w = World::tokens(SessionConfig::default(), None);
    let token = valid_token(&w, 0xC0FFEE);
    let mut p = w.token_player(&token);
    w.connect(&mut [&mut p]);
    assert_eq!(p.client.id(), Some(ClientId(0xC0FFEE)));
    assert_eq!(
        w.server.token_user_data(ClientId(0xC0FFEE)),
        Some(&user_data_for(0xC0FFEE))
    );
    assert!(
        w.events
            .contains(&ServerEvent::Connected(ClientId(0xC0FFEE)))
    );
    exchange(&mut w, &mut p, 1);
    let s = w.server.stats();
    assert_eq!(
        (s.accepted, s.token_forged, s.token_expired),
        (1, 0, 0),
        "{s:?}"
    );
}

#[test]
fn token_expired_is_rejected() {
    let mut w = World::tokens(SessionConfig::default(), None);
    let token = token_for(&BACKEND, 5, vec![w.addr()], UNIX0 - 10);
    let mut p = w.token_player(&token);
    assert_eq!(
        run_to_end(&mut w, &mut p),
        rejected(RejectReason::TokenExpired)
    );
    let s = w.server.stats();
    assert!(s.token_expired >= 1, "{s:?}");
    assert_eq!((s.accepted, s.token_forged), (0, 0), "{s:?}");
    assert_eq!(w.server.client_count(), 0);
}

#[test]
fn token_forged_with_another_key_is_never_answered() {
    let mut w = World::tokens(SessionConfig::default(), None);
    let token = token_for(&OTHER_BACKEND, 5, vec![w.addr()], UNIX0 + 3600);
    let mut p = w.token_player(&token);
    assert_eq!(run_to_end(&mut w, &mut p), DisconnectReason::ConnectTimeout);
    let s = w.server.stats();
    // One request per 100 ms resend for the 5 s connect timeout, every one refused unread.
    assert!(s.token_forged >= 45, "{s:?}");
    assert_eq!(s.unvalidated_bytes_sent, 0, "{s:?}");
    assert_eq!(w.sctl.borrow().bytes_to.get(&p.addr()), None);
    assert_eq!(s.accepted, 0);
}

#[test]
fn token_for_another_server_is_rejected() {
    // The server knows itself by another public address than the one in the token.
    let elsewhere: SocketAddr = "203.0.113.9:7777".parse().unwrap();
    let mut w = World::tokens(SessionConfig::default(), Some(elsewhere));
    let token = valid_token(&w, 5);
    let mut p = w.token_player(&token);
    assert_eq!(
        run_to_end(&mut w, &mut p),
        rejected(RejectReason::WrongServer)
    );
    let s = w.server.stats();
    assert!(s.token_wrong_server >= 1, "{s:?}");
    assert_eq!(s.accepted, 0);
}

#[test]
fn token_with_tampered_ciphertext_is_never_answered() {
    let mut w = World::tokens(SessionConfig::default(), None);
    let token = valid_token(&w, 5);
    let mut bytes = token.encode();
    // The sealed private part is the encoding's last 208 bytes: flip one in its middle.
    let at = bytes.len() - 100;
    bytes[at] ^= 0x01;
    let tampered = ConnectToken::decode(&bytes).unwrap();
    assert_ne!(tampered, token);
    let mut p = w.token_player(&tampered);
    assert_eq!(run_to_end(&mut w, &mut p), DisconnectReason::ConnectTimeout);
    let s = w.server.stats();
    assert!(s.token_forged >= 45, "{s:?}");
    assert_eq!(s.unvalidated_bytes_sent, 0, "{s:?}");
    assert_eq!(s.accepted, 0);
}

#[test]
fn token_replayed_from_another_address_is_in_use_and_first_client_unaffected() {
    let mut w = World::tokens(SessionConfig::default(), None);
    let token = valid_token(&w, 77);
    let mut first = w.token_player(&token);
    w.connect(&mut [&mut first]);
    exchange(&mut w, &mut first, 1);
    let mut thief = w.token_player(&token);
    assert_ne!(thief.addr(), first.addr());
    let mut reason = None;
    for _ in 0..600 {
        w.step(&mut [&mut first, &mut thief]);
        if let ClientState::Disconnected(r) = thief.client.state() {
            reason = Some(r);
            break;
        }
    }
    assert_eq!(reason, Some(rejected(RejectReason::TokenInUse)));
    let s = w.server.stats();
    assert!(s.token_in_use >= 1, "{s:?}");
    assert_eq!(s.accepted, 1, "{s:?}");
    assert!(first.client.is_connected());
    assert_eq!(w.server.client_addr(ClientId(77)), Some(first.addr()));
    for tag in 2..5 {
        exchange(&mut w, &mut first, tag);
    }
    assert_eq!(w.disconnect_reason(ClientId(77)), None);
}

#[test]
fn development_client_against_token_server_is_told_token_required() {
    let mut w = World::tokens(SessionConfig::default(), None);
    let mut p = w.dev_player(SessionConfig::default(), 9);
    assert_eq!(
        run_to_end(&mut w, &mut p),
        rejected(RejectReason::TokenRequired)
    );
    let s = w.server.stats();
    assert!(s.token_required >= 1, "{s:?}");
    assert_eq!(s.accepted, 0);
}

// ---------------------------------------------------------------------------------------------
// 2. Replay.

fn is_sealed(datagram: &[u8]) -> bool {
    matches!(datagram.first(), Some(0x21..=0x26))
}

#[test]
fn recorded_client_datagrams_replayed_deliver_nothing_twice() {
    let mut w = World::tokens(SessionConfig::default(), None);
    let token = valid_token(&w, 31);
    let mut p = w.token_player(&token);
    p.ctl.borrow_mut().record = true;
    w.connect(&mut [&mut p]);
    let id = p.client.id().unwrap();
    let mut sent = Vec::new();
    for i in 0..20u32 {
        let m = format!("move {i}").into_bytes();
        p.client.send(RELIABLE, &m).unwrap();
        sent.push((RELIABLE, m));
        w.server.send(id, RELIABLE, b"snapshot").unwrap();
        w.run(3, &mut [&mut p]);
    }
    w.run(20, &mut [&mut p]);
    assert_eq!(w.messages_from(id), sent);
    p.ctl.borrow_mut().record = false;
    let recorded = std::mem::take(&mut p.ctl.borrow_mut().sent);
    assert!(recorded.iter().all(|(to, _)| *to == w.addr()));
    let sealed_count = recorded.iter().filter(|(_, d)| is_sealed(d)).count() as u64;
    let handshake_count = recorded.len() as u64 - sealed_count;
    assert!(
        sealed_count >= 20,
        "{sealed_count} sealed datagrams recorded"
    );
    assert!(
        handshake_count >= 2,
        "{handshake_count} handshake datagrams"
    );

    // From the client's own address (spoofed), once the session moved on.
    let before = w.server.stats();
    for (_, d) in &recorded {
        w.spoof(p.addr(), d);
    }
    w.run(5, &mut [&mut p]);
    let after = w.server.stats();
    assert_eq!(
        after.replayed - before.replayed,
        sealed_count,
        "{before:?} -> {after:?}"
    );
    assert_eq!(after.forged, before.forged);
    assert_eq!(after.accepted, 1);
    assert_eq!(
        w.messages_from(id),
        sent,
        "replay delivered a message again"
    );
    assert!(p.client.is_connected());
    assert_eq!(w.server.client_addr(id), Some(p.addr()));
    exchange(&mut w, &mut p, 1);
    sent.push((RELIABLE, b"up 1".to_vec()));

    // From another address.
    let other: SocketAddr = "127.66.0.1:4000".parse().unwrap();
    let before = w.server.stats();
    for (_, d) in &recorded {
        w.spoof(other, d);
    }
    w.run(5, &mut [&mut p]);
    let after = w.server.stats();
    assert_eq!(
        after.unknown_peer - before.unknown_peer,
        sealed_count,
        "{before:?} -> {after:?}"
    );
    assert_eq!(
        after.token_in_use - before.token_in_use,
        handshake_count,
        "{before:?} -> {after:?}"
    );
    assert_eq!(after.replayed, before.replayed);
    assert_eq!(after.accepted, 1);
    assert_eq!(
        w.messages_from(id),
        sent,
        "replay delivered a message again"
    );
    exchange(&mut w, &mut p, 2);
    assert_eq!(w.disconnect_reason(id), None);
}

// ---------------------------------------------------------------------------------------------
// 3. Reflection.

#[test]
fn server_datagrams_reflected_back_are_forged_and_deliver_nothing() {
    let mut w = World::tokens(SessionConfig::default(), None);
    let token = valid_token(&w, 32);
    let mut p = w.token_player(&token);
    w.sctl.borrow_mut().record = true;
    w.connect(&mut [&mut p]);
    let id = p.client.id().unwrap();
    for tag in 0..5 {
        exchange(&mut w, &mut p, tag);
    }
    w.sctl.borrow_mut().record = false;
    let recorded = std::mem::take(&mut w.sctl.borrow_mut().sent);
    assert!(recorded.iter().all(|(to, _)| *to == p.addr()));
    assert!(
        recorded.iter().all(|(_, d)| is_sealed(d)),
        "token mode seals all"
    );
    assert!(recorded.len() >= 10, "{} recorded", recorded.len());
    let delivered = w.messages_from(id).len();
    let before = w.server.stats();
    for (_, d) in &recorded {
        w.spoof(p.addr(), d);
    }
    w.run(5, &mut [&mut p]);
    let after = w.server.stats();
    // The replay window is checked before decryption: a reflected packet whose number the
    // client already used is refused as a replay, any other fails authentication.
    let refused = (after.forged - before.forged) + (after.replayed - before.replayed);
    assert_eq!(refused, recorded.len() as u64, "{before:?} -> {after:?}");
    assert!(after.forged > before.forged, "{before:?} -> {after:?}");
    assert_eq!(w.messages_from(id).len(), delivered);
    exchange(&mut w, &mut p, 99);
    assert_eq!(w.disconnect_reason(id), None);
}

// ---------------------------------------------------------------------------------------------
// 4. Injection from another port and spoofed disconnects.

/// A sealed packet of `kind` under a guessed key: kind, sequence number, body, tag.
fn guessed_sealed(rng: &mut SimRng, kind: u8, body_len: usize) -> Vec<u8> {
    let mut p = vec![kind];
    p.extend_from_slice(&rng.range_u64(0..=300).to_le_bytes());
    p.extend((0..body_len + 16).map(|_| rng.next_u64() as u8));
    p
}

#[test]
fn injected_and_spoofed_disconnects_leave_the_victim_connected() {
    const SEED: u64 = 0x5EED_0004;
    for token_mode in [false, true] {
        let mut w = if token_mode {
            World::tokens(SessionConfig::default(), None)
        } else {
            World::dev(SessionConfig::default())
        };
        let mut p = if token_mode {
            w.token_player(&valid_token(&w, 33))
        } else {
            w.dev_player(SessionConfig::default(), 3)
        };
        w.connect(&mut [&mut p]);
        let id = p.client.id().unwrap();
        let mut rogue = w.net.endpoint();
        let mut rng = SimRng::new(SEED);
        let before = w.server.stats();
        let mut received = 0;
        for i in 0..200u32 {
            // From another port of the same host: no session there.
            let d = guessed_sealed(&mut rng, 0x25, 1);
            rogue.send(w.addr(), &d).unwrap();
            let d = guessed_sealed(&mut rng, 0x24, 30);
            rogue.send(w.addr(), &d).unwrap();
            // From the victim's own address: a Disconnect under a guessed key.
            w.spoof(p.addr(), &guessed_sealed(&mut rng, 0x25, 1));
            w.server.send(id, UNRELIABLE, &i.to_le_bytes()).unwrap();
            w.step(&mut [&mut p]);
            received = p.messages().len();
        }
        let after = w.server.stats();
        let msg = format!("seed {SEED:#x}, token mode {token_mode}: {before:?} -> {after:?}");
        assert_eq!(after.unknown_peer - before.unknown_peer, 400, "{msg}");
        // Guessed numbers the victim already used are refused by the replay window before
        // any decryption; the rest fail authentication.
        let refused = (after.forged - before.forged) + (after.replayed - before.replayed);
        assert_eq!(refused, 200, "{msg}");
        assert!(after.forged - before.forged >= 100, "{msg}");
        assert_eq!(w.disconnect_reason(id), None, "{msg}");
        assert!(p.client.is_connected(), "{msg}");
        assert_eq!(received, 200, "{msg}");
        exchange(&mut w, &mut p, 1);
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Per-client faults.

/// What the server sent a peer that never acknowledges while the game streamed it snapshots.
struct Stream {
    /// Bytes to the victim from its connection to 2 s later, and after that to 30 s.
    first_2s: u64,
    after_2s: u64,
    /// Victim's end on the server, and how long after it connected.
    reason: Option<DisconnectReason>,
    after: Duration,
    /// Snapshots sent to, and received by, the good client.
    good_sent: usize,
    good_received: usize,
}

/// 30 s of a 1,000-byte unreliable snapshot every 33 ms to a victim (with `cut` applied to
/// its transport once it connected) and to a good client.
fn stream_to_a_peer(cut: impl Fn(&mut TapState)) -> Stream {
    let mut w = World::dev(SessionConfig::default());
    // The victim does not time out on its own side first, so it keeps sending keepalives.
    let mut victim_cfg = SessionConfig::default();
    victim_cfg.connection.idle_timeout = Duration::from_secs(60);
    let mut victim = w.dev_player(victim_cfg, 1);
    let mut good = w.dev_player(SessionConfig::default(), 2);
    w.connect(&mut [&mut victim, &mut good]);
    let (vid, gid) = (victim.client.id().unwrap(), good.client.id().unwrap());
    let vaddr = victim.addr();
    cut(&mut victim.ctl.borrow_mut());
    let bytes = |w: &World| w.sctl.borrow().bytes_to.get(&vaddr).copied().unwrap_or(0);
    let start = w.now;
    let at_start = bytes(&w);
    let mut at_2s = None;
    let mut reason = None;
    let mut after = Duration::ZERO;
    let snapshot = [0xA5u8; 1000];
    let mut good_sent = 0;
    let dt = Duration::from_millis(11);
    // 30 s in 11 ms steps, a snapshot every third step.
    for step in 0..2728u32 {
        if step % 3 == 0 {
            if w.server.is_connected(vid) {
                w.server.send(vid, UNRELIABLE, &snapshot).unwrap();
            }
            w.server.send(gid, UNRELIABLE, &snapshot).unwrap();
            good_sent += 1;
        }
        w.step_by(dt, &mut [&mut victim, &mut good]);
        if at_2s.is_none() && w.now - start >= Duration::from_secs(2) {
            at_2s = Some(bytes(&w));
        }
        if reason.is_none() {
            reason = w.disconnect_reason(vid);
            after = w.now - start;
        }
    }
    let at_2s = at_2s.unwrap();
    let good_received = good
        .messages()
        .iter()
        .filter(|(ch, m)| *ch == UNRELIABLE && m[..] == snapshot[..])
        .count();
    assert_eq!(w.disconnect_reason(gid), None);
    assert!(good.client.is_connected());
    Stream {
        first_2s: at_2s - at_start,
        after_2s: bytes(&w) - at_2s,
        reason,
        after,
        good_sent,
        good_received,
    }
}

#[test]
fn peer_that_never_acknowledges_is_paced_then_dropped_as_unresponsive() {
    // It receives nothing (so acknowledges nothing) but keeps sending keepalives.
    let s = stream_to_a_peer(|t| t.drop_recvs = true);
    println!(
        "non-acking peer, 30 s of 1,000 B every 33 ms (~909 KB offered): {} B in the first 2 s, \
         {} B after, {} B in all; dropped with {:?} after {:?}",
        s.first_2s,
        s.after_2s,
        s.first_2s + s.after_2s,
        s.reason,
        s.after
    );
    assert!(s.after_2s < 10_000, "{} B after the first 2 s", s.after_2s);
    assert!(s.first_2s < 100_000, "{} B in the first 2 s", s.first_2s);
    assert_eq!(s.reason, Some(DisconnectReason::Fault(Fault::Unresponsive)));
    assert!(
        s.after >= Duration::from_secs(9) && s.after <= Duration::from_secs(11),
        "dropped after {:?}",
        s.after
    );
    assert_eq!(s.good_received, s.good_sent);
}

#[test]
fn peer_that_goes_silent_is_paced_then_times_out() {
    // Sends nothing at all after connecting: the idle timeout ends it first.
    let s = stream_to_a_peer(|t| t.drop_sends = true);
    println!(
        "silent peer: {} B in the first 2 s, {} B after; dropped with {:?} after {:?}",
        s.first_2s, s.after_2s, s.reason, s.after
    );
    assert!(s.after_2s < 10_000, "{} B after the first 2 s", s.after_2s);
    assert_eq!(s.reason, Some(DisconnectReason::Timeout));
    assert!(
        s.after >= Duration::from_secs(9) && s.after <= Duration::from_secs(11),
        "dropped after {:?}",
        s.after
    );
    assert_eq!(s.good_received, s.good_sent);
}

#[test]
fn message_flood_disconnects_only_the_flooder() {
    let config = SessionConfig {
        max_messages_per_sec: 100,
        ..SessionConfig::default()
    };
    let mut w = World::dev(config.clone());
    let mut flooder = w.dev_player(config.clone(), 1);
    let mut good = w.dev_player(config, 2);
    w.connect(&mut [&mut flooder, &mut good]);
    let (fid, gid) = (flooder.client.id().unwrap(), good.client.id().unwrap());
    let mut good_sent = Vec::new();
    let mut flood_queued = 0u32;
    let mut dropped_at = None;
    let start = w.now;
    for step in 0..300u32 {
        for i in 0..50u32 {
            if flooder
                .client
                .send(UNRELIABLE, &(step * 50 + i).to_le_bytes())
                .is_ok()
            {
                flood_queued += 1;
            }
        }
        if step % 10 == 0 {
            let m = format!("good {step}").into_bytes();
            good.client.send(RELIABLE, &m).unwrap();
            good_sent.push((RELIABLE, m));
        }
        w.step(&mut [&mut flooder, &mut good]);
        if dropped_at.is_none() && w.disconnect_reason(fid).is_some() {
            dropped_at = Some(w.now - start);
        }
    }
    w.run(10, &mut [&mut flooder, &mut good]);
    let s = w.server.stats();
    let delivered = w.messages_from(fid).len();
    let msg = format!("{s:?}, flooder queued {flood_queued}, delivered {delivered}");
    assert_eq!(
        w.disconnect_reason(fid),
        Some(DisconnectReason::Fault(Fault::MessageRate)),
        "{msg}"
    );
    assert!(
        dropped_at.unwrap() < Duration::from_secs(1),
        "{dropped_at:?}"
    );
    assert_eq!(
        flooder.client.state(),
        ClientState::Disconnected(DisconnectReason::Kicked)
    );
    assert_eq!(s.fault_disconnects, 1, "{msg}");
    // A burst of twice the rate, plus the rate for the time it took.
    assert!(delivered <= 200 + 100, "{msg}");
    // It got more than its burst out before it was dropped (then its sends failed).
    assert!(flood_queued > 200, "{msg}");
    assert_eq!(w.messages_from(gid), good_sent);
    assert_eq!(w.disconnect_reason(gid), None);
    exchange(&mut w, &mut good, 1);
}

#[test]
fn send_error_to_one_address_disconnects_only_that_client() {
    let mut w = World::dev(SessionConfig::default());
    let mut victim = w.dev_player(SessionConfig::default(), 1);
    let mut good = w.dev_player(SessionConfig::default(), 2);
    w.connect(&mut [&mut victim, &mut good]);
    let (vid, gid) = (victim.client.id().unwrap(), good.client.id().unwrap());
    w.sctl.borrow_mut().fail_to = Some(victim.addr());
    let mut sent = 0;
    for step in 0..100u32 {
        if w.server.is_connected(vid) {
            w.server.send(vid, UNRELIABLE, b"to victim").unwrap();
        }
        w.server.send(gid, UNRELIABLE, &step.to_le_bytes()).unwrap();
        sent += 1;
        // World::step unwraps update: it keeps returning Ok.
        w.step(&mut [&mut victim, &mut good]);
        assert!(w.server.flush(w.now).is_ok());
    }
    let s = w.server.stats();
    assert_eq!(
        w.disconnect_reason(vid),
        Some(DisconnectReason::Fault(Fault::SendFailed)),
        "{s:?}"
    );
    assert_eq!(s.fault_disconnects, 1, "{s:?}");
    assert!(!w.server.is_connected(vid));
    assert_eq!(w.server.client_count(), 1);
    let got = good
        .messages()
        .iter()
        .filter(|(ch, _)| *ch == UNRELIABLE)
        .count();
    assert_eq!(got, sent);
    exchange(&mut w, &mut good, 1);
}

// ---------------------------------------------------------------------------------------------
// 6. Amplification of token requests.

#[test]
fn token_requests_are_not_amplified() {
    const SEED: u64 = 0xA3F1_0006;
    let config = SessionConfig {
        // Let every request through, so the ratio is over real replies.
        handshake_rate_per_ip: 1_000_000,
        handshake_burst_per_ip: 1_000_000,
        ..SessionConfig::default()
    };
    let mut w = World::tokens(config, None);
    let mut rogue = w.net.endpoint();
    let mut rng = SimRng::new(SEED);
    let server = w.addr();
    let elsewhere: SocketAddr = "203.0.113.9:7777".parse().unwrap();
    let mut sent_bytes = 0u64;
    let mut kinds = [0u32; 5];
    let mut pkt = Vec::new();
    for i in 0..1000u64 {
        let kind = rng.range_u64(0..=4) as usize;
        kinds[kind] += 1;
        let token = match kind {
            0 | 4 => token_for(&BACKEND, i + 1, vec![server], UNIX0 + 3600),
            1 => token_for(&OTHER_BACKEND, i + 1, vec![server], UNIX0 + 3600),
            2 => token_for(&BACKEND, i + 1, vec![server], UNIX0 - 1),
            _ => token_for(&BACKEND, i + 1, vec![elsewhere], UNIX0 + 3600),
        };
        let fields = TokenFields {
            protocol: token.protocol_id,
            version: 1,
            channels: SessionConfig::default().connection.fingerprint(),
            expires: token.expires_unix_secs,
            token: token.private,
        };
        pkt.clear();
        if kind == 4 {
            // A response with a valid token but a guessed answer.
            let answer: Vec<u8> = std::iter::once(0x26)
                .chain((0..40).map(|_| rng.next_u64() as u8))
                .collect();
            Packet::TokenResponse {
                fields,
                answer: &answer,
            }
            .encode(&mut pkt);
        } else {
            Packet::TokenRequest(fields).encode(&mut pkt);
        }
        rogue.send(server, &pkt).unwrap();
        sent_bytes += pkt.len() as u64;
        if i % 100 == 99 {
            w.server.update(Duration::from_millis(i)).unwrap();
        }
    }
    w.server.update(Duration::from_secs(1)).unwrap();
    let mut reply_bytes = 0u64;
    let mut replies = 0u64;
    let mut largest = 0;
    let mut buf = [0u8; 2048];
    while let Some(got) = rogue.recv(&mut buf).unwrap() {
        reply_bytes += got.len as u64;
        replies += 1;
        largest = largest.max(got.len);
    }
    let s = w.server.stats();
    let ratio = reply_bytes as f64 / sent_bytes as f64;
    println!(
        "token request amplification: {reply_bytes} B in {replies} replies to {sent_bytes} B in \
         1000 requests (kinds valid/forged/expired/wrong server/bad answer {kinds:?}): ratio \
         {ratio:.3}, largest reply {largest} B"
    );
    let msg = format!("seed {SEED:#x}: {s:?}");
    assert!(ratio <= 1.0, "ratio {ratio}, {msg}");
    assert!(largest <= pkt.len(), "{largest} B reply, {msg}");
    assert_eq!(s.unvalidated_bytes_received, sent_bytes, "{msg}");
    assert_eq!(s.unvalidated_bytes_sent, reply_bytes, "{msg}");
    assert_eq!(s.rate_limited, 0, "{msg}");
    assert_eq!(s.accepted, 0, "{msg}");
    assert_eq!(s.token_forged, u64::from(kinds[1]), "{msg}");
    assert_eq!(s.token_expired, u64::from(kinds[2]), "{msg}");
    assert_eq!(s.token_wrong_server, u64::from(kinds[3]), "{msg}");
    assert_eq!(s.rejected_cookie, u64::from(kinds[4]), "{msg}");
    // Every request but the forged ones is answered.
    assert_eq!(replies, 1000 - u64::from(kinds[1]), "{msg}");
}
