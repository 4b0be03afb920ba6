//! The small deterministic game `statewire sim` plays: players steered by bots and enemies
//! that wander, on a square arena.

use std::f32::consts::TAU;

use statewire_core::{
    ClientId, ComponentCoding, ComponentView, EntityId, EventSink, GameEvent, Owner, Registry,
    Replicate, ReplicateEnum, SchemaError, SnapshotBuilder, WorldSink, WorldSource,
};
use statewire_transport::netsim::SimRng;

/// Largest half-side of the arena, in metres (positions are quantized over ±512 m).
const MAX_ARENA: f32 = 500.0;
/// Simulation rate.
pub(crate) const TICK_HZ: u32 = 30;
const PLAYER_SPEED: f32 = 5.0;
/// How far a shot reaches, in metres (the server checks it; bots aim a little shorter).
pub(crate) const SHOT_RANGE: f32 = 40.0;
/// Event kind: a player killed an enemy; entities = [shooter's player, enemy].
pub(crate) const KILL: u16 = 1;
const ENEMY_SPEED: f32 = 1.5;
/// Fastest anything moves, metres per second (a remote entity shown moving faster jumped).
pub(crate) const MAX_SPEED: f32 = PLAYER_SPEED;
/// Enemies' radius as a target, metres.
pub(crate) const ENEMY_RADIUS: f32 = 0.75;
/// Players' radius, metres.
pub(crate) const PLAYER_RADIUS: f32 = 0.5;
/// Position quantum (the replicated precision): the game keeps positions on this grid, so
/// what a client receives is exactly the server's state and replaying inputs from it
/// reproduces the server bit for bit.
const GRID: f32 = 64.0;

/// Position on the arena floor, 1/64 m steps.
#[derive(Debug, Clone, Copy, PartialEq, Replicate)]
pub(crate) struct Position {
    #[replicate(float(min = -512.0, max = 512.0, precision = 1.0 / 64.0))]
    pub(crate) x: f32,
    #[replicate(float(min = -512.0, max = 512.0, precision = 1.0 / 64.0))]
    pub(crate) y: f32,
}

/// Facing angle in radians, 256 steps per turn.
#[derive(Debug, Clone, Copy, PartialEq, Replicate)]
pub(crate) struct Facing(
    #[replicate(float(min = 0.0, max = TAU, precision = TAU / 256.0), name = "angle")]
    pub(crate)  f32,
);

/// What an entity is, and its health.
#[derive(Debug, Clone, Copy, PartialEq, Replicate)]
pub(crate) struct Body {
    #[replicate(enumeration)]
    pub(crate) kind: Kind,
    #[replicate(int(min = 0, max = 100))]
    pub(crate) hp: i64,
}

/// Entity kinds (replicated as variant 0 and 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ReplicateEnum)]
pub(crate) enum Kind {
    Player,
    Enemy,
}

/// The component registry both sides of the sim use; `coding` applies to the components that
/// change often (position and facing).
pub(crate) fn registry(coding: ComponentCoding) -> Result<Registry, SchemaError> {
    let mut r = Registry::new();
    r.register::<Position>()?;
    r.register::<Facing>()?;
    r.register::<Body>()?;
    r.set_coding::<Position>(coding)?;
    r.set_coding::<Facing>(coding)?;
    Ok(r)
}

/// A bot's steering input: a direction on 8 bits per axis (−127..=127), zero to stand still.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Input {
    pub(crate) dx: i8,
    pub(crate) dy: i8,
}

#[derive(Debug, Clone)]
struct Actor {
    id: EntityId,
    owner: Owner,
    pos: Position,
    facing: f32,
    body: Body,
    /// Enemies: metres per second along `facing`, 0 while idle.
    speed: f32,
    /// With a fixed number of moving enemies: whether this one walks every tick.
    mobile: bool,
}

/// What changed in the game since the server last copied it into its replication store, in
/// order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// The entity appeared.
    Spawn(EntityId),
    /// The entity is gone.
    Despawn(EntityId),
    /// Some of its components (or its position) may have changed.
    Update(EntityId),
}

/// One entity's replicated state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ActorState {
    pub(crate) owner: Owner,
    pub(crate) pos: Position,
    pub(crate) facing: Facing,
    pub(crate) body: Body,
}

/// The server's game state.
#[derive(Debug)]
pub(crate) struct Game {
    actors: Vec<Actor>,
    /// Index of each entity in `actors`.
    index: hashbrown::HashMap<EntityId, usize>,
    /// Changes not yet taken by [`Game::take_changes`].
    changes: Vec<Change>,
    /// `Some(n)`: exactly `n` enemies walk every tick and the others stand still; `None`: each
    /// enemy starts and stops walking at random (about a fifth walk at once).
    moving: Option<usize>,
    players: Vec<(ClientId, EntityId)>,
    next_id: u32,
    /// Half the arena's side: scaled with the enemy count so density (and so the chance of a
    /// target in range) stays the same, about one enemy per 256 m².
    arena: f32,
    rng: SimRng,
}

impl Game {
    /// `enemies` wandering enemies (entity ids `0..enemies`) and no players yet. With
    /// `moving = Some(n)`, the first `n` enemies (at most all) walk every tick and the others
    /// never do; with `None` each wanders at random.
    pub(crate) fn new(enemies: usize, seed: u64, moving: Option<usize>) -> Game {
        let mut rng = SimRng::new(seed ^ 0x6761_6d65);
        let mut actors = Vec::with_capacity(enemies);
        let arena = Self::arena_for(enemies);
        while actors.len() < enemies {
            let id = EntityId(actors.len() as u32);
            let x = uniform(&mut rng, -arena, arena);
            let y = uniform(&mut rng, -arena, arena);
            let mobile = moving.is_some_and(|n| actors.len() < n);
            actors.push(Actor {
                id,
                owner: Owner::Server,
                pos: snap(Position { x, y }),
                facing: uniform(&mut rng, 0.0, TAU),
                body: Body {
                    kind: Kind::Enemy,
                    hp: 100,
                },
                speed: if mobile { ENEMY_SPEED } else { 0.0 },
                mobile,
            });
        }
        let index = actors.iter().enumerate().map(|(i, a)| (a.id, i)).collect();
        let changes = actors.iter().map(|a| Change::Spawn(a.id)).collect();
        Game {
            next_id: actors.len() as u32,
            arena,
            actors,
            index,
            changes,
            moving,
            players: Vec::new(),
            rng,
        }
    }

    /// Half the side of the arena a game with `enemies` enemies plays on, in metres.
    pub(crate) fn arena_for(enemies: usize) -> f32 {
        (8.0 * (enemies as f32).sqrt()).clamp(40.0, MAX_ARENA)
    }

    /// Takes the changes since the last call (oldest first) into `out` (cleared first).
    pub(crate) fn take_changes(&mut self, out: &mut Vec<Change>) {
        out.clear();
        std::mem::swap(out, &mut self.changes);
    }

    /// The replicated state of entity `id`.
    pub(crate) fn state(&self, id: EntityId) -> Option<ActorState> {
        let a = self.actor(id)?;
        Some(ActorState {
            owner: a.owner,
            pos: a.pos,
            facing: Facing(a.facing),
            body: a.body,
        })
    }

    /// Every entity's replicated state, in no particular order.
    pub(crate) fn states(&self) -> impl Iterator<Item = (EntityId, ActorState)> + '_ {
        self.actors
            .iter()
            .filter_map(|a| Some((a.id, self.state(a.id)?)))
    }

    fn push_actor(&mut self, actor: Actor) {
        self.changes.push(Change::Spawn(actor.id));
        self.index.insert(actor.id, self.actors.len());
        self.actors.push(actor);
    }

    fn remove_actor(&mut self, id: EntityId) -> Option<Actor> {
        let i = self.index.remove(&id)?;
        let a = self.actors.swap_remove(i);
        if let Some(moved) = self.actors.get(i) {
            self.index.insert(moved.id, i);
        }
        self.changes.push(Change::Despawn(id));
        Some(a)
    }

    /// Spawns `client`'s player (ids continue after the enemies, never reused).
    pub(crate) fn add_player(&mut self, client: ClientId) {
        let n = self.players.len() as f32;
        let id = EntityId(self.next_id);
        self.next_id += 1;
        // Players start in a row near the middle (inside the arena however many there are).
        let x = (n * 3.0 - 10.0).clamp(-self.arena, self.arena);
        self.push_actor(Actor {
            id,
            owner: Owner::Client(client),
            pos: Position { x, y: 0.0 },
            facing: 0.0,
            body: Body {
                kind: Kind::Player,
                hp: 100,
            },
            speed: 0.0,
            mobile: false,
        });
        self.players.push((client, id));
    }

    /// Despawns `client`'s player.
    pub(crate) fn remove_player(&mut self, client: ClientId) {
        if let Some(i) = self.players.iter().position(|p| p.0 == client) {
            let (_, id) = self.players.swap_remove(i);
            self.remove_actor(id);
        }
    }

    /// Advances one tick: players follow their latest input, enemies wander (each tick an
    /// enemy starts or stops walking with a small probability, so about a fifth walk at once).
    pub(crate) fn step(&mut self, inputs: &dyn Fn(ClientId) -> Input) {
        let dt = 1.0 / TICK_HZ as f32;
        for &(client, id) in &self.players {
            let input = inputs(client);
            let Some(a) = self.index.get(&id).and_then(|&i| self.actors.get_mut(i)) else {
                continue;
            };
            if input.dx != 0 || input.dy != 0 {
                self.changes.push(Change::Update(id));
                // Facing is the client's to write (client-authoritative aim), not derived here.
                a.pos = move_player(a.pos, input, self.arena);
            }
        }
        for a in &mut self.actors {
            if a.body.kind != Kind::Enemy || (self.moving.is_some() && !a.mobile) {
                continue;
            }
            let r = self.rng.next_f64();
            if self.moving.is_some() {
                // Always walking; now and then a new heading.
                self.changes.push(Change::Update(a.id));
                if r < 0.02 {
                    a.facing = uniform(&mut self.rng, 0.0, TAU);
                }
                a.pos.x += a.facing.cos() * a.speed * dt;
                a.pos.y += a.facing.sin() * a.speed * dt;
                if a.pos.x.abs() > self.arena || a.pos.y.abs() > self.arena {
                    a.facing = (a.facing + std::f32::consts::PI).rem_euclid(TAU);
                    clamp_to_arena(&mut a.pos, self.arena);
                }
                a.pos = snap(a.pos);
                continue;
            }
            if a.speed == 0.0 {
                if r < 0.005 {
                    a.speed = ENEMY_SPEED;
                    a.facing = uniform(&mut self.rng, 0.0, TAU);
                    self.changes.push(Change::Update(a.id));
                }
            } else if r < 0.02 {
                a.speed = 0.0;
            } else {
                self.changes.push(Change::Update(a.id));
                a.pos.x += a.facing.cos() * a.speed * dt;
                a.pos.y += a.facing.sin() * a.speed * dt;
                if a.pos.x.abs() > self.arena || a.pos.y.abs() > self.arena {
                    // Turn back towards the middle.
                    a.facing = (a.facing + std::f32::consts::PI).rem_euclid(TAU);
                    clamp_to_arena(&mut a.pos, self.arena);
                }
                a.pos = snap(a.pos);
            }
        }
    }

    /// Number of entities.
    pub(crate) fn len(&self) -> usize {
        self.actors.len()
    }

    /// `client`'s player entity.
    pub(crate) fn player_of(&self, client: ClientId) -> Option<EntityId> {
        self.players.iter().find(|p| p.0 == client).map(|p| p.1)
    }

    fn actor(&self, id: EntityId) -> Option<&Actor> {
        self.actors.get(*self.index.get(&id)?)
    }

    /// Sets the facing of entity `id` (a validated owner write).
    pub(crate) fn set_facing(&mut self, id: EntityId, angle: f32) {
        if let Some(a) = self.index.get(&id).and_then(|&i| self.actors.get_mut(i)) {
            a.facing = angle;
            self.changes.push(Change::Update(id));
        }
    }

    /// Whether `id` is a player's entity.
    pub(crate) fn is_player(&self, id: EntityId) -> bool {
        self.players.iter().any(|p| p.1 == id)
    }

    /// Half the arena's side, metres.
    pub(crate) fn arena(&self) -> f32 {
        self.arena
    }

    /// Removes enemy `target` and spawns a replacement elsewhere (ids are never reused).
    /// Returns the replacement's id.
    pub(crate) fn kill(&mut self, target: EntityId) -> Option<EntityId> {
        if self.actor(target)?.body.kind != Kind::Enemy {
            return None;
        }
        let dead = self.remove_actor(target)?;
        let id = EntityId(self.next_id);
        self.next_id += 1;
        let x = uniform(&mut self.rng, -self.arena, self.arena);
        let y = uniform(&mut self.rng, -self.arena, self.arena);
        let facing = uniform(&mut self.rng, 0.0, TAU);
        // With a fixed number of moving enemies, the replacement takes the dead one's role.
        self.push_actor(Actor {
            id,
            owner: Owner::Server,
            pos: snap(Position { x, y }),
            facing,
            body: Body {
                kind: Kind::Enemy,
                hp: 100,
            },
            speed: if dead.mobile { ENEMY_SPEED } else { 0.0 },
            mobile: dead.mobile,
        });
        Some(id)
    }
}

/// A shot claim's data (the proposal's `tick` is the shooter's own tick, when it fired; its
/// entities are the shooter's player and the target): how many ticks before that the
/// shooter's view of the world was, the view's fraction of a tick in 256ths, and the aim in
/// 65,536ths of a turn. 4 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ShotData {
    pub(crate) view_back: u8,
    pub(crate) fraction: u8,
    pub(crate) angle: u16,
}

impl ShotData {
    pub(crate) fn encode(self) -> [u8; 4] {
        let a = self.angle.to_le_bytes();
        [self.view_back, self.fraction, a[0], a[1]]
    }

    /// `None` unless exactly 4 bytes.
    pub(crate) fn decode(data: &[u8]) -> Option<ShotData> {
        let &[view_back, fraction, a0, a1] = data else {
            return None;
        };
        Some(ShotData {
            view_back,
            fraction,
            angle: u16::from_le_bytes([a0, a1]),
        })
    }

    /// The aim as a unit vector.
    pub(crate) fn direction(self) -> [f32; 2] {
        let a = f32::from(self.angle) / 65_536.0 * TAU;
        [a.cos(), a.sin()]
    }

    /// The 65,536ths of a turn nearest to `radians`.
    pub(crate) fn angle_of(radians: f32) -> u16 {
        (radians.rem_euclid(TAU) / TAU * 65_536.0).round() as u32 as u16
    }
}

/// Distance from `point` to the shot from `origin` along the unit vector `dir` for
/// [`SHOT_RANGE`] metres (to its nearest point): the shot hits a target of radius `r` there
/// when this is at most `r`.
pub(crate) fn shot_distance(origin: [f32; 2], dir: [f32; 2], point: [f32; 2]) -> f32 {
    let (px, py) = (point[0] - origin[0], point[1] - origin[1]);
    let along = (px * dir[0] + py * dir[1]).clamp(0.0, SHOT_RANGE);
    let (nx, ny) = (origin[0] + dir[0] * along, origin[1] + dir[1] * along);
    ((point[0] - nx).powi(2) + (point[1] - ny).powi(2)).sqrt()
}

/// One tick of a player's movement: the game's deterministic step, run by the server for
/// every player and by each client to predict its own. Same input, same position: bit for bit.
pub(crate) fn move_player(mut pos: Position, input: Input, arena: f32) -> Position {
    if input.dx == 0 && input.dy == 0 {
        return pos;
    }
    let dt = 1.0 / TICK_HZ as f32;
    let (dx, dy) = (f32::from(input.dx), f32::from(input.dy));
    let len = (dx * dx + dy * dy).sqrt();
    pos.x += dx / len * PLAYER_SPEED * dt;
    pos.y += dy / len * PLAYER_SPEED * dt;
    clamp_to_arena(&mut pos, arena);
    snap(pos)
}

/// `p` on the replicated grid (1/64 m).
fn snap(p: Position) -> Position {
    Position {
        x: (p.x * GRID).round() / GRID,
        y: (p.y * GRID).round() / GRID,
    }
}

fn clamp_to_arena(p: &mut Position, arena: f32) {
    p.x = p.x.clamp(-arena, arena);
    p.y = p.y.clamp(-arena, arena);
}

fn uniform(rng: &mut SimRng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.next_f64() as f32
}

impl WorldSource for Game {
    fn build(&self, b: &mut SnapshotBuilder<'_>) {
        for a in &self.actors {
            b.entity(a.id, a.owner)
                .component(&a.pos)
                .component(&Facing(a.facing))
                .component(&a.body);
        }
    }
}

/// A bot client's view of the world, kept up to date through [`WorldSink`] and [`EventSink`].
#[derive(Debug, Default)]
pub(crate) struct ClientWorld {
    pub(crate) entities: hashbrown::HashMap<EntityId, ClientEntity>,
    pub(crate) spawned: u64,
    pub(crate) despawned: u64,
    pub(crate) updates: u64,
    /// Every event received, by id.
    pub(crate) events: std::collections::BTreeMap<u64, GameEvent>,
    /// Events delivered twice (must stay 0).
    pub(crate) duplicate_events: u64,
    /// Events that named an entity this client had already despawned (must stay 0).
    pub(crate) stale_refs: u64,
    /// Entity ids that were ever present here.
    pub(crate) ever: hashbrown::HashSet<EntityId>,
    /// Ids that came back after a despawn (ids are never reused, so this must stay 0).
    pub(crate) respawned: u64,
    /// Entities whose position the packets applied since the caller last cleared this set.
    pub(crate) touched: Vec<EntityId>,
}

impl EventSink for ClientWorld {
    fn event(&mut self, e: &GameEvent) {
        for id in &e.entities {
            if !self.entities.contains_key(id) && self.ever.contains(id) {
                self.stale_refs += 1;
            }
        }
        if self.events.insert(e.id.0, e.clone()).is_some() {
            self.duplicate_events += 1;
        }
    }
}

/// One entity as a client sees it.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct ClientEntity {
    pub(crate) owner: Option<ClientId>,
    pub(crate) pos: Option<Position>,
    pub(crate) facing: Option<Facing>,
    pub(crate) body: Option<Body>,
}

impl WorldSink for ClientWorld {
    fn spawn(&mut self, id: EntityId, owner: Owner) {
        self.spawned += 1;
        if !self.ever.insert(id) {
            self.respawned += 1;
        }
        self.entities.insert(
            id,
            ClientEntity {
                owner: match owner {
                    Owner::Client(c) => Some(c),
                    _ => None,
                },
                ..ClientEntity::default()
            },
        );
    }
    fn despawn(&mut self, id: EntityId) {
        self.despawned += 1;
        self.entities.remove(&id);
    }
    fn set_owner(&mut self, id: EntityId, owner: Owner) {
        if let Some(e) = self.entities.get_mut(&id) {
            e.owner = match owner {
                Owner::Client(c) => Some(c),
                _ => None,
            };
        }
    }
    fn insert(&mut self, id: EntityId, c: ComponentView<'_>) {
        self.updates += 1;
        let Some(e) = self.entities.get_mut(&id) else {
            return;
        };
        if let Some(p) = c.get::<Position>() {
            e.pos = Some(p);
            self.touched.push(id);
        } else if let Some(f) = c.get::<Facing>() {
            e.facing = Some(f);
        } else if let Some(b) = c.get::<Body>() {
            e.body = Some(b);
        }
    }
    fn remove(&mut self, id: EntityId, c: ComponentView<'_>) {
        if let Some(e) = self.entities.get_mut(&id) {
            if c.is::<Position>() {
                e.pos = None;
            } else if c.is::<Facing>() {
                e.facing = None;
            } else if c.is::<Body>() {
                e.body = None;
            }
        }
    }
}

/// A bot: wanders by changing its steering every couple of seconds.
#[derive(Debug)]
pub(crate) struct Bot {
    rng: SimRng,
    input: Input,
}

impl Bot {
    pub(crate) fn new(seed: u64) -> Bot {
        Bot {
            rng: SimRng::new(seed),
            input: Input::default(),
        }
    }

    /// Now and then, the nearest enemy within `reach` of `from` as this client shows it
    /// (`shown`: where each entity is on screen), and where it is shown.
    pub(crate) fn pick_shown_target(
        &mut self,
        world: &ClientWorld,
        shown: &hashbrown::HashMap<EntityId, [f32; 2]>,
        from: Position,
        reach: f32,
    ) -> Option<(EntityId, [f32; 2])> {
        if !self.rng.chance(0.03) {
            return None;
        }
        shown
            .iter()
            .filter(|(id, _)| {
                world
                    .entities
                    .get(*id)
                    .and_then(|e| e.body)
                    .is_some_and(|b| b.kind == Kind::Enemy)
            })
            .filter_map(|(&id, &p)| {
                let d = (p[0] - from.x).powi(2) + (p[1] - from.y).powi(2);
                (d <= reach * reach).then_some((d, id, p))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
            .map(|(_, id, p)| (id, p))
    }

    /// A sideways aiming error, uniform in `-max..max` metres.
    pub(crate) fn aim_error(&mut self, max: f32) -> f32 {
        uniform(&mut self.rng, -max, max)
    }

    /// A random aim angle now and then (the client's own write).
    pub(crate) fn aim(&mut self, current: f32) -> f32 {
        if self.rng.chance(0.05) {
            uniform(&mut self.rng, 0.0, TAU)
        } else {
            current
        }
    }

    /// The input for this tick.
    pub(crate) fn think(&mut self) -> Input {
        if self.rng.chance(0.02) {
            let dx = self.rng.range_u64(0..=254) as i16 - 127;
            let dy = self.rng.range_u64(0..=254) as i16 - 127;
            self.input = Input {
                dx: dx as i8,
                dy: dy as i8,
            };
        }
        self.input
    }
}
