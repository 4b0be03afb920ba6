//! Listen servers: one process runs the server and plays as a client, with the same game code
//! as a remote player.

use std::time::Duration;

use statewire_core::ClientId;
use statewire_transport::{Transport, TransportError};

use crate::client::{Client, ClientEvent, ClientSendError};
use crate::config::SessionConfig;
use crate::connection::{ChannelId, ConfigError};
use crate::crypto::Key;
use crate::server::Server;

/// What client-side game code needs from its link to the server. Implemented by a remote
/// [`Client`] and by a [`Host`]'s [`LocalClient`], so the same code drives both.
pub trait PlayerLink {
    /// Our id, once connected.
    fn id(&self) -> Option<ClientId>;
    /// Queues `message` for the server.
    fn send(&mut self, channel: ChannelId, message: &[u8]) -> Result<(), ClientSendError>;
    /// Next event from the server.
    fn poll_event(&mut self) -> Option<ClientEvent>;
}

impl<T: Transport> PlayerLink for Client<T> {
    fn id(&self) -> Option<ClientId> {
        Client::id(self)
    }
    fn send(&mut self, channel: ChannelId, message: &[u8]) -> Result<(), ClientSendError> {
        Client::send(self, channel, message)
    }
    fn poll_event(&mut self) -> Option<ClientEvent> {
        Client::poll_event(self)
    }
}

/// A listen server: a [`Server`] plus the host's own player, who is a client like any other
/// (an id, user data, events) but whose messages never touch the network.
#[derive(Debug)]
pub struct Host<T: Transport, U = ()> {
    server: Server<T, U>,
    local: ClientId,
}

impl<T: Transport> Host<T> {
    /// Starts serving on `transport` with the host's player already connected.
    pub fn new(transport: T, config: SessionConfig, secret: Key) -> Result<Self, ConfigError> {
        Ok(Host::from_server(Server::new(transport, config, secret)?))
    }
}

impl<T: Transport, U> Host<T, U> {
    /// Adds the host's player to `server` (built with user data or tokens).
    pub fn from_server(mut server: Server<T, U>) -> Self {
        let local = server.add_local_client();
        Host { server, local }
    }

    /// The server half (send to clients, user data, events, kick...).
    pub fn server(&mut self) -> &mut Server<T, U> {
        &mut self.server
    }

    /// The server half, read-only.
    pub fn server_ref(&self) -> &Server<T, U> {
        &self.server
    }

    /// The host's player id.
    pub fn local_id(&self) -> ClientId {
        self.local
    }

    /// The host's player, as a [`PlayerLink`].
    pub fn local(&mut self) -> LocalClient<'_, T, U> {
        LocalClient {
            server: &mut self.server,
        }
    }

    /// Runs the server's update (the local player needs none).
    pub fn update(&mut self, now: Duration) -> Result<(), TransportError> {
        self.server.update(now)
    }
}

/// The host's own player, borrowed from a [`Host`].
#[derive(Debug)]
pub struct LocalClient<'a, T: Transport, U> {
    server: &'a mut Server<T, U>,
}

impl<T: Transport, U> PlayerLink for LocalClient<'_, T, U> {
    fn id(&self) -> Option<ClientId> {
        self.server.clients().find(|&c| self.server.is_local(c))
    }
    fn send(&mut self, channel: ChannelId, message: &[u8]) -> Result<(), ClientSendError> {
        self.server.local_send(channel, message)
    }
    fn poll_event(&mut self) -> Option<ClientEvent> {
        self.server.local_poll_event()
    }
}
