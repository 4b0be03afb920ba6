//! Runs the quickstart over loopback, then over UDP on 127.0.0.1.
use std::time::Duration;

use statewire_quickstart::play;
use statewire_transport::loopback::{LoopbackConfig, LoopbackNet};
use statewire_transport::udp::{UdpConfig, UdpTransport};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let net = LoopbackNet::new(LoopbackConfig::default());
    let (kills, in_sync) = play(
        net.endpoint(),
        [net.endpoint(), net.endpoint()],
        Duration::ZERO,
    )?;
    println!("loopback: kills seen {kills:?}, clients in sync: {in_sync}");
    let udp = || {
        UdpTransport::bind(
            "127.0.0.1:0".parse().expect("an address"),
            UdpConfig::default(),
        )
    };
    let (kills, in_sync) = play(udp()?, [udp()?, udp()?], Duration::from_millis(1))?;
    println!("udp:      kills seen {kills:?}, clients in sync: {in_sync}");
    Ok(())
}
