//! Order change notifications, for blocking reads: `GET /orders/{id}?afterVersion=N&waitMs=M`
//! answers as soon as the order's version passes N (or after M ms), instead of making
//! clients poll in a tight loop (a poll storm that starves the flow it waits for).
//!
//! [`WatchedStore`] decorates any [`OrderStore`]: after a successful commit of an order
//! it wakes whoever waits on that order in [`OrderChanges`]. Only changes committed by
//! this process are seen; a waiter that misses one still answers at its deadline.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use async_trait::async_trait;
use messaging::MessageId;
use orders_app::{Commit, MessageRecord, OrderStore, PruneReport, StoreError};
use orders_domain::{Order, OrderId, OrderStatus, Timestamp};
use tokio::sync::Notify;

/// Who waits for which order.
#[derive(Debug, Default)]
pub struct OrderChanges {
    waiters: Mutex<HashMap<OrderId, Arc<Notify>>>,
}

impl OrderChanges {
    /// Wakes every waiter of `id`.
    pub fn notify(&self, id: OrderId) {
        let waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(notify) = waiters.get(&id) {
            notify.notify_waiters();
        }
    }

    /// A handle to wait on `id`; give it back with [`OrderChanges::release`].
    #[must_use]
    pub fn watch(&self, id: OrderId) -> Arc<Notify> {
        let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        waiters.entry(id).or_default().clone()
    }

    /// Gives a handle back; the entry goes when its last waiter is gone, so the map
    /// holds only orders someone is waiting for.
    pub fn release(&self, id: OrderId, notify: Arc<Notify>) {
        drop(notify);
        let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        if waiters.get(&id).is_some_and(|n| Arc::strong_count(n) == 1) {
            waiters.remove(&id);
        }
    }

    /// How many orders are being waited for.
    #[must_use]
    pub fn watched(&self) -> usize {
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Called after each successful commit of an order, with its id and new status.
pub type CommitObserver = Arc<dyn Fn(OrderId, OrderStatus) + Send + Sync>;

/// An [`OrderStore`] that reports every committed order change (to [`OrderChanges`],
/// or to any observer, e.g. the bench timing StockReserved).
pub struct WatchedStore {
    inner: Arc<dyn OrderStore>,
    observer: CommitObserver,
}

impl WatchedStore {
    /// Decorates `inner`, waking the waiters of `changes`.
    #[must_use]
    pub fn new(inner: Arc<dyn OrderStore>, changes: Arc<OrderChanges>) -> Self {
        Self::with_observer(inner, Arc::new(move |id, _| changes.notify(id)))
    }

    /// Decorates `inner`, calling `observer` after each commit of an order.
    #[must_use]
    pub fn with_observer(inner: Arc<dyn OrderStore>, observer: CommitObserver) -> Self {
        Self { inner, observer }
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
    async fn commit(&self, commit: Commit) -> Result<u64, StoreError> {
        let changed = commit.order.as_ref().map(|o| (o.id(), o.status()));
        let version = self.inner.commit(commit).await?;
        if let Some((id, status)) = changed {
            (self.observer)(id, status);
        }
        Ok(version)
    }
    async fn messages(&self, id: OrderId) -> Result<Vec<MessageRecord>, StoreError> {
        self.inner.messages(id).await
    }
    async fn prune(&self, before: Timestamp) -> Result<PruneReport, StoreError> {
        self.inner.prune(before).await
    }
}
