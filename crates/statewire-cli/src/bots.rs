//! The sim game's bot client on top of statewire's
//! [`GameClient`](statewire::endpoint::GameClient) endpoint, which owns the session, the
//! replicated state, acknowledgements, input stamping, writes and predicted proposals.
//!
//! What is left here is the bot: it steers (inputs), aims its own player (a write the server
//! validates), and now and then claims a kill (a predicted proposal); the adversary instead
//! crafts what an attacker who knows the wire format would send: inputs stamped ten seconds
//! off, writes of entities it does not own, NaN, ten times the write rate, impossible kills and
//! malformed messages.

use std::time::Duration;

use statewire::endpoint::{GameClient, GameClientConfig, GameClientEvent, MessageChannel};
use statewire::{ChannelId, ConnectToken, DisconnectReason};
use statewire_core::authority::encode_writes;
use statewire_core::{ComponentCoding, EntityId, Registry, StateWrite, Tick};
use statewire_transport::Transport;

use crate::game::{Bot, ClientWorld, Facing, Input, KILL, Position, TICK_HZ};
use crate::rules::{FinalDigest, NetGameError, protocol, snapshot_digest};

/// How a bot behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Behaviour {
    /// Plays by the rules.
    Honest,
    /// Writes others' entities, server entities, unknown ids, NaN, 10× the write rate; stamps
    /// inputs ±10 s off; claims impossible kills; sends malformed messages.
    Adversary,
}

/// The endpoint's session channels (see `statewire::endpoint::envelope`): the adversary
/// writes raw envelopes on them.
const RELIABLE: ChannelId = ChannelId(0);
const UNRELIABLE: ChannelId = ChannelId(1);

/// A bot client.
pub(crate) struct BotClient<T: Transport> {
    pub(crate) net: GameClient<T, Input>,
    pub(crate) world: ClientWorld,
    bot: Bot,
    behaviour: Behaviour,
    registry: Registry,
    final_channel: MessageChannel<FinalDigest>,
    aim: f32,
    buf: Vec<u8>,
    pub(crate) confirmed: u64,
    pub(crate) rolled_back: u64,
    pub(crate) final_digest: Option<(Tick, u64)>,
    pub(crate) ended: Option<DisconnectReason>,
}

impl<T: Transport> BotClient<T> {
    pub(crate) fn new(
        transport: T,
        server: std::net::SocketAddr,
        now: Duration,
        seed: u64,
        behaviour: Behaviour,
        coding: ComponentCoding,
        token: Option<&ConnectToken>,
    ) -> Result<Self, NetGameError> {
        let (protocol, final_channel) = protocol(coding)?;
        let config = GameClientConfig {
            tick_rate_hz: TICK_HZ,
            // Reproducible handshakes in the simulation.
            handshake_salt: Some(seed ^ 0x0073_616c),
            ..GameClientConfig::default()
        };
        let net = match token {
            Some(t) => GameClient::with_token(transport, server, &protocol, config, now, t)?,
            None => GameClient::new(transport, server, &protocol, config, now)?,
        };
        Ok(BotClient {
            net,
            world: ClientWorld::default(),
            bot: Bot::new(seed ^ 0xb07),
            behaviour,
            registry: protocol.registry().clone(),
            final_channel,
            aim: 0.0,
            buf: Vec::new(),
            confirmed: 0,
            rolled_back: 0,
            final_digest: None,
            ended: None,
        })
    }

    /// Whether the handshake completed.
    pub(crate) fn is_connected(&self) -> bool {
        self.net.is_connected()
    }

    /// Replication packets that did not decode.
    pub(crate) fn decode_errors(&self) -> u64 {
        self.net.stats().decode_errors
    }

    /// Other messages that did not decode, and sends the session refused.
    pub(crate) fn bad_messages(&self) -> u64 {
        let s = self.net.stats();
        s.malformed + s.send_refused
    }

    /// One client frame: apply what arrived, then send ack + input, the aim write and (now and
    /// then) a kill claim. `play` is false during quiet periods.
    pub(crate) fn step(&mut self, now: Duration, play: bool) -> Result<(), NetGameError> {
        self.net.update_with_events(now, &mut self.world)?;
        while let Some(ev) = self.net.poll_event() {
            match ev {
                GameClientEvent::Message(m) => {
                    if let Some(Ok(f)) = m.read(self.final_channel) {
                        self.final_digest = Some((Tick(f.tick), f.digest));
                    }
                }
                GameClientEvent::Confirmed { .. } => self.confirmed += 1,
                // A real game would undo the local effect here (revive the enemy it hid).
                GameClientEvent::Rejected { .. } => self.rolled_back += 1,
                GameClientEvent::Disconnected(r) => self.ended = Some(r),
                _ => {}
            }
        }
        if !self.is_connected() {
            return Ok(());
        }
        let input = if play {
            self.bot.think()
        } else {
            Input::default()
        };
        match self.behaviour {
            Behaviour::Honest => self.net.set_input(&input),
            Behaviour::Adversary => self.send_forged_input(input),
        }
        if play {
            self.send_writes();
            self.maybe_shoot();
        }
        self.net.flush(now)?;
        Ok(())
    }

    /// The adversary's input, stamped ten seconds in the past or the future, as a raw TICK
    /// envelope (with its real acknowledgement, so it keeps receiving).
    fn send_forged_input(&mut self, input: Input) {
        let Some(base) = self.net.input_tick() else {
            return;
        };
        let off = 10 * TICK_HZ;
        let tick = if base.0 % 2 == 0 {
            base.0.wrapping_sub(off)
        } else {
            base.0.wrapping_add(off)
        };
        self.buf.clear();
        self.buf.push(0x01);
        match self.net.replicator().ack() {
            Some(a) => {
                self.buf.push(1);
                self.buf.extend_from_slice(&a.encode());
            }
            None => self.buf.push(0),
        }
        self.buf.push(1);
        self.buf.extend_from_slice(&tick.to_le_bytes());
        self.buf
            .extend_from_slice(&[2, input.dx as u8, input.dy as u8]);
        let _ = self.net.session_mut().send(UNRELIABLE, &self.buf);
    }

    fn write_of<C: statewire_core::Replicate>(
        &self,
        entity: EntityId,
        value: &C,
    ) -> Option<StateWrite> {
        let mut values = Vec::new();
        let component = self.registry.raw_values(value, &mut values).ok()?;
        Some(StateWrite {
            entity,
            component,
            values,
        })
    }

    fn send_writes(&mut self) {
        let Some(&player) = self.net.owned().first() else {
            return;
        };
        self.aim = self.bot.aim(self.aim);
        if self.behaviour == Behaviour::Honest {
            // Refused locally only if we no longer own it (then the server would refuse it).
            let _ = self.net.write(player, &Facing(self.aim));
            return;
        }
        let me = self.net.id();
        let mut writes: Vec<StateWrite> = self
            .write_of(player, &Facing(self.aim))
            .into_iter()
            .collect();
        // Lowest ids first: the world is a hash map, whose order differs between processes.
        let mut others: Vec<EntityId> = self
            .world
            .entities
            .iter()
            .filter(|(_, e)| e.owner.is_some() && e.owner != me)
            .map(|(&id, _)| id)
            .collect();
        others.sort_unstable();
        others.truncate(4);
        let enemy = self
            .world
            .entities
            .iter()
            .filter(|(_, e)| e.owner.is_none())
            .map(|(&id, _)| id)
            .min();
        for id in others {
            writes.extend(self.write_of(id, &Facing(1.0)));
            writes.extend(self.write_of(id, &Position { x: 0.0, y: 0.0 }));
        }
        if let Some(e) = enemy {
            writes.extend(self.write_of(e, &Position { x: 1.0, y: 1.0 }));
        }
        writes.extend(self.write_of(EntityId(9_999_999), &Facing(1.0)));
        writes.extend(self.write_of(player, &Facing(f32::NAN)));
        writes.extend(self.write_of(player, &Position { x: 0.0, y: 0.0 }));
        // Ten times the allowed rate on its own player.
        for k in 0..80 {
            writes.extend(self.write_of(player, &Facing(k as f32 * 0.01)));
        }
        // Raw WRITES envelopes, 60 writes each (under the unreliable channel's size).
        for chunk in writes.chunks(60) {
            self.buf.clear();
            self.buf.push(0x02);
            encode_writes(chunk, &mut self.buf);
            let _ = self.net.session_mut().send(UNRELIABLE, &self.buf);
        }
        // Malformed messages on both channels.
        let session = self.net.session_mut();
        let _ = session.send(UNRELIABLE, &[0x02, 0xff, 0xff, 1]);
        let _ = session.send(RELIABLE, &[0x03, 1, 2, 3]);
        let _ = session.send(UNRELIABLE, &[0x7f]);
    }

    fn maybe_shoot(&mut self) {
        let Some(&player) = self.net.owned().first() else {
            return;
        };
        let target = if self.behaviour == Behaviour::Adversary {
            // Claims an enemy far away (any enemy will do; range is checked by the server).
            self.world
                .entities
                .iter()
                .filter(|(_, e)| e.owner.is_none())
                .map(|(&id, _)| id)
                .max()
        } else {
            self.bot.pick_target(&self.world, player)
        };
        if let Some(target) = target {
            // Refused only if not connected, checked above.
            let _ = self.net.propose(KILL, &[player, target], &[]);
        }
    }

    /// What this client shows of every entity with a position: (id, x, y, is an enemy).
    pub(crate) fn shown(&self) -> impl Iterator<Item = (EntityId, f32, f32, bool)> + '_ {
        self.world.entities.iter().filter_map(|(&id, e)| {
            let p = e.pos?;
            let enemy = e.body.is_some_and(|b| b.kind == crate::game::Kind::Enemy);
            Some((id, p.x, p.y, enemy))
        })
    }

    /// The digest of this client's replicated state (see `ServerGame::view_digest`).
    pub(crate) fn digest(&self) -> u64 {
        snapshot_digest(&self.registry, &self.net.snapshot())
    }

    /// Whether this client's state matches the digest the server announced.
    pub(crate) fn matches_final(&self) -> Option<bool> {
        self.final_digest.map(|(_, digest)| self.digest() == digest)
    }
}
