//! The server's metrics, through the [`metrics`] facade.
//!
//! Every handle is obtained once, when the server starts, from the recorder installed then; the
//! engine only increments them, next to the counters of [`Stats`](crate::Stats) (see
//! [`Counters`](crate::stats::Counters)), so the two never disagree. With no recorder installed
//! each handle is a no-op: an increment is one test of an empty pointer.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Label, Unit};

use crate::closure::ClosureReason;

// The names, as the crate docs list them.
const ACTIVE: &str = "switchboard_connections_active";
const ACCEPTED: &str = "switchboard_connections_accepted_total";
const CONNECTED: &str = "switchboard_connections_connected_total";
const CONNECT_FAILURES: &str = "switchboard_connect_failures_total";
const REFUSED: &str = "switchboard_connections_refused_total";
const CLOSED: &str = "switchboard_connections_closed_total";
const BYTES_READ: &str = "switchboard_bytes_read_total";
const BYTES_WRITTEN: &str = "switchboard_bytes_written_total";
const ACCEPT_ERRORS: &str = "switchboard_accept_errors_total";
const CALLBACK_PANICS: &str = "switchboard_callback_panics_total";
const WRITE_QUEUE_HIGH: &str = "switchboard_write_queue_high_total";
const LINGERING_PEERS: &str = "switchboard_lingering_peers_total";
const TLS_HANDSHAKE: &str = "switchboard_tls_handshake_duration_seconds";
const PROXY_HEADER: &str = "switchboard_proxy_header_duration_seconds";

/// Label names the engine sets itself, which the application's labels may not take.
pub(crate) const RESERVED_LABELS: &[&str] = &["cause", "reason"];

/// One server's metric handles. The refusal causes and closure reasons each have a handle of
/// their own, registered at start, so every series is exported (at zero) from the first scrape.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) active: Gauge,
    pub(crate) accepted: Counter,
    pub(crate) connected: Counter,
    pub(crate) connect_failures: Counter,
    pub(crate) refused_at_limit: Counter,
    pub(crate) refused_per_ip: Counter,
    pub(crate) refused_no_descriptors: Counter,
    /// By [`ClosureReason::index`].
    closed: Box<[Counter]>,
    pub(crate) bytes_read: Counter,
    pub(crate) bytes_written: Counter,
    pub(crate) accept_errors: Counter,
    pub(crate) callback_panics: Counter,
    pub(crate) write_queue_high: Counter,
    pub(crate) lingering_peers: Counter,
    tls_handshake: Histogram,
    proxy_header: Histogram,
}

impl Metrics {
    /// Describes the metrics to the installed recorder and registers every handle, each with
    /// `labels` (the application's, from
    /// [`ServerBuilder::metrics_labels`](crate::ServerBuilder::metrics_labels)).
    pub(crate) fn register(labels: &[(String, String)]) -> Self {
        describe();
        let labels: Vec<Label> = labels
            .iter()
            .map(|(key, value)| Label::new(key.clone(), value.clone()))
            .collect();
        let with = |key: &'static str, value: &'static str| {
            let mut labels = labels.clone();
            labels.push(Label::from_static_parts(key, value));
            labels
        };
        let refused = |cause| metrics::counter!(REFUSED, with("cause", cause));
        Metrics {
            active: metrics::gauge!(ACTIVE, labels.iter()),
            accepted: metrics::counter!(ACCEPTED, labels.iter()),
            connected: metrics::counter!(CONNECTED, labels.iter()),
            connect_failures: metrics::counter!(CONNECT_FAILURES, labels.iter()),
            refused_at_limit: refused("at_limit"),
            refused_per_ip: refused("per_ip"),
            refused_no_descriptors: refused("no_descriptors"),
            closed: ClosureReason::ALL
                .iter()
                .map(|reason| metrics::counter!(CLOSED, with("reason", reason.as_str())))
                .collect(),
            bytes_read: metrics::counter!(BYTES_READ, labels.iter()),
            bytes_written: metrics::counter!(BYTES_WRITTEN, labels.iter()),
            accept_errors: metrics::counter!(ACCEPT_ERRORS, labels.iter()),
            callback_panics: metrics::counter!(CALLBACK_PANICS, labels.iter()),
            write_queue_high: metrics::counter!(WRITE_QUEUE_HIGH, labels.iter()),
            lingering_peers: metrics::counter!(LINGERING_PEERS, labels.iter()),
            tls_handshake: metrics::histogram!(TLS_HANDSHAKE, labels.iter()),
            proxy_header: metrics::histogram!(PROXY_HEADER, labels.iter()),
        }
    }

    pub(crate) fn closed(&self, reason: ClosureReason) -> &Counter {
        &self.closed[reason.index()]
    }

    pub(crate) fn tls_handshake(&self, took: Duration) {
        self.tls_handshake.record(took.as_secs_f64());
    }

    pub(crate) fn proxy_header(&self, took: Duration) {
        self.proxy_header.record(took.as_secs_f64());
    }
}

/// Gives the recorder each metric's unit and help text (Prometheus's `# HELP` line).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        ACTIVE,
        Unit::Count,
        "Connections live now (established and not yet released), inbound and outbound."
    );
    describe_counter!(
        ACCEPTED,
        Unit::Count,
        "Connections accepted by the listeners and handed to the application."
    );
    describe_counter!(CONNECTED, Unit::Count, "Outgoing connections established.");
    describe_counter!(
        CONNECT_FAILURES,
        Unit::Count,
        "Outgoing connects that failed (refused, timed out, limit, shutdown)."
    );
    describe_counter!(
        REFUSED,
        Unit::Count,
        "Accepted connections reset at once, by cause: at_limit (the connection limit), per_ip \
         (the per-address cap; also counted as accepted and closed), no_descriptors (the process \
         was out of file descriptors)."
    );
    describe_counter!(
        CLOSED,
        Unit::Count,
        "Connections that ended, by closure reason."
    );
    describe_counter!(
        BYTES_READ,
        Unit::Bytes,
        "Bytes read from connections and delivered to the application."
    );
    describe_counter!(
        BYTES_WRITTEN,
        Unit::Bytes,
        "Bytes written to connections (handed to the kernel)."
    );
    describe_counter!(ACCEPT_ERRORS, Unit::Count, "Failed accept calls.");
    describe_counter!(CALLBACK_PANICS, Unit::Count, "Callbacks that panicked.");
    describe_counter!(
        WRITE_QUEUE_HIGH,
        Unit::Count,
        "Times a connection's write queue reached its high watermark (on_write_buffer_high)."
    );
    describe_counter!(
        LINGERING_PEERS,
        Unit::Count,
        "Connections whose peer kept its end open past the close timeout after our FIN."
    );
    describe_histogram!(
        TLS_HANDSHAKE,
        Unit::Seconds,
        "Time from the start to the end of each successful TLS handshake."
    );
    describe_histogram!(
        PROXY_HEADER,
        Unit::Seconds,
        "Time to read each valid PROXY protocol header, from the connection's start."
    );
}

/// Whether `name` is a Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`, and not one of the names
/// starting with `__` that Prometheus keeps for itself.
pub(crate) fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(first) if first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}
