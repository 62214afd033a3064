//! The JSON report printed at the end: an insertion-ordered object, latency
//! summaries and the histogram behind them.

use serde_json::Value;

use crate::load::Load;
use crate::Mode;

impl Load {
    pub(crate) fn report(&self) -> (String, bool) {
        let s = &self.s;
        let o = &s.opts;
        let mut r = Report::default();
        r.add("mode", o.mode.name());
        r.add("server", o.server.to_string());
        r.add("conns", o.conns);
        if o.busy_poll {
            r.add("busy_poll", true);
        }
        r.add("connected", s.connected);
        r.add("failed", s.failed);
        r.add("connect_s", round(s.connect_s, 3));
        let elapsed = match (s.run_start, s.end_at) {
            (Some(start), Some(end)) => (end - start).as_secs_f64(),
            _ => 0.0,
        };
        let per_sec = |n: u64| {
            if elapsed > 0.0 {
                round(n as f64 / elapsed, 1)
            } else {
                0.0
            }
        };
        match o.mode {
            Mode::Idle => {
                r.add("hold_s", round(o.hold.as_secs_f64(), 3));
                r.add("open_at_end", s.open_at_end);
            }
            Mode::Fanout | Mode::Latency => {
                // Messages a subscriber still connected never got are lost too.
                let tail: u64 = self.conns[..self.main]
                    .iter()
                    .filter(|c| c.peer.ready && !c.peer.dropped)
                    .map(|c| s.sent.saturating_sub(c.peer.expected))
                    .sum();
                r.add("subscribers", s.need);
                r.add("payload_bytes", s.frame_len);
                if o.mode == Mode::Fanout {
                    r.add("messages", o.messages);
                    r.add("in_flight", o.in_flight);
                    r.add("ahead", o.ahead);
                } else {
                    r.add("rate", o.rate);
                    r.add("duration_s", round(o.duration.as_secs_f64(), 3));
                }
                r.add("messages_sent", s.sent);
                r.add("messages_completed", s.completed);
                r.add("deliveries", s.deliveries);
                r.add("expected_deliveries", u64::from(s.need) * s.sent);
                r.add("deliveries_per_sec", per_sec(s.deliveries));
                r.add("messages_per_sec", per_sec(s.completed));
                r.add("elapsed_s", round(elapsed, 3));
                r.add("lost", s.lost + tail);
                r.add("reordered", s.reordered);
                r.add("subscribers_dropped", s.dead);
                r.add("undelivered_to_dropped", s.undelivered_to_dropped);
                let mut per_message = s.max_lat[..s.completed as usize].to_vec();
                per_message.sort_unstable();
                r.add_object("latency_last_subscriber_us", sorted_summary(&per_message));
                r.add_object("latency_all_deliveries_us", s.hist.summary());
                if s.bogus > 0 || s.unparsed > 0 {
                    r.add("bogus_seq", s.bogus);
                    r.add("unparsed", s.unparsed);
                }
            }
            Mode::Echo => {
                r.add("payload_bytes", o.payload);
                r.add("duration_s", round(o.duration.as_secs_f64(), 3));
                r.add("elapsed_s", round(elapsed, 3));
                r.add("round_trips", s.round_trips);
                r.add("round_trips_per_sec", per_sec(s.round_trips));
                r.add_object("rtt_us", s.hist.summary());
                r.add("bad_echo", s.bad_echo);
            }
            Mode::Joins => {
                r.add("rooms", o.rooms);
                r.add("duration_s", round(o.duration.as_secs_f64(), 3));
                r.add("elapsed_s", round(elapsed, 3));
                r.add("pairs", s.round_trips);
                r.add("pairs_per_sec", per_sec(s.round_trips));
                r.add_object("join_to_left_us", s.hist.summary());
            }
            Mode::Chat => {
                r.add("room_size", o.room_size);
                r.add("rate", o.rate);
                r.add("churn_per_sec", o.churn);
                r.add("payload_bytes", s.frame_len);
                r.add("duration_s", round(o.duration.as_secs_f64(), 3));
                r.add("elapsed_s", round(elapsed, 3));
                r.add("messages_sent", s.sent);
                r.add("messages_per_sec", per_sec(s.sent));
                r.add("deliveries", s.deliveries);
                // Exact without churn: every message to the others of its room.
                r.add("expected_deliveries", s.sent * (o.room_size as u64 - 1));
                r.add("deliveries_per_sec", per_sec(s.deliveries));
                r.add("reconnects", s.churned);
                r.add_object("latency_us", s.hist.summary());
                if s.unparsed > 0 {
                    r.add("unparsed", s.unparsed);
                }
            }
            Mode::Soak => self.soak_report(&mut r, elapsed),
        }
        if o.mode != Mode::Soak {
            r.add("dropped", s.dropped);
        }
        r.add("pings_answered", s.pings);
        r.add("error_frames", s.error_frames);
        if s.other_frames > 0 {
            r.add("other_frames", s.other_frames);
        }
        if o.mode != Mode::Soak {
            r.add("close_codes", &s.close_codes);
            r.add("fail_reasons", &s.fail_reasons);
            r.add("drop_reasons", &s.drop_reasons);
        }
        if let Some(e) = &s.error {
            r.add("error", e);
        }
        (r.finish(), s.error.is_none())
    }
}

/// A JSON object that keeps its keys in insertion order.
#[derive(Default)]
pub(crate) struct Report(Vec<(&'static str, String)>);

impl Report {
    pub(crate) fn add(&mut self, key: &'static str, value: impl serde::Serialize) {
        let json = serde_json::to_string(&value).unwrap_or_else(|_| "null".into());
        self.0.push((key, json));
    }

    pub(crate) fn add_object(&mut self, key: &'static str, object: Report) {
        self.0.push((key, object.finish()));
    }

    fn finish(&self) -> String {
        let fields: Vec<String> = self
            .0
            .iter()
            .map(|(k, v)| format!("{}:{v}", Value::from(*k)))
            .collect();
        format!("{{{}}}", fields.join(","))
    }
}

pub(crate) fn round(x: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (x * scale).round() / scale
}

fn micros(ns: u64) -> f64 {
    round(ns as f64 / 1000.0, 1)
}

/// p50/p99/p999/max (µs) of sorted nanosecond samples, nearest rank.
fn sorted_summary(sorted: &[u64]) -> Report {
    let at = |q: f64| {
        let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
        micros(sorted[rank.min(sorted.len()) - 1])
    };
    let mut r = Report::default();
    if let Some(&max) = sorted.last() {
        r.add("p50", at(0.50));
        r.add("p99", at(0.99));
        r.add("p999", at(0.999));
        r.add("max", micros(max));
    }
    r.add("count", sorted.len());
    r
}

/// Log-linear histogram of nanoseconds: 64 buckets per power of two
/// (under 1.6% error), fixed size, no allocation per sample.
pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Histogram {
    const SUB_BITS: u32 = 6;
    const SUB: u64 = 1 << Self::SUB_BITS;
    const BUCKETS: usize = (2 * Self::SUB + (63 - Self::SUB_BITS as u64) * Self::SUB) as usize;

    pub(crate) fn new() -> Histogram {
        Histogram {
            counts: vec![0; Self::BUCKETS],
            total: 0,
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < 2 * Self::SUB {
            return v as usize;
        }
        let shift = u64::from(63 - v.leading_zeros() - Self::SUB_BITS);
        let mantissa = (v >> shift) - Self::SUB;
        (2 * Self::SUB + (shift - 1) * Self::SUB + mantissa) as usize
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < 2 * Self::SUB {
            return i;
        }
        let shift = (i - 2 * Self::SUB) / Self::SUB + 1;
        let mantissa = (i - 2 * Self::SUB) % Self::SUB + Self::SUB;
        (mantissa << shift) + (1 << (shift - 1))
    }

    pub(crate) fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    fn quantile(&self, q: f64) -> u64 {
        let rank = ((q * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Self::value(i).min(self.max);
            }
        }
        self.max
    }

    fn summary(&self) -> Report {
        let mut r = Report::default();
        if self.total > 0 {
            r.add("p50", micros(self.quantile(0.50)));
            r.add("p99", micros(self.quantile(0.99)));
            r.add("p999", micros(self.quantile(0.999)));
            r.add("max", micros(self.max));
        }
        r.add("count", self.total);
        r
    }
}
