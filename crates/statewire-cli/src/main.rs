//! The `statewire` command-line tool.
fn main() {}
