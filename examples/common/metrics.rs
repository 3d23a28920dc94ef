//! The examples' `--metrics` endpoint: the Prometheus recorder, and a second switchboard server
//! that answers `GET /metrics` with what it recorded, and `GET /ready` with whether the
//! example's server serves (200) or is shutting down (503), for a balancer's readiness probe.
//!
//! Connections that say nothing cannot keep scrapes out: a connection waits for its request in a
//! [line](crate::common::line) of at most [`MAX_WAITING`], where one more pushes out (resets) the
//! oldest, and its request head must be complete within [`REQUEST_TIMEOUT`] of its accept. A
//! scraper sends its request as soon as it is connected, so it is answered while silent
//! connections churn through the line. (On a machine so loaded that [`MAX_WAITING`] newer
//! connections are accepted before a scraper's request is read, the scraper is pushed out too,
//! and gets through at its next try.)

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use switchboard::{async_trait, BytesMut, Callbacks, Connection, Error, Server, Slot, WeakServer};

use super::line::{close_the_late, Place, WaitingLine};

/// Longest HTTP request head the metrics endpoint reads; a longer one is answered 431.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Connections waiting for their request at once; one more pushes out the oldest. A handful of
/// scrapers at a time is what a metrics endpoint sees.
const MAX_WAITING: usize = 128;

/// How long a connection has, from its accept, to send its whole request head; one that has not
/// is reset. Far more than a scraper needs (its request follows the handshake at once), and short
/// enough that a client trickling its request a byte at a time does not hold its place for long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a connection may stay silent after its accept (the server's first-byte timeout).
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(1);

/// The endpoint's connection limit: the line, and as many again being answered, closing, or just
/// pushed out. Past it new connections wait in the listen backlog.
const MAX_CONNECTIONS: usize = 2 * MAX_WAITING;

/// Upper bounds of the buckets of the `_seconds` histograms (TLS handshake, PROXY header): from
/// half a millisecond on loopback to the 10 s of the default handshake timeout.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The `--metrics` endpoint: answers one HTTP/1.x request per connection, then closes.
struct MetricsEndpoint {
    prometheus: PrometheusHandle,
    /// Each connection's request so far.
    request: Slot<Request>,
    /// The connections waiting for their request.
    waiting: Arc<Mutex<WaitingLine>>,
    /// The example's server, once it has started: what `/ready` reports on.
    served: Readiness,
}

/// The server whose readiness `/ready` reports, set once it has started (the endpoint starts
/// first, so that the server's metrics go to its recorder).
pub(crate) type Readiness = Arc<OnceLock<WeakServer>>;

/// A connection's request, while it comes.
struct Request {
    /// Its place in the line.
    place: Place,
    /// The head read so far.
    head: Vec<u8>,
}

/// How far a connection's request has come.
enum Progress {
    /// The head is not complete yet.
    Incomplete,
    /// The head, up to its blank line.
    Head(Vec<u8>),
    TooLarge,
}

/// An answer: status line, content type and body.
struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn new(status: &'static str, content_type: &'static str, body: impl Into<String>) -> Self {
        Response {
            status,
            content_type,
            body: body.into(),
        }
    }

    fn not_found() -> Self {
        Response::new("404 Not Found", "text/plain", "not found\n")
    }

    fn into_text(self) -> String {
        format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{}",
            self.status,
            self.content_type,
            self.body.len(),
            self.body
        )
    }
}

impl MetricsEndpoint {
    fn waiting(&self) -> MutexGuard<'_, WaitingLine> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The response to a complete request head.
    fn respond(&self, head: &[u8]) -> Response {
        let request_line = head.split(|&b| b == b'\r').next().unwrap_or_default();
        let request_line = String::from_utf8_lossy(request_line);
        let mut parts = request_line.split(' ');
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let path = target.split('?').next().unwrap_or("");
        self.route(method, path)
    }

    /// What each method and path are answered with.
    fn route(&self, method: &str, path: &str) -> Response {
        match (method, path) {
            ("GET", "/metrics") => Response::new(
                "200 OK",
                "text/plain; version=0.0.4",
                self.prometheus.render(),
            ),
            ("GET", "/ready") => {
                // Ready while the served server runs and no shutdown has begun: from the shutdown's
                // first moment, through the drain window while it still accepts, the answer is
                // 503, so that the balancer routes new clients elsewhere.
                let serving = self.served.get().and_then(WeakServer::upgrade);
                match serving {
                    Some(server) if !server.is_shutting_down() => {
                        Response::new("200 OK", "text/plain", "ready\n")
                    }
                    Some(_) => Response::new("503 Service Unavailable", "text/plain", "draining\n"),
                    None => Response::new("503 Service Unavailable", "text/plain", "not serving\n"),
                }
            }
            _ => Response::not_found(),
        }
    }
}

#[async_trait]
impl Callbacks for MetricsEndpoint {
    async fn on_connection_established(&self, connection: &Connection, _address: &SocketAddr) {
        let (place, pushed_out) = self.waiting().join(connection);
        let request = Request {
            place,
            head: Vec::new(),
        };
        connection.user_data().set(self.request, request);
        if let Some(oldest) = pushed_out.and_then(|oldest| oldest.upgrade()) {
            oldest.abort();
        }
        connection.read();
    }

    async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
        let progress = connection.user_data().with(self.request, |request| {
            let request = request.as_mut()?;
            request.head.extend_from_slice(&data);
            let progress = match request.head.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(end) => Progress::Head(request.head[..end].to_vec()),
                None if request.head.len() > MAX_REQUEST_HEAD => Progress::TooLarge,
                None => Progress::Incomplete,
            };
            Some((request.place, progress))
        });
        let Some((place, progress)) = progress else {
            return;
        };
        let answer = match progress {
            Progress::Incomplete => return connection.read(),
            Progress::Head(head) => self.respond(&head),
            Progress::TooLarge => Response::new(
                "431 Request Header Fields Too Large",
                "text/plain",
                "request head too large\n",
            ),
        };
        // Pushed out or late while its last bytes came: it is being reset already.
        if !self.waiting().leave(place) {
            return;
        }
        // The only write on this connection, so the queue has room.
        let _ = connection.write(answer.into_text());
        connection.close();
    }

    async fn on_connection_closure(
        &self,
        connection: &Connection,
        _reason: switchboard::ClosureReason,
    ) {
        if let Some(request) = connection.user_data().take(self.request) {
            self.waiting().leave(request.place);
        }
    }
}

/// Installs the Prometheus recorder (before the example's server starts, which takes its metric
/// handles from it) and starts the endpoint that serves it on `address`, with the readiness of
/// the server `served` will hold.
pub(crate) async fn start_metrics(address: &str, served: Readiness) -> Result<Server, Error> {
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
    let waiting = Arc::new(Mutex::new(WaitingLine::new(MAX_WAITING, REQUEST_TIMEOUT)));
    tokio::spawn(close_the_late(
        waiting.clone(),
        |line| line,
        |late| late.abort(),
    ));
    let mut builder = Server::builder();
    let request = builder.request_user_data_slot();
    builder
        .bind(address)
        .metrics_labels([("server", "metrics")])
        .max_connections(MAX_CONNECTIONS)
        .first_byte_timeout(Some(FIRST_BYTE_TIMEOUT))
        .start(MetricsEndpoint {
            prometheus,
            request,
            waiting,
            served,
        })
        .await
}
