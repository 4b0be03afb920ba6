//! `statewire lobby`, `statewire relay` and `statewire games`, and what `serve --lobby` and
//! `join --code` need: games registered and joined by code through a lobby node, with hole
//! punching and a relay for players who cannot punch through.
//!
//! The lobby and the relay are sans-IO state machines ([`statewire_lobby::Lobby`],
//! [`statewire_lobby::Relay`]); this module gives them a UDP socket and the wall clock. A host
//! and a player reach the lobby through a [`Rendezvous`] on their game socket, so the
//! address the lobby observes is the NAT mapping the other end will use.

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use statewire::ConnectToken;
use statewire_core::ClientId;
use statewire_lobby::redis_storage::RedisStorage;
use statewire_lobby::relay::{Relay, RelayConfig, UdpRunStats};
use statewire_lobby::wire::GameEntry;
use statewire_lobby::{
    JoinCode, Lobby, LobbyConfig, LobbyStats, MemoryStorage, Path, RelayAccess, Rendezvous,
    RendezvousConfig, RendezvousEvent, Storage,
};
use statewire_transport::udp::{UdpConfig, UdpTransport};
use statewire_transport::{Received, Transport, TransportError};

use crate::{count, fail, parse_addr, plural, stop_requested, usage};

/// Flags of `statewire lobby`.
#[derive(Debug, clap::Args)]
pub(crate) struct LobbyArgs {
    /// Listen for hosts and players on this UDP address (e.g. 0.0.0.0:7800).
    #[arg(long, value_parser = parse_addr)]
    bind: SocketAddr,
    /// A relay (`statewire relay`) for players who cannot punch through their NATs: its
    /// address, as hosts and players reach it. Needs --relay-key.
    #[arg(long, value_parser = parse_addr, requires = "relay_key")]
    relay: Option<SocketAddr>,
    /// The relay's key file (the relay's --key-file, from `statewire keygen`).
    #[arg(long, value_name = "FILE", requires = "relay")]
    relay_key: Option<PathBuf>,
    /// Keep games in the Redis server at this URL (e.g. redis://127.0.0.1:6379/), shared by
    /// every lobby node with the same URL and --namespace; default: in this process only.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// With --redis: the namespace the lobby's keys are under (letters, digits, `-`, `_`,
    /// `.`; at most 64).
    #[arg(long, value_name = "NS", requires = "redis", default_value = "default")]
    namespace: String,
    /// Most live games registered from one IP address (1 to 1,000,000).
    #[arg(long, value_name = "N", default_value_t = LobbyConfig::default().max_games_per_ip)]
    max_games_per_ip: usize,
}

/// Flags of `statewire relay`.
#[derive(Debug, clap::Args)]
pub(crate) struct RelayArgs {
    /// Listen on this UDP address (e.g. 0.0.0.0:3478).
    #[arg(long, value_parser = parse_addr)]
    bind: SocketAddr,
    /// The key relay tickets are sealed with (from `statewire keygen`; the lobby's
    /// --relay-key).
    #[arg(long, value_name = "FILE")]
    key_file: PathBuf,
}

/// Flags of `statewire games`.
#[derive(Debug, clap::Args)]
pub(crate) struct GamesArgs {
    /// The lobby's address (e.g. lobby.example.com:7800).
    #[arg(long, value_parser = parse_addr)]
    lobby: SocketAddr,
    /// Only games of this version number (default: every version).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    version: Option<u32>,
    /// Only games whose name contains this text (at most 64 bytes).
    #[arg(long, value_name = "TEXT", default_value = "")]
    name: String,
}

/// Most `--max-games-per-ip`.
const MAX_GAMES_PER_IP: usize = 1_000_000;

/// The wall clock as the lobby and connect tokens want it: time since the Unix epoch.
pub(crate) fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Why `namespace` cannot be a Redis namespace, in words (`RedisStorage`'s own rule).
fn check_namespace(namespace: &str) -> Result<(), String> {
    match statewire_lobby::redis_storage::namespace_problem(namespace) {
        None => Ok(()),
        Some(problem) => Err(format!("--namespace {problem}")),
    }
}

/// Whether `url` names a Redis server the way the client library reads URLs.
fn check_redis_url(url: &str) -> Result<(), String> {
    if ["redis://", "rediss://", "unix://", "redis+unix://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
    {
        Ok(())
    } else {
        Err("--redis takes a Redis URL like redis://127.0.0.1:6379/".into())
    }
}

/// `statewire lobby`.
pub(crate) fn lobby(args: LobbyArgs) -> ExitCode {
    if !(1..=MAX_GAMES_PER_IP).contains(&args.max_games_per_ip) {
        return usage(&format!(
            "--max-games-per-ip {} is out of range: 1 to {MAX_GAMES_PER_IP}",
            args.max_games_per_ip
        ));
    }
    let relay = match (args.relay, &args.relay_key) {
        (Some(addr), Some(path)) => match crate::keys::read_key(path) {
            Ok(key) => Some(RelayAccess { addr, key }),
            Err(e) => return usage(&format!("--relay-key: {e}")),
        },
        (None, None) => None,
        _ => return usage("--relay ADDR and --relay-key FILE go together"),
    };
    if let Some(url) = &args.redis {
        if let Err(e) = check_redis_url(url).and_then(|()| check_namespace(&args.namespace)) {
            return usage(&e);
        }
    }
    let config = LobbyConfig {
        relay,
        max_games_per_ip: args.max_games_per_ip,
        ..LobbyConfig::default()
    };
    let socket = match bind_udp(args.bind) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match &args.redis {
        None => run_lobby(Lobby::new(MemoryStorage::new(), config), &socket, "memory"),
        Some(url) => match RedisStorage::connect(url, &args.namespace) {
            Ok(storage) => run_lobby(
                Lobby::new(storage, config),
                &socket,
                &format!("Redis, namespace {}", args.namespace),
            ),
            // The error never repeats the URL (it may hold a password).
            Err(e) => fail(&format!("cannot use the Redis server at --redis: {e}")),
        },
    }
}

/// The lobby's counters in one line.
fn lobby_line(s: &LobbyStats) -> String {
    let mut line = format!(
        "lobby: {} registered, {}, {} refused, {} malformed, {} rate limited",
        count(s.registered, "game", "games"),
        plural(s.joins, "join"),
        s.refused,
        s.malformed,
        s.rate_limited,
    );
    if s.storage_errors > 0 {
        line.push_str(&format!(", {}", plural(s.storage_errors, "storage error")));
    }
    if s.transmits_dropped > 0 {
        line.push_str(&format!(", {} replies dropped", s.transmits_dropped));
    }
    line
}

/// Serves `lobby` on `socket` until Ctrl-C or SIGTERM.
fn run_lobby<S: Storage>(mut lobby: Lobby<S>, socket: &UdpSocket, storage: &str) -> ExitCode {
    // The stop flag is checked this often while no datagram arrives.
    if let Err(e) = socket.set_read_timeout(Some(Duration::from_millis(50))) {
        return fail(&format!(
            "cannot set the socket's timeout: {}",
            crate::io_reason(&e)
        ));
    }
    let addr = socket
        .local_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    let relay = lobby
        .config()
        .relay
        .as_ref()
        .map_or_else(|| "no relay".to_string(), |r| format!("relay {}", r.addr));
    println!("lobby listening on {addr}");
    println!("lobby: storage {storage}, {relay}");
    let _ = std::io::stdout().flush();
    let interruptible = crate::catch_ctrl_c();
    // One byte more than the largest lobby datagram: a longer one arrives truncated and is
    // refused as malformed rather than read as a shorter one.
    let mut buf = vec![0u8; statewire_lobby::wire::MAX_DATAGRAM + 1];
    let mut last_line = lobby_line(&lobby.stats());
    let mut next_report = Instant::now() + Duration::from_secs(1);
    let mut next_timeout = lobby.poll_timeout(unix_now());
    while !(interruptible && stop_requested()) {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => lobby.handle(unix_now(), from, &buf[..n]),
            Err(e) => match e.kind() {
                std::io::ErrorKind::WouldBlock
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::Interrupted
                // An ICMP error from an earlier reply to a peer that went away.
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionRefused => {}
                _ => return fail(&format!("the lobby's socket failed: {}", crate::io_reason(&e))),
            },
        }
        while let Some((to, bytes)) = lobby.poll_transmit() {
            // A reply the OS refuses is lost like any datagram; the peer retries.
            let _ = socket.send_to(&bytes, to);
        }
        let now = unix_now();
        if now >= next_timeout {
            lobby.handle_timeout(now);
            next_timeout = lobby.poll_timeout(now);
        }
        if Instant::now() >= next_report {
            next_report = Instant::now() + Duration::from_secs(1);
            let line = lobby_line(&lobby.stats());
            if line != last_line {
                println!("{line}");
                let _ = std::io::stdout().flush();
                last_line = line;
            }
        }
    }
    println!("lobby stopped; {}", lobby_line(&lobby.stats()));
    ExitCode::SUCCESS
}

/// `statewire relay`.
pub(crate) fn relay(args: RelayArgs) -> ExitCode {
    let key = match crate::keys::read_key(&args.key_file) {
        Ok(k) => k,
        Err(e) => return usage(&format!("--key-file: {e}")),
    };
    let socket = match bind_udp(args.bind) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let addr = socket
        .local_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    let mut relay = Relay::new(key, RelayConfig::default());
    let interruptible = crate::catch_ctrl_c();
    println!("relay listening on {addr}");
    let _ = std::io::stdout().flush();
    let run =
        statewire_lobby::relay::run_udp(&socket, &mut relay, &|| interruptible && stop_requested());
    match run {
        Ok(run) => {
            println!("relay stopped; {}", relay_line(&relay, &run));
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", relay_line(&relay, &UdpRunStats::default()));
            fail(&format!(
                "the relay's socket failed: {}",
                crate::io_reason(&e)
            ))
        }
    }
}

/// The relay's counters in one line.
fn relay_line(relay: &Relay, run: &UdpRunStats) -> String {
    let s = relay.stats();
    let refused = s.refused_unbound
        + s.refused_forged
        + s.refused_expired
        + s.refused_over_limit
        + s.refused_full;
    let cpu = if s.forwarded_packets == 0 {
        "-".to_string()
    } else {
        let per = run.busy.as_nanos() / u128::from(s.forwarded_packets);
        format!("{:.2} µs", per as f64 / 1000.0)
    };
    format!(
        "relay: forwarded {} ({} bytes), {} binds, refused {} ({} unbound, {} forged, {} \
         expired, {} over a limit, {} when full), dropped {} over the rate, {} malformed; CPU \
         {cpu} per forwarded packet",
        plural(s.forwarded_packets, "packet"),
        s.forwarded_bytes,
        s.binds,
        refused,
        s.refused_unbound,
        s.refused_forged,
        s.refused_expired,
        s.refused_over_limit,
        s.refused_full,
        s.dropped_rate,
        s.malformed,
    )
}

/// A socket for talking to `lobby`: on the loopback interface if the lobby is there (tests
/// and local runs bind nothing else), else on every interface.
pub(crate) fn bind_towards(lobby: SocketAddr) -> Result<UdpTransport, String> {
    let ip: std::net::IpAddr = match (lobby.is_ipv4(), lobby.ip().is_loopback()) {
        (true, true) => std::net::Ipv4Addr::LOCALHOST.into(),
        (true, false) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        (false, true) => std::net::Ipv6Addr::LOCALHOST.into(),
        (false, false) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    UdpTransport::bind(SocketAddr::new(ip, 0), UdpConfig::default())
        .map_err(|e| format!("cannot bind UDP: {}", crate::io_reason(&e)))
}

/// What a lobby that never answered in `waited` (every retry) means, in words.
fn unreachable(lobby: SocketAddr, waited: Duration) -> String {
    format!(
        "the lobby at {lobby} does not answer (no reply in {} s): check the address and that \
         `statewire lobby` runs there",
        waited.as_secs_f64().round()
    )
}

/// `statewire games`.
pub(crate) fn games(args: GamesArgs) -> ExitCode {
    if args.name.len() > statewire_lobby::wire::MAX_NAME_LEN {
        return usage(&format!(
            "--name is {} bytes long; game names have at most {}",
            args.name.len(),
            statewire_lobby::wire::MAX_NAME_LEN
        ));
    }
    let socket = match bind_towards(args.lobby) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let start = Instant::now();
    let mut rv = Rendezvous::idle(
        socket,
        args.lobby,
        RendezvousConfig::default(),
        start.elapsed(),
    );
    let version = args.version.unwrap_or(0);
    rv.list(version, &args.name, 0);
    let mut games: Vec<GameEntry> = Vec::new();
    let mut buf = vec![0u8; 2048];
    // Every page is answered or given up on within the rendezvous' retries; this bounds a
    // lobby that keeps answering with pages that never add up to its total.
    let limit = Duration::from_secs(60);
    loop {
        if start.elapsed() > limit {
            return fail(&format!(
                "the lobby at {} kept paging for {} s; stopped",
                args.lobby,
                limit.as_secs()
            ));
        }
        let now = start.elapsed();
        if let Err(e) = rv.update(now) {
            return fail(&format!("the socket failed: {e}"));
        }
        loop {
            match rv.recv(&mut buf) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => return fail(&format!("the socket failed: {e}")),
            }
        }
        let mut done = false;
        while let Some(ev) = rv.poll_event() {
            match ev {
                RendezvousEvent::Games { total, games: page } => {
                    let empty = page.is_empty();
                    games.extend(page);
                    match u16::try_from(games.len()) {
                        Ok(offset) if !empty && offset < total => {
                            rv.list(version, &args.name, offset);
                        }
                        _ => done = true,
                    }
                }
                RendezvousEvent::Refused(why) => {
                    return fail(&format!("the lobby refused the list: {why}"));
                }
                RendezvousEvent::LobbyUnreachable => {
                    return fail(&unreachable(args.lobby, start.elapsed()));
                }
                _ => {}
            }
        }
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    print!("{}", games_table(&games));
    let _ = std::io::stdout().flush();
    ExitCode::SUCCESS
}

/// A name from the wire made safe for a terminal: control characters become `?`.
fn printable(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The `games` table (or `no public games`), one line per game.
fn games_table(games: &[GameEntry]) -> String {
    if games.is_empty() {
        return "no public games\n".into();
    }
    let names: Vec<String> = games.iter().map(|g| printable(&g.name)).collect();
    let width = names
        .iter()
        .map(|n| n.chars().count())
        .chain([4])
        .max()
        .unwrap_or(4);
    let mut out = format!(
        "{:<6}  {:<width$}  {:>7}  VERSION\n",
        "CODE", "NAME", "PLAYERS"
    );
    for (g, name) in games.iter().zip(&names) {
        let players = format!("{}/{}", g.players, g.max_players);
        out.push_str(&format!(
            "{:<6}  {name:<width$}  {players:>7}  {}\n",
            g.code, g.version
        ));
    }
    out.push_str(&format!("{}\n", count(games.len() as u64, "game", "games")));
    out
}

/// The transport under `serve` and `join`: a plain socket, or a game socket wrapped in a
/// [`Rendezvous`] with a lobby (so the loop can drive it and read its events).
pub(crate) enum Net {
    /// UDP or TCP without a lobby.
    Plain(Box<dyn Transport>),
    /// UDP through a lobby.
    Lobby(Box<Rendezvous<UdpTransport>>),
}

impl Net {
    /// The rendezvous, when there is a lobby.
    pub(crate) fn rendezvous_mut(&mut self) -> Option<&mut Rendezvous<UdpTransport>> {
        match self {
            Net::Lobby(rv) => Some(rv),
            Net::Plain(_) => None,
        }
    }
}

impl Transport for Net {
    fn local_addr(&self) -> SocketAddr {
        match self {
            Net::Plain(t) => t.local_addr(),
            Net::Lobby(t) => t.local_addr(),
        }
    }

    fn max_payload(&self) -> usize {
        match self {
            Net::Plain(t) => t.max_payload(),
            Net::Lobby(t) => t.max_payload(),
        }
    }

    fn send(&mut self, to: SocketAddr, payload: &[u8]) -> Result<(), TransportError> {
        match self {
            Net::Plain(t) => t.send(to, payload),
            Net::Lobby(t) => t.send(to, payload),
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<Received>, TransportError> {
        match self {
            Net::Plain(t) => t.recv(buf),
            Net::Lobby(t) => t.recv(buf),
        }
    }

    fn poll_closed_peer(&mut self) -> Option<SocketAddr> {
        match self {
            Net::Plain(t) => t.poll_closed_peer(),
            Net::Lobby(t) => t.poll_closed_peer(),
        }
    }

    fn close_peer(&mut self, peer: SocketAddr) {
        match self {
            Net::Plain(t) => t.close_peer(peer),
            Net::Lobby(t) => t.close_peer(peer),
        }
    }

    fn mark_validated(&mut self, peer: SocketAddr) {
        match self {
            Net::Plain(t) => t.mark_validated(peer),
            Net::Lobby(t) => t.mark_validated(peer),
        }
    }
}

/// A `serve --lobby` game's side of the lobby: prints the code once registered, the paths
/// of its players, and reports the roster.
pub(crate) struct Hosting {
    /// The lobby as given on the command line (for the join link).
    lobby_text: String,
    lobby: SocketAddr,
    code: Option<JoinCode>,
    /// Players the lobby announced, by canonical address (to name them in path changes).
    coming: Vec<(SocketAddr, ClientId)>,
    next_roster: Duration,
}

impl Hosting {
    pub(crate) fn new(lobby_text: String, lobby: SocketAddr) -> Hosting {
        Hosting {
            lobby_text,
            lobby,
            code: None,
            coming: Vec::new(),
            next_roster: Duration::ZERO,
        }
    }

    /// Drives the rendezvous at `now` and prints what happened; an error (the lobby refused
    /// or never answered the registration) ends the server.
    pub(crate) fn poll(
        &mut self,
        rv: &mut Rendezvous<UdpTransport>,
        now: Duration,
        connected: &[ClientId],
    ) -> Result<(), String> {
        if now >= self.next_roster {
            self.next_roster = now + Duration::from_secs(1);
            rv.set_players(connected);
        }
        rv.update(now)
            .map_err(|e| format!("the server's transport failed: {e}"))?;
        while let Some(ev) = rv.poll_event() {
            match ev {
                RendezvousEvent::Registered { code, .. } => {
                    if self.code.is_none() {
                        println!("join code: {code}");
                        println!("join link: {}", code.link(&self.lobby_text));
                        let _ = std::io::stdout().flush();
                    }
                    self.code = Some(code);
                }
                RendezvousEvent::PeerComing { client_id, addr } => {
                    self.coming.retain(|(a, _)| *a != addr);
                    // Bounded like the rendezvous' own peers.
                    if self.coming.len() >= 4 * RendezvousConfig::default().max_peers {
                        self.coming.remove(0);
                    }
                    self.coming.push((addr, client_id));
                }
                RendezvousEvent::PathChanged { peer, path } => {
                    match self.coming.iter().find(|(a, _)| *a == peer) {
                        Some((_, id)) => println!("client {}: path {path}", id.0),
                        None => println!("{peer}: path {path}"),
                    }
                    let _ = std::io::stdout().flush();
                }
                RendezvousEvent::Refused(why) if self.code.is_none() => {
                    return Err(format!("the lobby refused to register the game: {why}"));
                }
                RendezvousEvent::Refused(why) => {
                    println!("lobby: {why}");
                }
                RendezvousEvent::LobbyUnreachable if self.code.is_none() => {
                    return Err(format!(
                        "{}; the game is not registered",
                        unreachable(self.lobby, now)
                    ));
                }
                RendezvousEvent::LobbyUnreachable => {
                    println!(
                        "lobby: not answering heartbeats; new players cannot join until it does"
                    );
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// What `join` needs from the lobby to connect (besides the rendezvous).
pub(crate) struct Admission {
    pub(crate) token: Box<ConnectToken>,
    pub(crate) host: SocketAddr,
    pub(crate) client_id: ClientId,
    /// The path to the host, if the rendezvous chose one at once (`--force-relay`).
    pub(crate) path: Option<Path>,
}

/// Why asking the lobby for a game did not get in.
pub(crate) enum NotAdmitted {
    /// Ctrl-C.
    Interrupted,
    /// The reason in words.
    Failed(String),
}

/// Asks the lobby at `lobby` for game `code` until it answers, `limit` passes (measured on
/// `start`) or Ctrl-C (when `interruptible`); with `force_relay`, never punches and plays
/// through the relay only.
pub(crate) fn ask_lobby(
    lobby: SocketAddr,
    code: JoinCode,
    protocol_id: u64,
    force_relay: bool,
    start: Instant,
    limit: Duration,
    interruptible: bool,
) -> Result<(Net, Admission), NotAdmitted> {
    let socket = bind_towards(lobby).map_err(NotAdmitted::Failed)?;
    let config = RendezvousConfig {
        relay_only: force_relay,
        ..RendezvousConfig::default()
    };
    let now = start.elapsed();
    let rv = Rendezvous::join(socket, lobby, code, protocol_id, config, now);
    let (rv, a) = pump_join(rv, code, start, limit, interruptible)?;
    // With a relay granted, a relay-only rendezvous picks it at once (and answers none of
    // the host's punches, so the host ends relayed too); without one it could only punch.
    if force_relay && a.path != Some(Path::Relayed) {
        return Err(NotAdmitted::Failed(format!(
            "the lobby at {lobby} offers no relay (it runs without --relay), so \
             --force-relay cannot reach the game: leave it out"
        )));
    }
    Ok((Net::Lobby(Box::new(rv)), a))
}

/// Reads the lobby's replies through `rv` until it admits us.
fn pump_join<T: Transport>(
    mut rv: Rendezvous<T>,
    code: JoinCode,
    start: Instant,
    limit: Duration,
    interruptible: bool,
) -> Result<(Rendezvous<T>, Admission), NotAdmitted> {
    let lobby = rv.lobby();
    let mut buf = vec![0u8; 2048];
    let failed = |e: TransportError| NotAdmitted::Failed(format!("the socket failed: {e}"));
    // A path chosen at once is announced before the admission itself.
    let mut path = None;
    while start.elapsed() < limit {
        if interruptible && stop_requested() {
            return Err(NotAdmitted::Interrupted);
        }
        rv.update(start.elapsed()).map_err(failed)?;
        // The lobby's replies arrive through `recv`; nothing else is expected yet.
        while rv.recv(&mut buf).map_err(failed)?.is_some() {}
        while let Some(ev) = rv.poll_event() {
            match ev {
                RendezvousEvent::Joined {
                    token,
                    host,
                    membership,
                } => {
                    let admission = Admission {
                        token,
                        host,
                        client_id: membership.client_id,
                        path,
                    };
                    return Ok((rv, admission));
                }
                RendezvousEvent::Refused(why) => {
                    return Err(NotAdmitted::Failed(format!(
                        "the lobby refused to join game {code}: {why}"
                    )));
                }
                RendezvousEvent::LobbyUnreachable => {
                    return Err(NotAdmitted::Failed(unreachable(lobby, start.elapsed())));
                }
                RendezvousEvent::PathChanged { path: p, .. } => path = Some(p),
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Err(NotAdmitted::Failed(format!(
        "gave up after {} (--timeout-secs) waiting for the lobby at {lobby}",
        plural(limit.as_secs(), "second")
    )))
}

/// How a lobby join reaches its host, in words (`direct`, `relayed`, ...).
pub(crate) fn path_word(path: Option<Path>) -> String {
    path.map_or_else(|| "unknown".to_string(), |p| p.to_string())
}

/// Binds the UDP socket a lobby or relay serves on; a failure is reported in words.
fn bind_udp(addr: std::net::SocketAddr) -> Result<UdpSocket, ExitCode> {
    UdpSocket::bind(addr)
        .map_err(|e| fail(&format!("cannot bind UDP {addr}: {}", crate::io_reason(&e))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_checked_in_words() {
        assert!(check_namespace("ci-1.a_b").is_ok());
        assert!(check_namespace("").unwrap_err().contains("1 to 64"));
        let e = check_namespace("a b").unwrap_err();
        assert!(e.contains("' '"), "{e}");
        assert!(check_redis_url("redis://127.0.0.1:6379/").is_ok());
        assert!(check_redis_url("127.0.0.1:6379").is_err());
    }

    #[test]
    fn the_games_table_has_a_row_per_game_and_no_control_characters() {
        assert_eq!(games_table(&[]), "no public games\n");
        let code: JoinCode = "K7M2QX".parse().unwrap();
        let table = games_table(&[GameEntry {
            code,
            version: 3,
            players: 2,
            max_players: 8,
            name: "Friday\x1b[2Jnight".into(),
        }]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("CODE"), "{table}");
        assert!(lines[1].starts_with("K7M2QX  Friday?[2Jnight"), "{table}");
        assert!(lines[1].contains("2/8"), "{table}");
        assert!(lines[1].ends_with('3'), "{table}");
        assert_eq!(lines[2], "1 game");
    }
}
