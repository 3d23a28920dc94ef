//! `examples/resp_server` driven by clients nobody here wrote: Debian's `redis-cli` (each
//! command, with redis-server's exact replies) and `redis-benchmark` (PING, SET and GET from 50
//! clients, with and without pipelining, and exact counts afterwards); inline commands (quoted
//! ones too), integer edge cases and protocol errors over a plain socket; and its ordered
//! shutdown on SIGTERM. Then its bounds under abuse: an MGET that would make a reply of any size
//! out of a short request (under a 1 GiB address-space limit, with clients that never read),
//! the maximum bulk and reply sizes, a large command trickled in small reads (the decoder's
//! work, read from INFO), the idle timeout and the cap on clients.
//!
//! Without `redis-cli` and `redis-benchmark` on the PATH the tests say so and pass, unless
//! `SWITCHBOARD_REQUIRE_REDIS` is set (as `.ci/run` sets it, after installing `redis-tools`):
//! then they fail.
#![cfg(target_os = "linux")]

mod common;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether the redis tools are installed; panics if they are required and missing.
fn redis_tools() -> bool {
    let found = ["redis-cli", "redis-benchmark"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success())
    });
    if !found {
        assert!(
            std::env::var_os("SWITCHBOARD_REQUIRE_REDIS").is_none(),
            "redis-cli and redis-benchmark are required (SWITCHBOARD_REQUIRE_REDIS is set) \
             but not installed"
        );
        eprintln!("skipped: redis-tools is not installed (apt-get install redis-tools)");
    }
    found
}

fn start_server() -> EchoServer {
    start_server_with(&[])
}

/// The server with `options` besides its address and threads.
fn start_server_with(options: &[&str]) -> EchoServer {
    let mut args = vec!["--listen", "127.0.0.1:0", "--threads", "2"];
    args.extend_from_slice(options);
    EchoServer::start_example("resp_server", &args)
}

/// Runs `tool` with `args` against `address`, at most [`WAIT`] (through coreutils' `timeout`).
fn run(tool: &str, address: SocketAddr, args: &[&str]) -> Output {
    let port = address.port().to_string();
    let limit = WAIT.as_secs().to_string();
    let output = Command::new("timeout")
        .args([limit.as_str(), tool, "-h", "127.0.0.1", "-p", port.as_str()])
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {tool}: {error}"));
    assert!(
        output.status.success(),
        "{tool} {args:?}: {}\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `redis-cli` with `args`, its output formatted as a terminal shows it (`(integer) 1`).
fn cli(address: SocketAddr, args: &[&str]) -> String {
    let mut all = vec!["--no-raw"];
    all.extend_from_slice(args);
    String::from_utf8(run("redis-cli", address, &all).stdout).expect("text")
}

#[test]
fn each_command_answers_as_redis_server_does() {
    if !redis_tools() {
        return;
    }
    let mut server = start_server();
    let address = server.address;
    // The replies of redis-server 7 to the same commands (checked side by side).
    let expected: &[(&[&str], &str)] = &[
        (&["PING"], "PONG\n"),
        (&["PING", "hi there"], "\"hi there\"\n"),
        (&["ECHO", "hello"], "\"hello\"\n"),
        (&["SET", "k", "v"], "OK\n"),
        (&["GET", "k"], "\"v\"\n"),
        (&["GET", "missing"], "(nil)\n"),
        (&["SET", "n", "41"], "OK\n"),
        (&["INCR", "n"], "(integer) 42\n"),
        (&["INCR", "fresh"], "(integer) 1\n"),
        (
            &["INCR", "k"],
            "(error) ERR value is not an integer or out of range\n",
        ),
        (&["SET", "max", "9223372036854775807"], "OK\n"),
        (
            &["INCR", "max"],
            "(error) ERR increment or decrement would overflow\n",
        ),
        (&["EXISTS", "k", "n", "nope", "k"], "(integer) 3\n"),
        (
            &["MGET", "k", "n", "nope"],
            "1) \"v\"\n2) \"42\"\n3) (nil)\n",
        ),
        (&["DBSIZE"], "(integer) 4\n"),
        (&["DEL", "k", "nope", "fresh"], "(integer) 2\n"),
        (&["EXISTS", "k"], "(integer) 0\n"),
        (&["get", "n"], "\"42\"\n"),
        (
            &["FOO", "a", "b"],
            "(error) ERR unknown command 'FOO', with args beginning with: 'a' 'b' \n",
        ),
        (
            &["CONFIG", "GET", "save"],
            "(error) ERR unknown command 'CONFIG', with args beginning with: 'GET' 'save' \n",
        ),
        (
            &["GET"],
            "(error) ERR wrong number of arguments for 'get' command\n",
        ),
        (
            &["set", "a"],
            "(error) ERR wrong number of arguments for 'set' command\n",
        ),
        (&["SET", "a", "b", "c"], "(error) ERR syntax error\n"),
        (
            &["MGET"],
            "(error) ERR wrong number of arguments for 'mget' command\n",
        ),
        (&["QUIT"], "OK\n"),
    ];
    for (args, reply) in expected {
        assert_eq!(&cli(address, args), reply, "redis-cli {args:?}");
    }
    // Binary-safe values, through redis-cli's -x (the value read from stdin).
    let binary = "a\0b\r\n\u{7f}";
    let mut set = Command::new("redis-cli")
        .args(["-p", &address.port().to_string(), "-x", "SET", "bin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    set.stdin
        .take()
        .unwrap()
        .write_all(binary.as_bytes())
        .unwrap();
    assert!(set.wait_with_output().unwrap().stdout.starts_with(b"OK"));
    assert_eq!(cli(address, &["GET", "bin"]), "\"a\\x00b\\r\\n\\x7f\"\n");
    assert!(server.stop().success());
}

/// Writes `request` on a plain socket and reads what comes back until the server closes, or
/// until a short quiet spell if it does not (then `open` is true).
async fn raw(address: SocketAddr, request: &[u8]) -> (Vec<u8>, bool) {
    let mut client = client(address).await;
    bounded("write", client.write_all(request)).await.unwrap();
    let mut reply = Vec::new();
    let mut chunk = [0; 4096];
    loop {
        let quiet = std::time::Duration::from_millis(300);
        match tokio::time::timeout(quiet, client.read(&mut chunk)).await {
            Ok(Ok(0)) => return (reply, false),
            Ok(Ok(n)) => reply.extend_from_slice(&chunk[..n]),
            Ok(Err(error)) => panic!("read: {error}"),
            Err(_) => return (reply, true),
        }
    }
}

#[tokio::test]
async fn inline_commands_and_protocol_errors_as_redis_server() {
    let mut server = start_server();
    let address = server.address;
    // Each request and redis-server 7's answer to it (checked side by side); `true`: the
    // connection stays open.
    let cases: &[(&[u8], &[u8], bool)] = &[
        (
            b"PING\r\nECHO hi\r\n\r\nSET  x   1 \nGET x\r\n",
            b"+PONG\r\n$2\r\nhi\r\n+OK\r\n$1\r\n1\r\n",
            true,
        ),
        (
            b"*2\r\n$4\r\nECHO\r\n$2\r\nab\r\n*1\r\n$4\r\nPING\r\n",
            b"$2\r\nab\r\n+PONG\r\n",
            true,
        ),
        (b"*0\r\n*-1\r\nPING\r\n", b"+PONG\r\n", true),
        (
            b"*1\r\n$4\r\nPING\r\n*x\r\nPING\r\n",
            b"+PONG\r\n-ERR Protocol error: invalid multibulk length\r\n",
            false,
        ),
        (
            b"*2\r\n$4\r\nECHO\r\n:3\r\n",
            b"-ERR Protocol error: expected '$', got ':'\r\n",
            false,
        ),
        (
            b"*1\r\n$-5\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
            false,
        ),
        (b"PING\r\nQUIT\r\nPING\r\n", b"+PONG\r\n+OK\r\n", false),
    ];
    each_answers(address, cases).await;
    // A request cut at every byte is answered once whole.
    let mut client = client(address).await;
    client.set_nodelay(true).unwrap();
    for byte in b"*3\r\n$3\r\nSET\r\n$3\r\ncut\r\n$5\r\nhello\r\n" {
        bounded("write", client.write_all(&[*byte])).await.unwrap();
    }
    let mut reply = [0; 5];
    bounded("reply", client.read_exact(&mut reply))
        .await
        .unwrap();
    assert_eq!(&reply, b"+OK\r\n");
    assert_eq!(raw(address, b"GET cut\r\n").await.0, b"$5\r\nhello\r\n");
    drop(client);
    assert!(server.stop().success());
}

/// `redis-benchmark` with `args` (`--csv`): each test's name and requests per second.
fn benchmark(address: SocketAddr, args: &[&str]) -> Vec<(String, f64)> {
    let output = run("redis-benchmark", address, args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // redis-benchmark asks for the server's CONFIG first, which this subset refuses: that
    // warning is all that may be said on stderr.
    for line in stderr.lines() {
        assert!(
            line.trim().is_empty() || line.contains("Could not fetch server CONFIG"),
            "redis-benchmark {args:?} said: {stderr}"
        );
    }
    assert!(
        !stdout.contains("rror"),
        "redis-benchmark {args:?}: {stdout}"
    );
    stdout
        .lines()
        .skip(1) // the CSV header
        .map(|line| {
            let fields: Vec<&str> = line.split(',').map(|f| f.trim_matches('"')).collect();
            (
                fields[0].to_string(),
                fields[1].parse().expect("requests per second"),
            )
        })
        .collect()
}

#[test]
fn redis_benchmark_with_and_without_pipelining_and_exact_counts_after() {
    if !redis_tools() {
        return;
    }
    let mut server = start_server();
    let address = server.address;
    for pipeline in ["1", "16"] {
        let results = benchmark(
            address,
            &[
                "-t",
                "ping,set,get",
                "-n",
                "10000",
                "-c",
                "50",
                "-P",
                pipeline,
                "--csv",
            ],
        );
        let names: Vec<&str> = results.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            ["PING_INLINE", "PING_MBULK", "SET", "GET"],
            "-P {pipeline}"
        );
        assert!(results.iter().all(|(_, rate)| *rate > 0.0), "{results:?}");
    }
    // Without -r, SET and GET use the one key `key:__rand_int__`, with 3 random bytes.
    assert_eq!(cli(address, &["DBSIZE"]), "(integer) 1\n");
    let value = cli(address, &["GET", "key:__rand_int__"]);
    assert_eq!(value.len(), "\"xxx\"\n".len(), "{value}");
    // Every request is carried out exactly once: 10,000 INCRs from 50 clients, then 10,000
    // more in pipelines of 16.
    for pipeline in ["1", "16"] {
        benchmark(
            address,
            &[
                "-n", "10000", "-c", "50", "-P", pipeline, "--csv", "INCR", "counter",
            ],
        );
    }
    assert_eq!(cli(address, &["GET", "counter"]), "\"20000\"\n");
    // A keyspace of 100 keys (-r): every key written holds the run's one value, and DBSIZE
    // counts them.
    benchmark(
        address,
        &[
            "-t", "set", "-n", "10000", "-c", "50", "-P", "16", "-r", "100", "--csv",
        ],
    );
    let keys: Vec<String> = (0..100).map(|i| format!("key:{i:012}")).collect();
    let mut mget = vec!["MGET"];
    mget.extend(keys.iter().map(String::as_str));
    let values = cli(address, &mget);
    assert_eq!(values.lines().count(), 100);
    let written: Vec<&str> = values
        .lines()
        .filter(|line| !line.ends_with("(nil)"))
        .map(|line| line.split_once(") ").expect("an array line").1)
        .collect();
    assert!(
        written
            .iter()
            .all(|value| *value == written[0] && value.len() == 5),
        "{values}"
    );
    let written = written.len();
    assert!(
        written > 90,
        "{written} of 100 keys written by 10,000 random SETs: {values}"
    );
    assert_eq!(
        cli(address, &["DBSIZE"]),
        format!("(integer) {}\n", written + 2)
    );
    let stopped = server.stop();
    assert!(stopped.success(), "{stopped}");
}

#[tokio::test]
async fn sigterm_closes_every_connection_in_order_and_exits_zero() {
    let mut server = start_server();
    // One connection, served and then idle. (A second one that the client had just dropped
    // could still be open on the server's side when the signal comes, and be counted.)
    let mut idle = client(server.address).await;
    bounded("PING", idle.write_all(b"PING\r\n")).await.unwrap();
    assert_eq!(read_line(&mut idle).await, b"+PONG\r\n");
    // The idle client closes when the server does, as a Redis client would.
    let reader = tokio::spawn(async move { read_to_end(&mut idle).await });
    let (status, log) = tokio::task::spawn_blocking(move || (server.stop(), server.log.clone()))
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    let (rest, ended) = bounded("the idle client", reader).await.unwrap();
    assert!(rest.is_empty());
    ended.expect("FIN, not a reset");
    let report = log.after("shutdown complete ");
    assert_eq!(report, ["graceful=1 forced=0 other=0"]);
}

/// Runs each request on a connection of its own and compares the answer, and whether the
/// connection stayed open, with `expected`.
async fn each_answers<R: AsRef<[u8]>, A: AsRef<[u8]>>(
    address: SocketAddr,
    expected: &[(R, A, bool)],
) {
    for (request, reply, open) in expected {
        let (request, reply) = (request.as_ref(), reply.as_ref());
        let (got, still_open) = raw(address, request).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(reply),
            "for {:?}",
            String::from_utf8_lossy(request)
        );
        assert_eq!(
            still_open,
            *open,
            "open after {:?}",
            String::from_utf8_lossy(request)
        );
    }
}

#[tokio::test]
async fn quoted_inline_arguments_as_redis_server() {
    let mut server = start_server();
    // Each request and redis-server 7.0's answer to it (checked side by side).
    let unbalanced: &[u8] = b"-ERR Protocol error: unbalanced quotes in request\r\n";
    let cases: &[(&[u8], &[u8], bool)] = &[
        (b"SET k \"a b\"\r\nGET k\r\n", b"+OK\r\n$3\r\na b\r\n", true),
        (
            b"SET k \"a\\x41\\n\\\"q\" \r\nGET k\r\n",
            b"+OK\r\n$5\r\naA\n\"q\r\n",
            true,
        ),
        (
            b"SET k 'it\\'s'\r\nGET k\r\n",
            b"+OK\r\n$4\r\nit's\r\n",
            true,
        ),
        (b"ECHO \"\\z\\\\\"\r\n", b"$2\r\nz\\\r\n", true),
        (b"ECHO \"\"\r\nECHO ''\r\n", b"$0\r\n\r\n$0\r\n\r\n", true),
        (
            b"ECHO \"a\"\tb\r\n",
            b"-ERR wrong number of arguments for 'echo' command\r\n",
            true,
        ),
        (b"SET k \"ab\"c\r\nPING\r\n", unbalanced, false),
        (b"SET k \"ab\r\nPING\r\n", unbalanced, false),
        (b"SET k 'ab\r\n", unbalanced, false),
        (b"SET k a\"b c\"d\r\n", unbalanced, false),
    ];
    each_answers(server.address, cases).await;
    assert!(server.stop().success());
}

#[tokio::test]
async fn integers_and_headers_only_in_their_canonical_form_as_redis_server() {
    let mut server = start_server();
    // redis-server 7.0's answers (checked side by side): leading zeros, `-0`, `+`, spaces and
    // more than 20 bytes make no integer; i64's minimum is one.
    let mut cases: Vec<(Vec<u8>, Vec<u8>, bool)> = [
        "01",
        "-0",
        "\" 1\"",
        "+1",
        "123456789012345678901",
        "9223372036854775808",
    ]
    .iter()
    .map(|text| {
        (
            format!("SET n {text}\r\nINCR n\r\n").into_bytes(),
            b"+OK\r\n-ERR value is not an integer or out of range\r\n".to_vec(),
            true,
        )
    })
    .collect();
    let more: &[(&[u8], &[u8], bool)] = &[
        (
            b"SET n -9223372036854775808\r\nINCR n\r\nDECR n\r\nDECR n\r\n",
            b"+OK\r\n:-9223372036854775807\r\n:-9223372036854775808\r\n\
              -ERR increment or decrement would overflow\r\n",
            true,
        ),
        (
            b"SET x 9223372036854775807\r\nINCR x\r\nINCR fresh\r\nDECR other\r\n",
            b"+OK\r\n-ERR increment or decrement would overflow\r\n:1\r\n:-1\r\n",
            true,
        ),
        (
            b"SET m 5\r\nINCRBY m 01\r\nDECRBY m -9223372036854775808\r\n\
              INCRBY m 9223372036854775807\r\nINCRBY m -7\r\nDECRBY m -4\r\n",
            b"+OK\r\n-ERR value is not an integer or out of range\r\n\
              -ERR decrement would overflow\r\n-ERR increment or decrement would overflow\r\n\
              :-2\r\n:2\r\n",
            true,
        ),
        (
            b"*03\r\n$4\r\nPING\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
            false,
        ),
        (
            b"*-0\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
            false,
        ),
        (
            b"*1\r\n$04\r\nPING\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
            false,
        ),
        (
            b"*1\r\n$+4\r\nPING\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
            false,
        ),
    ];
    cases.extend(
        more.iter()
            .map(|(request, reply, open)| (request.to_vec(), reply.to_vec(), *open)),
    );
    each_answers(server.address, &cases).await;
    assert!(server.stop().success());
}

/// `args` as a request: an array of bulk strings.
fn multibulk(args: &[&[u8]]) -> Vec<u8> {
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg);
        request.extend_from_slice(b"\r\n");
    }
    request
}

/// Reads one line (through its `\r\n`), at most [`WAIT`].
async fn read_line(stream: &mut TcpStream) -> Vec<u8> {
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        let mut byte = [0];
        let read = bounded("a reply line", stream.read(&mut byte)).await;
        match read {
            Ok(1) => line.push(byte[0]),
            other => panic!(
                "the line {:?} ended with {other:?}",
                String::from_utf8_lossy(&line)
            ),
        }
    }
    line
}

/// Reads exactly `len` bytes, at most [`WAIT`].
async fn read_bytes(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut data = vec![0; len];
    bounded("a reply", stream.read_exact(&mut data))
        .await
        .expect("the reply");
    data
}

/// The server's decoder counters, from INFO: bytes of the requests decoded, and bytes looked at
/// to decode them.
async fn decoder_counts(address: SocketAddr) -> (u64, u64) {
    let (reply, _) = raw(address, b"INFO\r\n").await;
    let text = String::from_utf8(reply).expect("text");
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {name} in INFO's {text:?}"))
            .parse()
            .expect("a number")
    };
    (field("decoded_bytes"), field("scanned_bytes"))
}

#[tokio::test]
async fn an_mget_that_would_make_a_huge_reply_gets_an_error_and_the_server_stays_up() {
    // Under a 1 GiB address space, where the report's 916-byte MGET made the server try to
    // encode 1.6 GB of reply, fail to allocate it and abort, losing every client.
    let mut server = EchoServer::spawn(EchoServer::example_command_with_address_space(
        "resp_server",
        &["--listen", "127.0.0.1:0", "--threads", "2"],
        1 << 30,
    ));
    let address = server.address;
    // The default maximum bulk string, so the longest value there may be.
    let value = vec![b'v'; 16 * 1024 * 1024];
    let mut reader = client(address).await;
    bounded(
        "SET",
        reader.write_all(&multibulk(&[b"SET", b"big", &value])),
    )
    .await
    .unwrap();
    assert_eq!(read_line(&mut reader).await, b"+OK\r\n");

    let mut keys: Vec<&[u8]> = vec![b"MGET"];
    keys.extend([&b"big"[..]; 100]);
    let mget = multibulk(&keys);
    assert_eq!(mget.len(), 916);
    // 100 bulk strings of 16 MiB, with their headers.
    let refusal: &[u8] = b"-ERR reply of 1677722906 bytes is above the maximum of 33554432 \
                           (--max-reply)\r\n";
    // Clients that stop reading: each asks for the huge reply (and reads the refusal, so that
    // it is known to have been handled), then for the largest replies allowed, which it leaves
    // unread.
    let mut attackers = Vec::new();
    for _ in 0..4 {
        let mut attacker = small_buffer_client(address, 4096).await;
        bounded("MGET", attacker.write_all(&mget)).await.unwrap();
        assert_eq!(read_line(&mut attacker).await, refusal);
        let mut unread = Vec::new();
        for _ in 0..4 {
            unread.extend_from_slice(&mget);
            unread.extend_from_slice(b"GET big\r\nMGET big nope\r\n");
        }
        bounded("requests", attacker.write_all(&unread))
            .await
            .unwrap();
        attackers.push(attacker);
    }

    // A client that reads gets the same refusal, and replies up to the maximum whole.
    bounded("MGET", reader.write_all(&mget)).await.unwrap();
    assert_eq!(read_line(&mut reader).await, refusal);
    bounded("MGET", reader.write_all(b"MGET big nope\r\nPING\r\n"))
        .await
        .unwrap();
    let header = b"*2\r\n$16777216\r\n";
    assert_eq!(read_bytes(&mut reader, header.len()).await, header);
    assert!(read_bytes(&mut reader, value.len()).await == value);
    assert_eq!(read_bytes(&mut reader, 14).await, b"\r\n$-1\r\n+PONG\r\n");

    for attacker in attackers {
        reset(attacker);
    }
    drop(reader);
    let stopped = server.stop();
    assert!(stopped.success(), "{stopped}");
}

#[tokio::test]
async fn bulk_strings_and_replies_up_to_their_maximum_and_no_further() {
    let mut server = start_server_with(&["--max-bulk", "1000", "--max-reply", "3000"]);
    let address = server.address;
    let value = vec![b'v'; 1000];
    let mut client = client(address).await;
    bounded("SET", client.write_all(&multibulk(&[b"SET", b"a", &value])))
        .await
        .unwrap();
    assert_eq!(read_line(&mut client).await, b"+OK\r\n");
    // Two values: 2 × 1009 bytes and the array's header, 2022 in all.
    bounded("MGET", client.write_all(b"MGET a a\r\n"))
        .await
        .unwrap();
    let reply = read_bytes(&mut client, 2022).await;
    assert!(reply.starts_with(b"*2\r\n$1000\r\nvvv") && reply.ends_with(b"vvv\r\n"));
    // Three: 3031 bytes. Refused, and the connection goes on.
    bounded("MGET", client.write_all(b"MGET a a a\r\nPING\r\n"))
        .await
        .unwrap();
    assert_eq!(
        read_line(&mut client).await,
        b"-ERR reply of 3031 bytes is above the maximum of 3000 (--max-reply)\r\n"
    );
    assert_eq!(read_line(&mut client).await, b"+PONG\r\n");
    drop(client);

    let mut too_long = b"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$1001\r\n".to_vec();
    too_long.extend_from_slice(&[b'v'; 1001]);
    each_answers(
        address,
        &[(
            too_long,
            b"-ERR Protocol error: invalid bulk length\r\n".to_vec(),
            false,
        )],
    )
    .await;
    assert!(server.stop().success());

    // A maximum reply too small for the longest value is refused at start.
    let output = Command::new("timeout")
        .arg(WAIT.as_secs().to_string())
        .arg(example_binary("resp_server"))
        .args(["--max-bulk", "1000", "--max-reply", "1008"])
        .output()
        .expect("run resp_server");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--max-reply must be at least 1009"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn a_large_command_trickled_in_small_reads_costs_the_decoder_linear_work() {
    let mut server = start_server();
    let address = server.address;
    let (decoded_before, scanned_before) = decoder_counts(address).await;
    // DEL of 100,000 keys, 1.3 MB, in 400 writes with a pause after each: the server reads
    // it in hundreds of pieces, and used to parse it again from its start after each.
    let keys: Vec<Vec<u8>> = (0..100_000)
        .map(|index| format!("k{index:06}").into_bytes())
        .collect();
    let mut args: Vec<&[u8]> = vec![b"DEL"];
    args.extend(keys.iter().map(Vec::as_slice));
    let command = multibulk(&args);
    let mut client = client(address).await;
    client.set_nodelay(true).unwrap();
    for piece in command.chunks(command.len() / 400 + 1) {
        bounded("write", client.write_all(piece)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(read_line(&mut client).await, b":0\r\n");
    let (decoded, scanned) = decoder_counts(address).await;
    let (decoded, scanned) = (decoded - decoded_before, scanned - scanned_before);
    assert!(
        decoded >= command.len() as u64,
        "{decoded} of {}",
        command.len()
    );
    // The headers are looked at (each byte about once); the keys are jumped over.
    assert!(
        scanned <= decoded,
        "{scanned} bytes looked at to decode {decoded}"
    );
    drop(client);
    assert!(server.stop().success());
}

#[tokio::test]
async fn idle_clients_are_dropped_after_the_idle_timeout() {
    let mut server = start_server_with(&["--idle-timeout", "1"]);
    let address = server.address;
    let mut idle = client(address).await;
    bounded("PING", idle.write_all(b"PING\r\n")).await.unwrap();
    assert_eq!(read_line(&mut idle).await, b"+PONG\r\n");
    // One that holds a partial request, as a client holding memory would.
    let mut stalled = client(address).await;
    bounded(
        "partial SET",
        stalled.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000\r\nabc"),
    )
    .await
    .unwrap();
    // Both end (with a reset) once a second has passed with no byte either way.
    for mut stream in [idle, stalled] {
        let (rest, _) = read_to_end(&mut stream).await;
        assert!(rest.is_empty(), "{rest:?}");
    }
    assert_eq!(raw(address, b"GET k\r\n").await.0, b"$-1\r\n");
    assert!(server.stop().success());
}

#[tokio::test]
async fn clients_over_the_cap_get_redis_servers_refusal() {
    let mut server = start_server_with(&["--max-clients", "2"]);
    let address = server.address;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = client(address).await;
        bounded("PING", stream.write_all(b"PING\r\n"))
            .await
            .unwrap();
        assert_eq!(read_line(&mut stream).await, b"+PONG\r\n");
        held.push(stream);
    }
    let mut over = client(address).await;
    let (refusal, _) = read_to_end(&mut over).await;
    assert_eq!(refusal, b"-ERR max number of clients reached\r\n");
    // A slot frees once the server has seen a client go.
    drop(held.pop());
    bounded("a free slot", async {
        loop {
            // Admitted, the client gets its PONG; over the cap, the refusal and the end (or a
            // reset, as the PING was not read). Nothing is read into silence: the refusal may
            // come late on a busy machine.
            let mut stream = client(address).await;
            let mut got = Vec::new();
            if stream.write_all(b"PING\r\n").await.is_ok() {
                let mut chunk = [0; 64];
                while let Ok(read @ 1..) = bounded("an answer", stream.read(&mut chunk)).await {
                    got.extend_from_slice(&chunk[..read]);
                    if got == b"+PONG\r\n" {
                        break;
                    }
                }
            }
            if got == b"+PONG\r\n" {
                break;
            }
            assert!(
                refusal.starts_with(&got),
                "{:?}",
                String::from_utf8_lossy(&got)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    drop(held);
    assert!(server.stop().success());
}
