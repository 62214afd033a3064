//! The cluster's side of the driver (DESIGN.md §6): Redis links in the same
//! mio loop as the clients. So far the protocol piece: [`resp`], reading and
//! writing RESP2 without a socket, fuzzed and checked against a real Redis.
//! The links (a command and a subscriber connection per shard), pub/sub
//! delivery and presence come next (issue 11).

pub mod resp;
