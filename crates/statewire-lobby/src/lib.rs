//! statewire-lobby: games anyone in the world can join, with one player hosting.
//!
//! (Crate docs are written with the lobby; see `Lobby`, `Rendezvous` and `Relay`.)
#![warn(missing_docs)]

pub mod code;
pub mod lobby;
pub mod relay;
pub mod rendezvous;
pub mod storage;
pub mod ticket;
pub mod wire;

#[cfg(feature = "redis")]
pub mod redis_storage;

pub use code::{CodeError, JoinCode, parse_link};
pub use lobby::{Lobby, LobbyConfig, LobbyStats, RelayAccess};
pub use relay::{Relay, RelayConfig, RelayStats};
pub use rendezvous::{
    HostInfo, Membership, Path, Rendezvous, RendezvousConfig, RendezvousEvent, RendezvousStats,
};
pub use storage::{GameRecord, MemoryStorage, Storage, StorageError};
pub use ticket::{AllocId, RelayTicket, Role, TicketError, TicketParams};
