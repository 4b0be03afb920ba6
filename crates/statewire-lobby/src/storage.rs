//! Where the lobby keeps its games: the [`Storage`] trait, [`MemoryStorage`] (one lobby node,
//! the default) and, with the `redis` feature, `RedisStorage` (several nodes sharing one
//! Redis).
//!
//! The lobby's logic lives in [`crate::Lobby`]; a storage only keeps [`GameRecord`]s by code,
//! hands out client ids, and queues notices for hosts. Every record carries the times it
//! expires and is purged, so a storage needs no clock of its own: it is given `now_ms`
//! (milliseconds since the Unix epoch) and never returns a record past its `purge_at_ms`.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::code::JoinCode;

/// Bytes of a host's or player's secret.
pub const SECRET_LEN: usize = 16;

/// A player the lobby sent to a game, as the lobby remembers it for host migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerRecord {
    /// The player's client id in the game.
    pub client_id: u64,
    /// The secret the lobby gave the player; it proves who asks to migrate.
    pub secret: [u8; SECRET_LEN],
    /// When the lobby sent it, in Unix milliseconds.
    pub joined_ms: u64,
    /// The address it asked from (joins per address are limited).
    pub from: SocketAddr,
}

/// A host migration in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationRecord {
    /// When the lobby noticed the host was gone, in Unix milliseconds.
    pub started_ms: u64,
    /// The players who may become the host, lowest client id first: the last roster the old
    /// host reported, without the old host itself.
    pub candidates: Vec<u64>,
}

/// One game in the lobby.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GameRecord {
    /// Its join code (unique in the lobby).
    pub code: JoinCode,
    /// Its name, as the host gave it (at most [`crate::wire::MAX_NAME_LEN`] bytes).
    pub name: String,
    /// The game's protocol id: joiners must speak the same.
    pub protocol_id: u64,
    /// The game's own version number (shown in lists, filtered on).
    pub version: u32,
    /// Players in the game, as the host last reported.
    pub player_count: u16,
    /// Most players the host admits.
    pub max_players: u16,
    /// Listed by [`crate::wire::Request::List`]; a private game is joined by code only.
    pub public: bool,
    /// The host's address as the lobby observes it (its NAT's public mapping).
    pub host_addr: SocketAddr,
    /// The host's address as the host knows it (its bound socket), named in connect tokens so
    /// that the host's session accepts them.
    pub host_local_addr: SocketAddr,
    /// The secret that proves a heartbeat comes from the host.
    pub host_secret: [u8; SECRET_LEN],
    /// The nonce of the host's latest heartbeat: notices pushed to the host carry it, so the
    /// host can tell them from forgeries.
    pub host_nonce: u64,
    /// Bumped by every write; [`Storage::put`] stores a record only over the revision it was
    /// read at, so two lobby nodes never lose each other's updates.
    pub revision: u64,
    /// The key the host's session opens connect tokens with; the lobby seals tokens with it.
    pub token_key: [u8; 32],
    /// The host's own player's client id (0 for a dedicated server with no local player).
    pub host_client: u64,
    /// Whether the host answered with its secret (proving it receives at its address); an
    /// unconfirmed game is neither listed nor joinable.
    pub confirmed: bool,
    /// Hosts so far, minus one: 0 until the first migration.
    pub epoch: u32,
    /// When the last heartbeat (or the registration) arrived, in Unix milliseconds.
    pub last_seen_ms: u64,
    /// After this (Unix milliseconds) without a heartbeat, the game is expired: joins are
    /// refused with [`crate::wire::ErrorCode::Expired`].
    pub expires_at_ms: u64,
    /// After this, the record is gone and its code unknown.
    pub purge_at_ms: u64,
    /// Client ids in the game, as the host last reported (its own player included).
    pub roster: Vec<u64>,
    /// Players the lobby sent, with their secrets (bounded by `max_players`).
    pub players: Vec<PlayerRecord>,
    /// A host migration in progress, if the host left with players still in the game.
    pub migration: Option<MigrationRecord>,
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The backend could not be reached or answered with an error.
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// A stored record could not be decoded (written by another version?).
    #[error("a stored game record is corrupt: {0}")]
    Corrupt(String),
    /// A limit of the storage is reached.
    #[error("storage is full ({0})")]
    Full(&'static str),
}

/// Where the lobby's state lives; see the [module docs](self).
pub trait Storage {
    /// Stores a new game; returns `false` (storing nothing) if its code is taken.
    fn create(&mut self, game: &GameRecord, now_ms: u64) -> Result<bool, StorageError>;
    /// The game with this code, unless there is none or it is past its `purge_at_ms`.
    fn get(&mut self, code: JoinCode, now_ms: u64) -> Result<Option<GameRecord>, StorageError>;
    /// Stores `game` over the stored game with the same code if that is still at
    /// `game.revision` (compare and set), as revision `game.revision + 1`; returns `false`,
    /// storing nothing, if another write came first or the game is gone. `now_ms` lets a
    /// backend with its own expiry, like Redis, compute the time to live.
    fn put(&mut self, game: &GameRecord, now_ms: u64) -> Result<bool, StorageError>;
    /// Removes a game and its notices.
    fn remove(&mut self, code: JoinCode) -> Result<(), StorageError>;
    /// Up to `max` stored games (not purged), lowest code first.
    fn list(&mut self, now_ms: u64, max: usize) -> Result<Vec<GameRecord>, StorageError>;
    /// A fresh client id for a player of the game `code`: unique within the game, never 0,
    /// shared by every node.
    fn next_client_id(&mut self, code: JoinCode) -> Result<u64, StorageError>;
    /// Queues `notice` (an encoded message) for the host of `code`; keeps at most `max` per
    /// game, dropping the oldest.
    fn push_notice(
        &mut self,
        code: JoinCode,
        notice: &[u8],
        max: usize,
    ) -> Result<(), StorageError>;
    /// Takes every queued notice of `code`, oldest first.
    fn take_notices(&mut self, code: JoinCode) -> Result<Vec<Vec<u8>>, StorageError>;
}

/// The default storage: a map in this process. Bounded by the lobby's own limits
/// ([`crate::LobbyConfig::max_games`]); records are dropped once past `purge_at_ms`.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    games: BTreeMap<JoinCode, GameRecord>,
    notices: BTreeMap<JoinCode, VecDeque<Vec<u8>>>,
    client_ids: BTreeMap<JoinCode, u64>,
}

impl MemoryStorage {
    /// An empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    /// Games stored, purged ones included until the next [`Storage::list`].
    pub fn len(&self) -> usize {
        self.games.len()
    }

    /// Whether no game is stored.
    pub fn is_empty(&self) -> bool {
        self.games.is_empty()
    }

    fn purge(&mut self, now_ms: u64) {
        let gone: Vec<JoinCode> = self
            .games
            .values()
            .filter(|g| g.purge_at_ms <= now_ms)
            .map(|g| g.code)
            .collect();
        for code in gone {
            self.drop_game(code);
        }
    }

    fn drop_game(&mut self, code: JoinCode) {
        self.games.remove(&code);
        self.notices.remove(&code);
        self.client_ids.remove(&code);
    }
}

impl Storage for MemoryStorage {
    fn create(&mut self, game: &GameRecord, now_ms: u64) -> Result<bool, StorageError> {
        if let Some(old) = self.games.get(&game.code) {
            if old.purge_at_ms > now_ms {
                return Ok(false);
            }
            self.drop_game(game.code);
        }
        self.games.insert(game.code, game.clone());
        Ok(true)
    }

    fn get(&mut self, code: JoinCode, now_ms: u64) -> Result<Option<GameRecord>, StorageError> {
        match self.games.get(&code) {
            Some(g) if g.purge_at_ms > now_ms => Ok(Some(g.clone())),
            Some(_) => {
                self.drop_game(code);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    fn put(&mut self, game: &GameRecord, _now_ms: u64) -> Result<bool, StorageError> {
        match self.games.get_mut(&game.code) {
            Some(stored) if stored.revision == game.revision => {
                *stored = game.clone();
                stored.revision += 1;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn remove(&mut self, code: JoinCode) -> Result<(), StorageError> {
        self.drop_game(code);
        Ok(())
    }

    fn list(&mut self, now_ms: u64, max: usize) -> Result<Vec<GameRecord>, StorageError> {
        self.purge(now_ms);
        Ok(self.games.values().take(max).cloned().collect())
    }

    fn next_client_id(&mut self, code: JoinCode) -> Result<u64, StorageError> {
        let next = self.client_ids.entry(code).or_insert(0);
        *next += 1;
        Ok(*next)
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
        let queue = self.notices.entry(code).or_default();
        while queue.len() >= max {
            queue.pop_front();
        }
        queue.push_back(notice.to_vec());
        Ok(())
    }

    fn take_notices(&mut self, code: JoinCode) -> Result<Vec<Vec<u8>>, StorageError> {
        Ok(self
            .notices
            .remove(&code)
            .map(Vec::from)
            .unwrap_or_default())
    }
}

/// Encodes a record for a storage that keeps bytes (postcard).
pub fn encode_record(game: &GameRecord) -> Result<Vec<u8>, StorageError> {
    postcard::to_allocvec(game).map_err(|e| StorageError::Corrupt(e.to_string()))
}

/// Decodes a record written by [`encode_record`].
pub fn decode_record(bytes: &[u8]) -> Result<GameRecord, StorageError> {
    postcard::from_bytes(bytes).map_err(|e| StorageError::Corrupt(e.to_string()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record for storage tests: code from `n`, purged at `purge_at_ms`.
    pub(crate) fn record(n: u64, purge_at_ms: u64) -> GameRecord {
        GameRecord {
            code: JoinCode::from_u64(n),
            name: format!("game {n}"),
            protocol_id: 7,
            version: 1,
            player_count: 1,
            max_players: 8,
            public: true,
            host_addr: "203.0.113.5:40000".parse().unwrap(),
            host_local_addr: "10.0.0.2:7777".parse().unwrap(),
            host_secret: [n as u8; SECRET_LEN],
            host_nonce: 0,
            revision: 0,
            token_key: [3; 32],
            host_client: 1,
            confirmed: true,
            epoch: 0,
            last_seen_ms: 0,
            expires_at_ms: purge_at_ms / 2,
            purge_at_ms,
            roster: vec![1, 2],
            players: vec![PlayerRecord {
                client_id: 2,
                secret: [9; SECRET_LEN],
                joined_ms: 0,
                from: "198.51.100.9:5000".parse().unwrap(),
            }],
            migration: None,
        }
    }

    /// The contract every storage keeps; run by each backend's tests.
    pub(crate) fn storage_contract(s: &mut dyn Storage, base: u64) {
        let a = record(base, 10_000);
        assert!(s.create(&a, 0).unwrap());
        assert!(!s.create(&a, 0).unwrap(), "a taken code is refused");
        assert_eq!(s.get(a.code, 5_000).unwrap().as_ref(), Some(&a));
        let mut changed = a.clone();
        changed.player_count = 5;
        assert!(s.put(&changed, 5_000).unwrap());
        let stored = s.get(a.code, 5_000).unwrap().unwrap();
        assert_eq!((stored.player_count, stored.revision), (5, 1));
        // A write over a revision that is no longer stored (another node wrote first) fails.
        changed.player_count = 6;
        assert!(!s.put(&changed, 5_000).unwrap(), "a stale write is refused");
        assert_eq!(s.get(a.code, 5_000).unwrap().unwrap().player_count, 5);
        let mut missing = record(base + 2, 10_000);
        missing.revision = 0;
        assert!(
            !s.put(&missing, 5_000).unwrap(),
            "a write to an absent game is refused"
        );
        assert!(
            s.get(a.code, 10_000).unwrap().is_none(),
            "purged at purge_at_ms"
        );
        assert!(s.create(&a, 10_000).unwrap(), "a purged code is free again");

        let first = s.next_client_id(a.code).unwrap();
        let second = s.next_client_id(a.code).unwrap();
        assert!(first != 0 && second != first);

        for i in 0..5u8 {
            s.push_notice(a.code, &[i], 3).unwrap();
        }
        assert_eq!(
            s.take_notices(a.code).unwrap(),
            vec![vec![2], vec![3], vec![4]]
        );
        assert!(s.take_notices(a.code).unwrap().is_empty());

        let b = record(base + 1, 10_000);
        assert!(s.create(&b, 0).unwrap());
        let listed: Vec<JoinCode> = s.list(5_000, 100).unwrap().iter().map(|g| g.code).collect();
        assert!(
            listed.contains(&a.code) && listed.contains(&b.code),
            "{listed:?}"
        );
        assert!(s.list(5_000, 1).unwrap().len() <= 1);
        s.remove(a.code).unwrap();
        s.remove(b.code).unwrap();
        assert!(s.get(a.code, 0).unwrap().is_none());
        assert!(s.take_notices(a.code).unwrap().is_empty());
    }

    #[test]
    fn memory_storage_keeps_the_contract() {
        let mut s = MemoryStorage::new();
        storage_contract(&mut s, 1);
        assert!(s.is_empty());
    }

    #[test]
    fn records_round_trip_through_bytes() {
        let r = record(42, 99);
        assert_eq!(decode_record(&encode_record(&r).unwrap()).unwrap(), r);
        assert!(decode_record(&[0xff; 3]).is_err());
    }
}
