//! The JSON the API answers with: read models built from the domain, camelCase, amounts
//! as exact JSON numbers, timestamps as RFC 3339 UTC with milliseconds.

use orders_app::{Direction, HandlingOutcome, MessageRecord};
use orders_domain::{Order, Timestamp};
use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::ToSchema;

/// An order as the API shows it (`GET /orders/{id}`, and the answer of checkout and
/// cancel).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    /// The order id (UUID).
    pub order_id: String,
    /// Who ordered.
    pub customer_id: String,
    /// `AwaitingPayment`, `Paid`, `StockReserved` or `Cancelled`.
    #[schema(value_type = super::openapi::StatusName)]
    pub status: &'static str,
    /// The lines.
    pub items: Vec<ItemView>,
    /// The sum of the lines, exact.
    #[schema(value_type = f64, example = 59.8)]
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    pub total_amount: Decimal,
    /// ISO 4217 code.
    pub currency: String,
    /// Where it goes.
    pub shipping_address: AddressView,
    /// The payment, once paid.
    pub payment_id: Option<String>,
    /// The stock reservation, once reserved.
    pub reservation_id: Option<String>,
    /// Why it was cancelled, once cancelled.
    pub cancellation_reason: Option<String>,
    /// The stored version (optimistic concurrency), grows with every change.
    pub version: u64,
    /// When it was placed.
    #[schema(format = DateTime)]
    pub placed_at: String,
    /// When it last changed.
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// One line of an [`OrderView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ItemView {
    /// The product (SKU).
    pub product_id: String,
    /// Units.
    pub quantity: u32,
    /// Unit price, exact.
    #[schema(value_type = f64, example = 29.9)]
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    pub price: Decimal,
}

/// The address of an [`OrderView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressView {
    /// Street and number.
    pub street: String,
    /// City.
    pub city: String,
    /// Postal code.
    pub postal_code: String,
    /// Country.
    pub country: String,
}

impl From<&Order> for OrderView {
    fn from(order: &Order) -> Self {
        let address = order.shipping_address();
        Self {
            order_id: order.id().to_string(),
            customer_id: order.customer_id().to_string(),
            status: order.status().as_str(),
            items: order
                .items()
                .iter()
                .map(|item| ItemView {
                    product_id: item.product_id().to_string(),
                    quantity: item.quantity().get(),
                    price: item.unit_price().amount(),
                })
                .collect(),
            total_amount: order.total().amount(),
            currency: order.total().currency().to_string(),
            shipping_address: AddressView {
                street: address.street().to_owned(),
                city: address.city().to_owned(),
                postal_code: address.postal_code().to_owned(),
                country: address.country().to_owned(),
            },
            payment_id: order.payment_id().map(ToString::to_string),
            reservation_id: order.reservation_id().map(ToString::to_string),
            cancellation_reason: order.cancellation_reason().map(ToString::to_string),
            version: order.version(),
            placed_at: rfc3339(order.placed_at()),
            updated_at: rfc3339(order.updated_at()),
        }
    }
}

/// One line of `GET /orders/{id}/messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageView {
    /// `sent` (published by Orders) or `received` (handled by Orders).
    #[schema(value_type = super::openapi::DirectionName)]
    pub direction: &'static str,
    /// The message id (UUID).
    pub message_id: String,
    /// The topic, e.g. `payment.approved`.
    pub topic: String,
    /// For received messages `applied`, `duplicate` or `rejected`; `null` for sent ones.
    #[schema(value_type = Option<super::openapi::OutcomeName>)]
    pub outcome: Option<&'static str>,
    /// Why a received message was rejected; `null` otherwise.
    pub reason: Option<String>,
    /// When it was committed.
    #[schema(format = DateTime)]
    pub at: String,
}

impl From<&MessageRecord> for MessageView {
    fn from(record: &MessageRecord) -> Self {
        Self {
            direction: match record.direction {
                Direction::Sent => "sent",
                Direction::Received => "received",
            },
            message_id: record.message_id.to_string(),
            topic: record.topic.clone(),
            outcome: record.outcome.as_ref().map(HandlingOutcome::as_str),
            reason: match &record.outcome {
                Some(HandlingOutcome::Rejected(reason)) => Some(reason.clone()),
                _ => None,
            },
            at: rfc3339(record.at),
        }
    }
}

/// RFC 3339, UTC, milliseconds: `2026-01-05T10:00:00.000Z`.
#[must_use]
pub fn rfc3339(at: Timestamp) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
