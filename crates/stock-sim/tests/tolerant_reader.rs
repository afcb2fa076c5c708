//! Stock is a tolerant reader (docs/design.md §5), proven through the in-memory bus: for
//! each topic it consumes (`order.paid`, `order.cancelled`, `order.reservation_refused`)
//! it answers a message whose envelope and payload carry fields it does not know, and it
//! dead-letters a payload that lacks a required field with a reason naming that field
//! (its wire name).
//!
//! Every message is hand-written JSON read with `Envelope::from_json`, as it arrives from
//! a network bus or from a producer of a newer contract version.
#![allow(clippy::unwrap_used)]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use contracts::{ItemQuantity, StockReleased, StockReserved, topics};
use messaging::{
    Envelope, HandlerError, InMemoryBus, MessageBus, MessageHandler, Subscription,
    SubscriptionHandle,
};
use stock_sim::{StockConfig, StockHandle, StockService};
use uuid::Uuid;

/// How long a test waits for the bus to settle before it fails.
const DEADLINE: Duration = Duration::from_secs(10);

/// Fields no version of the envelope has defined, as a newer producer might add them.
const UNKNOWN_ENVELOPE_FIELDS: &str = r#""traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "schemaVersion": 2,
    "producer": { "service": "orders", "build": "2026.1.5" },"#;

// ---------------------------------------------------------------------------------------
// Unknown fields are ignored

#[tokio::test]
async fn an_order_paid_with_unknown_fields_is_reserved() {
    let world = World::start().await;
    let order = Uuid::new_v4();

    world
        .publish(&paid_json(order, UNKNOWN_ENVELOPE_FIELDS))
        .await;

    world.settles_without_dead_letters().await;
    let reserved: Vec<StockReserved> = world.answers(topics::STOCK_RESERVED);
    assert_eq!(reserved.len(), 1, "{reserved:?}");
    assert_eq!(reserved[0].order_id, order);
    assert_eq!(
        reserved[0].items,
        vec![ItemQuantity {
            product_id: "sku-1".into(),
            quantity: 2,
        }]
    );
}

#[tokio::test]
async fn an_order_cancelled_with_unknown_fields_releases_the_reservation() {
    let world = World::start().await;
    let order = Uuid::new_v4();
    world.publish(&paid_json(order, "")).await;
    world.settles_without_dead_letters().await;
    let reservation = world.stock.reservation_for(order).unwrap();

    world
        .publish(&envelope_json(
            topics::ORDER_CANCELLED,
            order,
            UNKNOWN_ENVELOPE_FIELDS,
            &format!(
                r#"{{ "orderId": "{order}", "reason": "customer request",
                     "previousStatus": "StockReserved", "paymentId": "pay-1",
                     "reservationId": "{reservation}", "cancelledBy": {{ "kind": "customer" }},
                     "restock": true, "timestamp": "2026-01-05T10:05:00.000Z" }}"#
            ),
        ))
        .await;

    world.settles_without_dead_letters().await;
    let released: Vec<StockReleased> = world.answers(topics::STOCK_RELEASED);
    assert_eq!(released.len(), 1, "{released:?}");
    assert_eq!(released[0].reservation_id, reservation);
    assert_eq!(world.stock.releases_for(order), 1);
}

// ---------------------------------------------------------------------------------------
// A missing required field is a dead letter naming it

#[tokio::test]
async fn an_order_paid_without_payment_id_is_dead_lettered_naming_the_field() {
    let world = World::start().await;
    let order = Uuid::new_v4();

    world
        .publish(&envelope_json(
            topics::ORDER_PAID,
            order,
            "",
            &format!(
                r#"{{ "orderId": "{order}", "amount": 21.00, "currency": "EUR",
                     "items": [ {{ "productId": "sku-1", "quantity": 2 }} ],
                     "timestamp": "2026-01-05T10:00:01.000Z" }}"#
            ),
        ))
        .await;

    world.dead_letter_names("paymentId").await;
    assert_eq!(world.stock.reserved_count(), 0);
}

#[tokio::test]
async fn an_order_paid_with_an_item_without_quantity_is_dead_lettered_naming_the_field() {
    let world = World::start().await;
    let order = Uuid::new_v4();

    world
        .publish(&envelope_json(
            topics::ORDER_PAID,
            order,
            "",
            &format!(
                r#"{{ "orderId": "{order}", "paymentId": "pay-1", "amount": 21.00,
                     "currency": "EUR", "items": [ {{ "productId": "sku-1" }} ],
                     "timestamp": "2026-01-05T10:00:01.000Z" }}"#
            ),
        ))
        .await;

    world.dead_letter_names("quantity").await;
    assert_eq!(world.stock.reserved_count(), 0);
}

#[tokio::test]
async fn an_order_cancelled_without_reason_is_dead_lettered_naming_the_field() {
    let world = World::start().await;
    let order = Uuid::new_v4();
    world.publish(&paid_json(order, "")).await;
    world.settles_without_dead_letters().await;

    world
        .publish(&envelope_json(
            topics::ORDER_CANCELLED,
            order,
            "",
            &format!(
                r#"{{ "orderId": "{order}", "previousStatus": "StockReserved",
                     "timestamp": "2026-01-05T10:05:00.000Z" }}"#
            ),
        ))
        .await;

    world.dead_letter_names("reason").await;
    assert_eq!(world.stock.releases_for(order), 0);
}

#[tokio::test]
async fn an_order_reservation_refused_with_unknown_fields_releases_the_reservation() {
    let world = World::start().await;
    let order = Uuid::new_v4();
    world.publish(&paid_json(order, "")).await;
    world.settles_without_dead_letters().await;
    let reservation = world.stock.reservation_for(order).unwrap();

    world
        .publish(&envelope_json(
            topics::ORDER_RESERVATION_REFUSED,
            order,
            UNKNOWN_ENVELOPE_FIELDS,
            &format!(
                r#"{{ "orderId": "{order}", "reservationId": "{reservation}",
                     "reason": "order already cancelled", "refusedBy": {{ "replica": 2 }},
                     "timestamp": "2026-01-05T10:05:00.000Z" }}"#
            ),
        ))
        .await;

    world.settles_without_dead_letters().await;
    let released: Vec<StockReleased> = world.answers(topics::STOCK_RELEASED);
    assert_eq!(released.len(), 1, "{released:?}");
    assert_eq!(released[0].reservation_id, reservation);
    assert_eq!(world.stock.net_reservations_for(order), 0);
}

#[tokio::test]
async fn an_order_reservation_refused_without_reservation_id_is_dead_lettered_naming_the_field() {
    let world = World::start().await;
    let order = Uuid::new_v4();
    world.publish(&paid_json(order, "")).await;
    world.settles_without_dead_letters().await;

    world
        .publish(&envelope_json(
            topics::ORDER_RESERVATION_REFUSED,
            order,
            "",
            &format!(
                r#"{{ "orderId": "{order}", "reason": "order already cancelled",
                     "timestamp": "2026-01-05T10:05:00.000Z" }}"#
            ),
        ))
        .await;

    world.dead_letter_names("reservationId").await;
    assert_eq!(world.stock.net_reservations_for(order), 1);
}

// ---------------------------------------------------------------------------------------
// Helpers

/// A bus with a running Stock and a recorder of its answers.
struct World {
    bus: InMemoryBus,
    stock: StockHandle,
    answers: Arc<Recorder>,
    /// Keeps the recorder attached for the whole test.
    _recording: SubscriptionHandle,
}

impl World {
    async fn start() -> Self {
        let bus = InMemoryBus::default();
        let answers = Arc::new(Recorder::default());
        let subscription = Subscription::new("answers")
            .topic(topics::STOCK_RESERVED)
            .topic(topics::STOCK_RESERVATION_FAILED)
            .topic(topics::STOCK_RELEASED);
        let recording = bus.subscribe(subscription, answers.clone()).await.unwrap();
        let stock = StockService::start(Arc::new(bus.clone()), StockConfig::default())
            .await
            .unwrap();
        Self {
            bus,
            stock,
            answers,
            _recording: recording,
        }
    }

    async fn publish(&self, envelope: &Envelope) {
        self.bus.publish(envelope.clone()).await.unwrap();
    }

    /// The payloads Stock published on `topic`.
    fn answers<T: serde::de::DeserializeOwned>(&self, topic: &str) -> Vec<T> {
        self.answers
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.topic == topic)
            .map(|e| e.decode().unwrap())
            .collect()
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

    /// The one dead letter is Stock's, not retried, and its reason names `field`.
    async fn dead_letter_names(&self, field: &str) {
        self.settle().await;
        let dead = self.bus.dead_letters();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0].subscriber, stock_sim::CONSUMER_GROUP);
        assert_eq!(dead[0].attempts, 1, "a bad payload is not retried");
        let reason = dead[0].error.to_string();
        assert!(
            reason.contains(&format!("`{field}`")),
            "the reason names `{field}`: {reason}"
        );
    }
}

/// Records every envelope it is given.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<Envelope>>,
}

#[async_trait]
impl MessageHandler for Recorder {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        self.seen.lock().unwrap().push(envelope.clone());
        Ok(())
    }
}

/// An `order.paid` of two `sku-1` with unknown fields in the payload and its items.
fn paid_json(order: Uuid, envelope_extra: &str) -> Envelope {
    envelope_json(
        topics::ORDER_PAID,
        order,
        envelope_extra,
        &format!(
            r#"{{ "orderId": "{order}", "paymentId": "pay-1", "amount": 21.00,
                 "currency": "EUR",
                 "items": [ {{ "productId": "sku-1", "quantity": 2,
                              "weightGrams": 350, "hazmat": {{ "class": null }} }} ],
                 "paymentMethod": "card", "capturedAt": "2026-01-05T10:00:01.000Z",
                 "timestamp": "2026-01-05T10:00:01.000Z" }}"#
        ),
    )
}

/// Reads a hand-written envelope: a fresh message id, `extra` fields (with a trailing
/// comma) among the known ones, and `payload` as written.
fn envelope_json(topic: &str, order: Uuid, extra: &str, payload: &str) -> Envelope {
    let json = format!(
        r#"{{ "messageId": "{}", "topic": "{topic}", "timestamp": "2026-01-05T10:00:00.500Z",
             {extra}
             "correlationId": "{order}", "causationId": null, "payload": {payload} }}"#,
        Uuid::new_v4()
    );
    Envelope::from_json(json.as_bytes())
        .unwrap_or_else(|e| panic!("the envelope reader refused {json}: {e}"))
}
