//! statewire with nothing but the core: the world is a `Vec` of structs on each side, and
//! packets are byte slices handed from the server to the clients and back within the same tick,
//! with every third packet in each direction dropped.
//!
//! No ECS, no transport and no clock are needed: [`WorldSource`] is a loop over the server's
//! `Vec`, and [`WorldSink`] keeps each client's `Vec` sorted by [`EntityId`] (changes for one
//! snapshot arrive in id order, so a binary search finds every entity).

use statewire_core::{
    AckFrame, Applied, ClientConfig, ClientId, ClientReplicator, ComponentView, EntityId, Owner,
    Registry, ServerConfig, ServerReplicator, Snapshot, SnapshotBuilder, Store, StoreConfig, Tick,
    WorldSink, WorldSource,
};

use crate::game::{self, GameEvents, GameRng, Health, INITIAL_NPCS, TICK_HZ, TickPlan, Transform};
use crate::netsim_run;
use crate::{ClientSummary, RunError, Summary};

/// Ticks without changes after the active ones. With no latency, two lost packets in a row
/// are the worst case, so a few ticks are enough.
pub const QUIET_TICKS: u32 = 10;
/// Clients in a run.
pub const CLIENTS: u64 = 2;
/// Every `DROP_EVERY`-th packet in each direction is lost.
pub const DROP_EVERY: u64 = 3;

/// One entity on the server.
#[derive(Debug, Clone, PartialEq)]
pub struct Ship {
    /// Its wire id.
    pub id: EntityId,
    /// Who may write it.
    pub owner: Owner,
    /// Where it is (replicated).
    pub transform: Transform,
    /// Its hit points, if it can be hurt (replicated).
    pub health: Option<Health>,
    /// Server-only: forward speed in m/s.
    pub speed: f32,
    /// Server-only: turn rate in rad/s.
    pub turn: f32,
    /// Server-only: whether the wandering AI moves it (players are not NPCs).
    pub npc: bool,
}

/// The server's game: a `Vec` of [`Ship`]s, in id order.
#[derive(Debug, Clone)]
pub struct PlainServer {
    /// The authoritative world.
    pub ships: Vec<Ship>,
    clients: Vec<ClientId>,
    next_id: u32,
    /// What changed so far.
    pub events: GameEvents,
}

impl PlainServer {
    /// One player per client and [`INITIAL_NPCS`] NPCs.
    pub fn new(clients: &[ClientId], rng: &mut GameRng) -> Self {
        let mut s = PlainServer {
            ships: Vec::new(),
            clients: clients.to_vec(),
            next_id: 0,
            events: GameEvents::default(),
        };
        for (i, &c) in clients.iter().enumerate() {
            let id = s.allocate();
            s.ships.push(Ship {
                id,
                owner: Owner::Client(c),
                transform: Transform {
                    x: i as f32 * 20.0 - 10.0,
                    y: 0.0,
                    angle: 0.0,
                },
                health: Some(Health { hp: 100 }),
                speed: 4.0,
                turn: 0.5,
                npc: false,
            });
        }
        for _ in 0..INITIAL_NPCS {
            s.spawn_npc(rng);
        }
        s
    }

    fn allocate(&mut self) -> EntityId {
        let id = EntityId(self.next_id);
        self.next_id += 1;
        id
    }

    fn spawn_npc(&mut self, rng: &mut GameRng) {
        let (transform, speed, turn) = game::npc_motion(rng, 100.0, -60.0);
        let id = self.allocate();
        self.ships.push(Ship {
            id,
            owner: Owner::Server,
            transform,
            health: Some(Health { hp: 100 }),
            speed,
            turn,
            npc: true,
        });
    }

    /// Indices of NPCs matching `pred`.
    fn pick(&self, rng: &mut GameRng, pred: impl Fn(&Ship) -> bool) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.ships.len())
            .filter(|&i| self.ships[i].npc && pred(&self.ships[i]))
            .collect();
        candidates.get(rng.below(candidates.len())).copied()
    }

    /// Advances one active tick (0-based `tick`): movement, then the tick's [`TickPlan`].
    pub fn step(&mut self, tick: u32, rng: &mut GameRng) {
        let dt = 1.0 / TICK_HZ as f32;
        for s in &mut self.ships {
            if s.npc && rng.chance(0.02) {
                s.turn = rng.range(-1.0, 1.0);
            }
            game::advance(&mut s.transform, s.speed, s.turn, dt);
        }

        let plan = TickPlan::draw(tick, rng);
        for _ in 0..plan.spawn {
            self.spawn_npc(rng);
            self.events.spawned += 1;
        }
        for _ in 0..plan.despawn {
            if let Some(i) = self.pick(rng, |_| true) {
                self.ships.remove(i);
                self.events.despawned += 1;
            }
        }
        if plan.damage > 0 {
            if let Some(i) = self.pick(rng, |s| s.health.is_some()) {
                let dead = self.ships[i].health.as_mut().is_some_and(|h| {
                    h.hp -= plan.damage;
                    h.hp <= 0
                });
                if dead {
                    self.ships.remove(i);
                    self.events.despawned += 1;
                }
            }
        }
        if plan.remove_health {
            if let Some(i) = self.pick(rng, |s| s.health.is_some()) {
                self.ships[i].health = None;
                self.events.health_removed += 1;
            }
        }
        if plan.restore_health {
            if let Some(i) = self.pick(rng, |s| s.health.is_none()) {
                self.ships[i].health = Some(Health { hp: 100 });
                self.events.health_restored += 1;
            }
        }
        if plan.hand_over {
            if let Some(s) = self.ships.iter_mut().find(|s| s.npc) {
                s.owner = game::next_owner(s.owner, &self.clients);
                self.events.owner_changes += 1;
            }
        }
    }
}

impl WorldSource for PlainServer {
    fn build(&self, builder: &mut SnapshotBuilder<'_>) {
        for s in &self.ships {
            let mut e = builder.entity(s.id, s.owner);
            e.component(&s.transform);
            if let Some(h) = &s.health {
                e.component(h);
            }
        }
    }
}

/// One entity as a client sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientShip {
    /// Its wire id.
    pub id: EntityId,
    /// Who may write it.
    pub owner: Owner,
    /// Its replicated transform, once received.
    pub transform: Option<Transform>,
    /// Its replicated hit points, if it has them.
    pub health: Option<Health>,
}

/// A client's world: [`ClientShip`]s sorted by id, kept up to date through [`WorldSink`].
#[derive(Debug, Clone)]
pub struct PlainClient {
    /// The entities, ascending by id.
    pub ships: Vec<ClientShip>,
    /// Changes that could not be applied; always 0 when the replicator and the sink agree.
    pub errors: u64,
}

impl Default for PlainClient {
    fn default() -> Self {
        Self::new()
    }
}

impl PlainClient {
    /// An empty world.
    #[must_use]
    pub fn new() -> Self {
        PlainClient {
            ships: Vec::new(),
            errors: 0,
        }
    }

    fn find(&mut self, id: EntityId) -> Option<&mut ClientShip> {
        match self.ships.binary_search_by_key(&id, |s| s.id) {
            Ok(i) => Some(&mut self.ships[i]),
            Err(_) => {
                self.errors += 1;
                None
            }
        }
    }
}

impl WorldSink for PlainClient {
    fn spawn(&mut self, id: EntityId, owner: Owner) {
        let ship = ClientShip {
            id,
            owner,
            transform: None,
            health: None,
        };
        match self.ships.binary_search_by_key(&id, |s| s.id) {
            Ok(i) => {
                self.ships[i] = ship;
                self.errors += 1;
            }
            Err(i) => self.ships.insert(i, ship),
        }
    }

    fn despawn(&mut self, id: EntityId) {
        match self.ships.binary_search_by_key(&id, |s| s.id) {
            Ok(i) => {
                self.ships.remove(i);
            }
            Err(_) => self.errors += 1,
        }
    }

    fn set_owner(&mut self, id: EntityId, owner: Owner) {
        if let Some(s) = self.find(id) {
            s.owner = owner;
        }
    }

    fn insert(&mut self, id: EntityId, component: ComponentView<'_>) {
        let Some(s) = self.find(id) else { return };
        if let Some(t) = component.get::<Transform>() {
            s.transform = Some(t);
        } else if let Some(h) = component.get::<Health>() {
            s.health = Some(h);
        } else {
            self.errors += 1;
        }
    }

    fn remove(&mut self, id: EntityId, component: ComponentView<'_>) {
        let Some(s) = self.find(id) else { return };
        if component.is::<Transform>() {
            s.transform = None;
        } else if component.is::<Health>() {
            s.health = None;
        } else {
            self.errors += 1;
        }
    }
}

/// Checks that `client`'s `Vec` holds exactly what `snapshot` (the server's quantized state)
/// says. Returns the first difference.
pub fn verify(
    registry: &Registry,
    snapshot: &Snapshot,
    client: &PlainClient,
) -> Result<(), String> {
    if client.ships.len() != snapshot.len() {
        return Err(format!(
            "{} entities on the client, {} in the server's snapshot",
            client.ships.len(),
            snapshot.len()
        ));
    }
    for (s, id) in client.ships.iter().zip(snapshot.entity_ids()) {
        if s.id != id {
            return Err(format!("{} on the client where the server has {id}", s.id));
        }
        let want = ClientShip {
            id,
            owner: snapshot.owner(id).unwrap_or_default(),
            transform: snapshot.component::<Transform>(registry, id),
            health: snapshot.component::<Health>(registry, id),
        };
        if *s != want {
            return Err(format!("{id}: {s:?} on the client, {want:?} on the server"));
        }
    }
    Ok(())
}

/// A client with its replicator and world.
struct Peer {
    id: ClientId,
    repl: ClientReplicator,
    world: PlainClient,
    summary: ClientSummary,
    /// Packets sent to this client and acks it sent, to drop every [`DROP_EVERY`]-th.
    down: u64,
    up: u64,
}

/// Runs `ticks` active ticks and [`QUIET_TICKS`] quiet ones with [`CLIENTS`] clients, handing
/// packets over directly and dropping every [`DROP_EVERY`]-th one each way, then checks every
/// client against the server (see [`verify`]).
pub fn run(seed: u64, ticks: u32) -> Result<Summary, RunError> {
    let registry = game::registry()?;
    let ids: Vec<ClientId> = (1..=CLIENTS).map(ClientId).collect();
    let mut server = ServerReplicator::new(ServerConfig::default());
    let mut store = Store::new(registry.clone(), StoreConfig::default());
    let mut peers = Vec::new();
    for &id in &ids {
        server.add_client(id)?;
        peers.push(Peer {
            id,
            repl: ClientReplicator::new(ClientConfig::default()),
            world: PlainClient::new(),
            summary: ClientSummary {
                client: id,
                applied: 0,
                stale: 0,
                decode_errors: 0,
                sink_errors: 0,
                bytes_received: 0,
                matched_after: None,
            },
            down: 0,
            up: 0,
        });
    }

    let mut rng = GameRng::new(seed);
    let mut game = PlainServer::new(&ids, &mut rng);
    let mut builder = SnapshotBuilder::new(&registry);
    let mut snapshot = Snapshot::new();
    let mut packet = Vec::new();
    let (mut packets_sent, mut packets_lost, mut acks_sent, mut acks_lost) = (0, 0, 0, 0);

    for t in 0..ticks + QUIET_TICKS {
        let active = t < ticks;
        if active {
            game.step(t, &mut rng);
        }
        game.build(&mut builder);
        builder.finish_into(&mut snapshot)?;
        store.begin_tick(Tick(t + 1))?;
        store.apply_snapshot(&snapshot)?;
        server.update(&mut store, None);
        for p in &mut peers {
            packet.clear();
            server.encode_for(&store, p.id, &mut packet)?;
            packets_sent += 1;
            p.down += 1;
            if p.down % DROP_EVERY == 0 {
                packets_lost += 1;
            } else {
                // "The network": the client gets the server's bytes as they are.
                p.summary.bytes_received += packet.len() as u64;
                match p.repl.handle_packet(&registry, &packet, &mut p.world) {
                    Ok(Applied::Applied(_)) => p.summary.applied += 1,
                    Ok(_) => p.summary.stale += 1,
                    Err(_) => p.summary.decode_errors += 1,
                }
            }
            if let Some(ack) = p.repl.ack() {
                let bytes = ack.encode();
                acks_sent += 1;
                p.up += 1;
                if p.up % DROP_EVERY == 0 {
                    acks_lost += 1;
                } else {
                    if let Some(ack) = AckFrame::decode(&bytes) {
                        server.handle_ack(p.id, ack)?;
                    }
                }
            }
            if !active && p.summary.matched_after.is_none() && p.repl.snapshot() == snapshot {
                p.summary.matched_after = Some(t - ticks + 1);
            }
        }
    }

    for p in &mut peers {
        p.summary.sink_errors = p.world.errors;
        let diverged = |detail: String| RunError::Diverged {
            seed,
            client: p.id,
            detail,
        };
        netsim_run::check_client(&p.repl.snapshot(), &snapshot, "Vec", p.world.errors)
            .map_err(diverged)?;
        verify(&registry, &snapshot, &p.world).map_err(diverged)?;
    }

    Ok(Summary {
        example: "plain_vec",
        seed,
        link: format!(
            "none (bytes handed over directly, 1 packet in {DROP_EVERY} dropped each way)"
        ),
        ticks,
        quiet_ticks: QUIET_TICKS,
        entities: game.ships.len(),
        events: game.events,
        packets_sent,
        packets_lost,
        acks_sent,
        acks_lost,
        clients: peers.into_iter().map(|p| p.summary).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_reports_a_tampered_client() {
        let registry = game::registry().unwrap();
        let mut b = SnapshotBuilder::new(&registry);
        PlainServer::new(&[ClientId(1)], &mut GameRng::new(1)).build(&mut b);
        let snapshot = b.finish().unwrap();
        let mut client = PlainClient::new();
        Snapshot::new().diff_into(&snapshot, &registry, &mut client);
        verify(&registry, &snapshot, &client).unwrap();
        client.ships[3].owner = Owner::Client(ClientId(1));
        let err = verify(&registry, &snapshot, &client).unwrap_err();
        assert!(err.starts_with("e3:"), "{err}");
    }
}
