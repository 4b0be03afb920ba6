//! Protocol tests on a deterministic pair harness.
//!
//! [`Pair`] joins two [`Connection`]s through the transport crate's loopback network, each
//! direction wrapped in its own seeded [`NetSim`], and drives both on a virtual clock in fixed
//! ticks of [`TICK`] (20 ms: a 50 Hz game loop). Each tick it delivers every datagram due by
//! then, drains `poll_transmit` on both sides, and collects received messages. Seeds are printed
//! (shown when a test fails) and can be overridden with `STATEWIRE_SEED`.

use std::net::SocketAddr;
use std::time::Duration;

use proptest::prelude::*;
use statewire_transport::Transport;
use statewire_transport::loopback::{LoopbackConfig, LoopbackEndpoint, LoopbackNet};
use statewire_transport::netsim::{LinkConfig, NetSim, SimRng};

use super::*;

/// One harness tick.
const TICK: Duration = Duration::from_millis(20);
/// Most payloads one side may emit in one tick before the harness calls it a livelock.
const MAX_TRANSMITS_PER_TICK: usize = 10_000;

fn seed(default: u64) -> u64 {
    let seed = std::env::var("STATEWIRE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    println!("seed = {seed} (override with STATEWIRE_SEED)");
    seed
}

struct Side {
    conn: Connection,
    sim: NetSim<LoopbackEndpoint>,
    peer: SocketAddr,
    inbox: Vec<(ChannelId, Vec<u8>)>,
    /// Copies of every payload this side sent, when capturing.
    captured: Option<Vec<Vec<u8>>>,
}

struct Pair {
    now: Duration,
    ticks: u64,
    transmits: u64,
    a: Side,
    b: Side,
    /// Largest `held` seen on either side, to check the reassembly bound.
    max_held: usize,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl Pair {
    fn new(config: ConnectionConfig, ab: LinkConfig, ba: LinkConfig, seed: u64) -> Self {
        let net = LoopbackNet::new(LoopbackConfig::default());
        let (ea, eb) = (net.endpoint(), net.endpoint());
        let (addr_a, addr_b) = (ea.local_addr(), eb.local_addr());
        let mut rng = SimRng::new(seed);
        let side = |endpoint, link, peer, rng: &mut SimRng| Side {
            conn: Connection::new(config.clone(), Duration::ZERO),
            sim: NetSim::new(endpoint, link, rng.next_u64()),
            peer,
            inbox: Vec::new(),
            captured: None,
        };
        let a = side(ea, ab, addr_b, &mut rng);
        let b = side(eb, ba, addr_a, &mut rng);
        Self {
            now: Duration::ZERO,
            ticks: 0,
            transmits: 0,
            a,
            b,
            max_held: 0,
            buf: vec![0; 65_536],
            out: Vec::new(),
        }
    }

    fn symmetric(config: ConnectionConfig, link: LinkConfig, seed: u64) -> Self {
        Self::new(config, link.clone(), link, seed)
    }

    /// One tick: deliver, transmit, collect, advance the clock.
    fn step(&mut self) {
        let now = self.now;
        for side in [&mut self.a, &mut self.b] {
            side.sim.advance_to(now).expect("loopback delivery");
        }
        for side in [&mut self.a, &mut self.b] {
            while let Some(got) = side.sim.recv(&mut self.buf).expect("loopback recv") {
                side.conn
                    .handle_payload(now, &self.buf[..got.len])
                    .expect("a genuine payload is accepted");
            }
        }
        for side in [&mut self.a, &mut self.b] {
            let max = side.conn.config().max_packet_size;
            let mut n = 0;
            loop {
                self.out.clear();
                if !side.conn.poll_transmit(now, &mut self.out) {
                    break;
                }
                assert!(self.out.len() <= max, "payload of {} bytes", self.out.len());
                side.sim.send(side.peer, &self.out).expect("netsim send");
                if let Some(c) = &mut side.captured {
                    c.push(self.out.clone());
                }
                n += 1;
                assert!(
                    n < MAX_TRANSMITS_PER_TICK,
                    "poll_transmit never returns false"
                );
            }
            self.transmits += n as u64;
            self.max_held = self.max_held.max(side.conn.held);
            while let Some(m) = side.conn.poll_message() {
                side.inbox.push(m);
            }
        }
        self.now += TICK;
        self.ticks += 1;
    }

    /// Steps until `done` or `max_ticks`; returns whether `done` became true.
    fn run_until(&mut self, max_ticks: u64, mut done: impl FnMut(&Pair) -> bool) -> bool {
        let end = self.ticks + max_ticks;
        while self.ticks < end {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }
}

fn unacked(conn: &Connection) -> usize {
    conn.channels
        .iter()
        .map(|c| match c {
            Channel::Reliable { send, .. } => send.len(),
            _ => 0,
        })
        .sum()
}

/// Deterministic test message number `i` of `stream`: 4..=`max_len` bytes starting with `i`.
fn message(stream: u32, i: u32, max_len: u64) -> Vec<u8> {
    let mut rng = SimRng::new((u64::from(stream) << 32) | u64::from(i));
    let len = rng.range_u64(4..=max_len) as usize;
    let mut m = i.to_le_bytes().to_vec();
    m.resize_with(len, || rng.next_u64() as u8);
    m
}

fn hostile() -> LinkConfig {
    let link = LinkConfig::profile("hostile").expect("built-in profile");
    assert_eq!(
        (link.loss, link.duplicate, link.reorder),
        (0.25, 0.25, 0.10)
    );
    assert_eq!(
        (link.latency, link.jitter),
        (Duration::from_millis(250), Duration::from_millis(100))
    );
    link
}

/// Pushes messages `next..total` of `stream` on channel 0 until the queue is full.
fn feed(conn: &mut Connection, stream: u32, next: &mut u32, total: u32, max_len: u64) {
    while *next < total {
        match conn.send(ChannelId(0), &message(stream, *next, max_len)) {
            Ok(()) => *next += 1,
            Err(SendError::QueueFull { .. }) => return,
            Err(e) => panic!("unexpected send error: {e}"),
        }
    }
}

fn assert_stream(inbox: &[(ChannelId, Vec<u8>)], stream: u32, total: u32, max_len: u64) {
    assert_eq!(inbox.len(), total as usize);
    for (i, (channel, m)) in inbox.iter().enumerate() {
        assert_eq!(*channel, ChannelId(0));
        assert!(
            *m == message(stream, i as u32, max_len),
            "message {i} differs"
        );
    }
}

/// (1) 10 000 reliable messages through the hostile profile in both directions (25% loss, 25%
/// duplication, 10% reordering, 250 ms ± 100 ms one way), with 1 000 going the other way at
/// the same time: all delivered exactly once, in order, byte for byte.
#[test]
fn reliable_10k_over_hostile_link() {
    const N_AB: u32 = 10_000;
    const N_BA: u32 = 1_000;
    const MAX_LEN: u64 = 300;
    let mut pair = Pair::symmetric(ConnectionConfig::default(), hostile(), seed(1));
    let (mut next_a, mut next_b) = (0, 0);
    let done = loop {
        feed(&mut pair.a.conn, 1, &mut next_a, N_AB, MAX_LEN);
        feed(&mut pair.b.conn, 2, &mut next_b, N_BA, MAX_LEN);
        if pair.b.inbox.len() == N_AB as usize && pair.a.inbox.len() == N_BA as usize {
            break true;
        }
        if pair.ticks >= 5_000 {
            break false;
        }
        pair.step();
    };
    let a = pair.a.conn.stats();
    let b = pair.b.conn.stats();
    println!(
        "virtual {:?}, {} ticks, {} payloads; a: {a:?}; b: {b:?}; a rtt {:?}",
        pair.now,
        pair.ticks,
        pair.transmits,
        pair.a.conn.rtt()
    );
    assert!(done, "not all delivered after {} ticks", pair.ticks);
    assert_stream(&pair.b.inbox, 1, N_AB, MAX_LEN);
    assert_stream(&pair.a.inbox, 2, N_BA, MAX_LEN);
    // The link really was hostile, and the connection noticed.
    assert!(b.duplicates_dropped > 0 && a.resends > 0 && a.packets_lost > 0);
    assert_eq!(a.bad_payloads + b.bad_payloads, 0);
    // Bounded work: about 100 s of virtual time at most, and a bounded number of payloads.
    assert!(pair.ticks < 5_000);
    assert!(pair.transmits < 10_000, "{} payloads", pair.transmits);
    // The senders learn that everything arrived.
    assert!(
        pair.run_until(500, |p| unacked(&p.a.conn) == 0 && unacked(&p.b.conn) == 0),
        "senders still hold unacknowledged messages"
    );
}

/// (2) 64 reliable messages at 90% loss in each direction (50 ms one way) all arrive within
/// 1000 ticks (20 s), for each of 20 seeds.
#[test]
fn reliable_64_at_90_percent_loss() {
    let link = LinkConfig {
        latency: Duration::from_millis(50),
        loss: 0.9,
        ..LinkConfig::default()
    };
    let base = seed(100);
    let mut worst = 0;
    // At 90% loss each way, 99% of round trips fail, so whole seconds pass without an
    // acknowledgement: the default pacing would rightly treat the peer as not receiving and
    // send only pings. This test is about reliable delivery itself, so it turns pacing off.
    let config = ConnectionConfig {
        ack_timeout: Duration::from_secs(60),
        unresponsive_timeout: Duration::from_secs(60),
        ..ConnectionConfig::default()
    };
    for s in base..base + 20 {
        let mut pair = Pair::symmetric(config.clone(), link.clone(), s);
        let mut next = 0;
        feed(&mut pair.a.conn, 3, &mut next, 64, 40);
        assert_eq!(next, 64);
        let ok = pair.run_until(1000, |p| p.b.inbox.len() == 64);
        assert!(
            ok,
            "seed {s}: {} of 64 after 1000 ticks",
            pair.b.inbox.len()
        );
        assert_stream(&pair.b.inbox, 3, 64, 40);
        worst = worst.max(pair.ticks);
    }
    println!("slowest seed needed {worst} ticks");
}

/// (3) Messages of 100 KiB and one of the 256 KiB maximum, between small ones, fragment and
/// reassemble under loss, duplication and reordering, within the reassembly bound.
#[test]
fn large_messages_fragment_and_reassemble() {
    let link = LinkConfig {
        latency: Duration::from_millis(40),
        jitter: Duration::from_millis(20),
        loss: 0.2,
        duplicate: 0.1,
        reorder: 0.1,
        ..LinkConfig::default()
    };
    let config = ConnectionConfig::default();
    let mut pair = Pair::symmetric(config.clone(), link, seed(7));
    let mut rng = SimRng::new(99);
    let mut sent = Vec::new();
    for i in 0..10 {
        let len = match i {
            9 => 256 * 1024,
            _ if i % 2 == 0 => 100 * 1024,
            _ => 10,
        };
        let m: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        pair.a
            .conn
            .send(ChannelId(0), &m)
            .expect("fits the channel");
        sent.push(m);
    }
    assert!(pair.run_until(3000, |p| p.b.inbox.len() == sent.len()));
    for (i, (channel, m)) in pair.b.inbox.iter().enumerate() {
        assert_eq!(*channel, ChannelId(0));
        assert!(*m == sent[i], "message {i} differs");
    }
    let bound = config.max_reassembly_bytes + 256 * 1024 + 4096 * 24 + 4096 * HELD_OVERHEAD;
    assert!(pair.max_held <= bound, "held {} > {bound}", pair.max_held);
    let stats = pair.a.conn.stats();
    println!("{} ticks; a: {stats:?}", pair.ticks);
    assert!(stats.resends > 0);
}

/// A reassembly budget smaller than one message still lets messages through one at a time.
#[test]
fn budget_smaller_than_a_message_still_progresses() {
    let config = ConnectionConfig {
        max_reassembly_bytes: 16 * 1024,
        ..ConnectionConfig::default()
    };
    let link = LinkConfig {
        latency: Duration::from_millis(30),
        loss: 0.1,
        reorder: 0.2,
        jitter: Duration::from_millis(10),
        ..LinkConfig::default()
    };
    let mut pair = Pair::symmetric(config.clone(), link, seed(8));
    let sent: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 40 * 1024]).collect();
    for m in &sent {
        pair.a.conn.send(ChannelId(0), m).expect("fits the channel");
    }
    assert!(pair.run_until(3000, |p| p.b.inbox.len() == sent.len()));
    assert!(pair.b.inbox.iter().map(|(_, m)| m).eq(sent.iter()));
    assert!(pair.b.conn.stats().refused_fragments > 0);
    let bound = config.max_reassembly_bytes + 40 * 1024 + 64 * (24 + HELD_OVERHEAD);
    assert!(pair.max_held <= bound, "held {} > {bound}", pair.max_held);
}

/// (4) Oversized messages, unknown channels and full queues are refused with typed errors,
/// and a full reliable queue never loses what it accepted.
#[test]
fn send_errors() {
    let now = Duration::ZERO;
    let mut conn = Connection::new(ConnectionConfig::default(), now);
    let max = 256 * 1024;
    assert_eq!(
        conn.send(ChannelId(0), &vec![0; max + 1]),
        Err(SendError::TooLarge { len: max + 1, max })
    );
    conn.send(ChannelId(0), &vec![0; max]).unwrap();
    assert_eq!(
        conn.send(ChannelId(1), &[0; 1136]),
        Err(SendError::TooLarge {
            len: 1136,
            max: 1135
        })
    );
    conn.send(ChannelId(1), &[0; 1135]).unwrap();
    assert_eq!(
        conn.send(ChannelId(2), &[0; 1134]),
        Err(SendError::TooLarge {
            len: 1134,
            max: 1133
        })
    );
    conn.send(ChannelId(2), &[0; 1133]).unwrap();
    assert_eq!(
        conn.send(ChannelId(3), b"x"),
        Err(SendError::UnknownChannel {
            channel: ChannelId(3)
        })
    );
    assert_eq!(conn.max_message_size(ChannelId(1)), Some(1135));

    // Unreliable queue: full at 256, free again once flushed.
    for _ in 1..256 {
        conn.send(ChannelId(1), b"u").unwrap();
    }
    assert_eq!(
        conn.send(ChannelId(1), b"u"),
        Err(SendError::QueueFull {
            channel: ChannelId(1),
            capacity: 256
        })
    );
    let mut out = Vec::new();
    while conn.poll_transmit(now, &mut out) {}
    conn.send(ChannelId(1), b"u").unwrap();

    // Reliable queue: full at 1024 unacknowledged; everything accepted is delivered.
    let mut pair = Pair::symmetric(ConnectionConfig::default(), LinkConfig::default(), 4);
    let mut accepted = Vec::new();
    for i in 0..1024u32 {
        pair.a.conn.send(ChannelId(0), &i.to_le_bytes()).unwrap();
        accepted.push(i.to_le_bytes().to_vec());
    }
    assert_eq!(
        pair.a.conn.send(ChannelId(0), b"overflow"),
        Err(SendError::QueueFull {
            channel: ChannelId(0),
            capacity: 1024
        })
    );
    assert!(pair.run_until(100, |p| unacked(&p.a.conn) == 0));
    assert!(pair.b.inbox.iter().map(|(_, m)| m).eq(accepted.iter()));
    pair.a.conn.send(ChannelId(0), b"room again").unwrap();
}

/// (5) Over a reordering, duplicating link, the sequenced channel only ever moves forward.
#[test]
fn sequenced_never_goes_backwards() {
    let mut pair = Pair::symmetric(ConnectionConfig::default(), hostile(), seed(5));
    for i in 0..1500u32 {
        pair.a.conn.send(ChannelId(2), &i.to_le_bytes()).unwrap();
        pair.a.conn.send(ChannelId(1), &i.to_le_bytes()).unwrap();
        pair.step();
    }
    pair.run_until(100, |_| false);
    let values = |channel| {
        pair.b
            .inbox
            .iter()
            .filter(|(c, _)| *c == channel)
            .map(|(_, m)| u32::from_le_bytes(m[..4].try_into().unwrap()))
            .collect::<Vec<_>>()
    };
    let sequenced = values(ChannelId(2));
    assert!(sequenced.windows(2).all(|w| w[0] < w[1]));
    println!("{} of 1500 sequenced messages delivered", sequenced.len());
    assert!(sequenced.len() > 600, "{} of 1500", sequenced.len());
    // The plain unreliable channel, on the same packets, did see reordering and duplicates.
    let unreliable = values(ChannelId(1));
    assert!(unreliable.windows(2).any(|w| w[0] >= w[1]));
    assert!(pair.b.conn.stats().stale_dropped > 0);
}

/// (5b) Sequenced, payload by payload: an older message after a newer one is dropped, as is a
/// duplicate of the newer one.
#[test]
fn sequenced_drops_older_payloads() {
    let now = Duration::ZERO;
    let mut a = Connection::new(ConnectionConfig::default(), now);
    let mut b = Connection::new(ConnectionConfig::default(), now);
    let mut payloads = Vec::new();
    for m in [b"old", b"new"] {
        a.send(ChannelId(2), m).unwrap();
        let mut out = Vec::new();
        assert!(a.poll_transmit(now, &mut out));
        payloads.push(out);
    }
    b.handle_payload(now, &payloads[1]).unwrap();
    b.handle_payload(now, &payloads[0]).unwrap();
    b.handle_payload(now, &payloads[1]).unwrap();
    assert_eq!(b.poll_message(), Some((ChannelId(2), b"new".to_vec())));
    assert_eq!(b.poll_message(), None);
}

fn warm_pair(seed: u64) -> (Pair, Vec<Vec<u8>>) {
    let mut pair = Pair::symmetric(ConnectionConfig::default(), LinkConfig::default(), seed);
    pair.a.captured = Some(Vec::new());
    let mut rng = SimRng::new(seed);
    for i in 0..12u32 {
        let big: Vec<u8> = (0..3000).map(|_| rng.next_u64() as u8).collect();
        pair.a.conn.send(ChannelId(0), &i.to_le_bytes()).unwrap();
        pair.a.conn.send(ChannelId(1), &i.to_le_bytes()).unwrap();
        pair.a.conn.send(ChannelId(2), &i.to_le_bytes()).unwrap();
        if i % 4 == 0 {
            pair.a.conn.send(ChannelId(0), &big).unwrap();
        }
        pair.b.conn.send(ChannelId(0), &i.to_le_bytes()).unwrap();
        pair.step();
    }
    assert!(pair.run_until(50, |p| unacked(&p.a.conn) == 0
        && unacked(&p.b.conn) == 0
        && p.a.conn.unreported == 0
        && p.b.conn.unreported == 0));
    pair.a.inbox.clear();
    pair.b.inbox.clear();
    let captured = pair.a.captured.take().unwrap();
    (pair, captured)
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    Remove(usize),
}

#[derive(Debug, Clone)]
enum Input {
    Random(Vec<u8>),
    Mutated(usize, Vec<Mutation>),
}

fn arb_input() -> impl Strategy<Value = Input> {
    let mutation = prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Mutation::Set(i, x)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Mutation::Insert(i, x)),
        any::<usize>().prop_map(Mutation::Remove),
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..1300).prop_map(Input::Random),
        (any::<usize>(), proptest::collection::vec(mutation, 1..4))
            .prop_map(|(i, m)| Input::Mutated(i, m)),
    ]
}

fn apply(captured: &[Vec<u8>], input: &Input) -> Vec<u8> {
    match input {
        Input::Random(bytes) => bytes.clone(),
        Input::Mutated(index, mutations) => {
            let mut p = captured[index % captured.len()].clone();
            for m in mutations {
                let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
                match *m {
                    Mutation::Flip(i, x) if !p.is_empty() => {
                        let i = at(i, p.len());
                        p[i] ^= x;
                    }
                    Mutation::Set(i, x) if !p.is_empty() => {
                        let i = at(i, p.len());
                        p[i] = x;
                    }
                    Mutation::Truncate(i) => p.truncate(at(i, p.len() + 1)),
                    Mutation::Insert(i, x) => p.insert(at(i, p.len() + 1), x),
                    Mutation::Remove(i) if !p.is_empty() => {
                        p.remove(at(i, p.len()));
                    }
                    _ => {}
                }
            }
            p
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// (6) Random bytes and mutated genuine payloads never panic, fail with typed errors that
    /// change nothing, and leave a connection that still completes an exchange. Well-formed
    /// mutations can inject messages (there is no integrity check at this layer), so message
    /// contents after the fuzzing are compared only when nothing was injected.
    #[test]
    fn hostile_payloads_do_not_break_the_connection(
        inputs in proptest::collection::vec(arb_input(), 1..24),
        seed in 0u64..1_000,
    ) {
        let (mut pair, captured) = warm_pair(seed);
        let now = pair.now;
        let mut injected = 0;
        for input in &inputs {
            let payload = apply(&captured, input);
            let before = pair.b.conn.stats();
            match pair.b.conn.handle_payload(now, &payload) {
                Ok(()) => {}
                Err(e) => {
                    prop_assert!(!e.to_string().is_empty());
                    let after = pair.b.conn.stats();
                    prop_assert_eq!(after.bad_payloads, before.bad_payloads + 1);
                    prop_assert_eq!(after.packets_received, before.packets_received);
                }
            }
            while pair.b.conn.poll_message().is_some() {
                injected += 1;
            }
        }
        if let Channel::Reliable { recv, .. } = &pair.b.conn.channels[0] {
            injected += recv.held_slots();
        }

        let mut next_a = 0;
        let mut next_b = 0;
        feed(&mut pair.a.conn, 10, &mut next_a, 40, 2000);
        feed(&mut pair.b.conn, 11, &mut next_b, 40, 2000);
        let ok = pair.run_until(1000, |p| {
            p.a.inbox.len() == 40 && unacked(&p.a.conn) == 0 && unacked(&p.b.conn) == 0
        });
        prop_assert!(ok, "exchange incomplete: {} / {}", pair.b.inbox.len(), pair.a.inbox.len());
        assert_stream(&pair.a.inbox, 11, 40, 2000);
        let reliable: Vec<_> = pair.b.inbox.iter().filter(|(c, _)| *c == ChannelId(0))
            .cloned().collect();
        if injected == 0 {
            assert_stream(&reliable, 10, 40, 2000);
        } else {
            // An injected message takes the place of the genuine one with its id; everything
            // else arrives intact and in order.
            let genuine: Vec<u32> = reliable.iter()
                .filter_map(|(_, m)| {
                    let i = u32::from_le_bytes(m.get(..4)?.try_into().ok()?);
                    (i < 40 && *m == message(10, i, 2000)).then_some(i)
                })
                .collect();
            prop_assert!(genuine.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(genuine.len() + injected >= 40, "{} genuine, {injected} injected",
                genuine.len());
        }
    }
}

/// (7) Keepalives flow when idle, nobody times out while they do, and the idle timeout fires
/// exactly `idle_timeout` after the last valid payload once the link goes dead.
#[test]
fn keepalive_and_idle_timeout() {
    let config = ConnectionConfig::default();
    let mut pair = Pair::symmetric(config.clone(), LinkConfig::default(), 0);
    assert_eq!(
        pair.a.conn.poll_timeout(),
        Some(config.keepalive_interval),
        "first keepalive due one interval after creation"
    );
    pair.run_until(1500, |_| false); // 30 s of silence
    for (side, peer) in [(&pair.a, &pair.b), (&pair.b, &pair.a)] {
        assert!(!side.conn.is_timed_out(pair.now));
        let s = side.conn.stats();
        // One keepalive per 260 ms (250 ms rounded up to the 20 ms tick) and nothing else:
        // empty packets are not owed an ack-only packet. The peer has read all but the last.
        assert!((110..=121).contains(&s.packets_sent), "{s:?}");
        assert!(s.packets_sent - peer.conn.stats().packets_received <= 1);
    }

    // While messages flow every tick, no extra keepalive goes out.
    let before = pair.a.conn.stats().packets_sent;
    for i in 0..100u32 {
        pair.a.conn.send(ChannelId(1), &i.to_le_bytes()).unwrap();
        pair.step();
    }
    assert_eq!(pair.a.conn.stats().packets_sent - before, 100);

    // The link dies: b hears nothing from now on.
    pair.a.sim.set_config(LinkConfig {
        loss: 1.0,
        ..LinkConfig::default()
    });
    pair.step();
    let last_heard = pair.b.conn.last_received;
    let deadline = last_heard + config.idle_timeout;
    assert!(pair.b.conn.poll_timeout().unwrap() <= deadline);
    while pair.now < deadline {
        assert!(!pair.b.conn.is_timed_out(pair.now));
        pair.step();
    }
    assert!(pair.b.conn.is_timed_out(deadline));
    assert!(!pair.a.conn.is_timed_out(deadline));
}

/// A burst of 100 eliciting packets received between two sends is fully acknowledged, though
/// the bitfield covers only 33 packets per ack header.
#[test]
fn bursts_longer_than_the_bitfield_are_all_acked() {
    let mut pair = Pair::symmetric(ConnectionConfig::default(), LinkConfig::default(), 0);
    for i in 0..100u32 {
        let mut m = vec![0u8; 1100];
        m[..4].copy_from_slice(&i.to_le_bytes());
        pair.a.conn.send(ChannelId(0), &m).unwrap();
    }
    pair.step(); // a sends 100 packets, b receives them next tick
    assert_eq!(pair.a.conn.stats().packets_sent, 100);
    assert!(pair.run_until(10, |p| unacked(&p.a.conn) == 0));
    assert_eq!(pair.a.conn.stats().packets_acked, 100);
    assert_eq!(unacked(&pair.a.conn), 0);
    assert_eq!(pair.a.conn.stats().resends, 0);
    assert!(pair.b.conn.stats().packets_sent <= 4);
}

/// Packet sequence numbers and message ids wrap around 65 535 without a hitch.
#[test]
fn sequence_numbers_wrap() {
    let link = LinkConfig {
        latency: Duration::from_millis(30),
        jitter: Duration::from_millis(10),
        loss: 0.1,
        duplicate: 0.1,
        reorder: 0.1,
        ..LinkConfig::default()
    };
    let mut pair = Pair::symmetric(ConnectionConfig::default(), link, seed(3));
    for side in [&mut pair.a, &mut pair.b] {
        side.conn.next_seq = 65_500;
        side.conn.loss_cursor = 65_500;
        side.conn.channels[0] = Channel::Reliable {
            send: ReliableSend::starting_at(65_000),
            recv: ReliableRecv::starting_at(65_000),
        };
    }
    let mut next = 0;
    let done = loop {
        feed(&mut pair.a.conn, 4, &mut next, 2000, 100);
        if pair.b.inbox.len() == 2000 {
            break true;
        }
        if pair.ticks > 6000 {
            break false;
        }
        pair.step();
    };
    assert!(done);
    assert_stream(&pair.b.inbox, 4, 2000, 100);
    assert!(pair.a.conn.stats().packets_sent > 100);
    assert!(pair.a.conn.next_seq < 65_500, "sequence numbers wrapped");
}

/// A single payload with a corrupted, far-off sequence number is ignored; a real jump (a run
/// of packets all far ahead) is accepted after three packets.
#[test]
fn far_sequence_numbers_need_a_run_to_resync() {
    let mut pair = Pair::symmetric(ConnectionConfig::default(), LinkConfig::default(), 0);
    pair.a.captured = Some(Vec::new());
    pair.a.conn.send(ChannelId(0), b"first").unwrap();
    pair.run_until(5, |_| false);
    let genuine = pair.a.captured.take().unwrap()[0].clone();
    let mut forged = genuine.clone();
    forged[2] ^= 0x80; // seq high byte: 32 768 away
    pair.b.conn.handle_payload(pair.now, &forged).unwrap();
    assert_eq!(pair.b.conn.stats().stale_dropped, 1);
    pair.a.conn.send(ChannelId(0), b"second").unwrap();
    pair.run_until(5, |_| false);
    assert_eq!(pair.b.inbox.len(), 2);

    // The peer's numbering really jumps by 1000.
    pair.a.conn.next_seq = pair.a.conn.next_seq.wrapping_add(1000);
    for i in 0..5u32 {
        pair.a.conn.send(ChannelId(1), &i.to_le_bytes()).unwrap();
        pair.step();
    }
    pair.a.conn.send(ChannelId(0), b"third").unwrap();
    pair.run_until(20, |_| false);
    let unreliable = pair
        .b
        .inbox
        .iter()
        .filter(|(c, _)| *c == ChannelId(1))
        .count();
    assert_eq!(unreliable, 3, "the first two of the run are dropped");
    assert_eq!(pair.b.inbox.last().unwrap().1, b"third");
    assert_eq!(unacked(&pair.a.conn), 0);
}

#[test]
fn config_validation() {
    let ok = ConnectionConfig::default();
    assert_eq!(ok.validate(), Ok(()));
    let cases = [
        (
            ConnectionConfig {
                channels: vec![],
                ..ok.clone()
            },
            ConfigError::ChannelCount { count: 0 },
        ),
        (
            ConnectionConfig {
                max_packet_size: 100,
                ..ok.clone()
            },
            ConfigError::PacketSize { size: 100 },
        ),
        (
            ConnectionConfig {
                keepalive_interval: Duration::ZERO,
                ..ok.clone()
            },
            ConfigError::ZeroDuration {
                field: "keepalive_interval",
            },
        ),
        (
            ConnectionConfig {
                reliable_window: 0,
                ..ok.clone()
            },
            ConfigError::Window { window: 0 },
        ),
        (
            ConnectionConfig {
                channels: vec![ChannelConfig {
                    max_message_size: MAX_RELIABLE_MESSAGE_SIZE + 1,
                    ..ChannelConfig::reliable_ordered()
                }],
                ..ok.clone()
            },
            ConfigError::MessageSize {
                channel: ChannelId(0),
                size: MAX_RELIABLE_MESSAGE_SIZE + 1,
            },
        ),
    ];
    for (config, error) in cases {
        assert_eq!(
            Connection::try_new(config, Duration::ZERO).unwrap_err(),
            error
        );
    }
    assert_ne!(
        ok.fingerprint(),
        ConnectionConfig {
            channels: vec![ChannelConfig::unreliable()],
            ..ok.clone()
        }
        .fingerprint()
    );
}

/// The smallest packet size still carries the largest reliable message (39 199 fragments, so
/// fragment indexes use 3-byte varints). Connections are wired directly: no simulator queue
/// holds that many datagrams.
#[test]
fn smallest_packets_carry_the_largest_message() {
    let config = ConnectionConfig {
        max_packet_size: MIN_PACKET_SIZE,
        channels: vec![ChannelConfig {
            max_message_size: MAX_RELIABLE_MESSAGE_SIZE,
            max_send_queue: 1,
            kind: ChannelKind::ReliableOrdered,
        }],
        max_reassembly_bytes: 16 * 1024 * 1024,
        // The largest message must fit the sender's budget for unacknowledged bytes.
        max_queued_reliable_bytes: MAX_RELIABLE_MESSAGE_SIZE,
        ..ConnectionConfig::default()
    };
    let mut now = Duration::ZERO;
    let mut a = Connection::new(config.clone(), now);
    let mut b = Connection::new(config, now);
    let m: Vec<u8> = (0..MAX_RELIABLE_MESSAGE_SIZE)
        .map(|i| (i % 251) as u8)
        .collect();
    a.send(ChannelId(0), &m).unwrap();
    let mut out = Vec::new();
    let mut packets = 0;
    let mut got = None;
    // 256 fragments in flight per round trip of one 10 ms ack delay: about 160 rounds.
    for _ in 0..1000 {
        while a.poll_transmit(now, &mut out) {
            assert!(out.len() <= MIN_PACKET_SIZE);
            b.handle_payload(now, &out).unwrap();
            out.clear();
            packets += 1;
        }
        while b.poll_transmit(now, &mut out) {
            a.handle_payload(now, &out).unwrap();
            out.clear();
        }
        got = b.poll_message();
        if got.is_some() {
            break;
        }
        now += Duration::from_millis(10);
    }
    assert!(got.expect("delivered").1 == m);
    // Every fragment went out exactly once: acknowledgements kept up with the in-flight limit.
    assert_eq!(packets, MAX_RELIABLE_MESSAGE_SIZE.div_ceil(a.frag_len));
}

/// A peer that never acknowledges can pin at most `max_queued_reliable_bytes` on the sender:
/// past it, reliable sends are refused with `OverBudget`, and acknowledgements free room.
#[test]
fn reliable_bytes_waiting_for_acks_are_bounded() {
    let config = ConnectionConfig {
        max_queued_reliable_bytes: 300 * 1024,
        ..ConnectionConfig::default()
    };
    let mut a = Connection::new(config.clone(), Duration::ZERO);
    let mut b = Connection::new(config, Duration::ZERO);
    let msg = vec![7u8; 50_000];
    let mut accepted = 0;
    let refused = loop {
        match a.send(ChannelId(0), &msg) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted <= 7, "the budget did not hold");
    };
    assert_eq!(accepted, 6);
    assert!(matches!(
        refused,
        SendError::OverBudget {
            queued: 300_000,
            ..
        }
    ));
    assert_eq!(a.queued_reliable_bytes(), 300_000);
    // Once the peer has everything and acknowledges it, the bytes are released.
    let mut now = Duration::ZERO;
    let mut p = Vec::new();
    for _ in 0..2000 {
        now += Duration::from_millis(5);
        p.clear();
        while a.poll_transmit(now, &mut p) {
            b.handle_payload(now, &p).unwrap();
            p.clear();
        }
        while b.poll_transmit(now, &mut p) {
            a.handle_payload(now, &p).unwrap();
            p.clear();
        }
        while b.poll_message().is_some() {}
        if a.queued_reliable_bytes() == 0 {
            break;
        }
    }
    assert_eq!(a.queued_reliable_bytes(), 0);
    a.send(ChannelId(0), &msg).unwrap();
}

/// A peer that stops acknowledging gets pings only once `ack_timeout` passes, and the
/// connection reports it unresponsive after `unresponsive_timeout`; an acknowledgement ends
/// the stall.
#[test]
fn pacing_stops_the_stream_to_a_peer_that_does_not_acknowledge() {
    let mut a = Connection::new(ConnectionConfig::default(), Duration::ZERO);
    let mut b = Connection::new(ConnectionConfig::default(), Duration::ZERO);
    let mut now = Duration::ZERO;
    let mut p = Vec::new();
    let mut bytes_after_stall = 0usize;
    let mut stalled_at = None;
    // 12 s at 30 Hz, a 1,000-byte unreliable message per tick; b never answers.
    for _ in 0..360 {
        now += Duration::from_micros(33_333);
        let _ = a.send(ChannelId(1), &[1u8; 1000]);
        while a.poll_transmit(now, &mut p) {
            if stalled_at.is_some() {
                bytes_after_stall += p.len();
            }
            p.clear();
        }
        if stalled_at.is_none() && a.is_stalled(now) {
            stalled_at = Some(now);
        }
    }
    let stalled_at = stalled_at.expect("a stalls");
    assert!(
        stalled_at <= Duration::from_millis(1100),
        "stalled at {stalled_at:?}"
    );
    // About 11 s of pings at 0.25 s doubling to 1 s: a few hundred bytes, not 330 KB.
    assert!(
        bytes_after_stall < 1_000,
        "{bytes_after_stall} bytes after the stall"
    );
    assert!(a.stats().pings_sent >= 5 && a.stats().dropped_unacked > 300);
    assert!(a.is_unresponsive(now));
    // b finally answers one ping: a resumes.
    while a.poll_transmit(now + Duration::from_secs(1), &mut p) {
        b.handle_payload(now, &p).unwrap();
        p.clear();
    }
    now += Duration::from_secs(1);
    while b.poll_transmit(now + Duration::from_millis(20), &mut p) {
        a.handle_payload(now, &p).unwrap();
        p.clear();
    }
    assert!(!a.is_stalled(now) && !a.is_unresponsive(now));
}
