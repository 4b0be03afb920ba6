//! `statewire`: run the replication game and report what it measured.
//!
//! - `statewire sim` plays a small game (players steered by bots, wandering enemies) with a
//!   server and N bot clients in one process, over statewire sessions on loopback, UDP or TCP,
//!   every endpoint wrapped in the seeded network simulator, and reports bandwidth, lag and
//!   whether every client converged to the server's exact quantized state.
//! - `statewire serve` / `statewire join` run the same game across processes on real sockets.
//! - `statewire keygen` / `statewire token` make a token backend's key and connect tokens.
//! - `statewire lobby` / `statewire relay` run a lobby node and a relay; `serve --lobby`
//!   registers a game and prints its join code, `join --code` / `--link` joins by it, and
//!   `statewire games` lists a lobby's public games.

mod attack;
mod bots;
mod cubes;
mod game;
mod keys;
mod lobby;
mod realtime;
mod report;
mod rules;
mod sim;

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::sim::TransportKind;

#[derive(Debug, Parser)]
#[command(name = "statewire", version, about = "statewire replication tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate a server and bot clients over a simulated network and report.
    Sim(SimArgs),
    /// Run the game server on a real socket.
    Serve(realtime::ServeArgs),
    /// Join a running `statewire serve` as a bot client.
    Join(Box<realtime::JoinArgs>),
    /// List games announced on the LAN (`statewire serve --announce`).
    Lan(realtime::LanArgs),
    /// Run a lobby node: games registered with `serve --lobby`, joined by code.
    Lobby(lobby::LobbyArgs),
    /// Run a relay for players whose NATs cannot be punched through (granted by a lobby).
    Relay(lobby::RelayArgs),
    /// List the public games of a lobby.
    Games(lobby::GamesArgs),
    /// The 901-cube snapshot-compression benchmark: generate data, run the codecs.
    Cubes(cubes::CubesArgs),
    /// Write a new random key file for a token backend and its servers.
    Keygen(keys::KeygenArgs),
    /// Print a connect token (base64) for a client, sealed with a backend key file.
    Token(keys::TokenArgs),
}

#[derive(Debug, clap::Args)]
struct SimArgs {
    /// Number of bot clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Replicated entities (one player per client, the rest enemies).
    #[arg(long, default_value_t = 1000)]
    entities: usize,
    /// Active ticks at 30 Hz (600 = 20 s; at least 1).
    #[arg(long, default_value_t = 600)]
    ticks: u32,
    /// Quiet ticks after the active ones (nothing changes), to measure convergence.
    #[arg(long, default_value_t = 150)]
    quiet_ticks: u32,
    /// Network profile of every link (one-way latency ± jitter, loss): perfect, average
    /// (100 ± 25 ms, 2 %), poor (200 ± 50 ms, 4 %), very-poor (300 ± 75 ms, 6 %), hostile
    /// (250 ± 100 ms, 25 %, 25 % duplicated, 10 % reordered).
    #[arg(long, value_enum, default_value_t = sim::ProfileKind::Poor)]
    profile: sim::ProfileKind,
    /// Seed for the game, the bots and the network simulator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Byte budget of one snapshot (at least 64; it must fit the session's unreliable channel).
    #[arg(long, default_value_t = 1100)]
    max_packet: usize,
    /// Per-client replication packet budget in bytes (default: --max-packet).
    #[arg(long)]
    budget: Option<usize>,
    /// Interest radius around each client's player, in metres; 0 replicates every entity to
    /// every client.
    #[arg(long, default_value_t = 0.0)]
    interest_radius: f32,
    /// Enemies that walk every tick (the others stand still). Default: each enemy starts and
    /// stops walking at random, about a fifth at once.
    #[arg(long)]
    moving: Option<usize>,
    /// Transport under the sessions (UDP and TCP use 127.0.0.1).
    #[arg(long, value_enum, default_value_t = TransportKind::Loopback)]
    transport: TransportKind,
    /// Coding of positions and facings in snapshots.
    #[arg(long, value_enum, default_value_t = sim::CodecKind::Packed)]
    codec: sim::CodecKind,
    /// Add one hostile game client (writes what it does not own, NaN, 10x the write rate,
    /// inputs 10 s off, impossible kill claims, malformed messages) and session-level
    /// attackers (junk flood, forged and replayed packets, a client that never acknowledges).
    #[arg(long)]
    adversary: bool,
    /// Who plays: war (bots walk, aim and shoot) or solo (nobody shoots or touches anyone:
    /// each client's prediction of its own player must match the server bit for bit).
    #[arg(long, value_enum, default_value_t = sim::Scenario::War)]
    scenario: sim::Scenario,
    /// Also write the run as one self-contained HTML page (SVG charts over time and maps of
    /// the world) to FILE.
    #[arg(long, value_name = "FILE")]
    report: Option<std::path::PathBuf>,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

/// Set by Ctrl-C (SIGINT) or SIGTERM; `serve` and `join` check it every tick and leave
/// cleanly (the server tells its clients it shuts down, a client tells the server it leaves).
pub(crate) static STOP: AtomicBool = AtomicBool::new(false);

/// Whether Ctrl-C (or SIGTERM) was pressed since [`catch_ctrl_c`].
pub(crate) fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Makes Ctrl-C and SIGTERM set [`STOP`] instead of killing the process. Returns whether the
/// handler is installed (if not, Ctrl-C ends the process at once, as before).
pub(crate) fn catch_ctrl_c() -> bool {
    ctrlc::set_handler(|| STOP.store(true, Ordering::Relaxed)).is_ok()
}

/// `n` and `word`, with an `s` unless `n` is 1: `plural(1, "tick")` is "1 tick".
pub(crate) fn plural(n: impl Into<u64>, word: &str) -> String {
    count(n, word, &format!("{word}s"))
}

/// `n` and `one` if `n` is 1, else `n` and `many`: `count(2, "entity", "entities")`.
pub(crate) fn count(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `word` with an `s` unless `n` is 1 (for numbers printed in a column of their own).
pub(crate) fn noun(n: impl Into<u64>, word: &str) -> String {
    if n.into() == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}

/// An I/O error in words ("No such file or directory"), without the OS error number.
pub(crate) fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Prints a failure of the run itself (a socket, the network, a file) and returns exit code 1.
pub(crate) fn fail(msg: &str) -> ExitCode {
    eprintln!("statewire: {msg}");
    ExitCode::FAILURE
}

/// Prints a usage error (a bad flag or argument) and returns exit code 2.
pub(crate) fn usage(msg: &str) -> ExitCode {
    eprintln!("statewire: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(args) => run_sim(args),
        Command::Serve(args) => realtime::serve(args),
        Command::Join(args) => realtime::join(*args),
        Command::Lan(args) => realtime::lan(args),
        Command::Lobby(args) => lobby::lobby(args),
        Command::Relay(args) => lobby::relay(args),
        Command::Games(args) => lobby::games(args),
        Command::Cubes(args) => cubes::main(args),
        Command::Keygen(args) => keys::keygen(args),
        Command::Token(args) => keys::token(args),
    }
}

/// The run's bar: active and quiet ticks together, as the header names them, with an ETA.
fn progress_bar(active: u32, quiet: u32) -> ProgressBar {
    let bar = ProgressBar::new(u64::from(active) + u64::from(quiet));
    let template = format!(
        "{{bar:40}} {{pos}}/{{len}} ticks ({active} active + {quiet} quiet) {{elapsed}}, ETA {{eta}}"
    );
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}

fn run_sim(args: SimArgs) -> ExitCode {
    let cfg = sim::SimConfig {
        clients: args.clients,
        entities: args.entities,
        ticks: args.ticks,
        quiet_ticks: args.quiet_ticks,
        profile: args.profile.name().to_string(),
        seed: args.seed,
        max_packet_bytes: args.max_packet,
        transport: args.transport,
        adversary: args.adversary,
        coding: args.codec,
        moving: args.moving,
        interest_radius: args.interest_radius,
        budget: args.budget,
        scenario: args.scenario,
        timeline: args.report.is_some(),
    };
    if let Err(e) = sim::validate(&cfg) {
        return usage(&e.to_string());
    }
    // Refuse an unwritable report path before the run, not after it.
    let mut report_file = match &args.report {
        Some(path) => match std::fs::File::create(path) {
            Ok(f) => Some((path, f)),
            Err(e) => {
                return usage(&format!(
                    "--report {}: cannot write it: {}",
                    path.display(),
                    crate::io_reason(&e)
                ));
            }
        },
        None => None,
    };
    let bar = progress_bar(cfg.ticks, cfg.quiet_ticks);
    let result = sim::run(&cfg, &mut |done, _| bar.set_position(done));
    bar.finish_and_clear();
    if let (Ok(r), Some((path, file))) = (&result, &mut report_file) {
        let page = r
            .timeline
            .as_ref()
            .map(report::render_html)
            .unwrap_or_default();
        if let Err(e) = file.write_all(page.as_bytes()) {
            eprintln!(
                "statewire: cannot write the report to {}: {}",
                path.display(),
                crate::io_reason(&e)
            );
            return ExitCode::FAILURE;
        }
        eprintln!("statewire: report written to {}", path.display());
    }
    match result {
        Ok(report) => print_report(
            &report.render(),
            &report,
            args.json,
            report.converged,
            &format!("clients did not converge (seed {})", cfg.seed),
        ),
        Err(e) if e.is_usage() => usage(&e.to_string()),
        Err(e) => {
            eprintln!("statewire: {e} (seed {})", cfg.seed);
            ExitCode::FAILURE
        }
    }
}

/// Prints a run's readable report and, with `json`, the report as the last line. The exit code
/// is 0 when `ok`, 2 (after `failure` on stderr) when not, 1 if the JSON cannot be written.
fn print_report(
    text: &str,
    report: &impl serde::Serialize,
    json: bool,
    ok: bool,
    failure: &str,
) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    if json {
        match serde_json::to_string(report) {
            Ok(line) => {
                let _ = writeln!(out, "{line}");
            }
            Err(e) => {
                eprintln!("statewire: cannot serialize report: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("statewire: {failure}");
        ExitCode::from(2)
    }
}

/// Parses `ADDR` for `serve`/`join`/`token`/`lan`: `IP:PORT` or `HOST:PORT` (e.g.
/// `localhost:7777`), resolved with the system's resolver; of several addresses the first IPv4
/// one is taken (a server bound to 127.0.0.1 does not answer on ::1).
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("{s:?} is not an address like 127.0.0.1:7777 or localhost:7777: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}
