"""Parse /metrics with the official Prometheus Python parser (used by tests/interop.rs).

Usage: metrics.py http://127.0.0.1:PORT [cluster]
Checks that the exposition parses and has the families switchboard documents
(with `cluster`, the cluster families too).
"""
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

text = urllib.request.urlopen(sys.argv[1] + "/metrics", timeout=10).read().decode()
families = {f.name: f for f in text_string_to_metric_families(text)}
expected = {
    "switchboard_connections": "gauge",
    "switchboard_users": "gauge",
    "switchboard_rooms": "gauge",
    "switchboard_messages_in": "counter",
    "switchboard_messages_out": "counter",
    "switchboard_bytes_in": "counter",
    "switchboard_bytes_out": "counter",
    "switchboard_output_queue_bytes": "gauge",
    "switchboard_handshakes_refused": "counter",
    "switchboard_server_closes": "counter",
    "switchboard_slow_consumer_closes": "counter",
    "switchboard_rate_limit_closes": "counter",
    "switchboard_loop_iteration_seconds": "histogram",
}
if sys.argv[2:] == ["cluster"]:
    expected.update({
        "switchboard_cluster_up": "gauge",
        "switchboard_cluster_nodes": "gauge",
        "switchboard_cluster_publishes": "counter",
        "switchboard_cluster_publishes_dropped": "counter",
        "switchboard_cluster_messages_received": "counter",
        "switchboard_cluster_reconnects": "counter",
        "switchboard_cluster_deaf": "counter",
        "switchboard_cluster_reasserts": "counter",
        "switchboard_cluster_errors": "counter",
        "switchboard_cluster_resubscribe_seconds": "gauge",
        "switchboard_cluster_rtt_seconds": "gauge",
        "switchboard_cluster_pending_bytes": "gauge",
    })
for name, kind in expected.items():
    assert name in families, f"missing {name}: have {sorted(families)}"
    assert families[name].type == kind, f"{name} is {families[name].type}, not {kind}"
samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
assert samples[("switchboard_connections", (("route", "hub"),))] == 2, samples
assert samples[("switchboard_rooms", ())] == 1
assert samples[("switchboard_handshakes_refused_total", (("status", "426"),))] >= 1
assert samples[("switchboard_messages_in_total", ())] >= 1
assert samples[("switchboard_loop_iteration_seconds_count", ())] > 0
if sys.argv[2:] == ["cluster"]:
    assert samples[("switchboard_cluster_up", ())] == 1, samples
    assert samples[("switchboard_cluster_publishes_total", ())] >= 1, samples
print("prometheus parse: ok,", len(families), "families")
