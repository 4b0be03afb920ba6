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
        let text = String::from_utf8_lossy(&refused.stdout).into_owned()
            + &String::from_utf8_lossy(&refused.stderr);
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

/// A `statewire serve` child on 127.0.0.1 whose stdout lines arrive on a channel (so that
/// every wait for one is bounded), and its address.
struct Served {
    child: std::process::Child,
    addr: String,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Served {
    fn start(args: &[&str]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_statewire"))
            .arg("serve")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start server");
        let lines = lines_of(child.stdout.take().expect("stdout"));
        let mut served = Served {
            child,
            addr: String::new(),
            lines,
        };
        let first = served.wait_for("listening on ", Duration::from_secs(10));
        served.addr = first["listening on ".len()..].to_string();
        served
    }

    fn wait_for(&mut self, what: &str, limit: Duration) -> String {
        wait_line(&self.lines, what, limit)
    }
}

/// The lines of a child's output, on a channel (so that every wait for one is bounded).
fn lines_of(out: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// The first line from `lines` containing `what` within `limit`; panics (naming the lines
/// seen) if none.
fn wait_line(lines: &std::sync::mpsc::Receiver<String>, what: &str, limit: Duration) -> String {
    let start = Instant::now();
    let mut seen = Vec::new();
    while let Some(left) = limit.checked_sub(start.elapsed()) {
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(what) => return line,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!("no line with {what:?} within {limit:?}; saw {seen:?}");
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends SIGINT (what Ctrl-C sends) to process `pid`.
fn interrupt(pid: u32) {
    let ok = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(ok.success(), "kill -INT {pid} failed");
}

/// Waits up to `limit` for `child` to exit; its exit code.
fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("still running after {limit:?}");
}

/// A long-running UDP server and a `join` to it whose stdout lines arrive on the receiver.
fn long_server_and_join() -> (
    Served,
    std::process::Child,
    std::sync::mpsc::Receiver<String>,
) {
    let bin = env!("CARGO_BIN_EXE_statewire");
    let server = Served::start(&[
        "--udp",
        "127.0.0.1:0",
        "--ticks",
        "3000",
        "--entities",
        "50",
    ]);
    let mut join = Command::new(bin)
        .args(["join", &server.addr, "--timeout-secs", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start join");
    let said = lines_of(join.stdout.take().expect("stdout"));
    (server, join, said)
}

#[test]
fn ctrl_c_on_join_and_serve_says_goodbye() {
    let (mut server, mut join, said) = long_server_and_join();
    let joined = server.wait_for(" joined", Duration::from_secs(10));
    let id = joined
        .split("client ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .expect("a client id")
        .to_string();
    // The client knows it is connected (and says so in words), then gets Ctrl-C.
    wait_line(
        &said,
        &format!("connected as client {id}"),
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(300));
    let pressed = Instant::now();
    interrupt(join.id());
    assert_eq!(wait_exit(&mut join, Duration::from_secs(5)), Some(130));
    wait_line(
        &said,
        "interrupted: told the server this client leaves",
        Duration::from_secs(5),
    );
    // The server hears it at once, not after its 10 s idle timeout.
    server.wait_for(&format!("client {id} left"), Duration::from_secs(3));
    assert!(pressed.elapsed() < Duration::from_secs(5));
    // Ctrl-C on the server: it shuts down (telling its clients) and exits 130.
    interrupt(server.child.id());
    server.wait_for("interrupted at tick", Duration::from_secs(5));
    assert_eq!(
        wait_exit(&mut server.child, Duration::from_secs(5)),
        Some(130)
    );
}

#[test]
fn serve_ctrl_c_disconnects_its_clients_at_once() {
    let (mut server, mut join, said) = long_server_and_join();
    wait_line(&said, "connected as client", Duration::from_secs(10));
    interrupt(server.child.id());
    server.wait_for(
        "told 1 client the server is shutting down",
        Duration::from_secs(5),
    );
    // The client hears it at once, not after its idle timeout.
    wait_line(
        &said,
        "disconnected: server shut down",
        Duration::from_secs(3),
    );
    assert_eq!(wait_exit(&mut join, Duration::from_secs(5)), Some(1));
}

#[test]
fn join_with_another_codec_is_told_which_flag_differs() {
    let server = Served::start(&["--udp", "127.0.0.1:0", "--ticks", "600", "--entities", "50"]);
    let out = Command::new(env!("CARGO_BIN_EXE_statewire"))
        .args([
            "join",
            &server.addr,
            "--codec",
            "entropy",
            "--timeout-secs",
            "10",
        ])
        .output()
        .expect("run join");
    let said = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}{err}");
    assert!(
        err.contains("the server runs a different game protocol: a different codec (--codec"),
        "{err}"
    );
    assert!(!said.contains("applied state"), "{said}");
    assert!(
        !err.contains("ProtocolMismatch") && !said.contains("Some("),
        "{said}{err}"
    );
}

#[test]
fn udp_join_to_a_tcp_server_suggests_tcp() {
    let server = Served::start(&["--tcp", "127.0.0.1:0", "--ticks", "600", "--entities", "50"]);
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_statewire"))
        .args(["join", &server.addr, "--timeout-secs", "15"])
        .output()
        .expect("run join");
    assert!(start.elapsed() < Duration::from_secs(15));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("within 5 s (the connect timeout)"), "{err}");
    assert!(
        err.contains("no reply over UDP: if the server runs with --tcp, add --tcp"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("applied state"));
}
