//! `payment.approved` as Orders applies it: like every message (inbox, transition, one
//! atomic commit), and in addition a payment the order refuses does not stay charged.
//!
//! A refused approval (a second, different `paymentId` for a Paid or StockReserved order;
//! an approval for a Cancelled order; an amount or currency other than the total) is
//! committed as the rejected inbox record of the approval **and** an
//! `order.payment_refused` outbox row, in one commit: the relay publishes the refusal
//! exactly when the rejection is recorded, and Payments answers it with
//! `payment.refunded`. A repeated `paymentId` is a duplicate, never a refusal.
//!
//! The refusal commit writes no order, so it has no version to check, and needs none:
//! what refuses a payment never changes back (a Cancelled order stays Cancelled, a paid
//! order keeps its `paymentId`, the total is fixed). The refusal's message id is a
//! name-based UUID of the approval's, so a refusal produced again keeps its identity.

use contracts::{OrderPaymentRefused, PaymentApproved, topics};
use messaging::{Envelope, HandlerError, MessageId};
use orders_domain::{Money, OrderError, OrderId, PaymentId, Timestamp};
use uuid::Uuid;

use super::{OrdersService, refusable::Decision};
use crate::HandlingOutcome;

/// The namespace of refusal message ids (v5 of the refused approval's message id).
const REFUSAL_NAMESPACE: Uuid = Uuid::from_u128(0x0c6b_5f7e_2a94_4d1c_8e35_b1f2_7a60_d9c4);

/// The message id of the `order.payment_refused` that answers the approval `approval`.
#[must_use]
pub(crate) fn refusal_message_id(approval: MessageId) -> MessageId {
    Uuid::new_v5(&REFUSAL_NAMESPACE, approval.as_bytes())
}

impl OrdersService {
    /// Applies `payment.approved` (`approval`, already parsed into `payment_id` and
    /// `amount`) to its order, idempotently and atomically, as
    /// [`OrdersService::apply_message`] does; a refused payment is recorded as rejected
    /// together with an `order.payment_refused` in the outbox (see the module docs).
    ///
    /// # Errors
    /// A retryable [`HandlerError`] when the store fails or conflicts persist; a permanent
    /// one when a message cannot be encoded.
    pub(crate) async fn apply_payment_approval(
        &self,
        subscriber: &str,
        envelope: &Envelope,
        approval: &PaymentApproved,
        payment_id: &PaymentId,
        amount: Money,
    ) -> Result<HandlingOutcome, HandlerError> {
        let order_id = OrderId::from_uuid(approval.order_id);
        self.apply_or_refuse(
            subscriber,
            envelope,
            order_id,
            |order, now| order.confirm_payment(payment_id.clone(), amount, now),
            |error, now| refusal(envelope, approval, error, now),
            |decision| log(decision, order_id, envelope, approval),
        )
        .await
    }
}

/// The `order.payment_refused` answering `approval` (carried by `envelope`), refused for
/// `error`: it names the payment, and the amount and currency as Payments announced them.
fn refusal(
    envelope: &Envelope,
    approval: &PaymentApproved,
    error: &OrderError,
    now: Timestamp,
) -> Result<Envelope, HandlerError> {
    let payload = OrderPaymentRefused {
        order_id: approval.order_id,
        payment_id: approval.payment_id.clone(),
        amount: approval.approved_amount,
        currency: approval.currency.clone(),
        reason: error.to_string(),
        timestamp: now,
    };
    Envelope::new(
        refusal_message_id(envelope.message_id),
        topics::ORDER_PAYMENT_REFUSED,
        now,
        approval.order_id.to_string(),
        Some(envelope.message_id),
        &payload,
    )
    .map_err(|e| HandlerError::permanent(format!("cannot encode order.payment_refused: {e}")))
}

/// Logs what was committed.
fn log(decision: &Decision, order_id: OrderId, envelope: &Envelope, approval: &PaymentApproved) {
    match decision {
        Decision::UnknownOrder => tracing::error!(%order_id, message_id = %envelope.message_id,
            topic = %envelope.topic, "rejected: unknown order"),
        Decision::Applied(..) => {
            tracing::info!(%order_id, from = "AwaitingPayment", to = "Paid", "applied");
        }
        Decision::Duplicate => {
            tracing::info!(%order_id, "duplicate: already applied, order unchanged");
        }
        Decision::Refused {
            status,
            error,
            refusal,
        } => tracing::warn!(%order_id, message_id = %envelope.message_id,
            topic = %envelope.topic, %status, %error, payment_id = %approval.payment_id,
            refusal_id = %refusal.message_id,
            "rejected: order unchanged; order.payment_refused asks Payments to refund"),
    }
}
