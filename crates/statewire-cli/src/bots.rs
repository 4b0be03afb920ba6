//! The sim game's bot client on top of statewire's
//! [`GameClient`](statewire::endpoint::GameClient) endpoint, which owns the session, the
//! replicated state, acknowledgements, input stamping, writes and predicted proposals.
//!
//! What is left here is the bot, played as a game client would: its tick clock runs ahead of
//! the server and it predicts its own player from its inputs (reconciling with each
//! authoritative state), it shows everyone else interpolated on the render clock, aims its own
//! player (a write the server validates), and now and then shoots at an enemy where it sees it
//! (a lag-compensated claim the server judges at that view time); the adversary instead
//! crafts what an attacker who knows the wire format would send: inputs stamped ten seconds
//! off, writes of entities it does not own, NaN, ten times the write rate, impossible kills and
//! malformed messages.

use std::collections::VecDeque;
use std::time::Duration;

use hashbrown::HashMap;
use statewire::endpoint::{GameClient, GameClientConfig, GameClientEvent};
use statewire::{ChannelId, ConnectToken, DisconnectReason};
use statewire_core::authority::encode_writes;
use statewire_core::interpolation::{InterpolationConfig, Interpolator, RenderTime, SampleMode};
use statewire_core::prediction::{PredictionConfig, Predictor, Simulate};
use statewire_core::{ComponentCoding, EntityId, Registry, StateWrite, Tick};
use statewire_transport::Transport;

use crate::game::{
    Bot, ClientWorld, ENEMY_RADIUS, Facing, Input, KILL, Kind, MAX_SPEED, Position, SHOT_RANGE,
    ShotData, TICK_HZ, move_player, shot_distance,
};
use crate::rules::{
    Channels, GameRules, MAX_REWIND_TICKS, NetGameError, protocol, snapshot_digest,
};

/// A correction of the local player larger than this (metres) counts as visible in
/// `corrections_visible`: about a tenth of a player's width, and over three position steps.
pub(crate) const VISIBLE_CORRECTION: f32 = 0.05;
/// Predictions kept per bot for the simulation to compare with the server (ticks).
const PREDICTION_LOG: usize = 128;

/// The player's movement as the predictor needs it: the game's own step, bit for bit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlayerSim {
    arena: f32,
}

impl Simulate for PlayerSim {
    type State = Position;
    type Input = Input;
    fn step(&self, state: &Position, input: &Input) -> Position {
        move_player(*state, *input, self.arena)
    }
    fn distance(&self, a: &Position, b: &Position) -> f32 {
        ((a.x - b.x).powi(2) + (a.y - b.y).powi(2)).sqrt()
    }
    fn blend(&self, from: &Position, to: &Position, t: f32) -> Position {
        Position {
            x: from.x + (to.x - from.x) * t,
            y: from.y + (to.y - from.y) * t,
        }
    }
}

/// What a bot measured of its own play.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SmoothStats {
    /// Reconciliations whose correction was larger than [`VISIBLE_CORRECTION`].
    pub(crate) corrections_visible: u64,
    /// Corrections shown at once (over the predictor's snap distance) instead of smoothed.
    pub(crate) snaps: u64,
    /// Frames rendered with remote entities, and of those, frames where one was shown past
    /// its newest snapshot (extrapolated or held).
    pub(crate) frames: u64,
    pub(crate) extrapolated_frames: u64,
    /// Frames where a remote entity moved on screen farther than anything can in a frame.
    pub(crate) remote_jumps: u64,
    /// Longest run of frames in which the local player's prediction moved but the screen did
    /// not (0: every input shows in the frame it is made).
    pub(crate) input_delay_frames: u32,
    /// Shots fired.
    pub(crate) shots: u64,
}

/// How a bot behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Behaviour {
    /// Plays by the rules.
    Honest,
    /// Plays by the rules but never shoots (`--scenario solo`).
    Peaceful,
    /// Writes others' entities, server entities, unknown ids, NaN, 10× the write rate; stamps
    /// inputs ±10 s off; claims impossible kills; sends malformed messages.
    Adversary,
}

/// The endpoint's session channels (see `statewire::endpoint::envelope`): the adversary
/// writes raw envelopes on them.
const RELIABLE: ChannelId = ChannelId(0);
const UNRELIABLE: ChannelId = ChannelId(1);

/// A bot client.
pub(crate) struct BotClient<T: Transport> {
    pub(crate) net: GameClient<T, Input>,
    pub(crate) world: ClientWorld,
    bot: Bot,
    behaviour: Behaviour,
    registry: Registry,
    channels: Channels,
    rules: Option<GameRules>,
    predictor: Option<Predictor<PlayerSim>>,
    /// The input for the newest tick sent (the server holds it over ticks with none).
    last_input: Input,
    /// What the local player was predicted at, per tick, when the prediction was made.
    predicted_log: VecDeque<(Tick, Position)>,
    interp: Interpolator<[f32; 2]>,
    /// The newest snapshot tick taken into the interpolator and the predictor.
    fed: Option<Tick>,
    /// Where each remote entity is on screen (last frame), and our own player.
    shown: HashMap<EntityId, [f32; 2]>,
    me_shown: Option<Position>,
    /// The render time of the last frame (the view a shot is claimed at).
    view: Option<RenderTime>,
    /// Our shots waiting for the server: sequence number and whether we saw a hit.
    pub(crate) shots: HashMap<u32, bool>,
    /// Frames in the current run of unseen local movement.
    unseen_run: u32,
    pub(crate) smooth: SmoothStats,
    aim: f32,
    buf: Vec<u8>,
    pub(crate) confirmed: u64,
    pub(crate) rolled_back: u64,
    pub(crate) final_digest: Option<(Tick, u64)>,
    pub(crate) ended: Option<DisconnectReason>,
}

impl<T: Transport> BotClient<T> {
    pub(crate) fn new(
        transport: T,
        server: std::net::SocketAddr,
        now: Duration,
        seed: u64,
        behaviour: Behaviour,
        coding: ComponentCoding,
        token: Option<&ConnectToken>,
    ) -> Result<Self, NetGameError> {
        let (protocol, channels) = protocol(coding)?;
        let config = GameClientConfig {
            tick_rate_hz: TICK_HZ,
            // Reproducible handshakes in the simulation.
            handshake_salt: Some(seed ^ 0x0073_616c),
            ..GameClientConfig::default()
        };
        let net = match token {
            Some(t) => GameClient::with_token(transport, server, &protocol, config, now, t)?,
            None => GameClient::new(transport, server, &protocol, config, now)?,
        };
        Ok(BotClient {
            net,
            world: ClientWorld::default(),
            bot: Bot::new(seed ^ 0xb07),
            behaviour,
            registry: protocol.registry().clone(),
            channels,
            rules: None,
            predictor: None,
            last_input: Input::default(),
            predicted_log: VecDeque::new(),
            interp: Interpolator::new(InterpolationConfig::default()),
            fed: None,
            shown: HashMap::new(),
            me_shown: None,
            view: None,
            shots: HashMap::new(),
            unseen_run: 0,
            smooth: SmoothStats::default(),
            aim: 0.0,
            buf: Vec::new(),
            confirmed: 0,
            rolled_back: 0,
            final_digest: None,
            ended: None,
        })
    }

    /// Whether the handshake completed.
    pub(crate) fn is_connected(&self) -> bool {
        self.net.is_connected()
    }

    /// Replication packets that did not decode.
    pub(crate) fn decode_errors(&self) -> u64 {
        self.net.stats().decode_errors
    }

    /// Other messages that did not decode, and sends the session refused.
    pub(crate) fn bad_messages(&self) -> u64 {
        let s = self.net.stats();
        s.malformed + s.send_refused
    }

    /// One client frame: apply what arrived (reconcile our player, buffer the others), make
    /// an input for each tick the clock hands out (predicting our player with it), render the
    /// others at the render clock's time, then send acks and inputs, the aim write and (now
    /// and then) a shot. `play` is false during quiet periods.
    pub(crate) fn step(&mut self, now: Duration, play: bool) -> Result<(), NetGameError> {
        self.world.touched.clear();
        self.net.update_with_events(now, &mut self.world)?;
        while let Some(ev) = self.net.poll_event() {
            match ev {
                GameClientEvent::Message(m) => {
                    if let Some(Ok(f)) = m.read(self.channels.final_digest) {
                        self.final_digest = Some((Tick(f.tick), f.digest));
                    } else if let Some(Ok(r)) = m.read(self.channels.rules) {
                        if r.arena.is_finite() && r.arena > 0.0 {
                            self.rules = Some(r);
                        }
                    }
                }
                GameClientEvent::Despawned(id) => {
                    self.interp.remove(id);
                    self.shown.remove(&id);
                }
                GameClientEvent::Confirmed { .. } => self.confirmed += 1,
                // A real game would undo the local effect here (revive the enemy it hid).
                GameClientEvent::Rejected { .. } => self.rolled_back += 1,
                GameClientEvent::Disconnected(r) => self.ended = Some(r),
                _ => {}
            }
        }
        if !self.is_connected() {
            return Ok(());
        }
        if self.behaviour == Behaviour::Adversary {
            let input = if play {
                self.bot.think()
            } else {
                Input::default()
            };
            self.send_forged_input(input);
            if play {
                self.send_writes();
                self.forge_kill_claim();
            }
            self.net.flush(now)?;
            return Ok(());
        }
        self.take_snapshot(now, play);
        self.make_inputs(now, play);
        self.render(now, play);
        if play {
            self.send_writes();
            if self.behaviour == Behaviour::Honest {
                self.maybe_shoot_lag_compensated();
            }
        }
        self.net.flush(now)?;
        Ok(())
    }

    /// Feeds a newer snapshot to the interpolator and our player's authoritative position to
    /// the predictor (starting it on the first). A complete snapshot gives every remote
    /// entity a sample at its tick (one that did not change needs it there, or it would be
    /// extrapolated); a partial one (the budget deferred changes) only the entities it
    /// changed, as the others may be behind its tick: their next change then joins up.
    fn take_snapshot(&mut self, now: Duration, play: bool) {
        let Some(tick) = self.net.tick() else {
            return;
        };
        if self.fed.is_some_and(|f| !tick.is_after(f)) {
            return;
        }
        self.fed = Some(tick);
        let me = self.net.owned().first().copied();
        let mut push = |id: EntityId, e: &crate::game::ClientEntity| {
            if let (true, Some(p)) = (Some(id) != me, e.pos) {
                self.interp.push(id, tick, [p.x, p.y]);
            }
        };
        if self.net.snapshot_complete() {
            for (&id, e) in &self.world.entities {
                push(id, e);
            }
        } else {
            for id in &self.world.touched {
                if let Some(e) = self.world.entities.get(id) {
                    push(*id, e);
                }
            }
        }
        let Some(pos) = me
            .and_then(|id| self.world.entities.get(&id))
            .and_then(|e| e.pos)
        else {
            return;
        };
        match (&mut self.predictor, self.rules) {
            (Some(p), _) => {
                let r = p.on_authoritative(tick, pos, now);
                // Counted during play: a quiet period freezes players without notice.
                if r.corrected && r.error > VISIBLE_CORRECTION && play {
                    self.smooth.corrections_visible += 1;
                }
                if r.snapped && play {
                    self.smooth.snaps += 1;
                }
            }
            (None, Some(rules)) => {
                let sim = PlayerSim { arena: rules.arena };
                self.predictor = Some(Predictor::new(sim, tick, pos, PredictionConfig::default()));
            }
            (None, None) => {}
        }
    }

    /// One input per tick the clock hands out, sent and applied to our prediction at once.
    /// Until the prediction starts (our player and the rules arrived) the input is to stand
    /// still; ticks the clock skipped keep the previous input, as the server does.
    fn make_inputs(&mut self, now: Duration, play: bool) {
        let before = self.predictor.as_ref().map(|p| *p.predicted());
        let advance = self.net.advance(now);
        for tick in advance.ticks() {
            let Some(p) = &mut self.predictor else {
                self.net.set_input_at(tick, &Input::default());
                continue;
            };
            // Skipped ticks (bounded: a longer gap resets the prediction on the next state).
            let mut fill = 0;
            while tick.diff(p.predicted_tick()) > 1 && fill < 64 {
                let next = p.predicted_tick().next();
                if p.apply_input(next, self.last_input).is_err() {
                    break;
                }
                fill += 1;
            }
            let input = if play {
                self.bot.think()
            } else {
                Input::default()
            };
            self.net.set_input_at(tick, &input);
            // Refused only for a tick already predicted (after the clock went back).
            if let Ok(&predicted) = p.apply_input(tick, input) {
                self.last_input = input;
                if self.predicted_log.len() >= PREDICTION_LOG {
                    self.predicted_log.pop_front();
                }
                self.predicted_log.push_back((tick, predicted));
            }
        }
        let Some(p) = &self.predictor else {
            return;
        };
        let shown = p.visible(now);
        // The input shows on screen in the frame it is made: when the prediction moved, so
        // must the player on screen.
        let moved = before.is_some_and(|b| b != *p.predicted());
        if moved && self.me_shown == Some(shown) {
            self.unseen_run += 1;
            self.smooth.input_delay_frames = self.smooth.input_delay_frames.max(self.unseen_run);
        } else {
            self.unseen_run = 0;
        }
        self.me_shown = Some(shown);
    }

    /// Shows every remote entity at the render clock's time and counts the frames that had
    /// to extrapolate and the entities that jumped.
    fn render(&mut self, now: Duration, play: bool) {
        let Some(at) = self.net.render_time(now) else {
            return;
        };
        self.view = Some(at);
        // Anything moves at most this far in a frame (with the render clock's 5 % warp and
        // two position steps of rounding to spare).
        let frame = 1.0 / TICK_HZ as f32;
        let limit = MAX_SPEED * frame * 1.1 + 2.0 / 64.0;
        let me = self.net.owned().first().copied();
        let mut extrapolated = false;
        let mut any = false;
        for &id in self.world.entities.keys() {
            if Some(id) == me {
                continue;
            }
            let Some(s) = self.interp.sample(id, at) else {
                continue;
            };
            any = true;
            // Past the newest snapshot (extrapolated, or held past the limit): it was late.
            extrapolated |= matches!(s.mode, SampleMode::Extrapolated | SampleMode::Held);
            if let Some(old) = self.shown.insert(id, s.value) {
                let d = ((s.value[0] - old[0]).powi(2) + (s.value[1] - old[1]).powi(2)).sqrt();
                if d > limit && play {
                    self.smooth.remote_jumps += 1;
                }
            }
        }
        // Measured during play only: the render clock may jump while it starts.
        if any && play {
            self.smooth.frames += 1;
            self.smooth.extrapolated_frames += u64::from(extrapolated);
        }
    }

    /// Now and then, a shot at the nearest enemy in reach as we see it (interpolated), aimed
    /// with a little error so that some miss, from where we predict our player: claimed at
    /// our own tick with the view time we saw it at, for the server to judge.
    fn maybe_shoot_lag_compensated(&mut self) {
        let (Some(p), Some(tick), Some(&me)) = (
            &self.predictor,
            self.net.input_tick(),
            self.net.owned().first(),
        ) else {
            return;
        };
        let Some(at) = self.view else {
            return;
        };
        let origin = *p.predicted();
        if p.predicted_tick() != tick {
            return;
        }
        let view_back = tick.diff(at.tick());
        if !(0..=MAX_REWIND_TICKS as i32).contains(&view_back) {
            return;
        }
        let reach = SHOT_RANGE * 1.1;
        let Some((target, seen)) =
            self.bot
                .pick_shown_target(&self.world, &self.shown, origin, reach)
        else {
            return;
        };
        let (dx, dy) = (seen[0] - origin.x, seen[1] - origin.y);
        let dist = (dx * dx + dy * dy).sqrt();
        // A sideways error of up to two radii at the target: about half the shots miss.
        let miss = self.bot.aim_error(2.0 * ENEMY_RADIUS);
        let angle = dy.atan2(dx) + (miss / dist.max(1.0)).atan();
        let data = ShotData {
            view_back: view_back as u8,
            fraction: (at.fraction() * 256.0).floor().clamp(0.0, 255.0) as u8,
            angle: ShotData::angle_of(angle),
        };
        let seen_hit = shot_distance([origin.x, origin.y], data.direction(), seen) <= ENEMY_RADIUS;
        if let Ok(seq) = self
            .net
            .propose_at(tick, KILL, &[me, target], &data.encode())
        {
            self.shots.insert(seq, seen_hit);
            self.smooth.shots += 1;
        }
    }

    /// What this bot predicted its player at for `tick`, when it made that prediction.
    pub(crate) fn predicted_at(&self, tick: Tick) -> Option<Position> {
        self.predicted_log
            .iter()
            .rev()
            .find(|(t, _)| *t == tick)
            .map(|(_, p)| *p)
    }

    /// The interpolation delay now, ms.
    pub(crate) fn delay_ms(&self) -> f64 {
        self.net.render_clock().delay().as_secs_f64() * 1e3
    }

    /// The adversary's input, stamped ten seconds in the past or the future, as a raw TICK
    /// envelope (with its real acknowledgement, so it keeps receiving).
    fn send_forged_input(&mut self, input: Input) {
        let Some(base) = self.net.input_tick() else {
            return;
        };
        let off = 10 * TICK_HZ;
        let tick = if base.0 % 2 == 0 {
            base.0.wrapping_sub(off)
        } else {
            base.0.wrapping_add(off)
        };
        self.buf.clear();
        self.buf.push(0x01);
        match self.net.replicator().ack() {
            Some(a) => {
                self.buf.push(1);
                self.buf.extend_from_slice(&a.encode());
            }
            None => self.buf.push(0),
        }
        self.buf.push(1);
        self.buf.extend_from_slice(&tick.to_le_bytes());
        self.buf
            .extend_from_slice(&[2, input.dx as u8, input.dy as u8]);
        let _ = self.net.session_mut().send(UNRELIABLE, &self.buf);
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
        let Some(&player) = self.net.owned().first() else {
            return;
        };
        self.aim = self.bot.aim(self.aim);
        if self.behaviour != Behaviour::Adversary {
            // Refused locally only if we no longer own it (then the server would refuse it).
            let _ = self.net.write(player, &Facing(self.aim));
            return;
        }
        let me = self.net.id();
        let mut writes: Vec<StateWrite> = self
            .write_of(player, &Facing(self.aim))
            .into_iter()
            .collect();
        // Lowest ids first: the world is a hash map, whose order differs between processes.
        let mut others: Vec<EntityId> = self
            .world
            .entities
            .iter()
            .filter(|(_, e)| e.owner.is_some() && e.owner != me)
            .map(|(&id, _)| id)
            .collect();
        others.sort_unstable();
        others.truncate(4);
        let enemy = self
            .world
            .entities
            .iter()
            .filter(|(_, e)| e.owner.is_none())
            .map(|(&id, _)| id)
            .min();
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
        // Raw WRITES envelopes, 60 writes each (under the unreliable channel's size).
        for chunk in writes.chunks(60) {
            self.buf.clear();
            self.buf.push(0x02);
            encode_writes(chunk, &mut self.buf);
            let _ = self.net.session_mut().send(UNRELIABLE, &self.buf);
        }
        // Malformed messages on both channels.
        let session = self.net.session_mut();
        let _ = session.send(UNRELIABLE, &[0x02, 0xff, 0xff, 1]);
        let _ = session.send(RELIABLE, &[0x03, 1, 2, 3]);
        let _ = session.send(UNRELIABLE, &[0x7f]);
    }

    /// The adversary's kill claims: an enemy far away (any enemy will do; the server judges
    /// the shot), without the shot data an honest claim carries.
    fn forge_kill_claim(&mut self) {
        let Some(&player) = self.net.owned().first() else {
            return;
        };
        let target = self
            .world
            .entities
            .iter()
            .filter(|(_, e)| e.owner.is_none())
            .map(|(&id, _)| id)
            .max();
        if let Some(target) = target {
            // Refused only if not connected, checked above.
            let _ = self.net.propose(KILL, &[player, target], &[]);
        }
    }

    /// What this client shows of every entity: (id, x, y, is an enemy): its own player where
    /// it predicts it, the others interpolated (or as received, before the first frame).
    pub(crate) fn shown(&self) -> impl Iterator<Item = (EntityId, f32, f32, bool)> + '_ {
        let me = self.net.owned().first().copied();
        self.world.entities.iter().filter_map(move |(&id, e)| {
            let enemy = e.body.is_some_and(|b| b.kind == Kind::Enemy);
            let (x, y) = match (Some(id) == me, self.me_shown, self.shown.get(&id)) {
                (true, Some(p), _) => (p.x, p.y),
                (false, _, Some(p)) => (p[0], p[1]),
                _ => e.pos.map(|p| (p.x, p.y))?,
            };
            Some((id, x, y, enemy))
        })
    }

    /// The digest of this client's replicated state (see `ServerGame::view_digest`).
    pub(crate) fn digest(&self) -> u64 {
        snapshot_digest(&self.registry, &self.net.snapshot())
    }

    /// Whether this client's state matches the digest the server announced.
    pub(crate) fn matches_final(&self) -> Option<bool> {
        self.final_digest.map(|(_, digest)| self.digest() == digest)
    }
}
