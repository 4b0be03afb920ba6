//! The smooth-play state machines at the scale of `statewire sim`'s default run (1,000
//! entities, 30 Hz, a 200 ms link): what a client pays per frame and the server per tick.
//!
//! * `smooth/predictor_reconcile_15`: one authoritative state taken in with 15 unacknowledged
//!   inputs to replay (about a 400 ms round trip plus margin), corrected every time.
//! * `smooth/interpolator_push_sample_1000`: one snapshot's positions pushed for 1,000 remote
//!   entities and all of them sampled at the render time (a client's frame).
//! * `smooth/hit_history_record_1000`: the server records 1,000 hittable entities for a tick
//!   (with 45 ticks of history kept).
//! * `smooth/hit_history_check_ray`: one ray shot judged 20 ticks back.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use statewire_benches::SplitMix64;
use statewire_core::interpolation::{InterpolationConfig, Interpolator, RenderTime};
use statewire_core::lag_compensation::{
    HitClaim, HitHistory, LagCompensationConfig, Shot, ViewTime,
};
use statewire_core::prediction::{PredictionConfig, Predictor, Simulate};
use statewire_core::{EntityId, Tick};

const ENTITIES: u32 = 1_000;

/// A player on a plane moved by a 2D input each tick (the sim game's step, without the grid).
struct Walk;
impl Simulate for Walk {
    type State = [f32; 2];
    type Input = [i8; 2];
    fn step(&self, s: &[f32; 2], v: &[i8; 2]) -> [f32; 2] {
        let (dx, dy) = (f32::from(v[0]), f32::from(v[1]));
        let len = (dx * dx + dy * dy).sqrt().max(1.0);
        [s[0] + dx / len / 6.0, s[1] + dy / len / 6.0]
    }
    fn distance(&self, a: &[f32; 2], b: &[f32; 2]) -> f32 {
        ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
    }
    fn blend(&self, a: &[f32; 2], b: &[f32; 2], t: f32) -> [f32; 2] {
        [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t]
    }
}

fn bench_smooth(c: &mut Criterion) {
    let mut g = c.benchmark_group("smooth");

    // A predictor 15 inputs ahead; each iteration takes in the state for the oldest pending
    // tick, off by a little (so it replays and corrects), then predicts one more tick.
    let mut p = Predictor::new(Walk, Tick(0), [0.0, 0.0], PredictionConfig::default());
    let mut next = 1u32;
    for _ in 0..15 {
        let _ = p.apply_input(Tick(next), [100, 20]);
        next += 1;
    }
    let mut now = Duration::ZERO;
    // What the timed loop does, checked once: the state is taken in and 14 inputs replayed.
    let r = p.on_authoritative(Tick(1), [0.11, 0.0], now);
    assert!(r.corrected && r.replayed == 14, "{r:?}");
    let _ = p.apply_input(Tick(next), [100, 20]);
    next += 1;
    g.bench_function("predictor_reconcile_15", |b| {
        b.iter(|| {
            now += Duration::from_millis(33);
            let t = Tick(next - 15);
            let s = [t.0 as f32 * 0.1 + 0.01, 0.0];
            black_box(p.on_authoritative(t, s, now));
            let _ = p.apply_input(Tick(next), [100, 20]);
            next += 1;
            black_box(p.visible(now));
        })
    });

    // 1,000 remote entities: one snapshot pushed, all sampled between the last two.
    let mut rng = SplitMix64::new(12);
    let mut interp = Interpolator::new(InterpolationConfig::default());
    let mut pos: Vec<[f32; 2]> = (0..ENTITIES)
        .map(|_| [rng.signed_unit() * 250.0, rng.signed_unit() * 250.0])
        .collect();
    let mut tick = 0u32;
    let push = |interp: &mut Interpolator<[f32; 2]>, pos: &mut [[f32; 2]], tick: u32| {
        for (i, p) in pos.iter_mut().enumerate() {
            p[0] += 0.05;
            interp.push(EntityId(i as u32), Tick(tick), *p);
        }
    };
    for _ in 0..8 {
        tick += 1;
        push(&mut interp, &mut pos, tick);
    }
    g.bench_function("interpolator_push_sample_1000", |b| {
        b.iter(|| {
            tick += 1;
            push(&mut interp, &mut pos, tick);
            let at = RenderTime::new(Tick(tick - 4), 0.4);
            for i in 0..ENTITIES {
                black_box(interp.sample(EntityId(i), at));
            }
        })
    });

    // The server's history of 1,000 hittables, 45 ticks kept.
    let config = LagCompensationConfig {
        history_ticks: 45,
        max_rewind_ticks: 30,
        max_entities_per_tick: 2048,
        ..LagCompensationConfig::default()
    };
    let mut history = HitHistory::<2>::new(config);
    let mut t = 0u32;
    let record = |history: &mut HitHistory<2>, t: u32| {
        history.begin_tick(Tick(t)).unwrap();
        for (i, p) in pos.iter().enumerate() {
            history
                .record(EntityId(i as u32), [p[0] + t as f32 * 0.05, p[1]], 0.75)
                .unwrap();
        }
    };
    for _ in 0..45 {
        t += 1;
        record(&mut history, t);
    }
    g.bench_function("hit_history_record_1000", |b| {
        b.iter(|| {
            t += 1;
            record(&mut history, t);
        })
    });
    let target = EntityId(500);
    g.bench_function("hit_history_check_ray", |b| {
        b.iter(|| {
            let view = ViewTime::new(Tick(t - 20), 0.5);
            let at = history.position_at(target, view).unwrap().position;
            let claim = HitClaim {
                target,
                view,
                shot: Shot::Ray {
                    origin: [at[0] - 10.0, at[1]],
                    direction: [1.0, 0.0],
                    range: 40.0,
                },
            };
            black_box(history.check_hit(&claim).unwrap())
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_smooth
}
criterion_main!(benches);
