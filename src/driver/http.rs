//! The HTTP side of the port: request heads parsed with `httparse` (bounded),
//! routing, and small plain responses.

use bytes::Bytes;

pub use crate::percent::{percent_decode, query_param};

/// Most headers accepted in one request.
const MAX_HEADERS: usize = 48;

/// What a complete request head asked for, with the parts routing needs.
#[derive(Debug)]
pub struct RequestHead {
    pub method: String,
    /// Path without the query, as sent (percent-encoded).
    pub path: String,
    pub query: Option<String>,
    /// `Upgrade: websocket` was present.
    pub wants_websocket: bool,
    /// Length of the head in the buffer (request line, headers, blank line).
    pub len: usize,
    /// `Content-Length` (0 when absent).
    pub content_length: usize,
    /// `Transfer-Encoding: chunked` (not supported: answered with 411).
    pub chunked: bool,
    /// The connection stays open after the response (HTTP/1.1 default).
    pub keep_alive: bool,
    /// `Authorization` header value.
    pub authorization: Option<String>,
    /// `Origin` header value.
    pub origin: Option<String>,
    /// `Content-Type` header value.
    pub content_type: Option<String>,
    /// `If-None-Match` header value.
    pub if_none_match: Option<String>,
}

impl RequestHead {
    /// The bearer token of an `Authorization: Bearer …` header.
    pub fn bearer(&self) -> Option<&str> {
        let value = self.authorization.as_deref()?.trim();
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }
}

/// Outcome of parsing what has arrived so far.
#[derive(Debug)]
pub enum Parse {
    /// Need more bytes.
    Partial,
    /// A complete head.
    Complete(RequestHead),
    /// Malformed: answer with this status and close.
    Bad(u16, &'static str),
}

/// Parse a request head from `buf`.
pub fn parse_head(buf: &[u8]) -> Parse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Parse::Partial,
        Ok(httparse::Status::Complete(len)) => {
            let target = req.path.unwrap_or("/");
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p.to_string(), Some(q.to_string())),
                None => (target.to_string(), None),
            };
            let header = |name: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .map(|v| v.trim().to_string())
            };
            let wants_websocket =
                header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
            let lengths: Vec<&[u8]> = req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| h.value)
                .collect();
            let content_length = match lengths.as_slice() {
                [] => 0,
                [one] => match std::str::from_utf8(one)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                {
                    Some(n) => n,
                    None => return Parse::Bad(400, "invalid Content-Length"),
                },
                _ => return Parse::Bad(400, "more than one Content-Length"),
            };
            let chunked = header("transfer-encoding").is_some_and(|v| !v.is_empty());
            let connection = header("connection")
                .unwrap_or_default()
                .to_ascii_lowercase();
            let keep_alive = match req.version {
                Some(1) => !connection.split(',').any(|t| t.trim() == "close"),
                _ => connection.split(',').any(|t| t.trim() == "keep-alive"),
            };
            Parse::Complete(RequestHead {
                method: req.method.unwrap_or("").to_string(),
                path,
                query,
                wants_websocket,
                len,
                content_length,
                chunked,
                keep_alive,
                authorization: header("authorization"),
                if_none_match: header("if-none-match"),
                origin: header("origin"),
                content_type: header("content-type"),
            })
        }
        Err(httparse::Error::TooManyHeaders) => Parse::Bad(431, "too many headers"),
        Err(_) => Parse::Bad(400, "malformed HTTP request"),
    }
}

/// A route on the one port.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /ws` or `GET /ws/<room>` (room percent-decoded).
    Hub {
        room: Option<String>,
    },
    /// `GET /echo`.
    Echo,
    Healthz,
    Stats,
    Metrics,
    /// The JavaScript client (`clients/js/switchboard.js`, embedded).
    ClientJs,
    /// `GET /dashboard`: the live view of the hub (a page, embedded).
    Dashboard,
    /// `GET /demo`: a chat on the JavaScript client (a page, embedded).
    Demo,
    /// `GET /api/overview`: what the dashboard shows (counters, the
    /// busiest rooms and users, the cluster's nodes).
    Overview,
    /// Anything under `/api/` (the server API for backends).
    Api,
    NotFound,
    /// A room segment that is not valid percent-encoded UTF-8.
    BadPath,
}

/// Map a path to its route.
pub fn route(path: &str) -> Route {
    match path {
        "/ws" | "/ws/" => Route::Hub { room: None },
        "/echo" => Route::Echo,
        "/healthz" => Route::Healthz,
        "/stats" => Route::Stats,
        "/metrics" => Route::Metrics,
        "/client.js" => Route::ClientJs,
        "/dashboard" => Route::Dashboard,
        "/demo" => Route::Demo,
        "/api/overview" => Route::Overview,
        _ if path.starts_with("/api/") => Route::Api,
        _ => match path.strip_prefix("/ws/") {
            Some(room) if !room.contains('/') => match percent_decode(room) {
                Some(room) => Route::Hub {
                    room: Some(room.into_owned()),
                },
                None => Route::BadPath,
            },
            _ => Route::NotFound,
        },
    }
}

/// A complete response; `keep_alive` decides the `Connection` header.
pub fn response(
    status: u16,
    content_type: &str,
    extra_headers: &str,
    body: &[u8],
    keep_alive: bool,
) -> Bytes {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {connection}\r\n{extra_headers}\r\n",
        reason_phrase(status),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// A plain-text response that closes the connection: `body` plus a newline.
pub fn text_response(status: u16, extra_headers: &str, body: &str) -> Bytes {
    let body = format!("{body}\n");
    response(
        status,
        "text/plain; charset=utf-8",
        extra_headers,
        body.as_bytes(),
        false,
    )
}

/// A JSON error body: `{"error": code, "message": message}`.
pub fn json_error(code: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": code, "message": message }))
        .expect("error bodies serialize")
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/ws"), Route::Hub { room: None });
        assert_eq!(
            route("/ws/lobby"),
            Route::Hub {
                room: Some("lobby".into())
            }
        );
        assert_eq!(
            route("/ws/caf%C3%A9"),
            Route::Hub {
                room: Some("café".into())
            }
        );
        assert_eq!(route("/ws/a%2"), Route::BadPath);
        assert_eq!(route("/ws/a/b"), Route::NotFound);
        assert_eq!(route("/echo"), Route::Echo);
        assert_eq!(route("/client.js"), Route::ClientJs);
        assert_eq!(route("/dashboard"), Route::Dashboard);
        assert_eq!(route("/demo"), Route::Demo);
        assert_eq!(route("/api/overview"), Route::Overview);
        assert_eq!(route("/api/overview/x"), Route::Api);
        assert_eq!(route("/nope"), Route::NotFound);
    }

    #[test]
    fn heads_parse_incrementally() {
        let req = b"GET /ws/r?user=u HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\nrest";
        assert!(matches!(parse_head(&req[..20]), Parse::Partial));
        let Parse::Complete(h) = parse_head(req) else {
            panic!()
        };
        assert_eq!(h.path, "/ws/r");
        assert_eq!(h.query.as_deref(), Some("user=u"));
        assert!(h.wants_websocket);
        assert_eq!(&req[h.len..], b"rest");
        assert!(matches!(
            parse_head(b"\x16\x03\x01garbage\r\n\r\n"),
            Parse::Bad(400, _)
        ));
    }
}
