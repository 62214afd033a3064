//! Upload progress, the way a web backend would push it: worker threads
//! report progress to the users watching each upload (they join
//! `upload:<id>`), through switchboard's embedding API.
//!
//! * a [`Handler`] lets clients join only `upload:*` rooms and handles a
//!   custom message type, `start_upload`, by queueing a job for the workers;
//! * worker threads hold a [`Handle`] and `publish` progress to `upload:<id>`;
//! * the server runs on its own thread: `Server::bind(config)?.run()`.
//!
//! `cargo run --example upload_progress` runs a self-checking demo: a client
//! joins `upload:42`, asks for the upload to start, prints each progress
//! event up to 100 %, and everything shuts down (exit 0).
//! `cargo run --example upload_progress -- --serve 127.0.0.1:8080` keeps
//! serving for your own clients until Ctrl-C.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};
use switchboard::hub::{Context, Handler};
use switchboard::{Config, Server};

/// Lets clients into `upload:*` rooms only, and starts uploads on request.
struct Uploads {
    jobs: mpsc::Sender<String>,
}

impl Handler for Uploads {
    fn authorize_join(&mut self, _user: &str, room: &str) -> bool {
        room.starts_with("upload:")
    }

    fn on_message(
        &mut self,
        ctx: &mut Context<'_>,
        kind: &str,
        message: &serde_json::value::RawValue,
    ) -> bool {
        if kind != "start_upload" {
            return false;
        }
        let msg: Value = serde_json::from_str(message.get()).unwrap_or_default();
        let Some(id) = msg["id"].as_str() else {
            ctx.reply(&json!({"type": "error", "code": "bad_message", "message": "start_upload needs an id"}));
            return true;
        };
        // Never block the server's thread: hand the job to the workers.
        let _ = self.jobs.send(id.to_string());
        ctx.reply(&json!({"type": "upload_started", "id": id}));
        true
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serve = std::env::args().skip_while(|a| a != "--serve").nth(1);
    let config = Config {
        listen: serve.as_deref().unwrap_or("127.0.0.1:0").parse()?,
        ..Config::default()
    };
    let (jobs, queue) = mpsc::channel::<String>();
    let server = Server::bind(config)?
        .handler(Uploads { jobs })
        .handle_signals(true);
    let addr = server.local_addr();
    let handle = server.handle();
    println!(
        "serving on ws://{addr}/ws (join upload:<id>, send {{\"type\":\"start_upload\",\"id\":…}})"
    );
    let server_thread = thread::spawn(move || server.run());

    // The worker pool: each upload reports 0..=100 % to its room.
    let worker_handle = handle.clone();
    thread::spawn(move || {
        for id in queue {
            let h = worker_handle.clone();
            thread::spawn(move || {
                for percent in (0..=100).step_by(10) {
                    let room = format!("upload:{id}");
                    if h.publish(&room, &json!({"upload": id, "percent": percent}))
                        .is_err()
                    {
                        return;
                    }
                    thread::sleep(Duration::from_millis(20));
                }
            });
        }
    });

    if serve.is_some() {
        server_thread.join().expect("server thread")?;
        return Ok(());
    }
    // The demo client: watch upload 42 until it is done.
    let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/ws/upload:42?user=demo"))?;
    let next = |ws: &mut tungstenite::WebSocket<_>| -> Result<Value, Box<dyn std::error::Error>> {
        loop {
            if let tungstenite::Message::Text(t) = ws.read()? {
                return Ok(serde_json::from_str(t.as_str())?);
            }
        }
    };
    assert_eq!(next(&mut ws)?["type"], "welcome");
    assert_eq!(next(&mut ws)?["type"], "joined");
    ws.send(tungstenite::Message::text(
        r#"{"type":"join","room":"secret"}"#,
    ))?;
    assert_eq!(
        next(&mut ws)?["code"],
        "forbidden",
        "the handler keeps clients to upload rooms"
    );
    ws.send(tungstenite::Message::text(
        r#"{"type":"start_upload","id":"42"}"#,
    ))?;
    assert_eq!(next(&mut ws)?["type"], "upload_started");
    loop {
        let event = next(&mut ws)?;
        assert_eq!(event["type"], "message");
        assert!(event["from"].is_null(), "published by the server");
        let percent = event["data"]["percent"].as_u64().unwrap_or(0);
        println!("upload 42: {percent}%");
        if percent == 100 {
            break;
        }
    }
    handle.shutdown()?;
    server_thread.join().expect("server thread")?;
    println!("done");
    Ok(())
}
