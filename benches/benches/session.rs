//! The session layer's cost per packet.
//!
//! - `session/packet_1150`: the per-packet integrity work on a full 1,150-byte connection
//!   payload, before and after sealing: a SipHash-2-4 MAC (what data packets carried before
//!   connect tokens) against ChaCha20-Poly1305 seal + open (what every packet carries now), in
//!   the same group so they run interleaved on the same machine state.
//! - `session/token`: making a connect token (backend), and a server answering one token
//!   request (decode, XChaCha20-Poly1305 open, checks, sealed challenge, loopback send).
//! - `session/message_1000`: one 1,000-byte unreliable message from a connected client to the
//!   server over the loopback network, both endpoints' work included (connection framing,
//!   sealing, replay window, decoding).

use std::hash::Hasher;
use std::hint::black_box;
use std::time::Duration;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use statewire::packet::{Packet, TokenFields};
use statewire::{
    ChannelId, Client, ConnectToken, Key, Server, ServerEvent, SessionConfig, TokenConfig,
    TokenParams,
};
use statewire_core::ClientId;
use statewire_transport::Transport;
use statewire_transport::loopback::{LoopbackConfig, LoopbackNet};

fn packet(c: &mut Criterion) {
    let mut g = c.benchmark_group("session/packet_1150");
    g.throughput(Throughput::Bytes(1150));
    let payload: Vec<u8> = (0..1150u32).map(|i| i as u8).collect();
    g.bench_function("siphash_mac_before", |b| {
        b.iter(|| {
            let mut h = siphasher::sip::SipHasher24::new_with_keys(1, 2);
            h.write(black_box(&payload));
            black_box(h.finish())
        })
    });
    let cipher = ChaCha20Poly1305::new(&[7u8; 32].into());
    let mut buf = payload.clone();
    let mut seq = 0u64;
    g.bench_function("chacha20poly1305_seal_open_after", |b| {
        b.iter(|| {
            seq += 1;
            let mut n = [0u8; 12];
            n[4..].copy_from_slice(&seq.to_le_bytes());
            let nonce = Nonce::from(n);
            buf.copy_from_slice(&payload);
            let tag = cipher
                .encrypt_in_place_detached(&nonce, b"ad", &mut buf)
                .expect("seal");
            cipher
                .decrypt_in_place_detached(&nonce, b"ad", &mut buf, &tag)
                .expect("open");
            black_box(&buf);
        })
    });
    g.finish();
}

fn token(c: &mut Criterion) {
    let mut g = c.benchmark_group("session/token");
    let backend = Key::from_bytes([9; 32]);
    let net = LoopbackNet::new(LoopbackConfig {
        max_queued_datagrams: 1 << 20,
        ..LoopbackConfig::default()
    });
    let server_t = net.endpoint();
    let addr = server_t.local_addr();
    let params = TokenParams {
        protocol_id: SessionConfig::default().protocol_id,
        client_id: ClientId(5),
        server_addrs: vec![addr],
        expires_unix_secs: 2_000_000_000,
        timeout_secs: 10,
        user_data: [0; 32],
    };
    g.bench_function("generate", |b| {
        b.iter(|| black_box(ConnectToken::generate(&backend, &params).expect("token")))
    });
    let cfg = SessionConfig {
        // One source sends every request: do not rate-limit the benchmark itself.
        handshake_rate_per_ip: u32::MAX,
        handshake_burst_per_ip: u32::MAX,
        ..SessionConfig::default()
    };
    let tokens = TokenConfig {
        key: backend.clone(),
        public_addrs: vec![addr],
        unix_time_at_zero: Duration::from_secs(1_900_000_000),
    };
    let mut server: Server<_> =
        Server::with_tokens(server_t, cfg.clone(), Key::from_bytes([1; 32]), tokens)
            .expect("server");
    let t = ConnectToken::generate(&backend, &params).expect("token");
    let mut request = Vec::new();
    Packet::TokenRequest(TokenFields {
        protocol: cfg.protocol_id,
        version: cfg.version,
        channels: cfg.connection.fingerprint(),
        expires: t.expires_unix_secs,
        token: t.private,
    })
    .encode(&mut request);
    let mut attacker = net.endpoint();
    let mut sink = vec![0u8; 2048];
    let mut now = Duration::ZERO;
    g.bench_function("server_answers_request", |b| {
        b.iter(|| {
            attacker.send(addr, &request).expect("send");
            now += Duration::from_micros(1);
            black_box(server.receive(now).expect("receive"));
            while attacker.recv(&mut sink).expect("recv").is_some() {}
        })
    });
    g.finish();
}

fn message(c: &mut Criterion) {
    let mut g = c.benchmark_group("session/message_1000");
    g.throughput(Throughput::Bytes(1000));
    let net = LoopbackNet::new(LoopbackConfig::default());
    let mut server: Server<_> = Server::new(
        net.endpoint(),
        SessionConfig::default(),
        Key::from_bytes([1; 32]),
    )
    .expect("server");
    let addr = server.local_addr();
    let mut client = Client::new(
        net.endpoint(),
        addr,
        SessionConfig::default(),
        Duration::ZERO,
        3,
    )
    .expect("client");
    let mut now = Duration::ZERO;
    for _ in 0..100 {
        now += Duration::from_millis(10);
        client.update(now).expect("client");
        server.update(now).expect("server");
        while server.poll_event().is_some() {}
        while client.poll_event().is_some() {}
    }
    assert!(client.is_connected(), "the benchmark client connects");
    let msg = vec![5u8; 1000];
    g.bench_function("client_to_server", |b| {
        b.iter(|| {
            // Under the server's default limit of 1,000 messages a second per client.
            now += Duration::from_micros(1_100);
            if let Err(e) = client.send(ChannelId(1), &msg) {
                panic!("send: {e} ({:?})", client.state());
            }
            client.flush(now).expect("flush");
            server.receive(now).expect("receive");
            let mut got = 0;
            while let Some(ev) = server.poll_event() {
                if let ServerEvent::Message(..) = ev {
                    got += 1;
                }
            }
            // Acks and keep-alives back to the client, so pacing never stalls.
            server.flush(now).expect("flush");
            client.update(now).expect("client");
            while client.poll_event().is_some() {}
            black_box(got)
        })
    });
    g.finish();
}

criterion_group!(benches, packet, token, message);
criterion_main!(benches);
