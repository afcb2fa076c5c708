//! A write-through cache of the orders still in flight and of recently handled message
//! ids, for the SQLite store: the embedded database has one writer (this process), so
//! what it committed last is what the file holds, and a flow's reads (inbox check, load)
//! need not cross to SQLite's worker threads. A miss always falls back to the database.
//!
//! Only orders waiting on another context (AwaitingPayment, Paid) are kept: a finished
//! order is dropped, so memory stays bounded by the orders in flight (and a hard cap).
//! A version conflict (a write from outside) evicts the order, so the next load reads
//! the file.

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, MutexGuard, PoisonError},
};

use orders_app::messaging::MessageId;
use orders_domain::{Order, OrderId, OrderStatus};

/// Shards, so no resize or lock is shared by every order.
const SHARDS: usize = 64;
/// At most this many orders and message ids per shard; past it, an arbitrary entry goes.
const PER_SHARD: usize = 1024;

#[derive(Default)]
struct Shard {
    orders: HashMap<OrderId, Box<Order>>,
    /// (subscriber, message id) pairs known to be in the inbox.
    handled: HashSet<(Box<str>, MessageId)>,
}

/// The cache.
pub(crate) struct WriteThroughCache {
    shards: Box<[Mutex<Shard>]>,
}

impl Default for WriteThroughCache {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl WriteThroughCache {
    fn shard(&self, id: u128) -> MutexGuard<'_, Shard> {
        lock(&self.shards[(id % SHARDS as u128) as usize])
    }

    /// The order as last committed by this process, if cached.
    pub(crate) fn order(&self, id: OrderId) -> Option<Order> {
        self.shard(id.as_uuid().as_u128())
            .orders
            .get(&id)
            .map(|o| (**o).clone())
    }

    /// Whether `subscriber` is known to have handled `message_id` (`false`: ask the file).
    pub(crate) fn handled(&self, subscriber: &str, message_id: MessageId) -> bool {
        let shard = self.shard(message_id.as_u128());
        shard
            .handled
            .contains(&(Box::<str>::from(subscriber), message_id))
    }

    /// Records a committed order (at its new version) and handled message.
    pub(crate) fn committed(&self, order: Option<Order>, handled: Option<(String, MessageId)>) {
        if let Some(order) = order {
            let id = order.id();
            let mut shard = self.shard(id.as_uuid().as_u128());
            if matches!(
                order.status(),
                OrderStatus::AwaitingPayment | OrderStatus::Paid
            ) {
                if shard.orders.len() >= PER_SHARD && !shard.orders.contains_key(&id) {
                    let victim = shard.orders.keys().next().copied();
                    if let Some(victim) = victim {
                        shard.orders.remove(&victim);
                    }
                }
                shard.orders.insert(id, Box::new(order));
            } else {
                shard.orders.remove(&id);
            }
        }
        if let Some((subscriber, message_id)) = handled {
            let mut shard = self.shard(message_id.as_u128());
            if shard.handled.len() >= PER_SHARD {
                let victim = shard.handled.iter().next().cloned();
                if let Some(victim) = victim {
                    shard.handled.remove(&victim);
                }
            }
            shard
                .handled
                .insert((subscriber.into_boxed_str(), message_id));
        }
    }

    /// Forgets every handled message id (after the inbox was pruned).
    pub(crate) fn forget_handled(&self) {
        for shard in &*self.shards {
            lock(shard).handled.clear();
        }
    }

    /// Forgets an order (after a conflict: someone else wrote it).
    pub(crate) fn evict(&self, id: OrderId) {
        self.shard(id.as_uuid().as_u128()).orders.remove(&id);
    }
}
