//! Event order and the lifetime rule over real loopback connections.

mod common;

use common::*;
use switchboard::{ClosureReason, Server};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn echo_then_peer_close_runs_every_event_in_order() {
    let mut builder = Server::builder().bind("127.0.0.1:0");
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder.clone()).await.unwrap();
    let mut stream = client(server.local_addr().unwrap()).await;
    assert_eq!(echo_round_trip(&mut stream, b"hello").await, b"hello");
    stream.shutdown().await.unwrap();
    let (rest, end) = read_to_end(&mut stream).await;
    assert!(rest.is_empty());
    end.unwrap();
    recorder.wait_released(1).await;
    let id = recorder.established()[0];
    let events = recorder.events_of(id);
    assert_lifecycle(&events);
    assert_eq!(closure_reason(&events), Some(ClosureReason::PeerClosed));
    assert!(events.contains(&Event::ClientClose(id)));
    server.shutdown().await;
}
