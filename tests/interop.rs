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
    assert!(
        needs.exists(),
        "{} is missing: run scripts/test.sh (it installs the interop clients)",
        needs.display()
    );
    let server = Server::start(&[]);
    let out = Command::new(interpreter)
        .arg(repo("tests/interop").join(script))
        .arg(format!("ws://{}", server.addr))
        .output()
        .expect("run interop client");
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
fn node_ws_client() {
    run_client(
        Path::new("node"),
        &repo("tests/interop/node_modules/ws"),
        "client.js",
    );
}
