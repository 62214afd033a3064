//! Interop: real third-party clients (Python `websockets`, Node `ws`) against
//! the real daemon. `scripts/test.sh` installs them (into `.tools/venv` and
//! `tests/interop/node_modules`); without them these tests fail and say so.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::Server;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn run_client(interpreter: &Path, needs: &Path, script: &str) {
    run_client_over(interpreter, needs, script, false);
}

/// With `tls`: the daemon serves a certificate the test made, and the
/// client connects to `wss://localhost:PORT` trusting it.
fn run_client_over(interpreter: &Path, needs: &Path, script: &str, tls: bool) {
    assert!(
        needs.exists(),
        "{} is missing: run scripts/test.sh (it installs the interop clients)",
        needs.display()
    );
    let dir = support::temp_dir(&format!("interop-{script}-{tls}"));
    let (cert, key, _) = support::tls_certificate(&dir, "localhost");
    let flags: Vec<&str> = match tls {
        true => vec![
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        false => Vec::new(),
    };
    let server = Server::start(&flags);
    let url = match tls {
        true => format!("wss://localhost:{}", server.addr.port()),
        false => format!("ws://{}", server.addr),
    };
    let out = Command::new(interpreter)
        .arg(repo("tests/interop").join(script))
        .arg(url)
        .env("INTEROP_CA", &cert)
        .output()
        .expect("run interop client");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_websockets_client() {
    let python = repo(".tools/venv/bin/python");
    run_client(&python, &python, "client.py");
}

#[test]
fn metrics_parse_with_the_prometheus_parser() {
    check_metrics(&[], None);
}

#[test]
fn cluster_metrics_parse_with_the_prometheus_parser() {
    let redis = support::Redis::start();
    let url = redis.url();
    check_metrics(&["--cluster", &url], Some("cluster"));
}

fn check_metrics(flags: &[&str], mode: Option<&str>) {
    let python = repo(".tools/venv/bin/python");
    assert!(
        python.exists(),
        "run scripts/test.sh (it installs the Python tools)"
    );
    let server = Server::start(flags);
    if mode == Some("cluster") {
        server.wait_stats("cluster up", |s| s["cluster"]["state"] == "up");
    }
    let mut a = server.joined("/ws/m?user=a");
    let _b = server.joined("/ws/m?user=b");
    a.expect("user_joined");
    a.send_json(serde_json::json!({"type":"message","room":"m","data":1}));
    a.sync();
    assert_eq!(server.get("/ws").0, 426);
    let out = Command::new(&python)
        .arg(repo("tests/interop/metrics.py"))
        .arg(format!("http://{}", server.addr))
        .args(mode)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn node_ws_client() {
    run_client(
        Path::new("node"),
        &repo("tests/interop/node_modules/ws"),
        "client.js",
    );
}

#[test]
fn python_websockets_client_over_wss() {
    let python = repo(".tools/venv/bin/python");
    run_client_over(&python, &python, "client.py", true);
}

#[test]
fn node_ws_client_over_wss() {
    let ws = repo("tests/interop/node_modules/ws");
    run_client_over(Path::new("node"), &ws, "client.js", true);
}
