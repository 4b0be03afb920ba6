//! Host migration over simulated 200 ± 50 ms links with 4 % loss (every peer's outgoing
//! datagrams impaired, on a virtual clock): the new host resumes from the last snapshot it
//! had, so a game whose host vanishes loses the ticks still on their way to it; this test
//! measures that gap (and that a clean leave loses nothing). Seeded: the seed is printed on failure.

mod common;

use std::time::Duration;

use common::SimNet;
use common::play::{FRAME, median, migration, migration_config, players_join};
use statewire_lobby::LobbyConfig;
use statewire_transport::netsim::LinkConfig;

#[test]
fn migration_over_a_poor_link_loses_only_the_ticks_in_flight() {
    for (seed, clean) in [(1u64, true), (1, false), (2, false), (3, false)] {
        let link = LinkConfig::profile("poor").unwrap();
        let result = std::panic::catch_unwind(|| {
            let mut net = SimNet::new(migration_config(), link, seed);
            migration(&mut net, clean)
        });
        let m = result.unwrap_or_else(|_| panic!("migration failed (seed {seed})"));
        // The test's host ticks every 5 ms frame (200 Hz): the gap in time is what a game at
        // any tick rate loses.
        let gap = m.old_last_tick.0 - m.resumed_tick.0;
        let lost = FRAME * gap;
        let how = if clean { "left" } else { "vanished" };
        eprintln!(
            "seed {seed}, host {how}: gap {gap} ticks of {FRAME:?} = {lost:?} ({} ticks at \
             30 Hz); {m:?}",
            lost.as_millis() / 33
        );
        // What was in flight to the new host: one way 200 ± 50 ms, and a lost packet or two.
        assert!(
            lost <= Duration::from_millis(600),
            "seed {seed}: lost {lost:?}: {m:?}"
        );
        // A host that vanishes takes the ticks still on their way with it; one that leaves
        // cleanly sent its last snapshot before its goodbye.
        if !clean {
            assert!(
                gap > 0,
                "seed {seed}: some ticks are always in flight: {m:?}"
            );
        }
    }
}

#[test]
fn players_join_over_a_poor_link() {
    let link = LinkConfig::profile("poor").unwrap();
    let mut net = SimNet::new(LobbyConfig::default(), link, 7);
    let times = players_join(&mut net, 4, false);
    eprintln!(
        "poor link, direct: join to first snapshot p50 {:?}",
        median(times)
    );
}
