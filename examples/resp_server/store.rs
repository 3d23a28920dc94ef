//! The in-memory map and the commands on it, with redis-server's replies (texts included).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use switchboard::Bytes;

use crate::resp::{array_header_len, bulk_reply_len, parse_integer, Command, DecoderStats, Reply};

/// What the connection does after the reply.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum After {
    Continue,
    /// QUIT: close once the reply is sent.
    Close,
}

/// Keys and values, both copied out of the requests (a slice would keep a whole read buffer
/// alive per key).
#[derive(Debug)]
pub(crate) struct Store {
    map: Mutex<HashMap<Bytes, Bytes>>,
    /// The longest reply given (`--max-reply`), in encoded bytes.
    max_reply: usize,
    /// The decoders' counters, for INFO.
    stats: Arc<DecoderStats>,
}

impl Store {
    /// An empty store whose replies are at most `max_reply` bytes, which must hold a bulk string
    /// of the longest argument a request may carry: then only MGET's reply can be longer (a
    /// short `MGET big big ...` asks for one of any size), and only MGET checks. `stats` are the
    /// decoders' counters, which INFO gives.
    pub(crate) fn new(max_reply: usize, stats: Arc<DecoderStats>) -> Self {
        Store {
            map: Mutex::default(),
            max_reply,
            stats,
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<Bytes, Bytes>> {
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs one command; it has at least its name.
    pub(crate) fn execute(&self, command: &Command) -> (Reply, After) {
        let name = command.arg(0);
        let count = command.len();
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        let keys = || (1..count).map(|index| command.arg(index));
        let reply = if is("GET") {
            arity(command, count == 2, || {
                Reply::Bulk(self.map().get(command.arg(1)).cloned())
            })
        } else if is("SET") {
            match count {
                3 => {
                    let key = Bytes::copy_from_slice(command.arg(1));
                    let value = Bytes::copy_from_slice(command.arg(2));
                    self.map().insert(key, value);
                    Reply::Simple("OK")
                }
                0..=2 => wrong_arity(command),
                // redis-server's options (EX, NX...) are not part of this subset.
                _ => Reply::Error("ERR syntax error".into()),
            }
        } else if is("PING") {
            match count {
                1 => Reply::Simple("PONG"),
                2 => Reply::Bulk(Some(command.bytes(1))),
                _ => wrong_arity(command),
            }
        } else if is("ECHO") {
            arity(command, count == 2, || Reply::Bulk(Some(command.bytes(1))))
        } else if is("DEL") {
            arity(command, count >= 2, || {
                let mut map = self.map();
                let removed = keys().filter(|key| map.remove(*key).is_some()).count();
                Reply::Integer(removed as i64)
            })
        } else if is("EXISTS") {
            arity(command, count >= 2, || {
                let map = self.map();
                Reply::Integer(keys().filter(|key| map.contains_key(*key)).count() as i64)
            })
        } else if is("INCR") {
            arity(command, count == 2, || self.increment(command.arg(1), 1))
        } else if is("DECR") {
            arity(command, count == 2, || self.increment(command.arg(1), -1))
        } else if is("INCRBY") {
            arity(command, count == 3, || {
                match parse_integer(command.arg(2)) {
                    Some(by) => self.increment(command.arg(1), by),
                    None => not_an_integer(),
                }
            })
        } else if is("DECRBY") {
            arity(command, count == 3, || {
                match parse_integer(command.arg(2)) {
                    // Its negation is no i64.
                    Some(i64::MIN) => Reply::Error("ERR decrement would overflow".into()),
                    Some(by) => self.increment(command.arg(1), -by),
                    None => not_an_integer(),
                }
            })
        } else if is("MGET") {
            arity(command, count >= 2, || self.mget(keys()))
        } else if is("INFO") {
            // Any section asked for: this server's own counters, none of redis-server's.
            Reply::Bulk(Some(Bytes::from(format!(
                "# Decoder\r\ndecoded_bytes:{}\r\nscanned_bytes:{}\r\n",
                self.stats.decoded(),
                self.stats.scanned()
            ))))
        } else if is("DBSIZE") {
            arity(command, count == 1, || {
                Reply::Integer(self.map().len() as i64)
            })
        } else if is("QUIT") {
            return (Reply::Simple("OK"), After::Close);
        } else {
            unknown(command)
        };
        (reply, After::Continue)
    }

    /// The values of `keys`, or an error if their reply would be longer than the maximum: its
    /// size is known from the values' lengths before any of it is encoded.
    fn mget<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) -> Reply {
        let map = self.map();
        let values: Vec<Option<&Bytes>> = keys.map(|key| map.get(key)).collect();
        let size = values
            .iter()
            .fold(array_header_len(values.len()), |size, value| {
                size.saturating_add(bulk_reply_len(value.map(|value| value.len())))
            });
        if size > self.max_reply {
            return Reply::Error(format!(
                "ERR reply of {size} bytes is above the maximum of {} (--max-reply)",
                self.max_reply
            ));
        }
        Reply::Array(values.into_iter().map(Option::<&Bytes>::cloned).collect())
    }

    /// INCR, DECR, INCRBY, DECRBY: adds `by` to the integer at `key` (0 if there is none), as
    /// redis-server does: the value must be an i64 in its canonical form (`string2ll`).
    fn increment(&self, key: &[u8], by: i64) -> Reply {
        let mut map = self.map();
        let current = match map.get(key) {
            None => 0,
            Some(value) => match parse_integer(value) {
                Some(number) => number,
                None => return not_an_integer(),
            },
        };
        let Some(next) = current.checked_add(by) else {
            return Reply::Error("ERR increment or decrement would overflow".into());
        };
        map.insert(
            Bytes::copy_from_slice(key),
            Bytes::from(next.to_string().into_bytes()),
        );
        Reply::Integer(next)
    }
}

fn not_an_integer() -> Reply {
    Reply::Error("ERR value is not an integer or out of range".into())
}

/// `reply()` if the command's number of arguments is `right`, else redis-server's error.
fn arity(command: &Command, right: bool, reply: impl FnOnce() -> Reply) -> Reply {
    if right {
        reply()
    } else {
        wrong_arity(command)
    }
}

fn wrong_arity(command: &Command) -> Reply {
    let name = String::from_utf8_lossy(command.arg(0)).to_lowercase();
    Reply::Error(format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

/// redis-server's text: the name (at most 128 bytes), then each argument quoted and followed
/// by a space, while the list is shorter than 128 bytes (each cut to what is left of them).
fn unknown(command: &Command) -> Reply {
    let name = String::from_utf8_lossy(command.arg(0));
    let name: String = name.chars().take(128).collect();
    let mut list = String::new();
    for arg in (1..command.len()).map(|index| command.arg(index)) {
        if list.len() >= 128 {
            break;
        }
        let room = 128 - list.len();
        let arg = String::from_utf8_lossy(&arg[..arg.len().min(room)]);
        list.push_str(&format!("'{arg}' "));
    }
    Reply::Error(format!(
        "ERR unknown command '{name}', with args beginning with: {list}"
    ))
}
