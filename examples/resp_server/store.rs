//! The in-memory map and the commands on it, with redis-server's replies (texts included).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use switchboard::Bytes;

use crate::resp::{parse_integer, Reply};

/// What the connection does after the reply.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum After {
    Continue,
    /// QUIT: close once the reply is sent.
    Close,
}

/// Keys and values, both copied out of the requests (a slice would keep a whole read buffer
/// alive per key).
#[derive(Debug, Default)]
pub(crate) struct Store {
    map: Mutex<HashMap<Bytes, Bytes>>,
}

impl Store {
    fn map(&self) -> MutexGuard<'_, HashMap<Bytes, Bytes>> {
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs one command; `args` is not empty.
    pub(crate) fn execute(&self, args: &[Bytes]) -> (Reply, After) {
        let name = &args[0];
        let is = |command: &str| name.eq_ignore_ascii_case(command.as_bytes());
        let reply = if is("GET") {
            self.arity(args, 2, |args| {
                Reply::Bulk(self.map().get(&args[1]).cloned())
            })
        } else if is("SET") {
            self.set(args)
        } else if is("PING") {
            match args.len() {
                1 => Reply::Simple("PONG"),
                2 => Reply::Bulk(Some(args[1].clone())),
                _ => wrong_arity("ping"),
            }
        } else if is("ECHO") {
            self.arity(args, 2, |args| Reply::Bulk(Some(args[1].clone())))
        } else if is("DEL") {
            self.at_least(args, 2, |args| {
                let mut map = self.map();
                let removed = args[1..]
                    .iter()
                    .filter(|key| map.remove(*key).is_some())
                    .count();
                Reply::Integer(removed as i64)
            })
        } else if is("EXISTS") {
            self.at_least(args, 2, |args| {
                let map = self.map();
                let found = args[1..]
                    .iter()
                    .filter(|key| map.contains_key(*key))
                    .count();
                Reply::Integer(found as i64)
            })
        } else if is("INCR") {
            self.arity(args, 2, |args| self.incr(&args[1]))
        } else if is("MGET") {
            self.at_least(args, 2, |args| {
                let map = self.map();
                Reply::Array(
                    args[1..]
                        .iter()
                        .map(|key| Reply::Bulk(map.get(key).cloned()))
                        .collect(),
                )
            })
        } else if is("DBSIZE") {
            self.arity(args, 1, |_| Reply::Integer(self.map().len() as i64))
        } else if is("QUIT") {
            return (Reply::Simple("OK"), After::Close);
        } else {
            unknown(args)
        };
        (reply, After::Continue)
    }

    /// `f` if the command has exactly `count` arguments (its name included).
    fn arity(&self, args: &[Bytes], count: usize, f: impl FnOnce(&[Bytes]) -> Reply) -> Reply {
        if args.len() == count {
            f(args)
        } else {
            wrong_arity(&String::from_utf8_lossy(&args[0]).to_lowercase())
        }
    }

    fn at_least(&self, args: &[Bytes], count: usize, f: impl FnOnce(&[Bytes]) -> Reply) -> Reply {
        if args.len() >= count {
            f(args)
        } else {
            wrong_arity(&String::from_utf8_lossy(&args[0]).to_lowercase())
        }
    }

    /// `SET key value`; redis-server's options (EX, NX...) are not part of this subset.
    fn set(&self, args: &[Bytes]) -> Reply {
        match args.len() {
            3 => {
                let key = Bytes::copy_from_slice(&args[1]);
                let value = Bytes::copy_from_slice(&args[2]);
                self.map().insert(key, value);
                Reply::Simple("OK")
            }
            0..=2 => wrong_arity("set"),
            _ => Reply::Error("ERR syntax error".into()),
        }
    }

    fn incr(&self, key: &Bytes) -> Reply {
        let mut map = self.map();
        let current = match map.get(key) {
            None => 0,
            Some(value) => match parse_integer(value) {
                Some(number) => number,
                None => return Reply::Error("ERR value is not an integer or out of range".into()),
            },
        };
        let Some(next) = current.checked_add(1) else {
            return Reply::Error("ERR increment or decrement would overflow".into());
        };
        map.insert(
            Bytes::copy_from_slice(key),
            Bytes::from(next.to_string().into_bytes()),
        );
        Reply::Integer(next)
    }
}

fn wrong_arity(command: &str) -> Reply {
    Reply::Error(format!(
        "ERR wrong number of arguments for '{command}' command"
    ))
}

/// redis-server's text: the name (at most 128 bytes), then each argument quoted and followed
/// by a space, while the list is shorter than 128 bytes (each cut to what is left of them).
fn unknown(args: &[Bytes]) -> Reply {
    let name = String::from_utf8_lossy(&args[0]);
    let name: String = name.chars().take(128).collect();
    let mut list = String::new();
    for arg in &args[1..] {
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
