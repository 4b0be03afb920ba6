//! The 901-cube scenario codecs: encode and decode per snapshot, packed and entropy modes.
//!
//! Data: `statewire cubes generate --frames 2837 --seed 1 --scene spec|stress` (generated in
//! memory before timing): the scenario as specified (the targets' data set) and the stress
//! scene with pounds and pulls, benchmarked as `cubes/spec/...` and `cubes/stress/...`.
//! Each timed iteration codes the next packet of the run (frame `i` against frame `i − 6`,
//! cycling through all 2,831 packets), after one untimed pass over the same packet, so caches
//! are warm as on a server that has just produced the frame; only the codec call is timed.
//! The entropy benchmarks carry the models with the baseline, as `statewire cubes run` does
//! by default. Throughput is per cube (901 elements per snapshot).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use statewire_cubes::entropy::{EntropyCodec, EntropyState};
use statewire_cubes::{
    BASELINE_DISTANCE, Baselines, Frame, NUM_CUBES, Scene, generate_scene, packed,
};

const FRAMES: usize = 2837;
const SEED: u64 = 1;

struct Data {
    frames: Vec<Frame>,
    /// `states[i]`: the models after packet `i` (frames before 6 have none).
    states: Vec<EntropyState>,
    packed: Vec<Vec<u8>>,
    entropy: Vec<Vec<u8>>,
}

impl Data {
    fn baselines(&self, i: usize) -> Baselines<'_> {
        let base = i - BASELINE_DISTANCE;
        Baselines {
            base: &self.frames[base],
            prev: base.checked_sub(BASELINE_DISTANCE).map(|k| &self.frames[k]),
            state: (base >= BASELINE_DISTANCE).then(|| &self.states[base]),
        }
    }

    /// The frame index of the `n`-th timed packet.
    fn packet(&self, n: u64) -> usize {
        BASELINE_DISTANCE + (n as usize % (self.frames.len() - BASELINE_DISTANCE))
    }
}

fn data(scene: Scene, name: &str) -> Data {
    let frames = generate_scene(FRAMES, SEED, scene);
    let mut states: Vec<EntropyState> = (0..FRAMES).map(|_| EntropyState::fresh()).collect();
    let (mut packed_packets, mut entropy_packets) =
        (vec![Vec::new(); FRAMES], vec![Vec::new(); FRAMES]);
    let mut codec = EntropyCodec::new();
    for i in BASELINE_DISTANCE..FRAMES {
        packed::encode(&frames[i - 6], &frames[i], &mut packed_packets[i]).expect("packed encode");
        let base = i - BASELINE_DISTANCE;
        let bl = Baselines {
            base: &frames[base],
            prev: base.checked_sub(BASELINE_DISTANCE).map(|k| &frames[k]),
            state: (base >= BASELINE_DISTANCE).then(|| &states[base]),
        };
        codec
            .encode(bl, &frames[i], &mut entropy_packets[i])
            .expect("entropy encode");
        let mut s = EntropyState::fresh();
        codec.save_state(&mut s);
        states[i] = s;
    }
    let mean = |p: &[Vec<u8>]| {
        p[BASELINE_DISTANCE..].iter().map(Vec::len).sum::<usize>() as f64
            / (FRAMES - BASELINE_DISTANCE) as f64
    };
    let scene_name = name;
    for (name, p) in [("packed", &packed_packets), ("entropy", &entropy_packets)] {
        let m = mean(p);
        println!(
            "cubes/{scene_name}/{name}: {m:.1} bytes per packet = {:.3} bits/cube = {:.1} kbps",
            m * 8.0 / NUM_CUBES as f64,
            m * 8.0 * 60.0 / 1000.0
        );
    }
    Data {
        frames,
        states,
        packed: packed_packets,
        entropy: entropy_packets,
    }
}

fn timed(iters: u64, mut one: impl FnMut(u64, bool)) -> Duration {
    let mut total = Duration::ZERO;
    for n in 0..iters {
        one(n, false);
        let t = Instant::now();
        one(n, true);
        total += t.elapsed();
    }
    total
}

fn bench(c: &mut Criterion) {
    for (scene, name) in [(Scene::Spec, "spec"), (Scene::Stress, "stress")] {
        bench_scene(c, scene, name);
    }
}

fn bench_scene(c: &mut Criterion, scene: Scene, name: &str) {
    let d = data(scene, name);
    let mut g = c.benchmark_group(format!("cubes/{name}"));
    g.throughput(Throughput::Elements(NUM_CUBES as u64));
    let mut out = Vec::with_capacity(64 * 1024);
    let mut frame = Frame::default();

    g.bench_function("packed/encode", |b| {
        b.iter_custom(|iters| {
            timed(iters, |n, _| {
                let i = d.packet(n);
                out.clear();
                black_box(packed::encode(&d.frames[i - 6], &d.frames[i], &mut out).ok());
            })
        })
    });
    g.bench_function("packed/decode", |b| {
        b.iter_custom(|iters| {
            timed(iters, |n, _| {
                let i = d.packet(n);
                black_box(packed::decode(&d.frames[i - 6], &d.packed[i], &mut frame).ok());
            })
        })
    });
    let mut codec = EntropyCodec::new();
    g.bench_function("entropy/encode", |b| {
        b.iter_custom(|iters| {
            timed(iters, |n, _| {
                let i = d.packet(n);
                out.clear();
                black_box(codec.encode(d.baselines(i), &d.frames[i], &mut out).ok());
            })
        })
    });
    g.bench_function("entropy/decode", |b| {
        b.iter_custom(|iters| {
            timed(iters, |n, _| {
                let i = d.packet(n);
                black_box(codec.decode(d.baselines(i), &d.entropy[i], &mut frame).ok());
            })
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
