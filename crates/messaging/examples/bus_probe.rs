//! A quick measurement of the in-memory bus: publish latency with one subscriber and
//! end-to-end throughput with small JSON payloads, on a two-thread tokio runtime.
//!
//! Run it in release mode (debug numbers mean nothing):
//!
//! ```text
//! cargo run --release -p messaging --example bus_probe
//! ```
//!
//! It prints the publish latency percentiles (time until the bus accepted the message),
//! back to back and at a steady 50,000 messages/s (where every publish wakes a sleeping
//! worker), then the rate at which messages went from `publish_json` to a typed handler
//! that decoded them. The targets are p99 < 50 µs and > 200,000 messages/s.
//! `BUS_PROBE_MESSAGES` (default 1,000,000) scales the runs, e.g. under valgrind;
//! `BUS_PROBE_LIMIT` sets the backlog limit of the throughput runs.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use messaging::{
    Envelope, HandlerError, InMemoryBus, InMemoryBusConfig, MessageBus, MessageBusExt,
    Subscription, typed_handler,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// A small payload, like an integration event.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Placed {
    order_id: String,
    lines: u32,
    total: String,
}

/// Counts handled messages and wakes the probe when a target is reached.
struct Counter {
    handled: AtomicU64,
    target: AtomicU64,
    reached: Notify,
}

impl Counter {
    fn tick(&self) {
        let n = self.handled.fetch_add(1, Ordering::AcqRel) + 1;
        if n == self.target.load(Ordering::Acquire) {
            self.reached.notify_one();
        }
    }

    async fn wait_for(&self, n: u64) {
        self.target.store(n, Ordering::Release);
        if self.handled.load(Ordering::Acquire) >= n {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(60), self.reached.notified()).await;
    }
}

fn subscribe_counter(counter: &Arc<Counter>) -> Arc<dyn messaging::MessageHandler> {
    let counter = counter.clone();
    typed_handler(move |_envelope: Envelope, _placed: Placed| {
        let counter = counter.clone();
        async move {
            counter.tick();
            Ok::<(), HandlerError>(())
        }
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Publishes `count` messages one per `gap` (0: back to back), timing each publish.
async fn latency(lanes: usize, count: usize, gap: Duration) {
    let bus: Arc<dyn MessageBus> =
        Arc::new(InMemoryBus::new(InMemoryBusConfig::default().lanes(lanes)));
    let counter = Arc::new(Counter {
        handled: AtomicU64::new(0),
        target: AtomicU64::new(u64::MAX),
        reached: Notify::new(),
    });
    let handle = bus
        .subscribe(
            Subscription::new("probe").topic("order.placed"),
            subscribe_counter(&counter),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let envelopes: Vec<Envelope> = (0..count)
        .map(|i| {
            Envelope::new(
                uuid::Uuid::new_v4(),
                "order.placed",
                chrono::Utc::now(),
                format!("o-{}", i % 64),
                None,
                &Placed {
                    order_id: format!("o-{}", i % 64),
                    lines: 3,
                    total: "12.50".into(),
                },
            )
            .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let mut took = Vec::with_capacity(count);
    let mut next = Instant::now();
    for envelope in envelopes {
        // Spin to the next slot: tokio timers are too coarse for microsecond gaps.
        while Instant::now() < next {
            std::hint::spin_loop();
        }
        next += gap;
        let start = Instant::now();
        bus.publish(envelope)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        took.push(start.elapsed());
    }
    counter.wait_for(count as u64).await;
    handle.unsubscribe().await;
    took.sort_unstable();
    println!(
        "publish latency, lanes={lanes}, {count} msgs, gap {gap:?}: p50 {:?}  p99 {:?}  p99.9 {:?}  max {:?}",
        percentile(&took, 0.50),
        percentile(&took, 0.99),
        percentile(&took, 0.999),
        took[took.len() - 1]
    );
}

async fn throughput(lanes: usize, publishers: usize, count: usize) {
    let mut config = InMemoryBusConfig::default().lanes(lanes);
    if let Some(limit) = std::env::var("BUS_PROBE_LIMIT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config = config.backlog_limit(limit);
    }
    let bus: Arc<dyn MessageBus> = Arc::new(InMemoryBus::new(config));
    let counter = Arc::new(Counter {
        handled: AtomicU64::new(0),
        target: AtomicU64::new(u64::MAX),
        reached: Notify::new(),
    });
    let handle = bus
        .subscribe(
            Subscription::new("probe").topic("order.placed"),
            subscribe_counter(&counter),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let per = count / publishers;
    let start = Instant::now();
    let tasks: Vec<_> = (0..publishers)
        .map(|p| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let ids: Vec<String> = (0..64).map(|i| format!("o-{p}-{i}")).collect();
                for i in 0..per {
                    let id = &ids[i % ids.len()];
                    let placed = Placed {
                        order_id: id.clone(),
                        lines: 3,
                        total: "12.50".into(),
                    };
                    bus.publish_json("order.placed", id, None, &placed)
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap_or_else(|e| panic!("{e}"));
    }
    let published = start.elapsed();
    counter.wait_for((per * publishers) as u64).await;
    let all = start.elapsed();
    handle.unsubscribe().await;
    let handled = counter.handled.load(Ordering::Acquire);
    println!(
        "end to end, lanes={lanes}, publishers={publishers}: {handled} msgs in {all:?} = {:.0} msgs/s (publishing took {published:?})",
        handled as f64 / all.as_secs_f64()
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    // `BUS_PROBE_MESSAGES` scales the runs down, e.g. under valgrind.
    let messages: usize = std::env::var("BUS_PROBE_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    runtime.block_on(async {
        for lanes in [1, 4] {
            latency(lanes, messages / 5, Duration::ZERO).await;
        }
        // A steady 50,000 messages/s: the worker sleeps between messages, so every
        // publish pays for waking it.
        latency(4, messages / 20, Duration::from_micros(20)).await;
        for (lanes, publishers) in [(1, 1), (4, 1), (4, 2)] {
            throughput(lanes, publishers, messages).await;
        }
    });
}
