//! Errors of the application layer and of its store port.

use orders_domain::{OrderError, OrderId, ValidationError};

/// A failure of an [`crate::OrderStore`] or [`crate::Outbox`] adapter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The order changed since it was loaded (optimistic concurrency): reload and retry.
    #[error("order {order_id} was changed concurrently (expected version {expected})")]
    Conflict {
        /// The order.
        order_id: OrderId,
        /// The version the writer expected.
        expected: u64,
    },
    /// This subscriber already handled this message (inbox): nothing was written.
    #[error("message {message_id} already handled by {subscriber}")]
    DuplicateMessage {
        /// The subscriber.
        subscriber: String,
        /// The message.
        message_id: uuid::Uuid,
    },
    /// The idempotency key is already bound to an order: nothing was written.
    #[error("idempotency key already used by order {0}")]
    DuplicateIdempotencyKey(OrderId),
    /// Stored data could not be decoded into the domain.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The store could not be reached or failed; trying again may help.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Why a use case failed. [`AppError::kind`]-like matching is by variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    /// The input is invalid; every bad field is named.
    #[error("invalid input: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Validation(Vec<ValidationError>),
    /// No such order.
    #[error("order {0} not found")]
    NotFound(OrderId),
    /// The order refused the command in its current state.
    #[error(transparent)]
    Rejected(#[from] OrderError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
