//! Soak mode: clients churning through joins, leaves, messages, pings,
//! clean closes and resets on a seeded random schedule held to `--rate`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::Write;
use std::time::{Duration, Instant};

use crate::conn::{Peer, Role, State, Why};
use crate::framing::{number_after, push_frame, string_after, RxBuf, TxBuf, OP_CLOSE, OP_TEXT};
use crate::load::{Load, Phase, Shared};
use crate::net::set_linger_zero;
use crate::report::{round, Report};
use crate::{Opts, MAX_LOGGED};

/// Most rooms a soak client is in at once, so room fan-out stays bounded.
const SOAK_MAX_JOINED: usize = 4;
/// Shortest mean interval between one soak client's operations: 500/s, half
/// the server's default per-connection rate limit.
const SOAK_MIN_INTERVAL: Duration = Duration::from_millis(2);
/// Reconnect delay after a disconnect: at least this, plus up to the jitter.
const SOAK_RECONNECT_MIN_MS: u64 = 20;
const SOAK_RECONNECT_JITTER_MS: u64 = 480;
/// How long a clean close waits for the server's close frame.
const SOAK_CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// After the run: how long to wait for replies due and handshakes under way.
const SOAK_DRAIN: Duration = Duration::from_secs(5);
/// Then: how long to wait for the server to answer every final close.
const SOAK_CLOSING: Duration = Duration::from_secs(5);
/// Server frame types counted by name; anything else counts as `other`.
const SOAK_RX_TYPES: [&str; 12] = [
    "welcome",
    "joined",
    "left",
    "message",
    "private",
    "broadcast",
    "user_joined",
    "user_left",
    "typing",
    "presence",
    "pong",
    "error",
];

/// What a soak client does next.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Join,
    Leave,
    Message,
    Typing,
    Presence,
    Private,
    Ping,
    /// Clean close handshake (1000), then reconnect.
    Close,
    /// Drop the socket with an RST (`SO_LINGER` 0), then reconnect.
    Reset,
}

impl Op {
    /// In the order of `WEIGHTS`; an operation's `ref` is its index here.
    const ALL: [Op; 9] = [
        Op::Join,
        Op::Leave,
        Op::Message,
        Op::Typing,
        Op::Presence,
        Op::Private,
        Op::Ping,
        Op::Close,
        Op::Reset,
    ];
    /// Percent chance of each operation.
    const WEIGHTS: [u64; 9] = [16, 12, 18, 10, 10, 12, 16, 3, 3];

    fn name(self) -> &'static str {
        match self {
            Op::Join => "join",
            Op::Leave => "leave",
            Op::Message => "message",
            Op::Typing => "typing",
            Op::Presence => "presence",
            Op::Private => "private",
            Op::Ping => "ping",
            Op::Close => "close",
            Op::Reset => "reset",
        }
    }

    /// Does the server answer it (with its reply, or an `error` instead)?
    fn replied(self) -> bool {
        matches!(self, Op::Join | Op::Leave | Op::Presence | Op::Ping)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Timer {
    /// The client's next operation.
    Op,
    /// Reconnect after a disconnect.
    Reconnect,
    /// The server did not answer our close in time.
    CloseTimeout,
}

/// Soak mode's schedule and counters.
pub(crate) struct Soak {
    /// xorshift64* state, from `--seed`.
    rng: u64,
    /// When each client's next step is due, with the attempt (`Peer::gen`)
    /// it is for; entries for an earlier attempt are skipped.
    timers: BinaryHeap<Reverse<(Instant, usize, u32, Timer)>>,
    /// Mean interval between one client's operations.
    pub(crate) interval: Duration,
    /// Token bucket holding all clients to `--rate` operations per second.
    tokens: f64,
    burst: f64,
    pub(crate) refilled: Instant,
    /// The next new user number (`s<n>`) for a reconnect as a new user.
    next_user: u64,
    /// Counter put in each `message` / `private` payload.
    sent: u64,
    pub(crate) live: usize,
    pub(crate) peak_live: usize,
    pub(crate) ops: [u64; Op::ALL.len()],
    pub(crate) received: [u64; SOAK_RX_TYPES.len() + 1],
    pub(crate) errors: BTreeMap<String, u64>,
    errors_by_op: BTreeMap<String, u64>,
    reconnect_attempts: u64,
    pub(crate) reconnects: u64,
    handshake_failures: BTreeMap<String, u64>,
    /// Close frames the server sent on its own, by code.
    pub(crate) unexpected_closes: BTreeMap<u16, u64>,
    /// Connections lost without a close frame, not by our doing.
    pub(crate) unexpected_drops: BTreeMap<String, u64>,
    /// The server's answers to our close frames, by code.
    close_replies: BTreeMap<u16, u64>,
    /// Our close got no close frame back, but the connection ended.
    closes_without_reply: BTreeMap<String, u64>,
    close_timeouts: u64,
    /// Clean closes completed in the final closing phase.
    final_closes: u64,
    /// Replies still due when the server answered a clean close.
    replies_missing: u64,
    /// Replies still due on connections we reset (or lost): not an anomaly.
    replies_abandoned: u64,
    /// `joined`/`left`/`presence`/`pong` with no request of ours waiting.
    unsolicited_replies: u64,
    frames_before_welcome: u64,
}

impl Soak {
    pub(crate) fn new(opts: &Opts, now: Instant) -> Soak {
        // splitmix64 of the seed, so that small seeds give unrelated streams.
        let mut z = opts.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let interval = Duration::try_from_secs_f64(opts.conns as f64 / opts.rate)
            .unwrap_or(Duration::MAX)
            .max(SOAK_MIN_INTERVAL);
        Soak {
            rng: z.max(1),
            timers: BinaryHeap::new(),
            interval,
            tokens: 0.0,
            burst: (opts.rate / 10.0).max(1.0),
            refilled: now,
            next_user: opts.conns as u64,
            sent: 0,
            live: 0,
            peak_live: 0,
            ops: [0; Op::ALL.len()],
            received: [0; SOAK_RX_TYPES.len() + 1],
            errors: BTreeMap::new(),
            errors_by_op: BTreeMap::new(),
            reconnect_attempts: 0,
            reconnects: 0,
            handshake_failures: BTreeMap::new(),
            unexpected_closes: BTreeMap::new(),
            unexpected_drops: BTreeMap::new(),
            close_replies: BTreeMap::new(),
            closes_without_reply: BTreeMap::new(),
            close_timeouts: 0,
            final_closes: 0,
            replies_missing: 0,
            replies_abandoned: 0,
            unsolicited_replies: 0,
            frames_before_welcome: 0,
        }
    }

    /// xorshift64*.
    fn next(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (near enough: `n` is small).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick_op(&mut self) -> Op {
        let mut roll = self.below(Op::WEIGHTS.iter().sum());
        for (op, weight) in Op::ALL.into_iter().zip(Op::WEIGHTS) {
            if roll < weight {
                return op;
            }
            roll -= weight;
        }
        Op::Ping
    }

    /// The next operation of a client: uniform in `0 .. 2 * interval` from now.
    pub(crate) fn schedule_op(&mut self, idx: usize, gen: u32, now: Instant) {
        let fraction = self.below(1 << 20) as f64 / f64::from(1 << 20);
        let at = now + self.interval.mul_f64(2.0 * fraction);
        self.timers.push(Reverse((at, idx, gen, Timer::Op)));
    }

    pub(crate) fn schedule_reconnect(&mut self, idx: usize, gen: u32, now: Instant) {
        let ms = SOAK_RECONNECT_MIN_MS + self.below(SOAK_RECONNECT_JITTER_MS);
        let at = now + Duration::from_millis(ms);
        self.timers.push(Reverse((at, idx, gen, Timer::Reconnect)));
    }

    /// Take one operation's token if the bucket has one.
    fn take_token(&mut self, now: Instant, rate: f64) -> bool {
        let refill = now.saturating_duration_since(self.refilled).as_secs_f64() * rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the first timer is due (an operation also waits for a token).
    pub(crate) fn next_timer(&self, rate: f64) -> Option<Instant> {
        let &Reverse((at, _, _, timer)) = self.timers.peek()?;
        if timer == Timer::Op && self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / rate);
            return Some(at.max(self.refilled + wait));
        }
        Some(at)
    }

    /// Fresh per-connection state for a new attempt: maybe a new user, maybe
    /// a room in the URL (its `joined` is then due).
    pub(crate) fn prepare(&mut self, peer: &mut Peer, rooms: u32) {
        peer.ready = false;
        peer.closing = false;
        peer.awaiting = 0;
        peer.joined.clear();
        peer.url_room = None;
        if peer.gen > 1 && self.below(2) == 0 {
            peer.user = self.next_user;
            self.next_user += 1;
        }
        if self.below(2) == 0 {
            let room = self.below(u64::from(rooms)) as u32;
            peer.url_room = Some(room);
            peer.joined.push(room);
            peer.awaiting = 1;
        }
    }

    /// A reply to one of our requests arrived.
    fn reply(&mut self, peer: &mut Peer) {
        if peer.awaiting > 0 {
            peer.awaiting -= 1;
        } else {
            self.unsolicited_replies += 1;
        }
    }
}

impl Shared {
    pub(crate) fn on_soak_text(&mut self, peer: &mut Peer, text: &[u8]) {
        let kind = string_after(text, b"\"type\":\"", 32);
        let slot = kind
            .and_then(|t| SOAK_RX_TYPES.iter().position(|n| n.as_bytes() == t))
            .unwrap_or(SOAK_RX_TYPES.len());
        self.soak.received[slot] += 1;
        if !peer.ready {
            if kind == Some(b"welcome") {
                peer.ready = true;
                self.on_ready(Role::Soak);
            } else {
                self.soak.frames_before_welcome += 1;
            }
            return;
        }
        match kind.unwrap_or_default() {
            b"joined" | b"left" | b"presence" | b"pong" => self.soak.reply(peer),
            b"error" => {
                self.error_frames += 1;
                let code = string_after(text, b"\"code\":\"", text.len()).unwrap_or(b"?");
                let code = String::from_utf8_lossy(code);
                let op = number_after(text, 0, b"\"ref\":")
                    .and_then(|(n, _)| Op::ALL.get(usize::try_from(n).ok()?).copied());
                if op.is_some_and(Op::replied) {
                    self.soak.reply(peer);
                }
                let op_name = op.map_or("?", Op::name);
                *self
                    .soak
                    .errors_by_op
                    .entry(format!("{code}/{op_name}"))
                    .or_default() += 1;
                *self.soak.errors.entry(code.into_owned()).or_default() += 1;
                if self.logged < MAX_LOGGED {
                    self.logged += 1;
                    eprintln!(
                        "s{}: server error: {}",
                        peer.user,
                        String::from_utf8_lossy(text)
                    );
                }
            }
            _ => {}
        }
    }
}

impl Load {
    /// Soak timers, operations and phase changes.
    pub(crate) fn soak_tick(&mut self, now: Instant) {
        let run = self.s.phase == Phase::Run;
        while let Some(&Reverse((at, idx, gen, timer))) = self.s.soak.timers.peek() {
            if at > now {
                break;
            }
            let conn = &self.conns[idx];
            let current = conn.peer.gen == gen;
            let valid = match timer {
                Timer::Op => run && current && conn.is_live() && !conn.peer.closing,
                Timer::Reconnect => run && current && conn.state == State::Closed,
                Timer::CloseTimeout => current && conn.state == State::Open && conn.peer.closing,
            };
            if valid && timer == Timer::Op && !self.s.soak.take_token(now, self.s.opts.rate) {
                break;
            }
            self.s.soak.timers.pop();
            if !valid {
                continue;
            }
            match timer {
                Timer::Op => self.soak_op(idx, now),
                Timer::Reconnect => {
                    self.s.soak.reconnect_attempts += 1;
                    self.start_conn(idx, now);
                }
                Timer::CloseTimeout => self.fail(idx, Why::Timeout),
            }
        }
        match self.s.phase {
            Phase::Run => {
                let start = self.s.run_start.unwrap_or(now);
                if now >= start + self.s.opts.duration {
                    self.s.end_at = Some(now);
                    self.s.phase = Phase::Drain(now + SOAK_DRAIN);
                    eprintln!("soak: run over; waiting for replies due and handshakes");
                }
            }
            Phase::Drain(at) => {
                let busy = self.s.connecting > 0
                    || self
                        .conns
                        .iter()
                        .any(|c| c.state == State::Open && (c.peer.awaiting > 0 || c.peer.closing));
                if !busy || now >= at {
                    if busy {
                        eprintln!(
                            "soak: still busy after {}s; closing anyway",
                            SOAK_DRAIN.as_secs()
                        );
                    }
                    eprintln!("soak: closing every client");
                    self.s.phase = Phase::Closing(now + SOAK_CLOSING);
                    for idx in 0..self.conns.len() {
                        let conn = &self.conns[idx];
                        if conn.is_live() && !conn.peer.closing {
                            self.soak_close(idx, now);
                        }
                    }
                }
            }
            Phase::Closing(at) => {
                let open = self
                    .conns
                    .iter()
                    .any(|c| matches!(c.state, State::Connecting | State::Upgrading | State::Open));
                if !open || now >= at {
                    self.s.phase = Phase::Done;
                }
            }
            _ => {}
        }
    }

    /// Do one random operation on client `idx`, and schedule its next one.
    fn soak_op(&mut self, idx: usize, now: Instant) {
        let Load { conns, s, .. } = self;
        let rooms = s.opts.rooms;
        let max_joined = SOAK_MAX_JOINED.min(rooms as usize);
        let k = &mut s.soak;
        let joined = conns[idx].peer.joined.len();
        let mut op = match k.pick_op() {
            Op::Join if joined >= max_joined => Op::Leave,
            Op::Leave | Op::Message | Op::Typing if joined == 0 => Op::Join,
            op => op,
        };
        let mut to = None;
        if op == Op::Private {
            for _ in 0..4 {
                let j = k.below(conns.len() as u64) as usize;
                let other = &conns[j].peer;
                if j != idx && conns[j].is_live() && !other.closing {
                    to = Some(other.user);
                    break;
                }
            }
            if to.is_none() {
                op = Op::Ping;
            }
        }
        k.ops[op as usize] += 1;
        match op {
            Op::Close => return self.soak_close(idx, now),
            Op::Reset => return self.soak_reset(idx, now),
            _ => {}
        }
        let peer = &mut conns[idx].peer;
        let (user, r) = (peer.user, op as usize);
        k.sent += 1;
        let n = k.sent;
        let w = &mut s.scratch;
        w.clear();
        let written = match op {
            Op::Join => {
                let room = k.below(u64::from(rooms)) as u32;
                if !peer.joined.contains(&room) {
                    peer.joined.push(room);
                }
                peer.awaiting += 1;
                write!(w, r#"{{"type":"join","room":"soak-{room}","ref":{r}}}"#)
            }
            Op::Leave => {
                let at = k.below(joined as u64) as usize;
                let room = peer.joined.swap_remove(at);
                peer.awaiting += 1;
                write!(w, r#"{{"type":"leave","room":"soak-{room}","ref":{r}}}"#)
            }
            Op::Message => {
                let room = peer.joined[k.below(joined as u64) as usize];
                write!(
                    w,
                    r#"{{"type":"message","room":"soak-{room}","data":{{"from":{user},"n":{n}}},"ref":{r}}}"#
                )
            }
            Op::Typing => {
                let room = peer.joined[k.below(joined as u64) as usize];
                write!(w, r#"{{"type":"typing","room":"soak-{room}","ref":{r}}}"#)
            }
            Op::Presence => {
                let room = k.below(u64::from(rooms));
                peer.awaiting += 1;
                write!(w, r#"{{"type":"presence","room":"soak-{room}","ref":{r}}}"#)
            }
            Op::Private => {
                let to = to.unwrap_or_default();
                write!(
                    w,
                    r#"{{"type":"private","to":"s{to}","data":{{"from":{user},"n":{n}}},"ref":{r}}}"#
                )
            }
            Op::Ping | Op::Close | Op::Reset => {
                peer.awaiting += 1;
                write!(w, r#"{{"type":"ping","ref":{r}}}"#)
            }
        };
        written.expect("writing to a Vec");
        let mask = s.mask();
        let conn = &mut conns[idx];
        push_frame(&mut conn.tx.buf, OP_TEXT, &s.scratch, mask);
        let gen = conn.peer.gen;
        match conn.flush() {
            Ok(()) => s.soak.schedule_op(idx, gen, now),
            Err(why) => self.fail(idx, why),
        }
    }

    /// Start a clean close (1000); the server's close frame ends it.
    pub(crate) fn soak_close(&mut self, idx: usize, now: Instant) {
        let mask = self.s.mask();
        let conn = &mut self.conns[idx];
        push_frame(&mut conn.tx.buf, OP_CLOSE, &1000u16.to_be_bytes(), mask);
        conn.peer.closing = true;
        let at = now + SOAK_CLOSE_TIMEOUT;
        let entry = (at, idx, conn.peer.gen, Timer::CloseTimeout);
        self.s.soak.timers.push(Reverse(entry));
        if let Err(why) = conn.flush() {
            self.fail(idx, why);
        }
    }

    /// Drop the socket with an RST, without a close frame, and reconnect later.
    fn soak_reset(&mut self, idx: usize, now: Instant) {
        let conn = &mut self.conns[idx];
        if let Some(stream) = conn.stream.take() {
            set_linger_zero(&stream);
        }
        conn.state = State::Closed;
        conn.rx = RxBuf::default();
        conn.tx = TxBuf::default();
        let peer = &mut conn.peer;
        let k = &mut self.s.soak;
        k.live -= 1;
        k.replies_abandoned += u64::from(peer.awaiting);
        peer.ready = false;
        peer.awaiting = 0;
        peer.joined.clear();
        k.schedule_reconnect(idx, peer.gen, now);
    }

    /// A soak connection ended (its socket is already dropped): account for
    /// it, and reconnect later if the run is still on.
    pub(crate) fn soak_lost(&mut self, idx: usize, why: Why) {
        let s = &mut self.s;
        let k = &mut s.soak;
        let peer = &mut self.conns[idx].peer;
        let reason = why.to_string();
        let mut unexpected = true;
        if let (Why::Closed(code), false) = (&why, peer.closing) {
            *k.unexpected_closes.entry(*code).or_default() += 1;
        }
        if !peer.ready {
            s.connecting -= 1;
            if s.phase == Phase::Connect {
                s.failed += 1;
            }
            *k.handshake_failures.entry(reason.clone()).or_default() += 1;
        } else {
            k.live -= 1;
            if peer.closing {
                match why {
                    Why::Closed(code) => {
                        *k.close_replies.entry(code).or_default() += 1;
                        if matches!(s.phase, Phase::Closing(_)) {
                            k.final_closes += 1;
                        }
                        unexpected = code != 1000;
                    }
                    Why::Timeout => k.close_timeouts += 1,
                    _ => *k.closes_without_reply.entry(reason.clone()).or_default() += 1,
                }
                k.replies_missing += u64::from(peer.awaiting);
                unexpected |= peer.awaiting > 0;
            } else {
                if !matches!(why, Why::Closed(_)) {
                    *k.unexpected_drops.entry(reason.clone()).or_default() += 1;
                }
                k.replies_abandoned += u64::from(peer.awaiting);
            }
        }
        if unexpected && s.logged < MAX_LOGGED {
            s.logged += 1;
            eprintln!(
                "connection {idx} (s{}, {} replies due, closing: {}): {reason}",
                peer.user, peer.awaiting, peer.closing
            );
        }
        peer.ready = false;
        peer.closing = false;
        peer.awaiting = 0;
        peer.joined.clear();
        if s.phase == Phase::Run {
            k.schedule_reconnect(idx, peer.gen, Instant::now());
        }
    }

    pub(crate) fn soak_report(&self, r: &mut Report, elapsed: f64) {
        let s = &self.s;
        let o = &s.opts;
        let k = &s.soak;
        let per_sec = |n: u64| {
            if elapsed > 0.0 {
                round(n as f64 / elapsed, 1)
            } else {
                0.0
            }
        };
        r.add("rooms", o.rooms);
        r.add("rate", o.rate);
        r.add("seed", o.seed);
        r.add("duration_s", round(o.duration.as_secs_f64(), 3));
        r.add("elapsed_s", round(elapsed, 3));
        r.add(
            "op_interval_ms",
            round(k.interval.as_secs_f64() * 1000.0, 3),
        );
        let ops: u64 = k.ops.iter().sum();
        r.add("operations", ops);
        r.add("operations_per_sec", per_sec(ops));
        let mut by_kind = Report::default();
        for (op, n) in Op::ALL.into_iter().zip(k.ops) {
            by_kind.add(op.name(), n);
        }
        r.add_object("operations_by_kind", by_kind);
        let received: u64 = k.received.iter().sum();
        r.add("received", received);
        r.add("received_per_sec", per_sec(received));
        let mut by_type = Report::default();
        for (name, n) in SOAK_RX_TYPES.into_iter().zip(k.received) {
            by_type.add(name, n);
        }
        by_type.add("other", k.received[SOAK_RX_TYPES.len()]);
        r.add_object("received_by_type", by_type);
        r.add("error_replies", &k.errors);
        r.add("error_replies_by_op", &k.errors_by_op);
        r.add("reconnect_attempts", k.reconnect_attempts);
        r.add("reconnects", k.reconnects);
        r.add("users", k.next_user);
        r.add("peak_live", k.peak_live);
        r.add("handshake_failures", &k.handshake_failures);
        r.add("unexpected_close_codes", &k.unexpected_closes);
        r.add("unexpected_drops", &k.unexpected_drops);
        r.add("close_replies", &k.close_replies);
        r.add("closes_without_reply", &k.closes_without_reply);
        r.add("close_timeouts", k.close_timeouts);
        r.add("final_clean_closes", k.final_closes);
        r.add("unclosed_at_end", s.open_at_end);
        r.add("replies_missing", k.replies_missing);
        r.add("replies_abandoned", k.replies_abandoned);
        r.add("unsolicited_replies", k.unsolicited_replies);
        r.add("frames_before_welcome", k.frames_before_welcome);
    }
}
