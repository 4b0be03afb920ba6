//! The 901-cube snapshot-compression scenario ("Snapshot Compression", Gaffer On Games, 2015).
//!
//! A frame is 901 cubes: a large player cube (cube 0 in generated data) and a 30×30 grid of
//! small cubes. Each cube is a quantized [`CubeState`]: a smallest-three orientation (the index
//! of the largest quaternion component and the other three on 9 bits), a position at 512 units
//! per metre (x and y in ±16383, z in 0..=8191) and an `interacting` flag. Frames are sampled
//! at 60 Hz; packet `i` (from frame [`BASELINE_DISTANCE`] on) carries frame `i` coded against
//! frame `i − 6`, its baseline, and the bandwidth is the mean packet size × 8 × 60.
//!
//! - [`read_frames`] / [`write_frames`]: the challenge's file layout (no header, little-endian,
//!   per frame 901 cubes × 8 `i32` = largest, a, b, c, x, y, z, interacting), so the original
//!   public data file can be used unchanged. The reader rejects a size that is not a whole
//!   number of frames and any value out of range.
//! - [`generate`]: deterministic physics producing such frames (see [`Generator`]).
//! - [`packed`]: the bit-packed codec (changed cubes by relative index, small-delta codes).
//! - [`entropy`]: the range-coded codec with physics prediction and context models.
//!
//! The codecs are built from `statewire-core`'s general building blocks: the bit writer and
//! reader ([`statewire_core::bits`]) and the adaptive range coder
//! ([`statewire_core::codec::range`]). The `statewire cubes` command runs them over a data set
//! and reports size, bandwidth and speed; `benches/benches/cubes.rs` times them.
//!
//! # Example
//!
//! ```
//! use statewire_cubes::entropy::EntropyCodec;
//! use statewire_cubes::{BASELINE_DISTANCE, Baselines, Frame, generate, packed};
//!
//! let frames = generate(BASELINE_DISTANCE + 1, 1);
//! let (base, target) = (&frames[0], &frames[BASELINE_DISTANCE]);
//!
//! // Bit-packed: frame 6 against frame 0.
//! let mut packet = Vec::new();
//! packed::encode(base, target, &mut packet).unwrap();
//! let mut decoded = Frame::default();
//! packed::decode(base, &packet, &mut decoded).unwrap();
//! assert_eq!(&decoded, target);
//!
//! // Entropy-coded, with no history (prediction assumes rest) and fresh models.
//! let bl = Baselines { base, prev: None, state: None };
//! packet.clear();
//! EntropyCodec::new().encode(bl, target, &mut packet).unwrap();
//! EntropyCodec::new().decode(bl, &packet, &mut decoded).unwrap();
//! assert_eq!(&decoded, target);
//! ```

use std::fmt;

pub mod entropy;
pub mod packed;
mod physics;

/// Cubes per frame.
pub const NUM_CUBES: usize = 901;
/// `i32` values per cube in the file layout.
pub const VALUES_PER_CUBE: usize = 8;
/// Bytes per frame in the file layout.
pub const FRAME_BYTES: usize = NUM_CUBES * VALUES_PER_CUBE * 4;
/// Packet `i` is coded against frame `i - BASELINE_DISTANCE`.
pub const BASELINE_DISTANCE: usize = 6;
/// Frames per second of the scenario.
pub const FRAME_RATE: u32 = 60;
/// Position units per metre.
pub const POSITION_SCALE: f64 = 512.0;
/// Largest `|x|` and `|y|`.
pub const XY_LIMIT: i32 = 16383;
/// Largest `z` (the smallest is 0).
pub const Z_LIMIT: i32 = 8191;
/// Largest smallest-three component value (9 bits).
pub const COMPONENT_LIMIT: u16 = 511;

/// One quantized cube.
// `repr(C)` in this field order lays the cube out as 20 bytes without padding, so the three
// words of `eq` are three adjacent loads per cube (the codecs compare all 901 cubes per packet).
#[derive(Debug, Clone, Copy, Eq, Default, bytemuck::NoUninit)]
#[repr(C)]
pub struct CubeState {
    /// Position x in 1/512 m, -16383..=16383.
    pub x: i32,
    /// Position y in 1/512 m, -16383..=16383.
    pub y: i32,
    /// Height in 1/512 m, 0..=8191.
    pub z: i32,
    /// First of the three other components, 0..=511 over [-1/√2, 1/√2].
    pub a: u16,
    /// Second of the three other components.
    pub b: u16,
    /// Third of the three other components.
    pub c: u16,
    /// Index (0..=3, in x, y, z, w order) of the largest quaternion component.
    pub largest: u8,
    /// Whether the cube is interacting with the player (directly or through other cubes).
    pub interacting: bool,
}

impl PartialEq for CubeState {
    /// Field-wise equality without early exits: codecs compare every cube of every frame, and
    /// a branch per field mispredicts on moving cubes.
    #[inline]
    fn eq(&self, o: &Self) -> bool {
        let w = |c: &Self| {
            (
                u64::from(c.x as u32) | u64::from(c.y as u32) << 32,
                u64::from(c.z as u32) | u64::from(c.a) << 32 | u64::from(c.b) << 48,
                u32::from(c.c) | u32::from(c.largest) << 16 | u32::from(c.interacting) << 24,
            )
        };
        let (s, o) = (w(self), w(o));
        ((s.0 ^ o.0) | (s.1 ^ o.1) | u64::from(s.2 ^ o.2)) == 0
    }
}

impl std::hash::Hash for CubeState {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.to_values().hash(h);
    }
}

/// 64-bit words of a bitmap with one bit per cube.
pub(crate) const WORDS: usize = NUM_CUBES.div_ceil(64);

/// 32-bit words per cube in memory (`CubeState` is 20 bytes, `repr(C)`, no padding).
const CUBE_WORDS: usize = std::mem::size_of::<CubeState>() / 4;
const _: () = assert!(std::mem::size_of::<CubeState>() == 4 * CUBE_WORDS);

/// The indices of the set bits of `word`, lowest first.
#[inline(always)]
pub(crate) fn set_bits(mut word: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (word != 0).then(|| {
            let k = word.trailing_zeros() as usize;
            word &= word - 1;
            k
        })
    })
}

/// Which cubes differ between `a` and `b`, as a bitmap (bit `i % 64` of word `i / 64`).
///
/// Both frames are read as plain 32-bit words (a safe cast: the cube has no padding) and
/// compared four cubes (80 bytes) at a time, a fixed-size XOR/OR reduction the compiler turns
/// into a few vector operations; only a group that differs is split into its cubes. Most cubes
/// of a frame are usually unchanged, so this is about twice as fast as comparing cube by cube.
pub(crate) fn diff_bitmap(a: &[CubeState; NUM_CUBES], b: &[CubeState; NUM_CUBES]) -> [u64; WORDS] {
    const GROUP: usize = 4;
    let (aw, bw): (&[u32], &[u32]) = (bytemuck::cast_slice(a), bytemuck::cast_slice(b));
    let differs = |x: &[u32], y: &[u32]| x.iter().zip(y).fold(0, |acc, (p, q)| acc | (p ^ q)) != 0;
    let mut map = [0u64; WORDS];
    let full = NUM_CUBES / GROUP;
    for (g, (x, y)) in aw
        .chunks_exact(GROUP * CUBE_WORDS)
        .zip(bw.chunks_exact(GROUP * CUBE_WORDS))
        .enumerate()
    {
        if differs(x, y) {
            for (k, (xc, yc)) in x
                .chunks_exact(CUBE_WORDS)
                .zip(y.chunks_exact(CUBE_WORDS))
                .enumerate()
            {
                let i = g * GROUP + k;
                map[i / 64] |= u64::from(differs(xc, yc)) << (i % 64);
            }
        }
    }
    for i in full * GROUP..NUM_CUBES {
        map[i / 64] |= u64::from(a[i] != b[i]) << (i % 64);
    }
    map
}

/// A field of [`CubeState`], for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CubeField {
    /// [`CubeState::largest`].
    Largest,
    /// [`CubeState::a`].
    A,
    /// [`CubeState::b`].
    B,
    /// [`CubeState::c`].
    C,
    /// [`CubeState::x`].
    X,
    /// [`CubeState::y`].
    Y,
    /// [`CubeState::z`].
    Z,
    /// [`CubeState::interacting`].
    Interacting,
}

impl fmt::Display for CubeField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CubeField::Largest => "largest",
            CubeField::A => "a",
            CubeField::B => "b",
            CubeField::C => "c",
            CubeField::X => "x",
            CubeField::Y => "y",
            CubeField::Z => "z",
            CubeField::Interacting => "interacting",
        })
    }
}

impl CubeState {
    /// The first field outside its range, if any.
    #[must_use]
    pub fn out_of_range(&self) -> Option<CubeField> {
        if self.largest > 3 {
            Some(CubeField::Largest)
        } else if self.a > COMPONENT_LIMIT {
            Some(CubeField::A)
        } else if self.b > COMPONENT_LIMIT {
            Some(CubeField::B)
        } else if self.c > COMPONENT_LIMIT {
            Some(CubeField::C)
        } else if !(-XY_LIMIT..=XY_LIMIT).contains(&self.x) {
            Some(CubeField::X)
        } else if !(-XY_LIMIT..=XY_LIMIT).contains(&self.y) {
            Some(CubeField::Y)
        } else if !(0..=Z_LIMIT).contains(&self.z) {
            Some(CubeField::Z)
        } else {
            None
        }
    }

    /// The eight values in file order (largest, a, b, c, x, y, z, interacting).
    #[must_use]
    pub fn to_values(&self) -> [i32; VALUES_PER_CUBE] {
        [
            i32::from(self.largest),
            i32::from(self.a),
            i32::from(self.b),
            i32::from(self.c),
            self.x,
            self.y,
            self.z,
            i32::from(self.interacting),
        ]
    }

    /// Builds a cube from the eight values in file order, checking every range.
    pub fn from_values(v: [i32; VALUES_PER_CUBE]) -> Result<CubeState, (CubeField, i32)> {
        let small = |field, x: i32| {
            u16::try_from(x)
                .ok()
                .filter(|&c| c <= COMPONENT_LIMIT)
                .ok_or((field, x))
        };
        let cube = CubeState {
            largest: u8::try_from(v[0])
                .ok()
                .filter(|&l| l <= 3)
                .ok_or((CubeField::Largest, v[0]))?,
            a: small(CubeField::A, v[1])?,
            b: small(CubeField::B, v[2])?,
            c: small(CubeField::C, v[3])?,
            x: v[4],
            y: v[5],
            z: v[6],
            interacting: match v[7] {
                0 => false,
                1 => true,
                other => return Err((CubeField::Interacting, other)),
            },
        };
        match cube.out_of_range() {
            Some(f @ CubeField::X) => Err((f, v[4])),
            Some(f @ CubeField::Y) => Err((f, v[5])),
            Some(f @ CubeField::Z) => Err((f, v[6])),
            Some(f) => Err((f, -1)),
            None => Ok(cube),
        }
    }
}

/// One snapshot of all 901 cubes.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    cubes: Box<[CubeState; NUM_CUBES]>,
}

impl Default for Frame {
    fn default() -> Self {
        Frame {
            cubes: Box::new([CubeState::default(); NUM_CUBES]),
        }
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Frame {{ cube0: {:?}, .. {NUM_CUBES} cubes }}",
            self.cubes[0]
        )
    }
}

impl Frame {
    /// The cubes.
    #[must_use]
    pub fn cubes(&self) -> &[CubeState; NUM_CUBES] {
        &self.cubes
    }

    /// The cubes, to modify (encoders check ranges of what they send).
    pub fn cubes_mut(&mut self) -> &mut [CubeState; NUM_CUBES] {
        &mut self.cubes
    }

    /// The first cube with a value out of range, if any.
    #[must_use]
    pub fn out_of_range(&self) -> Option<(usize, CubeField)> {
        self.cubes
            .iter()
            .enumerate()
            .find_map(|(i, c)| c.out_of_range().map(|f| (i, f)))
    }
}

/// Errors from [`read_frames`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// The size is not a whole number of frames.
    #[error(
        "file size {len} bytes is not a multiple of the frame size {FRAME_BYTES} bytes \
         (901 cubes x 8 little-endian i32)"
    )]
    BadLength {
        /// File size in bytes.
        len: usize,
    },
    /// A value is outside its field's range.
    #[error("frame {frame}, cube {cube}: {field} = {value} is out of range")]
    OutOfRange {
        /// Frame index.
        frame: usize,
        /// Cube index.
        cube: usize,
        /// The field.
        field: CubeField,
        /// The value read (-1 when not representable).
        value: i32,
    },
}

/// Parses frames in the challenge layout.
pub fn read_frames(bytes: &[u8]) -> Result<Vec<Frame>, FileError> {
    if bytes.len() % FRAME_BYTES != 0 {
        return Err(FileError::BadLength { len: bytes.len() });
    }
    let mut frames = Vec::with_capacity(bytes.len() / FRAME_BYTES);
    for (fi, chunk) in bytes.chunks_exact(FRAME_BYTES).enumerate() {
        let mut frame = Frame::default();
        for (ci, (cube, raw)) in frame
            .cubes
            .iter_mut()
            .zip(chunk.chunks_exact(VALUES_PER_CUBE * 4))
            .enumerate()
        {
            let mut v = [0i32; VALUES_PER_CUBE];
            for (x, b) in v.iter_mut().zip(raw.chunks_exact(4)) {
                *x = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            *cube = CubeState::from_values(v).map_err(|(field, value)| FileError::OutOfRange {
                frame: fi,
                cube: ci,
                field,
                value,
            })?;
        }
        frames.push(frame);
    }
    Ok(frames)
}

/// Appends `frames` in the challenge layout.
pub fn write_frames(frames: &[Frame], out: &mut Vec<u8>) {
    out.reserve(frames.len() * FRAME_BYTES);
    for f in frames {
        for c in f.cubes.iter() {
            for v in c.to_values() {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
}

/// Deterministic physics generator of scenario frames.
///
/// The first [`BASELINE_DISTANCE`] frames are the initial state (the cubes at rest in their
/// grid, the player cube beside it); then the player drives into the grid, pushing, jumping
/// and pausing. Same seed, same frames, bit for bit, on any machine: the simulation uses only
/// IEEE-exact `f64` operations in a fixed order. See the source of `physics.rs` for the model.
#[derive(Debug, Clone)]
pub struct Generator {
    world: physics::World,
    produced: usize,
    initial: Frame,
}

impl Generator {
    /// A generator for `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self::with_scene(seed, Scene::Spec)
    }

    /// A generator for `seed` playing `scene`.
    #[must_use]
    pub fn with_scene(seed: u64, scene: Scene) -> Self {
        let world = physics::World::new(seed, scene);
        let initial = world.frame();
        Generator {
            world,
            produced: 0,
            initial,
        }
    }

    /// The next frame.
    pub fn next_frame(&mut self) -> Frame {
        self.produced += 1;
        if self.produced <= BASELINE_DISTANCE {
            return self.initial.clone();
        }
        self.world.step_frame();
        self.world.frame()
    }
}

/// `frames` frames of the generator for `seed`.
#[must_use]
pub fn generate(frames: usize, seed: u64) -> Vec<Frame> {
    generate_scene(frames, seed, Scene::Spec)
}

/// `frames` frames of `scene` from `seed` (see [`Generator::with_scene`]).
#[must_use]
pub fn generate_scene(frames: usize, seed: u64, scene: Scene) -> Vec<Frame> {
    let mut g = Generator::with_scene(seed, scene);
    (0..frames).map(|_| g.next_frame()).collect()
}

/// What the generated player does (see `benches/RESULTS.md` for what each scene looks like
/// next to a real capture).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Scene {
    /// The scenario as specified: the player cube drives towards random points over the grid,
    /// pauses, and jumps now and then, pushing the cubes it meets (and those push others).
    #[default]
    Spec,
    /// The same player, plus a ground pound at the end of every jump (cubes within 7 m thrown
    /// outwards and up) and, about every 6 s, a 2–3 s pull that gathers the cubes within 8 m
    /// into a ring hovering around the player: many cubes move at once, tumbling and colliding,
    /// much more than in the specified scene.
    Stress,
}

/// What a packet is coded against: the baseline and what both peers derived from it.
///
/// `base` is the baseline (frame `i − 6` in the scenario). `prev` is the frame the baseline
/// itself was coded against (frame `i − 12`), which the receiver necessarily held when it
/// decoded the baseline, and `state` the entropy models both sides held after coding the
/// baseline's packet. Only [`entropy`] uses them; `None` means no motion history (prediction
/// assumes rest) and fresh models.
#[derive(Debug, Clone, Copy)]
pub struct Baselines<'a> {
    /// The baseline.
    pub base: &'a Frame,
    /// The baseline's own baseline, if known.
    pub prev: Option<&'a Frame>,
    /// The entropy model state saved after the baseline's packet, if kept.
    pub state: Option<&'a entropy::EntropyState>,
}

/// Errors from the encoders: the target frame holds a value the wire format cannot carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A changed cube has a field out of range.
    #[error("cube {cube}: {field} out of range")]
    OutOfRange {
        /// Cube index.
        cube: usize,
        /// The field.
        field: CubeField,
    },
}

/// Errors from the decoders. A packet that fails leaves the output frame unspecified (the
/// caller keeps its previous state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Bit-packed data is truncated, has trailing bytes or a malformed field.
    #[error("malformed packed packet: {0}")]
    Bits(#[from] statewire_core::bits::BitError),
    /// Range-coded data is truncated, has trailing bytes or is corrupt.
    #[error("malformed entropy-coded packet: {0}")]
    Range(#[from] statewire_core::codec::range::RangeError),
    /// The changed-cube list is malformed (indices out of order or past the last cube).
    #[error("bad cube index")]
    BadIndex,
    /// The length of an entropy-coded packet's raw-bit stream is missing or larger than the
    /// packet.
    #[error("bad stream length in entropy-coded packet")]
    Framing,
    /// A decoded value is outside its field's range.
    #[error("cube {cube}: decoded {field} out of range")]
    OutOfRange {
        /// Cube index.
        cube: usize,
        /// The field.
        field: CubeField,
    },
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// (prev, base, target) frames where each cube is, at random, unchanged, moved a little,
    /// moving steadily, or random. Built from a seed (a strategy over 3 × 901 cubes is slow).
    pub(crate) fn frames() -> impl Strategy<Value = (Frame, Frame, Frame)> {
        (any::<u64>(), 0u32..=100).prop_map(|(seed, changed_pct)| {
            let mut state = seed;
            let mut next = move || {
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^ (z >> 31)
            };
            let random = |next: &mut dyn FnMut() -> u64| CubeState {
                largest: (next() % 4) as u8,
                a: (next() % 512) as u16,
                b: (next() % 512) as u16,
                c: (next() % 512) as u16,
                x: (next() % 32767) as i32 - XY_LIMIT,
                y: (next() % 32767) as i32 - XY_LIMIT,
                z: (next() % 8192) as i32,
                interacting: next() % 2 == 0,
            };
            let (mut p, mut b, mut t) = (Frame::default(), Frame::default(), Frame::default());
            for k in 0..NUM_CUBES {
                let c0 = random(&mut next);
                let d = (next() % 81) as i32 - 40;
                let moved = |c: CubeState, d: i32| CubeState {
                    x: (c.x + d).clamp(-XY_LIMIT, XY_LIMIT),
                    y: (c.y - 2 * d).clamp(-XY_LIMIT, XY_LIMIT),
                    z: (c.z + d / 3).clamp(0, Z_LIMIT),
                    a: (i32::from(c.a) + d / 4).clamp(0, 511) as u16,
                    ..c
                };
                let kind = if (next() % 100) as u32 >= changed_pct {
                    0
                } else {
                    1 + next() % 4
                };
                let (pc, bc, tc) = match kind {
                    0 => (c0, c0, c0),
                    1 => (c0, c0, moved(c0, d)),
                    2 => (c0, moved(c0, d), moved(moved(c0, d), d)),
                    3 => (c0, random(&mut next), random(&mut next)),
                    _ => (c0, c0, random(&mut next)),
                };
                p.cubes_mut()[k] = pc;
                b.cubes_mut()[k] = bc;
                t.cubes_mut()[k] = tc;
            }
            (p, b, t)
        })
    }

    #[test]
    fn file_round_trip_and_errors() {
        let frames = generate(8, 3);
        let mut bytes = Vec::new();
        write_frames(&frames, &mut bytes);
        assert_eq!(bytes.len(), 8 * FRAME_BYTES);
        assert_eq!(read_frames(&bytes).unwrap(), frames);
        assert_eq!(
            read_frames(&bytes[..bytes.len() - 4]),
            Err(FileError::BadLength {
                len: bytes.len() - 4
            })
        );
        // Frame 2, cube 5, z (value 6) = -1.
        let off = 2 * FRAME_BYTES + (5 * VALUES_PER_CUBE + 6) * 4;
        bytes[off..off + 4].copy_from_slice(&(-1i32).to_le_bytes());
        assert_eq!(
            read_frames(&bytes),
            Err(FileError::OutOfRange {
                frame: 2,
                cube: 5,
                field: CubeField::Z,
                value: -1
            })
        );
        let off = (3 * VALUES_PER_CUBE + 7) * 4;
        bytes[off..off + 4].copy_from_slice(&2i32.to_le_bytes());
        assert!(matches!(
            read_frames(&bytes),
            Err(FileError::OutOfRange {
                frame: 0,
                cube: 3,
                field: CubeField::Interacting,
                ..
            })
        ));
    }

    #[test]
    fn diff_bitmap_sees_every_field_of_every_position() {
        let base = generate(1, 4).pop().unwrap();
        let edits: [fn(&mut CubeState); 8] = [
            |c| c.x ^= 1,
            |c| c.y ^= 1,
            |c| c.z ^= 1,
            |c| c.a ^= 1,
            |c| c.b ^= 1,
            |c| c.c ^= 1,
            |c| c.largest ^= 1,
            |c| c.interacting = !c.interacting,
        ];
        for i in [0, 1, 3, 4, 63, 64, 899, 900] {
            for edit in edits {
                let mut t = base.clone();
                edit(&mut t.cubes_mut()[i]);
                let map = diff_bitmap(base.cubes(), t.cubes());
                let mut want = [0u64; WORDS];
                want[i / 64] = 1 << (i % 64);
                assert_eq!(map, want, "cube {i}");
            }
        }
        assert_eq!(diff_bitmap(base.cubes(), base.cubes()), [0; WORDS]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// The grouped word comparison finds exactly the cubes that differ.
        #[test]
        fn diff_bitmap_is_cube_inequality((p, b, t) in frames()) {
            for (x, y) in [(&p, &b), (&b, &t), (&t, &t)] {
                let map = diff_bitmap(x.cubes(), y.cubes());
                for i in 0..NUM_CUBES {
                    prop_assert_eq!((map[i / 64] >> (i % 64)) & 1 == 1, x.cubes()[i] != y.cubes()[i], "cube {}", i);
                }
                // No bits past the last cube.
                prop_assert_eq!(map[WORDS - 1] >> (NUM_CUBES % 64), 0);
            }
        }
    }

    #[test]
    fn generator_is_deterministic_and_in_range() {
        let a = generate(40, 9);
        let b = generate(40, 9);
        assert_eq!(a, b);
        for f in &a[1..BASELINE_DISTANCE] {
            assert_eq!(f, &a[0]);
        }
        for f in &a {
            assert_eq!(f.out_of_range(), None);
        }
        assert_ne!(a[39], a[0], "the player moves");
        assert_ne!(generate(40, 10)[39], a[39]);
        // The stress scene is its own deterministic sequence.
        let s = generate_scene(40, 9, Scene::Stress);
        assert_eq!(s, generate_scene(40, 9, Scene::Stress));
        assert_eq!(s[0], a[0], "same initial state");
        assert_ne!(s[39], a[39]);
    }
}
