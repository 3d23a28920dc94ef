//! The PROXY protocol (HAProxy's, versions 1 and 2): a load balancer in front of the server
//! starts every connection with a header naming the client it relays, so the server sees the
//! client's address instead of the balancer's.
//!
//! A listener opts in with [`Listener::proxy_protocol`](crate::Listener::proxy_protocol). Each of its
//! connections then reads the header on its own task, before the TLS handshake and before
//! [`on_connection_established`](crate::Callbacks::on_connection_established):
//! - the connection must come from one of the [trusted networks](ProxyProtocol::trust) (the
//!   balancers); from anywhere else it is reset at once, unread;
//! - the header must arrive complete within the [header timeout](ProxyProtocol::header_timeout)
//!   and be well formed (a version 1 line of at most 107 bytes, or a version 2 block);
//! - a version 2 header that carries a checksum (a `PP2_TYPE_CRC32C` TLV, HAProxy's
//!   `proxy-v2-options crc32c`) must match it: the CRC-32C of the whole header, computed with
//!   the checksum's own 4 bytes as zeros. A mismatch, a second checksum or one that is not 4
//!   bytes makes the header malformed;
//! - it is read without reading past it, so whatever the client sent after it (in the same
//!   segment or not) is the first data the application (or the TLS handshake) reads.
//!
//! A connection that breaks a rule ends before it is established, with
//! [`ClosureReason::ProxyProtocol`](crate::ClosureReason::ProxyProtocol): its closing events run
//! (`on_connection_closure`, `on_connection_closed`, `on_socket_released`), it is counted in
//! [`Stats::closures`](crate::Stats::closures), a `tracing` event at debug level says why, and the
//! client is reset. A client that closes or resets before sending a byte ends as
//! [`PeerClosed`](crate::ClosureReason::PeerClosed) or [`PeerReset`](crate::ClosureReason::PeerReset),
//! as for any connection (a TCP health check that does not send the header does this).
//!
//! Once the header is read, the client's address from it is the connection's
//! [`peer_addr`](crate::Connection::peer_addr), the address given to `on_connection_established`
//! and the one the [per-address cap](crate::ServerBuilder::max_connections_per_ip) counts; the
//! balancer's stays available as [`transport_peer_addr`](crate::Connection::transport_peer_addr),
//! and the whole header as [`Connection::proxy_header`](crate::Connection::proxy_header). A version 2
//! `LOCAL` header (the balancer's own health check, HAProxy's `check-send-proxy`) or a version 1
//! `UNKNOWN` one makes a normal connection with the socket's own addresses.
//!
//! Parsing is [`ppp`]'s, the most used PROXY protocol parser on crates.io; this module decides how
//! much to read and what the result means.
//!
//! ```
//! use std::time::Duration;
//! use switchboard::proxy::ProxyProtocol;
//! use switchboard::{Callbacks, Listener, Server};
//!
//! struct Nothing;
//! impl Callbacks for Nothing {}
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let balancers = ProxyProtocol::new()
//!     .trust("127.0.0.0/8".parse()?)
//!     .trust("10.1.0.0/16".parse()?)
//!     .header_timeout(Duration::from_secs(3));
//! let server = Server::builder()
//!     .listen(Listener::bind("127.0.0.1:0").proxy_protocol(balancers))
//!     .start(Nothing)
//!     .await?;
//! server.shutdown().await;
//! # Ok(()) }
//! ```

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use ppp::v1;
use ppp::v2;
use ppp::PartialResult;

use crate::proxy::crc32c::Crc32c;

/// How long a connection may take to send its whole PROXY header: long enough for a balancer
/// across a slow link, short enough that connections that say nothing are soon gone (the header
/// is the balancer's first write, sent with or right after the handshake).
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest version 1 header, line end included (the protocol's limit).
const V1_MAX: usize = 107;
/// The version 1 header's start.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The fixed part of a version 2 header: signature, version and command, family and protocol,
/// length.
const V2_FIXED: usize = 16;
/// How much is looked at in one go: every usual header (addresses and a few TLVs) fits; a larger
/// version 2 header takes more rounds.
pub(crate) const PEEK: usize = 512;

/// A listener's PROXY protocol settings: which peers may send a header, and how long they have.
#[derive(Debug, Clone)]
pub struct ProxyProtocol {
    trusted: Vec<Network>,
    header_timeout: Duration,
}

impl Default for ProxyProtocol {
    fn default() -> Self {
        ProxyProtocol::new()
    }
}

impl ProxyProtocol {
    /// Settings that trust no peer yet (add the balancers with [`trust`](ProxyProtocol::trust))
    /// and allow 5 s for the header (see [`header_timeout`](ProxyProtocol::header_timeout)).
    pub fn new() -> Self {
        ProxyProtocol {
            trusted: Vec::new(),
            header_timeout: DEFAULT_HEADER_TIMEOUT,
        }
    }

    /// Accepts headers from peers in `network`. Every connection to the listener must come from a
    /// trusted network and start with a header; one from elsewhere is reset unread. An
    /// IPv4-mapped IPv6 peer (`::ffff:a.b.c.d`) is matched as the IPv4 address.
    pub fn trust(mut self, network: Network) -> Self {
        self.trusted.push(network);
        self
    }

    /// How long a connection may take to send its whole header, from its accept. Default: 5 s,
    /// long enough for a balancer across a slow link, short enough that connections that say
    /// nothing are soon gone (the header is the balancer's first write, sent with or right after
    /// the handshake).
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// Whether a connection from `peer` may send a header.
    ///
    /// ```
    /// use switchboard::proxy::ProxyProtocol;
    /// let settings = ProxyProtocol::new().trust("10.0.0.0/8".parse().unwrap());
    /// assert!(settings.trusts([10, 1, 2, 3].into()));
    /// assert!(!settings.trusts([192, 168, 0, 1].into()));
    /// ```
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted.iter().any(|network| network.contains(peer))
    }

    pub(crate) fn trusts_anyone(&self) -> bool {
        !self.trusted.is_empty()
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.header_timeout
    }
}

/// An IP network: an address and a prefix length, written `10.0.0.0/8`, `::1/128`, or a single
/// address (`127.0.0.1`, meaning `/32`; `::1`, meaning `/128`).
///
/// ```
/// use switchboard::proxy::Network;
/// let network: Network = "192.168.0.0/16".parse().unwrap();
/// assert!(network.contains([192, 168, 7, 1].into()));
/// assert!(!network.contains([192, 169, 0, 1].into()));
/// assert!("10.0.0.0/33".parse::<Network>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    /// The network of `address` with the first `prefix` bits significant; `None` if `prefix` is
    /// longer than the address (32 bits for IPv4, 128 for IPv6). The host bits are ignored.
    pub fn new(address: IpAddr, prefix: u8) -> Option<Network> {
        let bits = match address {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        (prefix <= bits).then_some(Network { address, prefix })
    }

    /// Whether `address` is in this network (an address of the other family never is).
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.address, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// A network that did not parse: not `ADDRESS` or `ADDRESS/PREFIX`, or a prefix too long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkParseError(String);

impl fmt::Display for NetworkParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not an IP network (ADDRESS or ADDRESS/PREFIX): {:?}",
            self.0
        )
    }
}

impl std::error::Error for NetworkParseError {}

impl FromStr for Network {
    type Err = NetworkParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || NetworkParseError(text.to_owned());
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| error())?;
        let prefix = match prefix {
            Some(prefix) => prefix.parse().map_err(|_| error())?,
            None if address.is_ipv4() => 32,
            None => 128,
        };
        Network::new(address, prefix).ok_or_else(error)
    }
}

/// What a connection's PROXY header said, from
/// [`Connection::proxy_header`](crate::Connection::proxy_header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    version: u8,
    /// Source and destination, for a header that relays a TCP connection.
    addresses: Option<(SocketAddr, SocketAddr)>,
    local: bool,
    tlvs: Vec<(u8, Box<[u8]>)>,
}

/// Version 2 TLV types (the protocol's `PP2_TYPE_*`).
mod tlv {
    pub(super) const ALPN: u8 = 0x01;
    pub(super) const AUTHORITY: u8 = 0x02;
    pub(super) const CRC32C: u8 = 0x03;
    pub(super) const UNIQUE_ID: u8 = 0x05;
    pub(super) const SSL: u8 = 0x20;
    pub(super) const SSL_VERSION: u8 = 0x21;
    pub(super) const SSL_CN: u8 = 0x22;
    pub(super) const SSL_CIPHER: u8 = 0x23;
    pub(super) const SSL_SIG_ALG: u8 = 0x24;
    pub(super) const SSL_KEY_ALG: u8 = 0x25;
    pub(super) const NETNS: u8 = 0x30;
}

impl ProxyHeader {
    /// The protocol version: 1 (text) or 2 (binary).
    pub fn version(&self) -> u8 {
        self.version
    }

    /// Whether the balancer sent it on its own behalf (a version 2 `LOCAL` command, as HAProxy's
    /// health checks with `check-send-proxy`) or relayed a client it cannot describe (version 1
    /// `UNKNOWN`, version 2 with no or non-IP addresses): the connection then keeps the socket's
    /// own addresses.
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// The relayed client's address, when the header names one.
    pub fn source(&self) -> Option<SocketAddr> {
        self.addresses.map(|(source, _)| source)
    }

    /// The address the client connected to (the balancer's front end), when the header names one.
    pub fn destination(&self) -> Option<SocketAddr> {
        self.addresses.map(|(_, destination)| destination)
    }

    /// Every version 2 TLV (type, value), in the order sent; none for version 1.
    pub fn tlvs(&self) -> impl Iterator<Item = (u8, &[u8])> + '_ {
        self.tlvs.iter().map(|(kind, value)| (*kind, &**value))
    }

    /// The value of the first TLV of type `kind`.
    pub fn tlv(&self, kind: u8) -> Option<&[u8]> {
        self.tlvs()
            .find(|(found, _)| *found == kind)
            .map(|(_, value)| value)
    }

    /// The protocol the client negotiated with the balancer by ALPN (`PP2_TYPE_ALPN`), e.g.
    /// `b"h2"`.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.tlv(tlv::ALPN)
    }

    /// The host name the client asked for (`PP2_TYPE_AUTHORITY`, the TLS SNI), if it is UTF-8.
    pub fn authority(&self) -> Option<&str> {
        self.tlv(tlv::AUTHORITY)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// The balancer's identifier for the connection (`PP2_TYPE_UNIQUE_ID`, HAProxy's
    /// `unique-id`).
    pub fn unique_id(&self) -> Option<&[u8]> {
        self.tlv(tlv::UNIQUE_ID)
    }

    /// The network namespace the balancer accepted the client in (`PP2_TYPE_NETNS`).
    pub fn netns(&self) -> Option<&str> {
        self.tlv(tlv::NETNS)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// What the balancer knows of the client's TLS session (`PP2_TYPE_SSL`), when the client
    /// spoke TLS to it; `None` also when the TLV is malformed.
    pub fn ssl(&self) -> Option<ProxySsl<'_>> {
        ProxySsl::parse(self.tlv(tlv::SSL)?)
    }
}

/// The client's TLS session as the balancer saw it: the `PP2_TYPE_SSL` TLV of a version 2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxySsl<'a> {
    client: u8,
    verify: u32,
    /// The sub-TLVs, checked to be well formed.
    sub: &'a [u8],
}

impl<'a> ProxySsl<'a> {
    fn parse(value: &'a [u8]) -> Option<Self> {
        let (client, rest) = value.split_first()?;
        let verify = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        let sub = &rest[4..];
        let ssl = ProxySsl {
            client: *client,
            verify,
            sub,
        };
        // Every sub-TLV must fit.
        let mut rest = sub;
        while !rest.is_empty() {
            rest = sub_tlv(rest)?.2;
        }
        Some(ssl)
    }

    /// The client connected over TLS (`PP2_CLIENT_SSL`).
    pub fn is_tls(&self) -> bool {
        self.client & 0x01 != 0
    }

    /// The client presented a certificate on this connection (`PP2_CLIENT_CERT_CONN`).
    pub fn client_cert(&self) -> bool {
        self.client & 0x02 != 0
    }

    /// The client certificate was verified: the TLV's `verify` field is zero.
    pub fn verified(&self) -> bool {
        self.verify == 0
    }

    fn sub(&self, kind: u8) -> Option<&'a str> {
        let mut rest = self.sub;
        while !rest.is_empty() {
            let (found, value, next) = sub_tlv(rest)?;
            if found == kind {
                return std::str::from_utf8(value).ok();
            }
            rest = next;
        }
        None
    }

    /// The TLS version, e.g. `TLSv1.3` (`PP2_SUBTYPE_SSL_VERSION`).
    pub fn version(&self) -> Option<&'a str> {
        self.sub(tlv::SSL_VERSION)
    }

    /// The client certificate's common name (`PP2_SUBTYPE_SSL_CN`).
    pub fn common_name(&self) -> Option<&'a str> {
        self.sub(tlv::SSL_CN)
    }

    /// The cipher, e.g. `ECDHE-RSA-AES128-GCM-SHA256` (`PP2_SUBTYPE_SSL_CIPHER`).
    pub fn cipher(&self) -> Option<&'a str> {
        self.sub(tlv::SSL_CIPHER)
    }

    /// The client certificate's signature algorithm (`PP2_SUBTYPE_SSL_SIG_ALG`).
    pub fn signature_algorithm(&self) -> Option<&'a str> {
        self.sub(tlv::SSL_SIG_ALG)
    }

    /// The client certificate's key algorithm (`PP2_SUBTYPE_SSL_KEY_ALG`).
    pub fn key_algorithm(&self) -> Option<&'a str> {
        self.sub(tlv::SSL_KEY_ALG)
    }
}

/// Splits one sub-TLV (type, 16-bit big-endian length, value) off `bytes`.
fn sub_tlv(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let kind = *bytes.first()?;
    let length = usize::from(u16::from_be_bytes(bytes.get(1..3)?.try_into().ok()?));
    let value = bytes.get(3..3 + length)?;
    Some((kind, value, &bytes[3 + length..]))
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// The first bytes are not the start of a PROXY header.
    NotAHeader,
    /// A version 1 line longer than the protocol allows.
    TooLong,
    /// It starts as a header and is not a valid one.
    Malformed(String),
    /// The peer closed before the header was complete.
    Truncated,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::NotAHeader => f.write_str("no PROXY header: the data starts otherwise"),
            HeaderError::TooLong => write!(f, "a version 1 header longer than {V1_MAX} bytes"),
            HeaderError::Malformed(why) => write!(f, "a malformed PROXY header: {why}"),
            HeaderError::Truncated => f.write_str("the peer closed in the middle of the header"),
        }
    }
}

/// One step of reading a header, decided from the bytes consumed so far and those waiting.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Every waiting byte belongs to the header but it is not complete: consume them all and
    /// wait for more.
    More,
    /// The header ends `consume` bytes into the waiting ones: consume exactly those.
    Done {
        consume: usize,
        header: ProxyHeader,
    },
    Refuse(HeaderError),
}

/// Reads a header without reading past it: the pure half. The caller looks at what is waiting
/// on the socket without taking it (a peek), asks [`HeaderReader::step`], and takes exactly what
/// the step says. Bytes that are taken are all header bytes, so the rest stays in the socket for
/// the application or the TLS handshake.
#[derive(Debug, Default)]
pub(crate) struct HeaderReader {
    /// The header bytes taken so far.
    head: Vec<u8>,
}

impl HeaderReader {
    /// Whether no byte was taken yet.
    pub(crate) fn is_empty(&self) -> bool {
        self.head.is_empty()
    }

    /// Decides what to do about the `waiting` bytes (not empty).
    pub(crate) fn step(&mut self, waiting: &[u8]) -> Step {
        let taken = self.head.len();
        self.head.extend_from_slice(waiting);
        match parse(&self.head) {
            Step::Done { consume, header } => {
                // The bytes taken before were an incomplete header, so it ends in `waiting`.
                self.head.truncate(consume);
                Step::Done {
                    consume: consume.saturating_sub(taken),
                    header,
                }
            }
            other => other,
        }
    }
}

/// Parses `input`, which starts at the connection's first byte. `Done::consume` is the header's
/// whole length.
pub(crate) fn parse(input: &[u8]) -> Step {
    let is_v2 = if input.len() < v2::PROTOCOL_PREFIX.len() {
        v2::PROTOCOL_PREFIX.starts_with(input)
    } else {
        input.starts_with(v2::PROTOCOL_PREFIX)
    };
    if is_v2 {
        return parse_v2(input);
    }
    let prefix = &V1_PREFIX[..input.len().min(V1_PREFIX.len())];
    if !input.starts_with(prefix) {
        return Step::Refuse(HeaderError::NotAHeader);
    }
    parse_v1(input)
}

fn parse_v1(input: &[u8]) -> Step {
    // The line is complete at its CR LF; a CR anywhere but at the very end settles it too (the
    // parser then says whether a LF follows).
    let complete = input
        .iter()
        .position(|&byte| byte == b'\r')
        .is_some_and(|cr| cr + 1 < input.len());
    if !complete {
        return if input.contains(&b'\n') {
            Step::Refuse(HeaderError::Malformed("a line end without CR".into()))
        } else if input.len() >= V1_MAX {
            Step::Refuse(HeaderError::TooLong)
        } else {
            Step::More
        };
    }
    match v1::Header::try_from(input) {
        Ok(header) => {
            let consume = header.header.len();
            if consume > V1_MAX {
                return Step::Refuse(HeaderError::TooLong);
            }
            let addresses = match header.addresses {
                v1::Addresses::Unknown => None,
                v1::Addresses::Tcp4(ip) => Some((
                    SocketAddr::new(ip.source_address.into(), ip.source_port),
                    SocketAddr::new(ip.destination_address.into(), ip.destination_port),
                )),
                v1::Addresses::Tcp6(ip) => Some((
                    SocketAddr::new(ip.source_address.into(), ip.source_port),
                    SocketAddr::new(ip.destination_address.into(), ip.destination_port),
                )),
            };
            Step::Done {
                consume,
                header: ProxyHeader {
                    version: 1,
                    local: addresses.is_none(),
                    addresses,
                    tlvs: Vec::new(),
                },
            }
        }
        Err(error) => Step::Refuse(HeaderError::Malformed(error.to_string())),
    }
}

fn parse_v2(input: &[u8]) -> Step {
    let header = match v2::Header::try_from(input) {
        Ok(header) => header,
        Err(error) if error.is_incomplete() => return Step::More,
        Err(error) => return Step::Refuse(HeaderError::Malformed(error.to_string())),
    };
    if header.protocol == v2::Protocol::Datagram {
        return Step::Refuse(HeaderError::Malformed("a datagram (UDP) header".into()));
    }
    let mut tlvs = Vec::new();
    for tlv in header.tlvs() {
        match tlv {
            Ok(tlv) => tlvs.push((tlv.kind, Box::from(&*tlv.value))),
            Err(error) => return Step::Refuse(HeaderError::Malformed(error.to_string())),
        }
    }
    let mut tlvs_start = header.len() - header.tlv_bytes().len();
    if matches!(header.addresses, v2::Addresses::Unspecified) {
        if let Some(found) = unspecified_tlvs(&header.as_bytes()[V2_FIXED..]) {
            tlvs = found;
            tlvs_start = V2_FIXED;
        }
    }
    if let Err(why) = check_crc32c(header.as_bytes(), tlvs_start, &tlvs) {
        return Step::Refuse(HeaderError::Malformed(why));
    }
    let relayed = match (header.command, header.addresses) {
        (v2::Command::Local, _) => None,
        (v2::Command::Proxy, v2::Addresses::IPv4(ip)) => Some((
            SocketAddr::new(ip.source_address.into(), ip.source_port),
            SocketAddr::new(ip.destination_address.into(), ip.destination_port),
        )),
        (v2::Command::Proxy, v2::Addresses::IPv6(ip)) => Some((
            SocketAddr::new(ip.source_address.into(), ip.source_port),
            SocketAddr::new(ip.destination_address.into(), ip.destination_port),
        )),
        // Unspecified or UNIX addresses: the receiver uses the connection's own.
        (v2::Command::Proxy, _) => None,
    };
    Step::Done {
        consume: header.len(),
        header: ProxyHeader {
            version: 2,
            local: relayed.is_none(),
            addresses: relayed,
            tlvs,
        },
    }
}

/// The TLVs of a version 2 header whose addresses are unspecified (`AF_UNSPEC`, as in HAProxy's
/// `LOCAL` health checks): such addresses take no bytes, so TLVs start right after the 16-byte
/// fixed part, but [`ppp`] counts the whole payload as addresses. `None` if the payload is not a
/// sequence of whole TLVs: it is then ignored, as the protocol asks of unspecified addresses.
fn unspecified_tlvs(payload: &[u8]) -> Option<Vec<(u8, Box<[u8]>)>> {
    let mut tlvs = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        let (kind, value, next) = sub_tlv(rest)?;
        tlvs.push((kind, Box::from(value)));
        rest = next;
    }
    Some(tlvs)
}

/// Checks the header's `PP2_TYPE_CRC32C` TLV, if it has one: the CRC-32C of the whole header
/// (`bytes`, from the signature through the last TLV) computed with the TLV's 4-byte value set
/// to zero must be that value (big-endian), as the protocol's section 2.2.5 asks of a receiver.
/// `tlvs` are the header's TLVs in order, starting at `tlvs_start`. A header with more than one
/// such TLV, or one whose value is not 4 bytes, is refused: which would it be the checksum of?
fn check_crc32c(bytes: &[u8], tlvs_start: usize, tlvs: &[(u8, Box<[u8]>)]) -> Result<(), String> {
    let mut found = None;
    let mut offset = tlvs_start;
    for (kind, value) in tlvs {
        // A TLV is its type, a 2-byte length, then the value.
        let value_start = offset + 3;
        offset = value_start + value.len();
        if *kind != tlv::CRC32C {
            continue;
        }
        if found.is_some() {
            return Err("more than one CRC32C TLV".into());
        }
        let Ok(sent) = <[u8; 4]>::try_from(&**value) else {
            return Err(format!("a CRC32C TLV of {} bytes, not 4", value.len()));
        };
        found = Some((value_start, u32::from_be_bytes(sent)));
    }
    let Some((at, sent)) = found else {
        return Ok(());
    };
    let computed = Crc32c::new()
        .update(&bytes[..at])
        .update(&[0; 4])
        .update(&bytes[at + 4..])
        .finish();
    if computed == sent {
        Ok(())
    } else {
        Err(format!(
            "the CRC32C checksum does not match (the header says {sent:#010x}, its bytes give \
             {computed:#010x})"
        ))
    }
}

mod crc32c;
#[cfg(test)]
mod tests;
