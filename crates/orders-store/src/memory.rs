//! The in-memory store: orders, outbox, inbox and message history in one mutex-guarded
//! state. A commit checks every precondition, then writes everything, under one lock, so
//! it is all-or-nothing like a database transaction.
//!
//! Memory stays proportional to the orders kept: sent outbox rows are dropped at once
//! (the history keeps a small record per message), inbox records are pruned after the
//! idempotency window.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, MutexGuard, PoisonError},
};

use async_trait::async_trait;
use orders_app::{
    Commit, Direction, InboxRecord, MessageRecord, OrderStore, Outbox, PruneReport, StoreError,
    messaging::{Envelope, MessageBus, MessageId},
};
use orders_domain::{Order, OrderId, Timestamp};
use tokio::sync::Notify;

/// The in-memory adapter of [`OrderStore`] and [`Outbox`].
#[derive(Default)]
pub struct InMemoryOrderStore {
    state: Mutex<State>,
    /// Serialises relays, so rows leave in commit order even with several relays.
    relay_lock: tokio::sync::Mutex<()>,
    /// Wakes the relay after a commit with outbox rows.
    committed: Notify,
}

impl std::fmt::Debug for InMemoryOrderStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("InMemoryOrderStore")
            .field("orders", &state.orders.len())
            .field("unsent", &state.outbox.len())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    orders: HashMap<OrderId, Order>,
    /// subscriber → message id → when handled.
    inbox: HashMap<String, HashMap<MessageId, Timestamp>>,
    /// Unsent messages, in commit order.
    outbox: VecDeque<Envelope>,
    idempotency_keys: HashMap<String, OrderId>,
    /// Per order: what it sent and received.
    history: HashMap<OrderId, Vec<MessageRecord>>,
}

impl InMemoryOrderStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How many orders are stored.
    #[must_use]
    pub fn order_count(&self) -> usize {
        self.lock().orders.len()
    }

    /// How many inbox records are kept (all subscribers).
    #[must_use]
    pub fn inbox_len(&self) -> usize {
        self.lock().inbox.values().map(HashMap::len).sum()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl OrderStore for InMemoryOrderStore {
    async fn load(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        Ok(self.lock().orders.get(&id).cloned())
    }

    async fn is_handled(
        &self,
        subscriber: &str,
        message_id: MessageId,
    ) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .inbox
            .get(subscriber)
            .is_some_and(|ids| ids.contains_key(&message_id)))
    }

    async fn find_by_idempotency_key(&self, key: &str) -> Result<Option<OrderId>, StoreError> {
        Ok(self.lock().idempotency_keys.get(key).copied())
    }

    async fn commit(&self, commit: Commit) -> Result<u64, StoreError> {
        let Commit {
            order,
            outbox,
            inbox,
            idempotency_key,
        } = commit;
        let mut state = self.lock();
        // Check every precondition first: nothing is written unless all hold.
        if let Some(InboxRecord {
            subscriber,
            message_id,
            ..
        }) = &inbox
        {
            if state
                .inbox
                .get(subscriber)
                .is_some_and(|ids| ids.contains_key(message_id))
            {
                return Err(StoreError::DuplicateMessage {
                    subscriber: subscriber.clone(),
                    message_id: *message_id,
                });
            }
        }
        if let Some(key) = &idempotency_key {
            if let Some(existing) = state.idempotency_keys.get(key) {
                return Err(StoreError::DuplicateIdempotencyKey(*existing));
            }
        }
        if let Some(order) = &order {
            let stored = state.orders.get(&order.id()).map(Order::version);
            let expected = order.version();
            let fresh = if expected == 0 {
                stored.is_none()
            } else {
                stored == Some(expected)
            };
            if !fresh {
                return Err(StoreError::Conflict {
                    order_id: order.id(),
                    expected,
                });
            }
        }
        // Write.
        let mut version = 0;
        if let Some(mut order) = order {
            version = order.version() + 1;
            order.mark_saved(version);
            let id = order.id();
            if let Some(key) = idempotency_key {
                state.idempotency_keys.insert(key, id);
            }
            state.orders.insert(id, order);
        }
        if let Some(record) = inbox {
            state
                .inbox
                .entry(record.subscriber.clone())
                .or_default()
                .insert(record.message_id, record.handled_at);
            state
                .history
                .entry(record.order_id)
                .or_default()
                .push(MessageRecord {
                    direction: Direction::Received,
                    message_id: record.message_id,
                    topic: record.topic,
                    outcome: Some(record.outcome),
                    at: record.handled_at,
                });
        }
        let added = !outbox.is_empty();
        for envelope in outbox {
            if let Ok(order_id) = envelope.correlation_id.parse::<OrderId>() {
                state
                    .history
                    .entry(order_id)
                    .or_default()
                    .push(MessageRecord {
                        direction: Direction::Sent,
                        message_id: envelope.message_id,
                        topic: envelope.topic.to_string(),
                        outcome: None,
                        at: envelope.timestamp,
                    });
            }
            state.outbox.push_back(envelope);
        }
        drop(state);
        if added {
            self.committed.notify_waiters();
        }
        Ok(version)
    }

    async fn messages(&self, id: OrderId) -> Result<Vec<MessageRecord>, StoreError> {
        Ok(self.lock().history.get(&id).cloned().unwrap_or_default())
    }

    async fn prune(&self, before: Timestamp) -> Result<PruneReport, StoreError> {
        let mut state = self.lock();
        let mut removed = 0u64;
        for ids in state.inbox.values_mut() {
            let len = ids.len();
            ids.retain(|_, at| *at >= before);
            removed += (len - ids.len()) as u64;
        }
        // The history of messages older than the window goes too; orders stay.
        state.history.retain(|_, records| {
            records.retain(|r| r.at >= before);
            !records.is_empty()
        });
        // Sent rows are dropped as soon as they are sent: nothing else to prune.
        Ok(PruneReport {
            inbox: removed,
            outbox: 0,
        })
    }
}

#[async_trait]
impl Outbox for InMemoryOrderStore {
    async fn relay(&self, limit: usize, bus: &dyn MessageBus) -> Result<usize, StoreError> {
        let _one_relay_at_a_time = self.relay_lock.lock().await;
        let batch: Vec<Envelope> = {
            let mut state = self.lock();
            let n = limit.min(state.outbox.len());
            state.outbox.drain(..n).collect()
        };
        let mut sent = 0;
        let mut rows = batch.into_iter();
        while let Some(envelope) = rows.next() {
            let message_id = envelope.message_id;
            // Keep a copy only until the bus accepted it.
            if let Err(error) = bus.publish(envelope.clone()).await {
                tracing::error!(%message_id, %error, "publish failed; message stays in the outbox");
                let mut state = self.lock();
                for back in std::iter::once(envelope).chain(rows).rev() {
                    state.outbox.push_front(back);
                }
                return Ok(sent);
            }
            sent += 1;
        }
        Ok(sent)
    }

    async fn unsent(&self) -> Result<u64, StoreError> {
        Ok(self.lock().outbox.len() as u64)
    }

    fn committed(&self) -> &Notify {
        &self.committed
    }
}
