//! The payment deadline: an order still AwaitingPayment when its deadline passes is
//! cancelled with reason `payment timeout`, once, with one `order.cancelled` in the
//! outbox; an order paid in time is left alone; two workers (two replicas on one store)
//! racing for the same order cancel it once; a failed pass is retried by the next; the
//! worker stops with the service. Time is a manual clock, never waited for.
#![allow(clippy::expect_used, clippy::unwrap_used)] // tests: failing loudly is the point

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use contracts::{OrderCancelled, topics};
use messaging::{Envelope, MessageId};
use orders_app::{
    AddressInput, Commit, DeadlinePass, HandlingOutcome, ItemInput, ManualClock, MessageRecord,
    OrderStore, OrdersConfig, OrdersMessageHandler, OrdersService, PaymentDeadlines, PlaceOrder,
    PruneReport, StoreError,
};
use orders_domain::{CancellationReason, Order, OrderId, OrderStatus, Timestamp};
use rust_decimal::Decimal;
use tokio::sync::{Barrier, Notify, oneshot};
use uuid::Uuid;

/// The payment timeout of these tests' services.
fn timeout() -> chrono::Duration {
    chrono::Duration::minutes(15)
}

// ---------------------------------------------------------------------------------------
// The deadline

#[tokio::test]
async fn an_unpaid_order_is_cancelled_for_payment_timeout_once_its_deadline_passes() {
    let w = world();
    let id = placed(&w).await;
    let order = w.service.order(id).await.unwrap();
    assert_eq!(
        order.payment_due_at(),
        Some(t0() + timeout()),
        "kept with the order"
    );

    // One nanosecond early: nothing is due.
    w.clock
        .advance(timeout() - chrono::Duration::nanoseconds(1));
    assert_eq!(
        w.deadlines().run_once().await.unwrap(),
        DeadlinePass::default()
    );
    assert_eq!(w.status(id).await, OrderStatus::AwaitingPayment);

    w.clock.advance(chrono::Duration::nanoseconds(1));
    let pass = w.deadlines().run_once().await.unwrap();
    assert_eq!((pass.due, pass.cancelled), (1, 1), "{pass:?}");
    let order = w.service.order(id).await.unwrap();
    assert_eq!(order.status(), OrderStatus::Cancelled);
    assert_eq!(
        order.cancellation_reason().map(CancellationReason::as_str),
        Some("payment timeout")
    );
    let cancelled = w.store.cancellations();
    assert_eq!(cancelled.len(), 1, "{cancelled:?}");
    assert_eq!(cancelled[0].order_id, id.as_uuid());
    assert_eq!(cancelled[0].reason, "payment timeout");
    assert_eq!(cancelled[0].previous_status, "AwaitingPayment");
    assert_eq!(cancelled[0].payment_id, None, "nothing was paid");

    // Later passes find nothing: it is cancelled once.
    w.clock.advance(chrono::Duration::hours(1));
    assert_eq!(
        w.deadlines().run_once().await.unwrap(),
        DeadlinePass::default()
    );
    assert_eq!(w.store.cancellations().len(), 1);
}

#[tokio::test]
async fn an_order_paid_before_its_deadline_is_not_touched() {
    let w = world();
    let id = placed(&w).await;
    w.clock.advance(timeout() / 2);
    let handler = OrdersMessageHandler::new(w.service.clone());
    assert_eq!(
        handler.dispatch(&approved(id, "pay-1")).await,
        Ok(HandlingOutcome::Applied)
    );
    let version = w.service.order(id).await.unwrap().version();

    w.clock.advance(timeout());
    assert_eq!(
        w.deadlines().run_once().await.unwrap(),
        DeadlinePass::default()
    );
    // Asked about it directly (as a worker with a stale list would), it declines too.
    assert!(!w.service.expire_payment(id).await.unwrap());

    let order = w.service.order(id).await.unwrap();
    assert_eq!(order.status(), OrderStatus::Paid);
    assert_eq!(order.version(), version, "unchanged");
    assert!(w.store.cancellations().is_empty());
}

#[tokio::test]
async fn only_due_orders_are_cancelled_earliest_first() {
    let w = world();
    let early = placed(&w).await;
    w.clock.advance(chrono::Duration::minutes(10));
    let late = placed(&w).await;

    // The first is due, the second has 10 minutes to go.
    w.clock.advance(chrono::Duration::minutes(5));
    let pass = w.deadlines().run_once().await.unwrap();
    assert_eq!((pass.due, pass.cancelled), (1, 1), "{pass:?}");
    assert_eq!(w.status(early).await, OrderStatus::Cancelled);
    assert_eq!(w.status(late).await, OrderStatus::AwaitingPayment);

    w.clock.advance(chrono::Duration::minutes(10));
    let pass = w.deadlines().run_once().await.unwrap();
    assert_eq!((pass.due, pass.cancelled), (1, 1), "{pass:?}");
    assert_eq!(w.status(late).await, OrderStatus::Cancelled);
    assert_eq!(w.store.cancellations().len(), 2);
}

#[tokio::test]
async fn two_replicas_racing_for_the_same_order_cancel_it_once() {
    let w = world();
    let id = placed(&w).await;
    w.clock.advance(timeout());
    // A second service on the same store (another replica), with its own worker.
    let replica = OrdersService::new(w.store.clone(), w.clock.clone(), config());
    // Both load the order before either commits: the race is certain, not likely.
    w.store.race_next_loads(2);

    let (here, there) = (
        w.deadlines(),
        PaymentDeadlines::new(replica, Duration::from_secs(1)),
    );
    let (a, b) = tokio::join!(here.run_once(), there.run_once());
    let (a, b) = (a.unwrap(), b.unwrap());

    assert_eq!((a.due, b.due), (1, 1), "both saw it due: {a:?} {b:?}");
    assert_eq!(a.cancelled + b.cancelled, 1, "{a:?} {b:?}");
    assert_eq!(a.skipped + b.skipped, 1, "the loser skips: {a:?} {b:?}");
    assert_eq!(
        a.failed + b.failed,
        0,
        "a lost race is no failure: {a:?} {b:?}"
    );
    assert_eq!(w.store.conflicts(), 1, "the loser's commit was refused");
    assert_eq!(w.store.cancellations().len(), 1, "one order.cancelled");
    assert_eq!(w.status(id).await, OrderStatus::Cancelled);
}

#[tokio::test]
async fn a_pass_that_fails_is_retried_by_the_next() {
    let w = world();
    let id = placed(&w).await;
    w.clock.advance(timeout());

    w.store.fail_next_due_query();
    assert!(w.deadlines().run_once().await.is_err());
    assert_eq!(w.status(id).await, OrderStatus::AwaitingPayment);

    w.store.fail_next_commit();
    let pass = w.deadlines().run_once().await.unwrap();
    assert_eq!((pass.due, pass.failed), (1, 1), "{pass:?}");
    assert_eq!(w.status(id).await, OrderStatus::AwaitingPayment);

    let pass = w.deadlines().run_once().await.unwrap();
    assert_eq!((pass.due, pass.cancelled), (1, 1), "{pass:?}");
    assert_eq!(w.store.cancellations().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_worker_cancels_on_its_tick_and_stops_with_the_service() {
    let w = world();
    let id = placed(&w).await;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(
        PaymentDeadlines::new(w.service.clone(), PaymentDeadlines::tick_for(timeout())).run(
            async {
                let _ = stopped.await;
            },
        ),
    );
    w.clock.advance(timeout());
    // Awaited on the store's commits (paused time: the ticks come as soon as all wait).
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let committed = w.store.committed.notified();
            tokio::pin!(committed);
            committed.as_mut().enable();
            if w.store.cancellations().len() == 1 {
                break;
            }
            committed.await;
        }
    })
    .await
    .expect("cancelled within a few ticks");
    assert_eq!(w.status(id).await, OrderStatus::Cancelled);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops on shutdown")
        .unwrap();
    assert_eq!(w.store.cancellations().len(), 1);
}

#[test]
fn the_tick_is_a_quarter_of_the_timeout_between_10_ms_and_a_second() {
    let tick = PaymentDeadlines::tick_for;
    assert_eq!(tick(chrono::Duration::minutes(15)), Duration::from_secs(1));
    assert_eq!(
        tick(chrono::Duration::seconds(2)),
        Duration::from_millis(500)
    );
    assert_eq!(
        tick(chrono::Duration::milliseconds(1)),
        Duration::from_millis(10)
    );
}

// ---------------------------------------------------------------------------------------
// Helpers

fn t0() -> Timestamp {
    Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap()
}

fn config() -> OrdersConfig {
    OrdersConfig {
        payment_timeout: timeout(),
        ..OrdersConfig::default()
    }
}

/// Orders and every commit, in maps; a commit is all or nothing and checks the version
/// like a database. Can be told to fail the next due query or commit, or to hold the
/// next loads until that many have been made (a certain race).
#[derive(Default)]
struct DeadlineStore {
    orders: Mutex<HashMap<OrderId, Order>>,
    inbox: Mutex<HashSet<MessageId>>,
    commits: Mutex<Vec<Commit>>,
    conflicts: Mutex<usize>,
    fail_due: Mutex<bool>,
    fail_commit: Mutex<bool>,
    race: Mutex<Option<Arc<Barrier>>>,
    /// Woken after every successful commit.
    committed: Notify,
}

impl DeadlineStore {
    fn race_next_loads(&self, loads: usize) {
        *self.race.lock().unwrap() = Some(Arc::new(Barrier::new(loads)));
    }

    fn fail_next_due_query(&self) {
        *self.fail_due.lock().unwrap() = true;
    }

    fn fail_next_commit(&self) {
        *self.fail_commit.lock().unwrap() = true;
    }

    fn conflicts(&self) -> usize {
        *self.conflicts.lock().unwrap()
    }

    /// Every `order.cancelled` committed, in order.
    fn cancellations(&self) -> Vec<OrderCancelled> {
        self.commits
            .lock()
            .unwrap()
            .iter()
            .flat_map(|c| c.outbox.iter())
            .filter(|e| e.topic == topics::ORDER_CANCELLED)
            .map(|e| e.decode().unwrap())
            .collect()
    }
}

#[async_trait]
impl OrderStore for DeadlineStore {
    async fn load(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        let order = self.orders.lock().unwrap().get(&id).cloned();
        // Read first, then wait for the others to have read too.
        let race = self.race.lock().unwrap().clone();
        if let Some(barrier) = race
            && barrier.wait().await.is_leader()
        {
            *self.race.lock().unwrap() = None;
        }
        Ok(order)
    }
    async fn is_handled(&self, _: &str, message_id: MessageId) -> Result<bool, StoreError> {
        Ok(self.inbox.lock().unwrap().contains(&message_id))
    }
    async fn find_by_idempotency_key(&self, _: &str) -> Result<Option<OrderId>, StoreError> {
        Ok(None)
    }
    async fn due_for_payment(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<OrderId>, StoreError> {
        if std::mem::take(&mut *self.fail_due.lock().unwrap()) {
            return Err(StoreError::unavailable("down for the test"));
        }
        let mut due: Vec<(Timestamp, OrderId)> = self
            .orders
            .lock()
            .unwrap()
            .values()
            .filter(|o| o.status() == OrderStatus::AwaitingPayment)
            .filter_map(|o| o.payment_due_at().map(|at| (at, o.id())))
            .filter(|(at, _)| *at <= now)
            .collect();
        due.sort();
        Ok(due.into_iter().take(limit).map(|(_, id)| id).collect())
    }
    async fn commit(&self, commit: Commit) -> Result<u64, StoreError> {
        if std::mem::take(&mut *self.fail_commit.lock().unwrap()) {
            return Err(StoreError::unavailable("down for the test"));
        }
        let mut orders = self.orders.lock().unwrap();
        if let Some(order) = &commit.order {
            let stored = orders.get(&order.id()).map(Order::version);
            let fresh = match order.version() {
                0 => stored.is_none(),
                v => stored == Some(v),
            };
            if !fresh {
                *self.conflicts.lock().unwrap() += 1;
                return Err(StoreError::Conflict {
                    order_id: order.id(),
                    expected: order.version(),
                });
            }
        }
        if let Some(record) = &commit.inbox
            && !self.inbox.lock().unwrap().insert(record.message_id)
        {
            return Err(StoreError::DuplicateMessage {
                subscriber: record.subscriber.clone(),
                message_id: record.message_id,
            });
        }
        let mut version = 0;
        if let Some(mut order) = commit.order.clone() {
            version = order.version() + 1;
            order.mark_saved(version);
            orders.insert(order.id(), order);
        }
        drop(orders);
        self.commits.lock().unwrap().push(commit);
        self.committed.notify_waiters();
        Ok(version)
    }
    async fn messages(&self, _: OrderId) -> Result<Vec<MessageRecord>, StoreError> {
        Ok(vec![])
    }
    async fn prune(&self, _: Timestamp) -> Result<PruneReport, StoreError> {
        Ok(PruneReport::default())
    }
}

struct World {
    store: Arc<DeadlineStore>,
    clock: Arc<ManualClock>,
    service: OrdersService,
}

impl World {
    async fn status(&self, id: OrderId) -> OrderStatus {
        self.service.order(id).await.unwrap().status()
    }

    /// A deadline worker over this world's service.
    fn deadlines(&self) -> PaymentDeadlines {
        PaymentDeadlines::new(self.service.clone(), Duration::from_secs(1))
    }
}

fn world() -> World {
    let store = Arc::new(DeadlineStore::default());
    let clock = Arc::new(ManualClock::new(t0()));
    let service = OrdersService::new(store.clone(), clock.clone(), config());
    World {
        store,
        clock,
        service,
    }
}

async fn placed(w: &World) -> OrderId {
    let command = PlaceOrder {
        customer_id: "c-1".into(),
        currency: "EUR".into(),
        items: vec![ItemInput {
            product_id: "book".into(),
            quantity: 2,
            price: Decimal::new(1050, 2),
        }],
        shipping_address: AddressInput {
            street: "Main St 1".into(),
            city: "Berlin".into(),
            postal_code: "10115".into(),
            country: "DE".into(),
        },
    };
    w.service.place_order(command, None).await.unwrap().order_id
}

/// Payments approving the whole total (2 × 10.50 EUR).
fn approved(order: OrderId, payment: &str) -> Envelope {
    let payload = contracts::PaymentApproved {
        order_id: order.as_uuid(),
        payment_id: payment.into(),
        approved_amount: Decimal::new(2100, 2),
        currency: "EUR".into(),
        timestamp: Utc::now(),
    };
    Envelope::new(
        Uuid::new_v4(),
        topics::PAYMENT_APPROVED,
        Utc::now(),
        order.to_string(),
        None,
        &payload,
    )
    .unwrap()
}
