//! The kernel's floor for fan-out on this machine: one thread sends a small
//! frame to each of N loopback TCP sockets in turn (one `send` per socket,
//! as a fan-out with one message in flight must), another thread drains them
//! with epoll. Prints sends per second: no WebSocket server can deliver one
//! message to N separate sockets faster than this.
//!
//! `cargo run --release --example send_floor -- [N] [ROUNDS]` (pin with taskset to compare).

use std::io::{ErrorKind, Read};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Instant;

use mio::{Events, Interest, Poll, Token};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut senders = Vec::with_capacity(n);
    let mut receivers = Vec::with_capacity(n);
    for _ in 0..n {
        let r = TcpStream::connect(addr).unwrap();
        let (s, _) = listener.accept().unwrap();
        s.set_nodelay(std::env::var("NODELAY").map_or(true, |v| v == "1"))
            .unwrap();
        r.set_nonblocking(true).unwrap();
        senders.push(s);
        receivers.push(r);
    }
    // FRAME_BYTES: what one send carries (80: one small frame; 16 frames of
    // a 16-in-flight fan-out are about 1,300).
    let frame_len: usize = std::env::var("FRAME_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(80);
    let frame = vec![0x81u8; frame_len];
    let expected = n * rounds * frame.len();
    let reader = std::thread::spawn(move || {
        let mut poll = Poll::new().unwrap();
        let mut socks: Vec<mio::net::TcpStream> = receivers
            .into_iter()
            .map(mio::net::TcpStream::from_std)
            .collect();
        for (i, s) in socks.iter_mut().enumerate() {
            poll.registry()
                .register(s, Token(i), Interest::READABLE)
                .unwrap();
        }
        let mut events = Events::with_capacity(1024);
        let mut buf = [0u8; 65536];
        let mut got = 0;
        while got < expected {
            poll.poll(&mut events, None).unwrap();
            for e in events.iter() {
                loop {
                    match socks[e.token().0].read(&mut buf) {
                        Ok(0) => break,
                        Ok(k) => got += k,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        }
    });
    let start = Instant::now();
    for _ in 0..rounds {
        for s in &senders {
            // SAFETY: valid buffer and open fd.
            let k = unsafe {
                libc::send(
                    s.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            assert_eq!(k as usize, frame.len());
        }
    }
    let send_s = start.elapsed().as_secs_f64();
    reader.join().unwrap();
    let all_s = start.elapsed().as_secs_f64();
    println!(
        "{{\"sockets\":{n},\"rounds\":{rounds},\"sends_per_sec\":{:.0},\"delivered_per_sec\":{:.0}}}",
        (n * rounds) as f64 / send_s,
        (n * rounds) as f64 / all_s
    );
}
