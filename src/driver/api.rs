//! The server API for backends (`/api/*`): publish to rooms, send to users,
//! broadcast, disconnect, batches, and read-only views of rooms and users.
//!
//! Pure request → response functions over the [`Hub`]: the driver checks the
//! API key, gathers the body without blocking, calls [`handle`], then carries
//! out the hub's outputs like any others.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::http::percent_decode;
use crate::hub::{ConnId, Hub};

/// Most operations in one `/api/batch`.
pub const MAX_BATCH_OPS: usize = 1000;
/// Most users listed by `GET /api/rooms/<room>` unless `?limit=` asks for fewer.
pub const MAX_LISTED_USERS: usize = 10_000;

/// One API request, body already complete.
pub struct ApiRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

/// Status and JSON body: a value, or (the views) text already encoded, so
/// connection info goes out as the bytes received.
#[derive(Debug)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Value,
    pub encoded: Option<Vec<u8>>,
}

impl ApiResponse {
    /// The body's bytes (a view's, as encoded: no copy).
    pub fn into_bytes(self) -> Vec<u8> {
        match self.encoded {
            Some(bytes) => bytes,
            None => serde_json::to_vec(&self.body).expect("API bodies serialize"),
        }
    }
}

fn ok(body: Value) -> ApiResponse {
    ApiResponse {
        status: 200,
        body,
        encoded: None,
    }
}

fn error(status: u16, code: &str, message: impl Into<String>) -> ApiResponse {
    ApiResponse {
        status,
        body: json!({ "error": code, "message": message.into() }),
        encoded: None,
    }
}

#[derive(Deserialize)]
struct Publish<'a> {
    #[serde(borrow)]
    room: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct Send<'a> {
    #[serde(borrow)]
    user: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct Broadcast<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct Disconnect<'a> {
    #[serde(borrow)]
    user: std::borrow::Cow<'a, str>,
    code: Option<u16>,
    reason: Option<String>,
}

#[derive(Deserialize)]
struct Batch<'a> {
    #[serde(borrow)]
    ops: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct Op<'a> {
    #[serde(borrow)]
    op: std::borrow::Cow<'a, str>,
}

/// Answer `req`. `peer` gives a connection's remote address (the driver's
/// sockets; the hub has none).
pub fn handle(
    hub: &mut Hub,
    req: &ApiRequest<'_>,
    peer: &dyn Fn(ConnId) -> Option<String>,
) -> ApiResponse {
    let path = req.path.strip_prefix("/api").unwrap_or(req.path);
    match (req.method, path) {
        ("POST", "/publish")
            if req
                .content_type
                .is_some_and(|t| t.starts_with("application/octet-stream")) =>
        {
            let room = super::http::query_param(req.query, "room");
            match room {
                Some(Some(room)) if !room.is_empty() => {
                    if let Err(e) = check_room(hub, &room) {
                        return e;
                    }
                    let delivered = hub.publish_binary(&room, req.body);
                    ok(json!({ "ok": true, "delivered": delivered }))
                }
                _ => error(400, "bad_request", "a binary publish needs ?room=<room>"),
            }
        }
        ("POST", "/publish" | "/send" | "/broadcast" | "/disconnect") => {
            match std::str::from_utf8(req.body) {
                Ok(text) => json_op(hub, &path[1..], text),
                Err(_) => error(400, "bad_json", "body is not UTF-8"),
            }
        }
        ("POST", "/batch") => batch(hub, req.body),
        ("GET", "/rooms") => {
            let rooms: Vec<Value> = hub
                .registry()
                .rooms()
                .map(|r| {
                    json!({ "room": &*r.name, "members": r.user_count(), "connections": r.members.len() })
                })
                .collect();
            ok(json!({ "rooms": rooms }))
        }
        ("GET", p) if p.starts_with("/rooms/") => room_view(hub, &p["/rooms/".len()..], req.query),
        ("GET", p) if p.starts_with("/users/") => user_view(hub, &p["/users/".len()..], peer),
        ("GET", p) if p.starts_with("/history/") => {
            history(hub, &p["/history/".len()..], req.query)
        }
        (_, "/publish" | "/send" | "/broadcast" | "/disconnect" | "/batch") => {
            error(405, "method_not_allowed", "use POST")
        }
        (_, "/rooms") => error(405, "method_not_allowed", "use GET"),
        (_, p)
            if p.starts_with("/rooms/")
                || p.starts_with("/users/")
                || p.starts_with("/history/") =>
        {
            error(405, "method_not_allowed", "use GET")
        }
        _ => error(404, "not_found", format!("no API endpoint {}", req.path)),
    }
}

fn check_room(hub: &Hub, room: &str) -> Result<(), ApiResponse> {
    if room.is_empty() || room.len() > hub.config().max_room_name_len {
        return Err(error(
            400,
            "bad_request",
            format!(
                "room name must be 1 to {} bytes",
                hub.config().max_room_name_len
            ),
        ));
    }
    Ok(())
}

/// One JSON operation (`publish`, `send`, `broadcast`, `disconnect`) on `text`.
fn json_op(hub: &mut Hub, op: &str, text: &str) -> ApiResponse {
    if let Err(refusal) = crate::protocol::check_json_limits(text) {
        return error(400, "bad_json", refusal.message);
    }
    let bad = |e: serde_json::Error| {
        let code = if e.classify() == serde_json::error::Category::Data {
            "bad_request"
        } else {
            "bad_json"
        };
        error(400, code, e.to_string())
    };
    match op {
        "publish" => match serde_json::from_str::<Publish>(text) {
            Ok(p) if hub.history_unavailable(&p.room) => error(
                503,
                "unavailable",
                "the cluster cannot be reached: a message to a room with history would be in no history; try again",
            ),
            Ok(p) => match check_room(hub, &p.room) {
                Ok(()) => ok(json!({ "ok": true, "delivered": hub.publish(&p.room, p.data) })),
                Err(e) => e,
            },
            Err(e) => bad(e),
        },
        "send" => match serde_json::from_str::<Send>(text) {
            Ok(s) => ok(json!({ "ok": true, "delivered": hub.send_to_user(&s.user, s.data) })),
            Err(e) => bad(e),
        },
        "broadcast" => match serde_json::from_str::<Broadcast>(text) {
            Ok(b) => ok(json!({ "ok": true, "delivered": hub.broadcast(b.data) })),
            Err(e) => bad(e),
        },
        "disconnect" => match serde_json::from_str::<Disconnect>(text) {
            Ok(d) => {
                let code = d.code.unwrap_or(4000);
                if !(code == 1000 || (3000..5000).contains(&code)) {
                    return error(400, "bad_request", "code must be 1000 or 3000-4999");
                }
                let reason = d.reason.as_deref().unwrap_or("disconnected by the server");
                if reason.len() > 123 {
                    return error(400, "bad_request", "reason longer than 123 bytes");
                }
                let n = hub.disconnect_user(&d.user, code, Some(reason));
                ok(json!({ "ok": true, "disconnected": n }))
            }
            Err(e) => bad(e),
        },
        _ => error(400, "bad_request", format!("unknown op `{op}`")),
    }
}

fn batch(hub: &mut Hub, body: &[u8]) -> ApiResponse {
    let Ok(text) = std::str::from_utf8(body) else {
        return error(400, "bad_json", "body is not UTF-8");
    };
    if let Err(refusal) = crate::protocol::check_json_limits(text) {
        return error(400, "bad_json", refusal.message);
    }
    let batch: Batch = match serde_json::from_str(text) {
        Ok(b) => b,
        Err(e) => return error(400, "bad_request", e.to_string()),
    };
    if batch.ops.len() > MAX_BATCH_OPS {
        return error(
            413,
            "too_many_ops",
            format!("at most {MAX_BATCH_OPS} operations per batch"),
        );
    }
    let results: Vec<Value> = batch
        .ops
        .iter()
        .map(|raw| match serde_json::from_str::<Op>(raw.get()) {
            Ok(op) if matches!(&*op.op, "publish" | "send" | "broadcast" | "disconnect") => {
                let r = json_op(hub, &op.op, raw.get());
                if r.status == 200 {
                    r.body
                } else {
                    json!({ "ok": false, "status": r.status, "error": r.body["error"], "message": r.body["message"] })
                }
            }
            Ok(op) => json!({ "ok": false, "status": 400, "error": "bad_request", "message": format!("unknown op `{}`", op.op) }),
            Err(e) => json!({ "ok": false, "status": 400, "error": "bad_request", "message": e.to_string() }),
        })
        .collect();
    ok(json!({ "results": results }))
}

fn room_view(hub: &Hub, encoded: &str, query: Option<&str>) -> ApiResponse {
    let Some(room) = percent_decode(encoded) else {
        return error(
            400,
            "bad_request",
            "room is not valid percent-encoded UTF-8",
        );
    };
    let limit = super::http::query_param(query, "limit")
        .flatten()
        .and_then(|l| l.parse().ok())
        .unwrap_or(MAX_LISTED_USERS)
        .min(MAX_LISTED_USERS);
    view(&hub.room_view(&room, limit))
}

/// What `GET /api/history/<room>[?epoch=E&seq=N][&limit=L]` asks for: the
/// room, `since` and `limit`; or the error answer (400, 404 for a room
/// that keeps no history).
pub struct HistoryQuery {
    pub room: String,
    pub since: Option<(String, u64)>,
    pub limit: Option<u64>,
}

pub fn history_query(
    hub: &Hub,
    encoded: &str,
    query: Option<&str>,
) -> Result<HistoryQuery, ApiResponse> {
    let Some(room) = percent_decode(encoded) else {
        return Err(error(
            400,
            "bad_request",
            "room is not valid percent-encoded UTF-8",
        ));
    };
    check_room(hub, &room)?;
    if !crate::hub::history::History::keeps(hub.config(), &room) {
        return Err(error(404, "no_history", "this room keeps no history"));
    }
    let param = |name| super::http::query_param(query, name).flatten();
    let number = |name| match param(name) {
        None => Ok(None),
        Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
            error(
                400,
                "bad_request",
                format!("`{name}` must be a whole number"),
            )
        }),
    };
    let (seq, limit) = (number("seq")?, number("limit")?);
    let since = match (param("epoch"), seq) {
        (Some(epoch), Some(seq)) => Some((epoch, seq)),
        (None, None) => None,
        _ => {
            return Err(error(
                400,
                "bad_request",
                "give both `epoch` and `seq`, or neither",
            ))
        }
    };
    Ok(HistoryQuery {
        room: room.into_owned(),
        since,
        limit,
    })
}

/// `GET /api/history/<room>` on one node: as the `history` message answers
/// (without `type`). In cluster mode the driver asks Redis instead.
fn history(hub: &Hub, encoded: &str, query: Option<&str>) -> ApiResponse {
    let q = match history_query(hub, encoded, query) {
        Ok(q) => q,
        Err(e) => return e,
    };
    let since = q.since.as_ref().map(|(epoch, seq)| crate::protocol::Since {
        epoch: epoch.as_str().into(),
        seq: *seq,
    });
    match hub.history_body(&q.room, since.as_ref(), q.limit) {
        Some(body) => ApiResponse {
            status: 200,
            body: Value::Null,
            encoded: Some(body),
        },
        None => error(404, "no_history", "this room keeps no history"),
    }
}

fn user_view(hub: &Hub, encoded: &str, peer: &dyn Fn(ConnId) -> Option<String>) -> ApiResponse {
    let Some(user) = percent_decode(encoded) else {
        return error(
            400,
            "bad_request",
            "user is not valid percent-encoded UTF-8",
        );
    };
    let mut view_of_user = hub.user_view(&user);
    for c in &mut view_of_user.details {
        c.remote_addr = peer(c.id);
    }
    view(&view_of_user)
}

/// A view, encoded straight to bytes (no `Value` tree: info is copied as
/// the bytes received, not parsed and re-encoded).
fn view(v: &impl serde::Serialize) -> ApiResponse {
    ApiResponse {
        status: 200,
        body: Value::Null,
        encoded: Some(serde_json::to_vec(v).expect("views serialize")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{ConnId, Kind, OpenRequest, Output};
    use crate::HubConfig;
    use std::time::Instant;

    fn hub_with(users: &[(&str, Option<&str>)]) -> Hub {
        let now = Instant::now();
        let mut hub = Hub::new(HubConfig::default(), now);
        for (i, (user, room)) in users.iter().enumerate() {
            let id = ConnId {
                index: i as u32,
                generation: 1,
            };
            hub.handle_open(
                now,
                id,
                OpenRequest {
                    user: Some(user),
                    room: *room,
                    kind: Kind::Hub,
                    ..Default::default()
                },
            )
            .unwrap();
        }
        while hub.poll_output().is_some() {}
        hub
    }

    fn call(hub: &mut Hub, method: &str, path: &str, body: &str) -> ApiResponse {
        handle(
            hub,
            &ApiRequest {
                method,
                path,
                query: None,
                content_type: Some("application/json"),
                body: body.as_bytes(),
            },
            &|_| None,
        )
    }

    #[test]
    fn publish_send_broadcast_count_recipients() {
        let mut hub = hub_with(&[("a", Some("r")), ("b", Some("r")), ("b", None)]);
        let r = call(
            &mut hub,
            "POST",
            "/api/publish",
            r#"{"room":"r","data":{"x":1}}"#,
        );
        assert_eq!((r.status, r.body["delivered"].as_u64()), (200, Some(2)));
        let Some(Output::Send { frame, .. }) = hub.poll_output() else {
            panic!()
        };
        let text = std::str::from_utf8(&frame[2..]).unwrap();
        assert_eq!(
            text,
            r#"{"type":"message","room":"r","from":null,"data":{"x":1}}"#
        );
        let r = call(&mut hub, "POST", "/api/send", r#"{"user":"b","data":"hi"}"#);
        assert_eq!(r.body["delivered"], 2);
        let r = call(&mut hub, "POST", "/api/broadcast", r#"{"data":1}"#);
        assert_eq!(r.body["delivered"], 3);
        let r = call(
            &mut hub,
            "POST",
            "/api/publish",
            r#"{"room":"nobody-here","data":1}"#,
        );
        assert_eq!((r.status, r.body["delivered"].as_u64()), (200, Some(0)));
    }

    #[test]
    fn disconnect_closes_every_device_with_the_code() {
        let mut hub = hub_with(&[("a", Some("r")), ("a", None), ("b", Some("r"))]);
        let r = call(
            &mut hub,
            "POST",
            "/api/disconnect",
            r#"{"user":"a","code":4009,"reason":"bye"}"#,
        );
        assert_eq!(r.body["disconnected"], 2);
        let closes: Vec<_> = std::iter::from_fn(|| hub.poll_output())
            .filter_map(|o| match o {
                Output::Close { reason, text, .. } => Some((reason.code(), text)),
                _ => None,
            })
            .collect();
        assert_eq!(closes.len(), 2);
        assert!(closes
            .iter()
            .all(|(c, t)| *c == 4009 && t.as_deref() == Some("bye")));
        assert_eq!(hub.registry().user_connections("a"), 0);
        let r = call(
            &mut hub,
            "POST",
            "/api/disconnect",
            r#"{"user":"b","code":1006}"#,
        );
        assert_eq!(r.status, 400);
    }

    #[test]
    fn batch_answers_one_result_per_op() {
        let mut hub = hub_with(&[("a", Some("r"))]);
        let body = r#"{"ops":[{"op":"publish","room":"r","data":1},{"op":"send","user":"zz","data":2},{"op":"fly"},{"op":"publish"}]}"#;
        let r = call(&mut hub, "POST", "/api/batch", body);
        assert_eq!(r.status, 200);
        let results = r.body["results"].as_array().unwrap();
        assert_eq!(results.len(), 4);
        assert_eq!(results[0]["delivered"], 1);
        assert_eq!(results[1]["delivered"], 0);
        assert_eq!(results[2]["ok"], false);
        assert_eq!(results[3]["status"], 400);
    }

    /// The body as JSON, whichever way it was built.
    fn json(r: &ApiResponse) -> Value {
        match &r.encoded {
            Some(bytes) => serde_json::from_slice(bytes).unwrap(),
            None => r.body.clone(),
        }
    }

    #[test]
    fn views_of_rooms_and_users() {
        let mut hub = hub_with(&[("a", Some("r")), ("a", Some("s")), ("b", Some("r"))]);
        let r = call(&mut hub, "GET", "/api/rooms", "");
        assert_eq!(json(&r)["rooms"].as_array().unwrap().len(), 2);
        let r = call(&mut hub, "GET", "/api/rooms/r", "");
        assert_eq!(
            (
                json(&r)["members"].as_u64(),
                json(&r)["connections"].as_u64()
            ),
            (Some(2), Some(2))
        );
        let r = call(&mut hub, "GET", "/api/users/a", "");
        let mut body = json(&r);
        let details = body.as_object_mut().unwrap().remove("details").unwrap();
        assert_eq!(
            body,
            json!({"user":"a","online":true,"connections":2,"rooms":["r","s"]})
        );
        let details = details.as_array().unwrap();
        assert_eq!(details.len(), 2);
        assert_eq!(details[0]["connection_id"], "0.1");
        assert_eq!(details[0]["rooms"], json!(["r"]));
        assert_eq!(details[0]["url_room"], "r");
        assert_eq!(details[0]["route"], "/ws");
        assert!(details[0].get("info").is_none());
        let r = call(&mut hub, "GET", "/api/users/zed", "");
        assert_eq!(json(&r)["online"], false);
        assert_eq!(json(&r)["details"], json!([]));
        let r = call(&mut hub, "GET", "/api/rooms/r", "");
        assert_eq!(json(&r)["details"].as_array().unwrap().len(), 2);
        assert_eq!(json(&r)["details"][0]["connections"], 1);
    }

    #[test]
    fn bad_requests_are_json_4xx() {
        let mut hub = hub_with(&[]);
        assert_eq!(
            call(&mut hub, "POST", "/api/publish", "{").body["error"],
            "bad_json"
        );
        assert_eq!(
            call(&mut hub, "POST", "/api/publish", r#"{"room":"r"}"#).body["error"],
            "bad_request"
        );
        assert_eq!(call(&mut hub, "GET", "/api/publish", "").status, 405);
        assert_eq!(call(&mut hub, "POST", "/api/rooms", "").status, 405);
        assert_eq!(call(&mut hub, "GET", "/api/nothing", "").status, 404);
        let long = format!(r#"{{"room":"{}","data":1}}"#, "r".repeat(500));
        assert_eq!(call(&mut hub, "POST", "/api/publish", &long).status, 400);
        let deep = format!(
            r#"{{"room":"r","data":{}{}}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        assert_eq!(
            call(&mut hub, "POST", "/api/publish", &deep).body["error"],
            "bad_json"
        );
    }
}
