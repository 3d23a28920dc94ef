//! RESP2, the Redis protocol, as a tokio-util codec: requests are arrays of bulk strings
//! (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) or inline commands (`GET k\r\n`, as typed into telnet);
//! replies are simple strings, errors, integers, bulk strings and arrays.
//!
//! A request is decoded once it is whole, without keeping state between calls: the parser
//! walks the headers (a bulk string's length says how far to jump), so a partial request is
//! looked at again from its start when more arrives, at the cost of its headers only. Its
//! arguments are slices of the request's bytes, not copies. Protocol errors carry the texts
//! redis-server replies with.

use std::fmt;
use std::io;

use switchboard::tokio_util::codec::{Decoder, Encoder};
use switchboard::{Bytes, BytesMut};

/// Longest inline request, and longest `*N` or `$N` header line (redis-server's
/// `PROTO_INLINE_MAX_SIZE`).
const INLINE_MAX: usize = 64 * 1024;
/// Most arguments in one request (redis-server's limit).
const MAX_ARGUMENTS: i64 = 1024 * 1024;

/// One request: its arguments, the command name first, as ranges of the request's bytes.
/// Empty for a blank inline line or `*0`, which redis-server ignores.
#[derive(Debug)]
pub(crate) struct Command {
    request: Bytes,
    args: Args,
}

impl Command {
    pub(crate) fn len(&self) -> usize {
        self.args.len()
    }

    pub(crate) fn arg(&self, index: usize) -> &[u8] {
        let (start, end) = self.args.get(index);
        &self.request[start..end]
    }

    /// An argument as `Bytes` of its own (a slice of the request: no copy).
    pub(crate) fn bytes(&self, index: usize) -> Bytes {
        let (start, end) = self.args.get(index);
        self.request.slice(start..end)
    }
}

/// Where the arguments lie: the first few inline (most commands have at most four), the rest in
/// a vector that only long commands allocate.
#[derive(Debug, Default)]
struct Args {
    first: [(usize, usize); 4],
    count: usize,
    more: Vec<(usize, usize)>,
}

impl Args {
    fn push(&mut self, range: (usize, usize)) {
        match self.first.get_mut(self.count) {
            Some(slot) => *slot = range,
            None => self.more.push(range),
        }
        self.count += 1;
    }

    fn len(&self) -> usize {
        self.count
    }

    fn get(&self, index: usize) -> (usize, usize) {
        assert!(index < self.count, "argument {index} of {}", self.count);
        match self.first.get(index) {
            Some(range) => *range,
            None => self.more[index - self.first.len()],
        }
    }
}

/// A reply.
#[derive(Debug)]
pub(crate) enum Reply {
    /// `+OK`, `+PONG`.
    Simple(&'static str),
    /// `-ERR ...`: the text after the `-`.
    Error(String),
    Integer(i64),
    /// A bulk string, or nil (`$-1`).
    Bulk(Option<Bytes>),
    Array(Vec<Reply>),
}

/// A request that breaks the protocol: the text of redis-server's error reply.
#[derive(Debug)]
pub(crate) enum RespError {
    Protocol(&'static str),
    /// `expected '$', got 'x'`.
    ExpectedBulk(u8),
    Io(io::Error),
}

impl fmt::Display for RespError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RespError::Protocol(what) => write!(f, "Protocol error: {what}"),
            RespError::ExpectedBulk(got) => {
                write!(f, "Protocol error: expected '$', got '{}'", *got as char)
            }
            RespError::Io(error) => error.fmt(f),
        }
    }
}

impl From<io::Error> for RespError {
    fn from(error: io::Error) -> Self {
        RespError::Io(error)
    }
}

/// The RESP2 codec; see the module docs.
#[derive(Debug)]
pub(crate) struct Resp {
    /// Longest bulk string taken (redis-server's `proto-max-bulk-len`).
    max_bulk: usize,
}

impl Resp {
    pub(crate) fn new(max_bulk: usize) -> Self {
        Resp { max_bulk }
    }

    /// The length of the whole multibulk request at the start of `src`, with where each
    /// argument lies in it, or `None` if it is not all there yet.
    fn multibulk(&self, src: &[u8], args: &mut Args) -> Result<Option<usize>, RespError> {
        let Some((count, mut at)) = header(src, 0, "too big mbulk count string")? else {
            return Ok(None);
        };
        if count > MAX_ARGUMENTS {
            return Err(RespError::Protocol("invalid multibulk length"));
        }
        for _ in 0..count.max(0) {
            let Some(&kind) = src.get(at) else {
                return Ok(None);
            };
            if kind != b'$' {
                return Err(RespError::ExpectedBulk(kind));
            }
            let Some((length, start)) = header(src, at, "too big bulk count string")? else {
                return Ok(None);
            };
            if length < 0 || length as u64 > self.max_bulk as u64 {
                return Err(RespError::Protocol("invalid bulk length"));
            }
            let end = start + length as usize;
            // The bulk string and its CRLF (not checked, as redis-server does not check it).
            if src.len() < end + 2 {
                return Ok(None);
            }
            args.push((start, end));
            at = end + 2;
        }
        Ok(Some(at))
    }
}

/// Parses the `*N\r\n` or `$N\r\n` header at `at`, in one pass: the number and where what
/// follows starts.
fn header(src: &[u8], at: usize, too_big: &'static str) -> Result<Option<(i64, usize)>, RespError> {
    let mut index = at + 1;
    let negative = src.get(index) == Some(&b'-');
    if negative {
        index += 1;
    }
    let digits_start = index;
    let mut value: u64 = 0;
    let mut valid = true;
    loop {
        let Some(&byte) = src.get(index) else {
            if index - at > INLINE_MAX {
                return Err(RespError::Protocol(too_big));
            }
            return Ok(None);
        };
        if byte == b'\r' {
            break;
        }
        match (byte as char).to_digit(10) {
            Some(digit) if valid => match value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(digit)))
            {
                Some(next) => value = next,
                None => valid = false,
            },
            _ => valid = false,
        }
        index += 1;
    }
    if src.len() < index + 2 {
        return Ok(None);
    }
    let number = i64::try_from(value)
        .ok()
        .filter(|_| valid && index > digits_start);
    let Some(number) = number else {
        return Err(RespError::Protocol(if src[at] == b'*' {
            "invalid multibulk length"
        } else {
            "invalid bulk length"
        }));
    };
    Ok(Some((if negative { -number } else { number }, index + 2)))
}

/// A base-10 `i64` with an optional minus sign, nothing else.
pub(crate) fn parse_integer(digits: &[u8]) -> Option<i64> {
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut value: i64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        value = value
            .checked_mul(10)?
            .checked_add(i64::from(digit - b'0'))?;
    }
    Some(if negative { -value } else { value })
}

fn memchr(byte: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == byte)
}

impl Decoder for Resp {
    type Item = Command;
    type Error = RespError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Command>, RespError> {
        if src.is_empty() {
            return Ok(None);
        }
        let mut args = Args::default();
        if src[0] == b'*' {
            let Some(length) = self.multibulk(src, &mut args)? else {
                return Ok(None);
            };
            return Ok(Some(Command {
                request: take_request(src, length),
                args,
            }));
        }
        // Inline: one line, arguments separated by spaces.
        let Some(newline) = memchr(b'\n', src) else {
            if src.len() > INLINE_MAX {
                return Err(RespError::Protocol("too big inline request"));
            }
            return Ok(None);
        };
        let mut start = None;
        for (index, &byte) in src[..newline].iter().enumerate() {
            let space = byte.is_ascii_whitespace();
            match (start, space) {
                (None, false) => start = Some(index),
                (Some(from), true) => {
                    args.push((from, index));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(from) = start {
            args.push((from, newline));
        }
        Ok(Some(Command {
            request: take_request(src, newline + 1),
            args,
        }))
    }
}

/// The first `length` bytes of `src`, as `Bytes`: the whole buffer when the request is all of
/// it (a request per read, as without pipelining), which costs no allocation; split off
/// otherwise.
fn take_request(src: &mut BytesMut, length: usize) -> Bytes {
    if length == src.len() {
        std::mem::take(src).freeze()
    } else {
        src.split_to(length).freeze()
    }
}

impl Encoder<Reply> for Resp {
    type Error = io::Error;

    fn encode(&mut self, reply: Reply, dst: &mut BytesMut) -> Result<(), io::Error> {
        encode(&reply, dst);
        Ok(())
    }
}

fn encode(reply: &Reply, dst: &mut BytesMut) {
    match reply {
        Reply::Simple(text) => {
            dst.reserve(text.len() + 3);
            dst.extend_from_slice(b"+");
            dst.extend_from_slice(text.as_bytes());
            dst.extend_from_slice(b"\r\n");
        }
        Reply::Error(text) => {
            dst.reserve(text.len() + 3);
            dst.extend_from_slice(b"-");
            dst.extend_from_slice(text.as_bytes());
            dst.extend_from_slice(b"\r\n");
        }
        Reply::Integer(value) => header_line(dst, b':', *value),
        Reply::Bulk(None) => dst.extend_from_slice(b"$-1\r\n"),
        Reply::Bulk(Some(value)) => {
            dst.reserve(value.len() + 16);
            header_line(dst, b'$', value.len() as i64);
            dst.extend_from_slice(value);
            dst.extend_from_slice(b"\r\n");
        }
        Reply::Array(items) => {
            header_line(dst, b'*', items.len() as i64);
            for item in items {
                encode(item, dst);
            }
        }
    }
}

/// `:42\r\n`, `$3\r\n`, `*2\r\n`.
fn header_line(dst: &mut BytesMut, kind: u8, value: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = value.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    dst.reserve(24);
    dst.extend_from_slice(&[kind]);
    if value < 0 {
        dst.extend_from_slice(b"-");
    }
    dst.extend_from_slice(&digits[at..]);
    dst.extend_from_slice(b"\r\n");
}
