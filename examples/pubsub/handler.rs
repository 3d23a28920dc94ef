//! The pub/sub protocol: one [`FrameHandler`] over tokio-util's `LinesCodec`, the topics in a
//! [`GroupMap`], each connection's subscriptions in its user data. Shared by `main.rs` and the
//! example's tests (`tests/pubsub.rs` includes this file), so the tests run the very handler the
//! program serves with.

use std::collections::HashSet;

use switchboard::codec::{FrameError, FrameHandler, FramedConnection};
use switchboard::tokio_util::codec::{LinesCodec, LinesCodecError};
use switchboard::{
    async_trait, Callbacks, Connection, FullQueuePolicy, GroupMap, IdleAction, Slot,
};

/// Longest line a client may send, `\n` excluded; a longer one gets `ERR line too long` and the
/// connection is closed.
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// Longest topic name.
pub(crate) const MAX_TOPIC: usize = 256;

/// Topics one client may be subscribed to at once; a subscription past it gets
/// `ERR too many subscriptions`.
pub(crate) const MAX_SUBSCRIPTIONS: usize = 1024;

/// The reply to a client connecting while the server is full, then FIN.
pub(crate) const SERVER_FULL: &str = "ERR server full\n";

/// The pub/sub server's handler: every connection's lines, the topics, and the goodbyes.
#[derive(Debug)]
pub(crate) struct PubSub {
    /// Each topic's subscribers. A topic with none is not kept: the map drops a group when its
    /// last member leaves or closes.
    topics: GroupMap<String>,
    /// Each connection's subscriptions, to bound how many it holds (the topics' groups forget a
    /// connection by themselves when it closes).
    subscriptions: Slot<HashSet<String>>,
}

impl PubSub {
    /// A handler with no topics, keeping each connection's subscriptions in `subscriptions` (a
    /// slot of the server's builder).
    pub(crate) fn new(subscriptions: Slot<HashSet<String>>) -> Self {
        PubSub {
            // A subscriber whose queue is full (it reads slower than the topic is published) is
            // closed after what it was sent, never left with a gap in a topic's messages.
            topics: GroupMap::with_when_full(FullQueuePolicy::Close),
            subscriptions,
        }
    }

    /// The topics that have subscribers now (for the tests: the program does not ask).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn topics(&self) -> &GroupMap<String> {
        &self.topics
    }

    fn subscribe(&self, connection: &Connection, topic: &str) -> String {
        let added = connection
            .user_data()
            .with(self.subscriptions, |subscriptions| {
                let subscriptions = subscriptions.get_or_insert_with(HashSet::new);
                if subscriptions.contains(topic) {
                    return true;
                }
                if subscriptions.len() >= MAX_SUBSCRIPTIONS {
                    return false;
                }
                subscriptions.insert(topic.to_owned());
                true
            });
        if !added {
            return "ERR too many subscriptions".to_owned();
        }
        self.topics.join(topic.to_owned(), connection);
        format!("OK SUB {topic}")
    }

    fn unsubscribe(&self, connection: &Connection, topic: &str) -> String {
        connection
            .user_data()
            .with(self.subscriptions, |subscriptions| {
                if let Some(subscriptions) = subscriptions {
                    subscriptions.remove(topic);
                }
            });
        self.topics.leave(topic, connection.id());
        format!("OK UNSUB {topic}")
    }

    /// Queues `topic: message` for every subscriber, through each one's codec, and answers how
    /// many it was queued for.
    fn publish(&self, topic: &str, message: &str) -> String {
        let line = format!("{topic}: {message}");
        let receivers = self.topics.get(topic).map_or(0, |group| {
            group
                .broadcast_encoded(&mut LinesCodec::new(), line.as_str())
                .map_or(0, |report| report.sent())
        });
        format!("OK PUB {topic} {receivers}")
    }

    /// The answer to one line.
    fn answer(&self, connection: &Connection, line: &str) -> String {
        match Command::parse(line) {
            Ok(Command::Subscribe(topic)) => self.subscribe(connection, topic),
            Ok(Command::Unsubscribe(topic)) => self.unsubscribe(connection, topic),
            Ok(Command::Publish(topic, message)) => self.publish(topic, message),
            Err(error) => format!("ERR {error}"),
        }
    }
}

/// A client's request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Command<'a> {
    /// `SUB topic`
    Subscribe(&'a str),
    /// `UNSUB topic`
    Unsubscribe(&'a str),
    /// `PUB topic message`: the message is the rest of the line, spaces included.
    Publish(&'a str, &'a str),
}

impl<'a> Command<'a> {
    /// Parses one line (without its `\n`), or says what is wrong with it.
    pub(crate) fn parse(line: &'a str) -> Result<Command<'a>, &'static str> {
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        match verb {
            "SUB" => Ok(Command::Subscribe(topic(rest)?)),
            "UNSUB" => Ok(Command::Unsubscribe(topic(rest)?)),
            "PUB" => {
                let (name, message) = rest.split_once(' ').ok_or("usage: PUB topic message")?;
                if message.is_empty() {
                    return Err("usage: PUB topic message");
                }
                Ok(Command::Publish(topic(name)?, message))
            }
            _ => Err("unknown command: SUB topic, UNSUB topic or PUB topic message"),
        }
    }
}

/// A topic name: 1 to [`MAX_TOPIC`] bytes, with no space or control character.
fn topic(name: &str) -> Result<&str, &'static str> {
    if name.is_empty() {
        Err("a topic is needed")
    } else if name.len() > MAX_TOPIC {
        Err("topic too long")
    } else if name.chars().any(|c| c == ' ' || c.is_control()) {
        Err("a topic has no spaces or control characters")
    } else {
        Ok(name)
    }
}

/// Sends `line` through the connection's codec; a line that does not fit in its write queue is
/// dropped (the connection is closing, or its client stopped reading: the queue's limit is the
/// answer).
fn say(connection: &Connection, line: &str) {
    if let Some(framed) = FramedConnection::<LinesCodec>::of(connection) {
        let _ = framed.send(line);
    }
}

#[async_trait]
impl Callbacks for PubSub {
    async fn on_idle_timeout(&self, connection: &Connection) -> IdleAction {
        say(connection, "ERR idle");
        IdleAction::Close
    }

    async fn on_shutdown_requested(&self, connection: &Connection) {
        say(connection, "bye");
        connection.close();
    }
}

#[async_trait]
impl FrameHandler for PubSub {
    type Codec = LinesCodec;

    fn new_codec(&self, _connection: &Connection) -> LinesCodec {
        LinesCodec::new_with_max_length(MAX_LINE)
    }

    async fn on_frame(&self, connection: &FramedConnection<'_, LinesCodec>, line: String) {
        let reply = self.answer(connection.connection(), &line);
        // Queued after the broadcast a PUB made, so a subscribed publisher reads its own message
        // before the answer (one order for everything posted to a connection).
        let _ = connection.send(reply.as_str());
    }

    async fn on_decode_error(
        &self,
        connection: &FramedConnection<'_, LinesCodec>,
        error: &FrameError<LinesCodecError>,
    ) {
        let reply = match error {
            FrameError::Decode(LinesCodecError::MaxLineLengthExceeded)
            | FrameError::TooLong { .. } => "ERR line too long",
            // Not UTF-8, a socket error, or a last line cut short by the client's FIN.
            _ => "ERR bad line",
        };
        let _ = connection.send(reply);
    }
}
