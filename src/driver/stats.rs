//! `/stats` (JSON, lists users: behind the API key when one is set) and
//! `/metrics` (Prometheus text exposition format 0.0.4, no user ids).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::conn::State;
use super::Driver;
use crate::hub::Kind;

/// Upper bounds (seconds) of the loop-iteration histogram buckets.
const LOOP_BUCKETS: [f64; 8] = [1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2];

/// A fixed-bucket histogram of durations (cumulative counts are computed
/// when rendered).
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    counts: [u64; LOOP_BUCKETS.len() + 1],
    sum: f64,
}

impl Histogram {
    /// Record one observation. O(buckets), no allocation.
    pub fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LOOP_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LOOP_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += secs;
    }
}

/// `{label="key"}` samples from a count map.
fn labelled(label: &str, counts: &std::collections::BTreeMap<u16, u64>) -> Vec<(String, f64)> {
    counts
        .iter()
        .map(|(k, n)| (format!("{{{label}=\"{k}\"}}"), *n as f64))
        .collect()
}

/// The `top` largest `(count, name)` pairs, largest first (ties by name),
/// keeping a heap of `top` entries.
fn busiest<'a>(items: impl Iterator<Item = (usize, &'a str)>, top: usize) -> Vec<(usize, &'a str)> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    if top == 0 {
        return Vec::new();
    }
    // A min-heap on (count, Reverse(name)): its top is the entry to drop.
    let mut heap = BinaryHeap::with_capacity(top);
    for (n, name) in items {
        let item = Reverse((n, Reverse(name)));
        if heap.len() < top {
            heap.push(item);
        } else if heap.peek().is_some_and(|least| item < *least) {
            // Larger than the least kept (Reverse: smaller compares greater).
            heap.pop();
            heap.push(item);
        }
    }
    let mut out: Vec<(usize, &str)> = heap
        .into_iter()
        .map(|Reverse((n, Reverse(name)))| (n, name))
        .collect();
    out.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    out
}

/// Counts derived by walking the connection tables (O(connections), only
/// when `/stats` or `/metrics` is asked for).
struct Gauges {
    echo: usize,
    handshaking: usize,
    queued_bytes: usize,
}

impl Driver {
    fn gauges(&self) -> Gauges {
        let echo = self
            .hub
            .registry()
            .sessions()
            .filter(|s| s.kind == Kind::Echo)
            .count();
        let (mut handshaking, mut queued_bytes) = (0, 0);
        for (_, c) in &self.conns {
            handshaking += usize::from(matches!(c.state, State::Http { .. }));
            queued_bytes += c.out.len();
        }
        Gauges {
            echo,
            handshaking,
            queued_bytes,
        }
    }

    fn cluster_json(&self) -> serde_json::Value {
        use serde_json::json;
        match &self.cluster {
            None => json!({ "state": "off", "nodes": 1 }),
            Some(c) => json!({
                "state": c.state(),
                "nodes": c.counters.nodes,
                "publishes": c.counters.publishes,
                "publishes_dropped": c.counters.publishes_dropped,
                "messages_received": c.counters.messages_received,
                "reconnects": c.counters.reconnects,
                "deaf": c.counters.deaf,
                "reasserts": c.counters.reasserts,
                "pending_bytes": c.pending_bytes(),
            }),
        }
    }

    /// This node's figures for the dashboard's node table, O(1): what
    /// every node writes beside its heartbeat in cluster mode.
    pub(super) fn node_summary(&self, now: Instant) -> serde_json::Value {
        let reg = self.hub.registry();
        let hub = self.hub.counters();
        serde_json::json!({
            "node": self.hub.node_id(),
            "connections": reg.len(),
            "users": reg.user_count(),
            "rooms": reg.room_count(),
            "messages_in": hub.messages_in,
            "bytes_in": hub.bytes_in,
            "messages_out": self.counters.messages_out,
            "bytes_out": self.counters.bytes_out,
            "heartbeat_timeouts": hub.heartbeat_timeouts,
            "slow_consumer_closes": self.counters.slow_consumer_closes,
            "handshakes_refused": self.counters.refused_by_status.values().sum::<u64>(),
            "uptime_seconds": self.hub.uptime(now).as_secs_f64(),
        })
    }

    /// `/api/overview`: what the dashboard shows — totals and counters
    /// (no per-user map, unlike `/stats`), the `top` busiest rooms and
    /// users, and in cluster mode every live node's summary. Built at most
    /// once a second per `top` (O(connections + rooms + users), the top
    /// lists with a heap of `top` entries: no sort of everything), so any
    /// number of dashboards polling cost one build a second.
    pub(super) fn overview_json(&mut self, top: usize, now: Instant) -> Vec<u8> {
        if let Some((at, t, body)) = &self.overview {
            if *t == top && now.saturating_duration_since(*at) < Duration::from_secs(1) {
                return body.clone();
            }
        }
        let body = self.build_overview(top, now);
        self.overview = Some((now, top, body.clone()));
        body
    }

    fn build_overview(&mut self, top: usize, now: Instant) -> Vec<u8> {
        use serde_json::{json, Value};
        let reg = self.hub.registry();
        let top_rooms: Vec<Value> = busiest(reg.rooms().map(|r| (r.user_count(), &*r.name)), top)
            .into_iter()
            .map(|(n, room)| json!({ "room": room, "members": n }))
            .collect();
        let top_users: Vec<Value> = busiest(reg.users().map(|u| (u.conns.len(), &*u.name)), top)
            .into_iter()
            .map(|(n, user)| json!({ "user": user, "connections": n }))
            .collect();
        let Gauges {
            echo,
            handshaking,
            queued_bytes,
        } = self.gauges();
        let mut overview = self.node_summary(now);
        let extra = json!({
            "cluster": self.cluster_json(),
            "echo_connections": echo,
            "handshaking": handshaking,
            "queued_bytes": queued_bytes,
            "connections_opened": self.hub.counters().connections_opened,
            "errors_sent": self.hub.counters().errors_sent,
            "rate_limited": self.hub.counters().rate_limited,
            "top_rooms": top_rooms,
            "top_users": top_users,
            "nodes": match &mut self.cluster {
                // Asked for: the next heartbeats bring every node's.
                Some(c) => c.watch_nodes(now),
                None => Vec::new(),
            },
        });
        if let (Value::Object(o), Value::Object(e)) = (&mut overview, extra) {
            o.extend(e);
        }
        serde_json::to_vec(&overview).expect("overview serializes")
    }

    pub(super) fn stats_json(&self, now: Instant) -> Vec<u8> {
        use serde_json::{json, Map, Value};
        let reg = self.hub.registry();
        let by_user: Map<String, Value> = reg
            .users()
            .map(|u| (u.name.to_string(), json!(u.conns.len())))
            .collect();
        let rooms: Map<String, Value> = reg
            .rooms()
            .map(|r| (r.name.to_string(), json!(r.user_count())))
            .collect();
        let hub = self.hub.counters();
        let Gauges {
            echo,
            handshaking,
            queued_bytes,
        } = self.gauges();
        let stats = json!({
            "node": self.hub.node_id(),
            "cluster": self.cluster_json(),
            "total_connections": reg.len(),
            "echo_connections": echo,
            "handshaking": handshaking,
            "total_users": reg.user_count(),
            "total_rooms": reg.room_count(),
            "connections_by_user": by_user,
            "rooms": rooms,
            "messages_in": hub.messages_in,
            "bytes_in": hub.bytes_in,
            "messages_out": self.counters.messages_out,
            "bytes_out": self.counters.bytes_out,
            "queued_bytes": queued_bytes,
            "errors_sent": hub.errors_sent,
            "connections_opened": hub.connections_opened,
            "heartbeat_timeouts": hub.heartbeat_timeouts,
            "rate_limited": hub.rate_limited,
            "rate_limit_closes": hub.rate_limit_closes,
            "slow_consumer_closes": self.counters.slow_consumer_closes,
            "handshakes_refused": self.counters.refused_by_status.values().sum::<u64>(),
            "accept_errors": self.counters.accept_errors,
            "history": self.history_json(),
            "uptime_seconds": self.hub.uptime(now).as_secs_f64(),
        });
        serde_json::to_vec(&stats).expect("stats serialize")
    }

    /// `/stats` `history`: rooms, messages and bytes held; recoveries.
    fn history_json(&self) -> serde_json::Value {
        let (rooms, bytes, messages) = self.hub.history_usage();
        let hub = self.hub.counters();
        serde_json::json!({
            "rooms": rooms,
            "messages": messages,
            "bytes": bytes,
            "max_bytes": self.hub.config().history_max_bytes,
            "recovered": hub.recovered,
            "not_recovered": hub.not_recovered,
            "gaps_filled": hub.history_fills,
            "gap_closes": hub.history_gap_closes,
        })
    }

    /// The Prometheus text exposition (version 0.0.4).
    pub(super) fn metrics_text(&self, now: Instant) -> String {
        let reg = self.hub.registry();
        let hub = self.hub.counters();
        let c = &self.counters;
        let Gauges {
            echo,
            handshaking,
            queued_bytes: queued,
        } = self.gauges();
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
            let _ = writeln!(out, "# HELP switchboard_{name} {help}");
            let _ = writeln!(out, "# TYPE switchboard_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "switchboard_{name}{labels} {value}");
            }
        };
        metric(
            "connections",
            "gauge",
            "Open WebSocket connections.",
            &[
                ("{route=\"hub\"}", (reg.len() - echo) as f64),
                ("{route=\"echo\"}", echo as f64),
            ],
        );
        metric(
            "http_connections",
            "gauge",
            "Connections still in HTTP (handshake or keep-alive API).",
            &[("", handshaking as f64)],
        );
        metric(
            "users",
            "gauge",
            "Users with at least one connection.",
            &[("", reg.user_count() as f64)],
        );
        metric(
            "rooms",
            "gauge",
            "Rooms with at least one member.",
            &[("", reg.room_count() as f64)],
        );
        metric(
            "messages_in_total",
            "counter",
            "Data messages received from clients.",
            &[("", hub.messages_in as f64)],
        );
        metric(
            "bytes_in_total",
            "counter",
            "Bytes of data messages received from clients.",
            &[("", hub.bytes_in as f64)],
        );
        metric(
            "messages_out_total",
            "counter",
            "Frames queued to clients (one per recipient).",
            &[("", c.messages_out as f64)],
        );
        metric(
            "bytes_out_total",
            "counter",
            "Bytes written to client sockets.",
            &[("", c.bytes_out as f64)],
        );
        metric(
            "output_queue_bytes",
            "gauge",
            "Bytes queued to clients and not yet written.",
            &[("", queued as f64)],
        );
        metric(
            "connections_opened_total",
            "counter",
            "WebSocket connections opened.",
            &[("", hub.connections_opened as f64)],
        );
        let refused = labelled("status", &c.refused_by_status);
        let refused: Vec<(&str, f64)> = refused.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        metric(
            "handshakes_refused_total",
            "counter",
            "WebSocket handshakes refused, by HTTP status.",
            &refused,
        );
        let closes = labelled("code", &c.closes_by_code);
        let closes: Vec<(&str, f64)> = closes.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        metric(
            "server_closes_total",
            "counter",
            "Close frames sent by the server, by close code.",
            &closes,
        );
        metric(
            "client_closes_total",
            "counter",
            "Close frames received from clients.",
            &[("", c.client_closes as f64)],
        );
        metric(
            "heartbeat_timeouts_total",
            "counter",
            "Connections closed for silence (4100).",
            &[("", hub.heartbeat_timeouts as f64)],
        );
        metric(
            "slow_consumer_closes_total",
            "counter",
            "Connections closed as slow consumers (4101).",
            &[("", c.slow_consumer_closes as f64)],
        );
        metric(
            "flush_take_ins_total",
            "counter",
            "Looks at the sockets during long flushes (fan-outs) that found readiness (input taken in so it leaves with the rest, writable sockets, Redis replies).",
            &[("", c.take_ins as f64)],
        );
        metric(
            "rate_limited_total",
            "counter",
            "Client messages refused by the rate limit.",
            &[("", hub.rate_limited as f64)],
        );
        metric(
            "rate_limit_closes_total",
            "counter",
            "Connections closed for flooding (4102).",
            &[("", hub.rate_limit_closes as f64)],
        );
        metric(
            "errors_sent_total",
            "counter",
            "Error replies sent to clients.",
            &[("", hub.errors_sent as f64)],
        );
        metric(
            "accept_errors_total",
            "counter",
            "Failed accept calls (descriptors or memory exhausted).",
            &[("", c.accept_errors as f64)],
        );
        metric(
            "api_requests_total",
            "counter",
            "Server API requests answered.",
            &[("", c.api_requests as f64)],
        );
        let (history_rooms, history_bytes, history_messages) = self.hub.history_usage();
        metric(
            "history_rooms",
            "gauge",
            "Rooms with a history.",
            &[("", history_rooms as f64)],
        );
        metric(
            "history_messages",
            "gauge",
            "Messages held in rooms' histories.",
            &[("", history_messages as f64)],
        );
        metric(
            "history_bytes",
            "gauge",
            "Bytes counted against --history-max-bytes.",
            &[("", history_bytes as f64)],
        );
        metric(
            "recoveries_total",
            "counter",
            "Joins with since, by whether every missed message was replayed.",
            &[
                ("{recovered=\"true\"}", hub.recovered as f64),
                ("{recovered=\"false\"}", hub.not_recovered as f64),
            ],
        );
        metric(
            "tls_reloads_total",
            "counter",
            "SIGHUP reloads of the TLS certificate and key, by whether the files loaded.",
            &[
                ("{result=\"ok\"}", c.tls_reloads as f64),
                ("{result=\"failed\"}", c.tls_reload_failures as f64),
            ],
        );
        metric(
            "history_gaps_filled_total",
            "counter",
            "Cluster mode: gaps in a room's messages (lost on this node's Redis subscriber link) filled from Redis.",
            &[("", hub.history_fills as f64)],
        );
        metric(
            "history_gap_closes_total",
            "counter",
            "Cluster mode: connections closed with 4103 for room messages this node missed and could not fill in.",
            &[("", hub.history_gap_closes as f64)],
        );
        metric(
            "uptime_seconds",
            "gauge",
            "Seconds since the server started.",
            &[("", self.hub.uptime(now).as_secs_f64())],
        );
        if let Some(cl) = &self.cluster {
            let k = &cl.counters;
            metric(
                "cluster_up",
                "gauge",
                "1 while every Redis shard is reachable and subscribed, else 0.",
                &[("", f64::from(u8::from(cl.state() == "up")))],
            );
            metric(
                "cluster_nodes",
                "gauge",
                "Live nodes, as the last heartbeat counted them.",
                &[("", k.nodes as f64)],
            );
            metric(
                "cluster_publishes_total",
                "counter",
                "Envelopes published to Redis.",
                &[("", k.publishes as f64)],
            );
            metric(
                "cluster_publishes_dropped_total",
                "counter",
                "Publishes that could not go out (Redis down or link over its cap); delivered on this node only.",
                &[("", k.publishes_dropped as f64)],
            );
            metric(
                "cluster_messages_received_total",
                "counter",
                "Messages received from Redis subscriptions.",
                &[("", k.messages_received as f64)],
            );
            metric(
                "cluster_reconnects_total",
                "counter",
                "Redis shard connections made after the first.",
                &[("", k.reconnects as f64)],
            );
            metric(
                "cluster_deaf_total",
                "counter",
                "Subscriber links found deaf (the node's own heartbeat not heard back) and reconnected.",
                &[("", k.deaf as f64)],
            );
            metric(
                "cluster_reasserts_total",
                "counter",
                "Re-assertions of this node's presence not caused by a reconnect (an update that could not go out, or the node taken for dead).",
                &[("", k.reasserts as f64)],
            );
            metric(
                "cluster_errors_total",
                "counter",
                "Error replies from Redis.",
                &[("", k.errors as f64)],
            );
            metric(
                "cluster_resubscribe_seconds",
                "gauge",
                "How long the last re-subscription took (link up to every channel confirmed).",
                &[("", k.resubscribe_us as f64 / 1e6)],
            );
            metric(
                "cluster_rtt_seconds",
                "gauge",
                "Round-trip time of the last heartbeat to Redis.",
                &[("", k.rtt_us as f64 / 1e6)],
            );
            metric(
                "cluster_pending_bytes",
                "gauge",
                "Bytes of commands waiting to be written to Redis.",
                &[("", cl.pending_bytes() as f64)],
            );
        }
        let h = &c.loop_time;
        let _ = writeln!(out, "# HELP switchboard_loop_iteration_seconds Time spent working per event-loop iteration (not waiting).");
        let _ = writeln!(out, "# TYPE switchboard_loop_iteration_seconds histogram");
        let mut cumulative = 0;
        for (i, bound) in LOOP_BUCKETS.iter().enumerate() {
            cumulative += h.counts[i];
            let _ = writeln!(
                out,
                "switchboard_loop_iteration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += h.counts[LOOP_BUCKETS.len()];
        let _ = writeln!(
            out,
            "switchboard_loop_iteration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(out, "switchboard_loop_iteration_seconds_sum {}", h.sum);
        let _ = writeln!(out, "switchboard_loop_iteration_seconds_count {cumulative}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::busiest;

    #[test]
    fn busiest_keeps_the_largest_ties_by_name() {
        let items = [(1, "a"), (5, "b"), (3, "c"), (5, "a"), (0, "z"), (3, "b")];
        assert_eq!(
            busiest(items.into_iter(), 3),
            [(5, "a"), (5, "b"), (3, "b")]
        );
        assert_eq!(busiest(items.into_iter(), 0), []);
        assert_eq!(busiest(items.into_iter(), 100).len(), 6);
    }
}
