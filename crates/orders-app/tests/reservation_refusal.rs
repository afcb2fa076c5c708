//! A stock reservation Orders refuses does not stay held: the Orders handler commits the
//! rejected inbox record of the `stock.reserved` and an `order.reservation_refused` for
//! Stock in one commit, for a reservation of a cancelled order (the crash case: a
//! redelivered `order.paid` reached Stock after `order.cancelled`), a second, different
//! `reservationId` on a reserved order and a reservation of an unpaid order; a repeated
//! `reservationId` stays a duplicate that refuses nothing; and a redelivered refused
//! `stock.reserved` refuses nothing again.
#![allow(clippy::expect_used, clippy::unwrap_used)] // tests: failing loudly is the point

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use contracts::{OrderReservationRefused, topics};
use messaging::{Envelope, ErrorKind, MessageId};
use orders_app::{
    AddressInput, CancelOrder, Commit, HandlingOutcome, ItemInput, ManualClock, MessageRecord,
    OrderStore, OrdersConfig, OrdersMessageHandler, OrdersService, PlaceOrder, PruneReport,
    StoreError,
};
use orders_domain::{Order, OrderId, OrderStatus, Timestamp};
use rust_decimal::Decimal;
use uuid::Uuid;

/// The order total of [`placed`]: 2 × 10.50 EUR.
const TOTAL: Decimal = Decimal::from_parts(2100, 0, 0, false, 2);

// ---------------------------------------------------------------------------------------
// Refused reservations are answered with order.reservation_refused

#[tokio::test]
async fn a_reservation_for_an_order_cancelled_while_paid_is_refused_and_released_in_the_same_commit()
 {
    let w = world();
    let id = paid(&w).await;
    cancel(&w, id).await;
    let reservation = reserved(id, "res-late");

    let outcome = w.handler.dispatch(&reservation).await.unwrap();

    assert!(
        matches!(&outcome, HandlingOutcome::Rejected(why) if why.contains("Cancelled")),
        "{outcome:?}"
    );
    let commit = w.store.last_commit();
    assert!(commit.order.is_none(), "the order is unchanged");
    let inbox = commit.inbox.expect("the reservation is recorded");
    assert_eq!(inbox.message_id, reservation.message_id);
    assert_eq!(inbox.outcome, outcome);
    assert_eq!(commit.outbox.len(), 1, "{:?}", commit.outbox);
    let refusal = &commit.outbox[0];
    assert_eq!(refusal.topic, topics::ORDER_RESERVATION_REFUSED);
    assert_eq!(refusal.correlation_id, id.to_string());
    assert_eq!(refusal.causation_id, Some(reservation.message_id));
    let payload: OrderReservationRefused = refusal.decode().unwrap();
    assert_eq!(payload.order_id, id.as_uuid());
    assert_eq!(payload.reservation_id, "res-late");
    assert!(payload.reason.contains("Cancelled"), "{}", payload.reason);
    assert_eq!(w.store.refusals().len(), 1, "exactly one refusal");
    assert_eq!(w.status(id).await, OrderStatus::Cancelled);
}

#[tokio::test]
async fn a_second_different_reservation_for_a_reserved_order_is_refused_and_the_first_kept() {
    let w = world();
    let id = paid(&w).await;
    assert_eq!(
        w.handler.dispatch(&reserved(id, "res-1")).await,
        Ok(HandlingOutcome::Applied)
    );

    let second = w.handler.dispatch(&reserved(id, "res-2")).await;

    assert!(
        matches!(&second, Ok(HandlingOutcome::Rejected(why)) if why.contains("res-2")),
        "{second:?}"
    );
    let refused = w.store.refusals();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(
        refused[0].reservation_id, "res-2",
        "the second reservation, not the first"
    );
    let order = w.service.order(id).await.unwrap();
    assert_eq!(order.status(), OrderStatus::StockReserved);
    assert_eq!(
        order.reservation_id().map(ToString::to_string).as_deref(),
        Some("res-1")
    );
}

#[tokio::test]
async fn a_reservation_for_an_unpaid_order_is_refused_too() {
    let w = world();
    let id = placed(&w).await;

    assert!(matches!(
        w.handler.dispatch(&reserved(id, "forged")).await,
        Ok(HandlingOutcome::Rejected(_))
    ));

    let refused = w.store.refusals();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].reservation_id, "forged");
    assert_eq!(w.status(id).await, OrderStatus::AwaitingPayment);
}

#[tokio::test]
async fn a_repeated_reservation_id_is_a_duplicate_and_never_refused_even_once_cancelled() {
    let w = world();
    let id = paid(&w).await;
    assert_eq!(
        w.handler.dispatch(&reserved(id, "res-1")).await,
        Ok(HandlingOutcome::Applied)
    );
    // The same reservation re-sent as a new message (a duplicate reply).
    assert_eq!(
        w.handler.dispatch(&reserved(id, "res-1")).await,
        Ok(HandlingOutcome::Duplicate)
    );
    // Cancelled while reserved: order.cancelled releases res-1; a late copy refuses
    // nothing.
    cancel(&w, id).await;
    assert_eq!(
        w.handler.dispatch(&reserved(id, "res-1")).await,
        Ok(HandlingOutcome::Duplicate)
    );

    assert!(w.store.refusals().is_empty(), "{:?}", w.store.refusals());
    assert_eq!(w.store.sent(topics::ORDER_RESERVATION_REFUSED), 0);
}

#[tokio::test]
async fn a_redelivered_refused_reservation_refuses_nothing_again() {
    let w = world();
    let id = paid(&w).await;
    cancel(&w, id).await;
    let reservation = reserved(id, "res-late");

    assert!(matches!(
        w.handler.dispatch(&reservation).await,
        Ok(HandlingOutcome::Rejected(_))
    ));
    assert_eq!(
        w.handler.dispatch(&reservation).await,
        Ok(HandlingOutcome::Duplicate)
    );

    assert_eq!(w.store.refusals().len(), 1);
}

#[tokio::test]
async fn a_refusal_keeps_its_message_id_when_produced_again() {
    // Two stores (say, the commit was lost and the reservation is handled again
    // elsewhere): the same stock.reserved message yields the same refusal message id.
    let reserved_id = Uuid::new_v4();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let w = world();
        let id = paid(&w).await;
        cancel(&w, id).await;
        let reservation = Envelope {
            message_id: reserved_id,
            ..reserved(id, "res-late")
        };
        w.handler.dispatch(&reservation).await.unwrap();
        ids.push(w.store.last_commit().outbox[0].message_id);
    }
    assert_eq!(ids[0], ids[1]);
    assert_ne!(ids[0], reserved_id);
}

#[tokio::test]
async fn a_store_that_fails_the_refusal_writes_nothing_and_the_redelivery_refuses_once() {
    let w = world();
    let id = paid(&w).await;
    cancel(&w, id).await;
    let reservation = reserved(id, "res-late");
    *w.store.fail_next_commit.lock().unwrap() = true;

    let error = w.handler.dispatch(&reservation).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Retryable);
    assert!(w.store.refusals().is_empty(), "all or nothing");

    assert!(matches!(
        w.handler.dispatch(&reservation).await,
        Ok(HandlingOutcome::Rejected(_))
    ));
    assert_eq!(w.store.refusals().len(), 1);
}

#[tokio::test]
async fn a_reservation_for_an_unknown_order_is_rejected_without_a_refusal() {
    let w = world();
    let unknown = OrderId::random();

    assert_eq!(
        w.handler.dispatch(&reserved(unknown, "res-1")).await,
        Ok(HandlingOutcome::Rejected("unknown order".into()))
    );
    assert!(w.store.refusals().is_empty());
}

// ---------------------------------------------------------------------------------------
// Helpers

/// Orders, inbox and every commit, in maps; a commit is all or nothing. Can be told to
/// fail the next commit.
#[derive(Default)]
struct RecordingStore {
    orders: Mutex<HashMap<OrderId, Order>>,
    inbox: Mutex<HashSet<MessageId>>,
    commits: Mutex<Vec<Commit>>,
    fail_next_commit: Mutex<bool>,
}

impl RecordingStore {
    fn last_commit(&self) -> Commit {
        self.commits
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a commit")
    }

    /// Every `order.reservation_refused` committed, in order.
    fn refusals(&self) -> Vec<OrderReservationRefused> {
        self.commits
            .lock()
            .unwrap()
            .iter()
            .flat_map(|c| c.outbox.iter())
            .filter(|e| e.topic == topics::ORDER_RESERVATION_REFUSED)
            .map(|e| e.decode().unwrap())
            .collect()
    }

    /// Every message committed to the outbox on `topic`.
    fn sent(&self, topic: &str) -> usize {
        self.commits
            .lock()
            .unwrap()
            .iter()
            .flat_map(|c| c.outbox.iter())
            .filter(|e| e.topic == topic)
            .count()
    }
}

#[async_trait]
impl OrderStore for RecordingStore {
    async fn load(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        Ok(self.orders.lock().unwrap().get(&id).cloned())
    }
    async fn is_handled(&self, _: &str, message_id: MessageId) -> Result<bool, StoreError> {
        Ok(self.inbox.lock().unwrap().contains(&message_id))
    }
    async fn find_by_idempotency_key(&self, _: &str) -> Result<Option<OrderId>, StoreError> {
        Ok(None)
    }
    async fn due_for_payment(&self, _: Timestamp, _: usize) -> Result<Vec<OrderId>, StoreError> {
        // These tests run no payment deadline worker.
        Ok(Vec::new())
    }
    async fn commit(&self, commit: Commit) -> Result<u64, StoreError> {
        if std::mem::take(&mut *self.fail_next_commit.lock().unwrap()) {
            return Err(StoreError::unavailable("down for the test"));
        }
        if let Some(order) = &commit.order {
            let stored = self
                .orders
                .lock()
                .unwrap()
                .get(&order.id())
                .map(Order::version);
            let fresh = match order.version() {
                0 => stored.is_none(),
                v => stored == Some(v),
            };
            if !fresh {
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
            self.orders.lock().unwrap().insert(order.id(), order);
        }
        self.commits.lock().unwrap().push(commit);
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
    store: Arc<RecordingStore>,
    service: OrdersService,
    handler: OrdersMessageHandler,
}

impl World {
    async fn status(&self, id: OrderId) -> OrderStatus {
        self.service.order(id).await.unwrap().status()
    }
}

fn world() -> World {
    let store = Arc::new(RecordingStore::default());
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap(),
    ));
    let service = OrdersService::new(store.clone(), clock, OrdersConfig::default());
    World {
        store,
        handler: OrdersMessageHandler::new(service.clone()),
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

/// A placed order, paid (Paid).
async fn paid(w: &World) -> OrderId {
    let id = placed(w).await;
    assert_eq!(
        w.handler.dispatch(&approved(id, "pay-1")).await,
        Ok(HandlingOutcome::Applied)
    );
    id
}

async fn cancel(w: &World, id: OrderId) {
    let command = CancelOrder {
        order_id: id,
        reason: "customer changed their mind".into(),
    };
    w.service.cancel_order(command).await.unwrap();
}

fn approved(order: OrderId, payment: &str) -> Envelope {
    let payload = contracts::PaymentApproved {
        order_id: order.as_uuid(),
        payment_id: payment.into(),
        approved_amount: TOTAL,
        currency: "EUR".into(),
        timestamp: Utc::now(),
    };
    envelope_about(topics::PAYMENT_APPROVED, order, &payload)
}

fn reserved(order: OrderId, reservation: &str) -> Envelope {
    let payload = contracts::StockReserved {
        order_id: order.as_uuid(),
        reservation_id: reservation.into(),
        items: vec![contracts::ItemQuantity {
            product_id: "book".into(),
            quantity: 2,
        }],
        timestamp: Utc::now(),
    };
    envelope_about(topics::STOCK_RESERVED, order, &payload)
}

/// A new message (fresh id) about `order`.
fn envelope_about(
    topic: &'static str,
    order: OrderId,
    payload: &impl serde::Serialize,
) -> Envelope {
    Envelope::new(
        Uuid::new_v4(),
        topic,
        Utc::now(),
        order.to_string(),
        None,
        payload,
    )
    .unwrap()
}
