//! The `pubsub` example: its handler on the embedded connection (the paused clock, a framed peer,
//! the handler inspected through an `Arc`), and the program as a child process over loopback
//! (Linux): subscriptions, publishing with the count of receivers, the one-order rule (an answer
//! posted before a broadcast arrives before it), `ERR` for anything else, a client over
//! `--max-clients` told `ERR server full`, an idle client told `ERR idle`, both then closed with
//! FIN, SIGTERM or SIGINT giving every client `bye` and FIN before the process prints its
//! shutdown report and exits 0, and the metrics endpoint. Every wait is bounded.

mod common;

#[allow(dead_code)]
#[path = "../examples/pubsub/handler.rs"]
mod handler;

mod embedded {
    //! The handler on the embedded connection: no sockets, tokio's paused clock.

    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use switchboard::codec::Framing;
    use switchboard::testing::{EmbeddedServer, Event, FramedPeer, Recorded};
    use switchboard::tokio_util::codec::LinesCodec;
    use switchboard::{ClosureReason, IdleAction, LimitPolicy, Server, ServerBuilder};

    use super::handler::{Command, PubSub, MAX_SUBSCRIPTIONS, SERVER_FULL};

    fn peer_addr(n: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, n], 40000))
    }

    /// An embedded pub/sub server from `builder`, and its handler.
    async fn start(
        mut builder: ServerBuilder,
    ) -> (EmbeddedServer, Arc<PubSub>, switchboard::testing::Events) {
        let handler = Arc::new(PubSub::new(builder.request_user_data_slot()));
        let (recorded, events) = Recorded::new(handler.clone());
        let server = builder
            .embedded()
            .start(Framing::new(recorded))
            .await
            .expect("starts");
        (server, handler, events)
    }

    async fn client(server: &EmbeddedServer, n: u8) -> FramedPeer<LinesCodec> {
        server
            .accept(peer_addr(n))
            .await
            .expect("accepted")
            .framed(LinesCodec::new())
    }

    async fn line(peer: &mut FramedPeer<LinesCodec>) -> Option<String> {
        peer.next().await.transpose().expect("a line")
    }

    async fn ask(peer: &mut FramedPeer<LinesCodec>, request: &str, answer: &str) {
        peer.send(request).expect("sent");
        assert_eq!(
            line(peer).await.as_deref(),
            Some(answer),
            "the answer to {request:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn topics_are_groups_that_go_when_their_last_subscriber_does() {
        let (server, handler, _events) = start(Server::builder()).await;
        let mut ann = client(&server, 1).await;
        let mut bob = client(&server, 2).await;
        ask(&mut ann, "SUB news", "OK SUB news").await;
        ask(&mut bob, "SUB news", "OK SUB news").await;
        ask(&mut bob, "SUB sport", "OK SUB sport").await;
        let mut topics = handler.topics().keys();
        topics.sort();
        assert_eq!(topics, ["news", "sport"]);

        ask(&mut ann, "PUB news rain", "news: rain").await;
        assert_eq!(line(&mut ann).await.as_deref(), Some("OK PUB news 2"));
        assert_eq!(line(&mut bob).await.as_deref(), Some("news: rain"));

        // UNSUB leaves; the last subscriber closing takes its topics with it.
        ask(&mut ann, "UNSUB news", "OK UNSUB news").await;
        ask(&mut ann, "PUB news sun", "OK PUB news 1").await;
        assert_eq!(line(&mut bob).await.as_deref(), Some("news: sun"));
        bob.peer().shutdown_write();
        assert_eq!(line(&mut bob).await, None, "the server's FIN");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !handler.topics().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "topics left behind");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        ask(&mut ann, "PUB news anyone", "OK PUB news 0").await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_holds_a_bounded_number_of_subscriptions() {
        let (server, handler, _events) = start(Server::builder()).await;
        let mut ann = client(&server, 1).await;
        for topic in 0..MAX_SUBSCRIPTIONS {
            ask(
                &mut ann,
                &format!("SUB t{topic}"),
                &format!("OK SUB t{topic}"),
            )
            .await;
        }
        ask(&mut ann, "SUB one-more", "ERR too many subscriptions").await;
        // Subscribing again to a topic it has is no new subscription.
        ask(&mut ann, "SUB t0", "OK SUB t0").await;
        ask(&mut ann, "UNSUB t0", "OK UNSUB t0").await;
        ask(&mut ann, "SUB one-more", "OK SUB one-more").await;
        assert_eq!(handler.topics().len(), MAX_SUBSCRIPTIONS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_over_the_limit_reads_server_full_then_fin() {
        let builder = Server::builder()
            .max_connections(1)
            .at_limit(LimitPolicy::AcceptAndClose)
            .refusal_message(SERVER_FULL);
        let (server, _handler, _events) = start(builder).await;
        let mut ann = client(&server, 1).await;
        let mut refused = client(&server, 2).await;
        assert_eq!(line(&mut refused).await.as_deref(), Some("ERR server full"));
        assert_eq!(line(&mut refused).await, None);
        ask(&mut ann, "SUB a", "OK SUB a").await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_client_reads_err_idle_then_fin() {
        let builder = Server::builder().idle_timeout(Some(Duration::from_secs(300)));
        let (server, _handler, events) = start(builder).await;
        let mut ann = client(&server, 1).await;
        ask(&mut ann, "SUB a", "OK SUB a").await;
        // The paused clock jumps to the deadline: nothing else is pending. The peer's reads wait
        // (in the paused clock's time) past it.
        ann.peer_mut().set_wait_limit(Duration::from_secs(600));
        assert_eq!(line(&mut ann).await.as_deref(), Some("ERR idle"));
        assert_eq!(line(&mut ann).await, None);
        assert_eq!(
            events.wait_for_release(ann.id()).await,
            ClosureReason::IdleTimedOut
        );
        assert_eq!(
            events.count(|event| *event == Event::IdleTimeout(ann.id(), IdleAction::Close)),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_shutdown_says_bye_and_every_client_ends_gracefully() {
        let (server, _handler, _events) = start(Server::builder()).await;
        let mut ann = client(&server, 1).await;
        let mut bob = client(&server, 2).await;
        ask(&mut ann, "SUB a", "OK SUB a").await;
        ask(&mut bob, "SUB a", "OK SUB a").await;
        let shutdown = tokio::spawn({
            let server = server.server().clone();
            async move { server.shutdown().await }
        });
        for peer in [&mut ann, &mut bob] {
            assert_eq!(line(peer).await.as_deref(), Some("bye"));
            assert_eq!(line(peer).await, None);
        }
        // bob keeps its end open: still a graceful ending.
        ann.peer().shutdown_write();
        let report = shutdown.await.unwrap();
        assert_eq!((report.graceful, report.forced, report.other), (2, 0, 0));
    }

    #[test]
    fn commands_are_parsed_and_bad_ones_named() {
        assert_eq!(Command::parse("SUB news"), Ok(Command::Subscribe("news")));
        assert_eq!(
            Command::parse("UNSUB news"),
            Ok(Command::Unsubscribe("news"))
        );
        assert_eq!(
            Command::parse("PUB news rain at  noon "),
            Ok(Command::Publish("news", "rain at  noon "))
        );
        for bad in [
            "",
            "SUB",
            "SUB ",
            "SUB two words",
            "sub news",
            "PUB news",
            "PUB news ",
            "PUB  x",
            "UNSUB",
            "HELLO",
            "SUB a\tb",
        ] {
            assert!(Command::parse(bad).is_err(), "{bad:?} was taken");
        }
        assert!(Command::parse(&format!("SUB {}", "x".repeat(257))).is_err());
        assert!(Command::parse(&format!("SUB {}", "x".repeat(256))).is_ok());
    }
}

#[cfg(target_os = "linux")]
mod process {
    //! The program as a child process, over loopback.

    use std::net::SocketAddr;

    use futures::{SinkExt, StreamExt};
    use switchboard::tokio_util::codec::LinesCodec;
    use switchboard::{Callbacks, FramedClient, Server};

    use super::common::*;

    /// The client side's callbacks: an awaited client is driven by its task, not by them.
    struct Quiet;
    impl Callbacks for Quiet {}

    /// A line client of the pub/sub server: switchboard's own awaited client with a codec, a
    /// `Stream` and a `Sink` of lines whose reads are bounded by its read timeout.
    struct PubSubClient {
        lines: FramedClient<LinesCodec>,
        /// The server (without listeners) the client's connection belongs to.
        _manager: Server,
    }

    impl PubSubClient {
        async fn connect(address: SocketAddr) -> PubSubClient {
            let manager = Server::builder()
                .start(Quiet)
                .await
                .expect("a client manager");
            // A connect is bounded by the manager's connect timeout, each read by the read
            // timeout: no timeouts by hand.
            let lines = manager
                .connect(address)
                .client()
                .await
                .expect("connected")
                .framed(LinesCodec::new())
                .read_timeout(WAIT);
            PubSubClient {
                lines,
                _manager: manager,
            }
        }

        /// Sends the lines of `text` in one write.
        async fn send_raw(&mut self, text: &str) {
            for line in text.lines() {
                self.lines.feed(line).await.expect("fed");
            }
            SinkExt::<&str>::flush(&mut self.lines).await.expect("sent");
        }

        async fn send(&mut self, line: &str) {
            self.lines.send(line).await.expect("sent");
        }

        /// The next line, or `None` at the end of the stream.
        async fn line(&mut self) -> Option<String> {
            self.lines.next().await.map(|line| line.expect("a line"))
        }

        async fn expect(&mut self, expected: &str) {
            assert_eq!(self.line().await.as_deref(), Some(expected));
        }

        async fn expect_end(&mut self) {
            assert_eq!(self.line().await, None, "expected the end of the stream");
        }

        /// Sends `line` and expects `reply`.
        async fn ask(&mut self, line: &str, reply: &str) {
            self.send(line).await;
            self.expect(reply).await;
        }
    }

    fn start(args: &[&str]) -> EchoServer {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        EchoServer::start_example("pubsub", &all)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn subscribers_receive_what_is_published_and_the_publisher_learns_how_many() {
        let mut server = start(&[]);
        let mut ann = PubSubClient::connect(server.address).await;
        let mut bob = PubSubClient::connect(server.address).await;
        ann.ask("SUB news", "OK SUB news").await;
        bob.ask("SUB news", "OK SUB news").await;
        bob.ask("SUB sport", "OK SUB sport").await;

        // The publisher is subscribed: it hears its own message before the answer.
        ann.send("PUB news rain at noon").await;
        ann.expect("news: rain at noon").await;
        ann.expect("OK PUB news 2").await;
        bob.expect("news: rain at noon").await;

        // Not subscribed: only bob hears, and ann's next reply is the first thing she reads.
        ann.ask("PUB sport 2-1", "OK PUB sport 1").await;
        bob.expect("sport: 2-1").await;
        ann.ask("PUB nobody hello", "OK PUB nobody 0").await;

        // After UNSUB, a topic's messages no longer come.
        bob.ask("UNSUB news", "OK UNSUB news").await;
        ann.send("PUB news sun").await;
        ann.expect("news: sun").await;
        ann.expect("OK PUB news 1").await;
        bob.ask("PUB sport 3-1", "sport: 3-1").await;
        bob.expect("OK PUB sport 1").await;

        // Anything else is an error, and the connection goes on.
        for bad in ["HELLO", "SUB", "PUB news", "sub news", "UNSUB"] {
            bob.send(bad).await;
            let reply = bob.line().await.expect("a reply");
            assert!(reply.starts_with("ERR "), "{bad:?} was answered {reply:?}");
        }
        bob.ask("PUB sport 4-1", "sport: 4-1").await;
        bob.expect("OK PUB sport 1").await;

        // A client that leaves is no longer counted.
        drop(bob);
        let mut carol = PubSubClient::connect(server.address).await;
        carol.ask("SUB sport", "OK SUB sport").await;
        eventually_published(&mut ann, "sport", 1).await;

        let status = tokio::task::block_in_place(|| server.stop());
        assert!(status.success(), "the pubsub server exited with {status}");
    }

    /// Publishes on `topic` until the answer counts `receivers` (a closed client leaves its topics
    /// when its connection's closing events run, a moment after its FIN).
    async fn eventually_published(client: &mut PubSubClient, topic: &str, receivers: usize) {
        let expected = format!("OK PUB {topic} {receivers}");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            client.send(&format!("PUB {topic} ping")).await;
            if client.line().await.as_deref() == Some(expected.as_str()) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never answered {expected:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reply_comes_before_a_broadcast_posted_after_it() {
        let mut server = start(&[]);
        let mut ann = PubSubClient::connect(server.address).await;
        // One write: the subscription's answer is posted before the message it makes ann receive.
        ann.send_raw("SUB a\nPUB a x\nUNSUB a\nPUB a y\n").await;
        ann.expect("OK SUB a").await;
        ann.expect("a: x").await;
        ann.expect("OK PUB a 1").await;
        ann.expect("OK UNSUB a").await;
        ann.expect("OK PUB a 0").await;
        let status = tokio::task::block_in_place(|| server.stop());
        assert!(status.success(), "the pubsub server exited with {status}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_over_the_limit_is_told_the_server_is_full_and_closed() {
        let mut server = start(&["--max-clients", "2"]);
        let mut ann = PubSubClient::connect(server.address).await;
        let mut bob = PubSubClient::connect(server.address).await;
        ann.ask("SUB t", "OK SUB t").await;
        bob.ask("SUB t", "OK SUB t").await;
        let mut carol = PubSubClient::connect(server.address).await;
        carol.expect("ERR server full").await;
        carol.expect_end().await;
        // Once one leaves, another gets in.
        drop(bob);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut dave = PubSubClient::connect(server.address).await;
            dave.send("SUB t").await;
            match dave.line().await.as_deref() {
                Some("OK SUB t") => break,
                Some("ERR server full") => {}
                other => panic!("dave read {other:?}"),
            }
            assert!(tokio::time::Instant::now() < deadline, "never let in");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        ann.ask("PUB t hi", "t: hi").await;
        let status = tokio::task::block_in_place(|| server.stop());
        assert!(status.success(), "the pubsub server exited with {status}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_client_is_told_and_closed_and_a_busy_one_is_not() {
        let mut server = start(&["--idle-timeout", "1"]);
        let mut idle = PubSubClient::connect(server.address).await;
        let mut busy = PubSubClient::connect(server.address).await;
        // The busy one talks every 300 ms for longer than the timeout.
        let talking = tokio::spawn(async move {
            for _ in 0..8 {
                busy.ask("SUB t", "OK SUB t").await;
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
            busy
        });
        idle.expect("ERR idle").await;
        idle.expect_end().await;
        let mut busy = bounded("the busy client", talking).await.unwrap();
        busy.ask("PUB t still", "t: still").await;
        let status = tokio::task::block_in_place(|| server.stop());
        assert!(status.success(), "the pubsub server exited with {status}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigterm_says_bye_to_every_client_and_reports_the_shutdown() {
        for signal in [libc::SIGTERM, libc::SIGINT] {
            let mut server = start(&[]);
            let mut clients = Vec::new();
            for _ in 0..3 {
                let mut client = PubSubClient::connect(server.address).await;
                client.ask("SUB t", "OK SUB t").await;
                clients.push(client);
            }
            // The last one reads its goodbye and the end but keeps its socket open: still graceful.
            let mut stubborn = clients.pop().unwrap();
            let mut ending = tokio::task::JoinSet::new();
            for mut client in clients {
                ending.spawn(async move {
                    client.expect("bye").await;
                    client.expect_end().await;
                });
            }
            server.signal(signal);
            stubborn.expect("bye").await;
            stubborn.expect_end().await;
            while let Some(ended) = bounded("the goodbyes", ending.join_next()).await {
                ended.expect("a client failed");
            }
            let status = tokio::task::block_in_place(|| server.wait_for_exit());
            assert!(status.success(), "the pubsub server exited with {status}");
            assert_eq!(
                server.log.after("shutdown complete "),
                ["graceful=3 forced=0 other=0"]
            );
            drop(stubborn);
        }
    }

    /// GETs `url` with curl (bounded): the status code and the body.
    async fn get(url: &str) -> (u16, String) {
        let output = bounded(
            "curl",
            tokio::process::Command::new("curl")
                .args(["--silent", "--show-error", "--max-time", "10"])
                .args(["--write-out", "\n%{http_code}", url])
                .output(),
        )
        .await
        .expect("curl must be installed (.ci/run installs it)");
        assert!(output.status.success(), "curl {url}: {output:?}");
        let text = String::from_utf8(output.stdout).expect("UTF-8");
        let (body, status) = text.rsplit_once('\n').expect("a status line");
        (status.parse().expect("a status"), body.to_owned())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_metrics_endpoint_serves_the_servers_series_and_its_readiness() {
        let mut server = start(&["--metrics", "127.0.0.1:0"]);
        server.log.wait("the metrics line", |log| {
            !log.after("metrics on ").is_empty()
        });
        let endpoint = server.log.after("metrics on ")[0].clone();
        let mut ann = PubSubClient::connect(server.address).await;
        ann.ask("SUB t", "OK SUB t").await;
        let (status, body) = get(&format!("http://{endpoint}/metrics")).await;
        assert_eq!(status, 200);
        assert!(
            body.lines()
                .any(|line| line.starts_with("switchboard_connections_active{")
                    && line.contains("server=\"pubsub\"")
                    && line.ends_with(" 1")),
            "{body}"
        );
        assert_eq!(get(&format!("http://{endpoint}/ready")).await.0, 200);
        let status = tokio::task::block_in_place(|| server.stop());
        assert!(status.success(), "the pubsub server exited with {status}");
    }
}
