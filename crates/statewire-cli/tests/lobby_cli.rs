//! `statewire lobby`, `relay`, `games`, `serve --lobby` and `join --code` as separate processes
//! on 127.0.0.1: games registered at a lobby, listed, and joined by code, direct and through
//! the relay, with one lobby node or two sharing a Redis server.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_statewire")
}

/// A child process whose stdout lines arrive on a channel (so that every wait for one is
/// bounded); killed when dropped.
struct Proc {
    child: Child,
    lines: Receiver<String>,
    /// Every line read so far.
    seen: Vec<String>,
}

impl Proc {
    fn start(args: &[&str]) -> Proc {
        let mut child = Command::new(bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start statewire {args:?}: {e}"));
        let lines = lines_of(child.stdout.take().expect("stdout"));
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Starts a `lobby` or `relay` and waits for its "... listening on ADDR" line.
    fn listening(args: &[&str]) -> (Proc, String) {
        let mut p = Proc::start(args);
        let line = p.wait_for("listening on ", Duration::from_secs(10));
        let addr = line.rsplit(' ').next().expect("an address").to_string();
        (p, addr)
    }

    /// The first line containing `what`, said already or within `limit`; panics (naming the
    /// lines seen and what the process said on stderr) if none.
    fn wait_for(&mut self, what: &str, limit: Duration) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(what)) {
            return line.clone();
        }
        let start = Instant::now();
        while let Some(left) = limit.checked_sub(start.elapsed()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(what) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        panic!(
            "no line with {what:?} within {limit:?}; saw {:?}; stderr {err:?}",
            self.seen
        );
    }

    /// Waits up to `limit` for the process to exit; its exit code.
    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("still running after {limit:?}; saw {:?}", self.seen);
    }

    /// Sends SIGINT (what Ctrl-C sends).
    fn interrupt(&self) {
        let ok = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -INT failed");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines of a child's output, on a channel.
fn lines_of(out: impl Read + Send + 'static) -> Receiver<String> {
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

/// Runs `statewire args` to completion, killing it after `limit`.
fn run(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run statewire");
    let out = lines_of(child.stdout.take().expect("stdout"));
    let err = lines_of(child.stderr.take().expect("stderr"));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("statewire {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let collect = |r: Receiver<String>| -> Vec<u8> {
        // The reader threads end at EOF, which follows the exit.
        let mut v = Vec::new();
        while let Ok(line) = r.recv_timeout(Duration::from_secs(2)) {
            v.extend_from_slice(line.as_bytes());
            v.push(b'\n');
        }
        v
    };
    Output {
        status,
        stdout: collect(out),
        stderr: collect(err),
    }
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// A fresh relay key file from `statewire keygen`.
fn relay_key(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("statewire-lobby-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = dir.join("relay.key");
    let made = Command::new(bin())
        .args(["keygen", "--force", "--out"])
        .arg(&key)
        .output()
        .expect("keygen");
    assert!(made.status.success(), "keygen failed");
    key
}

/// Starts `serve --lobby` with `args` and waits for its join code and link.
fn serve_at(lobby: &str, args: &[&str]) -> (Proc, String) {
    let mut all = vec!["serve", "--udp", "127.0.0.1:0", "--lobby", lobby];
    all.extend_from_slice(args);
    let mut serve = Proc::start(&all);
    serve.wait_for("listening on ", Duration::from_secs(10));
    let line = serve.wait_for("join code: ", Duration::from_secs(10));
    let code = line["join code: ".len()..].trim().to_string();
    let link = serve.wait_for("join link: ", Duration::from_secs(5));
    assert_eq!(
        link,
        format!("join link: statewire://{lobby}/{code}"),
        "the link names the lobby and the code"
    );
    (serve, code)
}

/// The number in "first snapshot after N ms (path)", and the path.
fn first_snapshot(line: &str) -> (u64, String) {
    let rest = line
        .split("first snapshot after ")
        .nth(1)
        .unwrap_or_else(|| panic!("not a first-snapshot line: {line:?}"));
    let (ms, path) = rest.split_once(" ms (").expect("N ms (path)");
    (
        ms.parse().expect("a number of ms"),
        path.trim_end_matches(')').to_string(),
    )
}

/// `games --lobby` until its output contains every one of `wanted` (the roster reaches the
/// lobby with the host's next heartbeat), within `limit`.
fn games_until(lobby: &str, wanted: &[&str], limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let out = run(&["games", "--lobby", lobby], Duration::from_secs(10));
        let said = text(&out);
        assert!(out.status.success(), "games failed: {said}");
        if wanted.iter().all(|w| said.contains(w)) {
            return said;
        }
        assert!(
            start.elapsed() < limit,
            "games never listed {wanted:?}: {said}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_lobby_game_is_joined_by_code_direct_and_through_the_relay() {
    let key = relay_key("matrix");
    let key = key.to_str().expect("utf-8 path");
    let (relay, relay_addr) =
        Proc::listening(&["relay", "--bind", "127.0.0.1:0", "--key-file", key]);
    let (mut lobby, lobby_addr) = Proc::listening(&[
        "lobby",
        "--bind",
        "127.0.0.1:0",
        "--relay",
        &relay_addr,
        "--relay-key",
        key,
    ]);
    // Quiet ticks give acknowledgements time to settle even when the machine is busy (the
    // tests of this file run at once, with a dozen processes).
    let (mut serve, code) = serve_at(
        &lobby_addr,
        &[
            "--name",
            "cli lobby test",
            "--public",
            "--ticks",
            "240",
            "--quiet-ticks",
            "90",
            "--entities",
            "50",
        ],
    );
    let join = |seed: &str, relayed: bool| {
        let mut args = vec![
            "join",
            "--lobby",
            &lobby_addr,
            "--code",
            &code,
            "--seed",
            seed,
            "--timeout-secs",
            "30",
        ];
        if relayed {
            args.push("--force-relay");
        }
        Proc::start(&args)
    };
    let mut direct = join("2", false);
    let mut relayed = join("3", true);
    let mut times = Vec::new();
    for (p, path) in [(&mut direct, "direct"), (&mut relayed, "relayed")] {
        let joined = p.wait_for("joined game ", Duration::from_secs(10));
        assert!(joined.starts_with(&format!("joined game {code} as client ")));
        p.wait_for(&format!("path: {path}"), Duration::from_secs(10));
        let line = p.wait_for("first snapshot after ", Duration::from_secs(10));
        let (ms, seen) = first_snapshot(&line);
        assert_eq!(seen, path, "{line}");
        assert!(ms < 5000, "{line}");
        times.push((path, ms));
    }
    // The host sees one player direct and the other relayed (once its punches to the
    // relay-only player time out).
    serve.wait_for("path direct", Duration::from_secs(10));
    serve.wait_for("path relayed", Duration::from_secs(10));
    serve.wait_for("2 clients connected", Duration::from_secs(10));
    let listed = games_until(
        &lobby_addr,
        &[&code, "cli lobby test", "2/64"],
        Duration::from_secs(8),
    );
    assert!(listed.starts_with("CODE"), "{listed}");
    // Both players play to the end and agree with the server.
    for p in [&mut direct, &mut relayed] {
        p.wait_for("converged: true", Duration::from_secs(20));
        assert_eq!(p.wait_exit(Duration::from_secs(5)), Some(0));
    }
    serve.wait_for("told the lobby the game has ended", Duration::from_secs(10));
    assert_eq!(serve.wait_exit(Duration::from_secs(10)), Some(0));
    // Its code now says so.
    let late = run(
        &["join", "--lobby", &lobby_addr, "--code", &code],
        Duration::from_secs(10),
    );
    assert_eq!(late.status.code(), Some(1), "{}", text(&late));
    assert!(
        text(&late).contains("this game has ended"),
        "{}",
        text(&late)
    );
    lobby.wait_for("2 joins", Duration::from_secs(5));
    // The relay carried the relayed player's game and reports it when stopped.
    let mut relay = relay;
    relay.interrupt();
    let stats = relay.wait_for("relay stopped; ", Duration::from_secs(5));
    assert_eq!(relay.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(!stats.contains("forwarded 0 packets"), "{stats}");
    assert!(stats.contains("per forwarded packet"), "{stats}");
    for (path, ms) in times {
        println!("join -> first snapshot ({path}): {ms} ms");
    }
    let _ = std::io::stdout().flush();
}

#[test]
fn games_lists_public_games_only_with_names_and_players() {
    let (_lobby, lobby_addr) = Proc::listening(&["lobby", "--bind", "127.0.0.1:0"]);
    let long = ["--ticks", "900", "--entities", "20"];
    let public_args: Vec<&str> = ["--name", "public one", "--public", "--max-clients", "8"]
        .into_iter()
        .chain(long)
        .collect();
    let private_args: Vec<&str> = ["--name", "private one"].into_iter().chain(long).collect();
    let (_public, code) = serve_at(&lobby_addr, &public_args);
    let (_private, private_code) = serve_at(&lobby_addr, &private_args);
    let listed = games_until(
        &lobby_addr,
        &[&code, "public one", "0/8"],
        Duration::from_secs(5),
    );
    assert!(!listed.contains("private one"), "{listed}");
    assert!(!listed.contains(&private_code), "{listed}");
    assert!(listed.contains("1 game"), "{listed}");
    let none = run(
        &["games", "--lobby", &lobby_addr, "--name", "no such game"],
        Duration::from_secs(10),
    );
    assert!(none.status.success(), "{}", text(&none));
    assert_eq!(text(&none).trim(), "no public games");
    let filtered = run(
        &["games", "--lobby", &lobby_addr, "--name", "public"],
        Duration::from_secs(10),
    );
    assert!(text(&filtered).contains(&code), "{}", text(&filtered));
    // This lobby has no relay: a forced relay cannot work, and says why.
    let forced = run(
        &[
            "join",
            "--lobby",
            &lobby_addr,
            "--code",
            &code,
            "--force-relay",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(forced.status.code(), Some(1), "{}", text(&forced));
    assert!(
        text(&forced).contains("offers no relay"),
        "{}",
        text(&forced)
    );
}

/// Whether a Redis server answers PING on 127.0.0.1:6379.
fn redis_answers() -> bool {
    let addr = "127.0.0.1:6379".parse().expect("address");
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

#[test]
fn two_lobby_nodes_on_one_redis_share_their_games() {
    if !redis_answers() {
        assert!(
            std::env::var("STATEWIRE_REQUIRE_REDIS").as_deref() != Ok("1"),
            "STATEWIRE_REQUIRE_REDIS=1 but no redis-server answers on 127.0.0.1:6379 (start \
             one: redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no)"
        );
        println!("skipping: no redis-server answers on 127.0.0.1:6379");
        return;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    let namespace = format!("cli-test-{}-{nanos}", std::process::id());
    let node = || {
        Proc::listening(&[
            "lobby",
            "--bind",
            "127.0.0.1:0",
            "--redis",
            "redis://127.0.0.1:6379/",
            "--namespace",
            &namespace,
        ])
    };
    let (_a, a_addr) = node();
    let (_b, b_addr) = node();
    assert_ne!(a_addr, b_addr);
    let (mut serve, code) = serve_at(
        &a_addr,
        &[
            "--name",
            "shared game",
            "--public",
            "--ticks",
            "150",
            "--quiet-ticks",
            "90",
            "--entities",
            "30",
        ],
    );
    games_until(&b_addr, &[&code, "shared game"], Duration::from_secs(5));
    let mut join = Proc::start(&[
        "join",
        "--link",
        &format!("statewire://{b_addr}/{code}"),
        "--timeout-secs",
        "30",
    ]);
    join.wait_for(&format!("joined game {code}"), Duration::from_secs(10));
    let line = join.wait_for("first snapshot after ", Duration::from_secs(10));
    let (ms, path) = first_snapshot(&line);
    println!("join through a second Redis node -> first snapshot ({path}): {ms} ms");
    assert_eq!(path, "direct", "{line}");
    serve.wait_for("path direct", Duration::from_secs(5));
    join.wait_for("converged: true", Duration::from_secs(20));
    assert_eq!(serve.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn bad_codes_links_and_flags_are_refused_in_words() {
    let (_lobby, lobby_addr) = Proc::listening(&["lobby", "--bind", "127.0.0.1:0"]);
    let quick = Duration::from_secs(10);
    let unknown = run(&["join", "--lobby", &lobby_addr, "--code", "222222"], quick);
    assert_eq!(unknown.status.code(), Some(1), "{}", text(&unknown));
    assert!(
        text(&unknown).contains("no game has this code"),
        "{}",
        text(&unknown)
    );
    let usage = |args: &[&str], wanted: &str| {
        let out = run(args, quick);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {said}");
        assert!(said.contains(wanted), "{args:?}: {said}");
        assert!(
            !said.contains("Some(") && !said.contains("Error {"),
            "{said}"
        );
    };
    usage(
        &["join", "--lobby", &lobby_addr, "--code", "0OIL11"],
        "'0' cannot be in a join code",
    );
    usage(
        &["join", "--lobby", &lobby_addr, "--code", "K7M2Q"],
        "has 5",
    );
    usage(
        &["join", "--link", "http://127.0.0.1:1/K7M2QX"],
        "statewire://HOST:PORT/CODE",
    );
    usage(&["join", "--code", "K7M2QX"], "--lobby ADDR");
    usage(
        &[
            "join",
            "127.0.0.1:1",
            "--lobby",
            &lobby_addr,
            "--code",
            "K7M2QX",
        ],
        "only one of them",
    );
    usage(&["join", "127.0.0.1:1", "--force-relay"], "--force-relay");
    usage(
        &["join", "--lobby", &lobby_addr, "--code", "K7M2QX", "--tcp"],
        "leave out --tcp",
    );
    usage(
        &["serve", "--tcp", "127.0.0.1:0", "--lobby", &lobby_addr],
        "--lobby works over UDP only",
    );
    usage(
        &[
            "serve",
            "--udp",
            "127.0.0.1:0",
            "--lobby",
            &lobby_addr,
            "--key-file",
            "k",
        ],
        "leave out --key-file",
    );
    usage(
        &["serve", "--udp", "127.0.0.1:0", "--lobby", "nowhere"],
        "--lobby: \"nowhere\" is not an address",
    );
    usage(&["serve", "--udp", "127.0.0.1:0", "--public"], "--lobby");
    usage(
        &["lobby", "--bind", "127.0.0.1:0", "--relay", "127.0.0.1:1"],
        "--relay-key",
    );
    usage(
        &[
            "lobby",
            "--bind",
            "127.0.0.1:0",
            "--redis",
            "127.0.0.1:6379",
        ],
        "Redis URL",
    );
    usage(
        &[
            "lobby",
            "--bind",
            "127.0.0.1:0",
            "--redis",
            "redis://127.0.0.1:6379/",
            "--namespace",
            "a b",
        ],
        "--namespace cannot hold ' '",
    );
    usage(
        &["lobby", "--bind", "127.0.0.1:0", "--max-games-per-ip", "0"],
        "--max-games-per-ip 0 is out of range",
    );
    usage(
        &[
            "relay",
            "--bind",
            "127.0.0.1:0",
            "--key-file",
            "/nonexistent/key",
        ],
        "cannot read the key file",
    );
    // A lobby that does not answer: a clear message after the retries, exit 1.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("a silent socket");
    let silent_addr = silent.local_addr().expect("address").to_string();
    std::thread::scope(|s| {
        let games = s.spawn(|| run(&["games", "--lobby", &silent_addr], Duration::from_secs(30)));
        let serve = s.spawn(|| {
            run(
                &["serve", "--udp", "127.0.0.1:0", "--lobby", &silent_addr],
                Duration::from_secs(30),
            )
        });
        let join = run(
            &["join", "--lobby", &silent_addr, "--code", "K7M2QX"],
            Duration::from_secs(30),
        );
        let serve = serve.join().expect("serve thread");
        assert!(
            text(&serve).contains("the game is not registered"),
            "{}",
            text(&serve)
        );
        for out in [join, games.join().expect("games thread"), serve] {
            assert_eq!(out.status.code(), Some(1), "{}", text(&out));
            assert!(
                text(&out).contains(&format!("the lobby at {silent_addr} does not answer")),
                "{}",
                text(&out)
            );
        }
    });
}
