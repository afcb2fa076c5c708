//! The messages whose rejection Orders answers with a refusal (`payment.approved` →
//! `order.payment_refused`, `stock.reserved` → `order.reservation_refused`; see
//! [`super::approval`] and [`super::reservation`]): applied like every message (inbox,
//! transition, one atomic commit), and when the order refuses one, its rejected inbox
//! record and the refusal are committed together, so the refusal is published exactly
//! when the rejection is recorded. This is the loop both share; each module says what
//! the transition is, what its refusal carries and how it is logged.

use messaging::{Envelope, HandlerError};
use orders_domain::{Order, OrderError, OrderId, OrderStatus, Timestamp, Transition};

use super::OrdersService;
use crate::{Commit, HandlingOutcome, InboxRecord, StoreError};

/// What one attempt decided, before its commit.
pub(super) enum Decision {
    /// No such order: rejected, nothing to refuse (the message is not Orders' to judge).
    UnknownOrder,
    /// The transition applied, with the order and its outbox.
    Applied(Box<Order>, Vec<Envelope>),
    /// The message was applied before: nothing changes.
    Duplicate,
    /// Refused: the rejection is recorded and the refusal published.
    Refused {
        /// The order's status when it refused.
        status: OrderStatus,
        /// Why.
        error: OrderError,
        /// The refusal message.
        refusal: Box<Envelope>,
    },
}

impl OrdersService {
    /// Applies `envelope` to order `order_id` with `apply`; a rejection is committed
    /// with the refusal `refuse` makes of it. `log` says what was committed.
    ///
    /// # Errors
    /// A retryable [`HandlerError`] when the store fails or conflicts persist; a permanent
    /// one when a message cannot be encoded.
    pub(super) async fn apply_or_refuse(
        &self,
        subscriber: &str,
        envelope: &Envelope,
        order_id: OrderId,
        apply: impl Fn(&mut Order, Timestamp) -> Result<Transition, OrderError> + Send + Sync,
        refuse: impl Fn(&OrderError, Timestamp) -> Result<Envelope, HandlerError> + Send + Sync,
        log: impl Fn(&Decision) + Send + Sync,
    ) -> Result<HandlingOutcome, HandlerError> {
        let mut conflicts = 0;
        loop {
            let now = self.clock.now();
            let decision = match self.store.load(order_id).await.map_err(retryable)? {
                None => Decision::UnknownOrder,
                Some(mut order) => {
                    order.prune_processed_ids(now, self.config.idempotency_window);
                    let status = order.status();
                    match apply(&mut order, now) {
                        Ok(Transition::Applied) => {
                            let outbox = self
                                .outbox(&mut order, Some(envelope.message_id))
                                .map_err(|e| HandlerError::permanent(e.to_string()))?;
                            Decision::Applied(Box::new(order), outbox)
                        }
                        Ok(Transition::AlreadyApplied) => Decision::Duplicate,
                        Err(error) => {
                            let refusal = refuse(&error, now)?;
                            Decision::Refused {
                                status,
                                error,
                                refusal: Box::new(refusal),
                            }
                        }
                    }
                }
            };
            let outcome = match &decision {
                Decision::UnknownOrder => HandlingOutcome::Rejected("unknown order".to_owned()),
                Decision::Applied(..) => HandlingOutcome::Applied,
                Decision::Duplicate => HandlingOutcome::Duplicate,
                Decision::Refused { error, .. } => HandlingOutcome::Rejected(error.to_string()),
            };
            let inbox = InboxRecord {
                subscriber: subscriber.to_owned(),
                message_id: envelope.message_id,
                topic: envelope.topic.to_string(),
                order_id,
                outcome: outcome.clone(),
                handled_at: now,
            };
            let commit = match &decision {
                Decision::Applied(order, outbox) => Commit {
                    order: Some(order.as_ref().clone()),
                    outbox: outbox.clone(),
                    inbox: Some(inbox),
                    idempotency_key: None,
                },
                Decision::Refused { refusal, .. } => Commit {
                    order: None,
                    outbox: vec![refusal.as_ref().clone()],
                    inbox: Some(inbox),
                    idempotency_key: None,
                },
                Decision::UnknownOrder | Decision::Duplicate => Commit::inbox_only(inbox),
            };
            match self.store.commit(commit).await {
                Ok(_) => {
                    log(&decision);
                    return Ok(outcome);
                }
                Err(StoreError::DuplicateMessage { .. }) => {
                    tracing::info!(%order_id, "message already handled: redelivery ignored");
                    return Ok(HandlingOutcome::Duplicate);
                }
                Err(StoreError::Conflict { .. }) if conflicts < self.config.conflict_retries => {
                    conflicts += 1;
                    tracing::debug!(%order_id, conflicts, "conflict: reloading");
                }
                Err(e) => return Err(retryable(e)),
            }
        }
    }
}

fn retryable(e: StoreError) -> HandlerError {
    HandlerError::retryable(e.to_string())
}
