//! The conformance suite every [`MessageBus`] adapter must pass (after Watermill's
//! universal pub/sub tests). Each check takes a bus and a unique topic prefix, so runs
//! against a shared server do not see each other, and panics with a clear message on
//! failure. Waiting is always "until a condition, with a deadline", never a fixed sleep.
//!
//! [`run_all`] needs only a bus. [`run_extended`] needs a [`Harness`]: more instances of
//! the bus on the same broker (as separate processes would have), the dead letters, the
//! retry policy; a check an adapter cannot model is skipped with its reason printed.
//! [`run_dead_letters`] needs the bus and its [`DeadLetters`](crate::DeadLetters) port:
//! what is listed, and what a replay does.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::{
    DeadLetter, Envelope, HandlerError, MessageBus, MessageHandler, RetryPolicy, Subscription,
};

/// How long a check waits for deliveries before it fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
struct Probe {
    n: u32,
}

/// Records what a handler saw and fails the first `fail_first` attempts.
struct Recorder {
    seen: Mutex<Vec<(String, u32)>>,
    /// When each call began, failed ones included.
    calls: Mutex<Vec<Instant>>,
    changed: Notify,
    fail_first: Mutex<u32>,
    permanent: bool,
}

impl Recorder {
    fn new(fail_first: u32, permanent: bool) -> Arc<Self> {
        Arc::new(Self {
            seen: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
            changed: Notify::new(),
            fail_first: Mutex::new(fail_first),
            permanent,
        })
    }

    fn calls(&self) -> Vec<Instant> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Waits until the handler has been called `count` times.
    async fn wait_for_calls(&self, count: usize, what: &str) -> Vec<Instant> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let notified = self.changed.notified();
            if self.calls().len() >= count {
                return self.calls();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let calls = self.calls().len();
                assert!(
                    calls >= count,
                    "{what}: expected {count} calls within {DEADLINE:?}, saw {calls}"
                );
                return self.calls();
            }
        }
    }

    fn seen(&self) -> Vec<(String, u32)> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    async fn wait_for(&self, count: usize, what: &str) -> Vec<(String, u32)> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let notified = self.changed.notified();
            if self.seen().len() >= count {
                return self.seen();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let seen = self.seen();
                assert!(
                    seen.len() >= count,
                    "{what}: expected {count} deliveries within {DEADLINE:?}, saw {}: {seen:?}",
                    seen.len()
                );
                return seen;
            }
        }
    }
}

#[async_trait]
impl MessageHandler for Recorder {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        let probe: Probe = envelope.decode()?;
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(Instant::now());
        }
        {
            let mut fail = self
                .fail_first
                .lock()
                .map_err(|_| HandlerError::permanent("poisoned"))?;
            if *fail > 0 {
                *fail -= 1;
                self.changed.notify_waiters();
                return Err(if self.permanent {
                    HandlerError::permanent("refused by test")
                } else {
                    HandlerError::retryable("not yet")
                });
            }
        }
        if let Ok(mut seen) = self.seen.lock() {
            seen.push((envelope.correlation_id.clone(), probe.n));
        }
        self.changed.notify_waiters();
        Ok(())
    }
}

async fn publish(bus: &dyn MessageBus, topic: &str, correlation: &str, n: u32) {
    publish_envelope(bus, probe(topic, correlation, n)).await;
}

fn probe(topic: &str, correlation: &str, n: u32) -> Envelope {
    Envelope::new(
        uuid::Uuid::new_v4(),
        topic.to_owned(),
        chrono::Utc::now(),
        correlation,
        None,
        &Probe { n },
    )
    .unwrap_or_else(|e| panic!("encode failed: {e}"))
}

async fn publish_envelope(bus: &dyn MessageBus, envelope: Envelope) {
    bus.publish(envelope)
        .await
        .unwrap_or_else(|e| panic!("publish failed: {e}"));
}

/// Two groups on one topic: each receives every message exactly once here (no failures).
pub async fn every_group_gets_every_message(bus: Arc<dyn MessageBus>, prefix: &str) {
    let topic = format!("{prefix}.fanout");
    let a = Recorder::new(0, false);
    let b = Recorder::new(0, false);
    let ha = bus
        .subscribe(
            Subscription::new(format!("{prefix}-a")).topic(&topic),
            a.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let hb = bus
        .subscribe(
            Subscription::new(format!("{prefix}-b")).topic(&topic),
            b.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for n in 0..20 {
        publish(bus.as_ref(), &topic, &format!("c{}", n % 3), n).await;
    }
    let mut sa: Vec<u32> = a
        .wait_for(20, "group a")
        .await
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    let mut sb: Vec<u32> = b
        .wait_for(20, "group b")
        .await
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    sa.sort_unstable();
    sb.sort_unstable();
    assert_eq!(sa, (0..20).collect::<Vec<_>>(), "group a got a wrong set");
    assert_eq!(sb, (0..20).collect::<Vec<_>>(), "group b got a wrong set");
    ha.unsubscribe().await;
    hb.unsubscribe().await;
}

/// Messages with one correlation id arrive in publish order.
pub async fn order_is_kept_per_correlation_id(bus: Arc<dyn MessageBus>, prefix: &str) {
    let topic = format!("{prefix}.ordered");
    let r = Recorder::new(0, false);
    let h = bus
        .subscribe(
            Subscription::new(format!("{prefix}-ord")).topic(&topic),
            r.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for n in 0..100 {
        publish(bus.as_ref(), &topic, &format!("k{}", n % 4), n).await;
    }
    let seen = r.wait_for(100, "ordered").await;
    for key in 0..4 {
        let ns: Vec<u32> = seen
            .iter()
            .filter(|(c, _)| *c == format!("k{key}"))
            .map(|(_, n)| *n)
            .collect();
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, sorted, "order broken for correlation id k{key}");
    }
    h.unsubscribe().await;
}

/// `publish_all` is accepted whole and delivered like as many `publish` calls: every
/// message once, in order per correlation id.
pub async fn publish_all_delivers_every_message_in_order(bus: Arc<dyn MessageBus>, prefix: &str) {
    let topic = format!("{prefix}.batch");
    let r = Recorder::new(0, false);
    let h = bus
        .subscribe(
            Subscription::new(format!("{prefix}-batch")).topic(&topic),
            r.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let envelopes: Vec<Envelope> = (0..100)
        .map(|n| probe(&topic, &format!("b{}", n % 3), n))
        .collect();
    let (accepted, error) = bus.publish_all(envelopes).await;
    assert!(error.is_none(), "publish_all failed: {error:?}");
    assert_eq!(accepted, 100, "publish_all accepted only part of the batch");
    let seen = r.wait_for(100, "batch").await;
    let mut all: Vec<u32> = seen.iter().map(|(_, n)| *n).collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..100).collect::<Vec<_>>(),
        "a message lost or doubled"
    );
    for key in 0..3 {
        let ns: Vec<u32> = seen
            .iter()
            .filter(|(c, _)| *c == format!("b{key}"))
            .map(|(_, n)| *n)
            .collect();
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "order broken for correlation id b{key}: {ns:?}"
        );
    }
    assert_eq!(
        bus.publish_all(Vec::new()).await.0,
        0,
        "an empty batch publishes nothing"
    );
    h.unsubscribe().await;
}

/// A retryable failure is redelivered until the handler succeeds.
pub async fn retryable_failure_is_redelivered(bus: Arc<dyn MessageBus>, prefix: &str) {
    let topic = format!("{prefix}.retry");
    let r = Recorder::new(2, false);
    let h = bus
        .subscribe(
            Subscription::new(format!("{prefix}-retry")).topic(&topic),
            r.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    publish(bus.as_ref(), &topic, "c", 7).await;
    assert_eq!(r.wait_for(1, "retry").await, vec![("c".to_owned(), 7)]);
    h.unsubscribe().await;
}

/// A permanent failure is not redelivered; later messages still flow.
pub async fn permanent_failure_is_not_redelivered(bus: Arc<dyn MessageBus>, prefix: &str) {
    let topic = format!("{prefix}.poison");
    let r = Recorder::new(1, true);
    let h = bus
        .subscribe(
            Subscription::new(format!("{prefix}-poison")).topic(&topic),
            r.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    publish(bus.as_ref(), &topic, "c", 1).await;
    publish(bus.as_ref(), &topic, "c", 2).await;
    assert_eq!(
        r.wait_for(1, "after poison").await,
        vec![("c".to_owned(), 2)],
        "the refused message came back"
    );
    // A later message of the same flow arrives alone: the refused one stays gone.
    publish(bus.as_ref(), &topic, "c", 3).await;
    assert_eq!(
        r.wait_for(2, "after poison, later").await,
        vec![("c".to_owned(), 2), ("c".to_owned(), 3)],
        "the refused message came back"
    );
    h.unsubscribe().await;
}

/// A group that goes away and comes back under the same name receives, in order,
/// everything published while it was away.
pub async fn returning_group_receives_what_it_missed(bus: Arc<dyn MessageBus>, prefix: &str) {
    let topic = format!("{prefix}.away");
    let name = format!("{prefix}-away");
    let first = Recorder::new(0, false);
    let h = bus
        .subscribe(Subscription::new(&name).topic(&topic), first.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    publish(bus.as_ref(), &topic, "c", 0).await;
    first.wait_for(1, "before leaving").await;
    h.unsubscribe().await;
    for n in 1..=10 {
        publish(bus.as_ref(), &topic, "c", n).await;
    }
    let second = Recorder::new(0, false);
    let h = bus
        .subscribe(Subscription::new(&name).topic(&topic), second.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let seen: Vec<u32> = second
        .wait_for(10, "after coming back")
        .await
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());
    h.unsubscribe().await;
}

/// The W3C trace context an envelope carries reaches the handler unchanged, and a
/// message without one arrives without one.
pub async fn a_traceparent_arrives_as_published(bus: Arc<dyn MessageBus>, prefix: &str) {
    let topic = format!("{prefix}.traced");
    let seen = Arc::new(TraceRecorder::default());
    let h = bus
        .subscribe(
            Subscription::new(format!("{prefix}-traced")).topic(&topic),
            seen.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut traced = probe(&topic, "c", 1);
    traced.traceparent = Some(traceparent.to_owned());
    publish_envelope(bus.as_ref(), traced).await;
    let mut untraced = probe(&topic, "c", 2);
    untraced.traceparent = None;
    publish_envelope(bus.as_ref(), untraced).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let notified = seen.changed.notified();
        if seen.all().len() >= 2 {
            break;
        }
        assert!(
            tokio::time::timeout_at(deadline, notified).await.is_ok(),
            "traced messages not delivered within {DEADLINE:?}"
        );
    }
    assert_eq!(seen.all(), [Some(traceparent.to_owned()), None]);
    h.unsubscribe().await;
}

/// While a group's handler holds its first message, the group's backlog counts the
/// three messages published to it (queued or in hand); once they are handled, none.
pub async fn the_backlog_counts_what_a_group_has_not_finished(
    bus: Arc<dyn MessageBus>,
    prefix: &str,
) {
    let topic = format!("{prefix}.backlog");
    let group = format!("{prefix}-backlog");
    let gate = Arc::new(Gate::default());
    let h = bus
        .subscribe(Subscription::new(&group).topic(&topic), gate.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for n in 0..3 {
        publish(bus.as_ref(), &topic, "c", n).await;
    }
    wait_for_backlog(bus.as_ref(), &group, 3, "while the handler holds the first").await;
    let _ = gate.open.send_replace(true);
    wait_for_backlog(bus.as_ref(), &group, 0, "once all are handled").await;
    h.unsubscribe().await;
}

/// Asks the bus for `group`'s backlog until it is `expected` (each ask a round trip
/// on a network bus, so nothing spins idle), within the deadline.
async fn wait_for_backlog(bus: &dyn MessageBus, group: &str, expected: u64, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let backlogs = bus.backlogs().await.unwrap_or_else(|e| panic!("{e}"));
        let backlog = backlogs.iter().find(|(g, _)| g == group).map(|(_, n)| *n);
        if backlog == Some(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: backlog of {group} is {backlog:?}, not {expected}, after {DEADLINE:?}"
        );
        tokio::task::yield_now().await;
    }
}

/// Records the `traceparent` of every message handled.
#[derive(Default)]
struct TraceRecorder {
    seen: Mutex<Vec<Option<String>>>,
    changed: Notify,
}

impl TraceRecorder {
    fn all(&self) -> Vec<Option<String>> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl MessageHandler for TraceRecorder {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(envelope.traceparent.clone());
        }
        self.changed.notify_waiters();
        Ok(())
    }
}

/// A handler that holds every message until the gate opens.
struct Gate {
    open: tokio::sync::watch::Sender<bool>,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            open: tokio::sync::watch::channel(false).0,
        }
    }
}

#[async_trait]
impl MessageHandler for Gate {
    async fn handle(&self, _: &Envelope) -> Result<(), HandlerError> {
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|open| *open).await;
        Ok(())
    }
}

/// Runs every check.
pub async fn run_all(bus: Arc<dyn MessageBus>, prefix: &str) {
    every_group_gets_every_message(bus.clone(), prefix).await;
    order_is_kept_per_correlation_id(bus.clone(), prefix).await;
    publish_all_delivers_every_message_in_order(bus.clone(), prefix).await;
    retryable_failure_is_redelivered(bus.clone(), prefix).await;
    permanent_failure_is_not_redelivered(bus.clone(), prefix).await;
    returning_group_receives_what_it_missed(bus.clone(), prefix).await;
    a_traceparent_arrives_as_published(bus.clone(), prefix).await;
    the_backlog_counts_what_a_group_has_not_finished(bus, prefix).await;
}

mod dead_letters;
mod extended;

pub use dead_letters::*;
pub use extended::*;
