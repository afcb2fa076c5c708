//! JSON Schemas of the wire contract (DESIGN §5), generated from this crate's types: one
//! per topic's payload and one of the envelope. Behind the cargo feature `schema`; the
//! checked-in copies live in `crates/contracts/schemas/`, written by `cargo xtask schemas`
//! and compared with these by the crate's tests and by `cargo xtask schemas --check`.
//!
//! * Draft 2020-12, every subschema inlined (no `$ref`), so each file stands alone for a
//!   reader in any language, and the compatibility check compares plain trees.
//! * The schemas describe what a reader accepts: a field is `required` when a consumer
//!   refuses a payload without it (an `Option` field is not). Unknown fields are allowed
//!   (no `additionalProperties: false`): readers are tolerant.
//! * Amounts are `"type": "number"` (exact decimals on the wire), timestamps
//!   `"type": "string", "format": "date-time"`, ids of ours `"format": "uuid"`.
//! * Keys are written sorted, two-space indented, with a final newline: the text is
//!   stable, so a contract change is a readable diff.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{
    OrderCancelled, OrderPaid, OrderPaymentRefused, OrderPlaced, OrderReservationRefused,
    PaymentApproved, PaymentDeclined, PaymentRefunded, StockReleased, StockReservationFailed,
    StockReserved, rfc3339, topics,
};

/// The name of the envelope's schema (its file is `envelope.json`); every other schema is
/// named by its topic.
pub const ENVELOPE: &str = "envelope";

/// Generates one root schema.
type Generate = fn() -> Schema;

/// Each topic with the root schema of its payload type, in the order of [`topics::ALL`].
const PAYLOADS: [(&str, Generate); topics::ALL.len()] = [
    (topics::ORDER_PLACED, root::<OrderPlaced>),
    (topics::ORDER_PAID, root::<OrderPaid>),
    (topics::ORDER_CANCELLED, root::<OrderCancelled>),
    (topics::ORDER_PAYMENT_REFUSED, root::<OrderPaymentRefused>),
    (
        topics::ORDER_RESERVATION_REFUSED,
        root::<OrderReservationRefused>,
    ),
    (topics::PAYMENT_APPROVED, root::<PaymentApproved>),
    (topics::PAYMENT_DECLINED, root::<PaymentDeclined>),
    (topics::PAYMENT_REFUNDED, root::<PaymentRefunded>),
    (topics::STOCK_RESERVED, root::<StockReserved>),
    (
        topics::STOCK_RESERVATION_FAILED,
        root::<StockReservationFailed>,
    ),
    (topics::STOCK_RELEASED, root::<StockReleased>),
];

/// Every schema by name: the envelope's ([`ENVELOPE`]) and each topic's.
#[must_use]
pub fn all() -> BTreeMap<String, Value> {
    let mut schemas: BTreeMap<String, Value> = PAYLOADS
        .iter()
        .map(|(topic, generate)| ((*topic).to_owned(), titled(generate(), topic)))
        .collect();
    schemas.insert(ENVELOPE.to_owned(), envelope());
    schemas
}

/// The schema of `topic`'s payload, or `None` for a topic this crate does not define.
#[must_use]
pub fn payload(topic: &str) -> Option<Value> {
    PAYLOADS
        .iter()
        .find(|(name, _)| *name == topic)
        .map(|(name, generate)| titled(generate(), name))
}

/// The schema of the envelope around every payload.
#[must_use]
pub fn envelope() -> Value {
    titled(root::<Envelope>(), ENVELOPE)
}

/// `schema` as the checked-in files hold it: pretty JSON, keys sorted at every level,
/// two-space indent, a final newline.
///
/// # Errors
/// serde_json's error, which a JSON value does not cause.
pub fn to_pretty_json(schema: &Value) -> Result<String, serde_json::Error> {
    let mut text = serde_json::to_string_pretty(&sorted(schema))?;
    text.push('\n');
    Ok(text)
}

// `messaging::Envelope` writes and reads the envelope; this crate cannot depend on
// `messaging`, so this type describes it for the schema only, and the crate's tests check
// that both name the same fields. Its doc comments are the schema's descriptions.
/// The envelope around every integration message: metadata, and the payload of its topic.
#[derive(JsonSchema)]
#[serde(rename_all = "camelCase")]
#[expect(dead_code, reason = "only its JSON Schema is used")]
struct Envelope {
    /// Unique id of this message; a re-published message keeps it, so consumers drop the
    /// repeat.
    message_id: Uuid,
    /// The topic, e.g. `order.placed`: names the schema of `payload`.
    topic: String,
    /// When the message was created, RFC 3339 UTC with milliseconds.
    #[schemars(schema_with = "rfc3339::schema")]
    timestamp: DateTime<Utc>,
    /// Groups all messages of one business flow: the order id. Order is kept per value.
    correlation_id: String,
    /// The message that caused this one; `null` for a message caused by a command.
    causation_id: Option<Uuid>,
    /// The payload, as the topic's schema describes it.
    #[schemars(schema_with = "payload_object")]
    payload: (),
    /// W3C Trace Context `traceparent` linking the hops of one order into one trace;
    /// optional, and readers that do not know it ignore it.
    traceparent: Option<String>,
}

/// Any JSON object: the envelope's schema leaves the payload to the topic's.
fn payload_object(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({ "type": "object" })
}

/// The root schema of `T`: draft 2020-12, subschemas inlined, as a reader sees it.
fn root<T: JsonSchema>() -> Schema {
    SchemaSettings::draft2020_12()
        .with(|settings| settings.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<T>()
}

/// `schema` as a JSON value titled `name` (the topic, rather than the Rust type's name).
fn titled(schema: Schema, name: &str) -> Value {
    let mut value = schema.to_value();
    if let Value::Object(fields) = &mut value {
        fields.insert("title".to_owned(), Value::from(name));
    }
    value
}

/// `value` with the keys of every object in sorted order, whatever map serde_json uses.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(fields) => {
            let mut keys: Vec<&String> = fields.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for key in keys {
                out.insert(key.clone(), sorted(&fields[key]));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_has_a_payload_schema_in_topic_order() {
        let names: Vec<&str> = PAYLOADS.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, topics::ALL);
        assert_eq!(
            all().len(),
            topics::ALL.len() + 1,
            "the topics and the envelope"
        );
    }

    #[test]
    fn amounts_are_numbers_timestamps_date_times_and_order_ids_uuids() {
        let placed = payload(topics::ORDER_PLACED).unwrap();
        let properties = &placed["properties"];

        assert_eq!(properties["totalAmount"]["type"], "number");
        assert_eq!(
            properties["items"]["items"]["properties"]["price"]["type"],
            "number"
        );
        assert_eq!(properties["timestamp"]["type"], "string");
        assert_eq!(properties["timestamp"]["format"], "date-time");
        assert_eq!(properties["orderId"]["format"], "uuid");
    }

    #[test]
    fn optional_ids_are_not_required_and_may_be_null() {
        let cancelled = payload(topics::ORDER_CANCELLED).unwrap();
        let required = cancelled["required"].as_array().cloned().unwrap();

        assert!(
            !required.contains(&Value::from("paymentId")),
            "{required:?}"
        );
        assert!(required.contains(&Value::from("orderId")), "{required:?}");
        assert_eq!(
            cancelled["properties"]["paymentId"]["type"],
            serde_json::json!(["string", "null"])
        );
    }

    #[test]
    fn no_schema_refers_elsewhere() {
        for (name, schema) in all() {
            let text = to_pretty_json(&schema).unwrap();
            assert!(!text.contains("$ref"), "{name} has a $ref:\n{text}");
            assert!(!text.contains("$defs"), "{name} has $defs:\n{text}");
        }
    }

    #[test]
    fn keys_are_written_sorted() {
        let text = to_pretty_json(&serde_json::json!({ "b": 1, "a": { "d": 2, "c": 3 } })).unwrap();

        assert_eq!(
            text,
            "{\n  \"a\": {\n    \"c\": 3,\n    \"d\": 2\n  },\n  \"b\": 1\n}\n"
        );
    }
}
