//! The sim game's server: the game's rules on top of statewire's
//! [`GameServer`](statewire::endpoint::GameServer) endpoint, which owns the session, the
//! replicated store, authority over client writes, inputs, events and the message envelope.
//!
//! What is left here is the game: who spawns when a player joins, that a client may write only
//! its own player's facing (client-authoritative aim, validated by the endpoint), that a shot
//! kills when it hit the target where the shooter saw it (lag compensation: the target is
//! rewound to the shooter's view time, the shooter is where it was when it fired; the first
//! hit on a live enemy kills), copying the game's changes into the store, and the digests both
//! sides compare at the end of a run.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use statewire::endpoint::{
    ConfigError, Delivery, GameServer, GameServerConfig, GameServerEvent, MessageChannel, Protocol,
    WriteRefusal,
};
use statewire::{Key, TokenConfig};
use statewire_core::lag_compensation::{
    HitClaim, HitHistory, LagCompensationConfig, Shot, ViewTime,
};
use statewire_core::{
    ClientId, ComponentCoding, ComponentId, EntityId, GameEvent, Owner, Proposal, Registry,
    ServerConfig, Snapshot, Store, Tick, Writer,
};
use statewire_transport::{Transport, TransportError};

use crate::game::{
    self, Body, Change, ENEMY_RADIUS, Facing, Game, Input, KILL, Kind, PLAYER_RADIUS, Position,
    SHOT_RANGE, ShotData, TICK_HZ,
};

/// Ticks an input may be stamped ahead of the server.
const INPUT_WINDOW: u32 = 2 * TICK_HZ;

/// Errors that stop a run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NetGameError {
    #[error("schema: {0}")]
    Schema(#[from] statewire_core::SchemaError),
    #[error("protocol: {0}")]
    Protocol(#[from] statewire::endpoint::ProtocolError),
    #[error("replication store: {0}")]
    Store(#[from] statewire_core::StoreError),
    #[error("replication: {0}")]
    Replication(#[from] statewire_core::ReplicationError),
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("session configuration: {0}")]
    Session(#[from] statewire::connection::ConfigError),
}

/// The end-of-run message: the server's tick and the digest of what this client should hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FinalDigest {
    pub(crate) tick: u32,
    pub(crate) digest: u64,
}

/// What a client needs to predict its player like the server moves it, sent when it joins.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct GameRules {
    /// Half the arena's side, metres (players stop at its edge).
    pub(crate) arena: f32,
}

/// The game's channels besides replication.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Channels {
    pub(crate) final_digest: MessageChannel<FinalDigest>,
    pub(crate) rules: MessageChannel<GameRules>,
}

/// The game's protocol: its components (with `coding`) and its channels.
pub(crate) fn protocol(coding: ComponentCoding) -> Result<(Protocol, Channels), NetGameError> {
    let mut p = Protocol::from_registry(game::registry(coding)?);
    let final_digest = p.channel::<FinalDigest>("final digest", Delivery::Reliable, 16)?;
    let rules = p.channel::<GameRules>("rules", Delivery::Reliable, 8)?;
    Ok((
        p,
        Channels {
            final_digest,
            rules,
        },
    ))
}

/// Ticks of positions the server keeps for lag compensation (1.5 s).
const HIT_HISTORY_TICKS: u32 = 45;
/// Most a shot is rewound: 1 s, as Source's `sv_maxunlag` (a shooter's view is about a round
/// trip plus the interpolation delay behind the tick it fires in: 20-30 ticks on the poor and
/// very poor profiles).
pub(crate) const MAX_REWIND_TICKS: u32 = 30;

/// How the server judged one shot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ShotVerdict {
    pub(crate) client: ClientId,
    pub(crate) seq: u32,
    /// Hit, with the target rewound to the shooter's view.
    pub(crate) hit: bool,
    /// What the verdict would have been against where the target was when the shot was
    /// judged (no rewind), for comparison.
    pub(crate) hit_without_rewind: bool,
}

/// The session protocol id of the game with `coding` (connect tokens and LAN beacons carry
/// it).
pub(crate) fn protocol_id(coding: ComponentCoding) -> Result<u64, NetGameError> {
    Ok(protocol(coding)?.0.fingerprint())
}

/// Counters the server side keeps.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ServerCounters {
    pub(crate) snapshot_bytes: u64,
    pub(crate) records: u64,
    pub(crate) deferred: u64,
    /// Largest replication packet (without the endpoint's 1-byte message tag).
    pub(crate) max_packet: usize,
    pub(crate) bad_client_messages: u64,
    pub(crate) send_refused: u64,
    /// Writes to components clients may not write (only their player's facing).
    pub(crate) policy_rejected_writes: u64,
    pub(crate) accepted_writes: u64,
    pub(crate) rejected_proposals: u64,
    /// Clients disconnected for a fault of their own (fell behind the event log, ...).
    pub(crate) fault_disconnects: u64,
    /// Replication packets larger than their client's budget (or flagged over budget).
    pub(crate) budget_exceeded: u64,
    /// Longest any change carried by a packet waited for it, in ticks.
    pub(crate) max_staleness_ticks: u32,
}

/// Largest replication packet (budget) the game's sessions can carry.
pub(crate) fn max_replication_packet() -> usize {
    GameServerConfig::default().replication.max_packet_bytes
}

/// How the game server replicates.
#[derive(Debug, Clone)]
pub(crate) struct GameParams {
    /// Enemies at the start (players join as clients connect).
    pub(crate) enemies: usize,
    pub(crate) max_clients: usize,
    /// [`ServerConfig::max_packet_bytes`].
    pub(crate) max_packet_bytes: usize,
    /// Per-client packet budget (`None`: `max_packet_bytes`).
    pub(crate) budget: Option<usize>,
    /// Interest radius around each client's player, in metres (0: everything).
    pub(crate) interest_radius: f32,
    /// Enemies that walk every tick (`None`: random wandering).
    pub(crate) moving: Option<usize>,
    pub(crate) seed: u64,
    pub(crate) coding: ComponentCoding,
}

/// How the server admits clients.
pub(crate) struct Security {
    /// Seeds cookies, client ids and development-mode session keys.
    pub(crate) secret: Key,
    /// Token mode, if given.
    pub(crate) tokens: Option<TokenConfig>,
}

/// The game's component ids.
fn component_ids(registry: &Registry) -> [Option<ComponentId>; 3] {
    [
        registry.id_of::<Position>(),
        registry.id_of::<Facing>(),
        registry.id_of::<Body>(),
    ]
}

/// Read access to a quantized world, for comparing and digesting views.
trait StateView {
    fn owner_of(&self, id: EntityId) -> Option<Owner>;
    fn words(&self, id: EntityId, cid: ComponentId) -> Option<&[u32]>;
}

impl StateView for Store {
    fn owner_of(&self, id: EntityId) -> Option<Owner> {
        self.owner(id)
    }
    fn words(&self, id: EntityId, cid: ComponentId) -> Option<&[u32]> {
        self.component_view(id, cid).map(|v| v.quantized())
    }
}

struct SnapshotView<'a>(&'a Snapshot, &'a Registry);

impl StateView for SnapshotView<'_> {
    fn owner_of(&self, id: EntityId) -> Option<Owner> {
        self.0.owner(id)
    }
    fn words(&self, id: EntityId, cid: ComponentId) -> Option<&[u32]> {
        self.0
            .component_view(self.1, id, cid)
            .map(|v| v.quantized())
    }
}

/// A digest (FNV-1a) of the entities `ids` (ascending) of `state`: ids, owners and quantized
/// components. Both sides compute it the same way, so a client can check its view.
fn view_digest(registry: &Registry, state: &dyn StateView, ids: &[EntityId]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |v: u64| {
        for b in v.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    let cids = component_ids(registry);
    for &id in ids {
        eat(u64::from(id.0));
        eat(match state.owner_of(id) {
            Some(Owner::Server) => u64::MAX,
            Some(Owner::Client(c)) => c.0,
            Some(_) => u64::MAX - 2,
            None => u64::MAX - 1,
        });
        for cid in cids.iter().flatten() {
            match state.words(id, *cid) {
                None => eat(u64::MAX),
                Some(ws) => {
                    eat(ws.len() as u64);
                    for &w in ws {
                        eat(u64::from(w));
                    }
                }
            }
        }
    }
    h
}

/// The digest a client computes over its whole replicated state.
pub(crate) fn snapshot_digest(registry: &Registry, state: &Snapshot) -> u64 {
    let ids: Vec<EntityId> = state.entity_ids().collect();
    view_digest(registry, &SnapshotView(state, registry), &ids)
}

/// The game server: the endpoint plus the game's rules.
pub(crate) struct ServerGame<T: Transport> {
    pub(crate) net: GameServer<T, Input>,
    pub(crate) game: Game,
    channels: Channels,
    history: HitHistory<2>,
    /// Every shot judged, in order.
    pub(crate) verdicts: Vec<ShotVerdict>,
    budget: Option<usize>,
    facing: Option<ComponentId>,
    changes: Vec<Change>,
    /// Wall time of replication (update and encoding for every client) per active tick, µs.
    pub(crate) replication_us: Vec<u32>,
    /// Every event resolved in this run (the endpoint trims what all clients have).
    pub(crate) resolved: Vec<GameEvent>,
    pub(crate) counters: ServerCounters,
}

impl<T: Transport> ServerGame<T> {
    pub(crate) fn new(
        transport: T,
        params: &GameParams,
        security: Security,
    ) -> Result<Self, NetGameError> {
        let (protocol, channels) = protocol(params.coding)?;
        let defaults = GameServerConfig::default();
        let config = GameServerConfig {
            session: statewire::SessionConfig {
                max_clients: params.max_clients,
                ..defaults.session.clone()
            },
            replication: ServerConfig {
                max_packet_bytes: params.max_packet_bytes,
                max_clients: params.max_clients,
                interest_radius: params.interest_radius,
                ..defaults.replication.clone()
            },
            input_window_ticks: INPUT_WINDOW,
            max_inputs_per_client: INPUT_WINDOW as usize + 8,
            ..defaults
        };
        let mut net = match security.tokens {
            Some(t) => GameServer::with_tokens(transport, &protocol, config, security.secret, t)?,
            None => GameServer::with_secret(transport, &protocol, config, security.secret)?,
        };
        let facing = protocol.registry().id_of::<Facing>();
        // Game policy on top of ownership: a client may only aim its own player.
        net.set_client_writable(&facing.into_iter().collect::<Vec<_>>());
        Ok(ServerGame {
            net,
            game: Game::new(params.enemies, params.seed, params.moving),
            channels,
            history: HitHistory::new(LagCompensationConfig {
                history_ticks: HIT_HISTORY_TICKS,
                max_rewind_ticks: MAX_REWIND_TICKS,
                max_entities_per_tick: params.enemies + params.max_clients + 64,
                // The positions clients interpolate are on a 1/64 m grid.
                tolerance: 1.0 / 64.0,
                ..LagCompensationConfig::default()
            }),
            verdicts: Vec::new(),
            budget: params.budget,
            facing,
            changes: Vec::new(),
            replication_us: Vec::new(),
            resolved: Vec::new(),
            counters: ServerCounters::default(),
        })
    }

    /// One server tick: read, (if `active`) simulate, resolve shots, replicate, transmit.
    pub(crate) fn step(&mut self, now: Duration, active: bool) -> Result<(), NetGameError> {
        self.net.update(now)?;
        while let Some(ev) = self.net.poll_event() {
            match ev {
                GameServerEvent::Joined(id) => {
                    if self.budget.is_some() {
                        self.net.set_packet_budget(id, self.budget)?;
                    }
                    self.game.add_player(id);
                    let rules = GameRules {
                        arena: self.game.arena(),
                    };
                    // Refused only if the client is already gone.
                    let _ = self.net.send(id, self.channels.rules, &rules);
                }
                GameServerEvent::Left(id, _) => self.game.remove_player(id),
                GameServerEvent::WriteApplied {
                    entity, component, ..
                } if Some(component) == self.facing => {
                    if let Some(f) = self.net.store().component::<Facing>(entity) {
                        self.game.set_facing(entity, f.0);
                        self.counters.accepted_writes += 1;
                    }
                }
                GameServerEvent::WriteRejected {
                    reason: WriteRefusal::NotWritable,
                    ..
                } => self.counters.policy_rejected_writes += 1,
                _ => {}
            }
        }
        // Quiet periods freeze the world, players included, without notice: each client's
        // prediction of the few ticks it ran ahead is corrected once (the bots do not count
        // corrections then).
        if active {
            let net = &self.net;
            self.game
                .step(&|c| net.input(c).copied().unwrap_or_default());
        }
        // Where everything is this tick, for the shots judged from now on.
        let tick = self.net.tick();
        if self.history.begin_tick(tick).is_ok() {
            for (id, s) in self.game.states() {
                let r = if s.body.kind == Kind::Enemy {
                    ENEMY_RADIUS
                } else {
                    PLAYER_RADIUS
                };
                // Refused only past max_entities_per_tick (counted by the history).
                let _ = self.history.record(id, [s.pos.x, s.pos.y], r);
            }
        }
        // Resolve shots: the first hit on a live enemy, in resolution order, kills it.
        let (game, history, verdicts) = (&mut self.game, &mut self.history, &mut self.verdicts);
        let before = self.net.stats().proposals_rejected;
        let resolved = self.net.resolve_events(|p, _store| {
            let Some(v) = judge_shot(game, history, p, tick) else {
                return false;
            };
            verdicts.push(v);
            v.hit && game.kill(p.entities[1]).is_some()
        });
        self.resolved.extend(resolved);
        self.counters.rejected_proposals += self.net.stats().proposals_rejected - before;
        self.sync_store()?;
        // Each client looks from its player.
        for i in 0..self.net.clients().len() {
            let id = self.net.clients()[i];
            let at = self
                .game
                .player_of(id)
                .and_then(|p| self.game.state(p))
                .map(|s| [s.pos.x, s.pos.y]);
            self.net.replicator_mut().set_viewer(id, at, None)?;
        }
        let before = self.net.stats();
        let started = Instant::now();
        self.net.replicate();
        let took = started.elapsed();
        let after = self.net.stats();
        if active {
            self.counters.snapshot_bytes += after.replication_bytes - before.replication_bytes;
            self.counters.records += after.records - before.records;
            self.counters.deferred += after.deferred - before.deferred;
            self.replication_us
                .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        }
        self.counters.max_packet = after.max_packet_bytes;
        self.counters.budget_exceeded = after.budget_exceeded;
        self.counters.max_staleness_ticks = after.max_staleness_ticks;
        self.counters.fault_disconnects = after.fault_disconnects;
        self.counters.send_refused = after.send_refused;
        self.counters.bad_client_messages = after.malformed;
        self.net.flush(now)?;
        Ok(())
    }

    /// Copies what the game changed since the last call into the store: spawns and despawns,
    /// and for changed entities their components (unchanged values are no change to the
    /// store), owner and position on the interest plane.
    fn sync_store(&mut self) -> Result<(), NetGameError> {
        self.game.take_changes(&mut self.changes);
        let store = self.net.store_mut();
        for &change in &self.changes {
            match change {
                Change::Despawn(id) => {
                    if store.contains(id) {
                        store.despawn(id)?;
                    }
                }
                Change::Spawn(id) | Change::Update(id) => {
                    // Gone again since (spawned and killed in one tick): nothing to copy.
                    let Some(s) = self.game.state(id) else {
                        continue;
                    };
                    if store.contains(id) {
                        store.set_owner(id, s.owner)?;
                    } else {
                        store.spawn(id, s.owner)?;
                    }
                    store
                        .entity_mut(id)?
                        .set(&s.pos)?
                        .set(&s.facing)?
                        .set(&s.body)?
                        .set_position(Some([s.pos.x, s.pos.y]))?;
                }
            }
        }
        Ok(())
    }

    /// Connected remote clients.
    pub(crate) fn connected(&self) -> &[ClientId] {
        self.net.clients()
    }

    /// The entities in `client`'s view, ascending.
    fn view_ids(&self, client: ClientId) -> Vec<EntityId> {
        let store = self.net.store();
        let mut ids: Vec<EntityId> = store
            .entity_ids()
            .filter(|&id| self.net.replicator().in_view(store, client, id))
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Number of entities in `client`'s view.
    pub(crate) fn view_len(&self, client: ClientId) -> usize {
        self.view_ids(client).len()
    }

    /// Whether `state` (a client's replicated state) is exactly the store's state restricted
    /// to the entities in `client`'s view.
    pub(crate) fn view_matches(&self, client: ClientId, state: &Snapshot) -> bool {
        let ids = self.view_ids(client);
        let registry = self.net.protocol().registry();
        let store = self.net.store();
        let client_view = SnapshotView(state, registry);
        let cids = component_ids(registry);
        ids.len() == state.len()
            && state.entity_ids().eq(ids.iter().copied())
            && ids.iter().all(|&id| {
                store.owner_of(id) == client_view.owner_of(id)
                    && cids
                        .iter()
                        .flatten()
                        .all(|&cid| store.words(id, cid) == client_view.words(id, cid))
            })
    }

    /// The digest of the entities in `client`'s view.
    pub(crate) fn view_digest(&self, client: ClientId) -> u64 {
        view_digest(
            self.net.protocol().registry(),
            self.net.store(),
            &self.view_ids(client),
        )
    }

    /// The digest of the whole replicated world (what a client with no interest limit holds).
    pub(crate) fn world_digest(&self) -> u64 {
        let mut ids: Vec<EntityId> = self.net.store().entity_ids().collect();
        ids.sort_unstable();
        view_digest(self.net.protocol().registry(), self.net.store(), &ids)
    }

    /// Whether the store holds exactly the game's world (what rebuilding a snapshot from the
    /// game would give): the incremental copy missed nothing.
    #[cfg(test)]
    pub(crate) fn store_matches_game(&self) -> bool {
        let mut b = statewire_core::SnapshotBuilder::new(self.net.protocol().registry());
        statewire_core::WorldSource::build(&self.game, &mut b);
        b.finish().is_ok_and(|s| s == self.net.store().snapshot())
    }

    /// Bytes the server holds for replication: the store and the per-client records.
    pub(crate) fn replication_bytes(&self) -> usize {
        self.net.replication_bytes()
    }

    /// The server's current tick.
    pub(crate) fn tick(&self) -> Tick {
        self.net.tick()
    }

    /// Lag compensation's counters.
    pub(crate) fn hit_history(&self) -> &HitHistory<2> {
        &self.history
    }

    /// Tells every client the digest of its final view (reliable).
    pub(crate) fn announce_final(&mut self) {
        let tick = self.net.tick().0;
        for id in self.net.clients().to_vec() {
            let msg = FinalDigest {
                tick,
                digest: self.view_digest(id),
            };
            let _ = self.net.send(id, self.channels.final_digest, &msg);
        }
    }
}

/// Judges a shot claim at server tick `now`: `None` if it is not one (not a KILL from a client
/// naming its own player and an enemy, with [`ShotData`]) or cannot be judged (its tick is not
/// in the history); otherwise whether it hit the target where the shooter saw it, the shooter
/// standing where it was when it fired.
fn judge_shot(
    game: &Game,
    history: &mut HitHistory<2>,
    p: &Proposal,
    now: Tick,
) -> Option<ShotVerdict> {
    let (Writer::Client(shooter), &[me, target], KILL) =
        (p.proposer, p.entities.as_slice(), p.kind)
    else {
        return None;
    };
    let data = ShotData::decode(&p.data)?;
    // Enemies only (a dead one too: the history still knows where it was when seen).
    if game.player_of(shooter) != Some(me) || game.is_player(target) {
        return None;
    }
    let origin = history.position_at(me, ViewTime::at(p.tick)).ok()?.position;
    let direction = data.direction();
    let view = ViewTime::new(
        Tick(p.tick.0.wrapping_sub(u32::from(data.view_back))),
        f32::from(data.fraction) / 256.0,
    );
    let claim = HitClaim {
        target,
        view,
        shot: Shot::Ray {
            origin,
            direction,
            range: SHOT_RANGE,
        },
    };
    let verdict = history.check_hit(&claim).ok()?;
    let hit_without_rewind = history
        .position_at(target, ViewTime::at(now))
        .is_ok_and(|t| {
            game::shot_distance(origin, direction, t.position)
                <= t.radius + history.config().tolerance
        });
    Some(ShotVerdict {
        client: shooter,
        seq: p.seq,
        hit: verdict.hit,
        hit_without_rewind,
    })
}

/// The session settings a raw client of this game needs (the attack traffic in `sim
/// --adversary` speaks the session protocol directly).
pub(crate) fn client_session_config(
    coding: ComponentCoding,
) -> Result<statewire::SessionConfig, NetGameError> {
    Ok(statewire::SessionConfig {
        protocol_id: protocol_id(coding)?,
        ..statewire::SessionConfig::default()
    })
}
