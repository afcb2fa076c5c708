//! The stored form of an order: a serde DTO of [`OrderSnapshot`] (the domain has no serde).
//!
//! Amounts are JSON strings (`"10.35"`), so they are read back exactly, whatever the
//! JSON library does with numbers. Timestamps are RFC 3339 with full precision. The
//! version is not in the JSON: it lives in its own column, where the optimistic
//! concurrency check reads it.
//!
//! Decoding re-validates every value through the domain's constructors: bad stored data
//! becomes [`StoreError::Corrupt`], never a panic and never an invalid order.

use std::str::FromStr;

use orders_app::StoreError;
use orders_domain::{
    CancellationReason, Currency, CustomerId, Money, Order, OrderId, OrderItem, OrderSnapshot,
    OrderStatus, PaymentId, ProductId, Quantity, ReservationId, ShippingAddress, Timestamp,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The whole order but its version, as stored in the `data` column.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderData {
    id: String,
    customer_id: String,
    items: Vec<ItemData>,
    shipping_address: AddressData,
    total: MoneyData,
    status: String,
    payment_id: Option<String>,
    reservation_id: Option<String>,
    cancellation_reason: Option<String>,
    event_count: u64,
    placed_at: Timestamp,
    updated_at: Timestamp,
    /// Absent in orders stored before payment deadlines existed: they have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payment_due_at: Option<Timestamp>,
    processed_payments: Vec<ProcessedData>,
    processed_reservations: Vec<ProcessedData>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ItemData {
    product_id: String,
    quantity: u32,
    unit_price: MoneyData,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddressData {
    street: String,
    city: String,
    postal_code: String,
    country: String,
}

/// An exact amount: the decimal as text, never a JSON number.
#[derive(Debug, Serialize, Deserialize)]
struct MoneyData {
    amount: String,
    currency: String,
}

/// A processed payment or reservation id and when it was processed.
#[derive(Debug, Serialize, Deserialize)]
struct ProcessedData {
    id: String,
    at: Timestamp,
}

impl From<Money> for MoneyData {
    fn from(money: Money) -> Self {
        Self {
            amount: money.amount().to_string(),
            currency: money.currency().to_string(),
        }
    }
}

/// The JSON text of `order` (everything but its version).
pub(crate) fn encode(order: &Order) -> Result<String, StoreError> {
    let s = order.snapshot();
    let processed = |mut entries: Vec<(String, Timestamp)>| {
        // Sorted, so the same order always gives the same text.
        entries.sort();
        entries
            .into_iter()
            .map(|(id, at)| ProcessedData { id, at })
            .collect()
    };
    let data = OrderData {
        id: s.id.to_string(),
        customer_id: s.customer_id.to_string(),
        items: s
            .items
            .iter()
            .map(|item| ItemData {
                product_id: item.product_id().to_string(),
                quantity: item.quantity().get(),
                unit_price: item.unit_price().into(),
            })
            .collect(),
        shipping_address: AddressData {
            street: s.shipping_address.street().to_owned(),
            city: s.shipping_address.city().to_owned(),
            postal_code: s.shipping_address.postal_code().to_owned(),
            country: s.shipping_address.country().to_owned(),
        },
        total: s.total.into(),
        status: s.status.to_string(),
        payment_id: s.payment_id.map(|id| id.to_string()),
        reservation_id: s.reservation_id.map(|id| id.to_string()),
        cancellation_reason: s.cancellation_reason.map(|r| r.to_string()),
        event_count: s.event_count,
        placed_at: s.placed_at,
        updated_at: s.updated_at,
        payment_due_at: s.payment_due_at,
        processed_payments: processed(
            s.processed_payments
                .into_iter()
                .map(|(id, at)| (id.to_string(), at))
                .collect(),
        ),
        processed_reservations: processed(
            s.processed_reservations
                .into_iter()
                .map(|(id, at)| (id.to_string(), at))
                .collect(),
        ),
    };
    serde_json::to_string(&data)
        .map_err(|e| StoreError::corrupt_because(format!("cannot encode order {}", s.id), e))
}

/// Rebuilds order `id` from its row: `version` and `json` as stored (a database
/// integer, so a negative one is corrupt data).
pub(crate) fn decode_row(id: OrderId, version: i64, json: &str) -> Result<Order, StoreError> {
    let version = u64::try_from(version)
        .map_err(|_| StoreError::corrupt(format!("order {id}: negative version")))?;
    decode(json, version)
}

/// Rebuilds the order stored as `json` at `version`.
pub(crate) fn decode(json: &str, version: u64) -> Result<Order, StoreError> {
    let data: OrderData = serde_json::from_str(json)
        .map_err(|e| StoreError::corrupt_because("cannot decode stored order", e))?;
    let id: OrderId = parse(&data.id, "order id")?;
    let corrupt = |what: &str, detail: String| {
        StoreError::corrupt(format!("order {id}: invalid {what}: {detail}"))
    };
    let invalid =
        |what: &'static str| move |e: orders_domain::ValidationError| corrupt(what, e.to_string());

    let items = data
        .items
        .into_iter()
        .map(|item| {
            Ok(OrderItem::new(
                ProductId::new(item.product_id).map_err(invalid("product id"))?,
                Quantity::new(item.quantity).map_err(invalid("quantity"))?,
                money(&item.unit_price).map_err(|e| corrupt("unit price", e))?,
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let a = data.shipping_address;
    let shipping_address = ShippingAddress::new(a.street, a.city, a.postal_code, a.country)
        .map_err(|errors| {
            let detail = errors.iter().map(ToString::to_string).collect::<Vec<_>>();
            corrupt("shipping address", detail.join("; "))
        })?;
    let processed_payments = data
        .processed_payments
        .into_iter()
        .map(|p| Ok((PaymentId::new(p.id).map_err(invalid("payment id"))?, p.at)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    let processed_reservations = data
        .processed_reservations
        .into_iter()
        .map(|p| {
            Ok((
                ReservationId::new(p.id).map_err(invalid("reservation id"))?,
                p.at,
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;

    Ok(Order::rehydrate(OrderSnapshot {
        id,
        customer_id: CustomerId::new(data.customer_id).map_err(invalid("customer id"))?,
        items,
        shipping_address,
        total: money(&data.total).map_err(|e| corrupt("total", e))?,
        status: OrderStatus::from_str(&data.status).map_err(invalid("status"))?,
        payment_id: data
            .payment_id
            .map(PaymentId::new)
            .transpose()
            .map_err(invalid("payment id"))?,
        reservation_id: data
            .reservation_id
            .map(ReservationId::new)
            .transpose()
            .map_err(invalid("reservation id"))?,
        cancellation_reason: data
            .cancellation_reason
            .map(CancellationReason::new)
            .transpose()
            .map_err(invalid("cancellation reason"))?,
        version,
        event_count: data.event_count,
        placed_at: data.placed_at,
        updated_at: data.updated_at,
        payment_due_at: data.payment_due_at,
        processed_payments,
        processed_reservations,
    }))
}

fn money(data: &MoneyData) -> Result<Money, String> {
    let amount = Decimal::from_str_exact(&data.amount).map_err(|e| e.to_string())?;
    let currency = Currency::new(&data.currency).map_err(|e| e.to_string())?;
    Money::new(amount, currency).map_err(|e| e.to_string())
}

/// Parses a stored value, naming it in the error.
pub(crate) fn parse<T: FromStr>(text: &str, what: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|e| StoreError::corrupt(format!("invalid stored {what} {text:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use rust_decimal::Decimal;

    use super::*;

    fn eur(amount: &str) -> Money {
        Money::new(
            Decimal::from_str_exact(amount).unwrap(),
            Currency::new("EUR").unwrap(),
        )
        .unwrap()
    }

    fn paid_order() -> Order {
        let at = Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap()
            + chrono::Duration::nanoseconds(123_456_789);
        let mut order = Order::place(
            OrderId::random(),
            CustomerId::new("c-1").unwrap(),
            vec![
                OrderItem::new(
                    ProductId::new("p-1").unwrap(),
                    Quantity::new(1).unwrap(),
                    eur("0.1"),
                ),
                OrderItem::new(
                    ProductId::new("p-2").unwrap(),
                    Quantity::new(1).unwrap(),
                    eur("0.2"),
                ),
            ],
            ShippingAddress::new("Main St 1", "Berlin", "10115", "DE").unwrap(),
            at,
        )
        .unwrap();
        let _ = order
            .confirm_payment(PaymentId::new("pay-1").unwrap(), eur("0.3"), at)
            .unwrap();
        let _ = order.take_events();
        order.mark_saved(2);
        order
    }

    #[test]
    fn an_order_round_trips_exactly() {
        let order = paid_order();
        let json = encode(&order).unwrap();
        assert!(json.contains(r#""amount":"0.3""#), "{json}");
        assert_eq!(decode(&json, 2).unwrap(), order);
    }

    #[test]
    fn the_payment_deadline_round_trips_and_an_old_order_has_none() {
        let due = Utc.with_ymd_and_hms(2026, 1, 5, 10, 15, 0).unwrap();
        let order = paid_order().with_payment_deadline(due);
        let json = encode(&order).unwrap();
        assert!(
            json.contains(r#""paymentDueAt":"2026-01-05T10:15:00Z""#),
            "{json}"
        );
        assert_eq!(decode(&json, 2).unwrap().payment_due_at(), Some(due));
        // What a store wrote before deadlines existed: no such key.
        let old = encode(&paid_order()).unwrap();
        assert!(!old.contains("paymentDueAt"), "{old}");
        assert_eq!(decode(&old, 2).unwrap().payment_due_at(), None);
    }

    #[test]
    fn bad_stored_data_is_corrupt_not_a_panic() {
        let json = encode(&paid_order()).unwrap();
        for bad in [
            json.replace(r#""amount":"0.3""#, r#""amount":"zero""#),
            json.replace(r#""status":"Paid""#, r#""status":"Lost""#),
            json.replace(r#""currency":"EUR""#, r#""currency":"euro""#),
            "{}".to_owned(),
            "not json".to_owned(),
        ] {
            assert!(
                matches!(decode(&bad, 2), Err(StoreError::Corrupt { .. })),
                "{bad}"
            );
        }
    }
}
