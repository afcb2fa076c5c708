//! The messaging conformance suite against NATS JetStream (`ORDERS_TEST_NATS_URL`), each
//! test on its own subject prefix and streams, deleted afterwards.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use messaging::{DeadLetter, DeadLetters, MessageBus, RetryPolicy, conformance};
use messaging_nats::{NatsBus, NatsBusConfig, testing};

/// A prefix no other run uses.
fn unique_prefix(test: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("ct{}{}", &id[..8], test.chars().take(8).collect::<String>())
}

const RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 6,
    initial_backoff: Duration::from_millis(50),
    max_backoff: Duration::from_millis(400),
};

/// The settings of the suite's buses: quick retries, a short ack wait and handling
/// time, a small in-flight bound (so one instance cannot take a whole backlog).
fn config(url: &str, prefix: &str) -> NatsBusConfig {
    NatsBusConfig::new(url)
        .subject_prefix(prefix)
        .retry(RETRY)
        .ack_wait(Duration::from_secs(2))
        .max_handling_time(Duration::from_secs(1))
        .max_in_flight(8)
}

async fn connect(url: &str, prefix: &str) -> NatsBus {
    NatsBus::connect(config(url, prefix))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Buses on one server and prefix: each `instance` is a new connection, as a second
/// process would have.
struct NatsHarness {
    url: String,
    prefix: String,
    bus: NatsBus,
}

#[async_trait]
impl conformance::Harness for NatsHarness {
    fn bus(&self) -> Arc<dyn MessageBus> {
        Arc::new(self.bus.clone())
    }

    async fn instance(&self) -> Option<Arc<dyn MessageBus>> {
        Some(Arc::new(connect(&self.url, &self.prefix).await))
    }

    async fn dead_letters(&self, group: &str) -> Vec<DeadLetter> {
        self.bus
            .dead_letters()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .filter(|d| d.subscriber == group)
            .collect()
    }

    fn retry(&self) -> RetryPolicy {
        RETRY
    }

    fn deduplicates(&self) -> bool {
        true
    }
}

/// Deletes a test's streams when dropped, however the test ends.
struct Cleanup {
    url: String,
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), format!("{}_", self.prefix));
        // A fresh runtime on its own thread: the test's runtime may be gone or panicking.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(testing::delete_streams(&url, &prefix)))
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_on_nats() {
    let Some(url) = testing::test_url("conformance_suite_passes_on_nats") else {
        return;
    };
    let prefix = unique_prefix("base");
    let _cleanup = Cleanup {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    let bus: Arc<dyn MessageBus> = Arc::new(
        NatsBus::connect(config(&url, &prefix))
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    );
    conformance::run_all(bus, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_conformance_suite_passes_on_nats() {
    let Some(url) = testing::test_url("extended_conformance_suite_passes_on_nats") else {
        return;
    };
    let prefix = unique_prefix("ext");
    let _cleanup = Cleanup {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    let harness = NatsHarness {
        bus: connect(&url, &prefix).await,
        url,
        prefix: prefix.clone(),
    };
    conformance::run_extended(&harness, &prefix).await;
    // The refused message and the exhausted one, both dead-lettered through this bus.
    assert_eq!(harness.bus.dead_letter_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_checks_pass_on_nats() {
    let Some(url) = testing::test_url("dead_letter_checks_pass_on_nats") else {
        return;
    };
    let prefix = unique_prefix("dl");
    let _cleanup = Cleanup {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    let bus = connect(&url, &prefix).await;
    // The port from another connection, as an operator's process would have.
    let port: Arc<dyn DeadLetters> = Arc::new(connect(&url, &prefix).await);
    conformance::run_dead_letters(Arc::new(bus), port, &prefix).await;
}
