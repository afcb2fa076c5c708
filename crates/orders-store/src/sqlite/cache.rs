//! A write-through cache of the orders still in flight and of recently handled message
//! ids, for the SQLite store: the embedded database has one writer (this process), so
//! what it committed last is what the file holds, and a flow's reads (inbox check, load)
//! need not cross to SQLite's worker threads. A miss always falls back to the database.
//!
//! Orders waiting on another context (AwaitingPayment, Paid) are kept while they wait;
//! a finished one (StockReserved, Cancelled) stays only among the last
//! [`FINISHED_PER_SHARD`] of its shard, long enough for the client that follows it to
//! read its final state from memory. So memory stays bounded by the orders in flight
//! (and a hard cap).
//! A version conflict (a write from outside) evicts the order, so the next load reads
//! the file.

use std::collections::{HashMap, HashSet, VecDeque};

use orders_app::messaging::MessageId;
use orders_domain::{Order, OrderId, OrderStatus};
use parking_lot::{Mutex, MutexGuard};

/// Shards, so no resize or lock is shared by every order.
const SHARDS: usize = 64;
/// At most this many orders and message ids per shard; past it, an arbitrary entry goes.
const PER_SHARD: usize = 1024;
/// Finished orders kept per shard, the most recent ones (64 shards: 1,024 orders).
const FINISHED_PER_SHARD: usize = 16;

#[derive(Default)]
struct Shard {
    orders: HashMap<OrderId, Box<Order>>,
    /// The finished orders among `orders`, oldest first (an id may appear twice).
    finished: VecDeque<OrderId>,
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

impl WriteThroughCache {
    fn shard(&self, id: u128) -> MutexGuard<'_, Shard> {
        self.shards[(id % SHARDS as u128) as usize].lock()
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
            let finished = !matches!(
                order.status(),
                OrderStatus::AwaitingPayment | OrderStatus::Paid
            );
            if shard.orders.len() >= PER_SHARD && !shard.orders.contains_key(&id) {
                let victim = shard.orders.keys().next().copied();
                if let Some(victim) = victim {
                    shard.orders.remove(&victim);
                }
            }
            shard.orders.insert(id, Box::new(order));
            if finished {
                shard.finished.push_back(id);
                if shard.finished.len() > FINISHED_PER_SHARD
                    && let Some(oldest) = shard.finished.pop_front()
                    && oldest != id
                    && !shard.finished.contains(&oldest)
                    && shard.orders.get(&oldest).is_some_and(|o| {
                        !matches!(o.status(), OrderStatus::AwaitingPayment | OrderStatus::Paid)
                    })
                {
                    shard.orders.remove(&oldest);
                }
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
            shard.lock().handled.clear();
        }
    }

    /// Forgets an order (after a conflict: someone else wrote it).
    pub(crate) fn evict(&self, id: OrderId) {
        self.shard(id.as_uuid().as_u128()).orders.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::{TimeZone, Utc};
    use orders_domain::{
        CancellationReason, Currency, CustomerId, Money, OrderItem, ProductId, Quantity,
        ShippingAddress,
    };
    use rust_decimal::Decimal;

    use super::*;

    /// A new order whose id falls in shard `shard`.
    fn order_in_shard(shard: u128) -> Order {
        let now = Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap();
        let id = loop {
            let id = OrderId::random();
            if id.as_uuid().as_u128() % SHARDS as u128 == shard {
                break id;
            }
        };
        let item = OrderItem::new(
            ProductId::new("sku-1").unwrap(),
            Quantity::new(1).unwrap(),
            Money::new(Decimal::ONE, Currency::new("EUR").unwrap()).unwrap(),
        );
        let address = ShippingAddress::new("Main Street 1", "Berlin", "10115", "DE").unwrap();
        Order::place(
            id,
            CustomerId::new("c-1").unwrap(),
            vec![item],
            address,
            now,
        )
        .unwrap()
    }

    fn cancelled(mut order: Order) -> Order {
        let now = order.updated_at();
        let _: orders_domain::Transition = order
            .cancel(CancellationReason::new("test").unwrap(), now)
            .unwrap();
        order
    }

    #[test]
    fn a_finished_order_is_read_from_memory_until_newer_ones_push_it_out() {
        let cache = WriteThroughCache::default();
        let first = cancelled(order_in_shard(3));
        cache.committed(Some(first.clone()), None);
        assert_eq!(
            cache.order(first.id()).map(|o| o.status()),
            Some(OrderStatus::Cancelled)
        );

        for _ in 0..FINISHED_PER_SHARD {
            cache.committed(Some(cancelled(order_in_shard(3))), None);
        }
        assert!(
            cache.order(first.id()).is_none(),
            "the oldest finished order went"
        );
        assert!(cache.shards[3].lock().orders.len() <= FINISHED_PER_SHARD);
    }

    #[test]
    fn finished_orders_never_push_out_an_order_in_flight() {
        let cache = WriteThroughCache::default();
        let waiting = order_in_shard(5);
        cache.committed(Some(waiting.clone()), None);
        for _ in 0..3 * FINISHED_PER_SHARD {
            cache.committed(Some(cancelled(order_in_shard(5))), None);
        }
        assert_eq!(cache.order(waiting.id()), Some(waiting));
    }
}
