//! In one process over UDP on 127.0.0.1: a lobby, a relay, a host and 8 players who join by
//! code, through the direct path and through the relay; and a host migration: the host leaves,
//! the player with the lowest client id takes over from its last state, the others reconnect
//! to it through the lobby, and the game goes on with the same entities and owners.

mod common;

use std::time::Duration;

use common::UdpNet;
use common::play::{median, migration, migration_config, players_join};
use statewire_lobby::LobbyConfig;

fn report(label: &str, times: &[Duration]) {
    eprintln!(
        "{label}: join to first snapshot p50 {:?}, max {:?}",
        median(times.to_vec()),
        times.iter().max().unwrap()
    );
}

/// Every player here joins from 127.0.0.1, at once.
fn one_address() -> LobbyConfig {
    LobbyConfig {
        max_pending_joins_per_ip: 16,
        ..LobbyConfig::default()
    }
}

#[test]
fn eight_players_join_by_code_directly() {
    let times = players_join(&mut UdpNet::new(one_address()), 8, false);
    report("direct", &times);
}

#[test]
fn eight_players_join_by_code_through_the_relay() {
    let times = players_join(&mut UdpNet::new(one_address()), 8, true);
    report("relayed", &times);
}

#[test]
fn the_game_goes_on_after_the_host_leaves() {
    let m = migration(&mut UdpNet::new(migration_config()), true);
    eprintln!("host left: {m:?}");
    assert!(m.old_last_tick.0 - m.resumed_tick.0 <= 30, "{m:?}");
}

#[test]
fn the_game_goes_on_after_the_host_vanishes() {
    let m = migration(&mut UdpNet::new(migration_config()), false);
    eprintln!("host vanished: {m:?}");
    assert!(m.old_last_tick.0 - m.resumed_tick.0 <= 30, "{m:?}");
}
