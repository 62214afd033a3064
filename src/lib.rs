//! switchboard: a WebSocket hub.
//!
//! ```text
//!  sockets ──► driver (mio)  ── handle_*(now, …) ──►  hub (pure, no I/O, no clock)
//!              owns sockets,                           rooms, users, presence,
//!              buffers, timers  ◄── poll_output() ───  routing, limits, deadlines
//! ```
//!
//! * [`hub`]: the sans-I/O core. Every rule (join, leave, presence, limits,
//!   heartbeats) lives here and is unit-tested with a fake clock.
//! * [`driver`]: the single-threaded mio reactor that owns the sockets, drives
//!   tungstenite handshakes without blocking, and writes what the hub decided.
//! * [`Server`][]: `Server::bind(config)?.run()`.

pub mod auth;
pub mod client;
pub mod config;
pub mod driver;
pub mod hub;
pub mod logging;
pub mod percent;
pub mod protocol;

pub use config::Config;
pub use driver::Server;
pub use hub::HubConfig;
