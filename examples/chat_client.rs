//! A terminal chat on `switchboard::client`: every line you type goes to the
//! room; what others say is printed. The client reconnects by itself (stop
//! and start the daemon to see it) and joins the room again.
//!
//! ```text
//! cargo run --release                                   # the daemon
//! cargo run --example chat_client -- ann lobby          # in two terminals,
//! cargo run --example chat_client -- bob lobby          # as two users
//! ```
use std::io::BufRead;

use switchboard::client::{Client, ClientConfig, Event};

fn main() {
    let mut args = std::env::args().skip(1);
    let user = args.next().unwrap_or_else(|| "guest".into());
    let room = args.next().unwrap_or_else(|| "lobby".into());
    let server = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let (client, events) =
        Client::connect(ClientConfig::new(format!("ws://{server}/ws?user={user}")));
    let printer = std::thread::spawn(move || {
        for event in events {
            match event {
                Event::State(s) => eprintln!("[{s:?}]"),
                Event::Disconnected {
                    code,
                    reason,
                    will_reconnect,
                } => {
                    eprintln!("[closed {code} {reason}; reconnecting: {will_reconnect}]")
                }
                Event::Message(m) if m["type"] == "message" => {
                    println!("{}: {}", m["from"].as_str().unwrap_or("server"), m["data"])
                }
                Event::Message(m) if m["type"] == "user_joined" || m["type"] == "user_left" => {
                    eprintln!("[{} {}]", m["user"].as_str().unwrap_or(""), m["type"])
                }
                _ => {}
            }
        }
    });
    // The room is remembered even if the first join finds no connection.
    if let Err(e) = client.join(&room) {
        eprintln!("[join: {e}; will join once connected]");
    }
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        if let Err(e) = client.send(&room, &serde_json::Value::String(line)) {
            eprintln!("[not sent: {e}]");
        }
    }
    client.close();
    let _ = printer.join();
}
