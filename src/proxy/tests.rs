use std::net::SocketAddr;

use ppp::v2::{self, Builder, Command, Protocol, Version};

use super::*;

fn v2_header(
    command: Command,
    addresses: impl Into<v2::Addresses>,
    tlvs: &[(u8, &[u8])],
) -> Vec<u8> {
    let mut builder = Builder::with_addresses(Version::Two | command, Protocol::Stream, addresses);
    for (kind, value) in tlvs {
        builder = builder.write_tlv(*kind, value).unwrap();
    }
    builder.build().unwrap()
}

fn addresses(source: &str, destination: &str) -> (SocketAddr, SocketAddr) {
    (source.parse().unwrap(), destination.parse().unwrap())
}

/// What a socket receiving `input` in `chunks` would see: the reader's outcome and how many
/// bytes it took off the socket.
fn simulate(input: &[u8], chunks: &[usize]) -> (Result<ProxyHeader, HeaderError>, usize) {
    let mut reader = HeaderReader::default();
    let mut arrived = 0;
    let mut chunks = chunks.iter();
    let mut taken = 0;
    loop {
        if taken == arrived {
            match chunks.next() {
                Some(&size) => arrived = (arrived + size.max(1)).min(input.len()),
                None => arrived = input.len(),
            }
            if taken == arrived {
                // The peer closed.
                return (Err(HeaderError::Truncated), taken);
            }
        }
        let waiting = &input[taken..arrived.min(taken + PEEK)];
        match reader.step(waiting) {
            Step::More => taken += waiting.len(),
            Step::Done { consume, header } => {
                assert!(consume <= waiting.len(), "took more than was waiting");
                return (Ok(header), taken + consume);
            }
            Step::Refuse(error) => return (Err(error), taken),
        }
    }
}

#[test]
fn networks_parse_and_match() {
    let network: Network = "10.0.0.0/8".parse().unwrap();
    assert!(network.contains("10.255.1.2".parse().unwrap()));
    assert!(!network.contains("11.0.0.1".parse().unwrap()));
    assert!(!network.contains("::ffff:10.0.0.1".parse().unwrap()));
    let single: Network = "127.0.0.1".parse().unwrap();
    assert_eq!(single.to_string(), "127.0.0.1/32");
    assert!(!single.contains("127.0.0.2".parse().unwrap()));
    let everything: Network = "0.0.0.0/0".parse().unwrap();
    assert!(everything.contains("203.0.113.9".parse().unwrap()));
    let v6: Network = "2001:db8::/32".parse().unwrap();
    assert!(v6.contains("2001:db8:1::7".parse().unwrap()));
    assert!(!v6.contains("2001:db9::1".parse().unwrap()));
    assert!("::1"
        .parse::<Network>()
        .unwrap()
        .contains("::1".parse().unwrap()));
    for bad in [
        "",
        "10.0.0.0/",
        "10.0.0.0/33",
        "::/129",
        "host/8",
        "10.0.0.0/-1",
        "1.2.3/8",
    ] {
        assert!(bad.parse::<Network>().is_err(), "{bad:?} parsed");
    }
}

#[test]
fn trust_matches_mapped_addresses_as_ipv4() {
    let settings = ProxyProtocol::new().trust("127.0.0.0/8".parse().unwrap());
    assert!(settings.trusts("127.0.0.1".parse().unwrap()));
    assert!(settings.trusts("::ffff:127.0.0.1".parse().unwrap()));
    assert!(!settings.trusts("::1".parse().unwrap()));
    assert!(!ProxyProtocol::new().trusts("127.0.0.1".parse().unwrap()));
}

#[test]
fn version_1_tcp4_tcp6_and_unknown() {
    let input = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\nhello";
    let (header, taken) = simulate(input, &[input.len()]);
    let header = header.unwrap();
    assert_eq!(taken, input.len() - 5, "the data after the header stays");
    assert_eq!(header.version(), 1);
    assert!(!header.is_local());
    assert_eq!(header.source(), Some("192.0.2.7:40000".parse().unwrap()));
    assert_eq!(
        header.destination(),
        Some("198.51.100.1:443".parse().unwrap())
    );
    assert_eq!(header.tlvs().count(), 0);

    let input = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
    let header = simulate(input, &[3]).0.unwrap();
    assert_eq!(header.source(), Some("[2001:db8::1]:1".parse().unwrap()));

    let input = b"PROXY UNKNOWN\r\n";
    let header = simulate(input, &[input.len()]).0.unwrap();
    assert!(header.is_local());
    assert_eq!(header.source(), None);
}

#[test]
fn version_2_addresses_local_and_tlvs() {
    let mut ssl = vec![0x01 | 0x02, 0, 0, 0, 0];
    ssl.extend_from_slice(&[0x21, 0, 7]);
    ssl.extend_from_slice(b"TLSv1.3");
    ssl.extend_from_slice(&[0x22, 0, 6]);
    ssl.extend_from_slice(b"client");
    let input = v2_header(
        Command::Proxy,
        addresses("192.0.2.7:40000", "198.51.100.1:443"),
        &[
            (0x01, b"h2"),
            (0x02, b"example.com"),
            (0x05, b"id-42"),
            (0x20, &ssl),
        ],
    );
    let length = input.len();
    let mut with_data = input.clone();
    with_data.extend_from_slice(b"GET /");
    let (header, taken) = simulate(&with_data, &[with_data.len()]);
    let header = header.unwrap();
    assert_eq!(taken, length);
    assert_eq!(header.version(), 2);
    assert_eq!(header.source(), Some("192.0.2.7:40000".parse().unwrap()));
    assert_eq!(header.alpn(), Some(&b"h2"[..]));
    assert_eq!(header.authority(), Some("example.com"));
    assert_eq!(header.unique_id(), Some(&b"id-42"[..]));
    let ssl = header.ssl().unwrap();
    assert!(ssl.is_tls() && ssl.client_cert() && ssl.verified());
    assert_eq!(ssl.version(), Some("TLSv1.3"));
    assert_eq!(ssl.common_name(), Some("client"));
    assert_eq!(ssl.cipher(), None);

    let input = v2_header(
        Command::Proxy,
        addresses("[2001:db8::1]:5", "[2001:db8::2]:6"),
        &[],
    );
    let header = simulate(&input, &[1]).0.unwrap();
    assert_eq!(header.source(), Some("[2001:db8::1]:5".parse().unwrap()));

    let input = v2_header(Command::Local, v2::Addresses::Unspecified, &[]);
    let header = simulate(&input, &[16]).0.unwrap();
    assert!(header.is_local());
    assert_eq!(header.source(), None);
    // A LOCAL header that carries addresses still describes no client.
    let input = v2_header(Command::Local, addresses("192.0.2.7:1", "192.0.2.8:2"), &[]);
    assert!(simulate(&input, &[99]).0.unwrap().is_local());
}

#[test]
fn refusals() {
    let refuse = |input: &[u8]| simulate(input, &[input.len()]).0.unwrap_err();
    assert_eq!(refuse(b"GET / HTTP/1.1\r\n\r\n"), HeaderError::NotAHeader);
    assert_eq!(refuse(b"\x16\x03\x01\x02\x00"), HeaderError::NotAHeader);
    assert_eq!(refuse(b"PROXZ"), HeaderError::NotAHeader);
    assert!(matches!(
        refuse(b"PROXY TCP4\r\n"),
        HeaderError::Malformed(_)
    ));
    assert!(matches!(
        refuse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"),
        HeaderError::Malformed(_)
    ));
    assert!(matches!(
        refuse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX"),
        HeaderError::Malformed(_)
    ));
    assert!(matches!(
        refuse(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n"),
        HeaderError::Malformed(_)
    ));
    let long = format!("PROXY TCP4 {}", "1".repeat(200));
    assert_eq!(refuse(long.as_bytes()), HeaderError::TooLong);
    // The wrong version, a datagram header, a TLV that overruns the header.
    let mut wrong_version = v2_header(Command::Proxy, addresses("1.2.3.4:1", "5.6.7.8:2"), &[]);
    wrong_version[12] = 0x31;
    assert!(matches!(refuse(&wrong_version), HeaderError::Malformed(_)));
    let datagram = Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Datagram,
        addresses("1.2.3.4:1", "5.6.7.8:2"),
    )
    .build()
    .unwrap();
    assert!(matches!(refuse(&datagram), HeaderError::Malformed(_)));
    let mut bad_tlv = v2_header(
        Command::Proxy,
        addresses("1.2.3.4:1", "5.6.7.8:2"),
        &[(1, b"h2")],
    );
    let last = bad_tlv.len() - 5;
    bad_tlv[last + 1] = 0;
    bad_tlv[last + 2] = 9;
    assert!(matches!(refuse(&bad_tlv), HeaderError::Malformed(_)));
    // Truncated: the peer closes mid-header.
    let input = v2_header(Command::Proxy, addresses("1.2.3.4:1", "5.6.7.8:2"), &[]);
    assert_eq!(
        simulate(&input[..20], &[20]).0.unwrap_err(),
        HeaderError::Truncated
    );
}

/// A header HAProxy 2.6 sent (`send-proxy-v2 proxy-v2-options crc32c`, a client on
/// 127.0.0.1:37690 to 127.0.0.1:57691), followed by the client's `hello`: its CRC32C TLV is the
/// last 7 bytes of the header.
const HAPROXY_CRC32C: &[u8] =
    b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x13\x7f\x00\x00\x01\x7f\x00\x00\x01\
\x93\x3a\xe1\x5b\x03\x00\x04\x9e\xa9\xd3\x58hello";

/// `header` (whose last TLV is a CRC32C TLV, its value zero) with its checksum filled in.
fn with_crc32c(mut header: Vec<u8>) -> Vec<u8> {
    let checksum = crc32c::Crc32c::new().update(&header).finish();
    let at = header.len() - 4;
    header[at..].copy_from_slice(&checksum.to_be_bytes());
    header
}

#[test]
fn a_crc32c_tlv_is_checked_against_the_whole_header() {
    let refuse = |input: &[u8]| simulate(input, &[input.len()]).0.unwrap_err();
    let malformed = |input: &[u8]| matches!(refuse(input), HeaderError::Malformed(_));

    // HAProxy's own: taken, up to the client's first bytes.
    let (header, taken) = simulate(HAPROXY_CRC32C, &[HAPROXY_CRC32C.len()]);
    let header = header.unwrap();
    assert_eq!(taken, HAPROXY_CRC32C.len() - b"hello".len());
    assert_eq!(header.source(), Some("127.0.0.1:37690".parse().unwrap()));
    assert_eq!(header.tlv(0x03), Some(&[0x9e, 0xa9, 0xd3, 0x58][..]));
    // One bit changed anywhere in the header, the checksum included, and it is refused.
    let length = taken;
    for at in [0, 13, 16, 20, 25, length - 5, length - 1] {
        let mut changed = HAPROXY_CRC32C.to_vec();
        changed[at] ^= 0x01;
        assert!(
            matches!(
                simulate(&changed, &[changed.len()]).0,
                Err(HeaderError::Malformed(_) | HeaderError::NotAHeader)
            ),
            "a change at byte {at} went unseen"
        );
    }
    // An address changed, with the length fields intact: only the checksum tells.
    let mut spoofed = HAPROXY_CRC32C.to_vec();
    spoofed[16] = 10;
    assert!(malformed(&spoofed));

    // Among other TLVs, before and after it; over IPv6 too.
    let built = with_crc32c(v2_header(
        Command::Proxy,
        addresses("[2001:db8::1]:5", "[2001:db8::2]:6"),
        &[(0x01, b"h2"), (0x05, b"id-7"), (0x03, &[0; 4])],
    ));
    assert!(simulate(&built, &[built.len()]).0.is_ok());
    let mut wrong = built.clone();
    let at = wrong.len() - 1;
    wrong[at] ^= 0x80;
    assert!(malformed(&wrong));

    // Two checksums, or one of the wrong size: refused.
    let two = with_crc32c(v2_header(
        Command::Proxy,
        addresses("1.2.3.4:1", "5.6.7.8:2"),
        &[(0x03, &[0; 4]), (0x03, &[0; 4])],
    ));
    assert!(malformed(&two));
    let short = v2_header(
        Command::Proxy,
        addresses("1.2.3.4:1", "5.6.7.8:2"),
        &[(0x03, &[0; 3])],
    );
    assert!(malformed(&short));
    // HAProxy's health check (`check-send-proxy`): LOCAL, no addresses, the checksum its one TLV.
    let health_check = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x07\x03\x00\x04\xa9\xb8\x7e\x8f";
    let header = simulate(health_check, &[health_check.len()]).0.unwrap();
    assert!(header.is_local());
    assert_eq!(header.tlv(0x03), Some(&[0xa9, 0xb8, 0x7e, 0x8f][..]));
    let mut wrong = health_check.to_vec();
    wrong[health_check.len() - 1] ^= 0x01;
    assert!(malformed(&wrong));
    // Unspecified addresses followed by bytes that are not TLVs: ignored, as before.
    let padded = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x02\x03\x00";
    assert!(simulate(padded, &[padded.len()]).0.unwrap().is_local());
    // Without one, nothing is checked.
    let plain = v2_header(
        Command::Proxy,
        addresses("1.2.3.4:1", "5.6.7.8:2"),
        &[(0x05, b"x")],
    );
    assert!(simulate(&plain, &[plain.len()]).0.is_ok());
}

#[test]
fn every_split_takes_exactly_the_header() {
    let mut v2 = v2_header(
        Command::Proxy,
        addresses("[2001:db8::1]:5", "[2001:db8::2]:6"),
        &[(0x02, b"example.com"), (0x05, &[7; 600])],
    );
    let v2_length = v2.len();
    v2.extend_from_slice(b"\x16\x03\x01 after");
    let v1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\nafter".to_vec();
    for (input, length) in [(v2, v2_length), (v1.clone(), v1.len() - 5)] {
        let whole = simulate(&input, &[input.len()]).0.unwrap();
        for first in 1..input.len() {
            for rest in [1, 2, 7, 512] {
                let (header, taken) = simulate(&input, &[first, rest]);
                assert_eq!(header.as_ref(), Ok(&whole), "split at {first}, then {rest}");
                assert_eq!(taken, length, "split at {first}, then {rest}");
            }
        }
    }
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

#[test]
fn arbitrary_bytes_never_panic_overread_or_stall() {
    let seeds: Vec<Vec<u8>> = vec![
        v2_header(
            Command::Proxy,
            addresses("192.0.2.7:40000", "198.51.100.1:443"),
            &[(0x20, &[1, 0, 0, 0, 0, 0x21, 0, 3, b'a', b'b', b'c'])],
        ),
        v2_header(Command::Local, v2::Addresses::Unspecified, &[]),
        b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n".to_vec(),
        b"PROXY UNKNOWN\r\n".to_vec(),
        Vec::new(),
    ];
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    for round in 0..200_000 {
        let mut input = seeds[round % seeds.len()].clone();
        // Mutate: flip, insert, delete or append random bytes.
        for _ in 0..random.below(4) {
            match random.below(4) {
                0 if !input.is_empty() => {
                    let at = random.below(input.len());
                    input[at] = random.next() as u8;
                }
                1 => {
                    let at = random.below(input.len() + 1);
                    input.insert(at, random.next() as u8);
                }
                2 if !input.is_empty() => {
                    let at = random.below(input.len());
                    input.remove(at);
                }
                _ => input.extend((0..random.below(40)).map(|_| random.next() as u8)),
            }
        }
        let chunks: Vec<usize> = (0..random.below(5)).map(|_| 1 + random.below(64)).collect();
        // `simulate` ends: every step takes at least one byte or finishes.
        let (outcome, taken) = simulate(&input, &chunks);
        assert!(taken <= input.len());
        if let Ok(header) = outcome {
            // What was taken parses alone to the same header.
            assert_eq!(
                parse(&input[..taken]),
                Step::Done {
                    consume: taken,
                    header
                }
            );
        }
    }
}
