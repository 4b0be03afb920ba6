//! statewire over the [hecs](https://docs.rs/hecs) ECS, through the `statewire-hecs` adapter: a
//! server `hecs::World` tells the server's [`Store`] what changed each tick
//! ([`HecsReplication::sync`]), and each client's own `hecs::World` receives the replicated
//! state through a [`HecsSink`], over loopback wrapped in netsim with the `poor` profile.
//!
//! # Mapping entities
//!
//! statewire names entities with [`EntityId`]s that the game chooses. On the server each
//! replicated entity carries a [`NetId`] allocated from a counter and a [`NetOwner`]; entities
//! without a [`NetId`] (here a [`SpawnPoint`]) are simply not replicated. Clients find their
//! `hecs::Entity` for an id in their [`HecsSink`], and the [`NetId`] is on the entity too.
//!
//! # Components
//!
//! [`Transform`] and [`Health`] are replicated (registered with
//! [`HecsReplication::component`]); [`Velocity`] and the [`Npc`] marker exist only on the
//! server.
//!
//! # Finding what changed
//!
//! The adapter keeps one `hecs::ChangeTracker` per tracked type (see the `statewire_hecs`
//! docs), so the game systems mutate the world as they like and report nothing. Despawns go
//! through [`HecsReplication::despawn`], which notes the [`NetId`] so the sync need not look
//! for it (one made behind its back is still found, at the cost of a walk over the
//! replicated entities).
//!
//! [`WorldSource`] over the whole world, written here independently of the adapter, remains for
//! the end-of-run check that the store missed no change.
use std::fmt;

use statewire_core::{
    ClientId, EntityId, Owner, Registry, Snapshot, SnapshotBuilder, Store, StoreError, WorldSource,
};
pub use statewire_hecs::{HecsReplication, HecsSink, NetId, NetOwner};

use crate::game::{self, GameEvents, GameRng, Health, INITIAL_NPCS, TICK_HZ, TickPlan, Transform};
use crate::{RunError, Summary};

use crate::netsim_run::{self, Engine};
pub use crate::netsim_run::{CLIENTS, PROFILE, QUIET_TICKS};

/// Server-only: how an entity moves, in m/s and rad/s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Velocity {
    /// Forward speed.
    pub speed: f32,
    /// Turn rate.
    pub turn: f32,
}

/// Server-only marker: an NPC, moved by the server's wandering AI (players are not NPCs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Npc;

/// Server-only marker of the entity NPC waves spawn around. It has a [`Transform`] but no
/// [`NetId`], so it is never replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpawnPoint;

/// The replicated components, as both sides register them (the same ids as
/// [`game::registry`]).
///
/// # Panics
///
/// Never: the game's schemas are valid.
#[must_use]
pub fn replication() -> HecsReplication {
    let registry = game::registry().expect("the game's schemas are valid");
    HecsReplication::with_registry(registry)
        .component::<Transform>()
        .and_then(|r| r.component::<Health>())
        .expect("already registered")
}

/// The server's game: a hecs world, the counter [`NetId`]s come from, and the adapter that
/// finds the world's changes.
pub struct HecsServer {
    /// The authoritative world. Despawn replicated entities through [`HecsServer::despawn`];
    /// every other change is found by the adapter's trackers.
    pub world: hecs::World,
    replication: HecsReplication,
    clients: Vec<ClientId>,
    next_id: u32,
    /// What changed so far.
    pub events: GameEvents,
}

impl HecsServer {
    /// A world with a spawn point, one player per client and [`INITIAL_NPCS`] NPCs.
    pub fn new(clients: &[ClientId], rng: &mut GameRng) -> Self {
        let mut s = HecsServer {
            world: hecs::World::new(),
            replication: replication(),
            clients: clients.to_vec(),
            next_id: 0,
            events: GameEvents::default(),
        };
        s.world.spawn((
            SpawnPoint,
            Transform {
                x: 100.0,
                y: -60.0,
                angle: 0.0,
            },
        ));
        for (i, &c) in clients.iter().enumerate() {
            let id = s.allocate();
            let t = Transform {
                x: i as f32 * 20.0 - 10.0,
                y: 0.0,
                angle: 0.0,
            };
            let v = Velocity {
                speed: 4.0,
                turn: 0.5,
            };
            s.world
                .spawn((id, NetOwner(Owner::Client(c)), t, v, Health { hp: 100 }));
        }
        for _ in 0..INITIAL_NPCS {
            s.spawn_npc(rng);
        }
        s
    }

    fn allocate(&mut self) -> NetId {
        let id = NetId(EntityId(self.next_id));
        self.next_id += 1;
        id
    }

    fn spawn_npc(&mut self, rng: &mut GameRng) {
        let (x, y) = self
            .world
            .query::<&Transform>()
            .with::<&SpawnPoint>()
            .iter()
            .next()
            .map_or((0.0, 0.0), |t| (t.x, t.y));
        let (t, speed, turn) = game::npc_motion(rng, x, y);
        let id = self.allocate();
        self.world.spawn((
            id,
            NetOwner(Owner::Server),
            t,
            Velocity { speed, turn },
            Health { hp: 100 },
            Npc,
        ));
    }

    /// NPCs matching query filter `F`, sorted by [`NetId`] so random picks do not depend on
    /// hecs's storage order.
    fn npcs<F: hecs::Query>(&self) -> Vec<(NetId, hecs::Entity)> {
        let mut v: Vec<_> = self
            .world
            .query::<(hecs::Entity, &NetId)>()
            .with::<(&Npc, F)>()
            .iter()
            .map(|(e, id)| (*id, e))
            .collect();
        v.sort_unstable_by_key(|&(id, _)| id);
        v
    }

    fn npcs_without_health(&self) -> Vec<(NetId, hecs::Entity)> {
        let mut v: Vec<_> = self
            .world
            .query::<(hecs::Entity, &NetId)>()
            .with::<&Npc>()
            .without::<&Health>()
            .iter()
            .map(|(e, id)| (*id, e))
            .collect();
        v.sort_unstable_by_key(|&(id, _)| id);
        v
    }

    /// Despawns `e` through the adapter, which notes its [`NetId`] for the next sync.
    pub fn despawn(&mut self, e: hecs::Entity) {
        if self.replication.despawn(&mut self.world, e) {
            self.events.despawned += 1;
        }
    }

    /// Advances one active tick (0-based `tick`): movement, then the tick's [`TickPlan`].
    pub fn step(&mut self, tick: u32, rng: &mut GameRng) {
        let dt = 1.0 / TICK_HZ as f32;
        for (t, v) in self
            .world
            .query_mut::<(&mut Transform, &mut Velocity)>()
            .with::<&Npc>()
        {
            if rng.chance(0.02) {
                v.turn = rng.range(-1.0, 1.0);
            }
            game::advance(t, v.speed, v.turn, dt);
        }
        for (t, v) in self
            .world
            .query_mut::<(&mut Transform, &Velocity)>()
            .without::<&Npc>()
        {
            game::advance(t, v.speed, v.turn, dt);
        }

        let plan = TickPlan::draw(tick, rng);
        for _ in 0..plan.spawn {
            self.spawn_npc(rng);
            self.events.spawned += 1;
        }
        for _ in 0..plan.despawn {
            let npcs = self.npcs::<()>();
            if let Some(&(_, e)) = npcs.get(rng.below(npcs.len())) {
                self.despawn(e);
            }
        }
        if plan.damage > 0 {
            let hurt = self.npcs::<&Health>();
            if let Some(&(_, e)) = hurt.get(rng.below(hurt.len())) {
                let dead = self.world.get::<&mut Health>(e).is_ok_and(|mut h| {
                    h.hp -= plan.damage;
                    h.hp <= 0
                });
                if dead {
                    self.despawn(e);
                }
            }
        }
        if plan.remove_health {
            let with = self.npcs::<&Health>();
            if let Some(&(_, e)) = with.get(rng.below(with.len()))
                && self.world.remove_one::<Health>(e).is_ok()
            {
                self.events.health_removed += 1;
            }
        }
        if plan.restore_health {
            let without = self.npcs_without_health();
            if let Some(&(_, e)) = without.get(rng.below(without.len()))
                && self.world.insert_one(e, Health { hp: 100 }).is_ok()
            {
                self.events.health_restored += 1;
            }
        }
        if plan.hand_over
            && let Some(&(_, e)) = self.npcs::<()>().first()
            && let Ok(mut owner) = self.world.get::<&mut NetOwner>(e)
        {
            owner.0 = game::next_owner(owner.0, &self.clients);
            self.events.owner_changes += 1;
        }
    }

    /// Applies to `store` what changed in the world since the last call (on the first call:
    /// everything), for a tick the caller has started with [`Store::begin_tick`].
    pub fn sync(&mut self, store: &mut Store) -> Result<(), StoreError> {
        self.replication.sync(&mut self.world, store).map(|_| ())
    }

    /// Number of replicated entities (those with a [`NetId`]).
    #[must_use]
    pub fn replicated_len(&self) -> usize {
        self.world.query::<&NetId>().iter().count()
    }
}

// `hecs::World` has no `Debug`; show its size.
impl fmt::Debug for HecsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HecsServer")
            .field("entities", &self.world.len())
            .field("next_id", &self.next_id)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// The whole world as a snapshot; the runner uses it only to check that the store missed
/// nothing.
impl WorldSource for HecsServer {
    fn build(&self, builder: &mut SnapshotBuilder<'_>) {
        // One query per snapshot; the builder sorts, so hecs's archetype order does not matter.
        // `Velocity`, `Npc` and entities without a `NetId` are left out.
        for (id, owner, t, health) in self
            .world
            .query::<(&NetId, &NetOwner, &Transform, Option<&Health>)>()
            .iter()
        {
            let mut e = builder.entity(id.0, owner.0);
            e.component(t);
            if let Some(h) = health {
                e.component(h);
            }
        }
    }
}

/// Checks that `client` holds exactly what `snapshot` (the server's quantized state) says, by
/// walking the client's hecs world, and that each replicated [`Transform`] is within half a
/// quantization step of the server's own unquantized one. Returns the first difference.
pub fn verify(
    registry: &Registry,
    snapshot: &Snapshot,
    server: &HecsServer,
    client: &HecsSink,
) -> Result<(), String> {
    let mut query = client.world().query::<(
        hecs::Entity,
        &NetId,
        &NetOwner,
        Option<&Transform>,
        Option<&Health>,
    )>();
    let entries = query
        .iter()
        .map(|(e, id, owner, t, h)| (id.0, (e, owner.0, t.copied(), h.copied())));
    let mut server_query = server.world.query::<(&NetId, &Transform)>();
    netsim_run::verify_client_world(
        "hecs",
        "NetOwner",
        registry,
        snapshot,
        entries,
        client.world().len() as usize,
        |id| client.entity(id),
        server_query.iter().map(|(id, t)| (id.0, *t)),
    )
}

/// Runs `ticks` active ticks and [`QUIET_TICKS`] quiet ones with [`CLIENTS`] clients over
/// loopback + netsim ([`PROFILE`]), all randomness drawn from `seed`, then checks every client
/// against the server (see [`verify`]).
///
/// Snapshots travel server → client as the replicator's packets, unframed; acks travel back as
/// the acknowledged tick in 4 little-endian bytes. Both directions are impaired.
pub fn run(seed: u64, ticks: u32) -> Result<Summary, RunError> {
    netsim_run::run::<HecsServer>(seed, ticks)
}

impl Engine for HecsServer {
    type Client = HecsSink;
    const EXAMPLE: &'static str = "hecs_world";
    const WORLD: &'static str = "hecs";
    fn new(clients: &[ClientId], rng: &mut GameRng) -> Self {
        HecsServer::new(clients, rng)
    }
    fn step(&mut self, tick: u32, rng: &mut GameRng) {
        HecsServer::step(self, tick, rng);
    }
    fn sync(&mut self, store: &mut Store) -> Result<(), StoreError> {
        HecsServer::sync(self, store)
    }
    fn build(&mut self, builder: &mut SnapshotBuilder<'_>) {
        WorldSource::build(self, builder);
    }
    fn replicated_len(&mut self) -> usize {
        HecsServer::replicated_len(self)
    }
    fn events(&self) -> GameEvents {
        self.events
    }
    fn client(&self) -> HecsSink {
        self.replication.sink()
    }
    fn client_errors(client: &HecsSink) -> u64 {
        client.errors()
    }
    fn verify(
        &self,
        registry: &Registry,
        snapshot: &Snapshot,
        client: &HecsSink,
    ) -> Result<(), String> {
        verify(registry, snapshot, self, client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use statewire_core::{
        ClientConfig, ClientReplicator, ServerConfig, ServerReplicator, Store, StoreConfig, Tick,
    };

    /// A fresh one-client game (the same world every time).
    fn new_game() -> HecsServer {
        HecsServer::new(&[ClientId(1)], &mut GameRng::new(3))
    }

    /// Syncs `game` into a new store and sends it to a new client in one packet. The game's
    /// trackers then have nothing left to report, so each call needs a game never synced.
    fn replicate_once(game: &mut HecsServer, registry: &Registry) -> (Snapshot, HecsSink) {
        let mut store = Store::new(registry.clone(), StoreConfig::default());
        store.begin_tick(Tick(1)).unwrap();
        game.sync(&mut store).unwrap();
        let snapshot = store.snapshot();
        let mut b = SnapshotBuilder::new(registry);
        game.build(&mut b);
        assert_eq!(snapshot, b.finish().unwrap(), "the store is the world");
        let mut server = ServerReplicator::new(ServerConfig::default());
        server.add_client(ClientId(1)).unwrap();
        server
            .set_packet_budget(ClientId(1), Some(1 << 20))
            .unwrap();
        server.update(&mut store, None);
        let mut packet = Vec::new();
        server.encode_for(&store, ClientId(1), &mut packet).unwrap();
        let mut repl = ClientReplicator::new(ClientConfig::default());
        let mut client = game.client();
        repl.handle_packet(registry, &packet, &mut client).unwrap();
        assert_eq!(repl.snapshot(), snapshot);
        (snapshot, client)
    }

    #[test]
    fn one_packet_fills_the_client_world_and_skips_server_only_state() {
        let registry = game::registry().unwrap();
        let mut game = new_game();
        let (snapshot, client) = replicate_once(&mut game, &registry);
        verify(&registry, &snapshot, &game, &client).unwrap();
        // The spawn point has no NetId; NPC markers and velocities stay on the server.
        assert_eq!(client.world().len() as usize, game.world.len() as usize - 1);
        assert_eq!(client.world().query::<&Npc>().iter().count(), 0);
        assert_eq!(client.world().query::<&Velocity>().iter().count(), 0);
        assert_eq!(client.errors(), 0);
    }

    #[test]
    fn the_store_matches_the_world_after_every_tick() {
        let mut rng = GameRng::new(11);
        let mut game = HecsServer::new(&[ClientId(1), ClientId(2)], &mut rng);
        netsim_run::assert_store_tracks_world(
            &mut game,
            &mut rng,
            300,
            |g, t, rng| g.step(t, rng),
            HecsServer::sync,
            |g, b| g.build(b),
        );
        let e = game.events;
        assert!(e.despawned > 0 && e.health_removed > 0 && e.health_restored > 0);
        assert!(e.owner_changes > 0);
    }

    #[test]
    fn a_despawn_behind_the_adapters_back_still_reaches_the_store() {
        // Despawns go through `HecsServer::despawn` so the adapter need not look for them; one
        // made directly on the world is found by the adapter's NetId count (and a walk).
        let registry = game::registry().unwrap();
        let mut game = new_game();
        let mut store = Store::new(registry.clone(), StoreConfig::default());
        store.begin_tick(Tick(1)).unwrap();
        game.sync(&mut store).unwrap();
        let (id, e) = game.npcs::<()>()[0];
        game.world.despawn(e).unwrap();
        store.begin_tick(Tick(2)).unwrap();
        game.sync(&mut store).unwrap();
        assert!(!store.contains(id.0));
        let mut b = SnapshotBuilder::new(&registry);
        game.build(&mut b);
        netsim_run::check_store(&registry, &store, &b.finish().unwrap()).unwrap();
    }

    #[test]
    fn the_adapter_registers_the_games_components_in_order() {
        assert_eq!(
            replication().registry().fingerprint(),
            game::registry().unwrap().fingerprint()
        );
    }

    #[test]
    fn verify_reports_a_tampered_client() {
        let registry = game::registry().unwrap();

        let mut game = new_game();
        let (snapshot, client) = replicate_once(&mut game, &registry);
        let e = client.entity(EntityId(5)).unwrap();
        client.world().get::<&mut Transform>(e).unwrap().x += 1.0;
        let err = verify(&registry, &snapshot, &game, &client).unwrap_err();
        assert!(err.starts_with("e5: transform"), "{err}");

        let mut game = new_game();
        let (snapshot, mut client) = replicate_once(&mut game, &registry);
        let e = client.entity(EntityId(7)).unwrap();
        client.world_mut().remove_one::<Health>(e).unwrap();
        let err = verify(&registry, &snapshot, &game, &client).unwrap_err();
        assert!(err.starts_with("e7: health"), "{err}");

        let mut game = new_game();
        let (snapshot, mut client) = replicate_once(&mut game, &registry);
        client
            .world_mut()
            .spawn((NetId(EntityId(999)), NetOwner(Owner::Server)));
        let err = verify(&registry, &snapshot, &game, &client).unwrap_err();
        assert!(err.contains("only on the client [EntityId(999)]"), "{err}");
    }
}
