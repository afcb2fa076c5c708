//! The Orders subscriber: handles `payment.approved`, `payment.declined`,
//! `stock.reserved` and `stock.reservation_failed`, each through
//! [`OrdersService::apply_message`] (inbox check, transition, atomic commit).
//!
//! Every message is acknowledged unless the store fails (then it is retried): a
//! rejected message will never succeed on retry, so it is recorded, logged and acked.
//! A refused `payment.approved` is also answered with `order.payment_refused`, and a
//! refused `stock.reserved` with `order.reservation_refused`, in the same commit as its
//! inbox record, so Payments refunds and Stock releases what Orders did not ask for.

use async_trait::async_trait;
use contracts::topics;
use messaging::{Envelope, HandlerError, MessageHandler, Subscription};
use orders_domain::{
    CancellationReason, Currency, Money, OrderId, PaymentId, ReservationId, ValidationError,
};

use crate::{HandlingOutcome, OrdersService};

/// The consumer-group name of the Orders subscriber.
pub const ORDERS_SUBSCRIBER: &str = "orders";

/// The bus handler of the Orders context.
#[derive(Debug, Clone)]
pub struct OrdersMessageHandler {
    service: OrdersService,
}

impl OrdersMessageHandler {
    /// A handler applying messages through `service`.
    #[must_use]
    pub const fn new(service: OrdersService) -> Self {
        Self { service }
    }

    /// The subscription: one group, all four topics, so per-order order is kept across them.
    #[must_use]
    pub fn subscription() -> Subscription {
        Subscription::new(ORDERS_SUBSCRIBER)
            .topic(topics::PAYMENT_APPROVED)
            .topic(topics::PAYMENT_DECLINED)
            .topic(topics::STOCK_RESERVED)
            .topic(topics::STOCK_RESERVATION_FAILED)
    }

    /// Handles one message and says what happened.
    ///
    /// # Errors
    /// Permanent for an undecodable payload or unknown topic; retryable for store failures.
    pub async fn dispatch(&self, envelope: &Envelope) -> Result<HandlingOutcome, HandlerError> {
        let s = &self.service;
        match envelope.topic.as_ref() {
            topics::PAYMENT_APPROVED => {
                let p: contracts::PaymentApproved = envelope.decode()?;
                let order_id = OrderId::from_uuid(p.order_id);
                let parsed = PaymentId::new(p.payment_id.clone()).and_then(|id| {
                    let currency = Currency::new(&p.currency)?;
                    Ok((id, Money::new(p.approved_amount, currency)?))
                });
                match parsed {
                    Ok((payment_id, amount)) => {
                        s.apply_payment_approval(
                            ORDERS_SUBSCRIBER,
                            envelope,
                            &p,
                            &payment_id,
                            amount,
                        )
                        .await
                    }
                    Err(e) => {
                        s.reject_message(ORDERS_SUBSCRIBER, envelope, order_id, invalid(&e))
                            .await
                    }
                }
            }
            topics::PAYMENT_DECLINED => {
                let p: contracts::PaymentDeclined = envelope.decode()?;
                let order_id = OrderId::from_uuid(p.order_id);
                let reason = reason(&p.reason, "payment declined");
                s.apply_message(ORDERS_SUBSCRIBER, envelope, order_id, |order, now| {
                    order.decline_payment(reason.clone(), now)
                })
                .await
            }
            topics::STOCK_RESERVED => {
                let p: contracts::StockReserved = envelope.decode()?;
                let order_id = OrderId::from_uuid(p.order_id);
                match ReservationId::new(p.reservation_id.clone()) {
                    Ok(reservation_id) => {
                        s.apply_stock_reservation(ORDERS_SUBSCRIBER, envelope, &p, &reservation_id)
                            .await
                    }
                    Err(e) => {
                        s.reject_message(ORDERS_SUBSCRIBER, envelope, order_id, invalid(&e))
                            .await
                    }
                }
            }
            topics::STOCK_RESERVATION_FAILED => {
                let p: contracts::StockReservationFailed = envelope.decode()?;
                let order_id = OrderId::from_uuid(p.order_id);
                let reason = reason(&p.reason, "stock reservation failed");
                s.apply_message(ORDERS_SUBSCRIBER, envelope, order_id, |order, now| {
                    order.fail_stock_reservation(reason.clone(), now)
                })
                .await
            }
            other => Err(HandlerError::permanent(format!(
                "orders does not handle topic {other}"
            ))),
        }
    }
}

#[async_trait]
impl MessageHandler for OrdersMessageHandler {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        self.dispatch(envelope).await.map(|_| ())
    }
}

fn invalid(e: &ValidationError) -> String {
    format!("invalid message: {e}")
}

/// The other context's reason, prefixed with what happened, kept within the domain's limits.
fn reason(text: &str, what: &str) -> CancellationReason {
    let text: String = text.chars().filter(|c| !c.is_control()).take(400).collect();
    let full = if text.trim().is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {text}")
    };
    CancellationReason::new(full)
        .or_else(|_| CancellationReason::new(what))
        .unwrap_or_else(|_| unreachable_reason())
}

#[allow(clippy::expect_used)]
fn unreachable_reason() -> CancellationReason {
    // A fixed non-blank text under 500 characters is always a valid reason.
    CancellationReason::new("cancelled").expect("a fixed non-blank reason is valid")
}
