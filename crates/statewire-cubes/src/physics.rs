//! The deterministic physics generator behind [`crate::generate`].
//!
//! A small impulse-based rigid-body simulation in `f64`, using only `+ - * /`, `sqrt` and
//! `floor` (all exactly specified by IEEE 754 and never fused by rustc), iterated in a fixed
//! order with a seeded SplitMix64 driver, so the same seed gives the same bytes on every run
//! and machine.
//!
//! - Bodies: 900 small cubes (1 m edge, 1 kg, random yaw) at rest in a 30×30 grid with 1.8 m
//!   spacing, and one player cube (2.5 m edge, 15 kg) as cube 0, starting beside the grid. A
//!   cube's inertia is isotropic (m·s²/6), so no inertia tensor is rotated.
//! - Contacts: each corner of a box against the floor, the walls at ±31.5 m and every nearby
//!   box (corner-inside-box test with a 2 cm skin, along the face of the entered box that faces
//!   the other box). Sequential impulses with accumulated clamping, Coulomb friction (0.3),
//!   restitution 0.3 above 1 m/s, speculative contacts inside the skin and capped Baumgarte
//!   correction of deeper penetration; linear drag 0.1/s and angular drag 0.5/s. Edge–edge
//!   contacts are not detected.
//! - Sleep: a cube slower than 0.05 m/s and 0.08 rad/s for 0.5 s sleeps (frozen, like a
//!   physics engine's auto-disable, so resting cubes repeat exactly) until a body moving faster
//!   than 0.3 m/s touches it.
//! - `interacting`: a cube touching the player, or touching an interacting cube, or caught by
//!   the pull or the ground pound, is interacting until it falls asleep.
//! - The player steers towards random waypoints over the grid at up to 10 m/s (30 m/s²
//!   while supported), pauses now and then, and jumps (7 m/s up, random spin) about every 3 s
//!   of support ([`Scene::Spec`]: it disturbs a few percent of the cubes at a time).
//! - [`Scene::Stress`] only: each jump ends in a *ground pound* that throws cubes within 7 m
//!   outwards (up to 8 m/s) and up (5 m/s), and about every 6 s the player *pulls* for 2–3 s:
//!   cubes within 8 m are drawn into a ring 2.5 m around it, hovering 2.5 m up (a
//!   katamari-like swirl). The pound and the pull keep many cubes moving at once (see
//!   `benches/RESULTS.md`).
//!
//! 60 frames per second, two substeps per frame.

use crate::{CubeState, Frame, NUM_CUBES, POSITION_SCALE, Scene, XY_LIMIT, Z_LIMIT};

const SUBSTEPS: usize = 2;
const H: f64 = 1.0 / 60.0 / SUBSTEPS as f64;
const GRAVITY: f64 = -9.81;
const SKIN: f64 = 0.02;
const SLOP: f64 = 0.005;
const BAUMGARTE: f64 = 0.2;
/// Cap on the separation speed used to resolve penetration, so deep overlaps do not explode.
const MAX_CORRECTION: f64 = 2.0;
const ITERATIONS: usize = 8;
const RESTITUTION: f64 = 0.3;
const RESTITUTION_SPEED: f64 = 1.0;
const WALL: f64 = 31.5;
const LINEAR_DRAG: f64 = 0.1;
const ANGULAR_DRAG: f64 = 0.5;
const SLEEP_SPEED2: f64 = 0.05 * 0.05;
const SLEEP_SPIN2: f64 = 0.08 * 0.08;
const SLEEP_STEPS: u32 = 60;
const WAKE_SPEED: f64 = 0.3;

const SMALL_EDGE: f64 = 1.0;
const SMALL_MASS: f64 = 1.0;
const SMALL_FRICTION: f64 = 0.3;
const PLAYER_EDGE: f64 = 2.5;
const PLAYER_MASS: f64 = 15.0;
const PLAYER_FRICTION: f64 = 0.3;
const GRID: usize = 30;
const SPACING: f64 = 1.8;

const PLAYER_SPEED: f64 = 10.0;
const PLAYER_ACCEL: f64 = 30.0;
const JUMP_SPEED: f64 = 7.0;
const JUMP_CHANCE: f64 = 1.0 / 180.0;
const PULL_CHANCE: f64 = 1.0 / 360.0;
const PULL_RADIUS: f64 = 8.0;
const PULL_HEIGHT: f64 = 2.5;
const PULL_RING: f64 = 2.5;
const PULL_ACCEL: f64 = 25.0;
const PULL_DAMPING: f64 = 2.0;
const BLAST_RADIUS: f64 = 7.0;
const BLAST_SPEED: f64 = 8.0;
const BLAST_LIFT: f64 = 5.0;

/// Broad-phase cell edge: more than the largest small-cube extent plus skin.
const CELL: f64 = 2.0;
const CELLS: usize = 34; // covers ±34 m
const CELL_ORIGIN: f64 = -34.0;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct V3 {
    x: f64,
    y: f64,
    z: f64,
}

impl V3 {
    const ZERO: V3 = V3 {
        x: 0.0,
        y: 0.0,
        z: 0.0,
    };
    const fn new(x: f64, y: f64, z: f64) -> V3 {
        V3 { x, y, z }
    }
    fn add(self, o: V3) -> V3 {
        V3::new(self.x + o.x, self.y + o.y, self.z + o.z)
    }
    fn sub(self, o: V3) -> V3 {
        V3::new(self.x - o.x, self.y - o.y, self.z - o.z)
    }
    fn scale(self, s: f64) -> V3 {
        V3::new(self.x * s, self.y * s, self.z * s)
    }
    fn dot(self, o: V3) -> f64 {
        self.x * o.x + self.y * o.y + self.z * o.z
    }
    fn cross(self, o: V3) -> V3 {
        V3::new(
            self.y * o.z - self.z * o.y,
            self.z * o.x - self.x * o.z,
            self.x * o.y - self.y * o.x,
        )
    }
    fn len2(self) -> f64 {
        self.dot(self)
    }
}

/// Quaternion (x, y, z, w).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Quat {
    x: f64,
    y: f64,
    z: f64,
    w: f64,
}

impl Quat {
    const IDENTITY: Quat = Quat {
        x: 0.0,
        y: 0.0,
        z: 0.0,
        w: 1.0,
    };

    fn normalized(self) -> Quat {
        let n = (self.x * self.x + self.y * self.y + self.z * self.z + self.w * self.w).sqrt();
        Quat {
            x: self.x / n,
            y: self.y / n,
            z: self.z / n,
            w: self.w / n,
        }
    }

    /// Columns of the rotation matrix: the body's x, y and z axes in world space.
    fn axes(self) -> [V3; 3] {
        let Quat { x, y, z, w } = self;
        [
            V3::new(
                1.0 - 2.0 * (y * y + z * z),
                2.0 * (x * y + z * w),
                2.0 * (x * z - y * w),
            ),
            V3::new(
                2.0 * (x * y - z * w),
                1.0 - 2.0 * (x * x + z * z),
                2.0 * (y * z + x * w),
            ),
            V3::new(
                2.0 * (x * z + y * w),
                2.0 * (y * z - x * w),
                1.0 - 2.0 * (x * x + y * y),
            ),
        ]
    }

    /// Integrates angular velocity `w` over `h`: q += ½·(w, 0)·q·h.
    fn integrate(self, w: V3, h: f64) -> Quat {
        let q = self;
        let hx = 0.5 * h;
        Quat {
            x: q.x + hx * (w.x * q.w + w.y * q.z - w.z * q.y),
            y: q.y + hx * (w.y * q.w + w.z * q.x - w.x * q.z),
            z: q.z + hx * (w.z * q.w + w.x * q.y - w.y * q.x),
            w: q.w - hx * (w.x * q.x + w.y * q.y + w.z * q.z),
        }
        .normalized()
    }
}

/// SplitMix64: tiny, seeded, fully specified.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
}

#[derive(Debug, Clone)]
struct Body {
    pos: V3,
    vel: V3,
    rot: Quat,
    spin: V3,
    half: f64,
    inv_mass: f64,
    inv_inertia: f64,
    friction: f64,
    awake: bool,
    still_steps: u32,
    interacting: bool,
}

#[derive(Debug, Clone, Copy)]
struct Contact {
    a: usize,
    /// `usize::MAX` for the static world (floor, walls) or a sleeping body.
    b: usize,
    n: V3,
    t1: V3,
    t2: V3,
    ra: V3,
    rb: V3,
    mass_n: f64,
    mass_t1: f64,
    mass_t2: f64,
    bias: f64,
    friction: f64,
    pn: f64,
    pt1: f64,
    pt2: f64,
}

const STATIC: usize = usize::MAX;

#[derive(Debug, Clone, Copy, PartialEq)]
enum PlayerMode {
    Drive,
    Pause,
}

/// The running simulation.
#[derive(Debug, Clone)]
pub(super) struct World {
    bodies: Vec<Body>,
    axes: Vec<[V3; 3]>,
    contacts: Vec<Contact>,
    cell_start: Vec<u32>,
    cell_items: Vec<u32>,
    body_cell: Vec<u32>,
    rng: Rng,
    target: V3,
    mode: PlayerMode,
    mode_left: u32,
    adjacency: Vec<(u32, u32)>,
    pairs: Vec<(u32, u32)>,
    /// Frames of pull left.
    pull_left: u32,
    /// Frames since the player jumped, 0 when it is not in a jump.
    jump_frames: u32,
    /// Whether the player also pounds and pulls ([`Scene::Stress`]).
    stress: bool,
}

impl World {
    pub(super) fn new(seed: u64, scene: Scene) -> World {
        let mut rng = Rng(seed ^ 0x5745_4952_4543_5542);
        let mut bodies = Vec::with_capacity(NUM_CUBES);
        let small_inertia = SMALL_MASS * SMALL_EDGE * SMALL_EDGE / 6.0;
        let player_inertia = PLAYER_MASS * PLAYER_EDGE * PLAYER_EDGE / 6.0;
        bodies.push(Body {
            pos: V3::new(-29.5, rng.range(-5.0, 5.0), PLAYER_EDGE / 2.0),
            vel: V3::ZERO,
            rot: Quat::IDENTITY,
            spin: V3::ZERO,
            half: PLAYER_EDGE / 2.0,
            inv_mass: 1.0 / PLAYER_MASS,
            inv_inertia: 1.0 / player_inertia,
            friction: PLAYER_FRICTION,
            awake: true,
            still_steps: 0,
            interacting: true,
        });
        let first = -(SPACING * (GRID as f64 - 1.0)) / 2.0;
        for j in 0..GRID {
            for i in 0..GRID {
                // A random yaw per cube: resting cubes are flat but not all aligned.
                let yaw = rng.range(-0.4, 0.4);
                let rot = Quat {
                    x: 0.0,
                    y: 0.0,
                    z: yaw / 2.0,
                    w: 1.0,
                }
                .normalized();
                bodies.push(Body {
                    pos: V3::new(
                        first + SPACING * i as f64,
                        first + SPACING * j as f64,
                        SMALL_EDGE / 2.0,
                    ),
                    vel: V3::ZERO,
                    rot,
                    spin: V3::ZERO,
                    half: SMALL_EDGE / 2.0,
                    inv_mass: 1.0 / SMALL_MASS,
                    inv_inertia: 1.0 / small_inertia,
                    friction: SMALL_FRICTION,
                    awake: false,
                    still_steps: 0,
                    interacting: false,
                });
            }
        }
        let mut w = World {
            bodies,
            axes: Vec::new(),
            contacts: Vec::new(),
            cell_start: vec![0; CELLS * CELLS + 1],
            cell_items: Vec::new(),
            body_cell: Vec::new(),
            rng,
            target: V3::ZERO,
            mode: PlayerMode::Pause,
            mode_left: 30,
            adjacency: Vec::new(),
            pairs: Vec::new(),
            jump_frames: 0,
            pull_left: 0,
            stress: scene == Scene::Stress,
        };
        w.target = w.bodies[0].pos;
        w
    }

    /// Quantizes the current state into the challenge layout.
    pub(super) fn frame(&self) -> Frame {
        let mut f = Frame::default();
        for (c, b) in f.cubes_mut().iter_mut().zip(&self.bodies) {
            *c = quantize(b);
        }
        f
    }

    /// Advances one 60 Hz frame.
    pub(super) fn step_frame(&mut self) {
        self.drive_player();
        for _ in 0..SUBSTEPS {
            self.substep();
        }
    }

    /// Whether the player rested on something (floor or cubes) in the last substep.
    fn grounded(&self) -> bool {
        self.contacts
            .iter()
            .any(|c| c.pn > 0.0 && ((c.a == 0 && c.n.z > 0.5) || (c.b == 0 && c.n.z < -0.5)))
    }

    fn drive_player(&mut self) {
        if self.mode_left == 0 {
            let r = self.rng.unit();
            if r < 0.15 {
                self.mode = PlayerMode::Pause;
                self.mode_left = 30 + (self.rng.unit() * 90.0) as u32;
            } else {
                self.mode = PlayerMode::Drive;
                self.mode_left = 60 + (self.rng.unit() * 180.0) as u32;
                let lim = SPACING * GRID as f64 / 2.0;
                self.target = V3::new(self.rng.range(-lim, lim), self.rng.range(-lim, lim), 0.0);
            }
        }
        self.mode_left -= 1;
        let grounded = self.grounded();
        let jump = grounded && self.rng.unit() < JUMP_CHANCE;
        let (target, mode) = (self.target, self.mode);
        let spin = V3::new(
            self.rng.range(-2.0, 2.0),
            self.rng.range(-2.0, 2.0),
            self.rng.range(-3.0, 3.0),
        );
        let p = &mut self.bodies[0];
        if grounded {
            let mut want = V3::ZERO;
            if mode == PlayerMode::Drive {
                let to = V3::new(target.x - p.pos.x, target.y - p.pos.y, 0.0);
                let d = to.len2().sqrt();
                if d > 1.0 {
                    want = to.scale(PLAYER_SPEED.min(2.0 * d) / d);
                } else {
                    self.mode_left = 0;
                }
            }
            let dv = V3::new(want.x - p.vel.x, want.y - p.vel.y, 0.0);
            let l = dv.len2().sqrt();
            let max = PLAYER_ACCEL / 60.0;
            let dv = if l > max { dv.scale(max / l) } else { dv };
            p.vel = p.vel.add(dv);
        }
        if jump {
            p.vel.z += JUMP_SPEED;
            p.spin = p.spin.add(spin);
        }
        p.awake = true;

        // The pull: for a while the player gathers nearby cubes into a ring hovering around it.
        if !self.stress {
            return;
        }
        if self.pull_left > 0 {
            self.pull_left -= 1;
        } else if self.rng.unit() < PULL_CHANCE {
            self.pull_left = 120 + (self.rng.unit() * 60.0) as u32;
        }
        // A jump ends in a ground pound: landing throws nearby cubes outwards and up.
        if jump {
            self.jump_frames = 1;
        } else if self.jump_frames > 0 {
            self.jump_frames += 1;
            if grounded && self.jump_frames > 10 {
                self.jump_frames = 0;
                self.blast();
            }
        }
    }

    fn blast(&mut self) {
        let center = self.bodies[0].pos;
        for i in 1..self.bodies.len() {
            let d = self.bodies[i].pos.sub(center);
            let dist = d.len2().sqrt();
            if !(1e-6..BLAST_RADIUS).contains(&dist) {
                continue;
            }
            let k = 1.0 - dist / BLAST_RADIUS;
            let away = V3::new(d.x / dist, d.y / dist, 0.0);
            let spin = V3::new(
                self.rng.range(-4.0, 4.0),
                self.rng.range(-4.0, 4.0),
                self.rng.range(-4.0, 4.0),
            );
            let b = &mut self.bodies[i];
            b.vel = b.vel.add(away.scale(BLAST_SPEED * k));
            b.vel.z += BLAST_LIFT * k;
            b.spin = b.spin.add(spin.scale(k));
            b.awake = true;
            b.still_steps = 0;
            b.interacting = true;
        }
    }

    /// Gathers cubes within [`PULL_RADIUS`] into a hovering ring around the player at a fixed
    /// height (a height relative to the player lets the pile lift the player without end).
    fn apply_pull(&mut self) {
        let p = self.bodies[0].pos;
        let pv = self.bodies[0].vel;
        for b in self.bodies.iter_mut().skip(1) {
            let d = V3::new(p.x - b.pos.x, p.y - b.pos.y, 0.0);
            let dist = d.len2().sqrt();
            if !(1e-6..PULL_RADIUS).contains(&dist) {
                continue;
            }
            let toward = (dist - PULL_RING).clamp(-1.0, 1.0) * PULL_ACCEL / dist;
            let lift = ((PULL_HEIGHT - b.pos.z) * 8.0).clamp(-PULL_ACCEL, PULL_ACCEL);
            let accel = V3::new(d.x * toward, d.y * toward, lift - GRAVITY);
            let damp = b.vel.sub(pv).scale(-PULL_DAMPING);
            b.vel = b.vel.add(accel.add(damp).scale(H));
            b.awake = true;
            b.still_steps = 0;
            b.interacting = true;
        }
    }

    fn substep(&mut self) {
        if self.pull_left > 0 {
            self.apply_pull();
        }
        // Forces and drag.
        let lin = 1.0 - LINEAR_DRAG * H;
        let ang = 1.0 - ANGULAR_DRAG * H;
        for b in self.bodies.iter_mut().filter(|b| b.awake) {
            b.vel.z += GRAVITY * H;
            b.vel = b.vel.scale(lin);
            b.spin = b.spin.scale(ang);
        }
        self.axes.clear();
        self.axes.extend(self.bodies.iter().map(|b| b.rot.axes()));
        self.build_contacts();
        self.solve();
        // Integrate.
        for b in self.bodies.iter_mut().filter(|b| b.awake) {
            b.pos = b.pos.add(b.vel.scale(H));
            b.rot = b.rot.integrate(b.spin, H);
        }
        self.update_interacting();
        self.update_sleep();
    }

    fn update_sleep(&mut self) {
        for (i, b) in self.bodies.iter_mut().enumerate() {
            if !b.awake || i == 0 {
                continue;
            }
            if b.vel.len2() < SLEEP_SPEED2 && b.spin.len2() < SLEEP_SPIN2 {
                b.still_steps += 1;
                if b.still_steps >= SLEEP_STEPS {
                    b.awake = false;
                    b.vel = V3::ZERO;
                    b.spin = V3::ZERO;
                    b.interacting = false;
                }
            } else {
                b.still_steps = 0;
            }
        }
    }

    fn update_interacting(&mut self) {
        // Breadth-first from the player over touching pairs of awake bodies.
        self.adjacency.clear();
        for c in &self.contacts {
            if c.b != STATIC && c.pn > 0.0 {
                self.adjacency.push((c.a as u32, c.b as u32));
                self.adjacency.push((c.b as u32, c.a as u32));
            }
        }
        self.adjacency.sort_unstable();
        self.adjacency.dedup();
        let mut reached = vec![false; self.bodies.len()];
        let mut queue = vec![0u32];
        reached[0] = true;
        while let Some(i) = queue.pop() {
            let from = self.adjacency.partition_point(|e| e.0 < i);
            for &(_, j) in self.adjacency[from..].iter().take_while(|e| e.0 == i) {
                if !reached[j as usize] && self.bodies[j as usize].awake {
                    reached[j as usize] = true;
                    queue.push(j);
                }
            }
        }
        for (b, r) in self.bodies.iter_mut().zip(&reached) {
            if *r {
                b.interacting = true;
            }
        }
    }

    fn build_contacts(&mut self) {
        self.contacts.clear();
        let n = self.bodies.len();
        // Broad phase: bucket every body except the player by cell.
        self.body_cell.clear();
        self.cell_start.iter_mut().for_each(|c| *c = 0);
        for b in &self.bodies[1..] {
            let cx = (((b.pos.x - CELL_ORIGIN) / CELL).floor().max(0.0) as usize).min(CELLS - 1);
            let cy = (((b.pos.y - CELL_ORIGIN) / CELL).floor().max(0.0) as usize).min(CELLS - 1);
            let cell = (cy * CELLS + cx) as u32;
            self.body_cell.push(cell);
            self.cell_start[cell as usize + 1] += 1;
        }
        for k in 1..self.cell_start.len() {
            self.cell_start[k] += self.cell_start[k - 1];
        }
        self.cell_items.clear();
        self.cell_items.resize(n - 1, 0);
        let mut fill = self.cell_start.clone();
        for (k, &cell) in self.body_cell.iter().enumerate() {
            self.cell_items[fill[cell as usize] as usize] = (k + 1) as u32;
            fill[cell as usize] += 1;
        }

        // Candidate pairs with at least one awake body, each once.
        self.pairs.clear();
        for i in 0..n {
            if !self.bodies[i].awake {
                continue;
            }
            if i == 0 {
                for j in 1..n {
                    if self.near(0, j) {
                        self.pairs.push((0, j as u32));
                    }
                }
                continue;
            }
            let cell = self.body_cell[i - 1] as usize;
            let (cx, cy) = ((cell % CELLS) as isize, (cell / CELLS) as isize);
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (x, y) = (cx + dx, cy + dy);
                    if x < 0 || y < 0 || x >= CELLS as isize || y >= CELLS as isize {
                        continue;
                    }
                    let c = y as usize * CELLS + x as usize;
                    for k in self.cell_start[c]..self.cell_start[c + 1] {
                        let j = self.cell_items[k as usize] as usize;
                        if j == i || (self.bodies[j].awake && j < i) {
                            continue;
                        }
                        if self.near(i, j) {
                            self.pairs.push((i as u32, j as u32));
                        }
                    }
                }
            }
        }
        // Wake sleeping bodies hit fast enough, before any contact is built, so a woken body
        // gets its floor contacts in this substep too.
        for k in 0..self.pairs.len() {
            let (i, j) = self.pairs[k];
            let (i, j) = (i as usize, j as usize);
            for (s, t) in [(i, j), (j, i)] {
                if self.bodies[s].awake && !self.bodies[t].awake {
                    let b = &self.bodies[s];
                    let speed2 = b.vel.len2() + b.spin.len2() * b.half * b.half;
                    if speed2 >= WAKE_SPEED * WAKE_SPEED {
                        let b = &mut self.bodies[t];
                        b.awake = true;
                        b.still_steps = 0;
                    }
                }
            }
        }
        for i in 0..n {
            if self.bodies[i].awake {
                self.world_contacts(i);
            }
        }
        for k in 0..self.pairs.len() {
            let (i, j) = self.pairs[k];
            let (i, j) = (i as usize, j as usize);
            match (self.bodies[i].awake, self.bodies[j].awake) {
                (true, true) => self.box_box(i, j, j),
                (true, false) => self.box_box(i, j, STATIC),
                (false, true) => self.box_box(j, i, STATIC),
                (false, false) => {}
            }
        }
    }

    fn near(&self, i: usize, j: usize) -> bool {
        let (bi, bj) = (&self.bodies[i], &self.bodies[j]);
        let reach = (bi.half + bj.half) * 1.7321 + 2.0 * SKIN;
        bi.pos.sub(bj.pos).len2() <= reach * reach
    }

    fn corners(&self, i: usize) -> [V3; 8] {
        let b = &self.bodies[i];
        let [ax, ay, az] = self.axes[i];
        let (ax, ay, az) = (ax.scale(b.half), ay.scale(b.half), az.scale(b.half));
        let mut out = [V3::ZERO; 8];
        for (k, o) in out.iter_mut().enumerate() {
            let sx = if k & 1 == 0 { -1.0 } else { 1.0 };
            let sy = if k & 2 == 0 { -1.0 } else { 1.0 };
            let sz = if k & 4 == 0 { -1.0 } else { 1.0 };
            *o = b.pos.add(ax.scale(sx)).add(ay.scale(sy)).add(az.scale(sz));
        }
        out
    }

    fn world_contacts(&mut self, i: usize) {
        let corners = self.corners(i);
        let planes = [
            (V3::new(0.0, 0.0, 1.0), 0.0),
            (V3::new(1.0, 0.0, 0.0), -WALL),
            (V3::new(-1.0, 0.0, 0.0), -WALL),
            (V3::new(0.0, 1.0, 0.0), -WALL),
            (V3::new(0.0, -1.0, 0.0), -WALL),
        ];
        for p in corners {
            for &(n, d) in &planes {
                let dist = p.dot(n) - d;
                if dist < SKIN {
                    self.add_contact(i, STATIC, p, n, -dist);
                }
            }
        }
    }

    /// Corner-inside-box tests both ways between `i` and `j`; `j_as` is `j` or STATIC.
    ///
    /// Each direction uses one face of the box being entered: the one facing the other body's
    /// centre (largest |offset| per extent). Choosing the face of least penetration per corner
    /// instead makes a box resting on the floor "see" a neighbour's bottom corners through its
    /// own bottom face and climb over it.
    fn box_box(&mut self, i: usize, j: usize, j_as: usize) {
        for (a, b) in [(i, j), (j, i)] {
            let corners = self.corners(a);
            let (ba, bb) = (&self.bodies[a], &self.bodies[b]);
            let axes = self.axes[b];
            let (center, half) = (bb.pos, bb.half);
            let d = ba.pos.sub(center);
            let dl = [d.dot(axes[0]), d.dot(axes[1]), d.dot(axes[2])];
            let mut k = 0;
            for m in 1..3 {
                if dl[m].abs() > dl[k].abs() {
                    k = m;
                }
            }
            let sign = if dl[k] < 0.0 { -1.0 } else { 1.0 };
            let n = axes[k].scale(sign);
            for p in corners {
                let off = p.sub(center);
                let local = [off.dot(axes[0]), off.dot(axes[1]), off.dot(axes[2])];
                let depth = half - sign * local[k];
                if depth <= -SKIN || depth > 2.0 * half {
                    continue;
                }
                if (0..3).any(|m| m != k && local[m].abs() >= half + SKIN) {
                    continue;
                }
                // The contact pushes `a` along `n` away from `b`.
                if a == i {
                    self.add_contact(i, j_as, p, n, depth);
                } else if j_as == STATIC {
                    // A corner of the static body inside the awake one: push the awake body
                    // the other way.
                    self.add_contact(i, STATIC, p, n.scale(-1.0), depth);
                } else {
                    self.add_contact(j, i, p, n, depth);
                }
            }
        }
    }

    fn add_contact(&mut self, a: usize, b: usize, p: V3, n: V3, depth: f64) {
        let ba = &self.bodies[a];
        let ra = p.sub(ba.pos);
        let (rb, inv_mb, inv_ib, vb, friction_b) = if b == STATIC {
            (V3::ZERO, 0.0, 0.0, V3::ZERO, 0.6)
        } else {
            let bb = &self.bodies[b];
            let rb = p.sub(bb.pos);
            (
                rb,
                bb.inv_mass,
                bb.inv_inertia,
                bb.vel.add(bb.spin.cross(rb)),
                bb.friction,
            )
        };
        let va = ba.vel.add(ba.spin.cross(ra));
        let rel = va.sub(vb);
        let vn = rel.dot(n);
        let t1 = if n.x.abs() > 0.57 {
            V3::new(n.y, -n.x, 0.0)
        } else {
            V3::new(0.0, n.z, -n.y)
        };
        let t1 = t1.scale(1.0 / t1.len2().sqrt());
        let t2 = n.cross(t1);
        let k = |d: V3| {
            1.0 / (ba.inv_mass
                + inv_mb
                + ba.inv_inertia * ra.cross(d).len2()
                + inv_ib * rb.cross(d).len2())
        };
        let bias = if depth < 0.0 {
            depth / H
        } else {
            let restitution = if vn < -RESTITUTION_SPEED {
                -RESTITUTION * vn
            } else {
                0.0
            };
            restitution.max((BAUMGARTE * (depth - SLOP).max(0.0) / H).min(MAX_CORRECTION))
        };
        let friction = (ba.friction * friction_b).sqrt();
        self.contacts.push(Contact {
            a,
            b,
            n,
            t1,
            t2,
            ra,
            rb,
            mass_n: k(n),
            mass_t1: k(t1),
            mass_t2: k(t2),
            bias,
            friction,
            pn: 0.0,
            pt1: 0.0,
            pt2: 0.0,
        });
    }

    fn solve(&mut self) {
        for _ in 0..ITERATIONS {
            for ci in 0..self.contacts.len() {
                let mut c = self.contacts[ci];
                let rel = |bodies: &[Body], c: &Contact| {
                    let a = &bodies[c.a];
                    let va = a.vel.add(a.spin.cross(c.ra));
                    if c.b == STATIC {
                        va
                    } else {
                        let b = &bodies[c.b];
                        va.sub(b.vel.add(b.spin.cross(c.rb)))
                    }
                };
                let v = rel(&self.bodies, &c);
                let lambda = c.mass_n * (c.bias - v.dot(c.n));
                let pn = (c.pn + lambda).max(0.0);
                let dpn = pn - c.pn;
                c.pn = pn;
                self.apply(&c, c.n.scale(dpn));
                let v = rel(&self.bodies, &c);
                let lim = c.friction * c.pn;
                let pt1 = (c.pt1 - c.mass_t1 * v.dot(c.t1)).clamp(-lim, lim);
                let pt2 = (c.pt2 - c.mass_t2 * v.dot(c.t2)).clamp(-lim, lim);
                let imp = c.t1.scale(pt1 - c.pt1).add(c.t2.scale(pt2 - c.pt2));
                c.pt1 = pt1;
                c.pt2 = pt2;
                self.apply(&c, imp);
                self.contacts[ci] = c;
            }
        }
    }

    fn apply(&mut self, c: &Contact, p: V3) {
        let a = &mut self.bodies[c.a];
        a.vel = a.vel.add(p.scale(a.inv_mass));
        a.spin = a.spin.add(c.ra.cross(p).scale(a.inv_inertia));
        if c.b != STATIC {
            let b = &mut self.bodies[c.b];
            b.vel = b.vel.sub(p.scale(b.inv_mass));
            b.spin = b.spin.sub(c.rb.cross(p).scale(b.inv_inertia));
        }
    }
}

fn quantize(b: &Body) -> CubeState {
    let q = |v: f64, lo: i32, hi: i32| ((v * POSITION_SCALE + 0.5).floor() as i32).clamp(lo, hi);
    let r = b.rot;
    let comps = [r.x, r.y, r.z, r.w];
    let mut largest = 0;
    for k in 1..4 {
        if comps[k].abs() > comps[largest].abs() {
            largest = k;
        }
    }
    let sign = if comps[largest] < 0.0 { -1.0 } else { 1.0 };
    let mut small = [0u16; 3];
    let mut s = 0;
    let bound = std::f64::consts::FRAC_1_SQRT_2;
    for (k, &v) in comps.iter().enumerate() {
        if k == largest {
            continue;
        }
        let norm = (v * sign + bound) / (2.0 * bound);
        small[s] = ((norm * 511.0 + 0.5).floor() as i32).clamp(0, 511) as u16;
        s += 1;
    }
    CubeState {
        largest: largest as u8,
        a: small[0],
        b: small[1],
        c: small[2],
        x: q(b.pos.x, -XY_LIMIT, XY_LIMIT),
        y: q(b.pos.y, -XY_LIMIT, XY_LIMIT),
        z: q(b.pos.z, 0, Z_LIMIT),
        interacting: b.interacting,
    }
}
