//! Order change notifications, for blocking reads: `GET /orders/{id}?afterVersion=N&waitMs=M`
//! answers as soon as the order's version passes N (or after M ms), instead of making
//! clients poll in a tight loop (a poll storm that starves the flow it waits for).
//!
//! [`WatchedStore`] decorates any [`OrderStore`]: after a successful commit that touches
//! an order (the order itself, or the inbox record of a message about it) it wakes
//! whoever waits on that order in [`OrderChanges`]. Only changes committed by this
//! process are seen; a waiter that misses one still answers at its deadline.
//!
//! The same commits feed the live page: [`OrderChanges::feed`] is a bounded broadcast of
//! changed order ids (`GET /events`; a receiver that falls more than
//! [`FEED_CAPACITY`] changes behind is told how many it missed and reloads, so a slow
//! client never makes memory grow), and [`OrderChanges::flow`] is the rolling window of
//! orders reaching a final state (`GET /flow`), fed by this process's commits.
//!
//! [`RelayedOutbox`] decorates an [`Outbox`] the same way for the relay's passes, so
//! whoever waits for the outbox to drain is woken instead of polling it.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use messaging::{MessageBus, MessageId};
use orders_app::{Commit, MessageRecord, OrderStore, Outbox, PruneReport, StoreError};
use orders_domain::{Order, OrderId, OrderStatus, Timestamp};
use parking_lot::Mutex;
use tokio::sync::{Notify, broadcast, watch};

use crate::http::flow::FlowWindow;

/// How many changes the feed holds for its slowest receiver before that one lags.
pub const FEED_CAPACITY: usize = 1024;

/// Called for every commit of this process that moves an order into a final state,
/// with that state and the time since the order was placed (the metrics of finished
/// orders, when telemetry is on).
pub type FinishedHook = Arc<dyn Fn(OrderStatus, Duration) + Send + Sync>;

/// Who waits for which order; the feed of changed orders; the flow window.
pub struct OrderChanges {
    waiters: Mutex<HashMap<OrderId, Arc<Notify>>>,
    /// Every changed order id, for `GET /events`.
    feed: broadcast::Sender<OrderId>,
    /// `true` once the service stops: open feeds end, so their connections close.
    closing: watch::Sender<bool>,
    /// Orders reaching a final state, over the last minute.
    flow: FlowWindow,
    /// Told of every order reaching a final state.
    on_finished: Option<FinishedHook>,
}

impl std::fmt::Debug for OrderChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderChanges")
            .field("flow", &self.flow)
            .field("on_finished", &self.on_finished.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for OrderChanges {
    fn default() -> Self {
        Self {
            waiters: Mutex::default(),
            feed: broadcast::Sender::new(FEED_CAPACITY),
            closing: watch::Sender::new(false),
            flow: FlowWindow::default(),
            on_finished: None,
        }
    }
}

impl OrderChanges {
    /// Calls `hook` for every commit of this process that moves an order into a final
    /// state (each time: an order cancelled after its stock was reserved counts twice).
    #[must_use]
    pub fn on_finished(mut self, hook: Option<FinishedHook>) -> Self {
        self.on_finished = hook;
        self
    }

    /// Wakes every waiter of `id` and tells the feed (a commit that left the order
    /// unchanged, or another replica's commit).
    pub fn notify(&self, id: OrderId) {
        {
            let waiters = self.waiters.lock();
            if let Some(notify) = waiters.get(&id) {
                notify.notify_waiters();
            }
        }
        // No receiver (no page open) is not an error.
        let _ = self.feed.send(id);
    }

    /// [`OrderChanges::notify`] for a commit of this process that left order `id` in
    /// `status`; an order reaching a final state is counted in the
    /// [`flow`](OrderChanges::flow).
    pub fn committed(
        &self,
        id: OrderId,
        status: OrderStatus,
        placed_at: Timestamp,
        updated_at: Timestamp,
    ) {
        if matches!(status, OrderStatus::StockReserved | OrderStatus::Cancelled) {
            let flow = (updated_at - placed_at).to_std().unwrap_or_default();
            if let Some(hook) = &self.on_finished {
                hook(status, flow);
            }
            self.flow.finished(id, status, flow);
        }
        self.notify(id);
    }

    /// A receiver of every changed order id from now on (bounded: see [`FEED_CAPACITY`]).
    #[must_use]
    pub fn feed(&self) -> broadcast::Receiver<OrderId> {
        self.feed.subscribe()
    }

    /// Turns `true` when the service stops ([`OrderChanges::close`]).
    #[must_use]
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Ends every open feed (`GET /events` streams), so a graceful shutdown does not
    /// wait for them.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Orders of this process reaching a final state, over the last minute.
    #[must_use]
    pub fn flow(&self) -> &FlowWindow {
        &self.flow
    }

    /// A handle to wait on `id`; give it back with [`OrderChanges::release`].
    #[must_use]
    pub fn watch(&self, id: OrderId) -> Arc<Notify> {
        let mut waiters = self.waiters.lock();
        waiters.entry(id).or_default().clone()
    }

    /// Gives a handle back; the entry goes when its last waiter is gone, so the map
    /// holds only orders someone is waiting for.
    pub fn release(&self, id: OrderId, notify: Arc<Notify>) {
        drop(notify);
        let mut waiters = self.waiters.lock();
        if waiters.get(&id).is_some_and(|n| Arc::strong_count(n) == 1) {
            waiters.remove(&id);
        }
    }

    /// Runs `check` until it gives a value, again after every change of `id`, until
    /// `timeout` passes; returns the value, or `None` at the deadline. The watch is
    /// registered before each check, so a change between check and wait still wakes it.
    pub async fn wait_for<T, F, Fut>(
        &self,
        id: OrderId,
        timeout: Duration,
        mut check: F,
    ) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notify = self.watch(id);
            let (found, timed_out) = {
                let changed = notify.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                match check().await {
                    Some(found) => (Some(found), false),
                    None => (
                        None,
                        tokio::time::timeout_at(deadline, changed).await.is_err(),
                    ),
                }
            };
            self.release(id, notify);
            if found.is_some() || timed_out {
                return found;
            }
        }
    }

    /// How many orders are being waited for.
    #[must_use]
    pub fn watched(&self) -> usize {
        self.waiters.lock().len()
    }
}

/// Called after each successful commit of an order, with its id and new status.
pub type CommitObserver = Arc<dyn Fn(OrderId, OrderStatus) + Send + Sync>;

/// An [`OrderStore`] that reports every committed order change (to [`OrderChanges`],
/// or to any observer, e.g. the bench timing StockReserved).
pub struct WatchedStore {
    inner: Arc<dyn OrderStore>,
    observer: CommitObserver,
    /// Woken for inbox-only commits too (a message about an order that left it unchanged).
    changes: Option<Arc<OrderChanges>>,
}

impl WatchedStore {
    /// Decorates `inner`, waking the waiters of `changes` on every commit that touches
    /// an order.
    #[must_use]
    pub fn new(inner: Arc<dyn OrderStore>, changes: Arc<OrderChanges>) -> Self {
        Self {
            inner,
            // The commit itself is reported to `changes` (see `commit`).
            observer: Arc::new(|_, _| {}),
            changes: Some(changes),
        }
    }

    /// Decorates `inner`, calling `observer` after each commit of an order.
    #[must_use]
    pub fn with_observer(inner: Arc<dyn OrderStore>, observer: CommitObserver) -> Self {
        Self {
            inner,
            observer,
            changes: None,
        }
    }
}

#[async_trait]
impl OrderStore for WatchedStore {
    async fn load(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        self.inner.load(id).await
    }
    async fn is_handled(
        &self,
        subscriber: &str,
        message_id: MessageId,
    ) -> Result<bool, StoreError> {
        self.inner.is_handled(subscriber, message_id).await
    }
    async fn find_by_idempotency_key(&self, key: &str) -> Result<Option<OrderId>, StoreError> {
        self.inner.find_by_idempotency_key(key).await
    }
    async fn due_for_payment(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<OrderId>, StoreError> {
        self.inner.due_for_payment(now, limit).await
    }
    async fn commit(&self, commit: Commit) -> Result<u64, StoreError> {
        let handled = commit.inbox.as_ref().map(|record| record.order_id);
        let changed = commit
            .order
            .as_ref()
            .map(|o| (o.id(), o.status(), o.placed_at(), o.updated_at()));
        let version = self.inner.commit(commit).await?;
        match (changed, handled, &self.changes) {
            (Some((id, status, placed_at, updated_at)), _, changes) => {
                (self.observer)(id, status);
                if let Some(changes) = changes {
                    changes.committed(id, status, placed_at, updated_at);
                }
            }
            (None, Some(id), Some(changes)) => changes.notify(id),
            _ => {}
        }
        Ok(version)
    }
    async fn messages(&self, id: OrderId) -> Result<Vec<MessageRecord>, StoreError> {
        self.inner.messages(id).await
    }
    async fn prune(&self, before: Timestamp) -> Result<PruneReport, StoreError> {
        self.inner.prune(before).await
    }
    async fn recent_orders(
        &self,
        limit: usize,
        customer: Option<&str>,
    ) -> Result<Vec<Order>, StoreError> {
        self.inner.recent_orders(limit, customer).await
    }
}

/// An [`Outbox`] that says when the relay is in a pass and wakes waiters after each one,
/// so "the outbox is drained" can be awaited (see `InProcessSystem::settle`).
pub struct RelayedOutbox {
    inner: Arc<dyn Outbox>,
    /// Relay passes in progress: rows taken but maybe not yet published.
    passes: AtomicUsize,
    /// Woken after every relay pass.
    relayed: Notify,
}

impl RelayedOutbox {
    /// Decorates `inner`.
    #[must_use]
    pub fn new(inner: Arc<dyn Outbox>) -> Self {
        Self {
            inner,
            passes: AtomicUsize::new(0),
            relayed: Notify::new(),
        }
    }

    /// Whether a relay pass is in progress.
    #[must_use]
    pub fn relaying(&self) -> bool {
        self.passes.load(Ordering::SeqCst) > 0
    }

    /// Woken after every relay pass (register with `notified()` before checking).
    #[must_use]
    pub fn relayed(&self) -> &Notify {
        &self.relayed
    }
}

#[async_trait]
impl Outbox for RelayedOutbox {
    async fn relay(&self, limit: usize, bus: &dyn MessageBus) -> Result<usize, StoreError> {
        self.passes.fetch_add(1, Ordering::SeqCst);
        let relayed = self.inner.relay(limit, bus).await;
        self.passes.fetch_sub(1, Ordering::SeqCst);
        self.relayed.notify_waiters();
        relayed
    }
    async fn unsent(&self) -> Result<u64, StoreError> {
        self.inner.unsent().await
    }
    fn committed(&self) -> &Notify {
        self.inner.committed()
    }
    async fn requeue_stalled(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.inner.requeue_stalled(before).await
    }
    async fn oldest_unsent(&self) -> Result<Option<Timestamp>, StoreError> {
        self.inner.oldest_unsent().await
    }
}
