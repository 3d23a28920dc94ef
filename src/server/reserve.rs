//! A spare file descriptor for the accept loop, after libuv's `uv__emfile_trick` and Twisted's
//! reserved descriptor.
//!
//! A process out of descriptors (EMFILE, or ENFILE for the whole system) cannot accept, and the
//! kernel goes on completing handshakes into the listen backlog: clients sit there, connected
//! but unanswered, until they time out. Holding one descriptor in reserve lets the accept loop
//! free it, accept a pending connection into it, reset that connection at once, and repeat until
//! the backlog is empty; then it takes the spare back. Each client gets a prompt reset instead
//! of a hang, and the listener's readiness is consumed, so the loop waits for the next client
//! instead of failing on the same ones again.
//!
//! Unix only: Windows has no per-process descriptor table (sockets are limited by memory, which
//! a reserve cannot help with), so there the reserve holds nothing and an out-of-resources
//! accept only backs off.

use std::io;

#[cfg(unix)]
use std::fs::File;

/// `EMFILE` (the process's descriptor table is full) and `ENFILE` (the system's is): the same
/// numbers on Linux, the BSDs, macOS and Solaris since Version 7 Unix. std has no stable
/// `ErrorKind` for them.
#[cfg(unix)]
const EMFILE: i32 = 24;
#[cfg(unix)]
const ENFILE: i32 = 23;

/// Whether `error` means there is no descriptor to accept into, which the reserve can help with.
pub(crate) fn is_out_of_descriptors(error: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(error.raw_os_error(), Some(EMFILE | ENFILE))
    }
    #[cfg(not(unix))]
    {
        let _ = error;
        false
    }
}

/// The spare descriptor: held while the process has descriptors to spare, freed for an instant
/// to refuse pending connections when it has none.
#[derive(Debug)]
pub(crate) struct Reserve {
    #[cfg(unix)]
    spare: Option<File>,
    /// Opening the spare failed for a reason other than a shortage (no such file, no
    /// permission): the reserve is off for good instead of retrying on every accept error.
    #[cfg(unix)]
    disabled: bool,
}

impl Reserve {
    /// Takes the spare now if it can; a reserve that cannot is retried by [`Reserve::restore`].
    pub(crate) fn new() -> Self {
        let mut reserve = Reserve {
            #[cfg(unix)]
            spare: None,
            #[cfg(unix)]
            disabled: false,
        };
        reserve.restore();
        reserve
    }

    /// Whether the spare is held, so that [`Reserve::release`] can free a descriptor.
    pub(crate) fn is_held(&self) -> bool {
        #[cfg(unix)]
        {
            self.spare.is_some()
        }
        #[cfg(not(unix))]
        {
            false
        }
    }

    /// Closes the spare, freeing one descriptor; `false` if none was held.
    pub(crate) fn release(&mut self) -> bool {
        #[cfg(unix)]
        {
            self.spare.take().is_some()
        }
        #[cfg(not(unix))]
        {
            false
        }
    }

    /// Takes the spare back if it is not held; `true` if it is held afterwards. Cheap to call
    /// when it is.
    pub(crate) fn restore(&mut self) -> bool {
        #[cfg(unix)]
        {
            if self.spare.is_none() && !self.disabled {
                // The root directory exists in every chroot and container, unlike /dev/null
                // (libuv opens "/" for the same reason). std opens it close-on-exec.
                match File::open("/") {
                    Ok(file) => self.spare = Some(file),
                    Err(error) if is_out_of_descriptors(&error) => {}
                    Err(error) => {
                        tracing::warn!(
                            %error,
                            "cannot open a spare descriptor; connections pending when the \
                             process runs out of descriptors will wait in the backlog"
                        );
                        self.disabled = true;
                    }
                }
            }
        }
        self.is_held()
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn shortages_are_recognised_and_other_errors_are_not() {
        assert!(is_out_of_descriptors(&io::Error::from_raw_os_error(24)));
        assert!(is_out_of_descriptors(&io::Error::from_raw_os_error(23)));
        assert!(!is_out_of_descriptors(&io::Error::from(
            io::ErrorKind::OutOfMemory
        )));
        assert!(!is_out_of_descriptors(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
    }

    #[test]
    fn the_spare_is_held_released_and_restored() {
        let mut reserve = Reserve::new();
        assert!(reserve.is_held());
        assert!(reserve.release());
        assert!(!reserve.is_held());
        assert!(!reserve.release(), "nothing left to free");
        assert!(reserve.restore());
        assert!(reserve.restore(), "restoring a held spare keeps it");
        assert!(reserve.is_held());
    }
}
