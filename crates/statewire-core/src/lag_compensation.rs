//! Server-side lag compensation: a hit claimed by a client is judged against where its target
//! was when the client saw it, within a bounded rewind.
//!
//! # Model
//!
//! A client does not show remote entities as they are on the server: it interpolates between
//! the two snapshots around its *view time*, a tick plus a fraction ([`ViewTime`]) some way
//! behind the server's latest tick. When its player fires, the player aims at where the target
//! *appeared*. Were the server to test the shot against where the target is now, every player
//! would have to lead each target by their own latency.
//!
//! So the server keeps a short history of every hittable entity's position and size
//! ([`HitHistory`]): each tick it calls [`HitHistory::begin_tick`], then
//! [`HitHistory::record`] once per hittable entity (a sphere, or a circle in 2D: a centre
//! `[f32; D]` and a radius). Ticks older than [`LagCompensationConfig::history_ticks`] are
//! dropped, and one tick holds at most [`LagCompensationConfig::max_entities_per_tick`]
//! entities, so memory is bounded whatever the game does. When a claim arrives,
//! [`HitHistory::check_hit`] moves the target back to the claimed view time, interpolating
//! between the two recorded ticks around it as the client did, and tests the shot (a point
//! or a ray, [`Shot`]) against the target there.
//!
//! Rewinding trusts the client's view time, which is fair to the shooter and unfair to the
//! target (who can be hit after reaching cover), so the rewind is capped at
//! [`LagCompensationConfig::max_rewind_ticks`] before the latest recorded tick. An older
//! claim is checked at the cap ([`TooOldPolicy::Clamp`], the default, as most shooters do:
//! a very laggy player's shot lands only on targets that were still there at the cap) or
//! refused ([`TooOldPolicy::Refuse`]). A claim after the latest recorded tick is always
//! refused ([`RewindError::InFuture`]): no honest client can have seen that. Every outcome is
//! counted ([`HitHistory::stats`]).
//!
//! # With events
//!
//! A hit is a gameplay event: the shooter sends a [`Proposal`](crate::Proposal) whose `tick`
//! is its view tick and whose data carries the rest of the claim (the view fraction and the
//! shot, in the game's own encoding). The game's `decide` closure given to
//! [`EventServer::resolve`](crate::EventServer::resolve) decodes it, asks
//! [`HitHistory::check_hit`], and accepts the proposal only on a hit (and only if the game
//! still allows it: a dead target cannot die twice). The hit is thus judged in the past but
//! resolved once, in the event order, and reaches every client as one event. Record the
//! tick's positions *before* resolving: the rewind's age counts from the latest recorded tick.
//!
//! ```
//! use statewire_core::events::{EntityRefs, EventData};
//! use statewire_core::lag_compensation::{HitClaim, HitHistory, LagCompensationConfig, Shot, ViewTime};
//! use statewire_core::{ClientId, EntityId, EventConfig, EventServer, Proposal, Tick, Writer};
//!
//! const KILL: u16 = 1;
//! // The game's encoding of a claim: the view fraction in 256ths, then the aimed point.
//! fn encode(fraction_256ths: u8, at: [f32; 2]) -> EventData {
//!     let mut data = EventData::new();
//!     data.push(fraction_256ths);
//!     data.extend_from_slice(&at[0].to_le_bytes());
//!     data.extend_from_slice(&at[1].to_le_bytes());
//!     data
//! }
//! fn decode(p: &Proposal) -> Option<HitClaim<2>> {
//!     let (&fraction, rest) = p.data.split_first()?;
//!     let x = f32::from_le_bytes(rest.get(0..4)?.try_into().ok()?);
//!     let y = f32::from_le_bytes(rest.get(4..8)?.try_into().ok()?);
//!     Some(HitClaim {
//!         target: *p.entities.first()?,
//!         view: ViewTime::new(p.tick, f32::from(fraction) / 256.0),
//!         shot: Shot::Point { at: [x, y] },
//!     })
//! }
//!
//! let mut history = HitHistory::new(LagCompensationConfig::default());
//! let mut events = EventServer::new(EventConfig::default());
//! let runner = EntityId(2);
//! let mut alive = true;
//! let mut kills = 0;
//! for t in 1..=20u32 {
//!     // Simulate: the runner moves one unit along x per tick. Then record the hittables.
//!     let tick = Tick(t);
//!     history.begin_tick(tick).unwrap();
//!     if alive {
//!         history.record(runner, [t as f32, 0.0], 0.5).unwrap();
//!     }
//!     if t == 12 {
//!         // Two players saw the runner at tick 8.5 (they render 3.5 ticks behind) and hit
//!         // where it was then; a third aimed at where it is now, which it never saw.
//!         for (client, at) in [(1, 8.5), (2, 8.5), (3, 12.0)] {
//!             let claim = Proposal {
//!                 proposer: Writer::Client(ClientId(client)),
//!                 seq: 0,
//!                 tick: Tick(8),
//!                 kind: KILL,
//!                 entities: EntityRefs::from_slice(&[runner]),
//!                 data: encode(128, [at, 0.0]),
//!             };
//!             events.propose(claim).unwrap();
//!         }
//!     }
//!     let resolved = events.resolve(tick, |p| {
//!         let Some(claim) = decode(p) else { return false };
//!         let hit = history.check_hit(&claim).is_ok_and(|v| v.hit);
//!         // Both good claims hit; the first in the event order kills, the second finds the
//!         // runner already dead.
//!         if p.kind == KILL && hit && alive {
//!             alive = false;
//!             return true;
//!         }
//!         false
//!     });
//!     kills += resolved.len();
//!     if !alive {
//!         // Despawned: no later claim can hit it.
//!         history.remove(runner);
//!     }
//! }
//! assert_eq!(kills, 1);
//! assert_eq!(events.log().next().unwrap().proposer, Writer::Client(ClientId(1)));
//! assert_eq!(history.stats().hits, 2);
//! assert_eq!(history.stats().rewinds, 3);
//! ```

use std::collections::VecDeque;

use hashbrown::HashMap;

use crate::ids::{EntityId, Tick};

/// The most ticks a [`HitHistory`] keeps, whatever [`LagCompensationConfig::history_ticks`]
/// says. Far more than any rewind needs; it keeps tick ages well inside the wrapping tick
/// arithmetic's range.
pub const MAX_HISTORY_TICKS: u32 = 1 << 16;

/// What [`HitHistory::check_hit`] does with a claim older than
/// [`LagCompensationConfig::max_rewind_ticks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TooOldPolicy {
    /// Check the shot at the oldest allowed time instead (counted in
    /// [`LagCompensationStats::clamped`]). The default.
    #[default]
    Clamp,
    /// Refuse the claim with [`RewindError::TooOld`].
    Refuse,
}

/// Limits of a [`HitHistory`].
#[derive(Debug, Clone, PartialEq)]
pub struct LagCompensationConfig {
    /// Ticks of positions kept, the latest included. Default 30 (1 s at 30 Hz). At least 1
    /// and at most [`MAX_HISTORY_TICKS`] are used.
    pub history_ticks: u32,
    /// How far before the latest recorded tick a hit may be checked, in ticks. Default 9
    /// (300 ms at 30 Hz: a typical interpolation delay plus a typical round trip). At most
    /// `history_ticks - 1` is used, since older ticks are not kept.
    pub max_rewind_ticks: u32,
    /// Entities one tick may record. Default 1,024.
    pub max_entities_per_tick: usize,
    /// What to do with a claim older than `max_rewind_ticks`. Default
    /// [`TooOldPolicy::Clamp`].
    pub too_old: TooOldPolicy,
    /// Extra distance, in world units, by which a shot may miss a target's radius and still
    /// hit, to absorb the quantization of the replicated positions the client interpolated
    /// (e.g. the field's `precision`). Default 0.0; a negative or non-finite value counts as 0.
    pub tolerance: f32,
}

impl Default for LagCompensationConfig {
    fn default() -> Self {
        LagCompensationConfig {
            history_ticks: 30,
            max_rewind_ticks: 9,
            max_entities_per_tick: 1024,
            too_old: TooOldPolicy::Clamp,
            tolerance: 0.0,
        }
    }
}

/// A moment as a client saw it: `fraction` of the way from `tick` to the tick after it
/// (interpolated rendering sits between two snapshots).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ViewTime {
    /// The snapshot tick the client interpolated from.
    pub tick: Tick,
    /// How far towards the next tick, in `[0, 1]` (values outside are clamped into it; a
    /// non-finite one makes the claim invalid).
    pub fraction: f32,
}

impl ViewTime {
    /// `fraction` of the way from `tick` to the next tick.
    #[must_use]
    pub fn new(tick: Tick, fraction: f32) -> Self {
        ViewTime { tick, fraction }
    }

    /// Exactly at `tick`.
    #[must_use]
    pub fn at(tick: Tick) -> Self {
        ViewTime {
            tick,
            fraction: 0.0,
        }
    }
}

/// What the shooter claims to have hit with.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Shot<const D: usize> {
    /// An impact point (a melee hit, or a hitscan impact computed by the client): hits when
    /// it lies within the target's radius (plus the tolerance).
    Point {
        /// Where the shot landed.
        at: [f32; D],
    },
    /// A hitscan ray from `origin` along `direction` (any length but zero) for `range` world
    /// units: hits when it passes within the target's radius (plus the tolerance).
    Ray {
        /// Where the shot starts (the shooter's muzzle or eye, as the server knows it).
        origin: [f32; D],
        /// Which way it goes; normalized here.
        direction: [f32; D],
        /// How far it reaches, at least 0.
        range: f32,
    },
}

/// A client's claim that its shot hit `target` at view time `view`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HitClaim<const D: usize> {
    /// The entity claimed hit.
    pub target: EntityId,
    /// When the shooter saw it (the proposal's tick plus the fraction it carries).
    pub view: ViewTime,
    /// The shot.
    pub shot: Shot<D>,
}

/// Where an entity was at a past moment ([`HitHistory::position_at`]).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Rewound<const D: usize> {
    /// Its centre, interpolated between the recorded ticks around the moment.
    pub position: [f32; D],
    /// Its radius, interpolated likewise.
    pub radius: f32,
}

/// The judgement of a [`HitClaim`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct HitVerdict<const D: usize> {
    /// Whether the shot hit the target at the time checked.
    pub hit: bool,
    /// The time the target was checked at: the claim's, or the cap if it was clamped
    /// (fraction in `[0, 1)`).
    pub checked_at: ViewTime,
    /// Whether the claim was older than the cap and checked at the cap instead.
    pub clamped: bool,
    /// Where the target was then.
    pub target: Rewound<D>,
    /// Distance from the target's centre to the shot (the point, or the ray's nearest point).
    pub distance: f32,
}

/// Counters of a [`HitHistory`] since it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct LagCompensationStats {
    /// Claims judged against the history (hit or miss).
    pub rewinds: u64,
    /// Of those, hits.
    pub hits: u64,
    /// Of those, claims older than the cap checked at the cap.
    pub clamped: u64,
    /// Claims refused, for any reason ([`HitHistory::check_hit`] returned an error).
    pub refused: u64,
    /// Of those, claims older than the cap (with [`TooOldPolicy::Refuse`]) or than the
    /// history.
    pub refused_too_old: u64,
    /// Of those, claims after the latest recorded tick.
    pub refused_in_future: u64,
    /// Samples [`HitHistory::record`] refused.
    pub records_refused: u64,
}

/// Why [`HitHistory::begin_tick`] refused a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BeginTickError {
    /// Ticks must advance: `tick` is not after the latest one begun.
    #[error("tick {tick} is not after the latest recorded tick {latest}")]
    NotAfter {
        /// The tick refused.
        tick: Tick,
        /// The latest tick begun.
        latest: Tick,
    },
}

/// Why [`HitHistory::record`] refused a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// No tick was begun yet.
    #[error("no tick begun")]
    NoTick,
    /// This tick already holds [`LagCompensationConfig::max_entities_per_tick`] entities.
    #[error("more than {limit} entities in one tick")]
    TooManyEntities {
        /// The limit.
        limit: usize,
    },
    /// The position is not finite, or the radius is negative or not finite. Such an entity
    /// cannot be hit at this tick (the game's physics produced it, not a client).
    #[error("invalid sample for {entity}")]
    InvalidSample {
        /// The entity.
        entity: EntityId,
    },
}

/// Why an entity could not be rewound ([`HitHistory::position_at`], [`HitHistory::check_hit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RewindError {
    /// Nothing was recorded yet.
    #[error("no history recorded")]
    NoHistory,
    /// The moment is older than allowed: than the cap (with [`TooOldPolicy::Refuse`]) or than
    /// the oldest tick kept.
    #[error("{ticks_old} ticks old, limit {limit}")]
    TooOld {
        /// How old the claim is, in whole ticks rounded up (saturating).
        ticks_old: u32,
        /// The oldest allowed, in ticks.
        limit: u32,
    },
    /// The moment is after the latest recorded tick.
    #[error("{ticks_ahead} ticks after the latest recorded tick")]
    InFuture {
        /// How far ahead, in whole ticks rounded up.
        ticks_ahead: u32,
    },
    /// The entity was not recorded at that moment (never, not yet, or removed).
    #[error("{0} not recorded at that time")]
    UnknownEntity(EntityId),
    /// The claim holds a non-finite fraction, point, direction or range, a zero direction, or
    /// a negative range.
    #[error("invalid claim")]
    InvalidClaim,
}

#[derive(Debug, Clone, Copy)]
struct Sample<const D: usize> {
    position: [f32; D],
    radius: f32,
}

#[derive(Debug)]
struct Frame<const D: usize> {
    tick: Tick,
    samples: HashMap<EntityId, Sample<D>>,
}

/// The server's bounded history of hittable entities, for judging hit claims in the past (see
/// the [module docs](self)). `D` is the number of coordinates: 2 or 3.
#[derive(Debug)]
pub struct HitHistory<const D: usize = 3> {
    config: LagCompensationConfig,
    /// Oldest first; ticks strictly increasing and spanning less than `history_ticks`.
    frames: VecDeque<Frame<D>>,
    /// A dropped frame kept so that its map's allocation is reused by the next tick.
    spare: Option<Frame<D>>,
    stats: LagCompensationStats,
}

impl<const D: usize> HitHistory<D> {
    /// An empty history. Out-of-range settings are brought into range (see
    /// [`LagCompensationConfig`]); [`HitHistory::config`] shows the ones in use.
    #[must_use]
    pub fn new(mut config: LagCompensationConfig) -> Self {
        config.history_ticks = config.history_ticks.clamp(1, MAX_HISTORY_TICKS);
        config.max_rewind_ticks = config.max_rewind_ticks.min(config.history_ticks - 1);
        if !config.tolerance.is_finite() || config.tolerance < 0.0 {
            config.tolerance = 0.0;
        }
        HitHistory {
            config,
            frames: VecDeque::new(),
            spare: None,
            stats: LagCompensationStats::default(),
        }
    }

    /// The limits in use.
    #[must_use]
    pub fn config(&self) -> &LagCompensationConfig {
        &self.config
    }

    /// Counters since the history was made.
    #[must_use]
    pub fn stats(&self) -> &LagCompensationStats {
        &self.stats
    }

    /// Starts recording `tick`, which must be after the previous one (ticks may be skipped).
    /// Ticks that fall out of [`LagCompensationConfig::history_ticks`] are dropped.
    pub fn begin_tick(&mut self, tick: Tick) -> Result<(), BeginTickError> {
        if let Some(latest) = self.latest_tick()
            && !tick.is_after(latest)
        {
            return Err(BeginTickError::NotAfter { tick, latest });
        }
        let keep = i64::from(self.config.history_ticks);
        while let Some(front) = self.frames.front() {
            let age = i64::from(tick.diff(front.tick));
            // A negative age can only come from a jump of about half the tick space: such a
            // frame is as stale as any.
            if (0..keep).contains(&age) {
                break;
            }
            self.spare = self.frames.pop_front();
        }
        let mut frame = self.spare.take().unwrap_or_else(|| Frame {
            tick,
            samples: HashMap::new(),
        });
        frame.tick = tick;
        frame.samples.clear();
        self.frames.push_back(frame);
        Ok(())
    }

    /// Records where `entity` is at the current tick: its centre and radius. Recording an
    /// entity twice in a tick keeps the second.
    pub fn record(
        &mut self,
        entity: EntityId,
        position: [f32; D],
        radius: f32,
    ) -> Result<(), RecordError> {
        let verdict = self.try_record(entity, position, radius);
        if verdict.is_err() {
            self.stats.records_refused += 1;
        }
        verdict
    }

    fn try_record(
        &mut self,
        entity: EntityId,
        position: [f32; D],
        radius: f32,
    ) -> Result<(), RecordError> {
        let limit = self.config.max_entities_per_tick;
        let frame = self.frames.back_mut().ok_or(RecordError::NoTick)?;
        // Refused here so that no stored sample is NaN or infinite and the rewind's arithmetic
        // stays finite.
        let finite = position.iter().all(|c| c.is_finite()) && radius.is_finite();
        if !finite || radius < 0.0 {
            return Err(RecordError::InvalidSample { entity });
        }
        if frame.samples.len() >= limit && !frame.samples.contains_key(&entity) {
            return Err(RecordError::TooManyEntities { limit });
        }
        frame.samples.insert(entity, Sample { position, radius });
        Ok(())
    }

    /// Forgets `entity` in every tick kept (call it on despawn, so that a shot claimed after
    /// the despawn cannot hit it).
    pub fn remove(&mut self, entity: EntityId) {
        for frame in &mut self.frames {
            frame.samples.remove(&entity);
        }
    }

    /// Forgets everything (the counters stay).
    pub fn clear(&mut self) {
        self.spare = self.frames.pop_front();
        self.frames.clear();
    }

    /// The latest tick begun.
    #[must_use]
    pub fn latest_tick(&self) -> Option<Tick> {
        self.frames.back().map(|f| f.tick)
    }

    /// The oldest tick kept.
    #[must_use]
    pub fn oldest_tick(&self) -> Option<Tick> {
        self.frames.front().map(|f| f.tick)
    }

    /// Ticks kept, at most [`LagCompensationConfig::history_ticks`].
    #[must_use]
    pub fn tick_count(&self) -> usize {
        self.frames.len()
    }

    /// Samples kept, all ticks together: at most `history_ticks` × `max_entities_per_tick`.
    #[must_use]
    pub fn sample_count(&self) -> usize {
        self.frames.iter().map(|f| f.samples.len()).sum()
    }

    /// Where `entity` was at `view`, anywhere in the history (no rewind cap applies: this is a
    /// query, not a judgement; it counts nothing).
    pub fn position_at(&self, entity: EntityId, view: ViewTime) -> Result<Rewound<D>, RewindError> {
        let latest = self.latest_tick().ok_or(RewindError::NoHistory)?;
        let age = self.age_of(latest, view)?;
        let span = self.span();
        if age > f64::from(span) {
            return Err(too_old(age, span));
        }
        let (position, radius) = self.rewind(latest, entity, age)?;
        Ok(Rewound {
            position: position.map(|c| c as f32),
            radius: radius as f32,
        })
    }

    /// Judges `claim`: rewinds its target to the claimed view time (capped, see
    /// [`LagCompensationConfig::max_rewind_ticks`] and [`TooOldPolicy`]) and tests the shot
    /// against it there. Counts the outcome in [`HitHistory::stats`].
    pub fn check_hit(&mut self, claim: &HitClaim<D>) -> Result<HitVerdict<D>, RewindError> {
        let verdict = self.judge(claim);
        let stats = &mut self.stats;
        match &verdict {
            Ok(v) => {
                stats.rewinds += 1;
                stats.hits += u64::from(v.hit);
                stats.clamped += u64::from(v.clamped);
            }
            Err(e) => {
                stats.refused += 1;
                match e {
                    RewindError::TooOld { .. } => stats.refused_too_old += 1,
                    RewindError::InFuture { .. } => stats.refused_in_future += 1,
                    _ => {}
                }
            }
        }
        verdict
    }

    fn judge(&self, claim: &HitClaim<D>) -> Result<HitVerdict<D>, RewindError> {
        let latest = self.latest_tick().ok_or(RewindError::NoHistory)?;
        let shot = Prepared::new(&claim.shot)?;
        let mut age = self.age_of(latest, claim.view)?;
        // The cap, and never before the oldest tick kept (just after start, or after skipped
        // ticks, the history is shorter than the cap).
        let limit = self.config.max_rewind_ticks.min(self.span());
        let mut clamped = false;
        if age > f64::from(limit) {
            match self.config.too_old {
                TooOldPolicy::Refuse => return Err(too_old(age, limit)),
                TooOldPolicy::Clamp => {
                    age = f64::from(limit);
                    clamped = true;
                }
            }
        }
        let (center, radius) = self.rewind(latest, claim.target, age)?;
        let distance = shot.distance(&center);
        let reach = radius + f64::from(self.config.tolerance);
        // `age` is in [0, limit], so this is exact for whole ticks and in [0, 1) otherwise.
        let back = age.ceil();
        let checked_at = ViewTime {
            tick: Tick(latest.0.wrapping_sub(back as u32)),
            fraction: (back - age) as f32,
        };
        Ok(HitVerdict {
            hit: distance <= reach,
            checked_at,
            clamped,
            target: Rewound {
                position: center.map(|c| c as f32),
                radius: radius as f32,
            },
            distance: distance as f32,
        })
    }

    /// Ticks between the oldest and latest kept.
    fn span(&self) -> u32 {
        match (self.frames.front(), self.frames.back()) {
            (Some(old), Some(new)) => new.tick.diff(old.tick).max(0) as u32,
            _ => 0,
        }
    }

    /// How long before `latest` `view` is, in ticks (fractional, never negative).
    fn age_of(&self, latest: Tick, view: ViewTime) -> Result<f64, RewindError> {
        if !view.fraction.is_finite() {
            return Err(RewindError::InvalidClaim);
        }
        let fraction = f64::from(view.fraction.clamp(0.0, 1.0));
        let age = f64::from(latest.diff(view.tick)) - fraction;
        if age < 0.0 {
            return Err(RewindError::InFuture {
                ticks_ahead: (-age).ceil() as u32,
            });
        }
        Ok(age)
    }

    /// The entity's centre and radius `age` ticks before `latest`; `age` is within the
    /// history.
    fn rewind(
        &self,
        latest: Tick,
        entity: EntityId,
        age: f64,
    ) -> Result<([f64; D], f64), RewindError> {
        let age_of = |f: &Frame<D>| f64::from(latest.diff(f.tick));
        // Frames are oldest first, so their ages decrease: those at or before the moment come
        // first.
        let split = self.frames.partition_point(|f| age_of(f) >= age);
        let unknown = RewindError::UnknownEntity(entity);
        let before = split
            .checked_sub(1)
            .and_then(|i| self.frames.get(i))
            .ok_or(unknown)?;
        // Not there at or before the moment: the client could not have seen it yet.
        let a = before.samples.get(&entity).ok_or(unknown)?;
        let widen = |s: &Sample<D>| (s.position.map(f64::from), f64::from(s.radius));
        let before_age = age_of(before);
        let after = self
            .frames
            .get(split)
            .and_then(|f| Some((age_of(f), f.samples.get(&entity)?)));
        match after {
            // Exactly on a recorded tick, or the entity was not recorded after it (it was
            // despawned without `remove`, or missed a tick): the client held it there.
            _ if before_age == age => Ok(widen(a)),
            None => Ok(widen(a)),
            Some((after_age, b)) => {
                // Linear, as the client's interpolation; the gap is more than a tick when
                // ticks were skipped.
                let w = (before_age - age) / (before_age - after_age);
                let (pa, ra) = widen(a);
                let (pb, rb) = widen(b);
                let mut p = pa;
                for (c, (x, y)) in p.iter_mut().zip(pa.iter().zip(pb.iter())) {
                    *c = x + (y - x) * w;
                }
                Ok((p, ra + (rb - ra) * w))
            }
        }
    }
}

fn too_old(age: f64, limit: u32) -> RewindError {
    RewindError::TooOld {
        // `as` saturates, and the age is finite.
        ticks_old: age.ceil() as u32,
        limit,
    }
}

/// A validated shot, in `f64` so that no finite `f32` input overflows the geometry.
enum Prepared<const D: usize> {
    Point([f64; D]),
    Ray {
        origin: [f64; D],
        unit: [f64; D],
        range: f64,
    },
}

impl<const D: usize> Prepared<D> {
    fn new(shot: &Shot<D>) -> Result<Self, RewindError> {
        let finite = |v: &[f32; D]| v.iter().all(|c| c.is_finite());
        match shot {
            Shot::Point { at } if finite(at) => Ok(Prepared::Point(at.map(f64::from))),
            Shot::Ray {
                origin,
                direction,
                range,
            } if finite(origin) && finite(direction) && range.is_finite() && *range >= 0.0 => {
                let d = direction.map(f64::from);
                let len = dot(&d, &d).sqrt();
                if len <= 0.0 {
                    return Err(RewindError::InvalidClaim);
                }
                Ok(Prepared::Ray {
                    origin: origin.map(f64::from),
                    unit: d.map(|c| c / len),
                    range: f64::from(*range),
                })
            }
            _ => Err(RewindError::InvalidClaim),
        }
    }

    /// Distance from `center` to the point, or to the nearest point of the ray's segment.
    fn distance(&self, center: &[f64; D]) -> f64 {
        let nearest = match self {
            Prepared::Point(at) => *at,
            Prepared::Ray {
                origin,
                unit,
                range,
            } => {
                let to_center = sub(center, origin);
                let along = dot(&to_center, unit).clamp(0.0, *range);
                let mut p = *origin;
                for (c, u) in p.iter_mut().zip(unit.iter()) {
                    *c += u * along;
                }
                p
            }
        };
        let off = sub(center, &nearest);
        dot(&off, &off).sqrt()
    }
}

fn dot<const D: usize>(a: &[f64; D], b: &[f64; D]) -> f64 {
    a.iter().zip(b.iter()).map(|(x, y)| x * y).sum()
}

fn sub<const D: usize>(a: &[f64; D], b: &[f64; D]) -> [f64; D] {
    let mut out = *a;
    for (o, y) in out.iter_mut().zip(b.iter()) {
        *o -= y;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNER: EntityId = EntityId(1);

    /// Ticks `first..=last`, the runner at x = tick, radius 0.25.
    fn running(config: LagCompensationConfig, first: u32, last: u32) -> HitHistory<2> {
        let mut h = HitHistory::new(config);
        for t in first..=last {
            h.begin_tick(Tick(t)).unwrap();
            h.record(RUNNER, [t as f32, 0.0], 0.25).unwrap();
        }
        h
    }

    fn point(tick: u32, fraction: f32, at: [f32; 2]) -> HitClaim<2> {
        HitClaim {
            target: RUNNER,
            view: ViewTime::new(Tick(tick), fraction),
            shot: Shot::Point { at },
        }
    }

    #[test]
    fn rewinds_to_the_claimed_tick() {
        let mut h = running(LagCompensationConfig::default(), 1, 20);
        // Whole tick: where it was at 15, not where it is at 20.
        let v = h.check_hit(&point(15, 0.0, [15.0, 0.0])).unwrap();
        assert!(v.hit);
        assert!(!v.clamped);
        assert_eq!(v.checked_at, ViewTime::at(Tick(15)));
        assert_eq!(v.target.position, [15.0, 0.0]);
        assert!(!h.check_hit(&point(15, 0.0, [20.0, 0.0])).unwrap().hit);
        // Half way between 15 and 16.
        let v = h.check_hit(&point(15, 0.5, [15.5, 0.0])).unwrap();
        assert!(v.hit);
        assert_eq!(v.checked_at, ViewTime::new(Tick(15), 0.5));
        assert_eq!(v.target.position, [15.5, 0.0]);
        assert!(!h.check_hit(&point(15, 0.5, [15.0, 0.0])).unwrap().hit);
        assert!(!h.check_hit(&point(15, 0.5, [20.0, 0.0])).unwrap().hit);
        let at = h
            .position_at(RUNNER, ViewTime::new(Tick(15), 0.25))
            .unwrap();
        assert_eq!(at.position, [15.25, 0.0]);
        // A ray across the old place hits; across the current place it misses.
        let ray = |x: f32| HitClaim {
            target: RUNNER,
            view: ViewTime::new(Tick(15), 0.5),
            shot: Shot::Ray {
                origin: [x, -10.0],
                direction: [0.0, 3.0],
                range: 20.0,
            },
        };
        assert!(h.check_hit(&ray(15.5)).unwrap().hit);
        assert!(!h.check_hit(&ray(20.0)).unwrap().hit);
        // Too short a ray stops before the target.
        let mut short = ray(15.5);
        short.shot = Shot::Ray {
            origin: [15.5, -10.0],
            direction: [0.0, 1.0],
            range: 9.0,
        };
        let v = h.check_hit(&short).unwrap();
        assert!(!v.hit);
        assert!((v.distance - 1.0).abs() < 1e-6);
        // At the latest tick, with no rewind.
        assert!(h.check_hit(&point(20, 0.0, [20.0, 0.0])).unwrap().hit);
        let s = h.stats();
        assert_eq!((s.rewinds, s.hits, s.refused), (9, 4, 0));
    }

    #[test]
    fn interpolates_across_skipped_ticks_and_wraparound() {
        let mut h = HitHistory::<2>::new(LagCompensationConfig::default());
        // Ticks u32::MAX - 1, then 2 (three skipped, across the wrap); the runner goes 0 → 4.
        h.begin_tick(Tick(u32::MAX - 1)).unwrap();
        h.record(RUNNER, [0.0, 0.0], 1.0).unwrap();
        h.begin_tick(Tick(2)).unwrap();
        h.record(RUNNER, [4.0, 0.0], 1.0).unwrap();
        let at = h.position_at(RUNNER, ViewTime::new(Tick(0), 0.5)).unwrap();
        assert_eq!(at.position, [2.5, 0.0]);
        let v = h.check_hit(&point(u32::MAX, 0.0, [1.0, 0.0])).unwrap();
        assert_eq!(v.target.position, [1.0, 0.0]);
        assert_eq!(
            h.begin_tick(Tick(1)),
            Err(BeginTickError::NotAfter {
                tick: Tick(1),
                latest: Tick(2)
            })
        );
        assert_eq!(
            h.begin_tick(Tick(2)).unwrap_err(),
            BeginTickError::NotAfter {
                tick: Tick(2),
                latest: Tick(2)
            }
        );
    }

    #[test]
    fn old_claims_are_clamped_to_the_cap() {
        let mut h = running(LagCompensationConfig::default(), 1, 20);
        // 15 ticks back, the cap is 9: checked at 11.
        let v = h.check_hit(&point(5, 0.0, [11.0, 0.0])).unwrap();
        assert!(v.hit);
        assert!(v.clamped);
        assert_eq!(v.checked_at, ViewTime::at(Tick(11)));
        assert!(!h.check_hit(&point(5, 0.0, [5.0, 0.0])).unwrap().hit);
        // Just at the cap is not clamped; just past it is.
        assert!(!h.check_hit(&point(11, 0.0, [11.0, 0.0])).unwrap().clamped);
        assert!(h.check_hit(&point(10, 0.9, [11.0, 0.0])).unwrap().clamped);
        let s = *h.stats();
        assert_eq!((s.rewinds, s.clamped, s.refused), (4, 3, 0));
    }

    #[test]
    fn old_claims_are_refused_when_so_configured() {
        let config = LagCompensationConfig {
            too_old: TooOldPolicy::Refuse,
            ..LagCompensationConfig::default()
        };
        let mut h = running(config, 1, 20);
        assert_eq!(
            h.check_hit(&point(5, 0.0, [5.0, 0.0])),
            Err(RewindError::TooOld {
                ticks_old: 15,
                limit: 9
            })
        );
        assert_eq!(
            h.check_hit(&point(10, 0.5, [10.5, 0.0])),
            Err(RewindError::TooOld {
                ticks_old: 10,
                limit: 9
            })
        );
        assert!(h.check_hit(&point(11, 0.0, [11.0, 0.0])).unwrap().hit);
        // Older than the history entirely, far in the past across the wrap.
        assert!(matches!(
            h.check_hit(&point(20u32.wrapping_sub(i32::MAX as u32), 0.0, [0.0, 0.0])),
            Err(RewindError::TooOld { .. })
        ));
        let s = *h.stats();
        assert_eq!((s.refused, s.refused_too_old, s.rewinds), (3, 3, 1));
        // A history shorter than the cap (just started) caps at its oldest tick.
        let mut young = running(
            LagCompensationConfig {
                too_old: TooOldPolicy::Refuse,
                ..LagCompensationConfig::default()
            },
            1,
            4,
        );
        assert_eq!(
            young.check_hit(&point(0, 0.0, [1.0, 0.0])),
            Err(RewindError::TooOld {
                ticks_old: 4,
                limit: 3
            })
        );
        let mut young = running(LagCompensationConfig::default(), 1, 4);
        let v = young.check_hit(&point(0, 0.0, [1.0, 0.0])).unwrap();
        assert!(v.hit && v.clamped);
    }

    #[test]
    fn future_claims_are_refused() {
        let mut h = running(LagCompensationConfig::default(), 1, 20);
        assert_eq!(
            h.check_hit(&point(21, 0.0, [21.0, 0.0])),
            Err(RewindError::InFuture { ticks_ahead: 1 })
        );
        assert_eq!(
            h.check_hit(&point(20, 0.5, [20.0, 0.0])),
            Err(RewindError::InFuture { ticks_ahead: 1 })
        );
        // Far ahead, across the wrap.
        assert!(matches!(
            h.check_hit(&point(20 + i32::MAX as u32, 0.0, [0.0, 0.0])),
            Err(RewindError::InFuture { .. })
        ));
        assert_eq!(
            h.position_at(RUNNER, ViewTime::at(Tick(25))),
            Err(RewindError::InFuture { ticks_ahead: 5 })
        );
        let s = *h.stats();
        assert_eq!((s.refused, s.refused_in_future, s.rewinds), (3, 3, 0));
    }

    #[test]
    fn unknown_and_removed_entities() {
        let mut h = HitHistory::<2>::new(LagCompensationConfig::default());
        assert_eq!(
            h.check_hit(&point(0, 0.0, [0.0, 0.0])),
            Err(RewindError::NoHistory)
        );
        assert_eq!(h.record(RUNNER, [0.0, 0.0], 1.0), Err(RecordError::NoTick));
        let late = EntityId(2);
        for t in 1..=10 {
            h.begin_tick(Tick(t)).unwrap();
            h.record(RUNNER, [t as f32, 0.0], 1.0).unwrap();
            if t >= 6 {
                h.record(late, [0.0, t as f32], 1.0).unwrap();
            }
        }
        // Spawned at 6: unknown before, and between 5 and 6.
        let on_late = |tick, fraction| HitClaim {
            target: late,
            view: ViewTime::new(Tick(tick), fraction),
            shot: Shot::Point { at: [0.0, 6.0] },
        };
        assert_eq!(
            h.check_hit(&on_late(5, 0.5)),
            Err(RewindError::UnknownEntity(late))
        );
        assert!(h.check_hit(&on_late(6, 0.0)).unwrap().hit);
        h.remove(late);
        assert_eq!(
            h.check_hit(&on_late(6, 0.0)),
            Err(RewindError::UnknownEntity(late))
        );
        assert_eq!(h.sample_count(), 10);
        // No longer recorded after 8 (despawned without `remove`): held at its last place.
        for t in 11..=12 {
            h.begin_tick(Tick(t)).unwrap();
        }
        let v = h.check_hit(&point(10, 0.5, [10.0, 0.0])).unwrap();
        assert_eq!(v.target.position, [10.0, 0.0]);
        h.clear();
        assert_eq!((h.tick_count(), h.sample_count()), (0, 0));
        assert_eq!(h.latest_tick(), None);
    }

    #[test]
    fn memory_stays_bounded() {
        let config = LagCompensationConfig {
            max_entities_per_tick: 8,
            ..LagCompensationConfig::default()
        };
        let history = config.history_ticks as usize;
        let mut h = HitHistory::<3>::new(config);
        for t in 1..=10_000u32 {
            h.begin_tick(Tick(t)).unwrap();
            // Eight entities at a time, replaced by new ids every 100 ticks and never
            // removed; a ninth is refused; a repeat overwrites.
            for k in 0..9 {
                let id = EntityId((t / 100) * 9 + k);
                let r = h.record(id, [t as f32, k as f32, 0.0], 0.5);
                assert_eq!(r.is_ok(), k < 8, "tick {t} entity {k}");
            }
            h.record(EntityId((t / 100) * 9), [0.0; 3], 0.5).unwrap();
            assert!(h.tick_count() <= history);
            assert!(h.sample_count() <= history * 8, "tick {t}");
        }
        assert_eq!(h.tick_count(), history);
        assert_eq!(h.sample_count(), history * 8);
        assert_eq!(h.stats().records_refused, 10_000);
        assert_eq!(h.oldest_tick(), Some(Tick(10_000 - 29)));
        // Removing the entities still in the history (ids of ticks 9,971..=10,000) frees their
        // samples.
        for k in 0..8 {
            h.remove(EntityId(99 * 9 + k));
        }
        assert_eq!(h.sample_count(), 8);
        for k in 0..8 {
            h.remove(EntityId(100 * 9 + k));
        }
        assert_eq!(h.sample_count(), 0);
        // A jump far ahead drops the whole history at once.
        h.begin_tick(Tick(2_000_000)).unwrap();
        assert_eq!(h.tick_count(), 1);
    }

    #[test]
    fn settings_are_brought_into_range() {
        let h = HitHistory::<2>::new(LagCompensationConfig {
            history_ticks: 0,
            max_rewind_ticks: 100,
            tolerance: f32::NAN,
            ..LagCompensationConfig::default()
        });
        assert_eq!(h.config().history_ticks, 1);
        assert_eq!(h.config().max_rewind_ticks, 0);
        assert_eq!(h.config().tolerance, 0.0);
        let h = HitHistory::<2>::new(LagCompensationConfig {
            history_ticks: u32::MAX,
            ..LagCompensationConfig::default()
        });
        assert_eq!(h.config().history_ticks, MAX_HISTORY_TICKS);
    }

    #[test]
    fn tolerance_widens_the_target() {
        let config = LagCompensationConfig {
            tolerance: 0.5,
            ..LagCompensationConfig::default()
        };
        let mut h = running(config, 1, 20);
        assert!(h.check_hit(&point(15, 0.0, [15.7, 0.0])).unwrap().hit);
        assert!(!h.check_hit(&point(15, 0.0, [15.8, 0.0])).unwrap().hit);
    }

    #[test]
    fn bad_samples_and_claims_are_refused() {
        let mut h = running(LagCompensationConfig::default(), 1, 20);
        let e = EntityId(5);
        for (p, r) in [
            ([f32::NAN, 0.0], 1.0),
            ([0.0, f32::INFINITY], 1.0),
            ([0.0, 0.0], f32::NAN),
            ([0.0, 0.0], -1.0),
            ([0.0, 0.0], f32::INFINITY),
        ] {
            assert_eq!(
                h.record(e, p, r),
                Err(RecordError::InvalidSample { entity: e })
            );
        }
        assert_eq!(h.stats().records_refused, 5);
        let ray = |origin: [f32; 2], direction: [f32; 2], range: f32| HitClaim {
            target: RUNNER,
            view: ViewTime::at(Tick(15)),
            shot: Shot::Ray {
                origin,
                direction,
                range,
            },
        };
        let bad = [
            point(15, f32::NAN, [15.0, 0.0]),
            point(15, f32::INFINITY, [15.0, 0.0]),
            point(15, 0.0, [f32::NAN, 0.0]),
            point(15, 0.0, [f32::NEG_INFINITY, 0.0]),
            ray([15.0, -1.0], [0.0, 0.0], 10.0),
            ray([15.0, -1.0], [0.0, f32::NAN], 10.0),
            ray([15.0, -1.0], [0.0, 1.0], -1.0),
            ray([15.0, -1.0], [0.0, 1.0], f32::NAN),
            ray([f32::NAN, -1.0], [0.0, 1.0], 10.0),
        ];
        for claim in &bad {
            assert_eq!(
                h.check_hit(claim),
                Err(RewindError::InvalidClaim),
                "{claim:?}"
            );
        }
        assert_eq!(
            h.position_at(RUNNER, ViewTime::new(Tick(15), f32::NAN)),
            Err(RewindError::InvalidClaim)
        );
        // Out-of-range fractions are clamped.
        assert_eq!(
            h.position_at(RUNNER, ViewTime::new(Tick(15), -3.0))
                .unwrap()
                .position,
            [15.0, 0.0]
        );
        assert_eq!(
            h.position_at(RUNNER, ViewTime::new(Tick(15), 7.0))
                .unwrap()
                .position,
            [16.0, 0.0]
        );
        // Huge finite values: the geometry runs in f64 and cannot overflow.
        let v = h
            .check_hit(&ray([-1e6, 0.0], [f32::MAX, f32::MIN_POSITIVE], f32::MAX))
            .unwrap();
        assert!(v.hit);
        // From far enough away the target is lost in rounding: a finite answer, no panic.
        let v = h
            .check_hit(&ray([-1e38, 0.0], [f32::MAX, f32::MIN_POSITIVE], f32::MAX))
            .unwrap();
        assert!(v.distance.is_finite());
        let v = h.check_hit(&point(15, 0.0, [f32::MAX, f32::MAX])).unwrap();
        assert!(!v.hit && v.distance.is_infinite());
        h.begin_tick(Tick(21)).unwrap();
        h.record(e, [f32::MAX, -f32::MAX], f32::MAX).unwrap();
        h.begin_tick(Tick(22)).unwrap();
        h.record(e, [-f32::MAX, f32::MAX], 0.0).unwrap();
        let huge = HitClaim {
            target: e,
            view: ViewTime::new(Tick(21), 0.5),
            shot: Shot::Point { at: [0.0, 0.0] },
        };
        let v = h.check_hit(&huge).unwrap();
        assert_eq!(v.target.position, [0.0, 0.0]);
        assert!(v.hit);
    }

    /// A small deterministic generator (xorshift64*), so failures name their seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        /// Mostly ordinary values, sometimes the nasty ones.
        fn f32(&mut self) -> f32 {
            match self.next() % 8 {
                0 => f32::from_bits(self.next() as u32),
                1 => [
                    f32::NAN,
                    f32::INFINITY,
                    f32::NEG_INFINITY,
                    f32::MAX,
                    -f32::MAX,
                    0.0,
                ][(self.next() % 6) as usize],
                _ => (self.next() % 2001) as f32 / 10.0 - 100.0,
            }
        }
    }

    #[test]
    fn random_inputs_never_panic_and_stay_bounded() {
        for seed in 1..=64u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let config = LagCompensationConfig {
                history_ticks: (rng.next() % 40) as u32,
                max_rewind_ticks: (rng.next() % 40) as u32,
                max_entities_per_tick: (rng.next() % 6) as usize,
                too_old: if rng.next() % 2 == 0 {
                    TooOldPolicy::Clamp
                } else {
                    TooOldPolicy::Refuse
                },
                tolerance: rng.f32(),
            };
            let mut h = HitHistory::<3>::new(config);
            let limit = h.config().history_ticks as usize * h.config().max_entities_per_tick;
            let mut tick = Tick(rng.next() as u32);
            for _ in 0..300 {
                match rng.next() % 10 {
                    0..=2 => {
                        tick = Tick(tick.0.wrapping_add((rng.next() % 4) as u32));
                        let _ = h.begin_tick(tick);
                    }
                    3..=5 => {
                        let e = EntityId((rng.next() % 8) as u32);
                        let _ = h.record(e, [rng.f32(), rng.f32(), rng.f32()], rng.f32());
                    }
                    6 => h.remove(EntityId((rng.next() % 8) as u32)),
                    _ => {
                        let view = ViewTime::new(
                            Tick(
                                tick.0
                                    .wrapping_sub((rng.next() % 50) as u32)
                                    .wrapping_add(3),
                            ),
                            rng.f32(),
                        );
                        let shot = if rng.next() % 2 == 0 {
                            Shot::Point {
                                at: [rng.f32(), rng.f32(), rng.f32()],
                            }
                        } else {
                            Shot::Ray {
                                origin: [rng.f32(), rng.f32(), rng.f32()],
                                direction: [rng.f32(), rng.f32(), rng.f32()],
                                range: rng.f32(),
                            }
                        };
                        let claim = HitClaim {
                            target: EntityId((rng.next() % 8) as u32),
                            view,
                            shot,
                        };
                        if let Ok(v) = h.check_hit(&claim) {
                            assert!(!v.distance.is_nan(), "seed {seed}: {claim:?} → {v:?}");
                            assert!(
                                (0.0..1.0).contains(&v.checked_at.fraction),
                                "seed {seed}: {v:?}"
                            );
                        }
                        let _ = h.position_at(claim.target, view);
                    }
                }
                assert!(h.sample_count() <= limit, "seed {seed}");
                assert!(
                    h.tick_count() <= h.config().history_ticks as usize,
                    "seed {seed}"
                );
            }
            let s = h.stats();
            assert!(s.hits <= s.rewinds && s.clamped <= s.rewinds, "seed {seed}");
        }
    }
}
