//! The in-memory store: orders, outbox, inbox and message history, held in sharded,
//! mutex-guarded maps. A commit locks every shard it touches (always in the same order:
//! order shard, inbox shard, idempotency keys, outbox), checks every precondition, then
//! writes everything, so it is all-or-nothing like a database transaction.
//!
//! Why shards: one lock over everything made every handler wait while a big map grew
//! (a resize copies the whole table into fresh memory), which showed as stalls in the
//! paced-latency bench. With 64 shards each resize is 1/64 of the size and blocks only
//! the orders of its shard.
//!
//! Each shard also indexes the payment deadlines of its orders still AwaitingPayment
//! (ordered by deadline), so `due_for_payment` reads only the due ones.
//!
//! Memory stays proportional to the orders kept: sent outbox rows are dropped at once
//! (the history keeps a small record per message), inbox records and history are pruned
//! after the idempotency window.

use std::collections::{BTreeSet, HashMap, VecDeque};

use async_trait::async_trait;
use orders_app::{
    Commit, Direction, InboxRecord, MessageRecord, OrderStore, Outbox, PruneReport, StoreError,
    messaging::{Envelope, MessageBus, MessageId},
};
use orders_domain::{Order, OrderId, OrderStatus, Timestamp};
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Notify;

/// How many shards the order and inbox maps are split into.
const SHARDS: usize = 64;

/// The in-memory adapter of [`OrderStore`] and [`Outbox`].
pub struct InMemoryOrderStore {
    /// Orders and their history, by order id.
    orders: Box<[Mutex<OrderShard>]>,
    /// Handled message ids, by message id.
    inbox: Box<[Mutex<InboxShard>]>,
    idempotency_keys: Mutex<HashMap<String, OrderId>>,
    /// Unsent messages, in commit order, and how many a relay holds in hand (taken off
    /// the queue, not yet accepted by the bus): both count as unsent, so "nothing
    /// unsent" never shows while a message is between the store and the bus.
    outbox: Mutex<(VecDeque<Envelope>, u64)>,
    /// Serialises relays, so rows leave in commit order even with several relays.
    relay_lock: tokio::sync::Mutex<()>,
    /// Wakes the relay after a commit with outbox rows.
    committed: Notify,
}

#[derive(Default)]
struct OrderShard {
    orders: HashMap<OrderId, Box<Order>>,
    /// Per order: what it sent and received.
    history: HashMap<OrderId, Vec<MessageRecord>>,
    /// The latest message of each order still waiting on another context, to send again
    /// if it was lost (see [`Outbox::requeue_stalled`]).
    waiting: HashMap<OrderId, Box<Envelope>>,
    /// The index of payment deadlines: `(due at, order)` for every order of the shard
    /// still AwaitingPayment with a deadline, earliest first.
    deadlines: BTreeSet<(Timestamp, OrderId)>,
}

impl OrderShard {
    /// Keeps the deadline index in step with a write of `order` (a new version of an
    /// order, or a new one).
    fn index_deadline(&mut self, order: &Order) {
        let id = order.id();
        if let Some(due) = self.orders.get(&id).and_then(|o| o.payment_due_at()) {
            self.deadlines.remove(&(due, id));
        }
        if order.status() == OrderStatus::AwaitingPayment
            && let Some(due) = order.payment_due_at()
        {
            self.deadlines.insert((due, id));
        }
    }
}

/// message id → the subscribers that handled it, with when.
type InboxShard = HashMap<MessageId, Vec<(Box<str>, Timestamp)>>;

impl Default for InMemoryOrderStore {
    fn default() -> Self {
        Self {
            orders: (0..SHARDS).map(|_| Mutex::default()).collect(),
            inbox: (0..SHARDS).map(|_| Mutex::default()).collect(),
            idempotency_keys: Mutex::default(),
            outbox: Mutex::default(),
            relay_lock: tokio::sync::Mutex::new(()),
            committed: Notify::new(),
        }
    }
}

impl std::fmt::Debug for InMemoryOrderStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryOrderStore")
            .field("orders", &self.order_count())
            .field("unsent", &self.outbox.lock().0.len())
            .finish_non_exhaustive()
    }
}

fn shard_of(id: u128) -> usize {
    // Ids end in random bits (v7 order and message ids, v4 from elsewhere) or hashed
    // ones (v8 event ids): their low bits are well spread.
    (id % SHARDS as u128) as usize
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
        self.orders.iter().map(|s| s.lock().orders.len()).sum()
    }

    fn order_shard(&self, id: OrderId) -> MutexGuard<'_, OrderShard> {
        self.orders[shard_of(id.as_uuid().as_u128())].lock()
    }

    fn inbox_shard(&self, id: MessageId) -> MutexGuard<'_, InboxShard> {
        self.inbox[shard_of(id.as_u128())].lock()
    }
}

impl InMemoryOrderStore {
    /// The newest `limit` orders (of `customer` only, when given), newest first by when
    /// they were placed: ids are gathered shard by shard (no order is cloned but the ones
    /// answered), then sorted.
    fn newest(&self, limit: usize, customer: Option<&str>) -> Vec<Order> {
        let mut placed: Vec<(Timestamp, OrderId)> = Vec::new();
        for shard in &*self.orders {
            let shard = shard.lock();
            placed.extend(
                shard
                    .orders
                    .values()
                    .filter(|o| customer.is_none_or(|c| o.customer_id().as_str() == c))
                    .map(|o| (o.placed_at(), o.id())),
            );
        }
        placed.sort_unstable_by_key(|(at, id)| std::cmp::Reverse((*at, id.as_uuid())));
        placed.truncate(limit);
        placed
            .into_iter()
            .map(|(_, id)| id)
            .filter_map(|id| self.order_shard(id).orders.get(&id).map(|o| (**o).clone()))
            .collect()
    }
}

fn handled(shard: &InboxShard, subscriber: &str, message_id: MessageId) -> bool {
    shard
        .get(&message_id)
        .is_some_and(|subs| subs.iter().any(|(s, _)| &**s == subscriber))
}

fn waits_on_another_context(status: OrderStatus) -> bool {
    matches!(status, OrderStatus::AwaitingPayment | OrderStatus::Paid)
}

#[async_trait]
impl OrderStore for InMemoryOrderStore {
    async fn load(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        Ok(self.order_shard(id).orders.get(&id).map(|o| (**o).clone()))
    }

    async fn recent_orders(
        &self,
        limit: usize,
        customer: Option<&str>,
    ) -> Result<Vec<Order>, StoreError> {
        Ok(self.newest(limit, customer))
    }

    async fn is_handled(
        &self,
        subscriber: &str,
        message_id: MessageId,
    ) -> Result<bool, StoreError> {
        Ok(handled(
            &self.inbox_shard(message_id),
            subscriber,
            message_id,
        ))
    }

    async fn find_by_idempotency_key(&self, key: &str) -> Result<Option<OrderId>, StoreError> {
        Ok(self.idempotency_keys.lock().get(key).copied())
    }

    async fn commit(&self, commit: Commit) -> Result<u64, StoreError> {
        let Commit {
            order,
            outbox,
            inbox,
            idempotency_key,
        } = commit;
        let order_id = match (&order, &inbox) {
            (Some(order), _) => order.id(),
            (None, Some(record)) => record.order_id,
            (None, None) => return Ok(0),
        };
        // Lock order: order shard, inbox shard, idempotency keys, outbox.
        let mut shard = self.order_shard(order_id);
        let mut inbox_shard = inbox.as_ref().map(|r| self.inbox_shard(r.message_id));
        let mut keys = idempotency_key
            .as_ref()
            .map(|_| self.idempotency_keys.lock());
        // Check every precondition first: nothing is written unless all hold.
        if let (
            Some(InboxRecord {
                subscriber,
                message_id,
                ..
            }),
            Some(ids),
        ) = (&inbox, &inbox_shard)
            && handled(ids, subscriber, *message_id)
        {
            return Err(StoreError::DuplicateMessage {
                subscriber: subscriber.clone(),
                message_id: *message_id,
            });
        }
        if let (Some(key), Some(keys)) = (&idempotency_key, &keys)
            && let Some(existing) = keys.get(key)
        {
            return Err(StoreError::DuplicateIdempotencyKey(*existing));
        }
        if let Some(order) = &order {
            let stored = shard.orders.get(&order.id()).map(|o| o.version());
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
        let mut waiting = None;
        if let Some(mut order) = order {
            version = order.version() + 1;
            order.mark_saved(version);
            if let (Some(key), Some(keys)) = (idempotency_key, keys.as_mut()) {
                keys.insert(key, order_id);
            }
            waiting = Some(waits_on_another_context(order.status()));
            shard.index_deadline(&order);
            shard.orders.insert(order_id, Box::new(order));
        }
        if let (Some(record), Some(ids)) = (inbox, inbox_shard.as_mut()) {
            ids.entry(record.message_id)
                .or_default()
                .push((record.subscriber.into_boxed_str(), record.handled_at));
            shard
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
        if added {
            let history = shard.history.entry(order_id).or_default();
            for envelope in &outbox {
                history.push(MessageRecord {
                    direction: Direction::Sent,
                    message_id: envelope.message_id,
                    topic: envelope.topic.to_string(),
                    outcome: None,
                    at: envelope.timestamp,
                });
            }
        }
        match (waiting, outbox.last()) {
            (Some(true), Some(last)) => {
                shard.waiting.insert(order_id, Box::new(last.clone()));
            }
            (Some(false), _) => {
                shard.waiting.remove(&order_id);
            }
            _ => {}
        }
        if added {
            self.outbox.lock().0.extend(outbox);
        }
        drop((shard, inbox_shard, keys));
        if added {
            self.committed.notify_waiters();
        }
        Ok(version)
    }

    async fn due_for_payment(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<OrderId>, StoreError> {
        // The earliest `limit` of each shard, then the earliest `limit` of those.
        let mut due: Vec<(Timestamp, OrderId)> = Vec::new();
        for shard in &*self.orders {
            let shard = shard.lock();
            due.extend(
                shard
                    .deadlines
                    .iter()
                    .take_while(|(at, _)| *at <= now)
                    .take(limit)
                    .copied(),
            );
        }
        due.sort_unstable();
        Ok(due.into_iter().take(limit).map(|(_, id)| id).collect())
    }

    async fn messages(&self, id: OrderId) -> Result<Vec<MessageRecord>, StoreError> {
        Ok(self
            .order_shard(id)
            .history
            .get(&id)
            .cloned()
            .unwrap_or_default())
    }

    async fn prune(&self, before: Timestamp) -> Result<PruneReport, StoreError> {
        let mut removed = 0u64;
        for shard in &*self.inbox {
            let mut ids = shard.lock();
            ids.retain(|_, subscribers| {
                let len = subscribers.len();
                subscribers.retain(|(_, at)| *at >= before);
                removed += (len - subscribers.len()) as u64;
                !subscribers.is_empty()
            });
        }
        // The history of messages older than the window goes too; orders stay.
        for shard in &*self.orders {
            shard.lock().history.retain(|_, records| {
                records.retain(|r| r.at >= before);
                !records.is_empty()
            });
        }
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
            let mut outbox = self.outbox.lock();
            let n = limit.min(outbox.0.len());
            outbox.1 += n as u64;
            outbox.0.drain(..n).collect()
        };
        let mut sent = 0;
        let mut rows = batch.into_iter();
        while let Some(envelope) = rows.next() {
            let message_id = envelope.message_id;
            // Keep a copy only until the bus accepted it.
            if let Err(error) = bus.publish(envelope.clone()).await {
                tracing::error!(%message_id, %error, "publish failed; message stays in the outbox");
                let mut outbox = self.outbox.lock();
                let back: Vec<Envelope> = std::iter::once(envelope).chain(rows).collect();
                outbox.1 -= back.len() as u64;
                for envelope in back.into_iter().rev() {
                    outbox.0.push_front(envelope);
                }
                return Ok(sent);
            }
            self.outbox.lock().1 -= 1;
            sent += 1;
        }
        Ok(sent)
    }

    async fn unsent(&self) -> Result<u64, StoreError> {
        let outbox = self.outbox.lock();
        Ok(outbox.0.len() as u64 + outbox.1)
    }

    fn committed(&self) -> &Notify {
        &self.committed
    }

    /// The oldest queued row's timestamp (the rows of a relay pass in hand, older
    /// still, are not looked at: they are being published).
    async fn oldest_unsent(&self) -> Result<Option<Timestamp>, StoreError> {
        Ok(self
            .outbox
            .lock()
            .0
            .front()
            .map(|envelope| envelope.timestamp))
    }

    async fn requeue_stalled(&self, before: Timestamp) -> Result<u64, StoreError> {
        let mut again = Vec::new();
        for shard in &*self.orders {
            let shard = shard.lock();
            again.extend(shard.waiting.iter().filter_map(|(id, envelope)| {
                let order = shard.orders.get(id)?;
                (waits_on_another_context(order.status()) && order.updated_at() < before)
                    .then(|| (**envelope).clone())
            }));
        }
        let count = again.len() as u64;
        if count > 0 {
            self.outbox.lock().0.extend(again);
            self.committed.notify_waiters();
        }
        Ok(count)
    }
}
