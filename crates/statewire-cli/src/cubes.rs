//! `statewire cubes`: the 901-cube snapshot-compression benchmark.
//!
//! - `statewire cubes generate --frames N --seed S --out FILE` writes frames from the
//!   deterministic physics generator in the challenge's file layout.
//! - `statewire cubes run [--file FILE | --generate --frames N --seed S] [--mode packed|entropy]
//!   [--json]` codes every packet (frame `i` against frame `i − 6`), decodes it, checks the
//!   result equals frame `i` exactly, and reports size, bandwidth and speed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use statewire_core::codec::cubes::entropy::{EntropyCodec, EntropyState};
use statewire_core::codec::cubes::{
    BASELINE_DISTANCE, Baselines, FRAME_RATE, Frame, Generator, NUM_CUBES, Scene, packed,
    read_frames, write_frames,
};

/// Which scene the generator plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SceneArg {
    /// As specified: the player drives and jumps around, pushing cubes.
    Spec,
    /// Adds ground pounds and pulls that keep many cubes tumbling at once.
    Stress,
}

impl SceneArg {
    /// The name on the command line.
    fn name(self) -> &'static str {
        match self {
            SceneArg::Spec => "spec",
            SceneArg::Stress => "stress",
        }
    }
}

impl From<SceneArg> for Scene {
    fn from(s: SceneArg) -> Scene {
        match s {
            SceneArg::Spec => Scene::Spec,
            SceneArg::Stress => Scene::Stress,
        }
    }
}

/// Flags of `statewire cubes`.
#[derive(Debug, clap::Args)]
pub(crate) struct CubesArgs {
    #[command(subcommand)]
    command: CubesCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CubesCommand {
    /// Write generated frames in the challenge layout (901 cubes × 8 little-endian i32).
    Generate(GenerateArgs),
    /// Code, decode and check every packet of a data set, and report.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct GenerateArgs {
    /// Frames to generate (the first 6 are the initial state).
    #[arg(long, default_value_t = 2837, value_parser = crate::parse_frames)]
    frames: usize,
    /// Seed of the generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// What the player does.
    #[arg(long, value_enum, default_value_t = SceneArg::Spec)]
    scene: SceneArg,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
}

/// Which codec `run` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum CodecMode {
    /// Bit-packed deltas against the baseline.
    Packed,
    /// Prediction and context-modelled range coding.
    Entropy,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Read frames from this file (the challenge layout).
    #[arg(
        long,
        conflicts_with = "generate",
        required_unless_present = "generate"
    )]
    file: Option<PathBuf>,
    /// Generate the frames instead of reading them.
    #[arg(long)]
    generate: bool,
    /// Frames to generate.
    #[arg(long, default_value_t = 2837, value_parser = crate::parse_frames, requires = "generate")]
    frames: usize,
    /// Seed of the generator.
    #[arg(long, default_value_t = 1, requires = "generate")]
    seed: u64,
    /// What the generated player does.
    #[arg(long, value_enum, default_value_t = SceneArg::Spec, requires = "generate")]
    scene: SceneArg,
    /// Codec.
    #[arg(long, value_enum, default_value_t = CodecMode::Entropy)]
    mode: CodecMode,
    /// Entropy mode: start every packet from fresh models instead of the models saved with
    /// its baseline.
    #[arg(long)]
    fresh_models: bool,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

/// What `run` measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CubesReport {
    /// Frames in the data set.
    pub(crate) frames: usize,
    /// Packets coded (frames from the 7th on).
    pub(crate) packets: usize,
    /// Mean packet size.
    pub(crate) bytes_per_packet: f64,
    /// Largest packet.
    pub(crate) max_packet_bytes: usize,
    /// Mean packet size × 8 × 60 / 1000.
    pub(crate) kbps: f64,
    /// Mean packet size in bits per cube.
    pub(crate) bits_per_cube: f64,
    /// Encode time per cube (one core, warm caches).
    pub(crate) encode_ns_per_cube: f64,
    /// Decode time per cube.
    pub(crate) decode_ns_per_cube: f64,
    /// Every packet decoded to exactly its frame.
    pub(crate) lossless: bool,
    /// The codec.
    pub(crate) mode: CodecMode,
    /// Entropy mode: whether models travelled with the baseline.
    pub(crate) carried_models: bool,
    /// Share of cubes that differ from their baseline, over all packets.
    pub(crate) changed_share: f64,
    /// Where the frames came from.
    pub(crate) source: String,
}

impl CubesReport {
    fn render(&self) -> String {
        let models = match (self.mode, self.carried_models) {
            (CodecMode::Packed, _) => "",
            (CodecMode::Entropy, true) => " (models carried with the baseline)",
            (CodecMode::Entropy, false) => " (fresh models per packet)",
        };
        format!(
            "901-cube scenario: {} frames ({}), {} packets, mode {}{models}\n\
             \x20 size:     {:.1} bytes/packet (largest {}), {:.3} bits/cube, {:.1} kbps at {} packets/s\n\
             \x20 activity: {:.1} % of cubes differ from their baseline (frame i-6) per packet\n\
             \x20 speed:    encode {:.1} ns/cube ({:.1} us/packet), decode {:.1} ns/cube, one core, warm caches\n\
             \x20 lossless: {}",
            self.frames,
            self.source,
            self.packets,
            match self.mode {
                CodecMode::Packed => "packed",
                CodecMode::Entropy => "entropy",
            },
            self.bytes_per_packet,
            self.max_packet_bytes,
            self.bits_per_cube,
            self.kbps,
            FRAME_RATE,
            self.changed_share * 100.0,
            self.encode_ns_per_cube,
            self.encode_ns_per_cube * NUM_CUBES as f64 / 1000.0,
            self.decode_ns_per_cube,
            if self.lossless {
                "yes, every packet decoded to exactly its frame"
            } else {
                "NO: some packets decoded to a different frame"
            },
        )
    }
}

/// Errors that stop `run`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CubesError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Format {
        path: PathBuf,
        source: statewire_core::codec::cubes::FileError,
    },
    #[error("need more than {BASELINE_DISTANCE} frames, got {0}")]
    TooFewFrames(usize),
    #[error("frame {frame}: {source}")]
    Encode {
        frame: usize,
        source: statewire_core::codec::cubes::EncodeError,
    },
}

pub(crate) fn main(args: CubesArgs) -> ExitCode {
    match args.command {
        CubesCommand::Generate(a) => match generate_file(&a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        CubesCommand::Run(a) => {
            let frames = match load(&a) {
                Ok(f) => f,
                Err(e) => return fail(&e),
            };
            let source = match &a.file {
                Some(p) => p.display().to_string(),
                None => format!("generated, seed {}, scene {}", a.seed, a.scene.name()),
            };
            let bar = bar(frames.len().saturating_sub(BASELINE_DISTANCE), "packets");
            let result = run(&frames, a.mode, !a.fresh_models, source, &mut |done| {
                bar.set_position(done as u64)
            });
            bar.finish_and_clear();
            let report = match result {
                Ok(r) => r,
                Err(e) => return fail(&e),
            };
            crate::print_report(
                &report.render(),
                &report,
                a.json,
                report.lossless,
                "the codec was not lossless",
            )
        }
    }
}

fn fail(e: &CubesError) -> ExitCode {
    eprintln!("statewire: {e}");
    ExitCode::FAILURE
}

fn bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    let template = format!("{{bar:40}} {{pos}}/{{len}} {what} {{elapsed}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}

fn generate_frames(frames: usize, seed: u64, scene: SceneArg) -> Vec<Frame> {
    let bar = bar(frames, "frames");
    let mut g = Generator::with_scene(seed, scene.into());
    let out = (0..frames)
        .map(|i| {
            if i % 16 == 0 {
                bar.set_position(i as u64);
            }
            g.next_frame()
        })
        .collect();
    bar.finish_and_clear();
    out
}

fn generate_file(a: &GenerateArgs) -> Result<(), CubesError> {
    let frames = generate_frames(a.frames, a.seed, a.scene);
    let mut bytes = Vec::new();
    write_frames(&frames, &mut bytes);
    std::fs::write(&a.out, &bytes).map_err(|source| CubesError::Write {
        path: a.out.clone(),
        source,
    })?;
    println!(
        "wrote {} frames ({} bytes, seed {}, scene {}) to {}",
        frames.len(),
        bytes.len(),
        a.seed,
        a.scene.name(),
        a.out.display()
    );
    Ok(())
}

fn load(a: &RunArgs) -> Result<Vec<Frame>, CubesError> {
    match &a.file {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|source| CubesError::Read {
                path: path.clone(),
                source,
            })?;
            read_frames(&bytes).map_err(|source| CubesError::Format {
                path: path.clone(),
                source,
            })
        }
        None => Ok(generate_frames(a.frames, a.seed, a.scene)),
    }
}

/// The baselines of the packet against frame `base_index`: its own baseline is six frames
/// earlier once it was itself coded (`coded`), and its models are in `states` (a ring).
fn baselines<'a>(
    frames: &'a [Frame],
    states: &'a [EntropyState],
    base_index: usize,
    coded: bool,
) -> Baselines<'a> {
    Baselines {
        base: &frames[base_index],
        prev: base_index
            .checked_sub(BASELINE_DISTANCE)
            .map(|k| &frames[k]),
        state: coded.then(|| &states[base_index % states.len()]),
    }
}

/// Codes packet `i` against frame `i − 6` for every `i ≥ 6`, as sender and receiver would,
/// decodes it and compares. `carry` keeps the entropy models with each frame (both sides).
pub(crate) fn run(
    frames: &[Frame],
    mode: CodecMode,
    carry: bool,
    source: String,
    progress: &mut dyn FnMut(usize),
) -> Result<CubesReport, CubesError> {
    if frames.len() <= BASELINE_DISTANCE {
        return Err(CubesError::TooFewFrames(frames.len()));
    }
    let ring = BASELINE_DISTANCE + 1;
    // Each side keeps, per recent frame, the models it held after that frame's packet.
    let mut enc_states: Vec<EntropyState> = (0..ring).map(|_| EntropyState::fresh()).collect();
    let mut dec_states: Vec<EntropyState> = (0..ring).map(|_| EntropyState::fresh()).collect();
    let mut enc = EntropyCodec::new();
    let mut dec = EntropyCodec::new();
    let mut packet = Vec::with_capacity(64 * 1024);
    let mut decoded = Frame::default();
    let (mut bytes, mut max_bytes, mut changed) = (0usize, 0usize, 0usize);
    let (mut enc_time, mut dec_time) = (Duration::ZERO, Duration::ZERO);
    let mut lossless = true;
    let packets = frames.len() - BASELINE_DISTANCE;
    for i in BASELINE_DISTANCE..frames.len() {
        let base_index = i - BASELINE_DISTANCE;
        // The first six frames are the shared initial state: no history, no models.
        let coded_base = base_index >= BASELINE_DISTANCE;
        let use_state = carry && coded_base;
        changed += frames[i]
            .cubes()
            .iter()
            .zip(frames[base_index].cubes())
            .filter(|(a, b)| a != b)
            .count();

        let encode = |enc: &mut EntropyCodec, states: &[EntropyState], out: &mut Vec<u8>| {
            match mode {
                CodecMode::Packed => packed::encode(&frames[base_index], &frames[i], out),
                CodecMode::Entropy => enc.encode(
                    baselines(frames, states, base_index, use_state),
                    &frames[i],
                    out,
                ),
            }
            .map_err(|source| CubesError::Encode { frame: i, source })
        };
        // One untimed pass warms the caches, as a server encodes a frame it just produced.
        packet.clear();
        encode(&mut enc, &enc_states, &mut packet)?;
        packet.clear();
        let t0 = Instant::now();
        let n = encode(&mut enc, &enc_states, &mut packet)?;
        enc_time += t0.elapsed();
        if mode == CodecMode::Entropy {
            enc.save_state(&mut enc_states[i % ring]);
        }
        bytes += n;
        max_bytes = max_bytes.max(n);

        let t1 = Instant::now();
        let ok = match mode {
            CodecMode::Packed => packed::decode(&frames[base_index], &packet, &mut decoded),
            CodecMode::Entropy => dec.decode(
                baselines(frames, &dec_states, base_index, use_state),
                &packet,
                &mut decoded,
            ),
        };
        dec_time += t1.elapsed();
        match ok {
            Ok(()) if decoded == frames[i] => {
                if mode == CodecMode::Entropy {
                    dec.save_state(&mut dec_states[i % ring]);
                }
            }
            _ => lossless = false,
        }
        if i % 32 == 0 {
            progress(i - BASELINE_DISTANCE);
        }
    }
    let per_cube = |d: Duration| d.as_nanos() as f64 / (packets * NUM_CUBES) as f64;
    let bytes_per_packet = bytes as f64 / packets as f64;
    Ok(CubesReport {
        frames: frames.len(),
        packets,
        bytes_per_packet,
        max_packet_bytes: max_bytes,
        kbps: bytes_per_packet * 8.0 * f64::from(FRAME_RATE) / 1000.0,
        bits_per_cube: bytes_per_packet * 8.0 / NUM_CUBES as f64,
        encode_ns_per_cube: per_cube(enc_time),
        decode_ns_per_cube: per_cube(dec_time),
        lossless,
        mode,
        carried_models: mode == CodecMode::Entropy && carry,
        changed_share: changed as f64 / (packets * NUM_CUBES) as f64,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use statewire_core::codec::cubes::generate;

    #[test]
    fn short_generated_run_is_lossless_in_both_modes() {
        let frames = generate(200, 1);
        for (mode, carry) in [
            (CodecMode::Packed, false),
            (CodecMode::Entropy, false),
            (CodecMode::Entropy, true),
        ] {
            let r = run(&frames, mode, carry, "test".into(), &mut |_| {}).unwrap();
            assert!(r.lossless, "{mode:?}");
            assert_eq!(r.packets, 194);
            assert!(r.bits_per_cube > 0.0 && r.bits_per_cube < 20.0, "{r:?}");
            let line = serde_json::to_string(&r).unwrap();
            for key in [
                "frames",
                "packets",
                "bytes_per_packet",
                "kbps",
                "bits_per_cube",
                "encode_ns_per_cube",
                "decode_ns_per_cube",
                "lossless",
                "mode",
            ] {
                assert!(line.contains(&format!("\"{key}\":")), "{key} in {line}");
            }
        }
    }

    #[test]
    fn too_few_frames_is_an_error() {
        let frames = generate(6, 1);
        assert!(matches!(
            run(
                &frames,
                CodecMode::Packed,
                false,
                String::new(),
                &mut |_| {}
            ),
            Err(CubesError::TooFewFrames(6))
        ));
    }
}
