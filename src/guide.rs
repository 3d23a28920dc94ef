//! The guide: how to build a server on switchboard, one chapter per module. Documentation
//! only; each chapter is a Markdown file under the repository's `docs/guide/`, and every Rust
//! code block in it is compiled and run as a doc test.
//!
//! 1. [Handlers](handlers): the callbacks, their order, the lifetime rule, listeners.
//! 2. [The example programs](examples): an echo server and client to try, and the others.
//! 3. [TLS](tls): acceptors, protocol versions per platform, a TLS connection's events.
//! 4. [Ending on purpose](ending): close, abort, a reason, the last word, refusals, shutdown.
//! 5. [Clients](clients): awaited clients, outgoing connections, the server from callbacks,
//!    signals.
//! 6. [Groups](groups): weak handles, groups and broadcast, finding connections, the one order.
//! 7. [Hostile peers](hostile_peers): backpressure, rate limits, fair turns, timeouts, handshake
//!    slots, per-peer caps, refusals.
//! 8. [Frames](frames): items through a tokio-util codec instead of bytes; a Redis-protocol
//!    server.
//! 9. [Load balancers](load_balancers): the PROXY protocol, HAProxy, restarts that hand the
//!    listening socket over, running on Kubernetes (the drain window, readiness), certificate
//!    renewal.
//! 10. [Testing](testing): a handler tested without sockets, under tokio's paused clock.
//! 11. [Metrics](metrics): the series, labels, exporting to Prometheus.
//! 12. [Defaults](defaults): every default and where it comes from.
//! 13. [The engine](engine): how it works inside, and notes for contributors.

#[doc = include_str!("../docs/guide/handlers.md")]
pub mod handlers {}

#[doc = include_str!("../docs/guide/examples.md")]
pub mod examples {}

#[doc = include_str!("../docs/guide/tls.md")]
pub mod tls {}

#[doc = include_str!("../docs/guide/ending.md")]
pub mod ending {}

#[doc = include_str!("../docs/guide/clients.md")]
pub mod clients {}

#[doc = include_str!("../docs/guide/groups.md")]
pub mod groups {}

#[doc = include_str!("../docs/guide/hostile_peers.md")]
pub mod hostile_peers {}

#[doc = include_str!("../docs/guide/frames.md")]
pub mod frames {}

#[doc = include_str!("../docs/guide/load_balancers.md")]
pub mod load_balancers {}

// The chapter links into `crate::testing`, which exists with the `testing` feature only (as on
// docs.rs, and in the crate's own tests, whose dev-dependency turns it on).
#[cfg_attr(feature = "testing", doc = include_str!("../docs/guide/testing.md"))]
#[cfg_attr(
    not(feature = "testing"),
    doc = "# Testing your callbacks\n\nThis chapter needs the `testing` feature."
)]
pub mod testing {}

#[doc = include_str!("../docs/guide/metrics.md")]
pub mod metrics {}

#[doc = include_str!("../docs/guide/defaults.md")]
pub mod defaults {}

#[doc = include_str!("../docs/guide/engine.md")]
pub mod engine {}
