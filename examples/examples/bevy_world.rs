//! statewire replicating a [bevy_ecs](https://docs.rs/bevy_ecs) world to two clients over a
//! simulated poor network (200 ms ± 50 ms one way, 4% loss, both directions).
//!
//! ```sh
//! cargo run -p statewire-examples --example bevy_world          # seed 2024
//! cargo run -p statewire-examples --example bevy_world -- 7     # another seed
//! ```
//!
//! The integration is the `statewire-bevy` adapter used without an app: its `ServerSync` feeds
//! the server's store the changes bevy's change detection finds, and its `BevySink` maps
//! `EntityId`s to bevy `Entity`s on each client. The game and the loop are in
//! `examples/src/bevy_world.rs`, shared with the crate's tests. The run
//! panics, naming the seed, if the server's store missed a change or any client's world differs
//! from the server's after the quiet period.

use statewire_examples::{bevy_world, seed_from_args};

fn main() {
    let seed = seed_from_args(2024);
    let ticks = 300;
    println!(
        "bevy_world: seed {seed} (pass another as the first argument), {ticks} ticks, {} \
         clients, netsim profile {:?}",
        bevy_world::CLIENTS,
        bevy_world::PROFILE
    );
    match bevy_world::run(seed, ticks) {
        Ok(summary) => println!("{summary}"),
        Err(e) => panic!(
            "bevy_world failed (rerun: cargo run -p statewire-examples --example bevy_world -- {seed}): {e}"
        ),
    }
}
