//! The game server endpoint: session, replication, authority, inputs and events in one loop.

use std::collections::VecDeque;
use std::time::Duration;

use hashbrown::HashMap;
use serde::Serialize;
use serde::de::DeserializeOwned;
use statewire_core::authority::decode_writes;
use statewire_core::clock::{InputTiming, InputTimingConfig, InputTimingStats};
use statewire_core::events::{EntityRefs, EventData, decode_proposal};
use statewire_core::{
    Authority, AuthorityConfig, ClientId, ComponentId, EncodeStats, EntityId, EventConfig,
    EventServer, GameEvent, InputBuffer, Owner, Proposal, ReplicationError, ServerConfig,
    ServerReplicator, Snapshot, StateWrite, Store, StoreConfig, StoreError, Tick, WriteRejection,
    Writer,
};
use statewire_transport::{Transport, TransportError};

use super::envelope::{self, EnvelopeError};
use super::protocol::{Delivery, Message, MessageChannel, MessageError, Protocol, encode_message};
use super::{ConfigError, RELIABLE, UNRELIABLE, check_session};
use crate::config::{DisconnectReason, Fault, SessionConfig};
use crate::crypto::Key;
use crate::server::{Server, ServerEvent, TokenConfig};

/// Settings of a [`GameServer`]. Checked together by [`GameServer::new`]: a combination that
/// cannot work (a packet budget larger than the session's unreliable channel carries, fewer
/// replication slots than session slots) is an error there, not a silent failure later.
#[derive(Debug, Clone)]
pub struct GameServerConfig {
    /// The session (handshake, channels, timeouts, limits). Its `protocol_id` is replaced by
    /// the [`Protocol::fingerprint`]. Default [`SessionConfig::default`].
    pub session: SessionConfig,
    /// Replication. Default: [`ServerConfig::default`] with `max_packet_bytes` set to what
    /// the default session's unreliable channel carries less the envelope's tag byte (1,134).
    pub replication: ServerConfig,
    /// The replicated store. Default [`StoreConfig::default`].
    pub store: StoreConfig,
    /// Writes of client-owned entities. Default [`AuthorityConfig::default`].
    pub authority: AuthorityConfig,
    /// Event proposals and the event log. Default [`EventConfig::default`] with
    /// `max_hold_ticks` 32: a proposal a client stamps with a tick of its own simulation,
    /// which runs ahead of ours, waits for that tick (about 1 s at 30 Hz at most).
    pub events: EventConfig,
    /// Ticks ahead of the current one an input may be stamped for. Default 64 (about 2 s at
    /// 30 Hz).
    pub input_window_ticks: u32,
    /// Inputs held per client. Default 72.
    pub max_inputs_per_client: usize,
    /// Largest encoded input, in bytes (at most 255). Default 64.
    pub max_input_bytes: usize,
    /// State writes one message may carry. Default 64.
    pub max_writes_per_message: usize,
    /// Events waiting for [`GameServer::poll_event`]; beyond it new ones are dropped and
    /// counted in [`GameServerStats::events_dropped`]. Drain the queue every tick: then only
    /// the events below can fill it, and they have their own budget. Default 65,536.
    pub max_queued_events: usize,
    /// Events one client's messages may cause per tick ([`GameServerEvent::WriteApplied`],
    /// [`GameServerEvent::WriteRejected`], [`GameServerEvent::Message`]); beyond it they are
    /// dropped and counted (the writes themselves are still applied or refused), so one client
    /// cannot crowd out the others' events. Default 64.
    pub max_events_per_client_per_tick: u32,
    /// How early each client's inputs arrive is measured over this window (per client,
    /// freed when it leaves). Default [`InputTimingConfig::default`] (32 inputs).
    pub input_timing: InputTimingConfig,
    /// Every this many ticks each client that sent new inputs since its last report is told
    /// how early the least early input of its window arrived (a 5-byte unreliable message),
    /// which its tick clock uses to run just far enough ahead. At least 1. Default 10 (3
    /// reports a second at 30 Hz).
    pub input_report_interval_ticks: u32,
}

impl Default for GameServerConfig {
    fn default() -> Self {
        let session = SessionConfig::default();
        let budget = session
            .connection
            .message_limit(UNRELIABLE)
            .unwrap_or(0)
            .saturating_sub(1);
        GameServerConfig {
            replication: ServerConfig {
                max_packet_bytes: budget,
                ..ServerConfig::default()
            },
            session,
            store: StoreConfig::default(),
            authority: AuthorityConfig::default(),
            events: EventConfig {
                max_hold_ticks: 32,
                ..EventConfig::default()
            },
            input_window_ticks: 64,
            max_inputs_per_client: 72,
            max_input_bytes: 64,
            max_writes_per_message: 64,
            max_queued_events: 65_536,
            max_events_per_client_per_tick: 64,
            input_timing: InputTimingConfig::default(),
            input_report_interval_ticks: 10,
        }
    }
}

/// Why a client's state write was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteRefusal {
    /// Refused by ownership, rate or value checks.
    #[error("{0}")]
    Authority(#[from] WriteRejection),
    /// The game does not let clients write this component
    /// ([`GameServer::set_client_writable`]).
    #[error("clients may not write this component")]
    NotWritable,
    /// The entity has no such component (a write changes a component; it never adds one).
    #[error("the entity has no such component")]
    NoSuchComponent,
}

/// What happened on a [`GameServer`]; drain with [`GameServer::poll_event`] after each
/// [`GameServer::update`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum GameServerEvent<I> {
    /// A client completed the handshake (or the host's own player joined). Spawn its
    /// entities here.
    Joined(ClientId),
    /// A client is gone: the session ended for `reason`. Everything the endpoint kept for it
    /// is already freed; despawn or hand over its entities.
    Left(ClientId, DisconnectReason),
    /// A client's input for the tick that just started.
    Input {
        /// Whose.
        client: ClientId,
        /// The tick it is for (the current tick).
        tick: Tick,
        /// The input.
        input: I,
    },
    /// A state write of a client-owned entity was validated and applied to the store.
    WriteApplied {
        /// Writer (and owner).
        client: ClientId,
        /// Entity written.
        entity: EntityId,
        /// Component written.
        component: ComponentId,
    },
    /// A state write was refused (counted; nothing applied).
    WriteRejected {
        /// Writer.
        client: ClientId,
        /// Entity it tried to write.
        entity: EntityId,
        /// Why.
        reason: WriteRefusal,
    },
    /// An event was resolved (accepted) this tick; it reaches every client once.
    EventResolved(GameEvent),
    /// A proposal of the host's local player was refused.
    LocalProposalRefused {
        /// The local player.
        client: ClientId,
        /// The sequence number [`GameServer::propose_local`] returned.
        seq: u32,
    },
    /// A user message from a client.
    Message(ClientId, Message),
}

/// Counters of a [`GameServer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GameServerStats {
    /// Ticks run.
    pub ticks: u64,
    /// Replication packets sent.
    pub packets: u64,
    /// Bytes of replication packets (without the envelope tag).
    pub replication_bytes: u64,
    /// Largest replication packet (without the envelope tag).
    pub max_packet_bytes: usize,
    /// Entity records sent.
    pub records: u64,
    /// Changes left for a later packet (by priority, within the budget), summed over packets.
    pub deferred: u64,
    /// Packets the encoder reports over their client's budget, or longer than
    /// `max_packet_bytes` (never expected; counted to prove it).
    pub budget_exceeded: u64,
    /// Longest a change waited for a packet, in ticks.
    pub max_staleness_ticks: u32,
    /// Messages from clients that did not decode (counted and dropped).
    pub malformed: u64,
    /// Sends the session refused.
    pub send_refused: u64,
    /// State writes applied.
    pub writes_applied: u64,
    /// State writes refused.
    pub writes_rejected: u64,
    /// Proposals refused or rejected.
    pub proposals_rejected: u64,
    /// Clients disconnected for a fault of their own (fell behind the event log, no room).
    pub fault_disconnects: u64,
    /// Events dropped because the queue was full.
    pub events_dropped: u64,
    /// Inputs received from clients, each once (redundant copies not counted), in any order,
    /// for ticks up to 64 before the newest one the client sent (older or out-of-window ones
    /// are refused and counted by the input buffer, [`GameServer::inputs_rejected`]).
    pub inputs_received: u64,
    /// Of those, inputs that arrived after their tick had run (not used; the client's tick
    /// clock should make this rare).
    pub inputs_late: u64,
}

/// A game server over transport `T` with inputs of type `I`: owns the session [`Server`],
/// the replicated [`Store`] and its [`ServerReplicator`], [`Authority`] over client writes,
/// an [`InputBuffer`], the [`EventServer`] (with trimming) and the message envelope.
///
/// One tick: [`update`](Self::update) (reads the network and starts the next tick), drain
/// [`poll_event`](Self::poll_event), simulate and write the results to
/// [`store_mut`](Self::store_mut), [`resolve_events`](Self::resolve_events), then
/// [`flush`](Self::flush) (replicates to every client and transmits). Ownership lives in the
/// store alone: writes are accepted from the client the store names as the entity's owner.
/// (The authority learns of a transfer when the entity is next written, so a previous owner's
/// late writes are refused as [`WriteRejection::AuthorityMoved`] for the grace period counted
/// from then, not from the transfer itself.)
pub struct GameServer<T: Transport, I> {
    session: Server<T>,
    protocol: Protocol,
    store: Store,
    repl: ServerReplicator,
    authority: Authority,
    inputs: InputBuffer<I>,
    latest_input: HashMap<ClientId, I>,
    /// Which recent ticks each client's inputs were received for (to tell new inputs from
    /// redundant copies, whatever order they arrive in).
    received_inputs: HashMap<ClientId, ReceivedTicks>,
    /// Each client's `InputTimingStats::received` at its last TIMING report (a report goes out
    /// only after new inputs, or a stale one would keep moving its clock).
    reported: HashMap<ClientId, u64>,
    timing: InputTiming,
    local_inputs: Vec<(ClientId, I)>,
    events: EventServer,
    config: GameServerConfig,
    tick: Tick,
    started: bool,
    resolved: bool,
    replicated: bool,
    remote: Vec<ClientId>,
    local: Vec<ClientId>,
    queue: VecDeque<GameServerEvent<I>>,
    per_client_events: HashMap<ClientId, u32>,
    /// Clients disconnected by the endpoint whose `Left` waits for the session's event.
    pending_left: Vec<ClientId>,
    next_local_seq: u32,
    local_messages: VecDeque<(ClientId, Message)>,
    writable: Option<u64>,
    next_entity: u32,
    pkt: Vec<u8>,
    scratch: Vec<u32>,
    stats: GameServerStats,
    last_encode: HashMap<ClientId, EncodeStats>,
}

impl<T: Transport, I> std::fmt::Debug for GameServer<T, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GameServer")
            .field("tick", &self.tick)
            .field("clients", &self.remote.len())
            .field("entities", &self.store.len())
            .finish_non_exhaustive()
    }
}

/// Why [`GameServer::resume`] refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResumeError {
    /// The server already ran a tick; a game is resumed before the first update.
    #[error("a game can only be resumed before the server's first update")]
    AlreadyStarted,
    /// Tick 0 is before any game; resume from the last tick the snapshot is of.
    #[error("cannot resume at tick 0")]
    TickZero,
    /// The snapshot does not fit the store (another protocol, or over its limits).
    #[error("the snapshot does not fit the store: {0}")]
    Store(StoreError),
}

impl<T: Transport, I: Serialize + DeserializeOwned + Clone> GameServer<T, I> {
    /// A development-mode server (no connect tokens: for LAN play and tests) on `transport`.
    pub fn new(
        transport: T,
        protocol: &Protocol,
        config: GameServerConfig,
    ) -> Result<Self, ConfigError> {
        Self::build(transport, protocol, config, Key::random(), None)
    }

    /// A server that admits only clients with a connect token sealed by `tokens.key` (see
    /// [`crate::ConnectToken`]); `secret` seeds cookies and client ids.
    pub fn with_tokens(
        transport: T,
        protocol: &Protocol,
        config: GameServerConfig,
        secret: Key,
        tokens: TokenConfig,
    ) -> Result<Self, ConfigError> {
        Self::build(transport, protocol, config, secret, Some(tokens))
    }

    /// A development-mode server with a chosen `secret` (reproducible client ids).
    pub fn with_secret(
        transport: T,
        protocol: &Protocol,
        config: GameServerConfig,
        secret: Key,
    ) -> Result<Self, ConfigError> {
        Self::build(transport, protocol, config, secret, None)
    }

    fn build(
        transport: T,
        protocol: &Protocol,
        mut config: GameServerConfig,
        secret: Key,
        tokens: Option<TokenConfig>,
    ) -> Result<Self, ConfigError> {
        check_session(&config.session, protocol, config.max_input_bytes)?;
        let limit = config
            .session
            .connection
            .message_limit(UNRELIABLE)
            .unwrap_or(0)
            .saturating_sub(1);
        if config.replication.max_packet_bytes > limit {
            return Err(ConfigError::PacketBudgetTooLarge {
                budget: config.replication.max_packet_bytes,
                limit,
            });
        }
        if config.replication.max_packet_bytes < statewire_core::MIN_PACKET_BYTES {
            return Err(ConfigError::PacketBudgetTooSmall {
                budget: config.replication.max_packet_bytes,
                min: statewire_core::MIN_PACKET_BYTES,
            });
        }
        if config.replication.max_clients < config.session.max_clients {
            return Err(ConfigError::TooFewReplicationSlots {
                replication: config.replication.max_clients,
                session: config.session.max_clients,
            });
        }
        if config.max_inputs_per_client == 0
            || config.max_queued_events == 0
            || config.max_events_per_client_per_tick == 0
            || config.input_report_interval_ticks == 0
        {
            return Err(ConfigError::ZeroLimit);
        }
        config.session.protocol_id = protocol.fingerprint();
        let session_cfg = config.session.clone();
        let session = match tokens {
            Some(t) => Server::with_tokens(transport, session_cfg, secret, t)?,
            None => Server::new(transport, session_cfg, secret)?,
        };
        Ok(GameServer {
            session,
            protocol: protocol.clone(),
            store: Store::new(protocol.registry().clone(), config.store.clone()),
            repl: ServerReplicator::new(config.replication.clone()),
            authority: Authority::new(config.authority.clone()),
            inputs: InputBuffer::new(config.input_window_ticks, config.max_inputs_per_client),
            latest_input: HashMap::new(),
            received_inputs: HashMap::new(),
            reported: HashMap::new(),
            timing: InputTiming::new(config.input_timing.clone()),
            local_inputs: Vec::new(),
            events: EventServer::new(config.events.clone()),
            config,
            tick: Tick(0),
            started: false,
            resolved: true,
            replicated: false,
            remote: Vec::new(),
            local: Vec::new(),
            queue: VecDeque::new(),
            per_client_events: HashMap::new(),
            pending_left: Vec::new(),
            next_local_seq: 0,
            local_messages: VecDeque::new(),
            writable: None,
            next_entity: 1,
            pkt: Vec::new(),
            scratch: Vec::new(),
            stats: GameServerStats::default(),
            last_encode: HashMap::new(),
        })
    }

    /// Reads the network and starts the next tick: connections and messages become events,
    /// writes of owned entities are validated and applied, and the inputs stamped for the new
    /// tick come out as [`GameServerEvent::Input`]. Fails only if the transport closed; a
    /// client's own fault disconnects that client (with a reason) and is counted.
    pub fn update(&mut self, now: Duration) -> Result<(), TransportError> {
        self.session.update(now)?;
        self.begin_tick();
        while let Some(ev) = self.session.poll_event() {
            match ev {
                ServerEvent::Connected(id) => self.join(id),
                ServerEvent::Disconnected(id, reason) => {
                    // Only clients the game saw join hear of leaving (one refused at join
                    // never joined).
                    let known = self.remote.contains(&id)
                        || self.local.contains(&id)
                        || self.pending_left.contains(&id);
                    self.pending_left.retain(|&c| c != id);
                    self.forget(id);
                    if known {
                        self.push(GameServerEvent::Left(id, reason));
                    }
                }
                ServerEvent::Message(id, channel, bytes) => {
                    if self.handle_message(id, channel, &bytes).is_err() {
                        self.stats.malformed += 1;
                    }
                }
            }
        }
        for (c, i) in std::mem::take(&mut self.local_inputs) {
            let _ = self.inputs.push(c, self.tick, i);
        }
        for (client, input) in self.inputs.take(self.tick) {
            self.latest_input.insert(client, input.clone());
            self.push(GameServerEvent::Input {
                client,
                tick: self.tick,
                input,
            });
        }
        Ok(())
    }

    fn begin_tick(&mut self) {
        if self.started && !self.resolved {
            let _ = self.resolve_events(|_, _| false);
        }
        self.started = true;
        self.resolved = false;
        self.replicated = false;
        self.tick = self.tick.next();
        // Ticks only increase, so this cannot fail.
        let _ = self.store.begin_tick(self.tick);
        self.authority.begin_tick(self.tick);
        self.per_client_events.clear();
        self.stats.ticks += 1;
    }

    /// Queues an event the endpoint itself causes (joins, leaves, inputs, resolved events):
    /// at most a few per client per tick, so only a game that stops polling fills the queue.
    fn push(&mut self, ev: GameServerEvent<I>) {
        if self.queue.len() >= self.config.max_queued_events {
            self.stats.events_dropped += 1;
        } else {
            self.queue.push_back(ev);
        }
    }

    /// Queues an event a client's own messages cause (its writes, its user messages), within
    /// its per-tick budget, so one client cannot crowd the others' events out.
    fn push_from(&mut self, client: ClientId, ev: GameServerEvent<I>) {
        let n = self.per_client_events.entry(client).or_insert(0);
        if *n >= self.config.max_events_per_client_per_tick {
            self.stats.events_dropped += 1;
            return;
        }
        *n += 1;
        self.push(ev);
    }

    fn join(&mut self, id: ClientId) {
        if self.session.is_local(id) {
            self.local.push(id);
        } else {
            // The replicator refusing a client (full) costs only that client, which the game
            // never sees join.
            if self.repl.add_client(id).is_err() {
                self.stats.fault_disconnects += 1;
                self.session.disconnect_for_fault(id, Fault::OverBudget);
                return;
            }
            self.remote.push(id);
        }
        self.push(GameServerEvent::Joined(id));
    }

    /// Disconnects `id` for a fault of its own; the session reports it gone (a
    /// [`GameServerEvent::Left`] with the fault as the reason follows from that report).
    fn fault(&mut self, id: ClientId, fault: Fault) {
        self.stats.fault_disconnects += 1;
        self.session.disconnect_for_fault(id, fault);
        // Replicate nothing more to it; `Left` comes with the session's event.
        self.repl.remove_client(id);
        self.remote.retain(|&c| c != id);
        self.pending_left.push(id);
    }

    /// Frees everything kept for `id`.
    fn forget(&mut self, id: ClientId) {
        self.repl.remove_client(id);
        self.authority.remove_client(id);
        self.events.remove_client(id);
        self.inputs.remove_client(id);
        self.latest_input.remove(&id);
        self.received_inputs.remove(&id);
        self.reported.remove(&id);
        self.timing.remove_client(id);
        self.last_encode.remove(&id);
        self.local_inputs.retain(|(c, _)| *c != id);
        self.local_messages.retain(|(c, _)| *c != id);
        self.per_client_events.remove(&id);
        self.remote.retain(|&c| c != id);
        self.local.retain(|&c| c != id);
    }

    /// One input from a TICK message. Each input travels in a few messages (redundancy), so
    /// only its first copy counts, whatever order the messages arrive in: an input is new if
    /// no input for its tick was received yet ([`ReceivedTicks`], the last 64 ticks). A new
    /// input for a tick not yet run goes to the buffer and its earliness is measured; one
    /// whose tick already ran (at most 64 ticks ago) is late: measured, counted and dropped.
    /// Anything older or beyond the window goes to the buffer, which refuses and counts it.
    fn take_input(&mut self, id: ClientId, tick: Tick, raw: &[u8]) {
        let seen = self.received_inputs.entry(id).or_default();
        match seen.contains(tick) {
            Some(true) => return,
            Some(false) if self.tick.is_after(tick) => {
                seen.insert(tick);
                self.stats.inputs_received += 1;
                self.stats.inputs_late += 1;
                let _ = self.timing.on_input(id, tick, self.tick);
                return;
            }
            _ => {}
        }
        let Ok(input) = postcard::from_bytes::<I>(raw) else {
            self.stats.malformed += 1;
            return;
        };
        // The buffer refuses (and counts) inputs outside its window; only inputs it holds
        // count as received.
        if self.inputs.push(id, tick, input).is_ok() {
            if let Some(seen) = self.received_inputs.get_mut(&id) {
                seen.insert(tick);
            }
            self.stats.inputs_received += 1;
            let _ = self.timing.on_input(id, tick, self.tick);
        }
    }

    fn handle_message(
        &mut self,
        id: ClientId,
        channel: crate::ChannelId,
        bytes: &[u8],
    ) -> Result<(), EnvelopeError> {
        let (&tag, body) = bytes.split_first().ok_or(EnvelopeError::Empty)?;
        match (tag, channel) {
            (envelope::TICK, UNRELIABLE) => {
                let m = envelope::decode_tick(body, self.config.max_input_bytes)?;
                if let Some(a) = m.ack {
                    // Unknown or stale acks are ignored by the replicator.
                    let _ = self.repl.handle_ack(id, a);
                }
                let mut tick = m.first_tick;
                for raw in m.inputs {
                    self.take_input(id, tick, raw);
                    tick = tick.next();
                }
                Ok(())
            }
            (envelope::WRITES, UNRELIABLE) => {
                let writes = decode_writes(
                    self.protocol.registry(),
                    body,
                    self.config.max_writes_per_message,
                )
                .map_err(|_| EnvelopeError::Writes)?;
                for w in &writes {
                    self.apply_write(id, w);
                }
                Ok(())
            }
            (envelope::PROPOSE, RELIABLE) => {
                let p = decode_proposal(body, id, self.events.config())
                    .map_err(|_| EnvelopeError::Proposal)?;
                // Refusals (rate, size) come back through take_rejections.
                let _ = self.events.propose(p);
                Ok(())
            }
            (envelope::USER, ch) => {
                let (index, msg) = envelope::decode_user(body)?;
                let info = self
                    .protocol
                    .channels()
                    .get(usize::from(index))
                    .ok_or(EnvelopeError::UnexpectedTag(tag))?;
                let expected = match info.delivery {
                    Delivery::Reliable => RELIABLE,
                    Delivery::Unreliable => UNRELIABLE,
                };
                // The size limit is checked before anything decodes the message.
                if ch != expected || msg.len() > info.max_bytes {
                    return Err(EnvelopeError::InputsTooLarge);
                }
                self.push_from(
                    id,
                    GameServerEvent::Message(
                        id,
                        Message {
                            channel: index,
                            bytes: msg.to_vec(),
                        },
                    ),
                );
                Ok(())
            }
            _ => Err(EnvelopeError::UnexpectedTag(tag)),
        }
    }

    fn apply_write(&mut self, client: ClientId, w: &StateWrite) {
        // Ownership is the store's; the authority table follows it (keeping its record of
        // transfers for the grace period).
        sync_owner(&mut self.authority, w.entity, self.store.owner(w.entity));
        self.scratch.clear();
        // The game's policy first, so a refused component costs no write budget.
        let verdict = match self.writable {
            Some(mask) if w.component.0 >= 64 || mask & (1 << w.component.0) == 0 => {
                Err(WriteRefusal::NotWritable)
            }
            _ => Ok(()),
        };
        let verdict = verdict.and_then(|()| {
            self.authority
                .accept_write(self.protocol.registry(), client, w, &mut self.scratch)
                .map_err(WriteRefusal::from)
        });
        // A write changes a component the entity has; it never adds one.
        let verdict = verdict.and_then(|()| {
            if self.store.component_view(w.entity, w.component).is_none() {
                return Err(WriteRefusal::NoSuchComponent);
            }
            self.store
                .set_quantized(w.entity, w.component, &self.scratch)
                .map_err(|_| WriteRefusal::Authority(WriteRejection::UnknownEntity))
        });
        match verdict {
            Ok(()) => {
                self.stats.writes_applied += 1;
                self.push_from(
                    client,
                    GameServerEvent::WriteApplied {
                        client,
                        entity: w.entity,
                        component: w.component,
                    },
                );
            }
            Err(reason) => {
                self.stats.writes_rejected += 1;
                self.push_from(
                    client,
                    GameServerEvent::WriteRejected {
                        client,
                        entity: w.entity,
                        reason,
                    },
                );
            }
        }
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<GameServerEvent<I>> {
        self.queue.pop_front()
    }

    /// Resolves this tick's proposals, each once, in a deterministic order: `decide` accepts
    /// or refuses each (it may change the store as it goes, so a later conflicting proposal
    /// sees the effect of an earlier one). Events the server itself [emitted](Self::emit) are
    /// accepted without asking. Accepted events come out as
    /// [`GameServerEvent::EventResolved`] and travel to every client with the snapshots;
    /// proposers of refused ones are told. If the game does not call this in a tick, the
    /// tick's client proposals are refused. Proposals stamped a little ahead of the server
    /// (`EventConfig::max_hold_ticks`, 32 by default) wait for their tick: a client's own
    /// simulation runs ahead, and a shot is judged when the server reaches the tick it was
    /// fired in.
    pub fn resolve_events(
        &mut self,
        mut decide: impl FnMut(&Proposal, &mut Store) -> bool,
    ) -> Vec<GameEvent> {
        self.resolved = true;
        let store = &mut self.store;
        let resolved = self.events.resolve(self.tick, |p| {
            p.proposer == Writer::Server || decide(p, store)
        });
        let resolved = resolved.to_vec();
        for e in &resolved {
            self.push(GameServerEvent::EventResolved(e.clone()));
        }
        for (client, seq) in self.events.take_rejections() {
            self.stats.proposals_rejected += 1;
            if self.session.is_local(client) {
                self.push(GameServerEvent::LocalProposalRefused { client, seq });
                continue;
            }
            if self
                .session
                .send(client, RELIABLE, &envelope::encode_refused(seq))
                .is_err()
            {
                self.stats.send_refused += 1;
            }
        }
        resolved
    }

    /// Proposes an event from the server itself (accepted at the next
    /// [`resolve_events`](Self::resolve_events)).
    pub fn emit(
        &mut self,
        kind: u16,
        entities: &[EntityId],
        data: &[u8],
    ) -> Result<(), EventRefused> {
        self.propose_as(Writer::Server, 0, kind, entities, data)
    }

    /// Proposes an event as the host's local player `client` (see [`GameHost`](super::GameHost)).
    /// Returns its sequence number: a refusal comes back as
    /// [`GameServerEvent::LocalProposalRefused`], an acceptance as the resolved event with it.
    pub fn propose_local(
        &mut self,
        client: ClientId,
        kind: u16,
        entities: &[EntityId],
        data: &[u8],
    ) -> Result<u32, EventRefused> {
        if !self.local.contains(&client) {
            return Err(EventRefused);
        }
        let seq = self.next_local_seq;
        self.next_local_seq = seq.wrapping_add(1);
        self.propose_as(Writer::Client(client), seq, kind, entities, data)?;
        Ok(seq)
    }

    fn propose_as(
        &mut self,
        proposer: Writer,
        seq: u32,
        kind: u16,
        entities: &[EntityId],
        data: &[u8],
    ) -> Result<(), EventRefused> {
        self.events
            .propose(Proposal {
                proposer,
                seq,
                tick: self.tick,
                kind,
                entities: EntityRefs::from_slice(entities),
                data: EventData::from_slice(data),
            })
            .map_err(|_| EventRefused)
    }

    /// Replicates the tick to every client (each within its interest and byte budget, with
    /// the events it has not acknowledged) and trims the event log to what every client has;
    /// the packets leave with [`flush`](Self::flush), which calls this if the game has not.
    /// A client that fell behind the event log is disconnected ([`Fault::FellBehind`]) and
    /// counted; the others go on. Once per tick; later calls in the same tick do nothing.
    pub fn replicate(&mut self) {
        if self.replicated {
            return;
        }
        self.replicated = true;
        if !self.resolved {
            let _ = self.resolve_events(|_, _| false);
        }
        self.repl.update(&mut self.store, Some(&self.events));
        let budget = self.config.replication.max_packet_bytes;
        let mut behind = Vec::new();
        let mut too_big = Vec::new();
        for i in 0..self.remote.len() {
            let id = self.remote[i];
            self.pkt.clear();
            self.pkt.push(envelope::STATE);
            match self
                .repl
                .encode_for_with_events(&self.store, id, &self.events, &mut self.pkt)
            {
                Ok(stats) => {
                    if stats.pending > 0 {
                        self.pkt[0] = envelope::PARTIAL;
                    }
                    let bytes = self.pkt.len() - 1;
                    if stats.over_budget || bytes > budget {
                        self.stats.budget_exceeded += 1;
                    }
                    self.stats.packets += 1;
                    self.stats.replication_bytes += bytes as u64;
                    self.stats.max_packet_bytes = self.stats.max_packet_bytes.max(bytes);
                    self.stats.records += stats.records as u64;
                    self.stats.deferred += stats.pending as u64;
                    self.stats.max_staleness_ticks = self
                        .stats
                        .max_staleness_ticks
                        .max(stats.max_staleness_ticks);
                    self.last_encode.insert(id, stats);
                    if self.session.send(id, UNRELIABLE, &self.pkt).is_err() {
                        self.stats.send_refused += 1;
                    }
                }
                // An event that cannot fit this client's budget at all.
                Err(ReplicationError::EventTooLarge { .. }) => too_big.push(id),
                // Fell behind the event log (or an inconsistency that only this client's
                // state shows): the client starts over if it reconnects.
                Err(_) => behind.push(id),
            }
        }
        if self.tick.0 % self.config.input_report_interval_ticks == 0 {
            for &id in &self.remote {
                let Some(t) = self.timing.stats(id) else {
                    continue;
                };
                if self.reported.get(&id) == Some(&t.received) {
                    continue;
                }
                self.reported.insert(id, t.received);
                let early = t.least_early as f32;
                if self
                    .session
                    .send(id, UNRELIABLE, &envelope::encode_timing(early))
                    .is_err()
                {
                    self.stats.send_refused += 1;
                }
            }
        }
        for id in behind {
            self.fault(id, Fault::FellBehind);
        }
        for id in too_big {
            self.fault(id, Fault::OverBudget);
        }
        if let Some(min) = self.repl.min_acked_event() {
            self.events.trim_through(min);
        } else if self.remote.is_empty() {
            // Nobody to deliver to: keep nothing.
            let next = self.events.next_id();
            if next.0 > 0 {
                self.events
                    .trim_through(statewire_core::EventId(next.0 - 1));
            }
        }
        let store = &self.store;
        self.authority.retain(|e| store.contains(e));
    }

    /// Replicates (if [`replicate`](Self::replicate) was not called this tick) and transmits
    /// everything queued.
    pub fn flush(&mut self, now: Duration) -> Result<(), TransportError> {
        self.replicate();
        self.session.flush(now)
    }

    /// Sends `message` on `channel` to `client`.
    pub fn send<M: Serialize>(
        &mut self,
        client: ClientId,
        channel: MessageChannel<M>,
        message: &M,
    ) -> Result<(), MessageError> {
        let mut out = vec![envelope::USER, channel.index];
        encode_message(channel, message, &mut out)?;
        if self.session.is_local(client) {
            self.push_local_message(client, channel.index, &out[2..]);
            return Ok(());
        }
        let ch = match channel.delivery {
            Delivery::Reliable => RELIABLE,
            Delivery::Unreliable => UNRELIABLE,
        };
        self.session
            .send(client, ch, &out)
            .map_err(|e| MessageError::Send(e.to_string()))
    }

    /// Sends `message` on `channel` to every client.
    pub fn send_to_all<M: Serialize>(
        &mut self,
        channel: MessageChannel<M>,
        message: &M,
    ) -> Result<(), MessageError> {
        let clients: Vec<ClientId> = self.remote.iter().chain(&self.local).copied().collect();
        let mut first = Ok(());
        for c in clients {
            if let Err(e) = self.send(c, channel, message) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    fn push_local_message(&mut self, client: ClientId, channel: u8, bytes: &[u8]) {
        // The host's player reads the server's state directly; messages to it wait for
        // `poll_local_message`.
        if self.local_messages.len() >= self.config.max_queued_events {
            self.stats.events_dropped += 1;
            return;
        }
        self.local_messages.push_back((
            client,
            Message {
                channel,
                bytes: bytes.to_vec(),
            },
        ));
    }

    /// Next message the server sent to a local player (the host's own), if any.
    pub fn poll_local_message(&mut self) -> Option<(ClientId, Message)> {
        self.local_messages.pop_front()
    }

    /// Adds the host's own player: a client like any other for the game (a
    /// [`GameServerEvent::Joined`] at the next update, inputs, proposals), whose view is the
    /// store itself, so nothing is replicated to it.
    pub fn add_local_player(&mut self) -> ClientId {
        self.session.add_local_client()
    }

    /// Adds the host's own player with the id `id` (see [`Server::add_local_client_as`]): a
    /// player who takes over as host keeps its id, so the entities it owns stay its own.
    pub fn add_local_player_as(&mut self, id: ClientId) -> Option<ClientId> {
        self.session.add_local_client_as(id)
    }

    /// Resumes a game another server ran: the store becomes `snapshot` (entities, owners and
    /// components, e.g. a client's [`GameClient::snapshot`](super::GameClient::snapshot)) as of
    /// `tick`, and the next [`update`](Self::update) starts the tick after it. This is how a
    /// new host continues after a host migration; what the old host changed after `tick` is
    /// lost. Only before the first update, and for a `tick` after 0.
    pub fn resume(&mut self, snapshot: &Snapshot, tick: Tick) -> Result<(), ResumeError> {
        if self.started {
            return Err(ResumeError::AlreadyStarted);
        }
        if tick.0 == 0 {
            return Err(ResumeError::TickZero);
        }
        self.store.begin_tick(tick).map_err(ResumeError::Store)?;
        self.authority.begin_tick(tick);
        self.store
            .apply_snapshot(snapshot)
            .map_err(ResumeError::Store)?;
        self.tick = tick;
        let top = self.store.entity_ids().map(|e| e.0).max().unwrap_or(0);
        self.next_entity = top.wrapping_add(1).max(1);
        Ok(())
    }

    /// The local player `client`'s input for the next tick.
    pub fn set_local_input(&mut self, client: ClientId, input: I) {
        if self.local.contains(&client) {
            self.local_inputs.retain(|(c, _)| *c != client);
            self.local_inputs.push((client, input));
        }
    }

    /// The input `client` sent for the current tick, or the latest before it (inputs that
    /// were lost or late leave the previous one in effect).
    #[must_use]
    pub fn input(&self, client: ClientId) -> Option<&I> {
        self.latest_input.get(&client)
    }

    /// Lets clients write only the components `ids` of the entities they own (default: every
    /// component). Other writes are refused with [`WriteRefusal::NotWritable`].
    pub fn set_client_writable(&mut self, ids: &[ComponentId]) {
        let mut mask = 0u64;
        for id in ids {
            if id.0 < 64 {
                mask |= 1 << id.0;
            }
        }
        self.writable = Some(mask);
    }

    /// Spawns an entity with a fresh id owned by `owner` (the client it belongs to may write
    /// it). Set its components with [`store_mut`](Self::store_mut).
    pub fn spawn(&mut self, owner: Owner) -> Result<EntityId, StoreError> {
        let mut id = EntityId(self.next_entity);
        // Ids the game chose itself are skipped.
        let mut guard = 0u32;
        while self.store.contains(id) && guard < 1_000_000 {
            id = EntityId(id.0.wrapping_add(1).max(1));
            guard += 1;
        }
        self.store.spawn(id, owner)?;
        self.next_entity = id.0.wrapping_add(1).max(1);
        Ok(id)
    }

    /// The replicated world.
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The replicated world, to record this tick's changes (spawn, set, despawn, owners,
    /// positions for interest).
    pub fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }

    /// Sets `client`'s replication packet budget (`None`: the configured
    /// `max_packet_bytes`); a budget over what the session's unreliable channel carries, or
    /// under [`statewire_core::MIN_PACKET_BYTES`], is refused.
    pub fn set_packet_budget(
        &mut self,
        client: ClientId,
        budget: Option<usize>,
    ) -> Result<(), ConfigError> {
        if let Some(b) = budget {
            let limit = self.config.replication.max_packet_bytes;
            if b > limit {
                return Err(ConfigError::PacketBudgetTooLarge { budget: b, limit });
            }
            if b < statewire_core::MIN_PACKET_BYTES {
                return Err(ConfigError::PacketBudgetTooSmall {
                    budget: b,
                    min: statewire_core::MIN_PACKET_BYTES,
                });
            }
        }
        self.repl
            .set_packet_budget(client, budget)
            .map_err(|_| ConfigError::UnknownClient(client))
    }

    /// The replicator, for per-client settings: [`ServerReplicator::set_viewer`], rooms,
    /// filters and weights (set budgets with [`set_packet_budget`](Self::set_packet_budget),
    /// which checks them against the session).
    pub fn replicator_mut(&mut self) -> &mut ServerReplicator {
        &mut self.repl
    }

    /// The replicator, read-only ([`ServerReplicator::in_view`], memory).
    #[must_use]
    pub fn replicator(&self) -> &ServerReplicator {
        &self.repl
    }

    /// The session server (addresses, RTTs, peer statistics, kicking).
    #[must_use]
    pub fn session(&self) -> &Server<T> {
        &self.session
    }

    /// The session server, mutably.
    pub fn session_mut(&mut self) -> &mut Server<T> {
        &mut self.session
    }

    /// The event server (the log, refusal counts).
    #[must_use]
    pub fn events(&self) -> &EventServer {
        &self.events
    }

    /// Write rejections counted by the authority.
    #[must_use]
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Inputs refused (too old, too far ahead, buffer full), everyone together.
    #[must_use]
    pub fn inputs_rejected(&self) -> u64 {
        self.inputs.total_rejected()
    }

    /// How early `client`'s inputs arrive, over the last [`InputTimingConfig::window`] inputs
    /// (and its late inputs, ever); `None` before its first input.
    #[must_use]
    pub fn input_timing(&self, client: ClientId) -> Option<InputTimingStats> {
        self.timing.stats(client)
    }

    /// The current tick (0 before the first update).
    #[must_use]
    pub fn tick(&self) -> Tick {
        self.tick
    }

    /// Connected remote clients, in join order.
    #[must_use]
    pub fn clients(&self) -> &[ClientId] {
        &self.remote
    }

    /// Local players (the host's own).
    #[must_use]
    pub fn local_players(&self) -> &[ClientId] {
        &self.local
    }

    /// What the last [`flush`](Self::flush) sent `client`.
    #[must_use]
    pub fn last_encode(&self, client: ClientId) -> Option<&EncodeStats> {
        self.last_encode.get(&client)
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> GameServerStats {
        self.stats
    }

    /// The protocol both ends share.
    #[must_use]
    pub fn protocol(&self) -> &Protocol {
        &self.protocol
    }

    /// Bytes held for replication: the store and the per-client records.
    #[must_use]
    pub fn replication_bytes(&self) -> usize {
        self.store.memory_bytes() + self.repl.memory_bytes()
    }

    /// The address clients connect to.
    #[must_use]
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.session.local_addr()
    }

    /// Ends `client`'s session (it is told); a [`GameServerEvent::Left`] follows.
    pub fn kick(&mut self, client: ClientId) -> bool {
        let kicked = self.session.kick(client);
        if kicked {
            // `Left` comes with the session's event at the next update.
            self.repl.remove_client(client);
            self.remote.retain(|&c| c != client);
            self.pending_left.push(client);
        }
        kicked
    }

    /// Tells every client the server is going away; call [`flush`](Self::flush) after it.
    pub fn shutdown(&mut self) {
        self.session.shutdown();
    }
}

/// A server event proposal was refused (too large, too many pending, or not a local player).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("event proposal refused (over the event limits, or not a local player)")]
pub struct EventRefused;

/// Brings the authority's record of `entity` in line with the store's owner `owner`.
fn sync_owner(authority: &mut Authority, entity: EntityId, owner: Option<Owner>) {
    match (owner, authority.owner(entity)) {
        (None, Some(_)) => authority.remove(entity),
        (Some(o), None) => authority.insert(entity, o),
        (Some(o), Some(held)) if o != held => {
            // A transfer: grant/revoke keep the previous owner's grace period.
            let _ = match o {
                Owner::Client(c) => authority.grant(entity, c),
                _ => authority.revoke(entity),
            };
        }
        _ => {}
    }
}

/// The ticks of one client's inputs received lately: a 64-tick bitmap anchored at the newest.
#[derive(Debug, Clone, Copy, Default)]
struct ReceivedTicks {
    newest: Option<Tick>,
    /// Bit `i`: an input for `newest - i` was received.
    bits: u64,
}

impl ReceivedTicks {
    /// `Some(received)` for a tick inside the window (or after it: not received); `None` for
    /// one older than the window, which cannot be told from a copy.
    fn contains(&self, tick: Tick) -> Option<bool> {
        let Some(newest) = self.newest else {
            return Some(false);
        };
        let back = newest.diff(tick);
        if back < 0 {
            return Some(false);
        }
        (back < 64).then(|| self.bits & (1u64 << back) != 0)
    }

    /// Marks `tick` received (moving the window forward if it is newer).
    fn insert(&mut self, tick: Tick) {
        let Some(newest) = self.newest else {
            self.newest = Some(tick);
            self.bits = 1;
            return;
        };
        let ahead = tick.diff(newest);
        if ahead > 0 {
            self.bits = if ahead >= 64 { 0 } else { self.bits << ahead };
            self.bits |= 1;
            self.newest = Some(tick);
        } else if -ahead < 64 {
            self.bits |= 1u64 << -ahead;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_ticks_tell_copies_from_late_and_reordered_inputs() {
        let mut r = ReceivedTicks::default();
        assert_eq!(r.contains(Tick(5)), Some(false));
        r.insert(Tick(10));
        // Reordered: 12 arrives before 11; 11 is still new, 10 and 12 are copies now.
        r.insert(Tick(12));
        assert_eq!(r.contains(Tick(11)), Some(false));
        assert_eq!(r.contains(Tick(10)), Some(true));
        assert_eq!(r.contains(Tick(12)), Some(true));
        r.insert(Tick(11));
        assert_eq!(r.contains(Tick(11)), Some(true));
        // Ahead of the newest: not received.
        assert_eq!(r.contains(Tick(13)), Some(false));
        // 63 back is inside the window, 64 back is not.
        r.insert(Tick(73));
        assert_eq!(r.contains(Tick(10)), Some(true));
        assert_eq!(r.contains(Tick(9)), None);
        // A jump past the window forgets everything before it.
        r.insert(Tick(500));
        assert_eq!(r.contains(Tick(73)), None);
        assert_eq!(r.contains(Tick(499)), Some(false));
        // Across the wrap of the tick counter.
        let mut w = ReceivedTicks::default();
        w.insert(Tick(u32::MAX));
        w.insert(Tick(1));
        assert_eq!(w.contains(Tick(0)), Some(false));
        assert_eq!(w.contains(Tick(u32::MAX)), Some(true));
    }
}
