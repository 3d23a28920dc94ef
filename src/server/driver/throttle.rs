//! The read rate limit's side of a wait: how much the next read may take.

use tokio::time::Instant;

use super::Driver;
use crate::connection::lifecycle::Interest;

impl Driver {
    /// Under a read rate limit: the most the next read may take, or, with nothing to take yet,
    /// no read and a wake-up when there is (the timer may fire early for the lifecycle's
    /// deadlines: it finds none passed). Out of line: only rate-limited connections run it.
    #[cold]
    pub(super) fn throttle(&mut self, mut interest: Interest) -> Interest {
        let read_buffer_size = self.context.read_buffer_size;
        let Some(rare) = self.rare.as_deref_mut() else {
            return interest;
        };
        let Some(rate) = rare.rate.as_mut() else {
            return interest;
        };
        let available = rate.available(Instant::now());
        if available == 0 {
            interest.read = false;
            let refilled = rate.refilled_at();
            interest.deadline = Some(interest.deadline.map_or(refilled, |at| at.min(refilled)));
        } else {
            rare.read_size = read_buffer_size.min(usize::try_from(available).unwrap_or(usize::MAX));
        }
        interest
    }
}
