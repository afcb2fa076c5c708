//! Orders is a tolerant reader (docs/design.md §5), proven through the in-memory bus with
//! `OrdersMessageHandler` subscribed: for each topic it consumes (`payment.approved`,
//! `payment.declined`, `stock.reserved`, `stock.reservation_failed`) it applies a message
//! whose envelope and payload carry fields it does not know, and it dead-letters a payload
//! that lacks a required field with a reason naming that field (its wire name).
//!
//! Every message is hand-written JSON read with `Envelope::from_json`, as it arrives from
//! a network bus or from a producer of a newer contract version.
#![allow(clippy::expect_used, clippy::unwrap_used)] // tests: failing loudly is the point

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use contracts::topics;
use messaging::{Envelope, InMemoryBus, MessageBus, MessageId, SubscriptionHandle};
use orders_app::{
    AddressInput, Commit, ItemInput, ManualClock, MessageRecord, ORDERS_SUBSCRIBER, OrderStore,
    OrdersConfig, OrdersMessageHandler, OrdersService, PlaceOrder, PruneReport, StoreError,
};
use orders_domain::{Order, OrderId, OrderStatus, Timestamp};
use rust_decimal::Decimal;
use uuid::Uuid;

/// How long a test waits for the bus to settle before it fails.
const DEADLINE: Duration = Duration::from_secs(10);

/// Fields no version of the envelope has defined, as a newer producer might add them.
const UNKNOWN_ENVELOPE_FIELDS: &str = r#""traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "schemaVersion": 2,
    "producer": { "service": "payments", "build": "2026.1.5" },"#;

// ---------------------------------------------------------------------------------------
// Unknown fields are ignored

#[tokio::test]
async fn a_payment_approved_with_unknown_fields_pays_the_order() {
    let world = World::start().await;
    let order = world.placed().await;

    world
        .publish(&approved_json(order, "pay-1", UNKNOWN_ENVELOPE_FIELDS))
        .await;

    world.settles_without_dead_letters().await;
    assert_eq!(world.status(order).await, OrderStatus::Paid);
}

#[tokio::test]
async fn a_payment_declined_with_unknown_fields_cancels_the_order() {
    let world = World::start().await;
    let order = world.placed().await;

    world
        .publish(&envelope_json(
            topics::PAYMENT_DECLINED,
            order,
            UNKNOWN_ENVELOPE_FIELDS,
            &format!(
                r#"{{ "orderId": "{order}", "reason": "card expired",
                     "declineCode": "expired_card", "retryable": false,
                     "issuer": {{ "name": "Bank", "country": "PT" }},
                     "timestamp": "2026-01-05T10:00:01.000Z" }}"#
            ),
        ))
        .await;

    world.settles_without_dead_letters().await;
    assert_eq!(world.status(order).await, OrderStatus::Cancelled);
}

#[tokio::test]
async fn a_stock_reserved_with_unknown_fields_reserves_the_order() {
    let world = World::start().await;
    let order = world.paid().await;

    world
        .publish(&envelope_json(
            topics::STOCK_RESERVED,
            order,
            UNKNOWN_ENVELOPE_FIELDS,
            &format!(
                r#"{{ "orderId": "{order}", "reservationId": "res-1",
                     "items": [ {{ "productId": "book", "quantity": 2,
                                   "warehouse": "LIS-1", "bin": {{ "aisle": 4 }} }} ],
                     "expiresAt": "2026-01-06T10:00:00.000Z",
                     "timestamp": "2026-01-05T10:00:02.000Z" }}"#
            ),
        ))
        .await;

    world.settles_without_dead_letters().await;
    assert_eq!(world.status(order).await, OrderStatus::StockReserved);
}

#[tokio::test]
async fn a_stock_reservation_failed_with_unknown_fields_cancels_the_paid_order() {
    let world = World::start().await;
    let order = world.paid().await;

    world
        .publish(&envelope_json(
            topics::STOCK_RESERVATION_FAILED,
            order,
            UNKNOWN_ENVELOPE_FIELDS,
            &format!(
                r#"{{ "orderId": "{order}", "reason": "out of stock: book",
                     "missing": [ {{ "productId": "book", "short": 1 }} ],
                     "restockExpected": null,
                     "timestamp": "2026-01-05T10:00:02.000Z" }}"#
            ),
        ))
        .await;

    world.settles_without_dead_letters().await;
    assert_eq!(world.status(order).await, OrderStatus::Cancelled);
}

// ---------------------------------------------------------------------------------------
// A missing required field is a dead letter naming it

#[tokio::test]
async fn a_payment_approved_without_payment_id_is_dead_lettered_naming_the_field() {
    let world = World::start().await;
    let order = world.placed().await;

    world
        .publish(&envelope_json(
            topics::PAYMENT_APPROVED,
            order,
            "",
            &format!(
                r#"{{ "orderId": "{order}", "approvedAmount": 21.00, "currency": "EUR",
                     "timestamp": "2026-01-05T10:00:01.000Z" }}"#
            ),
        ))
        .await;

    world.dead_letter_names("paymentId").await;
    assert_eq!(world.status(order).await, OrderStatus::AwaitingPayment);
}

#[tokio::test]
async fn a_payment_declined_without_reason_is_dead_lettered_naming_the_field() {
    let world = World::start().await;
    let order = world.placed().await;

    world
        .publish(&envelope_json(
            topics::PAYMENT_DECLINED,
            order,
            "",
            &format!(r#"{{ "orderId": "{order}", "timestamp": "2026-01-05T10:00:01.000Z" }}"#),
        ))
        .await;

    world.dead_letter_names("reason").await;
    assert_eq!(world.status(order).await, OrderStatus::AwaitingPayment);
}

#[tokio::test]
async fn a_stock_reserved_without_reservation_id_is_dead_lettered_naming_the_field() {
    let world = World::start().await;
    let order = world.paid().await;

    world
        .publish(&envelope_json(
            topics::STOCK_RESERVED,
            order,
            "",
            &format!(
                r#"{{ "orderId": "{order}", "items": [ {{ "productId": "book", "quantity": 2 }} ],
                     "timestamp": "2026-01-05T10:00:02.000Z" }}"#
            ),
        ))
        .await;

    world.dead_letter_names("reservationId").await;
    assert_eq!(world.status(order).await, OrderStatus::Paid);
}

#[tokio::test]
async fn a_stock_reservation_failed_without_order_id_is_dead_lettered_naming_the_field() {
    let world = World::start().await;
    let order = world.paid().await;

    world
        .publish(&envelope_json(
            topics::STOCK_RESERVATION_FAILED,
            order,
            "",
            r#"{ "reason": "out of stock: book", "timestamp": "2026-01-05T10:00:02.000Z" }"#,
        ))
        .await;

    world.dead_letter_names("orderId").await;
    assert_eq!(world.status(order).await, OrderStatus::Paid);
}

// ---------------------------------------------------------------------------------------
// Helpers

/// A bus with the Orders handler subscribed, over a store in maps.
struct World {
    bus: InMemoryBus,
    service: OrdersService,
    /// Keeps the handler subscribed for the whole test.
    _subscription: SubscriptionHandle,
}

impl World {
    async fn start() -> Self {
        let clock = Arc::new(ManualClock::new(
            Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap(),
        ));
        let service = OrdersService::new(
            Arc::new(MapStore::default()),
            clock,
            OrdersConfig::default(),
        );
        let bus = InMemoryBus::default();
        let subscription = bus
            .subscribe(
                OrdersMessageHandler::subscription(),
                Arc::new(OrdersMessageHandler::new(service.clone())),
            )
            .await
            .unwrap();
        Self {
            bus,
            service,
            _subscription: subscription,
        }
    }

    /// A new order of 2 × 10.50 EUR, awaiting payment.
    async fn placed(&self) -> OrderId {
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
        self.service
            .place_order(command, None)
            .await
            .unwrap()
            .order_id
    }

    /// A new order, paid through the bus by a plain `payment.approved`.
    async fn paid(&self) -> OrderId {
        let order = self.placed().await;
        self.publish(&approved_json(order, "pay-1", "")).await;
        self.settles_without_dead_letters().await;
        assert_eq!(self.status(order).await, OrderStatus::Paid);
        order
    }

    async fn publish(&self, envelope: &Envelope) {
        self.bus.publish(envelope.clone()).await.unwrap();
    }

    async fn status(&self, order: OrderId) -> OrderStatus {
        self.service.order(order).await.unwrap().status()
    }

    async fn settle(&self) {
        assert!(
            self.bus.wait_idle(DEADLINE).await,
            "the bus did not settle within {DEADLINE:?}"
        );
    }

    async fn settles_without_dead_letters(&self) {
        self.settle().await;
        let dead = self.bus.dead_letters();
        assert!(dead.is_empty(), "dead letters: {dead:?}");
    }

    /// The one dead letter is the Orders handler's, not retried, and its reason names
    /// `field`.
    async fn dead_letter_names(&self, field: &str) {
        self.settle().await;
        let dead = self.bus.dead_letters();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0].subscriber, ORDERS_SUBSCRIBER);
        assert_eq!(dead[0].attempts, 1, "a bad payload is not retried");
        let reason = dead[0].error.to_string();
        assert!(
            reason.contains(&format!("`{field}`")),
            "the reason names `{field}`: {reason}"
        );
    }
}

/// A `payment.approved` for the whole order (21.00 EUR), with unknown payload fields.
fn approved_json(order: OrderId, payment: &str, envelope_extra: &str) -> Envelope {
    envelope_json(
        topics::PAYMENT_APPROVED,
        order,
        envelope_extra,
        &format!(
            r#"{{ "orderId": "{order}", "paymentId": "{payment}", "approvedAmount": 21.00,
                 "currency": "EUR", "method": {{ "kind": "card", "last4": "4242" }},
                 "fees": [ 0.25, 0.10 ], "settledAt": null,
                 "timestamp": "2026-01-05T10:00:01.000Z" }}"#
        ),
    )
}

/// Reads a hand-written envelope: a fresh message id, `extra` fields (with a trailing
/// comma) among the known ones, and `payload` as written.
fn envelope_json(topic: &str, order: OrderId, extra: &str, payload: &str) -> Envelope {
    let json = format!(
        r#"{{ "messageId": "{}", "topic": "{topic}", "timestamp": "2026-01-05T10:00:00.500Z",
             {extra}
             "correlationId": "{order}", "causationId": null, "payload": {payload} }}"#,
        Uuid::new_v4()
    );
    Envelope::from_json(json.as_bytes())
        .unwrap_or_else(|e| panic!("the envelope reader refused {json}: {e}"))
}

/// Orders and inbox in maps: enough of a store for the handler's effects to be seen.
#[derive(Default)]
struct MapStore {
    orders: Mutex<HashMap<OrderId, Order>>,
    inbox: Mutex<HashSet<(String, MessageId)>>,
}

#[async_trait]
impl OrderStore for MapStore {
    async fn load(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        Ok(self.orders.lock().unwrap().get(&id).cloned())
    }

    async fn is_handled(
        &self,
        subscriber: &str,
        message_id: MessageId,
    ) -> Result<bool, StoreError> {
        Ok(self
            .inbox
            .lock()
            .unwrap()
            .contains(&(subscriber.to_owned(), message_id)))
    }

    async fn find_by_idempotency_key(&self, _: &str) -> Result<Option<OrderId>, StoreError> {
        Ok(None)
    }
    async fn due_for_payment(&self, _: Timestamp, _: usize) -> Result<Vec<OrderId>, StoreError> {
        // These tests run no payment deadline worker.
        Ok(Vec::new())
    }

    async fn commit(&self, commit: Commit) -> Result<u64, StoreError> {
        if let Some(record) = &commit.inbox {
            let key = (record.subscriber.clone(), record.message_id);
            if !self.inbox.lock().unwrap().insert(key) {
                return Err(StoreError::DuplicateMessage {
                    subscriber: record.subscriber.clone(),
                    message_id: record.message_id,
                });
            }
        }
        let Some(mut order) = commit.order else {
            return Ok(0);
        };
        let version = order.version() + 1;
        order.mark_saved(version);
        self.orders.lock().unwrap().insert(order.id(), order);
        Ok(version)
    }

    async fn messages(&self, _: OrderId) -> Result<Vec<MessageRecord>, StoreError> {
        Ok(vec![])
    }

    async fn prune(&self, _: Timestamp) -> Result<PruneReport, StoreError> {
        Ok(PruneReport::default())
    }
}
