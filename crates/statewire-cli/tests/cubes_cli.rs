//! `statewire cubes generate` and `statewire cubes run` as processes: both scenes, the file
//! round trip, and the JSON report line.

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
