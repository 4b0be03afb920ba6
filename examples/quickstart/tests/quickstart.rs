//! The quickstart game over loopback and over UDP on 127.0.0.1: each client sees the one
//! kill exactly once, and both end with exactly the server's world.
use std::time::Duration;

use statewire_quickstart::play;
use statewire_transport::loopback::{LoopbackConfig, LoopbackNet};
use statewire_transport::udp::{UdpConfig, UdpTransport};

#[test]
fn quickstart_over_loopback() {
    let net = LoopbackNet::new(LoopbackConfig::default());
    let out = play(
        net.endpoint(),
        [net.endpoint(), net.endpoint()],
        Duration::ZERO,
    )
    .unwrap();
    assert_eq!(out, ([1, 1], true));
}

#[test]
fn quickstart_over_udp() {
    let udp = || UdpTransport::bind("127.0.0.1:0".parse().unwrap(), UdpConfig::default()).unwrap();
    let out = play(udp(), [udp(), udp()], Duration::from_millis(1)).unwrap();
    assert_eq!(out, ([1, 1], true));
}
