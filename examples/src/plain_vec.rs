//! statewire with nothing but the core: the world is a `Vec` of structs on each side, and
//! packets are byte slices handed from the server to the clients and back within the same tick,
//! with every third packet in each direction dropped.
//!
//! No ECS, no transport and no clock are needed. [`WorldSink`] keeps each client's `Vec` sorted
//! by [`EntityId`] (changes for one snapshot arrive in id order, so a binary search finds every
//! entity).
//!
//! # Telling the store what changed
//!
//! The server's replicator reads from a [`Store`], and its work per tick grows with the number
//! of changes the store is told about. A `Vec` has no change detection, so the game keeps it
//! by hand: every place in [`PlainServer::step`] that touches a ship also notes the ship's id
//! (in a list of dirty ids, or of despawned ids), and [`PlainServer::sync`] applies just those
//! ships to the store once per tick. Re-sending a ship's unchanged fields is harmless: the store
//! ignores a value that quantizes to what it already holds, so noting a whole ship as dirty is
//! simpler than noting which field changed, and costs one comparison per field.
//!
//! [`WorldSource`] (a loop over the whole `Vec`) is kept only for the end-of-run check that the
//! store missed no change.

use statewire_core::{
    AckFrame, Applied, ClientConfig, ClientId, ClientReplicator, ComponentView, EntityId, Owner,
    Registry, ServerConfig, ServerReplicator, Snapshot, SnapshotBuilder, Store, StoreConfig,
    StoreError, Tick, WorldSink, WorldSource,
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

/// The server's game: a `Vec` of [`Ship`]s, in id order, and the ids of the ships changed
/// since the last [`sync`](Self::sync).
///
/// Change `ships` only through [`step`](Self::step) (or note the change yourself): a change the
/// dirty lists do not name never reaches the store.
#[derive(Debug, Clone)]
pub struct PlainServer {
    /// The authoritative world. Ids are allocated in increasing order and ships are appended,
    /// and removing keeps the order, so it stays sorted by id.
    pub ships: Vec<Ship>,
    clients: Vec<ClientId>,
    next_id: u32,
    /// Ships spawned or changed since the last sync, possibly repeated (a ship that moved and
    /// was damaged is noted twice).
    dirty: Vec<EntityId>,
    /// Ships removed since the last sync.
    despawned: Vec<EntityId>,
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
            dirty: Vec::new(),
            despawned: Vec::new(),
            events: GameEvents::default(),
        };
        for (i, &c) in clients.iter().enumerate() {
            let id = s.allocate();
            s.dirty.push(id);
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
        // A ship the store has not seen yet: the next sync spawns it.
        self.dirty.push(id);
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

    /// Removes the ship at index `i`, noting it for the next sync.
    fn remove(&mut self, i: usize) {
        let ship = self.ships.remove(i);
        self.despawned.push(ship.id);
        self.events.despawned += 1;
    }

    /// Index of a random NPC matching `pred`.
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
            // Everything moves every active tick. (`speed` and `turn` are not replicated, so
            // changing them alone would not need a note.)
            self.dirty.push(s.id);
        }

        let plan = TickPlan::draw(tick, rng);
        for _ in 0..plan.spawn {
            self.spawn_npc(rng);
            self.events.spawned += 1;
        }
        for _ in 0..plan.despawn {
            if let Some(i) = self.pick(rng, |_| true) {
                self.remove(i);
            }
        }
        if plan.damage > 0
            && let Some(i) = self.pick(rng, |s| s.health.is_some())
        {
            let dead = self.ships[i].health.as_mut().is_some_and(|h| {
                h.hp -= plan.damage;
                h.hp <= 0
            });
            if dead {
                self.remove(i);
            } else {
                self.dirty.push(self.ships[i].id);
            }
        }
        if plan.remove_health
            && let Some(i) = self.pick(rng, |s| s.health.is_some())
        {
            self.ships[i].health = None;
            self.dirty.push(self.ships[i].id);
            self.events.health_removed += 1;
        }
        if plan.restore_health
            && let Some(i) = self.pick(rng, |s| s.health.is_none())
        {
            self.ships[i].health = Some(Health { hp: 100 });
            self.dirty.push(self.ships[i].id);
            self.events.health_restored += 1;
        }
        if plan.hand_over
            && let Some(s) = self.ships.iter_mut().find(|s| s.npc)
        {
            s.owner = game::next_owner(s.owner, &self.clients);
            self.dirty.push(s.id);
            self.events.owner_changes += 1;
        }
    }

    /// Applies the ships changed since the last call to `store` (on the first call: all of
    /// them), for a tick the caller has started with [`Store::begin_tick`].
    ///
    /// Each noted ship is written whole (owner, transform, health or its absence); the store
    /// records only the parts that differ from what it holds.
    pub fn sync(&mut self, store: &mut Store) -> Result<(), StoreError> {
        for id in self.despawned.drain(..) {
            // A ship spawned and destroyed within one tick never reached the store.
            if store.contains(id) {
                store.despawn(id)?;
            }
        }
        self.dirty.sort_unstable();
        self.dirty.dedup();
        for id in self.dirty.drain(..) {
            // `ships` is sorted by id. A miss is a ship that changed and was then removed in the
            // same tick: its despawn is already handled above.
            let Ok(i) = self.ships.binary_search_by_key(&id, |s| s.id) else {
                continue;
            };
            let s = &self.ships[i];
            if store.contains(id) {
                store.set_owner(id, s.owner)?;
            } else {
                store.spawn(id, s.owner)?;
            }
            store.set(id, &s.transform)?;
            match &s.health {
                Some(h) => store.set(id, h)?,
                None => store.remove::<Health>(id)?,
            }
        }
        Ok(())
    }
}

/// The whole world as a snapshot; [`run`] uses it only to check that the store missed nothing.
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
    let mut packet = Vec::new();
    let (mut packets_sent, mut packets_lost, mut acks_sent, mut acks_lost) = (0, 0, 0, 0);

    for t in 0..ticks + QUIET_TICKS {
        let active = t < ticks;
        if active {
            game.step(t, &mut rng);
        }
        // Only the ships the step noted reach the store; in the quiet ticks that is none.
        store.begin_tick(Tick(t + 1))?;
        game.sync(&mut store)?;
        server.update(&mut store, None);
        // The server's whole state, to see when each client first matches it; rebuilding it
        // walks the store, so only while some client has yet to match in the quiet period.
        let server_state = (!active && peers.iter().any(|p| p.summary.matched_after.is_none()))
            .then(|| store.snapshot());
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
            if p.summary.matched_after.is_none()
                && server_state
                    .as_ref()
                    .is_some_and(|state| p.repl.snapshot() == *state)
            {
                p.summary.matched_after = Some(t - ticks + 1);
            }
        }
    }

    // The store was only told about the ships the game noted; check that it missed none
    // against a snapshot rebuilt from the whole `Vec`. Then compare the clients with the store,
    // which is what the replicator sent from.
    let mut builder = SnapshotBuilder::new(&registry);
    game.build(&mut builder);
    let rebuilt = builder.finish()?;
    netsim_run::check_store(&registry, &store, &rebuilt)
        .map_err(|detail| RunError::StoreOutOfSync { seed, detail })?;
    let snapshot = store.snapshot();
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
    fn the_store_matches_the_vec_after_every_tick() {
        let mut rng = GameRng::new(11);
        let mut game = PlainServer::new(&[ClientId(1), ClientId(2)], &mut rng);
        netsim_run::assert_store_tracks_world(
            &mut game,
            &mut rng,
            300,
            |g, t, rng| g.step(t, rng),
            PlainServer::sync,
            |g, b| g.build(b),
        );
        let e = game.events;
        assert!(e.despawned > 0 && e.health_removed > 0 && e.health_restored > 0);
        assert!(e.owner_changes > 0);
    }

    #[test]
    fn a_change_nobody_noted_is_caught() {
        // Why every change goes through `step`: the store never hears of one that is not noted,
        // and only the comparison with the whole world finds it.
        let registry = game::registry().unwrap();
        let mut game = PlainServer::new(&[ClientId(1)], &mut GameRng::new(1));
        let mut store = Store::new(registry.clone(), StoreConfig::default());
        store.begin_tick(Tick(1)).unwrap();
        game.sync(&mut store).unwrap();
        game.ships[4].owner = Owner::Client(ClientId(1));
        store.begin_tick(Tick(2)).unwrap();
        game.sync(&mut store).unwrap();
        let mut b = SnapshotBuilder::new(&registry);
        game.build(&mut b);
        let err = netsim_run::check_store(&registry, &store, &b.finish().unwrap()).unwrap_err();
        assert!(err.contains("e4:"), "{err}");
    }

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
