//! The admission rule: whether a client becomes a connection. One rule for every way in: the
//! accept loop, the PROXY protocol (whose client is known only once the header is read) and the
//! embedded transport of `testing`.

use std::net::IpAddr;

use crate::server::limit::{LimitPolicy, Permit};
use crate::server::manager::Manager;
use crate::stats::Count;

/// A client the admission rule let in: its limiter slot, holding its address's slot when the
/// address is capped; `over_peer_cap` when the address is over its cap, for a connection
/// refused from the start.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub(crate) permit: Permit,
    pub(crate) over_peer_cap: bool,
}

impl Manager {
    /// Whether a client would wait in the backlog rather than be taken: with
    /// [`LimitPolicy::StopAccepting`] at the connection limit, the accept loop accepts no one.
    pub(crate) fn holds_clients_back(&self) -> bool {
        self.config.at_limit == LimitPolicy::StopAccepting && self.limiter.is_full()
    }

    /// The admission rule, for every client taken in (by the accept loop, the embedded
    /// transport, and behind the PROXY protocol), in two steps. This first one: a slot of the
    /// limiter, or `None` at the connection limit, counted as a refusal at the limit. It runs no
    /// application code: the caller reports the limit (`on_maximum_connections`) its own way.
    pub(crate) fn admit(&self) -> Option<Permit> {
        let permit = self.limiter.try_acquire();
        if permit.is_none() {
            self.counters.count(Count::RefusedAtLimit);
        }
        permit
    }

    /// The admission rule's second step: the per-address cap, for a client at `address`. Over
    /// the cap it is counted as a refusal and becomes a connection refused from the start.
    /// Behind the PROXY protocol the client is known only once the driver has read the header,
    /// which then takes this step through the same [`PerIpLimit::admit`](crate::server::per_ip::PerIpLimit::admit).
    pub(crate) fn admit_peer(&self, permit: Permit, address: IpAddr) -> Admitted {
        let Some(limit) = &self.per_ip else {
            return Admitted {
                permit,
                over_peer_cap: false,
            };
        };
        match limit.admit(address, &self.counters) {
            Some(slot) => Admitted {
                permit: permit.with_peer_slot(slot),
                over_peer_cap: false,
            },
            None => Admitted {
                permit,
                over_peer_cap: true,
            },
        }
    }
}
