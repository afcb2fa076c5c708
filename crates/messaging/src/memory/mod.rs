//! The in-memory adapter of the bus port: one process, tokio tasks, bounded backlogs.
//!
//! How it works, and where:
//!
//! * A consumer group ([`group`]) is created the first time its name subscribes, and
//!   stays: each group owns `lanes` FIFO queues. A message goes to the lane that holds
//!   the earlier messages of its correlation id while any of them is pending there, else
//!   to an idle lane ([`affinity`]): per-order order without head-of-line blocking
//!   between orders.
//! * A topic nobody has ever subscribed to has no route: publishing to it succeeds and
//!   the message is dropped (nobody listens, so nobody misses it). A group that is away
//!   still has its routes, so its messages are queued for its return.
//! * When the group is attached, one worker task per lane ([`worker`]) takes the lane's
//!   receiver; on unsubscribe (or a panicking handler) it goes back to the lane, with the
//!   message in hand if any, so a group that comes back receives everything, in order.
//! * A group holds at most `backlog_limit` messages, queued or in hand. A publish
//!   reserves room in every group it goes to before it queues anywhere ([`reservation`]):
//!   accepted by all or by none; a full group makes it wait or refuses it, as the
//!   [`OverflowPolicy`] says.
//! * The handler's result decides: `Ok` acks; `Retryable` retries on the same lane with
//!   backoff up to `max_attempts`; `Permanent` or attempts exhausted records a
//!   [`DeadLetter`] ([`dead_letter`]), numbered: the [`DeadLetters`] port lists them and
//!   replays one to its group only.
//! * [`InMemoryBus::wait_idle`] follows a bus-wide count of pending messages that never
//!   under-counts ([`activity`]).

mod activity;
mod affinity;
mod config;
mod dead_letter;
mod group;
mod reservation;
mod worker;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use tokio::sync::watch;

use self::{
    activity::Activity,
    affinity::lane_hash,
    dead_letter::DeadLetterStore,
    group::Group,
    reservation::Reservation,
    worker::{Attachment, Worker},
};
pub use self::{
    config::{InMemoryBusConfig, OverflowPolicy, RetryPolicy},
    dead_letter::DeadLetter,
};
use crate::{
    BusError, DeadLetterError, DeadLetterRecord, DeadLetters, Envelope, MessageBus, MessageHandler,
    Replayed, Subscription, SubscriptionHandle, numbered_id,
};

/// The in-memory message bus. Cheap to clone; clones share the bus.
///
/// * Publishing to a topic nobody has subscribed to succeeds and drops the message.
/// * A group that unsubscribed (or whose handler panicked) is away, not gone: its
///   messages queue up to `backlog_limit`, and it gets them in order when it comes back.
///   Under [`OverflowPolicy::Backpressure`] an away group that fills up makes publishers
///   wait until it returns (logged at WARN); choose [`OverflowPolicy::Reject`] where
///   that is not acceptable.
/// * [`InMemoryBus::wait_idle`] is the test helper: it returns once every attached group
///   has handled everything, including the follow-ups its handlers published.
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

/// The groups listening to one topic. Shared, so a publisher takes it without copying.
type Listeners = Arc<[Arc<Group>]>;

/// What the clones of one bus and its workers share.
struct Inner {
    config: InMemoryBusConfig,
    /// topic → the groups listening to it. Read on every publish, written on subscribe.
    routes: RwLock<FxHashMap<String, Listeners>>,
    /// group name → group. Never locked on the publish or handling paths.
    groups: Mutex<HashMap<String, Arc<Group>>>,
    /// Kept for inspection and replay, oldest first, at most `dead_letter_limit`.
    dead_letters: DeadLetterStore,
    /// Messages pending for attached groups, and the `wait_idle` callers.
    activity: Activity,
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
                dead_letters: DeadLetterStore::new(config.dead_letter_limit),
                config,
                routes: RwLock::new(FxHashMap::default()),
                groups: Mutex::new(HashMap::new()),
                activity: Activity::new(),
            }),
        }
    }

    /// The dead letters recorded so far (oldest first).
    #[must_use]
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.inner.dead_letters.all()
    }

    /// Removes the dead letters of `subscriber` and queues them for that group again
    /// (only that group, whatever the topic's other listeners), with fresh attempts.
    /// Returns how many were redelivered.
    ///
    /// # Errors
    /// A [`BusError`] from enqueueing (a full backlog under [`OverflowPolicy::Reject`]);
    /// the letters not yet redelivered stay recorded, as they do if the future is dropped.
    pub async fn redeliver_dead_letters(&self, subscriber: &str) -> Result<usize, BusError> {
        let Some(group) = self.inner.groups.lock().get(subscriber).cloned() else {
            return Ok(0);
        };
        let listeners: Listeners = Arc::from([group]);
        let mut pending = self.inner.dead_letters.take(subscriber);
        let mut count = 0;
        while let Some(letter) = pending.next() {
            let envelope = letter.envelope.clone();
            let hash = lane_hash(&envelope.correlation_id);
            reservation::deliver(&self.inner, &listeners, 0, hash, envelope).await?;
            pending.sent();
            count += 1;
        }
        if count > 0 {
            tracing::info!(subscriber, count, "dead letters redelivered");
        }
        Ok(count)
    }

    /// Messages queued or in hand for `subscriber` (0 for an unknown name), whether the
    /// group is attached or away.
    #[must_use]
    pub fn backlog(&self, subscriber: &str) -> usize {
        self.inner
            .groups
            .lock()
            .get(subscriber)
            .map_or(0, |g| g.pending())
    }

    /// Whether a subscription named `subscriber` is running (false once a panicking
    /// handler or an unsubscribe has detached it and all its lanes have stopped).
    #[must_use]
    pub fn is_attached(&self, subscriber: &str) -> bool {
        self.inner
            .groups
            .lock()
            .get(subscriber)
            .is_some_and(|g| g.claimed.load(Ordering::SeqCst))
    }

    /// Whether every attached group has nothing queued or in hand. Groups that are away
    /// (detached) do not count.
    #[must_use]
    pub fn is_idle(&self) -> bool {
        self.inner.activity.is_idle()
    }

    /// Waits until [`InMemoryBus::is_idle`], or `timeout` passes. Returns whether idle.
    /// Groups that are detached (away) are not waited for. A message a handler publishes
    /// before returning is pending before the message it handles is done, so a whole
    /// cascade is waited for.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        self.inner.activity.wait_idle(timeout).await
    }

    /// The group named `name`, created with `concurrency` lanes (else the configured
    /// number) if it does not exist yet.
    fn group(&self, name: &str, concurrency: Option<usize>) -> Arc<Group> {
        let mut groups = self.inner.groups.lock();
        let lanes = concurrency.unwrap_or(self.inner.config.lanes).max(1);
        groups
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Group::new(name, lanes)))
            .clone()
    }

    /// Makes `topics` the routes of `group`: added where missing, removed from topics
    /// its previous subscription listened to and this one does not.
    fn route(&self, group: &Arc<Group>, topics: &[String]) {
        let mut routes = self.inner.routes.write();
        let mut current = group.topics.lock();
        for old in current.iter().filter(|t| !topics.contains(t)) {
            if let Some(listeners) = routes.get(old.as_str()) {
                let kept: Vec<Arc<Group>> = listeners
                    .iter()
                    .filter(|g| !Arc::ptr_eq(g, group))
                    .cloned()
                    .collect();
                if kept.is_empty() {
                    routes.remove(old.as_str());
                } else {
                    routes.insert(old.clone(), kept.into());
                }
            }
        }
        for topic in topics {
            let listeners = routes.entry(topic.clone()).or_insert_with(|| Arc::from([]));
            if !listeners.iter().any(|g| Arc::ptr_eq(g, group)) {
                let mut grown = listeners.to_vec();
                grown.push(group.clone());
                *listeners = grown.into();
            }
        }
        current.clear();
        for topic in topics {
            if !current.contains(topic) {
                current.push(topic.clone());
            }
        }
    }
}

/// The dead letters by their number (as a decimal string id); a replay queues the
/// message for its group only, with fresh attempts.
#[async_trait]
impl DeadLetters for InMemoryBus {
    async fn list(&self, limit: usize) -> Result<Vec<DeadLetterRecord>, DeadLetterError> {
        Ok(self
            .inner
            .dead_letters
            .oldest(limit)
            .into_iter()
            .map(|(number, letter)| letter.record(number.to_string()))
            .collect())
    }

    async fn get(&self, id: &str) -> Result<Option<DeadLetterRecord>, DeadLetterError> {
        Ok(numbered_id(id)
            .and_then(|number| self.inner.dead_letters.get(number))
            .map(|letter| letter.record(id.to_owned())))
    }

    async fn count(&self) -> Result<u64, DeadLetterError> {
        Ok(self.inner.dead_letters.len() as u64)
    }

    async fn replay(&self, id: &str) -> Result<Replayed, DeadLetterError> {
        let not_found = || DeadLetterError::NotFound(id.to_owned());
        let number = numbered_id(id).ok_or_else(not_found)?;
        // Taken out while it is queued; put back if that fails or is cancelled.
        let mut pending = self.inner.dead_letters.take_one(number);
        let Some(letter) = pending.next() else {
            return Err(not_found());
        };
        let group_name = letter.subscriber.clone();
        let envelope = letter.envelope.clone();
        // Groups are never removed, so the group of a dead letter exists.
        let Some(group) = self.inner.groups.lock().get(&group_name).cloned() else {
            return Err(not_found());
        };
        let listeners: Listeners = Arc::from([group]);
        let hash = lane_hash(&envelope.correlation_id);
        let message_id = envelope.message_id;
        reservation::deliver(&self.inner, &listeners, 0, hash, envelope).await?;
        pending.sent();
        tracing::info!(subscriber = %group_name, %message_id, id, "dead letter replayed");
        Ok(Replayed {
            id: id.to_owned(),
            group: group_name,
        })
    }
}

/// Decrements its counter when dropped: a count of tasks inside a wait, kept right
/// however the wait ends.
struct DecrementOnDrop<'a>(&'a AtomicUsize);

impl Drop for DecrementOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl MessageBus for InMemoryBus {
    /// Queues the message for every group listening to its topic, or for none. A topic
    /// nobody listens to drops the message and succeeds.
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        let inner = &*self.inner;
        let hash = lane_hash(&envelope.correlation_id);
        // Fast path, under the read lock and without waiting: room in every group.
        let (listeners, reserved) = {
            let routes = inner.routes.read();
            let Some(listeners) = routes.get(envelope.topic.as_ref()) else {
                tracing::trace!(topic = %envelope.topic, message_id = %envelope.message_id,
                    "no subscriber: message dropped");
                return Ok(());
            };
            let mut reservation = Reservation::new(inner, listeners);
            if reservation.try_reserve_all() {
                return reservation.commit(hash, envelope);
            }
            // A group is full: let go of the lock, keep the room taken so far.
            (listeners.clone(), reservation.keep())
        };
        reservation::deliver(inner, &listeners, reserved, hash, envelope).await
    }

    /// Attaches the group `subscription.name`, with exactly `subscription.topics` as its
    /// routes from now on; it first receives what was queued while it was away.
    async fn subscribe(
        &self,
        subscription: Subscription,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<SubscriptionHandle, BusError> {
        let group = self.group(&subscription.name, subscription.concurrency);
        if group.claimed.swap(true, Ordering::SeqCst) {
            return Err(BusError::AlreadySubscribed(subscription.name));
        }
        let mut taken = Vec::with_capacity(group.lanes.len());
        for lane in &group.lanes {
            match lane.parked.lock().take() {
                Some(parked) => taken.push(parked),
                None => break,
            }
        }
        if taken.len() < group.lanes.len() {
            // Cannot happen while `claimed` is released only after every lane is parked.
            for (lane, parked) in group.lanes.iter().zip(taken) {
                *lane.parked.lock() = Some(parked);
            }
            group.claimed.store(false, Ordering::SeqCst);
            return Err(BusError::AlreadySubscribed(subscription.name));
        }
        self.route(&group, &subscription.topics);
        group.attach(&self.inner.activity);
        let (stop_tx, stop_rx) = watch::channel(false);
        let (detach_tx, detach_rx) = watch::channel(false);
        let attachment = Arc::new(Attachment {
            detach: detach_tx,
            live: AtomicUsize::new(taken.len()),
        });
        // Every receiver is in a worker before any task starts: whatever happens next,
        // a worker's drop parks its lane again.
        let workers: Vec<Worker> = taken
            .into_iter()
            .enumerate()
            .map(|(lane, parked)| {
                Worker::new(
                    self.inner.clone(),
                    group.clone(),
                    lane,
                    attachment.clone(),
                    parked,
                )
            })
            .collect();
        let workers = workers
            .into_iter()
            .map(|worker| {
                tokio::spawn(worker.run(handler.clone(), stop_rx.clone(), detach_rx.clone()))
            })
            .collect();
        tracing::debug!(subscriber = %subscription.name, topics = ?subscription.topics, "subscribed");
        Ok(SubscriptionHandle::new(subscription.name, stop_tx, workers))
    }

    /// Every group's messages queued or in hand, attached or away.
    async fn backlogs(&self) -> Result<Vec<(String, u64)>, BusError> {
        Ok(self
            .inner
            .groups
            .lock()
            .iter()
            .map(|(name, group)| (name.clone(), group.pending() as u64))
            .collect())
    }
}
