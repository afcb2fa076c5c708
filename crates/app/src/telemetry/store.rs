//! Per commit: orders that reach a final state (`StockReserved`, `Cancelled`) are
//! counted by that state, with the time since they were placed (domain time, from the
//! service's clock). A cancelled order that had reserved stock counts once for each.

use std::sync::Arc;

use async_trait::async_trait;
use messaging::MessageId;
use orders_app::{Commit, HandlingOutcome, MessageRecord, OrderStore, PruneReport, StoreError};
use orders_domain::{Order, OrderId, OrderStatus, Timestamp};

use metrics::{Counter, Histogram};

use super::{handles::Handles, metrics as names};

/// An [`OrderStore`] that records the orders its commits finish.
pub struct ObservedStore {
    inner: Arc<dyn OrderStore>,
    /// The finished-orders counter and flow-duration histogram, by final state.
    by_status: Handles<&'static str, (Counter, Histogram)>,
}

impl ObservedStore {
    /// Decorates `inner`.
    #[must_use]
    pub fn new(inner: Arc<dyn OrderStore>) -> Self {
        Self {
            inner,
            by_status: Handles::default(),
        }
    }
}

/// The final state `commit` moves its order into, with the flow's duration in seconds.
fn finished(commit: &Commit) -> Option<(&'static str, f64)> {
    let order = commit.order.as_ref()?;
    let changed = commit
        .inbox
        .as_ref()
        .is_none_or(|record| record.outcome == HandlingOutcome::Applied);
    let status = match order.status() {
        OrderStatus::StockReserved => "StockReserved",
        OrderStatus::Cancelled => "Cancelled",
        OrderStatus::AwaitingPayment | OrderStatus::Paid => return None,
    };
    changed.then(|| (status, flow_seconds(order)))
}

fn flow_seconds(order: &Order) -> f64 {
    (order.updated_at() - order.placed_at())
        .to_std()
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

#[async_trait]
impl OrderStore for ObservedStore {
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
        let finished = finished(&commit);
        let version = self.inner.commit(commit).await?;
        if let Some((status, seconds)) = finished {
            let (finished, durations) = self.by_status.get(&status, || {
                (
                    status,
                    (
                        metrics::counter!(names::ORDERS_FINISHED, "status" => status),
                        metrics::histogram!(names::ORDER_FLOW_DURATION, "status" => status),
                    ),
                )
            });
            finished.increment(1);
            durations.record(seconds);
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
