//! What starting does with the settings: checks them, builds the server's shared state, binds
//! the listeners and starts accepting.

use std::sync::Arc;

use super::ServerBuilder;
use crate::defaults::*;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::server::accept;
#[cfg(doc)]
use crate::server::callbacks::Callbacks;
use crate::server::into_callbacks::sealed::Layout;
use crate::server::into_callbacks::IntoCallbacks;
use crate::server::listen::Listener;
use crate::server::manager::Manager;
use crate::server::open::{self, ListenOn, ListenOptions};
use crate::server::Server;
use crate::stats::Counters;
use crate::tls::{AcceptorCell, TlsAcceptor};

impl<S> ServerBuilder<S> {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let invalid = |setting: &'static str, reason: &str| {
            Err(Error::InvalidSetting {
                setting,
                reason: reason.into(),
            })
        };
        if self
            .config
            .read_rate
            .is_some_and(|rate| rate.bytes_per_second() == 0 || rate.burst() == 0)
        {
            return invalid("read_rate_limit", "rate and burst must be above zero");
        }
        if self.config.read_buffer_size == 0 {
            return invalid("read_buffer_size", "must be above zero");
        }
        if self.config.max_concurrent_handshakes == 0 {
            return invalid("max_concurrent_handshakes", "must be above zero");
        }
        if self.config.max_handshakes_per_source == Some(0) {
            return invalid("max_handshakes_per_source", "must be above zero");
        }
        if self.config.ipv6_source_prefix > 128 {
            return invalid("ipv6_source_prefix", "must be at most 128");
        }
        if self.config.write_low_watermark >= self.config.write_high_watermark {
            return invalid("write_watermarks", "low must be below high");
        }
        if let Some(message) = &self.config.refusal_message {
            if message.len() > MAX_REFUSAL_MESSAGE {
                return invalid(
                    "refusal_message",
                    "longer than MAX_REFUSAL_MESSAGE: it must fit in a new socket's send buffer",
                );
            }
        }
        if self.config.max_connections_per_ip == Some(0) {
            return invalid("max_connections_per_ip", "must be above zero");
        }
        if self.config.write_queue_limit == 0 {
            return invalid("write_queue_limit", "must be above zero");
        }
        for bind in &self.binds {
            if let Some(proxy) = &bind.proxy {
                if !proxy.trusts_anyone() {
                    return invalid(
                        "proxy_protocol",
                        "trusts no network, so every connection would be refused",
                    );
                }
                if proxy.timeout().is_zero() {
                    return invalid("proxy_protocol", "the header timeout must be above zero");
                }
            }
        }
        if self.backlog == 0 || self.backlog > i32::MAX as u32 {
            return invalid("backlog", "must be between 1 and 2^31 - 1");
        }
        for (i, (name, _)) in self.metrics_labels.iter().enumerate() {
            if !crate::metrics::is_label_name(name) {
                return invalid(
                    "metrics_labels",
                    &format!("{name:?} is not a Prometheus label name"),
                );
            }
            if crate::metrics::RESERVED_LABELS.contains(&name.as_str()) {
                return invalid(
                    "metrics_labels",
                    &format!("{name:?} is one of the server's own labels"),
                );
            }
            if self.metrics_labels[..i]
                .iter()
                .any(|(other, _)| other == name)
            {
                return invalid("metrics_labels", &format!("{name:?} is given twice"));
            }
        }
        Ok(())
    }

    /// The server's shared state, from the settings and `callbacks`, with no listener: what
    /// every kind of server starts with; and the listeners to open, for a server that has them.
    /// Validates the settings first.
    pub(crate) fn into_manager(
        mut self,
        callbacks: impl IntoCallbacks,
    ) -> Result<(Arc<Manager>, Listeners), Error> {
        self.validate()?;
        let callbacks_type = callbacks.callbacks_type();
        let callbacks = callbacks.into_callbacks(Layout(&mut self.layout))?;
        let listeners = Listeners {
            binds: std::mem::take(&mut self.binds),
            tls: self.tls.take(),
            options: ListenOptions {
                backlog: self.backlog,
                reuse_address: self.reuse_address,
                reuse_port: self.reuse_port,
            },
        };
        let counters = Arc::new(Counters::new(Metrics::register(&self.metrics_labels)));
        let manager = Arc::new(Manager::new(
            self.config,
            (callbacks, callbacks_type),
            counters,
            self.limiter,
            self.layout,
            self.accepting,
        ));
        Ok((manager, listeners))
    }
}

/// The listeners a server opens when it starts, taken from its builder.
pub(crate) struct Listeners {
    binds: Vec<Listener>,
    /// The acceptor of listeners without their own.
    tls: Option<TlsAcceptor>,
    options: ListenOptions,
}

/// A server on sockets.
impl ServerBuilder<Server> {
    /// Validates the settings, binds the listeners, takes the adopted ones and starts accepting
    /// (unless [`accepting(false)`](ServerBuilder::accepting)), with `callbacks` running the
    /// connections: a [`Callbacks`] implementation, or a
    /// [`codec::Framing`](crate::codec::Framing) for a server of frames (see
    /// [`IntoCallbacks`]). Must run inside a tokio runtime.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] naming the setting, or [`Error::Bind`] for an address that could
    /// not be resolved or bound, or an adopted listener that cannot be used (not listening, not
    /// registered with the runtime).
    pub async fn start(self, callbacks: impl IntoCallbacks) -> Result<Server, Error> {
        let (
            manager,
            Listeners {
                binds,
                tls,
                options,
            },
        ) = self.into_manager(callbacks)?;
        let mut listeners = Vec::with_capacity(binds.len());
        let mut local_addrs = Vec::with_capacity(binds.len());
        for bind in binds {
            let bound_here = matches!(bind.on, ListenOn::Address(_));
            let (listener, local_addr) = open::open(bind.on, &options)?;
            local_addrs.push(local_addr);
            let tls = bind
                .tls
                .or_else(|| tls.clone())
                .map(|acceptor| Arc::new(AcceptorCell::new(acceptor)));
            listeners.push(accept::Listener {
                listener: Arc::new(listener),
                tls,
                proxy: bind.proxy,
                // A listener bound here to one address accepts connections to that address
                // only; an adopted one may have options this crate does not know of (such as
                // `IP_TRANSPARENT`), so its connections are asked.
                accepts_on: (bound_here && !local_addr.ip().is_unspecified()).then_some(local_addr),
            });
        }
        // The server's handle can duplicate the listeners while the accept loop holds them, and
        // does not keep them open after it (a shutdown closes them).
        let handed_over = listeners
            .iter()
            .map(|listener| Arc::downgrade(&listener.listener))
            .collect::<Vec<_>>();
        let acceptors = listeners
            .iter()
            .map(|listener| listener.tls.clone())
            .collect::<Vec<_>>();
        let server = Server::started(
            manager.clone(),
            local_addrs.into(),
            handed_over.into(),
            acceptors.into(),
        )
        .await;
        if !listeners.is_empty() {
            let tasks = accept::start(manager.clone(), listeners);
            manager.accept_started(tasks);
        }
        tracing::info!(addresses = ?server.local_addrs(), "server started");
        Ok(server)
    }
}
