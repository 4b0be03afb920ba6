//! statewire replicating a [hecs](https://docs.rs/hecs) world to two clients over a simulated
//! poor network (200 ms ± 50 ms one way, 4% loss, both directions).
//!
//! ```sh
//! cargo run -p statewire-examples --example hecs_world          # seed 2024
//! cargo run -p statewire-examples --example hecs_world -- 7     # another seed
//! ```
//!
//! The integration is the `statewire-hecs` adapter: its `HecsReplication` feeds the server's
//! store the changes `hecs::ChangeTracker` finds, and its `HecsSink` maps `EntityId`s to
//! `hecs::Entity`s on each client. The game and the loop are in `examples/src/hecs_world.rs`,
//! shared with the crate's tests. The run panics, naming the seed, if the server's store missed
//! a change or any client's world differs from the server's after the quiet period.

use statewire_examples::{hecs_world, seed_from_args};

fn main() {
    let seed = seed_from_args(2024);
    let ticks = 300;
    println!(
        "hecs_world: seed {seed} (pass another as the first argument), {ticks} ticks, {} \
         clients, netsim profile {:?}",
        hecs_world::CLIENTS,
        hecs_world::PROFILE
    );
    match hecs_world::run(seed, ticks) {
        Ok(summary) => println!("{summary}"),
        Err(e) => panic!(
            "hecs_world failed (rerun: cargo run -p statewire-examples --example hecs_world -- {seed}): {e}"
        ),
    }
}
