//! The floor for the cluster's publish path on this machine: how many
//! `PUBLISH`es per second one connection pushes through one Redis when they
//! are pipelined (a batch per write, as the loop will flush once per
//! iteration), and what they cost Redis's CPU. Starts its own `redis-server`
//! on a free loopback port (Debian's package; `scripts/test.sh` installs it),
//! with one subscriber on the channel so every publish is delivered.
//!
//! `cargo run --release --example redis_publish_floor -- [PUBLISHES] [BATCH] [PAYLOAD_BYTES]`

use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use switchboard::driver::cluster::resp::{encode_command, BytesFrame, RespReader};

fn main() {
    let mut args = std::env::args().skip(1);
    let total: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let batch: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(256);
    let payload_len: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (scripts/test.sh installs it)");
    let connect = || loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    // A subscriber that drains everything, so Redis does the delivery work.
    let mut sub = connect();
    let mut out = BytesMut::new();
    encode_command(&mut out, &[b"SUBSCRIBE", b"floor"]);
    sub.write_all(&out).unwrap();
    let drain = std::thread::spawn(move || {
        let mut reader = RespReader::new(1 << 20);
        let mut messages = 0;
        while messages < total {
            match reader.next_frame().unwrap() {
                Some(BytesFrame::Array(parts)) if parts.len() == 3 => {
                    messages += usize::from(parts[0] == BytesFrame::BulkString("message".into()))
                }
                Some(_) => {}
                None => assert!(reader.read_from(&mut sub).unwrap() > 0, "subscriber EOF"),
            }
        }
    });
    let mut cmd = connect();
    let cpu = |cmd: &mut TcpStream| -> f64 {
        let mut out = BytesMut::new();
        encode_command(&mut out, &[b"INFO", b"cpu"]);
        cmd.write_all(&out).unwrap();
        let mut reader = RespReader::new(1 << 16);
        let frame = loop {
            if let Some(f) = reader.next_frame().unwrap() {
                break f;
            }
            reader.read_from(cmd).unwrap();
        };
        let BytesFrame::BulkString(text) = frame else {
            panic!("INFO gave {frame:?}")
        };
        String::from_utf8_lossy(&text)
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| *k == "used_cpu_sys" || *k == "used_cpu_user")
            .map(|(_, v)| v.trim().parse::<f64>().unwrap_or(0.0))
            .sum()
    };
    std::thread::sleep(Duration::from_millis(100));
    let cpu_before = cpu(&mut cmd);
    let payload = vec![b'p'; payload_len];
    let started = Instant::now();
    let mut replies = 0;
    let mut sent = 0;
    let mut reader = RespReader::new(1 << 20);
    while sent < total {
        let n = batch.min(total - sent);
        out.clear();
        for _ in 0..n {
            encode_command(&mut out, &[b"PUBLISH", b"floor", &payload]);
        }
        cmd.write_all(&out).unwrap();
        sent += n;
        // Keep at most two batches unanswered.
        while replies + 2 * batch < sent {
            match reader.next_frame().unwrap() {
                Some(BytesFrame::Integer(_)) => replies += 1,
                Some(other) => panic!("PUBLISH gave {other:?}"),
                None => assert!(reader.read_from(&mut cmd).unwrap() > 0, "EOF"),
            }
        }
    }
    while replies < total {
        match reader.next_frame().unwrap() {
            Some(_) => replies += 1,
            None => assert!(reader.read_from(&mut cmd).unwrap() > 0, "EOF"),
        }
    }
    drain.join().unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_used = cpu(&mut cmd) - cpu_before;
    println!(
        "{{\"publishes\": {total}, \"batch\": {batch}, \"payload_bytes\": {payload_len}, \
         \"publishes_per_sec\": {:.0}, \"redis_cpu_s_per_10k\": {:.4}, \"elapsed_s\": {elapsed:.3}}}",
        total as f64 / elapsed,
        cpu_used * 10_000.0 / total as f64
    );
    let _ = redis.kill();
    let _ = redis.wait();
}
