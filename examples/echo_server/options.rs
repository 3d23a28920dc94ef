//! The command line of `echo_server`.

use std::time::Duration;

use switchboard::LimitPolicy;

pub(crate) struct Options {
    pub(crate) listen: String,
    pub(crate) threads: Option<usize>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) at_limit: LimitPolicy,
    pub(crate) shutdown_timeout: Option<Duration>,
    pub(crate) drain_accepting: Option<Duration>,
    pub(crate) events: bool,
    pub(crate) tls_cert: Option<String>,
    pub(crate) tls_key: Option<String>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) first_byte_timeout: Option<Duration>,
    pub(crate) write_limit: Option<usize>,
    pub(crate) max_per_ip: Option<usize>,
    pub(crate) urgent: bool,
    pub(crate) proxy_protocol: bool,
    pub(crate) metrics: Option<String>,
    pub(crate) reuse_port: bool,
    pub(crate) upgrade_timeout: Duration,
}

/// How long a hand-off waits for the new process to say it serves: far more than a start takes
/// (tens of milliseconds), short enough that an operator sees a stuck upgrade fail promptly.
pub(crate) const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

const USAGE: &str = "usage: echo_server [--listen ADDR] [--threads N] [--max-connections N] \
                     [--at-limit stop|reject] [--shutdown-timeout SECS] \
                     [--drain-accepting SECS] [--events] \
                     [--tls-cert PEM --tls-key PEM] [--idle-timeout SECS] \
                     [--first-byte-timeout SECS] [--write-limit BYTES] [--max-per-ip N] \
                     [--urgent] [--proxy-protocol] [--metrics ADDR] [--reuse-port] \
                     [--upgrade-timeout SECS]";

pub(crate) fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        listen: "127.0.0.1:5050".into(),
        threads: None,
        max_connections: None,
        at_limit: LimitPolicy::StopAccepting,
        shutdown_timeout: None,
        drain_accepting: None,
        events: false,
        tls_cert: None,
        tls_key: None,
        idle_timeout: None,
        first_byte_timeout: None,
        write_limit: None,
        max_per_ip: None,
        urgent: false,
        proxy_protocol: false,
        metrics: None,
        reuse_port: false,
        upgrade_timeout: DEFAULT_UPGRADE_TIMEOUT,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => options.listen = value()?,
            "--threads" => options.threads = Some(number(&flag, &value()?)?),
            "--max-connections" => options.max_connections = Some(number(&flag, &value()?)?),
            "--at-limit" => {
                options.at_limit = match value()?.as_str() {
                    "stop" => LimitPolicy::StopAccepting,
                    "reject" => LimitPolicy::AcceptAndClose,
                    other => return Err(format!("--at-limit takes stop or reject, not {other}")),
                }
            }
            "--shutdown-timeout" => {
                let seconds: f64 = value()?
                    .parse()
                    .map_err(|_| "--shutdown-timeout takes seconds".to_string())?;
                options.shutdown_timeout = Some(
                    Duration::try_from_secs_f64(seconds)
                        .map_err(|_| "--shutdown-timeout takes non-negative seconds")?,
                );
            }
            "--drain-accepting" => options.drain_accepting = Some(seconds(&flag, &value()?)?),
            "--events" => options.events = true,
            "--tls-cert" => options.tls_cert = Some(value()?),
            "--tls-key" => options.tls_key = Some(value()?),
            "--idle-timeout" => options.idle_timeout = Some(seconds(&flag, &value()?)?),
            "--first-byte-timeout" => options.first_byte_timeout = Some(seconds(&flag, &value()?)?),
            "--write-limit" => options.write_limit = Some(number(&flag, &value()?)?),
            "--max-per-ip" => options.max_per_ip = Some(number(&flag, &value()?)?),
            "--urgent" => options.urgent = true,
            "--proxy-protocol" => options.proxy_protocol = true,
            "--metrics" => options.metrics = Some(value()?),
            "--reuse-port" => options.reuse_port = true,
            "--upgrade-timeout" => options.upgrade_timeout = seconds(&flag, &value()?)?,
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    Ok(options)
}

fn seconds(flag: &str, value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| format!("{flag} takes non-negative seconds, not {value}"))
}

fn number(flag: &str, value: &str) -> Result<usize, String> {
    value
        .parse()
        .map_err(|_| format!("{flag} takes a whole number, not {value}"))
}
