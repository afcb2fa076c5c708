//! A private nats-server (its own port and store folder) killed with SIGKILL in the
//! middle of a stream and started again: nothing whose publish was acknowledged is lost,
//! publishes while it is down fail as retryable, and publishing resumes on its own.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use messaging::{
    Envelope, ErrorKind, HandlerError, MessageBus, MessageHandler, RetryPolicy, Subscription,
};
use messaging_nats::{NatsBus, NatsBusConfig, testing};
use tokio::sync::Notify;

/// Records the numbers handled; numbers from `gated_from` on wait until the gate opens,
/// so some messages are in the handler's hands when the broker dies.
struct Seen {
    numbers: Mutex<BTreeSet<u32>>,
    changed: Notify,
    gated_from: u32,
    gate: tokio::sync::watch::Sender<bool>,
}

#[async_trait]
impl MessageHandler for Seen {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        let n: u32 = envelope.decode()?;
        if n >= self.gated_from {
            let mut open = self.gate.subscribe();
            open.wait_for(|open| *open)
                .await
                .map_err(|_| HandlerError::retryable("gate gone"))?;
        }
        if let Ok(mut numbers) = self.numbers.lock() {
            numbers.insert(n);
        }
        self.changed.notify_waiters();
        Ok(())
    }
}

impl Seen {
    fn numbers(&self) -> BTreeSet<u32> {
        self.numbers.lock().map(|n| n.clone()).unwrap_or_default()
    }

    /// Waits until every number of `expected` has been handled.
    async fn wait_for(&self, expected: &BTreeSet<u32>, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.changed.notified();
            let seen = self.numbers();
            if expected.is_subset(&seen) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let missing: Vec<_> = expected.difference(&seen).collect();
                panic!("not handled within {within:?}: {missing:?}");
            }
        }
    }
}

fn envelope(n: u32) -> Envelope {
    Envelope::new(
        uuid::Uuid::now_v7(),
        "restart.numbers",
        chrono::Utc::now(),
        format!("c{}", n % 7),
        None,
        &n,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Publishes `n` until the bus takes it (it retries as an outbox relay would), within
/// `within`; every failure on the way must be retryable.
async fn publish_until_accepted(bus: &NatsBus, n: u32, within: Duration) {
    let message = envelope(n);
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match bus.publish(message.clone()).await {
            Ok(()) => return,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Retryable, "{e}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "publishing did not resume within {within:?}: {e}"
                );
                // tidy: allow(sleep) — the relay's pause between tries; the condition is
                // the publish itself.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_stream_loses_nothing_acknowledged_and_publishing_resumes() {
    if !testing::server_available("broker restart") {
        return;
    }
    let mut server = testing::NatsServer::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let config = NatsBusConfig::new(server.url())
        .retry(RetryPolicy {
            max_attempts: 100,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
        })
        .ack_wait(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(2));
    let bus = NatsBus::connect(config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let seen = Arc::new(Seen {
        numbers: Mutex::default(),
        changed: Notify::new(),
        gated_from: 100,
        gate: tokio::sync::watch::Sender::new(false),
    });
    let handle = bus
        .subscribe(
            Subscription::new("restart-group").topic("restart.numbers"),
            seen.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let mut acknowledged = BTreeSet::new();
    for n in 0..200 {
        bus.publish(envelope(n))
            .await
            .unwrap_or_else(|e| panic!("publish {n}: {e}"));
        acknowledged.insert(n);
    }
    // Mid-stream: the first hundred handled, the rest stored, some of them in hand.
    seen.wait_for(&(0..100).collect(), Duration::from_secs(10))
        .await;
    server.kill();
    match bus.publish(envelope(1_000)).await {
        Ok(()) => panic!("a publish with the broker down succeeded"),
        Err(down) => assert_eq!(down.kind(), ErrorKind::Retryable, "{down}"),
    }

    server.restart().await.unwrap_or_else(|e| panic!("{e}"));
    seen.gate.send_replace(true);
    for n in 200..300 {
        publish_until_accepted(&bus, n, Duration::from_secs(20)).await;
        acknowledged.insert(n);
    }
    seen.wait_for(&acknowledged, Duration::from_secs(30)).await;
    handle.unsubscribe().await;
}
