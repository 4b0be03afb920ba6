//! `statewire`: run the replication game and report what it measured.
//!
//! - `statewire sim` plays a small game (players steered by bots, wandering enemies) with a
//!   server and N bot clients in one process, over statewire sessions on loopback, UDP or TCP,
//!   every endpoint wrapped in the seeded network simulator, and reports bandwidth, lag and
//!   whether every client converged to the server's exact quantized state.
//! - `statewire serve` / `statewire join` run the same game across processes on real sockets.
//! - `statewire keygen` / `statewire token` make a token backend's key and connect tokens.

mod attack;
mod bots;
mod cubes;
mod game;
mod keys;
mod realtime;
mod rules;
mod sim;

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

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
    Join(realtime::JoinArgs),
    /// List games announced on the LAN (`statewire serve --announce`).
    Lan(realtime::LanArgs),
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
    /// Active ticks at 30 Hz (600 = 20 s).
    #[arg(long, default_value_t = 600)]
    ticks: u32,
    /// Ticks with no changes after the active ticks, to measure convergence.
    #[arg(long, default_value_t = 150)]
    quiet_ticks: u32,
    /// Network profile: perfect, average, poor, very-poor, hostile.
    #[arg(long, default_value = "poor")]
    profile: String,
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
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(args) => run_sim(args),
        Command::Serve(args) => realtime::serve(args),
        Command::Join(args) => realtime::join(args),
        Command::Lan(args) => realtime::lan(args),
        Command::Cubes(args) => cubes::main(args),
        Command::Keygen(args) => keys::keygen(args),
        Command::Token(args) => keys::token(args),
    }
}

fn progress_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} ticks {elapsed}") {
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
        profile: args.profile,
        seed: args.seed,
        max_packet_bytes: args.max_packet,
        transport: args.transport,
        adversary: args.adversary,
        coding: args.codec,
        moving: args.moving,
        interest_radius: args.interest_radius,
        budget: args.budget,
    };
    let bar = progress_bar(u64::from(cfg.ticks) + u64::from(cfg.quiet_ticks));
    let result = sim::run(&cfg, &mut |done, _| bar.set_position(done));
    bar.finish_and_clear();
    match result {
        Ok(report) => print_report(
            &report.render(),
            &report,
            args.json,
            report.converged,
            &format!("clients did not converge (seed {})", cfg.seed),
        ),
        Err(e) if e.is_usage() => {
            eprintln!("statewire: {e}");
            ExitCode::from(2)
        }
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

/// Parses `ADDR` for `serve`/`join`.
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|e| format!("{s:?} is not an address like 127.0.0.1:7777: {e}"))
}
