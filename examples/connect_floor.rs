//! The kernel's floor for connection set-up on this machine: one thread
//! opens N loopback TCP connections (blocking `connect`, from a fresh
//! 127.a.b.0/24 for each round as `switchboard-load` does), another accepts them,
//! each pinned to its own core when there are two. No bytes are exchanged,
//! no WebSocket, no HTTP: no server can complete handshakes faster than the
//! kernel completes these bare TCP connects.
//!
//! `cargo run --release --example connect_floor -- [N] [ROUNDS]`
//! (raise `ulimit -n`: both ends of N connections are open in this process).

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::Instant;

/// Connections per source address (each has ~28 k ephemeral ports).
const PER_SOURCE: usize = 10_000;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(9000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let two_cores = std::thread::available_parallelism().map_or(1, |p| p.get()) >= 2;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // A backlog as deep as the kernel allows (a second `listen` only resizes
    // it), so a burst of connects never waits on a dropped SYN.
    // SAFETY: listen on a descriptor the listener owns.
    let rc = unsafe { libc::listen(listener.as_raw_fd(), 65535) };
    assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
    let [a, b] = fresh_subnet();
    for round in 0..rounds {
        let listener = listener.try_clone().unwrap();
        let server = std::thread::spawn(move || {
            if two_cores {
                pin(0);
            }
            let mut held = Vec::with_capacity(n);
            for _ in 0..n {
                let (s, _) = listener.accept().unwrap();
                s.set_nodelay(true).unwrap();
                held.push(s);
            }
            (Instant::now(), held)
        });
        if two_cores {
            pin(1);
        }
        let start = Instant::now();
        let mut clients = Vec::with_capacity(n);
        for i in 0..n {
            // Fresh source addresses each round (and run): the 4-tuples of
            // earlier rounds sit in TIME_WAIT, and stepping over them makes
            // connects several times slower.
            let host = 1 + (round * n.div_ceil(PER_SOURCE) + i / PER_SOURCE) % 254;
            clients.push(connect_from(Ipv4Addr::new(127, a, b, host as u8), addr));
        }
        let connected = start.elapsed().as_secs_f64();
        let (accepted_at, held) = server.join().unwrap();
        let accepted = accepted_at.duration_since(start).as_secs_f64();
        println!(
            "{{\"round\":{round},\"connections\":{n},\"connects_per_sec\":{:.0},\"accepted_per_sec\":{:.0}}}",
            n as f64 / connected,
            n as f64 / accepted
        );
        drop(clients);
        drop(held);
        // A pause between rounds, so one round's closes do not run into the
        // next round's connects.
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Middle octets of a 127.a.b.0/24 unlikely to be used by a recent run
/// (from the clock and the process id; never 127.0.0.0/24).
fn fresh_subnet() -> [u8; 2] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let x = nanos ^ std::process::id().rotate_left(16);
    [1 + (x % 254) as u8, (x >> 8) as u8]
}

/// A blocking connect from `src` (port chosen at connect time, so a source
/// address is not limited to the ports free for `bind`).
fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> TcpStream {
    // SAFETY: plain socket calls on a descriptor this function owns; every
    // pointer passed points at a live local of the right size.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let local = sockaddr(SocketAddr::from((src, 0)));
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len),
            0
        );
        let remote = sockaddr(dst);
        let rc = libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len);
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        stream
    }
}

fn sockaddr(addr: SocketAddr) -> libc::sockaddr_in {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only")
    };
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = v4.port().to_be();
    sa.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
    sa
}

/// Pin the calling thread to one core.
fn pin(core: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
