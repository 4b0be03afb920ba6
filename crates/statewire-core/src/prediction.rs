//! Client-side prediction and reconciliation for what a client controls, and matching of
//! predicted spawns to the server's entities.
//!
//! # Model
//!
//! The game describes its simulation once, as a [`Simulate`] implementation: a deterministic
//! `step` from one tick's state and input to the next state, a `distance` between two states
//! (in world units) and a `blend` between two states.
//!
//! A [`Predictor`] holds the client's own copy of the state it controls. Each tick the client
//! calls [`Predictor::apply_input`] with the tick's input: the predictor steps its copy at once
//! (the player sees the result without waiting a round trip) and keeps the tick, the input and
//! the predicted state in a bounded history. Tick numbers follow the crate's convention: the
//! state for tick `T` is the state after the input stamped `T` was applied.
//!
//! When the server's state for tick `T` arrives ([`Predictor::on_authoritative`]), the
//! predictor forgets the inputs up to `T` (the server has applied them), rewinds to the
//! server's state and replays the inputs after `T`. With no outside interference the replay
//! reproduces the prediction bit for bit (the step is deterministic), and when the server's
//! state equals the one predicted for `T` the replay is skipped altogether
//! ([`PredictionConfig::skip_matching_replay`]). When it differs (another player pushed us,
//! the server rejected a move) the newest prediction changes; the predictor then measures the
//! *error*, the distance between the old and the new prediction for the newest tick, and:
//!
//! * if the error is at most [`PredictionConfig::snap_distance`], *smooths* it: what
//!   [`Predictor::visible`] shows moves from what was on screen to the corrected prediction
//!   over [`PredictionConfig::smoothing`], while the player keeps moving (the old timeline is
//!   stepped with the same new inputs as the corrected one, and the two are blended);
//! * otherwise *snaps*: the corrected prediction shows at once.
//!
//! Authoritative states that do not fit the history are handled explicitly (see
//! [`ReconcileOutcome`]): a state for a tick at or before the last authoritative tick is
//! ignored ([`ReconcileOutcome::Stale`], a duplicate or reordered packet); one for a tick after
//! every predicted tick is adopted as is ([`ReconcileOutcome::Ahead`]); and one whose replay
//! would need inputs the bounded history has already dropped resets the prediction to it
//! ([`ReconcileOutcome::Reset`]), since replaying only part of the inputs would be wrong.
//!
//! Time never comes from a clock here: `now` is a [`Duration`] on any monotonic clock the game
//! likes (time since start is enough), passed to [`Predictor::on_authoritative`] and
//! [`Predictor::visible`].
//!
//! A [`SpawnMatcher`] deals with entities the client creates ahead of the server (a projectile
//! it fires): the client registers each predicted spawn under a key both sides can compute
//! (e.g. [`SpawnKey`]: the input tick, a per-client sequence number and a kind) and gets a
//! [`LocalSpawn`] handle for its local stand-in; when the server's entity arrives carrying the
//! key, the matcher maps the local handle to the server's [`EntityId`], once. Predictions the
//! server never confirms expire after [`SpawnConfig::expire_ticks`].
//!
//! # A whole loop
//!
//! ```
//! use std::collections::VecDeque;
//! use std::time::Duration;
//!
//! use statewire_core::Tick;
//! use statewire_core::prediction::{PredictionConfig, Predictor, ReconcileOutcome, Simulate};
//!
//! /// A dot on a line that moves by its input each tick.
//! struct Walk;
//! impl Simulate for Walk {
//!     type State = f32;
//!     type Input = f32;
//!     fn step(&self, x: &f32, v: &f32) -> f32 { x + v }
//!     fn distance(&self, a: &f32, b: &f32) -> f32 { (a - b).abs() }
//!     fn blend(&self, from: &f32, to: &f32, t: f32) -> f32 { from + (to - from) * t }
//! }
//!
//! let mut client = Predictor::new(Walk, Tick(0), 0.0, PredictionConfig::default());
//! let mut server = 0.0f32;
//! let mut in_flight = VecDeque::new();
//! let frame = Duration::from_millis(33);
//! for t in 1..=20u32 {
//!     let now = frame * t;
//!     // The client moves at once...
//!     client.apply_input(Tick(t), 1.0).unwrap();
//!     in_flight.push_back((Tick(t), 1.0f32));
//!     // ... the server sees each input three ticks later, and at tick 10 something pushes us
//!     // back by half a unit.
//!     if t > 3 {
//!         let (tick, v) = in_flight.pop_front().unwrap();
//!         server += v;
//!         if tick == Tick(10) {
//!             server -= 0.5;
//!         }
//!         let r = client.on_authoritative(tick, server, now);
//!         assert_eq!(r.outcome, ReconcileOutcome::Replayed);
//!         assert_eq!(r.corrected, tick == Tick(10));
//!     }
//!     // Render what the player should see this frame.
//!     let _shown: f32 = client.visible(now);
//! }
//! assert_eq!(client.predicted(), &19.5);
//! assert_eq!(client.pending_inputs(), 3);
//! assert_eq!(client.stats().corrections, 1);
//! assert_eq!(client.stats().snaps, 0);
//! // Long after the correction, nothing of it is left on screen.
//! assert_eq!(client.visible(frame * 100), 19.5);
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::hash::Hash;
use std::time::Duration;

use hashbrown::HashMap;

use crate::ids::{EntityId, Tick};

/// The game's simulation of what a client predicts, as the [`Predictor`] needs it.
///
/// Methods take `&self` so an implementation can carry the parameters it needs (map data,
/// movement constants); a unit struct is enough when there are none.
pub trait Simulate {
    /// The predicted state: one controlled entity, or several stepped together.
    type State: Clone + PartialEq;
    /// One tick's input.
    type Input;

    /// The state one tick after `state` under `input`. Must be deterministic: the same state
    /// and input give the same result bit for bit on every call, since reconciliation replays
    /// inputs and compares the results.
    fn step(&self, state: &Self::State, input: &Self::Input) -> Self::State;

    /// How far apart two states are, in world units: at least 0, and 0 for equal states. Used
    /// against [`PredictionConfig::snap_distance`] and in the error counters; a NaN counts as
    /// beyond every threshold (the correction snaps).
    fn distance(&self, a: &Self::State, b: &Self::State) -> f32;

    /// The state a fraction `t` (in `0.0..=1.0`) of the way from `from` to `to`: `from` at 0,
    /// `to` at 1. For a smooth correction without overshoot the distance to `to` should shrink
    /// as `t` grows (linear interpolation does; slerp for rotations).
    fn blend(&self, from: &Self::State, to: &Self::State, t: f32) -> Self::State;
}

/// Settings of a [`Predictor`].
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionConfig {
    /// Unacknowledged inputs kept (one entry per [`Predictor::apply_input`]), which bounds the
    /// memory to this many inputs and states. When full, the oldest input is dropped; an
    /// authoritative state whose replay would need it then resets the prediction
    /// ([`ReconcileOutcome::Reset`]). Values below 1 count as 1. Default 128 (about 4 s at
    /// 30 Hz).
    pub history_ticks: usize,
    /// Time over which a correction is blended out of the visible state. Zero applies every
    /// correction at once (without counting it as a snap). Default 100 ms.
    pub smoothing: Duration,
    /// Corrections with an error above this, in [`Simulate::distance`] units, snap instead of
    /// smoothing (a NaN here snaps every correction). Default 4.0.
    pub snap_distance: f32,
    /// Skip the replay when the authoritative state equals the prediction kept for its tick
    /// (the replay would reproduce the history exactly). Turning it off replays on every
    /// authoritative state, which checks the step's determinism: with no outside interference
    /// every error is then 0. Default `true`.
    pub skip_matching_replay: bool,
}

impl Default for PredictionConfig {
    fn default() -> Self {
        PredictionConfig {
            history_ticks: 128,
            smoothing: Duration::from_millis(100),
            snap_distance: 4.0,
            skip_matching_replay: true,
        }
    }
}

/// Why [`Predictor::apply_input`] refused an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// Inputs must come in increasing tick order, after the newest predicted tick (which is
    /// the last authoritative tick when no input is pending): the state for this tick has
    /// already been predicted or is already the server's.
    #[error("input for {tick} is not after the newest predicted tick {newest}")]
    NotAfterNewest {
        /// The refused input's tick.
        tick: Tick,
        /// The newest predicted tick.
        newest: Tick,
    },
    /// The tick is more than [`MAX_SPAN_TICKS`] after the last authoritative tick: ticks that
    /// far apart cannot be ordered across wrap-around. Call [`Predictor::reset`] with a
    /// fresh server state.
    #[error("input for {tick} is too far after the last authoritative tick {authoritative}")]
    TooFarAhead {
        /// The refused input's tick.
        tick: Tick,
        /// The last authoritative tick.
        authoritative: Tick,
    },
}

/// How far after the last authoritative tick an input may be (2^30 ticks, over a year at
/// 30 Hz): half the range in which wrapping ticks order correctly, so every pending input
/// stays comparable with every other.
pub const MAX_SPAN_TICKS: u32 = 1 << 30;

/// How [`Predictor::on_authoritative`] took in a server state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReconcileOutcome {
    /// The usual case: inputs up to the tick were dropped and the rest replayed on the
    /// server's state (or the replay was skipped because the server agreed with the
    /// prediction).
    Replayed,
    /// The tick is after every predicted tick (no input pending, or the server ran ahead of
    /// the client's inputs): the state was adopted as the prediction and every pending input
    /// dropped; a difference from the old prediction is smoothed or snapped like any
    /// correction.
    Ahead,
    /// The tick is at or before the last authoritative tick (a duplicate or reordered
    /// packet): ignored, nothing changed.
    Stale,
    /// Replaying from the tick would need inputs the bounded history already dropped: the
    /// state was adopted, every pending input dropped, and the view snapped to it.
    Reset,
}

/// What one [`Predictor::on_authoritative`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Reconciled {
    /// How the state was taken in.
    pub outcome: ReconcileOutcome,
    /// Distance between the newest prediction before and after (0 when unchanged).
    pub error: f32,
    /// Inputs replayed on the server's state.
    pub replayed: usize,
    /// Whether the newest prediction changed.
    pub corrected: bool,
    /// Whether the view jumped to the new prediction instead of smoothing (an error above
    /// [`PredictionConfig::snap_distance`], or a [`ReconcileOutcome::Reset`]).
    pub snapped: bool,
}

impl Reconciled {
    fn unchanged(outcome: ReconcileOutcome, replayed: usize) -> Self {
        Reconciled {
            outcome,
            error: 0.0,
            replayed,
            corrected: false,
            snapped: false,
        }
    }
}

/// Counters of a [`Predictor`], for tuning and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PredictionStats {
    /// Authoritative states taken in (every outcome but [`ReconcileOutcome::Stale`]).
    pub reconciliations: u64,
    /// Inputs replayed, all reconciliations together.
    pub replayed_inputs: u64,
    /// Reconciliations that changed the newest prediction (smoothed or snapped; resets are
    /// counted apart).
    pub corrections: u64,
    /// Corrections that snapped because their error exceeded the snap distance.
    pub snaps: u64,
    /// [`ReconcileOutcome::Reset`]s.
    pub resets: u64,
    /// [`ReconcileOutcome::Stale`] states ignored.
    pub stale: u64,
    /// Inputs dropped unacknowledged because the history was full.
    pub inputs_dropped: u64,
    /// Largest finite correction error seen.
    pub max_error: f32,
    /// Sum of the finite correction errors (a non-finite error adds nothing).
    pub error_sum: f64,
}

impl PredictionStats {
    /// Mean correction error (0 before the first correction).
    #[must_use]
    pub fn mean_error(&self) -> f32 {
        if self.corrections == 0 {
            0.0
        } else {
            (self.error_sum / self.corrections as f64) as f32
        }
    }
}

struct Entry<S: Simulate> {
    tick: Tick,
    input: S::Input,
    /// The current prediction for `tick` (rewritten by every replay).
    predicted: S::State,
}

/// A correction being blended out.
struct Correction<T> {
    /// The uncorrected timeline: what was on screen when the correction started, stepped with
    /// every input since, so the view keeps moving with the player while it converges.
    from: T,
    /// When the correction started.
    started: Duration,
}

/// Client-side prediction and reconciliation of one controlled state (see the
/// [module docs](self)).
pub struct Predictor<S: Simulate> {
    sim: S,
    config: PredictionConfig,
    /// Tick of the last authoritative state taken in (or of the initial state).
    authoritative_tick: Tick,
    /// Tick of `predicted`: the newest input's, or `authoritative_tick` with none pending.
    newest: Tick,
    predicted: S::State,
    /// Pending inputs, oldest first, ticks strictly increasing, all after
    /// `authoritative_tick`; at most `config.history_ticks` long.
    history: VecDeque<Entry<S>>,
    /// Tick of the newest input dropped because the history was full, while it matters (an
    /// authoritative state before it cannot be replayed).
    dropped_through: Option<Tick>,
    correction: Option<Correction<S::State>>,
    stats: PredictionStats,
}

impl<S: Simulate> fmt::Debug for Predictor<S>
where
    S::State: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Predictor")
            .field("authoritative_tick", &self.authoritative_tick)
            .field("newest", &self.newest)
            .field("predicted", &self.predicted)
            .field("pending_inputs", &self.history.len())
            .field("smoothing", &self.correction.is_some())
            .field("stats", &self.stats)
            .finish()
    }
}

impl<S: Simulate> Predictor<S> {
    /// A predictor starting from the server's `state` for `tick` (e.g. the state replicated
    /// when the client got control of the entity).
    pub fn new(sim: S, tick: Tick, state: S::State, config: PredictionConfig) -> Self {
        Predictor {
            sim,
            config,
            authoritative_tick: tick,
            newest: tick,
            predicted: state,
            history: VecDeque::new(),
            dropped_through: None,
            correction: None,
            stats: PredictionStats::default(),
        }
    }

    /// Predicts `tick` at once: steps the newest prediction with `input`, keeps the input
    /// until the server's state covers it, and returns the new prediction.
    ///
    /// # Errors
    ///
    /// [`InputError::NotAfterNewest`] when `tick` is not after the newest predicted tick,
    /// [`InputError::TooFarAhead`] when it is more than [`MAX_SPAN_TICKS`] after the last
    /// authoritative tick.
    pub fn apply_input(&mut self, tick: Tick, input: S::Input) -> Result<&S::State, InputError> {
        if !tick.is_after(self.newest) {
            return Err(InputError::NotAfterNewest {
                tick,
                newest: self.newest,
            });
        }
        // Past the span the difference wraps to zero or below.
        if !(1..=MAX_SPAN_TICKS as i32).contains(&tick.diff(self.authoritative_tick)) {
            return Err(InputError::TooFarAhead {
                tick,
                authoritative: self.authoritative_tick,
            });
        }
        let next = self.sim.step(&self.predicted, &input);
        if let Some(c) = &mut self.correction {
            c.from = self.sim.step(&c.from, &input);
        }
        let cap = self.config.history_ticks.max(1);
        while self.history.len() >= cap {
            let Some(old) = self.history.pop_front() else {
                break;
            };
            self.dropped_through = Some(old.tick);
            self.stats.inputs_dropped += 1;
        }
        self.history.push_back(Entry {
            tick,
            input,
            predicted: next.clone(),
        });
        self.predicted = next;
        self.newest = tick;
        Ok(&self.predicted)
    }

    /// Takes in the server's `state` for `tick`, received at `now`: drops the inputs up to
    /// `tick`, rewinds to `state`, replays the remaining inputs, and smooths or snaps the
    /// difference from the old prediction. Any tick is accepted; see [`ReconcileOutcome`] for
    /// those outside the history.
    pub fn on_authoritative(&mut self, tick: Tick, state: S::State, now: Duration) -> Reconciled {
        if !tick.is_after(self.authoritative_tick) {
            self.stats.stale += 1;
            return Reconciled::unchanged(ReconcileOutcome::Stale, 0);
        }
        self.stats.reconciliations += 1;
        if self.progress(now).is_some_and(|t| t >= 1.0) {
            // Finished: stop stepping the old timeline.
            self.correction = None;
        }
        self.authoritative_tick = tick;
        if self.dropped_through.is_some_and(|d| d.is_after(tick)) {
            return self.reset_to(tick, state);
        }
        self.dropped_through = None;

        if tick.is_after(self.newest) {
            self.history.clear();
            self.newest = tick;
            let old = std::mem::replace(&mut self.predicted, state);
            return self.correct(ReconcileOutcome::Ahead, old, 0, now);
        }

        // The server has applied every input up to `tick`.
        let mut predicted_at_tick = None;
        while self.history.front().is_some_and(|e| !e.tick.is_after(tick)) {
            predicted_at_tick = self.history.pop_front().map(|e| e.predicted);
        }
        if self.config.skip_matching_replay && predicted_at_tick.as_ref() == Some(&state) {
            // Replaying from the state we predicted would rebuild the history as it is.
            return Reconciled::unchanged(ReconcileOutcome::Replayed, 0);
        }
        let mut replayed_state = state;
        for e in &mut self.history {
            replayed_state = self.sim.step(&replayed_state, &e.input);
            e.predicted = replayed_state.clone();
        }
        let replayed = self.history.len();
        self.stats.replayed_inputs += replayed as u64;
        let old = std::mem::replace(&mut self.predicted, replayed_state);
        self.correct(ReconcileOutcome::Replayed, old, replayed, now)
    }

    /// Records the change from `old` to the current prediction and starts smoothing it, or
    /// snaps.
    fn correct(
        &mut self,
        outcome: ReconcileOutcome,
        old: S::State,
        replayed: usize,
        now: Duration,
    ) -> Reconciled {
        if old == self.predicted {
            // A correction under way keeps converging on the unchanged prediction.
            return Reconciled::unchanged(outcome, replayed);
        }
        let error = self.sim.distance(&old, &self.predicted);
        self.stats.corrections += 1;
        if error.is_finite() {
            self.stats.error_sum += f64::from(error);
            if error > self.stats.max_error {
                self.stats.max_error = error;
            }
        }
        let snap = self.config.snap_distance;
        let snapped = error.is_nan() || snap.is_nan() || error > snap;
        if snapped {
            self.stats.snaps += 1;
            self.correction = None;
        } else if self.config.smoothing.is_zero() {
            self.correction = None;
        } else {
            // Start from what is on screen now, so a correction arriving while another is
            // being blended out does not jump.
            let from = match self.correction.take() {
                Some(c) => self.blend_at(&c, &old, now),
                None => old,
            };
            self.correction = Some(Correction { from, started: now });
        }
        Reconciled {
            outcome,
            error,
            replayed,
            corrected: true,
            snapped,
        }
    }

    fn reset_to(&mut self, tick: Tick, state: S::State) -> Reconciled {
        self.history.clear();
        self.dropped_through = None;
        self.correction = None;
        self.newest = tick;
        let old = std::mem::replace(&mut self.predicted, state);
        self.stats.resets += 1;
        let corrected = old != self.predicted;
        Reconciled {
            outcome: ReconcileOutcome::Reset,
            error: if corrected {
                self.sim.distance(&old, &self.predicted)
            } else {
                0.0
            },
            replayed: 0,
            corrected,
            snapped: true,
        }
    }

    /// Forgets every pending input and correction and starts again from the server's `state`
    /// for `tick`, which may be any tick (a teleport, a respawn, control regained). Counted in
    /// no statistic.
    pub fn reset(&mut self, tick: Tick, state: S::State) {
        self.history.clear();
        self.dropped_through = None;
        self.correction = None;
        self.authoritative_tick = tick;
        self.newest = tick;
        self.predicted = state;
    }

    /// How far the correction under way is at `now`, from 0 to 1; `None` when there is none.
    fn progress(&self, now: Duration) -> Option<f32> {
        let c = self.correction.as_ref()?;
        Some(self.progress_of(c, now))
    }

    fn progress_of(&self, c: &Correction<S::State>, now: Duration) -> f32 {
        let total = self.config.smoothing.as_secs_f64();
        if total <= 0.0 {
            return 1.0;
        }
        // A `now` before the start (a clock that went back) shows the start.
        let elapsed = now.saturating_sub(c.started).as_secs_f64();
        (elapsed / total).clamp(0.0, 1.0) as f32
    }

    /// The correction `c` blended towards `to` at `now`.
    fn blend_at(&self, c: &Correction<S::State>, to: &S::State, now: Duration) -> S::State {
        let t = self.progress_of(c, now);
        if t >= 1.0 {
            to.clone()
        } else {
            self.sim.blend(&c.from, to, t)
        }
    }

    /// What to show at `now`: the newest prediction, with what remains of the last
    /// correction blended out over [`PredictionConfig::smoothing`]. Exactly the prediction
    /// when no correction is under way.
    #[must_use]
    pub fn visible(&self, now: Duration) -> S::State {
        match &self.correction {
            Some(c) => self.blend_at(c, &self.predicted, now),
            None => self.predicted.clone(),
        }
    }

    /// Whether a correction is still being blended out at `now`.
    #[must_use]
    pub fn is_smoothing(&self, now: Duration) -> bool {
        self.progress(now).is_some_and(|t| t < 1.0)
    }

    /// The newest prediction (for [`Predictor::predicted_tick`]), without smoothing.
    #[must_use]
    pub fn predicted(&self) -> &S::State {
        &self.predicted
    }

    /// The tick of the newest prediction.
    #[must_use]
    pub fn predicted_tick(&self) -> Tick {
        self.newest
    }

    /// The tick of the last authoritative state taken in (or of the initial state).
    #[must_use]
    pub fn authoritative_tick(&self) -> Tick {
        self.authoritative_tick
    }

    /// Inputs the server's state does not cover yet.
    #[must_use]
    pub fn pending_inputs(&self) -> usize {
        self.history.len()
    }

    /// The inputs the server's state does not cover yet, oldest first, with their ticks: what
    /// a client resends with each input packet so that a lost packet costs no input.
    pub fn unacknowledged(&self) -> impl Iterator<Item = (Tick, &S::Input)> + '_ {
        self.history.iter().map(|e| (e.tick, &e.input))
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> &PredictionStats {
        &self.stats
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &PredictionConfig {
        &self.config
    }

    /// The game's simulation.
    #[must_use]
    pub fn sim(&self) -> &S {
        &self.sim
    }
}

/// The client's handle for a predicted spawn's local stand-in, allocated by
/// [`SpawnMatcher::predict`]. Never reused by one matcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalSpawn(pub u64);

impl fmt::Display for LocalSpawn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "local#{}", self.0)
    }
}

/// A ready-made key for predicted spawns, which both sides can compute: the client sends
/// `tick` and `seq` with the input that spawns, and the server stamps them (with `kind`) on
/// the entity it creates. Any `Eq + Hash + Clone` type may serve as the key instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpawnKey {
    /// The tick of the input that spawned.
    pub tick: Tick,
    /// The client's own sequence number for its spawns (tells apart two spawns in one tick).
    pub seq: u32,
    /// Game-defined kind (projectile, grenade, ...).
    pub kind: u16,
}

/// Settings of a [`SpawnMatcher`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnConfig {
    /// Predicted spawns waiting for the server's entity; [`SpawnMatcher::predict`] refuses
    /// more. Default 64.
    pub max_pending: usize,
    /// Ticks a predicted spawn waits for the server's entity before [`SpawnMatcher::expire`]
    /// gives it up (it expires once the current tick is more than this many ticks after, or
    /// before, its own). Default 60 (2 s at 30 Hz).
    pub expire_ticks: u32,
    /// Matches kept for [`SpawnMatcher::server_entity`] lookups; the oldest is forgotten
    /// beyond this. Default 256.
    pub max_matched: usize,
}

impl Default for SpawnConfig {
    fn default() -> Self {
        SpawnConfig {
            max_pending: 64,
            expire_ticks: 60,
            max_matched: 256,
        }
    }
}

/// Why [`SpawnMatcher::predict`] refused a spawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// [`SpawnConfig::max_pending`] predicted spawns are already waiting.
    #[error("too many predicted spawns waiting ({max})")]
    Full {
        /// The limit.
        max: usize,
    },
    /// A predicted spawn with this key is already waiting (the server's entity could not
    /// tell them apart).
    #[error("a predicted spawn with this key is already waiting")]
    DuplicateKey,
}

/// A predicted spawn matched to the server's entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnMatch<K> {
    /// The client's local stand-in.
    pub local: LocalSpawn,
    /// The server's entity it becomes.
    pub entity: EntityId,
    /// The key it was predicted under.
    pub key: K,
}

/// A predicted spawn the server never confirmed, returned by [`SpawnMatcher::expire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredSpawn<K> {
    /// The client's local stand-in, to remove.
    pub local: LocalSpawn,
    /// The key it was predicted under.
    pub key: K,
    /// The tick it was predicted at.
    pub tick: Tick,
}

/// Counters of a [`SpawnMatcher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpawnStats {
    /// Spawns predicted.
    pub predicted: u64,
    /// Predicted spawns matched to a server entity.
    pub matched: u64,
    /// Predicted spawns expired unmatched.
    pub expired: u64,
    /// Server spawns that matched no waiting prediction (not ours, already matched, expired
    /// or forgotten).
    pub unmatched_server: u64,
}

#[derive(Debug)]
struct Pending {
    local: LocalSpawn,
    tick: Tick,
}

/// Matches the spawns a client predicts to the entities the server creates for them (see
/// the [module docs](self)).
///
/// ```
/// use statewire_core::{EntityId, Tick};
/// use statewire_core::prediction::{SpawnConfig, SpawnKey, SpawnMatcher};
///
/// let mut spawns = SpawnMatcher::new(SpawnConfig::default());
/// // The client fires at tick 5 and shows its projectile at once.
/// let key = SpawnKey { tick: Tick(5), seq: 0, kind: 1 };
/// let local = spawns.predict(Tick(5), key).unwrap();
/// // The server's projectile arrives, carrying the key.
/// let m = spawns.on_server_spawn(&key, EntityId(42)).unwrap();
/// assert_eq!((m.local, m.entity), (local, EntityId(42)));
/// assert_eq!(spawns.server_entity(local), Some(EntityId(42)));
/// // Only once.
/// assert!(spawns.on_server_spawn(&key, EntityId(43)).is_none());
/// ```
#[derive(Debug)]
pub struct SpawnMatcher<K = SpawnKey> {
    config: SpawnConfig,
    next_local: u64,
    /// At most `config.max_pending` entries.
    pending: HashMap<K, Pending>,
    /// At most `config.max_matched` entries, with their insertion order in `matched_order`.
    matched: HashMap<LocalSpawn, EntityId>,
    matched_order: VecDeque<LocalSpawn>,
    stats: SpawnStats,
}

impl<K: Eq + Hash + Clone> SpawnMatcher<K> {
    /// An empty matcher.
    #[must_use]
    pub fn new(config: SpawnConfig) -> Self {
        SpawnMatcher {
            config,
            next_local: 0,
            pending: HashMap::new(),
            matched: HashMap::new(),
            matched_order: VecDeque::new(),
            stats: SpawnStats::default(),
        }
    }

    /// Registers a spawn the client predicted at `tick` under `key`, and returns the handle of
    /// its local stand-in.
    ///
    /// # Errors
    ///
    /// [`SpawnError::Full`] when [`SpawnConfig::max_pending`] are waiting (call
    /// [`SpawnMatcher::expire`] every tick to make room), [`SpawnError::DuplicateKey`] when
    /// one with the same key is waiting.
    pub fn predict(&mut self, tick: Tick, key: K) -> Result<LocalSpawn, SpawnError> {
        if self.pending.contains_key(&key) {
            return Err(SpawnError::DuplicateKey);
        }
        if self.pending.len() >= self.config.max_pending {
            return Err(SpawnError::Full {
                max: self.config.max_pending,
            });
        }
        let local = LocalSpawn(self.next_local);
        self.next_local = self.next_local.wrapping_add(1);
        self.pending.insert(key, Pending { local, tick });
        self.stats.predicted += 1;
        Ok(local)
    }

    /// The server's `entity` arrived carrying `key`: matches it to the waiting prediction, at
    /// most once. `None` (counted in [`SpawnStats::unmatched_server`]) when no prediction with
    /// that key is waiting.
    pub fn on_server_spawn(&mut self, key: &K, entity: EntityId) -> Option<SpawnMatch<K>> {
        match self.pending.remove_entry(key) {
            Some((key, p)) => Some(self.record(key, p.local, entity)),
            None => {
                self.stats.unmatched_server += 1;
                None
            }
        }
    }

    /// The server's `entity` arrived without a key: matches it to the oldest waiting
    /// prediction whose key `matches` accepts (e.g. same kind, spawned near it), at most once.
    /// `None` (counted in [`SpawnStats::unmatched_server`]) when none does.
    pub fn match_with(
        &mut self,
        entity: EntityId,
        mut matches: impl FnMut(&K) -> bool,
    ) -> Option<SpawnMatch<K>> {
        // Oldest first, so that of two candidates the server's first entity takes the first.
        let key = self
            .pending
            .iter()
            .filter(|(k, _)| matches(k))
            .min_by_key(|(_, p)| p.local)
            .map(|(k, _)| k.clone());
        match key {
            Some(key) => self.on_server_spawn(&key, entity),
            None => {
                self.stats.unmatched_server += 1;
                None
            }
        }
    }

    fn record(&mut self, key: K, local: LocalSpawn, entity: EntityId) -> SpawnMatch<K> {
        self.stats.matched += 1;
        if self.config.max_matched > 0 {
            while self.matched_order.len() >= self.config.max_matched {
                match self.matched_order.pop_front() {
                    Some(old) => {
                        self.matched.remove(&old);
                    }
                    None => break,
                }
            }
            self.matched.insert(local, entity);
            self.matched_order.push_back(local);
        }
        SpawnMatch { local, entity, key }
    }

    /// Gives up the predictions that waited too long by `now` (the client's tick, on the same
    /// clock as the ticks given to [`SpawnMatcher::predict`]) and returns them, oldest first,
    /// so the game removes their stand-ins. Call once per tick.
    pub fn expire(&mut self, now: Tick) -> Vec<ExpiredSpawn<K>> {
        let limit = i64::from(self.config.expire_ticks);
        let mut expired = Vec::new();
        self.pending.retain(|key, p| {
            // A tick far after `now` is as suspect as one far before: both expire, so a bogus
            // stamp cannot hold a slot for ever.
            let keep = i64::from(now.diff(p.tick)).abs() <= limit;
            if !keep {
                expired.push(ExpiredSpawn {
                    local: p.local,
                    key: key.clone(),
                    tick: p.tick,
                });
            }
            keep
        });
        expired.sort_by_key(|e| e.local);
        self.stats.expired += expired.len() as u64;
        expired
    }

    /// Forgets a predicted spawn the game removed itself (its projectile hit something
    /// locally), waiting or matched. Returns whether it was known.
    pub fn forget(&mut self, local: LocalSpawn) -> bool {
        let before = self.pending.len();
        self.pending.retain(|_, p| p.local != local);
        let was_pending = self.pending.len() != before;
        let was_matched = self.matched.remove(&local).is_some();
        if was_matched {
            self.matched_order.retain(|l| *l != local);
        }
        was_pending || was_matched
    }

    /// The server entity a matched local stand-in became, while among the last
    /// [`SpawnConfig::max_matched`] matches.
    #[must_use]
    pub fn server_entity(&self, local: LocalSpawn) -> Option<EntityId> {
        self.matched.get(&local).copied()
    }

    /// Whether a prediction with `key` is waiting.
    #[must_use]
    pub fn is_pending(&self, key: &K) -> bool {
        self.pending.contains_key(key)
    }

    /// Predictions waiting for the server's entity.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> &SpawnStats {
        &self.stats
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &SpawnConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A body with momentum: floats with rounding, so a replay that differs in any way from
    /// the prediction shows.
    struct Body;

    #[derive(Debug, Clone, Copy, PartialEq)]
    struct BodyState {
        x: f32,
        v: f32,
    }

    impl Simulate for Body {
        type State = BodyState;
        type Input = i8;
        fn step(&self, s: &BodyState, input: &i8) -> BodyState {
            let v = s.v * 0.9 + f32::from(*input) * 0.37;
            BodyState {
                x: s.x + v / 30.0,
                v,
            }
        }
        fn distance(&self, a: &BodyState, b: &BodyState) -> f32 {
            (a.x - b.x).abs()
        }
        fn blend(&self, a: &BodyState, b: &BodyState, t: f32) -> BodyState {
            BodyState {
                x: a.x + (b.x - a.x) * t,
                v: a.v + (b.v - a.v) * t,
            }
        }
    }

    /// A dot on a line moved by its input.
    struct Walk;

    impl Simulate for Walk {
        type State = f32;
        type Input = f32;
        fn step(&self, x: &f32, v: &f32) -> f32 {
            x + v
        }
        fn distance(&self, a: &f32, b: &f32) -> f32 {
            (a - b).abs()
        }
        fn blend(&self, a: &f32, b: &f32, t: f32) -> f32 {
            a + (b - a) * t
        }
    }

    const MS: Duration = Duration::from_millis(1);

    fn walk(config: PredictionConfig) -> Predictor<Walk> {
        Predictor::new(Walk, Tick(0), 0.0, config)
    }

    proptest! {
        // Failures print the shrunk case; no regression file is written into the crate.
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::with_cases(256)
        })]

        /// Test 1: with the same deterministic step on both sides and nothing interfering,
        /// every reconciliation reproduces the prediction bit for bit, whatever the delays,
        /// reordering and losses of the authoritative states, across tick wrap-around.
        #[test]
        fn replay_reproduces_the_prediction_exactly(
            inputs in proptest::collection::vec(-3i8..=3, 1..200),
            delays in proptest::collection::vec(0u32..20, 200),
            lost in proptest::collection::vec(proptest::bool::weighted(0.1), 200),
            near_wrap in any::<bool>(),
            skip_matching_replay in any::<bool>(),
        ) {
            let start = if near_wrap { Tick(u32::MAX - 60) } else { Tick(1000) };
            let initial = BodyState { x: 1.5, v: 0.25 };
            let config = PredictionConfig { skip_matching_replay, ..PredictionConfig::default() };
            let mut client = Predictor::new(Body, start, initial, config);
            // The server's states, computed independently.
            let mut server = vec![initial];
            for i in &inputs {
                let next = Body.step(server.last().unwrap(), i);
                server.push(next);
            }
            let n = inputs.len();
            let mut tick = start;
            for k in 1..=n {
                tick = tick.next();
                let now = MS * (33 * k as u32);
                let p = *client.apply_input(tick, inputs[k - 1]).unwrap();
                prop_assert_eq!(p, server[k]);
                // Deliver, in generation order, every server state arriving this tick.
                for j in 1..=k {
                    if !lost[j - 1] && j + delays[j - 1] as usize == k {
                        let st = Tick(start.0.wrapping_add(j as u32));
                        let r = client.on_authoritative(st, server[j], now);
                        prop_assert!(
                            matches!(r.outcome, ReconcileOutcome::Replayed | ReconcileOutcome::Stale),
                            "{:?}", r
                        );
                        prop_assert_eq!(r.error, 0.0);
                        prop_assert!(!r.corrected && !r.snapped);
                        if r.outcome == ReconcileOutcome::Replayed && !skip_matching_replay {
                            prop_assert_eq!(r.replayed, k - j);
                        }
                        prop_assert_eq!(client.predicted().x.to_bits(), server[k].x.to_bits());
                        prop_assert_eq!(client.predicted().v.to_bits(), server[k].v.to_bits());
                    }
                }
                prop_assert_eq!(client.visible(now), server[k]);
                prop_assert!(!client.is_smoothing(now));
            }
            let s = client.stats();
            prop_assert_eq!((s.corrections, s.snaps, s.resets, s.inputs_dropped), (0, 0, 0, 0));
            prop_assert_eq!(s.max_error, 0.0);
        }

        /// Test 3 (random part): any sequence of inputs and authoritative states, with ticks
        /// anywhere, never panics, keeps the history bounded and its ticks in order.
        #[test]
        fn any_sequence_is_handled(
            ops in proptest::collection::vec(
                (0u8..4, prop_oneof![-40i32..40, any::<i32>()], -100.0f32..100.0, 0u64..1000),
                0..300,
            ),
            history_ticks in 0usize..20,
        ) {
            let config = PredictionConfig { history_ticks, ..PredictionConfig::default() };
            let mut p = Predictor::new(Walk, Tick(5), 0.0, config);
            let cap = history_ticks.max(1);
            let mut now = Duration::ZERO;
            for (op, dt, value, ms) in ops {
                now += MS * ms as u32;
                match op {
                    0 | 1 => {
                        let tick = Tick(p.predicted_tick().0.wrapping_add(dt as u32));
                        let newest = p.predicted_tick();
                        let before = *p.predicted();
                        match p.apply_input(tick, value) {
                            Ok(_) => prop_assert_eq!(p.predicted_tick(), tick),
                            Err(InputError::NotAfterNewest { .. }) => {
                                prop_assert!(!tick.is_after(newest));
                                prop_assert_eq!(*p.predicted(), before);
                            }
                            Err(InputError::TooFarAhead { .. }) => {
                                let span = tick.diff(p.authoritative_tick());
                                prop_assert!(span <= 0 || span > MAX_SPAN_TICKS as i32);
                                prop_assert_eq!(*p.predicted(), before);
                            }
                        }
                    }
                    2 => {
                        let tick = Tick(p.authoritative_tick().0.wrapping_add(dt as u32));
                        let r = p.on_authoritative(tick, value, now);
                        if r.outcome == ReconcileOutcome::Stale {
                            prop_assert!(!r.corrected);
                        } else {
                            prop_assert_eq!(p.authoritative_tick(), tick);
                        }
                    }
                    _ => {
                        let _ = p.visible(now);
                        let _ = p.is_smoothing(now);
                    }
                }
                prop_assert!(p.pending_inputs() <= cap);
                let mut last = p.authoritative_tick();
                for (t, _) in p.unacknowledged() {
                    prop_assert!(t.is_after(last));
                    last = t;
                }
                prop_assert_eq!(last, p.predicted_tick());
            }
        }
    }

    /// Test 2: a push from the server is blended out over the smoothing time, monotonically
    /// and without overshoot.
    #[test]
    fn small_corrections_are_smoothed_monotonically() {
        let mut p = walk(PredictionConfig::default());
        for t in 1..=5 {
            p.apply_input(Tick(t), 1.0).unwrap();
        }
        assert_eq!(p.predicted(), &5.0);
        // Someone pushed us back by one unit at tick 2.
        let t0 = Duration::from_secs(1);
        let r = p.on_authoritative(Tick(2), 1.0, t0);
        assert_eq!(r.outcome, ReconcileOutcome::Replayed);
        assert_eq!(r.replayed, 3);
        assert!(r.corrected && !r.snapped);
        assert_eq!(r.error, 1.0);
        assert_eq!(p.predicted(), &4.0);
        // The screen does not jump...
        assert_eq!(p.visible(t0), 5.0);
        assert!(p.is_smoothing(t0));
        // ... and moves towards the corrected state, never past it or away from it.
        let mut last_to_new = f32::INFINITY;
        for ms in 0..=150u32 {
            let v = p.visible(t0 + MS * ms);
            let to_new = Walk.distance(&v, p.predicted());
            let from_old = Walk.distance(&v, &5.0);
            assert!(to_new <= last_to_new, "not monotonic at {ms} ms: {v}");
            assert!(from_old <= r.error + 1e-6, "overshoot at {ms} ms: {v}");
            assert!((4.0..=5.0).contains(&v), "{v}");
            last_to_new = to_new;
        }
        assert!((p.visible(t0 + MS * 50) - 4.5).abs() < 1e-5);
        assert_eq!(p.visible(t0 + MS * 100), 4.0);
        assert!(!p.is_smoothing(t0 + MS * 100));
        // A clock that went back shows the start of the correction, no panic.
        assert_eq!(p.visible(Duration::ZERO), 5.0);

        let s = p.stats();
        assert_eq!((s.corrections, s.snaps), (1, 0));
        assert_eq!(s.max_error, 1.0);
        assert_eq!(s.mean_error(), 1.0);
    }

    #[test]
    fn the_view_moves_with_the_player_while_smoothing() {
        let mut p = walk(PredictionConfig::default());
        for t in 1..=3 {
            p.apply_input(Tick(t), 1.0).unwrap();
        }
        let t0 = Duration::from_secs(2);
        p.on_authoritative(Tick(1), 0.0, t0); // pushed back by one
        assert_eq!(p.predicted(), &2.0);
        // The player keeps walking: both the corrected and the old timeline move along.
        p.apply_input(Tick(4), 1.0).unwrap();
        assert_eq!(p.visible(t0), 4.0);
        assert!((p.visible(t0 + MS * 50) - 3.5).abs() < 1e-5);
        assert_eq!(p.visible(t0 + MS * 100), 3.0);
    }

    #[test]
    fn a_correction_during_a_correction_does_not_jump() {
        let mut p = walk(PredictionConfig::default());
        for t in 1..=6 {
            p.apply_input(Tick(t), 1.0).unwrap();
        }
        let t0 = Duration::from_secs(1);
        p.on_authoritative(Tick(1), 0.0, t0); // 6 -> 5
        let mid = t0 + MS * 40;
        let before = p.visible(mid);
        let r = p.on_authoritative(Tick(2), 0.0, mid); // 5 -> 4
        assert!(r.corrected && !r.snapped);
        assert_eq!(p.predicted(), &4.0);
        assert!((p.visible(mid) - before).abs() < 1e-6);
        assert_eq!(p.visible(mid + MS * 100), 4.0);
        assert_eq!(p.stats().corrections, 2);
        assert_eq!(p.stats().mean_error(), 1.0);
    }

    #[test]
    fn large_corrections_snap_and_are_counted() {
        let mut p = walk(PredictionConfig::default());
        for t in 1..=4 {
            p.apply_input(Tick(t), 1.0).unwrap();
        }
        let t0 = Duration::from_secs(1);
        // A small one first, still being smoothed when the big one lands.
        p.on_authoritative(Tick(1), 0.5, t0);
        assert!(p.is_smoothing(t0));
        let r = p.on_authoritative(Tick(2), 12.0, t0 + MS * 10);
        assert!(r.corrected && r.snapped);
        assert_eq!(r.error, 10.5);
        assert_eq!(p.predicted(), &14.0);
        assert_eq!(p.visible(t0 + MS * 10), 14.0);
        assert!(!p.is_smoothing(t0 + MS * 10));
        let s = p.stats();
        assert_eq!((s.corrections, s.snaps), (2, 1));
        assert_eq!(s.max_error, 10.5);
        assert_eq!(s.mean_error(), 5.5);
        // Exactly the snap distance still smooths.
        let r = p.on_authoritative(Tick(3), 17.0, t0 + MS * 20);
        assert_eq!(r.error, 4.0);
        assert!(!r.snapped);
    }

    #[test]
    fn zero_smoothing_and_nan_distances() {
        let mut p = walk(PredictionConfig {
            smoothing: Duration::ZERO,
            ..PredictionConfig::default()
        });
        p.apply_input(Tick(1), 1.0).unwrap();
        p.apply_input(Tick(2), 1.0).unwrap();
        let r = p.on_authoritative(Tick(1), 0.0, Duration::ZERO);
        assert!(r.corrected && !r.snapped);
        assert_eq!(p.visible(Duration::ZERO), 1.0);
        // A NaN state: the distance is NaN, which snaps; the NaN stays out of the counters.
        let r = p.on_authoritative(Tick(2), f32::NAN, Duration::ZERO);
        assert!(r.snapped && r.error.is_nan());
        assert_eq!(p.stats().max_error, 1.0);
        assert_eq!(p.stats().snaps, 1);
    }

    /// Test 3: the history is bounded, and states outside it are handled as documented.
    #[test]
    fn history_is_bounded_and_old_states_reset() {
        let mut p = walk(PredictionConfig {
            history_ticks: 8,
            ..PredictionConfig::default()
        });
        for t in 1..=100 {
            p.apply_input(Tick(t), 1.0).unwrap();
        }
        assert_eq!(p.pending_inputs(), 8);
        assert_eq!(p.stats().inputs_dropped, 92);
        let ticks: Vec<u32> = p.unacknowledged().map(|(t, _)| t.0).collect();
        assert_eq!(ticks, (93..=100).collect::<Vec<_>>());

        // The newest dropped input is covered by tick 92: an ordinary replay of the 8 kept
        // (the prediction for 92 left with its input, so the replay cannot be skipped).
        let mut q = walk(PredictionConfig {
            history_ticks: 8,
            ..PredictionConfig::default()
        });
        for t in 1..=100 {
            q.apply_input(Tick(t), 1.0).unwrap();
        }
        let r = q.on_authoritative(Tick(92), 92.0, Duration::ZERO);
        assert_eq!((r.outcome, r.replayed), (ReconcileOutcome::Replayed, 8));
        assert!(!r.corrected);
        let r = q.on_authoritative(Tick(93), 90.0, Duration::ZERO);
        assert_eq!((r.outcome, r.replayed), (ReconcileOutcome::Replayed, 7));
        assert_eq!(q.predicted(), &97.0);

        // Tick 50 would need inputs 51..=92, which are gone: reset to the server's state.
        let r = p.on_authoritative(Tick(50), 40.0, Duration::from_secs(1));
        assert_eq!(r.outcome, ReconcileOutcome::Reset);
        assert!(r.snapped && r.corrected);
        assert_eq!(r.error, 60.0);
        assert_eq!(p.predicted(), &40.0);
        assert_eq!(p.visible(Duration::from_secs(1)), 40.0);
        assert_eq!(p.pending_inputs(), 0);
        assert_eq!(
            (p.predicted_tick(), p.authoritative_tick()),
            (Tick(50), Tick(50))
        );
        assert_eq!(p.stats().resets, 1);
        assert_eq!(p.stats().corrections, 0);
        // Prediction carries on from there.
        assert_eq!(p.apply_input(Tick(101), 1.0), Ok(&41.0));

        // Older than the last authoritative tick, or a duplicate: ignored.
        for tick in [Tick(40), Tick(50), Tick(u32::MAX)] {
            let r = p.on_authoritative(tick, -7.0, Duration::from_secs(1));
            assert_eq!(r.outcome, ReconcileOutcome::Stale);
            assert!(!r.corrected);
        }
        assert_eq!(p.predicted(), &41.0);
        assert_eq!(p.stats().stale, 3);

        // After every predicted tick: adopted as is, pending inputs dropped.
        let r = p.on_authoritative(Tick(500), 41.5, Duration::from_secs(1));
        assert_eq!(r.outcome, ReconcileOutcome::Ahead);
        assert!(r.corrected && !r.snapped);
        assert_eq!(p.pending_inputs(), 0);
        assert_eq!(p.predicted_tick(), Tick(500));
        assert_eq!(
            p.apply_input(Tick(200), 1.0),
            Err(InputError::NotAfterNewest {
                tick: Tick(200),
                newest: Tick(500),
            })
        );
        assert_eq!(p.apply_input(Tick(501), 1.0), Ok(&42.5));
    }

    #[test]
    fn a_history_of_zero_keeps_one_input() {
        let mut p = walk(PredictionConfig {
            history_ticks: 0,
            ..PredictionConfig::default()
        });
        for t in 1..=5 {
            p.apply_input(Tick(t), 1.0).unwrap();
        }
        assert_eq!(p.pending_inputs(), 1);
        let r = p.on_authoritative(Tick(4), 4.0, Duration::ZERO);
        assert_eq!((r.outcome, r.replayed), (ReconcileOutcome::Replayed, 1));
        assert_eq!(p.predicted(), &5.0);
    }

    #[test]
    fn reset_starts_over_anywhere() {
        let mut p = walk(PredictionConfig::default());
        p.apply_input(Tick(1), 1.0).unwrap();
        p.on_authoritative(Tick(1), 0.0, Duration::ZERO);
        p.reset(Tick(0), 9.0);
        assert_eq!((p.predicted(), p.pending_inputs()), (&9.0, 0));
        assert_eq!(p.visible(Duration::ZERO), 9.0);
        assert_eq!(p.apply_input(Tick(1), 1.0), Ok(&10.0));
        let far = Tick(MAX_SPAN_TICKS + 1);
        assert_eq!(
            p.apply_input(far, 1.0),
            Err(InputError::TooFarAhead {
                tick: far,
                authoritative: Tick(0),
            })
        );
        assert_eq!(p.apply_input(Tick(MAX_SPAN_TICKS), 1.0), Ok(&11.0));
    }

    fn key(tick: u32, seq: u32) -> SpawnKey {
        SpawnKey {
            tick: Tick(tick),
            seq,
            kind: 1,
        }
    }

    /// Test 4: a predicted spawn is matched once; an unmatched one expires and is counted.
    #[test]
    fn predicted_spawns_match_once_and_expire() {
        let mut m = SpawnMatcher::new(SpawnConfig::default());
        let a = m.predict(Tick(10), key(10, 0)).unwrap();
        let b = m.predict(Tick(10), key(10, 1)).unwrap();
        assert_ne!(a, b);
        assert_eq!(
            m.predict(Tick(10), key(10, 0)),
            Err(SpawnError::DuplicateKey)
        );

        let hit = m.on_server_spawn(&key(10, 0), EntityId(7)).unwrap();
        assert_eq!(
            hit,
            SpawnMatch {
                local: a,
                entity: EntityId(7),
                key: key(10, 0),
            }
        );
        assert_eq!(m.server_entity(a), Some(EntityId(7)));
        assert_eq!(m.on_server_spawn(&key(10, 0), EntityId(8)), None);
        assert_eq!(m.server_entity(a), Some(EntityId(7)));
        assert_eq!(m.stats().unmatched_server, 1);

        // `b` is never confirmed: kept for 60 ticks, expired after.
        assert!(m.expire(Tick(70)).is_empty());
        assert!(m.is_pending(&key(10, 1)));
        let gone = m.expire(Tick(71));
        assert_eq!(
            gone,
            vec![ExpiredSpawn {
                local: b,
                key: key(10, 1),
                tick: Tick(10),
            }]
        );
        assert_eq!(m.pending(), 0);
        // A server entity arriving after expiry matches nothing.
        assert_eq!(m.on_server_spawn(&key(10, 1), EntityId(9)), None);
        assert_eq!(m.server_entity(b), None);
        let s = *m.stats();
        assert_eq!(
            (s.predicted, s.matched, s.expired, s.unmatched_server),
            (2, 1, 1, 2)
        );
    }

    #[test]
    fn spawn_matcher_is_bounded() {
        let mut m = SpawnMatcher::new(SpawnConfig {
            max_pending: 4,
            max_matched: 2,
            ..SpawnConfig::default()
        });
        let locals: Vec<_> = (0..4)
            .map(|i| m.predict(Tick(1), key(1, i)).unwrap())
            .collect();
        assert_eq!(
            m.predict(Tick(1), key(1, 9)),
            Err(SpawnError::Full { max: 4 })
        );
        for i in 0..4 {
            m.on_server_spawn(&key(1, i), EntityId(100 + i)).unwrap();
        }
        // Only the last two matches are remembered.
        assert_eq!(m.server_entity(locals[0]), None);
        assert_eq!(m.server_entity(locals[1]), None);
        assert_eq!(m.server_entity(locals[3]), Some(EntityId(103)));
        // A bogus stamp far in the future does not hold a slot for ever.
        m.predict(Tick(1_000_000), key(1_000_000, 0)).unwrap();
        assert_eq!(m.expire(Tick(2)).len(), 1);
        assert_eq!(m.pending(), 0);
    }

    #[test]
    fn spawns_match_by_function_oldest_first_and_can_be_forgotten() {
        let mut m = SpawnMatcher::new(SpawnConfig::default());
        let a = m.predict(Tick(3), (3u32, "rocket")).unwrap();
        let b = m.predict(Tick(4), (4u32, "rocket")).unwrap();
        let c = m.predict(Tick(4), (4u32, "grenade")).unwrap();
        let hit = m.match_with(EntityId(1), |k| k.1 == "rocket").unwrap();
        assert_eq!(hit.local, a);
        let hit = m.match_with(EntityId(2), |k| k.1 == "rocket").unwrap();
        assert_eq!(hit.local, b);
        assert!(m.match_with(EntityId(3), |k| k.1 == "rocket").is_none());
        // The game removed its grenade itself.
        assert!(m.forget(c));
        assert!(!m.forget(c));
        assert!(m.forget(a));
        assert_eq!(m.server_entity(a), None);
        assert_eq!(m.server_entity(b), Some(EntityId(2)));
        assert_eq!(m.pending(), 0);
    }
}
