//! `stock.reserved` as Orders applies it: like every message (inbox, transition, one
//! atomic commit), and in addition a reservation the order refuses does not stay held.
//!
//! A refused reservation (one for a Cancelled order, a second, different `reservationId`
//! for a StockReserved order, one for an order not paid yet) is committed as the rejected
//! inbox record of the `stock.reserved` **and** an `order.reservation_refused` outbox row,
//! in one commit: the relay publishes the refusal exactly when the rejection is recorded,
//! and Stock answers it with `stock.released`. A repeated `reservationId` is a duplicate,
//! never a refusal.
//!
//! The refusal commit writes no order, so it has no version to check, and needs none:
//! what refuses a reservation never changes back (a Cancelled order stays Cancelled, a
//! reserved order keeps its `reservationId`, an unpaid order that is paid later asked for
//! its own reservation, not this one). The refusal's message id is a name-based UUID of the
//! `stock.reserved` message's, so a refusal produced again keeps its identity.

use contracts::{OrderReservationRefused, StockReserved, topics};
use messaging::{Envelope, HandlerError, MessageId};
use orders_domain::{OrderError, OrderId, ReservationId, Timestamp};
use uuid::Uuid;

use super::{OrdersService, refusable::Decision};
use crate::HandlingOutcome;

/// The namespace of reservation refusal message ids (v5 of the refused `stock.reserved`'s
/// message id).
const REFUSAL_NAMESPACE: Uuid = Uuid::from_u128(0x5d21_b8c3_7e4f_4a06_9b1d_c2e8_f3a7_6045);

/// The message id of the `order.reservation_refused` that answers the `stock.reserved`
/// message `reserved`.
#[must_use]
pub(crate) fn refusal_message_id(reserved: MessageId) -> MessageId {
    Uuid::new_v5(&REFUSAL_NAMESPACE, reserved.as_bytes())
}

impl OrdersService {
    /// Applies `stock.reserved` (`reserved`, its id already parsed into
    /// `reservation_id`) to its order, idempotently and atomically, as
    /// [`OrdersService::apply_message`] does; a refused reservation is recorded as rejected
    /// together with an `order.reservation_refused` in the outbox (see the module docs).
    ///
    /// # Errors
    /// A retryable [`HandlerError`] when the store fails or conflicts persist; a permanent
    /// one when a message cannot be encoded.
    pub(crate) async fn apply_stock_reservation(
        &self,
        subscriber: &str,
        envelope: &Envelope,
        reserved: &StockReserved,
        reservation_id: &ReservationId,
    ) -> Result<HandlingOutcome, HandlerError> {
        let order_id = OrderId::from_uuid(reserved.order_id);
        self.apply_or_refuse(
            subscriber,
            envelope,
            order_id,
            |order, now| order.confirm_stock_reservation(reservation_id.clone(), now),
            |error, now| refusal(envelope, reserved, error, now),
            |decision| log(decision, order_id, envelope, reserved),
        )
        .await
    }
}

/// The `order.reservation_refused` answering `reserved` (carried by `envelope`), refused
/// for `error`: it names the reservation as Stock announced it.
fn refusal(
    envelope: &Envelope,
    reserved: &StockReserved,
    error: &OrderError,
    now: Timestamp,
) -> Result<Envelope, HandlerError> {
    let payload = OrderReservationRefused {
        order_id: reserved.order_id,
        reservation_id: reserved.reservation_id.clone(),
        reason: error.to_string(),
        timestamp: now,
    };
    Envelope::new(
        refusal_message_id(envelope.message_id),
        topics::ORDER_RESERVATION_REFUSED,
        now,
        reserved.order_id.to_string(),
        Some(envelope.message_id),
        &payload,
    )
    .map_err(|e| HandlerError::permanent(format!("cannot encode order.reservation_refused: {e}")))
}

/// Logs what was committed.
fn log(decision: &Decision, order_id: OrderId, envelope: &Envelope, reserved: &StockReserved) {
    match decision {
        Decision::UnknownOrder => tracing::error!(%order_id, message_id = %envelope.message_id,
            topic = %envelope.topic, "rejected: unknown order"),
        Decision::Applied(..) => {
            tracing::info!(%order_id, from = "Paid", to = "StockReserved", "applied");
        }
        Decision::Duplicate => {
            tracing::info!(%order_id, "duplicate: already applied, order unchanged");
        }
        Decision::Refused {
            status,
            error,
            refusal,
        } => tracing::warn!(%order_id, message_id = %envelope.message_id,
            topic = %envelope.topic, %status, %error, reservation_id = %reserved.reservation_id,
            refusal_id = %refusal.message_id,
            "rejected: order unchanged; order.reservation_refused asks Stock to release"),
    }
}
