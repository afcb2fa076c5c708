//! The in-memory bus against the conformance suite and its own promises: backpressure,
//! refusal, groups that go away and come back, retries and dead letters, panicking
//! handlers, idleness after cascades. Every wait is "until a condition, with a
//! deadline"; tests that need time to pass (backoff, "still pending") pause the clock.
// The test helpers outside `#[test]` functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use messaging::{
    BusError, Envelope, ErrorKind, HandlerError, InMemoryBus, InMemoryBusConfig, MessageBus,
    MessageBusExt, MessageHandler, OverflowPolicy, RetryPolicy, Subscription, conformance,
    conformance::DEADLINE, typed_handler,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Probe {
    n: u32,
}

/// What a [`Recorder`] answers to one call.
#[derive(Debug, Clone, Copy)]
enum Verdict {
    Ack,
    Retry,
    Refuse,
    Panic,
}

type Judge = dyn Fn(u32, usize) -> Verdict + Send + Sync;

/// A handler that records what it acked, counts calls, optionally waits at a gate, and
/// answers each call as `judge(n, call_number)` says.
struct Recorder {
    acked: Mutex<Vec<(String, u32)>>,
    calls: AtomicUsize,
    changed: Notify,
    gate: Option<Semaphore>,
    judge: Box<Judge>,
}

impl Recorder {
    fn acking() -> Arc<Self> {
        Self::judging(|_, _| Verdict::Ack)
    }

    fn judging(judge: impl Fn(u32, usize) -> Verdict + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            acked: Mutex::new(Vec::new()),
            calls: AtomicUsize::new(0),
            changed: Notify::new(),
            gate: None,
            judge: Box::new(judge),
        })
    }

    /// Acks, but each call first waits for a permit of the gate.
    fn gated() -> Arc<Self> {
        Arc::new(Self {
            acked: Mutex::new(Vec::new()),
            calls: AtomicUsize::new(0),
            changed: Notify::new(),
            gate: Some(Semaphore::new(0)),
            judge: Box::new(|_, _| Verdict::Ack),
        })
    }

    fn open_gate(&self, calls: usize) {
        if let Some(gate) = &self.gate {
            gate.add_permits(calls);
        }
    }

    fn acked(&self) -> Vec<(String, u32)> {
        self.acked.lock().unwrap().clone()
    }

    fn acked_numbers(&self) -> Vec<u32> {
        self.acked().into_iter().map(|(_, n)| n).collect()
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Waits until `condition` holds, failing after [`DEADLINE`].
    async fn until(&self, what: &str, condition: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let notified = self.changed.notified();
            if condition(self) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                assert!(
                    condition(self),
                    "{what}: not reached within {DEADLINE:?} (calls {}, acked {:?})",
                    self.calls(),
                    self.acked()
                );
                return;
            }
        }
    }

    async fn until_acked(&self, count: usize) {
        self.until(&format!("{count} acked"), |r| r.acked().len() >= count)
            .await;
    }

    async fn until_calls(&self, count: usize) {
        self.until(&format!("{count} calls"), |r| r.calls() >= count)
            .await;
    }
}

#[async_trait]
impl MessageHandler for Recorder {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        let probe: Probe = envelope.decode()?;
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.changed.notify_waiters();
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
        let verdict = (self.judge)(probe.n, call);
        let result = match verdict {
            Verdict::Ack => {
                self.acked
                    .lock()
                    .unwrap()
                    .push((envelope.correlation_id.clone(), probe.n));
                Ok(())
            }
            Verdict::Retry => Err(HandlerError::retryable("not yet")),
            Verdict::Refuse => Err(HandlerError::permanent("refused by test")),
            Verdict::Panic => panic!("handler blew up on message {}", probe.n),
        };
        self.changed.notify_waiters();
        result
    }
}

fn probe(topic: &'static str, correlation: &str, n: u32) -> Envelope {
    Envelope::new(
        uuid::Uuid::new_v4(),
        topic,
        chrono::Utc::now(),
        correlation,
        None,
        &Probe { n },
    )
    .unwrap()
}

fn bus(config: InMemoryBusConfig) -> InMemoryBus {
    InMemoryBus::new(config)
}

fn quick_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
    }
}

async fn conformance_with_lanes(lanes: usize) {
    let bus: Arc<dyn MessageBus> = Arc::new(bus(InMemoryBusConfig::default().lanes(lanes)));
    conformance::run_all(bus, &format!("lanes{lanes}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_with_one_lane() {
    conformance_with_lanes(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_with_four_lanes() {
    conformance_with_lanes(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_with_sixteen_lanes() {
    conformance_with_lanes(16).await;
}

/// Small enough that publishers wait for room, large enough for the 10 messages the
/// away check publishes while nobody consumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_with_a_small_backlog_and_backpressure() {
    let bus: Arc<dyn MessageBus> =
        Arc::new(bus(InMemoryBusConfig::default().lanes(3).backlog_limit(10)));
    conformance::run_all(bus, "small").await;
}

/// The extended checks on one in-memory bus. It has no second instance: a group lives
/// inside one bus value, so the checks that need two processes sharing a group skip.
struct InMemoryHarness {
    bus: InMemoryBus,
    retry: RetryPolicy,
}

#[async_trait]
impl conformance::Harness for InMemoryHarness {
    fn bus(&self) -> Arc<dyn MessageBus> {
        Arc::new(self.bus.clone())
    }

    async fn instance(&self) -> Option<Arc<dyn MessageBus>> {
        None
    }

    async fn dead_letters(&self, group: &str) -> Vec<messaging::DeadLetter> {
        self.bus
            .dead_letters()
            .into_iter()
            .filter(|d| d.subscriber == group)
            .collect()
    }

    fn retry(&self) -> RetryPolicy {
        self.retry
    }

    fn deduplicates(&self) -> bool {
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_conformance_suite_passes() {
    let retry = RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
    };
    let harness = InMemoryHarness {
        bus: bus(InMemoryBusConfig::default().retry(retry)),
        retry,
    };
    conformance::run_extended(&harness, "ext").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_checks_pass() {
    let bus = bus(InMemoryBusConfig::default());
    let port: Arc<dyn messaging::DeadLetters> = Arc::new(bus.clone());
    conformance::run_dead_letters(Arc::new(bus), port, "dl").await;
}

#[tokio::test(start_paused = true)]
async fn a_full_backlog_makes_publish_wait_until_the_subscriber_drains() {
    let bus = bus(InMemoryBusConfig::default()
        .lanes(1)
        .backlog_limit(2)
        .overflow(OverflowPolicy::Backpressure));
    let slow = Recorder::gated();
    let handle = bus
        .subscribe(Subscription::new("slow").topic("t"), slow.clone())
        .await
        .unwrap();
    bus.publish(probe("t", "c", 1)).await.unwrap();
    bus.publish(probe("t", "c", 2)).await.unwrap();
    slow.until_calls(1).await;
    assert_eq!(bus.backlog("slow"), 2, "one in hand, one queued");

    let third = bus.publish(probe("t", "c", 3));
    tokio::pin!(third);
    // Paused clock: the timeout only fires once nothing else can run.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), third.as_mut())
            .await
            .is_err(),
        "publish completed although the backlog was full"
    );
    assert_eq!(bus.backlog("slow"), 2);

    slow.open_gate(1);
    tokio::time::timeout(DEADLINE, third.as_mut())
        .await
        .expect("publish still waiting after the subscriber made room")
        .unwrap();
    slow.open_gate(2);
    slow.until_acked(3).await;
    assert_eq!(slow.acked_numbers(), vec![1, 2, 3]);
    assert!(bus.wait_idle(DEADLINE).await);
    handle.unsubscribe().await;
}

/// Records the events logged on this thread (tests with the current-thread runtime).
#[derive(Clone, Default)]
struct LogCapture {
    events: Arc<Mutex<Vec<(tracing::Level, String)>>>,
}

impl LogCapture {
    fn count(&self, level: tracing::Level, starting: &str) -> usize {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter(|(l, m)| *l == level && m.starts_with(starting))
            .count()
    }
}

struct MessageField<'a>(&'a mut String);

impl tracing::field::Visit for MessageField<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            *self.0 = format!("{value:?}");
        }
    }
}

impl tracing::Subscriber for LogCapture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut message = String::new();
        event.record(&mut MessageField(&mut message));
        self.events
            .lock()
            .unwrap()
            .push((*event.metadata().level(), message));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test(start_paused = true)]
async fn backpressure_is_logged_once_per_overflow_episode() {
    let log = LogCapture::default();
    let _guard = tracing::subscriber::set_default(log.clone());
    let bus = bus(InMemoryBusConfig::default().lanes(1).backlog_limit(8));
    let slow = Recorder::gated();
    let handle = bus
        .subscribe(Subscription::new("slow").topic("t"), slow.clone())
        .await
        .unwrap();
    for episode in 1..=2 {
        for _ in 0..8 {
            bus.publish(probe("t", "c", 0)).await.unwrap();
        }
        // One publisher keeps hitting the full backlog: each message waits for room.
        let publisher = {
            let bus = bus.clone();
            tokio::spawn(async move {
                for _ in 0..4 {
                    bus.publish(probe("t", "c", 0)).await.unwrap();
                }
            })
        };
        tokio::pin!(publisher);
        for _ in 0..4 {
            assert!(
                tokio::time::timeout(Duration::from_secs(1), publisher.as_mut())
                    .await
                    .is_err(),
                "the publisher did not wait"
            );
            slow.open_gate(1);
        }
        tokio::time::timeout(DEADLINE, publisher)
            .await
            .unwrap()
            .unwrap();
        slow.open_gate(8);
        assert!(bus.wait_idle(DEADLINE).await);
        assert_eq!(
            log.count(tracing::Level::WARN, "backlog full"),
            episode,
            "four waits in one episode, one warning"
        );
        assert_eq!(log.count(tracing::Level::INFO, "backlog drained"), episode);
    }
    handle.unsubscribe().await;
}

#[tokio::test(start_paused = true)]
async fn a_publish_cancelled_while_waiting_for_room_leaves_no_trace() {
    let bus = bus(InMemoryBusConfig::default().lanes(2).backlog_limit(1));
    let slow = Recorder::gated();
    let handle = bus
        .subscribe(Subscription::new("slow").topic("t"), slow.clone())
        .await
        .unwrap();
    bus.publish(probe("t", "c", 1)).await.unwrap();
    let waited =
        tokio::time::timeout(Duration::from_secs(1), bus.publish(probe("t", "c", 2))).await;
    assert!(waited.is_err(), "publish should have waited for room");
    assert_eq!(
        bus.backlog("slow"),
        1,
        "the cancelled publish kept its room"
    );

    slow.open_gate(10);
    assert!(bus.wait_idle(DEADLINE).await);
    assert_eq!(bus.backlog("slow"), 0);
    assert_eq!(slow.acked_numbers(), vec![1]);
    handle.unsubscribe().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_policy_refuses_with_backlog_full_and_loses_nothing_accepted() {
    let bus = bus(InMemoryBusConfig::default()
        .lanes(2)
        .backlog_limit(3)
        .overflow(OverflowPolicy::Reject));
    let slow = Recorder::gated();
    let fast = Recorder::acking();
    let hs = bus
        .subscribe(Subscription::new("slow").topic("t"), slow.clone())
        .await
        .unwrap();
    let hf = bus
        .subscribe(Subscription::new("fast").topic("t"), fast.clone())
        .await
        .unwrap();
    for n in 1..=3 {
        bus.publish(probe("t", &format!("c{n}"), n)).await.unwrap();
    }

    let refused = bus.publish(probe("t", "c4", 4)).await.unwrap_err();
    assert!(
        matches!(&refused, BusError::BacklogFull { subscriber, limit: 3 } if subscriber == "slow"),
        "unexpected error: {refused:?}"
    );
    assert_eq!(refused.kind(), ErrorKind::Retryable);
    assert_eq!(bus.backlog("slow"), 3);

    fast.until_acked(3).await;
    slow.open_gate(3);
    assert!(bus.wait_idle(DEADLINE).await);
    let mut got = slow.acked_numbers();
    got.sort_unstable();
    assert_eq!(
        got,
        vec![1, 2, 3],
        "the slow group lost an accepted message"
    );
    let mut fast_got = fast.acked_numbers();
    fast_got.sort_unstable();
    assert_eq!(
        fast_got,
        vec![1, 2, 3],
        "a refused publish reached a group anyway"
    );
    hs.unsubscribe().await;
    hf.unsubscribe().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_is_away_accumulates_up_to_its_limit_and_gets_all_in_order_on_return() {
    let bus = bus(InMemoryBusConfig::default()
        .lanes(4)
        .backlog_limit(5)
        .overflow(OverflowPolicy::Reject));
    let first = Recorder::acking();
    bus.subscribe(Subscription::new("away").topic("t"), first.clone())
        .await
        .unwrap()
        .unsubscribe()
        .await;
    assert!(!bus.is_attached("away"));

    // One correlation id: one lane takes the whole limit of the group.
    for n in 1..=5 {
        bus.publish(probe("t", "order-1", n)).await.unwrap();
    }
    assert!(matches!(
        bus.publish(probe("t", "order-1", 6)).await,
        Err(BusError::BacklogFull { limit: 5, .. })
    ));
    assert_eq!(bus.backlog("away"), 5);
    assert!(
        bus.is_idle(),
        "a group that is away does not keep the bus busy"
    );

    let back = Recorder::acking();
    let handle = bus
        .subscribe(Subscription::new("away").topic("t"), back.clone())
        .await
        .unwrap();
    back.until_acked(5).await;
    assert_eq!(back.acked_numbers(), vec![1, 2, 3, 4, 5]);
    assert!(first.acked().is_empty());
    handle.unsubscribe().await;
}

#[tokio::test(start_paused = true)]
async fn a_message_in_retry_backoff_goes_first_to_the_returning_group() {
    let bus = bus(InMemoryBusConfig::default().lanes(2).retry(RetryPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_secs(60),
        max_backoff: Duration::from_secs(60),
    }));
    let failing = Recorder::judging(|_, _| Verdict::Retry);
    let handle = bus
        .subscribe(Subscription::new("g").topic("t"), failing.clone())
        .await
        .unwrap();
    bus.publish(probe("t", "c", 1)).await.unwrap();
    bus.publish(probe("t", "c", 2)).await.unwrap();
    failing.until_calls(1).await;
    handle.unsubscribe().await;
    assert_eq!(failing.calls(), 1, "unsubscribe waited out the backoff");
    assert_eq!(bus.backlog("g"), 2);

    let back = Recorder::acking();
    let handle = bus
        .subscribe(Subscription::new("g").topic("t"), back.clone())
        .await
        .unwrap();
    back.until_acked(2).await;
    assert_eq!(back.acked_numbers(), vec![1, 2]);
    assert!(bus.dead_letters().is_empty());
    handle.unsubscribe().await;
}

#[tokio::test(start_paused = true)]
async fn a_retried_message_is_dead_lettered_after_max_attempts_with_the_attempt_count() {
    let bus = bus(InMemoryBusConfig::default().retry(quick_retries(3)));
    let failing = Recorder::judging(|_, _| Verdict::Retry);
    let handle = bus
        .subscribe(Subscription::new("g").topic("t"), failing.clone())
        .await
        .unwrap();
    let envelope = probe("t", "c", 1);
    let id = envelope.message_id;
    bus.publish(envelope).await.unwrap();

    assert!(bus.wait_idle(DEADLINE).await);
    let letters = bus.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].subscriber, "g");
    assert_eq!(letters[0].envelope.message_id, id);
    assert_eq!(letters[0].attempts, 3);
    assert_eq!(letters[0].error.kind(), ErrorKind::Retryable);
    assert_eq!(failing.calls(), 3);
    handle.unsubscribe().await;
}

#[tokio::test(start_paused = true)]
async fn a_retryable_failure_waits_with_exponential_backoff() {
    let bus = bus(InMemoryBusConfig::default().retry(RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(250),
    }));
    let failing = Recorder::judging(|_, call| {
        if call < 4 {
            Verdict::Retry
        } else {
            Verdict::Ack
        }
    });
    let handle = bus
        .subscribe(Subscription::new("g").topic("t"), failing.clone())
        .await
        .unwrap();
    let start = tokio::time::Instant::now();
    bus.publish(probe("t", "c", 1)).await.unwrap();
    failing.until_acked(1).await;
    // 100 + 200 + 250 (capped).
    assert_eq!(start.elapsed(), Duration::from_millis(550));
    assert!(bus.dead_letters().is_empty());
    handle.unsubscribe().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_is_dead_lettered_after_one_attempt() {
    let bus = bus(InMemoryBusConfig::default().retry(quick_retries(5)));
    let refusing = Recorder::judging(|n, _| {
        if n == 1 {
            Verdict::Refuse
        } else {
            Verdict::Ack
        }
    });
    let handle = bus
        .subscribe(Subscription::new("g").topic("t"), refusing.clone())
        .await
        .unwrap();
    bus.publish(probe("t", "c", 1)).await.unwrap();
    bus.publish(probe("t", "c", 2)).await.unwrap();

    assert!(bus.wait_idle(DEADLINE).await);
    let letters = bus.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 1);
    assert_eq!(letters[0].error, HandlerError::permanent("refused by test"));
    assert_eq!(refusing.calls(), 2);
    assert_eq!(refusing.acked_numbers(), vec![2]);
    handle.unsubscribe().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_dead_letter_store_forgets_the_oldest_letter() {
    let bus = bus(InMemoryBusConfig::default().lanes(1).dead_letter_limit(2));
    let refusing = Recorder::judging(|_, _| Verdict::Refuse);
    let handle = bus
        .subscribe(Subscription::new("g").topic("t"), refusing.clone())
        .await
        .unwrap();
    for n in 1..=3 {
        bus.publish(probe("t", "c", n)).await.unwrap();
    }

    assert!(bus.wait_idle(DEADLINE).await);
    let kept: Vec<u32> = bus
        .dead_letters()
        .iter()
        .map(|letter| letter.envelope.decode::<Probe>().unwrap().n)
        .collect();
    assert_eq!(kept, vec![2, 3]);
    handle.unsubscribe().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_dead_letters_reach_only_the_same_group_again() {
    let bus = bus(InMemoryBusConfig::default());
    let picky = Recorder::judging(|_, call| {
        if call == 1 {
            Verdict::Refuse
        } else {
            Verdict::Ack
        }
    });
    let other = Recorder::acking();
    let hp = bus
        .subscribe(Subscription::new("picky").topic("t"), picky.clone())
        .await
        .unwrap();
    let ho = bus
        .subscribe(Subscription::new("other").topic("t"), other.clone())
        .await
        .unwrap();
    bus.publish(probe("t", "c", 7)).await.unwrap();
    assert!(bus.wait_idle(DEADLINE).await);
    assert_eq!(bus.dead_letters().len(), 1);

    assert_eq!(bus.redeliver_dead_letters("picky").await.unwrap(), 1);
    picky.until_acked(1).await;
    assert!(bus.wait_idle(DEADLINE).await);
    assert_eq!(picky.acked_numbers(), vec![7]);
    assert_eq!(
        other.acked_numbers(),
        vec![7],
        "the other group got it twice"
    );
    assert!(bus.dead_letters().is_empty());
    assert_eq!(bus.redeliver_dead_letters("picky").await.unwrap(), 0);
    assert_eq!(bus.redeliver_dead_letters("unknown").await.unwrap(), 0);
    hp.unsubscribe().await;
    ho.unsubscribe().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_keeps_the_message_for_the_resubscribed_group() {
    let bus = bus(InMemoryBusConfig::default().lanes(4));
    let explosive = Recorder::judging(|n, _| if n == 1 { Verdict::Panic } else { Verdict::Ack });
    let old_handle = bus
        .subscribe(Subscription::new("g").topic("t"), explosive.clone())
        .await
        .unwrap();
    bus.publish(probe("t", "c", 1)).await.unwrap();
    bus.publish(probe("t", "c", 2)).await.unwrap();

    // The panic detaches the whole group, so the bus is idle with both messages kept.
    assert!(bus.wait_idle(DEADLINE).await);
    assert!(!bus.is_attached("g"));
    assert_eq!(bus.backlog("g"), 2);
    assert!(explosive.acked().is_empty());
    assert!(bus.dead_letters().is_empty());

    // The old handle is still alive: every lane stopped anyway, so the name is free.
    let fixed = Recorder::acking();
    let handle = bus
        .subscribe(Subscription::new("g").topic("t"), fixed.clone())
        .await
        .unwrap();
    fixed.until_acked(2).await;
    assert_eq!(fixed.acked_numbers(), vec![1, 2]);
    old_handle.unsubscribe().await;
    bus.publish(probe("t", "c", 3)).await.unwrap();
    fixed.until_acked(3).await;
    handle.unsubscribe().await;
}

/// Handles `a` messages by publishing a follow-up on `b`, then acks.
struct Forwarder {
    bus: InMemoryBus,
}

#[async_trait]
impl MessageHandler for Forwarder {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        let probe: Probe = envelope.decode()?;
        tokio::task::yield_now().await;
        let follow_up = envelope
            .reply("b", chrono::Utc::now(), &probe)
            .map_err(|e| HandlerError::permanent(e.to_string()))?;
        self.bus
            .publish(follow_up)
            .await
            .map_err(|e| HandlerError::retryable(e.to_string()))
    }
}

/// Yields a few times before acking, to widen the window a wrong idle check would hit.
struct Dawdler {
    handled: AtomicUsize,
}

#[async_trait]
impl MessageHandler for Dawdler {
    async fn handle(&self, _envelope: &Envelope) -> Result<(), HandlerError> {
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_idle_returns_true_only_after_a_cascade_is_fully_handled() {
    let bus = bus(InMemoryBusConfig::default().lanes(4));
    let ends = Arc::new(Dawdler {
        handled: AtomicUsize::new(0),
    });
    let ha = bus
        .subscribe(
            Subscription::new("a").topic("a"),
            Arc::new(Forwarder { bus: bus.clone() }),
        )
        .await
        .unwrap();
    let hb = bus
        .subscribe(Subscription::new("b").topic("b"), ends.clone())
        .await
        .unwrap();
    for round in 0..20 {
        for n in 0..25 {
            bus.publish(probe("a", &format!("o{n}"), n)).await.unwrap();
        }
        assert!(bus.wait_idle(DEADLINE).await);
        assert_eq!(
            ends.handled.load(Ordering::SeqCst),
            (round + 1) * 25,
            "idle before the follow-ups were handled"
        );
    }
    ha.unsubscribe().await;
    hb.unsubscribe().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_idle_times_out_while_a_message_is_in_hand() {
    let bus = bus(InMemoryBusConfig::default());
    let slow = Recorder::gated();
    let handle = bus
        .subscribe(Subscription::new("slow").topic("t"), slow.clone())
        .await
        .unwrap();
    bus.publish(probe("t", "c", 1)).await.unwrap();
    slow.until_calls(1).await;
    assert!(!bus.is_idle());
    assert!(!bus.wait_idle(Duration::from_millis(20)).await);
    slow.open_gate(1);
    assert!(bus.wait_idle(DEADLINE).await);
    handle.unsubscribe().await;
}

/// Holds back every message of one correlation id until released; passes the rest on.
struct HoldsBack {
    held: &'static str,
    release: Semaphore,
    entered: AtomicUsize,
    inner: Arc<Recorder>,
}

#[async_trait]
impl MessageHandler for HoldsBack {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        if envelope.correlation_id == self.held {
            self.entered.fetch_add(1, Ordering::SeqCst);
            self.inner.changed.notify_waiters();
            self.release.acquire().await.unwrap().forget();
        }
        self.inner.handle(envelope).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_order_holds_up_only_its_own_later_messages() {
    let bus = bus(InMemoryBusConfig::default().lanes(4));
    let recorder = Recorder::acking();
    let handler = Arc::new(HoldsBack {
        held: "slow",
        release: Semaphore::new(0),
        entered: AtomicUsize::new(0),
        inner: recorder.clone(),
    });
    let handle = bus
        .subscribe(Subscription::new("g").topic("t"), handler.clone())
        .await
        .unwrap();
    bus.publish(probe("t", "slow", 0)).await.unwrap();
    recorder
        .until("the slow order in hand", |_| {
            handler.entered.load(Ordering::SeqCst) == 1
        })
        .await;

    // With lanes picked by hash alone, about one order in four would queue behind it.
    for n in 1..=32 {
        bus.publish(probe("t", &format!("order-{n}"), n))
            .await
            .unwrap();
        recorder.until_acked(n as usize).await;
    }
    // The slow order's own next message waits for its first.
    bus.publish(probe("t", "slow", 99)).await.unwrap();
    assert!(!bus.wait_idle(Duration::from_millis(20)).await);
    assert_eq!(handler.entered.load(Ordering::SeqCst), 1);

    handler.release.add_permits(2);
    assert!(bus.wait_idle(DEADLINE).await);
    let slow: Vec<u32> = recorder
        .acked()
        .into_iter()
        .filter(|(c, _)| c == "slow")
        .map(|(_, n)| n)
        .collect();
    assert_eq!(slow, vec![0, 99]);
    handle.unsubscribe().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_stays_attached_until_its_last_lane_has_finished_its_message() {
    let bus = bus(InMemoryBusConfig::default().lanes(4));
    let slow = Recorder::gated();
    let handle = bus
        .subscribe(Subscription::new("g").topic("t"), slow.clone())
        .await
        .unwrap();
    bus.publish(probe("t", "c", 1)).await.unwrap();
    slow.until_calls(1).await;

    // The idle lanes stop at once; the busy one finishes its message first.
    let leaving = tokio::spawn(handle.unsubscribe());
    assert!(!bus.wait_idle(Duration::from_millis(20)).await);
    assert!(bus.is_attached("g"));
    assert!(matches!(
        bus.subscribe(Subscription::new("g").topic("t"), Recorder::acking())
            .await,
        Err(BusError::AlreadySubscribed(_))
    ));

    slow.open_gate(1);
    tokio::time::timeout(DEADLINE, leaving)
        .await
        .unwrap()
        .unwrap();
    assert!(!bus.is_attached("g"));
    assert!(bus.is_idle());
    assert_eq!(bus.backlog("g"), 0);
    assert_eq!(slow.acked_numbers(), vec![1]);
}

#[tokio::test(start_paused = true)]
async fn unsubscribe_finishes_the_message_in_hand_and_leaves_the_rest_queued() {
    let bus = bus(InMemoryBusConfig::default().lanes(1));
    let slow = Recorder::gated();
    let handle = bus
        .subscribe(Subscription::new("g").topic("t"), slow.clone())
        .await
        .unwrap();
    bus.publish(probe("t", "c", 1)).await.unwrap();
    bus.publish(probe("t", "c", 2)).await.unwrap();
    slow.until_calls(1).await;

    let leaving = handle.unsubscribe();
    tokio::pin!(leaving);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), leaving.as_mut())
            .await
            .is_err(),
        "unsubscribe returned before the message in hand was finished"
    );
    slow.open_gate(1);
    tokio::time::timeout(DEADLINE, leaving).await.unwrap();
    assert_eq!(slow.acked_numbers(), vec![1]);
    assert_eq!(bus.backlog("g"), 1);

    let back = Recorder::acking();
    let handle = bus
        .subscribe(Subscription::new("g").topic("t"), back.clone())
        .await
        .unwrap();
    back.until_acked(1).await;
    assert_eq!(back.acked_numbers(), vec![2], "the acked message came back");
    handle.unsubscribe().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_name_subscribing_twice_concurrently_is_already_subscribed() {
    let bus = bus(InMemoryBusConfig::default());
    let attempts: Vec<_> = (0..2)
        .map(|_| {
            let bus = bus.clone();
            tokio::spawn(async move {
                bus.subscribe(Subscription::new("twin").topic("t"), Recorder::acking())
                    .await
            })
        })
        .collect();
    let mut attached = Vec::new();
    let mut refused = Vec::new();
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(handle) => attached.push(handle),
            Err(e) => refused.push(e),
        }
    }
    assert_eq!(attached.len(), 1);
    assert!(matches!(&refused[..], [BusError::AlreadySubscribed(name)] if name == "twin"));
    assert_eq!(refused[0].kind(), ErrorKind::Permanent);

    for handle in attached {
        handle.unsubscribe().await;
    }
    let again = bus
        .subscribe(Subscription::new("twin").topic("t"), Recorder::acking())
        .await
        .expect("the name is free again after unsubscribe");
    again.unsubscribe().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_nobody_listens_to_is_accepted_and_dropped() {
    let bus = bus(InMemoryBusConfig::default());
    bus.publish(probe("nobody.listens", "c", 1)).await.unwrap();
    assert!(bus.is_idle());

    // No route means nobody missed it: a later subscriber starts from what follows.
    let late = Recorder::acking();
    let handle = bus
        .subscribe(
            Subscription::new("late").topic("nobody.listens"),
            late.clone(),
        )
        .await
        .unwrap();
    bus.publish(probe("nobody.listens", "c", 2)).await.unwrap();
    late.until_acked(1).await;
    assert!(bus.wait_idle(DEADLINE).await);
    assert_eq!(late.acked_numbers(), vec![2]);
    handle.unsubscribe().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribing_with_other_topics_replaces_the_routes() {
    let bus = bus(InMemoryBusConfig::default());
    bus.subscribe(Subscription::new("g").topic("old"), Recorder::acking())
        .await
        .unwrap()
        .unsubscribe()
        .await;
    let now = Recorder::acking();
    let handle = bus
        .subscribe(Subscription::new("g").topic("new"), now.clone())
        .await
        .unwrap();
    bus.publish(probe("old", "c", 1)).await.unwrap();
    bus.publish(probe("new", "c", 2)).await.unwrap();
    now.until_acked(1).await;
    assert!(bus.wait_idle(DEADLINE).await);
    assert_eq!(now.acked_numbers(), vec![2]);
    assert_eq!(bus.backlog("g"), 0);
    handle.unsubscribe().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_handler_turns_an_undecodable_payload_into_a_dead_letter() {
    let bus = bus(InMemoryBusConfig::default());
    let called = Arc::new(AtomicUsize::new(0));
    let counter = called.clone();
    let handler = typed_handler(move |_envelope: Envelope, _probe: Probe| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    let handle = bus
        .subscribe(Subscription::new("typed").topic("t"), handler)
        .await
        .unwrap();
    let id = bus
        .publish_json("t", "c", None, &"not a probe")
        .await
        .unwrap();

    assert!(bus.wait_idle(DEADLINE).await);
    let letters = bus.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].envelope.message_id, id);
    assert_eq!(letters[0].attempts, 1);
    assert_eq!(letters[0].error.kind(), ErrorKind::Permanent);
    assert_eq!(called.load(Ordering::SeqCst), 0);
    handle.unsubscribe().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_json_round_trips_payload_and_metadata() {
    let bus = bus(InMemoryBusConfig::default());
    let received: Arc<Mutex<Vec<(Envelope, Probe)>>> = Arc::default();
    let arrived = Arc::new(Notify::new());
    let (sink, bell) = (received.clone(), arrived.clone());
    let handler = typed_handler(move |envelope: Envelope, probe: Probe| {
        let (sink, bell) = (sink.clone(), bell.clone());
        async move {
            sink.lock().unwrap().push((envelope, probe));
            bell.notify_one();
            Ok(())
        }
    });
    let handle = bus
        .subscribe(Subscription::new("typed").topic("order.placed"), handler)
        .await
        .unwrap();
    let cause = uuid::Uuid::new_v4();
    let id = bus
        .publish_json("order.placed", "order-9", Some(cause), &Probe { n: 42 })
        .await
        .unwrap();

    tokio::time::timeout(DEADLINE, arrived.notified())
        .await
        .unwrap();
    let received = received.lock().unwrap().clone();
    let [(envelope, payload)] = &received[..] else {
        panic!("expected one message, got {received:?}");
    };
    assert_eq!(payload, &Probe { n: 42 });
    assert_eq!(envelope.message_id, id);
    assert_eq!(envelope.topic, "order.placed");
    assert_eq!(envelope.correlation_id, "order-9");
    assert_eq!(envelope.causation_id, Some(cause));
    assert_eq!(envelope.payload.get(), r#"{"n":42}"#);
    handle.unsubscribe().await;
}
