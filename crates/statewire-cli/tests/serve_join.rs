//! `statewire serve` and `statewire join` as separate processes on 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn serve_and_join(transport: &str) {
    serve_and_join_with(transport, false);
}

/// With `tokens`, the server requires connect tokens: a join without one is refused, and a
/// join with one from `statewire token` (same key file) gets in.
fn serve_and_join_with(transport: &str, tokens: bool) {
    let bin = env!("CARGO_BIN_EXE_statewire");
    let dir =
        std::env::temp_dir().join(format!("statewire-keys-{}-{transport}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = dir.join("backend.key");
    let mut server = Command::new(bin);
    server
        .args(["serve", &format!("--{transport}"), "127.0.0.1:0"])
        // Quiet ticks give acknowledgements time to settle even when the machine is busy
        // (tests run in parallel on two cores).
        .args(["--ticks", "60", "--quiet-ticks", "90", "--entities", "150"]);
    if tokens {
        let made = Command::new(bin)
            .args(["keygen", "--force", "--out"])
            .arg(&key)
            .output()
            .expect("keygen");
        assert!(made.status.success(), "keygen failed");
        server.arg("--key-file").arg(&key);
    }
    let mut server = server.stdout(Stdio::piped()).spawn().expect("start server");
    let stdout = server.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().expect("a line").expect("utf-8");
    let addr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_string();
    let mut join = Command::new(bin);
    join.args(["join", &addr, "--timeout-secs", "20"]);
    if transport == "tcp" {
        join.arg("--tcp");
    }
    if tokens {
        let mut bare = Command::new(bin);
        bare.args(["join", &addr, "--timeout-secs", "5"]);
        if transport == "tcp" {
            bare.arg("--tcp");
        }
        let refused = bare.output().expect("run join without a token");
        let text = String::from_utf8_lossy(&refused.stdout);
        assert!(
            !refused.status.success(),
            "{transport}: joined without a token: {text}"
        );
        assert!(
            text.contains("requires a connect token"),
            "{transport}: {text}"
        );
        let token = Command::new(bin)
            .args([
                "token",
                "--client-id",
                "42",
                "--server",
                &addr,
                "--key-file",
            ])
            .arg(&key)
            .output()
            .expect("token");
        assert!(token.status.success(), "token failed");
        let token = String::from_utf8_lossy(&token.stdout).trim().to_string();
        join.args(["--token", &token]);
    }
    let start = Instant::now();
    let out = join.output().expect("run join");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(start.elapsed() < Duration::from_secs(25));
    assert!(out.status.success(), "{transport}: join failed: {text}");
    assert!(text.contains("converged: true"), "{transport}: {text}");
    // The server's digest line names the same digest the client printed.
    let digest = text
        .lines()
        .find_map(|l| l.split("digest ").nth(1))
        .and_then(|r| r.split(',').next())
        .expect("client digest")
        .to_string();
    let mut server_digest = None;
    for line in lines.by_ref().take(100) {
        let line = line.expect("utf-8");
        if let Some(rest) = line.split("digest ").nth(1) {
            server_digest = Some(rest.trim().to_string());
            break;
        }
    }
    assert_eq!(
        server_digest.as_deref(),
        Some(digest.as_str()),
        "{transport}"
    );
    let status = server.wait().expect("server exit");
    assert!(status.success(), "{transport}: server failed");
}

#[test]
fn serve_and_join_over_udp() {
    serve_and_join("udp");
}

#[test]
fn serve_and_join_over_tcp() {
    serve_and_join("tcp");
}

#[test]
fn serve_with_tokens_admits_only_token_holders() {
    serve_and_join_with("udp", true);
}

#[test]
fn token_and_keygen_flags_are_validated() {
    let bin = env!("CARGO_BIN_EXE_statewire");
    let out = Command::new(bin)
        .args([
            "token",
            "--key-file",
            "/nonexistent/key",
            "--client-id",
            "1",
        ])
        .args(["--server", "127.0.0.1:1"])
        .output()
        .expect("token");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the key file"));
    let out = Command::new(bin)
        .args([
            "token",
            "--key-file",
            "k",
            "--client-id",
            "0",
            "--server",
            "127.0.0.1:1",
        ])
        .output()
        .expect("token");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 1"));
}

#[test]
fn lan_lists_an_announced_game() {
    let bin = env!("CARGO_BIN_EXE_statewire");
    // A free port for the listener (released just before `lan` binds it).
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port();
    let target = format!("127.0.0.1:{port}");
    let mut server = Command::new(bin)
        .args([
            "serve",
            "--udp",
            "127.0.0.1:0",
            "--announce",
            &target,
            "--name",
            "lan test",
        ])
        .args(["--ticks", "90", "--quiet-ticks", "0", "--entities", "50"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start server");
    let stdout = server.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().expect("a line").expect("utf-8");
    let addr = first
        .strip_prefix("listening on ")
        .expect("address line")
        .to_string();
    let out = Command::new(bin)
        .args(["lan", "--listen", &target, "--secs", "2"])
        .output()
        .expect("run lan");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let port_of = |a: &str| a.rsplit(':').next().map(str::to_string);
    assert!(text.contains("\"lan test\""), "{text}");
    assert!(
        text.contains(&format!(":{}", port_of(&addr).unwrap_or_default())),
        "{text} does not name {addr}"
    );
    for _ in lines.by_ref().take(100) {}
    let _ = server.wait();
}
