//! The in-memory adapter of the bus port: one process, tokio tasks, bounded backlogs.
//!
//! How it works:
//!
//! * A consumer group is created the first time its name subscribes, and stays: each
//!   group owns `lanes` FIFO queues. A message goes to the lane that holds the earlier
//!   messages of its correlation id, as long as any of them is queued or in hand there,
//!   so messages of one order keep their order; otherwise to an idle lane (the least
//!   busy when none is idle), so one order's slow handler (a simulated delay, a commit
//!   waiting for its group) never holds up another order that happened to hash alike.
//! * A topic nobody has ever subscribed to has no route: publishing to it succeeds and
//!   the message is dropped (nobody listens, so nobody misses it). A group that is away
//!   still has its routes, so its messages are queued for its return.
//! * When the group is attached, one worker task per lane takes the lane's receiver.
//!   On unsubscribe (or a panicking handler) the receiver goes back to the lane, with the
//!   message in hand if any: a group that is away keeps queueing, and when it comes back
//!   under the same name it receives everything, in order. A panic in one lane detaches
//!   the whole group: every lane stops after its message in hand.
//! * A group holds at most `backlog_limit` messages, queued or in hand, over all its
//!   lanes. A publish first reserves room in every group it goes to, then queues the
//!   message everywhere at once: a publish is accepted by all its groups or by none.
//!   When a group is full, the [`OverflowPolicy`] decides: wait for room (backpressure)
//!   or refuse with [`BusError::BacklogFull`]. Either way the overflow is logged once per
//!   episode (until the backlog has drained to half). Nothing is ever dropped silently.
//! * The handler's result decides: `Ok` acks; `Retryable` retries on the same lane with
//!   exponential backoff (keeping order) up to `max_attempts`; `Permanent` or attempts
//!   exhausted records a [`DeadLetter`] (logged at ERROR, replayable).
//!
//! Idle accounting: `busy` counts the messages queued or in hand for attached groups.
//! Every change raises it before and lowers it after the group's own count changes, so
//! it may over-count for an instant but never under-counts: [`InMemoryBus::wait_idle`]
//! cannot return while a message (or a follow-up published by a handler) is pending.

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasherDefault, Hasher},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
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
    /// The publisher waits for room (logged at WARN once per episode).
    Backpressure,
    /// The publish fails with [`BusError::BacklogFull`] (logged at ERROR once per
    /// episode); nothing already accepted is lost.
    Reject,
}

/// Redelivery of messages whose handler returned a retryable error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, including the first; then the message is dead-lettered.
    /// `0` counts as `1`.
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
    /// Messages a group may have queued or in hand, over all its lanes.
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
    /// Sets the backlog limit per group (at least 1).
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
    /// Sets how many dead letters are kept (at least 1).
    #[must_use]
    pub fn dead_letter_limit(mut self, limit: usize) -> Self {
        self.dead_letter_limit = limit.max(1);
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

struct Inner {
    config: InMemoryBusConfig,
    /// topic → the groups listening to it. Read on every publish, written on subscribe.
    routes: RwLock<HashMap<String, Listeners, BuildHasherDefault<FxHasher>>>,
    /// group name → group. Never locked on the publish or handling paths.
    groups: Mutex<HashMap<String, Arc<Group>>>,
    /// Kept for inspection and replay, oldest first, at most `dead_letter_limit`.
    dead_letters: Mutex<VecDeque<DeadLetter>>,
    /// Messages queued or in hand for attached groups. May over-count for an instant,
    /// never under-counts (see the module docs): the bus is idle when this is 0.
    busy: AtomicUsize,
    /// Tasks inside `wait_idle`, so the hot path skips `idle` when nobody waits.
    idle_waiters: AtomicUsize,
    /// Woken when `busy` reaches zero.
    idle: Notify,
}

/// The lane choice of one group. Keys are lane hashes of correlation ids; an entry lives
/// while its id has messages queued or in hand in the group, so the map is bounded by the
/// backlog, not by the number of orders ever seen.
struct Affinity {
    /// correlation hash → (its lane, its messages queued or in hand).
    keys: HashMap<u64, (usize, usize), BuildHasherDefault<FxHasher>>,
    /// Messages queued or in hand, per lane.
    load: Box<[usize]>,
    /// Where the search for an idle lane starts next, so idle lanes take turns.
    cursor: usize,
}

impl Affinity {
    fn new(lanes: usize) -> Self {
        Self {
            keys: HashMap::default(),
            load: vec![0; lanes].into_boxed_slice(),
            cursor: 0,
        }
    }

    /// The lane for one more message of `hash`: the lane its pending messages are on,
    /// else the first idle lane from the cursor, else the least busy one.
    fn assign(&mut self, hash: u64) -> usize {
        if let Some((lane, count)) = self.keys.get_mut(&hash) {
            *count += 1;
            self.load[*lane] += 1;
            return *lane;
        }
        let lanes = self.load.len();
        let mut best = self.cursor % lanes;
        for step in 0..lanes {
            let lane = (self.cursor + step) % lanes;
            if self.load[lane] == 0 {
                best = lane;
                break;
            }
            if self.load[lane] < self.load[best] {
                best = lane;
            }
        }
        self.cursor = best + 1;
        self.load[best] += 1;
        self.keys.insert(hash, (best, 1));
        best
    }

    /// One message of `hash` is done with (handled, dead-lettered or never queued).
    fn release(&mut self, hash: u64) {
        if let Some((lane, count)) = self.keys.get_mut(&hash) {
            self.load[*lane] = self.load[*lane].saturating_sub(1);
            *count -= 1;
            if *count == 0 {
                self.keys.remove(&hash);
            }
        }
    }
}

impl Group {
    /// Picks the lane of one more message of `hash`.
    fn assign(&self, hash: u64) -> usize {
        if self.lanes.len() <= 1 {
            return 0;
        }
        lock(&self.affinity).assign(hash)
    }

    /// Forgets one message of `hash` (see [`Affinity::release`]).
    fn unassign(&self, hash: u64) {
        if self.lanes.len() > 1 {
            lock(&self.affinity).release(hash);
        }
    }
}

/// Bit of [`Group::state`] set while workers consume the group.
const ATTACHED: u64 = 1 << 63;
/// Bits of [`Group::state`] that count the messages queued or in hand.
const COUNT: u64 = ATTACHED - 1;

struct Group {
    /// The consumer-group name, for errors, logs and dead letters.
    name: String,
    /// One FIFO per lane; [`Group::affinity`] picks a message's lane.
    lanes: Box<[Lane]>,
    /// Which lane each correlation id with pending messages is on, and how busy each
    /// lane is: per-order order without head-of-line blocking between orders.
    affinity: Mutex<Affinity>,
    /// `ATTACHED | pending`, where pending is the number of messages queued or in hand
    /// (including room reserved by publishers). One word, so the attached flag and the
    /// count change together and `busy` can follow them exactly.
    state: AtomicU64,
    /// Held by a subscription from `subscribe` until its last worker has parked its
    /// lane: the guard against two subscriptions under one name.
    claimed: AtomicBool,
    /// The topics of the latest subscription (its routes).
    topics: Mutex<Vec<String>>,
    /// Publishers waiting for room, so the handling path only wakes `room` when needed.
    waiting: AtomicUsize,
    /// Woken (one publisher at a time) when a message of this group is done.
    room: Notify,
    /// Set from the first refused or waiting publish until the backlog is down to half:
    /// the overflow is logged once per episode, not once per message.
    overflowing: AtomicBool,
}

struct Lane {
    /// Unbounded: the group's `state` count is the bound, over all its lanes.
    tx: mpsc::UnboundedSender<Arc<Envelope>>,
    /// The receiver while no worker holds it, plus a message a stopped worker had in hand.
    parked: Mutex<Option<Parked>>,
}

struct Parked {
    rx: mpsc::UnboundedReceiver<Arc<Envelope>>,
    /// The message a stopped worker had in hand, and the attempts already made.
    in_hand: Option<(Arc<Envelope>, u32)>,
}

/// What the workers of one subscription share.
struct Attachment {
    /// Raised when a handler panics, so every lane of the group stops.
    detach: watch::Sender<bool>,
    /// Lane workers still running; the last one out detaches the group.
    live: AtomicUsize,
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
                routes: RwLock::new(HashMap::default()),
                groups: Mutex::new(HashMap::new()),
                dead_letters: Mutex::new(VecDeque::new()),
                busy: AtomicUsize::new(0),
                idle_waiters: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        }
    }

    /// The dead letters recorded so far (oldest first).
    #[must_use]
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        lock(&self.inner.dead_letters).iter().cloned().collect()
    }

    /// Removes the dead letters of `subscriber` and queues them for that group again
    /// (only that group, whatever the topic's other listeners), with fresh attempts.
    /// Returns how many were redelivered.
    ///
    /// # Errors
    /// A [`BusError`] from enqueueing (a full backlog under [`OverflowPolicy::Reject`]);
    /// the letters not yet redelivered stay recorded, as they do if the future is dropped.
    pub async fn redeliver_dead_letters(&self, subscriber: &str) -> Result<usize, BusError> {
        let Some(group) = lock(&self.inner.groups).get(subscriber).cloned() else {
            return Ok(0);
        };
        let listeners: Listeners = Arc::from([group]);
        let mut pending = Unsent {
            inner: &self.inner,
            letters: {
                let mut all = lock(&self.inner.dead_letters);
                let (mine, rest): (VecDeque<_>, VecDeque<_>) =
                    all.drain(..).partition(|d| d.subscriber == subscriber);
                *all = rest;
                mine
            },
        };
        let mut count = 0;
        while let Some(letter) = pending.letters.front() {
            let envelope = letter.envelope.clone();
            self.inner
                .deliver(&listeners, 0, lane_hash(&envelope.correlation_id), envelope)
                .await?;
            pending.letters.pop_front();
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
        lock(&self.inner.groups)
            .get(subscriber)
            .map_or(0, |g| count_of(g.state.load(Ordering::SeqCst)))
    }

    /// Whether a subscription named `subscriber` is running (false once a panicking
    /// handler or an unsubscribe has detached it and all its lanes have stopped).
    #[must_use]
    pub fn is_attached(&self, subscriber: &str) -> bool {
        lock(&self.inner.groups)
            .get(subscriber)
            .is_some_and(|g| g.claimed.load(Ordering::SeqCst))
    }

    /// Whether every attached group has nothing queued or in hand. Groups that are away
    /// (detached) do not count.
    #[must_use]
    pub fn is_idle(&self) -> bool {
        self.inner.busy.load(Ordering::SeqCst) == 0
    }

    /// Waits until [`InMemoryBus::is_idle`], or `timeout` passes. Returns whether idle.
    /// Groups that are detached (away) are not waited for. A message a handler publishes
    /// before returning is pending before the message it handles is done, so a whole
    /// cascade is waited for.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let inner = &*self.inner;
        inner.idle_waiters.fetch_add(1, Ordering::SeqCst);
        let _waiter = DecrementOnDrop(&inner.idle_waiters);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Created before the check: `notify_waiters` reaches it from here on.
            let notified = inner.idle.notified();
            if self.is_idle() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_idle();
            }
        }
    }

    fn group(&self, name: &str, concurrency: Option<usize>) -> Arc<Group> {
        let mut groups = lock(&self.inner.groups);
        let lanes = concurrency.unwrap_or(self.inner.config.lanes).max(1);
        groups
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(Group {
                    name: name.to_owned(),
                    affinity: Mutex::new(Affinity::new(lanes)),
                    lanes: (0..lanes)
                        .map(|_| {
                            let (tx, rx) = mpsc::unbounded_channel();
                            Lane {
                                tx,
                                parked: Mutex::new(Some(Parked { rx, in_hand: None })),
                            }
                        })
                        .collect(),
                    state: AtomicU64::new(0),
                    claimed: AtomicBool::new(false),
                    topics: Mutex::new(Vec::new()),
                    waiting: AtomicUsize::new(0),
                    room: Notify::new(),
                    overflowing: AtomicBool::new(false),
                })
            })
            .clone()
    }

    /// Makes `topics` the routes of `group`: added where missing, removed from topics
    /// its previous subscription listened to and this one does not.
    fn route(&self, group: &Arc<Group>, topics: &[String]) {
        let mut routes = self
            .inner
            .routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut current = lock(&group.topics);
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

impl Inner {
    /// Lowers `busy` by `n` and wakes `wait_idle` when it reaches zero.
    fn busy_sub(&self, n: usize) {
        if self.busy.fetch_sub(n, Ordering::SeqCst) == n
            && self.idle_waiters.load(Ordering::SeqCst) > 0
        {
            self.idle.notify_waiters();
        }
    }

    /// Takes room for one message in `group`, or returns false when it is full.
    fn try_reserve(&self, group: &Group) -> bool {
        // Raised first: should the group detach meanwhile, `busy` over-counts, never under.
        self.busy.fetch_add(1, Ordering::SeqCst);
        let limit = self.config.backlog_limit.max(1) as u64;
        let mut state = group.state.load(Ordering::SeqCst);
        loop {
            if state & COUNT >= limit {
                self.busy_sub(1);
                return false;
            }
            match group.state.compare_exchange_weak(
                state,
                state + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break,
                Err(actual) => state = actual,
            }
        }
        if state & ATTACHED == 0 {
            // Away: the message waits for the group's return and keeps nobody busy.
            self.busy_sub(1);
        }
        true
    }

    /// Gives back room for one message of `group`: handled, dead-lettered, or a
    /// reservation that was not used.
    fn release(&self, group: &Group) {
        let before = group.state.fetch_sub(1, Ordering::SeqCst);
        if before & ATTACHED != 0 {
            self.busy_sub(1);
        }
        if group.overflowing.load(Ordering::Relaxed)
            && count_of(before) <= self.config.backlog_limit / 2 + 1
            && group.overflowing.swap(false, Ordering::AcqRel)
        {
            tracing::info!(subscriber = %group.name, "backlog drained: overflow over");
        }
        if group.waiting.load(Ordering::SeqCst) > 0 {
            group.room.notify_one();
        }
    }

    /// Marks `group` attached, counting what it already has as busy.
    fn attach(&self, group: &Group) {
        let mut state = group.state.load(Ordering::SeqCst);
        loop {
            let pending = count_of(state);
            // Raised before the flag is set: over-count for an instant, never under.
            self.busy.fetch_add(pending, Ordering::SeqCst);
            match group.state.compare_exchange(
                state,
                state | ATTACHED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return,
                Err(actual) => {
                    self.busy_sub(pending);
                    state = actual;
                }
            }
        }
    }

    /// Marks `group` away: what it has no longer keeps the bus busy, and its name is
    /// free for the next subscription.
    fn detach(&self, group: &Group) {
        let before = group.state.fetch_and(!ATTACHED, Ordering::SeqCst);
        group.claimed.store(false, Ordering::SeqCst);
        // Last, so a woken `wait_idle` already sees the name free.
        self.busy_sub(count_of(before));
    }

    /// Logs the start of an overflow episode of `group`.
    fn overflow_started(&self, group: &Group) {
        if group.overflowing.swap(true, Ordering::AcqRel) {
            return;
        }
        let limit = self.config.backlog_limit;
        match self.config.overflow {
            OverflowPolicy::Reject => tracing::error!(subscriber = %group.name, limit,
                "backlog full: publishes are refused until the subscriber catches up"),
            OverflowPolicy::Backpressure => tracing::warn!(subscriber = %group.name, limit,
                "backlog full: publishers wait until the subscriber catches up"),
        }
    }

    /// Waits until `group` has room, and takes it. Cancel-safe: nothing is held while
    /// waiting.
    async fn reserve_waiting(&self, group: &Group) {
        group.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = DecrementOnDrop(&group.waiting);
        loop {
            let notified = group.room.notified();
            tokio::pin!(notified);
            // Registered before the check, so a release in between is not missed.
            notified.as_mut().enable();
            if self.try_reserve(group) {
                return;
            }
            notified.await;
        }
    }

    /// Queues `envelope` for every group of `listeners`, or for none. `hash` picks the
    /// lane. The first `reserved` groups already hold room for it.
    async fn deliver(
        &self,
        listeners: &[Arc<Group>],
        reserved: usize,
        hash: u64,
        envelope: Envelope,
    ) -> Result<(), BusError> {
        let mut reservation = Reservation {
            inner: self,
            listeners,
            reserved,
        };
        while let Some(group) = listeners.get(reservation.reserved) {
            if !self.try_reserve(group) {
                self.overflow_started(group);
                match self.config.overflow {
                    OverflowPolicy::Reject => return Err(self.full(group)),
                    OverflowPolicy::Backpressure => self.reserve_waiting(group).await,
                }
            }
            reservation.reserved += 1;
        }
        reservation.commit(hash, envelope)
    }

    fn full(&self, group: &Group) -> BusError {
        BusError::BacklogFull {
            subscriber: group.name.clone(),
            limit: self.config.backlog_limit,
        }
    }

    fn record_dead_letter(&self, letter: DeadLetter) {
        tracing::error!(
            subscriber = %letter.subscriber, topic = %letter.envelope.topic,
            message_id = %letter.envelope.message_id, correlation_id = %letter.envelope.correlation_id,
            attempts = letter.attempts, error = %letter.error, "message dead-lettered"
        );
        let mut letters = lock(&self.dead_letters);
        if letters.len() >= self.config.dead_letter_limit.max(1)
            && let Some(old) = letters.pop_front()
        {
            tracing::error!(subscriber = %old.subscriber, message_id = %old.envelope.message_id,
                "dead-letter store full: oldest dead letter forgotten");
        }
        letters.push_back(letter);
    }
}

/// Room taken in the first `reserved` groups of `listeners` for one message. Given back
/// on drop unless committed: a refused or cancelled publish leaves no trace.
struct Reservation<'a> {
    inner: &'a Inner,
    listeners: &'a [Arc<Group>],
    reserved: usize,
}

impl Reservation<'_> {
    /// Queues the message in every reserved group.
    fn commit(mut self, hash: u64, envelope: Envelope) -> Result<(), BusError> {
        let listeners = self.listeners;
        let groups = &listeners[..std::mem::take(&mut self.reserved)];
        let envelope = Arc::new(envelope);
        let mut result = Ok(());
        for group in groups {
            let lane = &group.lanes[group.assign(hash)];
            if lane.tx.send(envelope.clone()).is_err() {
                // Cannot happen: a lane's receiver is always held or parked.
                tracing::error!(subscriber = %group.name, "lane closed: message not queued");
                group.unassign(hash);
                self.inner.release(group);
                result = Err(BusError::Closed);
            }
        }
        result
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        for group in &self.listeners[..self.reserved] {
            self.inner.release(group);
        }
    }
}

/// Dead letters taken out for redelivery and not yet queued: put back on drop.
struct Unsent<'a> {
    inner: &'a Inner,
    letters: VecDeque<DeadLetter>,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if !self.letters.is_empty() {
            let mut all = lock(&self.inner.dead_letters);
            for letter in self.letters.drain(..).rev() {
                all.push_front(letter);
            }
        }
    }
}

struct DecrementOnDrop<'a>(&'a AtomicUsize);

impl Drop for DecrementOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A lane's consumer. However its task ends (stop, panicking handler, runtime shut
/// down), its drop gives the receiver and the message in hand back to the lane; the last
/// worker of a subscription detaches the group.
struct Worker {
    inner: Arc<Inner>,
    group: Arc<Group>,
    /// Index of the lane in `group.lanes`, where the drop parks `rx`.
    lane: usize,
    attachment: Arc<Attachment>,
    /// Always `Some` until the drop takes it back to the lane.
    rx: Option<mpsc::UnboundedReceiver<Arc<Envelope>>>,
    /// The message being handled or waiting for a retry, and the attempts made so far.
    in_hand: Option<(Arc<Envelope>, u32)>,
}

/// Whether the worker goes on after a message.
enum Next {
    Continue,
    Stop,
}

impl Worker {
    async fn run(
        mut self,
        handler: Arc<dyn MessageHandler>,
        mut stop: watch::Receiver<bool>,
        mut detach: watch::Receiver<bool>,
    ) {
        loop {
            if self.in_hand.is_none() {
                // Between messages: the only place a worker stops with a message queued.
                if stopping(&stop) || stopping(&detach) {
                    return;
                }
                let Some(rx) = self.rx.as_mut() else { return };
                // The lane first: with a message ready the stop signals are not even
                // polled (they were checked just above). Not `try_recv`: it parks the
                // thread when it meets a send in progress.
                let envelope = tokio::select! {
                    biased;
                    next = rx.recv() => match next {
                        Some(envelope) => envelope,
                        None => return,
                    },
                    _ = stop.changed() => return,
                    _ = detach.changed() => return,
                };
                self.in_hand = Some((envelope, 0));
            }
            if let Next::Stop = self.handle(&*handler, &mut stop, &mut detach).await {
                return;
            }
        }
    }

    /// Handles the message in hand until it is acked, dead-lettered, or the worker is
    /// stopped during a retry backoff (then it stays in hand, to be parked).
    async fn handle(
        &mut self,
        handler: &dyn MessageHandler,
        stop: &mut watch::Receiver<bool>,
        detach: &mut watch::Receiver<bool>,
    ) -> Next {
        let Some((envelope, _)) = &self.in_hand else {
            return Next::Continue;
        };
        let envelope = envelope.clone();
        let span = tracing::info_span!("handle", subscriber = %self.group.name, topic = %envelope.topic,
            message_id = %envelope.message_id, correlation_id = %envelope.correlation_id,
            causation_id = ?envelope.causation_id);
        let retry = self.inner.config.retry;
        loop {
            // Counted before the call, so an attempt that panics counts too.
            let attempt = match &mut self.in_hand {
                Some((_, attempts)) => {
                    *attempts += 1;
                    *attempts
                }
                None => return Next::Continue,
            };
            let error = match handler.handle(&envelope).instrument(span.clone()).await {
                Ok(()) => {
                    self.finish();
                    return Next::Continue;
                }
                Err(error) => error,
            };
            if let HandlerError::Retryable(_) = error
                && attempt < retry.max_attempts.max(1)
            {
                let wait = retry.backoff(attempt);
                tracing::warn!(parent: &span, attempt, ?wait, error = %error, "handler failed, will retry");
                tokio::select! {
                    biased;
                    // Stopped: the message stays in hand and is parked with the lane.
                    _ = stop.changed() => return Next::Stop,
                    _ = detach.changed() => return Next::Stop,
                    () = tokio::time::sleep(wait) => continue,
                }
            }
            // Recorded before the message is done, so `wait_idle` sees the letter.
            self.inner.record_dead_letter(DeadLetter {
                subscriber: self.group.name.clone(),
                envelope: (*envelope).clone(),
                error,
                attempts: attempt,
                at: Utc::now(),
            });
            self.finish();
            return Next::Continue;
        }
    }

    /// The message in hand is done with: its lane and its room are given back.
    fn finish(&mut self) {
        if let Some((envelope, _)) = self.in_hand.take() {
            self.group.unassign(lane_hash(&envelope.correlation_id));
            self.inner.release(&self.group);
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(rx) = self.rx.take() {
            *lock(&self.group.lanes[self.lane].parked) = Some(Parked {
                rx,
                in_hand: self.in_hand.take(),
            });
        }
        if std::thread::panicking() {
            tracing::error!(subscriber = %self.group.name,
                "handler panicked: subscriber detached, message kept for its return");
            self.attachment.detach.send_replace(true);
        }
        if self.attachment.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.inner.detach(&self.group);
            tracing::debug!(subscriber = %self.group.name, "detached");
        }
    }
}

/// Whether the stop signal was raised (or its sender is gone).
fn stopping(signal: &watch::Receiver<bool>) -> bool {
    !matches!(signal.has_changed(), Ok(false))
}

fn count_of(state: u64) -> usize {
    usize::try_from(state & COUNT).unwrap_or(usize::MAX)
}

/// The FxHash word step (rustc's hasher): fast on short keys like topics and ids. Not
/// resistant to chosen collisions, which is fine for keys our own code picks.
#[derive(Default, Clone, Copy)]
struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 56));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

/// The lane hash of a correlation id: stable for the life of the process.
fn lane_hash(correlation_id: &str) -> u64 {
    let mut hasher = FxHasher::default();
    hasher.write(correlation_id.as_bytes());
    // Fx leaves the low bits weak; mix them (murmur3's finalizer), so distinct ids
    // rarely share a key (ids that do merely share a lane).
    let mut h = hasher.finish();
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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
            let routes = inner
                .routes
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(listeners) = routes.get(envelope.topic.as_ref()) else {
                tracing::trace!(topic = %envelope.topic, message_id = %envelope.message_id,
                    "no subscriber: message dropped");
                return Ok(());
            };
            let mut reservation = Reservation {
                inner,
                listeners,
                reserved: 0,
            };
            while let Some(group) = listeners.get(reservation.reserved) {
                if !inner.try_reserve(group) {
                    break;
                }
                reservation.reserved += 1;
            }
            if reservation.reserved == listeners.len() {
                return reservation.commit(hash, envelope);
            }
            // A group is full: let go of the lock, keep the room taken so far.
            let reserved = std::mem::take(&mut reservation.reserved);
            (listeners.clone(), reserved)
        };
        inner.deliver(&listeners, reserved, hash, envelope).await
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
            match lock(&lane.parked).take() {
                Some(parked) => taken.push(parked),
                None => break,
            }
        }
        if taken.len() < group.lanes.len() {
            // Cannot happen while `claimed` is released only after every lane is parked.
            for (lane, parked) in group.lanes.iter().zip(taken) {
                *lock(&lane.parked) = Some(parked);
            }
            group.claimed.store(false, Ordering::SeqCst);
            return Err(BusError::AlreadySubscribed(subscription.name));
        }
        self.route(&group, &subscription.topics);
        self.inner.attach(&group);
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
            .map(|(lane, parked)| Worker {
                inner: self.inner.clone(),
                group: group.clone(),
                lane,
                attachment: attachment.clone(),
                rx: Some(parked.rx),
                in_hand: parked.in_hand,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_bound() {
        let retry = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        };
        let waits: Vec<u128> = (1..=5).map(|a| retry.backoff(a).as_millis()).collect();
        assert_eq!(waits, vec![10, 20, 40, 50, 50]);
        assert_eq!(retry.backoff(200), Duration::from_millis(50));
    }

    #[test]
    fn an_order_with_pending_messages_stays_on_its_lane() {
        let mut affinity = Affinity::new(4);
        let order = lane_hash("order-1");
        let lane = affinity.assign(order);
        // Other orders arrive meanwhile; the order's next messages follow its first.
        affinity.assign(lane_hash("order-2"));
        affinity.assign(lane_hash("order-3"));
        assert_eq!(affinity.assign(order), lane);
        affinity.release(order);
        assert_eq!(affinity.assign(order), lane);
    }

    #[test]
    fn orders_without_pending_messages_go_to_idle_lanes() {
        let mut affinity = Affinity::new(4);
        let lanes: Vec<usize> = (0..4)
            .map(|n| affinity.assign(lane_hash(&format!("order-{n}"))))
            .collect();
        let mut distinct = lanes.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            4,
            "two orders share a lane while one is idle: {lanes:?}"
        );
    }

    #[test]
    fn with_every_lane_busy_a_new_order_takes_the_least_busy_one() {
        let mut affinity = Affinity::new(3);
        let busy = lane_hash("busy");
        let busy_lane = affinity.assign(busy);
        affinity.assign(busy);
        let others: Vec<usize> = ["a", "b"]
            .iter()
            .map(|id| affinity.assign(lane_hash(id)))
            .collect();
        assert!(!others.contains(&busy_lane));
        // Loads are now 2, 1, 1: a new order must not queue behind the busy lane.
        let lane = affinity.assign(lane_hash("new"));
        assert_ne!(lane, busy_lane);
    }

    #[test]
    fn a_released_order_is_forgotten_so_the_map_stays_bounded() {
        let mut affinity = Affinity::new(8);
        for n in 0..10_000 {
            let key = lane_hash(&format!("order-{n}"));
            affinity.assign(key);
            affinity.assign(key);
            affinity.release(key);
            affinity.release(key);
        }
        assert!(affinity.keys.is_empty());
        assert!(affinity.load.iter().all(|&n| n == 0));
    }
}
