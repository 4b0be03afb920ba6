//! `statewire sim`: a server and bot clients in one process over loopback + netsim, on a
//! virtual clock.

use std::net::SocketAddr;
use std::time::Duration;

use hashbrown::HashMap;
use serde::Serialize;
use statewire_core::{
    Applied, ClientConfig, ClientId, ClientReplicator, ServerConfig, ServerReplicator, Snapshot,
    SnapshotBuilder, Tick, WorldSource,
};
use statewire_transport::Transport;
use statewire_transport::loopback::{LoopbackConfig, LoopbackEndpoint, LoopbackNet};
use statewire_transport::netsim::{LinkConfig, NetSim, NetSimStats};

use crate::game::{self, Bot, ClientWorld, Game, Input, TICK_HZ};
use crate::wire::{self, ClientMsg};

/// What to simulate.
#[derive(Debug, Clone)]
pub(crate) struct SimConfig {
    pub(crate) clients: usize,
    pub(crate) entities: usize,
    pub(crate) ticks: u32,
    pub(crate) quiet_ticks: u32,
    pub(crate) profile: String,
    pub(crate) seed: u64,
    pub(crate) max_packet_bytes: usize,
}

/// Errors that stop a run (bad flags or a broken local transport; network loss is not one).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SimError {
    #[error("unknown profile {0:?}; known: {known}", known = LinkConfig::PROFILE_NAMES.join(", "))]
    UnknownProfile(String),
    #[error("schema: {0}")]
    Schema(#[from] statewire_core::SchemaError),
    #[error("snapshot: {0}")]
    Build(#[from] statewire_core::BuildError),
    #[error("replication: {0}")]
    Replication(#[from] statewire_core::ReplicationError),
    #[error("transport: {0}")]
    Transport(#[from] statewire_transport::TransportError),
    #[error("--clients must be at least 1 and --entities at least --clients")]
    BadCounts,
}

/// What a run measured. Serialized as the `--json` line.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SimReport {
    pub(crate) clients: usize,
    pub(crate) entities: usize,
    pub(crate) ticks: u32,
    pub(crate) tick_hz: u32,
    pub(crate) profile: String,
    pub(crate) seed: u64,
    pub(crate) transport: &'static str,
    pub(crate) codec: &'static str,
    /// Server→client bytes per client per second during the active ticks (datagram payloads,
    /// counted at the sender, lost ones included).
    pub(crate) bytes_per_client_per_sec: f64,
    /// Client→server bytes per client per second during the active ticks.
    pub(crate) upstream_bytes_per_client_per_sec: f64,
    /// Server→client bytes per entity record (spawn, update or despawn) sent.
    pub(crate) bytes_per_entity_update: f64,
    pub(crate) max_packet_bytes: usize,
    pub(crate) packets_sent: u64,
    pub(crate) packets_lost: u64,
    pub(crate) packets_duplicated: u64,
    /// Most ticks any client's newest applied snapshot trailed the server during active play.
    pub(crate) max_lag_ticks: u32,
    /// Changes that had to wait for a later packet because a packet was full (summed).
    pub(crate) deferred_records: u64,
    pub(crate) decode_errors: u64,
    pub(crate) wire_errors: u64,
    /// Ticks into the quiet period until the slowest client matched the server exactly.
    pub(crate) max_convergence_ticks: Option<u32>,
    /// Every client's quantized state equals the server's at the end of the quiet period.
    pub(crate) converged: bool,
    pub(crate) quiet_ticks: u32,
}

struct SimClient {
    id: ClientId,
    addr: SocketAddr,
    net: NetSim<LoopbackEndpoint>,
    repl: ClientReplicator,
    world: ClientWorld,
    bot: Bot,
    converged_at: Option<u32>,
    decode_errors: u64,
}

/// Runs the simulation; `progress` is called once per tick with (done, total).
pub(crate) fn run(
    cfg: &SimConfig,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<SimReport, SimError> {
    if cfg.clients == 0 || cfg.entities < cfg.clients {
        return Err(SimError::BadCounts);
    }
    let link = LinkConfig::profile(&cfg.profile)
        .ok_or_else(|| SimError::UnknownProfile(cfg.profile.clone()))?;
    let registry = game::registry()?;
    let net = LoopbackNet::new(LoopbackConfig::default());
    let mut server_net = NetSim::new(net.endpoint(), link.clone(), cfg.seed);
    let server_addr = server_net.local_addr();
    let mut server = ServerReplicator::new(ServerConfig {
        max_packet_bytes: cfg.max_packet_bytes,
        max_clients: cfg.clients,
        ..ServerConfig::default()
    });
    let ids: Vec<ClientId> = (1..=cfg.clients as u64).map(ClientId).collect();
    let mut clients = Vec::with_capacity(cfg.clients);
    let mut by_addr = HashMap::new();
    for (i, &id) in ids.iter().enumerate() {
        let endpoint = net.endpoint();
        let addr = endpoint.local_addr();
        by_addr.insert(addr, id);
        server.add_client(id)?;
        let seed = cfg
            .seed
            .wrapping_add(1 + i as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        clients.push(SimClient {
            id,
            addr,
            net: NetSim::new(endpoint, link.clone(), seed),
            repl: ClientReplicator::new(ClientConfig::default()),
            world: ClientWorld::default(),
            bot: Bot::new(seed ^ 0xb07),
            converged_at: None,
            decode_errors: 0,
        });
    }
    let mut game = Game::new(&ids, cfg.entities, cfg.seed);
    let mut inputs: HashMap<ClientId, Input> = HashMap::new();

    let mut snapshot = Snapshot::new();
    let mut builder = SnapshotBuilder::new(&registry);
    let mut buf = vec![0u8; 65_536];
    let mut pkt = Vec::with_capacity(cfg.max_packet_bytes + 1);
    let (mut down_bytes, mut up_bytes, mut records, mut deferred) = (0u64, 0u64, 0u64, 0u64);
    let (mut max_packet, mut max_lag, mut wire_errors) = (0usize, 0u32, 0u64);
    let total = u64::from(cfg.ticks) + u64::from(cfg.quiet_ticks);

    for t in 0..cfg.ticks + cfg.quiet_ticks {
        let active = t < cfg.ticks;
        let now = Duration::from_micros(u64::from(t) * 1_000_000 / u64::from(TICK_HZ));
        let tick = Tick(t + 1);
        server_net.advance_to(now)?;
        for c in &mut clients {
            c.net.advance_to(now)?;
        }

        // Server: take acks and inputs, step, replicate.
        while let Some(got) = server_net.recv(&mut buf)? {
            let Some(&from) = by_addr.get(&got.from) else {
                wire_errors += 1;
                continue;
            };
            match wire::parse_client(&buf[..got.len]) {
                Ok(ClientMsg { ack, input }) => {
                    if let Some(a) = ack {
                        server.handle_ack(from, a)?;
                    }
                    inputs.insert(from, input);
                }
                Err(_) => wire_errors += 1,
            }
        }
        if active {
            game.step(&|c| inputs.get(&c).copied().unwrap_or_default());
        }
        game.build(&mut builder);
        builder.finish_into(&mut snapshot)?;
        for c in &clients {
            wire::begin_snapshot(&mut pkt);
            let stats = server.encode_for(&registry, c.id, tick, &snapshot, &mut pkt)?;
            server_net.send(c.addr, &pkt)?;
            if active {
                down_bytes += pkt.len() as u64;
                records += stats.records as u64;
                deferred += stats.pending as u64;
            }
            max_packet = max_packet.max(pkt.len());
        }

        // Clients: apply snapshots, ack, steer.
        for c in &mut clients {
            while let Some(got) = c.net.recv(&mut buf)? {
                let Ok(body) = wire::parse_snapshot(&buf[..got.len]) else {
                    wire_errors += 1;
                    continue;
                };
                match c.repl.handle_packet(&registry, body, &mut c.world) {
                    Ok(Applied::Applied(_) | Applied::Stale(_)) => {}
                    Ok(_) => {}
                    Err(_) => c.decode_errors += 1,
                }
            }
            let input = if active {
                c.bot.think()
            } else {
                Input::default()
            };
            let msg = wire::encode_client(ClientMsg {
                ack: c.repl.ack(),
                input,
            });
            c.net.send(server_addr, &msg)?;
            if active {
                up_bytes += msg.len() as u64;
                let lag = c.repl.ack().map_or(t + 1, |a| tick.diff(a).max(0) as u32);
                max_lag = max_lag.max(lag);
            } else if c.converged_at.is_none() && c.repl.state() == &snapshot {
                c.converged_at = Some(t - cfg.ticks + 1);
            }
        }
        progress(u64::from(t) + 1, total);
    }

    let converged = clients.iter().all(|c| c.repl.state() == &snapshot)
        && clients
            .iter()
            .all(|c| c.world.entities.len() == snapshot.len());
    let max_convergence_ticks = if converged {
        clients.iter().filter_map(|c| c.converged_at).max()
    } else {
        None
    };
    let mut net_stats = server_net.stats();
    for c in &clients {
        let s = c.net.stats();
        add_stats(&mut net_stats, &s);
    }
    let secs = f64::from(cfg.ticks.max(1)) / f64::from(TICK_HZ);
    let n = cfg.clients as f64;
    Ok(SimReport {
        clients: cfg.clients,
        entities: game.len(),
        ticks: cfg.ticks,
        tick_hz: TICK_HZ,
        profile: cfg.profile.clone(),
        seed: cfg.seed,
        transport: "loopback",
        codec: "packed",
        bytes_per_client_per_sec: down_bytes as f64 / n / secs,
        upstream_bytes_per_client_per_sec: up_bytes as f64 / n / secs,
        bytes_per_entity_update: if records == 0 {
            0.0
        } else {
            down_bytes as f64 / records as f64
        },
        max_packet_bytes: max_packet,
        packets_sent: net_stats.sent,
        packets_lost: net_stats.dropped_loss
            + net_stats.dropped_burst
            + net_stats.dropped_mtu
            + net_stats.dropped_bandwidth,
        packets_duplicated: net_stats.duplicated,
        max_lag_ticks: max_lag,
        deferred_records: deferred,
        decode_errors: clients.iter().map(|c| c.decode_errors).sum(),
        wire_errors,
        max_convergence_ticks,
        converged,
        quiet_ticks: cfg.quiet_ticks,
    })
}

fn add_stats(total: &mut NetSimStats, s: &NetSimStats) {
    total.sent += s.sent;
    total.dropped_loss += s.dropped_loss;
    total.dropped_burst += s.dropped_burst;
    total.dropped_mtu += s.dropped_mtu;
    total.dropped_bandwidth += s.dropped_bandwidth;
    total.duplicated += s.duplicated;
}

impl SimReport {
    /// The human-readable report.
    pub(crate) fn render(&self) -> String {
        let conv = match (self.converged, self.max_convergence_ticks) {
            (true, Some(t)) => format!(
                "yes: every client matched the server's quantized state {t} ticks ({:.2} s) after the last change",
                f64::from(t) / f64::from(self.tick_hz)
            ),
            _ => format!(
                "NO: some client still differs after {} quiet ticks",
                self.quiet_ticks
            ),
        };
        format!(
            "statewire sim: {clients} clients, {entities} entities, {ticks} ticks at {hz} Hz, \
             profile {profile}, seed {seed}, transport {transport}, codec {codec}\n\
             \x20 downstream       {down:>10.0} B/s per client ({kbps:.1} kbit/s)\n\
             \x20 upstream         {up:>10.0} B/s per client\n\
             \x20 per entity update {bpe:>9.2} B\n\
             \x20 largest packet   {maxp:>10} B\n\
             \x20 packets          {sent} sent, {lost} lost, {dup} duplicated\n\
             \x20 deferred records {deferred:>10} (packet full, sent later)\n\
             \x20 max lag          {lag:>10} ticks behind the server (newest applied snapshot)\n\
             \x20 errors           {derr} decode, {werr} framing\n\
             \x20 converged        {conv}",
            clients = self.clients,
            entities = self.entities,
            ticks = self.ticks,
            hz = self.tick_hz,
            profile = self.profile,
            seed = self.seed,
            transport = self.transport,
            codec = self.codec,
            down = self.bytes_per_client_per_sec,
            kbps = self.bytes_per_client_per_sec * 8.0 / 1000.0,
            up = self.upstream_bytes_per_client_per_sec,
            bpe = self.bytes_per_entity_update,
            maxp = self.max_packet_bytes,
            sent = self.packets_sent,
            lost = self.packets_lost,
            dup = self.packets_duplicated,
            deferred = self.deferred_records,
            lag = self.max_lag_ticks,
            derr = self.decode_errors,
            werr = self.wire_errors,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(profile: &str, seed: u64) -> SimConfig {
        SimConfig {
            clients: 3,
            entities: 200,
            ticks: 150,
            quiet_ticks: 150,
            profile: profile.to_string(),
            seed,
            max_packet_bytes: 1200,
        }
    }

    #[test]
    fn converges_on_every_profile() {
        for profile in LinkConfig::PROFILE_NAMES {
            let seed = 7;
            let r = run(&cfg(profile, seed), &mut |_, _| {}).unwrap();
            assert!(r.converged, "profile {profile} seed {seed}: {}", r.render());
            assert_eq!(r.decode_errors, 0, "profile {profile} seed {seed}");
            assert!(r.bytes_per_client_per_sec > 0.0);
        }
    }

    #[test]
    fn same_seed_same_report_different_seed_differs() {
        let a = run(&cfg("hostile", 3), &mut |_, _| {}).unwrap();
        let b = run(&cfg("hostile", 3), &mut |_, _| {}).unwrap();
        let c = run(&cfg("hostile", 4), &mut |_, _| {}).unwrap();
        let json = |r: &SimReport| serde_json::to_string(r).unwrap();
        assert_eq!(json(&a), json(&b), "seed 3 not reproducible");
        assert_ne!(json(&a), json(&c), "seeds 3 and 4 gave identical runs");
    }

    #[test]
    fn too_short_quiet_period_reports_not_converged() {
        // One quiet tick cannot cover a 200 ms one-way latency: the report must say so.
        let mut c = cfg("poor", 1);
        c.quiet_ticks = 1;
        let r = run(&c, &mut |_, _| {}).unwrap();
        assert!(!r.converged, "{}", r.render());
        assert_eq!(r.max_convergence_ticks, None);
    }

    #[test]
    fn bad_flags_are_errors() {
        assert!(matches!(
            run(&cfg("nope", 1), &mut |_, _| {}),
            Err(SimError::UnknownProfile(_))
        ));
        let mut c = cfg("perfect", 1);
        c.entities = 1;
        assert!(matches!(run(&c, &mut |_, _| {}), Err(SimError::BadCounts)));
    }
}
