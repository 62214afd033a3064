//! The run: one mio `Poll` driving every connection through its phases
//! (connect, publish, hold, drain), with the idle, fanout, latency and echo
//! modes; soak mode's part is in `soak`.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::conn::{Conn, Peer, Role, State, Why};
use crate::framing::{
    digits_at, find, is_type, number_after, push_frame, RxBuf, TxBuf, OP_CLOSE, OP_TEXT, RX_INITIAL,
};
use crate::net::{connect_from, fresh_subnet};
use crate::report::Histogram;
use crate::soak::Soak;
use crate::{Mode, Opts, MAX_LOGGED};

/// Deadline from starting a connection to its welcome (or 101 on `/echo`).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between the publisher's welcome and the first message, so presence
/// events caused by the joins are drained first.
const SETTLE: Duration = Duration::from_millis(200);
/// How long the latency mode waits for outstanding messages after sending.
const DRAIN: Duration = Duration::from_secs(2);
/// A fanout run without any completed message for this long is abandoned.
const STALL: Duration = Duration::from_secs(10);
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Phase {
    /// Opening the main connections (subscribers, holders or echo clients).
    Connect,
    /// Opening the publisher.
    Publisher,
    Settle(Instant),
    Run,
    /// Latency: sending is over, waiting for the last deliveries.
    Drain(Instant),
    /// Idle: holding the connections.
    Hold(Instant),
    /// Soak: every client was asked to close; waiting for the server's
    /// answers until then.
    Closing(Instant),
    Done,
}

/// Everything but the sockets: counters, the run's state and its results.
pub(crate) struct Shared {
    pub(crate) opts: Opts,
    epoch: Instant,
    pub(crate) phase: Phase,
    rng: u64,

    pub(crate) connecting: usize,
    pub(crate) connected: usize,
    pub(crate) failed: usize,
    pub(crate) dropped: usize,
    pub(crate) connect_s: f64,
    pub(crate) open_at_end: usize,
    pub(crate) fail_reasons: BTreeMap<String, u64>,
    pub(crate) drop_reasons: BTreeMap<String, u64>,
    pub(crate) close_codes: BTreeMap<u16, u64>,
    pub(crate) logged: u32,
    pub(crate) pings: u64,
    pub(crate) error_frames: u64,
    pub(crate) other_frames: u64,
    pub(crate) unparsed: u64,
    /// Where `"seq":` sat in the last delivery: every delivery of a run has
    /// the same envelope, so this is checked before searching.
    seq_at: usize,

    pub(crate) run_start: Option<Instant>,
    pub(crate) end_at: Option<Instant>,
    /// Fanout: when the last message completed.
    done_at: Option<Instant>,
    last_progress: Instant,
    /// Subscribers every message must reach (those open when the run began).
    pub(crate) need: u32,
    /// Subscribers lost during the run.
    pub(crate) dead: u32,
    pub(crate) sent: u64,
    /// Messages `0..completed` reached every subscriber.
    pub(crate) completed: u64,
    /// Messages `0..first_seen` reached at least one subscriber.
    pub(crate) first_seen: u64,
    /// Chat: send slots passed (a slot of a connection not open is skipped).
    chat_slots: u64,
    /// Chat: reconnects made, and slots passed.
    pub(crate) churned: u64,
    churn_slots: u64,
    /// Per message: subscribers that got it (or were lost).
    counts: Vec<u32>,
    /// Per message: the latest delivery's latency (ns).
    pub(crate) max_lat: Vec<u64>,
    pub(crate) deliveries: u64,
    pub(crate) lost: u64,
    pub(crate) reordered: u64,
    pub(crate) bogus: u64,
    pub(crate) undelivered_to_dropped: u64,
    pub(crate) frame_len: usize,
    pub(crate) scratch: Vec<u8>,

    echo_msg: Vec<u8>,
    pub(crate) round_trips: u64,
    pub(crate) bad_echo: u64,

    pub(crate) hist: Histogram,
    next_progress: Instant,
    pub(crate) error: Option<String>,

    pub(crate) soak: Soak,
}

impl Shared {
    pub(crate) fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// A cheap masking key (xorshift64).
    pub(crate) fn mask(&mut self) -> [u8; 4] {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x as u32).to_le_bytes()
    }

    pub(crate) fn on_ready(&mut self, role: Role) {
        self.connecting -= 1;
        if role == Role::Soak {
            self.soak.live += 1;
            self.soak.peak_live = self.soak.peak_live.max(self.soak.live);
            if self.phase != Phase::Connect {
                self.soak.reconnects += 1;
                return;
            }
        }
        if role != Role::Publisher {
            self.connected += 1;
        }
    }

    pub(crate) fn on_delivery(&mut self, peer: &mut Peer, text: &[u8], now_ns: u64) {
        const SEQ: &[u8] = b"\"seq\":";
        if !text.get(self.seq_at..).is_some_and(|t| t.starts_with(SEQ)) {
            let from = find(text, b"\"data\":").unwrap_or(0);
            let Some(at) = find(&text[from..], SEQ) else {
                self.unparsed += 1;
                return;
            };
            self.seq_at = from + at;
        }
        let Some((seq, after)) = digits_at(text, self.seq_at + SEQ.len()) else {
            self.unparsed += 1;
            return;
        };
        self.deliveries += 1;
        // `"t"` follows `"seq"` in what the publisher sends.
        let t = match text.get(after..) {
            Some(rest) if rest.starts_with(b",\"t\":") => digits_at(text, after + 5),
            _ => number_after(text, after, b"\"t\":"),
        };
        if let Some((t, _)) = t {
            let latency = now_ns.saturating_sub(t);
            self.hist.record(latency);
            if let Some(max) = self.max_lat.get_mut(seq as usize) {
                *max = (*max).max(latency);
            }
        }
        if seq >= self.sent {
            self.bogus += 1;
        } else if seq == peer.expected {
            peer.expected += 1;
            self.account(seq);
        } else if seq > peer.expected {
            self.lost += seq - peer.expected;
            for missing in peer.expected..=seq {
                self.account(missing);
            }
            peer.expected = seq + 1;
        } else {
            self.reordered += 1;
        }
    }

    /// One more subscriber is done with message `seq`.
    fn account(&mut self, seq: u64) {
        self.counts[seq as usize] += 1;
        while self.first_seen < self.sent && self.counts[self.first_seen as usize] > 0 {
            self.first_seen += 1;
        }
        let before = self.completed;
        while self.completed < self.sent && self.counts[self.completed as usize] >= self.need {
            self.completed += 1;
        }
        if self.completed != before {
            let now = Instant::now();
            self.last_progress = now;
            if self.opts.mode == Mode::Fanout && self.completed == self.opts.messages {
                self.done_at = Some(now);
            }
        }
    }

    /// A subscriber was lost mid-run: it no longer holds messages back.
    fn subscriber_lost(&mut self, expected: u64) {
        self.dead += 1;
        self.undelivered_to_dropped += self.sent - expected.min(self.sent);
        for seq in expected..self.sent {
            self.account(seq);
        }
    }

    /// Append the next published message to the publisher's output.
    fn publish(&mut self, tx: &mut TxBuf) {
        let seq = self.sent;
        let t = self.now_ns();
        self.scratch.clear();
        write!(
            self.scratch,
            r#"{{"type":"message","room":"{}","data":{{"seq":{seq},"t":{t},"pad":""#,
            self.opts.room
        )
        .expect("writing to a Vec");
        self.push_padded(tx);
        self.counts.push(self.dead);
        self.max_lat.push(0);
        self.sent += 1;
    }

    fn echo_send(&mut self, peer: &mut Peer, tx: &mut TxBuf, now_ns: u64) {
        let mask = self.mask();
        if peer.role == Role::Joiner {
            // Joins mode: join the peer's room, or leave it once joined.
            let room = peer.user % self.opts.rooms as u64;
            let msg = if peer.joined.is_empty() {
                format!(r#"{{"type":"join","room":"j{room}"}}"#)
            } else {
                format!(r#"{{"type":"leave","room":"j{room}"}}"#)
            };
            push_frame(&mut tx.buf, OP_TEXT, msg.as_bytes(), mask);
            if peer.joined.is_empty() {
                peer.sent_at = now_ns;
            }
            peer.waiting = true;
            return;
        }
        push_frame(&mut tx.buf, OP_TEXT, &self.echo_msg, mask);
        peer.sent_at = now_ns;
        peer.waiting = true;
    }

    /// Chat mode: a message from another member of the room.
    pub(crate) fn on_chat(&mut self, text: &[u8], now_ns: u64) {
        match number_after(text, 0, b"\"t\":") {
            Some((t, _)) => {
                self.deliveries += 1;
                self.hist.record(now_ns.saturating_sub(t));
            }
            None => self.unparsed += 1,
        }
    }

    /// Chat mode: message `self.sent` from a chatter to its room.
    fn chat_send(&mut self, room: usize, tx: &mut TxBuf) {
        let t = self.now_ns();
        self.scratch.clear();
        write!(
            self.scratch,
            r#"{{"type":"message","room":"chat-{room}","data":{{"t":{t},"pad":""#
        )
        .expect("write to a Vec");
        self.push_padded(tx);
        self.sent += 1;
    }

    /// Finish the message begun in `scratch` (open at its `"pad":"`): pad
    /// it to `--payload` bytes, close it, and queue it as a masked frame.
    fn push_padded(&mut self, tx: &mut TxBuf) {
        let pad = self.opts.payload.saturating_sub(self.scratch.len() + 3);
        self.scratch.resize(self.scratch.len() + pad, b'x');
        self.scratch.extend_from_slice(b"\"}}");
        let mask = self.mask();
        push_frame(&mut tx.buf, OP_TEXT, &self.scratch, mask);
        self.frame_len = self.scratch.len();
    }

    /// Joins mode: a reply to the peer's join or leave.
    pub(crate) fn on_joins(&mut self, peer: &mut Peer, tx: &mut TxBuf, text: &[u8], now_ns: u64) {
        let joined = is_type(text, b"joined");
        if !peer.waiting || !(joined || is_type(text, b"left")) {
            // Presence events of the room (others joining and leaving).
            return;
        }
        peer.waiting = false;
        if joined {
            peer.joined.push(0);
        } else {
            peer.joined.clear();
            self.round_trips += 1;
            self.hist.record(now_ns.saturating_sub(peer.sent_at));
        }
        if self.phase == Phase::Run || joined {
            self.echo_send(peer, tx, now_ns);
        }
    }

    pub(crate) fn on_echo(&mut self, peer: &mut Peer, tx: &mut TxBuf, text: &[u8], now_ns: u64) {
        if !peer.waiting {
            self.bad_echo += 1;
            return;
        }
        peer.waiting = false;
        if text != self.echo_msg.as_slice() {
            self.bad_echo += 1;
        }
        self.round_trips += 1;
        self.hist.record(now_ns.saturating_sub(peer.sent_at));
        if self.phase == Phase::Run {
            self.echo_send(peer, tx, now_ns);
        }
    }
}

pub(crate) struct Load {
    poll: Poll,
    pub(crate) conns: Vec<Conn>,
    pub(crate) s: Shared,
    /// Main connections are `0..main`; the publisher, if any, is `main`.
    pub(crate) main: usize,
    next_open: usize,
    open_limit: usize,
    /// Handshake deadlines in start order (one fixed timeout, so a FIFO),
    /// with the attempt (`Peer::gen`) each is for.
    deadlines: VecDeque<(Instant, usize, u32)>,
    sources: Vec<Option<IpAddr>>,
}

impl Load {
    pub(crate) fn new(opts: Opts) -> io::Result<Load> {
        let role = match opts.mode {
            Mode::Idle => Role::Holder,
            Mode::Fanout | Mode::Latency => Role::Subscriber,
            Mode::Echo => Role::Echo,
            Mode::Joins => Role::Joiner,
            Mode::Soak => Role::Soak,
            Mode::Chat => Role::Chatter,
        };
        let main = opts.conns;
        let mut conns: Vec<Conn> = (0..main).map(|_| Conn::new(role)).collect();
        if opts.mode.publishes() {
            conns.push(Conn::new(Role::Publisher));
        }
        let sources = match opts.server.ip() {
            IpAddr::V4(_) => {
                // A fresh /24 of 127.0.0.0/8 for each run: the 4-tuples of a
                // run just before are still in TIME_WAIT, and a connect that
                // must step over them is several times slower, which would
                // measure the previous run instead of the server.
                let [a, b] = fresh_subnet();
                (1..=opts.sources)
                    .map(|k| Some(IpAddr::V4(Ipv4Addr::new(127, a, b, k))))
                    .collect()
            }
            IpAddr::V6(_) => vec![None],
        };
        let now = Instant::now();
        let echo_msg = vec![b'x'; opts.payload];
        if matches!(opts.mode, Mode::Soak | Mode::Joins) {
            for (i, conn) in conns.iter_mut().enumerate() {
                conn.peer.user = i as u64;
            }
        }
        let soak = Soak::new(&opts, now);
        let s = Shared {
            epoch: now,
            phase: Phase::Connect,
            rng: 0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id()),
            connecting: 0,
            connected: 0,
            failed: 0,
            dropped: 0,
            connect_s: 0.0,
            open_at_end: 0,
            fail_reasons: BTreeMap::new(),
            drop_reasons: BTreeMap::new(),
            close_codes: BTreeMap::new(),
            logged: 0,
            pings: 0,
            error_frames: 0,
            other_frames: 0,
            unparsed: 0,
            seq_at: 0,
            run_start: None,
            end_at: None,
            done_at: None,
            last_progress: now,
            need: 0,
            dead: 0,
            sent: 0,
            completed: 0,
            first_seen: 0,
            chat_slots: 0,
            churned: 0,
            churn_slots: 0,
            counts: Vec::new(),
            max_lat: Vec::new(),
            deliveries: 0,
            lost: 0,
            reordered: 0,
            bogus: 0,
            undelivered_to_dropped: 0,
            frame_len: 0,
            scratch: Vec::with_capacity(opts.payload + 128),
            echo_msg,
            round_trips: 0,
            bad_echo: 0,
            hist: Histogram::new(),
            next_progress: now + PROGRESS_EVERY,
            error: None,
            soak,
            opts,
        };
        Ok(Load {
            poll: Poll::new()?,
            conns,
            s,
            main,
            next_open: 0,
            open_limit: main,
            deadlines: VecDeque::new(),
            sources,
        })
    }

    pub(crate) fn run(&mut self) {
        eprintln!(
            "{} against {}: {} connections",
            self.s.opts.mode.name(),
            self.s.opts.server,
            self.main
        );
        let mut events = Events::with_capacity(4096);
        self.tick(Instant::now());
        while self.s.phase != Phase::Done {
            let timeout = if self.s.opts.busy_poll {
                Duration::ZERO
            } else {
                self.timeout(Instant::now())
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.s.error = Some(format!("poll failed: {e}"));
                break;
            }
            for event in events.iter() {
                let closed = event.is_read_closed() || event.is_error();
                self.on_event(event.token().0, closed);
            }
            self.tick(Instant::now());
        }
        self.s.open_at_end = if self.s.opts.mode == Mode::Soak {
            // Soak: anything not closed by now did not close cleanly.
            self.conns
                .iter()
                .filter(|c| matches!(c.state, State::Connecting | State::Upgrading | State::Open))
                .count()
        } else {
            self.conns[..self.main]
                .iter()
                .filter(|c| c.is_live())
                .count()
        };
        self.close_all();
    }

    fn on_event(&mut self, idx: usize, peer_closed: bool) {
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        let was_ready = conn.peer.ready;
        let result = conn.on_event(idx, &mut self.s, peer_closed);
        let became_ready = !was_ready && conn.peer.ready;
        let (role, gen) = (conn.peer.role, conn.peer.gen);
        match result {
            Err(why) => self.fail(idx, why),
            Ok(()) if became_ready && role == Role::Soak => match self.s.phase {
                Phase::Run => self.s.soak.schedule_op(idx, gen, Instant::now()),
                Phase::Closing(_) => self.soak_close(idx, Instant::now()),
                _ => {}
            },
            Ok(()) => {}
        }
    }

    /// Start connections while the window allows.
    fn open_more(&mut self, now: Instant) {
        while self.s.connecting < self.s.opts.connect_window && self.next_open < self.open_limit {
            let idx = self.next_open;
            self.next_open += 1;
            self.start_conn(idx, now);
        }
    }

    /// Start connection attempt number `gen + 1` of slot `idx`.
    pub(crate) fn start_conn(&mut self, idx: usize, now: Instant) {
        self.s.connecting += 1;
        let conn = &mut self.conns[idx];
        conn.peer.gen = conn.peer.gen.wrapping_add(1);
        if conn.peer.role == Role::Soak {
            self.s.soak.prepare(&mut conn.peer, self.s.opts.rooms);
        }
        let gen = conn.peer.gen;
        let source = self.sources[(idx + gen as usize - 1) % self.sources.len()];
        conn.state = State::Connecting;
        let role = conn.peer.role;
        let target = match (&self.s.opts.subscribers_on[..], role) {
            ([], _) | (_, Role::Publisher) => self.s.opts.server,
            (servers, _) => servers[idx % servers.len()],
        };
        let started = connect_from(source, target).and_then(|std| {
            let mut stream = TcpStream::from_std(std);
            // Idle holders only ever send pongs: spare the connect rate a syscall.
            if role != Role::Holder {
                stream.set_nodelay(true)?;
            }
            self.poll.registry().register(
                &mut stream,
                Token(idx),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        match started {
            Ok(stream) => {
                conn.stream = Some(stream);
                conn.tls = match &self.s.opts.tls {
                    Some(config) => match crate::tls::connection(config) {
                        Ok(tls) => Some(tls),
                        Err(e) => return self.fail(idx, Why::Connect(e)),
                    },
                    None => None,
                };
                conn.rx.buf = vec![0; RX_INITIAL];
                self.deadlines
                    .push_back((now + HANDSHAKE_TIMEOUT, idx, gen));
            }
            Err(e) => self.fail(idx, Why::Connect(e)),
        }
    }

    /// Close a connection and account for it.
    pub(crate) fn fail(&mut self, idx: usize, why: Why) {
        let conn = &mut self.conns[idx];
        if matches!(conn.state, State::Idle | State::Closed) {
            return;
        }
        if let (Some(stream), None) = (conn.stream.as_mut(), &conn.tls) {
            // Best effort: a close reply or pong may still be queued.
            let _ = stream.write(&conn.tx.buf[conn.tx.pos..]);
        }
        conn.stream = None;
        conn.tls = None;
        conn.state = State::Closed;
        conn.rx = RxBuf::default();
        conn.tx = TxBuf::default();
        if conn.peer.role == Role::Soak {
            self.soak_lost(idx, why);
            return;
        }
        let s = &mut self.s;
        let reason = why.to_string();
        if let Why::Closed(code) = why {
            *s.close_codes.entry(code).or_default() += 1;
        }
        if s.logged < MAX_LOGGED {
            s.logged += 1;
            eprintln!("connection {idx} ({:?}): {reason}", conn.peer.role);
        }
        if conn.peer.ready {
            conn.peer.dropped = true;
            s.dropped += 1;
            *s.drop_reasons.entry(reason.clone()).or_default() += 1;
            match conn.peer.role {
                Role::Subscriber if s.run_start.is_some() => s.subscriber_lost(conn.peer.expected),
                Role::Publisher => s.error = Some(format!("publisher connection lost: {reason}")),
                _ => {}
            }
        } else {
            s.connecting -= 1;
            *s.fail_reasons.entry(reason.clone()).or_default() += 1;
            if conn.peer.role == Role::Publisher {
                s.error = Some(format!("publisher could not connect: {reason}"));
            } else {
                s.failed += 1;
            }
        }
    }

    /// Timers, phase changes, publishing and progress, after each poll.
    fn tick(&mut self, now: Instant) {
        while let Some(&(deadline, idx, gen)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            let conn = &self.conns[idx];
            let handshaking = matches!(conn.state, State::Connecting | State::Upgrading);
            if conn.peer.gen == gen && handshaking && !conn.peer.ready {
                self.fail(idx, Why::Timeout);
            }
        }
        self.open_more(now);
        match self.s.phase {
            Phase::Connect if self.next_open == self.open_limit && self.s.connecting == 0 => {
                self.connected(now)
            }
            Phase::Run | Phase::Drain(_) | Phase::Closing(_) if self.s.opts.mode == Mode::Soak => {
                self.soak_tick(now)
            }
            Phase::Publisher if self.conns[self.main].is_live() => {
                self.s.phase = Phase::Settle(now + SETTLE);
            }
            Phase::Settle(at) if now >= at => self.start_run(now),
            Phase::Run => self.run_step(now),
            Phase::Drain(at) if self.s.completed == self.s.sent || now >= at => {
                self.s.phase = Phase::Done;
            }
            Phase::Hold(at) if now >= at => {
                self.s.end_at = Some(now);
                self.s.phase = Phase::Done;
            }
            _ => {}
        }
        if self.s.error.is_some() {
            self.s.phase = Phase::Done;
        }
        if now >= self.s.next_progress && self.s.phase != Phase::Done {
            self.s.next_progress = now + PROGRESS_EVERY;
            self.progress(now);
        }
    }

    /// Every main connection is open or failed.
    fn connected(&mut self, now: Instant) {
        let s = &mut self.s;
        s.connect_s = (now - s.epoch).as_secs_f64();
        eprintln!(
            "connected {}/{} ({} failed) in {:.2}s",
            s.connected, self.main, s.failed, s.connect_s
        );
        if s.connected == 0 && s.opts.mode != Mode::Idle {
            s.error = Some("no connection could be opened".into());
            return;
        }
        eprintln!("READY");
        match s.opts.mode {
            Mode::Idle => s.phase = Phase::Hold(now + s.opts.hold),
            Mode::Echo | Mode::Soak | Mode::Joins | Mode::Chat => self.start_run(now),
            Mode::Fanout | Mode::Latency => {
                s.phase = Phase::Publisher;
                self.open_limit += 1;
                self.open_more(now);
            }
        }
    }

    fn start_run(&mut self, now: Instant) {
        self.s.phase = Phase::Run;
        self.s.run_start = Some(now);
        self.s.last_progress = now;
        match self.s.opts.mode {
            Mode::Fanout | Mode::Latency => {
                let live = self.conns[..self.main]
                    .iter()
                    .filter(|c| c.is_live())
                    .count();
                self.s.need = live as u32;
                if live == 0 {
                    self.s.error = Some("every subscriber was lost before the run".into());
                    return;
                }
                eprintln!("publishing to {live} subscribers");
            }
            Mode::Echo | Mode::Joins => {
                for idx in 0..self.main {
                    let conn = &mut self.conns[idx];
                    if !conn.is_live() {
                        continue;
                    }
                    let now_ns = self.s.now_ns();
                    self.s.echo_send(&mut conn.peer, &mut conn.tx, now_ns);
                    if let Err(why) = conn.flush() {
                        self.fail(idx, why);
                    }
                }
            }
            Mode::Soak => {
                let s = &mut self.s;
                s.soak.refilled = now;
                eprintln!(
                    "soak: {} clients, {} rooms, {} operations/s, one per client every {:.1} ms on average",
                    s.connected,
                    s.opts.rooms,
                    s.opts.rate,
                    s.soak.interval.as_secs_f64() * 1000.0
                );
                for (idx, conn) in self.conns.iter().enumerate() {
                    if conn.is_live() {
                        s.soak.schedule_op(idx, conn.peer.gen, now);
                    } else if conn.state == State::Closed {
                        // Could not connect at first: try again during the run.
                        s.soak.schedule_reconnect(idx, conn.peer.gen, now);
                    }
                }
            }
            Mode::Idle | Mode::Chat => {}
        }
        self.run_step(now);
    }

    fn run_step(&mut self, now: Instant) {
        let s = &mut self.s;
        let start = s.run_start.unwrap_or(now);
        match s.opts.mode {
            Mode::Fanout => {
                self.publish(now);
                let s = &mut self.s;
                if s.completed >= s.opts.messages {
                    s.end_at = Some(s.done_at.unwrap_or(now));
                    s.phase = Phase::Done;
                } else if now - s.last_progress > STALL {
                    s.end_at = Some(now);
                    s.error = Some(format!(
                        "stalled: no message completed for {}s ({} of {} complete)",
                        STALL.as_secs(),
                        s.completed,
                        s.opts.messages
                    ));
                }
            }
            Mode::Latency | Mode::Chat => {
                if now >= start + s.opts.duration {
                    s.end_at = Some(now);
                    s.phase = Phase::Drain(now + DRAIN);
                } else if s.opts.mode == Mode::Chat {
                    self.chat_step(now);
                } else {
                    self.publish(now);
                }
            }
            Mode::Echo | Mode::Joins => {
                if now >= start + s.opts.duration {
                    s.end_at = Some(now);
                    s.phase = Phase::Done;
                }
            }
            Mode::Idle | Mode::Soak => {}
        }
    }

    /// Chat: the messages and reconnects due by `now`.
    fn chat_step(&mut self, now: Instant) {
        let start = self.s.run_start.unwrap_or(now);
        let main = self.main as u64;
        let at = |slot, rate| slot_time(start, slot, rate);
        let size = self.s.opts.room_size as u64;
        let rooms = main.div_ceil(size);
        while at(self.s.chat_slots, self.s.opts.rate) <= now {
            // Consecutive slots go to different rooms (room = slot mod
            // rooms, then the next member): each room hears a message every
            // rooms / rate seconds, each member speaks once per round — not
            // a room's members all at once, which would let the server
            // batch their deliveries.
            let slot = self.s.chat_slots;
            let idx = ((slot % rooms) * size + (slot / rooms) % size) as usize;
            self.s.chat_slots += 1;
            if idx >= self.main {
                continue;
            }
            let conn = &mut self.conns[idx];
            if !conn.is_live() {
                continue;
            }
            self.s.chat_send(idx / self.s.opts.room_size, &mut conn.tx);
            if let Err(why) = conn.flush() {
                self.fail(idx, why);
            }
        }
        if self.s.opts.churn > 0.0 {
            while at(self.s.churn_slots, self.s.opts.churn) <= now {
                // Spread over the rooms: a stride coprime with most sizes.
                let idx = (self.s.churn_slots.wrapping_mul(7919) % main) as usize;
                self.s.churn_slots += 1;
                self.recycle(idx, now);
            }
        }
    }

    /// Chat: close a live connection (a leave) and open it again to its
    /// room (a join).
    fn recycle(&mut self, idx: usize, now: Instant) {
        let conn = &mut self.conns[idx];
        if !conn.is_live() {
            return;
        }
        conn.stream = None;
        conn.tls = None;
        conn.state = State::Closed;
        conn.rx = RxBuf::default();
        conn.tx = TxBuf::default();
        conn.peer.ready = false;
        self.s.connected -= 1;
        self.s.churned += 1;
        self.start_conn(idx, now);
    }

    /// When the chat's next message or reconnect is due.
    fn next_chat(&self) -> Instant {
        let start = self.s.run_start.unwrap_or(self.s.epoch);
        let at = |slot, rate| slot_time(start, slot, rate);
        let next = at(self.s.chat_slots, self.s.opts.rate);
        if self.s.opts.churn > 0.0 {
            next.min(at(self.s.churn_slots, self.s.opts.churn))
        } else {
            next
        }
    }

    /// When the latency publisher's next message is due.
    fn next_send(&self) -> Instant {
        let start = self.s.run_start.unwrap_or(self.s.epoch);
        slot_time(start, self.s.sent, self.s.opts.rate)
    }

    /// Queue what the publisher may send now, and write it.
    fn publish(&mut self, now: Instant) {
        let idx = self.main;
        if !self.conns[idx].is_live() {
            return;
        }
        let due = self.next_send();
        let Load { conns, s, .. } = self;
        let conn = &mut conns[idx];
        match s.opts.mode {
            Mode::Fanout => {
                // --ahead: the next message once the previous one reached
                // its first subscriber (a steady stream into a busy room);
                // --in-flight still caps what is outstanding.
                while s.sent < s.opts.messages
                    && s.sent - s.completed < s.opts.in_flight
                    && (!s.opts.ahead || s.sent == s.first_seen)
                {
                    s.publish(&mut conn.tx);
                }
            }
            Mode::Latency => {
                let mut due = due;
                while due <= now {
                    s.publish(&mut conn.tx);
                    due = slot_time(s.run_start.unwrap_or(now), s.sent, s.opts.rate);
                }
            }
            Mode::Idle | Mode::Echo | Mode::Soak | Mode::Joins | Mode::Chat => {}
        }
        if let Err(why) = conn.flush() {
            self.fail(idx, why);
        }
    }

    fn timeout(&self, now: Instant) -> Duration {
        let mut next = self.s.next_progress;
        if let Some(&(deadline, _, _)) = self.deadlines.front() {
            next = next.min(deadline);
        }
        if self.s.opts.mode == Mode::Soak {
            if let Some(at) = self.s.soak.next_timer(self.s.opts.rate) {
                next = next.min(at);
            }
        }
        match self.s.phase {
            Phase::Settle(at) | Phase::Drain(at) | Phase::Hold(at) | Phase::Closing(at) => {
                next = next.min(at)
            }
            Phase::Run => {
                let start = self.s.run_start.unwrap_or(now);
                match self.s.opts.mode {
                    Mode::Latency => {
                        next = next.min(self.next_send()).min(start + self.s.opts.duration)
                    }
                    Mode::Echo | Mode::Soak | Mode::Joins => {
                        next = next.min(start + self.s.opts.duration)
                    }
                    Mode::Chat => {
                        next = next.min(self.next_chat()).min(start + self.s.opts.duration)
                    }
                    Mode::Fanout | Mode::Idle => {}
                }
            }
            _ => {}
        }
        next.saturating_duration_since(now)
    }

    fn progress(&self, now: Instant) {
        let s = &self.s;
        let at = (now - s.epoch).as_secs_f64();
        match s.phase {
            Phase::Connect | Phase::Publisher => eprintln!(
                "[{at:.1}s] connecting: {} open, {} failed, {} in flight, {} to go",
                s.connected,
                s.failed,
                s.connecting,
                self.open_limit - self.next_open
            ),
            Phase::Run | Phase::Drain(_) | Phase::Closing(_) => match s.opts.mode {
                Mode::Echo => eprintln!("[{at:.1}s] echo: {} round trips", s.round_trips),
                Mode::Joins => eprintln!("[{at:.1}s] joins: {} join/leave pairs", s.round_trips),
                Mode::Chat => eprintln!(
                    "[{at:.1}s] chat: {} sent, {} delivered, {} reconnects, {} open",
                    s.sent, s.deliveries, s.churned, s.connected
                ),
                Mode::Soak => {
                    let k = &s.soak;
                    let ops: u64 = k.ops.iter().sum();
                    let received: u64 = k.received.iter().sum();
                    let errors: u64 = k.errors.values().sum();
                    let unexpected: u64 = k.unexpected_closes.values().sum::<u64>()
                        + k.unexpected_drops.values().sum::<u64>();
                    let phase = match s.phase {
                        Phase::Run => "run",
                        Phase::Drain(_) => "drain",
                        _ => "closing",
                    };
                    eprintln!(
                        "[{at:.1}s] soak {phase}: {} live, {} in handshake, {ops} ops, \
                         {received} received, {} reconnects, {errors} error replies, \
                         {unexpected} unexpected closes",
                        k.live, s.connecting, k.reconnects
                    );
                }
                _ => eprintln!(
                    "[{at:.1}s] {}: {} sent, {} complete, {} deliveries, {} lost",
                    s.opts.mode.name(),
                    s.sent,
                    s.completed,
                    s.deliveries,
                    s.lost
                ),
            },
            Phase::Hold(until) => eprintln!(
                "[{at:.1}s] holding {} connections ({} dropped, {:.0}s left)",
                s.connected - s.dropped,
                s.dropped,
                until.saturating_duration_since(now).as_secs_f64()
            ),
            Phase::Settle(_) | Phase::Done => {}
        }
    }

    /// Say goodbye (close 1000) on every open socket, then drop them all.
    fn close_all(&mut self) {
        for conn in &mut self.conns {
            if conn.state == State::Open {
                let mask = self.s.mask();
                push_frame(&mut conn.tx.buf, OP_CLOSE, &1000u16.to_be_bytes(), mask);
                let _ = conn.flush();
            }
            conn.stream = None;
            conn.tls = None;
            conn.state = State::Closed;
        }
    }
}

/// When send slot `slot` of a schedule at `rate` a second from `start` is due.
fn slot_time(start: Instant, slot: u64, rate: f64) -> Instant {
    start + Duration::from_secs_f64(slot as f64 / rate)
}
