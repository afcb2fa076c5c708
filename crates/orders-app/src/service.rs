//! The Orders use cases: place an order, cancel it, read it, and apply Payments' and
//! Stock's answers. Each change is one atomic [`Commit`] (order + outbox + inbox).

use std::sync::Arc;

use messaging::{Envelope, HandlerError};
use orders_domain::{
    CancellationReason, IdempotencyWindow, Order, OrderError, OrderId, OrderStatus, Timestamp,
    Transition, default_idempotency_window,
};

use crate::{
    AppError, CancelOrder, Clock, Commit, HandlingOutcome, InboxRecord, MessageRecord, OrderStore,
    PlaceOrder, StoreError,
    publishing::envelope_for,
    retry::{IsConflict, retry_on_conflict},
};

/// Settings of the Orders service.
#[derive(Debug, Clone)]
pub struct OrdersConfig {
    /// How long processed payment/reservation ids are remembered (default 24 h).
    pub idempotency_window: IdempotencyWindow,
    /// How often a change is retried after an optimistic-concurrency conflict.
    pub conflict_retries: u32,
    /// How long an order may wait for its payment: placed at `t`, it is cancelled with
    /// reason `payment timeout` if still AwaitingPayment at `t + payment_timeout`
    /// (default 15 minutes; see [`crate::PaymentDeadlines`]).
    pub payment_timeout: chrono::Duration,
}

/// The default payment timeout: 15 minutes.
#[must_use]
pub fn default_payment_timeout() -> chrono::Duration {
    chrono::Duration::minutes(15)
}

impl Default for OrdersConfig {
    fn default() -> Self {
        Self {
            idempotency_window: default_idempotency_window(),
            conflict_retries: 8,
            payment_timeout: default_payment_timeout(),
        }
    }
}

/// The result of a checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// The order.
    pub order_id: OrderId,
    /// `false` when an idempotency key matched an earlier order, which is returned.
    pub created: bool,
}

/// The Orders application service.
#[derive(Clone)]
pub struct OrdersService {
    store: Arc<dyn OrderStore>,
    clock: Arc<dyn Clock>,
    config: OrdersConfig,
}

impl std::fmt::Debug for OrdersService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrdersService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl OrdersService {
    /// A service over `store`, reading time from `clock`.
    #[must_use]
    pub fn new(store: Arc<dyn OrderStore>, clock: Arc<dyn Clock>, config: OrdersConfig) -> Self {
        Self {
            store,
            clock,
            config,
        }
    }

    /// The store (for read models and tests).
    #[must_use]
    pub fn store(&self) -> &Arc<dyn OrderStore> {
        &self.store
    }

    /// Checkout: validates the command, stores the order with its `order.placed` message
    /// in one commit, and returns the order id. With an idempotency key that was used
    /// before, returns that order instead of placing a second one.
    ///
    /// # Errors
    /// [`AppError::Validation`] naming every bad field; [`AppError::Store`].
    pub async fn place_order(
        &self,
        command: PlaceOrder,
        idempotency_key: Option<String>,
    ) -> Result<Placed, AppError> {
        if let Some(key) = &idempotency_key
            && let Some(order_id) = self.store.find_by_idempotency_key(key).await?
        {
            return Ok(Placed {
                order_id,
                created: false,
            });
        }
        let valid = command.validate().map_err(AppError::Validation)?;
        let now = self.clock.now();
        let mut order = Order::place(
            OrderId::time_ordered(now),
            valid.customer_id,
            valid.items,
            valid.address,
            now,
        )?
        .with_payment_deadline(now + self.config.payment_timeout);
        let outbox = self.outbox(&mut order, None)?;
        let order_id = order.id();
        match self
            .store
            .commit(Commit {
                order: Some(order),
                outbox,
                inbox: None,
                idempotency_key,
            })
            .await
        {
            Ok(_) => {
                tracing::info!(%order_id, "order placed");
                Ok(Placed {
                    order_id,
                    created: true,
                })
            }
            Err(StoreError::DuplicateIdempotencyKey(existing)) => Ok(Placed {
                order_id: existing,
                created: false,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Cancels an order on request; `order.cancelled` tells Payments to refund and Stock
    /// to release. Returns the cancelled order.
    ///
    /// # Errors
    /// [`AppError::Validation`] for a blank reason, [`AppError::NotFound`],
    /// [`AppError::Rejected`] with [`OrderError::AlreadyCancelled`], [`AppError::Store`].
    pub async fn cancel_order(&self, command: CancelOrder) -> Result<Order, AppError> {
        let reason = command.validate().map_err(AppError::Validation)?;
        retry_on_conflict(self.config.conflict_retries, command.order_id, || {
            self.try_cancel(command.order_id, &reason)
        })
        .await
    }

    /// One attempt of [`OrdersService::cancel_order`]: load, cancel, commit.
    async fn try_cancel(
        &self,
        order_id: OrderId,
        reason: &CancellationReason,
    ) -> Result<Order, AppError> {
        let mut order = self
            .store
            .load(order_id)
            .await?
            .ok_or(AppError::NotFound(order_id))?;
        let now = self.clock.now();
        order.prune_processed_ids(now, self.config.idempotency_window);
        let _: Transition = order.cancel(reason.clone(), now)?;
        let outbox = self.outbox(&mut order, None)?;
        let version = self
            .store
            .commit(Commit {
                order: Some(order.clone()),
                outbox,
                inbox: None,
                idempotency_key: None,
            })
            .await?;
        order.mark_saved(version);
        tracing::info!(order_id = %order.id(), "order cancelled on request");
        Ok(order)
    }

    /// Up to `limit` orders whose payment deadline has passed by the service's clock and
    /// that still await payment (see [`OrderStore::due_for_payment`]).
    ///
    /// # Errors
    /// [`AppError::Store`].
    pub async fn due_for_payment(&self, limit: usize) -> Result<Vec<OrderId>, AppError> {
        Ok(self.store.due_for_payment(self.clock.now(), limit).await?)
    }

    /// Cancels `order_id` with reason `payment timeout` if it still awaits payment and
    /// its deadline has passed, committing its `order.cancelled` through the outbox.
    /// Returns whether this call cancelled it. Not retried on a conflict: the order
    /// changed meanwhile (paid, or cancelled by another replica's deadline worker), and
    /// if it is still due the next pass finds it again; so of several replicas racing,
    /// one cancels and the others skip, and one `order.cancelled` is published.
    ///
    /// # Errors
    /// [`AppError::NotFound`]; [`AppError::Store`] when the store fails.
    pub async fn expire_payment(&self, order_id: OrderId) -> Result<bool, AppError> {
        let mut order = self
            .store
            .load(order_id)
            .await?
            .ok_or(AppError::NotFound(order_id))?;
        let now = self.clock.now();
        match order.expire_payment(now) {
            Ok(Transition::Applied) => {}
            Ok(Transition::AlreadyApplied) => {
                tracing::debug!(%order_id, "payment deadline: already cancelled");
                return Ok(false);
            }
            Err(error) => {
                tracing::debug!(%order_id, status = %order.status(), %error,
                    "payment deadline no longer applies");
                return Ok(false);
            }
        }
        order.prune_processed_ids(now, self.config.idempotency_window);
        let outbox = self.outbox(&mut order, None)?;
        match self
            .store
            .commit(Commit {
                order: Some(order),
                outbox,
                inbox: None,
                idempotency_key: None,
            })
            .await
        {
            Ok(_) => {
                tracing::info!(%order_id, reason = CancellationReason::PAYMENT_TIMEOUT,
                    "order cancelled: its payment deadline passed");
                Ok(true)
            }
            Err(e) if e.is_conflict() => {
                tracing::debug!(%order_id, "payment deadline: the order changed meanwhile; skipped");
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Reads an order.
    ///
    /// # Errors
    /// [`AppError::NotFound`], [`AppError::Store`].
    pub async fn order(&self, id: OrderId) -> Result<Order, AppError> {
        self.store.load(id).await?.ok_or(AppError::NotFound(id))
    }

    /// The order's message history.
    ///
    /// # Errors
    /// [`AppError::Store`].
    pub async fn messages(&self, id: OrderId) -> Result<Vec<MessageRecord>, AppError> {
        Ok(self.store.messages(id).await?)
    }

    /// Applies a message to an order, idempotently and atomically:
    /// a message this subscriber already handled is a no-op; an unknown order or a
    /// transition the order refuses is recorded as rejected (the caller acks it); an
    /// applied change is committed with its outbox messages and the inbox record.
    ///
    /// The inbox is checked by the commit itself, not read first: the inbox record is
    /// part of every commit here, so a redelivered message fails it with
    /// [`StoreError::DuplicateMessage`] and nothing is written. That saves a database
    /// read for every message that is new (nearly all of them) and leaves one place
    /// that decides. What is logged is what was committed.
    ///
    /// # Errors
    /// A retryable [`HandlerError`] when the store fails or conflicts persist.
    pub async fn apply_message<F>(
        &self,
        subscriber: &str,
        envelope: &Envelope,
        order_id: OrderId,
        apply: F,
    ) -> Result<HandlingOutcome, HandlerError>
    where
        F: Fn(&mut Order, Timestamp) -> Result<Transition, OrderError> + Send + Sync,
    {
        let attempt = || self.try_apply(subscriber, envelope, order_id, &apply);
        match retry_on_conflict(self.config.conflict_retries, order_id, attempt).await {
            Ok(outcome) => Ok(outcome),
            Err(ApplyFailure::Store(StoreError::DuplicateMessage { .. })) => {
                tracing::info!(%order_id, "message already handled: redelivery ignored");
                Ok(HandlingOutcome::Duplicate)
            }
            Err(ApplyFailure::Store(e)) => Err(retryable(e)),
            Err(ApplyFailure::Encode(e)) => Err(HandlerError::permanent(e.to_string())),
        }
    }

    /// One attempt of [`OrdersService::apply_message`]: load, decide, commit.
    async fn try_apply<F>(
        &self,
        subscriber: &str,
        envelope: &Envelope,
        order_id: OrderId,
        apply: &F,
    ) -> Result<HandlingOutcome, ApplyFailure>
    where
        F: Fn(&mut Order, Timestamp) -> Result<Transition, OrderError> + Send + Sync,
    {
        let now = self.clock.now();
        // The order change (with its outbox), if any, and what was decided.
        let (change, verdict) = match self.store.load(order_id).await? {
            None => (None, Verdict::UnknownOrder),
            Some(mut order) => {
                let before = order.status();
                order.prune_processed_ids(now, self.config.idempotency_window);
                match apply(&mut order, now) {
                    Ok(Transition::Applied) => {
                        let after = order.status();
                        let outbox = self
                            .outbox(&mut order, Some(envelope.message_id))
                            .map_err(ApplyFailure::Encode)?;
                        (Some((order, outbox)), Verdict::Applied { before, after })
                    }
                    Ok(Transition::AlreadyApplied) => {
                        (None, Verdict::AlreadyApplied { status: before })
                    }
                    Err(error) => (
                        None,
                        Verdict::Refused {
                            status: before,
                            error,
                        },
                    ),
                }
            }
        };
        let outcome = verdict.outcome();
        let inbox = InboxRecord {
            subscriber: subscriber.to_owned(),
            message_id: envelope.message_id,
            topic: envelope.topic.to_string(),
            order_id,
            outcome: outcome.clone(),
            handled_at: now,
        };
        let commit = match change {
            Some((order, outbox)) => Commit {
                order: Some(order),
                outbox,
                inbox: Some(inbox),
                idempotency_key: None,
            },
            None => Commit::inbox_only(inbox),
        };
        self.store.commit(commit).await?;
        verdict.log(order_id, envelope);
        Ok(outcome)
    }

    /// Records a message that cannot be applied at all (e.g. a value that fails domain
    /// validation) as rejected, so it is visible in the order's history.
    ///
    /// # Errors
    /// A retryable [`HandlerError`] when the store fails.
    pub async fn reject_message(
        &self,
        subscriber: &str,
        envelope: &Envelope,
        order_id: OrderId,
        reason: String,
    ) -> Result<HandlingOutcome, HandlerError> {
        let outcome = HandlingOutcome::Rejected(reason.clone());
        let inbox = InboxRecord {
            subscriber: subscriber.to_owned(),
            message_id: envelope.message_id,
            topic: envelope.topic.to_string(),
            order_id,
            outcome: outcome.clone(),
            handled_at: self.clock.now(),
        };
        match self.store.commit(Commit::inbox_only(inbox)).await {
            Ok(_) => {
                tracing::warn!(%order_id, message_id = %envelope.message_id,
                    topic = %envelope.topic, %reason, "rejected: invalid message");
                Ok(outcome)
            }
            Err(StoreError::DuplicateMessage { .. }) => {
                tracing::info!(%order_id, "message already handled: redelivery ignored");
                Ok(HandlingOutcome::Duplicate)
            }
            Err(e) => Err(retryable(e)),
        }
    }

    /// Removes inbox records and sent outbox rows older than the idempotency window.
    ///
    /// # Errors
    /// [`AppError::Store`].
    pub async fn prune(&self) -> Result<crate::PruneReport, AppError> {
        Ok(self
            .store
            .prune(self.clock.now() - self.config.idempotency_window)
            .await?)
    }

    fn outbox(
        &self,
        order: &mut Order,
        causation: Option<messaging::MessageId>,
    ) -> Result<Vec<Envelope>, AppError> {
        order
            .take_events()
            .iter()
            .map(|event| envelope_for(event, causation))
            .collect::<Result<_, _>>()
            .map_err(|e| AppError::Store(StoreError::corrupt_because("cannot encode event", e)))
    }
}

/// What handling a message decided, logged once its commit went through.
enum Verdict {
    UnknownOrder,
    Applied {
        before: OrderStatus,
        after: OrderStatus,
    },
    AlreadyApplied {
        status: OrderStatus,
    },
    Refused {
        status: OrderStatus,
        error: OrderError,
    },
}

impl Verdict {
    /// What the inbox records for it.
    fn outcome(&self) -> HandlingOutcome {
        match self {
            Self::UnknownOrder => HandlingOutcome::Rejected("unknown order".to_owned()),
            Self::Applied { .. } => HandlingOutcome::Applied,
            Self::AlreadyApplied { .. } => HandlingOutcome::Duplicate,
            Self::Refused { error, .. } => HandlingOutcome::Rejected(error.to_string()),
        }
    }

    fn log(&self, order_id: OrderId, envelope: &Envelope) {
        match self {
            Self::UnknownOrder => tracing::error!(%order_id, message_id = %envelope.message_id,
                topic = %envelope.topic, "rejected: unknown order"),
            Self::Applied { before, after } => {
                tracing::info!(%order_id, from = %before, to = %after, "applied");
            }
            Self::AlreadyApplied { status } => {
                tracing::info!(%order_id, %status, "duplicate: already applied, order unchanged");
            }
            Self::Refused { status, error } => tracing::warn!(%order_id,
                message_id = %envelope.message_id, topic = %envelope.topic, %status, %error,
                "rejected: order unchanged"),
        }
    }
}

/// Why one attempt of [`OrdersService::apply_message`] failed.
enum ApplyFailure {
    /// The store failed, conflicted or found the message already handled.
    Store(StoreError),
    /// The order's events could not be encoded as messages; retrying cannot help.
    Encode(AppError),
}

impl From<StoreError> for ApplyFailure {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl IsConflict for ApplyFailure {
    fn is_conflict(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_conflict())
    }
}

fn retryable(e: StoreError) -> HandlerError {
    HandlerError::retryable(e.to_string())
}

mod approval;
mod refusable;
mod reservation;
