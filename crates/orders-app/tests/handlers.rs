//! Integration tests of the Orders message handler over a small fake store: the inbox
//! makes redeliveries no-ops, refusals are recorded and acknowledged, store failures
//! are retryable, conflicts are retried, and a bad payload is a permanent error.
#![allow(clippy::expect_used, clippy::unwrap_used)] // tests: failing loudly is the point

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use contracts::topics;
use messaging::{Envelope, ErrorKind, MessageId};
use orders_app::{
    AddressInput, Commit, HandlingOutcome, InboxRecord, ItemInput, ManualClock, MessageRecord,
    OrderStore, OrdersConfig, OrdersMessageHandler, OrdersService, PlaceOrder, PruneReport,
    StoreError,
};
use orders_domain::{Order, OrderId, OrderStatus, Timestamp};
use rust_decimal::Decimal;

/// Orders and inbox in maps; can be told to fail or to conflict once.
#[derive(Default)]
struct FakeStore {
    orders: Mutex<HashMap<OrderId, Order>>,
    inbox: Mutex<HashSet<MessageId>>,
    rejected: Mutex<Vec<InboxRecord>>,
    unavailable: Mutex<bool>,
    conflicts_left: Mutex<u32>,
}

#[async_trait]
impl OrderStore for FakeStore {
    async fn load(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        if *self.unavailable.lock().unwrap() {
            return Err(StoreError::unavailable("down for the test"));
        }
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
        if let Some(order) = &commit.order {
            let mut left = self.conflicts_left.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                return Err(StoreError::Conflict {
                    order_id: order.id(),
                    expected: order.version(),
                });
            }
        }
        if let Some(record) = &commit.inbox {
            if !self.inbox.lock().unwrap().insert(record.message_id) {
                return Err(StoreError::DuplicateMessage {
                    subscriber: record.subscriber.clone(),
                    message_id: record.message_id,
                });
            }
            if matches!(record.outcome, HandlingOutcome::Rejected(_)) {
                self.rejected.lock().unwrap().push(record.clone());
            }
        }
        let mut version = 0;
        if let Some(mut order) = commit.order {
            version = order.version() + 1;
            order.mark_saved(version);
            self.orders.lock().unwrap().insert(order.id(), order);
        }
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
    store: Arc<FakeStore>,
    service: OrdersService,
    handler: OrdersMessageHandler,
}

fn world() -> World {
    let store = Arc::new(FakeStore::default());
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

fn approved(order: OrderId, payment: &str, amount: Decimal, currency: &str) -> Envelope {
    let payload = contracts::PaymentApproved {
        order_id: order.as_uuid(),
        payment_id: payment.into(),
        approved_amount: amount,
        currency: currency.into(),
        timestamp: Utc::now(),
    };
    envelope_about(topics::PAYMENT_APPROVED, order, &payload)
}

/// A new message (fresh id) about `order`.
fn envelope_about(
    topic: &'static str,
    order: OrderId,
    payload: &impl serde::Serialize,
) -> Envelope {
    Envelope::new(
        uuid::Uuid::new_v4(),
        topic,
        Utc::now(),
        order.to_string(),
        None,
        payload,
    )
    .unwrap()
}

#[tokio::test]
async fn an_approval_pays_the_order_and_its_redelivery_is_a_no_op() {
    let w = world();
    let id = placed(&w).await;
    let message = approved(id, "pay-1", Decimal::new(2100, 2), "EUR");
    assert_eq!(
        w.handler.dispatch(&message).await,
        Ok(HandlingOutcome::Applied)
    );
    assert_eq!(
        w.handler.dispatch(&message).await,
        Ok(HandlingOutcome::Duplicate)
    );
    let order = w.service.order(id).await.unwrap();
    assert_eq!(order.status(), OrderStatus::Paid);
    assert_eq!(order.version(), 2, "paid once");
}

#[tokio::test]
async fn a_message_for_an_unknown_order_is_recorded_as_rejected_and_acknowledged() {
    let w = world();
    let unknown = OrderId::random();
    let outcome = w
        .handler
        .dispatch(&approved(unknown, "pay-1", Decimal::ONE, "EUR"))
        .await;
    assert_eq!(
        outcome,
        Ok(HandlingOutcome::Rejected("unknown order".into()))
    );
    assert_eq!(w.store.rejected.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn an_approval_of_another_amount_or_currency_is_rejected_and_changes_nothing() {
    let w = world();
    let id = placed(&w).await;
    for message in [
        approved(id, "pay-1", Decimal::new(2000, 2), "EUR"),
        approved(id, "pay-1", Decimal::new(2100, 2), "USD"),
    ] {
        let outcome = w.handler.dispatch(&message).await.unwrap();
        assert!(
            matches!(outcome, HandlingOutcome::Rejected(ref why) if why.contains("does not match")),
            "{outcome:?}"
        );
    }
    assert_eq!(
        w.service.order(id).await.unwrap().status(),
        OrderStatus::AwaitingPayment
    );
}

#[tokio::test]
async fn an_invalid_payment_id_is_rejected_not_a_panic() {
    let w = world();
    let id = placed(&w).await;
    let outcome = w
        .handler
        .dispatch(&approved(id, " ", Decimal::new(2100, 2), "EUR"))
        .await
        .unwrap();
    assert!(
        matches!(outcome, HandlingOutcome::Rejected(_)),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_store_that_is_down_makes_the_message_retryable() {
    let w = world();
    let id = placed(&w).await;
    *w.store.unavailable.lock().unwrap() = true;
    let error = w
        .handler
        .dispatch(&approved(id, "pay-1", Decimal::new(2100, 2), "EUR"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Retryable);
}

#[tokio::test]
async fn a_concurrent_change_is_retried_on_the_new_version() {
    let w = world();
    let id = placed(&w).await;
    *w.store.conflicts_left.lock().unwrap() = 2;
    let outcome = w
        .handler
        .dispatch(&approved(id, "pay-1", Decimal::new(2100, 2), "EUR"))
        .await;
    assert_eq!(outcome, Ok(HandlingOutcome::Applied));
    assert_eq!(
        *w.store.conflicts_left.lock().unwrap(),
        0,
        "both conflicts were met"
    );
}

#[tokio::test]
async fn an_undecodable_payload_or_unknown_topic_is_a_permanent_error() {
    let w = world();
    let bad = Envelope::new(
        uuid::Uuid::new_v4(),
        topics::PAYMENT_APPROVED,
        Utc::now(),
        "x",
        None,
        &"not an object",
    )
    .unwrap();
    assert_eq!(
        w.handler.dispatch(&bad).await.unwrap_err().kind(),
        ErrorKind::Permanent
    );
    let other = Envelope::new(
        uuid::Uuid::new_v4(),
        "order.shipped",
        Utc::now(),
        "x",
        None,
        &1,
    )
    .unwrap();
    assert_eq!(
        w.handler.dispatch(&other).await.unwrap_err().kind(),
        ErrorKind::Permanent
    );
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

#[tokio::test]
async fn a_rejected_message_redelivered_after_the_order_moved_on_changes_nothing() {
    // The inbox is checked by the commit, not read first: the redelivery would apply
    // now (the order is Paid), but its commit carries the same inbox record and fails.
    let w = world();
    let id = placed(&w).await;
    let early = reserved(id, "res-1");
    assert!(matches!(
        w.handler.dispatch(&early).await,
        Ok(HandlingOutcome::Rejected(_))
    ));
    let payment = approved(id, "pay-1", Decimal::new(2100, 2), "EUR");
    assert_eq!(
        w.handler.dispatch(&payment).await,
        Ok(HandlingOutcome::Applied)
    );

    assert_eq!(
        w.handler.dispatch(&early).await,
        Ok(HandlingOutcome::Duplicate)
    );
    let order = w.service.order(id).await.unwrap();
    assert_eq!(order.status(), OrderStatus::Paid);
    assert_eq!(order.version(), 2);
}
