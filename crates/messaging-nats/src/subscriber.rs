//! One subscription: a puller per topic (its durable pull consumer) and one for the
//! group's replay subject (dead letters sent back to this group only), lanes keyed by
//! correlation id, and a keep-alive that sends progress acks for every message held.
//!
//! * A puller asks the server for as many messages as it has free in-flight permits,
//!   so a subscription holds at most `max_in_flight` messages in this process (queued
//!   or in hand), plus one replayed dead letter (its puller has a permit of its own).
//!   Each topic's puller has its own share of the permits (`max_in_flight` split evenly,
//!   at least one each): an open pull request holds its unused permits until it
//!   expires, so with one pool for all topics the first puller would take them all and
//!   the others' messages would wait up to a whole request (1 s) for a permit.
//! * A message goes to the lane holding its flow's earlier messages, else to an idle
//!   lane ([`Lanes`]): one worker per lane handles them in arrival order, so one flow's
//!   messages are handled in order within the process while other flows go on.
//! * The handler's verdict: `Ok` → double ack (the server confirms it); `Retryable` →
//!   nak with the policy's backoff, until the server's delivery count reaches
//!   `max_attempts`; `Permanent`, attempts exhausted, a panic past the last attempt, or
//!   a body that is not an envelope → the dead-letter stream, then term. A handler
//!   running past `max_handling_time` is cancelled and counts as a retryable failure;
//!   the process then pauses pulling, so the message goes to another process of the
//!   group (see `Shared::step_back`).
//! * Messages held get a progress ack every third of the ack wait, so a slow handler or
//!   a long queue does not make the server redeliver; a process that dies stops sending
//!   them, and the server redelivers after the ack wait.
//! * When a message first failed is remembered in the process (by stream and sequence)
//!   until it is acked or dead-lettered, for the dead letter's first-failure time; a
//!   message that failed first in another process counts from its failure here.
//! * Attempts are the server's delivery count: every delivery counts, including one
//!   given back unhandled when a subscription stops or a process steps back.
//! * On stop, the open pull request is read to its end, each lane finishes its message
//!   in hand, and what is queued or arrives meanwhile is nak'ed at once, for the group's
//!   other processes or its return.
//!
//! One noun, one file (about 600 lines): pulling, handling, verdicts and progress acks
//! share the subscription's state (`Shared`, the held messages, the pause after a
//! handler ran out of time) and each other's invariants (a permit is given back exactly
//! when a message stops being held); split apart they would have to expose all of it.

use std::{
    collections::HashMap,
    fmt,
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use chrono::{DateTime, Utc};
use futures_util::{FutureExt, StreamExt};
use messaging::{
    BusError, Envelope, HandlerError, MessageHandler, Subscription, SubscriptionHandle,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tracing::Instrument;

use crate::{bus::Inner, dead_letter, lanes::Lanes};

/// Messages held by a subscription in this process: by local id, for progress acks,
/// and by flow, for the lane choice.
struct Held {
    messages: Mutex<HashMap<u64, jetstream::Message>>,
    lanes: Mutex<Lanes>,
}

/// What the tasks of one subscription share.
struct Shared {
    inner: Arc<Inner>,
    group: String,
    handler: Arc<dyn MessageHandler>,
    held: Arc<Held>,
    next_id: AtomicU64,
    /// No new pull requests before this instant: set when a handler ran out of time, so
    /// its message goes to the group's other processes.
    paused_until: Mutex<Option<tokio::time::Instant>>,
    /// When each message that failed and was nak'ed failed first: (stream, sequence) →
    /// time; removed when it is acked or dead-lettered.
    first_failures: Mutex<HashMap<(String, u64), DateTime<Utc>>>,
    /// Detaches the group when the last task lets go.
    _attachment: Attachment,
}

/// The group's place in the bus's attached set, given back on drop.
struct Attachment {
    inner: Arc<Inner>,
    group: String,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.inner.detach(&self.group);
        tracing::debug!(subscriber = %self.group, "detached");
    }
}

/// One message held by the process: un-held and its permit given back on drop.
struct Delivery {
    held: Arc<Held>,
    id: u64,
    message: jetstream::Message,
    envelope: Envelope,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.held
            .messages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
        self.held
            .lanes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .release(&self.envelope.correlation_id);
    }
}

/// Starts the subscription: consumers created or updated first, then the tasks.
pub(crate) async fn start(
    inner: Arc<Inner>,
    subscription: Subscription,
    handler: Arc<dyn MessageHandler>,
) -> Result<SubscriptionHandle, BusError> {
    let group = subscription.name.clone();
    if !inner.attach(&group) {
        return Err(BusError::AlreadySubscribed(group));
    }
    let attachment = Attachment {
        inner: inner.clone(),
        group: group.clone(),
    };
    let mut consumers = Vec::with_capacity(subscription.topics.len() + 1);
    for topic in &subscription.topics {
        inner.ensure_stream(topic).await?;
        let consumer = inner.ensure_consumer(topic, &group).await?;
        consumers.push((Source::Topic(topic.clone()), consumer));
    }
    consumers.push((Source::Replay, inner.ensure_replay_consumer(&group).await?));
    let lanes = subscription
        .concurrency
        .unwrap_or(inner.config.lanes)
        .max(1);
    let period = (inner.config.ack_wait / 3).max(Duration::from_millis(30));
    let shared = Arc::new(Shared {
        inner,
        group: group.clone(),
        handler,
        held: Arc::new(Held {
            messages: Mutex::new(HashMap::new()),
            lanes: Mutex::new(Lanes::new(lanes)),
        }),
        next_id: AtomicU64::new(0),
        paused_until: Mutex::new(None),
        first_failures: Mutex::new(HashMap::new()),
        _attachment: attachment,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut senders = Vec::with_capacity(lanes);
    let mut tasks = Vec::with_capacity(lanes + consumers.len());
    for _ in 0..lanes {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        tasks.push(tokio::spawn(work(shared.clone(), rx, stop_rx.clone())));
    }
    let share = permit_share(shared.inner.config.max_in_flight, subscription.topics.len());
    for (source, consumer) in consumers {
        tasks.push(tokio::spawn(pull(
            shared.clone(),
            (source, share),
            consumer,
            senders.clone(),
            stop_rx.clone(),
        )));
    }
    // Not awaited by unsubscribe: it ends by itself once the subscription's tasks are gone.
    tokio::spawn(keep_alive(Arc::downgrade(&shared), period));
    tracing::debug!(subscriber = %group, topics = ?subscription.topics, lanes, "subscribed");
    Ok(SubscriptionHandle::new(group, stop_tx, tasks))
}

/// Where a puller's consumer reads: a topic's stream, or the group's replay subject.
enum Source {
    Topic(String),
    Replay,
}

impl Source {
    /// Creates or updates the group's consumer on it.
    async fn consumer(&self, inner: &Inner, group: &str) -> Result<PullConsumer, BusError> {
        match self {
            Self::Topic(topic) => inner.ensure_consumer(topic, group).await,
            Self::Replay => inner.ensure_replay_consumer(group).await,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Topic(topic) => f.write_str(topic),
            Self::Replay => f.write_str("(replayed dead letters)"),
        }
    }
}

/// Whether the stop signal was raised (or its sender is gone).
fn stopping(signal: &watch::Receiver<bool>) -> bool {
    !matches!(signal.has_changed(), Ok(false)) || *signal.borrow()
}

/// Waits before a new try (doubling up to 2 s); true if stopped meanwhile.
async fn pause(stop: &mut watch::Receiver<bool>, failures: u32) -> bool {
    let wait = Duration::from_millis(50u64 << failures.min(6)).min(Duration::from_secs(2));
    tokio::select! {
        _ = stop.changed() => true,
        () = tokio::time::sleep(wait) => false,
    }
}

/// The server's delivery count of `message` (1 on the first delivery).
fn attempts_of(message: &jetstream::Message) -> u32 {
    message
        .info()
        .map(|info| u32::try_from(info.delivered).unwrap_or(u32::MAX))
        .unwrap_or(1)
        .max(1)
}

/// How many first-failure times a subscription remembers at most.
const FIRST_FAILURES_KEPT: usize = 10_000;

/// The most messages one pull request asks for.
const MAX_BATCH: usize = 256;

/// Each topic puller's share of a subscription's `max_in_flight` permits: an even split,
/// at least one.
fn permit_share(max_in_flight: usize, topics: usize) -> usize {
    (max_in_flight / topics.max(1)).max(1)
}

/// How long one pull request waits for messages. A stopping subscription waits for its
/// open request to end, so no message is handed to a request nobody reads any more.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// Pulls `source`'s consumer into the lanes until stopped, re-creating the consumer
/// after errors. Each request asks for as many messages as there are free in-flight
/// permits (for the replay subject: one at a time, from a permit of its own), and is
/// read to its end (at most [`PULL_EXPIRES`]): what arrives after the stop signal is
/// nak'ed at once, for the group's other processes or its return.
async fn pull(
    shared: Arc<Shared>,
    (source, share): (Source, usize),
    mut consumer: PullConsumer,
    lanes: Vec<mpsc::UnboundedSender<Delivery>>,
    mut stop: watch::Receiver<bool>,
) {
    // Replays are rare and take one permit of their own: an idle request for them never
    // holds back the topics' messages.
    let most = match source {
        Source::Topic(_) => share.clamp(1, MAX_BATCH),
        Source::Replay => 1,
    };
    let permits_of = Arc::new(Semaphore::new(match source {
        Source::Topic(_) => share,
        Source::Replay => 1,
    }));
    let mut failures = 0u32;
    loop {
        let paused = *shared
            .paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(until) = paused {
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep_until(until) => {},
            }
        }
        let first = tokio::select! {
            biased;
            _ = stop.changed() => return,
            permit = permits_of.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        if stopping(&stop) {
            return;
        }
        let mut permits = vec![first];
        while permits.len() < most {
            match permits_of.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        let mut failed = false;
        match consumer
            .batch()
            .max_messages(permits.len())
            .expires(PULL_EXPIRES)
            .messages()
            .await
        {
            Ok(mut batch) => {
                // The server ends a request at its expiry; past that with a margin, the
                // connection was lost with it and waiting longer only delays recovery.
                let ends = tokio::time::Instant::now() + PULL_EXPIRES + Duration::from_secs(1);
                while let Ok(Some(next)) = tokio::time::timeout_at(ends, batch.next()).await {
                    match next {
                        Ok(message) => {
                            failures = 0;
                            match permits.pop() {
                                Some(permit) if !stopping(&stop) => {
                                    shared.dispatch(message, permit, &lanes).await;
                                }
                                _ => nak(&shared.group, &message, None).await,
                            }
                        }
                        Err(e) => {
                            tracing::warn!(subscriber = %shared.group, %source, error = %e, "pull failed");
                            failed = true;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(subscriber = %shared.group, %source, error = %e, "cannot pull; retrying");
                failed = true;
            }
        }
        drop(permits);
        if stopping(&stop) {
            return;
        }
        if failed {
            if pause(&mut stop, failures).await {
                return;
            }
            failures = failures.saturating_add(1);
            match source.consumer(&shared.inner, &shared.group).await {
                Ok(fresh) => consumer = fresh,
                Err(e) => tracing::warn!(subscriber = %shared.group, %source, error = %e,
                    "cannot re-create consumer; retrying"),
            }
        }
    }
}

/// Sends progress acks for every held message until the subscription is gone.
async fn keep_alive(shared: Weak<Shared>, period: Duration) {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        let held: Vec<jetstream::Message> = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let held = shared
                .held
                .messages
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            held.values().cloned().collect()
        };
        for message in held {
            if let Err(e) = message.ack_with(AckKind::Progress).await {
                tracing::debug!(error = %e, "progress ack failed");
            }
        }
    }
}

/// Handles the lane's deliveries until stopped; then gives back what is queued.
async fn work(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Delivery>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if stopping(&stop) {
            break;
        }
        let delivery = tokio::select! {
            biased;
            delivery = rx.recv() => match delivery {
                Some(delivery) => delivery,
                None => break,
            },
            _ = stop.changed() => break,
        };
        shared.handle(delivery).await;
    }
    rx.close();
    while let Ok(delivery) = rx.try_recv() {
        nak(&shared.group, &delivery.message, None).await;
    }
}

/// Naks `message`, to be redelivered after `delay` (at once for `None`).
async fn nak(group: &str, message: &jetstream::Message, delay: Option<Duration>) {
    if let Err(e) = message.ack_with(AckKind::Nak(delay)).await {
        // Redelivered after the ack wait all the same.
        tracing::warn!(subscriber = group, error = %e, "nak failed");
    }
}

impl Shared {
    /// Puts `message` in its lane; a body that is not an envelope is dead-lettered.
    async fn dispatch(
        &self,
        message: jetstream::Message,
        permit: OwnedSemaphorePermit,
        lanes: &[mpsc::UnboundedSender<Delivery>],
    ) {
        let envelope = match Envelope::from_json(&message.payload) {
            Ok(envelope) => envelope,
            Err(e) => {
                let attempts = attempts_of(&message);
                let error = HandlerError::permanent(format!("not an envelope: {e}"));
                let first_failed_at = self.first_failure(&message, true).unwrap_or_else(Utc::now);
                if let Err(e) = dead_letter::send(
                    &self.inner,
                    &self.group,
                    &message,
                    None,
                    (attempts, first_failed_at),
                    &error,
                )
                .await
                {
                    tracing::error!(subscriber = %self.group, error = %e, "cannot dead-letter; will retry");
                    nak(
                        &self.group,
                        &message,
                        Some(self.inner.config.retry.backoff(attempts)),
                    )
                    .await;
                }
                return;
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.held
            .messages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, message.clone());
        let lane = self
            .held
            .lanes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .assign(&envelope.correlation_id)
            .min(lanes.len().saturating_sub(1));
        let delivery = Delivery {
            held: self.held.clone(),
            id,
            message,
            envelope,
            _permit: permit,
        };
        if let Err(returned) = lanes[lane].send(delivery) {
            // The lane has stopped: the message goes back at once.
            nak(&self.group, &returned.0.message, None).await;
        }
    }

    /// When `message` first failed here, if it did: forgotten when `forget`. A message
    /// without JetStream metadata has no key and no memory.
    fn first_failure(&self, message: &jetstream::Message, forget: bool) -> Option<DateTime<Utc>> {
        let info = message.info().ok()?;
        let key = (info.stream.to_owned(), info.stream_sequence);
        let mut failures = self
            .first_failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if forget {
            failures.remove(&key)
        } else {
            failures.get(&key).copied()
        }
    }

    /// Remembers that `message` failed now, unless it had failed before.
    fn failed(&self, message: &jetstream::Message) {
        let Ok(info) = message.info() else { return };
        let key = (info.stream.to_owned(), info.stream_sequence);
        let mut failures = self
            .first_failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Entries of messages another process took over are never removed here: bounded
        // by forgetting them all at once, which only loses first-failure times.
        if failures.len() >= FIRST_FAILURES_KEPT && !failures.contains_key(&key) {
            failures.clear();
        }
        failures.entry(key).or_insert_with(Utc::now);
    }

    /// After a handler ran out of time: this process asks for no messages until the
    /// message, nak'ed with the returned delay, has been offered to the group's other
    /// processes. The delay outlasts every pull request already open here, and the pause
    /// outlasts the delay by one more request, so another process's request takes it; a
    /// process alone in its group takes it back after the pause.
    fn step_back(&self, backoff: Duration) -> Duration {
        let delay = backoff.max(PULL_EXPIRES + Duration::from_millis(250));
        let until = tokio::time::Instant::now() + delay + PULL_EXPIRES;
        let mut paused = self
            .paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *paused = Some(paused.map_or(until, |p| p.max(until)));
        tracing::error!(subscriber = %self.group, ?delay,
            "handler ran out of time: its message is offered to the group's other processes");
        delay
    }

    /// The double ack: `+ACK` as a request, answered by the server once it has recorded
    /// the ack. A request rides the client's one shared reply subscription, where
    /// `Message::double_ack` opens a subscription per message.
    async fn ack_confirmed(&self, message: &jetstream::Message) -> Result<(), String> {
        let Some(reply) = message.reply.clone() else {
            return Err("not a JetStream message: no reply subject".to_owned());
        };
        self.inner
            .client
            .request(reply, bytes::Bytes::from_static(b"+ACK"))
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Runs the handler on `delivery` and carries out its verdict.
    async fn handle(&self, delivery: Delivery) {
        let attempts = attempts_of(&delivery.message);
        let envelope = &delivery.envelope;
        let span = tracing::info_span!("handle", subscriber = %self.group, topic = %envelope.topic,
            message_id = %envelope.message_id, correlation_id = %envelope.correlation_id,
            causation_id = ?envelope.causation_id, attempt = attempts);
        let limit = self.inner.config.max_handling_time;
        let call = AssertUnwindSafe(self.handler.handle(envelope))
            .catch_unwind()
            .instrument(span.clone());
        let mut timed_out = false;
        let outcome = match tokio::time::timeout(limit, call).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(HandlerError::retryable("handler panicked")),
            Err(_) => {
                timed_out = true;
                Err(HandlerError::retryable(format!(
                    "handler did not finish within {limit:?}; cancelled"
                )))
            }
        };
        let retry = self.inner.config.retry;
        match outcome {
            Ok(()) => {
                if attempts > 1 {
                    self.first_failure(&delivery.message, true);
                }
                if let Err(e) = self.ack_confirmed(&delivery.message).await {
                    tracing::warn!(parent: &span, error = %e,
                        "ack not confirmed by the server; the message may come again");
                }
            }
            Err(error @ HandlerError::Retryable(_)) if attempts < retry.max_attempts.max(1) => {
                let mut wait = retry.backoff(attempts);
                if timed_out {
                    wait = self.step_back(wait);
                }
                tracing::warn!(parent: &span, ?wait, error = %error, "handler failed, will retry");
                self.failed(&delivery.message);
                nak(&self.group, &delivery.message, Some(wait)).await;
            }
            Err(error) => {
                let first_failed_at = self
                    .first_failure(&delivery.message, false)
                    .unwrap_or_else(Utc::now);
                if let Err(e) = dead_letter::send(
                    &self.inner,
                    &self.group,
                    &delivery.message,
                    Some(envelope),
                    (attempts, first_failed_at),
                    &error,
                )
                .await
                {
                    tracing::error!(parent: &span, error = %e, "cannot dead-letter; will retry");
                    self.failed(&delivery.message);
                    nak(
                        &self.group,
                        &delivery.message,
                        Some(retry.backoff(attempts)),
                    )
                    .await;
                } else {
                    self.first_failure(&delivery.message, true);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::permit_share;

    #[test]
    fn the_permits_are_split_evenly_among_topics_at_least_one_each() {
        assert_eq!(permit_share(256, 1), 256);
        assert_eq!(permit_share(256, 4), 64);
        assert_eq!(permit_share(10, 3), 3);
        assert_eq!(permit_share(2, 5), 1);
        assert_eq!(permit_share(8, 0), 8);
    }
}
