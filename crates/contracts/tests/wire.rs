//! The wire contract (DESIGN §5), pinned: a reviewed snapshot of every topic's payload and
//! of a whole envelope, plus the rules a snapshot cannot show on its own: amounts are
//! exact JSON numbers, readers ignore unknown fields, timestamps are UTC with
//! milliseconds, and absent optional ids read as `None`.
//!
//! Snapshots are taken of the JSON text serde_json writes, not through
//! `insta::assert_json_snapshot!`: insta re-serializes values through its own data model,
//! which knows neither serde_json's arbitrary-precision numbers (an amount would show as
//! `{"$serde_json::private::Number": "0.1"}`) nor raw payloads, so it cannot show what
//! actually goes on the wire. Ids and timestamps are deterministic and still redacted
//! (each kind under its own label, so `correlationId = [order-id]` stays visible); their
//! formats are pinned by the tests below instead.
#![allow(clippy::unwrap_used)]

use std::fmt::Debug;

use chrono::{DateTime, TimeZone, Utc};
use contracts::{
    ItemQuantity, OrderCancelled, OrderPaid, OrderPaymentRefused, OrderPlaced,
    OrderReservationRefused, PaymentApproved, PaymentDeclined, PaymentRefunded, PricedItem,
    ShippingAddress, StockReleased, StockReservationFailed, StockReserved, topics,
};
use messaging::Envelope;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use uuid::{Uuid, uuid};

const ORDER_ID: Uuid = uuid!("3f2504e0-4f89-41d3-9a0c-0305e82c3301");
const PAYMENT_ID: &str = "9b2d6c1e-5a7f-4e3b-8c0d-1f2a3b4c5d6e";
const RESERVATION_ID: &str = "c4e8a1b2-3d5f-4a6b-9c7d-8e9f0a1b2c3d";
const MESSAGE_ID: Uuid = uuid!("6fa459ea-ee8a-4ca4-894e-db77e160355e");
const CAUSATION_ID: Uuid = uuid!("1b4e28ba-2fa1-41d2-883f-0016d3cca427");
const TIMESTAMP: &str = "2026-01-05T10:00:00.000Z";

// ---------------------------------------------------------------------------------------
// Snapshots

#[test]
fn every_topic_has_a_reviewed_payload_snapshot() {
    for topic in topics::ALL {
        insta::assert_snapshot!(topic, redacted(&sample_json(topic)));
    }
}

#[test]
fn an_order_placed_envelope_has_the_reviewed_shape() {
    let envelope = Envelope::new(
        MESSAGE_ID,
        topics::ORDER_PLACED,
        at(),
        ORDER_ID.to_string(),
        None,
        &order_placed(),
    )
    .unwrap();

    insta::assert_snapshot!(redacted(&pretty(&envelope)));
}

#[test]
fn a_reaction_envelope_names_the_message_that_caused_it() {
    let envelope = Envelope::new(
        MESSAGE_ID,
        topics::PAYMENT_APPROVED,
        at(),
        ORDER_ID.to_string(),
        Some(CAUSATION_ID),
        &payment_approved(),
    )
    .unwrap();

    insta::assert_snapshot!(redacted(&pretty(&envelope)));
}

#[test]
fn a_traced_envelope_carries_its_w3c_traceparent_last() {
    let mut envelope = Envelope::new(
        MESSAGE_ID,
        topics::PAYMENT_APPROVED,
        at(),
        ORDER_ID.to_string(),
        Some(CAUSATION_ID),
        &payment_approved(),
    )
    .unwrap();
    envelope.traceparent =
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned());

    insta::assert_snapshot!(redacted(&pretty(&envelope)));
}

#[test]
fn an_order_payment_refused_names_the_refused_payment_its_amount_and_why() {
    let json = serde_json::to_string(&order_payment_refused()).unwrap();

    assert_eq!(
        json,
        format!(
            r#"{{"orderId":"{ORDER_ID}","paymentId":"{PAYMENT_ID}","amount":50.20,"currency":"EUR","reason":"a second payment for a paid order","timestamp":"{TIMESTAMP}"}}"#
        )
    );
    let read: OrderPaymentRefused = serde_json::from_str(&json).unwrap();
    assert_eq!(read, order_payment_refused());
}

#[test]
fn an_order_reservation_refused_names_the_refused_reservation_and_why() {
    let json = serde_json::to_string(&order_reservation_refused()).unwrap();

    assert_eq!(
        json,
        format!(
            r#"{{"orderId":"{ORDER_ID}","reservationId":"{RESERVATION_ID}","reason":"the order is cancelled","timestamp":"{TIMESTAMP}"}}"#
        )
    );
    let read: OrderReservationRefused = serde_json::from_str(&json).unwrap();
    assert_eq!(read, order_reservation_refused());
}

#[test]
fn an_order_reservation_refused_without_reservation_id_is_refused_naming_the_field() {
    let json = format!(
        r#"{{"orderId":"{ORDER_ID}","reason":"the order is cancelled","timestamp":"{TIMESTAMP}"}}"#
    );

    let error = serde_json::from_str::<OrderReservationRefused>(&json).unwrap_err();

    assert!(
        error.to_string().contains("missing field `reservationId`"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------
// Schemas

#[test]
fn every_sample_payload_has_the_shape_its_schema_describes() {
    for topic in topics::ALL {
        let schema = contracts::schema::payload(topic)
            .unwrap_or_else(|| panic!("no schema for topic {topic}"));
        let written: Value = serde_json::from_str(&sample_json(topic)).unwrap();

        let mismatches = shape_mismatches(&schema, &written, topic);

        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    }
}

// ---------------------------------------------------------------------------------------
// Amounts

#[test]
fn prices_of_0_1_and_0_2_are_written_as_json_numbers_totalling_0_3() {
    let mut order = order_placed();
    order.items = vec![priced("sku-1", dec!(0.1)), priced("sku-2", dec!(0.2))];
    order.total_amount = order.items.iter().map(|item| item.price).sum();

    let json = serde_json::to_string(&order).unwrap();

    assert!(json.contains(r#""price":0.1"#), "{json}");
    assert!(json.contains(r#""price":0.2"#), "{json}");
    assert!(json.contains(r#""totalAmount":0.3"#), "{json}");
    let read: OrderPlaced = serde_json::from_str(&json).unwrap();
    let total: Decimal = read.items.iter().map(|item| item.price).sum();
    assert_eq!(total, dec!(0.3));
    assert_eq!(read.total_amount, dec!(0.3));
}

#[test]
fn an_amount_of_0_3_reads_as_exactly_decimal_0_3() {
    let json = format!(
        r#"{{"orderId":"{ORDER_ID}","paymentId":"{PAYMENT_ID}","approvedAmount":0.3,"currency":"EUR","timestamp":"{TIMESTAMP}"}}"#
    );

    let approved: PaymentApproved = serde_json::from_str(&json).unwrap();

    assert_eq!(approved.approved_amount, dec!(0.3));
    assert_eq!(approved.approved_amount.to_string(), "0.3");
}

#[test]
fn a_long_decimal_round_trips_exactly() {
    let amount = dec!(12345678901234.56789);
    let mut paid = order_paid();
    paid.amount = amount;

    let json = serde_json::to_string(&paid).unwrap();
    let read: OrderPaid = serde_json::from_str(&json).unwrap();

    assert!(json.contains(r#""amount":12345678901234.56789"#), "{json}");
    assert_eq!(read.amount, amount);
    assert_eq!(read.amount.to_string(), "12345678901234.56789");
}

#[test]
fn an_amount_keeps_its_scale_on_the_wire() {
    let mut refunded = payment_refunded();
    refunded.amount = dec!(10.50);

    let json = serde_json::to_string(&refunded).unwrap();

    assert!(json.contains(r#""amount":10.50"#), "{json}");
}

// ---------------------------------------------------------------------------------------
// Tolerant reader

#[test]
fn every_payload_is_read_with_unknown_fields_ignored() {
    for topic in topics::ALL {
        match topic {
            topics::ORDER_PLACED => reads_despite_unknown_fields(topic, order_placed()),
            topics::ORDER_PAID => reads_despite_unknown_fields(topic, order_paid()),
            topics::ORDER_CANCELLED => reads_despite_unknown_fields(topic, order_cancelled()),
            topics::ORDER_PAYMENT_REFUSED => {
                reads_despite_unknown_fields(topic, order_payment_refused());
            }
            topics::ORDER_RESERVATION_REFUSED => {
                reads_despite_unknown_fields(topic, order_reservation_refused());
            }
            topics::PAYMENT_APPROVED => reads_despite_unknown_fields(topic, payment_approved()),
            topics::PAYMENT_DECLINED => reads_despite_unknown_fields(topic, payment_declined()),
            topics::PAYMENT_REFUNDED => reads_despite_unknown_fields(topic, payment_refunded()),
            topics::STOCK_RESERVED => reads_despite_unknown_fields(topic, stock_reserved()),
            topics::STOCK_RESERVATION_FAILED => {
                reads_despite_unknown_fields(topic, stock_reservation_failed());
            }
            topics::STOCK_RELEASED => reads_despite_unknown_fields(topic, stock_released()),
            other => panic!("no sample for topic {other}"),
        }
    }
}

#[test]
fn an_order_cancelled_without_payment_or_reservation_reads_them_as_none() {
    let json = format!(
        r#"{{"orderId":"{ORDER_ID}","reason":"customer request","previousStatus":"AwaitingPayment","timestamp":"{TIMESTAMP}"}}"#
    );

    let cancelled: OrderCancelled = serde_json::from_str(&json).unwrap();

    assert_eq!(cancelled.payment_id, None);
    assert_eq!(cancelled.reservation_id, None);
}

#[test]
fn an_order_cancelled_with_null_ids_reads_them_as_none() {
    let json = format!(
        r#"{{"orderId":"{ORDER_ID}","reason":"customer request","previousStatus":"Paid","paymentId":null,"reservationId":null,"timestamp":"{TIMESTAMP}"}}"#
    );

    let cancelled: OrderCancelled = serde_json::from_str(&json).unwrap();

    assert_eq!(cancelled.payment_id, None);
    assert_eq!(cancelled.reservation_id, None);
}

// ---------------------------------------------------------------------------------------
// Timestamps

#[test]
fn timestamps_are_written_in_utc_with_milliseconds() {
    let json = serde_json::to_string(&stock_released()).unwrap();

    assert!(
        json.contains(r#""timestamp":"2026-01-05T10:00:00.000Z""#),
        "{json}"
    );
}

#[test]
fn sub_millisecond_digits_are_not_written() {
    let mut released = stock_released();
    released.timestamp = Utc
        .with_ymd_and_hms(2026, 1, 5, 10, 0, 0)
        .unwrap()
        .checked_add_signed(chrono::TimeDelta::nanoseconds(123_456_789))
        .unwrap();

    let json = serde_json::to_string(&released).unwrap();

    assert!(
        json.contains(r#""timestamp":"2026-01-05T10:00:00.123Z""#),
        "{json}"
    );
}

#[test]
fn a_timestamp_with_an_offset_is_read_as_the_same_instant_in_utc() {
    let json = format!(
        r#"{{"orderId":"{ORDER_ID}","reservationId":"{RESERVATION_ID}","timestamp":"2026-01-05T12:00:00+02:00"}}"#
    );

    let released: StockReleased = serde_json::from_str(&json).unwrap();

    assert_eq!(released.timestamp, at());
    let written = serde_json::to_string(&released).unwrap();
    assert!(written.contains(TIMESTAMP), "{written}");
}

#[test]
fn a_timestamp_that_is_not_rfc_3339_is_refused() {
    let json = format!(
        r#"{{"orderId":"{ORDER_ID}","reservationId":"{RESERVATION_ID}","timestamp":"05/01/2026 10:00"}}"#
    );

    assert!(serde_json::from_str::<StockReleased>(&json).is_err());
}

// ---------------------------------------------------------------------------------------
// Helpers

/// The sample payload of `topic`, as the pretty JSON serde_json writes.
fn sample_json(topic: &str) -> String {
    match topic {
        topics::ORDER_PLACED => pretty(&order_placed()),
        topics::ORDER_PAID => pretty(&order_paid()),
        topics::ORDER_CANCELLED => pretty(&order_cancelled()),
        topics::ORDER_PAYMENT_REFUSED => pretty(&order_payment_refused()),
        topics::ORDER_RESERVATION_REFUSED => pretty(&order_reservation_refused()),
        topics::PAYMENT_APPROVED => pretty(&payment_approved()),
        topics::PAYMENT_DECLINED => pretty(&payment_declined()),
        topics::PAYMENT_REFUNDED => pretty(&payment_refunded()),
        topics::STOCK_RESERVED => pretty(&stock_reserved()),
        topics::STOCK_RESERVATION_FAILED => pretty(&stock_reservation_failed()),
        topics::STOCK_RELEASED => pretty(&stock_released()),
        other => panic!("no sample for topic {other}"),
    }
}

fn pretty<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap()
}

/// Replaces the fixed ids and timestamps of the samples by labels.
fn redacted(json: &str) -> String {
    [
        (ORDER_ID.to_string(), "[order-id]"),
        (PAYMENT_ID.to_owned(), "[payment-id]"),
        (RESERVATION_ID.to_owned(), "[reservation-id]"),
        (MESSAGE_ID.to_string(), "[message-id]"),
        (CAUSATION_ID.to_string(), "[causation-id]"),
        (TIMESTAMP.to_owned(), "[timestamp]"),
    ]
    .iter()
    .fold(json.to_owned(), |json, (value, label)| {
        json.replace(&format!("\"{value}\""), &format!("\"{label}\""))
    })
}

/// Writes `sample`, adds unknown fields to every object in it, and reads it back.
fn reads_despite_unknown_fields<T>(topic: &str, sample: T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let mut value: Value = serde_json::from_str(&serde_json::to_string(&sample).unwrap()).unwrap();
    add_unknown_fields(&mut value);
    let json = serde_json::to_string(&value).unwrap();

    let read: T = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("{topic} refused unknown fields: {e}\n{json}"));

    assert_eq!(read, sample, "{topic}");
}

fn add_unknown_fields(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            fields.values_mut().for_each(add_unknown_fields);
            fields.insert("addedInV2".into(), Value::from("ignored"));
            fields.insert(
                "nestedAddition".into(),
                serde_json::json!({ "depth": [1, 2.5, null], "flag": true }),
            );
        }
        Value::Array(items) => items.iter_mut().for_each(add_unknown_fields),
        _ => {}
    }
}

/// Where `value` does not have the shape `schema` describes: a JSON type other than the
/// schema's `type`, a written field the schema does not name, a required field missing.
/// (The subset of JSON Schema the contract uses; enough to see that the types write what
/// their schemas say.)
fn shape_mismatches(schema: &Value, value: &Value, path: &str) -> Vec<String> {
    let json_type = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let allowed: Vec<&str> = match &schema["type"] {
        Value::String(one) => vec![one.as_str()],
        Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    // Every integer is a number too; an amount of 50 is written as an integer.
    let fits =
        allowed.contains(&json_type) || (json_type == "integer" && allowed.contains(&"number"));
    if !fits {
        return vec![format!(
            "{path}: written as {json_type}, schema says {allowed:?}"
        )];
    }
    let mut mismatches = Vec::new();
    match value {
        Value::Object(fields) => {
            for (name, field) in fields {
                match schema["properties"].get(name) {
                    Some(field_schema) => mismatches.extend(shape_mismatches(
                        field_schema,
                        field,
                        &format!("{path}.{name}"),
                    )),
                    None => mismatches.push(format!("{path}.{name}: written, not in the schema")),
                }
            }
            let required = schema["required"].as_array().cloned().unwrap_or_default();
            for name in required.iter().filter_map(Value::as_str) {
                if !fields.contains_key(name) {
                    mismatches.push(format!("{path}.{name}: required, not written"));
                }
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                mismatches.extend(shape_mismatches(
                    &schema["items"],
                    item,
                    &format!("{path}[{index}]"),
                ));
            }
        }
        _ => {}
    }
    mismatches
}

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap()
}

fn priced(product: &str, price: Decimal) -> PricedItem {
    PricedItem {
        product_id: product.into(),
        quantity: 1,
        price,
    }
}

fn quantities() -> Vec<ItemQuantity> {
    vec![
        ItemQuantity {
            product_id: "sku-keyboard".into(),
            quantity: 1,
        },
        ItemQuantity {
            product_id: "sku-cable".into(),
            quantity: 3,
        },
    ]
}

fn order_placed() -> OrderPlaced {
    OrderPlaced {
        order_id: ORDER_ID,
        customer_id: "customer-42".into(),
        items: vec![
            PricedItem {
                product_id: "sku-keyboard".into(),
                quantity: 1,
                price: dec!(49.90),
            },
            PricedItem {
                product_id: "sku-cable".into(),
                quantity: 3,
                price: dec!(0.1),
            },
        ],
        total_amount: dec!(50.20),
        currency: "EUR".into(),
        shipping_address: ShippingAddress {
            street: "Rua Augusta 1".into(),
            city: "Lisboa".into(),
            postal_code: "1100-048".into(),
            country: "PT".into(),
        },
        timestamp: at(),
    }
}

fn order_paid() -> OrderPaid {
    OrderPaid {
        order_id: ORDER_ID,
        payment_id: PAYMENT_ID.into(),
        amount: dec!(50.20),
        currency: "EUR".into(),
        items: quantities(),
        timestamp: at(),
    }
}

fn order_cancelled() -> OrderCancelled {
    OrderCancelled {
        order_id: ORDER_ID,
        reason: "customer request".into(),
        previous_status: "StockReserved".into(),
        payment_id: Some(PAYMENT_ID.into()),
        paid_amount: None,
        currency: None,
        reservation_id: Some(RESERVATION_ID.into()),
        timestamp: at(),
    }
}

fn order_payment_refused() -> OrderPaymentRefused {
    OrderPaymentRefused {
        order_id: ORDER_ID,
        payment_id: PAYMENT_ID.into(),
        amount: dec!(50.20),
        currency: "EUR".into(),
        reason: "a second payment for a paid order".into(),
        timestamp: at(),
    }
}

fn order_reservation_refused() -> OrderReservationRefused {
    OrderReservationRefused {
        order_id: ORDER_ID,
        reservation_id: RESERVATION_ID.into(),
        reason: "the order is cancelled".into(),
        timestamp: at(),
    }
}

fn payment_approved() -> PaymentApproved {
    PaymentApproved {
        order_id: ORDER_ID,
        payment_id: PAYMENT_ID.into(),
        approved_amount: dec!(50.20),
        currency: "EUR".into(),
        timestamp: at(),
    }
}

fn payment_declined() -> PaymentDeclined {
    PaymentDeclined {
        order_id: ORDER_ID,
        reason: "amount 50.20 EUR exceeds the limit of 50 EUR".into(),
        timestamp: at(),
    }
}

fn payment_refunded() -> PaymentRefunded {
    PaymentRefunded {
        order_id: ORDER_ID,
        payment_id: PAYMENT_ID.into(),
        amount: dec!(50.20),
        currency: "EUR".into(),
        timestamp: at(),
    }
}

fn stock_reserved() -> StockReserved {
    StockReserved {
        order_id: ORDER_ID,
        reservation_id: RESERVATION_ID.into(),
        items: quantities(),
        timestamp: at(),
    }
}

fn stock_reservation_failed() -> StockReservationFailed {
    StockReservationFailed {
        order_id: ORDER_ID,
        reason: "out of stock: sku-cable".into(),
        timestamp: at(),
    }
}

fn stock_released() -> StockReleased {
    StockReleased {
        order_id: ORDER_ID,
        reservation_id: RESERVATION_ID.into(),
        timestamp: at(),
    }
}
