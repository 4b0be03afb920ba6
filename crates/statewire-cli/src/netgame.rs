//! The sim game over statewire sessions: a game server (session server, replication,
//! authority, events) and a bot client (session client, replication, predicted kills), usable
//! in one process (`sim`) or apart (`serve` / `join`).
//!
//! The server keeps the replicated world in a [`Store`], copying into it only what the game
//! changed each tick, and replicates it to every client within each client's interest radius.
//!
//! Snapshots and events travel on the unreliable channel in replication packets; each client
//! sends, every tick on the same channel, its acknowledgement ([`statewire_core::AckFrame`]) with its
//! steering input stamped for a future server tick, and a write of its own player's facing
//! (client-authoritative aim, validated by the server). Kill claims go on the reliable channel
//! as event proposals; the server resolves them once (first claim wins) and tells proposers
//! about rejections, so their predictions roll back.

use std::time::{Duration, Instant};

use hashbrown::HashMap;
use statewire::{
    ChannelId, Client, ClientEvent, ClientState, ConnectToken, DisconnectReason, Fault, Key,
    Server, ServerEvent, TokenConfig,
};
use statewire_core::authority::{decode_writes, encode_writes};
use statewire_core::events::{EntityRefs, EventData, decode_proposal, encode_proposal};
use statewire_core::{
    Authority, AuthorityConfig, ClientConfig, ClientId, ClientReplicator, ComponentCoding,
    ComponentId, EntityId, EventConfig, EventServer, GameEvent, InputBuffer, Owner,
    PredictionOutcome, Predictions, Registry, ServerConfig, ServerReplicator, Snapshot, StateWrite,
    Store, StoreConfig, Tick, Writer,
};
use statewire_transport::{Transport, TransportError};

use crate::game::{
    self, Body, Bot, Change, ClientWorld, Facing, Game, Input, KILL, Position, TICK_HZ,
};
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
    #[error("replication store: {0}")]
    Store(#[from] statewire_core::StoreError),
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
    /// Replication packets larger than their client's budget (or flagged over budget).
    pub(crate) budget_exceeded: u64,
    /// Longest any change carried by a packet waited for it, in ticks.
    pub(crate) max_staleness_ticks: u32,
}

/// Bytes a message on the unreliable channel ([`SNAPSHOTS`]) may have with the session
/// settings `config`: the channel's own limit, capped by what fits one packet.
pub(crate) fn unreliable_payload_limit(config: &statewire::SessionConfig) -> usize {
    // `ChannelConfig::max_message_size`: an unreliable message also fits one packet, less the
    // packet and frame headers (15 bytes).
    let fits = config.connection.max_packet_size.saturating_sub(15);
    config
        .connection
        .channels
        .get(usize::from(SNAPSHOTS.0))
        .map_or(0, |c| c.max_message_size.min(fits))
}

/// Largest replication packet (budget) the game's sessions can carry: the unreliable channel's
/// limit less the message's tag byte.
pub(crate) fn max_replication_packet() -> usize {
    unreliable_payload_limit(&statewire::SessionConfig::default()).saturating_sub(1)
}

/// How the game server replicates.
#[derive(Debug, Clone)]
pub(crate) struct GameParams {
    /// Enemies at the start (players join as clients connect).
    pub(crate) enemies: usize,
    pub(crate) max_clients: usize,
    /// [`ServerConfig::max_packet_bytes`].
    pub(crate) max_packet_bytes: usize,
    /// Per-client packet budget (`None`: `max_packet_bytes`).
    pub(crate) budget: Option<usize>,
    /// Interest radius around each client's player, in metres (0: everything).
    pub(crate) interest_radius: f32,
    /// Enemies that walk every tick (`None`: random wandering).
    pub(crate) moving: Option<usize>,
    pub(crate) seed: u64,
    pub(crate) coding: ComponentCoding,
}

/// Read access to a quantized world, for comparing and digesting views.
trait StateView {
    fn owner_of(&self, id: EntityId) -> Option<Owner>;
    fn words(&self, id: EntityId, cid: ComponentId) -> Option<&[u32]>;
}

impl StateView for Store {
    fn owner_of(&self, id: EntityId) -> Option<Owner> {
        self.owner(id)
    }
    fn words(&self, id: EntityId, cid: ComponentId) -> Option<&[u32]> {
        self.component_view(id, cid).map(|v| v.quantized())
    }
}

struct SnapshotView<'a>(&'a Snapshot, &'a Registry);

impl StateView for SnapshotView<'_> {
    fn owner_of(&self, id: EntityId) -> Option<Owner> {
        self.0.owner(id)
    }
    fn words(&self, id: EntityId, cid: ComponentId) -> Option<&[u32]> {
        self.0
            .component_view(self.1, id, cid)
            .map(|v| v.quantized())
    }
}

/// The game's component ids.
fn component_ids(registry: &Registry) -> [Option<ComponentId>; 3] {
    [
        registry.id_of::<Position>(),
        registry.id_of::<Facing>(),
        registry.id_of::<Body>(),
    ]
}

/// A digest (FNV-1a) of the entities `ids` (ascending) of `state`: ids, owners and quantized
/// components. Both sides compute it the same way, so a client can check its view.
fn view_digest(registry: &Registry, state: &dyn StateView, ids: &[EntityId]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |v: u64| {
        for b in v.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    let cids = component_ids(registry);
    for &id in ids {
        eat(u64::from(id.0));
        eat(match state.owner_of(id) {
            Some(Owner::Server) => u64::MAX,
            Some(Owner::Client(c)) => c.0,
            Some(_) => u64::MAX - 2,
            None => u64::MAX - 1,
        });
        for cid in cids.iter().flatten() {
            match state.words(id, *cid) {
                None => eat(u64::MAX),
                Some(ws) => {
                    eat(ws.len() as u64);
                    for &w in ws {
                        eat(u64::from(w));
                    }
                }
            }
        }
    }
    h
}

/// Whether `a` and `b` hold the same owners and quantized components for every entity of
/// `ids`.
fn same_entities(
    registry: &Registry,
    a: &dyn StateView,
    b: &dyn StateView,
    ids: &[EntityId],
) -> bool {
    let cids = component_ids(registry);
    ids.iter().all(|&id| {
        a.owner_of(id) == b.owner_of(id)
            && cids
                .iter()
                .flatten()
                .all(|&cid| a.words(id, cid) == b.words(id, cid))
    })
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
    pub(crate) repl: ServerReplicator,
    pub(crate) game: Game,
    registry: Registry,
    /// The replicated world: what the game changed, copied in once per tick.
    pub(crate) store: Store,
    budget: Option<usize>,
    changes: Vec<Change>,
    /// Wall time of replication (update and encoding for every client) per active tick, µs.
    pub(crate) replication_us: Vec<u32>,
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
        params: &GameParams,
        security: Security,
    ) -> Result<Self, NetGameError> {
        let registry = game::registry(params.coding)?;
        let session_cfg = statewire::SessionConfig {
            max_clients: params.max_clients,
            // Peers with different component schemas or codings refuse each other.
            protocol_id: registry.fingerprint(),
            ..statewire::SessionConfig::default()
        };
        let game = Game::new(params.enemies, params.seed, params.moving);
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
                max_packet_bytes: params.max_packet_bytes,
                max_clients: params.max_clients,
                interest_radius: params.interest_radius,
                ..ServerConfig::default()
            }),
            game,
            store: Store::new(registry.clone(), StoreConfig::default()),
            registry,
            budget: params.budget,
            changes: Vec::new(),
            replication_us: Vec::new(),
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
                    if self.budget.is_some() {
                        self.repl.set_packet_budget(id, self.budget)?;
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
        self.store.begin_tick(self.tick)?;
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
        self.sync_store()?;
        // Each client looks from its player.
        for &id in &self.connected {
            let at = self
                .game
                .player_of(id)
                .and_then(|p| self.game.state(p))
                .map(|s| [s.pos.x, s.pos.y]);
            self.repl.set_viewer(id, at, None)?;
        }
        let started = Instant::now();
        let mut encoding = Duration::ZERO;
        self.repl.update(&mut self.store, Some(&self.events));
        let updated = started.elapsed();
        let mut behind = Vec::new();
        for &id in &self.connected {
            wire::begin_snapshot(&mut self.pkt);
            let t0 = Instant::now();
            // A client's own failure (it fell behind the event log) costs only that client.
            let result =
                self.repl
                    .encode_for_with_events(&self.store, id, &self.events, &mut self.pkt);
            encoding += t0.elapsed();
            let stats = match result {
                Ok(stats) => stats,
                Err(_) => {
                    behind.push(id);
                    continue;
                }
            };
            let budget = self.budget.unwrap_or(self.repl.config().max_packet_bytes);
            if stats.over_budget || stats.bytes > budget {
                self.counters.budget_exceeded += 1;
            }
            self.counters.max_staleness_ticks = self
                .counters
                .max_staleness_ticks
                .max(stats.max_staleness_ticks);
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
        if active {
            let us = (updated + encoding).as_micros();
            self.replication_us
                .push(u32::try_from(us).unwrap_or(u32::MAX));
        }
        if let Some(min) = self.repl.min_acked_event() {
            self.events.trim_through(min);
        }
        self.session.flush(now)?;
        Ok(())
    }

    /// Copies what the game changed since the last call into the store: spawns and despawns,
    /// and for changed entities their components (unchanged values are no change to the
    /// store), owner and position on the interest plane.
    fn sync_store(&mut self) -> Result<(), NetGameError> {
        self.game.take_changes(&mut self.changes);
        for &change in &self.changes {
            match change {
                Change::Despawn(id) => {
                    if self.store.contains(id) {
                        self.store.despawn(id)?;
                    }
                }
                Change::Spawn(id) | Change::Update(id) => {
                    // Gone again since (spawned and killed in one tick): nothing to copy.
                    let Some(s) = self.game.state(id) else {
                        continue;
                    };
                    if self.store.contains(id) {
                        self.store.set_owner(id, s.owner)?;
                    } else {
                        self.store.spawn(id, s.owner)?;
                    }
                    self.store.set(id, &s.pos)?;
                    self.store.set(id, &s.facing)?;
                    self.store.set(id, &s.body)?;
                    self.store.set_position(id, Some([s.pos.x, s.pos.y]))?;
                }
            }
        }
        Ok(())
    }

    /// The entities in `client`'s view, ascending.
    fn view_ids(&self, client: ClientId) -> Vec<EntityId> {
        let mut ids: Vec<EntityId> = self
            .store
            .entity_ids()
            .filter(|&id| self.repl.in_view(&self.store, client, id))
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Number of entities in `client`'s view.
    pub(crate) fn view_len(&self, client: ClientId) -> usize {
        self.store
            .entity_ids()
            .filter(|&id| self.repl.in_view(&self.store, client, id))
            .count()
    }

    /// Whether `state` (a client's replicated state) is exactly the store's state restricted
    /// to the entities in `client`'s view.
    pub(crate) fn view_matches(&self, client: ClientId, state: &Snapshot) -> bool {
        let ids = self.view_ids(client);
        ids.len() == state.len()
            && state.entity_ids().eq(ids.iter().copied())
            && same_entities(
                &self.registry,
                &self.store,
                &SnapshotView(state, &self.registry),
                &ids,
            )
    }

    /// The digest of the entities in `client`'s view.
    pub(crate) fn view_digest(&self, client: ClientId) -> u64 {
        view_digest(&self.registry, &self.store, &self.view_ids(client))
    }

    /// The digest of the whole replicated world (what a client with no interest limit holds).
    pub(crate) fn world_digest(&self) -> u64 {
        let mut ids: Vec<EntityId> = self.store.entity_ids().collect();
        ids.sort_unstable();
        view_digest(&self.registry, &self.store, &ids)
    }

    /// Whether the store holds exactly the game's world (what rebuilding a snapshot from the
    /// game would give): the incremental copy missed nothing.
    #[cfg(test)]
    pub(crate) fn store_matches_game(&self) -> bool {
        use statewire_core::{SnapshotBuilder, WorldSource};
        let mut b = SnapshotBuilder::new(&self.registry);
        self.game.build(&mut b);
        b.finish().is_ok_and(|s| s == self.store.snapshot())
    }

    /// Bytes the server holds for replication: the store and the per-client records.
    pub(crate) fn replication_bytes(&self) -> usize {
        self.store.memory_bytes() + self.repl.memory_bytes()
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

    /// Tells every client the digest of its final view (reliable).
    pub(crate) fn announce_final(&mut self) {
        for id in self.connected.clone() {
            let msg = wire::encode_final(self.tick, self.view_digest(id));
            let _ = self.session.send(id, CONTROL, &msg);
        }
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
        let mut input_tick = Tick(self.repl.tick().map_or(0, |t| t.0).wrapping_add(lead));
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
            self.maybe_shoot(self.repl.tick().unwrap_or_default());
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

    /// The digest of this client's replicated state (see [`GameServer::view_digest`]).
    pub(crate) fn digest(&self) -> u64 {
        let state = self.repl.snapshot();
        let ids: Vec<EntityId> = state.entity_ids().collect();
        view_digest(&self.registry, &SnapshotView(&state, &self.registry), &ids)
    }

    /// Whether this client's state matches the digest the server announced.
    pub(crate) fn matches_final(&self) -> Option<bool> {
        self.final_digest.map(|(_, digest)| self.digest() == digest)
    }
}
