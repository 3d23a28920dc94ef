//! Frames and groups together: a group's broadcast of an item goes through each member's codec
//! (or is encoded once for all), in each member's one order (guarantee 15, docs/guarantees.md);
//! a `GroupMap` keeps a group per key and drops the key once its last member leaves or closes,
//! so it does not grow under churn. A small pub/sub protocol over lines, on the embedded
//! connection of `switchboard::testing` under the paused clock. Every wait is bounded.

mod common;

use std::io;
use std::net::SocketAddr;

use common::*;
use switchboard::codec::{FrameHandler, FramedConnection, Framing};
use switchboard::testing::{EmbeddedPeer, EmbeddedServer};
use switchboard::tokio_util::codec::{
    Decoder, Encoder, LengthDelimitedCodec, LinesCodec, LinesCodecError,
};
use switchboard::{
    async_trait, Bytes, BytesMut, Callbacks, Connection, ConnectionGroup, Delivery,
    FullQueuePolicy, GroupMap, Server, Slot,
};

/// Lines whose encoder numbers them, per connection: `3 text` is the third line this codec
/// encoded. A broadcast that went through each member's own codec shows in the numbers. An empty
/// line is refused.
#[derive(Debug)]
struct Numbered {
    lines: LinesCodec,
    sent: u32,
}

impl Numbered {
    fn new() -> Self {
        Numbered {
            lines: LinesCodec::new(),
            sent: 0,
        }
    }
}

impl Decoder for Numbered {
    type Item = String;
    type Error = LinesCodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<String>, LinesCodecError> {
        self.lines.decode(src)
    }
}

impl<T: AsRef<str>> Encoder<T> for Numbered {
    type Error = LinesCodecError;

    fn encode(&mut self, line: T, dst: &mut BytesMut) -> Result<(), LinesCodecError> {
        if line.as_ref().is_empty() {
            return Err(io::Error::other("an empty line").into());
        }
        self.sent += 1;
        self.lines
            .encode(format!("{} {}", self.sent, line.as_ref()), dst)
    }
}

/// A line codec the pub/sub handler can run with.
trait Lines:
    Decoder<Item = String, Error = LinesCodecError>
    + Encoder<String, Error = LinesCodecError>
    + Send
    + Sync
    + 'static
{
}

impl<C> Lines for C where
    C: Decoder<Item = String, Error = LinesCodecError>
        + Encoder<String, Error = LinesCodecError>
        + Send
        + Sync
        + 'static
{
}

/// `SUB topic`, `UNSUB topic`, `PUB topic message` (to every subscriber, the sender too if it
/// is one, answered with how many got it), `QUIT`. Replies are fed: one write per read.
struct PubSub<C> {
    topics: GroupMap<String>,
    codec: fn() -> C,
}

impl<C: Lines> Callbacks for PubSub<C> {}

#[async_trait]
impl<C: Lines> FrameHandler for PubSub<C> {
    type Codec = C;

    fn new_codec(&self, _: &Connection) -> C {
        (self.codec)()
    }

    async fn on_frame(&self, connection: &FramedConnection<'_, C>, line: String) {
        let mut words = line.splitn(3, ' ');
        let reply = match (words.next(), words.next(), words.next()) {
            (Some("SUB"), Some(topic), None) => {
                self.topics.join(topic.to_owned(), connection);
                format!("OK SUB {topic}")
            }
            (Some("UNSUB"), Some(topic), None) => {
                self.topics.leave(topic, connection.id());
                format!("OK UNSUB {topic}")
            }
            (Some("PUB"), Some(topic), Some(message)) => {
                let sent = self.topics.get(topic).map_or(0, |group| {
                    group
                        .broadcast_item::<C, _>(format!("{topic}: {message}"))
                        .sent()
                });
                format!("OK PUB {topic} {sent}")
            }
            (Some("QUIT"), None, None) => {
                connection.close();
                return;
            }
            _ => "ERR unknown".to_owned(),
        };
        connection.feed(reply).unwrap();
    }
}

async fn start<C: Lines>(
    codec: fn() -> C,
    topics: &GroupMap<String>,
    configure: impl FnOnce(switchboard::ServerBuilder) -> switchboard::ServerBuilder,
) -> EmbeddedServer {
    let handler = PubSub {
        topics: topics.clone(),
        codec,
    };
    configure(Server::builder())
        .embedded()
        .start(Framing::new(handler))
        .await
        .unwrap()
}

/// Reads exactly `expected`'s length and compares.
async fn expect(peer: &mut EmbeddedPeer, expected: &str) {
    let got = bounded(expected, peer.read_exact(expected.len()))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&got), expected);
}

fn sorted(mut keys: Vec<String>) -> Vec<String> {
    keys.sort();
    keys
}

#[tokio::test(start_paused = true)]
async fn a_broadcast_item_goes_through_each_members_codec_in_its_one_order() {
    let topics = GroupMap::new();
    let server = start(Numbered::new, &topics, |builder| builder).await;
    let mut one = server.accept(peer_addr(1)).await.unwrap();
    let mut two = server.accept(peer_addr(2)).await.unwrap();
    // In one write: the reply to SUB is fed, the broadcast posted after it, then the reply to
    // PUB. They arrive in that order, numbered by this member's codec.
    one.send("SUB a\nPUB a x\n").unwrap();
    expect(&mut one, "1 OK SUB a\n2 a: x\n3 OK PUB a 1\n").await;
    two.send("SUB a\n").unwrap();
    expect(&mut two, "1 OK SUB a\n").await;
    two.send("PUB a y\n").unwrap();
    // Each member's own codec numbers the same item: two has sent one line, one three.
    expect(&mut two, "2 a: y\n3 OK PUB a 2\n").await;
    expect(&mut one, "4 a: y\n").await;

    // From a task of its own (the test's): the same, reported member by member.
    let group = topics.get("a").unwrap();
    let report = group.broadcast_item::<Numbered, _>("z");
    assert_eq!(report.sent(), 2);
    assert_eq!(report.delivery(one.id()), Some(Delivery::Sent));
    expect(&mut one, "5 z\n").await;
    expect(&mut two, "4 z\n").await;
    let except = group.broadcast_item_except::<Numbered, _>("w", two.id());
    assert_eq!((except.sent(), except.delivery(two.id())), (1, None));
    expect(&mut one, "6 w\n").await;

    // An item the members' encoder refuses, and a codec the members do not have: nothing sent.
    let refused = group.broadcast_item::<Numbered, _>("");
    assert_eq!((refused.sent(), refused.not_encoded()), (0, 2));
    assert_eq!(
        refused.with(Delivery::EncodeFailed).count(),
        2,
        "{refused:?}"
    );
    let other = group.broadcast_item::<LinesCodec, _>("not framed so");
    assert_eq!(other.with(Delivery::NotFramed).count(), 2, "{other:?}");
    one.send("PUB a after\n").unwrap();
    expect(&mut one, "7 a: after\n8 OK PUB a 2\n").await;
    expect(&mut two, "5 a: after\n").await;
}

#[tokio::test(start_paused = true)]
async fn an_item_encoded_once_reaches_every_member_with_that_codec() {
    let topics = GroupMap::new();
    let server = start(LinesCodec::new, &topics, |builder| builder).await;
    let mut peers = Vec::new();
    for n in 0..3 {
        let mut peer = server.accept(peer_addr(n)).await.unwrap();
        peer.send("SUB news\n").unwrap();
        expect(&mut peer, "OK SUB news\n").await;
        peers.push(peer);
    }
    let news = topics.get("news").unwrap();
    let report = news
        .broadcast_encoded(&mut LinesCodec::new(), "one encoding")
        .unwrap();
    assert_eq!(report.sent(), 3);
    for peer in &mut peers {
        expect(peer, "one encoding\n").await;
    }
    let except = news
        .broadcast_encoded_except(&mut LinesCodec::new(), "not you", peers[0].id())
        .unwrap();
    assert_eq!(except.sent(), 2);
    expect(&mut peers[1], "not you\n").await;
    // Another codec's bytes reach no one, and an encoder's error comes back whole.
    let other = news
        .broadcast_encoded(&mut LengthDelimitedCodec::new(), Bytes::from("x"))
        .unwrap();
    assert_eq!((other.sent(), other.not_encoded()), (0, 3));
    assert!(news.broadcast_encoded(&mut Numbered::new(), "").is_err());
    // What was sent since is all the first peer has to read.
    peers[0].send("PUB news last\n").unwrap();
    expect(&mut peers[0], "news: last\nOK PUB news 3\n").await;
}

#[tokio::test(start_paused = true)]
async fn a_maps_key_goes_when_its_last_member_leaves_or_closes() {
    let topics = GroupMap::new();
    let server = start(LinesCodec::new, &topics, |builder| builder).await;
    let mut one = server.accept(peer_addr(1)).await.unwrap();
    let mut two = server.accept(peer_addr(2)).await.unwrap();
    one.send("SUB a\nSUB b\nSUB c\n").unwrap();
    expect(&mut one, "OK SUB a\nOK SUB b\nOK SUB c\n").await;
    two.send("SUB b\n").unwrap();
    expect(&mut two, "OK SUB b\n").await;
    assert_eq!(sorted(topics.keys()), ["a", "b", "c"]);

    one.send("UNSUB a\n").unwrap();
    expect(&mut one, "OK UNSUB a\n").await;
    assert_eq!(sorted(topics.keys()), ["b", "c"], "left: its key is gone");
    assert!(!topics.leave("a", one.id()), "not a member any more");

    // The last member of `c` closes without leaving: the key goes with it; `b` keeps `two`.
    one.send("QUIT\n").unwrap();
    bounded("the close", one.read_to_end()).await.unwrap();
    eventually("c is dropped", || !topics.contains_key("c")).await;
    assert_eq!(topics.keys(), ["b"]);
    assert_eq!(topics.get("b").unwrap().len(), 1);
    two.reset();
    eventually("b is dropped", || topics.is_empty()).await;
}

#[tokio::test(start_paused = true)]
async fn the_map_does_not_grow_under_join_and_close_churn() {
    let topics = GroupMap::new();
    let server = start(LinesCodec::new, &topics, |builder| builder).await;
    let mut steady = server.accept(peer_addr(0)).await.unwrap();
    steady.send("SUB shared\n").unwrap();
    expect(&mut steady, "OK SUB shared\n").await;
    for n in 1..=300u16 {
        let mut peer = server.accept(peer_addr(n)).await.unwrap();
        peer.send(format!("SUB t{n}\nSUB shared\n")).unwrap();
        expect(&mut peer, &format!("OK SUB t{n}\nOK SUB shared\n")).await;
        assert_eq!(topics.len(), 2, "the shared key and this peer's own");
        // Closed half of the time by the peer's reset, half by the server (QUIT).
        if n % 2 == 0 {
            peer.reset();
        } else {
            peer.send("QUIT\n").unwrap();
            bounded("the close", peer.read_to_end()).await.unwrap();
        }
        let own = format!("t{n}");
        eventually("the key is dropped", || !topics.contains_key(&own)).await;
        assert_eq!(topics.get("shared").unwrap().len(), 1);
    }
    assert_eq!(topics.keys(), ["shared"]);
}

#[tokio::test(start_paused = true)]
async fn a_member_that_does_not_read_is_closed_as_the_maps_policy_says() {
    const LIMIT: usize = 8 * 1024;
    let topics = GroupMap::with_when_full(FullQueuePolicy::Close);
    assert_eq!(topics.when_full(), FullQueuePolicy::Close);
    let server = start(LinesCodec::new, &topics, |builder| {
        builder
            .write_queue_limit(LIMIT)
            .write_watermarks(LIMIT, LIMIT / 2)
    })
    .await;
    let mut slow = server.accept(peer_addr(1)).await.unwrap();
    slow.send("SUB feed\n").unwrap();
    expect(&mut slow, "OK SUB feed\n").await;
    slow.set_receive_window(1024);
    let feed = topics.get("feed").unwrap();
    let line = "x".repeat(1000);
    let mut full = None;
    for sent in 0..200 {
        let report = feed.broadcast_item::<LinesCodec, _>(line.as_str());
        if report.queue_full() == 1 {
            full = Some(sent);
            break;
        }
        assert_eq!(report.sent(), 1);
        tokio::task::yield_now().await;
    }
    assert!(full.is_some(), "the queue never filled");
    // Closed gracefully: the member leaves, and with it the key.
    eventually("the slow member's key is dropped", || topics.is_empty()).await;
}

/// A member's own user data, in use (`UserData::with`) while its callback broadcasts to a group
/// it is in: the broadcast finds each member's codec without touching the application's slots.
struct Counting {
    room: ConnectionGroup,
    count: Slot<u32>,
}

#[async_trait]
impl Callbacks for Counting {
    async fn on_connection_established(&self, connection: &Connection, _: &SocketAddr) {
        connection.user_data().set(self.count, 0);
        self.room.insert(connection);
    }
}

#[async_trait]
impl FrameHandler for Counting {
    type Codec = LinesCodec;

    fn new_codec(&self, _: &Connection) -> LinesCodec {
        LinesCodec::new()
    }

    async fn on_frame(&self, connection: &FramedConnection<'_, LinesCodec>, line: String) {
        let sent = connection.user_data().with(self.count, |count| {
            let count = count.get_or_insert(0);
            *count += 1;
            let line = format!("{count} {line}");
            self.room
                .broadcast_item::<LinesCodec, _>(line.as_str())
                .sent()
        });
        assert_eq!(sent, self.room.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_from_inside_a_members_user_data_does_not_deadlock() {
    let mut builder = Server::builder();
    let count = builder.request_user_data_slot();
    let room = ConnectionGroup::new();
    let handler = Counting {
        room: room.clone(),
        count,
    };
    let server = builder
        .embedded()
        .start(Framing::new(handler))
        .await
        .unwrap();
    let mut one = server.accept(peer_addr(1)).await.unwrap();
    let mut two = server.accept(peer_addr(2)).await.unwrap();
    eventually("both joined", || room.len() == 2).await;
    one.send("hello\n").unwrap();
    expect(&mut one, "1 hello\n").await;
    expect(&mut two, "1 hello\n").await;
    two.send("hi\n").unwrap();
    expect(&mut one, "1 hi\n").await;
    expect(&mut two, "1 hi\n").await;
}
