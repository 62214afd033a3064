//! The JavaScript client (`clients/js/switchboard.js`) in Node against the
//! real daemon: connect, join, messages, a refused request, the daemon
//! killed and restarted on the same port (reconnect and rejoin unaided),
//! close codes 4000 (final) and 4100 (reconnect), `close()`. And the file
//! as the daemon serves it at `/client.js`.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::Server;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn client_js_is_served_with_an_etag() {
    let server = Server::start(&[]);
    let raw = server.http_raw("GET /client.js HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("Content-Type: text/javascript"), "{head}");
    assert!(head.contains("Access-Control-Allow-Origin: *"), "{head}");
    let file = std::fs::read_to_string(repo("clients/js/switchboard.js")).unwrap();
    assert_eq!(body, file, "the same file, embedded");
    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("ETag: "))
        .expect("an ETag")
        .to_string();
    let again = server.http_raw(&format!(
        "GET /client.js HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n"
    ));
    assert!(again.starts_with("HTTP/1.1 304"), "{again}");
    assert!(again.ends_with("\r\n\r\n"), "no body: {again}");
}

#[test]
fn js_client_reconnects_rejoins_and_honours_close_codes() {
    assert!(
        repo("tests/interop/node_modules/ws").exists(),
        "run scripts/test.sh (it installs the Node tools)"
    );
    drive("js_client.mjs", &[]);
}

#[test]
fn js_client_in_headless_chromium() {
    assert!(
        repo("scripts/browser-tools/node_modules/playwright-core").exists(),
        "run scripts/test.sh (it installs playwright-core and chromium)"
    );
    // A short heartbeat, so the client's own timer finds a stopped daemon.
    drive(
        "js_browser.mjs",
        &["--ping-interval", "1", "--ping-timeout", "1"],
    );
}

/// Run a Node script against a daemon on a fixed port, doing what it asks:
/// KILL (kill, wait, start again on the same port), STOP, CONT.
fn drive(script: &str, extra: &[&str]) {
    let port = support::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut flags = vec!["--listen", listen.as_str()];
    flags.extend_from_slice(extra);
    let mut server = Server::start(&flags);
    let mut node = Command::new("node")
        .arg(repo(&format!("tests/interop/{script}")))
        .arg(format!("http://{listen}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node");
    let mut stdin = node.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = node.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = node.kill();
            let out = node.wait_with_output().unwrap();
            panic!(
                "node said {seen:?}, then nothing\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        seen.push(line.clone());
        match line.as_str() {
            "KILL" => {
                server.signal_and_wait(libc::SIGKILL);
                std::thread::sleep(Duration::from_millis(2000));
                server = Server::start(&flags);
            }
            "STOP" => unsafe {
                libc::kill(server.child.id() as i32, libc::SIGSTOP);
            },
            "CONT" => unsafe {
                libc::kill(server.child.id() as i32, libc::SIGCONT);
            },
            "OK" => break,
            _ => continue,
        }
        writeln!(stdin, "done").unwrap();
    }
    let out = node.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{seen:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(server);
}
