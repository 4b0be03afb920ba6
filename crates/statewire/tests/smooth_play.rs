//! The endpoints' clocks over a simulated 200 ms ± 50 ms link with 4 % loss: the client's
//! tick clock runs ahead of the server so that its inputs arrive just before their tick, the
//! server measures and reports how early they arrive, the render clock settles on a delay that
//! covers the jitter, and a proposal stamped with the client's own (future) tick is resolved
//! when the server reaches that tick.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use statewire::endpoint::*;
use statewire_core::{Owner, Tick};
use statewire_testkit::Pos;
use statewire_transport::Transport;
use statewire_transport::loopback::{LoopbackConfig, LoopbackEndpoint, LoopbackNet};
use statewire_transport::netsim::{LinkConfig, NetSim};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
struct Steer(i8);

const HZ: u32 = 30;
const SHOT: u16 = 3;

fn at(frame: u32) -> Duration {
    Duration::from_secs(1) * frame / HZ
}

type Link = NetSim<LoopbackEndpoint>;

/// What one run measured.
#[derive(Debug)]
struct Run {
    received: u64,
    late: u64,
    early_by: Vec<f32>,
    delay_ms: Vec<f64>,
    lead_ticks: Vec<f64>,
    rtt_ms: Vec<f64>,
    /// (stamped tick, tick the server resolved it at).
    shots: Vec<(Tick, Tick)>,
    render_behind_newest: bool,
    inputs_seen: usize,
    /// Over the whole run: inputs the clients sent, and inputs the server received.
    sent_total: u64,
    received_total: u64,
}

fn run(profile: &str, seed: u64, frames: u32) -> Run {
    let protocol = Protocol::new().with::<Pos>().unwrap();
    let net = LoopbackNet::new(LoopbackConfig::default());
    let link = LinkConfig::profile(profile).unwrap();
    let wrap = |t: LoopbackEndpoint, s: u64| NetSim::new(t, link.clone(), seed * 100 + s);
    let server_t = wrap(net.endpoint(), 0);
    let addr = server_t.local_addr();
    let mut server: GameServer<Link, Steer> =
        GameServer::new(server_t, &protocol, GameServerConfig::default()).unwrap();
    let config = GameClientConfig {
        tick_rate_hz: HZ,
        handshake_salt: Some(seed),
        ..GameClientConfig::default()
    };
    let mut clients: Vec<GameClient<Link, Steer>> = (1..=2)
        .map(|i| {
            GameClient::new(
                wrap(net.endpoint(), i),
                addr,
                &protocol,
                config.clone(),
                Duration::ZERO,
            )
            .unwrap()
        })
        .collect();
    let mut shots = Vec::new();
    let mut stamped = Vec::new();
    let mut render_behind_newest = true;
    let mut inputs_seen = 0;
    let mut delay_ms = Vec::new();
    let mut lead_ticks = Vec::new();
    let mut rtt_ms = Vec::new();
    let mut half = (0, 0);
    for f in 0..frames {
        if f == frames / 2 {
            half = (server.stats().inputs_received, server.stats().inputs_late);
        }
        let now = at(f);
        server
            .session_mut()
            .transport_mut()
            .advance_to(now)
            .unwrap();
        for c in &mut clients {
            c.session_mut().transport_mut().advance_to(now).unwrap();
        }
        server.update(now).unwrap();
        while let Some(ev) = server.poll_event() {
            match ev {
                GameServerEvent::Joined(id) => {
                    let e = server.spawn(Owner::Client(id)).unwrap();
                    server
                        .store_mut()
                        .entity_mut(e)
                        .unwrap()
                        .set(&Pos { x: 0.0, y: 0.0 })
                        .unwrap();
                }
                GameServerEvent::Input { .. } => inputs_seen += 1,
                _ => {}
            }
        }
        let resolved = server.resolve_events(|p, _| p.kind == SHOT);
        shots.extend(
            resolved
                .iter()
                .map(|e| (stamped[e.data[0] as usize], e.tick)),
        );
        server.flush(now).unwrap();
        for (i, c) in clients.iter_mut().enumerate() {
            c.update(now).unwrap();
            while c.poll_event().is_some() {}
            let a = c.advance(now);
            for t in a.ticks() {
                c.set_input_at(t, &Steer((t.0 % 3) as i8 - 1));
            }
            if let (Some(r), Some(newest)) = (c.render_time(now), c.tick()) {
                render_behind_newest &= !r.tick().is_after(newest);
            }
            // Client 0 fires at frames 300 and 400, stamped with its own tick.
            if i == 0 && (f == 300 || f == 400) {
                let t = c.input_tick().unwrap();
                let n = stamped.len() as u8;
                stamped.push(t);
                c.propose_at(t, SHOT, &[], &[n]).unwrap();
            }
            if f > frames / 2 {
                delay_ms.push(c.render_clock().delay().as_secs_f64() * 1e3);
                if let Some(l) = c.clock().lead(now) {
                    lead_ticks.push(l);
                }
                rtt_ms.push(c.rtt().unwrap().as_secs_f64() * 1e3);
            }
            c.flush(now).unwrap();
        }
    }
    let stats = server.stats();
    let early_by = server
        .clients()
        .iter()
        .map(|&id| server.input_timing(id).unwrap().early_by)
        .collect();
    Run {
        sent_total: clients.iter().map(|c| c.stats().inputs_sent).sum(),
        received_total: stats.inputs_received,
        received: stats.inputs_received - half.0,
        late: stats.inputs_late - half.1,
        early_by,
        delay_ms,
        lead_ticks,
        rtt_ms,
        shots,
        render_behind_newest,
        inputs_seen,
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

#[test]
fn inputs_arrive_just_in_time_over_a_poor_link() {
    for seed in [1u64, 2] {
        let r = run("poor", seed, 900);
        let ctx = format!(
            "profile poor, seed {seed}: {} of {} late, early by {:?}, delay {:.0} ms, lead {:.1}, rtt {:.0} ms, shots {:?}",
            r.late,
            r.received,
            r.early_by,
            mean(&r.delay_ms),
            mean(&r.lead_ticks),
            mean(&r.rtt_ms),
            r.shots
        );
        // Two clients for the second half of the run (15 s), each input once.
        assert!(r.received > 2 * 400, "{ctx}");
        assert!(r.inputs_seen as u64 >= r.received - r.late, "{ctx}");
        // Late inputs are rare: the lead covers the jitter.
        assert!(
            r.late * 100 <= r.received,
            "{} late of {}: {ctx}",
            r.late,
            r.received
        );
        // ... and not wastefully early: the mean is within a few ticks of just in time.
        for &e in &r.early_by {
            assert!((0.0..=6.0).contains(&e), "early by {e} ticks: {ctx}");
        }
        // The lead is about half the round trip (≈ 6 ticks at 400 ms) plus a margin.
        let half_rtt_ticks = mean(&r.rtt_ms) / 2.0 / 1e3 * f64::from(HZ);
        let lead = mean(&r.lead_ticks);
        assert!(
            lead > half_rtt_ticks && lead < half_rtt_ticks + 8.0,
            "lead {lead:.1} ticks for half an RTT of {half_rtt_ticks:.1}: {ctx}"
        );
        // The interpolation delay covers 50 ms of jitter and one lost snapshot, within its
        // bounds.
        let delay = mean(&r.delay_ms);
        assert!(
            (60.0..=500.0).contains(&delay),
            "delay {delay:.0} ms: {ctx}"
        );
        assert!(r.render_behind_newest, "{ctx}");
        // Both shots were stamped ahead of the server and resolved at their own tick.
        assert_eq!(r.shots.len(), 2, "{ctx}");
        for &(stamp, resolved) in &r.shots {
            assert_eq!(stamp, resolved, "{ctx}");
        }
    }
}

#[test]
fn a_perfect_link_needs_only_the_minimum_lead() {
    let r = run("perfect", 1, 300);
    let ctx = format!(
        "{} of {} late, early by {:?}",
        r.late, r.received, r.early_by
    );
    assert!(r.received > 2 * 100, "{ctx}");
    assert_eq!(r.late, 0, "{ctx}");
    for &e in &r.early_by {
        assert!((0.0..=3.0).contains(&e), "early by {e} ticks: {ctx}");
    }
}

/// A link that loses, duplicates and reorders a lot (250 ± 100 ms, 25 % loss, 10 %
/// reordered): each input is counted once whatever order its copies arrive in, and nearly all
/// arrive (three copies each: all three lost is about 1.6 %).
#[test]
fn reordered_and_duplicated_inputs_are_counted_once() {
    let r = run("hostile", 3, 600);
    let ctx = format!(
        "hostile, seed 3: {} of {} received",
        r.received_total, r.sent_total
    );
    assert!(r.received_total <= r.sent_total, "{ctx}");
    assert!(r.received_total * 100 >= r.sent_total * 96, "{ctx}");
}

/// A frame that covers more ticks than the redundancy (a hitch) still sends every input.
#[test]
fn a_frame_of_many_ticks_sends_every_input() {
    let protocol = Protocol::new().with::<Pos>().unwrap();
    let net = LoopbackNet::new(LoopbackConfig::default());
    let server_t = net.endpoint();
    let addr = server_t.local_addr();
    let mut server: GameServer<LoopbackEndpoint, Steer> =
        GameServer::new(server_t, &protocol, GameServerConfig::default()).unwrap();
    let config = GameClientConfig {
        handshake_salt: Some(5),
        ..GameClientConfig::default()
    };
    let mut client: GameClient<LoopbackEndpoint, Steer> =
        GameClient::new(net.endpoint(), addr, &protocol, config, Duration::ZERO).unwrap();
    let frame = |server: &mut GameServer<_, _>, client: &mut GameClient<_, _>, f: u32| {
        let now = at(f);
        server.update(now).unwrap();
        while server.poll_event().is_some() {}
        server.flush(now).unwrap();
        client.update(now).unwrap();
        while client.poll_event().is_some() {}
    };
    let mut f = 0;
    while client.tick().is_none() && f < 100 {
        frame(&mut server, &mut client, f);
        client.flush(at(f)).unwrap();
        f += 1;
    }
    let first = client.input_tick().unwrap().0 + 10;
    for k in 0..6 {
        client.set_input_at(Tick(first + k), &Steer(k as i8));
    }
    client.flush(at(f)).unwrap();
    for g in f..f + 5 {
        frame(&mut server, &mut client, g);
    }
    assert_eq!(server.stats().inputs_received, 6);
    assert_eq!(client.stats().inputs_sent, 6);
}

/// A budget too small for the changes makes snapshots partial (the client is told, so that
/// it does not take the entities a packet left out as standing still); once the changes stop,
/// they are complete again.
#[test]
fn snapshots_say_when_the_budget_left_changes_out() {
    let protocol = Protocol::new().with::<Pos>().unwrap();
    let net = LoopbackNet::new(LoopbackConfig::default());
    let server_t = net.endpoint();
    let addr = server_t.local_addr();
    let mut config = GameServerConfig::default();
    config.replication.max_packet_bytes = 200;
    let mut server: GameServer<LoopbackEndpoint, Steer> =
        GameServer::new(server_t, &protocol, config).unwrap();
    let ids: Vec<_> = (0..300)
        .map(|_| server.spawn(Owner::Server).unwrap())
        .collect();
    let config = GameClientConfig {
        handshake_salt: Some(9),
        ..GameClientConfig::default()
    };
    let mut client: GameClient<LoopbackEndpoint, Steer> =
        GameClient::new(net.endpoint(), addr, &protocol, config, Duration::ZERO).unwrap();
    let (mut partial, mut complete_after_stop) = (0, false);
    for f in 0..400u32 {
        let now = at(f);
        server.update(now).unwrap();
        while server.poll_event().is_some() {}
        if f < 200 {
            for (i, &e) in ids.iter().enumerate() {
                let x = (f as f32 + i as f32) / 16.0 % 500.0;
                server.store_mut().set(e, &Pos { x, y: 0.0 }).unwrap();
            }
        }
        server.flush(now).unwrap();
        client.update(now).unwrap();
        while client.poll_event().is_some() {}
        client.flush(now).unwrap();
        if client.tick().is_some() {
            if f < 200 {
                partial += u32::from(!client.snapshot_complete());
            } else {
                complete_after_stop |= client.snapshot_complete();
            }
        }
    }
    assert!(
        partial > 150,
        "{partial} partial snapshots while 300 entities changed"
    );
    assert!(complete_after_stop);
    assert!(client.snapshot_complete());
}
