//! The lobby under attack. Most tests run it over real UDP on 127.0.0.1 (a driver thread:
//! `handle`, then every `poll_transmit`, until stopped or a hard deadline) and attack it from
//! other sockets; the rest drive it sans-IO where the clock must jump.
//!
//! Randomized tests read their seed from `LOBBY_ATTACK_SEED` (default fixed) and print it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use statewire::ConnectToken;
use statewire_lobby::storage::Storage;
use statewire_lobby::wire::{ErrorCode, GameEntry, PeerComing, Reply, Request};
use statewire_lobby::{JoinCode, Lobby, LobbyConfig, MemoryStorage};

const PROTOCOL: u64 = 0x5747;
/// No test may keep a lobby thread longer than this.
const HARD_LIMIT: Duration = Duration::from_secs(60);
/// How long a client waits for one answer on loopback.
const ANSWER: Duration = Duration::from_secs(2);

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

fn seed() -> u64 {
    let seed = std::env::var("LOBBY_ATTACK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_1EB5_2026);
    println!("seed = {seed} (set LOBBY_ATTACK_SEED to replay)");
    seed
}

/// splitmix64: small, seeded, good enough to make garbage.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        for b in &mut a {
            *b = self.next() as u8;
        }
        a
    }
}

/// What one peer address exchanged with the lobby.
#[derive(Debug, Default, Clone, Copy)]
struct Traffic {
    datagrams_in: u64,
    bytes_in: u64,
    bytes_out: u64,
}

/// What a stopped lobby thread hands back.
struct Served {
    lobby: Lobby<MemoryStorage>,
    traffic: BTreeMap<SocketAddr, Traffic>,
}

impl Served {
    fn assert_no_amplification(&self) {
        for (peer, t) in &self.traffic {
            assert!(
                t.bytes_out <= t.bytes_in,
                "the lobby sent {peer} {} bytes for {} received",
                t.bytes_out,
                t.bytes_in
            );
        }
    }
}

/// A lobby served over UDP by a thread.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Served>>,
}

impl Server {
    fn start(config: LobbyConfig) -> Server {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(10)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + HARD_LIMIT;
            let mut lobby = Lobby::new(MemoryStorage::new(), config);
            let mut traffic: BTreeMap<SocketAddr, Traffic> = BTreeMap::new();
            // Larger than any datagram, so oversized ones reach the lobby whole.
            let mut buf = vec![0u8; 65_536];
            let mut next_timeout = unix_now();
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                match socket.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        let t = traffic.entry(from).or_default();
                        t.datagrams_in += 1;
                        t.bytes_in += n as u64;
                        lobby.handle(unix_now(), from, &buf[..n]);
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => panic!("lobby socket: {e}"),
                }
                while let Some((to, bytes)) = lobby.poll_transmit() {
                    traffic.entry(to).or_default().bytes_out += bytes.len() as u64;
                    let _ = socket.send_to(&bytes, to);
                }
                let now = unix_now();
                if now >= next_timeout {
                    lobby.handle_timeout(now);
                    next_timeout = lobby.poll_timeout(now);
                }
            }
            Served { lobby, traffic }
        });
        Server {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Served {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("the lobby thread panicked")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn socket_on(ip: &str) -> std::io::Result<UdpSocket> {
    let s = UdpSocket::bind((ip, 0))?;
    s.set_read_timeout(Some(Duration::from_millis(50)))?;
    Ok(s)
}

fn socket() -> UdpSocket {
    socket_on("127.0.0.1").unwrap()
}

fn send(s: &UdpSocket, lobby: SocketAddr, request: &Request) {
    let mut bytes = Vec::new();
    request.encode(&mut bytes);
    s.send_to(&bytes, lobby).unwrap();
}

/// The next reply from the lobby within `within` (pushes to hosts included).
fn next_reply(s: &UdpSocket, lobby: SocketAddr, within: Duration) -> Option<Reply> {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 2048];
    for _ in 0..10_000 {
        if Instant::now() >= deadline {
            return None;
        }
        match s.recv_from(&mut buf) {
            Ok((n, from)) if from == lobby => {
                return Some(Reply::decode(&buf[..n]).expect("the lobby's reply decodes"));
            }
            _ => {}
        }
    }
    None
}

/// Sends `request` and returns the first answer that is not a push to a host.
fn ask(s: &UdpSocket, lobby: SocketAddr, request: &Request) -> Reply {
    send(s, lobby, request);
    let deadline = Instant::now() + ANSWER;
    for _ in 0..100 {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_reply(s, lobby, left) {
            Some(Reply::PeerComing(_)) => {}
            Some(r) => return r,
            None => break,
        }
    }
    panic!("no answer to {request:?} within {ANSWER:?}");
}

/// A host on `s`: registers a public game and confirms it.
struct Host {
    code: JoinCode,
    secret: [u8; 16],
    addr: SocketAddr,
}

fn register(s: &UdpSocket, lobby: SocketAddr, name: &str) -> Host {
    let request = register_request(name);
    let Reply::Registered { code, secret, .. } = ask(s, lobby, &request) else {
        panic!("registration refused");
    };
    let host = Host {
        code,
        secret,
        addr: s.local_addr().unwrap(),
    };
    heartbeat(s, lobby, &host);
    host
}

fn register_request(name: &str) -> Request {
    Request::Register {
        protocol_id: PROTOCOL,
        version: 3,
        max_players: 8,
        public: true,
        host_client: 0,
        local_addr: "127.0.0.1:7777".parse().unwrap(),
        token_key: [7; 32],
        name: name.into(),
    }
}

fn heartbeat(s: &UdpSocket, lobby: SocketAddr, host: &Host) {
    let request = Request::Heartbeat {
        code: host.code,
        secret: host.secret,
        players: 1,
        roster: vec![],
    };
    match ask(s, lobby, &request) {
        Reply::Alive { observed, .. } => assert_eq!(observed, host.addr),
        other => panic!("heartbeat answered {other:?}"),
    }
}

fn list(s: &UdpSocket, lobby: SocketAddr, name: &str) -> Vec<GameEntry> {
    let request = Request::List {
        version: 0,
        name_contains: name.into(),
        offset: 0,
    };
    match ask(s, lobby, &request) {
        Reply::Games { games, .. } => games,
        other => panic!("list answered {other:?}"),
    }
}

fn join(s: &UdpSocket, lobby: SocketAddr, code: JoinCode) -> Reply {
    ask(
        s,
        lobby,
        &Request::Join {
            code,
            protocol_id: PROTOCOL,
        },
    )
}

fn high_rate() -> LobbyConfig {
    LobbyConfig {
        requests_per_sec_per_ip: 10_000_000,
        request_burst_per_ip: 10_000_000,
        ..LobbyConfig::default()
    }
}

/// Valid requests of every kind, to corrupt.
fn valid_requests(rng: &mut Rng) -> Vec<Request> {
    let code = JoinCode::from_u64(rng.next());
    vec![
        register_request("garbage"),
        Request::Heartbeat {
            code,
            secret: rng.array(),
            players: 2,
            roster: vec![1, 2],
        },
        Request::List {
            version: 0,
            name_contains: "x".into(),
            offset: 0,
        },
        Request::Join {
            code,
            protocol_id: PROTOCOL,
        },
        Request::Leave {
            code,
            secret: rng.array(),
            migrate: true,
        },
        Request::Migrate {
            code,
            client_id: 3,
            secret: rng.array(),
            last_tick: 9,
            token_key: rng.array(),
            local_addr: "127.0.0.1:1".parse().unwrap(),
        },
    ]
}

/// Every reply kind (and the punch packets), as an attacker would send them back.
fn replies(rng: &mut Rng) -> Vec<Vec<u8>> {
    let code = JoinCode::from_u64(rng.next());
    let at: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let coming = PeerComing {
        code,
        client_id: 4,
        joiner: at,
        start_ms: 150,
        punch: rng.array(),
        relay: None,
    };
    let all = [
        Reply::Registered {
            code,
            secret: rng.array(),
            observed: at,
            heartbeat_ms: 1000,
        },
        Reply::Alive {
            observed: at,
            coming: vec![coming.clone()],
        },
        Reply::Games {
            total: 1,
            offset: 0,
            games: vec![GameEntry {
                code,
                version: 1,
                players: 1,
                max_players: 2,
                name: "n".into(),
            }],
        },
        Reply::Joined {
            code,
            client_id: 4,
            secret: rng.array(),
            host: at,
            start_ms: 150,
            punch: rng.array(),
            relay: None,
            token: rng.bytes(300),
        },
        Reply::PeerComing(coming),
        Reply::NewHost {
            code,
            secret: rng.array(),
            observed: at,
            epoch: 1,
            roster: vec![5],
        },
        Reply::Wait { retry_ms: 500 },
        Reply::Error {
            for_kind: 0x53,
            code: ErrorCode::GameFull,
        },
    ];
    let mut out: Vec<Vec<u8>> = all
        .iter()
        .map(|r| {
            let mut b = Vec::new();
            r.encode(&mut b);
            b
        })
        .collect();
    for ack in [false, true] {
        let mut b = Vec::new();
        statewire_lobby::wire::Punch {
            ack,
            secret: rng.array(),
            client_id: 4,
        }
        .encode(&mut b);
        out.push(b);
    }
    out
}

/// One malformed datagram of category `i % 6`.
fn malformed(rng: &mut Rng, i: usize) -> Vec<u8> {
    let valid = valid_requests(rng);
    let pick = |rng: &mut Rng| {
        let mut b = Vec::new();
        valid[rng.below(valid.len())].encode(&mut b);
        b
    };
    // Register, List, Join, Migrate: the padded kinds.
    let padded = |rng: &mut Rng| {
        let mut b = Vec::new();
        valid[[0, 2, 3, 5][rng.below(4)]].encode(&mut b);
        b
    };
    match i % 6 {
        0 => {
            let n = rng.below(1401);
            rng.bytes(n)
        }
        1 => {
            let mut b = pick(rng);
            let n = rng.below(b.len());
            b.truncate(n);
            b
        }
        2 => {
            let mut b = pick(rng);
            b[1] = loop {
                let v = rng.next() as u8;
                if v != statewire_lobby::wire::WIRE_VERSION {
                    break v;
                }
            };
            b
        }
        3 => {
            let mut b = padded(rng);
            let at = 1100 + rng.below(100);
            b[at] = 1 + (rng.next() % 255) as u8;
            b
        }
        4 => {
            let mut b = padded(rng);
            let n = statewire_lobby::wire::MAX_DATAGRAM + 1 + rng.below(2600);
            b.resize(n, 0);
            b
        }
        _ => {
            let all = replies(rng);
            all[i / 6 % all.len()].clone()
        }
    }
}

#[test]
fn malformed_floods_are_counted_never_answered_and_leave_games_alone() {
    let seed = seed();
    let mut rng = Rng(seed);
    let server = Server::start(high_rate());
    let lobby = server.addr;
    let host_socket = socket();
    let host = register(&host_socket, lobby, "survivor");
    let attackers: Vec<UdpSocket> = (0..4).map(|_| socket()).collect();
    let barrier = socket();
    let mut last_heartbeat = Instant::now();
    const COUNT: usize = 10_000;
    for i in 0..COUNT {
        let d = malformed(&mut rng, i);
        assert!(
            Request::decode(&d).is_err(),
            "seed {seed}: datagram {i} is a valid request"
        );
        attackers[i % attackers.len()].send_to(&d, lobby).unwrap();
        // Loopback drops what the lobby's receive buffer cannot hold: wait for the lobby to
        // catch up now and then, so that every datagram is read (and counted).
        if i % 32 == 31 {
            assert!(
                matches!(
                    ask(
                        &barrier,
                        lobby,
                        &Request::List {
                            version: 0,
                            name_contains: String::new(),
                            offset: 0
                        }
                    ),
                    Reply::Games { .. }
                ),
                "seed {seed}"
            );
        }
        if last_heartbeat.elapsed() > Duration::from_millis(300) {
            heartbeat(&host_socket, lobby, &host);
            last_heartbeat = Instant::now();
        }
    }
    heartbeat(&host_socket, lobby, &host);
    // Nothing was answered.
    for a in &attackers {
        assert!(
            next_reply(a, lobby, Duration::from_millis(100)).is_none(),
            "seed {seed}: the lobby answered garbage"
        );
    }
    // The game survived: listed, and a fresh join is answered promptly.
    let listed = list(&barrier, lobby, "survivor");
    assert_eq!(listed.len(), 1, "seed {seed}");
    assert_eq!(listed[0].code, host.code);
    let joiner = socket();
    let asked = Instant::now();
    match join(&joiner, lobby, host.code) {
        Reply::Joined {
            host: at, token, ..
        } => {
            assert_eq!(at, host.addr);
            let token = ConnectToken::decode(&token).unwrap();
            assert_eq!(token.server_addrs[0], host.addr);
        }
        other => panic!("seed {seed}: join answered {other:?}"),
    }
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "seed {seed}: join took {:?}",
        asked.elapsed()
    );

    let served = server.finish();
    let stats = served.lobby.stats();
    println!("{stats:?}");
    assert_eq!(stats.malformed, COUNT as u64, "seed {seed}: {stats:?}");
    assert_eq!(stats.rate_limited, 0);
    for a in &attackers {
        let t = served.traffic[&a.local_addr().unwrap()];
        assert_eq!(
            t.datagrams_in,
            (COUNT / attackers.len()) as u64,
            "seed {seed}"
        );
        assert_eq!(t.bytes_out, 0, "seed {seed}: an attacker got answers");
    }
    served.assert_no_amplification();
}

#[test]
fn a_registration_flood_from_one_address_is_capped() {
    let config = LobbyConfig::default();
    let per_ip = config.max_games_per_ip;
    let server = Server::start(config);
    let lobby = server.addr;
    let flooder = socket();
    const FLOOD: usize = 1_000;
    let mut bytes = Vec::new();
    register_request("flood").encode(&mut bytes);
    for i in 0..FLOOD {
        flooder.send_to(&bytes, lobby).unwrap();
        if i % 25 == 24 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let (mut registered, mut too_many) = (0usize, 0usize);
    for _ in 0..FLOOD {
        match next_reply(&flooder, lobby, Duration::from_millis(300)) {
            Some(Reply::Registered { .. }) => registered += 1,
            Some(Reply::Error {
                for_kind: 0x50,
                code: ErrorCode::TooManyGames,
            }) => too_many += 1,
            Some(other) => panic!("the flood was answered {other:?}"),
            None => break,
        }
    }
    assert_eq!(registered, per_ip);
    assert!(too_many > 0);

    // Another address registers, stays alive, and is listed.
    let other = match socket_on("127.0.0.2") {
        Ok(s) => Some(s),
        Err(e) => {
            println!("cannot bind 127.0.0.2 ({e}): skipping the second address");
            None
        }
    };
    let other_host = other.as_ref().map(|s| {
        let host = register(s, lobby, "innocent");
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(300));
            heartbeat(s, lobby, &host);
        }
        let listed = list(s, lobby, "");
        assert_eq!(
            listed.iter().map(|g| g.code).collect::<Vec<_>>(),
            vec![host.code],
            "only the innocent game is listed (the flood's are unconfirmed)"
        );
        host
    });

    let mut served = server.finish();
    let stats = served.lobby.stats();
    println!("{stats:?}");
    let t = served.traffic[&flooder.local_addr().unwrap()];
    assert_eq!(
        t.datagrams_in, FLOOD as u64,
        "loopback dropped part of the flood"
    );
    assert!(stats.rate_limited > 0, "{stats:?}");
    // Every flood datagram was registered, refused for too many games, or rate-limited.
    assert_eq!(
        registered as u64 + too_many as u64 + stats.rate_limited,
        FLOOD as u64,
        "{stats:?}"
    );
    let now_ms = u64::try_from(unix_now().as_millis()).unwrap();
    let games = served.lobby.storage_mut().list(now_ms, 100_000).unwrap();
    let from_flooder = games
        .iter()
        .filter(|g| g.host_addr.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST))
        .count();
    assert!(from_flooder <= per_ip, "{from_flooder} games from one IP");
    if let Some(host) = other_host {
        assert!(games.iter().any(|g| g.code == host.code && g.confirmed));
    }
    served.assert_no_amplification();
}

#[test]
fn spoofed_heartbeats_and_leaves_leave_the_game_alone() {
    let seed = seed();
    let mut rng = Rng(seed);
    let server = Server::start(high_rate());
    let lobby = server.addr;
    let host_socket = socket();
    let host = register(&host_socket, lobby, "target");
    let attacker = socket();
    for i in 0..100 {
        let request = if i % 2 == 0 {
            Request::Heartbeat {
                code: host.code,
                secret: rng.array(),
                players: 99,
                roster: vec![1, 2, 3],
            }
        } else {
            Request::Leave {
                code: host.code,
                secret: rng.array(),
                migrate: i % 4 == 1,
            }
        };
        match ask(&attacker, lobby, &request) {
            Reply::Error {
                for_kind,
                code: ErrorCode::BadSecret,
            } => assert_eq!(for_kind, request.kind()),
            other => panic!("seed {seed}: forged {request:?} answered {other:?}"),
        }
    }
    // Still listed as the host reported it, and joins go to the real host.
    let listed = list(&attacker, lobby, "target");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].players, 1,
        "a forged heartbeat changed the player count"
    );
    // The host's heartbeats still work.
    heartbeat(&host_socket, lobby, &host);
    let joiner = socket();
    match join(&joiner, lobby, host.code) {
        Reply::Joined { host: at, .. } => assert_eq!(at, host.addr),
        other => panic!("seed {seed}: join answered {other:?}"),
    }
    let served = server.finish();
    assert_eq!(served.lobby.stats().migrations, 0);
    served.assert_no_amplification();
}

#[test]
fn expired_and_unknown_codes_are_refused_over_udp() {
    let server = Server::start(LobbyConfig {
        host_timeout: Duration::from_millis(300),
        ..high_rate()
    });
    let lobby = server.addr;
    let host_socket = socket();
    let host = register(&host_socket, lobby, "brief");
    let joiner = socket();
    assert!(matches!(
        join(&joiner, lobby, host.code),
        Reply::Joined { .. }
    ));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        join(&joiner, lobby, host.code),
        Reply::Error {
            for_kind: 0x53,
            code: ErrorCode::Expired
        }
    );
    let mut unknown = JoinCode::from_u64(seed());
    if unknown == host.code {
        unknown = JoinCode::from_u64(1);
    }
    assert_eq!(
        join(&joiner, lobby, unknown),
        Reply::Error {
            for_kind: 0x53,
            code: ErrorCode::UnknownCode
        }
    );
    server.finish().assert_no_amplification();
}

/// The lobby's clock at virtual time zero, for the sans-IO tests.
const UNIX_ZERO: Duration = Duration::from_secs(1_800_000_000);

fn encoded(request: &Request) -> Vec<u8> {
    let mut b = Vec::new();
    request.encode(&mut b);
    b
}

fn drain(lobby: &mut Lobby<MemoryStorage>) -> Vec<(SocketAddr, Reply)> {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        let Some((to, bytes)) = lobby.poll_transmit() else {
            break;
        };
        out.push((to, Reply::decode(&bytes).unwrap()));
    }
    out
}

fn nth_addr(n: u32) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + n)), 40_000)
}

#[test]
fn one_shot_sources_hold_no_lobby_state() {
    let seed = seed();
    let mut rng = Rng(seed);
    let config = LobbyConfig {
        max_tracked_ips: 1_000,
        ..LobbyConfig::default()
    };
    let idle_after = Duration::from_secs_f64(
        f64::from(config.request_burst_per_ip) / f64::from(config.requests_per_sec_per_ip),
    );
    let mut lobby = Lobby::new(MemoryStorage::new(), config);
    let t0 = UNIX_ZERO;
    let list = encoded(&Request::List {
        version: 0,
        name_contains: String::new(),
        offset: 0,
    });
    // 1,000 addresses send once each (a list, a garbage datagram or a join by a random
    // code) and never again.
    for n in 0..1_000 {
        let d = match n % 3 {
            0 => list.clone(),
            1 => malformed(&mut rng, n as usize),
            _ => encoded(&Request::Join {
                code: JoinCode::from_u64(rng.next()),
                protocol_id: PROTOCOL,
            }),
        };
        lobby.handle(t0, nth_addr(n), &d);
    }
    drain(&mut lobby);
    assert_eq!(lobby.stats().tracker_evictions, 0);
    // The limiter is full: a new address is still served (one of the fresh ones is forgotten
    // instead), so junk from many sources cannot lock real players out.
    lobby.handle(t0 + idle_after / 2, nth_addr(5_000), &list);
    assert_eq!(lobby.stats().tracker_evictions, 1, "seed {seed}");
    assert_eq!(drain(&mut lobby).len(), 1, "seed {seed}");
    // Once they have been idle long enough to refill, they are forgotten: 1,000 new
    // addresses are all served. (The limiter's size is not public; this is its effect.)
    lobby.handle_timeout(t0 + idle_after + Duration::from_millis(1));
    for n in 10_000..11_000 {
        lobby.handle(
            t0 + idle_after + Duration::from_millis(2),
            nth_addr(n),
            &list,
        );
    }
    assert_eq!(drain(&mut lobby).len(), 1_000, "seed {seed}");
    // The address served at idle_after / 2 is still fresh, so the last newcomer evicts once
    // more.
    assert_eq!(lobby.stats().tracker_evictions, 2, "seed {seed}");
}

#[test]
fn joiners_and_hosts_that_never_follow_up_hold_bounded_state() {
    let config = LobbyConfig {
        max_queued_transmits: 64,
        ..LobbyConfig::default()
    };
    let (notices, queue) = (config.max_notices_per_game, config.max_queued_transmits);
    let (timeout, tombstone) = (config.host_timeout, config.tombstone);
    let mut lobby = Lobby::new(MemoryStorage::new(), config);
    let now = UNIX_ZERO;
    let host = nth_addr(1);
    let mut request = register_request("popular");
    if let Request::Register { max_players, .. } = &mut request {
        *max_players = 4;
    }
    lobby.handle(now, host, &encoded(&request));
    let Some((_, Reply::Registered { code, secret, .. })) = drain(&mut lobby).pop() else {
        panic!("not registered");
    };
    let beat = encoded(&Request::Heartbeat {
        code,
        secret,
        players: 1,
        roster: vec![],
    });
    lobby.handle(now, host, &beat);
    drain(&mut lobby);
    // 500 joiners take a token and never connect; nobody drains the transmit queue.
    let join = encoded(&Request::Join {
        code,
        protocol_id: PROTOCOL,
    });
    for n in 0..500 {
        lobby.handle(now, nth_addr(100 + n), &join);
    }
    let stats = lobby.stats();
    // Players on their way count toward the game's size: 3 joins fill the host's 4 places
    // until they connect or `join_pending` passes; the rest are refused (GameFull).
    assert_eq!(stats.joins, 3);
    assert_eq!(stats.refused, 497);
    assert_eq!(drain(&mut lobby).len(), queue);
    // Each join queues a Joined and a PeerComing, each refusal an Error.
    assert_eq!(stats.transmits_dropped, 2 * 3 + 497 - queue as u64);
    let now_ms = u64::try_from(now.as_millis()).unwrap();
    let game = lobby.storage_mut().get(code, now_ms).unwrap().unwrap();
    assert!(
        game.players.len() <= 8,
        "{} players remembered",
        game.players.len()
    );
    let queued = lobby.storage_mut().take_notices(code).unwrap();
    assert!(!queued.is_empty() && queued.len() <= notices);

    // 200 hosts register and never confirm: nothing of theirs outlives the timeouts.
    for n in 0..200 {
        lobby.handle(
            now,
            nth_addr(2_000 + n),
            &encoded(&register_request("ghost")),
        );
    }
    drain(&mut lobby);
    assert_eq!(lobby.local_game_count(now), 201);
    let later = now + timeout;
    lobby.handle_timeout(later);
    assert_eq!(lobby.local_game_count(later), 0);
    let gone = later + tombstone;
    let gone_ms = u64::try_from(gone.as_millis()).unwrap();
    assert!(
        lobby
            .storage_mut()
            .list(gone_ms, 10_000)
            .unwrap()
            .is_empty()
    );
    assert!(lobby.storage_mut().is_empty());
}

// Found by these tests and fixed in the lobby: each failed before its fix.

/// A host registers its most games, lets them lapse unconfirmed, registers as many again,
/// then confirms all of them: the per-IP limit must still hold.
#[test]
fn late_confirmation_does_not_lift_the_per_ip_game_limit() {
    let config = LobbyConfig::default();
    let (per_ip, timeout) = (config.max_games_per_ip, config.host_timeout);
    let mut lobby = Lobby::new(MemoryStorage::new(), config);
    let attacker = nth_addr(7);
    let mut now = UNIX_ZERO;
    let mut games = Vec::new();
    for _ in 0..per_ip {
        games.push(register_sans_io(&mut lobby, now, attacker).unwrap());
    }
    assert_eq!(
        register_sans_io(&mut lobby, now, attacker),
        Err(ErrorCode::TooManyGames)
    );
    now += timeout + Duration::from_secs(1);
    lobby.handle_timeout(now);
    for _ in 0..per_ip {
        games.push(register_sans_io(&mut lobby, now, attacker).unwrap());
    }
    for &game in &games {
        heartbeat_sans_io(&mut lobby, now, attacker, game);
    }
    let live = live_games_at(&mut lobby, now, attacker.ip());
    assert!(
        live <= per_ip,
        "{live} live games from one IP (the limit is {per_ip}): unconfirmed registrations \
         past their timeout were confirmed by a late heartbeat without being counted"
    );
}

/// A host registers from one IP and heartbeats from another: its games must still count
/// against a limit, or two addresses host without bound.
#[test]
fn heartbeats_from_another_ip_do_not_lift_the_per_ip_game_limit() {
    let config = LobbyConfig::default();
    let per_ip = config.max_games_per_ip;
    let mut lobby = Lobby::new(MemoryStorage::new(), config);
    let (register_ip, beat_ip) = (nth_addr(7), nth_addr(8));
    let mut now = UNIX_ZERO;
    let mut games = Vec::new();
    for round in 0..3 {
        for _ in 0..per_ip {
            match register_sans_io(&mut lobby, now, register_ip) {
                Ok(g) => games.push(g),
                Err(code) => {
                    assert_eq!(code, ErrorCode::TooManyGames, "round {round}");
                }
            }
        }
        // Seven seconds of heartbeats every second, from the other address.
        for _ in 0..7 {
            now += Duration::from_secs(1);
            lobby.handle_timeout(now);
            for &g in &games {
                let r = heartbeat_sans_io(&mut lobby, now, beat_ip, g);
                assert!(matches!(r, Reply::Alive { .. }), "{r:?}");
            }
        }
    }
    let live = live_games_at(&mut lobby, now, beat_ip.ip());
    assert!(
        live <= per_ip,
        "{live} live games registered from one IP and hosted at another (limit {per_ip})"
    );
}

/// Registers from `from` at `now`; the code and secret, or the refusal.
fn register_sans_io(
    lobby: &mut Lobby<MemoryStorage>,
    now: Duration,
    from: SocketAddr,
) -> Result<(JoinCode, [u8; 16]), ErrorCode> {
    lobby.handle(now, from, &encoded(&register_request("limited")));
    match drain(lobby).pop() {
        Some((_, Reply::Registered { code, secret, .. })) => Ok((code, secret)),
        Some((_, Reply::Error { code, .. })) => Err(code),
        other => panic!("register answered {other:?}"),
    }
}

fn heartbeat_sans_io(
    lobby: &mut Lobby<MemoryStorage>,
    now: Duration,
    from: SocketAddr,
    game: (JoinCode, [u8; 16]),
) -> Reply {
    let beat = Request::Heartbeat {
        code: game.0,
        secret: game.1,
        players: 1,
        roster: vec![],
    };
    lobby.handle(now, from, &encoded(&beat));
    drain(lobby).pop().expect("an answer").1
}

/// Live, confirmed games whose host is at `ip`.
fn live_games_at(lobby: &mut Lobby<MemoryStorage>, now: Duration, ip: IpAddr) -> usize {
    let now_ms = u64::try_from(now.as_millis()).unwrap();
    lobby
        .storage_mut()
        .list(now_ms, 100_000)
        .unwrap()
        .iter()
        .filter(|g| g.confirmed && g.expires_at_ms > now_ms && g.host_addr.ip() == ip)
        .count()
}
