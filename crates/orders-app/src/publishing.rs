//! Maps domain events to integration messages (the published language of `contracts`).
//! The message id is the event id, so a re-published event keeps its identity.

use contracts::topics;
use messaging::{Envelope, MessageId};
use orders_domain::{DomainEvent, OrderItem};

/// The integration message a domain event becomes. `causation_id` is the message that
/// caused the change (`None` for a command such as checkout).
///
/// # Errors
/// The serialization error (cannot happen for these payloads).
pub fn envelope_for(
    event: &DomainEvent,
    causation_id: Option<MessageId>,
) -> Result<Envelope, serde_json::Error> {
    let id = event.event_id().as_uuid();
    let correlation = event.order_id().to_string();
    match event {
        DomainEvent::OrderPlaced(e) => Envelope::new(
            id,
            topics::ORDER_PLACED,
            e.occurred_at,
            correlation,
            causation_id,
            &contracts::OrderPlaced {
                order_id: e.order_id.as_uuid(),
                customer_id: e.customer_id.to_string(),
                items: e
                    .items
                    .iter()
                    .map(|i| contracts::PricedItem {
                        product_id: i.product_id().to_string(),
                        quantity: i.quantity().get(),
                        price: i.unit_price().amount(),
                    })
                    .collect(),
                total_amount: e.total.amount(),
                currency: e.total.currency().to_string(),
                shipping_address: contracts::ShippingAddress {
                    street: e.shipping_address.street().to_owned(),
                    city: e.shipping_address.city().to_owned(),
                    postal_code: e.shipping_address.postal_code().to_owned(),
                    country: e.shipping_address.country().to_owned(),
                },
                timestamp: e.occurred_at,
            },
        ),
        DomainEvent::OrderPaid(e) => Envelope::new(
            id,
            topics::ORDER_PAID,
            e.occurred_at,
            correlation,
            causation_id,
            &contracts::OrderPaid {
                order_id: e.order_id.as_uuid(),
                payment_id: e.payment_id.to_string(),
                amount: e.amount.amount(),
                currency: e.amount.currency().to_string(),
                items: quantities(&e.items),
                timestamp: e.occurred_at,
            },
        ),
        DomainEvent::OrderCancelled(e) => Envelope::new(
            id,
            topics::ORDER_CANCELLED,
            e.occurred_at,
            correlation,
            causation_id,
            &contracts::OrderCancelled {
                order_id: e.order_id.as_uuid(),
                reason: e.reason.to_string(),
                previous_status: e.previous_status.to_string(),
                payment_id: e.payment_id.as_ref().map(ToString::to_string),
                paid_amount: e.paid_amount.map(|m| m.amount()),
                currency: e.paid_amount.map(|m| m.currency().to_string()),
                reservation_id: e.reservation_id.as_ref().map(ToString::to_string),
                timestamp: e.occurred_at,
            },
        ),
    }
}

fn quantities(items: &[OrderItem]) -> Vec<contracts::ItemQuantity> {
    items
        .iter()
        .map(|i| contracts::ItemQuantity {
            product_id: i.product_id().to_string(),
            quantity: i.quantity().get(),
        })
        .collect()
}
