//! Every refused flag or argument exits with code 2 and a message naming the flag at fault
//! (and no seed: a bad flag is not a failed randomized run).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `statewire args…` and returns its exit code and stderr. Every case below is refused
/// before anything runs; one that is not is killed after 20 s and fails.
fn run(args: &[&str]) -> (Option<i32>, String) {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_statewire"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run statewire");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status.code(), err)
}

/// `args` is refused with exit code 2, and stderr says each of `says` and never "seed".
fn refused(args: &[&str], says: &[&str]) {
    let (code, err) = run(args);
    assert_eq!(code, Some(2), "{args:?}: {err}");
    for s in says {
        assert!(err.contains(s), "{args:?}: {err:?} does not say {s:?}");
    }
    assert!(!err.contains("seed"), "{args:?}: {err}");
}

#[test]
fn sim_ticks_zero_is_refused() {
    refused(&["sim", "--ticks", "0"], &["--ticks must be at least 1"]);
}

#[test]
fn sim_ticks_beyond_the_limit_are_refused() {
    refused(
        &["sim", "--quiet-ticks", "4000000000"],
        &["--quiet-ticks 4000000000 is more than 10000000"],
    );
}

#[test]
fn sim_unknown_profile_lists_the_known_ones() {
    refused(
        &["sim", "--profile", "bad"],
        &[
            "invalid value 'bad' for '--profile",
            "perfect",
            "very-poor",
            "hostile",
        ],
    );
}

#[test]
fn sim_zero_clients_names_clients() {
    refused(
        &["sim", "--clients", "0"],
        &["--clients must be at least 1"],
    );
}

#[test]
fn sim_fewer_entities_than_clients_names_entities() {
    refused(
        &["sim", "--clients", "4", "--entities", "3"],
        &["--entities 3 is fewer than --clients 4"],
    );
}

#[test]
fn sim_packet_budget_out_of_range() {
    refused(
        &["sim", "--max-packet", "10"],
        &["--max-packet 10 is out of range"],
    );
    refused(
        &["sim", "--budget", "5000"],
        &["--budget 5000 is out of range"],
    );
}

#[test]
fn sim_interest_radius_out_of_range() {
    refused(
        &["sim", "--interest-radius", "1e20"],
        &["--interest-radius 100000000000000000000 is more than 10000 m"],
    );
    refused(
        &["sim", "--interest-radius=-1"],
        &["--interest-radius -1 must be a finite number"],
    );
}

#[test]
fn sim_moving_more_than_entities() {
    refused(
        &["sim", "--moving", "5000"],
        &["--moving 5000 is more than --entities 1000"],
    );
}

#[test]
fn serve_without_an_address_names_both_flags() {
    refused(&["serve"], &["--udp ADDR or --tcp ADDR"]);
}

#[test]
fn serve_flags_out_of_range() {
    let udp = ["serve", "--udp", "127.0.0.1:0"];
    let with =
        |more: &[&'static str]| -> Vec<&'static str> { udp.iter().chain(more).copied().collect() };
    refused(
        &with(&["--max-clients", "0"]),
        &["--max-clients 0 is out of range"],
    );
    refused(
        &with(&["--max-packet", "20"]),
        &["--max-packet 20 is out of range"],
    );
    refused(
        &with(&["--entities", "100000"]),
        &["--entities 100000 is more than"],
    );
    refused(
        &with(&["--name", Box::leak("n".repeat(65).into_boxed_str())]),
        &["--name is 65 bytes long; a beacon carries at most 64"],
    );
    refused(
        &with(&["--ticks", "99999999"]),
        &["--ticks 99999999 is more than"],
    );
    refused(
        &with(&["--key-file", "/nonexistent/statewire.key"]),
        &["--key-file: cannot read the key file"],
    );
    refused(&with(&["--public-addr", "127.0.0.1:1"]), &["--key-file"]);
}

#[test]
fn bad_addresses_are_refused_and_host_names_accepted() {
    refused(
        &["join", "nowhere"],
        &["\"nowhere\" is not an address like 127.0.0.1:7777 or localhost:7777"],
    );
    refused(&["serve", "--udp", "127.0.0.1"], &["not an address"]);
    // `localhost:PORT` parses (and resolves to 127.0.0.1): the join gets as far as the
    // network and gives up after its timeout, exit code 1, not 2.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port();
    let addr = format!("localhost:{port}");
    let (code, err) = run(&["join", &addr, "--timeout-secs", "1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("could not join 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(
        err.contains("gave up after 1 second (--timeout-secs)"),
        "{err}"
    );
}

#[test]
fn join_and_lan_durations_out_of_range() {
    refused(
        &["join", "127.0.0.1:1", "--timeout-secs", "0"],
        &["'--timeout-secs <TIMEOUT_SECS>'", "1..=86400"],
    );
    refused(&["lan", "--secs", "0"], &["'--secs <SECS>'", "1..=3600"]);
}

#[test]
fn cubes_frames_out_of_range() {
    refused(
        &[
            "cubes",
            "generate",
            "--frames",
            "0",
            "--out",
            "/nonexistent/f.bin",
        ],
        &["'--frames <FRAMES>'", "at least 7 frames"],
    );
    refused(
        &["cubes", "run", "--generate", "--frames", "3"],
        &["at least 7 frames"],
    );
    refused(
        &["cubes", "run", "--generate", "--frames", "100000000000"],
        &["at most 216000 frames"],
    );
}
