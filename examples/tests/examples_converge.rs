//! Runs every example's loop, as `cargo run --example` does, for a few seeds. Each run fails
//! (`RunError`) unless its server's store, fed only with the changes the game tracked, equals a
//! snapshot rebuilt from the whole world, and every client's state is bit-exact the store's.

use statewire_examples::{Summary, bevy_world, hecs_world, plain_vec};

fn check(s: &Summary) {
    assert_eq!(s.clients.len(), 2, "{s}");
    for c in &s.clients {
        assert!(c.matched_after.is_some(), "{s}");
        assert_eq!(c.decode_errors, 0, "{s}");
        assert_eq!(c.sink_errors, 0, "{s}");
        assert!(c.applied > 0, "{s}");
    }
    // The script must have exercised every kind of change.
    let e = s.events;
    assert!(e.spawned >= 8 && e.despawned >= 6, "{s}");
    assert!(
        e.health_removed > 0 && e.health_restored > 0 && e.owner_changes > 0,
        "{s}"
    );
}

#[test]
fn hecs_world_converges_for_two_seeds() {
    for seed in [1, 0xdead_beef] {
        let s = hecs_world::run(seed, 300).unwrap_or_else(|e| panic!("{e}"));
        check(&s);
        assert!(s.packets_lost > 0, "the poor profile loses packets: {s}");
    }
}

#[test]
fn hecs_world_same_seed_same_run() {
    let a = hecs_world::run(5, 120).unwrap_or_else(|e| panic!("{e}"));
    let b = hecs_world::run(5, 120).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a, b);
}

#[test]
fn plain_vec_converges_for_two_seeds() {
    for seed in [1, 0xdead_beef] {
        let s = plain_vec::run(seed, 300).unwrap_or_else(|e| panic!("{e}"));
        check(&s);
        assert_eq!(
            s.packets_lost,
            s.packets_sent / plain_vec::DROP_EVERY,
            "{s}"
        );
        assert_eq!(s.acks_lost, s.acks_sent / plain_vec::DROP_EVERY, "{s}");
    }
}

#[test]
fn bevy_world_converges_for_two_seeds() {
    for seed in [1, 0xdead_beef] {
        let s = bevy_world::run(seed, 300).unwrap_or_else(|e| panic!("{e}"));
        check(&s);
        assert!(s.packets_lost > 0, "the poor profile loses packets: {s}");
    }
}

#[test]
fn bevy_world_same_seed_same_run() {
    let a = bevy_world::run(5, 120).unwrap_or_else(|e| panic!("{e}"));
    let b = bevy_world::run(5, 120).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a, b);
}
