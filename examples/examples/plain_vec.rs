//! statewire with the core alone: a plain `Vec` of structs on the server and on two clients,
//! packets handed over as byte slices with every third one dropped in each direction. No ECS,
//! no transport, no clock.
//!
//! ```sh
//! cargo run -p statewire-examples --example plain_vec          # seed 2024
//! cargo run -p statewire-examples --example plain_vec -- 7     # another seed
//! ```
//!
//! The server's sync (it feeds its store the ships the game noted as changed), the `WorldSink`
//! and the loop are in `examples/src/plain_vec.rs`, shared with the crate's tests. The run
//! panics, naming the seed, if the server's store missed a change or any client's world differs
//! from the server's after the quiet period.

use statewire_examples::{plain_vec, seed_from_args};

fn main() {
    let seed = seed_from_args(2024);
    let ticks = 300;
    println!(
        "plain_vec: seed {seed} (pass another as the first argument), {ticks} ticks, {} \
         clients, 1 packet in {} dropped",
        plain_vec::CLIENTS,
        plain_vec::DROP_EVERY
    );
    match plain_vec::run(seed, ticks) {
        Ok(summary) => println!("{summary}"),
        Err(e) => panic!(
            "plain_vec failed (rerun: cargo run -p statewire-examples --example plain_vec -- {seed}): {e}"
        ),
    }
}
