//! `statewire serve` and `statewire join`: the sim game across processes, on real sockets and
//! the wall clock.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use statewire_transport::Transport;
use statewire_transport::tcp::{TcpConfig, TcpTransport};
use statewire_transport::udp::{UdpConfig, UdpTransport};

use statewire::discovery::{Announcer, Beacon, GameTransport, HostList, MAX_NAME_LEN};

use crate::bots::{Behaviour, BotClient as GameClient};
use crate::game::TICK_HZ;
use crate::parse_addr;
use crate::rules::ServerGame as GameServer;

/// Flags of `statewire serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Serve over UDP on this address (e.g. 127.0.0.1:7777).
    #[arg(long, value_parser = parse_addr, conflicts_with = "tcp", required_unless_present = "tcp")]
    udp: Option<SocketAddr>,
    /// Serve over TCP on this address.
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
    /// Most clients.
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
    /// Name announced in the beacon.
    #[arg(long, default_value = "statewire sim")]
    name: String,
    /// Require connect tokens sealed with this key file (from `statewire keygen`); without it
    /// the server runs in development mode (anyone on the network may join).
    #[arg(long)]
    key_file: Option<std::path::PathBuf>,
    /// With --key-file: the address clients use to reach this server, as named in their
    /// tokens (default: the bound address). May be given up to 4 times.
    #[arg(long = "public-addr", value_parser = parse_addr)]
    public_addrs: Vec<SocketAddr>,
}

/// Flags of `statewire lan`.
#[derive(Debug, clap::Args)]
pub(crate) struct LanArgs {
    /// Listen for beacons on this address (e.g. 0.0.0.0:47800).
    #[arg(long, value_parser = parse_addr, default_value = "0.0.0.0:47800")]
    listen: SocketAddr,
    /// How long to listen, in seconds.
    #[arg(long, default_value_t = 3)]
    secs: u64,
    /// List only games of this coding (default: every coding). A game is listed only if its
    /// game id is the protocol fingerprint (`Protocol::fingerprint`) of the coding its beacon announces.
    #[arg(long, value_enum)]
    codec: Option<crate::sim::CodecKind>,
}

/// Flags of `statewire join`.
#[derive(Debug, clap::Args)]
pub(crate) struct JoinArgs {
    /// The server's address.
    #[arg(value_parser = parse_addr)]
    addr: SocketAddr,
    /// Connect over TCP instead of UDP.
    #[arg(long)]
    tcp: bool,
    /// Seed of this bot.
    #[arg(long, default_value_t = 2)]
    seed: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Coding of positions and facings (as the server).
    #[arg(long, value_enum, default_value_t = crate::sim::CodecKind::Packed)]
    codec: crate::sim::CodecKind,
    /// A connect token from `statewire token` (base64), for a server run with --key-file.
    #[arg(long, value_parser = crate::keys::parse_token)]
    token: Option<statewire::ConnectToken>,
}

fn tick_len() -> Duration {
    Duration::from_micros(1_000_000 / u64::from(TICK_HZ))
}

pub(crate) fn serve(args: ServeArgs) -> ExitCode {
    let transport: Box<dyn Transport> = match (args.udp, args.tcp) {
        (Some(a), _) => match UdpTransport::bind(a, UdpConfig::default()) {
            Ok(t) => Box::new(t),
            Err(e) => return fail(&format!("cannot bind UDP {a}: {e}")),
        },
        (None, Some(a)) => match TcpTransport::listen(a, TcpConfig::default()) {
            Ok(t) => Box::new(t),
            Err(e) => return fail(&format!("cannot listen on TCP {a}: {e}")),
        },
        (None, None) => return fail("give --udp ADDR or --tcp ADDR"),
    };
    let tokens = match &args.key_file {
        None => None,
        Some(path) => {
            let key = match crate::keys::read_key(path) {
                Ok(k) => k,
                Err(e) => return fail(&e),
            };
            let bound = transport.local_addr();
            let public_addrs = if args.public_addrs.is_empty() {
                vec![bound]
            } else {
                args.public_addrs.clone()
            };
            let unix_time_at_zero = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
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
    let protocol_id = match crate::rules::protocol_id(args.codec.coding()) {
        Ok(id) => id,
        Err(e) => return fail(&e.to_string()),
    };
    let start = Instant::now();
    let total = args.ticks + args.quiet_ticks;
    let linger = 2 * TICK_HZ;
    let mut known = 0usize;
    let mut last_security = security_line(&server.net.session().stats());
    for t in 0..total + linger {
        let now = start.elapsed();
        if let Err(e) = server.step(now, t < args.ticks) {
            return fail(&e.to_string());
        }
        if server.connected().len() != known {
            known = server.connected().len();
            println!("tick {t}: {known} clients connected");
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
                players: known.min(usize::from(u16::MAX)) as u16,
                max_players: args.max_clients.min(usize::from(u16::MAX)) as u16,
                // At most MAX_NAME_LEN bytes, cut at a character boundary (32 characters of
                // up to 4 bytes each could exceed it, and the beacon would not encode).
                name: args
                    .name
                    .char_indices()
                    .take_while(|(i, c)| i + c.len_utf8() <= MAX_NAME_LEN)
                    .map(|(_, c)| c)
                    .collect(),
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
            match server.net.session_mut().receive(start.elapsed()) {
                Ok(0) => std::thread::sleep(wait.min(Duration::from_millis(1))),
                Ok(_) => {}
                Err(e) => return fail(&format!("the server's transport failed: {e}")),
            }
        }
    }
    server.net.shutdown();
    let _ = server.net.flush(start.elapsed());
    let c = server.counters;
    println!(
        "served {} ticks: {} snapshot bytes, {} entity records, {} deferred, {} bad client messages",
        total, c.snapshot_bytes, c.records, c.deferred, c.bad_client_messages
    );
    println!("{}", security_line(&server.net.session().stats()));
    ExitCode::SUCCESS
}

/// What the server refused and why, in words (printed at the end of `serve` and whenever it
/// changes, at most every 10 s).
fn security_line(s: &statewire::ServerStats) -> String {
    format!(
        "security: {} handshakes accepted; refused {} forged tokens, {} expired, {} for \
         another server, {} in use elsewhere, {} without a token, {} bad cookies, {} other \
         versions; dropped {} rate-limited handshakes, {} forged and {} replayed packets, {} \
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

pub(crate) fn join(args: JoinArgs) -> ExitCode {
    let any = SocketAddr::new(
        if args.addr.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        },
        0,
    );
    let transport: Box<dyn Transport> = if args.tcp {
        match TcpTransport::connect(args.addr, TcpConfig::default()) {
            Ok(t) => Box::new(t),
            Err(e) => return fail(&format!("cannot connect to {}: {e}", args.addr)),
        }
    } else {
        match UdpTransport::bind(any, UdpConfig::default()) {
            Ok(t) => Box::new(t),
            Err(e) => return fail(&format!("cannot bind UDP: {e}")),
        }
    };
    let mut client = match GameClient::new(
        transport,
        args.addr,
        Duration::ZERO,
        args.seed,
        Behaviour::Honest,
        args.codec.coding(),
        args.token.as_ref(),
    ) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    let start = Instant::now();
    let limit = Duration::from_secs(args.timeout_secs);
    let mut announced = false;
    let mut digest_since: Option<Instant> = None;
    let mut t: u32 = 0;
    while start.elapsed() < limit {
        if let Err(e) = client.step(start.elapsed(), true) {
            return fail(&e.to_string());
        }
        if !announced && client.is_connected() {
            announced = true;
            println!("connected as {:?}", client.net.id());
        }
        if let Some(reason) = client.ended {
            println!("disconnected: {reason}");
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
        t += 1;
        let next = tick_len() * t;
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    println!(
        "applied state: {} entities, digest {:016x}, {} decode errors",
        client.net.replicator().len(),
        client.digest(),
        client.decode_errors()
    );
    match client.matches_final() {
        Some(true) => {
            println!("converged: true");
            client.net.disconnect();
            ExitCode::SUCCESS
        }
        Some(false) => {
            println!("converged: false");
            ExitCode::from(2)
        }
        None => fail("no final state digest from the server"),
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

fn fail(msg: &str) -> ExitCode {
    eprintln!("statewire: {msg}");
    ExitCode::FAILURE
}
