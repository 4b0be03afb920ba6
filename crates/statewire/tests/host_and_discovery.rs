//! Listen-server (host plays) and LAN discovery.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use statewire::discovery::{
    Announcer, Beacon, DEFAULT_MAX_PER_SOURCE, GameTransport, HostList, LanHost, MAX_BEACON_LEN,
};
use statewire::*;
use statewire_core::ComponentCoding;
use statewire_transport::Transport;
use statewire_transport::loopback::{LoopbackConfig, LoopbackNet};
use statewire_transport::udp::{UdpConfig, UdpTransport};

const KEY: statewire::Key = statewire::Key::from_bytes([7; 32]);
const RELIABLE: ChannelId = ChannelId(0);
const STEP: Duration = Duration::from_millis(10);

/// Client-side game code, written once: says hello when connected, collects chat.
#[derive(Default)]
struct Chat {
    me: Option<statewire_core::ClientId>,
    heard: Vec<String>,
    said_hello: bool,
    frames: u32,
}

impl Chat {
    fn frame(&mut self, link: &mut impl PlayerLink) {
        while let Some(ev) = link.poll_event() {
            match ev {
                ClientEvent::Connected(id) => self.me = Some(id),
                ClientEvent::Message(_, m) => self.heard.push(String::from_utf8(m).unwrap()),
                ClientEvent::Disconnected(r) => panic!("disconnected: {r}"),
                _ => {}
            }
        }
        self.frames += 1;
        // Wait half a second so that everyone is connected to hear it.
        if let (Some(me), false, true) = (self.me, self.said_hello, self.frames > 50) {
            link.send(RELIABLE, format!("hello from {me}").as_bytes())
                .unwrap();
            self.said_hello = true;
        }
    }
}

#[test]
fn host_plays_with_the_same_code_as_a_remote_client() {
    let net = LoopbackNet::new(LoopbackConfig::default());
    let mut host: Host<_, &'static str> = Host::from_server(
        Server::with_user_data(net.endpoint(), SessionConfig::default(), KEY, None).unwrap(),
    );
    let addr = host.server_ref().local_addr();
    let mut remote = Client::new(
        net.endpoint(),
        addr,
        SessionConfig::default(),
        Duration::ZERO,
        9,
    )
    .unwrap();
    let (mut host_chat, mut remote_chat) = (Chat::default(), Chat::default());
    let mut now = Duration::ZERO;
    for _ in 0..100 {
        now += STEP;
        host.update(now).unwrap();
        // Server logic: relay every chat line to everyone but its sender.
        while let Some(ev) = host.server().poll_event() {
            match ev {
                ServerEvent::Connected(id) => {
                    let name = if host.server().is_local(id) {
                        "host"
                    } else {
                        "guest"
                    };
                    host.server().set_user_data(id, name);
                }
                ServerEvent::Message(from, ch, m) => {
                    assert!(host.server().send_to_all_except(from, ch, &m).is_empty());
                }
                _ => {}
            }
        }
        host_chat.frame(&mut host.local());
        remote.update(now).unwrap();
        remote_chat.frame(&mut remote);
    }
    let host_id = host.local_id();
    let remote_id = remote.id().unwrap();
    assert_eq!(host_chat.me, Some(host_id));
    assert_eq!(host_chat.heard, vec![format!("hello from {remote_id}")]);
    assert_eq!(remote_chat.heard, vec![format!("hello from {host_id}")]);
    let s = host.server();
    assert_eq!(s.client_count(), 2);
    assert_eq!(s.user_data(host_id), Some(&"host"));
    assert_eq!(s.user_data(remote_id), Some(&"guest"));
    // The local player has the same channel limits as a remote one.
    let too_big = vec![0u8; 5000];
    assert!(matches!(
        host.local().send(ChannelId(1), &too_big),
        Err(ClientSendError::Send(_))
    ));
    assert!(host.server().kick(host_id));
    assert_eq!(
        host.local().poll_event(),
        Some(ClientEvent::Disconnected(DisconnectReason::Kicked))
    );
    assert_eq!(host.server().client_count(), 1);
}

#[test]
fn lan_beacon_is_heard_at_its_rate_and_expires() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut host_sock = UdpTransport::bind(any, UdpConfig::default()).unwrap();
    let mut listen_sock = UdpTransport::bind(any, UdpConfig::default()).unwrap();
    let beacon = Beacon {
        game_id: SessionConfig::default().protocol_id,
        version: 1,
        game_port: 4567,
        transport: GameTransport::Udp,
        codec: ComponentCoding::Packed,
        players: 3,
        max_players: 8,
        name: "Friday night".into(),
    };
    let mut announcer = Announcer::new(listen_sock.local_addr(), Duration::from_millis(200));
    let mut list = HostList::new(beacon.game_id, Some(1), Duration::from_millis(600), 16);
    let start = Instant::now();
    let mut frames = 0;
    // One second of 100 Hz frames: the announcer must send at its own rate, not per frame.
    while start.elapsed() < Duration::from_secs(1) && frames < 1000 {
        let now = start.elapsed();
        announcer.poll(now, &beacon, &mut host_sock).unwrap();
        list.poll(now, &mut listen_sock, 64).unwrap();
        std::thread::sleep(Duration::from_millis(10));
        frames += 1;
    }
    let now = start.elapsed();
    list.poll(now, &mut listen_sock, 64).unwrap();
    assert!(
        (4..=7).contains(&announcer.sent()),
        "sent {} beacons in 1 s",
        announcer.sent()
    );
    let hosts = list.hosts(now);
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].beacon, beacon);
    assert_eq!(
        hosts[0].game_addr,
        SocketAddr::new(host_sock.local_addr().ip(), 4567)
    );
    // Silence: the host expires.
    assert!(list.hosts(now + Duration::from_secs(1)).is_empty());
}

fn lan_beacon(name: &str, port: u16) -> Beacon {
    Beacon {
        game_id: SessionConfig::default().protocol_id,
        version: 1,
        game_port: port,
        transport: GameTransport::Tcp,
        codec: ComponentCoding::Entropy,
        players: 1,
        max_players: 4,
        name: name.into(),
    }
}

fn encode(b: &Beacon) -> Vec<u8> {
    let mut out = Vec::new();
    b.encode(&mut out).unwrap();
    out
}

/// Polls until a poll adds nothing new (UDP on 127.0.0.1 delivers at once, but not
/// synchronously).
fn poll_a_while<T: Transport>(list: &mut HostList, sock: &mut T) {
    for _ in 0..50 {
        list.poll(Duration::ZERO, sock, 64).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn an_oversize_datagram_does_not_hide_the_beacon_behind_it() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut host_sock = UdpTransport::bind(any, UdpConfig::default()).unwrap();
    let mut listen_sock = UdpTransport::bind(any, UdpConfig::default()).unwrap();
    let to = listen_sock.local_addr();
    let beacon = lan_beacon("real", 7777);
    let mut list = HostList::new(beacon.game_id, None, Duration::from_secs(3), 16);
    // Junk longer than any beacon, and a malformed beacon-sized datagram, then the real one.
    host_sock.send(to, &[0x5a; 300]).unwrap();
    host_sock.send(to, &[0x5a; MAX_BEACON_LEN]).unwrap();
    host_sock.send(to, &encode(&beacon)).unwrap();
    poll_a_while(&mut list, &mut listen_sock);
    let hosts = list.hosts(Duration::ZERO);
    assert_eq!(hosts.len(), 1, "ignored {}", list.ignored());
    assert_eq!(hosts[0].beacon, beacon);
    assert_eq!(list.ignored(), 2);

    // The same over the loopback network, whose queue holds a datagram a buffer cannot take.
    let net = LoopbackNet::new(LoopbackConfig::default());
    let mut tx = net.endpoint();
    let mut rx = net.endpoint();
    let mut list = HostList::new(beacon.game_id, None, Duration::from_secs(3), 16);
    tx.send(rx.local_addr(), &[0u8; 300]).unwrap();
    tx.send(rx.local_addr(), &encode(&beacon)).unwrap();
    list.poll(Duration::ZERO, &mut rx, 64).unwrap();
    assert_eq!(list.hosts(Duration::ZERO).len(), 1);
    assert_eq!(rx.pending(), 0);
}

#[test]
fn forged_beacons_from_one_source_do_not_hide_a_real_game() {
    let net = LoopbackNet::new(LoopbackConfig::default());
    let mut rx = net.bind("127.0.1.1:47800".parse().unwrap()).unwrap();
    let mut forger = net.bind("127.0.1.66:47800".parse().unwrap()).unwrap();
    let mut real_host = net.bind("127.0.1.2:47800".parse().unwrap()).unwrap();
    let to = rx.local_addr();
    // The CLI's list: 256 hosts, the default per-source limit.
    let real = lan_beacon("real", 7777);
    let mut list = HostList::new(real.game_id, None, Duration::from_secs(3), 256);
    for round in 0..3 {
        for port in 0..256u16 {
            forger
                .send(to, &encode(&lan_beacon("forged", 10_000 + port)))
                .unwrap();
        }
        real_host.send(to, &encode(&real)).unwrap();
        let now = Duration::from_secs(round);
        list.poll(now, &mut rx, 10_000).unwrap();
        let hosts = list.hosts(now);
        let from_forger = hosts
            .iter()
            .filter(|h| h.game_addr.ip() == forger.local_addr().ip())
            .count();
        assert_eq!(from_forger, DEFAULT_MAX_PER_SOURCE);
        let listed: Vec<&LanHost> = hosts
            .iter()
            .filter(|h| h.game_addr == SocketAddr::new(real_host.local_addr().ip(), 7777))
            .collect();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].beacon, real);
    }
}
