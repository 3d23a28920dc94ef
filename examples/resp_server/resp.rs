//! RESP2, the Redis protocol, as a tokio-util codec: requests are arrays of bulk strings
//! (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) or inline commands (`GET k\r\n`, as typed into telnet,
//! with redis-server's quoting: `SET k "a b"`); replies are simple strings, errors, integers,
//! bulk strings and arrays.
//!
//! The decoder keeps its place in a request that has not all arrived: how many bulk strings are
//! still to come, where the next one starts, the length of the one being read, how far a line
//! was searched for its end. The next call goes on from there, so each byte of a request is
//! looked at a bounded number of times however the network cuts it (a request trickled in
//! small reads costs what it costs in one read), and a bulk string's bytes are not looked at at
//! all: its length says where it ends. The bytes stay in the buffer until the request is whole
//! (the frame layer bounds them), and a request's arguments are slices of them, not copies, but
//! for quoted inline arguments, which are unescaped into a buffer of their own. Protocol errors
//! carry the texts redis-server replies with.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use switchboard::tokio_util::codec::{Decoder, Encoder};
use switchboard::{Bytes, BytesMut};

/// Longest inline request, and longest `*N` or `$N` header line (redis-server's
/// `PROTO_INLINE_MAX_SIZE`).
const INLINE_MAX: usize = 64 * 1024;
/// Most arguments in one request: redis-server's limit before version 6 (it now takes up to
/// 2^31 - 1, bounded by its query buffer limit instead); the frame layer's maximum frame length
/// bounds the request's size here too.
const MAX_ARGUMENTS: i64 = 1024 * 1024;

/// One request: its arguments, the command name first, as ranges of one buffer. Empty for a
/// blank inline line, `*0` or `*-1`, which redis-server ignores.
#[derive(Debug)]
pub(crate) struct Command {
    /// The request's bytes, or for an inline request with quotes, its arguments unescaped.
    bytes: Bytes,
    args: Args,
}

impl Command {
    pub(crate) fn len(&self) -> usize {
        self.args.len()
    }

    pub(crate) fn arg(&self, index: usize) -> &[u8] {
        let (start, end) = self.args.get(index);
        &self.bytes[start..end]
    }

    /// An argument as `Bytes` of its own (a slice of the request: no copy).
    pub(crate) fn bytes(&self, index: usize) -> Bytes {
        let (start, end) = self.args.get(index);
        self.bytes.slice(start..end)
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
    /// An array of bulk strings or nils (MGET's). The server feeds it to the frame layer as an
    /// [`ArrayHeader`] and one [`Reply::Bulk`] per element, so that the frame layer sees (and
    /// may refuse) each part before it is encoded.
    Array(Vec<Option<Bytes>>),
}

/// The header of an array of `.0` elements (`*3\r\n`), encoded alone: the elements follow as
/// replies of their own.
#[derive(Debug)]
pub(crate) struct ArrayHeader(pub(crate) usize);

/// The encoded size of a bulk string reply of `length` bytes (`None`: nil, `$-1\r\n`).
pub(crate) fn bulk_reply_len(length: Option<usize>) -> usize {
    match length {
        None => 5,
        Some(length) => 1 + decimal_len(length) + 2 + length + 2,
    }
}

/// The encoded size of an array's header for `count` elements.
pub(crate) fn array_header_len(count: usize) -> usize {
    1 + decimal_len(count) + 2
}

fn decimal_len(mut value: usize) -> usize {
    let mut digits = 1;
    while value >= 10 {
        value /= 10;
        digits += 1;
    }
    digits
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

/// What the decoders of all connections did, for INFO: the bytes of the requests they took
/// whole, and the bytes they looked at to find them (a linear decoder looks at fewer than twice
/// as many, however the requests were cut).
#[derive(Debug, Default)]
pub(crate) struct DecoderStats {
    decoded: AtomicU64,
    scanned: AtomicU64,
}

impl DecoderStats {
    /// Bytes of whole requests decoded.
    pub(crate) fn decoded(&self) -> u64 {
        self.decoded.load(Ordering::Relaxed)
    }

    /// Bytes the decoders looked at.
    pub(crate) fn scanned(&self) -> u64 {
        self.scanned.load(Ordering::Relaxed)
    }
}

/// How far the decoder got in the request at the start of the buffer.
#[derive(Debug, Default)]
enum Progress {
    /// Nothing of it looked at yet.
    #[default]
    Start,
    /// An inline request with no newline in its first `searched` bytes.
    Inline { searched: usize },
    /// A multibulk request whose `*N` line has no `\r` in its first `searched` bytes, or no
    /// byte after it.
    Count { searched: usize },
    /// A multibulk request's bulk strings.
    Bulks(Bulks),
}

#[derive(Debug)]
struct Bulks {
    /// Bulk strings still to come, the one being read included.
    remaining: usize,
    /// Where the next part starts: a `$N` header, or with `length`, a bulk string's bytes.
    at: usize,
    /// The header at `at` has no `\r` before this (or no byte after it).
    searched: usize,
    /// The length of the bulk string at `at`, whose header was read.
    length: Option<usize>,
    args: Args,
}

/// The RESP2 codec; see the module docs.
///
/// The decoder expects what it was given and did not take to stay at the start of the buffer,
/// with more appended after it (as the frame layer and tokio-util's `FramedRead` do).
#[derive(Debug)]
pub(crate) struct Resp {
    /// Longest bulk string taken (redis-server's `proto-max-bulk-len`).
    max_bulk: usize,
    progress: Progress,
    /// Counts not yet added to `stats`.
    decoded: u64,
    scanned: u64,
    stats: Arc<DecoderStats>,
}

impl Resp {
    pub(crate) fn new(max_bulk: usize, stats: Arc<DecoderStats>) -> Self {
        Resp {
            max_bulk,
            progress: Progress::Start,
            decoded: 0,
            scanned: 0,
            stats,
        }
    }

    /// Bytes looked at so far by this decoder.
    #[cfg(test)]
    fn scanned(&self) -> u64 {
        self.scanned + self.stats.scanned()
    }

    /// The first `byte` in `src` at or after `from`, counting the bytes looked at.
    fn find(&mut self, src: &[u8], byte: u8, from: usize) -> Option<usize> {
        let found = src[from..]
            .iter()
            .position(|&b| b == byte)
            .map(|index| from + index);
        self.scanned += (found.map_or(src.len(), |index| index + 1) - from) as u64;
        found
    }

    /// The number between a header's first byte and its `\r`, as redis-server's `string2ll`
    /// reads it.
    fn number(&mut self, digits: &[u8]) -> Option<i64> {
        self.scanned += digits.len().min(MAX_INTEGER_LEN + 1) as u64;
        parse_integer(digits)
    }

    /// Adds the counts to the shared ones (once per read: the frame layer decodes until a call
    /// finds nothing more).
    fn publish(&mut self) {
        if self.scanned != 0 {
            self.stats
                .decoded
                .fetch_add(std::mem::take(&mut self.decoded), Ordering::Relaxed);
            self.stats
                .scanned
                .fetch_add(std::mem::take(&mut self.scanned), Ordering::Relaxed);
        }
    }

    fn parse(&mut self, src: &mut BytesMut) -> Result<Option<Command>, RespError> {
        loop {
            match std::mem::take(&mut self.progress) {
                Progress::Start => match src.first() {
                    None => return Ok(None),
                    Some(b'*') => self.progress = Progress::Count { searched: 1 },
                    Some(_) => self.progress = Progress::Inline { searched: 0 },
                },
                Progress::Inline { searched } => return self.inline(src, searched),
                Progress::Count { searched } => {
                    // redis-server's order: the line whole, then its number.
                    let Some(cr) = self.find(src, b'\r', searched) else {
                        if src.len() > INLINE_MAX {
                            return Err(RespError::Protocol("too big mbulk count string"));
                        }
                        self.progress = Progress::Count {
                            searched: src.len(),
                        };
                        return Ok(None);
                    };
                    if src.len() < cr + 2 {
                        self.progress = Progress::Count { searched: cr };
                        return Ok(None);
                    }
                    let count = self
                        .number(&src[1..cr])
                        .filter(|&count| count <= MAX_ARGUMENTS)
                        .ok_or(RespError::Protocol("invalid multibulk length"))?;
                    if count <= 0 {
                        return Ok(Some(self.take(src, cr + 2, Args::default())));
                    }
                    self.progress = Progress::Bulks(Bulks {
                        remaining: count as usize,
                        at: cr + 2,
                        searched: cr + 2,
                        length: None,
                        args: Args::default(),
                    });
                }
                Progress::Bulks(bulks) => return self.bulks(src, bulks),
            }
        }
    }

    /// Goes on with a multibulk request's bulk strings.
    fn bulks(
        &mut self,
        src: &mut BytesMut,
        mut bulks: Bulks,
    ) -> Result<Option<Command>, RespError> {
        while bulks.remaining > 0 {
            let length = match bulks.length {
                Some(length) => length,
                None => {
                    let at = bulks.at;
                    let Some(cr) = self.find(src, b'\r', bulks.searched.max(at)) else {
                        if src.len() - at > INLINE_MAX {
                            return Err(RespError::Protocol("too big bulk count string"));
                        }
                        bulks.searched = src.len();
                        self.progress = Progress::Bulks(bulks);
                        return Ok(None);
                    };
                    if src.len() < cr + 2 {
                        bulks.searched = cr;
                        self.progress = Progress::Bulks(bulks);
                        return Ok(None);
                    }
                    if src[at] != b'$' {
                        return Err(RespError::ExpectedBulk(src[at]));
                    }
                    let length = self
                        .number(&src[at + 1..cr])
                        .and_then(|length| usize::try_from(length).ok())
                        .filter(|&length| length <= self.max_bulk)
                        .ok_or(RespError::Protocol("invalid bulk length"))?;
                    bulks.at = cr + 2;
                    bulks.length = Some(length);
                    length
                }
            };
            let start = bulks.at;
            // The bulk string and its CRLF (not checked, as redis-server does not check it).
            if src.len() < start + length + 2 {
                self.progress = Progress::Bulks(bulks);
                return Ok(None);
            }
            bulks.args.push((start, start + length));
            bulks.at = start + length + 2;
            bulks.searched = bulks.at;
            bulks.length = None;
            bulks.remaining -= 1;
        }
        Ok(Some(self.take(src, bulks.at, bulks.args)))
    }

    /// Goes on with an inline request: one line, its arguments split as redis-server's
    /// `sdssplitargs` does.
    fn inline(
        &mut self,
        src: &mut BytesMut,
        searched: usize,
    ) -> Result<Option<Command>, RespError> {
        let Some(newline) = self.find(src, b'\n', searched) else {
            if src.len() > INLINE_MAX {
                return Err(RespError::Protocol("too big inline request"));
            }
            self.progress = Progress::Inline {
                searched: src.len(),
            };
            return Ok(None);
        };
        let end = if newline > 0 && src[newline - 1] == b'\r' {
            newline - 1
        } else {
            newline
        };
        self.scanned += end as u64;
        let line = &src[..end];
        // A NUL byte ends the arguments, as it ends the C string `sdssplitargs` reads.
        // (redis-server itself never gets that far: its search for the newline stops at the NUL
        // too, so it waits for more until the line is too long.)
        let line = &line[..line.iter().position(|&b| b == 0).unwrap_or(line.len())];
        match split_plain(line) {
            Some(args) => Ok(Some(self.take(src, newline + 1, args))),
            None => {
                self.scanned += line.len() as u64;
                let (unescaped, args) = split_quoted(line)
                    .ok_or(RespError::Protocol("unbalanced quotes in request"))?;
                // The request's bytes are done with: the arguments are in `unescaped`.
                self.take(src, newline + 1, Args::default());
                Ok(Some(Command {
                    bytes: unescaped.freeze(),
                    args,
                }))
            }
        }
    }

    /// The request, its first `length` bytes of `src`, taken off the buffer.
    fn take(&mut self, src: &mut BytesMut, length: usize, args: Args) -> Command {
        self.decoded += length as u64;
        Command {
            bytes: take_request(src, length),
            args,
        }
    }
}

/// Whether `byte` is white space to C's `isspace` (which `sdssplitargs` skips between
/// arguments).
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Whether `byte` ends an unquoted argument (`sdssplitargs`: fewer than `isspace`, so `a\vb` is
/// one argument).
fn ends_argument(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// The arguments of an inline `line` with no quotes in it, as ranges of it; `None` if it has
/// quotes.
fn split_plain(line: &[u8]) -> Option<Args> {
    let mut args = Args::default();
    let mut at = 0;
    loop {
        while at < line.len() && is_space(line[at]) {
            at += 1;
        }
        if at == line.len() {
            return Some(args);
        }
        let start = at;
        while at < line.len() && !ends_argument(line[at]) {
            if matches!(line[at], b'"' | b'\'') {
                return None;
            }
            at += 1;
        }
        args.push((start, at));
    }
}

/// The arguments of an inline `line` with quotes, as `sdssplitargs` reads them: in double
/// quotes `\n \r \t \b \a`, `\xHH` and a backslash before any other byte (that byte); in single
/// quotes `\'`; a quote may start in the middle of an argument (`a"b c"` is `ab c`), and a
/// closing quote must be followed by white space or the end. Unescaped into one buffer, with the
/// arguments as ranges of it; `None` for unbalanced quotes.
fn split_quoted(line: &[u8]) -> Option<(BytesMut, Args)> {
    let mut out = BytesMut::with_capacity(line.len());
    let mut args = Args::default();
    let mut at = 0;
    loop {
        while at < line.len() && is_space(line[at]) {
            at += 1;
        }
        if at == line.len() {
            return Some((out, args));
        }
        let start = out.len();
        let mut quote = None;
        loop {
            let Some(&byte) = line.get(at) else {
                if quote.is_some() {
                    return None;
                }
                break;
            };
            let next = line.get(at + 1).copied();
            match (quote, byte, next) {
                (None, _, _) if ends_argument(byte) => break,
                (None, b'"' | b'\'', _) => quote = Some(byte),
                (None, _, _) => out.extend_from_slice(&[byte]),
                (Some(b'"'), b'\\', Some(escaped)) => {
                    let hex = |offset: usize| line.get(at + offset).and_then(|&b| hex_digit(b));
                    if let (b'x', Some(high), Some(low)) = (escaped, hex(2), hex(3)) {
                        out.extend_from_slice(&[high * 16 + low]);
                        at += 2;
                    } else {
                        out.extend_from_slice(&[match escaped {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        }]);
                    }
                    at += 1;
                }
                (Some(b'\''), b'\\', Some(b'\'')) => {
                    out.extend_from_slice(b"'");
                    at += 1;
                }
                (Some(open), _, _) if byte == open => {
                    if next.is_some_and(|next| !is_space(next)) {
                        return None;
                    }
                    at += 1;
                    break;
                }
                (Some(_), _, _) => out.extend_from_slice(&[byte]),
            }
            at += 1;
        }
        args.push((start, out.len()));
    }
}

fn hex_digit(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|digit| digit as u8)
}

/// The longest text `string2ll` reads (its `LONG_STR_SIZE` is 21, with the NUL).
const MAX_INTEGER_LEN: usize = 20;

/// A base-10 `i64` in its one canonical form, as redis-server's `string2ll` reads it: an
/// optional minus sign and digits, no leading zero (so no `-0`), no plus sign, no spaces, at
/// most 20 bytes, from `i64::MIN` to `i64::MAX`.
pub(crate) fn parse_integer(text: &[u8]) -> Option<i64> {
    if text.is_empty() || text.len() > MAX_INTEGER_LEN {
        return None;
    }
    if text == b"0" {
        return Some(0);
    }
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if !matches!(digits.first(), Some(b'1'..=b'9')) {
        return None;
    }
    let mut value: u64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        value = value
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
    }
    if negative {
        (value <= i64::MIN.unsigned_abs()).then(|| 0i64.wrapping_sub_unsigned(value))
    } else {
        i64::try_from(value).ok()
    }
}

impl Decoder for Resp {
    type Item = Command;
    type Error = RespError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Command>, RespError> {
        let decoded = self.parse(src);
        match &decoded {
            Ok(Some(_)) => {}
            Ok(None) => self.publish(),
            Err(_) => {
                self.progress = Progress::Start;
                self.publish();
            }
        }
        decoded
    }
}

impl Drop for Resp {
    fn drop(&mut self) {
        self.publish();
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
        encode(reply, dst);
        Ok(())
    }
}

impl Encoder<ArrayHeader> for Resp {
    type Error = io::Error;

    fn encode(&mut self, header: ArrayHeader, dst: &mut BytesMut) -> Result<(), io::Error> {
        header_line(dst, b'*', header.0 as i64);
        Ok(())
    }
}

fn encode(reply: Reply, dst: &mut BytesMut) {
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
        Reply::Integer(value) => header_line(dst, b':', value),
        Reply::Bulk(value) => encode_bulk(value.as_deref(), dst),
        Reply::Array(items) => {
            header_line(dst, b'*', items.len() as i64);
            for item in items {
                encode_bulk(item.as_deref(), dst);
            }
        }
    }
}

fn encode_bulk(value: Option<&[u8]>, dst: &mut BytesMut) {
    match value {
        None => dst.extend_from_slice(b"$-1\r\n"),
        Some(value) => {
            dst.reserve(bulk_reply_len(Some(value.len())));
            header_line(dst, b'$', value.len() as i64);
            dst.extend_from_slice(value);
            dst.extend_from_slice(b"\r\n");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What decoding gave: each request's arguments, then the error's text if it failed.
    type Decoded = (Vec<Vec<Vec<u8>>>, Option<String>);

    /// Decodes `input` as the frame layer does when the network cuts it at `cuts`: each piece is
    /// appended to what is left, then decoded until nothing more comes out. Returns the decoder
    /// too, for its counts.
    fn decode_cut(input: &[u8], cuts: &[usize], max_bulk: usize) -> (Decoded, Resp) {
        let mut codec = Resp::new(max_bulk, Arc::default());
        let mut buffer = BytesMut::new();
        let mut requests = Vec::new();
        let mut from = 0;
        for &to in cuts.iter().chain([input.len()].iter()) {
            buffer.extend_from_slice(&input[from..to]);
            from = to;
            loop {
                match codec.decode(&mut buffer) {
                    Ok(Some(command)) => requests.push(
                        (0..command.len())
                            .map(|index| command.arg(index).to_vec())
                            .collect(),
                    ),
                    Ok(None) => break,
                    Err(error) => return ((requests, Some(error.to_string())), codec),
                }
            }
        }
        ((requests, None), codec)
    }

    fn decode_whole(input: &[u8]) -> Decoded {
        decode_cut(input, &[], 64).0
    }

    fn args(list: &[&[u8]]) -> Vec<Vec<u8>> {
        list.iter().map(|arg| arg.to_vec()).collect()
    }

    /// Requests with what they decode to: pipelines, both kinds, quotes, empty requests, and
    /// errors after whole requests.
    fn cases() -> Vec<(&'static [u8], Decoded)> {
        let error = |text: &str| Some(format!("Protocol error: {text}"));
        vec![
            (
                b"*3\r\n$3\r\nSET\r\n$3\r\ncut\r\n$5\r\nhello\r\n",
                (vec![args(&[b"SET", b"cut", b"hello"])], None),
            ),
            (
                b"PING\r\nECHO hi\r\n\r\nSET  x   1 \nGET x\r\n*0\r\n*-1\r\n*1\r\n$0\r\n\r\n",
                (
                    vec![
                        args(&[b"PING"]),
                        args(&[b"ECHO", b"hi"]),
                        vec![],
                        args(&[b"SET", b"x", b"1"]),
                        args(&[b"GET", b"x"]),
                        vec![],
                        vec![],
                        args(&[b""]),
                    ],
                    None,
                ),
            ),
            (
                b"SET k \"a b\"\r\nSET k 'it\\'s' \"a\\x41\\n\\\"q\"\r\nECHO a\"b c\" '' x\r\n",
                (
                    vec![
                        args(&[b"SET", b"k", b"a b"]),
                        args(&[b"SET", b"k", b"it's", b"aA\n\"q"]),
                        args(&[b"ECHO", b"ab c", b"", b"x"]),
                    ],
                    None,
                ),
            ),
            (
                b"*1\r\n$4\r\nPING\r\n*x\r\nPING\r\n",
                (vec![args(&[b"PING"])], error("invalid multibulk length")),
            ),
            (
                b"*2\r\n$4\r\nECHO\r\n:3\r\n",
                (vec![], error("expected '$', got ':'")),
            ),
            (b"*1\r\n$65\r\n", (vec![], error("invalid bulk length"))),
            (
                b"*1\r\n$04\r\nPING\r\n",
                (vec![], error("invalid bulk length")),
            ),
            (
                b"PING\r\nSET k \"ab\"c\r\n",
                (
                    vec![args(&[b"PING"])],
                    error("unbalanced quotes in request"),
                ),
            ),
        ]
    }

    #[test]
    fn whole_requests_decode_as_redis_server_reads_them() {
        for (input, expected) in cases() {
            assert_eq!(
                decode_whole(input),
                expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn a_request_cut_anywhere_decodes_the_same() {
        for (input, expected) in cases() {
            for cut in 0..=input.len() {
                assert_eq!(
                    decode_cut(input, &[cut], 64).0,
                    expected,
                    "{:?} cut at {cut}",
                    String::from_utf8_lossy(input)
                );
            }
            let every_byte: Vec<usize> = (1..input.len()).collect();
            assert_eq!(
                decode_cut(input, &every_byte, 64).0,
                expected,
                "{:?} a byte at a time",
                String::from_utf8_lossy(input)
            );
        }
    }

    /// A command of `count` arguments (`DEL k000000 k000001 ...`).
    fn long_command(count: usize) -> Vec<u8> {
        let mut command = format!("*{}\r\n$3\r\nDEL\r\n", count + 1).into_bytes();
        for index in 0..count {
            command.extend_from_slice(format!("$7\r\nk{index:06}\r\n").as_bytes());
        }
        command
    }

    #[test]
    fn a_command_in_many_small_reads_costs_work_linear_in_its_size() {
        let command = long_command(100_000);
        let whole = decode_cut(&command, &[], 64);
        assert_eq!(whole.0 .0.len(), 1);
        assert_eq!(whole.0 .0[0].len(), 100_001);
        // Only headers are looked at, each byte once: the keys' bytes are jumped over.
        let headers = whole.1.scanned();
        assert!(headers < command.len() as u64, "{headers}");
        for piece in [1, 7, 100, 1460] {
            let cuts: Vec<usize> = (piece..command.len()).step_by(piece).collect();
            let (decoded, codec) = decode_cut(&command, &cuts, 64);
            assert_eq!(decoded, whole.0, "in pieces of {piece}");
            // About as much work as in one read: a header's `\r` is looked at again when its
            // `\n` had not come yet, nothing more.
            let scanned = codec.scanned();
            assert!(
                scanned >= headers && scanned <= 2 * headers,
                "in pieces of {piece}: {scanned} bytes looked at, {headers} in one read"
            );
        }
    }

    #[test]
    fn a_long_bulk_string_or_line_in_small_reads_is_looked_at_once() {
        let value = vec![b'v'; 1 << 20];
        let mut command = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n".to_vec();
        command.extend_from_slice(format!("${}\r\n", value.len()).as_bytes());
        command.extend_from_slice(&value);
        command.extend_from_slice(b"\r\n");
        let cuts: Vec<usize> = (1..command.len()).step_by(100).collect();
        let (decoded, codec) = decode_cut(&command, &cuts, 1 << 20);
        assert_eq!(decoded.0[0][2], value);
        assert!(codec.scanned() < 64, "{}", codec.scanned());

        // An inline line: searched for its end once, then split once.
        let mut line = b"ECHO ".to_vec();
        line.extend_from_slice(&vec![b'x'; 60_000]);
        line.extend_from_slice(b"\r\n");
        let cuts: Vec<usize> = (1..line.len()).collect();
        let (decoded, codec) = decode_cut(&line, &cuts, 64);
        assert_eq!(decoded.0[0][1].len(), 60_000);
        assert!(
            codec.scanned() <= 2 * line.len() as u64,
            "{}",
            codec.scanned()
        );
    }

    #[test]
    fn too_long_headers_and_lines_are_refused_before_their_end() {
        let too_long = |first: &[u8]| {
            let mut input = first.to_vec();
            input.extend_from_slice(&vec![b'1'; INLINE_MAX + 1]);
            let cuts: Vec<usize> = (1..input.len()).step_by(1000).collect();
            decode_cut(&input, &cuts, 64).0 .1
        };
        assert_eq!(
            too_long(b"*").as_deref(),
            Some("Protocol error: too big mbulk count string")
        );
        assert_eq!(
            too_long(b"*1\r\n$").as_deref(),
            Some("Protocol error: too big bulk count string")
        );
        assert_eq!(
            too_long(b"PING").as_deref(),
            Some("Protocol error: too big inline request")
        );
    }

    #[test]
    fn the_argument_count_is_bounded() {
        let at = format!("*{MAX_ARGUMENTS}\r\n");
        assert_eq!(
            decode_whole(at.as_bytes()),
            (vec![], None),
            "waits for more"
        );
        let over = format!("*{}\r\n", MAX_ARGUMENTS + 1);
        assert_eq!(
            decode_whole(over.as_bytes()).1.as_deref(),
            Some("Protocol error: invalid multibulk length")
        );
    }

    #[test]
    fn inline_quoting_as_sdssplitargs() {
        let split = |line: &[u8]| decode_whole(&[line, b"\r\n"].concat());
        let ok = |list: &[&[u8]]| (vec![args(list)], None);
        let unbalanced = (
            vec![],
            Some("Protocol error: unbalanced quotes in request".to_string()),
        );
        // Each line and what redis-server 7.0 took from it (checked side by side).
        assert_eq!(split(b"ECHO \"\\z\\\\\""), ok(&[b"ECHO", b"z\\"]));
        assert_eq!(split(b"ECHO \"x\\xZZ\""), ok(&[b"ECHO", b"xxZZ"]));
        assert_eq!(
            split(b"ECHO \"\\t\\r\\b\\a\\x7f\""),
            ok(&[b"ECHO", b"\t\r\x08\x07\x7f"])
        );
        assert_eq!(split(b"ECHO a\x0bb"), ok(&[b"ECHO", b"a\x0bb"]));
        assert_eq!(split(b"\x0bECHO a"), ok(&[b"ECHO", b"a"]));
        assert_eq!(split(b"ECHO \"a\"\tb"), ok(&[b"ECHO", b"a", b"b"]));
        assert_eq!(split(b"ECHO \"a\"\x0bb"), ok(&[b"ECHO", b"a", b"b"]));
        assert_eq!(split(b"ECHO '\\n'"), ok(&[b"ECHO", b"\\n"]));
        assert_eq!(split(b"ECHO a\x00b c"), ok(&[b"ECHO", b"a"]));
        assert_eq!(split(b"ECHO \"ab"), unbalanced);
        assert_eq!(split(b"ECHO 'ab"), unbalanced);
        assert_eq!(split(b"ECHO \"ab\\\""), unbalanced);
        assert_eq!(split(b"ECHO a\"b c\"d"), unbalanced);
        assert_eq!(split(b"ECHO 'a'b"), unbalanced);
        assert_eq!(split(b"ECHO \"a\x00\""), unbalanced);
    }

    #[test]
    fn integers_in_their_canonical_form_only() {
        for (text, value) in [
            (&b"0"[..], Some(0)),
            (b"42", Some(42)),
            (b"-42", Some(-42)),
            (b"9223372036854775807", Some(i64::MAX)),
            (b"-9223372036854775808", Some(i64::MIN)),
            (b"9223372036854775808", None),
            (b"-9223372036854775809", None),
            (b"18446744073709551616", None),
            (b"01", None),
            (b"-0", None),
            (b"-01", None),
            (b"00", None),
            (b"+1", None),
            (b" 1", None),
            (b"1 ", None),
            (b"1x", None),
            (b"-", None),
            (b"", None),
            (b"000000000000000000001", None),
        ] {
            assert_eq!(
                parse_integer(text),
                value,
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn an_array_fed_in_parts_encodes_as_the_whole_and_its_size_is_known_before() {
        let items = vec![Some(Bytes::from_static(b"v")), None, Some(Bytes::new())];
        let mut codec = Resp::new(64, Arc::default());
        let mut whole = BytesMut::new();
        codec
            .encode(Reply::Array(items.clone()), &mut whole)
            .unwrap();
        assert_eq!(&whole[..], b"*3\r\n$1\r\nv\r\n$-1\r\n$0\r\n\r\n");
        let mut parts = BytesMut::new();
        codec.encode(ArrayHeader(items.len()), &mut parts).unwrap();
        let mut size = array_header_len(items.len());
        for item in items {
            size += bulk_reply_len(item.as_ref().map(Bytes::len));
            codec.encode(Reply::Bulk(item), &mut parts).unwrap();
        }
        assert_eq!(parts, whole);
        assert_eq!(size, whole.len());
        for length in [0, 9, 10, 99, 100, 123_456] {
            let mut one = BytesMut::new();
            codec
                .encode(Reply::Bulk(Some(Bytes::from(vec![0; length]))), &mut one)
                .unwrap();
            assert_eq!(bulk_reply_len(Some(length)), one.len(), "{length}");
        }
    }
}
