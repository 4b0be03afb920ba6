//! The game client endpoint: session, replication, acks, inputs, writes and predicted events.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use statewire_core::authority::encode_writes;
use statewire_core::clock::{ClockConfig, TickAdvance, TickClock};
use statewire_core::events::{EntityRefs, EventData, EventSink, encode_proposal};
use statewire_core::interpolation::{DelayConfig, DelayController, RenderTime};
use statewire_core::{
    ClientConfig, ClientId, ClientReplicator, ComponentView, EntityId, GameEvent, IgnoreEvents,
    Owner, PredictionOutcome, Predictions, Replicate, Snapshot, StateWrite, Tick, WorldSink,
};
use statewire_transport::{Transport, TransportError};

use super::envelope;
use super::protocol::{Delivery, Message, MessageChannel, MessageError, Protocol, encode_message};
use super::{ConfigError, RELIABLE, UNRELIABLE, check_session};
use crate::client::{Client, ClientEvent, ClientTokenError};
use crate::config::{DisconnectReason, SessionConfig};
use crate::crypto::ConnectToken;

/// Settings of a [`GameClient`].
#[derive(Debug, Clone)]
pub struct GameClientConfig {
    /// The session. Its `protocol_id` is replaced by the [`Protocol::fingerprint`]. Default
    /// [`SessionConfig::default`].
    pub session: SessionConfig,
    /// Replication receiver. Default [`ClientConfig::default`].
    pub replication: ClientConfig,
    /// The server's tick rate, to turn the round-trip time into ticks when stamping inputs.
    /// Default 30.
    pub tick_rate_hz: u32,
    /// Before the tick clock is synchronised (no snapshot yet), ticks added to the round trip
    /// when stamping an input, so that it arrives before its tick despite jitter. Default 3.
    pub input_lead_ticks: u32,
    /// The tick clock that runs our simulation ahead of the server (see
    /// [`GameClient::advance`]). Its `tick_rate_hz` is replaced by
    /// [`tick_rate_hz`](Self::tick_rate_hz). Default [`ClockConfig::default`].
    pub clock: ClockConfig,
    /// The render clock of remote entities (see [`GameClient::render_time`]): how far
    /// behind the newest snapshot they are shown, adapted to jitter and loss. Its
    /// `tick_interval` is replaced by one tick of [`tick_rate_hz`](Self::tick_rate_hz).
    /// Default [`DelayConfig::default`] (100 ms to start, 50–500 ms).
    pub interpolation: DelayConfig,
    /// Inputs each TICK message carries (the newest and those before it), so that a lost
    /// packet costs no input; at most [`envelope::MAX_INPUTS_PER_MESSAGE`]. Default 3.
    pub input_redundancy: usize,
    /// Largest encoded input, in bytes (at most 255; must match the server's). Default 64.
    pub max_input_bytes: usize,
    /// Events waiting for [`GameClient::poll_event`]; beyond it new ones are dropped and
    /// counted. Default 65,536.
    pub max_queued_events: usize,
    /// Entities one proposal may name; must not exceed the server's
    /// `EventConfig::max_entities`. Default 8 (the server's default).
    pub max_event_entities: usize,
    /// Data bytes one proposal may carry; must not exceed the server's
    /// `EventConfig::max_data`. Default 64 (the server's default).
    pub max_event_data: usize,
    /// Proposals waiting for the server's answer; [`GameClient::propose`] refuses more.
    /// Default 256.
    pub max_open_predictions: usize,
    /// State writes per message; must not exceed the server's
    /// `GameServerConfig::max_writes_per_message`. Default 64 (the server's default).
    pub max_writes_per_message: usize,
    /// Development mode: the salt of the handshake (it seeds the attempt the server's cookie
    /// names). `None` (default): from the operating system's CSPRNG; `Some`: reproducible
    /// runs (tests, simulations).
    pub handshake_salt: Option<u64>,
}

impl Default for GameClientConfig {
    fn default() -> Self {
        GameClientConfig {
            session: SessionConfig::default(),
            replication: ClientConfig::default(),
            tick_rate_hz: 30,
            input_lead_ticks: 3,
            clock: ClockConfig::default(),
            interpolation: DelayConfig::default(),
            input_redundancy: 3,
            max_input_bytes: 64,
            max_queued_events: 65_536,
            max_event_entities: 8,
            max_event_data: 64,
            max_open_predictions: 256,
            max_writes_per_message: 64,
            handshake_salt: None,
        }
    }
}

/// What happened on a [`GameClient`]; drain with [`GameClient::poll_event`] after each
/// [`GameClient::update`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GameClientEvent {
    /// The handshake completed; this is our id.
    Connected(ClientId),
    /// The session is over (or never started), for this reason.
    Disconnected(DisconnectReason),
    /// An entity entered our view.
    Spawned(EntityId, Owner),
    /// An entity left our view (or the world).
    Despawned(EntityId),
    /// A resolved event, once, in order, in step with the entities it names.
    Event(GameEvent),
    /// The server accepted our proposal `seq` (the event also comes as [`Self::Event`]).
    Confirmed {
        /// Our sequence number, from [`GameClient::propose`].
        seq: u32,
    },
    /// The server refused our proposal `seq`: undo what was predicted.
    Rejected {
        /// Our sequence number.
        seq: u32,
    },
    /// A user message from the server.
    Message(Message),
}

/// Errors from [`GameClient::write`] and [`GameClient::propose`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientActionError {
    /// Not connected (yet, or any more).
    #[error("not connected")]
    NotConnected,
    /// The entity is not ours to write (by what the server last told us).
    #[error("entity {0} is not owned by this client")]
    NotOwned(EntityId),
    /// The component is not registered or its value does not fit its schema.
    #[error("component value: {0}")]
    Value(String),
    /// Over the proposal limits (`max_event_entities`, `max_event_data`).
    #[error("event proposal too large")]
    TooLarge,
    /// `max_open_predictions` proposals are waiting for the server's answer.
    #[error("too many proposals waiting for the server")]
    TooManyOpen,
}

/// Counters of a [`GameClient`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GameClientStats {
    /// Replication packets applied.
    pub packets: u64,
    /// Replication packets that failed to decode (nothing applied).
    pub decode_errors: u64,
    /// Other messages from the server that did not decode.
    pub malformed: u64,
    /// Messages the session refused to send.
    pub send_refused: u64,
    /// Inputs sent (each once, however many copies travel).
    pub inputs_sent: u64,
    /// Events dropped because the queue was full.
    pub events_dropped: u64,
}

/// A game client over transport `T` sending inputs of type `I`: owns the session
/// [`Client`], the [`ClientReplicator`] (our copy of the server's world), acknowledgements,
/// input stamping and sending, writes of the entities we own, and predicted event proposals.
///
/// One frame: [`update`](Self::update) (reads the network, applies snapshots), drain
/// [`poll_event`](Self::poll_event), [`advance`](Self::advance) and for each tick it hands
/// out [`set_input_at`](Self::set_input_at) (and predict with it), then
/// [`render_time`](Self::render_time) to show the others, any [`write`](Self::write)s,
/// [`propose`](Self::propose)s and [`send`](Self::send)s, then [`flush`](Self::flush). A game
/// that predicts nothing may call [`set_input`](Self::set_input) once per frame instead of
/// `advance`.
pub struct GameClient<T: Transport, I> {
    session: Client<T>,
    protocol: Protocol,
    repl: ClientReplicator,
    predictions: Predictions,
    config: GameClientConfig,
    queue: VecDeque<GameClientEvent>,
    /// Newest last: (tick, encoded input).
    recent: VecDeque<(Tick, Vec<u8>)>,
    writes: Vec<StateWrite>,
    /// The entities we own, ascending.
    owned: Vec<EntityId>,
    clock: TickClock,
    delay: DelayController,
    /// The newest tick [`GameClient::advance`] handed out.
    sim_tick: Option<Tick>,
    /// Inputs at the back of `recent` not yet in any TICK message.
    unsent: usize,
    /// Whether the newest applied snapshot carried every change of our view up to its tick.
    complete: bool,
    buf: Vec<u8>,
    stats: GameClientStats,
    _input: std::marker::PhantomData<fn(I)>,
}

impl<T: Transport, I> std::fmt::Debug for GameClient<T, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GameClient")
            .field("id", &self.session.id())
            .field("tick", &self.repl.tick())
            .field("entities", &self.repl.len())
            .finish_non_exhaustive()
    }
}

/// A sink that passes world changes to the game's and queues them as events.
struct Tee<'a, S: ?Sized> {
    user: &'a mut S,
    queue: &'a mut VecDeque<GameClientEvent>,
    predictions: &'a mut Predictions,
    me: Option<ClientId>,
    max: usize,
    dropped: &'a mut u64,
    /// The entities we own, ascending, kept up to date from the packet's changes.
    owned: &'a mut Vec<EntityId>,
}

impl<S: ?Sized> Tee<'_, S> {
    fn note_owner(&mut self, id: EntityId, owner: Option<Owner>) {
        let mine = self.me.is_some_and(|me| owner == Some(Owner::Client(me)));
        match (self.owned.binary_search(&id), mine) {
            (Err(at), true) => self.owned.insert(at, id),
            (Ok(at), false) => {
                self.owned.remove(at);
            }
            _ => {}
        }
    }

    fn push(&mut self, ev: GameClientEvent) {
        if self.queue.len() >= self.max {
            *self.dropped += 1;
        } else {
            self.queue.push_back(ev);
        }
    }
}

impl<S: WorldSink + ?Sized> WorldSink for Tee<'_, S> {
    fn spawn(&mut self, id: EntityId, owner: Owner) {
        self.user.spawn(id, owner);
        self.note_owner(id, Some(owner));
        self.push(GameClientEvent::Spawned(id, owner));
    }
    fn despawn(&mut self, id: EntityId) {
        self.user.despawn(id);
        self.note_owner(id, None);
        self.push(GameClientEvent::Despawned(id));
    }
    fn set_owner(&mut self, id: EntityId, owner: Owner) {
        self.user.set_owner(id, owner);
        self.note_owner(id, Some(owner));
    }
    fn insert(&mut self, id: EntityId, component: ComponentView<'_>) {
        self.user.insert(id, component);
    }
    fn remove(&mut self, id: EntityId, component: ComponentView<'_>) {
        self.user.remove(id, component);
    }
}

impl<S: EventSink + ?Sized> EventSink for Tee<'_, S> {
    fn event(&mut self, event: &GameEvent) {
        self.user.event(event);
        if let Some(me) = self.me {
            self.predictions.on_event(me, event);
        }
        self.push(GameClientEvent::Event(event.clone()));
    }
}

/// A [`WorldSink`] that ignores everything (the client's state is in its replicator).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSink;

impl WorldSink for NoSink {
    fn spawn(&mut self, _: EntityId, _: Owner) {}
    fn despawn(&mut self, _: EntityId) {}
    fn insert(&mut self, _: EntityId, _: ComponentView<'_>) {}
    fn remove(&mut self, _: EntityId, _: ComponentView<'_>) {}
}

impl EventSink for NoSink {
    fn event(&mut self, _: &GameEvent) {}
}

impl<T: Transport, I: Serialize + DeserializeOwned> GameClient<T, I> {
    /// Connects in development mode to the server at `server` (see
    /// [`GameServer::new`](super::GameServer::new)).
    pub fn new(
        transport: T,
        server: SocketAddr,
        protocol: &Protocol,
        config: GameClientConfig,
        now: Duration,
    ) -> Result<Self, ConfigError> {
        let session_cfg = Self::check(protocol, &config)?;
        let salt = config
            .handshake_salt
            .unwrap_or_else(|| getrandom::u64().unwrap_or(0x5eed));
        let session =
            Client::new(transport, server, session_cfg, now, salt).map_err(ConfigError::Session)?;
        Ok(Self::with_session(session, protocol, config))
    }

    /// Connects in development mode with the default settings
    /// ([`GameClientConfig::default`]).
    pub fn connect(
        transport: T,
        server: SocketAddr,
        protocol: &Protocol,
        now: Duration,
    ) -> Result<Self, ConfigError> {
        Self::new(
            transport,
            server,
            protocol,
            GameClientConfig::default(),
            now,
        )
    }

    /// Connects with a connect token (from the game's backend, e.g. a lobby).
    pub fn with_token(
        transport: T,
        server: SocketAddr,
        protocol: &Protocol,
        config: GameClientConfig,
        now: Duration,
        token: &ConnectToken,
    ) -> Result<Self, ConfigError> {
        let session_cfg = Self::check(protocol, &config)?;
        let session = Client::with_token(transport, server, session_cfg, now, token).map_err(
            |e| match e {
                ClientTokenError::Config(c) => ConfigError::Session(c),
                other => ConfigError::Token(other.to_string()),
            },
        )?;
        Ok(Self::with_session(session, protocol, config))
    }

    fn check(protocol: &Protocol, config: &GameClientConfig) -> Result<SessionConfig, ConfigError> {
        check_session(&config.session, protocol, config.max_input_bytes)?;
        if config.input_redundancy == 0
            || config.input_redundancy > envelope::MAX_INPUTS_PER_MESSAGE
        {
            return Err(ConfigError::InputRedundancy(config.input_redundancy));
        }
        if config.tick_rate_hz == 0
            || config.max_queued_events == 0
            || config.max_open_predictions == 0
            || config.max_writes_per_message == 0
        {
            return Err(ConfigError::ZeroLimit);
        }
        if config.max_event_entities > 255 || config.max_event_data > 255 {
            return Err(ConfigError::EventLimits);
        }
        Ok(SessionConfig {
            protocol_id: protocol.fingerprint(),
            ..config.session.clone()
        })
    }

    fn with_session(session: Client<T>, protocol: &Protocol, config: GameClientConfig) -> Self {
        let hz = config.tick_rate_hz.max(1);
        let clock = TickClock::new(ClockConfig {
            tick_rate_hz: hz,
            ..config.clock.clone()
        });
        let delay = DelayController::new(DelayConfig {
            tick_interval: Duration::from_secs(1) / hz,
            ..config.interpolation
        });
        GameClient {
            clock,
            delay,
            sim_tick: None,
            unsent: 0,
            complete: false,
            session,
            protocol: protocol.clone(),
            repl: ClientReplicator::new(config.replication.clone()),
            predictions: Predictions::new(),
            config,
            queue: VecDeque::new(),
            recent: VecDeque::new(),
            writes: Vec::new(),
            owned: Vec::new(),
            buf: Vec::new(),
            stats: GameClientStats::default(),
            _input: std::marker::PhantomData,
        }
    }

    /// Reads the network and applies what arrived to our copy of the world.
    pub fn update(&mut self, now: Duration) -> Result<(), TransportError> {
        self.update_with_events(now, &mut NoSink)
    }

    /// [`update`](Self::update), also passing every world change to `world` (an engine's
    /// world: spawn, insert, remove, despawn, in the order of [`WorldSink`]).
    pub fn update_with<S: WorldSink + ?Sized>(
        &mut self,
        now: Duration,
        world: &mut S,
    ) -> Result<(), TransportError> {
        self.update_with_events(now, &mut IgnoreEvents(world))
    }

    /// [`update_with`](Self::update_with), also passing each resolved event to `world` in
    /// its place among the changes of its packet (after the spawns and updates, before the
    /// despawns), as [`EventSink`] describes. Events also come out of
    /// [`poll_event`](Self::poll_event).
    pub fn update_with_events<S: WorldSink + EventSink + ?Sized>(
        &mut self,
        now: Duration,
        world: &mut S,
    ) -> Result<(), TransportError> {
        self.session.update(now)?;
        while let Some(ev) = self.session.poll_event() {
            match ev {
                ClientEvent::Connected(id) => self.push(GameClientEvent::Connected(id)),
                ClientEvent::Disconnected(r) => self.push(GameClientEvent::Disconnected(r)),
                ClientEvent::Message(channel, bytes) => {
                    self.handle_message(now, channel, &bytes, world);
                }
            }
        }
        while let Some(o) = self.predictions.poll_outcome() {
            match o {
                PredictionOutcome::Confirmed { seq, .. } => {
                    self.push(GameClientEvent::Confirmed { seq });
                }
                PredictionOutcome::Rejected { seq } => self.push(GameClientEvent::Rejected { seq }),
                _ => {}
            }
        }
        Ok(())
    }

    fn push(&mut self, ev: GameClientEvent) {
        if self.queue.len() >= self.config.max_queued_events {
            self.stats.events_dropped += 1;
        } else {
            self.queue.push_back(ev);
        }
    }

    fn handle_message<S: WorldSink + EventSink + ?Sized>(
        &mut self,
        now: Duration,
        channel: crate::ChannelId,
        bytes: &[u8],
        world: &mut S,
    ) {
        let Some((&tag, body)) = bytes.split_first() else {
            self.stats.malformed += 1;
            return;
        };
        match (tag, channel) {
            (envelope::STATE | envelope::PARTIAL, UNRELIABLE) => {
                let mut tee = Tee {
                    user: world,
                    queue: &mut self.queue,
                    predictions: &mut self.predictions,
                    me: self.session.id(),
                    max: self.config.max_queued_events,
                    dropped: &mut self.stats.events_dropped,
                    owned: &mut self.owned,
                };
                match self
                    .repl
                    .handle_packet_with_events(self.protocol.registry(), body, &mut tee)
                {
                    Ok(applied) => {
                        self.stats.packets += 1;
                        let tick = match applied {
                            statewire_core::Applied::Applied(h) => {
                                self.complete = tag == envelope::STATE;
                                Some(h.tick)
                            }
                            statewire_core::Applied::Stale(h) => Some(h.tick),
                            _ => None,
                        };
                        // Late and duplicated snapshots are samples of the path too.
                        if let Some(tick) = tick {
                            // Not the configured initial guess: a clock started on a wrong
                            // RTT takes seconds to drift to the right lead.
                            if let Some(rtt) = self.session.measured_rtt() {
                                self.clock.on_server_tick(now, tick, rtt);
                            }
                            self.delay.on_snapshot(tick, now);
                        }
                    }
                    Err(_) => self.stats.decode_errors += 1,
                }
            }
            (envelope::TIMING, UNRELIABLE) => match envelope::decode_timing(body) {
                Ok(early_by) => self.clock.on_input_report(now, early_by),
                Err(_) => self.stats.malformed += 1,
            },
            (envelope::REFUSED, RELIABLE) => match envelope::decode_refused(body) {
                Ok(seq) => self.predictions.on_rejected(seq),
                Err(_) => self.stats.malformed += 1,
            },
            (envelope::USER, ch) => {
                let ok = envelope::decode_user(body).ok().and_then(|(index, msg)| {
                    let info = self.protocol.channels().get(usize::from(index))?;
                    let expected = match info.delivery {
                        Delivery::Reliable => RELIABLE,
                        Delivery::Unreliable => UNRELIABLE,
                    };
                    (ch == expected && msg.len() <= info.max_bytes).then(|| Message {
                        channel: index,
                        bytes: msg.to_vec(),
                    })
                });
                match ok {
                    Some(m) => self.push(GameClientEvent::Message(m)),
                    None => self.stats.malformed += 1,
                }
            }
            _ => self.stats.malformed += 1,
        }
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<GameClientEvent> {
        self.queue.pop_front()
    }

    /// Moves our tick clock to `now` and says which ticks to simulate: the clock runs ahead
    /// of the server by half the round trip plus a margin for jitter (and the server's
    /// reports of how early our inputs arrive), so that an input made for tick `T` now
    /// arrives just before the server runs `T`. Call it once per frame; for each tick it
    /// hands out, make the tick's input ([`set_input_at`](Self::set_input_at)) and predict
    /// what we control with it. It drifts by at most a few percent to follow the estimates
    /// and jumps only at the start and after a large error ([`TickAdvance::resynced`]).
    /// Nothing is due before the first snapshot.
    pub fn advance(&mut self, now: Duration) -> TickAdvance {
        let a = self.clock.advance(now);
        // After the clock went back, inputs for ticks already stamped would fold onto the
        // newest: start a new run (the server keeps what it has for those ticks).
        if a.resynced && a.count > 0 && self.sim_tick.is_some_and(|s| !a.first.is_after(s)) {
            self.recent.clear();
            self.unsent = 0;
        }
        if a.count > 0 {
            self.sim_tick = Some(Tick(a.first.0.wrapping_add(a.count - 1)));
        }
        a
    }

    /// Where remote entities should be shown at `now`: a server tick and fraction some way
    /// behind the newest snapshot, chosen from the measured jitter and loss so that the two
    /// snapshots around it have usually arrived (interpolate between them; when the newer
    /// one is late, extrapolate briefly). Moves smoothly (a few percent faster or slower than
    /// real time) and jumps only at the start and after a stall. Call it once per frame;
    /// `None` before the first snapshot. Also the view time to claim hits at (see
    /// `statewire_core::lag_compensation`).
    pub fn render_time(&mut self, now: Duration) -> Option<RenderTime> {
        self.delay.advance(now)
    }

    /// Whether the newest snapshot applied carried every change of our view up to its tick
    /// (or the server had the rest in flight). When the server's byte budget left changes for
    /// later packets, this is `false`: the entities that packet did not carry may be behind
    /// its tick, so an interpolator should take samples at this tick only from the entities
    /// the packet changed (the others' next change fills the gap smoothly).
    #[must_use]
    pub fn snapshot_complete(&self) -> bool {
        self.complete
    }

    /// The tick clock (its lead, RTT and jitter estimates and counters).
    pub fn clock(&self) -> &TickClock {
        &self.clock
    }

    /// The render clock of remote entities (its delay, jitter and loss estimates).
    pub fn render_clock(&self) -> &DelayController {
        &self.delay
    }

    /// The tick the next input is stamped for. Once [`advance`](Self::advance) handed out a
    /// tick, the newest one it handed out. Before that, the newest server tick we hold plus
    /// the round trip in ticks plus [`GameClientConfig::input_lead_ticks`].
    #[must_use]
    pub fn input_tick(&self) -> Option<Tick> {
        if self.sim_tick.is_some() {
            return self.sim_tick;
        }
        let newest = self.repl.tick()?;
        let hz = f64::from(self.config.tick_rate_hz);
        let rtt_ticks = self
            .session
            .rtt()
            .map_or(6, |r| (r.as_secs_f64() * hz).ceil() as u32);
        Some(Tick(
            newest
                .0
                .wrapping_add(rtt_ticks)
                .wrapping_add(self.config.input_lead_ticks),
        ))
    }

    /// Sets our input, stamped for [`input_tick`](Self::input_tick); it leaves with the next
    /// [`flush`](Self::flush) (and, for redundancy, with the few after it). Setting it again
    /// before the stamp moves replaces it. Ignored until we hold a first snapshot.
    pub fn set_input(&mut self, input: &I) {
        let Some(tick) = self.input_tick() else {
            return;
        };
        self.set_input_at(tick, input);
    }

    /// Sets our input for `tick` (one that [`advance`](Self::advance) handed out): when a
    /// frame covers several ticks, set each one's input in order. Inputs for consecutive
    /// ticks travel together; a gap (a skipped tick) starts a new run. Setting the same tick
    /// again before it leaves replaces it. Ignored until we hold a first snapshot, and if the
    /// input encodes to more than [`GameClientConfig::max_input_bytes`].
    pub fn set_input_at(&mut self, tick: Tick, input: &I) {
        if self.repl.tick().is_none() {
            return;
        }
        let Ok(bytes) = postcard::to_allocvec(input) else {
            return;
        };
        if bytes.len() > self.config.max_input_bytes {
            return;
        }
        let added = stamp(
            &mut self.recent,
            tick,
            bytes,
            envelope::MAX_INPUTS_PER_MESSAGE,
        );
        if added > 0 {
            self.stats.inputs_sent += 1;
        }
        // Everything not sent yet stays (a frame may cover several ticks), plus the copies;
        // a replaced newest input must go out again.
        self.unsent = (self.unsent + added).max(1);
        let keep = self
            .unsent
            .max(self.config.input_redundancy)
            .min(envelope::MAX_INPUTS_PER_MESSAGE);
        while self.recent.len() > keep {
            self.recent.pop_front();
        }
    }

    /// Queues a write of `value` to `entity`, which we own; it leaves with the next
    /// [`flush`](Self::flush). The server validates it (owner, rate, range) and applies it.
    pub fn write<C: Replicate>(
        &mut self,
        entity: EntityId,
        value: &C,
    ) -> Result<(), ClientActionError> {
        let mut values = Vec::new();
        let component = self
            .protocol
            .registry()
            .raw_values(value, &mut values)
            .map_err(|e| ClientActionError::Value(e.to_string()))?;
        self.write_raw(StateWrite {
            entity,
            component,
            values,
        })
    }

    /// [`write`](Self::write) with the values already taken apart
    /// ([`Registry::raw_values`](statewire_core::Registry::raw_values)): for engine adapters
    /// that hold components by id.
    pub fn write_raw(&mut self, write: StateWrite) -> Result<(), ClientActionError> {
        let me = self.session.id().ok_or(ClientActionError::NotConnected)?;
        if self.repl.owner(write.entity) != Some(Owner::Client(me)) {
            return Err(ClientActionError::NotOwned(write.entity));
        }
        // A newer write of the same component replaces a queued one.
        self.writes
            .retain(|w| !(w.entity == write.entity && w.component == write.component));
        self.writes.push(write);
        Ok(())
    }

    /// Proposes an event (`kind` and `data` are the game's), predicted at once: the outcome
    /// comes back as [`GameClientEvent::Confirmed`] or [`GameClientEvent::Rejected`] with
    /// the returned sequence number.
    pub fn propose(
        &mut self,
        kind: u16,
        entities: &[EntityId],
        data: &[u8],
    ) -> Result<u32, ClientActionError> {
        let tick = self.repl.tick().unwrap_or_default();
        self.propose_at(tick, kind, entities, data)
    }

    /// [`propose`](Self::propose), stamped with `tick` instead of the newest server tick we
    /// hold: typically the tick of our own simulation the event happened in (a shot fired
    /// at [`input_tick`](Self::input_tick)). A server with
    /// `EventConfig::max_hold_ticks` (the endpoint's default holds 32 ticks) keeps a proposal
    /// stamped ahead of it until it simulates that tick, so a lag-compensated shot is judged
    /// with the shooter where it was when it fired. Keep the server's hold at least as long
    /// as the clock's lead can get (`ClockConfig::max_lead`, 1 s = 30 ticks by default):
    /// a proposal stamped further ahead is judged at once, before its tick exists.
    pub fn propose_at(
        &mut self,
        tick: Tick,
        kind: u16,
        entities: &[EntityId],
        data: &[u8],
    ) -> Result<u32, ClientActionError> {
        let me = self.session.id().ok_or(ClientActionError::NotConnected)?;
        if entities.len() > self.config.max_event_entities
            || data.len() > self.config.max_event_data
        {
            return Err(ClientActionError::TooLarge);
        }
        if self.predictions.open().count() >= self.config.max_open_predictions {
            return Err(ClientActionError::TooManyOpen);
        }
        let p = self.predictions.predict(
            me,
            tick,
            kind,
            EntityRefs::from_slice(entities),
            EventData::from_slice(data),
        );
        self.buf.clear();
        self.buf.push(envelope::PROPOSE);
        encode_proposal(&p, &mut self.buf);
        if self.session.send(RELIABLE, &self.buf).is_err() {
            self.stats.send_refused += 1;
            self.predictions.on_rejected(p.seq);
        }
        Ok(p.seq)
    }

    /// Sends `message` on `channel` to the server.
    pub fn send<M: Serialize>(
        &mut self,
        channel: MessageChannel<M>,
        message: &M,
    ) -> Result<(), MessageError> {
        let mut out = vec![envelope::USER, channel.index];
        encode_message(channel, message, &mut out)?;
        let ch = match channel.delivery {
            Delivery::Reliable => RELIABLE,
            Delivery::Unreliable => UNRELIABLE,
        };
        self.session
            .send(ch, &out)
            .map_err(|e| MessageError::Send(e.to_string()))
    }

    /// Sends what this frame produced (the acknowledgement with our recent inputs, queued
    /// writes) and transmits.
    pub fn flush(&mut self, now: Duration) -> Result<(), TransportError> {
        if self.session.is_connected() {
            let first = self.recent.front().map_or(Tick(0), |r| r.0);
            let inputs: Vec<&[u8]> = self.recent.iter().map(|(_, b)| b.as_slice()).collect();
            envelope::encode_tick(self.repl.ack(), first, &inputs, &mut self.buf);
            if self.session.send(UNRELIABLE, &self.buf).is_err() {
                self.stats.send_refused += 1;
            }
            self.unsent = 0;
            while self.recent.len() > self.config.input_redundancy {
                self.recent.pop_front();
            }
            // Writes in messages that fit the unreliable channel.
            let limit = self
                .config
                .session
                .connection
                .message_limit(UNRELIABLE)
                .unwrap_or(0);
            let mut start = 0;
            while start < self.writes.len() {
                let mut end = start + 1;
                let mut size = 3 + write_len(&self.writes[start]);
                while end < self.writes.len()
                    && end - start < self.config.max_writes_per_message
                    && size + write_len(&self.writes[end]) <= limit
                {
                    size += write_len(&self.writes[end]);
                    end += 1;
                }
                self.buf.clear();
                self.buf.push(envelope::WRITES);
                encode_writes(&self.writes[start..end], &mut self.buf);
                if self.session.send(UNRELIABLE, &self.buf).is_err() {
                    self.stats.send_refused += 1;
                }
                start = end;
            }
        }
        self.writes.clear();
        self.session.flush(now)
    }

    /// Leaves: the server is told at once.
    pub fn disconnect(&mut self) {
        self.session.disconnect();
    }

    /// Our id, once connected.
    #[must_use]
    pub fn id(&self) -> Option<ClientId> {
        self.session.id()
    }

    /// Whether the handshake completed and the session is live.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.session.is_connected()
    }

    /// The server tick of the newest state we hold.
    #[must_use]
    pub fn tick(&self) -> Option<Tick> {
        self.repl.tick()
    }

    /// Component `C` of `entity` in our copy of the world.
    #[must_use]
    pub fn get<C: Replicate>(&self, entity: EntityId) -> Option<C> {
        self.repl.component(self.protocol.registry(), entity)
    }

    /// Whether `entity` is in our view.
    #[must_use]
    pub fn contains(&self, entity: EntityId) -> bool {
        self.repl.contains(entity)
    }

    /// The entities we own, ascending (kept up to date as packets arrive: no scan).
    #[must_use]
    pub fn owned(&self) -> &[EntityId] {
        &self.owned
    }

    /// Our copy of the world, as a snapshot.
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        self.repl.snapshot()
    }

    /// The replication receiver (state, late packets, memory).
    #[must_use]
    pub fn replicator(&self) -> &ClientReplicator {
        &self.repl
    }

    /// The session client (state, RTT, statistics).
    #[must_use]
    pub fn session(&self) -> &Client<T> {
        &self.session
    }

    /// The session client, mutably (e.g. its transport: `session_mut().transport_mut()`).
    pub fn session_mut(&mut self) -> &mut Client<T> {
        &mut self.session
    }

    /// Round-trip time estimate.
    #[must_use]
    pub fn rtt(&self) -> Option<Duration> {
        self.session.rtt()
    }

    /// Predictions still waiting for the server.
    pub fn open_predictions(&self) -> impl Iterator<Item = &statewire_core::Proposal> + '_ {
        self.predictions.open()
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> GameClientStats {
        self.stats
    }

    /// The protocol both ends share.
    #[must_use]
    pub fn protocol(&self) -> &Protocol {
        &self.protocol
    }
}

/// Adds `bytes` as the input for `tick` to `recent` (inputs for consecutive ticks, newest
/// last; at most `keep` after the caller trims): an input is never stamped before the newest
/// (it replaces it), ticks skipped since keep the previous input (as the server would), and
/// after a gap of `keep` ticks or more nothing older is kept. Returns how many ticks were
/// added (0 when the newest was replaced).
fn stamp(recent: &mut VecDeque<(Tick, Vec<u8>)>, tick: Tick, bytes: Vec<u8>, keep: usize) -> usize {
    let mut tick = tick;
    let mut added = 1;
    if let Some(&(last, _)) = recent.back() {
        if !tick.is_after(last) {
            // The RTT estimate fell: replace the newest instead of stamping backwards.
            tick = last;
            recent.pop_back();
            added = 0;
        } else if tick.diff(last) as usize >= keep {
            // A stall longer than the copies span: nothing before it is worth resending.
            recent.clear();
        } else {
            let prev = recent.back().map(|(_, b)| b.clone()).unwrap_or_default();
            let mut t = last.next();
            while tick.is_after(t) {
                recent.push_back((t, prev.clone()));
                added += 1;
                t = t.next();
            }
        }
    }
    recent.push_back((tick, bytes));
    added
}

/// Encoded size of one write (see `statewire_core::authority::encode_writes`).
fn write_len(w: &StateWrite) -> usize {
    use statewire_core::RawValue;
    6 + w
        .values
        .iter()
        .map(|v| match v {
            RawValue::F32(_) | RawValue::Enum(_) => 4,
            RawValue::Quat(_) => 16,
            RawValue::Int(_) => 8,
            RawValue::Bool(_) => 1,
            // Unknown future kinds: the widest.
            _ => 16,
        })
        .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticks(r: &VecDeque<(Tick, Vec<u8>)>) -> Vec<u32> {
        r.iter().map(|(t, _)| t.0).collect()
    }

    #[test]
    fn inputs_are_stamped_for_consecutive_ticks() {
        let mut r = VecDeque::new();
        let keep = 3;
        let push = |r: &mut VecDeque<_>, t: u32, b: u8| {
            let added = stamp(r, Tick(t), vec![b], keep);
            while r.len() > keep {
                r.pop_front();
            }
            added > 0
        };
        assert!(push(&mut r, 98, 1));
        assert!(push(&mut r, 99, 2));
        assert!(push(&mut r, 100, 3));
        assert_eq!(ticks(&r), [98, 99, 100]);
        // The same tick again, or an earlier one: replaces the newest, not a new input.
        assert!(!push(&mut r, 100, 4));
        assert!(!push(&mut r, 97, 5));
        assert_eq!(ticks(&r), [98, 99, 100]);
        assert_eq!(r.back().map(|(_, b)| b[0]), Some(5));
        // A skipped tick keeps the previous input.
        assert!(push(&mut r, 102, 6));
        assert_eq!(ticks(&r), [100, 101, 102]);
        assert_eq!(r[1].1, vec![5]);
        // A stall: only the new input, at its own tick (the copies stay consecutive).
        assert!(push(&mut r, 250, 7));
        assert_eq!(ticks(&r), [250]);
        assert!(push(&mut r, 251, 8));
        assert_eq!(ticks(&r), [250, 251]);
        // Across the wrap of the tick counter.
        let mut w = VecDeque::new();
        push(&mut w, u32::MAX, 1);
        push(&mut w, 1, 2);
        assert_eq!(ticks(&w), [u32::MAX, 0, 1]);
    }
}
