//! `statewire serve` and `statewire join` as separate processes on 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn serve_and_join(transport: &str) {
    let bin = env!("CARGO_BIN_EXE_statewire");
    let mut server = Command::new(bin)
        .args(["serve", &format!("--{transport}"), "127.0.0.1:0"])
        .args(["--ticks", "60", "--quiet-ticks", "45", "--entities", "150"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start server");
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
