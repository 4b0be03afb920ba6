//! Authority: owners' writes are validated and applied, everything else is rejected and counted
//! and never changes the server's state; inputs are applied at their tick within a window;
//! transfers never let two clients write one entity in one tick.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use statewire_core::authority::{decode_writes, encode_writes};
use statewire_core::*;

/// One tick's input: a push to the client's score.
type Input = i64;

/// A server for a tiny game: each honest client owns ship `id = client`; a server-owned
/// counter entity per client (`100 + client`) advances by that client's input each tick.
struct Game {
    registry: Registry,
    authority: Authority,
    inputs: InputBuffer<Input>,
    ships: BTreeMap<u32, Pos>,
    scores: BTreeMap<u32, i64>,
    tick: Tick,
    scratch: Vec<u32>,
}

impl Game {
    fn new(clients: &[ClientId]) -> Game {
        let mut authority = Authority::new(AuthorityConfig::default());
        let mut ships = BTreeMap::new();
        let mut scores = BTreeMap::new();
        for c in clients {
            let id = c.0 as u32;
            authority.insert(EntityId(id), Owner::Client(*c));
            authority.insert(EntityId(100 + id), Owner::Server);
            ships.insert(id, Pos { x: 0.0, y: 0.0 });
            scores.insert(100 + id, 0);
        }
        Game {
            registry: registry(),
            authority,
            inputs: InputBuffer::new(30, 64),
            ships,
            scores,
            tick: Tick(1),
            scratch: Vec::new(),
        }
    }

    /// Takes one client datagram: writes (encoded) and an input for a tick.
    fn receive(&mut self, from: ClientId, writes: &[u8], input: Option<(Tick, Input)>) {
        if let Ok(ws) = decode_writes(&self.registry, writes, 64) {
            for w in ws {
                self.scratch.clear();
                if self
                    .authority
                    .accept_write(&self.registry, from, &w, &mut self.scratch)
                    .is_ok()
                {
                    let view = self.registry.view(w.component, &self.scratch).unwrap();
                    if let (Some(p), Some(ship)) =
                        (view.get::<Pos>(), self.ships.get_mut(&w.entity.0))
                    {
                        *ship = p;
                    }
                }
            }
        }
        if let Some((t, i)) = input {
            let _ = self.inputs.push(from, t, i);
        }
    }

    fn step(&mut self) {
        for (c, i) in self.inputs.take(self.tick) {
            if let Some(s) = self.scores.get_mut(&(100 + c.0 as u32)) {
                *s += i;
            }
        }
        self.tick = self.tick.next();
        self.authority.begin_tick(self.tick);
    }

    fn state_hash(&self) -> u64 {
        let mut b = SnapshotBuilder::new(&self.registry);
        for (&id, p) in &self.ships {
            b.entity(EntityId(id), self.authority.owner(EntityId(id)).unwrap())
                .component(p);
        }
        for (&id, &s) in &self.scores {
            b.entity(EntityId(id), Owner::Server).component(&Health {
                hp: s.clamp(-100, 1000),
                alive: true,
                team: 0,
            });
        }
        b.finish().unwrap().state_hash()
    }
}

fn write_pos(registry: &Registry, entity: u32, p: Pos) -> StateWrite {
    let mut values = Vec::new();
    let component = registry.raw_values(&p, &mut values).unwrap();
    StateWrite {
        entity: EntityId(entity),
        component,
        values,
    }
}

fn run(with_adversary: bool) -> (u64, Game) {
    let honest = [ClientId(1), ClientId(2), ClientId(3)];
    let adversary = ClientId(66);
    let mut game = Game::new(&honest);
    let registry = registry();
    for t in 1..=200u32 {
        for c in honest {
            let p = Pos {
                x: (t as f32 * 0.25) % 500.0,
                y: c.0 as f32,
            };
            let mut bytes = Vec::new();
            encode_writes(&[write_pos(&registry, c.0 as u32, p)], &mut bytes);
            game.receive(c, &bytes, Some((Tick(t + 2), i64::from(t % 3))));
        }
        if with_adversary {
            let mut ws = Vec::new();
            for k in 0..40u32 {
                ws.push(match k % 5 {
                    0 => write_pos(&registry, 1 + k % 3, Pos { x: 9.0, y: 9.0 }), // others' ships
                    1 => write_pos(&registry, 101 + k % 3, Pos { x: 9.0, y: 9.0 }), // server-owned
                    2 => write_pos(&registry, 5000 + k, Pos { x: 1.0, y: 1.0 }),  // unknown ids
                    3 => StateWrite {
                        entity: EntityId(2),
                        component: ComponentId(0),
                        values: vec![RawValue::F32(f32::NAN), RawValue::F32(f32::INFINITY)],
                    },
                    _ => write_pos(&registry, 3, Pos { x: 1e9, y: -1e9 }),
                });
            }
            let mut bytes = Vec::new();
            encode_writes(&ws, &mut bytes);
            // Inputs ten seconds in the past and in the future, every tick.
            let off = if t % 2 == 0 {
                t.wrapping_sub(300)
            } else {
                t + 300
            };
            game.receive(adversary, &bytes, Some((Tick(off), 1_000_000)));
            game.receive(adversary, &[0xff, 0xff, 1, 2], None); // malformed
            game.receive(ClientId(2), &[], None); // honest client, empty datagram
        }
        game.step();
    }
    (game.state_hash(), game)
}

#[test]
fn adversary_changes_nothing_and_is_counted() {
    let (control, control_game) = run(false);
    let (attacked, game) = run(true);
    assert_eq!(attacked, control, "the adversary changed the server state");
    let r = game.authority.rejections(ClientId(66));
    assert_eq!(r.total(), 200 * 40, "{r:?}");
    // NaN and out-of-range values aimed at others' ships fail the ownership check first.
    assert!(
        r.other_owner > 0 && r.server_owned > 0 && r.unknown_entity > 0,
        "{r:?}"
    );
    assert_eq!(game.inputs.rejected(ClientId(66)), 200);
    for c in 1..=3 {
        assert_eq!(game.authority.rejections(ClientId(c)).total(), 0);
        assert_eq!(game.inputs.rejected(ClientId(c)), 0);
    }
    assert_eq!(control_game.authority.total_rejections().total(), 0);
    // Honest inputs were applied at their ticks: 200 ticks of t % 3 (inputs for ticks 3..=202;
    // the last two were never simulated).
    let expect: i64 = (1..=198u32).map(|t| i64::from(t % 3)).sum();
    assert_eq!(game.scores[&101], expect);
}

#[test]
fn owner_writes_are_rate_limited_and_validated() {
    let me = ClientId(1);
    let mut g = Game::new(&[me]);
    let registry = registry();
    let mut accepted = 0;
    for k in 0..80 {
        let w = write_pos(
            &registry,
            1,
            Pos {
                x: k as f32,
                y: 0.0,
            },
        );
        g.scratch.clear();
        if g.authority
            .accept_write(&registry, me, &w, &mut g.scratch)
            .is_ok()
        {
            accepted += 1;
        }
    }
    assert_eq!(accepted, AuthorityConfig::default().max_writes_per_tick);
    assert_eq!(
        g.authority.rejections(me).rate_limited,
        80 - u64::from(accepted)
    );
    g.step();
    let bad = StateWrite {
        entity: EntityId(1),
        component: ComponentId(0),
        values: vec![RawValue::F32(600.0), RawValue::F32(0.0)],
    };
    assert_eq!(
        g.authority
            .accept_write(&registry, me, &bad, &mut g.scratch),
        Err(WriteRejection::Invalid(ValueError::OutOfRange))
    );
    let wrong_kind = StateWrite {
        entity: EntityId(1),
        component: ComponentId(0),
        values: vec![RawValue::Int(1), RawValue::F32(0.0)],
    };
    assert_eq!(
        g.authority
            .accept_write(&registry, me, &wrong_kind, &mut g.scratch),
        Err(WriteRejection::Invalid(ValueError::Mismatch))
    );
}

#[test]
fn inputs_outside_the_window_are_rejected() {
    let mut b: InputBuffer<u8> = InputBuffer::new(10, 4);
    let c = ClientId(1);
    assert_eq!(b.take(Tick(100)), vec![]);
    assert_eq!(b.push(c, Tick(99), 1), Err(InputRejection::TooOld));
    assert_eq!(b.push(c, Tick(112), 1), Err(InputRejection::TooFarAhead));
    for t in 101..105 {
        b.push(c, Tick(t), t as u8).unwrap();
    }
    assert_eq!(b.push(c, Tick(110), 1), Err(InputRejection::Full));
    b.push(c, Tick(101), 7).unwrap(); // replaces, does not need room
    assert_eq!(b.take(Tick(101)), vec![(c, 7)]);
    assert_eq!(b.take(Tick(102)), vec![(c, 102)]);
    assert_eq!(b.rejected(c), 3);
}

#[test]
fn writes_decode_strictly() {
    let registry = registry();
    let mut bytes = Vec::new();
    encode_writes(
        &[write_pos(&registry, 4, Pos { x: 1.0, y: 2.0 })],
        &mut bytes,
    );
    let back = decode_writes(&registry, &bytes, 8).unwrap();
    assert_eq!(back, vec![write_pos(&registry, 4, Pos { x: 1.0, y: 2.0 })]);
    assert!(decode_writes(&registry, &bytes[..bytes.len() - 1], 8).is_err());
    let mut long = bytes.clone();
    long.push(0);
    assert!(decode_writes(&registry, &long, 8).is_err());
    assert!(decode_writes(&registry, &bytes, 0).is_err());
}

#[derive(Debug, Clone)]
enum Action {
    Write { client: u8, entity: u8 },
    Grant { entity: u8, client: u8 },
    Revoke { entity: u8 },
    Request { entity: u8, client: u8 },
    Tick,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (0u8..4, 0u8..4).prop_map(|(client, entity)| Action::Write { client, entity }),
        1 => (0u8..4, 0u8..4).prop_map(|(entity, client)| Action::Grant { entity, client }),
        1 => (0u8..4).prop_map(|entity| Action::Revoke { entity }),
        1 => (0u8..4, 0u8..4).prop_map(|(entity, client)| Action::Request { entity, client }),
        2 => Just(Action::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the interleaving of writes and transfers, every accepted write comes from the
    /// entity's owner at that moment, and no entity is written by two clients in one tick.
    #[test]
    fn one_writer_per_entity_per_tick(actions in prop::collection::vec(action(), 1..300)) {
        let registry = registry();
        let mut a = Authority::new(AuthorityConfig { max_writes_per_tick: 1000, ..AuthorityConfig::default() });
        for e in 0..4u32 {
            a.insert(EntityId(e), Owner::Server);
        }
        let mut tick = Tick(1);
        let mut writers: BTreeMap<u32, ClientId> = BTreeMap::new();
        let mut out = Vec::new();
        for act in actions {
            match act {
                Action::Write { client, entity } => {
                    let c = ClientId(u64::from(client));
                    let w = write_pos(&registry, u32::from(entity), Pos { x: 1.0, y: 1.0 });
                    out.clear();
                    let owner = a.owner(EntityId(u32::from(entity)));
                    if a.accept_write(&registry, c, &w, &mut out).is_ok() {
                        prop_assert_eq!(owner, Some(Owner::Client(c)));
                        if let Some(prev) = writers.insert(u32::from(entity), c) {
                            prop_assert_eq!(prev, c, "two writers for one entity in {}", tick);
                        }
                    }
                }
                Action::Grant { entity, client } => {
                    let e = u32::from(entity);
                    let new = ClientId(u64::from(client));
                    a.grant(EntityId(e), new).unwrap();
                    // A transfer mid-tick: the new owner may write only from the next tick if
                    // someone else already wrote this tick.
                    if writers.get(&e).is_some_and(|w| *w != new) {
                        let w = write_pos(&registry, e, Pos { x: 2.0, y: 2.0 });
                        out.clear();
                        let accepted = a.accept_write(&registry, new, &w, &mut out).is_ok();
                        prop_assert!(!accepted || writers[&e] == new);
                        if accepted { writers.insert(e, new); }
                    }
                }
                Action::Revoke { entity } => {
                    a.revoke(EntityId(u32::from(entity))).unwrap();
                }
                Action::Request { entity, client } => {
                    a.request(ClientId(u64::from(client)), EntityId(u32::from(entity))).unwrap();
                }
                Action::Tick => {
                    tick = tick.next();
                    a.begin_tick(tick);
                    writers.clear();
                }
            }
        }
    }
}
