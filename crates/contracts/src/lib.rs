//! The published language between Orders, Payments and Stock: topic names and payload
//! structs, exactly as the wire contract (DESIGN §5) says.
//!
//! * JSON, camelCase. Readers ignore unknown fields (serde's default: no
//!   `deny_unknown_fields` anywhere here). Writers never rename or remove a field without
//!   a new topic version.
//! * Amounts are JSON numbers read and written as exact decimals (`rust_decimal` with
//!   serde_json's arbitrary precision): `0.1 + 0.2` totals `0.3`.
//! * Timestamps are RFC 3339 UTC with milliseconds.
//!
//! With the cargo feature `schema`, [`schema`] gives the JSON Schema of every topic's
//! payload and of the envelope, as checked in under `crates/contracts/schemas/` (the
//! services build without it).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

#[cfg(feature = "schema")]
pub mod schema;

/// Topic names.
pub mod topics {
    /// Orders: an order was placed.
    pub const ORDER_PLACED: &str = "order.placed";
    /// Orders: an order was paid.
    pub const ORDER_PAID: &str = "order.paid";
    /// Orders: an order was cancelled.
    pub const ORDER_CANCELLED: &str = "order.cancelled";
    /// Orders: Orders refused a payment it did not ask for; Payments should refund it.
    pub const ORDER_PAYMENT_REFUSED: &str = "order.payment_refused";
    /// Orders: Orders refused a stock reservation it did not ask for; Stock should release
    /// it.
    pub const ORDER_RESERVATION_REFUSED: &str = "order.reservation_refused";
    /// Payments: a payment was approved.
    pub const PAYMENT_APPROVED: &str = "payment.approved";
    /// Payments: a payment was declined.
    pub const PAYMENT_DECLINED: &str = "payment.declined";
    /// Payments: a payment was refunded.
    pub const PAYMENT_REFUNDED: &str = "payment.refunded";
    /// Stock: stock was reserved.
    pub const STOCK_RESERVED: &str = "stock.reserved";
    /// Stock: stock could not be reserved.
    pub const STOCK_RESERVATION_FAILED: &str = "stock.reservation_failed";
    /// Stock: a reservation was released.
    pub const STOCK_RELEASED: &str = "stock.released";

    /// Every topic, in flow order.
    pub const ALL: [&str; 11] = [
        ORDER_PLACED,
        ORDER_PAID,
        ORDER_CANCELLED,
        ORDER_PAYMENT_REFUSED,
        ORDER_RESERVATION_REFUSED,
        PAYMENT_APPROVED,
        PAYMENT_DECLINED,
        PAYMENT_REFUNDED,
        STOCK_RESERVED,
        STOCK_RESERVATION_FAILED,
        STOCK_RELEASED,
    ];
}

/// RFC 3339 UTC timestamp with milliseconds on the wire (`2026-01-05T10:00:00.000Z`).
pub mod rfc3339 {
    use super::{DateTime, Deserialize, Deserializer, SecondsFormat, Serializer, Utc};

    /// Writes `2026-01-05T10:00:00.000Z`.
    ///
    /// # Errors
    /// The serializer's error.
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    /// Reads any RFC 3339 timestamp and converts it to UTC.
    ///
    /// # Errors
    /// When the text is not RFC 3339.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }

    /// The JSON Schema of a timestamp: a string in the `date-time` format (RFC 3339).
    #[cfg(feature = "schema")]
    #[must_use]
    pub fn schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "format": "date-time" })
    }
}

/// Exact decimal amounts as JSON numbers (never strings, never `f64`).
pub mod amount {
    pub use rust_decimal::serde::arbitrary_precision::{deserialize, serialize};

    /// The JSON Schema of an amount: a JSON number (read and written as an exact decimal).
    #[cfg(feature = "schema")]
    #[must_use]
    pub fn schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "number" })
    }
    /// The JSON Schema of an optional amount: a JSON number, or absent.
    #[cfg(feature = "schema")]
    #[must_use]
    pub fn optional_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": ["number", "null"] })
    }
}

/// A line of an order with its unit price (`order.placed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PricedItem {
    /// The product (SKU).
    pub product_id: String,
    /// Units, at least 1.
    pub quantity: u32,
    /// Unit price, exact decimal.
    #[serde(with = "amount")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "amount::schema"))]
    pub price: Decimal,
}

/// A line of an order without price (`order.paid`, `stock.reserved`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ItemQuantity {
    /// The product (SKU).
    pub product_id: String,
    /// Units, at least 1.
    pub quantity: u32,
}

/// Where an order is shipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ShippingAddress {
    /// Street and number.
    pub street: String,
    /// City.
    pub city: String,
    /// Postal code.
    pub postal_code: String,
    /// Country.
    pub country: String,
}

/// `order.placed`: Orders took an order; Payments should charge it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct OrderPlaced {
    /// The order.
    pub order_id: Uuid,
    /// The customer.
    pub customer_id: String,
    /// The lines with prices.
    pub items: Vec<PricedItem>,
    /// The sum of all lines.
    #[serde(with = "amount")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "amount::schema"))]
    pub total_amount: Decimal,
    /// ISO 4217 code.
    pub currency: String,
    /// Where it goes.
    pub shipping_address: ShippingAddress,
    /// When it was placed.
    #[serde(with = "rfc3339")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "rfc3339::schema"))]
    pub timestamp: DateTime<Utc>,
}

/// `order.paid`: the order is paid; Stock should reserve its items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct OrderPaid {
    /// The order.
    pub order_id: Uuid,
    /// The payment.
    pub payment_id: String,
    /// The amount paid.
    #[serde(with = "amount")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "amount::schema"))]
    pub amount: Decimal,
    /// ISO 4217 code.
    pub currency: String,
    /// What to reserve.
    pub items: Vec<ItemQuantity>,
    /// When it was paid.
    #[serde(with = "rfc3339")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "rfc3339::schema"))]
    pub timestamp: DateTime<Utc>,
}

/// `order.cancelled`: the order is cancelled; Payments refunds `paymentId`, Stock releases
/// `reservationId`, where present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct OrderCancelled {
    /// The order.
    pub order_id: Uuid,
    /// Why.
    pub reason: String,
    /// The status before (`AwaitingPayment`, `Paid`, `StockReserved`).
    pub previous_status: String,
    /// The payment to refund, if it was paid.
    #[serde(default)]
    pub payment_id: Option<String>,
    /// What that payment charged, if it was paid (so Payments can refund a payment it no
    /// longer remembers). Added after the first release: readers must not require it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::arbitrary_precision_option"
    )]
    #[cfg_attr(feature = "schema", schemars(schema_with = "amount::optional_schema"))]
    pub paid_amount: Option<Decimal>,
    /// The currency of `paidAmount` (ISO 4217), if it was paid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// The reservation to release, if stock was reserved.
    #[serde(default)]
    pub reservation_id: Option<String>,
    /// When it was cancelled.
    #[serde(with = "rfc3339")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "rfc3339::schema"))]
    pub timestamp: DateTime<Utc>,
}

/// `order.payment_refused`: Orders refused a payment (a second, different `paymentId`
/// for a paid order, an approval for a cancelled order, a wrong amount); Payments should
/// refund it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct OrderPaymentRefused {
    /// The order.
    pub order_id: Uuid,
    /// The refused payment.
    pub payment_id: String,
    /// The amount that payment charged, as Payments announced it.
    #[serde(with = "amount")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "amount::schema"))]
    pub amount: Decimal,
    /// ISO 4217 code, as Payments announced it.
    pub currency: String,
    /// Why Orders refused it.
    pub reason: String,
    /// When it was refused.
    #[serde(with = "rfc3339")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "rfc3339::schema"))]
    pub timestamp: DateTime<Utc>,
}

/// `order.reservation_refused`: Orders refused a stock reservation (one for a cancelled
/// order, a second, different `reservationId` for an order that holds one); Stock should
/// release it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct OrderReservationRefused {
    /// The order.
    pub order_id: Uuid,
    /// The refused reservation.
    pub reservation_id: String,
    /// Why Orders refused it.
    pub reason: String,
    /// When it was refused.
    #[serde(with = "rfc3339")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "rfc3339::schema"))]
    pub timestamp: DateTime<Utc>,
}

/// `payment.approved`: Payments charged the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PaymentApproved {
    /// The order.
    pub order_id: Uuid,
    /// The payment.
    pub payment_id: String,
    /// The amount charged.
    #[serde(with = "amount")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "amount::schema"))]
    pub approved_amount: Decimal,
    /// ISO 4217 code.
    pub currency: String,
    /// When it was approved.
    #[serde(with = "rfc3339")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "rfc3339::schema"))]
    pub timestamp: DateTime<Utc>,
}

/// `payment.declined`: Payments refused to charge the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PaymentDeclined {
    /// The order.
    pub order_id: Uuid,
    /// Why.
    pub reason: String,
    /// When it was declined.
    #[serde(with = "rfc3339")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "rfc3339::schema"))]
    pub timestamp: DateTime<Utc>,
}

/// `payment.refunded`: Payments gave the money back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PaymentRefunded {
    /// The order.
    pub order_id: Uuid,
    /// The refunded payment.
    pub payment_id: String,
    /// The amount refunded.
    #[serde(with = "amount")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "amount::schema"))]
    pub amount: Decimal,
    /// ISO 4217 code.
    pub currency: String,
    /// When it was refunded.
    #[serde(with = "rfc3339")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "rfc3339::schema"))]
    pub timestamp: DateTime<Utc>,
}

/// `stock.reserved`: Stock set the order's items aside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct StockReserved {
    /// The order.
    pub order_id: Uuid,
    /// The reservation.
    pub reservation_id: String,
    /// What was reserved.
    pub items: Vec<ItemQuantity>,
    /// When it was reserved.
    #[serde(with = "rfc3339")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "rfc3339::schema"))]
    pub timestamp: DateTime<Utc>,
}

/// `stock.reservation_failed`: Stock could not reserve (out of stock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct StockReservationFailed {
    /// The order.
    pub order_id: Uuid,
    /// Why.
    pub reason: String,
    /// When it failed.
    #[serde(with = "rfc3339")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "rfc3339::schema"))]
    pub timestamp: DateTime<Utc>,
}

/// `stock.released`: Stock gave a reservation back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct StockReleased {
    /// The order.
    pub order_id: Uuid,
    /// The released reservation.
    pub reservation_id: String,
    /// When it was released.
    #[serde(with = "rfc3339")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "rfc3339::schema"))]
    pub timestamp: DateTime<Utc>,
}
