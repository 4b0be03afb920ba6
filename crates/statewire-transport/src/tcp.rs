//! TCP transport: length-prefixed frames over non-blocking std sockets.
//!
//! [`TcpTransport`] makes TCP connections look like a datagram [`Transport`]: each peer is
//! identified by the remote [`SocketAddr`] of its connection, one [`send`](Transport::send) is
//! one frame, and one [`recv`](Transport::recv) returns one whole frame. Unlike UDP, frames from
//! one peer arrive exactly once and in order for as long as its connection lives.
//!
//! A transport is either a server ([`TcpTransport::listen`]), which accepts connections inside
//! its `recv` calls, or a client ([`TcpTransport::connect`]) with a single connection. Nothing
//! blocks after construction, and there are no threads.
//!
//! # Wire format
//!
//! Each frame is a 4-byte little-endian unsigned length followed by that many payload bytes.
//! Zero-length frames are valid, so every payload a UDP socket would carry is carried here too.
//! 32 bits rather than 16 leave room for a [`TcpConfig::max_frame`] above 64 KiB; the limit, not
//! the header width, is what bounds memory.
//!
//! # Limits and misbehaving peers
//!
//! Every buffer is bounded by a [`TcpConfig`] field. A peer whose frame header announces more
//! than [`TcpConfig::max_frame`] bytes is disconnected as soon as the 4 header bytes are in,
//! before any of the body is buffered; garbage input almost always looks like such a header.
//! Other peers are unaffected. Closed connections are reported by
//! [`TcpTransport::poll_disconnected`] (and so by [`Transport::poll_closed_peer`]) and counted in
//! [`TcpStats`].
//!
//! A peer that is slow to read is not disconnected: frames to it queue in its write buffer and,
//! once [`TcpConfig::max_write_buffer_per_peer`] is reached, further frames to it are dropped and
//! counted in [`TcpStats::dropped_write_full`], as a congested network would drop datagrams.
//! Session code built for UDP copes with that already; code that wants to see the backpressure
//! can check [`TcpTransport::pending_write_bytes`]. A peer that sends faster than `recv` is
//! called is flow-controlled by TCP once its read buffer is full.
//!
//! # Drain rule and fairness
//!
//! Call [`Transport::recv`] every tick until it returns `Ok(None)`: besides returning frames it
//! accepts connections and writes out whatever an earlier [`Transport::send`] could not hand to
//! the socket at once (`send` writes eagerly; only the remainder waits).
//!
//! One `recv` call accepts at most [`TcpConfig::max_accepts_per_call`] connections, then visits
//! the peers round-robin, starting after the peer that produced the previous frame, and stops at
//! the first complete frame. Visiting a peer flushes its pending writes and, only if no complete
//! frame is already buffered, makes one read of at most [`TcpConfig::max_read_per_peer_per_call`]
//! bytes; a server skips that read if it already read the peer since the last `recv` that
//! returned `Ok(None)`. So one flooding peer gets one frame per turn like everyone else, and a
//! server's drain reads each connection at most once: its cost is one read per connection plus
//! one call per frame, not one read per connection per frame. Bytes that arrive at a connection
//! after its read wait for the next drain.
//!
//! # Timeouts and admission (servers)
//!
//! A server reads the clock ([`Instant::now`], once per `recv`) and, at most every 100 ms, closes
//! the connections that were not marked validated within [`TcpConfig::handshake_timeout`], and
//! those from which nothing was read for [`TcpConfig::idle_timeout`]. So a peer that connects
//! and then says nothing, or drips half a frame, loses its slot. The session layer marks a peer
//! validated with [`Transport::mark_validated`] once it completed the handshake; until then the
//! connection is unproven. Timers are checked inside `recv`, so they fire up to 100 ms plus the
//! gap between two `recv` calls late.
//!
//! When [`TcpConfig::max_connections`] are held, a new connection evicts the oldest unproven one
//! rather than being refused, so idle or half-open connections cannot lock legitimate clients
//! out; validated connections are never evicted, and if all are validated the newcomer is
//! refused. One IP address holds at most [`TcpConfig::max_connections_per_ip`] connections.
//! Every connection's frames pass a token bucket ([`TcpConfig::max_frames_per_sec`],
//! [`TcpConfig::frame_burst`]; zero-length frames count); a connection that exceeds it is
//! disconnected, so a flood of tiny frames costs about one `recv` call per frame up to the burst
//! and then ends. All of these closes are reported by [`TcpTransport::poll_disconnected`] and
//! counted in [`TcpStats`].
//!
//! A client's one connection has none of these timers and limits: its server is trusted to be
//! what it connected to, and its session layer times the server out.
//!
//! ```
//! use statewire_transport::Transport;
//! use statewire_transport::tcp::{TcpConfig, TcpTransport};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut server = TcpTransport::listen("127.0.0.1:0".parse()?, TcpConfig::default())?;
//! let mut client = TcpTransport::connect(server.local_addr(), TcpConfig::default())?;
//! client.send(server.local_addr(), b"hello")?;
//!
//! let mut buf = vec![0u8; server.max_payload()];
//! // Poll, with a bound: the server accepts the connection and reads the frame in `recv`.
//! let mut got = None;
//! for _ in 0..2000 {
//!     got = server.recv(&mut buf)?;
//!     if got.is_some() {
//!         break;
//!     }
//!     std::thread::sleep(std::time::Duration::from_millis(1));
//! }
//! let got = got.expect("loopback delivers within 2 s");
//! assert_eq!((&buf[..got.len], got.from), (&b"hello"[..], client.local_addr()));
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::{Received, Transport, TransportError};

/// Bytes of the length prefix in front of every frame.
pub const FRAME_HEADER_LEN: usize = 4;

/// How often a server checks its timers and refills the frame-rate buckets: often enough that
/// timeouts fire close to their deadline, rarely enough that a `recv` call that finds a timer
/// not yet due costs one clock read.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// Settings of a [`TcpTransport`].
///
/// The transport buffers at most `max_read_per_peer_per_call` bytes plus, per connection,
/// `max_read_buffer_per_peer` and `max_write_buffer_per_peer` bytes (allocations may round up),
/// for at most `max_connections` connections; the kernel's socket buffers come on top.
///
/// The admission and timeout fields (`handshake_timeout`, `idle_timeout`,
/// `max_connections_per_ip`, `max_frames_per_sec`, `frame_burst`) apply to a server's
/// connections only; see the [module docs](self#timeouts-and-admission-servers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConfig {
    /// Largest frame payload, in bytes, in either direction: larger sends fail with
    /// [`TransportError::PayloadTooLarge`], and a peer announcing a larger frame is
    /// disconnected. At most `u32::MAX`. [`Transport::max_payload`] returns it.
    ///
    /// Default: 65 536.
    pub max_frame: usize,
    /// Most connections a server holds at once. A connection beyond it evicts the oldest
    /// connection not yet marked validated ([`Transport::mark_validated`]), counted in
    /// [`TcpStats::disconnected_evicted`]; if every connection is validated, the newcomer is
    /// accepted and closed at once, and counted in [`TcpStats::rejected_full`]. Ignored by
    /// clients.
    ///
    /// Default: 256.
    pub max_connections: usize,
    /// Most connections a server holds from one IP address (IPv4-mapped IPv6 addresses count
    /// as their IPv4 address); further ones are accepted and closed at once, and counted in
    /// [`TcpStats::rejected_per_ip`]. Bounds how many slots one host can take, while leaving
    /// room for players behind one NAT. Must be at least 1. Ignored by clients.
    ///
    /// Default: 16.
    pub max_connections_per_ip: usize,
    /// How long a server keeps a connection that has not been marked validated
    /// ([`Transport::mark_validated`]) since it was accepted; then it is closed with
    /// [`DisconnectReason::HandshakeTimeout`]. A session handshake takes a few round trips, so
    /// this only has to cover slow links and a lost packet or two. Must not be zero. Ignored
    /// by clients.
    ///
    /// Default: 5 s.
    pub handshake_timeout: Duration,
    /// How long a server keeps a connection from which no byte has been read; then it is closed
    /// with [`DisconnectReason::IdleTimeout`]. Sessions send keepalives far more often (every
    /// 250 ms by default), so this only catches peers that went silent. Must not be zero.
    /// Ignored by clients.
    ///
    /// Default: 15 s.
    pub idle_timeout: Duration,
    /// Sustained frames per second a server accepts from one connection, zero-length frames
    /// included. A connection that has used up its [`frame_burst`](Self::frame_burst) and sends
    /// faster is closed with [`DisconnectReason::FrameRateExceeded`]. A game session sends a
    /// few packets per tick; this is far above that and far below a flood. Must be at least 1.
    /// Ignored by clients.
    ///
    /// Default: 1000.
    pub max_frames_per_sec: u32,
    /// Frames a server's connection may send at once above
    /// [`max_frames_per_sec`](Self::max_frames_per_sec): the size of its token bucket, full
    /// when the connection is accepted. Must be at least 1. Ignored by clients.
    ///
    /// Default: 2000.
    pub frame_burst: u32,
    /// Most received bytes buffered per connection. When it is full nothing more is read from
    /// that connection until frames are taken out, so TCP flow control slows the peer down.
    /// Must be at least `max_frame + FRAME_HEADER_LEN`, so a largest frame fits.
    ///
    /// Default: 131 072 (128 KiB).
    pub max_read_buffer_per_peer: usize,
    /// Most bytes (headers included) queued per connection that the socket has not taken yet.
    /// A send that does not fit is dropped and counted in [`TcpStats::dropped_write_full`].
    /// Must be at least `max_frame + FRAME_HEADER_LEN`, so a largest frame can be queued.
    ///
    /// Default: 262 144 (256 KiB).
    pub max_write_buffer_per_peer: usize,
    /// Most bytes read from one connection in one [`Transport::recv`] call; also the size of the
    /// transport's one scratch buffer. A server reads each connection at most once per drain
    /// (see the [module docs](self#drain-rule-and-fairness)), so this also bounds what one
    /// connection delivers per drain. Must be at least 1.
    ///
    /// Default: 65 536.
    pub max_read_per_peer_per_call: usize,
    /// Most connections a server accepts in one [`Transport::recv`] call, so a connection flood
    /// cannot stall frame delivery; the rest wait in the listen backlog. 0 counts as 1.
    /// Ignored by clients.
    ///
    /// Default: 32.
    pub max_accepts_per_call: usize,
    /// Most disconnect notices held for [`TcpTransport::poll_disconnected`]. Further notices
    /// are dropped and counted in [`TcpStats::dropped_disconnect_notices`];
    /// [`TcpTransport::connected_peers`] stays accurate regardless.
    ///
    /// Default: 1024.
    pub max_pending_disconnects: usize,
    /// How long [`TcpTransport::connect`] waits for the connection; the only blocking call.
    /// Must not be zero.
    ///
    /// Default: 5 s.
    pub connect_timeout: Duration,
    /// Whether to disable Nagle's algorithm (`TCP_NODELAY`), so small frames leave at once
    /// instead of waiting to be coalesced; game traffic wants low latency.
    ///
    /// Default: `true`.
    pub nodelay: bool,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            max_frame: 65_536,
            max_connections: 256,
            max_connections_per_ip: 16,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(15),
            max_frames_per_sec: 1000,
            frame_burst: 2000,
            max_read_buffer_per_peer: 128 * 1024,
            max_write_buffer_per_peer: 256 * 1024,
            max_read_per_peer_per_call: 64 * 1024,
            max_accepts_per_call: 32,
            max_pending_disconnects: 1024,
            connect_timeout: Duration::from_secs(5),
            nodelay: true,
        }
    }
}

impl TcpConfig {
    fn validate(&self) -> io::Result<()> {
        let invalid = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        if u32::try_from(self.max_frame).is_err() {
            return invalid(format!("max_frame {} exceeds u32::MAX", self.max_frame));
        }
        let largest = self.max_frame + FRAME_HEADER_LEN;
        if self.max_read_buffer_per_peer < largest {
            return invalid(format!(
                "max_read_buffer_per_peer {} is below max_frame + {FRAME_HEADER_LEN} = {largest}",
                self.max_read_buffer_per_peer
            ));
        }
        if self.max_write_buffer_per_peer < largest {
            return invalid(format!(
                "max_write_buffer_per_peer {} is below max_frame + {FRAME_HEADER_LEN} = {largest}",
                self.max_write_buffer_per_peer
            ));
        }
        if self.max_read_per_peer_per_call == 0 {
            return invalid("max_read_per_peer_per_call must be at least 1".to_owned());
        }
        if self.max_connections_per_ip == 0 {
            return invalid("max_connections_per_ip must be at least 1".to_owned());
        }
        if self.handshake_timeout.is_zero() || self.idle_timeout.is_zero() {
            return invalid("handshake_timeout and idle_timeout must not be zero".to_owned());
        }
        if self.max_frames_per_sec == 0 || self.frame_burst == 0 {
            return invalid("max_frames_per_sec and frame_burst must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// Why a connection was closed, as reported by [`TcpTransport::poll_disconnected`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The peer closed the connection. Every complete frame it sent before was delivered; a
    /// trailing partial frame was discarded.
    PeerClosed,
    /// A read or write failed, for instance because the peer reset the connection.
    Io(io::ErrorKind),
    /// The peer announced a frame larger than [`TcpConfig::max_frame`].
    FrameTooLarge {
        /// Length in the frame header.
        announced: u32,
        /// The configured limit.
        max: usize,
    },
    /// The connection was not marked validated within [`TcpConfig::handshake_timeout`].
    HandshakeTimeout,
    /// Nothing was read from the connection for [`TcpConfig::idle_timeout`].
    IdleTimeout,
    /// The peer sent frames faster than [`TcpConfig::max_frames_per_sec`] allows, beyond
    /// [`TcpConfig::frame_burst`].
    FrameRateExceeded,
    /// The connection was not validated and made room for a newer one while the server held
    /// [`TcpConfig::max_connections`].
    Evicted,
}

/// Counters of a [`TcpTransport`] since it was created.
///
/// Every connection that was accepted or connected is either still in
/// [`TcpTransport::connected_peers`] or counted in exactly one `disconnected_*` field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Connections accepted and kept by a server (a client's one connection is not counted).
    pub accepted: u64,
    /// Connections a server closed right after accepting them, because it held
    /// [`TcpConfig::max_connections`], all of them validated.
    pub rejected_full: u64,
    /// Connections a server closed right after accepting them, because it held
    /// [`TcpConfig::max_connections_per_ip`] from that IP address.
    pub rejected_per_ip: u64,
    /// Failed `accept` calls, and accepted sockets that could not be configured.
    pub accept_errors: u64,
    /// Frames accepted into a write buffer by [`Transport::send`].
    pub frames_sent: u64,
    /// Payload bytes of the frames in `frames_sent`.
    pub bytes_sent: u64,
    /// Frames returned by [`Transport::recv`].
    pub frames_received: u64,
    /// Payload bytes of the frames in `frames_received`.
    pub bytes_received: u64,
    /// Sends to an address with no connection, silently lost.
    pub dropped_no_connection: u64,
    /// Sends dropped because the peer's write buffer was full.
    pub dropped_write_full: u64,
    /// Connections the peer closed ([`DisconnectReason::PeerClosed`]).
    pub disconnected_peer_closed: u64,
    /// Connections closed by a socket error ([`DisconnectReason::Io`]).
    pub disconnected_io_error: u64,
    /// Connections closed for an oversized frame header ([`DisconnectReason::FrameTooLarge`]).
    pub disconnected_frame_too_large: u64,
    /// Connections closed by [`TcpTransport::disconnect`].
    pub disconnected_local: u64,
    /// Connections closed for not being validated in time
    /// ([`DisconnectReason::HandshakeTimeout`]).
    pub disconnected_handshake_timeout: u64,
    /// Connections closed for silence ([`DisconnectReason::IdleTimeout`]).
    pub disconnected_idle_timeout: u64,
    /// Connections closed for sending too many frames ([`DisconnectReason::FrameRateExceeded`]).
    pub disconnected_frame_rate: u64,
    /// Unvalidated connections closed to make room for a new one ([`DisconnectReason::Evicted`]).
    pub disconnected_evicted: u64,
    /// Disconnect notices dropped because [`TcpConfig::max_pending_disconnects`] were waiting.
    pub dropped_disconnect_notices: u64,
}

#[derive(Debug)]
struct Peer {
    addr: SocketAddr,
    stream: TcpStream,
    /// Received bytes; `read_buf[read_pos..]` is not yet returned. Contiguous, so a frame can
    /// be copied out in one piece.
    read_buf: Vec<u8>,
    read_pos: usize,
    /// Queued frames the socket has not taken yet.
    write_buf: VecDeque<u8>,
    /// Whether the session layer vouched for the peer; otherwise the connection is a key in
    /// [`TcpTransport::unvalidated`].
    validated: bool,
    /// Order of acceptance: the connection's key in [`TcpTransport::unvalidated`].
    seq: u64,
    accepted_at: Instant,
    /// When a sweep last saw bytes read (or the connection was accepted).
    last_read: Instant,
    /// Whether bytes were read since the last sweep; saves a clock read per read.
    read_since_sweep: bool,
    /// Drain round of the last read; see [`TcpTransport::round`].
    read_round: u64,
    /// Frames the peer may still send before the next refill.
    tokens: u32,
}

impl Peer {
    fn new(addr: SocketAddr, stream: TcpStream, seq: u64, now: Instant, tokens: u32) -> Self {
        Self {
            addr,
            stream,
            read_buf: Vec::new(),
            read_pos: 0,
            write_buf: VecDeque::new(),
            validated: false,
            seq,
            accepted_at: now,
            last_read: now,
            read_since_sweep: false,
            // Rounds start at 1, so a new peer is read on its first visit.
            read_round: 0,
            tokens,
        }
    }

    /// Writes as much of the write buffer as the socket takes without blocking.
    fn flush(&mut self) -> Result<(), DisconnectReason> {
        // Terminates: every iteration either shrinks the buffer or leaves the loop.
        while !self.write_buf.is_empty() {
            let (a, b) = self.write_buf.as_slices();
            match self
                .stream
                .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            {
                Ok(0) => return Err(DisconnectReason::Io(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    self.write_buf.drain(..n.min(self.write_buf.len()));
                }
                // An interrupted write is retried on the next flush rather than looped on here.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    break;
                }
                Err(e) => return Err(DisconnectReason::Io(e.kind())),
            }
        }
        Ok(())
    }

    /// Payload length of the complete frame at the front of the read buffer, if there is one.
    fn complete_frame(&self, max_frame: usize) -> Result<Option<usize>, DisconnectReason> {
        let avail = &self.read_buf[self.read_pos..];
        let Some((header, body)) = avail.split_first_chunk::<FRAME_HEADER_LEN>() else {
            return Ok(None);
        };
        let announced = u32::from_le_bytes(*header);
        let len = usize::try_from(announced)
            .ok()
            .filter(|&len| len <= max_frame)
            .ok_or(DisconnectReason::FrameTooLarge {
                announced,
                max: max_frame,
            })?;
        Ok((body.len() >= len).then_some(len))
    }

    /// Makes one read into the read buffer. Returns the number of bytes read (0 if the socket
    /// had none or the buffer is full).
    fn fill(
        &mut self,
        scratch: &mut [u8],
        max_read_buffer: usize,
    ) -> Result<usize, DisconnectReason> {
        if self.read_pos > 0 {
            // Only called when no complete frame is buffered, so this moves less than one frame.
            self.read_buf.drain(..self.read_pos);
            self.read_pos = 0;
        }
        let room = max_read_buffer.saturating_sub(self.read_buf.len());
        let want = room.min(scratch.len());
        if want == 0 {
            return Ok(0);
        }
        match self.stream.read(&mut scratch[..want]) {
            Ok(0) => Err(DisconnectReason::PeerClosed),
            Ok(n) => {
                self.read_buf.extend_from_slice(&scratch[..n]);
                self.read_since_sweep = true;
                Ok(n)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(0)
            }
            Err(e) => Err(DisconnectReason::Io(e.kind())),
        }
    }

    /// Flushes, then finds a complete frame, reading once if none is buffered yet and, given a
    /// drain round, the peer was not read in that round yet.
    fn poll_frame(
        &mut self,
        scratch: &mut [u8],
        config: &TcpConfig,
        round: Option<u64>,
    ) -> Result<Option<usize>, DisconnectReason> {
        self.flush()?;
        if let Some(len) = self.complete_frame(config.max_frame)? {
            return Ok(Some(len));
        }
        if let Some(round) = round {
            if self.read_round == round {
                return Ok(None);
            }
            self.read_round = round;
        }
        if self.fill(scratch, config.max_read_buffer_per_peer)? == 0 {
            return Ok(None);
        }
        self.complete_frame(config.max_frame)
    }
}

fn configure(stream: &TcpStream, config: &TcpConfig) -> io::Result<()> {
    stream.set_nonblocking(true)?;
    stream.set_nodelay(config.nodelay)
}

/// A [`Transport`] over TCP connections; see the [module docs](self).
#[derive(Debug)]
pub struct TcpTransport {
    /// `Some` for a server.
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    config: TcpConfig,
    /// Connections by slot; slots are reused, so round-robin order stays stable as peers come
    /// and go. Never longer than the most connections held at once.
    slots: Vec<Option<Peer>>,
    free_slots: Vec<usize>,
    by_addr: HashMap<SocketAddr, usize>,
    /// Slots of the connections not marked validated, oldest first (keyed by [`Peer::seq`]):
    /// the next to time out and the first to evict.
    unvalidated: BTreeMap<u64, usize>,
    next_seq: u64,
    /// Open connections per remote IP; IPs without connections have no entry.
    per_ip: HashMap<IpAddr, usize>,
    /// Drain round: incremented whenever `recv` returns `Ok(None)`; a server reads a peer at
    /// most once per round, so a drain costs one read per connection plus one call per frame.
    round: u64,
    last_sweep: Instant,
    /// Time up to which frame tokens have been credited.
    refilled_until: Instant,
    /// Slot the next `recv` visits first.
    cursor: usize,
    scratch: Box<[u8]>,
    disconnects: VecDeque<(SocketAddr, DisconnectReason)>,
    stats: TcpStats,
}

impl TcpTransport {
    fn new(listener: Option<TcpListener>, local_addr: SocketAddr, config: TcpConfig) -> Self {
        let now = Instant::now();
        Self {
            listener,
            local_addr,
            scratch: vec![0; config.max_read_per_peer_per_call].into_boxed_slice(),
            config,
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_addr: HashMap::new(),
            unvalidated: BTreeMap::new(),
            next_seq: 0,
            per_ip: HashMap::new(),
            round: 1,
            last_sweep: now,
            refilled_until: now,
            cursor: 0,
            disconnects: VecDeque::new(),
            stats: TcpStats::default(),
        }
    }

    /// Starts a server listening on `addr` (port 0 picks a free port; see
    /// [`Transport::local_addr`]). Connections are accepted inside [`Transport::recv`].
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] if the config breaks a rule stated on its
    /// fields, and with the operating system's error if the socket cannot be bound.
    pub fn listen(addr: SocketAddr, config: TcpConfig) -> io::Result<Self> {
        config.validate()?;
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        Ok(Self::new(Some(listener), local_addr, config))
    }

    /// Connects a client to the server at `addr`, waiting at most
    /// [`TcpConfig::connect_timeout`]; std offers no non-blocking connect, so this is the one
    /// call that blocks. The transport then sends only to that server; once the connection is
    /// gone, `send` and `recv` fail with [`TransportError::Closed`].
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] if the config breaks a rule stated on its
    /// fields, and with the operating system's error if the connection fails or times out.
    pub fn connect(addr: SocketAddr, config: TcpConfig) -> io::Result<Self> {
        config.validate()?;
        let stream = TcpStream::connect_timeout(&addr, config.connect_timeout)?;
        configure(&stream, &config)?;
        let local_addr = stream.local_addr()?;
        let peer_addr = stream.peer_addr()?;
        let mut transport = Self::new(None, local_addr, config);
        let now = Instant::now();
        transport.insert(peer_addr, stream, now);
        // A client's one connection is its server's: nothing to prove or to time out.
        transport.mark_validated(peer_addr);
        Ok(transport)
    }

    /// Takes the next disconnect notice: a connection the peer closed, that failed, that was
    /// closed for breaking the protocol or a limit, that timed out or was evicted. Connections
    /// closed with [`TcpTransport::disconnect`] are not reported.
    pub fn poll_disconnected(&mut self) -> Option<(SocketAddr, DisconnectReason)> {
        self.disconnects.pop_front()
    }

    /// Addresses of the open connections, in round-robin order.
    pub fn connected_peers(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.slots.iter().flatten().map(|peer| peer.addr)
    }

    /// Number of open connections.
    pub fn peer_count(&self) -> usize {
        self.by_addr.len()
    }

    /// Whether the connection to `addr` was marked validated ([`Transport::mark_validated`]),
    /// or `None` if there is no connection to `addr`. A client's connection always is.
    pub fn is_validated(&self, addr: SocketAddr) -> Option<bool> {
        self.peer(addr).map(|peer| peer.validated)
    }

    /// Bytes (headers included) queued for `addr` that its socket has not taken yet, or `None`
    /// if there is no connection to `addr`.
    pub fn pending_write_bytes(&self, addr: SocketAddr) -> Option<usize> {
        self.peer(addr).map(|peer| peer.write_buf.len())
    }

    /// Closes the connection to `addr`, after a last non-blocking attempt to write what is
    /// queued for it; anything the socket does not take is discarded. Returns whether there
    /// was a connection. Not reported by [`TcpTransport::poll_disconnected`].
    pub fn disconnect(&mut self, addr: SocketAddr) -> bool {
        let Some(&slot) = self.by_addr.get(&addr) else {
            return false;
        };
        if let Some(mut peer) = self.remove(slot) {
            // Best effort by design: the caller asked for the connection to go away.
            let _ = peer.flush();
            let _ = peer.stream.shutdown(Shutdown::Both);
            self.stats.disconnected_local += 1;
        }
        true
    }

    /// Counters since creation.
    pub fn stats(&self) -> TcpStats {
        self.stats
    }

    /// The settings the transport was created with.
    pub fn config(&self) -> &TcpConfig {
        &self.config
    }

    fn is_client(&self) -> bool {
        self.listener.is_none()
    }

    fn peer(&self, addr: SocketAddr) -> Option<&Peer> {
        let slot = *self.by_addr.get(&addr)?;
        self.slots.get(slot)?.as_ref()
    }

    fn insert(&mut self, addr: SocketAddr, stream: TcpStream, now: Instant) {
        if let Some(&old) = self.by_addr.get(&addr) {
            // The system only reuses a connection's address pair once that connection is gone,
            // so the old one died without us noticing yet.
            self.close(old, DisconnectReason::PeerClosed);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let peer = Some(Peer::new(addr, stream, seq, now, self.config.frame_burst));
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.slots[slot] = peer;
                slot
            }
            None => {
                self.slots.push(peer);
                self.slots.len() - 1
            }
        };
        self.by_addr.insert(addr, slot);
        self.unvalidated.insert(seq, slot);
        *self.per_ip.entry(addr.ip().to_canonical()).or_default() += 1;
    }

    /// Takes the connection out of every structure that refers to it.
    fn remove(&mut self, slot: usize) -> Option<Peer> {
        let peer = self.slots.get_mut(slot)?.take()?;
        self.by_addr.remove(&peer.addr);
        if !peer.validated {
            self.unvalidated.remove(&peer.seq);
        }
        let ip = peer.addr.ip().to_canonical();
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        self.free_slots.push(slot);
        Some(peer)
    }

    /// Drops the connection in `slot` and reports it.
    fn close(&mut self, slot: usize, reason: DisconnectReason) {
        let Some(peer) = self.remove(slot) else {
            return;
        };
        let counter = match reason {
            DisconnectReason::PeerClosed => &mut self.stats.disconnected_peer_closed,
            DisconnectReason::Io(_) => &mut self.stats.disconnected_io_error,
            DisconnectReason::FrameTooLarge { .. } => &mut self.stats.disconnected_frame_too_large,
            DisconnectReason::HandshakeTimeout => &mut self.stats.disconnected_handshake_timeout,
            DisconnectReason::IdleTimeout => &mut self.stats.disconnected_idle_timeout,
            DisconnectReason::FrameRateExceeded => &mut self.stats.disconnected_frame_rate,
            DisconnectReason::Evicted => &mut self.stats.disconnected_evicted,
        };
        *counter += 1;
        if self.disconnects.len() < self.config.max_pending_disconnects {
            self.disconnects.push_back((peer.addr, reason));
        } else {
            self.stats.dropped_disconnect_notices += 1;
        }
    }

    /// Closes the connections whose timers ran out and refills the frame-rate buckets, at most
    /// once per [`SWEEP_INTERVAL`].
    fn sweep(&mut self, now: Instant) {
        if self.is_client() || now.saturating_duration_since(self.last_sweep) < SWEEP_INTERVAL {
            return;
        }
        self.last_sweep = now;

        // Oldest first, so this stops at the first connection still within its time.
        while let Some((_, &slot)) = self.unvalidated.first_key_value() {
            let due = self
                .slots
                .get(slot)
                .and_then(Option::as_ref)
                .is_none_or(|peer| {
                    now.saturating_duration_since(peer.accepted_at) >= self.config.handshake_timeout
                });
            if !due {
                break;
            }
            // `close` takes the entry out of `unvalidated`; pop first in case no peer is there.
            self.unvalidated.pop_first();
            self.close(slot, DisconnectReason::HandshakeTimeout);
        }

        // Credit whole tokens for the time since the last credit and carry the remainder, so
        // the rate holds however often sweeps run.
        let rate = u128::from(self.config.max_frames_per_sec);
        let burst = self.config.frame_burst;
        let elapsed = now.saturating_duration_since(self.refilled_until);
        let earned = elapsed.as_nanos() * rate / 1_000_000_000;
        let tokens = u32::try_from(earned).unwrap_or(u32::MAX);
        if tokens >= burst {
            self.refilled_until = now;
        } else {
            // Less than `burst` tokens, so this fits in u64 nanoseconds.
            let credited = u128::from(tokens) * 1_000_000_000 / rate;
            self.refilled_until += Duration::from_nanos(credited as u64);
        }

        let idle_timeout = self.config.idle_timeout;
        for slot in 0..self.slots.len() {
            let Some(peer) = self.slots[slot].as_mut() else {
                continue;
            };
            if peer.read_since_sweep {
                peer.read_since_sweep = false;
                peer.last_read = now;
            } else if now.saturating_duration_since(peer.last_read) >= idle_timeout {
                self.close(slot, DisconnectReason::IdleTimeout);
                continue;
            }
            peer.tokens = peer.tokens.saturating_add(tokens).min(burst);
        }
    }

    fn accept_new(&mut self, now: Instant) {
        let Some(listener) = &self.listener else {
            return;
        };
        let mut incoming = Vec::new();
        for _ in 0..self.config.max_accepts_per_call.max(1) {
            match listener.accept() {
                Ok(conn) => incoming.push(conn),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // A connection that died in the backlog, or a signal: try the next one.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    self.stats.accept_errors += 1;
                }
                // Out of descriptors or memory: nothing to gain from retrying in this call, and
                // failing `recv` would stop frame delivery for the peers already connected.
                Err(_) => {
                    self.stats.accept_errors += 1;
                    break;
                }
            }
        }
        for (stream, addr) in incoming {
            self.admit(stream, addr, now);
        }
    }

    /// Keeps an accepted connection if the limits allow; dropping `stream` closes it, so a
    /// refused peer sees its connection end.
    fn admit(&mut self, stream: TcpStream, addr: SocketAddr, now: Instant) {
        let from_ip = self
            .per_ip
            .get(&addr.ip().to_canonical())
            .copied()
            .unwrap_or(0);
        if from_ip >= self.config.max_connections_per_ip {
            self.stats.rejected_per_ip += 1;
            return;
        }
        if self.by_addr.len() >= self.config.max_connections {
            // The oldest unproven connection has had the longest to prove itself.
            let Some((_, &oldest)) = self.unvalidated.first_key_value() else {
                self.stats.rejected_full += 1;
                return;
            };
            self.close(oldest, DisconnectReason::Evicted);
        }
        if configure(&stream, &self.config).is_err() {
            self.stats.accept_errors += 1;
            return;
        }
        self.stats.accepted += 1;
        self.insert(addr, stream, now);
    }
}

impl Transport for TcpTransport {
    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn poll_closed_peer(&mut self) -> Option<SocketAddr> {
        self.poll_disconnected().map(|(addr, _)| addr)
    }

    fn close_peer(&mut self, peer: SocketAddr) {
        self.disconnect(peer);
    }

    /// Exempts the connection to `peer` from [`TcpConfig::handshake_timeout`] and from eviction;
    /// see the [module docs](self#timeouts-and-admission-servers). Does nothing if there is no
    /// connection to `peer`.
    fn mark_validated(&mut self, peer: SocketAddr) {
        let Some(&slot) = self.by_addr.get(&peer) else {
            return;
        };
        if let Some(peer) = self.slots.get_mut(slot).and_then(Option::as_mut) {
            if !peer.validated {
                peer.validated = true;
                self.unvalidated.remove(&peer.seq);
            }
        }
    }

    fn max_payload(&self) -> usize {
        self.config.max_frame
    }

    /// Queues one frame for the connection to `to` and writes as much as the socket takes.
    ///
    /// A send to an address without a connection is lost and counted (on a client whose
    /// connection is gone it fails with [`TransportError::Closed`] instead); a frame that does
    /// not fit the peer's write buffer is dropped and counted. If the write fails, the
    /// connection is closed and reported by [`TcpTransport::poll_disconnected`]; the send still
    /// returns `Ok`, as the frame might have been lost on the way anyway.
    fn send(&mut self, to: SocketAddr, payload: &[u8]) -> Result<(), TransportError> {
        let max = self.config.max_frame;
        if payload.len() > max {
            return Err(TransportError::PayloadTooLarge {
                len: payload.len(),
                max,
            });
        }
        let Some(&slot) = self.by_addr.get(&to) else {
            if self.is_client() && self.by_addr.is_empty() {
                return Err(TransportError::Closed);
            }
            self.stats.dropped_no_connection += 1;
            return Ok(());
        };
        let Some(peer) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            self.stats.dropped_no_connection += 1;
            return Ok(());
        };
        let frame_len = FRAME_HEADER_LEN + payload.len();
        let limit = self.config.max_write_buffer_per_peer;
        let mut result = Ok(());
        if peer.write_buf.len() + frame_len > limit {
            result = peer.flush();
        }
        if result.is_ok() {
            if peer.write_buf.len() + frame_len > limit {
                self.stats.dropped_write_full += 1;
                return Ok(());
            }
            // `max_frame` fits in u32 (checked by `validate`), and so does the payload.
            let header = (payload.len() as u32).to_le_bytes();
            peer.write_buf.extend(&header);
            peer.write_buf.extend(payload);
            self.stats.frames_sent += 1;
            self.stats.bytes_sent += payload.len() as u64;
            result = peer.flush();
        }
        if let Err(reason) = result {
            self.close(slot, reason);
        }
        Ok(())
    }

    /// Returns the next complete frame from any connection, visiting connections round-robin;
    /// see the [module docs](self) for the work one call does.
    ///
    /// If `buf` is smaller than the frame, [`TransportError::BufferTooSmall`] is returned and
    /// the frame stays first in line. On a client whose connection is gone (and whose last
    /// frames were all returned) this fails with [`TransportError::Closed`].
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<Received>, TransportError> {
        let server = !self.is_client();
        if server {
            let now = Instant::now();
            self.sweep(now);
            self.accept_new(now);
        }
        let slots = self.slots.len();
        for step in 0..slots {
            let slot = (self.cursor + step) % slots;
            let Some(peer) = self.slots[slot].as_mut() else {
                continue;
            };
            // A client has one connection, so nothing to save by reading it once per drain.
            let round = server.then_some(self.round);
            let len = match peer.poll_frame(&mut self.scratch, &self.config, round) {
                Ok(Some(len)) => len,
                Ok(None) => continue,
                Err(reason) => {
                    self.close(slot, reason);
                    continue;
                }
            };
            if server && peer.tokens == 0 {
                self.close(slot, DisconnectReason::FrameRateExceeded);
                continue;
            }
            let Some(dst) = buf.get_mut(..len) else {
                self.cursor = slot;
                return Err(TransportError::BufferTooSmall {
                    needed: len,
                    capacity: buf.len(),
                });
            };
            let start = peer.read_pos + FRAME_HEADER_LEN;
            dst.copy_from_slice(&peer.read_buf[start..start + len]);
            peer.read_pos = start + len;
            if peer.read_pos == peer.read_buf.len() {
                peer.read_buf.clear();
                peer.read_pos = 0;
            }
            self.cursor = (slot + 1) % slots;
            // Clients never spend tokens: `tokens == 0` is only checked on servers.
            peer.tokens = peer.tokens.saturating_sub(1);
            self.stats.frames_received += 1;
            self.stats.bytes_received += len as u64;
            return Ok(Some(Received {
                len,
                from: peer.addr,
            }));
        }
        // The drain is over: the next one may read every connection again.
        self.round += 1;
        if !server && self.by_addr.is_empty() {
            return Err(TransportError::Closed);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netsim::SimRng;
    use std::time::Instant;

    const LOCALHOST: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

    fn small_config() -> TcpConfig {
        TcpConfig {
            max_frame: 1024,
            max_read_buffer_per_peer: 4096,
            max_write_buffer_per_peer: 64 * 1024,
            ..TcpConfig::default()
        }
    }

    fn listen(config: TcpConfig) -> TcpTransport {
        TcpTransport::listen(LOCALHOST, config).expect("listen on 127.0.0.1:0")
    }

    fn connect(server: &TcpTransport, config: TcpConfig) -> TcpTransport {
        TcpTransport::connect(server.local_addr(), config).expect("connect")
    }

    /// Calls `step` until it returns `Some`, for at most `secs` seconds and 100 000 calls,
    /// sleeping a millisecond whenever it made no progress.
    fn poll_until<T>(secs: u64, mut step: impl FnMut() -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        for _ in 0..100_000 {
            if let Some(done) = step() {
                return Some(done);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    }

    /// Drains `t`, returning every frame with its sender.
    fn drain(t: &mut TcpTransport) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut buf = vec![0u8; t.max_payload()];
        let mut out = Vec::new();
        // Bounded: a drain never needs more calls than a test sends frames.
        for _ in 0..100_000 {
            match t.recv(&mut buf).expect("recv") {
                Some(got) => out.push((got.from, buf[..got.len].to_vec())),
                None => break,
            }
        }
        out
    }

    /// Polls the server until it holds `n` connections.
    fn wait_for_peers(server: &mut TcpTransport, n: usize) {
        let mut buf = vec![0u8; server.max_payload()];
        let ok = poll_until(2, || {
            let _ = server.recv(&mut buf).expect("recv");
            (server.peer_count() == n).then_some(())
        });
        assert!(ok.is_some(), "{} of {n} peers", server.peer_count());
    }

    /// Polls `t` until it reports a disconnect.
    fn wait_for_disconnect(t: &mut TcpTransport) -> (SocketAddr, DisconnectReason) {
        let mut buf = vec![0u8; t.max_payload()];
        poll_until(2, || {
            let _ = t.recv(&mut buf);
            t.poll_disconnected()
        })
        .expect("a disconnect within 2 s")
    }

    /// Deterministic payload number `seq` of client `client`: lengths cover 0, 1 and `max`.
    fn payload(seed: u64, client: usize, seq: usize, max: usize) -> Vec<u8> {
        let mut rng = SimRng::new(seed ^ ((client as u64) << 32) ^ seq as u64);
        let len = match seq {
            0 => 1,
            1 => max,
            2 => 0,
            _ => match rng.range_u64(0..=3) {
                0 => 1,
                1 => max,
                _ => rng.range_u64(0..=max as u64) as usize,
            },
        };
        let mut p = Vec::with_capacity(len + 8);
        while p.len() < len {
            p.extend_from_slice(&rng.next_u64().to_le_bytes());
        }
        p.truncate(len);
        p
    }

    #[test]
    fn sixteen_clients_frames_arrive_once_in_order_and_replies_come_back() {
        const CLIENTS: usize = 16;
        const FRAMES: usize = 200;
        let seed = 0x5EED_7C90;
        let config = TcpConfig {
            max_frame: 8192,
            max_read_buffer_per_peer: 32 * 1024,
            max_write_buffer_per_peer: 4 * 1024 * 1024,
            ..TcpConfig::default()
        };
        let max = config.max_frame;
        let mut server = listen(config.clone());
        let mut clients: Vec<TcpTransport> = (0..CLIENTS)
            .map(|_| connect(&server, config.clone()))
            .collect();
        let index: HashMap<SocketAddr, usize> = clients
            .iter()
            .enumerate()
            .map(|(i, c)| (c.local_addr(), i))
            .collect();
        let server_addr = server.local_addr();

        let mut sent = [0usize; CLIENTS];
        let mut at_server = [0usize; CLIENTS];
        let mut echoed = [0usize; CLIENTS];
        let mut buf = vec![0u8; max];
        let deadline = Instant::now() + Duration::from_secs(10);
        for _ in 0..1_000_000 {
            if echoed.iter().all(|&n| n == FRAMES) || Instant::now() >= deadline {
                break;
            }
            let mut progress = false;
            for (i, client) in clients.iter_mut().enumerate() {
                for _ in 0..8 {
                    if sent[i] == FRAMES {
                        break;
                    }
                    client
                        .send(server_addr, &payload(seed, i, sent[i], max))
                        .expect("send");
                    sent[i] += 1;
                    progress = true;
                }
            }
            for _ in 0..256 {
                let Some(got) = server.recv(&mut buf).expect("server recv") else {
                    break;
                };
                progress = true;
                let i = index[&got.from];
                let want = payload(seed, i, at_server[i], max);
                assert!(
                    buf[..got.len] == want[..],
                    "seed {seed:#x}: client {i} frame {} differs at the server",
                    at_server[i]
                );
                at_server[i] += 1;
                server.send(got.from, &buf[..got.len]).expect("echo");
            }
            for (i, client) in clients.iter_mut().enumerate() {
                for _ in 0..256 {
                    let Some(got) = client.recv(&mut buf).expect("client recv") else {
                        break;
                    };
                    progress = true;
                    assert_eq!(got.from, server_addr);
                    let want = payload(seed, i, echoed[i], max);
                    assert!(
                        buf[..got.len] == want[..],
                        "seed {seed:#x}: client {i} echo {} differs",
                        echoed[i]
                    );
                    echoed[i] += 1;
                }
            }
            if !progress {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert_eq!(at_server, [FRAMES; CLIENTS], "seed {seed:#x}");
        assert_eq!(echoed, [FRAMES; CLIENTS], "seed {seed:#x}");

        // Exactly once: nothing more turns up.
        std::thread::sleep(Duration::from_millis(20));
        assert!(drain(&mut server).is_empty());
        for client in &mut clients {
            assert!(drain(client).is_empty());
        }
        let st = server.stats();
        assert_eq!(st.accepted, CLIENTS as u64);
        assert_eq!(st.frames_received, (CLIENTS * FRAMES) as u64);
        assert_eq!(st.frames_sent, (CLIENTS * FRAMES) as u64);
        assert_eq!((st.dropped_write_full, st.dropped_no_connection), (0, 0));
        assert_eq!(server.peer_count(), CLIENTS);
        for client in &clients {
            assert_eq!(client.stats().dropped_write_full, 0);
        }
    }

    /// A server with three well-behaved clients that have each delivered one frame.
    fn server_with_good_clients(config: &TcpConfig) -> (TcpTransport, Vec<TcpTransport>) {
        let mut server = listen(config.clone());
        let mut clients: Vec<TcpTransport> =
            (0..3).map(|_| connect(&server, config.clone())).collect();
        for c in &mut clients {
            c.send(server.local_addr(), b"hello").expect("send");
        }
        let mut got = Vec::new();
        poll_until(2, || {
            got.extend(drain(&mut server));
            (got.len() == 3).then_some(())
        })
        .expect("three hellos");
        (server, clients)
    }

    /// Sends `n` numbered frames from every client and checks they all reach the server, in
    /// order per client.
    fn good_clients_still_get_through(
        server: &mut TcpTransport,
        clients: &mut [TcpTransport],
        n: u32,
        from_rogue: SocketAddr,
    ) {
        for c in clients.iter_mut() {
            for i in 0..n {
                c.send(server.local_addr(), &i.to_le_bytes()).expect("send");
            }
        }
        let mut got: HashMap<SocketAddr, Vec<u32>> = HashMap::new();
        poll_until(2, || {
            for (from, p) in drain(server) {
                if from == from_rogue {
                    continue;
                }
                let seq = u32::from_le_bytes(p.try_into().expect("4-byte frame"));
                got.entry(from).or_default().push(seq);
            }
            (got.values().map(Vec::len).sum::<usize>() == clients.len() * n as usize).then_some(())
        })
        .expect("every good frame arrives");
        for c in clients.iter() {
            assert_eq!(got[&c.local_addr()], (0..n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn oversized_frame_header_disconnects_only_that_peer() {
        let config = small_config();
        let (mut server, mut clients) = server_with_good_clients(&config);
        let mut rogue = TcpStream::connect(server.local_addr()).expect("connect");
        let rogue_addr = rogue.local_addr().expect("addr");
        wait_for_peers(&mut server, 4);

        rogue
            .write_all(&1025u32.to_le_bytes())
            .expect("write header");
        rogue.write_all(&[0; 100]).expect("write some body");
        let (addr, reason) = wait_for_disconnect(&mut server);
        assert_eq!(addr, rogue_addr);
        assert_eq!(
            reason,
            DisconnectReason::FrameTooLarge {
                announced: 1025,
                max: 1024
            }
        );
        assert_eq!(server.stats().disconnected_frame_too_large, 1);
        assert_eq!(server.peer_count(), 3);
        assert!(server.connected_peers().all(|a| a != rogue_addr));

        // The rogue sees its connection end.
        rogue
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut byte = [0u8; 1];
        assert!(matches!(rogue.read(&mut byte), Ok(0) | Err(_)));

        good_clients_still_get_through(&mut server, &mut clients, 50, rogue_addr);
        // Sending to the rogue now is a silent, counted loss.
        server
            .send(rogue_addr, b"gone")
            .expect("lost, not an error");
        assert_eq!(server.stats().dropped_no_connection, 1);
    }

    #[test]
    fn garbage_bytes_disconnect_the_sender_and_spare_the_rest() {
        let seed = 0x6A4B_A6E5;
        let config = small_config();
        let (mut server, mut clients) = server_with_good_clients(&config);
        let mut rogue = TcpStream::connect(server.local_addr()).expect("connect");
        let rogue_addr = rogue.local_addr().expect("addr");
        let mut rng = SimRng::new(seed);
        let garbage: Vec<u8> = (0..4096).map(|_| rng.next_u64() as u8).collect();
        rogue.write_all(&garbage).expect("write garbage");

        // Good traffic and the garbage are in flight together.
        good_clients_still_get_through(&mut server, &mut clients, 50, rogue_addr);
        let (addr, reason) = wait_for_disconnect(&mut server);
        assert_eq!(addr, rogue_addr, "seed {seed:#x}");
        assert!(
            matches!(reason, DisconnectReason::FrameTooLarge { max: 1024, .. }),
            "seed {seed:#x}: {reason:?}"
        );
        assert_eq!(server.peer_count(), 3, "seed {seed:#x}");
        good_clients_still_get_through(&mut server, &mut clients, 10, rogue_addr);
    }

    #[test]
    fn frames_written_a_byte_at_a_time_reassemble() {
        let config = small_config();
        let mut server = listen(config.clone());
        let mut raw = TcpStream::connect(server.local_addr()).expect("connect");
        raw.set_nodelay(true).expect("nodelay");
        let raw_addr = raw.local_addr().expect("addr");
        let frames: Vec<Vec<u8>> = vec![
            vec![],
            vec![7],
            (0..300).map(|i| i as u8).collect(),
            vec![0xEE; 1024],
        ];
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend_from_slice(&(f.len() as u32).to_le_bytes());
            wire.extend_from_slice(f);
        }
        let (last, body) = wire.split_last().expect("non-empty");
        let mut got = Vec::new();
        for byte in body {
            raw.write_all(std::slice::from_ref(byte)).expect("write");
            raw.flush().expect("flush");
            got.extend(drain(&mut server));
        }
        // All but the last frame can arrive; the last one lacks its final byte.
        poll_until(2, || {
            got.extend(drain(&mut server));
            (got.len() == frames.len() - 1).then_some(())
        })
        .expect("the first frames reassemble");
        std::thread::sleep(Duration::from_millis(10));
        got.extend(drain(&mut server));
        assert_eq!(got.len(), frames.len() - 1, "a partial frame was delivered");

        raw.write_all(std::slice::from_ref(last)).expect("write");
        poll_until(2, || {
            got.extend(drain(&mut server));
            (got.len() == frames.len()).then_some(())
        })
        .expect("the last frame completes");
        assert_eq!(
            got,
            frames
                .iter()
                .map(|f| (raw_addr, f.clone()))
                .collect::<Vec<_>>()
        );

        // The wire format in the other direction: u32 little-endian length, then the payload.
        server.send(raw_addr, b"reply").expect("send");
        raw.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut reply = [0u8; 9];
        raw.read_exact(&mut reply).expect("read reply");
        assert_eq!(&reply, b"\x05\0\0\0reply");
    }

    #[test]
    fn full_write_buffer_drops_whole_frames_and_counts_them() {
        let config = TcpConfig {
            max_frame: 1000,
            max_write_buffer_per_peer: 8 * 1024,
            ..small_config()
        };
        let mut server = listen(config.clone());
        let mut client = connect(&server, config.clone());
        wait_for_peers(&mut server, 1);
        let to = client.local_addr();

        // The client does not read, so kernel buffers fill up, then the transport's.
        let mut attempts = 0u32;
        let frame = |i: u32| {
            let mut p = i.to_le_bytes().to_vec();
            p.resize(1000, i as u8);
            p
        };
        for _ in 0..200_000 {
            server.send(to, &frame(attempts)).expect("send");
            attempts += 1;
            let pending = server.pending_write_bytes(to).expect("connected");
            assert!(pending <= 8 * 1024);
            if server.stats().dropped_write_full >= 20 {
                break;
            }
        }
        let st = server.stats();
        assert!(
            st.dropped_write_full >= 20,
            "{attempts} sends never filled the buffer"
        );
        assert_eq!(st.frames_sent + st.dropped_write_full, u64::from(attempts));

        // Everything accepted arrives intact and in order once the client reads.
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        poll_until(5, || {
            let _ = server.recv(&mut buf).expect("server recv flushes");
            got.extend(drain(&mut client).into_iter().map(|(_, p)| p));
            (got.len() as u64 == st.frames_sent).then_some(())
        })
        .expect("all queued frames arrive");
        let mut last = None;
        for p in &got {
            let i = u32::from_le_bytes(p[..4].try_into().expect("4 bytes"));
            assert_eq!(*p, frame(i), "frame {i} intact");
            assert!(last < Some(i), "in order");
            last = Some(i);
        }
        assert_eq!(server.pending_write_bytes(to), Some(0));

        // With room again, sends go through.
        server.send(to, &frame(attempts)).expect("send");
        let again = poll_until(2, || drain(&mut client).pop());
        assert_eq!(again, Some((server.local_addr(), frame(attempts))));
    }

    #[test]
    fn flooding_peer_does_not_starve_others() {
        let config = small_config();
        let mut server = listen(config.clone());
        let mut flood = connect(&server, config.clone());
        let mut quiet = connect(&server, config.clone());
        wait_for_peers(&mut server, 2);
        for i in 0..300u32 {
            flood
                .send(server.local_addr(), &i.to_le_bytes())
                .expect("send");
        }
        for _ in 0..3 {
            quiet.send(server.local_addr(), b"q").expect("send");
        }
        // Loopback has both streams in the server's socket buffers well within this.
        std::thread::sleep(Duration::from_millis(100));
        let got = drain(&mut server);
        assert_eq!(got.len(), 303);
        let quiet_positions: Vec<usize> = got
            .iter()
            .enumerate()
            .filter(|(_, (from, _))| *from == quiet.local_addr())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(quiet_positions.len(), 3);
        assert!(
            quiet_positions.iter().all(|&i| i < 8),
            "quiet frames at {quiet_positions:?}"
        );
    }

    #[test]
    fn connection_limit_rejects_extra_clients_when_all_are_validated() {
        let config = TcpConfig {
            max_connections: 2,
            ..small_config()
        };
        let mut server = listen(config.clone());
        let mut a = connect(&server, config.clone());
        let mut b = connect(&server, config.clone());
        wait_for_peers(&mut server, 2);
        server.mark_validated(a.local_addr());
        server.mark_validated(b.local_addr());
        let mut c = connect(&server, config.clone());
        let mut buf = [0u8; 64];
        poll_until(2, || {
            let _ = server.recv(&mut buf).expect("recv");
            (server.stats().rejected_full == 1).then_some(())
        })
        .expect("the third connection is rejected");
        assert_eq!(server.peer_count(), 2);

        // The rejected client learns that its connection is gone.
        let closed = poll_until(2, || match c.recv(&mut buf) {
            Err(TransportError::Closed) => Some(()),
            Ok(None) => None,
            other => panic!("unexpected {other:?}"),
        });
        assert!(closed.is_some());
        let (addr, reason) = c.poll_disconnected().expect("notice");
        assert_eq!(addr, server.local_addr());
        assert!(
            matches!(
                reason,
                DisconnectReason::PeerClosed | DisconnectReason::Io(_)
            ),
            "{reason:?}"
        );
        assert!(matches!(
            c.send(server.local_addr(), b"x"),
            Err(TransportError::Closed)
        ));

        // The admitted clients are unaffected.
        a.send(server.local_addr(), b"a").expect("send");
        b.send(server.local_addr(), b"b").expect("send");
        let mut got = Vec::new();
        poll_until(2, || {
            got.extend(drain(&mut server));
            (got.len() == 2).then_some(())
        })
        .expect("both frames");
    }

    #[test]
    fn peer_close_delivers_its_last_frames_then_reports() {
        let config = small_config();
        let mut server = listen(config.clone());
        let mut client = connect(&server, config.clone());
        let client_addr = client.local_addr();
        for i in 0u8..3 {
            client.send(server.local_addr(), &[i; 10]).expect("send");
        }
        assert_eq!(client.pending_write_bytes(server.local_addr()), Some(0));
        drop(client);

        let mut got = Vec::new();
        let (addr, reason) = poll_until(2, || {
            got.extend(drain(&mut server));
            server.poll_disconnected()
        })
        .expect("disconnect notice");
        assert_eq!((addr, reason), (client_addr, DisconnectReason::PeerClosed));
        assert_eq!(
            got,
            (0u8..3)
                .map(|i| (client_addr, vec![i; 10]))
                .collect::<Vec<_>>()
        );
        let st = server.stats();
        assert_eq!((st.accepted, st.disconnected_peer_closed), (1, 1));
        assert_eq!(server.peer_count(), 0);
    }

    #[test]
    fn local_disconnect_closes_without_a_notice() {
        let config = small_config();
        let mut server = listen(config.clone());
        let mut client = connect(&server, config.clone());
        wait_for_peers(&mut server, 1);
        assert!(server.disconnect(client.local_addr()));
        assert!(!server.disconnect(client.local_addr()));
        assert_eq!(server.stats().disconnected_local, 1);
        assert_eq!(server.poll_disconnected(), None);
        let mut buf = [0u8; 16];
        let closed = poll_until(2, || match client.recv(&mut buf) {
            Err(TransportError::Closed) => Some(()),
            _ => None,
        });
        assert!(closed.is_some());
    }

    #[test]
    fn small_buffer_keeps_the_frame_and_limits_are_enforced() {
        let config = small_config();
        let mut server = listen(config.clone());
        let mut client = connect(&server, config.clone());
        assert_eq!(client.max_payload(), 1024);
        assert!(matches!(
            client.send(server.local_addr(), &[0; 1025]),
            Err(TransportError::PayloadTooLarge {
                len: 1025,
                max: 1024
            })
        ));
        // A client sends only to its server; anything else is lost.
        client
            .send("127.0.0.1:9".parse().expect("addr"), b"x")
            .expect("lost");
        assert_eq!(client.stats().dropped_no_connection, 1);

        client.send(server.local_addr(), &[5; 1024]).expect("send");
        let mut small = [0u8; 100];
        let err = poll_until(2, || match server.recv(&mut small) {
            Ok(None) => None,
            other => Some(other),
        })
        .expect("frame arrives");
        assert!(
            matches!(
                err,
                Err(TransportError::BufferTooSmall {
                    needed: 1024,
                    capacity: 100
                })
            ),
            "{err:?}"
        );
        let mut buf = [0u8; 1024];
        let got = server.recv(&mut buf).expect("recv").expect("kept");
        assert_eq!((got.len, got.from), (1024, client.local_addr()));
        assert_eq!(buf, [5; 1024]);
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let bad = [
            TcpConfig {
                max_read_buffer_per_peer: 1027,
                ..small_config()
            },
            TcpConfig {
                max_write_buffer_per_peer: 1027,
                ..small_config()
            },
            TcpConfig {
                max_read_per_peer_per_call: 0,
                ..small_config()
            },
            TcpConfig {
                max_connections_per_ip: 0,
                ..small_config()
            },
            TcpConfig {
                handshake_timeout: Duration::ZERO,
                ..small_config()
            },
            TcpConfig {
                idle_timeout: Duration::ZERO,
                ..small_config()
            },
            TcpConfig {
                max_frames_per_sec: 0,
                ..small_config()
            },
            TcpConfig {
                frame_burst: 0,
                ..small_config()
            },
        ];
        for config in bad {
            let err = TcpTransport::listen(LOCALHOST, config.clone()).expect_err("invalid");
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{config:?}");
        }
        TcpTransport::listen(
            LOCALHOST,
            TcpConfig {
                max_read_buffer_per_peer: 1028,
                max_write_buffer_per_peer: 1028,
                ..small_config()
            },
        )
        .expect("exactly one largest frame is enough");
    }

    /// Polls the server until `done` holds, for at most 3 s.
    fn serve_until(server: &mut TcpTransport, mut done: impl FnMut(&mut TcpTransport) -> bool) {
        let mut buf = vec![0u8; server.max_payload()];
        let ok = poll_until(3, || {
            while let Ok(Some(_)) = server.recv(&mut buf) {}
            done(server).then_some(())
        });
        assert!(
            ok.is_some(),
            "condition not reached within 3 s: {:?}",
            server.stats()
        );
    }

    /// A raw connection from `ip` (any loopback address) to `server`.
    fn raw_from(ip: [u8; 4], server: &TcpTransport) -> TcpStream {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let local = SocketAddr::from((ip, 0));
        sock.bind(&local.into()).expect("bind a loopback address");
        sock.connect(&server.local_addr().into()).expect("connect");
        sock.into()
    }

    fn sees_close(stream: &mut TcpStream) -> bool {
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut byte = [0u8; 1];
        matches!(stream.read(&mut byte), Ok(0) | Err(_))
    }

    #[test]
    fn full_server_evicts_the_oldest_unvalidated_connection_never_a_validated_one() {
        let config = TcpConfig {
            max_connections: 3,
            ..small_config()
        };
        let mut server = listen(config.clone());
        let mut good = connect(&server, config.clone());
        wait_for_peers(&mut server, 1);
        server.mark_validated(good.local_addr());
        let mut oldest = TcpStream::connect(server.local_addr()).expect("connect");
        wait_for_peers(&mut server, 2);
        let newer = TcpStream::connect(server.local_addr()).expect("connect");
        wait_for_peers(&mut server, 3);
        assert_eq!(server.is_validated(good.local_addr()), Some(true));
        assert_eq!(
            server.is_validated(newer.local_addr().expect("addr")),
            Some(false)
        );

        // A fourth connection takes the slot of the oldest unvalidated one.
        let newest = TcpStream::connect(server.local_addr()).expect("connect");
        serve_until(&mut server, |s| s.stats().disconnected_evicted == 1);
        assert_eq!(
            server.poll_disconnected(),
            Some((
                oldest.local_addr().expect("addr"),
                DisconnectReason::Evicted
            ))
        );
        assert!(sees_close(&mut oldest));
        let mut held: Vec<SocketAddr> = server.connected_peers().collect();
        held.sort();
        let mut want = vec![
            good.local_addr(),
            newer.local_addr().expect("addr"),
            newest.local_addr().expect("addr"),
        ];
        want.sort();
        assert_eq!(held, want);

        // With everyone validated, a newcomer is refused as before.
        server.mark_validated(newer.local_addr().expect("addr"));
        server.mark_validated(newest.local_addr().expect("addr"));
        let mut refused = TcpStream::connect(server.local_addr()).expect("connect");
        serve_until(&mut server, |s| s.stats().rejected_full == 1);
        assert!(sees_close(&mut refused));
        assert_eq!(server.peer_count(), 3);
        assert_eq!(server.stats().disconnected_evicted, 1);
        good.send(server.local_addr(), b"still here").expect("send");
        let got = poll_until(2, || drain(&mut server).pop());
        assert_eq!(got, Some((good.local_addr(), b"still here".to_vec())));
    }

    #[test]
    fn per_ip_limit_closes_extra_connections_from_that_ip_only() {
        let config = TcpConfig {
            max_connections_per_ip: 2,
            ..small_config()
        };
        let mut server = listen(config);
        let first = raw_from([127, 0, 0, 1], &server);
        let _second = raw_from([127, 0, 0, 1], &server);
        wait_for_peers(&mut server, 2);
        let mut third = raw_from([127, 0, 0, 1], &server);
        serve_until(&mut server, |s| s.stats().rejected_per_ip == 1);
        assert!(sees_close(&mut third));
        assert_eq!(server.peer_count(), 2);

        // Another address is not affected.
        let other = raw_from([127, 0, 0, 2], &server);
        wait_for_peers(&mut server, 3);
        assert!(
            server
                .connected_peers()
                .any(|a| a == other.local_addr().expect("addr"))
        );

        // A closed connection frees its place.
        drop(first);
        serve_until(&mut server, |s| s.stats().disconnected_peer_closed == 1);
        let _again = raw_from([127, 0, 0, 1], &server);
        wait_for_peers(&mut server, 3);
        let st = server.stats();
        assert_eq!((st.accepted, st.rejected_per_ip), (4, 1));
        assert_eq!(server.per_ip.len(), 2, "one entry per IP with connections");
    }

    #[test]
    fn silent_connections_time_out_and_talkative_ones_stay() {
        let timeout = Duration::from_millis(300);
        let config = TcpConfig {
            idle_timeout: timeout,
            ..small_config()
        };
        let mut server = listen(config.clone());
        let start = Instant::now();
        let mut talker = connect(&server, config.clone());
        let silent = connect(&server, config.clone());
        wait_for_peers(&mut server, 2);
        server.mark_validated(talker.local_addr());
        server.mark_validated(silent.local_addr());

        let mut buf = vec![0u8; server.max_payload()];
        let mut last_send = Instant::now();
        let (addr, reason) = poll_until(3, || {
            if last_send.elapsed() >= Duration::from_millis(50) {
                talker
                    .send(server.local_addr(), b"keepalive")
                    .expect("send");
                last_send = Instant::now();
            }
            while let Ok(Some(_)) = server.recv(&mut buf) {}
            server.poll_disconnected()
        })
        .expect("the silent connection times out");
        let closed_after = start.elapsed();
        assert_eq!(
            (addr, reason),
            (silent.local_addr(), DisconnectReason::IdleTimeout)
        );
        assert!(closed_after >= timeout, "closed after {closed_after:?}");
        assert_eq!(server.stats().disconnected_idle_timeout, 1);
        assert_eq!(server.peer_count(), 1);
        assert!(server.connected_peers().all(|a| a == talker.local_addr()));
    }

    #[test]
    fn unvalidated_connections_time_out_even_while_dripping_bytes() {
        let timeout = Duration::from_millis(300);
        let config = TcpConfig {
            handshake_timeout: timeout,
            ..small_config()
        };
        let mut server = listen(config.clone());
        let start = Instant::now();
        let mut dripper = TcpStream::connect(server.local_addr()).expect("connect");
        dripper.set_nodelay(true).expect("nodelay");
        let mut good = connect(&server, config.clone());
        wait_for_peers(&mut server, 2);
        server.mark_validated(good.local_addr());

        // A header announcing 1000 bytes, then the body one byte at a time.
        dripper.write_all(&1000u32.to_le_bytes()).expect("header");
        let mut buf = vec![0u8; server.max_payload()];
        let mut last_drip = Instant::now();
        let (addr, reason) = poll_until(3, || {
            if last_drip.elapsed() >= Duration::from_millis(20) {
                // Fails once the server closed the connection; the notice says so.
                let _ = dripper.write_all(&[0]);
                last_drip = Instant::now();
            }
            while let Ok(Some(_)) = server.recv(&mut buf) {}
            server.poll_disconnected()
        })
        .expect("the dripper times out");
        let closed_after = start.elapsed();
        assert_eq!(
            (addr, reason),
            (
                dripper.local_addr().expect("addr"),
                DisconnectReason::HandshakeTimeout
            )
        );
        assert!(closed_after >= timeout, "closed after {closed_after:?}");
        assert_eq!(server.stats().disconnected_handshake_timeout, 1);

        // The validated connection outlives the handshake timeout.
        std::thread::sleep(timeout);
        good.send(server.local_addr(), b"hi").expect("send");
        let got = poll_until(2, || drain(&mut server).pop());
        assert_eq!(got, Some((good.local_addr(), b"hi".to_vec())));
        assert_eq!(server.peer_count(), 1);
    }

    #[test]
    fn frame_rate_limit_allows_the_burst_then_disconnects() {
        let config = TcpConfig {
            max_frames_per_sec: 100,
            frame_burst: 20,
            ..small_config()
        };
        let mut server = listen(config.clone());
        let mut steady = connect(&server, config.clone());
        let mut flood = TcpStream::connect(server.local_addr()).expect("connect");
        let flood_addr = flood.local_addr().expect("addr");
        wait_for_peers(&mut server, 2);

        // 40 frames over 0.8 s, twice the burst at half the rate: within the limit.
        let mut got = Vec::new();
        for i in 0..40u8 {
            steady.send(server.local_addr(), &[i]).expect("send");
            std::thread::sleep(Duration::from_millis(20));
            got.extend(drain(&mut server));
        }
        poll_until(2, || {
            got.extend(drain(&mut server));
            (got.len() == 40).then_some(())
        })
        .expect("every steady frame arrives");
        assert_eq!(server.peer_count(), 2);

        // 100 zero-length frames at once: the burst and what the clock adds, then the end.
        let t0 = Instant::now();
        flood.write_all(&[0; 4 * 100]).expect("write");
        let mut flood_frames = 0u64;
        let (addr, reason) = poll_until(2, || {
            flood_frames += drain(&mut server)
                .iter()
                .filter(|(from, _)| *from == flood_addr)
                .count() as u64;
            server.poll_disconnected()
        })
        .expect("the flooder is disconnected");
        let allowed = 20 + (t0.elapsed().as_millis() as u64 / 10) + 2;
        assert_eq!(
            (addr, reason),
            (flood_addr, DisconnectReason::FrameRateExceeded)
        );
        assert!(
            (20..=allowed).contains(&flood_frames),
            "{flood_frames} frames"
        );
        assert_eq!(server.stats().disconnected_frame_rate, 1);
        assert!(sees_close(&mut flood));
        assert_eq!(
            server.connected_peers().collect::<Vec<_>>(),
            [steady.local_addr()]
        );
    }

    #[test]
    fn a_drain_reads_each_connection_once() {
        // Bytes that arrive after a connection was read wait for the next drain, so frames from
        // one busy peer do not make the server re-read every idle one.
        let config = small_config();
        let mut server = listen(config.clone());
        let mut busy = connect(&server, config.clone());
        let _idle: Vec<TcpTransport> = (0..5).map(|_| connect(&server, config.clone())).collect();
        wait_for_peers(&mut server, 6);
        busy.send(server.local_addr(), b"one").expect("send");
        let mut buf = [0u8; 16];
        let first = poll_until(2, || server.recv(&mut buf).expect("recv")).expect("frame");
        assert_eq!(first.from, busy.local_addr());
        busy.send(server.local_addr(), b"two").expect("send");
        std::thread::sleep(Duration::from_millis(20));
        // Same drain: `busy` was read already, so its second frame waits.
        assert_eq!(server.recv(&mut buf).expect("recv"), None);
        let second = server
            .recv(&mut buf)
            .expect("recv")
            .expect("next drain reads it");
        assert_eq!(
            (second.from, &buf[..second.len]),
            (busy.local_addr(), &b"two"[..])
        );
    }
}
