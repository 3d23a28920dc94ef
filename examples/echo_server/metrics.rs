//! The `--metrics` endpoint: the Prometheus recorder, and a second switchboard server that
//! answers `GET /metrics` with what it recorded.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use switchboard::{async_trait, BytesMut, Callbacks, Connection, Error, Server, Slot};

/// Longest HTTP request head the metrics endpoint reads; a longer one is answered 431.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Upper bounds of the buckets of the `_seconds` histograms (TLS handshake, PROXY header): from
/// half a millisecond on loopback to the 10 s of the default handshake timeout.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The `--metrics` endpoint: answers one HTTP/1.x request per connection, then closes.
struct MetricsEndpoint {
    prometheus: PrometheusHandle,
    /// The request head read so far.
    head: Slot<Vec<u8>>,
}

/// How far a connection's request has come.
enum Request {
    /// The head is not complete yet.
    Incomplete,
    /// The head, up to its blank line.
    Head(Vec<u8>),
    TooLarge,
}

impl MetricsEndpoint {
    /// The response to a complete request head.
    fn respond(&self, head: &[u8]) -> String {
        let request_line = head.split(|&b| b == b'\r').next().unwrap_or_default();
        let mut parts = request_line.split(|&b| b == b' ');
        let (method, target) = (parts.next(), parts.next());
        let is_metrics =
            matches!(target, Some(t) if t == b"/metrics" || t.starts_with(b"/metrics?"));
        if method == Some(b"GET") && is_metrics {
            response(
                "200 OK",
                "text/plain; version=0.0.4",
                &self.prometheus.render(),
            )
        } else {
            response("404 Not Found", "text/plain", "not found\n")
        }
    }
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

#[async_trait]
impl Callbacks for MetricsEndpoint {
    async fn on_connection_established(&self, connection: &Connection, _address: &SocketAddr) {
        connection.read();
    }

    async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
        let request = connection.user_data().with(self.head, |head| {
            let head = head.get_or_insert_with(Vec::new);
            head.extend_from_slice(&data);
            match head.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(end) => Request::Head(head[..end].to_vec()),
                None if head.len() > MAX_REQUEST_HEAD => Request::TooLarge,
                None => Request::Incomplete,
            }
        });
        let answer = match request {
            Request::Incomplete => return connection.read(),
            Request::Head(head) => self.respond(&head),
            Request::TooLarge => response(
                "431 Request Header Fields Too Large",
                "text/plain",
                "request head too large\n",
            ),
        };
        // The only write on this connection, so the queue has room.
        let _ = connection.write(answer);
        connection.close();
    }
}

/// Installs the Prometheus recorder (before the echo server starts, which takes its metric
/// handles from it) and starts the endpoint that serves it on `address`.
pub(crate) async fn start_metrics(address: &str) -> Result<Server, Error> {
    let failed = |error: BuildError| {
        Error::Io(io::Error::other(format!(
            "cannot install the metrics recorder: {error}"
        )))
    };
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .map_err(failed)?
        .install_recorder()
        .map_err(failed)?;
    // The recorder keeps histogram samples until upkeep folds them in: every few seconds, so
    // memory stays bounded between scrapes.
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let mut builder = Server::builder();
    let head = builder.request_user_data_slot();
    builder
        .bind(address)
        .metrics_labels([("server", "metrics")])
        .max_connections(64)
        // A scraper that connects and says nothing holds its slot this long at most.
        .read_timeout(Some(Duration::from_secs(10)))
        .start(MetricsEndpoint { prometheus, head })
        .await
}
