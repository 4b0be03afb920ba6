//! The 901-cube decoders on arbitrary bytes: `packed::decode`, `EntropyCodec::decode` (with
//! fresh models and with models and a changed-cube record carried from a real earlier packet)
//! and `read_frames`.
//!
//! Input: one selector byte (which baseline of 48 generated stress-scene frames, and which
//! decoder), then the packet. A decoder may fail (it must not panic); when it succeeds every
//! decoded value is in range, and coding the decoded frame again against the same baselines
//! must give a packet that decodes to that frame exactly.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use statewire_cubes::entropy::{EntropyCodec, EntropyState};
use statewire_cubes::{
    BASELINE_DISTANCE, Baselines, Frame, Scene, generate_scene, packed, read_frames,
};

const FRAMES: usize = 48;
/// Frames generated before the window the fixture keeps (the stress scene is busy by then).
const SKIP: usize = 552;

struct Fixture {
    frames: Vec<Frame>,
    /// `states[i]`: the state after coding frame `i` (from frame 6 on).
    states: Vec<EntropyState>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let frames = generate_scene(SKIP + FRAMES, 1, Scene::Stress).split_off(SKIP);
        let mut states: Vec<EntropyState> = (0..FRAMES).map(|_| EntropyState::fresh()).collect();
        let mut codec = EntropyCodec::new();
        let mut out = Vec::new();
        for i in BASELINE_DISTANCE..FRAMES {
            let b = i - BASELINE_DISTANCE;
            let base = Baselines {
                base: &frames[b],
                prev: b.checked_sub(BASELINE_DISTANCE).map(|k| &frames[k]),
                state: (b >= BASELINE_DISTANCE).then(|| &states[b]),
            };
            out.clear();
            codec.encode(base, &frames[i], &mut out).expect("encode");
            let mut s = EntropyState::fresh();
            codec.save_state(&mut s);
            states[i] = s;
        }
        Fixture { frames, states }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, packet)) = data.split_first() else {
        return;
    };
    let f = fixture();
    // A baseline that was itself coded, so it has a predecessor and a saved state.
    let b = 2 * BASELINE_DISTANCE + usize::from(sel >> 2) % (FRAMES - 2 * BASELINE_DISTANCE);
    let mut out = Frame::default();
    match sel & 3 {
        0 => {
            if packed::decode(&f.frames[b], packet, &mut out).is_ok() {
                assert_eq!(out.out_of_range(), None);
                let mut again = Vec::new();
                packed::encode(&f.frames[b], &out, &mut again).expect("in-range frame encodes");
                let mut back = Frame::default();
                packed::decode(&f.frames[b], &again, &mut back).expect("own packet decodes");
                assert_eq!(back, out);
            }
        }
        1 | 2 => {
            let base = Baselines {
                base: &f.frames[b],
                prev: Some(&f.frames[b - BASELINE_DISTANCE]),
                state: (sel & 3 == 2).then(|| &f.states[b]),
            };
            let mut codec = EntropyCodec::new();
            if codec.decode(base, packet, &mut out).is_ok() {
                assert_eq!(out.out_of_range(), None);
                let mut again = Vec::new();
                codec
                    .encode(base, &out, &mut again)
                    .expect("in-range frame encodes");
                let mut back = Frame::default();
                EntropyCodec::new()
                    .decode(base, &again, &mut back)
                    .expect("own packet decodes");
                assert_eq!(back, out);
            }
        }
        _ => {
            if let Ok(frames) = read_frames(packet) {
                for fr in &frames {
                    assert_eq!(fr.out_of_range(), None);
                }
            }
        }
    }
});
