//! The HTTP side of a connection: gather one request (head, then body)
//! without blocking, answer plain routes (keep-alive), or hand a WebSocket
//! route to tungstenite's handshake and open the connection in the hub.

use std::io;
use std::time::Instant;

use bytes::Bytes;
use tungstenite::handshake::server::{NoCallback, ServerHandshake};
use tungstenite::handshake::HandshakeError;
use tungstenite::Error as WsError;

use super::cluster;
use super::conn::State;
use super::http::{self, RequestHead, Route};
use super::request_reader::{Refusal, Request, RequestReader};
use super::rx::FrameReader;
use super::{api, Driver};
use crate::hub::{ConnId, Kind, OpenRequest};
use crate::percent::percent_decode;

const JSON: &str = "application/json";

impl Driver {
    /// Read until a whole request (head and body) is buffered, then serve
    /// it. The reading itself is [`RequestReader`]'s (pure, fuzzed).
    pub(super) fn read_request(&mut self, key: usize, now: Instant) {
        loop {
            let conn = &mut self.conns[key];
            let State::Http { reader } = &mut conn.state else {
                return;
            };
            match reader.next_request() {
                Ok(Some(request)) => {
                    let State::Http { reader } =
                        std::mem::replace(&mut conn.state, State::Closing { write_shut: false })
                    else {
                        unreachable!("matched above")
                    };
                    return self.on_request(key, request, reader, now);
                }
                Err(refusal) => {
                    log::debug!("{} request refused: {refusal:?}", conn.id);
                    if refusal == Refusal::UpgradeWithBody {
                        *self.counters.refused_by_status.entry(400).or_default() += 1;
                    }
                    return self.respond(key, refusal.response());
                }
                Ok(None) => {}
            }
            let mut io = super::tls::Io {
                tcp: &mut conn.tcp,
                tls: conn.tls.as_deref_mut(),
            };
            match reader.read_from(&mut io) {
                Ok(0) => return self.drop_conn(key),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.drop_conn(key),
            }
        }
    }

    /// Queue an HTTP response and close after it.
    pub(super) fn respond(&mut self, key: usize, response: Bytes) {
        let conn = &mut self.conns[key];
        conn.start_closing(response);
        let deadline = Instant::now() + self.config.close_timeout;
        self.closings.push_back((deadline, conn.id));
        self.mark_dirty(key);
    }

    /// Queue a response; keep the connection for the next request if asked.
    fn reply(
        &mut self,
        key: usize,
        head: &RequestHead,
        response: Bytes,
        reader: Box<RequestReader>,
        now: Instant,
    ) {
        self.reply_keeping(key, head.keep_alive, response, reader, now)
    }

    fn reply_keeping(
        &mut self,
        key: usize,
        keep_alive: bool,
        response: Bytes,
        reader: Box<RequestReader>,
        now: Instant,
    ) {
        if !keep_alive {
            return self.respond(key, response);
        }
        let conn = &mut self.conns[key];
        conn.out.push(response);
        conn.set_state(State::Http { reader });
        conn.http_deadline = now + self.config.handshake_timeout;
        self.handshakes.push_back((conn.http_deadline, conn.id));
        self.mark_dirty(key);
        // A pipelined request may be complete in the reader, or still in the
        // socket (reading stopped at the end of this request, so no new edge
        // will announce it): look again next iteration.
        self.again.push(key);
    }

    /// Refuse a WebSocket handshake with an HTTP error (never a 101).
    fn refuse(&mut self, key: usize, status: u16, why: &str) {
        self.refuse_with(key, status, "", why);
    }

    /// [`Self::refuse`] with extra response headers (each ending in CRLF).
    fn refuse_with(&mut self, key: usize, status: u16, extra_headers: &str, why: &str) {
        *self.counters.refused_by_status.entry(status).or_default() += 1;
        log::debug!("{} refused with {status}: {why}", self.conns[key].id);
        self.respond(key, http::text_response(status, extra_headers, why));
    }

    fn json_reply(
        &mut self,
        key: usize,
        head: &RequestHead,
        status: u16,
        body: &[u8],
        reader: Box<RequestReader>,
        now: Instant,
    ) {
        let response = http::response(status, JSON, "", body, head.keep_alive);
        self.reply(key, head, response, reader, now);
    }

    /// An embedded file, or `304` when the client holds this version.
    fn asset(
        &mut self,
        key: usize,
        head: &RequestHead,
        asset: &'static Asset,
        reader: Box<RequestReader>,
        now: Instant,
    ) {
        let etag = format!("\"{:016x}\"", asset.hash);
        let headers = format!(
            "{}Cache-Control: no-cache\r\nETag: {etag}\r\n",
            asset.headers
        );
        let fresh = head.if_none_match.as_deref() == Some(etag.as_str());
        let (status, body) = if fresh {
            (304, &b""[..])
        } else {
            (200, asset.body.as_bytes())
        };
        let response = http::response(status, asset.content_type, &headers, body, head.keep_alive);
        self.reply(key, head, response, reader, now);
    }

    /// Answer a server API request now.
    fn api_request(
        &mut self,
        key: usize,
        head: &RequestHead,
        request: &Request,
        reader: Box<RequestReader>,
        now: Instant,
    ) {
        let req = api::ApiRequest {
            method: &head.method,
            path: &head.path,
            query: head.query.as_deref(),
            content_type: head.content_type.as_deref(),
            body: request.body(),
        };
        let conns = &self.conns;
        let peer = |id: ConnId| super::peer_addr(conns, id);
        let response = api::handle(&mut self.hub, &req, &peer);
        self.counters.api_requests += 1;
        self.drain_hub();
        let status = response.status;
        let body = response.into_bytes();
        self.json_reply(key, head, status, &body, reader, now);
    }

    /// Send the answer an API request waited for (a cluster view), then
    /// read on.
    pub(super) fn answer_waiting(&mut self, id: ConnId, status: u16, body: &[u8], now: Instant) {
        let Some(key) = self.open_key(id) else {
            return;
        };
        let conn = &mut self.conns[key];
        if !matches!(conn.state, State::Waiting { .. }) {
            return;
        }
        let State::Waiting { reader, keep_alive } =
            std::mem::replace(&mut conn.state, State::Closing { write_shut: false })
        else {
            unreachable!("matched above")
        };
        let response = http::response(status, JSON, "", body, keep_alive);
        self.reply_keeping(key, keep_alive, response, reader, now);
    }

    /// The API key guards `/stats`, `/api/*` (and `/metrics` if configured).
    fn authorized(&self, head: &RequestHead) -> bool {
        match &self.config.api_key {
            None => true,
            Some(key) => head.bearer().is_some_and(|given| {
                crate::auth::constant_time_eq(given.as_bytes(), key.expose().as_bytes())
            }),
        }
    }

    fn on_request(
        &mut self,
        key: usize,
        request: Request,
        reader: Box<RequestReader>,
        now: Instant,
    ) {
        let head = &request.head;
        let route = http::route(&head.path);
        let needs_key = matches!(route, Route::Stats | Route::Api | Route::Overview)
            || (route == Route::Metrics && self.config.metrics_require_key);
        if needs_key && !self.authorized(head) {
            let body = http::json_error(
                "unauthorized",
                "missing or wrong API key (Authorization: Bearer KEY)",
            );
            let response = http::response(
                401,
                JSON,
                "WWW-Authenticate: Bearer\r\n",
                &body,
                head.keep_alive,
            );
            return self.reply(key, head, response, reader, now);
        }
        match route {
            Route::Api if self.cluster.is_some() && head.method == "GET" => {
                // Views of a room or a user: the whole cluster's, answered
                // when the cluster has (the connection waits meanwhile).
                let path = head.path.strip_prefix("/api").unwrap_or(&head.path);
                let ask = if let Some(room) = path.strip_prefix("/rooms/") {
                    percent_decode(room).map(|room| {
                        let limit = http::query_param(head.query.as_deref(), "limit")
                            .flatten()
                            .and_then(|l| l.parse().ok())
                            .unwrap_or(api::MAX_LISTED_USERS)
                            .min(api::MAX_LISTED_USERS);
                        cluster::Ask::Room(room.into_owned(), limit)
                    })
                } else if let Some(user) = path.strip_prefix("/users/") {
                    percent_decode(user).map(|u| cluster::Ask::User(u.into_owned()))
                } else if let Some(room) = path.strip_prefix("/history/") {
                    // A bad request is answered as on one node, below.
                    api::history_query(&self.hub, room, head.query.as_deref())
                        .ok()
                        .map(|q| {
                            let size = self.hub.config().history_size as u64;
                            let limit = q.limit.map_or(size, |l| l.min(size)) as usize;
                            cluster::Ask::History(q.room, q.since, limit)
                        })
                } else {
                    None
                };
                match ask {
                    Some(ask) => {
                        self.counters.api_requests += 1;
                        let conn = &mut self.conns[key];
                        conn.set_state(State::Waiting {
                            reader,
                            keep_alive: head.keep_alive,
                        });
                        let id = conn.id;
                        let c = self.cluster.as_mut().expect("cluster mode");
                        c.view(cluster::Waiter::Http(id), ask, now);
                        self.drain_hub();
                    }
                    None => self.api_request(key, head, &request, reader, now),
                }
            }
            Route::Api => self.api_request(key, head, &request, reader, now),
            _ if head.method != "GET" => {
                let status = if route == Route::NotFound { 404 } else { 405 };
                let response = http::response(
                    status,
                    "text/plain; charset=utf-8",
                    "Allow: GET\r\n",
                    b"only GET is served here\n",
                    head.keep_alive,
                );
                self.reply(key, head, response, reader, now);
            }
            Route::ClientJs => self.asset(key, head, &CLIENT_JS, reader, now),
            Route::Dashboard => self.asset(key, head, &DASHBOARD, reader, now),
            Route::Demo => self.asset(key, head, &DEMO, reader, now),
            Route::Overview => {
                let top = http::query_param(head.query.as_deref(), "top")
                    .flatten()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(10)
                    .min(MAX_TOP);
                let body = self.overview_json(top, now);
                self.json_reply(key, head, 200, &body, reader, now);
            }
            Route::Healthz => {
                // Redis unreachable: still 200 (this node serves its own
                // clients), but say so.
                let down = self.cluster.as_ref().is_some_and(|c| c.state() != "up");
                let body: &[u8] = if down {
                    b"degraded: cluster down (Redis unreachable); serving this node's clients\n"
                } else {
                    b"ok\n"
                };
                let response =
                    http::response(200, "text/plain; charset=utf-8", "", body, head.keep_alive);
                self.reply(key, head, response, reader, now);
            }
            Route::Stats => {
                let body = self.stats_json(now);
                self.json_reply(key, head, 200, &body, reader, now);
            }
            Route::Metrics => {
                let body = self.metrics_text(now);
                let response = http::response(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    "",
                    body.as_bytes(),
                    head.keep_alive,
                );
                self.reply(key, head, response, reader, now);
            }
            Route::NotFound => {
                let response = http::response(
                    404,
                    "text/plain; charset=utf-8",
                    "",
                    b"not found\n",
                    head.keep_alive,
                );
                self.reply(key, head, response, reader, now);
            }
            Route::BadPath => self.refuse(key, 400, "room name is not valid percent-encoded UTF-8"),
            Route::Echo => self.upgrade(key, request, reader.into_rest(), Kind::Echo, None, now),
            Route::Hub { room } => {
                self.upgrade(key, request, reader.into_rest(), Kind::Hub, room, now)
            }
        }
    }

    /// A WebSocket route: checks, tungstenite's handshake, then the hub.
    #[allow(clippy::too_many_arguments)]
    fn upgrade(
        &mut self,
        key: usize,
        request: Request,
        rest: Vec<u8>,
        kind: Kind,
        room: Option<String>,
        now: Instant,
    ) {
        let head = &request.head;
        if !head.wants_websocket {
            return self.refuse_with(
                key,
                426,
                "Upgrade: websocket\r\n",
                "this is a WebSocket endpoint: connect with a WebSocket client",
            );
        }
        if let Some(room) = &room {
            if room.is_empty() || room.len() > self.config.hub.max_room_name_len {
                return self.refuse(key, 400, "room name empty or too long");
            }
        }
        if let Err(r) =
            crate::auth::check_origin(&self.config.allowed_origins, head.origin.as_deref())
        {
            return self.refuse(key, r.status, &r.message);
        }
        let identity = match self.auth.identify(
            head.query.as_deref(),
            head.bearer(),
            self.config.hub.max_user_id_len,
            self.wall_clock(),
        ) {
            Ok(identity) => identity,
            Err(r) => {
                let extra = if r.status == 401 {
                    "WWW-Authenticate: Bearer\r\n"
                } else {
                    ""
                };
                return self.refuse_with(key, r.status, extra, &r.message);
            }
        };
        if self.hub.registry().len() >= self.config.max_connections {
            return self.refuse(key, 503, "server at its connection limit, try again later");
        }
        let uptime = self.hub.uptime(now);
        if self.cluster.as_ref().is_some_and(|c| c.starting(uptime)) {
            return self.refuse_with(
                key,
                503,
                "Retry-After: 1\r\n",
                "starting: not connected to the cluster yet, try again in a moment",
            );
        }
        let accept = match run_handshake(request.head_bytes()) {
            Ok(response) => response,
            Err((status, extra, why)) => return self.refuse_with(key, status, extra, &why),
        };
        // Anything after the request (a client that did not wait for the
        // 101) is the start of its first frames.
        let max_message = if kind == Kind::Echo {
            self.config.echo_max_message_size
        } else {
            self.config.hub.max_message_size
        };
        let conn = &mut self.conns[key];
        conn.out.push(accept);
        conn.max_message = max_message;
        conn.set_state(State::Open {
            rx: FrameReader::carrying(rest),
        });
        let id = conn.id;
        self.mark_dirty(key);
        let req = OpenRequest {
            user: identity.user.as_deref(),
            room: room.as_deref(),
            kind,
            grants: identity.grants.clone(),
            expires_at: identity.expires_at.map(|at| self.instant_at(now, at)),
            info: identity.info,
        };
        match self.hub.handle_open(now, id, req) {
            Ok(()) => {
                self.conns[key].in_hub = true;
                let user = identity.user.as_deref().unwrap_or("(anonymous)");
                let in_room = room.as_deref().unwrap_or("-");
                log::info!(
                    conn:% = id, user = user, room = in_room;
                    "{id} open {} user={user} room={in_room}",
                    head.path,
                );
                self.drain_hub();
                // Frames may have come with the request (buffered in `rx`)
                // or be waiting in the socket with no new edge to announce
                // them: read next iteration. A duplicate entry costs one read.
                self.again.push(key);
            }
            Err(reason) => {
                log::info!(conn:% = id, code = reason.code(); "{id} refused after handshake: {reason}");
                self.close_socket(key, reason, None);
            }
        }
    }
}

/// The JavaScript client, embedded in the binary, and its ETag (a hash of
/// the file, computed once).
/// Longest `top_rooms` / `top_users` list of `/api/overview`.
const MAX_TOP: usize = 100;

/// A file embedded in the binary, served with an `ETag` (the FNV-1a hash
/// of its text, computed at compile time): `If-None-Match` → `304`.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    /// Extra header lines, each ending in CRLF.
    headers: &'static str,
    hash: u64,
}

impl Asset {
    const fn new(body: &'static str, content_type: &'static str, headers: &'static str) -> Self {
        let bytes = body.as_bytes();
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        let mut i = 0;
        while i < bytes.len() {
            hash = (hash ^ bytes[i] as u64).wrapping_mul(0x100_0000_01b3);
            i += 1;
        }
        Asset {
            body,
            content_type,
            headers,
            hash,
        }
    }
}

static CLIENT_JS: Asset = Asset::new(
    include_str!("../../clients/js/switchboard.js"),
    "text/javascript; charset=utf-8",
    "Access-Control-Allow-Origin: *\r\n",
);

/// The pages hold no secret; the dashboard asks for the API key and sends
/// it only to this origin. Neither may be framed (the dashboard's buttons
/// act through the API).
static DASHBOARD: Asset = Asset::new(
    include_str!("../pages/dashboard.html"),
    "text/html; charset=utf-8",
    "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'\r\n\
     Referrer-Policy: no-referrer\r\nX-Content-Type-Options: nosniff\r\n",
);

static DEMO: Asset = Asset::new(
    include_str!("../pages/demo.html"),
    "text/html; charset=utf-8",
    "Content-Security-Policy: default-src 'none'; script-src 'self' 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self' ws: wss:; img-src data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'\r\n\
     Referrer-Policy: no-referrer\r\nX-Content-Type-Options: nosniff\r\n",
);

/// Run tungstenite's server handshake over a complete request head held in
/// memory. Returns the `101` response bytes, or the HTTP error to send.
fn run_handshake(head: &[u8]) -> Result<Bytes, (u16, &'static str, String)> {
    let stream = MemStream {
        input: io::Cursor::new(head),
        output: Vec::with_capacity(160),
    };
    match ServerHandshake::start(stream, NoCallback, None).handshake() {
        Ok(ws) => Ok(Bytes::from(ws.into_inner().output)),
        Err(HandshakeError::Failure(WsError::Protocol(e))) => {
            use tungstenite::error::ProtocolError as P;
            match e {
                P::MissingSecWebSocketVersionHeader => Err((
                    426,
                    "Sec-WebSocket-Version: 13\r\n",
                    format!("{e}: only version 13 is supported"),
                )),
                _ => Err((400, "", e.to_string())),
            }
        }
        Err(HandshakeError::Failure(e)) => Err((400, "", e.to_string())),
        Err(HandshakeError::Interrupted(_)) => Err((400, "", "incomplete request".into())),
    }
}

/// The whole request head in, the response out: the handshake never waits on
/// the socket (the head was gathered without blocking; the response is queued).
struct MemStream<'a> {
    input: io::Cursor<&'a [u8]>,
    output: Vec<u8>,
}

impl io::Read for MemStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl io::Write for MemStream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
