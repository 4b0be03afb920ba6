//! The listen-server endpoint: a game server whose process also plays.

use serde::Serialize;
use serde::de::DeserializeOwned;
use statewire_core::{ClientId, EntityId};
use statewire_transport::Transport;

use super::ConfigError;
use super::protocol::{Message, Protocol};
use super::server::{EventRefused, GameServer, GameServerConfig};

/// A listen server: a [`GameServer`] plus the host's own player. For the game the local
/// player is a client like any other: it joins ([`super::GameServerEvent::Joined`]), its
/// inputs come out as [`super::GameServerEvent::Input`] at the tick they are for, and its
/// proposals are resolved with everyone else's. Its view is the server's store itself, so
/// the same server-side game code runs whether the player is local or remote.
///
/// ```
/// use std::time::Duration;
/// use statewire::endpoint::*;
/// use statewire_core::{Owner, Replicate};
/// use statewire_transport::{Transport, loopback::{LoopbackConfig, LoopbackNet}};
///
/// #[derive(Replicate, Debug, Clone, Copy, PartialEq)]
/// struct X(#[replicate(int(min = 0, max = 1000))] u16);
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let protocol = Protocol::new().with::<X>()?;
/// let net = LoopbackNet::new(LoopbackConfig::default());
/// let host_t = net.endpoint();
/// let addr = host_t.local_addr();
/// // Inputs: how far to step this tick.
/// let mut host = GameHost::<_, u16>::new(host_t, &protocol, GameServerConfig::default())?;
/// let mut friend = GameClient::<_, u16>::connect(net.endpoint(), addr, &protocol, Duration::ZERO)?;
/// let mut players = std::collections::HashMap::new();
/// for frame in 0..60u32 {
///     let now = Duration::from_millis(33) * frame;
///     host.set_input(1); // the host's own player steps 1 per tick
///     let server = host.server();
///     server.update(now)?;
///     while let Some(ev) = server.poll_event() {
///         match ev {
///             // Local or remote, a player joins and sends inputs the same way.
///             GameServerEvent::Joined(c) => {
///                 let e = server.spawn(Owner::Client(c))?;
///                 server.store_mut().set(e, &X(0))?;
///                 players.insert(c, e);
///             }
///             GameServerEvent::Input { client, input, .. } => {
///                 let e = players[&client];
///                 let x = server.store().component::<X>(e).map_or(0, |x| x.0);
///                 server.store_mut().set(e, &X(x + input))?;
///             }
///             _ => {}
///         }
///     }
///     server.flush(now)?;
///     friend.update(now)?;
///     while friend.poll_event().is_some() {}
///     friend.set_input(&2);
///     friend.flush(now)?;
/// }
/// // The friend sees the host's player move, and holds the host's world.
/// let hosts_player = players[&host.local_id()];
/// assert!(friend.get::<X>(hosts_player).is_some_and(|x| x.0 >= 55));
/// assert_eq!(friend.snapshot(), host.server_ref().store().snapshot());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct GameHost<T: Transport, I> {
    server: GameServer<T, I>,
    local: ClientId,
}

impl<T: Transport, I: Serialize + DeserializeOwned + Clone> GameHost<T, I> {
    /// Serves on `transport` (development mode) with the host's player joining at the first
    /// update.
    pub fn new(
        transport: T,
        protocol: &Protocol,
        config: GameServerConfig,
    ) -> Result<Self, ConfigError> {
        Ok(Self::from_server(GameServer::new(
            transport, protocol, config,
        )?))
    }

    /// Adds the host's player to a server built otherwise (e.g. with connect tokens).
    pub fn from_server(mut server: GameServer<T, I>) -> Self {
        let local = server.add_local_player();
        GameHost { server, local }
    }

    /// The host's player.
    #[must_use]
    pub fn local_id(&self) -> ClientId {
        self.local
    }

    /// The server: run the game loop on it exactly as on a dedicated server.
    pub fn server(&mut self) -> &mut GameServer<T, I> {
        &mut self.server
    }

    /// The server, read-only.
    #[must_use]
    pub fn server_ref(&self) -> &GameServer<T, I> {
        &self.server
    }

    /// The host player's input for the next tick.
    pub fn set_input(&mut self, input: I) {
        self.server.set_local_input(self.local, input);
    }

    /// Proposes an event as the host's player; returns its sequence number (see
    /// [`GameServer::propose_local`]).
    pub fn propose(
        &mut self,
        kind: u16,
        entities: &[EntityId],
        data: &[u8],
    ) -> Result<u32, EventRefused> {
        self.server.propose_local(self.local, kind, entities, data)
    }

    /// Next user message the server sent the host's player.
    pub fn poll_message(&mut self) -> Option<Message> {
        self.server.poll_local_message().map(|(_, m)| m)
    }
}
