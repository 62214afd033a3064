//! The cluster's RESP piece against a real `redis-server`: commands encoded
//! by `encode_command`, replies and pub/sub messages read by `RespReader`
//! over a real socket, a 1 MiB message across, and a reply over the
//! reader's limit refused.

mod support;

use std::io::Write;
use std::net::TcpStream;

use bytes::BytesMut;
use support::*;
use switchboard::driver::cluster::resp::{encode_command, BytesFrame, RespError, RespReader};

struct Conn {
    tcp: TcpStream,
    reader: RespReader,
}

impl Conn {
    fn open(redis: &Redis, max: usize) -> Conn {
        let tcp = TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        Conn {
            tcp,
            reader: RespReader::new(max),
        }
    }

    fn send(&mut self, args: &[&[u8]]) {
        let mut out = BytesMut::new();
        encode_command(&mut out, args);
        self.tcp.write_all(&out).unwrap();
    }

    fn reply(&mut self) -> Result<BytesFrame, RespError> {
        loop {
            if let Some(frame) = self.reader.next_frame()? {
                return Ok(frame);
            }
            assert!(self.reader.read_from(&mut self.tcp).unwrap() > 0, "EOF");
        }
    }
}

fn bulk(b: &[u8]) -> BytesFrame {
    BytesFrame::BulkString(b.to_vec().into())
}

#[test]
fn commands_replies_and_pubsub_messages_through_a_real_redis() {
    let redis = Redis::start();
    let mut cmd = Conn::open(&redis, 4 << 20);
    let mut sub = Conn::open(&redis, 4 << 20);
    cmd.send(&[b"PING"]);
    assert_eq!(cmd.reply(), Ok(BytesFrame::SimpleString("PONG".into())));
    cmd.send(&[b"NOSUCHCOMMAND"]);
    assert!(matches!(cmd.reply(), Ok(BytesFrame::Error(_))));
    sub.send(&[b"SUBSCRIBE", b"sb:room:lobby"]);
    assert_eq!(
        sub.reply(),
        Ok(BytesFrame::Array(vec![
            bulk(b"subscribe"),
            bulk(b"sb:room:lobby"),
            BytesFrame::Integer(1)
        ]))
    );
    // Pipelined: three publishes in one write, three replies.
    let big = vec![b'x'; 1 << 20];
    let mut out = BytesMut::new();
    encode_command(&mut out, &[b"PUBLISH", b"sb:room:lobby", b"{\"n\":1}"]);
    encode_command(&mut out, &[b"PUBLISH", b"sb:room:lobby", &big]);
    encode_command(&mut out, &[b"PUBLISH", b"sb:room:lobby", b"\r\n*3\r\n"]);
    cmd.tcp.write_all(&out).unwrap();
    for _ in 0..3 {
        assert_eq!(cmd.reply(), Ok(BytesFrame::Integer(1)));
    }
    for payload in [&b"{\"n\":1}"[..], &big, b"\r\n*3\r\n"] {
        assert_eq!(
            sub.reply(),
            Ok(BytesFrame::Array(vec![
                bulk(b"message"),
                bulk(b"sb:room:lobby"),
                bulk(payload)
            ]))
        );
    }
    assert_eq!(sub.reader.buffered(), 0);
}

#[test]
fn a_reply_over_the_readers_limit_is_refused() {
    let redis = Redis::start();
    let mut cmd = Conn::open(&redis, 64 * 1024);
    let value = vec![b'v'; 100_000];
    cmd.send(&[b"SET", b"big", &value]);
    assert_eq!(cmd.reply(), Ok(BytesFrame::SimpleString("OK".into())));
    cmd.send(&[b"GET", b"big"]);
    assert_eq!(cmd.reply(), Err(RespError::TooLarge { max: 64 * 1024 }));
}
