//! `statewire serve` and `statewire join`: the sim game across processes, on real sockets and
//! the wall clock.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use statewire_transport::Transport;
use statewire_transport::tcp::{TcpConfig, TcpTransport};
use statewire_transport::udp::{UdpConfig, UdpTransport};

use statewire::discovery::{Announcer, Beacon, GameTransport, HostList, MAX_NAME_LEN};

use statewire::packet::RejectReason;
use statewire::{ClientState, DisconnectReason};
use statewire_core::{ClientConfig, ClientId, StoreConfig};

use statewire_lobby::{HostInfo, JoinCode, Rendezvous, RendezvousConfig, RendezvousEvent};

use crate::bots::{Behaviour, BotClient as GameClient};
use crate::game::TICK_HZ;
use crate::lobby::{Net, NotAdmitted};
use crate::rules::ServerGame as GameServer;
use crate::sim::{MAX_TICKS, MIN_PACKET};
use crate::{count, fail, parse_addr, plural, stop_requested, usage};

/// Flags of `statewire serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Serve over UDP on this address (e.g. 127.0.0.1:7777); give this or --tcp.
    #[arg(long, value_parser = parse_addr, conflicts_with = "tcp")]
    udp: Option<SocketAddr>,
    /// Serve over TCP on this address (e.g. 127.0.0.1:7777); give this or --udp.
    #[arg(long, value_parser = parse_addr)]
    tcp: Option<SocketAddr>,
    /// Enemies in the world.
    #[arg(long, default_value_t = 1000)]
    entities: usize,
    /// Active ticks at 30 Hz before the world goes quiet (1800 = 60 s).
    #[arg(long, default_value_t = 1800)]
    ticks: u32,
    /// Quiet ticks (nothing changes) before the final state digest is sent.
    #[arg(long, default_value_t = 90)]
    quiet_ticks: u32,
    /// Most clients (1 to 1024).
    #[arg(long, default_value_t = 64)]
    max_clients: usize,
    /// Byte budget of one snapshot.
    #[arg(long, default_value_t = 1100)]
    max_packet: usize,
    /// Seed of the game.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Coding of positions and facings (clients must use the same).
    #[arg(long, value_enum, default_value_t = crate::sim::CodecKind::Packed)]
    codec: crate::sim::CodecKind,
    /// Announce the game on the LAN: send a beacon to this address once a second (e.g.
    /// 255.255.255.255:47800; broadcast is enabled on the beacon socket).
    #[arg(long, value_parser = parse_addr)]
    announce: Option<SocketAddr>,
    /// Name announced in the beacon and listed by the lobby (at most 64 bytes of UTF-8).
    #[arg(long, default_value = "statewire sim")]
    name: String,
    /// Register the game with the lobby at this address (`statewire lobby`; UDP only): it
    /// prints a join code players join with (`statewire join --lobby ADDR --code CODE`),
    /// punching through NATs or through the lobby's relay. Connect tokens come from the lobby,
    /// sealed with a random key of this game (so not with --key-file).
    #[arg(long, value_name = "ADDR")]
    lobby: Option<String>,
    /// With --lobby: list the game publicly (`statewire games`); else it is joined by code
    /// only.
    #[arg(long, requires = "lobby")]
    public: bool,
    /// Require connect tokens sealed with this key file (from `statewire keygen`); without it
    /// the server runs in development mode (anyone on the network may join).
    #[arg(long)]
    key_file: Option<std::path::PathBuf>,
    /// With --key-file: the address clients use to reach this server, as named in their
    /// tokens (default: the bound address). May be given up to 4 times.
    #[arg(long = "public-addr", value_parser = parse_addr, requires = "key_file")]
    public_addrs: Vec<SocketAddr>,
}

/// Flags of `statewire lan`.
#[derive(Debug, clap::Args)]
pub(crate) struct LanArgs {
    /// Listen for beacons on this address (e.g. 0.0.0.0:47800).
    #[arg(long, value_parser = parse_addr, default_value = "0.0.0.0:47800")]
    listen: SocketAddr,
    /// How long to listen, in seconds (1 to 3600).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=3600))]
    secs: u64,
    /// List only games of this coding (default: every coding). A game is listed only if its
    /// game id is the protocol fingerprint (`Protocol::fingerprint`) of the coding its beacon announces.
    #[arg(long, value_enum)]
    codec: Option<crate::sim::CodecKind>,
}

/// Flags of `statewire join`.
#[derive(Debug, clap::Args)]
pub(crate) struct JoinArgs {
    /// The server's address (e.g. 127.0.0.1:7777 or localhost:7777); or join through a lobby
    /// with --lobby ADDR --code CODE, or with --link.
    #[arg(value_parser = parse_addr)]
    addr: Option<SocketAddr>,
    /// Join through the lobby at this address (`statewire lobby`), with --code.
    #[arg(long, value_name = "ADDR")]
    lobby: Option<String>,
    /// With --lobby: the game's join code (six characters, as `serve --lobby` prints it).
    #[arg(long, value_parser = parse_code)]
    code: Option<JoinCode>,
    /// A join link, statewire://HOST:PORT/CODE (the lobby and the code in one).
    #[arg(long, value_name = "LINK", value_parser = parse_join_link)]
    link: Option<(String, JoinCode)>,
    /// With a lobby join: never punch, play through the lobby's relay at once (for tests, and
    /// for networks known to need it).
    #[arg(long)]
    force_relay: bool,
    /// Connect over TCP instead of UDP.
    #[arg(long)]
    tcp: bool,
    /// Seed of this bot.
    #[arg(long, default_value_t = 2)]
    seed: u64,
    /// Give up after this many seconds (1 to 86,400).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout_secs: u64,
    /// Coding of positions and facings (as the server).
    #[arg(long, value_enum, default_value_t = crate::sim::CodecKind::Packed)]
    codec: crate::sim::CodecKind,
    /// A connect token from `statewire token` (base64), for a server run with --key-file.
    #[arg(long, value_parser = crate::keys::parse_token)]
    token: Option<statewire::ConnectToken>,
}

fn parse_code(s: &str) -> Result<JoinCode, String> {
    s.parse()
        .map_err(|e: statewire_lobby::CodeError| e.to_string())
}

fn parse_join_link(s: &str) -> Result<(String, JoinCode), String> {
    statewire_lobby::parse_link(s).map_err(|e| e.to_string())
}

/// Where `join` goes.
enum Target {
    /// Straight to a server.
    Server(SocketAddr),
    /// Through a lobby (its address, as given and resolved), to the game with this code.
    Lobby { lobby: SocketAddr, code: JoinCode },
}

/// Checks `join`'s flags: exactly one of the address, --lobby with --code, or --link.
fn join_target(args: &JoinArgs) -> Result<Target, String> {
    let forms = [
        args.addr.is_some(),
        args.code.is_some() || args.lobby.is_some(),
        args.link.is_some(),
    ];
    let how = "give a server address, --lobby ADDR --code CODE, or --link \
               statewire://HOST:PORT/CODE";
    match forms.iter().filter(|&&f| f).count() {
        0 => return Err(format!("join needs to know where to go: {how}")),
        1 => {}
        _ => return Err(format!("join goes to one place: {how}, only one of them")),
    }
    let target = match (&args.addr, &args.lobby, args.code, &args.link) {
        (Some(addr), ..) => Target::Server(*addr),
        (None, Some(lobby), Some(code), _) => Target::Lobby {
            lobby: parse_addr(lobby).map_err(|e| format!("--lobby: {e}"))?,
            code,
        },
        (None, Some(_), None, _) => {
            return Err("--lobby needs the game's --code CODE".into());
        }
        (None, None, Some(_), _) => {
            return Err("--code needs the lobby's address: --lobby ADDR".into());
        }
        (None, None, None, Some((lobby, code))) => Target::Lobby {
            lobby: parse_addr(lobby).map_err(|e| format!("--link: the lobby {e}"))?,
            code: *code,
        },
        (None, None, None, None) => return Err(format!("join needs to know where to go: {how}")),
    };
    match target {
        Target::Server(_) if args.force_relay => Err(
            "--force-relay is for joins through a lobby (--lobby ADDR --code CODE or --link)"
                .into(),
        ),
        Target::Lobby { .. } if args.tcp => Err(
            "a join through a lobby is over UDP only (it punches through NATs): leave out --tcp"
                .into(),
        ),
        Target::Lobby { .. } if args.token.is_some() => Err(
            "a join through a lobby gets its connect token from the lobby: leave out --token"
                .into(),
        ),
        t => Ok(t),
    }
}

fn tick_len() -> Duration {
    Duration::from_micros(1_000_000 / u64::from(TICK_HZ))
}

/// Most `serve --max-clients`: the replicator's limit.
const MAX_SERVE_CLIENTS: usize = 1024;

/// Checks `serve`'s flags; the error names the one flag at fault.
fn validate_serve(args: &ServeArgs) -> Result<(), String> {
    if args.udp.is_none() && args.tcp.is_none() {
        return Err(
            "serve needs an address to listen on: give --udp ADDR or --tcp ADDR \
             (e.g. --udp 127.0.0.1:7777)"
                .into(),
        );
    }
    for (flag, v) in [("--ticks", args.ticks), ("--quiet-ticks", args.quiet_ticks)] {
        if v > MAX_TICKS {
            return Err(format!(
                "{flag} {v} is more than {MAX_TICKS} (about {} hours at {TICK_HZ} Hz)",
                MAX_TICKS / TICK_HZ / 3600
            ));
        }
    }
    if !(1..=MAX_SERVE_CLIENTS).contains(&args.max_clients) {
        return Err(format!(
            "--max-clients {} is out of range: 1 to {MAX_SERVE_CLIENTS}",
            args.max_clients
        ));
    }
    let max_pkt = crate::rules::max_replication_packet();
    if !(MIN_PACKET..=max_pkt).contains(&args.max_packet) {
        return Err(format!(
            "--max-packet {} is out of range: a replication packet must be at least \
             {MIN_PACKET} bytes and fit the session's unreliable channel ({max_pkt} bytes)",
            args.max_packet
        ));
    }
    // Every client sees every entity (no interest radius): enemies plus one player each.
    let client_max = ClientConfig::default().max_entities;
    let store_max = StoreConfig::default().max_entities;
    let most = client_max.min(store_max).saturating_sub(args.max_clients);
    if args.entities > most {
        return Err(format!(
            "--entities {} is more than {most}: every client holds every entity, and a client \
             holds at most {client_max} (less one player for each of --max-clients {})",
            args.entities, args.max_clients
        ));
    }
    if args.name.len() > MAX_NAME_LEN {
        return Err(format!(
            "--name is {} bytes long; a beacon carries at most {MAX_NAME_LEN}",
            args.name.len()
        ));
    }
    if args.lobby.is_some() {
        if args.tcp.is_some() {
            return Err(
                "--lobby works over UDP only (players punch through NATs to the game's \
                        UDP socket): use --udp ADDR instead of --tcp"
                    .into(),
            );
        }
        if args.key_file.is_some() {
            return Err(
                "--lobby hands out connect tokens itself, sealed with a random key of \
                        this game: leave out --key-file"
                    .into(),
            );
        }
        if args.name.len() > statewire_lobby::wire::MAX_NAME_LEN {
            return Err(format!(
                "--name is {} bytes long; the lobby lists names of at most {}",
                args.name.len(),
                statewire_lobby::wire::MAX_NAME_LEN
            ));
        }
        if args.max_clients > usize::from(u16::MAX) {
            return Err(format!(
                "--max-clients {} is more than the lobby lists ({})",
                args.max_clients,
                u16::MAX
            ));
        }
    }
    if args.public_addrs.len() > statewire::crypto::MAX_TOKEN_ADDRS {
        return Err(format!(
            "--public-addr given {} times; a token names at most {} server addresses",
            args.public_addrs.len(),
            statewire::crypto::MAX_TOKEN_ADDRS
        ));
    }
    Ok(())
}

pub(crate) fn serve(args: ServeArgs) -> ExitCode {
    if let Err(e) = validate_serve(&args) {
        return usage(&e);
    }
    let lobby = match &args.lobby {
        None => None,
        Some(text) => match parse_addr(text) {
            Ok(a) => Some((text.clone(), a)),
            Err(e) => return usage(&format!("--lobby: {e}")),
        },
    };
    let protocol_id = match crate::rules::protocol_id(args.codec.coding()) {
        Ok(id) => id,
        Err(e) => return fail(&e.to_string()),
    };
    let unix_time_at_zero = crate::lobby::unix_now();
    let mut hosting = None;
    let (transport, lobby_tokens) = match (args.udp, args.tcp, &lobby) {
        (Some(a), _, Some((text, lobby_addr))) => {
            let udp = match UdpTransport::bind(a, UdpConfig::default()) {
                Ok(t) => t,
                Err(e) => return fail(&format!("cannot bind UDP {a}: {e}")),
            };
            let token_key = match statewire::Key::try_random() {
                Ok(k) => k,
                Err(e) => return fail(&format!("no random source for the token key: {e}")),
            };
            let bound = udp.local_addr();
            let info = HostInfo {
                name: args.name.clone(),
                protocol_id,
                version: u32::from(statewire::SessionConfig::default().version),
                // At most u16::MAX (validated above).
                max_players: args.max_clients.min(usize::from(u16::MAX)) as u16,
                public: args.public,
                host_client: ClientId(0),
                token_key: token_key.clone(),
            };
            let rv = Rendezvous::host(
                udp,
                *lobby_addr,
                info,
                RendezvousConfig::default(),
                Duration::ZERO,
            );
            hosting = Some(crate::lobby::Hosting::new(text.clone(), *lobby_addr));
            let tokens = statewire::TokenConfig {
                key: token_key,
                public_addrs: vec![bound],
                unix_time_at_zero,
            };
            (Net::Lobby(Box::new(rv)), Some(tokens))
        }
        (Some(a), _, None) => match UdpTransport::bind(a, UdpConfig::default()) {
            Ok(t) => (Net::Plain(Box::new(t)), None),
            Err(e) => return fail(&format!("cannot bind UDP {a}: {e}")),
        },
        (None, Some(a), _) => match TcpTransport::listen(a, TcpConfig::default()) {
            Ok(t) => (Net::Plain(Box::new(t)), None),
            Err(e) => return fail(&format!("cannot listen on TCP {a}: {e}")),
        },
        (None, None, _) => return usage("give --udp ADDR or --tcp ADDR"),
    };
    let tokens = match &args.key_file {
        None => lobby_tokens,
        Some(path) => {
            let key = match crate::keys::read_key(path) {
                Ok(k) => k,
                Err(e) => return usage(&format!("--key-file: {e}")),
            };
            let bound = transport.local_addr();
            let public_addrs = if args.public_addrs.is_empty() {
                vec![bound]
            } else {
                args.public_addrs.clone()
            };
            Some(statewire::TokenConfig {
                key,
                public_addrs,
                unix_time_at_zero,
            })
        }
    };
    let secret = match statewire::Key::try_random() {
        Ok(k) => k,
        Err(e) => return fail(&format!("no random source for the server key: {e}")),
    };
    let mut server = match GameServer::new(
        transport,
        &crate::rules::GameParams {
            enemies: args.entities,
            max_clients: args.max_clients,
            max_packet_bytes: args.max_packet,
            budget: None,
            interest_radius: 0.0,
            moving: None,
            seed: args.seed,
            coding: args.codec.coding(),
        },
        crate::rules::Security { secret, tokens },
    ) {
        Ok(s) => s,
        Err(e) => return fail(&e.to_string()),
    };
    println!("listening on {}", server.net.local_addr());
    let _ = std::io::stdout().flush();
    let game_addr = server.net.local_addr();
    let mut beacon = match args.announce {
        None => None,
        Some(target) => {
            let any = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0);
            let sock = match UdpTransport::bind(any, UdpConfig::default()) {
                Ok(s) => s,
                Err(e) => return fail(&format!("cannot bind the beacon socket: {e}")),
            };
            if let Err(e) = sock.set_broadcast(true) {
                return fail(&format!("cannot enable broadcast: {e}"));
            }
            Some((sock, Announcer::new(target, Duration::from_secs(1))))
        }
    };
    let interruptible = crate::catch_ctrl_c();
    let start = Instant::now();
    let total = args.ticks + args.quiet_ticks;
    let linger = 2 * TICK_HZ;
    let mut known: Vec<ClientId> = Vec::new();
    let mut last_security = security_line(&server.net.session().stats());
    let mut interrupted = false;
    for t in 0..total + linger {
        if interruptible && stop_requested() {
            interrupted = true;
            break;
        }
        let now = start.elapsed();
        if let (Some(h), Some(rv)) = (
            &mut hosting,
            server.net.session_mut().transport_mut().rendezvous_mut(),
        ) && let Err(e) = h.poll(rv, now, &known)
        {
            return fail(&e);
        }
        if let Err(e) = server.step(now, t < args.ticks) {
            return fail(&e.to_string());
        }
        if server.connected() != known.as_slice() {
            for id in server.connected().iter().filter(|id| !known.contains(id)) {
                println!("tick {t}: client {} joined", id.0);
            }
            for id in known.iter().filter(|id| !server.connected().contains(id)) {
                println!("tick {t}: client {} left", id.0);
            }
            known = server.connected().to_vec();
            println!(
                "tick {t}: {} connected",
                count(known.len() as u64, "client", "clients")
            );
        }
        if t % (10 * TICK_HZ) == 0 {
            let line = security_line(&server.net.session().stats());
            if line != last_security {
                println!("tick {t}: {line}");
                last_security = line;
            }
        }
        if let Some((sock, announcer)) = &mut beacon {
            let b = Beacon {
                game_id: protocol_id,
                version: statewire::SessionConfig::default().version,
                game_port: game_addr.port(),
                transport: if args.tcp.is_some() {
                    GameTransport::Tcp
                } else {
                    GameTransport::Udp
                },
                codec: args.codec.coding(),
                players: known.len().min(usize::from(u16::MAX)) as u16,
                max_players: args.max_clients.min(usize::from(u16::MAX)) as u16,
                // At most MAX_NAME_LEN bytes (validated above).
                name: args.name.clone(),
            };
            // A failed beacon is not worth stopping the game for.
            let _ = announcer.poll(now, &b, sock);
        }
        if t == total {
            server.announce_final();
            println!(
                "final state at {}: {} entities, digest {:016x}",
                server.tick(),
                server.net.store().len(),
                server.world_digest()
            );
        }
        // Drain the socket while waiting for the next tick, so that a flood of junk cannot
        // fill the kernel's buffer and crowd out real clients' packets.
        let next = tick_len() * (t + 1);
        while let Some(wait) = next.checked_sub(start.elapsed()) {
            if interruptible && stop_requested() {
                break;
            }
            match server.net.session_mut().receive(start.elapsed()) {
                Ok(0) => std::thread::sleep(wait.min(Duration::from_millis(1))),
                Ok(_) => {}
                Err(e) => return fail(&format!("the server's transport failed: {e}")),
            }
        }
    }
    // Tell every client the server shuts down (they leave at once instead of waiting out
    // their idle timeout).
    let told = server.net.clients().len();
    server.net.shutdown();
    let _ = server.net.flush(start.elapsed());
    if let Some(rv) = server.net.session_mut().transport_mut().rendezvous_mut() {
        // The game ends with this server: players asking for the code are told so.
        rv.leave(false);
        println!("told the lobby the game has ended");
    }
    if interrupted {
        println!(
            "interrupted at tick {}: told {} the server is shutting down",
            server.tick().0,
            count(told as u64, "client", "clients")
        );
    }
    let c = server.counters;
    println!(
        "served {}: {} snapshot bytes, {} entity records, {} deferred, {} bad client messages",
        plural(
            if interrupted {
                server.tick().0.min(total)
            } else {
                total
            },
            "tick"
        ),
        c.snapshot_bytes,
        c.records,
        c.deferred,
        c.bad_client_messages
    );
    println!("{}", security_line(&server.net.session().stats()));
    if interrupted {
        // The shell's convention for a process ended by SIGINT.
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    }
}

/// What the server refused and why, in words (printed at the end of `serve` and whenever it
/// changes, at most every 10 s).
fn security_line(s: &statewire::ServerStats) -> String {
    format!(
        "security: {} handshakes accepted; refused {} forged tokens, {} expired, {} for \
         another server, {} in use elsewhere, {} without a token, {} bad cookies, {} of \
         another protocol or version; dropped {} rate-limited handshakes, {} forged and {} replayed packets, {} \
         from unknown addresses, {} malformed; {} clients disconnected for faults",
        s.accepted,
        s.token_forged,
        s.token_expired,
        s.token_wrong_server,
        s.token_in_use,
        s.token_required,
        s.rejected_cookie,
        s.rejected_version,
        s.rate_limited,
        s.forged,
        s.replayed,
        s.unknown_peer,
        s.malformed,
        s.fault_disconnects
    )
}

/// Why a join failed, in words: what the server's refusal means for this command's flags, and
/// for a timeout whether anything answered at all.
fn explain_end(reason: DisconnectReason, args: &JoinArgs, last: ClientState) -> String {
    match reason {
        DisconnectReason::Rejected {
            reason: RejectReason::ProtocolMismatch,
            ..
        } => format!(
            "rejected: the server runs a different game protocol: a different codec (--codec; \
             this client uses --codec {}) or version",
            args.codec.name()
        ),
        DisconnectReason::Rejected {
            reason: RejectReason::VersionMismatch,
            server_version,
        } => format!(
            "rejected: the server runs protocol version {server_version}, this client version \
             {}",
            statewire::SessionConfig::default().version
        ),
        DisconnectReason::Rejected {
            reason: RejectReason::ChannelMismatch,
            ..
        } => "rejected: the server uses a different channel configuration (another build of \
              statewire)"
            .into(),
        DisconnectReason::ConnectTimeout => {
            let secs = statewire::SessionConfig::default()
                .connect_timeout
                .as_secs();
            let mut m = format!("no answer from the server within {secs} s (the connect timeout)");
            if !args.tcp && args.addr.is_some() && matches!(last, ClientState::Requesting) {
                m.push_str("; no reply over UDP: if the server runs with --tcp, add --tcp");
            }
            m
        }
        other => other.to_string(),
    }
}

/// `join`'s once-a-second status (tick, entities, RTT, kills) while a terminal watches: a
/// spinner line on stderr, or plain lines on stdout when only stdout is a terminal.
enum Status {
    Spinner(indicatif::ProgressBar),
    Lines,
    Off,
}

impl Status {
    fn new() -> Status {
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new_spinner();
            if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg}") {
                bar.set_style(style);
            }
            Status::Spinner(bar)
        } else if std::io::stdout().is_terminal() {
            Status::Lines
        } else {
            Status::Off
        }
    }

    fn show(&self, line: String) {
        match self {
            Status::Spinner(bar) => {
                bar.set_message(line);
                bar.tick();
            }
            Status::Lines => println!("{line}"),
            Status::Off => {}
        }
    }

    /// Prints `line` on stdout (above the spinner line, if there is one).
    fn println(&self, line: &str) {
        match self {
            Status::Spinner(bar) => bar.suspend(|| println!("{line}")),
            _ => println!("{line}"),
        }
        let _ = std::io::stdout().flush();
    }

    fn done(&self) {
        if let Status::Spinner(bar) = self {
            bar.finish_and_clear();
        }
    }
}

fn status_line<T: Transport>(client: &GameClient<T>, elapsed: Duration) -> String {
    format!(
        "{:>4} s  server tick {}  {}  RTT {}  {} seen",
        elapsed.as_secs(),
        client
            .net
            .tick()
            .map_or_else(|| "-".to_string(), |t| t.0.to_string()),
        count(client.net.replicator().len() as u64, "entity", "entities"),
        client
            .net
            .rtt()
            .map_or_else(|| "-".to_string(), |r| format!("{} ms", r.as_millis())),
        plural(client.world.events.len() as u64, "kill"),
    )
}

pub(crate) fn join(args: JoinArgs) -> ExitCode {
    // "first snapshot after" counts from here.
    let start = Instant::now();
    let target = match join_target(&args) {
        Ok(t) => t,
        Err(e) => return usage(&e),
    };
    let interruptible = crate::catch_ctrl_c();
    let limit = Duration::from_secs(args.timeout_secs);
    let mut early_path = None;
    let (transport, server, token, place, via_lobby) = match target {
        Target::Server(addr) => match connect_plain(addr, args.tcp) {
            Ok(t) => (t, addr, args.token.clone(), addr.to_string(), false),
            Err(e) => return fail(&e),
        },
        Target::Lobby { lobby, code } => {
            let protocol_id = match crate::rules::protocol_id(args.codec.coding()) {
                Ok(id) => id,
                Err(e) => return fail(&e.to_string()),
            };
            match crate::lobby::ask_lobby(
                lobby,
                code,
                protocol_id,
                args.force_relay,
                start,
                limit,
                interruptible,
            ) {
                Ok((net, a)) => {
                    println!("joined game {code} as client {}", a.client_id.0);
                    let _ = std::io::stdout().flush();
                    early_path = a.path;
                    (net, a.host, Some(*a.token), format!("game {code}"), true)
                }
                Err(NotAdmitted::Interrupted) => {
                    println!("interrupted");
                    return ExitCode::from(130);
                }
                Err(NotAdmitted::Failed(why)) => return fail(&why),
            }
        }
    };
    let mut client = match GameClient::new(
        transport,
        server,
        start.elapsed(),
        args.seed,
        Behaviour::Honest,
        args.codec.coding(),
        token.as_ref(),
    ) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    let status = Status::new();
    if let Some(path) = early_path {
        status.println(&format!("path: {path}"));
    }
    let mut connected = false;
    let mut interrupted = false;
    let mut first_snapshot = false;
    let mut last_state = client.net.session().state();
    let mut digest_since: Option<Instant> = None;
    let mut next_status = Duration::from_secs(1);
    let mut t: u32 = 0;
    while start.elapsed() < limit {
        if interruptible && stop_requested() {
            interrupted = true;
            break;
        }
        if let Some(rv) = client.net.session_mut().transport_mut().rendezvous_mut()
            && let Err(e) = rv.update(start.elapsed())
        {
            status.done();
            return fail(&format!("the transport failed: {e}"));
        }
        if let Err(e) = client.step(start.elapsed(), true) {
            status.done();
            return fail(&e.to_string());
        }
        if let Some(rv) = client.net.session_mut().transport_mut().rendezvous_mut() {
            while let Some(ev) = rv.poll_event() {
                if let RendezvousEvent::PathChanged { path, .. } = ev {
                    status.println(&format!("path: {path}"));
                }
            }
            if !first_snapshot && client.net.tick().is_some() {
                first_snapshot = true;
                let path = client
                    .net
                    .session_mut()
                    .transport_mut()
                    .rendezvous_mut()
                    .and_then(|rv| rv.path(server));
                status.println(&format!(
                    "first snapshot after {} ms ({})",
                    start.elapsed().as_millis(),
                    crate::lobby::path_word(path)
                ));
            }
        }
        match client.net.session().state() {
            ClientState::Disconnected(_) => {}
            s => last_state = s,
        }
        if !connected && let Some(id) = client.net.id() {
            connected = true;
            status.println(&format!("connected as client {}", id.0));
        }
        if client.ended.is_some() {
            break;
        }
        if client.final_digest.is_some() {
            let since = *digest_since.get_or_insert_with(Instant::now);
            // The digest rides the reliable channel and may overtake the last snapshots:
            // allow them two seconds.
            if client.matches_final() == Some(true) || since.elapsed() > Duration::from_secs(2) {
                break;
            }
        }
        if start.elapsed() >= next_status {
            next_status += Duration::from_secs(1);
            status.show(if connected {
                status_line(&client, start.elapsed())
            } else {
                format!("{:>4} s  connecting to {place}", start.elapsed().as_secs())
            });
        }
        t += 1;
        let next = tick_len() * t;
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    status.done();
    if interrupted {
        if connected && client.ended.is_none() {
            // Tell the server at once, instead of leaving it to notice after its idle timeout.
            client.net.disconnect();
            let _ = client.net.flush(start.elapsed());
            println!("interrupted: told the server this client leaves");
        } else {
            println!("interrupted");
        }
        return ExitCode::from(130);
    }
    if !connected {
        let why = match client.ended {
            Some(reason) => explain_end(reason, &args, last_state),
            None => {
                let mut m = format!(
                    "gave up after {} (--timeout-secs) without connecting",
                    plural(args.timeout_secs, "second")
                );
                if !args.tcp && !via_lobby && matches!(last_state, ClientState::Requesting) {
                    m.push_str("; no reply over UDP: if the server runs with --tcp, add --tcp");
                }
                m
            }
        };
        return fail(&format!("could not join {place}: {why}"));
    }
    if let Some(reason) = client.ended {
        println!("disconnected: {}", explain_end(reason, &args, last_state));
    }
    println!(
        "applied state: {}, digest {:016x}, {}",
        count(client.net.replicator().len() as u64, "entity", "entities"),
        client.digest(),
        plural(client.decode_errors(), "decode error")
    );
    match client.matches_final() {
        Some(true) => {
            println!("converged: true");
            client.net.disconnect();
            let _ = client.net.flush(start.elapsed());
            ExitCode::SUCCESS
        }
        Some(false) => {
            println!("converged: false");
            client.net.disconnect();
            let _ = client.net.flush(start.elapsed());
            ExitCode::from(2)
        }
        None if client.ended.is_some() => {
            fail("the session ended before the server's final state digest")
        }
        None => {
            client.net.disconnect();
            let _ = client.net.flush(start.elapsed());
            fail(&format!(
                "no final state digest from the server within {} (--timeout-secs)",
                plural(args.timeout_secs, "second")
            ))
        }
    }
}

/// A socket to a server without a lobby: UDP, or a TCP connection to `addr`.
fn connect_plain(addr: SocketAddr, tcp: bool) -> Result<Net, String> {
    if tcp {
        return match TcpTransport::connect(addr, TcpConfig::default()) {
            Ok(t) => Ok(Net::Plain(Box::new(t))),
            Err(e) => {
                let hint = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    "; nothing accepts TCP connections there: if the server runs with --udp, \
                     leave out --tcp"
                } else {
                    ""
                };
                Err(format!("cannot connect to {addr} over TCP: {e}{hint}"))
            }
        };
    }
    let any = SocketAddr::new(
        if addr.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        },
        0,
    );
    match UdpTransport::bind(any, UdpConfig::default()) {
        Ok(t) => Ok(Net::Plain(Box::new(t))),
        Err(e) => Err(format!("cannot bind UDP: {e}")),
    }
}

pub(crate) fn lan(args: LanArgs) -> ExitCode {
    use clap::ValueEnum as _;
    let mut sock = match UdpTransport::bind(args.listen, UdpConfig::default()) {
        Ok(s) => s,
        Err(e) => return fail(&format!("cannot listen on {}: {e}", args.listen)),
    };
    // Each coding has its own registry fingerprint, hence its own game id.
    let kinds = match args.codec {
        Some(k) => vec![k],
        None => crate::sim::CodecKind::value_variants().to_vec(),
    };
    let mut games = Vec::with_capacity(kinds.len());
    for k in kinds {
        match crate::rules::protocol_id(k.coding()) {
            Ok(id) => games.push((k, id)),
            Err(e) => return fail(&e.to_string()),
        }
    }
    let mut list = HostList::new(games[0].1, None, Duration::from_secs(3), 256);
    for &(_, id) in &games[1..] {
        list = list.with_game_id(id);
    }
    let start = Instant::now();
    let limit = Duration::from_secs(args.secs);
    while start.elapsed() < limit {
        if let Err(e) = list.poll(start.elapsed(), &mut sock, 256) {
            return fail(&e.to_string());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let hosts: Vec<_> = list
        .hosts(start.elapsed())
        .into_iter()
        .filter_map(|h| {
            let (kind, _) = games
                .iter()
                .find(|(k, id)| *id == h.beacon.game_id && k.coding() == h.beacon.codec)?;
            // A transport `join` cannot use is not listed.
            let tcp = match h.beacon.transport {
                GameTransport::Udp => "",
                GameTransport::Tcp => " --tcp",
                _ => return None,
            };
            Some((*kind, tcp, h))
        })
        .collect();
    if hosts.is_empty() {
        println!("no games heard on {}", args.listen);
    }
    for (kind, tcp, h) in hosts {
        println!(
            "{}  {:?}  {}/{} players  (join with: statewire join {}{tcp} --codec {})",
            h.game_addr,
            h.beacon.name,
            h.beacon.players,
            h.beacon.max_players,
            h.game_addr,
            kind.name()
        );
    }
    ExitCode::SUCCESS
}
