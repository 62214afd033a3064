//! Configuration: defaults, then an optional TOML file, then `SWITCHBOARD_*`
//! environment variables, then command-line flags (each later source wins).
//!
//! Every setting has one name used everywhere: `--ping-interval` on the command
//! line, `SWITCHBOARD_PING_INTERVAL` in the environment, `ping_interval` in the
//! file. Invalid values are refused with a message naming the setting.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::{AuthMode, JwtKey};
pub use crate::hub::HubConfig;

/// Everything the daemon needs: the hub's settings plus sockets, buffers and logging.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on for WebSocket and HTTP.
    pub listen: SocketAddr,
    /// The pure core's settings.
    pub hub: HubConfig,
    /// Total open connections (handshaking included); over it the handshake gets 503.
    pub max_connections: usize,
    /// Completed TCP connections the kernel queues for `accept` (capped by
    /// `net.core.somaxconn`). Too small a queue drops SYNs in a burst, and
    /// each dropped SYN costs its client a one-second retransmission.
    pub listen_backlog: u32,
    /// Largest message on the `/echo` route (separate from the hub's limit).
    pub echo_max_message_size: usize,
    /// Bytes queued for one client before it is a slow consumer (close 4101).
    pub max_output_queue: usize,
    /// A handshake (or plain HTTP request) must complete within this time.
    pub handshake_timeout: Duration,
    /// Largest HTTP request head (request line + headers) accepted, in bytes.
    pub max_request_head: usize,
    /// After sending a close frame, wait this long for the peer before dropping it.
    pub close_timeout: Duration,
    /// Graceful shutdown: how long to wait for close frames to flush.
    pub shutdown_timeout: Duration,
    /// Log level: off, error, warn, info, debug, trace.
    pub log_level: log::LevelFilter,
    /// `--tls-cert`/`--tls-key`: PEM files; with both, the port speaks TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `text` lines or `json` objects (one a line).
    pub log_format: crate::logging::LogFormat,
    /// Largest HTTP request body (server API), in bytes (413 beyond).
    pub max_request_body: usize,
    /// Key for `/api/*` and `/stats` (`Authorization: Bearer KEY`); none: open.
    pub api_key: Option<Secret>,
    /// Put `/metrics` behind the API key too.
    pub metrics_require_key: bool,
    /// `SO_REUSEPORT`: several processes (one per core) share one address.
    pub reuse_port: bool,
    /// This node's name (default: the listen address); its id adds a random
    /// part drawn at every start.
    pub node_name: Option<String>,
    /// Cluster mode: one Redis per shard (empty: a single node).
    pub cluster: Vec<RedisUrl>,
    /// The start of every Redis key and channel name.
    pub cluster_prefix: String,
    /// Bytes of commands one Redis link may hold unsent; past it a publish
    /// is dropped (and counted), never queued without limit.
    pub cluster_max_pending: usize,
    /// Browser origins allowed to open WebSockets (empty: any).
    pub allowed_origins: Vec<String>,
    /// `none` (trust `?user=`) or `jwt` (HS256 token required).
    pub auth: AuthMode,
    /// HS256 keys: an untagged secret and/or `kid:secret` entries.
    pub jwt_keys: Vec<JwtKey>,
    /// Clock leeway for `exp`/`nbf`, in seconds.
    pub jwt_leeway: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("valid default address"),
            hub: HubConfig::default(),
            max_connections: 10_000,
            listen_backlog: 4096,
            echo_max_message_size: 64 * 1024,
            max_output_queue: 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            max_request_head: 8 * 1024,
            close_timeout: Duration::from_secs(2),
            shutdown_timeout: Duration::from_secs(5),
            log_level: log::LevelFilter::Info,
            log_format: crate::logging::LogFormat::Text,
            tls_cert: None,
            tls_key: None,
            max_request_body: 1024 * 1024,
            api_key: None,
            metrics_require_key: false,
            allowed_origins: Vec::new(),
            reuse_port: false,
            node_name: None,
            cluster: Vec::new(),
            cluster_prefix: "switchboard".into(),
            cluster_max_pending: 16 * 1024 * 1024,
            auth: AuthMode::None,
            jwt_keys: Vec::new(),
            jwt_leeway: 5,
        }
    }
}

/// A secret setting (the API key): `Debug` shows `<redacted>`, so logging
/// the settings never prints it; [`Secret::expose`] is the one way to read it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for comparison with what a client presents.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A Redis server: `redis://[user:password@]host:port[/db]`. Its
/// `Debug` and `Display` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub db: u32,
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.0 == other.0
    }
}

impl Eq for Secret {}

impl RedisUrl {
    /// Parse one URL; the reason it is refused never quotes it.
    pub fn parse(url: &str) -> Result<RedisUrl, String> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or("must start with redis:// (TLS to Redis is not supported)")?;
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (Some(auth), rest),
            None => (None, rest),
        };
        let (hostport, db) = match rest.split_once('/') {
            Some((h, "")) => (h, 0),
            Some((h, db)) => (h, db.parse().map_err(|_| "the database is not a number")?),
            None => (rest, 0),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or("an unclosed [ in the host")?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| "the port is not a number")?,
            None => 6379,
        };
        let decode = |s: &str| {
            crate::percent::percent_decode(s)
                .map(|c| c.into_owned())
                .ok_or("a broken %-escape in the user or password")
        };
        let (user, password) = match auth {
            None => (None, None),
            Some(auth) => match auth.split_once(':') {
                Some((u, p)) => (
                    (!u.is_empty()).then(|| decode(u)).transpose()?,
                    Some(Secret::new(decode(p)?)),
                ),
                None => return Err("a user needs a password (redis://user:password@host)".into()),
            },
        };
        Ok(RedisUrl {
            host: host.to_string(),
            port,
            user,
            password,
            db,
        })
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("redis://")?;
        match (&self.user, &self.password) {
            (Some(u), Some(_)) => write!(f, "{u}:<redacted>@")?,
            (None, Some(_)) => f.write_str(":<redacted>@")?,
            (Some(u), None) => write!(f, "{u}@")?,
            (None, None) => {}
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}/{}", self.host, self.port, self.db)
        } else {
            write!(f, "{}:{}/{}", self.host, self.port, self.db)
        }
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Shortest HS256 key: RFC 7518 §3.2 asks for a key at least as long as
/// the hash output (256 bits).
pub const MIN_HS256_KEY: usize = 32;

/// A setting that could not be applied: names the setting and says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The setting (`ping_interval`), file or flag concerned.
    pub setting: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid setting `{}`: {}", self.setting, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// One documented setting: its name, its help line and its default (for `--help`).
pub struct Setting {
    pub name: &'static str,
    pub value: &'static str,
    pub help: &'static str,
    pub default: &'static str,
}

/// Every setting, in the order `--help` lists them.
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: "listen",
        value: "ADDR:PORT",
        help: "address for WebSocket and HTTP",
        default: "127.0.0.1:8080",
    },
    Setting {
        name: "ping_interval",
        value: "SECS",
        help: "protocol Ping after this much client silence",
        default: "30",
    },
    Setting {
        name: "ping_timeout",
        value: "SECS",
        help: "close (4100) after interval + timeout of silence",
        default: "10",
    },
    Setting {
        name: "max_connections",
        value: "N",
        help: "total connections; over it the handshake gets 503",
        default: "10000",
    },
    Setting {
        name: "reuse_port",
        value: "BOOL",
        help: "SO_REUSEPORT: N processes share one address (one per core)",
        default: "false",
    },
    Setting {
        name: "node_name",
        value: "NAME",
        help: "this node's name; its id adds a random part at every start",
        default: "the listen address",
    },
    Setting {
        name: "cluster",
        value: "URLS",
        help: "cluster mode: comma-separated redis://[user:password@]host:port[/db], one per shard",
        default: "empty (a single node)",
    },
    Setting {
        name: "cluster_prefix",
        value: "P",
        help: "start of every Redis key and channel name (apps may share a Redis)",
        default: "switchboard",
    },
    Setting {
        name: "cluster_max_pending",
        value: "BYTES",
        help: "commands one Redis link may hold unsent; past it publishes are dropped and counted",
        default: "16777216",
    },
    Setting {
        name: "listen_backlog",
        value: "N",
        help: "accept queue length (the kernel caps it at net.core.somaxconn)",
        default: "4096",
    },
    Setting {
        name: "max_connections_per_user",
        value: "N",
        help: "connections per user; the next is closed with 1008",
        default: "5",
    },
    Setting {
        name: "max_rooms_per_connection",
        value: "N",
        help: "rooms one connection may be in",
        default: "100",
    },
    Setting {
        name: "max_room_name_len",
        value: "BYTES",
        help: "longest room name",
        default: "128",
    },
    Setting {
        name: "max_user_id_len",
        value: "BYTES",
        help: "longest user id",
        default: "128",
    },
    Setting {
        name: "max_info_bytes",
        value: "BYTES",
        help: "largest connection info (a JSON object from the token or ?info=)",
        default: "1024",
    },
    Setting {
        name: "max_message_size",
        value: "BYTES",
        help: "largest client message (over it: close 1009)",
        default: "65536",
    },
    Setting {
        name: "echo_max_message_size",
        value: "BYTES",
        help: "largest message on /echo",
        default: "65536",
    },
    Setting {
        name: "max_output_queue",
        value: "BYTES",
        help: "queued bytes per client before close 4101 (slow consumer)",
        default: "1048576",
    },
    Setting {
        name: "presence_announce_limit",
        value: "N",
        help: "announce user_joined/user_left only in rooms up to N users",
        default: "100",
    },
    Setting {
        name: "member_list_limit",
        value: "N",
        help: "longest user list in joined/presence replies",
        default: "100",
    },
    Setting {
        name: "history_size",
        value: "N",
        help: "messages of history kept per room, for recovery after a reconnect (0: off)",
        default: "0",
    },
    Setting {
        name: "history_ttl",
        value: "SECS",
        help: "a room's history is dropped this long after its last message",
        default: "300",
    },
    Setting {
        name: "history_rooms",
        value: "PATTERNS",
        help: "rooms that keep history: comma-separated names or prefix*",
        default: "*",
    },
    Setting {
        name: "history_max_bytes",
        value: "BYTES",
        help: "history over all rooms; past it the oldest rooms' histories are dropped",
        default: "67108864",
    },
    Setting {
        name: "max_recover",
        value: "N",
        help: "most messages one join with since replays (more missed: recovered false)",
        default: "300",
    },
    Setting {
        name: "rate_limit",
        value: "PER_SEC",
        help: "messages per second per connection on average (0: off)",
        default: "1000",
    },
    Setting {
        name: "rate_burst",
        value: "N",
        help: "messages a connection may send at once above the average",
        default: "2000",
    },
    Setting {
        name: "rate_limit_close_after",
        value: "N",
        help: "refused (rate_limited) messages in a row before close 4102",
        default: "100",
    },
    Setting {
        name: "handshake_timeout",
        value: "SECS",
        help: "deadline for a handshake or HTTP request",
        default: "10",
    },
    Setting {
        name: "max_request_head",
        value: "BYTES",
        help: "largest HTTP request line + headers (over it: 431)",
        default: "8192",
    },
    Setting {
        name: "close_timeout",
        value: "SECS",
        help: "wait for the peer's close after ours",
        default: "2",
    },
    Setting {
        name: "shutdown_timeout",
        value: "SECS",
        help: "graceful shutdown deadline",
        default: "5",
    },
    Setting {
        name: "max_request_body",
        value: "BYTES",
        help: "largest server-API request body (413 beyond)",
        default: "1048576",
    },
    Setting {
        name: "api_key",
        value: "KEY",
        help: "key for /api/* and /stats (Authorization: Bearer KEY)",
        default: "none: open",
    },
    Setting {
        name: "metrics_require_key",
        value: "BOOL",
        help: "put /metrics behind the API key too",
        default: "false",
    },
    Setting {
        name: "allowed_origins",
        value: "LIST",
        help: "comma-separated browser origins allowed (403 otherwise)",
        default: "any",
    },
    Setting {
        name: "auth",
        value: "MODE",
        help: "none (trust ?user=) or jwt (HS256 token required)",
        default: "none",
    },
    Setting {
        name: "jwt_secret",
        value: "SECRET",
        help: "HS256 key for tokens without a kid",
        default: "none",
    },
    Setting {
        name: "jwt_keys",
        value: "LIST",
        help: "more HS256 keys for rotation: kid:secret,kid:secret",
        default: "none",
    },
    Setting {
        name: "jwt_leeway",
        value: "SECS",
        help: "clock leeway for exp and nbf",
        default: "5",
    },
    Setting {
        name: "token_expired_code",
        value: "CODE",
        help: "close code when a token expires while connected",
        default: "4001",
    },
    Setting {
        name: "tls_cert",
        value: "FILE",
        help: "PEM certificate chain: with --tls-key the port serves wss:// and https:// (SIGHUP reloads)",
        default: "none: plain ws:// and http://",
    },
    Setting {
        name: "tls_key",
        value: "FILE",
        help: "PEM private key of --tls-cert",
        default: "none",
    },
    Setting {
        name: "log_level",
        value: "LEVEL",
        help: "off, error, warn, info, debug, trace",
        default: "info",
    },
    Setting {
        name: "log_format",
        value: "FORMAT",
        help: "text, or json (one object a line: time, level, target, message, fields)",
        default: "text",
    },
];

/// What the command line asked for.
pub enum Command {
    /// Run the daemon with this configuration.
    Run(Box<Config>),
    /// `--check-config`: the configuration as far as it could be built,
    /// and every problem found (none: it is valid). Nothing is bound.
    Check(Box<Config>, Vec<ConfigError>),
    /// Print this help text and exit 0.
    Help(String),
    /// Print the version and exit 0.
    Version,
}

impl Config {
    /// Apply one setting by its canonical name (`ping_interval`).
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
        let err = |message: String| ConfigError {
            setting: name.to_string(),
            message,
        };
        let value = value.trim();
        match name {
            "listen" => {
                self.listen = value.parse().map_err(|_| {
                    err(format!(
                        "`{value}` is not an ADDR:PORT such as 127.0.0.1:8080"
                    ))
                })?
            }
            "ping_interval" => self.hub.ping_interval = secs(value, 0.01).map_err(err)?,
            "ping_timeout" => self.hub.ping_timeout = secs(value, 0.01).map_err(err)?,
            "handshake_timeout" => self.handshake_timeout = secs(value, 0.01).map_err(err)?,
            "close_timeout" => self.close_timeout = secs(value, 0.0).map_err(err)?,
            "shutdown_timeout" => self.shutdown_timeout = secs(value, 0.0).map_err(err)?,
            "max_connections" => self.max_connections = count(value, 1).map_err(err)?,
            "listen_backlog" => {
                self.listen_backlog = count(value, 1).map_err(err)?.min(i32::MAX as usize) as u32
            }
            "max_connections_per_user" => {
                self.hub.max_connections_per_user = count(value, 1).map_err(err)?
            }
            "max_rooms_per_connection" => {
                self.hub.max_rooms_per_connection = count(value, 1).map_err(err)?
            }
            "max_room_name_len" => self.hub.max_room_name_len = count(value, 1).map_err(err)?,
            "max_user_id_len" => self.hub.max_user_id_len = count(value, 1).map_err(err)?,
            "max_info_bytes" => self.hub.max_info_bytes = count(value, 2).map_err(err)?,
            "max_message_size" => self.hub.max_message_size = count(value, 64).map_err(err)?,
            "echo_max_message_size" => {
                self.echo_max_message_size = count(value, 64).map_err(err)?
            }
            "max_output_queue" => {
                self.max_output_queue = count(value, 1024).map_err(err)?;
                // A recovery or history reply fits in half the queue.
                self.hub.max_replay_bytes = self.max_output_queue / 2;
            }
            "history_size" => self.hub.history_size = count(value, 0).map_err(err)?,
            "history_ttl" => self.hub.history_ttl = secs(value, 1.0).map_err(err)?,
            "history_rooms" => {
                let patterns: Vec<String> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(String::from)
                    .collect();
                if patterns.is_empty() {
                    return Err(err(
                        "name at least one room or pattern (`*` is every room)".into()
                    ));
                }
                self.hub.history_rooms = crate::hub::RoomPatterns::new(patterns);
            }
            "history_max_bytes" => self.hub.history_max_bytes = count(value, 1024).map_err(err)?,
            "max_recover" => self.hub.max_recover = count(value, 0).map_err(err)?,
            "presence_announce_limit" => {
                self.hub.presence_announce_limit = count(value, 0).map_err(err)?
            }
            "member_list_limit" => self.hub.member_list_limit = count(value, 0).map_err(err)?,
            "rate_limit" => {
                let n: f64 = value
                    .parse()
                    .map_err(|_| err(format!("`{value}` is not a number")))?;
                if !(0.0..=1e9).contains(&n) {
                    return Err(err(format!("{value} is out of range (0 to 1e9)")));
                }
                self.hub.rate_limit = n;
            }
            "rate_burst" => {
                self.hub.rate_burst = count(value, 1).map_err(err)?.min(u32::MAX as usize) as u32
            }
            "rate_limit_close_after" => {
                self.hub.rate_limit_close_after =
                    count(value, 0).map_err(err)?.min(u32::MAX as usize) as u32
            }
            "max_request_head" => {
                self.max_request_head = count(value, 512).map_err(err)?;
                if self.max_request_head > 65536 {
                    return Err(err("at most 65536".into()));
                }
            }
            "max_request_body" => self.max_request_body = count(value, 0).map_err(err)?,
            "api_key" => {
                if value.len() < 16 {
                    return Err(err("must be at least 16 characters".into()));
                }
                self.api_key = Some(Secret::new(value));
            }
            "metrics_require_key" => self.metrics_require_key = boolean(value).map_err(err)?,
            "reuse_port" => self.reuse_port = boolean(value).map_err(err)?,
            "node_name" => {
                // The id adds `-` and 8 hex digits: at most 64 in all.
                if !crate::hub::cluster::valid_node_name(value) || value.len() > 55 {
                    return Err(err(
                        "1 to 55 letters, digits and . _ : - (it names Redis keys)".into(),
                    ));
                }
                self.node_name = Some(value.to_string());
            }
            "cluster" => {
                self.cluster = value
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .enumerate()
                    .map(|(i, u)| {
                        // Never quote the URL: it may hold a password.
                        RedisUrl::parse(u).map_err(|why| err(format!("URL {}: {why}", i + 1)))
                    })
                    .collect::<Result<_, _>>()?;
                if self.cluster.len() > 64 {
                    return Err(err("at most 64 shards".into()));
                }
                self.hub.cluster = !self.cluster.is_empty();
            }
            "cluster_prefix" => {
                // No `:`: it separates the prefix from the rest of a name,
                // so no prefix is the start of another's key space.
                if !crate::hub::cluster::valid_node_name(value) || value.contains(':') {
                    return Err(err("1 to 64 letters, digits and . _ -".into()));
                }
                self.cluster_prefix = value.to_string();
            }
            "cluster_max_pending" => {
                self.cluster_max_pending = count(value, 64 * 1024).map_err(err)?
            }
            "allowed_origins" => {
                self.allowed_origins = value
                    .split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_string())
                    .filter(|o| !o.is_empty())
                    .collect()
            }
            "auth" => {
                self.auth = match value {
                    "none" => AuthMode::None,
                    "jwt" => AuthMode::Jwt,
                    _ => return Err(err(format!("`{value}` is not none or jwt"))),
                }
            }
            "jwt_secret" => {
                if value.len() < MIN_HS256_KEY {
                    return Err(err(format!(
                        "must be at least {MIN_HS256_KEY} bytes (RFC 7518 §3.2: an HS256 key \
                         is at least as long as the 256-bit hash), this one has {}",
                        value.len()
                    )));
                }
                self.jwt_keys.retain(|k| k.kid.is_some());
                self.jwt_keys.push(JwtKey {
                    kid: None,
                    secret: value.as_bytes().to_vec(),
                });
            }
            "jwt_keys" => {
                self.jwt_keys.retain(|k| k.kid.is_none());
                // Entries are named by position (among the comma-separated
                // fields): a kid typed wrong may be part of a secret.
                let entries = value.split(',').map(str::trim).enumerate();
                for (n, entry) in entries
                    .filter(|(_, e)| !e.is_empty())
                    .map(|(i, e)| (i + 1, e))
                {
                    let Some((kid, secret)) = entry.split_once(':') else {
                        return Err(err(format!("entry {n}: entries are kid:secret")));
                    };
                    if kid.is_empty() {
                        return Err(err(format!("entry {n}: the kid is empty (kid:secret)")));
                    }
                    if secret.len() < MIN_HS256_KEY {
                        return Err(err(format!(
                            "entry {n}: the secret must be at least {MIN_HS256_KEY} bytes \
                             (RFC 7518 §3.2: an HS256 key is at least as long as the 256-bit \
                             hash), this one has {}",
                            secret.len()
                        )));
                    }
                    let key = JwtKey {
                        kid: Some(kid.to_string()),
                        secret: secret.as_bytes().to_vec(),
                    };
                    self.jwt_keys.push(key);
                }
            }
            "jwt_leeway" => self.jwt_leeway = count(value, 0).map_err(err)? as u64,
            "token_expired_code" => {
                let code = count(value, 1000).map_err(err)?;
                if !(4000..5000).contains(&code) {
                    return Err(err("must be in 4000-4999".into()));
                }
                self.hub.token_expired_code = code as u16;
            }
            "log_level" => {
                self.log_level = value.parse().map_err(|_| {
                    err(format!(
                        "`{value}` is not one of off, error, warn, info, debug, trace"
                    ))
                })?
            }
            "tls_cert" | "tls_key" => {
                if value.is_empty() {
                    return Err(err("needs a file name".into()));
                }
                let path = Some(PathBuf::from(value));
                if name == "tls_cert" {
                    self.tls_cert = path;
                } else {
                    self.tls_key = path;
                }
            }
            "log_format" => {
                self.log_format = match value {
                    "text" => crate::logging::LogFormat::Text,
                    "json" => crate::logging::LogFormat::Json,
                    _ => return Err(err(format!("`{value}` is not text or json"))),
                }
            }
            _ => return Err(err("unknown setting".to_string())),
        }
        Ok(())
    }

    /// Apply every `key = value` of a TOML document.
    pub fn apply_toml(&mut self, text: &str, origin: &str) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        self.apply_toml_all(text, origin, &mut errors);
        errors.into_iter().next().map_or(Ok(()), Err)
    }

    /// [`Config::apply_toml`], going on past a bad setting: every problem
    /// lands in `errors`.
    fn apply_toml_all(&mut self, text: &str, origin: &str, errors: &mut Vec<ConfigError>) {
        // Not `e.to_string()`: toml's full error quotes the offending line,
        // which may hold a secret.
        let table: toml::Table = match toml::from_str(text).map_err(|e| {
            let line = e.span().map(|span| {
                1 + text
                    .bytes()
                    .take(span.start)
                    .filter(|&b| b == b'\n')
                    .count()
            });
            ConfigError {
                setting: origin.to_string(),
                message: match line {
                    Some(line) => format!("line {line}: {}", e.message()),
                    None => e.message().to_string(),
                },
            }
        }) {
            Ok(table) => table,
            Err(e) => return errors.push(e),
        };
        for (key, value) in &table {
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => {
                    errors.push(ConfigError {
                        setting: key.clone(),
                        message: format!("in {origin}: expected a string or a number"),
                    });
                    continue;
                }
            };
            if let Err(e) = self.set(key, &text) {
                errors.push(e);
            }
        }
    }

    /// Apply `SWITCHBOARD_<NAME>` variables from `vars` (usually `std::env::vars()`).
    pub fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        self.apply_env_all(vars, &mut errors);
        errors.into_iter().next().map_or(Ok(()), Err)
    }

    fn apply_env_all(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
        errors: &mut Vec<ConfigError>,
    ) {
        for (key, value) in vars {
            let Some(name) = key.strip_prefix("SWITCHBOARD_") else {
                continue;
            };
            if name == "CONFIG" {
                continue;
            }
            if let Err(mut e) = self.set(&name.to_ascii_lowercase(), &value) {
                e.setting = key.clone();
                errors.push(e);
            }
        }
    }

    /// The files the settings name (the TLS certificate and key), loaded
    /// as the daemon would: each problem, naming the file, never its content.
    pub fn check_files(&self) -> Vec<ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => match crate::driver::tls::load(cert, key) {
                Ok(_) => Vec::new(),
                Err(message) => vec![ConfigError {
                    setting: "tls".into(),
                    message,
                }],
            },
            _ => Vec::new(),
        }
    }

    /// Cross-setting checks, run once every source has been applied.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every cross-setting problem ([`Config::validate`] gives the first).
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            problems.push(ConfigError {
                setting: "tls_cert".into(),
                message: "--tls-cert and --tls-key go together: give both, or neither".into(),
            });
        }
        if self.auth == AuthMode::Jwt && self.jwt_keys.is_empty() {
            problems.push(ConfigError {
                setting: "jwt_secret".into(),
                message: "--auth jwt needs --jwt-secret or --jwt-keys".into(),
            });
        }
        if self.auth == AuthMode::None && !self.jwt_keys.is_empty() {
            // Keys without `--auth jwt` would be ignored and `?user=` believed:
            // almost certainly not what whoever set them meant.
            problems.push(ConfigError {
                setting: "auth".into(),
                message: "--jwt-secret/--jwt-keys are set but --auth is none (tokens would be \
                          ignored and ?user= trusted): set --auth jwt, or remove the keys"
                    .into(),
            });
        }
        if self.metrics_require_key && self.api_key.is_none() {
            problems.push(ConfigError {
                setting: "metrics_require_key".into(),
                message: "--metrics-require-key true needs --api-key (without one, /metrics \
                          would stay open)"
                    .into(),
            });
        }
        if self.max_output_queue < self.hub.max_message_size.min(64 * 1024) {
            problems.push(ConfigError {
                setting: "max_output_queue".into(),
                message: "must be at least min(max_message_size, 65536)".into(),
            });
        }
        problems
    }

    /// Build the configuration from command-line arguments (without the program
    /// name), the environment and the file named by `--config` or `SWITCHBOARD_CONFIG`.
    pub fn from_args_and_env(
        args: impl IntoIterator<Item = std::ffi::OsString>,
        env: Vec<(String, String)>,
    ) -> Result<Command, ConfigError> {
        use lexopt::prelude::*;
        let mut parser = lexopt::Parser::from_args(args);
        let mut flags: Vec<(String, String)> = Vec::new();
        let mut file: Option<PathBuf> = env
            .iter()
            .find(|(k, _)| k == "SWITCHBOARD_CONFIG")
            .map(|(_, v)| PathBuf::from(v));
        // lexopt's own messages quote the argument, which may be a secret
        // (`--metrics-require-key --api-key KEY` makes KEY a stray argument).
        let bad = |setting: &str, e: lexopt::Error| ConfigError {
            setting: setting.to_string(),
            message: match e {
                lexopt::Error::MissingValue { .. } => "needs a value".into(),
                lexopt::Error::NonUnicodeValue(_) => "is not valid UTF-8".into(),
                _ => "an argument that is not `--setting VALUE` (see --help)".into(),
            },
        };
        let mut check = false;
        while let Some(arg) = parser.next().map_err(|e| bad("command line", e))? {
            match arg {
                Short('h') | Long("help") => return Ok(Command::Help(help_text())),
                Short('V') | Long("version") => return Ok(Command::Version),
                Long("check-config") => check = true,
                Long("config") => file = Some(parser.value().map_err(|e| bad("config", e))?.into()),
                Long(flag) => {
                    let name = flag.replace('-', "_");
                    if !SETTINGS.iter().any(|s| s.name == name) {
                        return Err(ConfigError {
                            setting: format!("--{flag}"),
                            message: "unknown flag (see --help)".into(),
                        });
                    }
                    let value = parser.value().map_err(|e| bad(&name, e))?;
                    let value = value.string().map_err(|e| bad(&name, e))?;
                    flags.push((name, value));
                }
                other => return Err(bad("command line", other.unexpected())),
            }
        }
        let mut config = Config::default();
        let mut errors = Vec::new();
        if let Some(path) = file {
            let origin = path.display().to_string();
            match std::fs::read_to_string(&path) {
                Ok(text) => config.apply_toml_all(&text, &origin, &mut errors),
                Err(e) => errors.push(ConfigError {
                    setting: "config".into(),
                    message: format!("cannot read {origin}: {e}"),
                }),
            }
        }
        config.apply_env_all(env, &mut errors);
        for (name, value) in &flags {
            if let Err(mut e) = config.set(name, value) {
                e.setting = format!("--{}", name.replace('_', "-"));
                errors.push(e);
            }
        }
        // `--check-config` names every problem; a run stops at the first.
        if errors.is_empty() || check {
            errors.extend(config.problems());
            errors.extend(config.check_files());
        }
        if check {
            return Ok(Command::Check(Box::new(config), errors));
        }
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(Command::Run(Box::new(config))),
        }
    }
}

/// The `--help` text, generated from [`SETTINGS`].
pub fn help_text() -> String {
    let mut out = String::from(
        "switchboard — a WebSocket hub: rooms, users, presence, heartbeats and limits\n\n\
         Usage: switchboard [OPTIONS]\n\n\
         Routes: /ws, /ws/<room>, /echo (WebSocket); /healthz, /stats, /metrics, /api/*, /client.js, /dashboard, /demo (HTTP)\n\n\
         Options (each also SWITCHBOARD_<NAME> in the environment and <name> in the TOML file):\n",
    );
    for s in SETTINGS {
        let flag = format!("--{} {}", s.name.replace('_', "-"), s.value);
        out.push_str(&format!(
            "  {flag:<36} {} [default: {}]\n",
            s.help, s.default
        ));
    }
    out.push_str(&format!(
        "  {:<36} {}\n",
        "--config FILE", "read settings from a TOML file"
    ));
    out.push_str(&format!(
        "  {:<36} {}\n",
        "--check-config",
        "check every setting (and the files they name), print the problems, exit 0 or 2; bind nothing"
    ));
    out.push_str(&format!("  {:<36} {}\n", "-h, --help", "print this help"));
    out.push_str(&format!(
        "  {:<36} {}\n",
        "-V, --version", "print the version"
    ));
    out
}

/// `packaging/switchboard.example.toml`: every setting with its help line
/// and default (settings whose default is no value, such as `api_key`,
/// commented out). A test keeps the file equal to this.
pub fn example_toml() -> String {
    let mut out = String::from(
        "# switchboard: every setting, with its default. Use it with\n\
         #   switchboard --config /etc/switchboard/switchboard.toml\n\
         # and check it first with --check-config. Each setting is also a flag\n\
         # (--name-with-dashes) and an environment variable (SWITCHBOARD_NAME);\n\
         # flags beat the environment, which beats this file.\n",
    );
    for s in SETTINGS {
        out.push_str(&format!("\n# {} [default: {}]\n", s.help, s.default));
        let literal = |v: &str| {
            let bare = v.parse::<f64>().is_ok() || v == "true" || v == "false";
            if bare {
                v.to_string()
            } else {
                format!("{v:?}")
            }
        };
        // A file setting's default is no file.
        if s.value != "FILE" && Config::default().set(s.name, s.default).is_ok() {
            out.push_str(&format!("{} = {}\n", s.name, literal(s.default)));
        } else {
            out.push_str(&format!("# {} = {}\n", s.name, literal(s.value)));
        }
    }
    out
}

fn boolean(value: &str) -> Result<bool, String> {
    match value {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("`{value}` is not true or false")),
    }
}

fn secs(value: &str, min: f64) -> Result<Duration, String> {
    let n: f64 = value
        .parse()
        .map_err(|_| format!("`{value}` is not a number of seconds"))?;
    if !n.is_finite() || n < min || n > 86_400.0 {
        return Err(format!("{value} is out of range ({min} to 86400 seconds)"));
    }
    Ok(Duration::from_secs_f64(n))
}

/// Largest count or size any setting takes (2^40 − 1 on 64-bit targets: a
/// trillion connections, a terabyte; 2^24 − 1 on 32-bit ones), so that sums
/// of settings never overflow.
const MAX_COUNT: usize = usize::MAX >> (usize::BITS / 2 - 8);

fn count(value: &str, min: usize) -> Result<usize, String> {
    let n: usize = value
        .parse()
        .map_err(|_| format!("`{value}` is not a whole number"))?;
    if n < min {
        return Err(format!("{n} is below the minimum of {min}"));
    }
    if n > MAX_COUNT {
        return Err(format!("{n} is above the maximum of {MAX_COUNT}"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Command, ConfigError> {
        Config::from_args_and_env(
            args.iter().map(|a| a.into()),
            env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn run(args: &[&str], env: &[(&str, &str)]) -> Config {
        match parse(args, env).unwrap() {
            Command::Run(c) => *c,
            _ => panic!("expected a run command"),
        }
    }

    #[test]
    fn defaults_are_documented_values() {
        let c = run(&[], &[]);
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.hub.ping_interval, Duration::from_secs(30));
        assert_eq!(c.hub.max_connections_per_user, 5);
        assert_eq!(c.hub.max_message_size, 65536);
        assert_eq!(c.max_output_queue, 1 << 20);
        assert_eq!(c.listen_backlog, 4096);
        assert_eq!(c.hub.history_size, 0);
        assert_eq!(c.hub.history_ttl, Duration::from_secs(300));
        assert_eq!(c.hub.history_max_bytes, 64 << 20);
        assert_eq!(c.hub.max_recover, 300);
        assert_eq!(c.hub.max_replay_bytes, c.max_output_queue / 2);
        assert!(c.hub.history_rooms.matches("any room"));
        let d = run(
            &[
                "--history-rooms",
                "chat:*, news",
                "--max-output-queue",
                "65536",
            ],
            &[],
        );
        assert!(d.hub.history_rooms.matches("chat:1") && d.hub.history_rooms.matches("news"));
        assert!(!d.hub.history_rooms.matches("newsroom") && !d.hub.history_rooms.matches("chat"));
        assert_eq!(d.hub.max_replay_bytes, 32768);
        let descriptive = [
            "api_key",
            "allowed_origins",
            "jwt_secret",
            "jwt_keys",
            "node_name",
            "cluster",
        ];
        for s in SETTINGS.iter().filter(|s| !descriptive.contains(&s.name)) {
            let mut probe = Config::default();
            probe.set(s.name, s.default).unwrap();
        }
    }

    #[test]
    fn redis_urls_parse_and_never_show_their_password() {
        let u = RedisUrl::parse("redis://app:s3cr%40t@10.0.0.5:6380/2").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.user.as_deref(), u.db),
            ("10.0.0.5", 6380, Some("app"), 2)
        );
        assert_eq!(u.password.as_ref().map(Secret::expose), Some("s3cr@t"));
        assert_eq!(u.to_string(), "redis://app:<redacted>@10.0.0.5:6380/2");
        assert!(!format!("{u:?}").contains("s3cr"));
        let u = RedisUrl::parse("redis://:pw@[::1]").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.user.is_none()),
            ("::1", 6379, true)
        );
        assert_eq!(u.to_string(), "redis://:<redacted>@[::1]:6379/0");
        for bad in [
            "http://x",
            "redis://",
            "redis://h:port",
            "redis://h/db",
            "redis://:%zz@h",
        ] {
            assert!(RedisUrl::parse(bad).is_err(), "{bad}");
        }
        // A refused URL is named by position, never quoted.
        let Err(e) = parse(
            &["--cluster", "redis://127.0.0.1,redis://:hunter2@h:x"],
            &[],
        ) else {
            panic!("accepted")
        };
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("URL 2"), "{e}");
        let c = run(&["--cluster", "redis://a:1, redis://b:2"], &[]);
        assert_eq!(c.cluster.len(), 2);
        assert!(c.hub.cluster);
        assert!(!run(&[], &[]).hub.cluster);
        assert!(parse(&["--node-name", "a b"], &[]).is_err());
        assert!(parse(&["--cluster-prefix", "a:b"], &[]).is_err());
    }

    #[test]
    fn flags_override_env_which_override_file() {
        let dir = std::env::temp_dir().join(format!("sb-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "ping_interval = 5\nmax_connections = 7\nlog_level = \"debug\"\n",
        )
        .unwrap();
        let c = run(
            &["--config", file.to_str().unwrap(), "--ping-interval", "2.5"],
            &[
                ("SWITCHBOARD_MAX_CONNECTIONS", "9"),
                ("SWITCHBOARD_PING_INTERVAL", "4"),
            ],
        );
        assert_eq!(c.hub.ping_interval, Duration::from_millis(2500));
        assert_eq!(c.max_connections, 9);
        assert_eq!(c.log_level, log::LevelFilter::Debug);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn invalid_values_name_the_setting() {
        let e = parse(&["--ping-interval", "soon"], &[]).err().unwrap();
        assert_eq!(e.setting, "--ping-interval");
        let e = parse(&[], &[("SWITCHBOARD_MAX_CONNECTIONS", "-1")])
            .err()
            .unwrap();
        assert_eq!(e.setting, "SWITCHBOARD_MAX_CONNECTIONS");
        let e = parse(&["--listen", "nowhere"], &[]).err().unwrap();
        assert!(e.to_string().contains("listen"), "{e}");
        let e = parse(&["--frobnicate", "1"], &[]).err().unwrap();
        assert_eq!(e.setting, "--frobnicate");
        let e = parse(&["--max-connections-per-user", "0"], &[])
            .err()
            .unwrap();
        assert!(e.message.contains("minimum"));
        let e = parse(&["--listen-backlog", "0"], &[]).err().unwrap();
        assert_eq!(e.setting, "--listen-backlog");
        let c = run(&["--listen-backlog", "99999999999"], &[]);
        assert_eq!(
            c.listen_backlog,
            i32::MAX as u32,
            "clamped to what listen(2) takes"
        );
    }

    #[test]
    fn sizes_are_bounded_so_sums_never_overflow() {
        let e = parse(&["--max-request-body", "18446744073709551615"], &[])
            .err()
            .unwrap();
        assert!(e.message.contains("maximum"), "{e}");
    }

    #[test]
    fn hs256_keys_are_at_least_32_bytes() {
        let short = "x".repeat(31);
        let e = parse(&["--auth", "jwt", "--jwt-secret", &short], &[])
            .err()
            .unwrap();
        assert_eq!(e.setting, "--jwt-secret");
        assert!(e.message.contains("at least 32 bytes"), "{e}");
        assert!(!e.to_string().contains(&short), "the secret is not echoed");
        let keys = format!("a:{},b:{short}", "y".repeat(32));
        let e = parse(&["--auth", "jwt", "--jwt-keys", &keys], &[])
            .err()
            .unwrap();
        assert!(e.message.contains("entry 2"), "{e}");
        assert!(!e.to_string().contains(&short));
        let c = run(&["--auth", "jwt", "--jwt-secret", &"z".repeat(32)], &[]);
        assert_eq!(c.jwt_keys.len(), 1);
    }

    #[test]
    fn debug_output_redacts_every_secret() {
        let (key, secret, kid) = ("k".repeat(20), "s".repeat(32), "t".repeat(33));
        let c = run(
            &[
                "--api-key",
                &key,
                "--auth",
                "jwt",
                "--jwt-secret",
                &secret,
                "--jwt-keys",
                &format!("one:{kid}"),
            ],
            &[],
        );
        let shown = format!("{c:?}");
        for s in [&key, &secret, &kid] {
            assert!(!shown.contains(s.as_str()), "{shown}");
        }
        assert!(
            shown.contains("<redacted>") && shown.contains("one"),
            "{shown}"
        );
        assert_eq!(c.api_key.as_ref().map(Secret::expose), Some(key.as_str()));
    }

    #[test]
    fn contradicting_settings_name_both() {
        let secret = "s".repeat(32);
        let e = parse(&["--jwt-secret", &secret], &[]).err().unwrap();
        assert!(
            e.to_string().contains("--auth") && e.message.contains("--jwt-secret"),
            "{e}"
        );
        let e = parse(&["--metrics-require-key", "true"], &[])
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("metrics_require_key") && e.message.contains("--api-key"),
            "{e}"
        );
        let e = parse(&[], &[]).err();
        assert!(e.is_none());
    }

    #[test]
    fn help_lists_every_setting() {
        let Command::Help(text) = parse(&["--help"], &[]).ok().unwrap() else {
            panic!()
        };
        for s in SETTINGS {
            assert!(
                text.contains(&format!("--{}", s.name.replace('_', "-"))),
                "{}",
                s.name
            );
        }
    }
}
