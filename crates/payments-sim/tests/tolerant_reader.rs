//! Payments is a tolerant reader (docs/design.md §5), proven through the in-memory bus:
//! for each topic it consumes (`order.placed`, `order.cancelled`,
//! `order.payment_refused`) it answers a message whose envelope and payload carry fields
//! it does not know, and it dead-letters a payload that lacks a required field with a
//! reason naming that field (its wire name).
//!
//! Every message is hand-written JSON read with `Envelope::from_json`, as it arrives from
//! a network bus or from a producer of a newer contract version.
#![allow(clippy::unwrap_used)]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use contracts::{PaymentApproved, PaymentRefunded, topics};
use messaging::{
    Envelope, HandlerError, InMemoryBus, MessageBus, MessageHandler, Subscription,
    SubscriptionHandle,
};
use payments_sim::{PaymentsConfig, PaymentsHandle, PaymentsService};
use rust_decimal_macros::dec;
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
async fn an_order_placed_with_unknown_fields_is_approved() {
    let world = World::start().await;
    let order = Uuid::new_v4();

    world
        .publish(&placed_json(order, UNKNOWN_ENVELOPE_FIELDS))
        .await;

    world.settles_without_dead_letters().await;
    let approved: Vec<PaymentApproved> = world.answers(topics::PAYMENT_APPROVED);
    assert_eq!(approved.len(), 1, "{approved:?}");
    assert_eq!(approved[0].order_id, order);
    assert_eq!(approved[0].approved_amount, dec!(30.30));
}

#[tokio::test]
async fn an_order_cancelled_with_unknown_fields_refunds_the_payment() {
    let world = World::start().await;
    let order = Uuid::new_v4();
    world.publish(&placed_json(order, "")).await;
    world.settles_without_dead_letters().await;
    let payment = world.payments.payment_for(order).unwrap();

    world
        .publish(&envelope_json(
            topics::ORDER_CANCELLED,
            order,
            UNKNOWN_ENVELOPE_FIELDS,
            &format!(
                r#"{{ "orderId": "{order}", "reason": "customer request",
                     "previousStatus": "Paid", "paymentId": "{payment}",
                     "reservationId": null, "cancelledBy": {{ "kind": "customer" }},
                     "refundPolicy": "full", "timestamp": "2026-01-05T10:05:00.000Z" }}"#
            ),
        ))
        .await;

    world.settles_without_dead_letters().await;
    let refunded: Vec<PaymentRefunded> = world.answers(topics::PAYMENT_REFUNDED);
    assert_eq!(refunded.len(), 1, "{refunded:?}");
    assert_eq!(refunded[0].payment_id, payment);
    assert_eq!(world.payments.refunds_for(order), 1);
}

// ---------------------------------------------------------------------------------------
// A missing required field is a dead letter naming it

#[tokio::test]
async fn an_order_placed_without_total_amount_is_dead_lettered_naming_the_field() {
    let world = World::start().await;
    let order = Uuid::new_v4();

    world
        .publish(&envelope_json(
            topics::ORDER_PLACED,
            order,
            "",
            &format!(
                r#"{{ "orderId": "{order}", "customerId": "customer-1",
                     "items": [ {{ "productId": "sku-1", "quantity": 1, "price": 30.30 }} ],
                     "currency": "EUR", "shippingAddress": {ADDRESS},
                     "timestamp": "2026-01-05T10:00:00.000Z" }}"#
            ),
        ))
        .await;

    world.dead_letter_names("totalAmount").await;
    assert_eq!(world.payments.approved_count(), 0);
}

#[tokio::test]
async fn an_order_placed_without_a_postal_code_is_dead_lettered_naming_the_nested_field() {
    let world = World::start().await;
    let order = Uuid::new_v4();

    world
        .publish(&envelope_json(
            topics::ORDER_PLACED,
            order,
            "",
            &format!(
                r#"{{ "orderId": "{order}", "customerId": "customer-1",
                     "items": [ {{ "productId": "sku-1", "quantity": 1, "price": 30.30 }} ],
                     "totalAmount": 30.30, "currency": "EUR",
                     "shippingAddress": {{ "street": "1 Main Street", "city": "Lisbon",
                                           "country": "PT" }},
                     "timestamp": "2026-01-05T10:00:00.000Z" }}"#
            ),
        ))
        .await;

    world.dead_letter_names("postalCode").await;
    assert_eq!(world.payments.approved_count(), 0);
}

#[tokio::test]
async fn an_order_cancelled_without_previous_status_is_dead_lettered_naming_the_field() {
    let world = World::start().await;
    let order = Uuid::new_v4();
    world.publish(&placed_json(order, "")).await;
    world.settles_without_dead_letters().await;

    world
        .publish(&envelope_json(
            topics::ORDER_CANCELLED,
            order,
            "",
            &format!(
                r#"{{ "orderId": "{order}", "reason": "customer request",
                     "timestamp": "2026-01-05T10:05:00.000Z" }}"#
            ),
        ))
        .await;

    world.dead_letter_names("previousStatus").await;
    assert_eq!(world.payments.refunds_for(order), 0);
}

#[tokio::test]
async fn an_order_payment_refused_with_unknown_fields_refunds_the_payment() {
    let world = World::start().await;
    let order = Uuid::new_v4();
    world.publish(&placed_json(order, "")).await;
    world.settles_without_dead_letters().await;
    let payment = world.payments.payment_for(order).unwrap();

    world
        .publish(&envelope_json(
            topics::ORDER_PAYMENT_REFUSED,
            order,
            UNKNOWN_ENVELOPE_FIELDS,
            &format!(
                r#"{{ "orderId": "{order}", "paymentId": "{payment}", "amount": 30.30,
                     "currency": "EUR", "reason": "order already cancelled",
                     "refusedBy": {{ "replica": 2 }}, "timestamp": "2026-01-05T10:05:00.000Z" }}"#
            ),
        ))
        .await;

    world.settles_without_dead_letters().await;
    let refunded: Vec<PaymentRefunded> = world.answers(topics::PAYMENT_REFUNDED);
    assert_eq!(refunded.len(), 1, "{refunded:?}");
    assert_eq!(refunded[0].payment_id, payment);
    assert_eq!(world.payments.net_charges_for(order), 0);
}

#[tokio::test]
async fn an_order_payment_refused_without_payment_id_is_dead_lettered_naming_the_field() {
    let world = World::start().await;
    let order = Uuid::new_v4();
    world.publish(&placed_json(order, "")).await;
    world.settles_without_dead_letters().await;

    world
        .publish(&envelope_json(
            topics::ORDER_PAYMENT_REFUSED,
            order,
            "",
            &format!(
                r#"{{ "orderId": "{order}", "amount": 30.30, "currency": "EUR",
                     "reason": "order already cancelled", "timestamp": "2026-01-05T10:05:00.000Z" }}"#
            ),
        ))
        .await;

    world.dead_letter_names("paymentId").await;
    assert_eq!(world.payments.net_charges_for(order), 1);
}

// ---------------------------------------------------------------------------------------
// Helpers

/// A shipping address as `order.placed` carries it, with a field no version defined.
const ADDRESS: &str = r#"{ "street": "1 Main Street", "city": "Lisbon", "postalCode": "1000-001",
    "country": "PT", "geo": { "lat": 38.71, "lon": -9.14 } }"#;

/// A bus with a running Payments and a recorder of its answers.
struct World {
    bus: InMemoryBus,
    payments: PaymentsHandle,
    answers: Arc<Recorder>,
    /// Keeps the recorder attached for the whole test.
    _recording: SubscriptionHandle,
}

impl World {
    async fn start() -> Self {
        let bus = InMemoryBus::default();
        let answers = Arc::new(Recorder::default());
        let subscription = Subscription::new("answers")
            .topic(topics::PAYMENT_APPROVED)
            .topic(topics::PAYMENT_DECLINED)
            .topic(topics::PAYMENT_REFUNDED);
        let recording = bus.subscribe(subscription, answers.clone()).await.unwrap();
        let payments = PaymentsService::start(Arc::new(bus.clone()), PaymentsConfig::default())
            .await
            .unwrap();
        Self {
            bus,
            payments,
            answers,
            _recording: recording,
        }
    }

    async fn publish(&self, envelope: &Envelope) {
        self.bus.publish(envelope.clone()).await.unwrap();
    }

    /// The payloads Payments published on `topic`.
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

    /// The one dead letter is Payments', not retried, and its reason names `field`.
    async fn dead_letter_names(&self, field: &str) {
        self.settle().await;
        let dead = self.bus.dead_letters();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0].subscriber, payments_sim::CONSUMER_GROUP);
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

/// An `order.placed` of 30.30 EUR with unknown fields in the payload, its items and its
/// address.
fn placed_json(order: Uuid, envelope_extra: &str) -> Envelope {
    envelope_json(
        topics::ORDER_PLACED,
        order,
        envelope_extra,
        &format!(
            r#"{{ "orderId": "{order}", "customerId": "customer-1",
                 "items": [ {{ "productId": "sku-1", "quantity": 1, "price": 30.30,
                              "discount": {{ "code": "SPRING", "percent": 0 }} }} ],
                 "totalAmount": 30.30, "currency": "EUR", "shippingAddress": {ADDRESS},
                 "loyaltyTier": "gold", "giftMessage": null,
                 "timestamp": "2026-01-05T10:00:00.000Z" }}"#
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
