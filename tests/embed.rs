//! The embedding API in-process: `Server::bind(config)?.run()` on a thread,
//! a `Handle` used from other threads, a `Handler` for joins and custom
//! types, and the `upload_progress` example run end to end.

mod support;

use std::thread;

use serde_json::{json, Value};
use support::{Client, Ended};
use switchboard::hub::{Context, Handler};
use switchboard::{Config, Server};

fn config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    }
}

#[test]
fn handle_publishes_sends_broadcasts_disconnects_and_shuts_down_from_other_threads() {
    let server = Server::bind(config()).unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    let running = thread::spawn(move || server.run());
    let mut watcher = Client::connect(addr, "/ws/jobs?user=w");
    watcher.expect("welcome");
    watcher.expect("joined");
    let mut other = Client::connect(addr, "/ws?user=o");
    other.expect("welcome");
    // Several producer threads at once, each through its own clone.
    let producers: Vec<_> = (0..4)
        .map(|t| {
            let h = handle.clone();
            thread::spawn(move || {
                for i in 0..25 {
                    h.publish("jobs", &json!({"thread": t, "i": i})).unwrap();
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let mut per_thread = [0u64; 4];
    for _ in 0..100 {
        let m = watcher.expect("message");
        assert!(m["from"].is_null());
        let t = m["data"]["thread"].as_u64().unwrap() as usize;
        assert_eq!(
            m["data"]["i"].as_u64().unwrap(),
            per_thread[t],
            "each producer's order is kept"
        );
        per_thread[t] += 1;
    }
    handle.send("o", &json!({"note": 1})).unwrap();
    assert_eq!(other.expect("private")["data"]["note"], 1);
    handle.broadcast(&"everyone").unwrap();
    assert_eq!(watcher.expect("broadcast")["data"], "everyone");
    assert_eq!(other.expect("broadcast")["data"], "everyone");
    handle.publish_binary("jobs", vec![7, 7]).unwrap();
    assert!(matches!(watcher.recv(), tungstenite::Message::Binary(b) if b[..] == [7, 7]));
    handle.disconnect("o", 4010, Some("bye")).unwrap();
    assert_eq!(other.ended(), Ended::Close(4010, "bye".into()));
    handle.shutdown().unwrap();
    assert_eq!(watcher.close_code(), 1001);
    running.join().unwrap().unwrap();
    assert!(
        handle.publish("jobs", &1).is_err(),
        "a stopped server says so"
    );
}

struct Vip;

impl Handler for Vip {
    fn authorize_join(&mut self, user: &str, room: &str) -> bool {
        room != "vip" || user == "boss"
    }

    fn on_message(
        &mut self,
        ctx: &mut Context<'_>,
        kind: &str,
        message: &serde_json::value::RawValue,
    ) -> bool {
        match kind {
            "whoami" => {
                let user = ctx.user().to_string();
                ctx.reply(&json!({"type": "you_are", "user": user}));
                true
            }
            "shout" => {
                let v: Value = serde_json::from_str(message.get()).unwrap();
                let data = serde_json::value::to_raw_value(&v["text"]).unwrap();
                ctx.publish("vip", &data);
                true
            }
            _ => false,
        }
    }
}

#[test]
fn handler_authorizes_joins_and_handles_custom_types() {
    let server = Server::bind(config()).unwrap().handler(Vip);
    let addr = server.local_addr();
    let handle = server.handle();
    let running = thread::spawn(move || server.run());
    let mut boss = Client::connect(addr, "/ws/vip?user=boss");
    boss.expect("welcome");
    boss.expect("joined");
    let mut guest = Client::connect(addr, "/ws?user=guest");
    guest.expect("welcome");
    guest.expect_error(json!({"type":"join","room":"vip"}), "forbidden");
    guest.send_json(json!({"type":"whoami"}));
    assert_eq!(guest.expect("you_are")["user"], "guest");
    guest.send_json(json!({"type":"shout","text":"hey"}));
    assert_eq!(boss.expect("message")["data"], "hey");
    guest.expect_error(json!({"type":"dance"}), "unknown_type");
    handle.shutdown().unwrap();
    running.join().unwrap().unwrap();
}

#[test]
fn upload_progress_example_runs() {
    // `cargo test` builds the examples next to the binaries.
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_switchboard"))
        .parent()
        .unwrap()
        .join("examples/upload_progress");
    assert!(bin.exists(), "{} not built", bin.display());
    let out = std::process::Command::new(&bin).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("upload 42: 100%"), "{stdout}");
    assert!(stdout.contains("done"));
}

/// A host that looks users' display names up in its own directory.
struct Directory;

impl Handler for Directory {
    fn connection_info(
        &mut self,
        user: &str,
        info: Option<Box<serde_json::value::RawValue>>,
    ) -> Option<Box<serde_json::value::RawValue>> {
        match user {
            "ann" => serde_json::value::to_raw_value(&json!({"name": "Ann (directory)"})).ok(),
            _ => info,
        }
    }
}

#[test]
fn handle_answers_who_is_connected_and_the_handler_sets_info() {
    let server = Server::bind(config()).unwrap().handler(Directory);
    let addr = server.local_addr();
    let handle = server.handle();
    let running = thread::spawn(move || server.run());
    let mut ann = Client::connect(addr, "/ws/lobby?user=ann");
    let welcome = ann.expect("welcome");
    assert_eq!(welcome["info"], json!({"name": "Ann (directory)"}));
    ann.expect("joined");
    let mut bob = Client::connect(addr, "/ws/lobby?user=bob&info=%7B%22name%22%3A%22Bob%22%7D");
    assert_eq!(bob.expect("welcome")["info"], json!({"name": "Bob"}));
    bob.expect("joined");
    assert_eq!(ann.expect("user_joined")["info"], json!({"name": "Bob"}));
    let wait = std::time::Duration::from_secs(10);
    let view = handle.user("ann").unwrap().recv_timeout(wait).unwrap();
    assert!(view.online);
    assert_eq!(view.details.len(), 1);
    let conn = &view.details[0];
    assert_eq!(
        conn.connection_id,
        welcome["connection_id"].as_str().unwrap()
    );
    assert_eq!(conn.url_room.as_deref(), Some("lobby"));
    let local = ann.ws.get_ref().local_addr().unwrap().to_string();
    assert_eq!(conn.remote_addr.as_deref(), Some(local.as_str()));
    let room = handle.room("lobby", 1).unwrap().recv_timeout(wait).unwrap();
    assert_eq!(
        (room.members, room.details.len(), room.truncated),
        (2, 1, true)
    );
    let room = handle
        .room("lobby", 10)
        .unwrap()
        .recv_timeout(wait)
        .unwrap();
    for d in &room.details {
        let name = serde_json::from_str::<Value>(d.info.as_ref().unwrap().get()).unwrap();
        let expected = if d.user == "ann" {
            "Ann (directory)"
        } else {
            "Bob"
        };
        assert_eq!(name["name"], expected);
        assert_eq!(d.connections, 1);
        assert!(d.since > 0);
    }
    // An asker that went away does not hold the loop up.
    drop(handle.user("ann").unwrap());
    handle.publish("lobby", &"still served").unwrap();
    assert_eq!(bob.expect("message")["data"], "still served");
    let nobody = handle.user("nobody").unwrap().recv_timeout(wait).unwrap();
    assert!(!nobody.online && nobody.details.is_empty());
    handle.shutdown().unwrap();
    running.join().unwrap().unwrap();
}
