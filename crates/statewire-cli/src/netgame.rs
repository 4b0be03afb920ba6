//! The sim game over statewire sessions: a game server (session server + replication) and a
//! bot client (session client + replication), usable in one process (`sim`) or apart
//! (`serve` / `join`).
//!
//! Snapshots travel on the unreliable channel; each client message on that channel carries
//! the client's newest applied snapshot tick (the ack) with its steering input. The reliable
//! channel carries the server's final state digest at the end of a run.

use std::time::Duration;

use hashbrown::HashMap;
use statewire::{
    ChannelId, Client, ClientEvent, ClientState, DisconnectReason, Server, ServerEvent,
};
use statewire_core::{
    ClientConfig, ClientId, ClientReplicator, Registry, ServerConfig, ServerReplicator, Snapshot,
    SnapshotBuilder, Tick, WorldSource,
};
use statewire_transport::{Transport, TransportError};

use crate::game::{self, Bot, ClientWorld, Game, Input};
use crate::wire::{self, ClientMsg};

/// Reliable-ordered channel (control messages).
pub(crate) const CONTROL: ChannelId = ChannelId(0);
/// Unreliable channel (snapshots, acks with inputs).
pub(crate) const SNAPSHOTS: ChannelId = ChannelId(1);

/// Errors that stop a run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NetGameError {
    #[error("schema: {0}")]
    Schema(#[from] statewire_core::SchemaError),
    #[error("snapshot: {0}")]
    Build(#[from] statewire_core::BuildError),
    #[error("replication: {0}")]
    Replication(#[from] statewire_core::ReplicationError),
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    #[error("session configuration: {0}")]
    Config(#[from] statewire::connection::ConfigError),
}

/// Counters the server side keeps.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ServerCounters {
    pub(crate) snapshot_bytes: u64,
    pub(crate) records: u64,
    pub(crate) deferred: u64,
    pub(crate) max_packet: usize,
    pub(crate) bad_client_messages: u64,
    pub(crate) send_refused: u64,
}

/// Server half: the game, replication and the session server.
pub(crate) struct GameServer<T: Transport> {
    pub(crate) session: Server<T>,
    repl: ServerReplicator,
    pub(crate) game: Game,
    registry: Registry,
    pub(crate) snapshot: Snapshot,
    inputs: HashMap<ClientId, Input>,
    tick: Tick,
    pkt: Vec<u8>,
    pub(crate) counters: ServerCounters,
    pub(crate) connected: Vec<ClientId>,
}

impl<T: Transport> GameServer<T> {
    pub(crate) fn new(
        transport: T,
        enemies: usize,
        max_clients: usize,
        max_packet_bytes: usize,
        seed: u64,
    ) -> Result<Self, NetGameError> {
        let session_cfg = statewire::SessionConfig {
            max_clients,
            ..statewire::SessionConfig::default()
        };
        let key = (seed ^ 0x7365_7276, seed.rotate_left(17) ^ 0x006b_6579);
        Ok(GameServer {
            session: Server::new(transport, session_cfg, key)?,
            repl: ServerReplicator::new(ServerConfig {
                max_packet_bytes,
                max_clients,
                ..ServerConfig::default()
            }),
            game: Game::new(enemies, seed),
            registry: game::registry()?,
            snapshot: Snapshot::new(),
            inputs: HashMap::new(),
            tick: Tick(0),
            pkt: Vec::new(),
            counters: ServerCounters::default(),
            connected: Vec::new(),
        })
    }

    /// One server tick: read, (if `active`) simulate, replicate to every client, transmit.
    pub(crate) fn step(&mut self, now: Duration, active: bool) -> Result<(), NetGameError> {
        self.session.update(now)?;
        while let Some(ev) = self.session.poll_event() {
            match ev {
                ServerEvent::Connected(id) => {
                    self.repl.add_client(id)?;
                    self.game.add_player(id);
                    self.connected.push(id);
                }
                ServerEvent::Disconnected(id, _) => {
                    self.repl.remove_client(id);
                    self.game.remove_player(id);
                    self.inputs.remove(&id);
                    self.connected.retain(|&c| c != id);
                }
                ServerEvent::Message(id, SNAPSHOTS, bytes) => match wire::parse_client(&bytes) {
                    Ok(ClientMsg { ack, input }) => {
                        if let Some(a) = ack {
                            // Unknown or stale acks are ignored by the replicator.
                            let _ = self.repl.handle_ack(id, a);
                        }
                        self.inputs.insert(id, input);
                    }
                    Err(_) => self.counters.bad_client_messages += 1,
                },
                _ => self.counters.bad_client_messages += 1,
            }
        }
        self.tick = self.tick.next();
        if active {
            let inputs = &self.inputs;
            self.game
                .step(&|c| inputs.get(&c).copied().unwrap_or_default());
        }
        let mut builder = SnapshotBuilder::new(&self.registry);
        self.game.build(&mut builder);
        builder.finish_into(&mut self.snapshot)?;
        for &id in &self.connected {
            wire::begin_snapshot(&mut self.pkt);
            let stats = self.repl.encode_for(
                &self.registry,
                id,
                self.tick,
                &self.snapshot,
                &mut self.pkt,
            )?;
            if self.session.send(id, SNAPSHOTS, &self.pkt).is_err() {
                self.counters.send_refused += 1;
            }
            if active {
                self.counters.snapshot_bytes += self.pkt.len() as u64;
                self.counters.records += stats.records as u64;
                self.counters.deferred += stats.pending as u64;
            }
            self.counters.max_packet = self.counters.max_packet.max(self.pkt.len());
        }
        self.session.flush(now)?;
        Ok(())
    }

    /// The server's current tick.
    pub(crate) fn tick(&self) -> Tick {
        self.tick
    }

    /// Tells every client the final state digest (reliable).
    pub(crate) fn announce_final(&mut self) {
        let msg = wire::encode_final(self.tick, self.snapshot.state_hash());
        let _ = self.session.send_to_all(CONTROL, &msg);
    }
}

/// Client half: a bot, replication and the session client.
pub(crate) struct GameClient<T: Transport> {
    pub(crate) session: Client<T>,
    pub(crate) repl: ClientReplicator,
    pub(crate) world: ClientWorld,
    bot: Bot,
    registry: Registry,
    pub(crate) decode_errors: u64,
    pub(crate) bad_messages: u64,
    pub(crate) final_digest: Option<(Tick, u64)>,
    pub(crate) ended: Option<DisconnectReason>,
}

impl<T: Transport> GameClient<T> {
    pub(crate) fn new(
        transport: T,
        server: std::net::SocketAddr,
        now: Duration,
        seed: u64,
    ) -> Result<Self, NetGameError> {
        Ok(GameClient {
            session: Client::new(
                transport,
                server,
                statewire::SessionConfig::default(),
                now,
                seed ^ 0x0073_616c,
            )?,
            repl: ClientReplicator::new(ClientConfig::default()),
            world: ClientWorld::default(),
            bot: Bot::new(seed ^ 0xb07),
            registry: game::registry()?,
            decode_errors: 0,
            bad_messages: 0,
            final_digest: None,
            ended: None,
        })
    }

    /// Whether the handshake completed.
    pub(crate) fn is_connected(&self) -> bool {
        matches!(self.session.state(), ClientState::Connected(_))
    }

    /// One client frame: read and apply snapshots, then send the ack with the bot's input.
    pub(crate) fn step(&mut self, now: Duration, steer: bool) -> Result<(), NetGameError> {
        self.session.update(now)?;
        while let Some(ev) = self.session.poll_event() {
            match ev {
                ClientEvent::Message(SNAPSHOTS, bytes) => {
                    let Ok(body) = wire::parse_snapshot(&bytes) else {
                        self.bad_messages += 1;
                        continue;
                    };
                    if self
                        .repl
                        .handle_packet(&self.registry, body, &mut self.world)
                        .is_err()
                    {
                        self.decode_errors += 1;
                    }
                }
                ClientEvent::Message(CONTROL, bytes) => match wire::parse_final(&bytes) {
                    Ok(d) => self.final_digest = Some(d),
                    Err(_) => self.bad_messages += 1,
                },
                ClientEvent::Disconnected(r) => self.ended = Some(r),
                _ => {}
            }
        }
        if self.is_connected() {
            let input = if steer {
                self.bot.think()
            } else {
                Input::default()
            };
            let msg = wire::encode_client(ClientMsg {
                ack: self.repl.ack(),
                input,
            });
            if self.session.send(SNAPSHOTS, &msg).is_err() {
                self.bad_messages += 1;
            }
            self.session.flush(now)?;
        }
        Ok(())
    }

    /// Whether this client's state matches the digest the server announced.
    pub(crate) fn matches_final(&self) -> Option<bool> {
        self.final_digest
            .map(|(_, digest)| self.repl.state().state_hash() == digest)
    }
}
