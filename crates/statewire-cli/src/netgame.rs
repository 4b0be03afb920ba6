//! The sim game over statewire sessions: a game server (session server, replication,
//! authority, events) and a bot client (session client, replication, predicted kills), usable
//! in one process (`sim`) or apart (`serve` / `join`).
//!
//! Snapshots and events travel on the unreliable channel in replication packets; each client
//! sends, every tick on the same channel, its newest applied snapshot tick (the ack) with its
//! steering input stamped for a future server tick, and a write of its own player's facing
//! (client-authoritative aim, validated by the server). Kill claims go on the reliable channel
//! as event proposals; the server resolves them once (first claim wins) and tells proposers
//! about rejections, so their predictions roll back.

use std::time::Duration;

use hashbrown::HashMap;
use statewire::{
    ChannelId, Client, ClientEvent, ClientState, ConnectToken, DisconnectReason, Fault, Key,
    Server, ServerEvent, TokenConfig,
};
use statewire_core::authority::{decode_writes, encode_writes};
use statewire_core::events::{EntityRefs, EventData, decode_proposal, encode_proposal};
use statewire_core::{
    Authority, AuthorityConfig, ClientConfig, ClientId, ClientReplicator, ComponentCoding,
    EntityId, EventConfig, EventServer, GameEvent, InputBuffer, Owner, PredictionOutcome,
    Predictions, Registry, ServerConfig, ServerReplicator, Snapshot, SnapshotBuilder, StateWrite,
    Tick, WorldSource, Writer,
};
use statewire_transport::{Transport, TransportError};

use crate::game::{self, Bot, ClientWorld, Facing, Game, Input, KILL, Position, TICK_HZ};
use crate::wire::{self, ClientMsg, ToClient, ToServer};

/// Reliable-ordered channel (proposals, rejections, the final digest).
pub(crate) const CONTROL: ChannelId = ChannelId(0);
/// Unreliable channel (replication packets, acks with inputs, writes).
pub(crate) const SNAPSHOTS: ChannelId = ChannelId(1);
/// Ticks an input may be stamped ahead of the server.
const INPUT_WINDOW: u32 = 2 * TICK_HZ;

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
    #[error("connect token: {0}")]
    Token(#[from] statewire::ClientTokenError),
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
    /// Writes to components clients may not write (only their player's facing).
    pub(crate) policy_rejected_writes: u64,
    pub(crate) accepted_writes: u64,
    pub(crate) bad_proposals: u64,
    pub(crate) rejected_proposals: u64,
    /// Clients disconnected for a fault of their own (fell behind the event log, ...).
    pub(crate) fault_disconnects: u64,
}

/// A client's session settings for the game described by `registry`: peers with different
/// component schemas or codings refuse each other.
pub(crate) fn client_session_config(registry: &Registry) -> statewire::SessionConfig {
    statewire::SessionConfig {
        protocol_id: registry.fingerprint(),
        ..statewire::SessionConfig::default()
    }
}

/// How the server admits clients.
pub(crate) struct Security {
    /// Seeds cookies, client ids and development-mode session keys.
    pub(crate) secret: Key,
    /// Token mode, if given.
    pub(crate) tokens: Option<TokenConfig>,
}

/// Server half.
pub(crate) struct GameServer<T: Transport> {
    pub(crate) session: Server<T>,
    repl: ServerReplicator,
    pub(crate) game: Game,
    registry: Registry,
    pub(crate) snapshot: Snapshot,
    pub(crate) authority: Authority,
    pub(crate) inputs: InputBuffer<Input>,
    last_input: HashMap<ClientId, Input>,
    pub(crate) events: EventServer,
    /// Every event resolved in this run (the event server trims what all clients have).
    pub(crate) resolved: Vec<GameEvent>,
    tick: Tick,
    pkt: Vec<u8>,
    scratch: Vec<u32>,
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
        coding: ComponentCoding,
        security: Security,
    ) -> Result<Self, NetGameError> {
        let registry = game::registry(coding)?;
        let session_cfg = statewire::SessionConfig {
            max_clients,
            // Peers with different component schemas or codings refuse each other.
            protocol_id: registry.fingerprint(),
            ..statewire::SessionConfig::default()
        };
        let game = Game::new(enemies, seed);
        let mut authority = Authority::new(AuthorityConfig::default());
        for (id, owner) in game.owners() {
            authority.insert(id, owner);
        }
        Ok(GameServer {
            session: match security.tokens {
                Some(t) => Server::with_tokens(transport, session_cfg, security.secret, t)?,
                None => Server::new(transport, session_cfg, security.secret)?,
            },
            repl: ServerReplicator::new(ServerConfig {
                max_packet_bytes,
                max_clients,
                ..ServerConfig::default()
            }),
            game,
            registry,
            snapshot: Snapshot::new(),
            authority,
            inputs: InputBuffer::new(INPUT_WINDOW, INPUT_WINDOW as usize + 8),
            last_input: HashMap::new(),
            events: EventServer::new(EventConfig::default()),
            resolved: Vec::new(),
            tick: Tick(0),
            pkt: Vec::new(),
            scratch: Vec::new(),
            counters: ServerCounters::default(),
            connected: Vec::new(),
        })
    }

    fn handle_message(&mut self, id: ClientId, channel: ChannelId, bytes: &[u8]) {
        match (channel, wire::parse_to_server(bytes)) {
            (
                SNAPSHOTS,
                Ok(ToServer::Tick(ClientMsg {
                    ack,
                    input_tick,
                    input,
                })),
            ) => {
                if let Some(a) = ack {
                    // Unknown or stale acks are ignored by the replicator.
                    let _ = self.repl.handle_ack(id, a);
                }
                // Out-of-window inputs are counted by the buffer.
                let _ = self.inputs.push(id, input_tick, input);
            }
            (SNAPSHOTS, Ok(ToServer::Writes(body))) => {
                match decode_writes(&self.registry, body, 64) {
                    Ok(writes) => self.apply_writes(id, &writes),
                    Err(_) => self.counters.bad_client_messages += 1,
                }
            }
            (CONTROL, Ok(ToServer::Propose(body))) => {
                match decode_proposal(body, id, self.events.config()) {
                    Ok(p) if p.kind == KILL && p.entities.len() == 2 => {
                        // Refusals (rate, size) are reported back through take_rejections.
                        let _ = self.events.propose(p);
                    }
                    _ => self.counters.bad_proposals += 1,
                }
            }
            _ => self.counters.bad_client_messages += 1,
        }
    }

    fn apply_writes(&mut self, from: ClientId, writes: &[StateWrite]) {
        let facing = self.registry.id_of::<Facing>();
        for w in writes {
            self.scratch.clear();
            if self
                .authority
                .accept_write(&self.registry, from, w, &mut self.scratch)
                .is_err()
            {
                continue;
            }
            // Game policy on top of ownership: a client may only aim its own player.
            if Some(w.component) != facing {
                self.counters.policy_rejected_writes += 1;
                continue;
            }
            let angle = self
                .registry
                .view(w.component, &self.scratch)
                .and_then(|v| v.get::<Facing>());
            if let Some(f) = angle {
                self.game.set_facing(w.entity, f.0);
                self.counters.accepted_writes += 1;
            }
        }
    }

    /// One server tick: read, (if `active`) simulate and resolve events, replicate, transmit.
    pub(crate) fn step(&mut self, now: Duration, active: bool) -> Result<(), NetGameError> {
        self.session.update(now)?;
        while let Some(ev) = self.session.poll_event() {
            match ev {
                ServerEvent::Connected(id) => {
                    // The replicator refusing a client (full) costs only that client.
                    if self.repl.add_client(id).is_err() {
                        self.counters.fault_disconnects += 1;
                        self.session.disconnect_for_fault(id, Fault::OverBudget);
                        continue;
                    }
                    self.game.add_player(id);
                    if let Some(p) = self.game.player_of(id) {
                        self.authority.insert(p, Owner::Client(id));
                    }
                    self.connected.push(id);
                }
                ServerEvent::Disconnected(id, _) => self.forget_client(id),
                ServerEvent::Message(id, ch, bytes) => self.handle_message(id, ch, &bytes),
                _ => {}
            }
        }
        self.tick = self.tick.next();
        self.authority.begin_tick(self.tick);
        for (c, input) in self.inputs.take(self.tick) {
            self.last_input.insert(c, input);
        }
        if active {
            let inputs = &self.last_input;
            self.game
                .step(&|c| inputs.get(&c).copied().unwrap_or_default());
        }
        // Resolve kill claims: first valid claim in resolution order wins.
        let game = &mut self.game;
        let authority = &mut self.authority;
        let resolved = self.events.resolve(self.tick, |p| {
            let (Writer::Client(shooter), Some(&target)) = (p.proposer, p.entities.get(1)) else {
                return false;
            };
            if game.player_of(shooter) != Some(p.entities[0]) || !game.can_kill(shooter, target) {
                return false;
            }
            authority.remove(target);
            if let Some(new) = game.kill(target) {
                authority.insert(new, Owner::Server);
            }
            true
        });
        self.resolved.extend_from_slice(resolved);
        for (client, seq) in self.events.take_rejections() {
            self.counters.rejected_proposals += 1;
            let _ = self
                .session
                .send(client, CONTROL, &wire::encode_rejected(seq));
        }
        let mut builder = SnapshotBuilder::new(&self.registry);
        self.game.build(&mut builder);
        builder.finish_into(&mut self.snapshot)?;
        let mut behind = Vec::new();
        for &id in &self.connected {
            wire::begin_snapshot(&mut self.pkt);
            // A client's own failure (it fell behind the event log) costs only that client.
            let stats = match self.repl.encode_for_with_events(
                &self.registry,
                id,
                self.tick,
                &self.snapshot,
                &self.events,
                &mut self.pkt,
            ) {
                Ok(stats) => stats,
                Err(_) => {
                    behind.push(id);
                    continue;
                }
            };
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
        for id in behind {
            self.counters.fault_disconnects += 1;
            self.session.disconnect_for_fault(id, Fault::FellBehind);
            self.forget_client(id);
        }
        if let Some(min) = self.repl.min_acked_event() {
            self.events.trim_through(min);
        }
        self.session.flush(now)?;
        Ok(())
    }

    /// Frees everything the game keeps for a client that left or was disconnected.
    fn forget_client(&mut self, id: ClientId) {
        if let Some(p) = self.game.player_of(id) {
            self.authority.remove(p);
        }
        self.authority.remove_client(id);
        self.events.remove_client(id);
        self.repl.remove_client(id);
        self.game.remove_player(id);
        self.inputs.remove_client(id);
        self.last_input.remove(&id);
        self.connected.retain(|&c| c != id);
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

/// How a bot behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Behaviour {
    /// Plays by the rules.
    Honest,
    /// Writes others' entities, server entities, unknown ids, NaN, 10× the write rate; stamps
    /// inputs ±10 s off; claims impossible kills; sends malformed messages.
    Adversary,
}

/// Client half.
pub(crate) struct GameClient<T: Transport> {
    pub(crate) session: Client<T>,
    pub(crate) repl: ClientReplicator,
    pub(crate) world: ClientWorld,
    bot: Bot,
    behaviour: Behaviour,
    registry: Registry,
    predictions: Predictions,
    aim: f32,
    buf: Vec<u8>,
    pub(crate) decode_errors: u64,
    pub(crate) bad_messages: u64,
    pub(crate) confirmed: u64,
    pub(crate) rolled_back: u64,
    pub(crate) final_digest: Option<(Tick, u64)>,
    pub(crate) ended: Option<DisconnectReason>,
}

impl<T: Transport> GameClient<T> {
    pub(crate) fn new(
        transport: T,
        server: std::net::SocketAddr,
        now: Duration,
        seed: u64,
        behaviour: Behaviour,
        coding: ComponentCoding,
        token: Option<&ConnectToken>,
    ) -> Result<Self, NetGameError> {
        let registry = game::registry(coding)?;
        let session_cfg = client_session_config(&registry);
        let session = match token {
            Some(t) => Client::with_token(transport, server, session_cfg, now, t)?,
            None => Client::new(transport, server, session_cfg, now, seed ^ 0x0073_616c)?,
        };
        Ok(GameClient {
            session,
            repl: ClientReplicator::new(ClientConfig::default()),
            world: ClientWorld::default(),
            bot: Bot::new(seed ^ 0xb07),
            behaviour,
            registry,
            predictions: Predictions::new(),
            aim: 0.0,
            buf: Vec::new(),
            decode_errors: 0,
            bad_messages: 0,
            confirmed: 0,
            rolled_back: 0,
            final_digest: None,
            ended: None,
        })
    }

    /// Whether the handshake completed.
    pub(crate) fn is_connected(&self) -> bool {
        matches!(self.session.state(), ClientState::Connected(_))
    }

    fn me(&self) -> Option<(ClientId, EntityId)> {
        let id = self.session.id()?;
        let player = self
            .world
            .entities
            .iter()
            .find(|(_, e)| e.owner == Some(id))
            .map(|(&eid, _)| eid)?;
        Some((id, player))
    }

    /// One client frame: apply what arrived, then send ack + input, the aim write and (now and
    /// then) a kill claim. `play` is false during quiet periods.
    pub(crate) fn step(&mut self, now: Duration, play: bool) -> Result<(), NetGameError> {
        self.session.update(now)?;
        while let Some(ev) = self.session.poll_event() {
            match ev {
                ClientEvent::Message(_, bytes) => match wire::parse_to_client(&bytes) {
                    Ok(ToClient::Snapshot(body)) => {
                        let before = self.world.events.len();
                        if self
                            .repl
                            .handle_packet_with_events(&self.registry, body, &mut self.world)
                            .is_err()
                        {
                            self.decode_errors += 1;
                        }
                        if let Some(me) = self.session.id() {
                            for e in self.world.events.values().skip(before) {
                                self.predictions.on_event(me, e);
                            }
                        }
                    }
                    Ok(ToClient::Final(t, d)) => self.final_digest = Some((t, d)),
                    Ok(ToClient::Rejected(seq)) => self.predictions.on_rejected(seq),
                    Err(_) => self.bad_messages += 1,
                },
                ClientEvent::Disconnected(r) => self.ended = Some(r),
                _ => {}
            }
        }
        while let Some(o) = self.predictions.poll_outcome() {
            match o {
                PredictionOutcome::Confirmed { .. } => self.confirmed += 1,
                // A real game would undo the local effect here (revive the enemy it hid).
                PredictionOutcome::Rejected { .. } => self.rolled_back += 1,
                _ => {}
            }
        }
        if !self.is_connected() {
            return Ok(());
        }
        let ack = self.repl.ack();
        // Stamp the input for the tick the server will be at when it arrives.
        let rtt_ticks = self
            .session
            .rtt()
            .map_or(6, |r| (r.as_secs_f64() * f64::from(TICK_HZ)).ceil() as u32);
        let lead = rtt_ticks + 3;
        let mut input_tick = Tick(ack.map_or(0, |a| a.0).wrapping_add(lead));
        let input = if play {
            self.bot.think()
        } else {
            Input::default()
        };
        if self.behaviour == Behaviour::Adversary {
            // Ten seconds in the past or the future.
            let off = 10 * TICK_HZ;
            input_tick = if input_tick.0 % 2 == 0 {
                Tick(input_tick.0.wrapping_sub(off))
            } else {
                Tick(input_tick.0.wrapping_add(off))
            };
        }
        let msg = wire::encode_client(ClientMsg {
            ack,
            input_tick,
            input,
        });
        if self.session.send(SNAPSHOTS, &msg).is_err() {
            self.bad_messages += 1;
        }
        if play {
            self.send_writes();
            self.maybe_shoot(ack.unwrap_or_default());
        }
        self.session.flush(now)?;
        Ok(())
    }

    fn write_of<C: statewire_core::Replicate>(
        &self,
        entity: EntityId,
        value: &C,
    ) -> Option<StateWrite> {
        let mut values = Vec::new();
        let component = self.registry.raw_values(value, &mut values).ok()?;
        Some(StateWrite {
            entity,
            component,
            values,
        })
    }

    fn send_writes(&mut self) {
        let Some((me, player)) = self.me() else {
            return;
        };
        self.aim = self.bot.aim(self.aim);
        let mut writes: Vec<StateWrite> = self
            .write_of(player, &Facing(self.aim))
            .into_iter()
            .collect();
        if self.behaviour == Behaviour::Adversary {
            let others: Vec<EntityId> = self
                .world
                .entities
                .iter()
                .filter(|(_, e)| e.owner.is_some_and(|o| o != me))
                .map(|(&id, _)| id)
                .take(4)
                .collect();
            let enemy = self
                .world
                .entities
                .iter()
                .find(|(_, e)| e.owner.is_none())
                .map(|(&id, _)| id);
            for id in others {
                writes.extend(self.write_of(id, &Facing(1.0)));
                writes.extend(self.write_of(id, &Position { x: 0.0, y: 0.0 }));
            }
            if let Some(e) = enemy {
                writes.extend(self.write_of(e, &Position { x: 1.0, y: 1.0 }));
            }
            writes.extend(self.write_of(EntityId(9_999_999), &Facing(1.0)));
            writes.extend(self.write_of(player, &Facing(f32::NAN)));
            writes.extend(self.write_of(player, &Position { x: 0.0, y: 0.0 }));
            // Ten times the allowed rate on its own player.
            for k in 0..80 {
                writes.extend(self.write_of(player, &Facing(k as f32 * 0.01)));
            }
        }
        // One message per 60 writes keeps each under the unreliable channel's size.
        for chunk in writes.chunks(60) {
            wire::begin_writes(&mut self.buf);
            encode_writes(chunk, &mut self.buf);
            if self.session.send(SNAPSHOTS, &self.buf).is_err() {
                self.bad_messages += 1;
            }
        }
        if self.behaviour == Behaviour::Adversary {
            // Malformed messages on both channels.
            let _ = self.session.send(SNAPSHOTS, &[0x04, 0xff, 0xff, 1]);
            let _ = self.session.send(CONTROL, &[0x05, 1, 2, 3]);
            let _ = self.session.send(SNAPSHOTS, &[0x7f]);
        }
    }

    fn maybe_shoot(&mut self, tick: Tick) {
        let Some((me, player)) = self.me() else {
            return;
        };
        let target = if self.behaviour == Behaviour::Adversary {
            // Claims an enemy far away (any enemy will do; range is checked by the server).
            self.world
                .entities
                .iter()
                .filter(|(_, e)| e.owner.is_none())
                .map(|(&id, _)| id)
                .max()
        } else {
            self.bot.pick_target(&self.world, player)
        };
        let Some(target) = target else {
            return;
        };
        let mut ents = EntityRefs::new();
        ents.push(player);
        ents.push(target);
        let p = self
            .predictions
            .predict(me, tick, KILL, ents, EventData::new());
        wire::begin_proposal(&mut self.buf);
        encode_proposal(&p, &mut self.buf);
        if self.session.send(CONTROL, &self.buf).is_err() {
            self.bad_messages += 1;
        }
    }

    /// Whether this client's state matches the digest the server announced.
    pub(crate) fn matches_final(&self) -> Option<bool> {
        self.final_digest
            .map(|(_, digest)| self.repl.state().state_hash() == digest)
    }
}
