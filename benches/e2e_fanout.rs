//! End-to-end loopback fan-out: the release daemon and the repository's load
//! tool (`switchboard-load`), 1,000 subscribers in one room, 64-byte payloads,
//! 1 and 16 messages in flight. Prints the load tool's JSON for each run.
//!
//! `cargo bench --bench e2e_fanout`. For pinned runs and the full target table
//! use `scripts/bench.sh`.

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported here.
    let server_bin = env!("CARGO_BIN_EXE_switchboard");
    let load_bin = env!("CARGO_BIN_EXE_switchboard-load");
    let port = 18_000 + (std::process::id() % 1000) as u16;
    let addr = format!("127.0.0.1:{port}");
    let mut server = Command::new(server_bin)
        .args([
            "--listen",
            &addr,
            "--log-level",
            "warn",
            "--max-connections-per-user",
            "100000",
            // The publisher outruns the default per-connection rate limit.
            "--rate-limit",
            "0",
        ])
        .stdin(Stdio::null())
        .spawn()
        .expect("start switchboard");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    for (in_flight, messages) in [(1, "3000"), (16, "30000")] {
        let out = Command::new(load_bin)
            .args(["--server", &addr, "--mode", "fanout", "--conns", "1000"])
            .args([
                "--in-flight",
                &in_flight.to_string(),
                "--messages",
                messages,
            ])
            .stderr(Stdio::null())
            .output()
            .expect("run switchboard-load");
        println!(
            "fanout in_flight={in_flight}: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    // SAFETY: plain kill(2) on the child we started.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let _ = server.wait();
}
