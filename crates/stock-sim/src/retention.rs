//! The clock, and forgetting: a shard of the ledger remembers when each order was last
//! asked about and forgets it once that is longer ago than the idempotency window, so
//! the ledger's memory stays flat under sustained load instead of growing with every
//! order. Forgetting is safe because the ids are derived from the order id: an order
//! asked about again gets the same id as before.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Tells the time: when an answer happened, and when a remembered order is old enough to
/// forget. [`SystemClock`] in production; tests pass their own to cross the idempotency
/// window without waiting.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The records of the orders whose id falls in one shard, each with when it was last
/// touched, and the touches in time order, so that forgetting the expired ones costs
/// what they are, not a scan of the shard.
#[derive(Debug)]
pub(crate) struct Shard<R> {
    records: HashMap<Uuid, Entry<R>>,
    /// (when, order) of every insert and every later touch, oldest first.
    touches: VecDeque<(DateTime<Utc>, Uuid)>,
}

/// A record and when it was last touched. Records are boxed so the table entries stay
/// small and a resize copies little.
#[derive(Debug)]
struct Entry<R> {
    record: Box<R>,
    touched: DateTime<Utc>,
}

impl<R> Default for Shard<R> {
    fn default() -> Self {
        Self {
            records: HashMap::new(),
            touches: VecDeque::new(),
        }
    }
}

impl<R> Shard<R> {
    /// The record of `order_id`.
    pub(crate) fn get(&self, order_id: &Uuid) -> Option<&R> {
        self.records.get(order_id).map(|e| e.record.as_ref())
    }

    /// The record of `order_id`, to change.
    pub(crate) fn get_mut(&mut self, order_id: &Uuid) -> Option<&mut R> {
        self.records.get_mut(order_id).map(|e| e.record.as_mut())
    }

    /// Remembers `record` for `order_id`, touched `now`.
    pub(crate) fn insert(&mut self, order_id: Uuid, record: R, now: DateTime<Utc>) {
        self.records.insert(
            order_id,
            Entry {
                record: Box::new(record),
                touched: now,
            },
        );
        self.touches.push_back((now, order_id));
    }

    /// Notes that `order_id`, if remembered, was asked about `now`: the window starts
    /// again.
    pub(crate) fn touch(&mut self, order_id: Uuid, now: DateTime<Utc>) {
        if let Some(entry) = self.records.get_mut(&order_id)
            && now > entry.touched
        {
            entry.touched = now;
            self.touches.push_back((now, order_id));
        }
    }

    /// Forgets every order last touched before `cutoff`; returns how many. A touch that
    /// is not its order's last one is dropped without forgetting the order (its last
    /// touch is further back in the queue).
    pub(crate) fn prune(&mut self, cutoff: DateTime<Utc>) -> usize {
        let mut forgotten = 0;
        while let Some(&(when, order_id)) = self.touches.front() {
            if when >= cutoff {
                break;
            }
            self.touches.pop_front();
            if self
                .records
                .get(&order_id)
                .is_some_and(|entry| entry.touched < cutoff)
            {
                self.records.remove(&order_id);
                forgotten += 1;
            }
        }
        forgotten
    }

    /// How many orders are remembered.
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::{TimeDelta, TimeZone};

    use super::*;

    fn at(minute: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap() + TimeDelta::minutes(minute)
    }

    #[test]
    fn an_order_is_forgotten_once_its_last_touch_is_before_the_cutoff() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut shard = Shard::default();
        shard.insert(a, "a", at(0));
        shard.insert(b, "b", at(1));
        shard.touch(a, at(5));

        assert_eq!(shard.prune(at(3)), 1, "b, not a: a was touched at 5");
        assert_eq!(shard.get(&a), Some(&"a"));
        assert_eq!(shard.get(&b), None);
        assert_eq!(shard.prune(at(5)), 0, "a's last touch is not before 5");
        assert_eq!(shard.prune(at(6)), 1);
        assert_eq!(shard.len(), 0);
        assert!(shard.touches.is_empty(), "no touch outlives its order");
    }

    #[test]
    fn touching_an_unknown_order_or_at_the_same_time_remembers_nothing_more() {
        let a = Uuid::new_v4();
        let mut shard = Shard::default();
        shard.touch(a, at(0));
        assert_eq!(shard.len(), 0);
        shard.insert(a, 1, at(0));
        shard.touch(a, at(0));
        assert_eq!(shard.touches.len(), 1);
    }
}
