//! statewire-lobby: games anyone in the world can join, with one player hosting.
//!
//! A player hosts; a central lobby only introduces. The pieces, each sans-IO:
//!
//! - [`Lobby`]: hosts register a game and heartbeat; players list public games or join by a
//!   six-character [`JoinCode`] (or a link `statewire://LOBBY/CODE`). The lobby seals each
//!   player a connect token with the game's own key, so the host admits only players the
//!   lobby sent, tells both ends each other's observed address and when to punch, and grants
//!   a relay allocation. Its state lives behind [`Storage`]: [`MemoryStorage`], or Redis
//!   (feature `redis`) for several lobby nodes.
//! - [`Rendezvous`]: the peer side, a [`Transport`](statewire_transport::Transport) wrapper
//!   on the host's or player's one socket. It talks to the lobby, punches through NATs, falls
//!   back on the relay, and shows each remote peer at one address, whatever the path, so the
//!   game session on top (a [`statewire::endpoint::GameServer`] or
//!   [`GameClient`](statewire::endpoint::GameClient)) never knows.
//! - [`Relay`]: forwards datagrams only between the two ends of an allocation the lobby
//!   granted (a [`RelayTicket`] sealed with a key the lobby and the relay share), within
//!   per-allocation byte and rate limits.
//! - Host migration: when a host leaves, the players ask the lobby
//!   ([`Rendezvous::migrate`]); the one with the lowest client id takes over, resuming from
//!   its last snapshot ([`statewire::endpoint::GameServer::resume`]), and the others get
//!   tokens for it.
//!
//! # A game joined by code, over loopback
//!
//! Every peer is stepped by the caller: the lobby gets datagrams and the wall clock; the
//! host's and player's rendezvous are updated each frame and read through their sessions.
//!
//! ```
//! use std::time::Duration;
//! use statewire::endpoint::{GameClient, GameClientConfig, GameServer, GameServerConfig, Protocol};
//! use statewire::{Key, TokenConfig};
//! use statewire_core::{ClientId, Owner, Replicate};
//! use statewire_lobby::*;
//! use statewire_transport::{Transport, loopback::{LoopbackConfig, LoopbackNet}};
//!
//! #[derive(Replicate, Debug, PartialEq)]
//! struct Hp(#[replicate(int(min = 0, max = 100))] u8);
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let net = LoopbackNet::new(LoopbackConfig::default());
//! let protocol = Protocol::new().with::<Hp>()?;
//! let unix = Duration::from_secs(1_800_000_000); // the lobby's wall clock at time zero
//!
//! // The lobby, on its own socket.
//! let mut lobby_sock = net.endpoint();
//! let lobby_addr = lobby_sock.local_addr();
//! let mut lobby = Lobby::new(MemoryStorage::new(), LobbyConfig::default());
//!
//! // The host: a game server on a rendezvous that registers the game.
//! let game_key = Key::random();
//! let host_sock = net.endpoint();
//! let host_local = host_sock.local_addr();
//! let info = HostInfo {
//!     name: "Friday night".into(), protocol_id: protocol.fingerprint(), version: 1,
//!     max_players: 8, public: true, host_client: ClientId(0), token_key: game_key.clone(),
//! };
//! let rv = Rendezvous::host(host_sock, lobby_addr, info, RendezvousConfig::default(), Duration::ZERO);
//! let tokens = TokenConfig { key: game_key, public_addrs: vec![host_local], unix_time_at_zero: unix };
//! let mut server = GameServer::<_, ()>::with_tokens(rv, &protocol, GameServerConfig::default(),
//!     Key::random(), tokens)?;
//! let boss = server.spawn(Owner::Server)?;
//! server.store_mut().set(boss, &Hp(100))?;
//!
//! let mut code = None;
//! let mut asking = None;
//! let mut client = None;
//! let mut buf = [0u8; 2048];
//! for frame in 0..200u32 {
//!     let now = Duration::from_millis(10) * frame;
//!     // Lobby: every datagram in, every reply out.
//!     while let Some(got) = lobby_sock.recv(&mut buf)? {
//!         lobby.handle(unix + now, got.from, &buf[..got.len]);
//!     }
//!     while let Some((to, bytes)) = lobby.poll_transmit() {
//!         lobby_sock.send(to, &bytes)?;
//!     }
//!     // Host: the rendezvous' timers, then the game (which reads through the rendezvous).
//!     server.session_mut().transport_mut().update(now)?;
//!     server.update(now)?;
//!     while let Some(e) = server.session_mut().transport_mut().poll_event() {
//!         if let RendezvousEvent::Registered { code: c, .. } = e {
//!             code = Some(c); // show it to the player: "join code: K7M2QX"
//!         }
//!     }
//!     while server.poll_event().is_some() {}
//!     server.flush(now)?;
//!     // Player: asks for the code, then plays on the same rendezvous.
//!     if let (Some(c), None, None) = (code, &asking, &client) {
//!         asking = Some(Rendezvous::join(net.endpoint(), lobby_addr, c, protocol.fingerprint(),
//!             RendezvousConfig::default(), now));
//!     }
//!     if let Some(rv) = &mut asking {
//!         rv.update(now)?;
//!         while rv.recv(&mut buf)?.is_some() {}
//!         if let Some(RendezvousEvent::Joined { token, host, .. }) = rv.poll_event() {
//!             let rv = asking.take().unwrap();
//!             client = Some(GameClient::<_, ()>::with_token(rv, host, &protocol,
//!                 GameClientConfig::default(), now, &token)?);
//!         }
//!     }
//!     if let Some(c) = &mut client {
//!         c.session_mut().transport_mut().update(now)?;
//!         c.update(now)?;
//!         while c.poll_event().is_some() {}
//!         c.flush(now)?;
//!     }
//! }
//! let client = client.expect("joined by code");
//! assert_eq!(client.get::<Hp>(boss), Some(Hp(100)));
//! let peer = client.session().transport().paths().next();
//! assert_eq!(peer.map(|(_, path)| path), Some(Path::Direct));
//! # Ok(())
//! # }
//! ```
//!
//! # Threat model
//!
//! Lobby traffic is plain UDP: the lobby authenticates hosts and players by secrets it handed
//! them (heartbeats, leaves, migrations), pads every request a spoofed source could abuse to
//! 1,200 bytes and never answers with more, and limits requests and games per source IP. It
//! is not confidential: an on-path attacker between a peer and the lobby can read the game's
//! token key (at registration) or a player's token (at join) and so join that game. The game
//! session itself is sealed end to end (ChaCha20-Poly1305) whatever the path, so neither the
//! relay nor anyone on the path reads or forges game traffic; the worst they do is drop it.
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
