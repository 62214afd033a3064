//! What a cluster node takes in from Redis, as the driver hands it over:
//! envelopes on channels (`Hub::handle_cluster_message`, from anything
//! published on our channel names — another program, a corrupted Redis)
//! and script replies (`driver::cluster::listing` over what the RESP
//! reader makes of the same bytes, then `Hub::handle_cluster_answer`).
//!
//! Checks: no panic; every `Send` resolves to open hub sessions; every
//! `Close` is of a connection the hub removed; the registry's invariants
//! hold after each input; an `F` envelope built by `frame_envelope`
//! parses back to what went in, and one around anything but exactly one
//! data frame is refused.
//!
//! Input layout: records separated by 0xFF; a record's first byte picks
//! the channel (room `r`, room `s`, user `ann`, user `bob`, all, room `t`
//! — where two joins wait for their markers — or a room named by the next
//! bytes up to a 0xFE) and the rest is the payload; a first byte from 0xF0
//! answers the oldest request the hub made (a listing or `Unavailable`),
//! answers the oldest gap fill the hub asked for (the record's bytes as
//! `from 0xFE body 0xFE …` pairs; empty: could not be filled), or lets as
//! many seconds pass as the record is long (`handle_timeout`). Rooms keep
//! history, so `H` envelopes, joins' history answers (from the listings
//! parsed out of the input) and gap fills are all exercised.
#![no_main]

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use switchboard::driver::cluster::{listing, resp::RespReader};
use switchboard::hub::cluster::{frame_envelope, Envelope, Gap, Pending, PendingKind};
use switchboard::hub::{ChannelName, ClusterAnswer, ConnId, Hub, Kind, OpenRequest, Output};
use switchboard::HubConfig;

const NODE: &str = "n1-00000001";

/// Drain outputs; replies the cluster owes go to `owed` (answered later by
/// the input, so joins stay pending until their marker or the timeout).
fn drain(hub: &mut Hub, owed: &mut Vec<Pending>, fills: &mut Vec<Gap>) {
    // One batch, as the driver carries it out: a frame may go to a
    // connection that a later output of the same batch closes (the frame
    // is written before the close).
    let mut batch = Vec::new();
    while let Some(out) = hub.poll_output() {
        batch.push(out);
    }
    check(hub, batch, owed, fills);
    // As the driver: what waited for a gap, one at a time, each batch
    // carried out before the next.
    while hub.handle_next_waiting() {
        let mut batch = Vec::new();
        while let Some(out) = hub.poll_output() {
            batch.push(out);
        }
        check(hub, batch, owed, fills);
    }
}

fn check(hub: &mut Hub, batch: Vec<Output>, owed: &mut Vec<Pending>, fills: &mut Vec<Gap>) {
    let closed: Vec<ConnId> = batch
        .iter()
        .filter_map(|o| match o {
            Output::Close { conn, .. } => Some(*conn),
            _ => None,
        })
        .collect();
    for out in batch {
        match out {
            Output::Send { to, .. } => hub.for_each_recipient(to, |id| {
                match hub.registry().session(id) {
                    Some(s) => assert_eq!(s.kind, Kind::Hub),
                    None => assert!(closed.contains(&id), "recipient {id} is not open"),
                }
            }),
            Output::Close { conn, .. } => {
                assert!(hub.registry().session(conn).is_none(), "closed {conn} still open")
            }
            Output::Presence(c) => owed.extend(c.reply),
            Output::Query { reply, .. } => owed.push(reply),
            Output::HistoryRead { reply, .. } => owed.push(reply),
            Output::HistoryFill(gap) => fills.push(gap),
            _ => {}
        }
    }
    hub.registry().check_invariants();
}

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut hub = Hub::new(
        HubConfig {
            cluster: true,
            history_size: 100,
            ..HubConfig::default()
        },
        now,
    );
    hub.set_node_id(Arc::from(NODE));
    let mut owed = Vec::new();
    let mut fills = Vec::new();
    let mut now = now;
    let mut ids = Vec::new();
    for (i, (user, room)) in [("ann", "r"), ("ann", "s"), ("bob", "r"), ("cat", "s")]
        .into_iter()
        .enumerate()
    {
        let id = ConnId {
            index: i as u32,
            generation: 1,
        };
        let req = OpenRequest {
            user: Some(user),
            room: Some(room),
            kind: Kind::Hub,
            ..Default::default()
        };
        hub.handle_open(now, id, req).expect("open");
        hub.handle_cluster_claim(now, id, true);
        drain(&mut hub, &mut owed, &mut fills);
        ids.push(id);
    }
    // Two joins left pending: their markers may come in the input.
    for id in &ids[..2] {
        hub.handle_text(now, *id, r#"{"type":"join","room":"t"}"#);
        drain(&mut hub, &mut owed, &mut fills);
    }
    for record in data.split(|&b| b == 0xFF) {
        let Some((&pick, rest)) = record.split_first() else {
            continue;
        };
        if pick >= 0xF0 {
            // Answer what the cluster owes, or let time pass.
            match pick & 3 {
                0 if !owed.is_empty() => {
                    let p = owed.remove(0);
                    let members = rest.first().copied().unwrap_or(0) as usize;
                    let l = switchboard::hub::cluster::Listing {
                        members,
                        users: Vec::new(),
                        history: None,
                    };
                    hub.handle_cluster_answer(p, ClusterAnswer::Listing(l));
                }
                1 if !owed.is_empty() => {
                    let p = owed.remove(0);
                    hub.handle_cluster_answer(p, ClusterAnswer::Unavailable);
                }
                2 if !fills.is_empty() => {
                    let gap = fills.remove(0);
                    let parts: Vec<Bytes> = rest
                        .split(|&b| b == 0xFE)
                        .map(Bytes::copy_from_slice)
                        .collect();
                    let missed = (!rest.is_empty()).then(|| {
                        parts
                            .chunks_exact(2)
                            .map(|c| (c[0].clone(), c[1].clone()))
                            .collect()
                    });
                    hub.handle_history_fill(&gap, missed);
                }
                _ => {
                    now += std::time::Duration::from_secs(rest.len() as u64);
                    hub.handle_timeout(now);
                }
            }
            drain(&mut hub, &mut owed, &mut fills);
            continue;
        }
        let named;
        let (channel, payload) = match pick % 7 {
            0 => (ChannelName::Room("r"), rest),
            1 => (ChannelName::Room("s"), rest),
            2 => (ChannelName::User("ann"), rest),
            3 => (ChannelName::User("bob"), rest),
            4 => (ChannelName::All, rest),
            5 => (ChannelName::Room("t"), rest),
            _ => {
                let end = rest.iter().position(|&b| b == 0xFE).unwrap_or(rest.len());
                named = String::from_utf8_lossy(&rest[..end]).into_owned();
                (ChannelName::Room(&named), rest.get(end + 1..).unwrap_or(&[]))
            }
        };
        let payload = Bytes::copy_from_slice(payload);
        hub.handle_cluster_message(channel, &payload);
        drain(&mut hub, &mut owed, &mut fills);
        // The same bytes as Redis replies to a listing question.
        let mut reader = RespReader::new(1 << 16);
        let mut src: &[u8] = &payload;
        while let Ok(n) = reader.read_from(&mut src) {
            if n == 0 {
                break;
            }
        }
        while let Ok(Some(frame)) = reader.next_frame() {
            let l = listing(&frame);
            for &id in &ids {
                let pending = Pending {
                    conn: id,
                    kind: PendingKind::Joined {
                        room: Arc::from("r"),
                        details: pick & 1 == 0,
                        join: (pick & 2 == 0).then_some(pick as u64),
                    },
                    reference: None,
                };
                let copy = switchboard::hub::cluster::Listing {
                    members: l.members,
                    users: Vec::new(),
                    history: l.history.clone(),
                };
                hub.handle_cluster_answer(pending, ClusterAnswer::Listing(copy));
            }
            let pending = Pending {
                conn: ids[0],
                kind: PendingKind::Presence {
                    room: Arc::from("s"),
                    details: true,
                },
                reference: None,
            };
            hub.handle_cluster_answer(pending, ClusterAnswer::Listing(l));
            drain(&mut hub, &mut owed, &mut fills);
        }
        // An F envelope round-trips whatever its frame bytes.
        let except = ConnId {
            index: pick as u32,
            generation: rest.len() as u32,
        };
        let ws = switchboard::protocol::binary_frame(rest);
        let e = frame_envelope(NODE, Some(except), &ws);
        match Envelope::parse(&e) {
            Some(Envelope::Frame {
                origin,
                except: Some(x),
                frame,
            }) => {
                assert_eq!((origin, x, &frame[..]), (NODE, except, &ws[..]));
            }
            other => panic!("F envelope parsed as {other:?}"),
        }
        // Raw bytes in an F envelope reach nobody unless they are exactly
        // one data frame.
        let raw = frame_envelope(NODE, None, rest);
        if let Some(Envelope::Frame { frame, .. }) = Envelope::parse(&raw) {
            assert!(matches!(frame[0], 0x81 | 0x82), "{frame:?}");
        }
    }
    for id in ids {
        hub.handle_closed(id);
        drain(&mut hub, &mut owed, &mut fills);
    }
    for p in owed.drain(..) {
        hub.handle_cluster_answer(p, ClusterAnswer::Unavailable);
    }
    assert!(hub.registry().is_empty());
    assert_eq!(hub.registry().room_count(), 0);
});
