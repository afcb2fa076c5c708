//! NATS-only delivery promises the conformance suite cannot see through the port: a
//! handler slower than the ack wait keeps its message (progress acks), and a
//! subscription holds at most `max_in_flight` messages, and the message of a process
//! that dies mid-message is redelivered to another; and a subscription of several
//! topics takes each topic's messages at once, however busy its other topics' pullers.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use messaging::{Envelope, HandlerError, MessageBus, MessageHandler, Subscription};
use messaging_nats::{NatsBus, NatsBusConfig, testing};
use tokio::sync::{Notify, watch};

/// Counts calls per number; each call waits until `gate` opens (or takes `work`).
struct Counting {
    calls: Vec<AtomicUsize>,
    done: AtomicUsize,
    changed: Notify,
    gate: watch::Sender<bool>,
    work: Duration,
}

impl Counting {
    fn new(count: usize, work: Duration, open: bool) -> Arc<Self> {
        Arc::new(Self {
            calls: (0..count).map(|_| AtomicUsize::new(0)).collect(),
            done: AtomicUsize::new(0),
            changed: Notify::new(),
            gate: watch::Sender::new(open),
            work,
        })
    }

    async fn wait_done(&self, count: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.changed.notified();
            let done = self.done.load(Ordering::SeqCst);
            if done >= count {
                return;
            }
            assert!(
                tokio::time::timeout_at(deadline, notified).await.is_ok(),
                "{done} of {count} handled within {within:?}"
            );
        }
    }
}

#[async_trait]
impl MessageHandler for Counting {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        let n: usize = envelope.decode()?;
        if let Some(calls) = self.calls.get(n) {
            calls.fetch_add(1, Ordering::SeqCst);
        }
        self.changed.notify_waiters();
        let mut open = self.gate.subscribe();
        open.wait_for(|open| *open)
            .await
            .map_err(|_| HandlerError::retryable("gate gone"))?;
        // tidy: allow(sleep) — simulated work, not a wait for a condition.
        tokio::time::sleep(self.work).await;
        self.done.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
        Ok(())
    }
}

fn envelope(topic: &str, correlation: &str, n: usize) -> Envelope {
    Envelope::new(
        uuid::Uuid::now_v7(),
        topic.to_owned(),
        chrono::Utc::now(),
        correlation,
        None,
        &n,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

struct Cleanup(String, String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (url, prefix) = (self.0.clone(), format!("{}_", self.1));
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(testing::delete_streams(&url, &prefix)))
        })
        .join();
    }
}

fn prefix(test: &str) -> String {
    format!(
        "dl{}{test}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_slower_than_the_ack_wait_keeps_its_message() {
    let Some(url) = testing::test_url("a_handler_slower_than_the_ack_wait_keeps_its_message")
    else {
        return;
    };
    let prefix = prefix("slow");
    let _cleanup = Cleanup(url.clone(), prefix.clone());
    let config = NatsBusConfig::new(url.as_str())
        .subject_prefix(prefix.as_str())
        .ack_wait(Duration::from_millis(500))
        .max_handling_time(Duration::from_secs(10));
    let bus = NatsBus::connect(config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let handler = Counting::new(2, Duration::from_millis(1_600), true);
    let handle = bus
        .subscribe(
            Subscription::new("slow").topic("slow.work"),
            handler.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    bus.publish(envelope("slow.work", "c", 0))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    handler.wait_done(1, Duration::from_secs(10)).await;
    // A later message of the flow: once it is handled, a redelivery would have been too.
    bus.publish(envelope("slow.work", "c", 1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    handler.wait_done(2, Duration::from_secs(10)).await;
    assert_eq!(
        handler.calls[0].load(Ordering::SeqCst),
        1,
        "the slow message was redelivered while its handler ran"
    );
    handle.unsubscribe().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_holds_at_most_max_in_flight_messages() {
    let Some(url) = testing::test_url("a_subscription_holds_at_most_max_in_flight_messages") else {
        return;
    };
    let prefix = prefix("inflight");
    let _cleanup = Cleanup(url.clone(), prefix.clone());
    let config = NatsBusConfig::new(url.as_str())
        .subject_prefix(prefix.as_str())
        .max_in_flight(6)
        .lanes(2);
    let bus = NatsBus::connect(config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let count = 40;
    let handler = Counting::new(count, Duration::ZERO, false);
    let handle = bus
        .subscribe(
            Subscription::new("bounded").topic("bounded.work"),
            handler.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for n in 0..count {
        bus.publish(envelope("bounded.work", &format!("c{n}"), n))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    // Both lanes hold a message at the gate; the server has handed out no more than the
    // bound, the rest waits on the server.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let stream = format!("{prefix}_bounded_work");
    let pending = loop {
        let notified = handler.changed.notified();
        let entered: usize = handler.calls.iter().map(|c| c.load(Ordering::SeqCst)).sum();
        if entered >= 2 {
            let client = async_nats::connect(url.as_str())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let js = async_nats::jetstream::new(client);
            let reply: serde_json::Value = js
                .request(
                    format!("CONSUMER.INFO.{stream}.bounded"),
                    &serde_json::json!({}),
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            break reply["num_ack_pending"].as_u64().unwrap_or(u64::MAX);
        }
        assert!(
            tokio::time::timeout_at(deadline, notified).await.is_ok(),
            "the handler was not called"
        );
    };
    assert!(
        pending <= 6,
        "{pending} messages handed out, the bound is 6"
    );
    handler.gate.send_replace(true);
    handler.wait_done(count, Duration::from_secs(20)).await;
    handle.unsubscribe().await;
}

/// Signals its first call, then never returns.
struct StuckForever {
    started: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

#[async_trait]
impl MessageHandler for StuckForever {
    async fn handle(&self, _: &Envelope) -> Result<(), HandlerError> {
        if let Some(started) = self.started.lock().ok().and_then(|mut s| s.take()) {
            let _ = started.send(());
        }
        std::future::pending::<()>().await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_of_a_process_that_dies_mid_message_goes_to_another() {
    let Some(url) =
        testing::test_url("the_message_of_a_process_that_dies_mid_message_goes_to_another")
    else {
        return;
    };
    let prefix = prefix("dies");
    let _cleanup = Cleanup(url.clone(), prefix.clone());
    let config = NatsBusConfig::new(url.as_str())
        .subject_prefix(prefix.as_str())
        .ack_wait(Duration::from_secs(1));
    // The dying process: a runtime of its own, shut down with its handler mid-message.
    let dying = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    let dying_config = config.clone();
    dying.spawn(async move {
        let bus = NatsBus::connect(dying_config)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let handler = Arc::new(StuckForever {
            started: std::sync::Mutex::new(Some(started_tx)),
        });
        let handle = bus
            .subscribe(Subscription::new("workers").topic("dies.work"), handler)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = subscribed_tx.send(());
        std::future::pending::<()>().await;
        drop(handle);
    });
    let within = Duration::from_secs(10);
    tokio::time::timeout(within, subscribed_rx)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let bus = NatsBus::connect(config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    bus.publish(envelope("dies.work", "c", 0))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::timeout(within, started_rx)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    dying.shutdown_background();

    let survivor = Counting::new(1, Duration::ZERO, true);
    let handle = bus
        .subscribe(
            Subscription::new("workers").topic("dies.work"),
            survivor.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    survivor.wait_done(1, within).await;
    handle.unsubscribe().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_topic_of_a_subscription_is_taken_at_once() {
    let Some(url) = testing::test_url("every_topic_of_a_subscription_is_taken_at_once") else {
        return;
    };
    let prefix = prefix("topics");
    let _cleanup = Cleanup(url.clone(), prefix.clone());
    let bus = NatsBus::connect(NatsBusConfig::new(url.as_str()).subject_prefix(prefix.as_str()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let rounds = 10;
    let handler = Counting::new(rounds, Duration::ZERO, true);
    // Four topics, traffic on the last only: the other three pullers sit in open pull
    // requests, which used to hold every in-flight permit until they expired (1 s), so
    // each message of the busy topic waited for one to end.
    let topics = ["t.a", "t.b", "t.c", "t.d"];
    let mut subscription = Subscription::new("several");
    for topic in topics {
        subscription = subscription.topic(topic);
    }
    let handle = bus
        .subscribe(subscription, handler.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let started = tokio::time::Instant::now();
    for n in 0..rounds {
        bus.publish(envelope("t.d", &format!("c{n}"), n))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        handler.wait_done(n + 1, Duration::from_secs(10)).await;
    }
    let elapsed = started.elapsed();
    println!("{rounds} messages, one after another, in {elapsed:?}");
    // Ten round trips on loopback take milliseconds (17 ms here); with the starved
    // puller the first message alone waited for the other requests to expire (1.04 s).
    assert!(
        elapsed < Duration::from_millis(600),
        "{rounds} messages, one after another, took {elapsed:?}"
    );
    handle.unsubscribe().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_all_counts_only_what_the_server_stored() {
    if !testing::server_available("publish_all_counts_only_what_the_server_stored") {
        return;
    }
    let mut server = testing::NatsServer::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let bus = NatsBus::connect(NatsBusConfig::new(server.url()).subject_prefix("pa"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let batch = |from: usize| -> Vec<Envelope> {
        (from..from + 50)
            .map(|n| envelope("pa.work", "c", n))
            .collect()
    };
    let (accepted, error) = bus.publish_all(batch(0)).await;
    assert_eq!((accepted, error.is_none()), (50, true), "{error:?}");
    // The broker is gone: nothing of the next batch counts as published, and the
    // caller learns why (the outbox keeps its rows).
    server.kill();
    let (accepted, error) = bus.publish_all(batch(50)).await;
    assert_eq!(accepted, 0, "published to a dead broker");
    assert!(error.is_some(), "no error from a dead broker");
}
