//! Session tests over the in-memory loopback network on a virtual clock. (Many clients
//! exchanging reliable messages is in `transports.rs`, over loopback, UDP and TCP.)

use std::time::Duration;

use statewire::packet::{Packet, REQUEST_LEN};
use statewire::*;
use statewire_core::ClientId;
use statewire_transport::Transport;
use statewire_transport::loopback::{LoopbackConfig, LoopbackEndpoint, LoopbackNet};
use statewire_transport::netsim::{LinkConfig, NetSim, SimRng};

const KEY: statewire::Key = statewire::Key::from_bytes([7; 32]);
const RELIABLE: ChannelId = ChannelId(0);
const STEP: Duration = Duration::from_millis(10);

fn message(client: usize, seq: usize) -> Vec<u8> {
    // Sizes vary from a few bytes to several packets, so fragmentation is exercised.
    let len = 4 + (client * 131 + seq * 977) % 3000;
    (0..len).map(|i| (i ^ client ^ (seq << 3)) as u8).collect()
}

#[test]
fn send_to_one_all_and_all_but_one() {
    let net = LoopbackNet::new(LoopbackConfig::default());
    let mut server: Server<_> = Server::new(net.endpoint(), SessionConfig::default(), KEY).unwrap();
    let addr = server.local_addr();
    let mut clients: Vec<_> = (0..3)
        .map(|i| {
            Client::new(
                net.endpoint(),
                addr,
                SessionConfig::default(),
                Duration::ZERO,
                10 + i,
            )
            .unwrap()
        })
        .collect();
    let mut now = Duration::ZERO;
    let run = |server: &mut Server<LoopbackEndpoint>,
               clients: &mut Vec<Client<LoopbackEndpoint>>,
               now: &mut Duration| {
        let mut inbox = vec![Vec::new(); clients.len()];
        for _ in 0..20 {
            *now += STEP;
            server.update(*now).unwrap();
            while server.poll_event().is_some() {}
            for (i, c) in clients.iter_mut().enumerate() {
                c.update(*now).unwrap();
                while let Some(ev) = c.poll_event() {
                    if let ClientEvent::Message(_, m) = ev {
                        inbox[i].push(m);
                    }
                }
            }
        }
        inbox
    };
    run(&mut server, &mut clients, &mut now);
    let ids: Vec<ClientId> = clients.iter().map(|c| c.id().unwrap()).collect();
    server.send(ids[1], RELIABLE, b"one").unwrap();
    assert!(server.send_to_all(RELIABLE, b"all").is_empty());
    assert!(
        server
            .send_to_all_except(ids[0], RELIABLE, b"but")
            .is_empty()
    );
    let inbox = run(&mut server, &mut clients, &mut now);
    assert_eq!(inbox[0], vec![b"all".to_vec()]);
    assert_eq!(
        inbox[1],
        vec![b"one".to_vec(), b"all".to_vec(), b"but".to_vec()]
    );
    assert_eq!(inbox[2], vec![b"all".to_vec(), b"but".to_vec()]);
    assert_eq!(
        server.send(ClientId(999), RELIABLE, b"x"),
        Err(ServerSendError::UnknownClient(ClientId(999)))
    );
}

#[test]
fn version_mismatch_is_a_clear_error_on_both_sides() {
    let net = LoopbackNet::new(LoopbackConfig::default());
    let mut server: Server<_> = Server::new(net.endpoint(), SessionConfig::default(), KEY).unwrap();
    let old = SessionConfig {
        version: 0,
        ..SessionConfig::default()
    };
    let mut client =
        Client::new(net.endpoint(), server.local_addr(), old, Duration::ZERO, 5).unwrap();
    let mut now = Duration::ZERO;
    for _ in 0..10 {
        now += STEP;
        client.update(now).unwrap();
        server.update(now).unwrap();
    }
    client.update(now + STEP).unwrap();
    assert_eq!(
        client.state(),
        ClientState::Disconnected(DisconnectReason::Rejected {
            reason: statewire::packet::RejectReason::VersionMismatch,
            server_version: 1,
        })
    );
    assert_eq!(
        client.poll_event().map(|e| match e {
            ClientEvent::Disconnected(r) => r.to_string(),
            other => format!("{other:?}"),
        }),
        Some("rejected: server runs protocol version 1".to_string())
    );
    assert!(server.stats().rejected_version >= 1);
    assert_eq!(server.client_count(), 0);
}

#[test]
fn spoofed_connection_requests_are_not_amplified_and_create_no_state() {
    let net = LoopbackNet::new(LoopbackConfig {
        max_queued_datagrams: 20_000,
        ..LoopbackConfig::default()
    });
    let mut server: Server<_> = Server::new(net.endpoint(), SessionConfig::default(), KEY).unwrap();
    let mut rogue = net.endpoint();
    let mut rng = SimRng::new(99);
    let mut sent_bytes = 0u64;
    let mut pkt = Vec::new();
    for i in 0..10_000u64 {
        pkt.clear();
        match i % 3 {
            0 => Packet::ConnectRequest {
                protocol: SessionConfig::default().protocol_id,
                version: 1,
                salt: rng.next_u64(),
                channels: SessionConfig::default().connection.fingerprint(),
            },
            1 => Packet::ConnectRequest {
                protocol: rng.next_u64(),
                version: 1,
                salt: i,
                channels: SessionConfig::default().connection.fingerprint(),
            },
            _ => Packet::ChallengeResponse {
                salt: rng.next_u64(),
                cookie: statewire::packet::Cookie {
                    expires_ms: u64::MAX,
                    mac: rng.next_u64(),
                },
            },
        }
        .encode(&mut pkt);
        assert_eq!(pkt.len(), REQUEST_LEN);
        rogue.send(server.local_addr(), &pkt).unwrap();
        sent_bytes += pkt.len() as u64;
        if i % 1000 == 999 {
            server.update(Duration::from_millis(i)).unwrap();
        }
    }
    server.update(Duration::from_secs(11)).unwrap();
    let mut reply_bytes = 0u64;
    let mut buf = [0u8; 2048];
    while let Some(got) = rogue.recv(&mut buf).unwrap() {
        reply_bytes += got.len as u64;
    }
    let stats = server.stats();
    assert_eq!(stats.unvalidated_bytes_received, sent_bytes);
    assert!(reply_bytes <= sent_bytes, "{reply_bytes} > {sent_bytes}");
    assert_eq!(reply_bytes, stats.unvalidated_bytes_sent);
    assert_eq!(server.client_count(), 0);
    assert_eq!(stats.accepted, 0);
    // Every forged cookie that got past the per-source rate limit was refused; the limit
    // itself dropped the rest before any MAC was computed.
    assert!(stats.rejected_cookie > 1000, "{stats:?}");
}

#[test]
fn rogue_datagrams_do_not_disturb_other_sessions() {
    let net = LoopbackNet::new(LoopbackConfig::default());
    let mut server: Server<_> = Server::new(net.endpoint(), SessionConfig::default(), KEY).unwrap();
    let addr = server.local_addr();
    let mut good = Client::new(
        net.endpoint(),
        addr,
        SessionConfig::default(),
        Duration::ZERO,
        1,
    )
    .unwrap();
    let mut rogue = net.endpoint();
    let mut rng = SimRng::new(7);
    let mut now = Duration::ZERO;
    let mut received = Vec::new();
    let mut sent = Vec::new();
    let mut forged = Vec::new();
    for step in 0..400u32 {
        now += STEP;
        // Truncated, oversized, random and replayed datagrams at the server.
        let len = rng.range_u64(0..=1400) as usize;
        let junk: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let _ = rogue.send(addr, &junk);
        // A data packet with a guessed token, whole and truncated, and a stale handshake.
        forged.clear();
        // A sealed data packet under a guessed key: kind, sequence number, body, tag.
        forged.push(0x24);
        forged.extend_from_slice(&rng.next_u64().to_le_bytes());
        forged.extend_from_slice(&junk[..len.min(40)]);
        forged.extend_from_slice(&rng.next_u64().to_le_bytes());
        forged.extend_from_slice(&rng.next_u64().to_le_bytes());
        let _ = rogue.send(addr, &forged);
        let _ = rogue.send(addr, &forged[..forged.len() / 2]);
        forged.clear();
        Packet::ChallengeResponse {
            salt: 1,
            cookie: statewire::packet::Cookie {
                expires_ms: u64::MAX,
                mac: rng.next_u64(),
            },
        }
        .encode(&mut forged);
        let _ = rogue.send(addr, &forged);
        server.update(now).unwrap();
        while let Some(ev) = server.poll_event() {
            if let ServerEvent::Message(id, ch, m) = ev {
                server.send(id, ch, &m).unwrap();
            }
        }
        good.update(now).unwrap();
        while let Some(ev) = good.poll_event() {
            match ev {
                ClientEvent::Message(_, m) => received.push(m),
                ClientEvent::Disconnected(r) => panic!("good client lost: {r}"),
                _ => {}
            }
        }
        if good.is_connected() && step % 4 == 0 && step < 300 {
            let m = message(1, step as usize);
            good.send(RELIABLE, &m).unwrap();
            sent.push(m);
        }
    }
    assert!(sent.len() > 60, "good client sent only {}", sent.len());
    assert_eq!(received, sent, "seed 7");
    let stats = server.stats();
    assert!(stats.malformed + stats.unknown_peer > 300, "{stats:?}");
    assert_eq!(server.client_count(), 1);
}

#[test]
fn idle_client_times_out_and_kick_reaches_the_client() {
    let net = LoopbackNet::new(LoopbackConfig::default());
    let mut server: Server<_> = Server::new(net.endpoint(), SessionConfig::default(), KEY).unwrap();
    let addr = server.local_addr();
    let mut a = Client::new(
        net.endpoint(),
        addr,
        SessionConfig::default(),
        Duration::ZERO,
        1,
    )
    .unwrap();
    let mut b = Client::new(
        net.endpoint(),
        addr,
        SessionConfig::default(),
        Duration::ZERO,
        2,
    )
    .unwrap();
    let mut now = Duration::ZERO;
    for _ in 0..20 {
        now += STEP;
        server.update(now).unwrap();
        a.update(now).unwrap();
        b.update(now).unwrap();
    }
    assert!(a.is_connected() && b.is_connected());
    while server.poll_event().is_some() {}
    assert!(server.kick(a.id().unwrap()));
    a.update(now).unwrap();
    assert_eq!(
        a.state(),
        ClientState::Disconnected(DisconnectReason::Kicked)
    );
    // b goes silent: the server times it out.
    let b_id = b.id().unwrap();
    let mut timed_out = false;
    for _ in 0..2000 {
        now += STEP;
        server.update(now).unwrap();
        while let Some(ev) = server.poll_event() {
            if ev == ServerEvent::Disconnected(b_id, DisconnectReason::Timeout) {
                timed_out = true;
            }
        }
        if timed_out {
            break;
        }
    }
    assert!(timed_out);
    let idle = SessionConfig::default().connection.idle_timeout;
    assert!(
        now >= idle,
        "timed out after {now:?}, before the idle timeout {idle:?}"
    );
}

#[test]
fn connect_over_hostile_netsim() {
    let seed = 42;
    let net = LoopbackNet::new(LoopbackConfig::default());
    let hostile = LinkConfig::profile("hostile").unwrap();
    let mut server: Server<_> = Server::new(
        NetSim::new(net.endpoint(), hostile.clone(), seed),
        SessionConfig::default(),
        KEY,
    )
    .unwrap();
    let addr = server.local_addr();
    let mut client = Client::new(
        NetSim::new(net.endpoint(), hostile, seed + 1),
        addr,
        SessionConfig::default(),
        Duration::ZERO,
        3,
    )
    .unwrap();
    let mut now = Duration::ZERO;
    let mut got = Vec::new();
    let mut sent = Vec::new();
    for i in 0..3000u32 {
        now += STEP;
        server.transport_mut().advance_to(now).unwrap();
        client.transport_mut().advance_to(now).unwrap();
        server.update(now).unwrap();
        while let Some(ev) = server.poll_event() {
            if let ServerEvent::Message(id, ch, m) = ev {
                server.send(id, ch, &m).unwrap();
            }
        }
        client.update(now).unwrap();
        while let Some(ev) = client.poll_event() {
            if let ClientEvent::Message(_, m) = ev {
                got.push(m);
            }
        }
        if client.is_connected() && i % 5 == 0 && i < 1000 {
            let m = message(0, i as usize);
            client.send(RELIABLE, &m).unwrap();
            sent.push(m);
        }
        if i > 1000 && got.len() == sent.len() {
            break;
        }
    }
    assert!(client.is_connected(), "seed {seed}");
    assert!(
        sent.len() > 150,
        "seed {seed}: connected late, sent {}",
        sent.len()
    );
    assert_eq!(got, sent, "seed {seed}");
}

#[test]
fn channel_configuration_mismatch_is_refused() {
    let net = LoopbackNet::new(LoopbackConfig::default());
    let mut server: Server<_> = Server::new(net.endpoint(), SessionConfig::default(), KEY).unwrap();
    let mut cfg = SessionConfig::default();
    cfg.connection.channels.pop();
    let mut client =
        Client::new(net.endpoint(), server.local_addr(), cfg, Duration::ZERO, 5).unwrap();
    let mut now = Duration::ZERO;
    for _ in 0..10 {
        now += STEP;
        client.update(now).unwrap();
        server.update(now).unwrap();
    }
    client.update(now + STEP).unwrap();
    assert!(matches!(
        client.state(),
        ClientState::Disconnected(DisconnectReason::Rejected {
            reason: statewire::packet::RejectReason::ChannelMismatch,
            ..
        })
    ));
    assert_eq!(server.client_count(), 0);
}

/// A datagram corrupted in flight fails the session AEAD and never reaches the connection.
#[test]
fn corrupted_data_packets_are_dropped_by_the_mac() {
    /// Flips one payload byte of every third data packet the client sends.
    struct Corrupting<T> {
        inner: T,
        n: u64,
    }
    impl<T: Transport> Transport for Corrupting<T> {
        fn local_addr(&self) -> std::net::SocketAddr {
            self.inner.local_addr()
        }
        fn max_payload(&self) -> usize {
            self.inner.max_payload()
        }
        fn send(
            &mut self,
            to: std::net::SocketAddr,
            p: &[u8],
        ) -> Result<(), statewire_transport::TransportError> {
            self.n += 1;
            if p.first() == Some(&0x24) && p.len() > 12 && self.n % 3 == 0 {
                let mut bad = p.to_vec();
                let i = 9 + (self.n as usize % (p.len() - 9));
                bad[i] ^= 0x40;
                return self.inner.send(to, &bad);
            }
            self.inner.send(to, p)
        }
        fn recv(
            &mut self,
            buf: &mut [u8],
        ) -> Result<Option<statewire_transport::Received>, statewire_transport::TransportError>
        {
            self.inner.recv(buf)
        }
    }
    let net = LoopbackNet::new(LoopbackConfig::default());
    let mut server: Server<_> = Server::new(net.endpoint(), SessionConfig::default(), KEY).unwrap();
    let addr = server.local_addr();
    let t = Corrupting {
        inner: net.endpoint(),
        n: 0,
    };
    let mut client = Client::new(t, addr, SessionConfig::default(), Duration::ZERO, 5).unwrap();
    let mut now = Duration::ZERO;
    let mut sent = Vec::new();
    let mut got = Vec::new();
    for i in 0..600usize {
        now += STEP;
        client.update(now).unwrap();
        if client.is_connected() && i % 3 == 0 && sent.len() < 100 {
            let m = message(3, i);
            client.send(RELIABLE, &m).unwrap();
            sent.push(m);
        }
        server.update(now).unwrap();
        while let Some(ev) = server.poll_event() {
            if let ServerEvent::Message(_, _, m) = ev {
                got.push(m);
            }
        }
    }
    assert_eq!(sent.len(), 100);
    assert_eq!(got, sent, "corruption must be dropped, then resent intact");
    assert!(server.stats().forged > 20, "{:?}", server.stats());
}

/// A client that restarts on the same address (new salt) replaces its old session at once
/// instead of waiting for the idle timeout; a stranger cannot, since the challenge goes to the
/// address.
#[test]
fn restarted_client_on_the_same_address_replaces_its_session() {
    let net = LoopbackNet::new(LoopbackConfig::default());
    let mut server: Server<_> = Server::new(net.endpoint(), SessionConfig::default(), KEY).unwrap();
    let addr = server.local_addr();
    let first = net.endpoint();
    let client_addr = first.local_addr();
    let mut a = Client::new(first, addr, SessionConfig::default(), Duration::ZERO, 1).unwrap();
    let mut now = Duration::ZERO;
    for _ in 0..10 {
        now += STEP;
        a.update(now).unwrap();
        server.update(now).unwrap();
    }
    let old_id = a.id().expect("connected");
    while server.poll_event().is_some() {}
    drop(a); // the process dies; its address is free again
    let again = net.bind(client_addr).unwrap();
    let mut b = Client::new(again, addr, SessionConfig::default(), now, 2).unwrap();
    let mut events = Vec::new();
    for _ in 0..10 {
        now += STEP;
        b.update(now).unwrap();
        server.update(now).unwrap();
        while let Some(ev) = server.poll_event() {
            events.push(ev);
        }
    }
    let new_id = b.id().expect("reconnected");
    assert_ne!(new_id, old_id);
    assert_eq!(
        events,
        vec![
            ServerEvent::Disconnected(old_id, DisconnectReason::Replaced),
            ServerEvent::Connected(new_id)
        ]
    );
    assert_eq!(server.client_count(), 1);
}

/// One source's handshake packets beyond its burst are dropped before any MAC is computed,
/// and another source is not held back by it.
#[test]
fn handshake_flood_from_one_source_is_rate_limited() {
    let net = LoopbackNet::new(LoopbackConfig {
        max_queued_datagrams: 20_000,
        ..LoopbackConfig::default()
    });
    let cfg = SessionConfig::default();
    let mut server: Server<_> = Server::new(net.endpoint(), cfg.clone(), KEY).unwrap();
    let mut rogue = net.endpoint();
    let mut pkt = Vec::new();
    Packet::ConnectRequest {
        protocol: cfg.protocol_id,
        version: cfg.version,
        salt: 9,
        channels: cfg.connection.fingerprint(),
    }
    .encode(&mut pkt);
    let burst = cfg.handshake_burst_per_ip as u64;
    for _ in 0..burst + 3_000 {
        rogue.send(server.local_addr(), &pkt).unwrap();
    }
    // All read at one instant (a few updates' worth of datagrams): no refill.
    for _ in 0..10 {
        if server.receive(Duration::from_millis(1)).unwrap() == 0 {
            break;
        }
    }
    assert_eq!(server.stats().rate_limited, 3_000, "{:?}", server.stats());
    // Another source IP has its own bucket: it is answered at once.
    let mut other = net.bind("127.0.2.1:5000".parse().unwrap()).unwrap();
    other.send(server.local_addr(), &pkt).unwrap();
    server.update(Duration::from_millis(1)).unwrap();
    let mut buf = [0u8; 256];
    assert!(
        other.recv(&mut buf).unwrap().is_some(),
        "the other source got its challenge"
    );
    assert_eq!(server.stats().rate_limited, 3_000, "{:?}", server.stats());
    // One second later the flooding source's bucket has refilled.
    rogue.send(server.local_addr(), &pkt).unwrap();
    server.update(Duration::from_millis(1_001)).unwrap();
    assert_eq!(server.stats().rate_limited, 3_000, "{:?}", server.stats());
}
