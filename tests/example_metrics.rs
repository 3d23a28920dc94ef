//! The `echo_server` example's `--metrics ADDR`: Prometheus text at `http://ADDR/metrics`,
//! scraped with a real HTTP client (`curl`) while clients echo through the example and after they
//! are gone, and checked against what the clients did: connections accepted, refused at the
//! limit, live, closed by reason, bytes both ways. And against abuse: scrapes get through while
//! 300 silent connections (reconnecting as they are closed) are held against the endpoint, and a
//! request trickled in a byte at a time is cut off.
#![cfg(target_os = "linux")]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `--max-connections` of the example: the clients that stay connected.
const CONNECTIONS: u64 = 5;
/// Clients over the limit, refused (`--at-limit reject`).
const REFUSED: u64 = 3;
/// Echoes per connection, and their size.
const MESSAGES: u64 = 20;
const SIZE: usize = 256;

const ACTIVE: &str = "switchboard_connections_active";
const ACCEPTED: &str = "switchboard_connections_accepted_total";
const REFUSED_TOTAL: &str = "switchboard_connections_refused_total";
const CLOSED: &str = "switchboard_connections_closed_total";
const BYTES_READ: &str = "switchboard_bytes_read_total";
const BYTES_WRITTEN: &str = "switchboard_bytes_written_total";

/// The echo server's series carry this label; the endpoint's own, `server="metrics"`.
const ECHO: (&str, &str) = ("server", "echo");

/// A sample line: the metric's name, its labels and its value.
type Sample = (String, Vec<(String, String)>, f64);

/// One scrape: its text and its samples.
struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    /// Parses the text format's sample lines (`name{a="1",b="2"} value`); our label values hold
    /// no commas or quotes.
    fn parse(text: String) -> Scrape {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("a sample line");
                let value: f64 = value.parse().expect("a sample value");
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => (name, labels.trim_end_matches('}')),
                    None => (series, ""),
                };
                let labels = labels
                    .split(',')
                    .filter(|label| !label.is_empty())
                    .map(|label| {
                        let (key, value) = label.split_once('=').expect("key=\"value\"");
                        (key.to_string(), value.trim_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels, value)
            })
            .collect();
        Scrape { text, samples }
    }

    /// The sample of `name` with exactly `labels` (in any order).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find_map(|(sample, sample_labels, value)| {
                let same = sample == name
                    && sample_labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| sample_labels.iter().any(|(sk, sv)| sk == k && sv == v));
                same.then_some(*value)
            })
    }

    /// The echo server's sample of `name`, with one more label if given; panics if absent.
    fn echo(&self, name: &str, extra: Option<(&str, &str)>) -> u64 {
        let labels: Vec<(&str, &str)> = std::iter::once(ECHO).chain(extra).collect();
        let value = self
            .value(name, &labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{}", self.text));
        assert!(value >= 0.0 && value.fract() == 0.0, "{name}: {value}");
        value as u64
    }

    fn closed(&self, reason: &str) -> u64 {
        self.echo(CLOSED, Some(("reason", reason)))
    }

    /// The echo server's closures, all reasons.
    fn total_closed(&self) -> u64 {
        self.samples
            .iter()
            .filter(|(name, labels, _)| {
                name == CLOSED && labels.iter().any(|(k, v)| k == ECHO.0 && v == ECHO.1)
            })
            .map(|(_, _, value)| *value as u64)
            .sum()
    }
}

/// How long curl may take for a request (a scraper's timeout; Prometheus' default is 10 s).
const CURL_MAX_TIME: Duration = Duration::from_secs(10);

/// GETs `url` with curl (bounded); returns the status code, the content type and the body.
async fn curl(url: &str) -> (u16, String, String) {
    curl_within(url, CURL_MAX_TIME).await
}

/// [`curl`], failing if it takes longer than `max_time`.
async fn curl_within(url: &str, max_time: Duration) -> (u16, String, String) {
    match try_curl_within(url, max_time).await {
        Ok(answer) => answer,
        Err(output) => panic!("curl {url}: {output:?}"),
    }
}

/// [`curl_within`], giving curl's output back if it failed.
async fn try_curl_within(
    url: &str,
    max_time: Duration,
) -> Result<(u16, String, String), std::process::Output> {
    let max_time = max_time.as_secs_f64().to_string();
    let output = bounded(
        "curl",
        tokio::process::Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", &max_time])
            .args(["--write-out", "\n%{http_code}\n%{content_type}", url])
            .output(),
    )
    .await
    .expect("curl must be installed (.ci/run installs it)");
    if !output.status.success() {
        return Err(output);
    }
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    let mut parts = text.rsplitn(3, '\n');
    let content_type = parts.next().unwrap_or_default().to_string();
    let status = parts.next().unwrap_or_default().parse().expect("a status");
    let body = parts.next().unwrap_or_default().to_string();
    Ok((status, content_type, body))
}

async fn scrape(url: &str) -> Scrape {
    let (status, content_type, body) = curl(url).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, "text/plain; version=0.0.4");
    Scrape::parse(body)
}

/// Scrapes until `done` holds (counts settle on the server's tasks after the clients see their
/// ends), at most [`WAIT`]; returns that scrape.
async fn scrape_until(url: &str, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let scrape = scrape(url).await;
        if done(&scrape) {
            return scrape;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last scrape:\n{}",
            scrape.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One client: connects, echoes its messages (with pauses, so that scrapes fall in between),
/// and stays connected.
async fn load(address: SocketAddr, seed: u64) -> TcpStream {
    let mut stream = client(address).await;
    for message in 0..MESSAGES {
        echo(&mut stream, &pattern(seed * 1000 + message, SIZE)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_server_metrics_scraped_with_curl_during_and_after_load_match_the_clients() {
    let limit = CONNECTIONS.to_string();
    let mut server = EchoServer::start(&[
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--max-connections",
        &limit,
        "--at-limit",
        "reject",
    ]);
    let address = server.address;
    server.log.wait("the metrics line", |log| {
        !log.after("metrics on ").is_empty()
    });
    let url = format!("http://{}/metrics", server.log.after("metrics on ")[0]);
    assert!(server.log.lines()[0].starts_with("listening on "));

    let idle = scrape(&url).await;
    assert_eq!(idle.echo(ACCEPTED, None), 0);
    assert_eq!(idle.echo(ACTIVE, None), 0);
    assert_eq!(idle.closed("peer_closed"), 0);
    assert!(idle.text.contains(&format!("# TYPE {ACCEPTED} counter")));
    assert!(idle.text.contains(&format!("# TYPE {ACTIVE} gauge")));

    // During the load: every scrape stays within what the clients can have done, and no count
    // goes back.
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|seed| tokio::spawn(load(address, seed)))
        .collect();
    let echoed = CONNECTIONS * MESSAGES * SIZE as u64;
    let mut last = (0, 0, 0);
    let mut during = 0;
    while !clients.iter().all(|client| client.is_finished()) {
        let scrape = scrape(&url).await;
        let now = (
            scrape.echo(ACCEPTED, None),
            scrape.echo(BYTES_READ, None),
            scrape.echo(BYTES_WRITTEN, None),
        );
        assert!(
            now.0 >= last.0 && now.1 >= last.1 && now.2 >= last.2,
            "{last:?} -> {now:?}"
        );
        assert!(
            now.0 <= CONNECTIONS && now.1 <= echoed && now.2 <= echoed,
            "{now:?}"
        );
        assert!(scrape.echo(ACTIVE, None) <= CONNECTIONS);
        last = now;
        during += 1;
    }
    assert!(during > 0, "no scrape fell during the load");
    let mut streams = Vec::new();
    for client in clients {
        streams.push(bounded("a client", client).await.expect("client task"));
    }

    let loaded = scrape_until(&url, "the load counted", |s| {
        s.echo(BYTES_READ, None) == echoed && s.echo(BYTES_WRITTEN, None) == echoed
    })
    .await;
    assert_eq!(loaded.echo(ACCEPTED, None), CONNECTIONS);
    assert_eq!(loaded.echo(ACTIVE, None), CONNECTIONS);
    assert_eq!(loaded.total_closed(), 0);

    // At the limit: refused at once (the reset may come before the connect has returned).
    for _ in 0..REFUSED {
        match bounded("connect", TcpStream::connect(address)).await {
            Ok(mut refused) => {
                let (data, _) = read_to_end(&mut refused).await;
                assert!(data.is_empty());
            }
            Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset),
        }
    }
    let refused = scrape_until(&url, "the refusals counted", |s| {
        s.echo(REFUSED_TOTAL, Some(("cause", "at_limit"))) == REFUSED
    })
    .await;
    assert_eq!(refused.echo(ACCEPTED, None), CONNECTIONS);
    assert_eq!(refused.echo(ACTIVE, None), CONNECTIONS);
    assert_eq!(refused.echo(REFUSED_TOTAL, Some(("cause", "per_ip"))), 0);

    // The end: one client resets, the others close with FIN and see the server's.
    reset(streams.pop().expect("a client"));
    for mut stream in streams {
        bounded("FIN", stream.shutdown()).await.unwrap();
        let (rest, ended) = read_to_end(&mut stream).await;
        assert!(rest.is_empty() && ended.is_ok(), "{ended:?}");
    }
    let after = scrape_until(&url, "every connection ended", |s| {
        s.echo(ACTIVE, None) == 0 && s.total_closed() == CONNECTIONS
    })
    .await;
    assert_eq!(after.closed("peer_closed"), CONNECTIONS - 1);
    assert_eq!(after.closed("peer_reset"), 1);
    assert_eq!(after.echo(ACCEPTED, None), CONNECTIONS);
    assert_eq!(after.echo(BYTES_READ, None), echoed);
    assert_eq!(after.echo(BYTES_WRITTEN, None), echoed);
    // The endpoint counts its own connections under its own label.
    let scrapes = after
        .value(ACCEPTED, &[("server", "metrics")])
        .expect("the endpoint's own series");
    assert!(scrapes >= during as f64, "{scrapes} < {during}");

    let (status, _, _) = curl(&url.replace("/metrics", "/elsewhere")).await;
    assert_eq!(status, 404);

    let status = server.stop();
    assert!(status.success(), "{status:?}");
}

/// Silent connections held against the metrics endpoint, reconnecting as they are closed: more
/// than its whole connection limit (256), so that they push each other out of its line and wait
/// in its backlog as any larger flood would. 64 used to hold it entirely.
const SILENT: usize = 300;
/// Scrapes made while they are held, one after the other.
const SCRAPES: usize = 12;
/// What each of those scrapes may take: half the 10 s a silent connection used to hold its slot
/// for, and far more than the endpoint needs when nothing holds it (milliseconds).
const SCRAPE_DURING_FLOOD: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_get_through_while_silent_connections_hold_the_endpoint_and_a_trickle_is_cut() {
    let mut server = EchoServer::start(&["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]);
    server.log.wait("the metrics line", |log| {
        !log.after("metrics on ").is_empty()
    });
    let endpoint: SocketAddr = server.log.after("metrics on ")[0].parse().unwrap();
    let url = format!("http://{endpoint}/metrics");

    let flood = SilentFlood::start(endpoint, SILENT);
    flood.until_connected().await;
    let mut pushed_out = 0;
    for _ in 0..SCRAPES {
        let started = tokio::time::Instant::now();
        let deadline = started + SCRAPE_DURING_FLOOD;
        // A scraper the flood pushed out of the line before its request was read (possible when
        // the machine is so loaded that 128 newer connections are accepted first) is reset, and
        // tries again, as a scraper would at its next interval; it must get through in time.
        let scrape = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match try_curl_within(&url, left).await {
                Ok((status, _, body)) => {
                    assert_eq!(status, 200, "{body}");
                    break Scrape::parse(body);
                }
                // 56: reset while receiving; 52: closed without an answer; 55: reset while
                // sending.
                Err(output) if [52, 55, 56].contains(&output.status.code().unwrap_or(0)) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "no scrape got through in {SCRAPE_DURING_FLOOD:?}: {output:?}"
                    );
                    pushed_out += 1;
                }
                Err(output) => panic!("curl {url}: {output:?}"),
            }
        };
        assert!(scrape.text.contains(&format!("# TYPE {ACCEPTED} counter")));
        println!("a scrape during the flood took {:?}", started.elapsed());
    }
    println!("{pushed_out} scrapes pushed out and tried again");
    println!(
        "{SCRAPES} scrapes during the flood: {} silent connections open, {} connects, {} ended \
         by the endpoint",
        flood.open(),
        flood.connects(),
        flood.ended()
    );
    drop(flood);

    // A request that trickles in, a byte at a time and never complete, is cut off: the head must
    // arrive whole in a few seconds, whatever the pace of its bytes.
    let (mut reader, mut writer) = client(endpoint).await.into_split();
    bounded(
        "a client's write",
        writer.write_all(b"GET /metrics HTTP/1.1\r\n"),
    )
    .await
    .unwrap();
    let cut = bounded("the endpoint to cut the trickle off", async {
        let mut buffer = [0; 256];
        loop {
            tokio::select! {
                read = reader.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => return "closed",
                    Ok(_) => return "answered",
                },
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if writer.write_all(b"X").await.is_err() {
                        return "closed";
                    }
                }
            }
        }
    })
    .await;
    assert_eq!(cut, "closed", "an incomplete request must not be answered");

    let status = server.stop();
    assert!(status.success(), "{status:?}");
}
