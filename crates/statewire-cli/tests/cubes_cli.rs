//! `statewire cubes generate` and `statewire cubes run` as processes: both scenes, the file
//! round trip, the JSON report line, and each usage error (one sentence naming the flag, exit
//! code 2, before any work).

use std::process::Command;

fn statewire(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_statewire"))
        .args(args)
        .output()
        .expect("run statewire");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{args:?}: {text}");
    text
}

/// Runs `statewire` with `args`, asserts it exits with `code`, and returns its stderr, checked
/// to be plain sentences (no Debug output, no panic) and to leave stdout empty.
fn statewire_fails(args: &[&str], code: i32) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_statewire"))
        .args(args)
        .output()
        .expect("run statewire");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(out.stdout.is_empty(), "{args:?} printed on stdout");
    for debug in ["panicked", "{ ", "Os {", "Error {", "Some(", "Err("] {
        assert!(
            !err.contains(debug),
            "{args:?}: Debug output {debug:?} in {err}"
        );
    }
    err
}

/// A path in the temp dir for this test process; `name` keeps tests apart.
fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("statewire-cubes-{}-{name}", std::process::id()))
}

#[test]
fn run_without_a_source_names_file_and_generate() {
    let err = statewire_fails(&["cubes", "run"], 2);
    assert!(
        err.starts_with("statewire: cubes run needs frames"),
        "{err}"
    );
    assert!(
        err.contains("--generate") && err.contains("--file FILE"),
        "{err}"
    );
}

#[test]
fn generate_refuses_fewer_frames_than_one_packet_up_front() {
    let out = temp_path("three.bin");
    let out_s = out.to_str().expect("utf-8 path");
    for frames in ["3", "6", "0"] {
        let err = statewire_fails(
            &["cubes", "generate", "--frames", frames, "--out", out_s],
            2,
        );
        assert!(
            err.contains(&format!("invalid value '{frames}' for '--frames")),
            "{err}"
        );
        assert!(err.contains("at least 7 frames"), "{err}");
        assert!(err.contains("frame i against frame i - 6"), "{err}");
        assert!(!out.exists(), "nothing is written");
    }
    // Seven frames make one packet: accepted.
    let said = statewire(&["cubes", "generate", "--frames", "7", "--out", out_s]);
    assert!(said.contains("wrote 7 frames (201824 bytes"), "{said}");
    let _ = std::fs::remove_file(&out);
}

#[test]
fn run_generate_refuses_too_few_frames() {
    let err = statewire_fails(&["cubes", "run", "--generate", "--frames", "3"], 2);
    assert!(
        err.contains("'--frames") && err.contains("at least 7 frames"),
        "{err}"
    );
}

#[test]
fn frames_above_an_hour_are_refused() {
    let err = statewire_fails(
        &[
            "cubes",
            "generate",
            "--frames",
            "216001",
            "--out",
            "unused.bin",
        ],
        2,
    );
    assert!(
        err.contains("'--frames") && err.contains("at most 216000 frames"),
        "{err}"
    );
    // Far past any memory: refused the same way, not a capacity-overflow panic.
    let err = statewire_fails(
        &[
            "cubes",
            "run",
            "--generate",
            "--frames",
            "18446744073709551615",
        ],
        2,
    );
    assert!(err.contains("at most 216000 frames"), "{err}");
}

#[test]
fn frames_that_are_not_a_number_are_refused() {
    let err = statewire_fails(&["cubes", "run", "--generate", "--frames", "lots"], 2);
    assert!(
        err.contains("'--frames") && err.contains("not a whole number"),
        "{err}"
    );
}

#[test]
fn generator_flags_without_generate_are_refused() {
    let err = statewire_fails(&["cubes", "run", "--frames", "100"], 2);
    assert!(
        err.starts_with("statewire: --frames sets up generated frames, but --generate is missing"),
        "{err}"
    );
}

#[test]
fn generator_flags_with_a_file_are_refused() {
    for flag in [["--seed", "3"], ["--scene", "stress"], ["--frames", "100"]] {
        let err = statewire_fails(&["cubes", "run", "--file", "any.bin", flag[0], flag[1]], 2);
        assert!(
            err.starts_with(&format!(
                "statewire: {} applies to generated frames only",
                flag[0]
            )),
            "{err}"
        );
    }
}

#[test]
fn file_and_generate_together_are_refused() {
    let err = statewire_fails(&["cubes", "run", "--file", "any.bin", "--generate"], 2);
    assert!(
        err.contains("'--file <FILE>' cannot be used with '--generate'"),
        "{err}"
    );
}

#[test]
fn fresh_models_with_the_packed_codec_is_refused() {
    let err = statewire_fails(
        &[
            "cubes",
            "run",
            "--generate",
            "--mode",
            "packed",
            "--fresh-models",
        ],
        2,
    );
    assert!(
        err.starts_with("statewire: --fresh-models applies to the entropy codec only"),
        "{err}"
    );
}

/// Not a usage error but the data's: a file too short for one packet exits with 1, naming it.
#[test]
fn a_file_too_short_for_a_packet_is_an_error() {
    let path = temp_path("short.bin");
    let path_s = path.to_str().expect("utf-8 path");
    statewire(&["cubes", "generate", "--frames", "7", "--out", path_s]);
    let bytes = std::fs::read(&path).expect("read frames");
    std::fs::write(&path, &bytes[..3 * 901 * 32]).expect("write three frames");
    let err = statewire_fails(&["cubes", "run", "--file", path_s], 1);
    assert!(
        err.contains("a run needs at least 7 frames") && err.contains("the file holds 3"),
        "{err}"
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn generate_both_scenes_and_run_them_from_files() {
    let dir = std::env::temp_dir().join(format!("statewire-cubes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut files = Vec::new();
    for scene in ["spec", "stress"] {
        let path = dir.join(format!("{scene}.bin"));
        let path_s = path.to_str().expect("utf-8 path");
        let said = statewire(&[
            "cubes", "generate", "--frames", "40", "--seed", "3", "--scene", scene, "--out", path_s,
        ]);
        assert!(said.contains(&format!("scene {scene}")), "{said}");
        for mode in ["packed", "entropy"] {
            let report = statewire(&["cubes", "run", "--file", path_s, "--mode", mode, "--json"]);
            let last = report.lines().last().expect("a JSON line");
            assert!(last.contains("\"lossless\":true"), "{scene} {mode}: {last}");
            assert!(last.contains("\"packets\":34"), "{scene} {mode}: {last}");
            assert!(last.contains(&format!("\"mode\":\"{mode}\"")), "{last}");
        }
        files.push(std::fs::read(&path).expect("read frames"));
    }
    // Same size (40 frames of 901 cubes × 8 i32), different play.
    assert_eq!(files[0].len(), 40 * 901 * 32);
    assert_eq!(files[0].len(), files[1].len());
    assert_ne!(files[0], files[1]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An output path that cannot be created fails at once (exit 1), before any frame is made.
#[test]
fn an_unwritable_output_fails_before_generating() {
    let dir = temp_path("no-such-dir");
    let out = dir.join("frames.bin");
    let err = statewire_fails(
        &[
            "cubes",
            "generate",
            "--out",
            out.to_str().expect("utf-8 path"),
        ],
        1,
    );
    assert!(err.starts_with("statewire: cannot write"), "{err}");
}
