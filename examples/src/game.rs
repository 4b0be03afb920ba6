//! The small game every example runs: replicated components, a seeded random generator and the
//! per-tick script of spawns, despawns, damage and ownership changes.
//!
//! Each example stores the same game in its own way (a hecs `World`, a bevy `World`, a `Vec`) and
//! applies the same [`TickPlan`]s to it, so the only difference between them is the storage.

use std::f32::consts::{PI, TAU};

use bevy_ecs::component::Component;
use statewire_core::{
    ClientId, Field, FieldKind, FieldReader, FieldWriter, Owner, Registry, Replicate, SchemaError,
};

/// Simulation rate, ticks per second.
pub const TICK_HZ: u32 = 30;
/// Half the side of the square arena, in metres. Positions stay inside `[-ARENA, ARENA]`.
pub const ARENA: f32 = 400.0;
/// Quantization step of [`Transform::x`] and [`Transform::y`]: 1/64 m (a power of two, so the
/// grid points are exact in `f32`).
pub const POSITION_STEP: f32 = 1.0 / 64.0;
/// Quantization step of [`Transform::angle`]: 1/1024 of a turn.
pub const ANGLE_STEP: f32 = TAU / 1024.0;
/// NPCs in the world at tick 0 (plus one player per client).
pub const INITIAL_NPCS: u32 = 40;

/// Where an entity is and which way it faces. Replicated.
// `Component` lets the bevy_world example store it in a bevy `World`; hecs and the `Vec` need no
// trait.
#[derive(Debug, Clone, Copy, PartialEq, Component)]
pub struct Transform {
    /// Metres east of the arena's centre.
    pub x: f32,
    /// Metres north of the arena's centre.
    pub y: f32,
    /// Heading in radians, in `[0, 2π]`.
    pub angle: f32,
}

impl Replicate for Transform {
    const NAME: &'static str = "Transform";
    fn fields() -> Vec<Field> {
        let axis = FieldKind::Float {
            min: -512.0,
            max: 512.0,
            precision: POSITION_STEP,
        };
        let angle = FieldKind::Float {
            min: 0.0,
            max: TAU,
            precision: ANGLE_STEP,
        };
        vec![
            Field::new("x", axis),
            Field::new("y", axis),
            Field::new("angle", angle),
        ]
    }
    fn write(&self, w: &mut FieldWriter<'_>) {
        w.f32(self.x);
        w.f32(self.y);
        w.f32(self.angle);
    }
    fn read(r: &mut FieldReader<'_>) -> Option<Self> {
        Some(Transform {
            x: r.f32()?,
            y: r.f32()?,
            angle: r.f32()?,
        })
    }
}

/// Hit points. Replicated; entities without it are invulnerable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Component)]
pub struct Health {
    /// Remaining hit points, `0..=100`.
    pub hp: i32,
}

impl Replicate for Health {
    const NAME: &'static str = "Health";
    fn fields() -> Vec<Field> {
        vec![Field::new("hp", FieldKind::Int { min: 0, max: 100 })]
    }
    fn write(&self, w: &mut FieldWriter<'_>) {
        w.int(i64::from(self.hp));
    }
    fn read(r: &mut FieldReader<'_>) -> Option<Self> {
        Some(Health {
            hp: i32::try_from(r.int()?).ok()?,
        })
    }
}

/// The registry both peers use: [`Transform`] then [`Health`], in that order on both sides.
pub fn registry() -> Result<Registry, SchemaError> {
    let mut r = Registry::new();
    r.register::<Transform>()?;
    r.register::<Health>()?;
    Ok(r)
}

/// Moves `t` forward by `speed` m/s while turning at `turn` rad/s for `dt` seconds, turning back
/// at the arena's edge.
pub fn advance(t: &mut Transform, speed: f32, turn: f32, dt: f32) {
    t.angle = (t.angle + turn * dt).rem_euclid(TAU);
    t.x += t.angle.cos() * speed * dt;
    t.y += t.angle.sin() * speed * dt;
    if t.x.abs() > ARENA || t.y.abs() > ARENA {
        t.angle = (t.angle + PI).rem_euclid(TAU);
        t.x = t.x.clamp(-ARENA, ARENA);
        t.y = t.y.clamp(-ARENA, ARENA);
    }
}

/// The owner an entity moves to on a [`TickPlan::hand_over`]: the server hands it to the first
/// client, each client to the next one, and the last client gives it back to the server.
#[must_use]
pub fn next_owner(owner: Owner, clients: &[ClientId]) -> Owner {
    let next = match owner {
        Owner::Client(c) => clients
            .iter()
            .position(|&k| k == c)
            .and_then(|i| clients.get(i + 1)),
        _ => clients.first(),
    };
    next.map_or(Owner::Server, |&c| Owner::Client(c))
}

/// Small deterministic generator (splitmix64) for the game's own choices, so a run depends only
/// on its seed. Not for anything secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GameRng(u64);

impl GameRng {
    /// A generator whose whole output is determined by `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        GameRng(seed ^ 0x6761_6d65_5f72_6e67)
    }

    /// Next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in `0..n` (0 when `n` is 0); the tiny modulo bias does not matter for a game.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f32) -> bool {
        self.unit() < p
    }
}

/// A fresh NPC's transform, speed (m/s) and turn rate (rad/s), near `(x, y)`.
pub fn npc_motion(rng: &mut GameRng, x: f32, y: f32) -> (Transform, f32, f32) {
    let t = Transform {
        x: (x + rng.range(-50.0, 50.0)).clamp(-ARENA, ARENA),
        y: (y + rng.range(-50.0, 50.0)).clamp(-ARENA, ARENA),
        angle: rng.range(0.0, TAU),
    };
    (t, rng.range(2.0, 6.0), 0.0)
}

/// What happens to the world in one active tick, besides movement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickPlan {
    /// NPCs to spawn (a wave of 8 at tick 100).
    pub spawn: u32,
    /// Random NPCs to despawn (6 at once at tick 200).
    pub despawn: u32,
    /// Damage dealt to one random NPC that has [`Health`]; at 0 hp it despawns.
    pub damage: i32,
    /// Take [`Health`] away from one random NPC: a replicated component removal.
    pub remove_health: bool,
    /// Give [`Health`] back to one random NPC without it: a component insertion.
    pub restore_health: bool,
    /// Move the lowest-id NPC to its [`next_owner`]: an ownership change.
    pub hand_over: bool,
}

impl TickPlan {
    /// Draws the plan for active tick `tick` (0-based).
    pub fn draw(tick: u32, rng: &mut GameRng) -> TickPlan {
        let wave = if tick == 100 { 8 } else { 0 };
        let purge = if tick == 200 { 6 } else { 0 };
        TickPlan {
            spawn: u32::from(rng.chance(0.08)) + wave,
            despawn: u32::from(rng.chance(0.04)) + purge,
            damage: if rng.chance(0.3) {
                1 + rng.below(10) as i32
            } else {
                0
            },
            remove_health: tick % 40 == 10,
            restore_health: tick % 40 == 30,
            hand_over: tick % 75 == 50,
        }
    }
}

/// How often each kind of change happened on the server during a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GameEvents {
    /// Entities spawned after tick 0.
    pub spawned: u32,
    /// Entities despawned (randomly or at 0 hp).
    pub despawned: u32,
    /// [`Health`] components removed.
    pub health_removed: u32,
    /// [`Health`] components added back.
    pub health_restored: u32,
    /// Ownership changes.
    pub owner_changes: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_cycles_through_the_clients_and_back() {
        let clients = [ClientId(1), ClientId(2)];
        let mut o = Owner::Server;
        let mut seen = Vec::new();
        for _ in 0..3 {
            o = next_owner(o, &clients);
            seen.push(o);
        }
        assert_eq!(
            seen,
            [
                Owner::Client(ClientId(1)),
                Owner::Client(ClientId(2)),
                Owner::Server
            ]
        );
    }

    #[test]
    fn advance_stays_in_the_arena() {
        let mut t = Transform {
            x: ARENA - 0.01,
            y: 0.0,
            angle: 0.0,
        };
        advance(&mut t, 10.0, 0.0, 1.0);
        assert!(t.x <= ARENA);
        assert!((t.angle - PI).abs() < 1e-5, "turned back: {}", t.angle);
    }
}
