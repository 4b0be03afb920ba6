//! `sim --adversary`, at the session level: attacks on the game server that run beside the
//! game, each of which must cost the server nothing but CPU, and the attacker nothing but its
//! own connection.
//!
//! - A **junk flood** and **forged packets** (sealed data under guessed keys, handshakes with
//!   guessed cookies) from an attacker's own address.
//! - An **on-path replayer and forger** at a victim's address: every tick it sends one of the
//!   victim's old datagrams again, and one sealed packet under a guessed key, from the
//!   victim's socket. The victim is a plain session client on a lossless link, so every
//!   refusal can be counted exactly: [`statewire::PeerStats`] must show each one.
//! - A **client that never acknowledges**: it completes the handshake, then throws away
//!   everything it receives while its keep-alives keep the session alive; the server must stop
//!   streaming to it (pacing) and disconnect it as unresponsive.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use statewire::{Client, SessionConfig};
use statewire_transport::netsim::SimRng;
use statewire_transport::{Received, Transport, TransportError};

/// Junk datagrams the attacker sends per tick.
const JUNK_PER_TICK: usize = 200;
/// Only datagrams at least this many ticks old are replayed (surely handled already).
const REPLAY_AGE: usize = 10;
/// Victim datagrams remembered for replaying.
const REPLAY_MEMORY: usize = 64;

#[derive(Debug, Default)]
struct TapState {
    sent: VecDeque<Vec<u8>>,
    /// Discard everything received (after counting it).
    deaf: bool,
    bytes_received: u64,
}

/// A transport wrapper that records what its client sends, can go deaf, and counts what it
/// receives.
pub(crate) struct Tap {
    inner: Box<dyn Transport>,
    state: Rc<RefCell<TapState>>,
}

impl Transport for Tap {
    fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }
    fn max_payload(&self) -> usize {
        self.inner.max_payload()
    }
    fn send(&mut self, to: SocketAddr, payload: &[u8]) -> Result<(), TransportError> {
        let mut st = self.state.borrow_mut();
        // Sealed data packets only: their refusals are counted per peer.
        if payload.first() == Some(&0x24) {
            if st.sent.len() >= REPLAY_MEMORY {
                st.sent.pop_front();
            }
            st.sent.push_back(payload.to_vec());
        }
        drop(st);
        self.inner.send(to, payload)
    }
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<Received>, TransportError> {
        // Bounded: a deaf endpoint drains at most this many datagrams per call.
        for _ in 0..4096 {
            let Some(g) = self.inner.recv(buf)? else {
                return Ok(None);
            };
            let mut st = self.state.borrow_mut();
            st.bytes_received += g.len as u64;
            if !st.deaf {
                return Ok(Some(g));
            }
        }
        Ok(None)
    }
    fn poll_closed_peer(&mut self) -> Option<SocketAddr> {
        self.inner.poll_closed_peer()
    }
}

/// What the attacks did; the server's view of them is read from its counters.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AttackCounts {
    /// Replays sent from the victim's address.
    pub(crate) replays: u64,
    /// Forged sealed packets sent from the victim's address.
    pub(crate) victim_forgeries: u64,
    /// Junk and forged datagrams sent from the attacker's address.
    pub(crate) junk: u64,
    /// Bytes sent to the never-acknowledging client after it went deaf.
    pub(crate) bytes_to_unacking_peer: u64,
    /// Of those, bytes in its first second (before pacing stops the stream).
    pub(crate) bytes_to_unacking_peer_first_sec: u64,
}

/// The session-level attackers of one run.
pub(crate) struct Attack {
    server: SocketAddr,
    attacker: Box<dyn Transport>,
    pub(crate) victim: Client<Tap>,
    victim_tap: Rc<RefCell<TapState>>,
    pub(crate) unacking: Client<Tap>,
    unacking_tap: Rc<RefCell<TapState>>,
    unacking_since: Option<Duration>,
    rng: SimRng,
    pub(crate) counts: AttackCounts,
    buf: Vec<u8>,
}

impl Attack {
    /// Attackers against `server` on three transports of the run's kind.
    pub(crate) fn new(
        server: SocketAddr,
        cfg: &SessionConfig,
        [attacker, victim, unacking]: [Box<dyn Transport>; 3],
        seed: u64,
    ) -> Result<Self, statewire::connection::ConfigError> {
        let victim_tap = Rc::new(RefCell::new(TapState::default()));
        let unacking_tap = Rc::new(RefCell::new(TapState::default()));
        let tap = |inner, state: &Rc<RefCell<TapState>>| Tap {
            inner,
            state: state.clone(),
        };
        Ok(Attack {
            server,
            attacker,
            victim: Client::new(
                tap(victim, &victim_tap),
                server,
                cfg.clone(),
                Duration::ZERO,
                seed ^ 0x7669,
            )?,
            victim_tap,
            unacking: Client::new(
                tap(unacking, &unacking_tap),
                server,
                // It hears nothing once deaf, but must not give up itself: its keep-alives are
                // the attack.
                SessionConfig {
                    connection: statewire::ConnectionConfig {
                        idle_timeout: Duration::from_secs(3600),
                        ..cfg.connection.clone()
                    },
                    ..cfg.clone()
                },
                Duration::ZERO,
                seed ^ 0x5117,
            )?,
            unacking_tap,
            unacking_since: None,
            rng: SimRng::new(seed ^ 0x00a7_7ac4),
            counts: AttackCounts::default(),
            buf: vec![0; 2048],
        })
    }

    /// Whether both attack clients completed their handshakes.
    pub(crate) fn connected(&self) -> bool {
        self.victim.is_connected()
            && (self.unacking.is_connected() || self.unacking_since.is_some())
    }

    fn junk(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.rng.next_u64() as u8).collect()
    }

    /// A sealed-looking packet of `kind` under a key nobody has.
    fn forged_sealed(&mut self, kind: u8) -> Vec<u8> {
        let len = 8 + (self.rng.next_u64() % 64) as usize + 16;
        let mut p = vec![kind];
        p.extend(self.junk(len));
        p
    }

    /// One tick of every attack; `attacking` is false during the connect phase.
    pub(crate) fn step(&mut self, now: Duration, attacking: bool) -> Result<(), TransportError> {
        self.victim.update(now)?;
        while self.victim.poll_event().is_some() {}
        self.unacking.update(now)?;
        while self.unacking.poll_event().is_some() {}
        while self.attacker.recv(&mut self.buf)?.is_some() {}
        if !attacking {
            return Ok(());
        }
        // The unacking client goes deaf once the attack starts: it acknowledges nothing more.
        if self.unacking_since.is_none() && self.unacking.is_connected() {
            self.unacking_since = Some(now);
            let mut st = self.unacking_tap.borrow_mut();
            st.deaf = true;
            st.bytes_received = 0;
        }
        if let Some(since) = self.unacking_since {
            let got = self.unacking_tap.borrow().bytes_received;
            self.counts.bytes_to_unacking_peer = got;
            if now.saturating_sub(since) <= Duration::from_secs(1) {
                self.counts.bytes_to_unacking_peer_first_sec = got;
            }
        }
        // Junk and forgeries from the attacker's own address.
        for i in 0..JUNK_PER_TICK {
            let p = match i % 4 {
                0 => self.forged_sealed(0x24),
                1 => {
                    let mut p = vec![0x12];
                    p.extend(self.junk(24));
                    p.resize(statewire::packet::REQUEST_LEN, 0);
                    p
                }
                _ => {
                    let len = 1 + (self.rng.next_u64() % 300) as usize;
                    self.junk(len)
                }
            };
            // A full or refusing transport is the attacker's problem, not the server's.
            if self.attacker.send(self.server, &p).is_ok() {
                self.counts.junk += 1;
            }
        }
        // Replays and forgeries from the victim's own socket.
        let old = {
            let st = self.victim_tap.borrow();
            st.sent
                .len()
                .checked_sub(REPLAY_AGE)
                .and_then(|i| st.sent.get(i).cloned())
        };
        let victim = self.victim.transport_mut();
        if let Some(old) = old {
            if victim.inner.send(self.server, &old).is_ok() {
                self.counts.replays += 1;
            }
        }
        let forged = self.forged_sealed(0x24);
        let victim = self.victim.transport_mut();
        if victim.inner.send(self.server, &forged).is_ok() {
            self.counts.victim_forgeries += 1;
        }
        Ok(())
    }
}
