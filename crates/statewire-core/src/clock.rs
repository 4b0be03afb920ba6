//! Tick and clock synchronisation: the client's simulation clock ([`TickClock`]) and the
//! server's record of how early inputs arrive ([`InputTiming`]).
//!
//! # Model
//!
//! The server simulates tick `n` at server time `n / tick_rate`; an input stamped for tick `n`
//! is useful only if it reaches the server before then. So the client runs its own simulation
//! *ahead* of the server, by its *lead*: the one-way trip of an input (estimated as RTT/2) plus
//! a safety margin that grows with the network's jitter. Inputs it sends for the tick it is
//! simulating then land just before the server needs them, and no earlier than necessary
//! (a larger lead means more mispredictions to correct).
//!
//! The client never sees the server's clock, only snapshots stamped with server ticks and an
//! RTT sample from its session. From each, [`TickClock::on_server_tick`] updates
//!
//! * a smoothed RTT and a jitter estimate (the mean deviation of RTT samples, as RFC 6298's
//!   `RTTVAR`), both exponentially weighted with a bounded weight;
//! * an estimate of the server's current tick: `now × tick_rate + offset`, where each snapshot
//!   gives an offset sample `server_tick + RTT/2 × tick_rate − now × tick_rate`, smoothed;
//! * the *target lead* (in ticks): `RTT/2 × rate + max(min_margin, margin_jitter_factor ×
//!   jitter × rate) + correction`, capped at `max_lead`. The correction comes from the
//!   server's reports ([`TickClock::on_input_report`]): comparing how early inputs arrive
//!   with the lead the client had when it sent them measures lateness the RTT does not show
//!   (inputs queued on the way or at the server, inputs sent late in their tick), which is
//!   then added to the lead, slowly.
//!
//! An asymmetric path needs no correction: the server-tick estimate assumes snapshots take
//! RTT/2 and the lead adds RTT/2, so the two errors cancel and the lead over the *true*
//! server tick is the real way in plus the margin.
//!
//! The client's tick does not jump to the target. It advances at `tick_rate × (1 + adjust)`,
//! where `adjust` is proportional to the error between the target and the current lead and
//! clamped to `±max_adjust` (5 % by default). The motion is integrated exactly between calls,
//! so the speed never leaves that band, the tick never goes backwards and the lead never
//! overshoots the target, however rarely the clock is polled. Only at start, and when the
//! error exceeds `resync_threshold` (one second by default: the server restarted, or the
//! client was suspended), does the tick jump: a *resync*, counted in [`ClockStats::resyncs`]
//! and flagged on the next [`TickAdvance`].
//!
//! [`TickClock::advance`] tells the game loop which whole ticks to simulate now: those the
//! clock passed since the last call, at most `max_catch_up` of them; after a longer hitch the
//! oldest are skipped (counted in [`ClockStats::skipped_ticks`]) rather than simulated in a
//! burst. Time comes in as `now`, a [`Duration`] on any monotonic clock; nothing here reads a
//! clock.
//!
//! On the server, [`InputTiming`] records for each client how many ticks early its inputs
//! arrive, over a bounded window: the mean ([`InputTiming::early_by`]) and the least early
//! ([`InputTimingStats::least_early`]). The endpoints send the least early one back for
//! [`TickClock::on_input_report`], which aims the lead at nearly every input arriving in
//! time.
//!
//! # A whole loop
//!
//! A client 200 ms away from the server (100 ms each way), on a virtual clock:
//!
//! ```
//! use std::time::Duration;
//! use statewire_core::clock::{ClockConfig, InputTiming, InputTimingConfig, TickClock};
//! use statewire_core::{ClientId, Tick};
//!
//! let rate = 30.0;
//! let one_way = Duration::from_millis(100);
//! let mut clock = TickClock::new(ClockConfig::default());
//! let mut timing = InputTiming::new(InputTimingConfig::default());
//! let me = ClientId(1);
//! // (send time, tick it is for) of inputs on their way to the server.
//! let mut in_flight: Vec<(Duration, Tick)> = Vec::new();
//!
//! for frame in 0..600u64 {
//!     // A 60 Hz client frame.
//!     let now = Duration::from_millis(frame * 1000 / 60);
//!     // The server's tick when the latest snapshot the client has was sent.
//!     let sent = now.saturating_sub(one_way);
//!     let server_tick = Tick((sent.as_secs_f64() * rate) as u32);
//!     clock.on_server_tick(now, server_tick, 2 * one_way);
//!
//!     // Simulate the ticks that are due, sending one input for each.
//!     let step = clock.advance(now);
//!     for tick in step.ticks() {
//!         in_flight.push((now, tick));
//!     }
//!     // The server receives inputs sent one way earlier, and notes how early they are.
//!     in_flight.retain(|&(at, tick)| {
//!         if at + one_way > now {
//!             return true;
//!         }
//!         let server_next = Tick(((at + one_way).as_secs_f64() * rate) as u32 + 1);
//!         timing.on_input(me, tick, server_next).unwrap();
//!         false
//!     });
//!     // About once a second the server reports back.
//!     if frame % 60 == 59 {
//!         if let Some(early) = timing.early_by(me) {
//!             clock.on_input_report(now, early);
//!         }
//!     }
//! }
//! // The client runs RTT/2 plus a margin ahead, and its inputs are on time.
//! let lead = clock.lead(Duration::from_secs(10)).unwrap();
//! assert!((lead - clock.target_lead().unwrap()).abs() < 1.0);
//! assert!(lead > 3.0 && lead < 6.0, "lead {lead}");
//! assert_eq!(timing.late(me), 0);
//! assert_eq!(clock.stats().resyncs, 1); // the start
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use hashbrown::HashMap;

use crate::ids::{ClientId, Tick};

/// Ticks in the wrapping tick space, for folding unwrapped positions back into it.
const TICK_SPACE: f64 = 4_294_967_296.0;

/// RTT samples are clamped to this, so absurd samples cannot push the estimates to infinity.
const MAX_RTT: Duration = Duration::from_secs(60);

/// Settings of a [`TickClock`]. Out-of-range or non-finite values are clamped into range (or
/// replaced by the default) when the clock is built, never trusted.
#[derive(Debug, Clone, PartialEq)]
pub struct ClockConfig {
    /// Server ticks per second. Default 30; 0 is treated as 1.
    pub tick_rate_hz: u32,
    /// The jitter part of the margin is this many times the jitter estimate. Default 3.0
    /// (clamped to 0..=10): the estimate is a mean deviation, and one-way delays stray
    /// further than that from their mean (RFC 6298's timeout takes 4 times it).
    pub margin_jitter_factor: f64,
    /// The smallest margin, in ticks, on top of RTT/2. Default 1.0 (clamped to 0..=100).
    pub min_margin_ticks: f64,
    /// The largest lead the clock aims for, whatever the estimates say. Default 1 s.
    pub max_lead: Duration,
    /// The largest relative speed change: the clock runs at between `1 − max_adjust` and
    /// `1 + max_adjust` times the tick rate. Default 0.05 (clamped to 0..=0.5).
    pub max_adjust: f64,
    /// Speed change per tick of lead error, before the clamp: with the default 0.05 a one-tick
    /// error gives the full 5 %, and smaller errors decay with a time constant of
    /// `1 / (adjust_gain × tick_rate)` (0.67 s at 30 Hz). Clamped to 0.001..=1.
    pub adjust_gain: f64,
    /// Weight of a new sample in the smoothed RTT. Default 0.05 (clamped to 0.001..=1): a
    /// sample comes with every snapshot, many per round trip, so the weight is well below RFC
    /// 6298's per-round-trip 1/8; at 30 Hz the average spans about a second.
    pub rtt_alpha: f64,
    /// Weight of a new sample in the jitter estimate. Default 0.03 (clamped to 0.001..=1), for
    /// the same reason; a noisy jitter estimate would make the target lead wobble.
    pub jitter_alpha: f64,
    /// Weight of a new snapshot in the estimate of the server's tick. Default 0.1 (clamped
    /// to 0.001..=1): one-way delays vary, so single snapshots are noisy.
    pub offset_alpha: f64,
    /// An error between the lead and its target larger than this makes the clock jump instead
    /// of drifting (a resync). Default 1 s; at least one tick.
    pub resync_threshold: Duration,
    /// At most this many ticks are handed out by one [`TickClock::advance`]; older due ticks
    /// are skipped. Default 8; 0 is treated as 1.
    pub max_catch_up: u32,
    /// Weight per second of a server report in the correction (an exponential average of
    /// the one-way asymmetry the reports measure). Default 0.5 (clamped to 0..=10; 0 ignores
    /// reports).
    pub report_gain: f64,
    /// The span of time a server report averages over (its window of inputs: 32 inputs at
    /// 30 Hz by default, about a second). The client compares it with its own average lead
    /// over about that span. Default 1 s; at least one millisecond.
    pub report_window: Duration,
    /// The most lead the reports may add or remove. Default 250 ms.
    pub max_report_correction: Duration,
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig {
            tick_rate_hz: 30,
            margin_jitter_factor: 3.0,
            min_margin_ticks: 1.0,
            max_lead: Duration::from_secs(1),
            max_adjust: 0.05,
            adjust_gain: 0.05,
            rtt_alpha: 0.05,
            jitter_alpha: 0.03,
            offset_alpha: 0.1,
            resync_threshold: Duration::from_secs(1),
            max_catch_up: 8,
            report_gain: 0.5,
            report_window: Duration::from_secs(1),
            max_report_correction: Duration::from_millis(250),
        }
    }
}

/// `x` clamped to `lo..=hi`, or `default` when it is not a number.
fn sane(x: f64, lo: f64, hi: f64, default: f64) -> f64 {
    if x.is_finite() {
        x.clamp(lo, hi)
    } else {
        default
    }
}

impl ClockConfig {
    fn sanitized(self) -> Self {
        let d = ClockConfig::default();
        ClockConfig {
            tick_rate_hz: self.tick_rate_hz.max(1),
            margin_jitter_factor: sane(
                self.margin_jitter_factor,
                0.0,
                10.0,
                d.margin_jitter_factor,
            ),
            min_margin_ticks: sane(self.min_margin_ticks, 0.0, 100.0, d.min_margin_ticks),
            max_lead: self.max_lead.min(MAX_RTT),
            max_adjust: sane(self.max_adjust, 0.0, 0.5, d.max_adjust),
            adjust_gain: sane(self.adjust_gain, 0.001, 1.0, d.adjust_gain),
            rtt_alpha: sane(self.rtt_alpha, 0.001, 1.0, d.rtt_alpha),
            jitter_alpha: sane(self.jitter_alpha, 0.001, 1.0, d.jitter_alpha),
            offset_alpha: sane(self.offset_alpha, 0.001, 1.0, d.offset_alpha),
            resync_threshold: self.resync_threshold.min(MAX_RTT),
            max_catch_up: self.max_catch_up.max(1),
            report_gain: sane(self.report_gain, 0.0, 10.0, d.report_gain),
            report_window: self.report_window.clamp(Duration::from_millis(1), MAX_RTT),
            max_report_correction: self.max_report_correction.min(MAX_RTT),
        }
    }
}

/// Counters of a [`TickClock`], for diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClockStats {
    /// Times the clock jumped instead of drifting: once at start, then whenever the lead was
    /// more than `resync_threshold` off its target.
    pub resyncs: u64,
    /// Calls to [`TickClock::advance`] that skipped ticks because more than `max_catch_up`
    /// were due (a hitch in the game loop; the clock itself did not jump).
    pub catch_up_skips: u64,
    /// Ticks never handed out by [`TickClock::advance`]: skipped after a hitch or jumped over
    /// by a forward resync.
    pub skipped_ticks: u64,
    /// Snapshots whose tick was not newer than one already seen (duplicated or reordered).
    /// They still count as samples, unless they are more than `resync_threshold` off.
    pub stale_snapshots: u64,
    /// Time spent running faster than the tick rate by at least a tenth of `max_adjust`.
    pub time_fast: Duration,
    /// Time spent running slower than the tick rate by at least a tenth of `max_adjust`.
    pub time_slow: Duration,
}

/// What [`TickClock::advance`] says to simulate now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TickAdvance {
    /// The first tick to simulate now (when `count` is 0: the next tick that will be due).
    pub first: Tick,
    /// How many consecutive ticks from `first` to simulate now; at most `max_catch_up`.
    pub count: u32,
    /// Ticks that came due but are not handed out (after a hitch or a forward resync).
    pub skipped: u64,
    /// The clock jumped since the previous call: tick numbers do not follow on from the
    /// previous ticks (they may even repeat, after a backward resync).
    pub resynced: bool,
    /// The client's fractional tick now, in the wrapping tick space (`0.0..2^32`); `None`
    /// before the first snapshot.
    pub position: Option<f64>,
}

impl TickAdvance {
    /// The ticks to simulate now, in order.
    pub fn ticks(&self) -> impl Iterator<Item = Tick> + use<> {
        let first = self.first;
        (0..self.count).map(move |i| Tick(first.0.wrapping_add(i)))
    }
}

/// The synchronised state, present once the first snapshot arrived.
#[derive(Debug, Clone)]
struct Sync {
    /// The time `tick` refers to.
    last_now: Duration,
    /// The client's tick at `last_now`, unwrapped (it may exceed `u32`).
    tick: f64,
    /// The server's tick is estimated as `now × rate + offset` (unwrapped).
    offset: f64,
    /// The newest server tick seen, and where it sits unwrapped.
    server_latest: Tick,
    server_unwrapped: f64,
    /// Smoothed RTT and jitter, in seconds.
    srtt: f64,
    jitter: f64,
    /// Lead added (or removed) by the server's reports, in ticks.
    correction: f64,
    last_report: Option<Duration>,
    /// The lead averaged over about half the report window (what a report reflects).
    lead_avg: f64,
    /// The last whole tick handed out, unwrapped.
    last_simulated: i64,
    /// A resync happened since the last `advance`, and how many ticks it jumped over.
    pending_resync: bool,
    pending_skip: u64,
}

/// The client's simulation clock: runs ahead of the server by the target lead and says which
/// ticks to simulate (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct TickClock {
    config: ClockConfig,
    rate: f64,
    sync: Option<Sync>,
    stats: ClockStats,
}

/// The lead change (ticks) over `dt` seconds, starting at lead error `e0` (target − lead, in
/// ticks) under `adjust = clamp(gain × e, ±max)`, and the time spent above the fast/slow
/// threshold. Exact: a saturated linear phase, then exponential decay, so it never overshoots.
fn integrate(e0: f64, dt: f64, rate: f64, gain: f64, max: f64) -> (f64, f64) {
    let mag0 = e0.abs();
    if mag0 == 0.0 || dt <= 0.0 || max <= 0.0 {
        return (0.0, 0.0);
    }
    let mut mag = mag0;
    let mut left = dt;
    let mut above = 0.0;
    // Beyond this error the adjust is clamped at `max` and the lead moves linearly.
    let saturated = max / gain;
    if mag > saturated {
        let t = ((mag - saturated) / (rate * max)).min(left);
        mag -= rate * max * t;
        left -= t;
        above += t;
    }
    if left > 0.0 && mag > 0.0 {
        let k = gain * rate;
        let threshold = 0.1 * max / gain;
        if mag > threshold {
            above += ((mag / threshold).ln() / k).min(left);
        }
        mag *= (-k * left).exp();
    }
    let mag = mag.max(0.0);
    ((mag0 - mag) * e0.signum(), above.min(dt))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn duration(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(MAX_RTT)
}

/// An unwrapped tick folded into the wrapping tick space.
fn wrap(x: f64) -> f64 {
    x.rem_euclid(TICK_SPACE)
}

fn wrap_whole(x: i64) -> Tick {
    Tick(x.rem_euclid(1 << 32) as u32)
}

impl TickClock {
    /// A clock that has not seen the server yet.
    pub fn new(config: ClockConfig) -> Self {
        let config = config.sanitized();
        TickClock {
            rate: f64::from(config.tick_rate_hz),
            config,
            sync: None,
            stats: ClockStats::default(),
        }
    }

    /// The settings in use (after clamping).
    pub fn config(&self) -> &ClockConfig {
        &self.config
    }

    /// Whether a snapshot has arrived, so that the clock runs.
    pub fn is_synced(&self) -> bool {
        self.sync.is_some()
    }

    /// The counters.
    pub fn stats(&self) -> ClockStats {
        self.stats
    }

    fn target_of(&self, s: &Sync) -> f64 {
        let c = &self.config;
        let margin = (c.margin_jitter_factor * s.jitter * self.rate).max(c.min_margin_ticks);
        let lead = s.srtt / 2.0 * self.rate + margin + s.correction;
        lead.clamp(0.0, secs(c.max_lead) * self.rate)
    }

    fn margin_of(&self, s: &Sync) -> f64 {
        let c = &self.config;
        (c.margin_jitter_factor * s.jitter * self.rate).max(c.min_margin_ticks)
    }

    fn server_at(&self, s: &Sync, now: Duration) -> f64 {
        secs(now) * self.rate + s.offset
    }

    /// The unwrapped client tick at `now`, and the time spent fast or slow getting there.
    fn project(&self, s: &Sync, now: Duration) -> (f64, f64, f64) {
        let Some(dt) = now.checked_sub(s.last_now) else {
            // Time going backwards is ignored: the tick stays where it was.
            return (s.tick, 0.0, 0.0);
        };
        let dt = secs(dt);
        let e0 = self.target_of(s) - (s.tick - self.server_at(s, s.last_now));
        let c = &self.config;
        let (dlead, above) = integrate(e0, dt, self.rate, c.adjust_gain, c.max_adjust);
        let (fast, slow) = if e0 > 0.0 { (above, 0.0) } else { (0.0, above) };
        (s.tick + self.rate * dt + dlead, fast, slow)
    }

    /// Moves the committed state to `now`.
    fn integrate_to(&mut self, now: Duration) {
        let Some(s) = &self.sync else { return };
        if now <= s.last_now {
            return;
        }
        let (tick, fast, slow) = self.project(s, now);
        let lead = tick - self.server_at(s, now);
        // The inputs a report averages were sent over the last window; their mean lead is
        // about the lead half a window ago, which this average's lag matches.
        let tau = secs(self.config.report_window) / 2.0;
        let w = 1.0 - (-secs(now - s.last_now) / tau).exp();
        self.stats.time_fast += duration(fast);
        self.stats.time_slow += duration(slow);
        if let Some(s) = &mut self.sync {
            s.tick = tick;
            s.last_now = now;
            s.lead_avg += w * (lead - s.lead_avg);
        }
    }

    /// Puts the tick at the target lead, at once.
    fn resync(&mut self) {
        let Some(s) = &self.sync else { return };
        let target = self.target_of(s);
        let tick = self.server_at(s, s.last_now) + target;
        self.stats.resyncs += 1;
        if let Some(s) = &mut self.sync {
            // `as` saturates, so even absurd positions give a number.
            let before = (tick.floor() as i64).saturating_sub(1);
            let jumped = before.saturating_sub(s.last_simulated);
            if jumped > 0 {
                s.pending_skip = s.pending_skip.saturating_add(jumped as u64);
            }
            s.last_simulated = before;
            s.tick = tick;
            s.lead_avg = target;
            s.pending_resync = true;
        }
    }

    /// Feeds one snapshot: the server tick it was taken at, received at `now`, and the
    /// session's latest RTT sample. Call it for every snapshot; duplicated or reordered ones
    /// are harmless. The first call starts the clock (a resync).
    pub fn on_server_tick(&mut self, now: Duration, server_tick: Tick, rtt: Duration) {
        let rtt = secs(rtt.min(MAX_RTT));
        let rate = self.rate;
        let threshold = (secs(self.config.resync_threshold) * rate).max(1.0);
        if self.sync.is_none() {
            let unwrapped = f64::from(server_tick.0);
            self.sync = Some(Sync {
                last_now: now,
                tick: 0.0,
                offset: unwrapped + rtt / 2.0 * rate - secs(now) * rate,
                server_latest: server_tick,
                server_unwrapped: unwrapped,
                srtt: rtt,
                // As RFC 6298: half the first sample, a cautious start that shrinks quickly.
                // A cautious start (RFC 6298 takes half the sample) that settles within a
                // second or so of snapshots.
                jitter: rtt / 4.0,
                correction: 0.0,
                last_report: None,
                lead_avg: 0.0,
                last_simulated: 0,
                pending_resync: false,
                pending_skip: 0,
            });
            self.resync();
            // The jump from nothing is not a skip.
            if let Some(s) = &mut self.sync {
                s.pending_skip = 0;
            }
            return;
        }
        self.integrate_to(now);
        let c = &self.config;
        let (rtt_alpha, jitter_alpha, offset_alpha) = (c.rtt_alpha, c.jitter_alpha, c.offset_alpha);
        let Some(s) = &mut self.sync else { return };
        // RTTVAR before SRTT, with the old SRTT, as RFC 6298.
        s.jitter += jitter_alpha * ((rtt - s.srtt).abs() - s.jitter);
        s.srtt += rtt_alpha * (rtt - s.srtt);
        let d = server_tick.diff(s.server_latest);
        let newer = d > 0;
        if newer {
            s.server_latest = server_tick;
            s.server_unwrapped += f64::from(d);
        } else {
            self.stats.stale_snapshots += 1;
        }
        // A reordered snapshot is still a fair sample: it was slow, and dropping the slow
        // ones would bias the estimate towards the fast ones.
        let unwrapped = if newer {
            s.server_unwrapped
        } else {
            s.server_unwrapped + f64::from(d)
        };
        let sample = unwrapped + s.srtt / 2.0 * rate - secs(now.max(s.last_now)) * rate;
        if (sample - s.offset).abs() <= threshold {
            s.offset += offset_alpha * (sample - s.offset);
        } else if newer {
            // The server jumped (restart, long stall): believe it at once, not over many
            // snapshots, or the clock would resync several times on the way. An old
            // straggler that far off is just ignored.
            s.offset = sample;
        }
        let Some(s) = &self.sync else { return };
        let error = self.target_of(s) - (s.tick - self.server_at(s, s.last_now));
        if error.abs() > threshold {
            self.resync();
        }
    }

    /// Feeds the server's report of how many ticks early this client's inputs arrive,
    /// received at `now`; send one about once per report window, and only after new inputs
    /// (a repeated stale report keeps moving the lead). The lead moves until the reported
    /// input arrives about the margin early (less half a tick, as the server counts whole
    /// ticks): reporting the mean ([`InputTiming::early_by`]) aims at the average input,
    /// reporting the least early of the window ([`InputTimingStats::least_early`], what the
    /// endpoints do) at nearly all of them, covering the jitter that the smoothed round trip
    /// hides. Non-finite reports are ignored.
    pub fn on_input_report(&mut self, now: Duration, early_by: f32) {
        if !early_by.is_finite() || self.sync.is_none() {
            return;
        }
        self.integrate_to(now);
        let rate = self.rate;
        let gain = self.config.report_gain;
        let limit = secs(self.config.max_report_correction) * rate;
        let Some(s) = &mut self.sync else { return };
        // An input sent with lead L over a way in of `up` ticks arrives L − up early, and the
        // server's whole-tick count takes another half tick on average. So the report
        // measures `up` (as seen through our estimate of the server tick), and `up − RTT/2`
        // is the lateness the RTT does not account for.
        let asymmetry = s.lead_avg - 0.5 - f64::from(early_by) - s.srtt / 2.0 * rate;
        // Weight by the time since the previous report (at most a second), so that frequent
        // reports do not multiply the gain.
        let dt = s
            .last_report
            .map_or(Duration::from_secs(1), |t| now.saturating_sub(t))
            .min(Duration::from_secs(1));
        s.last_report = Some(s.last_report.map_or(now, |t| t.max(now)));
        let w = (gain * secs(dt)).min(1.0);
        s.correction = (s.correction + w * (asymmetry - s.correction)).clamp(-limit, limit);
    }

    /// Moves the clock to `now` and says which ticks to simulate: those it passed since the
    /// previous call, at most `max_catch_up`. Before the first snapshot nothing is due.
    pub fn advance(&mut self, now: Duration) -> TickAdvance {
        self.integrate_to(now);
        let max = i64::from(self.config.max_catch_up);
        let Some(s) = &mut self.sync else {
            return TickAdvance {
                first: Tick(0),
                count: 0,
                skipped: 0,
                resynced: false,
                position: None,
            };
        };
        let whole = s.tick.floor() as i64;
        let due = whole.saturating_sub(s.last_simulated).max(0);
        let count = due.min(max);
        let hitch = due - count;
        let mut skipped = std::mem::take(&mut s.pending_skip);
        if hitch > 0 {
            self.stats.catch_up_skips += 1;
            skipped = skipped.saturating_add(hitch as u64);
        }
        self.stats.skipped_ticks = self.stats.skipped_ticks.saturating_add(skipped);
        let first = s.last_simulated.saturating_add(hitch).saturating_add(1);
        if due > 0 {
            s.last_simulated = whole;
        }
        TickAdvance {
            first: wrap_whole(first),
            count: count as u32,
            skipped,
            resynced: std::mem::take(&mut s.pending_resync),
            position: Some(wrap(s.tick)),
        }
    }

    /// The client's fractional tick at `now` (in `0.0..2^32`), without handing out ticks;
    /// `None` before the first snapshot. Stamp inputs with it rounded up.
    pub fn current(&self, now: Duration) -> Option<f64> {
        let s = self.sync.as_ref()?;
        Some(wrap(self.project(s, now).0))
    }

    /// The estimated server tick at `now` (fractional, in `0.0..2^32`).
    pub fn server_tick_estimate(&self, now: Duration) -> Option<f64> {
        let s = self.sync.as_ref()?;
        Some(wrap(self.server_at(s, now)))
    }

    /// How many ticks the client is ahead of the estimated server tick at `now`.
    pub fn lead(&self, now: Duration) -> Option<f64> {
        let s = self.sync.as_ref()?;
        Some(self.project(s, now).0 - self.server_at(s, now))
    }

    /// The lead the clock steers to, in ticks: RTT/2 plus the margin plus the reports'
    /// correction, at most `max_lead`.
    pub fn target_lead(&self) -> Option<f64> {
        self.sync.as_ref().map(|s| self.target_of(s))
    }

    /// The margin part of the target, in ticks: `max(min_margin, factor × jitter)`.
    pub fn margin(&self) -> Option<f64> {
        self.sync.as_ref().map(|s| self.margin_of(s))
    }

    /// The correction from the server's reports, in ticks (positive: more lead).
    pub fn report_correction(&self) -> Option<f64> {
        self.sync.as_ref().map(|s| s.correction)
    }

    /// The relative speed at `now`: the clock runs at `tick_rate × (1 + adjust)`.
    pub fn adjust(&self, now: Duration) -> f64 {
        let Some(s) = &self.sync else { return 0.0 };
        let (tick, _, _) = self.project(s, now);
        let error = self.target_of(s) - (tick - self.server_at(s, now));
        (self.config.adjust_gain * error).clamp(-self.config.max_adjust, self.config.max_adjust)
    }

    /// The smoothed RTT, once a snapshot arrived.
    pub fn rtt(&self) -> Option<Duration> {
        self.sync.as_ref().map(|s| duration(s.srtt))
    }

    /// The jitter estimate (mean deviation of the RTT samples), once a snapshot arrived.
    pub fn jitter(&self) -> Option<Duration> {
        self.sync.as_ref().map(|s| duration(s.jitter))
    }
}

/// Settings of an [`InputTiming`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputTimingConfig {
    /// Inputs per client the mean is taken over (the newest ones). Default 32, about a second
    /// at 30 Hz; 0 is treated as 1.
    pub window: usize,
    /// Clients tracked at once; inputs from more are refused. Default 4096.
    pub max_clients: usize,
}

impl Default for InputTimingConfig {
    fn default() -> Self {
        InputTimingConfig {
            window: 32,
            max_clients: 4096,
        }
    }
}

/// Why [`InputTiming::on_input`] refused an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputTimingError {
    /// The client is new and `max_clients` are already tracked.
    #[error("already tracking {0} clients")]
    TooManyClients(usize),
}

/// One client's record, for [`InputTiming::stats`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputTimingStats {
    /// Mean ticks early over the window (negative: late).
    pub early_by: f32,
    /// The least early input in the window, in ticks (negative: late): the tail of the
    /// delay distribution, which a lead aimed at the mean leaves late about half the time.
    pub least_early: i32,
    /// Inputs in the window.
    pub samples: usize,
    /// Inputs that arrived after their tick, ever.
    pub late: u64,
    /// Inputs recorded, ever.
    pub received: u64,
}

#[derive(Debug, Clone, Default)]
struct ClientTiming {
    window: VecDeque<i32>,
    /// Sum of `window`, kept so the mean costs nothing; i64 cannot overflow from 2^31 values of
    /// at most 2^31 each.
    sum: i64,
    late: u64,
    received: u64,
}

/// The server's record of how early each client's inputs arrive (see the
/// [module docs](self)). Memory is bounded: `window` numbers per client, `max_clients`
/// clients; call [`InputTiming::remove_client`] when one leaves.
#[derive(Debug, Clone)]
pub struct InputTiming {
    window: usize,
    max_clients: usize,
    clients: HashMap<ClientId, ClientTiming>,
}

impl InputTiming {
    /// An empty record.
    pub fn new(config: InputTimingConfig) -> Self {
        InputTiming {
            window: config.window.max(1),
            max_clients: config.max_clients,
            clients: HashMap::new(),
        }
    }

    /// Records an input from `client` stamped for `for_tick` that arrived when the next tick
    /// the server will simulate is `arrived_at` (the earliest tick it can still be used for).
    /// Returns how many ticks early it is: 0 is just in time, negative is late.
    pub fn on_input(
        &mut self,
        client: ClientId,
        for_tick: Tick,
        arrived_at: Tick,
    ) -> Result<i32, InputTimingError> {
        if !self.clients.contains_key(&client) && self.clients.len() >= self.max_clients {
            return Err(InputTimingError::TooManyClients(self.max_clients));
        }
        let record = self.clients.entry(client).or_default();
        let early = for_tick.diff(arrived_at);
        if record.window.len() >= self.window {
            if let Some(old) = record.window.pop_front() {
                record.sum -= i64::from(old);
            }
        }
        record.window.push_back(early);
        record.sum += i64::from(early);
        record.received = record.received.saturating_add(1);
        if early < 0 {
            record.late = record.late.saturating_add(1);
        }
        Ok(early)
    }

    /// The mean number of ticks early over the window; `None` for a client with no inputs.
    pub fn early_by(&self, client: ClientId) -> Option<f32> {
        self.stats(client).map(|s| s.early_by)
    }

    /// How many of the client's inputs arrived late, ever (0 for an unknown client).
    pub fn late(&self, client: ClientId) -> u64 {
        self.clients.get(&client).map_or(0, |r| r.late)
    }

    /// The client's whole record.
    pub fn stats(&self, client: ClientId) -> Option<InputTimingStats> {
        let r = self.clients.get(&client)?;
        if r.window.is_empty() {
            return None;
        }
        Some(InputTimingStats {
            early_by: (r.sum as f64 / r.window.len() as f64) as f32,
            least_early: r.window.iter().copied().min().unwrap_or(0),
            samples: r.window.len(),
            late: r.late,
            received: r.received,
        })
    }

    /// Forgets a client; returns whether it was tracked.
    pub fn remove_client(&mut self, client: ClientId) -> bool {
        self.clients.remove(&client).is_some()
    }

    /// How many clients are tracked.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_rng::Rng;

    const RATE: f64 = 30.0;
    const MS: u64 = 1000;

    fn us(t: u64) -> Duration {
        Duration::from_micros(t)
    }

    /// One client frame as the simulation saw it.
    #[derive(Debug, Clone, Copy)]
    struct Frame {
        t: f64,
        /// The client's unwrapped tick.
        tick: f64,
        /// Client tick minus the true server tick.
        true_lead: f64,
        target: f64,
        resynced: bool,
        count: u32,
    }

    /// A client and a server on a virtual clock (microseconds), with uniform one-way delays.
    struct Sim {
        seed: u64,
        rng: Rng,
        clock: TickClock,
        timing: InputTiming,
        /// The server's tick at time 0.
        base: u32,
        /// One-way delays in seconds: (mean, ± spread), client to server and back.
        up: (f64, f64),
        down: (f64, f64),
        reports: bool,
        /// Extra delay of inputs only (queueing the RTT samples do not see), seconds.
        input_extra: f64,
        now: u64,
        next_send: u64,
        next_frame: u64,
        next_report: u64,
        snapshots: Vec<(u64, Tick, Duration)>,
        inputs: Vec<(u64, Tick)>,
        /// Inputs for the ticks `advance` handed out: (on time, late).
        handed: (u64, u64),
        /// Inputs stamped with `current()` rounded up: (on time, late).
        ceiled: (u64, u64),
        frames: Vec<Frame>,
    }

    const ME: ClientId = ClientId(7);

    impl Sim {
        fn new(seed: u64, rtt: f64, spread: f64) -> Self {
            Sim {
                seed,
                rng: Rng(seed),
                clock: TickClock::new(ClockConfig::default()),
                timing: InputTiming::new(InputTimingConfig::default()),
                base: 1000,
                up: (rtt / 2.0, spread),
                down: (rtt / 2.0, spread),
                reports: true,
                input_extra: 0.0,
                now: 0,
                next_send: 0,
                next_frame: 0,
                next_report: 1_000 * MS,
                snapshots: Vec::new(),
                inputs: Vec::new(),
                handed: (0, 0),
                ceiled: (0, 0),
                frames: Vec::new(),
            }
        }

        fn server_at(&self, t: u64) -> f64 {
            f64::from(self.base) + t as f64 / 1e6 * RATE
        }

        fn delay(&mut self, (mid, spread): (f64, f64)) -> u64 {
            (self.rng.around(mid, spread).max(0.0) * 1e6) as u64
        }

        /// Late if the server's (continuous) tick at arrival is past the input's tick.
        fn arrives_late(&self, arrival: u64, for_tick: f64) -> bool {
            self.server_at(arrival) > for_tick
        }

        fn run(&mut self, seconds: f64) {
            let end = self.now + (seconds * 1e6) as u64;
            while self.now < end {
                self.now += MS;
                let now = self.now;
                // The server sends a snapshot per tick; its RTT sample is a fresh round trip.
                while self.next_send <= now {
                    let n = (self.next_send as f64 / 1e6 * RATE).round() as u32;
                    let down = self.delay(self.down);
                    let rtt = down + self.delay(self.up);
                    self.snapshots.push((
                        self.next_send + down,
                        Tick(self.base.wrapping_add(n)),
                        us(rtt),
                    ));
                    self.next_send = u64::from(n + 1) * 1_000_000 / RATE as u64;
                }
                self.snapshots.sort_by_key(|s| s.0);
                while self.snapshots.first().is_some_and(|s| s.0 <= now) {
                    let (_, tick, rtt) = self.snapshots.remove(0);
                    self.clock.on_server_tick(us(now), tick, rtt);
                }
                // Inputs reach the server; it notes how early they are.
                let mut i = 0;
                while i < self.inputs.len() {
                    let (arrival, tick) = self.inputs[i];
                    if arrival > now {
                        i += 1;
                        continue;
                    }
                    self.inputs.swap_remove(i);
                    let server_next = Tick((self.server_at(arrival).floor() as i64 + 1) as u32);
                    self.timing.on_input(ME, tick, server_next).unwrap();
                }
                if self.reports && now >= self.next_report {
                    self.next_report += 1_000 * MS;
                    if let Some(early) = self.timing.early_by(ME) {
                        self.clock.on_input_report(us(now), early);
                    }
                }
                if now >= self.next_frame {
                    // A ~60 Hz frame with a little scheduling noise.
                    self.next_frame += 14 * MS + self.rng.next() % (5 * MS);
                    self.frame();
                }
            }
        }

        fn frame(&mut self) {
            let now = self.now;
            let step = self.clock.advance(us(now));
            let Some(s) = self.clock.sync.as_ref() else {
                assert_eq!(step.count, 0);
                return;
            };
            let tick = s.tick;
            // The unwrapped number of the first handed-out tick.
            let first = s.last_simulated - i64::from(step.count) + 1;
            let extra = (self.input_extra * 1e6) as u64;
            for i in 0..step.count {
                let arrival = now + self.delay(self.up) + extra;
                let k = first + i64::from(i);
                let late = self.arrives_late(arrival, k as f64);
                if late {
                    self.handed.1 += 1
                } else {
                    self.handed.0 += 1
                }
                self.inputs.push((arrival, wrap_whole(k)));
                assert_eq!(wrap_whole(k), Tick(step.first.0.wrapping_add(i)));
            }
            // The brief's stamping: `current()` rounded up, at any moment.
            let arrival = now + self.delay(self.up) + extra;
            let late = self.arrives_late(arrival, tick.ceil());
            if late {
                self.ceiled.1 += 1
            } else {
                self.ceiled.0 += 1
            }
            self.frames.push(Frame {
                t: now as f64 / 1e6,
                tick,
                true_lead: tick - self.server_at(now),
                target: self.clock.target_lead().unwrap(),
                resynced: step.resynced,
                count: step.count,
            });
        }
    }

    /// Checks every frame after the first: the tick never goes backwards, and the speed stays
    /// within `1 ± max_adjust` (no resync in between).
    fn assert_gentle(sim: &Sim) {
        let max = ClockConfig::default().max_adjust;
        for w in sim.frames.windows(2) {
            let (a, b) = (w[0], w[1]);
            assert!(
                b.tick >= a.tick,
                "seed {}: tick went back at {}",
                sim.seed,
                b.t
            );
            if b.resynced {
                continue;
            }
            let speed = (b.tick - a.tick) / ((b.t - a.t) * RATE);
            assert!(
                (speed - 1.0).abs() <= max + 1e-6,
                "seed {}: speed {speed} at {}",
                sim.seed,
                b.t
            );
        }
    }

    /// 200 ms RTT, each way 100 ± 50 ms: after 5 s the lead is within one tick of the target,
    /// and the target is RTT/2 (3 ticks) plus a margin of 1 to 4.5 ticks.
    #[test]
    fn lead_converges_under_jitter() {
        for seed in 0..20 {
            let mut sim = Sim::new(seed, 0.2, 0.05);
            sim.run(20.0);
            assert_gentle(&sim);
            assert_eq!(sim.clock.stats().resyncs, 1, "seed {seed}");
            assert_tracks(&sim, seed, 5.0, 4.0, 7.5);
            let rtt = sim.clock.rtt().unwrap().as_secs_f64();
            assert!((rtt - 0.2).abs() < 0.03, "seed {seed}: rtt {rtt}");
            let jitter = sim.clock.jitter().unwrap().as_secs_f64();
            // The mean deviation of the sum of two ±50 ms uniform delays is 33 ms.
            assert!(
                jitter > 0.02 && jitter < 0.05,
                "seed {seed}: jitter {jitter}"
            );
        }
    }

    /// From `from` seconds on, the lead is within one tick of the target, and the target is
    /// within `lo..=hi` ticks.
    fn assert_tracks(sim: &Sim, seed: u64, from: f64, lo: f64, hi: f64) {
        for f in sim.frames.iter().filter(|f| f.t >= from) {
            assert!(
                (f.true_lead - f.target).abs() <= 1.0,
                "seed {seed}: lead {} target {} at {}",
                f.true_lead,
                f.target,
                f.t
            );
            assert!(
                f.target >= lo && f.target <= hi,
                "seed {seed}: target {}",
                f.target
            );
        }
    }

    /// RTT steps from 100 to 300 ms (±10 ms each way): the lead moves at most 5 % of real
    /// time (well under a tick per frame) and is within one tick of the new target 6 s later.
    #[test]
    fn lead_follows_rtt_change_gently() {
        for seed in 0..10 {
            let mut sim = Sim::new(seed, 0.1, 0.01);
            sim.run(10.0);
            let before = sim.frames.last().unwrap().true_lead;
            assert!(
                (before - (1.5 + 1.0)).abs() < 1.0,
                "seed {seed}: lead {before}"
            );
            sim.up = (0.15, 0.01);
            sim.down = (0.15, 0.01);
            sim.run(15.0);
            assert_gentle(&sim);
            assert_eq!(sim.clock.stats().resyncs, 1, "seed {seed}");
            for w in sim.frames.windows(2) {
                assert!(
                    (w[1].true_lead - w[0].true_lead).abs() < 0.05,
                    "seed {seed}"
                );
            }
            // RTT/2 is now 4.5 ticks; the margin settles back to its one-tick floor.
            assert_tracks(&sim, seed, 16.0, 5.0, 7.5);
        }
    }

    /// Inputs sent for each tick `advance` hands out (and, separately, stamped with
    /// `current()` rounded up) arrive before the server reaches their tick in at least 99 %
    /// of cases, over 20 s from the start.
    #[test]
    fn inputs_arrive_on_time() {
        let (mut handed, mut ceiled) = ((0, 0), (0, 0));
        for seed in 0..20 {
            let mut sim = Sim::new(100 + seed, 0.2, 0.05);
            sim.run(20.0);
            let late = sim.handed.1 as f64 / (sim.handed.0 + sim.handed.1) as f64;
            assert!(late <= 0.01, "seed {}: {:?} late", sim.seed, sim.handed);
            handed.0 += sim.handed.0;
            handed.1 += sim.handed.1;
            ceiled.0 += sim.ceiled.0;
            ceiled.1 += sim.ceiled.1;
            // Every tick from the start on was handed out once: ~30 a second.
            assert_eq!(sim.clock.stats().skipped_ticks, 0);
            let count: u32 = sim.frames.iter().map(|f| f.count).sum();
            assert!(
                (585..=605).contains(&count),
                "seed {}: {count} ticks",
                sim.seed
            );
        }
        assert!(handed.1 * 100 <= handed.0 + handed.1, "{handed:?}");
        assert!(ceiled.1 * 100 <= ceiled.0 + ceiled.1, "{ceiled:?}");
    }

    /// Inputs take 150 ± 20 ms, snapshots 50 ± 20 ms: RTT/2 is wrong both ways, but the
    /// errors cancel, so at most 1 % of inputs are late even without reports.
    #[test]
    fn asymmetric_path_needs_no_help() {
        for seed in 0..10 {
            let mut sim = Sim::new(seed, 0.2, 0.02);
            sim.up = (0.15, 0.02);
            sim.down = (0.05, 0.02);
            sim.reports = false;
            sim.run(20.0);
            assert!(
                sim.handed.1 * 100 <= sim.handed.0 + sim.handed.1,
                "seed {seed}: {:?}",
                sim.handed
            );
            assert_gentle(&sim);
        }
    }

    /// Inputs queue 60 ms (2 ticks) more than the RTT shows: without reports most are late;
    /// with them, after 10 s at most 1 % are, and the correction is about those 2 ticks.
    #[test]
    fn reports_fix_lateness_the_rtt_misses() {
        for seed in 0..10 {
            let mut blind = Sim::new(seed, 0.2, 0.02);
            blind.input_extra = 0.06;
            blind.reports = false;
            blind.run(20.0);
            assert!(
                blind.handed.1 > blind.handed.0,
                "seed {seed}: {:?}",
                blind.handed
            );

            let mut sim = Sim::new(seed, 0.2, 0.02);
            sim.input_extra = 0.06;
            sim.run(10.0);
            sim.handed = (0, 0);
            sim.run(10.0);
            assert!(
                sim.handed.1 * 100 <= sim.handed.0 + sim.handed.1,
                "seed {seed}: {:?}",
                sim.handed
            );
            let correction = sim.clock.report_correction().unwrap();
            assert!(
                correction > 1.8 && correction < 3.0,
                "seed {seed}: correction {correction}"
            );
            assert_gentle(&sim);
        }
    }

    /// Wrap-around of the tick numbers changes nothing.
    #[test]
    fn survives_tick_wraparound() {
        let mut sim = Sim::new(5, 0.2, 0.05);
        sim.base = u32::MAX - 100;
        sim.run(20.0);
        assert_gentle(&sim);
        assert_eq!(sim.clock.stats().resyncs, 1);
        let f = sim.frames.last().unwrap();
        assert!(f.tick > 4_294_967_296.0);
        assert!((f.true_lead - f.target).abs() <= 1.0);
        assert!(
            sim.handed.1 * 100 <= sim.handed.0 + sim.handed.1,
            "{:?}",
            sim.handed
        );
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn resync_on_start_and_after_a_huge_error() {
        let mut clock = TickClock::new(ClockConfig::default());
        assert_eq!(clock.advance(ms(5)).count, 0);
        assert_eq!(clock.current(ms(5)), None);
        clock.on_server_tick(ms(1000), Tick(500), ms(100));
        assert_eq!(clock.stats().resyncs, 1);
        // At once at the target: 1.5 ticks of RTT/2 plus the margin (the larger of one tick
        // and 3 times the initial jitter of 25 ms, 2.25 ticks).
        let target = clock.target_lead().unwrap();
        assert!((target - 3.75).abs() < 1e-9, "{target}");
        assert!((clock.lead(ms(1000)).unwrap() - target).abs() < 1e-9);
        let step = clock.advance(ms(1000));
        assert!(step.resynced);
        assert_eq!((step.first, step.count, step.skipped), (Tick(505), 1, 0));
        let step = clock.advance(ms(1000 + 34));
        assert!(!step.resynced);
        assert_eq!((step.first, step.count), (Tick(506), 1));

        // The server restarts 10 s further on: one jump, not a long drift.
        clock.on_server_tick(ms(1100), Tick(800), ms(100));
        assert_eq!(clock.stats().resyncs, 2);
        let step = clock.advance(ms(1100));
        assert!(step.resynced);
        assert_eq!(step.count, 1);
        assert!(step.first.is_after(Tick(800)));
        assert!(step.skipped > 290, "{step:?}");
        let lead = clock.lead(ms(1100)).unwrap();
        assert!((lead - clock.target_lead().unwrap()).abs() < 1e-9);
        // An old straggler far behind does not drag the clock back.
        clock.on_server_tick(ms(1110), Tick(505), ms(100));
        assert_eq!(clock.stats().resyncs, 2);
        // Backwards too: the server is far behind us.
        clock.on_server_tick(ms(1200), Tick(810).next(), ms(100));
        assert_eq!(clock.stats().resyncs, 2);
    }

    #[test]
    fn catch_up_is_bounded() {
        let config = ClockConfig::default();
        let mut clock = TickClock::new(config.clone());
        clock.on_server_tick(ms(0), Tick(100), ms(60));
        let start = clock.advance(ms(0));
        assert_eq!(start.count, 1);
        // The game loop stalls for 2 s (the snapshots kept coming is irrelevant here).
        let step = clock.advance(ms(2000));
        assert_eq!(step.count, config.max_catch_up);
        assert!(!step.resynced);
        // The handed-out ticks are the newest ones and follow on from the last one.
        let last = step.ticks().last().unwrap();
        assert_eq!(last.0 as f64, clock.current(ms(2000)).unwrap().floor());
        assert_eq!(step.first.diff(start.first) as u64 - 1, step.skipped);
        assert!(step.skipped >= 50, "{step:?}");
        assert_eq!(clock.stats().catch_up_skips, 1);
        assert_eq!(clock.stats().skipped_ticks, step.skipped);
        assert_eq!(clock.stats().resyncs, 1);
        // Calling again at the same instant hands out nothing.
        assert_eq!(clock.advance(ms(2000)).count, 0);
        assert_eq!(clock.advance(ms(1500)).count, 0);
    }

    #[test]
    fn no_panics_on_garbage() {
        let config = ClockConfig {
            tick_rate_hz: 0,
            margin_jitter_factor: f64::NAN,
            min_margin_ticks: f64::INFINITY,
            max_lead: Duration::MAX,
            max_adjust: -1.0,
            adjust_gain: f64::NAN,
            rtt_alpha: 7.0,
            jitter_alpha: f64::NEG_INFINITY,
            offset_alpha: 0.0,
            resync_threshold: Duration::ZERO,
            max_catch_up: 0,
            report_gain: f64::NAN,
            report_window: Duration::ZERO,
            max_report_correction: Duration::MAX,
        };
        let mut rng = Rng(9);
        for config in [config, ClockConfig::default()] {
            let mut clock = TickClock::new(config);
            for _ in 0..5000 {
                let now = match rng.next() % 4 {
                    0 => Duration::MAX,
                    1 => Duration::ZERO,
                    _ => Duration::from_nanos(rng.next() >> (rng.next() % 64)),
                };
                let tick = Tick(rng.next() as u32);
                let rtt = Duration::from_nanos(rng.next() >> (rng.next() % 64));
                match rng.next() % 4 {
                    0 => clock.on_server_tick(now, tick, rtt),
                    1 => clock.on_input_report(now, f32::from_bits(rng.next() as u32)),
                    _ => {
                        let step = clock.advance(now);
                        assert!(step.count <= clock.config().max_catch_up);
                        assert!(step.position.is_none_or(f64::is_finite));
                    }
                }
                assert!(clock.adjust(now).is_finite());
                assert!(clock.lead(now).is_none_or(|l| !l.is_nan()));
                assert!(clock.target_lead().is_none_or(f64::is_finite));
            }
        }
    }

    #[test]
    fn input_timing_window_is_bounded_and_mean_right() {
        let mut timing = InputTiming::new(InputTimingConfig {
            window: 4,
            max_clients: 2,
        });
        let (a, b, c) = (ClientId(1), ClientId(2), ClientId(3));
        assert_eq!(timing.early_by(a), None);
        // Early by 0, 1, 2, ... 9 ticks, across the wrap of the tick numbers.
        for i in 0..10u32 {
            let arrived = Tick(u32::MAX - 5).next();
            let arrived = Tick(arrived.0.wrapping_add(i));
            let early = timing
                .on_input(a, Tick(arrived.0.wrapping_add(i)), arrived)
                .unwrap();
            assert_eq!(early, i as i32);
        }
        let stats = timing.stats(a).unwrap();
        assert_eq!(stats.samples, 4);
        assert_eq!(stats.received, 10);
        assert_eq!(stats.early_by, (6.0 + 7.0 + 8.0 + 9.0) / 4.0);
        assert_eq!(timing.late(a), 0);
        // Two late inputs (one tick, three ticks) and two on the tick.
        for (for_tick, at) in [(10, 11), (10, 13), (10, 10), (20, 20)] {
            timing.on_input(a, Tick(for_tick), Tick(at)).unwrap();
        }
        assert_eq!(timing.early_by(a), Some(-1.0));
        assert_eq!(timing.late(a), 2);
        assert_eq!(timing.stats(a).unwrap().samples, 4);
        // Bounded clients.
        timing.on_input(b, Tick(5), Tick(3)).unwrap();
        assert_eq!(
            timing.on_input(c, Tick(5), Tick(3)),
            Err(InputTimingError::TooManyClients(2))
        );
        assert_eq!(timing.len(), 2);
        assert!(timing.remove_client(a));
        assert!(!timing.remove_client(a));
        assert_eq!(timing.early_by(a), None);
        assert_eq!(timing.late(a), 0);
        timing.on_input(c, Tick(5), Tick(3)).unwrap();
        assert_eq!(timing.early_by(c), Some(2.0));
        // Window 0 is treated as 1.
        let mut one = InputTiming::new(InputTimingConfig {
            window: 0,
            ..Default::default()
        });
        one.on_input(a, Tick(3), Tick(1)).unwrap();
        one.on_input(a, Tick(9), Tick(1)).unwrap();
        assert_eq!(one.early_by(a), Some(8.0));
        assert!(!one.is_empty());
    }
}
