//! The few pieces of the Redis protocol (RESP2) the Redis-backed store needs: encoding a
//! command, framing and parsing a reply, and a blocking connection whose every call has a hard
//! deadline.
//!
//! # Why not a client crate
//!
//! The store is called synchronously from inside Wasm hooks on the request path, so what matters
//! is that no call ever waits past its deadline, on connect, write or read. A blocking socket
//! whose timeout is re-armed to the time left before every read gives exactly that with no
//! runtime bridging; we send eight commands (`AUTH`, `SELECT`, `EVAL`, `SCAN`, `SUBSCRIBE`,
//! `PING`, and the replies they produce) and parse five reply types. The parser bounds every
//! length it reads, so a confused peer cannot make us allocate more than a few MiB.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Largest bulk string accepted: values are at most 64 KiB ([`super::MAX_VALUE_BYTES`]); error
/// messages and keys are smaller still. The margin is for server messages we do not control.
const MAX_BULK_BYTES: usize = 1024 * 1024;
/// Most elements in one array reply (`SCAN` pages and fetch batches are far smaller).
const MAX_ARRAY_LEN: usize = 64 * 1024;
/// Deepest nesting accepted (`SCAN` replies nest two levels).
const MAX_DEPTH: usize = 4;
/// Longest status/error/integer line.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+OK`.
    Simple(String),
    /// `:42`.
    Int(i64),
    /// `$n` bytes, or `$-1` (nil).
    Bulk(Option<Vec<u8>>),
    /// `*n` values, or `*-1` (nil).
    Array(Option<Vec<Value>>),
}

/// A parsed reply: a value, or the message of an error reply (`-ERR ...`).
pub type Reply = Result<Value, String>;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum RespError {
    /// Connecting, writing or reading failed (including the peer closing the connection).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// No full reply arrived before the deadline.
    #[error("no answer in time")]
    Timeout,
    /// The peer sent something that is not RESP2 or is over our bounds.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Redis answered with an error reply (`-ERR ...`); the connection is still usable.
    #[error("redis error: {0}")]
    Server(String),
}

impl RespError {
    /// Whether the connection must be dropped after this error (everything but a server error
    /// reply leaves the stream at an unknown position).
    pub fn breaks_connection(&self) -> bool {
        !matches!(self, RespError::Server(_))
    }
}

/// Appends `args` to `out` as one RESP command (an array of bulk strings).
pub fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one reply from the start of `buf`: `Ok(None)` when more bytes are needed, else the
/// reply and how many bytes it took. An error reply (`-...`) is returned as
/// [`RespError::Server`] with its length, so the caller can consume it and keep the connection.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, RespError> {
    // Frame first (cheap: no allocation, bulk bodies skipped by length), so a large reply that
    // arrives in many reads is not re-parsed into values after every read.
    let Some(len) = frame(buf, 0, 0)? else {
        return Ok(None);
    };
    let (value, used) = value(&buf[..len], 0)?;
    debug_assert_eq!(used, len);
    Ok(Some((value, len)))
}

/// The line starting at `at` (without its CRLF) and the offset after it, or `None` if
/// incomplete.
fn line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, RespError> {
    let rest = &buf[at..];
    match rest.windows(2).position(|w| w == b"\r\n") {
        Some(end) if end > MAX_LINE_BYTES => Err(RespError::Protocol("line too long".into())),
        Some(end) => Ok(Some((&rest[..end], at + end + 2))),
        None if rest.len() > MAX_LINE_BYTES + 2 => Err(RespError::Protocol("line too long".into())),
        None => Ok(None),
    }
}

fn integer(text: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| {
            RespError::Protocol(format!("bad integer {:?}", String::from_utf8_lossy(text)))
        })
}

/// A length header (`$n` / `*n`): `None` for `-1` (nil), an error when over `max`.
fn length(text: &[u8], max: usize) -> Result<Option<usize>, RespError> {
    match integer(text)? {
        -1 => Ok(None),
        n if n >= 0 && (n as u64) <= max as u64 => Ok(Some(n as usize)),
        n => Err(RespError::Protocol(format!("length {n} out of bounds"))),
    }
}

/// The end offset of the reply starting at `at`, or `None` if it is not complete yet.
fn frame(buf: &[u8], at: usize, depth: usize) -> Result<Option<usize>, RespError> {
    if depth > MAX_DEPTH {
        return Err(RespError::Protocol("nesting too deep".into()));
    }
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some((head, after)) = line(buf, at + 1)? else {
        return Ok(None);
    };
    match kind {
        b'+' | b'-' => Ok(Some(after)),
        b':' => integer(head).map(|_| Some(after)),
        b'$' => match length(head, MAX_BULK_BYTES)? {
            None => Ok(Some(after)),
            Some(n) if buf.len() >= after + n + 2 => {
                if &buf[after + n..after + n + 2] != b"\r\n" {
                    return Err(RespError::Protocol(
                        "bulk string not CRLF-terminated".into(),
                    ));
                }
                Ok(Some(after + n + 2))
            }
            Some(_) => Ok(None),
        },
        b'*' => {
            let Some(n) = length(head, MAX_ARRAY_LEN)? else {
                return Ok(Some(after));
            };
            let mut end = after;
            for _ in 0..n {
                match frame(buf, end, depth + 1)? {
                    Some(next) => end = next,
                    None => return Ok(None),
                }
            }
            Ok(Some(end))
        }
        other => Err(RespError::Protocol(format!(
            "unknown reply type {other:#04x}"
        ))),
    }
}

/// Parses the complete reply at `at` (already framed).
fn value(buf: &[u8], at: usize) -> Result<(Reply, usize), RespError> {
    let incomplete = || RespError::Protocol("reply changed while parsing".into());
    let (head, after) = line(buf, at + 1)?.ok_or_else(incomplete)?;
    let text = || String::from_utf8_lossy(head).into_owned();
    Ok(match buf[at] {
        b'+' => (Ok(Value::Simple(text())), after),
        b'-' => (Err(text()), after),
        b':' => (Ok(Value::Int(integer(head)?)), after),
        b'$' => match length(head, MAX_BULK_BYTES)? {
            None => (Ok(Value::Bulk(None)), after),
            Some(n) => (
                Ok(Value::Bulk(Some(buf[after..after + n].to_vec()))),
                after + n + 2,
            ),
        },
        _ => match length(head, MAX_ARRAY_LEN)? {
            None => (Ok(Value::Array(None)), after),
            Some(n) => {
                let mut items = Vec::with_capacity(n);
                let mut end = after;
                for _ in 0..n {
                    let (item, next) = value(buf, end)?;
                    // An error inside an array (a failed command of a script's pcall) is
                    // kept as its message; none of our scripts produce one.
                    items.push(item.unwrap_or_else(|e| Value::Bulk(Some(e.into_bytes()))));
                    end = next;
                }
                (Ok(Value::Array(Some(items))), end)
            }
        },
    })
}

/// One blocking connection to Redis. Any error other than [`RespError::Server`] leaves it
/// unusable: drop it.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed by returned replies.
    start: usize,
    out: Vec<u8>,
}

impl Conn {
    /// Connects to the first address of `addrs` that answers, each attempt bounded by
    /// `timeout`; then authenticates (`AUTH [user] password`) and selects `db` if asked.
    pub fn connect(
        addrs: &[SocketAddr],
        timeout: Duration,
        auth: Option<(&str, &str)>,
        db: u32,
    ) -> Result<Conn, RespError> {
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect_timeout(addr, timeout) {
                Ok(stream) => {
                    // Commands are small and latency-bound; never wait for Nagle.
                    stream.set_nodelay(true)?;
                    let mut conn = Conn {
                        stream,
                        buf: Vec::with_capacity(4096),
                        start: 0,
                        out: Vec::with_capacity(256),
                    };
                    let deadline = Instant::now() + timeout;
                    if let Some((user, password)) = auth {
                        if user.is_empty() {
                            conn.call(&[b"AUTH", password.as_bytes()], deadline)?;
                        } else {
                            conn.call(&[b"AUTH", user.as_bytes(), password.as_bytes()], deadline)?;
                        }
                    }
                    if db != 0 {
                        conn.call(&[b"SELECT", db.to_string().as_bytes()], deadline)?;
                    }
                    return Ok(conn);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(RespError::Io(last.unwrap_or_else(|| {
            std::io::Error::new(ErrorKind::NotFound, "the address resolved to nothing")
        })))
    }

    /// Sends one command and waits for its reply until `deadline`.
    pub fn call(&mut self, args: &[&[u8]], deadline: Instant) -> Result<Value, RespError> {
        self.send(args, deadline)?;
        self.read(deadline)?.ok_or(RespError::Timeout)
    }

    /// Sends one command without waiting for a reply (pub/sub).
    pub fn send(&mut self, args: &[&[u8]], deadline: Instant) -> Result<(), RespError> {
        self.out.clear();
        encode(args, &mut self.out);
        let timeout = time_left(deadline)?;
        self.stream.set_write_timeout(Some(timeout))?;
        match self.stream.write_all(&self.out) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(RespError::Timeout)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The next reply, or `None` when none is complete by `deadline` (bytes received so far
    /// are kept for the next call, so a pub/sub reader can poll with short deadlines).
    pub fn read(&mut self, deadline: Instant) -> Result<Option<Value>, RespError> {
        loop {
            if let Some((reply, used)) = parse(&self.buf[self.start..])? {
                self.start += used;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                return reply.map(Some).map_err(RespError::Server);
            }
            let Ok(timeout) = time_left(deadline) else {
                return Ok(None);
            };
            // Re-armed before every read, so the whole reply, not each read, is bounded.
            self.stream.set_read_timeout(Some(timeout))?;
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let len = self.buf.len();
            self.buf.resize(len + 16 * 1024, 0);
            match self.stream.read(&mut self.buf[len..]) {
                Ok(0) => {
                    self.buf.truncate(len);
                    return Err(RespError::Io(std::io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "redis closed the connection",
                    )));
                }
                Ok(n) => self.buf.truncate(len + n),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    self.buf.truncate(len);
                    return Ok(None);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => self.buf.truncate(len),
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(e.into());
                }
            }
        }
    }
}

/// Time left until `deadline`, as a socket timeout (which must not be zero).
fn time_left(deadline: Instant) -> Result<Duration, RespError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(RespError::Timeout)
    } else {
        Ok(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(bytes: &[u8]) -> (Reply, usize) {
        parse(bytes).unwrap().unwrap()
    }

    #[test]
    fn commands_are_encoded_as_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode(&[b"SET", b"k", b""], &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }

    #[test]
    fn every_reply_type_parses_and_reports_its_length() {
        assert_eq!(parsed(b"+OK\r\n"), (Ok(Value::Simple("OK".into())), 5));
        assert_eq!(parsed(b"-ERR no\r\nrest"), (Err("ERR no".into()), 9));
        assert_eq!(parsed(b":-12\r\n"), (Ok(Value::Int(-12)), 6));
        assert_eq!(parsed(b"$-1\r\n"), (Ok(Value::Bulk(None)), 5));
        assert_eq!(
            parsed(b"$5\r\na\r\nbc\r\n"),
            (Ok(Value::Bulk(Some(b"a\r\nbc".to_vec()))), 11)
        );
        assert_eq!(parsed(b"*-1\r\n"), (Ok(Value::Array(None)), 5));
        let scan = b"*2\r\n$1\r\n0\r\n*2\r\n$1\r\na\r\n$-1\r\n";
        assert_eq!(
            parsed(scan),
            (
                Ok(Value::Array(Some(vec![
                    Value::Bulk(Some(b"0".to_vec())),
                    Value::Array(Some(vec![
                        Value::Bulk(Some(b"a".to_vec())),
                        Value::Bulk(None)
                    ])),
                ]))),
                scan.len()
            )
        );
    }

    #[test]
    fn an_incomplete_reply_asks_for_more_at_every_cut() {
        let full = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$4\r\nkey1\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert!(parse(full).unwrap().is_some());
    }

    #[test]
    fn hostile_lengths_and_types_are_protocol_errors_not_allocations() {
        for bad in [
            &b"$99999999999\r\n"[..],
            b"*99999999\r\n",
            b"$-2\r\n",
            b"$3\r\nabcXY",
            b"?what\r\n",
            b":notanumber\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(RespError::Protocol(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let endless = vec![b'+'; MAX_LINE_BYTES + 10];
        assert!(matches!(parse(&endless), Err(RespError::Protocol(_))));
    }
}
