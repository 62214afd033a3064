//! Benchmark peer: a room fan-out server on tokio + tokio-tungstenite that
//! speaks the subset of switchboard's protocol that `switchboard-load` uses,
//! so the same load tool can measure it.
//!
//! ```text
//! switchboard-peer-tokio [IP:PORT]        (default 127.0.0.1:9001)
//! ```
//!
//! - `GET /ws/<room>?user=<id>` and `GET /ws?user=<id>` upgrade; on open the
//!   server sends `{"type":"welcome","connection_id":"<n>","user":"<id>"}` and
//!   joins the room named in the URL, if any.
//! - `{"type":"message","room":R,"data":D}` from a member of R is sent as
//!   `{"type":"message","room":R,"from":"<user>","data":D}` to every other
//!   member; otherwise the sender gets `{"type":"error","code":"not_in_room"}`
//!   (or `bad_json`, `bad_message`, `unknown_type`).
//! - `GET /echo` upgrades without a welcome and echoes every data message.
//! - Any other path is refused with 404.
//!
//! One thread (a current-thread runtime and a `LocalSet`), so rooms are plain
//! `Rc<RefCell<…>>` maps. Each hub connection is split: its task reads and
//! dispatches, and a writer task drains an unbounded channel of `Message`s,
//! feeding everything queued and then flushing once, so frames queued together
//! go out in one write. A fanned-out message is encoded once; each recipient's
//! `Message::Text` shares the same `Utf8Bytes`.
//!
//! `listening on IP:PORT` is printed on stderr once the socket is bound.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures_util::{future, SinkExt, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Largest message accepted from a client.
const MAX_MESSAGE: usize = 64 * 1024;
/// Messages taken from a writer's queue per flush.
const WRITE_BATCH: usize = 256;

type Tx = mpsc::UnboundedSender<Message>;

/// Everything shared by the connections of this (single) thread.
#[derive(Default)]
struct Hub {
    next_id: Cell<u64>,
    /// Room name → members by connection id.
    rooms: RefCell<HashMap<String, HashMap<u64, Tx>>>,
}

/// What the request path asks for.
enum Route {
    Hub { room: Option<String>, user: String },
    Echo,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct Outgoing<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    from: &'a str,
    data: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct Welcome<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    connection_id: &'a str,
    user: &'a str,
}

fn error_message(code: &str) -> Message {
    Message::text(format!(r#"{{"type":"error","code":"{code}"}}"#))
}

fn config() -> WebSocketConfig {
    // The default 128 KiB read buffer per connection is meant for high read
    // load; with tens of thousands of connections tungstenite suggests a
    // small one.
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// Parse the request target into a route (`None`: not found).
fn route(path: &str, query: Option<&str>) -> Option<Route> {
    let user = || {
        query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|kv| kv.strip_prefix("user="))
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
    };
    match path {
        "/echo" => Some(Route::Echo),
        "/ws" => Some(Route::Hub {
            room: None,
            user: user().unwrap_or_default(),
        }),
        _ => {
            let room = path.strip_prefix("/ws/")?;
            if room.is_empty() || room.contains('/') {
                return None;
            }
            Some(Route::Hub {
                room: Some(room.to_owned()),
                user: user().unwrap_or_default(),
            })
        }
    }
}

// The handshake callback's error type is tungstenite's `ErrorResponse`.
#[allow(clippy::result_large_err)]
async fn serve(hub: Rc<Hub>, stream: TcpStream) {
    let mut found = None;
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        match route(req.uri().path(), req.uri().query()) {
            Some(r) => {
                found = Some(r);
                Ok(resp)
            }
            None => {
                let mut refusal = ErrorResponse::new(Some("not found".into()));
                *refusal.status_mut() = StatusCode::NOT_FOUND;
                Err(refusal)
            }
        }
    };
    let Ok(ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config())).await
    else {
        return;
    };
    match found {
        Some(Route::Echo) => {
            let (write, read) = ws.split();
            // `forward` feeds while messages are ready and flushes when the
            // stream would block.
            let _ = read
                .try_filter(|m| future::ready(m.is_text() || m.is_binary()))
                .forward(write)
                .await;
        }
        Some(Route::Hub { room, user }) => {
            let id = hub.next_id.get() + 1;
            hub.next_id.set(id);
            let user = if user.is_empty() {
                format!("anon-{id}")
            } else {
                user
            };
            hub_connection(&hub, ws, id, room, user).await;
        }
        None => {}
    }
}

async fn hub_connection(
    hub: &Hub,
    ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    id: u64,
    room: Option<String>,
    user: String,
) {
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    tokio::task::spawn_local(async move {
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
            for msg in batch.drain(..) {
                if sink.feed(msg).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });

    let conn_id = id.to_string();
    let welcome = serde_json::to_string(&Welcome {
        kind: "welcome",
        connection_id: &conn_id,
        user: &user,
    })
    .expect("serializing a struct of strings");
    let _ = tx.send(Message::text(welcome));
    if let Some(room) = &room {
        hub.rooms
            .borrow_mut()
            .entry(room.clone())
            .or_default()
            .insert(id, tx.clone());
    }

    // Read until the stream ends; after a Close the next read sends
    // tungstenite's reply and ends the stream.
    while let Some(Ok(msg)) = stream.next().await {
        // Binary frames are not part of the benchmarked subset; pings are
        // answered by tungstenite.
        if let Message::Text(text) = msg {
            on_text(hub, &tx, id, room.as_deref(), &user, text.as_bytes());
        }
    }

    if let Some(room) = &room {
        let mut rooms = hub.rooms.borrow_mut();
        if let Some(members) = rooms.get_mut(room) {
            members.remove(&id);
            if members.is_empty() {
                rooms.remove(room);
            }
        }
    }
}

fn on_text(hub: &Hub, tx: &Tx, id: u64, joined: Option<&str>, user: &str, text: &[u8]) {
    let msg: Incoming = match serde_json::from_slice(text) {
        Ok(m) => m,
        Err(e) if e.is_syntax() || e.is_eof() => {
            let _ = tx.send(error_message("bad_json"));
            return;
        }
        Err(_) => {
            let _ = tx.send(error_message("bad_message"));
            return;
        }
    };
    if msg.kind != "message" {
        let _ = tx.send(error_message("unknown_type"));
        return;
    }
    let Some(room) = msg.room.as_deref() else {
        let _ = tx.send(error_message("bad_message"));
        return;
    };
    if joined != Some(room) {
        let _ = tx.send(error_message("not_in_room"));
        return;
    }
    let out = serde_json::to_string(&Outgoing {
        kind: "message",
        room,
        from: user,
        data: msg.data,
    })
    .expect("serializing strings and raw JSON");
    let out = Message::Text(Utf8Bytes::from(out));
    if let Some(members) = hub.rooms.borrow().get(room) {
        for (&member, member_tx) in members {
            if member != id {
                let _ = member_tx.send(out.clone());
            }
        }
    }
}

fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("127.0.0.1:9001")
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::bind(addr).await?;
        eprintln!("listening on {}", listener.local_addr()?);
        let hub = Rc::new(Hub::default());
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::task::spawn_local(serve(hub.clone(), stream));
                }
                Err(e) => {
                    // Out of file descriptors, most likely: back off briefly.
                    eprintln!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    })
}
