//! The in-memory adapter of the bus port: one process, tokio tasks, bounded queues.
//!
//! How it works:
//!
//! * A consumer group is created the first time its name subscribes, and stays: each
//!   group owns `lanes` bounded FIFO queues. A message goes to lane
//!   `hash(correlationId) % lanes` of every group listening to its topic, so messages
//!   of one order keep their order while different orders run in parallel.
//! * When the group is attached, one worker task per lane takes the lane's receiver.
//!   On unsubscribe (or a panicking handler) the receiver goes back to the lane, with the
//!   message in hand if any: a group that is away keeps queueing, and when it comes back
//!   under the same name it receives everything, in order.
//! * A queue holds at most `backlog_limit / lanes` messages. When it is full, the
//!   [`OverflowPolicy`] decides: wait for room (backpressure, logged loudly) or refuse
//!   the publish with [`BusError::BacklogFull`]. Nothing is ever dropped silently.
//! * The handler's result decides: `Ok` acks; `Retryable` retries on the same lane with
//!   exponential backoff (keeping order) up to `max_attempts`; `Permanent` or attempts
//!   exhausted records a [`DeadLetter`] (logged at ERROR, replayable).

use std::{
    collections::{HashMap, VecDeque},
    hash::{Hash, Hasher},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{Notify, mpsc, watch};
use tracing::Instrument;

use crate::{
    BusError, Envelope, HandlerError, MessageBus, MessageHandler, Subscription, SubscriptionHandle,
};

/// What to do when a subscriber's backlog is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverflowPolicy {
    /// The publisher waits for room (logged at WARN when it starts waiting).
    Backpressure,
    /// The publish fails with [`BusError::BacklogFull`] (logged at ERROR).
    Reject,
}

/// Redelivery of messages whose handler returned a retryable error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, including the first; then the message is dead-lettered.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles each time.
    pub initial_backoff: Duration,
    /// Upper bound of the wait.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` (attempt counts from 1).
    #[must_use]
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Settings of an [`InMemoryBus`].
#[derive(Debug, Clone)]
pub struct InMemoryBusConfig {
    /// Parallel lanes per consumer group (order is kept per correlation id).
    pub lanes: usize,
    /// Messages a group may have queued, over all its lanes.
    pub backlog_limit: usize,
    /// What a full backlog does to publishers.
    pub overflow: OverflowPolicy,
    /// Redelivery of retryable failures.
    pub retry: RetryPolicy,
    /// How many dead letters are kept for inspection (the oldest go first, loudly).
    pub dead_letter_limit: usize,
}

impl Default for InMemoryBusConfig {
    fn default() -> Self {
        Self {
            lanes: 4,
            backlog_limit: 65_536,
            overflow: OverflowPolicy::Backpressure,
            retry: RetryPolicy::default(),
            dead_letter_limit: 10_000,
        }
    }
}

impl InMemoryBusConfig {
    /// Sets the number of lanes per group (at least 1).
    #[must_use]
    pub fn lanes(mut self, lanes: usize) -> Self {
        self.lanes = lanes.max(1);
        self
    }
    /// Sets the backlog limit per group.
    #[must_use]
    pub fn backlog_limit(mut self, limit: usize) -> Self {
        self.backlog_limit = limit.max(1);
        self
    }
    /// Sets the overflow policy.
    #[must_use]
    pub fn overflow(mut self, policy: OverflowPolicy) -> Self {
        self.overflow = policy;
        self
    }
    /// Sets the retry policy.
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
}

/// A message a subscriber could not handle, kept for inspection and replay.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The consumer group.
    pub subscriber: String,
    /// The message.
    pub envelope: Envelope,
    /// The last error.
    pub error: HandlerError,
    /// How many attempts were made.
    pub attempts: u32,
    /// When it was given up.
    pub at: DateTime<Utc>,
}

/// The in-memory message bus. Cheap to clone; clones share the bus.
#[derive(Clone)]
pub struct InMemoryBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for InMemoryBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryBus")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: InMemoryBusConfig,
    /// topic → the groups listening to it.
    routes: RwLock<HashMap<String, Vec<Arc<Group>>>>,
    /// group name → group.
    groups: Mutex<HashMap<String, Arc<Group>>>,
    dead_letters: Mutex<VecDeque<DeadLetter>>,
    /// Woken whenever a group's pending count reaches zero.
    idle: Notify,
}

struct Group {
    name: String,
    lanes: Vec<Lane>,
    /// Whether workers currently consume this group.
    attached: AtomicBool,
    /// Messages queued or in hand, over all lanes: the bus is idle when this is 0 for
    /// every attached group.
    pending: AtomicUsize,
    /// Set while a publisher waits for room, so the overflow is logged once per episode.
    overflowing: AtomicBool,
}

struct Lane {
    tx: mpsc::Sender<Arc<Envelope>>,
    /// The receiver while no worker holds it, plus a message a stopped worker had in hand.
    parked: Mutex<Option<Parked>>,
}

struct Parked {
    rx: mpsc::Receiver<Arc<Envelope>>,
    in_hand: Option<(Arc<Envelope>, u32)>,
}

impl Default for InMemoryBus {
    fn default() -> Self {
        Self::new(InMemoryBusConfig::default())
    }
}

impl InMemoryBus {
    /// A bus with `config`.
    #[must_use]
    pub fn new(config: InMemoryBusConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                routes: RwLock::new(HashMap::new()),
                groups: Mutex::new(HashMap::new()),
                dead_letters: Mutex::new(VecDeque::new()),
                idle: Notify::new(),
            }),
        }
    }

    /// The dead letters recorded so far (oldest first).
    #[must_use]
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        lock(&self.inner.dead_letters).iter().cloned().collect()
    }

    /// Removes the dead letters of `subscriber` and publishes them to that group again.
    /// Returns how many were redelivered.
    ///
    /// # Errors
    /// A [`BusError`] from enqueueing; the letters not yet redelivered stay recorded.
    pub async fn redeliver_dead_letters(&self, subscriber: &str) -> Result<usize, BusError> {
        let letters: Vec<DeadLetter> = {
            let mut all = lock(&self.inner.dead_letters);
            let (mine, rest): (VecDeque<_>, VecDeque<_>) =
                all.drain(..).partition(|d| d.subscriber == subscriber);
            *all = rest;
            mine.into_iter().collect()
        };
        let Some(group) = lock(&self.inner.groups).get(subscriber).cloned() else {
            return Ok(0);
        };
        let mut count = 0;
        let mut remaining = letters.into_iter();
        while let Some(letter) = remaining.next() {
            if let Err(e) = self
                .enqueue(&group, Arc::new(letter.envelope.clone()))
                .await
            {
                let mut all = lock(&self.inner.dead_letters);
                all.push_back(letter);
                all.extend(remaining);
                return Err(e);
            }
            count += 1;
        }
        Ok(count)
    }

    /// Messages queued or in hand for `subscriber` (0 for an unknown name).
    #[must_use]
    pub fn backlog(&self, subscriber: &str) -> usize {
        lock(&self.inner.groups)
            .get(subscriber)
            .map_or(0, |g| g.pending.load(Ordering::Acquire))
    }

    /// Whether every attached group has nothing queued or in hand.
    #[must_use]
    pub fn is_idle(&self) -> bool {
        lock(&self.inner.groups)
            .values()
            .all(|g| !g.attached.load(Ordering::Acquire) || g.pending.load(Ordering::Acquire) == 0)
    }

    /// Waits until [`InMemoryBus::is_idle`], or `timeout` passes. Returns whether idle.
    /// Groups that are detached (away) are not waited for.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_idle() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_idle();
            }
        }
    }

    fn group(&self, name: &str) -> Arc<Group> {
        let mut groups = lock(&self.inner.groups);
        groups
            .entry(name.to_owned())
            .or_insert_with(|| {
                let lanes = self.inner.config.lanes.max(1);
                let capacity = (self.inner.config.backlog_limit / lanes).max(1);
                Arc::new(Group {
                    name: name.to_owned(),
                    lanes: (0..lanes)
                        .map(|_| {
                            let (tx, rx) = mpsc::channel(capacity);
                            Lane {
                                tx,
                                parked: Mutex::new(Some(Parked { rx, in_hand: None })),
                            }
                        })
                        .collect(),
                    attached: AtomicBool::new(false),
                    pending: AtomicUsize::new(0),
                    overflowing: AtomicBool::new(false),
                })
            })
            .clone()
    }

    async fn enqueue(&self, group: &Group, envelope: Arc<Envelope>) -> Result<(), BusError> {
        let lane = &group.lanes[lane_of(&envelope.correlation_id, group.lanes.len())];
        group.pending.fetch_add(1, Ordering::AcqRel);
        let result = match lane.tx.try_send(envelope) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(BusError::Closed),
            Err(mpsc::error::TrySendError::Full(envelope)) => {
                let limit = self.inner.config.backlog_limit;
                match self.inner.config.overflow {
                    OverflowPolicy::Reject => {
                        tracing::error!(subscriber = %group.name, limit, message_id = %envelope.message_id,
                            "backlog full: publish refused");
                        Err(BusError::BacklogFull {
                            subscriber: group.name.clone(),
                            limit,
                        })
                    }
                    OverflowPolicy::Backpressure => {
                        if !group.overflowing.swap(true, Ordering::AcqRel) {
                            tracing::warn!(subscriber = %group.name, limit,
                                "backlog full: publishers wait until the subscriber catches up");
                        }
                        let sent = lane.tx.send(envelope).await.map_err(|_| BusError::Closed);
                        group.overflowing.store(false, Ordering::Release);
                        sent
                    }
                }
            }
        };
        if result.is_err() {
            self.done(group);
        }
        result
    }

    fn done(&self, group: &Group) {
        if group.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }

    fn record_dead_letter(&self, letter: DeadLetter) {
        tracing::error!(
            subscriber = %letter.subscriber, topic = %letter.envelope.topic,
            message_id = %letter.envelope.message_id, correlation_id = %letter.envelope.correlation_id,
            attempts = letter.attempts, error = %letter.error, "message dead-lettered"
        );
        let mut letters = lock(&self.inner.dead_letters);
        if letters.len() >= self.inner.config.dead_letter_limit.max(1) {
            if let Some(old) = letters.pop_front() {
                tracing::error!(subscriber = %old.subscriber, message_id = %old.envelope.message_id,
                    "dead-letter store full: oldest dead letter forgotten");
            }
        }
        letters.push_back(letter);
    }

    async fn run_lane(
        self,
        group: Arc<Group>,
        lane_index: usize,
        parked: Parked,
        handler: Arc<dyn MessageHandler>,
        mut stop: watch::Receiver<bool>,
    ) {
        let lane = &group.lanes[lane_index];
        let retry = self.inner.config.retry;
        let mut worker = Worker {
            group: &group,
            idle: &self.inner.idle,
            lane,
            rx: Some(parked.rx),
            in_hand: parked.in_hand,
        };
        loop {
            let (envelope, mut attempt) = match worker.in_hand.take() {
                Some(held) => held,
                None => {
                    let Some(rx) = worker.rx.as_mut() else { break };
                    tokio::select! {
                        biased;
                        _ = stop.changed() => break,
                        next = rx.recv() => match next {
                            Some(envelope) => (envelope, 0),
                            None => break,
                        },
                    }
                }
            };
            let span = tracing::info_span!("handle", subscriber = %group.name, topic = %envelope.topic,
                message_id = %envelope.message_id, correlation_id = %envelope.correlation_id,
                causation_id = ?envelope.causation_id);
            loop {
                attempt += 1;
                // Held while the handler runs: if it panics, the worker's drop parks it.
                worker.in_hand = Some((envelope.clone(), attempt - 1));
                let result = handler.handle(&envelope).instrument(span.clone()).await;
                worker.in_hand = None;
                let error = match result {
                    Ok(()) => break,
                    Err(error @ HandlerError::Permanent(_)) => error,
                    Err(error @ HandlerError::Retryable(_)) if attempt >= retry.max_attempts => {
                        error
                    }
                    Err(error @ HandlerError::Retryable(_)) => {
                        let wait = retry.backoff(attempt);
                        tracing::warn!(parent: &span, attempt, ?wait, error = %error, "handler failed, will retry");
                        tokio::select! {
                            biased;
                            _ = stop.changed() => {
                                // Keep the message for whoever consumes this lane next.
                                worker.in_hand = Some((envelope, attempt));
                                return;
                            }
                            () = tokio::time::sleep(wait) => continue,
                        }
                    }
                };
                self.record_dead_letter(DeadLetter {
                    subscriber: group.name.clone(),
                    envelope: (*envelope).clone(),
                    error,
                    attempts: attempt,
                    at: Utc::now(),
                });
                break;
            }
            self.done(&group);
        }
    }
}

/// A lane's consumer. However its task ends (stop, closed bus, panicking handler), its
/// drop gives the receiver and the message in hand back to the lane and wakes waiters.
struct Worker<'a> {
    group: &'a Group,
    idle: &'a Notify,
    lane: &'a Lane,
    rx: Option<mpsc::Receiver<Arc<Envelope>>>,
    in_hand: Option<(Arc<Envelope>, u32)>,
}

impl Drop for Worker<'_> {
    fn drop(&mut self) {
        if let Some(rx) = self.rx.take() {
            *lock(&self.lane.parked) = Some(Parked {
                rx,
                in_hand: self.in_hand.take(),
            });
        }
        if std::thread::panicking() {
            tracing::error!(subscriber = %self.group.name, "handler panicked: subscriber detached, message kept");
        }
        self.group.attached.store(false, Ordering::Release);
        self.idle.notify_waiters();
    }
}

fn lane_of(correlation_id: &str, lanes: usize) -> usize {
    if lanes == 1 {
        return 0;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    correlation_id.hash(&mut hasher);
    (hasher.finish() % lanes as u64) as usize
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait]
impl MessageBus for InMemoryBus {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        let groups: Vec<Arc<Group>> = {
            let routes = self
                .inner
                .routes
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match routes.get(envelope.topic.as_ref()) {
                Some(groups) => groups.clone(),
                None => return Ok(()),
            }
        };
        let envelope = Arc::new(envelope);
        for group in &groups {
            self.enqueue(group, envelope.clone()).await?;
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        subscription: Subscription,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<SubscriptionHandle, BusError> {
        let group = self.group(&subscription.name);
        if group.attached.swap(true, Ordering::AcqRel) {
            return Err(BusError::AlreadySubscribed(subscription.name));
        }
        {
            let mut routes = self
                .inner
                .routes
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for topic in &subscription.topics {
                let listeners = routes.entry(topic.clone()).or_default();
                if !listeners.iter().any(|g| Arc::ptr_eq(g, &group)) {
                    listeners.push(group.clone());
                }
            }
        }
        let mut taken = Vec::with_capacity(group.lanes.len());
        for lane in &group.lanes {
            match lock(&lane.parked).take() {
                Some(parked) => taken.push(parked),
                None => break,
            }
        }
        if taken.len() < group.lanes.len() {
            // A previous worker of this group is still finishing its message.
            for (lane, parked) in group.lanes.iter().zip(taken) {
                *lock(&lane.parked) = Some(parked);
            }
            group.attached.store(false, Ordering::Release);
            return Err(BusError::AlreadySubscribed(subscription.name));
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let workers = taken
            .into_iter()
            .enumerate()
            .map(|(index, parked)| {
                let bus = self.clone();
                tokio::spawn(bus.run_lane(
                    group.clone(),
                    index,
                    parked,
                    handler.clone(),
                    stop_rx.clone(),
                ))
            })
            .collect();
        tracing::debug!(subscriber = %subscription.name, topics = ?subscription.topics, "subscribed");
        Ok(SubscriptionHandle::new(subscription.name, stop_tx, workers))
    }
}
