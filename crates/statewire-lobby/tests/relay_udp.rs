//! The relay over real UDP sockets on loopback: two ends bind with tickets and exchange 1,000
//! round trips through it, interleaved with 1,000 direct round trips between the same two
//! machines' worth of sockets, to measure what the relay adds.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use statewire::Key;
use statewire_lobby::relay::{self, Relay, RelayConfig, RelayPacket};
use statewire_lobby::ticket::{AllocId, RelayTicket, Role, TicketParams};

const ROUND_TRIPS: usize = 1_000;
const PAYLOAD: usize = 100;

fn socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    s
}

fn recv(s: &UdpSocket, buf: &mut [u8]) -> (usize, SocketAddr) {
    s.recv_from(buf)
        .expect("a datagram on lossless loopback did not arrive")
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn two_ends_exchange_through_a_udp_relay() {
    let key = Key::random();
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let config = RelayConfig {
        // The exchange runs as fast as loopback allows, far above a game's rate.
        packets_per_sec: 1_000_000,
        bytes_per_sec: 1 << 30,
        ..RelayConfig::default()
    };
    let relay_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let relay_addr = relay_socket.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(30);
    let thread = {
        let stop = stop.clone();
        let mut relay = Relay::new(key.clone(), config);
        std::thread::spawn(move || {
            let stats = relay::run_udp(&relay_socket, &mut relay, &|| {
                stop.load(Ordering::Relaxed) || Instant::now() > deadline
            })
            .unwrap();
            (stats, relay.stats())
        })
    };

    let (host, joiner) = (socket(), socket());
    let alloc_id = AllocId(getrandom::u64().unwrap());
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    for (s, role) in [(&host, Role::Host), (&joiner, Role::Joiner)] {
        let params = TicketParams {
            alloc_id,
            role,
            expires_unix_secs: unix + 60,
        };
        relay::encode_bind(&RelayTicket::seal(&key, &params).unwrap(), &mut out);
        s.send_to(&out, relay_addr).unwrap();
        let (n, from) = recv(s, &mut buf);
        assert_eq!(from, relay_addr);
        assert_eq!(
            relay::decode(&buf[..n]),
            Ok(RelayPacket::Bound { alloc_id, role })
        );
    }

    let (host_addr, joiner_addr) = (host.local_addr().unwrap(), joiner.local_addr().unwrap());
    let mut relayed = Vec::with_capacity(ROUND_TRIPS);
    let mut direct = Vec::with_capacity(ROUND_TRIPS);
    let mut payload = [0u8; PAYLOAD];
    for i in 0..ROUND_TRIPS {
        payload[..8].copy_from_slice(&(i as u64).to_le_bytes());

        // Through the relay: host → relay → joiner, joiner echoes → relay → host.
        relay::encode_data(alloc_id, &payload, &mut out);
        let t0 = Instant::now();
        host.send_to(&out, relay_addr).unwrap();
        let (n, from) = recv(&joiner, &mut buf);
        assert_eq!((from, &buf[..n]), (relay_addr, &out[..]), "round trip {i}");
        joiner.send_to(&buf[..n], relay_addr).unwrap();
        let (n, from) = recv(&host, &mut buf);
        relayed.push(t0.elapsed());
        assert_eq!((from, &buf[..n]), (relay_addr, &out[..]), "round trip {i}");

        // Direct, same sockets and size.
        let t0 = Instant::now();
        host.send_to(&out, joiner_addr).unwrap();
        let (n, _) = recv(&joiner, &mut buf);
        joiner.send_to(&buf[..n], host_addr).unwrap();
        let (n, _) = recv(&host, &mut buf);
        direct.push(t0.elapsed());
        assert_eq!(&buf[..n], &out[..]);
    }

    // A stranger is refused and reaches neither end.
    let stranger = socket();
    relay::encode_data(alloc_id, b"let me in", &mut out);
    stranger.send_to(&out, relay_addr).unwrap();
    let (n, _) = recv(&stranger, &mut buf);
    assert!(matches!(
        relay::decode(&buf[..n]),
        Ok(RelayPacket::Refused { .. })
    ));

    stop.store(true, Ordering::Relaxed);
    let (run, stats) = thread.join().unwrap();
    assert_eq!(stats.forwarded_packets, 2 * ROUND_TRIPS as u64);
    assert_eq!(stats.refused_unbound, 1);
    for s in [&host, &joiner] {
        s.set_nonblocking(true).unwrap();
        assert!(
            s.recv_from(&mut buf).is_err(),
            "an end got a stray datagram"
        );
    }

    let (p50_relay, p50_direct) = (median(&mut relayed), median(&mut direct));
    let added = p50_relay.saturating_sub(p50_direct);
    let cpu = run.busy / u32::try_from(run.received).unwrap();
    eprintln!(
        "relay over loopback, {ROUND_TRIPS} round trips of {} bytes: p50 rtt relayed {p50_relay:?}, \
         direct {p50_direct:?}, added {added:?} (two relay hops); p99 relayed {:?}, direct {:?}; \
         relay cpu {cpu:?} per datagram handled ({} datagrams, busy {:?})",
        PAYLOAD + relay::DATA_HEADER_LEN,
        relayed[relayed.len() * 99 / 100],
        direct[direct.len() * 99 / 100],
        run.received,
        run.busy,
    );
    assert!(added < Duration::from_millis(5), "relay adds {added:?}");
}
