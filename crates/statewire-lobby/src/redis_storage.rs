//! [`RedisStorage`]: the lobby's state in a Redis server, so that several lobby nodes serve the
//! same games (feature `redis`).
//!
//! # Sharing one Redis between nodes
//!
//! Every node calls [`RedisStorage::connect`] with the same URL and the same namespace; nodes
//! with another namespace see none of these games (a namespace per deployment, or per test run,
//! keeps them apart on one server). A game registered through one node is then joined, listed
//! and heartbeated through any node, and client ids come from one counter per game. Keys, all
//! under `statewire:{namespace}:`:
//!
//! - `game:{CODE}`: a hash with `record` (the [`encode_record`] bytes) and `purge_at` (its
//!   `purge_at_ms`, 20 digits, zero-padded so that Lua compares it as a string),
//! - `games`: a sorted set of every stored code, scored by `purge_at_ms` (what `list` reads),
//! - `clients:{CODE}`: the game's client id counter (`INCR`),
//! - `notices:{CODE}`: the list of notices queued for the game's host.
//!
//! # What is atomic
//!
//! Each operation is one Lua script or one `MULTI` transaction, so it is atomic against every
//! other node: `create` (a script: refuses a code held by a record not yet purged at `now_ms`,
//! else clears the old game's counter and notices and stores the record and its index entry;
//! of two nodes creating one code, exactly one wins), `put`, `remove` and `take_notices`
//! (`MULTI`), `next_client_id` (`INCR` in a script) and `push_notice` (`RPUSH` and `LTRIM` in a
//! script). `list` is not a snapshot: it reads the index, then the records, and leaves out
//! games removed in between. Several keys are touched in one script, so this needs one Redis
//! server (or a primary with replicas), not Redis Cluster.
//!
//! # Time
//!
//! Expiry follows the `now_ms` the lobby passes, not Redis's clock: a record is never returned
//! once `now_ms` reaches its `purge_at_ms`, even if Redis still holds it. Each record also gets
//! a real time to live of `purge_at_ms - now_ms` (at least 1 ms) plus [`GC_GRACE_MS`],
//! refreshed by every `put`, so that Redis itself collects games nobody removes; the counter and
//! notices of a game expire with it. The grace keeps Redis from dropping a record before a
//! node whose clock is behind (or a test's virtual clock, which may step back) reaches its
//! `purge_at_ms`.
//!
//! # Failures
//!
//! Connecting, and each command, time out (1 s by default, see
//! [`RedisStorage::connect_with_timeout`]), so a dead Redis fails the lobby's request instead of
//! blocking it. After a failed connection (an I/O error or a timeout) the connection is dropped
//! and the next operation connects again.

use std::fmt;
use std::time::Duration;

use redis::{Client, Connection, RedisError, RedisResult};

use crate::code::JoinCode;
use crate::storage::{GameRecord, Storage, StorageError, decode_record, encode_record};

/// Most bytes in a namespace.
pub const MAX_NAMESPACE_LEN: usize = 64;

/// Added to every record's real time to live: 60 s, the clock skew between nodes (and the
/// steps back of a virtual clock) that Redis's own expiry tolerates.
pub const GC_GRACE_MS: u64 = 60 * 1000;

/// Time to live of a game's counter or notices when the game itself is not in Redis (an id or a
/// notice for an unknown code): one hour, so that such keys do not stay forever.
pub const ORPHAN_TTL_MS: u64 = 60 * 60 * 1000;

/// Stores `record` unless a record not yet purged holds the code.
/// KEYS: game, clients, notices, index. ARGV: now (20 digits), purge_at (20 digits), ttl_ms,
/// record bytes, code.
const CREATE_SCRIPT: &str = r"
local held = redis.call('HGET', KEYS[1], 'purge_at')
if held and held > ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'purge_at', ARGV[2], 'record', ARGV[4], 'rev', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[5])
return 1
";

/// Compare and set of a game record. KEYS: game, clients, notices, index. ARGV: expected
/// revision, purge_at (padded), ttl, record, code, new revision.
const PUT_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'rev') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'purge_at', ARGV[2], 'record', ARGV[4], 'rev', ARGV[6])
for i = 1, 3 do
  redis.call('PEXPIRE', KEYS[i], ARGV[3])
end
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[5])
return 1
";

/// Gives a game's counter or notice list (KEYS[1]) the time to live of the game (KEYS[2]), or
/// ARGV[1] ms if the game is not stored and the key has none yet.
const FOLLOW_GAME_TTL: &str = r"
local ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
elseif redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
";

/// KEYS: clients, game. ARGV: orphan ttl.
const NEXT_ID_SCRIPT_BODY: &str = "local id = redis.call('INCR', KEYS[1])\n";

/// KEYS: notices, game. ARGV: orphan ttl, notice, LTRIM start (minus the most kept).
const PUSH_NOTICE_SCRIPT_BODY: &str = "redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('LTRIM', KEYS[1], ARGV[3], -1)
";

/// A [`Storage`] in a Redis server, shared by every lobby node that connects with the same URL
/// and namespace; see the [module docs](self).
pub struct RedisStorage {
    client: Client,
    /// `None` after a connection failed; the next operation connects again.
    conn: Option<Connection>,
    timeout: Duration,
    namespace: String,
    /// `statewire:{namespace}:`
    prefix: String,
    next_id_script: String,
    push_notice_script: String,
}

impl fmt::Debug for RedisStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The client's connection info may hold a password: show only the address.
        f.debug_struct("RedisStorage")
            .field("addr", &self.client.get_connection_info().addr.to_string())
            .field("namespace", &self.namespace)
            .field("connected", &self.conn.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisStorage {
    /// How long connecting, and each command, may take by default: 1 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

    /// Connects to the Redis at `url` (like `redis://127.0.0.1:6379/`, or
    /// `redis://:password@host:6379/2`), keeping every key under `statewire:{namespace}:`, with
    /// [`Self::DEFAULT_TIMEOUT`]. Fails with [`StorageError::Backend`] if the URL is not a
    /// Redis URL, the namespace is empty, longer than [`MAX_NAMESPACE_LEN`] or holds a
    /// character other than ASCII letters, digits, `-`, `_` and `.`, or the server does not
    /// answer a `PING` in time.
    pub fn connect(url: &str, namespace: &str) -> Result<RedisStorage, StorageError> {
        Self::connect_with_timeout(url, namespace, Self::DEFAULT_TIMEOUT)
    }

    /// [`Self::connect`] with another timeout for connecting and for each command (a zero
    /// timeout is taken as 1 ms).
    pub fn connect_with_timeout(
        url: &str,
        namespace: &str,
        timeout: Duration,
    ) -> Result<RedisStorage, StorageError> {
        check_namespace(namespace)?;
        // Not `{e}` with the URL: it may hold a password.
        let client = Client::open(url)
            .map_err(|e| StorageError::Backend(format!("not a usable Redis URL: {e}")))?;
        let mut storage = RedisStorage {
            client,
            conn: None,
            timeout: timeout.max(Duration::from_millis(1)),
            namespace: namespace.to_owned(),
            prefix: format!("statewire:{namespace}:"),
            next_id_script: format!("{NEXT_ID_SCRIPT_BODY}{FOLLOW_GAME_TTL}return id\n"),
            push_notice_script: format!("{PUSH_NOTICE_SCRIPT_BODY}{FOLLOW_GAME_TTL}return 1\n"),
        };
        storage.run(|c| redis::cmd("PING").query::<String>(c))?;
        Ok(storage)
    }

    /// The namespace every key is under.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn key(&self, kind: &str, code: JoinCode) -> String {
        format!("{}{kind}:{}", self.prefix, code.as_str())
    }

    fn index_key(&self) -> String {
        format!("{}games", self.prefix)
    }

    /// Runs `op` on the connection, connecting first if there is none, and drops the connection
    /// if it failed (its state is unknown after a timeout).
    fn run<T>(
        &mut self,
        op: impl FnOnce(&mut Connection) -> RedisResult<T>,
    ) -> Result<T, StorageError> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(
                open(&self.client, self.timeout)
                    .map_err(|e| backend(&self.client, "could not connect to", &e))?,
            ),
        };
        match op(conn) {
            Ok(value) => Ok(value),
            Err(e) => {
                if e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error()
                {
                    self.conn = None;
                }
                Err(backend(&self.client, "a command failed on", &e))
            }
        }
    }
}

/// What is wrong with `namespace` as a namespace, in words ("must be 1 to 64 characters
/// long, not 0", "cannot hold ' ': ..."), or `None` if it is fine: 1 to
/// [`MAX_NAMESPACE_LEN`] ASCII letters, digits, `-`, `_` and `.`, so that one namespace cannot
/// reach into another's keys.
pub fn namespace_problem(namespace: &str) -> Option<String> {
    if namespace.is_empty() || namespace.len() > MAX_NAMESPACE_LEN {
        return Some(format!(
            "must be 1 to {MAX_NAMESPACE_LEN} characters long, not {}",
            namespace.len()
        ));
    }
    namespace
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .map(|c| format!("cannot hold {c:?}: use ASCII letters, digits, '-', '_' and '.'"))
}

fn check_namespace(namespace: &str) -> Result<(), StorageError> {
    match namespace_problem(namespace) {
        None => Ok(()),
        Some(problem) => Err(StorageError::Backend(format!(
            "the namespace {namespace:?} {problem}"
        ))),
    }
}

fn open(client: &Client, timeout: Duration) -> RedisResult<Connection> {
    let conn = client.get_connection_with_timeout(timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    Ok(conn)
}

fn backend(client: &Client, what: &str, e: &RedisError) -> StorageError {
    StorageError::Backend(format!(
        "{what} the Redis at {}: {e}",
        client.get_connection_info().addr
    ))
}

/// Milliseconds as 20 digits, so that equal-length strings compare like the numbers.
fn padded(ms: u64) -> String {
    format!("{ms:020}")
}

/// The real time to live that collects a record nobody removes.
fn ttl_ms(game: &GameRecord, now_ms: u64) -> u64 {
    game.purge_at_ms
        .saturating_sub(now_ms)
        .max(1)
        .saturating_add(GC_GRACE_MS)
}

/// A stored record, unless it is missing or purged at `now_ms`.
fn live(bytes: Option<Vec<u8>>, now_ms: u64) -> Result<Option<GameRecord>, StorageError> {
    match bytes {
        Some(bytes) => {
            let game = decode_record(&bytes)?;
            Ok((game.purge_at_ms > now_ms).then_some(game))
        }
        None => Ok(None),
    }
}

impl Storage for RedisStorage {
    fn create(&mut self, game: &GameRecord, now_ms: u64) -> Result<bool, StorageError> {
        let bytes = encode_record(game)?;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(CREATE_SCRIPT)
            .arg(4)
            .arg(self.key("game", game.code))
            .arg(self.key("clients", game.code))
            .arg(self.key("notices", game.code))
            .arg(self.index_key())
            .arg(padded(now_ms))
            .arg(padded(game.purge_at_ms))
            .arg(ttl_ms(game, now_ms))
            .arg(bytes)
            .arg(game.code.as_str())
            .arg(game.revision);
        let created: i64 = self.run(|c| cmd.query(c))?;
        Ok(created == 1)
    }

    fn get(&mut self, code: JoinCode, now_ms: u64) -> Result<Option<GameRecord>, StorageError> {
        let key = self.key("game", code);
        let bytes: Option<Vec<u8>> =
            self.run(|c| redis::cmd("HGET").arg(key).arg("record").query(c))?;
        live(bytes, now_ms)
    }

    fn put(&mut self, game: &GameRecord, now_ms: u64) -> Result<bool, StorageError> {
        let mut next = game.clone();
        next.revision = game.revision.wrapping_add(1);
        let bytes = encode_record(&next)?;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(PUT_SCRIPT)
            .arg(4)
            .arg(self.key("game", game.code))
            .arg(self.key("clients", game.code))
            .arg(self.key("notices", game.code))
            .arg(self.index_key())
            .arg(game.revision.to_string())
            .arg(padded(game.purge_at_ms))
            .arg(ttl_ms(game, now_ms))
            .arg(bytes)
            .arg(game.code.as_str())
            .arg(next.revision.to_string());
        let stored: i64 = self.run(|c| cmd.query(c))?;
        Ok(stored == 1)
    }

    fn remove(&mut self, code: JoinCode) -> Result<(), StorageError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("DEL")
            .arg(self.key("game", code))
            .arg(self.key("clients", code))
            .arg(self.key("notices", code))
            .ignore()
            .cmd("ZREM")
            .arg(self.index_key())
            .arg(code.as_str())
            .ignore();
        self.run(|c| pipe.query::<()>(c))
    }

    fn list(&mut self, now_ms: u64, max: usize) -> Result<Vec<GameRecord>, StorageError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        // The index is ordered by purge time, the answer by code: read every live code (a few
        // bytes each, bounded by the lobby's game limit), then only the records returned.
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("ZREMRANGEBYSCORE")
            .arg(self.index_key())
            .arg("-inf")
            .arg(padded(now_ms))
            .ignore()
            .cmd("ZRANGEBYSCORE")
            .arg(self.index_key())
            .arg(format!("({now_ms}"))
            .arg("+inf");
        let (members,): (Vec<String>,) = self.run(|c| pipe.query(c))?;
        let mut codes = members
            .iter()
            .map(|m| {
                m.parse::<JoinCode>()
                    .map_err(|e| StorageError::Corrupt(format!("{m:?} in the index of games: {e}")))
            })
            .collect::<Result<Vec<JoinCode>, StorageError>>()?;
        codes.sort_unstable();
        codes.dedup();

        let mut out = Vec::new();
        let mut rest = codes.as_slice();
        while out.len() < max && !rest.is_empty() {
            // Records can vanish between the two reads: fetch what is still missing.
            let (batch, tail) = rest.split_at((max - out.len()).min(rest.len()));
            rest = tail;
            let mut pipe = redis::pipe();
            for &code in batch {
                pipe.cmd("HGET").arg(self.key("game", code)).arg("record");
            }
            let records: Vec<Option<Vec<u8>>> = self.run(|c| pipe.query(c))?;
            for bytes in records {
                if let Some(game) = live(bytes, now_ms)? {
                    out.push(game);
                }
            }
        }
        Ok(out)
    }

    fn next_client_id(&mut self, code: JoinCode) -> Result<u64, StorageError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(&self.next_id_script)
            .arg(2)
            .arg(self.key("clients", code))
            .arg(self.key("game", code))
            .arg(ORPHAN_TTL_MS);
        self.run(|c| cmd.query(c))
    }

    fn push_notice(
        &mut self,
        code: JoinCode,
        notice: &[u8],
        max: usize,
    ) -> Result<(), StorageError> {
        if max == 0 {
            return Ok(());
        }
        let start = -i64::try_from(max).unwrap_or(i64::MAX);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(&self.push_notice_script)
            .arg(2)
            .arg(self.key("notices", code))
            .arg(self.key("game", code))
            .arg(ORPHAN_TTL_MS)
            .arg(notice)
            .arg(start);
        self.run(|c| cmd.query::<i64>(c)).map(drop)
    }

    fn take_notices(&mut self, code: JoinCode) -> Result<Vec<Vec<u8>>, StorageError> {
        let key = self.key("notices", code);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("LRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .cmd("DEL")
            .arg(&key)
            .ignore();
        let (notices,): (Vec<Vec<u8>>,) = self.run(|c| pipe.query(c))?;
        Ok(notices)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::storage::tests::{record, storage_contract};

    const URL: &str = "redis://127.0.0.1:6379/";

    /// A storage on a fresh namespace, or `None` (after saying so) if no Redis is running and
    /// `STATEWIRE_REQUIRE_REDIS` is not set.
    fn storage_or_skip() -> Option<RedisStorage> {
        let namespace = format!("test-{:016x}", getrandom::u64().unwrap());
        match RedisStorage::connect(URL, &namespace) {
            Ok(s) => Some(s),
            Err(e) if std::env::var("STATEWIRE_REQUIRE_REDIS").is_ok_and(|v| v == "1") => {
                panic!("STATEWIRE_REQUIRE_REDIS=1 but no redis-server answers on {URL}: {e}")
            }
            Err(_) => {
                eprintln!(
                    "skipping: no redis-server on 127.0.0.1:6379 \
                     (set STATEWIRE_REQUIRE_REDIS=1 to require it)"
                );
                None
            }
        }
    }

    #[test]
    fn redis_storage_keeps_the_contract() {
        let Some(mut s) = storage_or_skip() else {
            return;
        };
        // Below 31^6 - 1, so that `base` and `base + 1` are two codes.
        let base = getrandom::u64().unwrap() % (887_503_681 - 1);
        storage_contract(&mut s, base);
    }

    #[test]
    fn records_past_purge_are_not_listed_and_list_is_by_code() {
        let Some(mut s) = storage_or_skip() else {
            return;
        };
        let games: Vec<GameRecord> = (0..5).map(|n| record(n, 1_000 + n * 1_000)).collect();
        for g in &games {
            assert!(s.create(g, 0).unwrap());
        }
        let mut by_code: Vec<JoinCode> = games.iter().map(|g| g.code).collect();
        by_code.sort();
        let listed: Vec<JoinCode> = s.list(0, 3).unwrap().iter().map(|g| g.code).collect();
        assert_eq!(listed, by_code[..3]);
        // At 2_500, the games purged at 1_000 and 2_000 are gone.
        let listed = s.list(2_500, 100).unwrap();
        assert_eq!(listed.len(), 3);
        assert!(listed.iter().all(|g| g.purge_at_ms > 2_500));
        for g in &games {
            s.remove(g.code).unwrap();
        }
        assert!(s.list(0, 100).unwrap().is_empty());
    }

    #[test]
    fn put_refreshes_the_real_time_to_live() {
        let Some(mut s) = storage_or_skip() else {
            return;
        };
        let mut g = record(7, 60_000);
        assert!(s.create(&g, 59_999).unwrap());
        g.player_count = 3;
        s.put(&g, 0).unwrap();
        let key = s.key("game", g.code);
        let ttl: i64 = s.run(|c| redis::cmd("PTTL").arg(key).query(c)).unwrap();
        assert!(ttl > 50_000 + GC_GRACE_MS as i64, "ttl {ttl}");
        s.remove(g.code).unwrap();
    }

    #[test]
    fn a_dropped_connection_is_opened_again() {
        let Some(mut s) = storage_or_skip() else {
            return;
        };
        let id: i64 = s.run(|c| redis::cmd("CLIENT").arg("ID").query(c)).unwrap();
        let mut killer = RedisStorage::connect(URL, s.namespace()).unwrap();
        let killed: i64 = killer
            .run(|c| redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).query(c))
            .unwrap();
        assert_eq!(killed, 1);
        let code = JoinCode::from_u64(3);
        // The first command may fail on the dead socket; then the storage connects again.
        if s.get(code, 0).is_err() {
            assert!(s.conn.is_none(), "a failed connection is dropped");
        }
        assert!(s.get(code, 0).unwrap().is_none());
    }

    #[test]
    fn a_dead_redis_fails_fast_in_words() {
        let start = Instant::now();
        // Port 1 (tcpmux) has no Redis behind it.
        let err = RedisStorage::connect_with_timeout(
            "redis://127.0.0.1:1/",
            "ns",
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(
            matches!(&err, StorageError::Backend(m) if m.contains("127.0.0.1:1")),
            "{err}"
        );
    }

    #[test]
    fn bad_namespaces_and_urls_are_refused() {
        for ns in ["", "a:b", "a b", &"x".repeat(MAX_NAMESPACE_LEN + 1)] {
            assert!(matches!(
                RedisStorage::connect(URL, ns),
                Err(StorageError::Backend(_))
            ));
        }
        let err = RedisStorage::connect("http://secret@host/", "ns").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}
