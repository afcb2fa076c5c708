//! Errors of the application layer and of its store port.

use std::{fmt, sync::Arc};

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
    #[error("corrupt stored data: {message}")]
    Corrupt {
        /// What could not be decoded.
        message: String,
        /// The error underneath, if any.
        #[source]
        source: Option<Cause>,
    },
    /// The store could not be reached or failed; trying again may help.
    #[error("store unavailable: {message}")]
    Unavailable {
        /// What failed.
        message: String,
        /// The error underneath, if any.
        #[source]
        source: Option<Cause>,
    },
}

impl StoreError {
    /// [`StoreError::Corrupt`] without an error underneath.
    #[must_use]
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::Corrupt {
            message: message.into(),
            source: None,
        }
    }

    /// [`StoreError::Corrupt`] caused by `source`.
    #[must_use]
    pub fn corrupt_because(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Corrupt {
            message: message.into(),
            source: Some(Cause::new(source)),
        }
    }

    /// [`StoreError::Unavailable`] without an error underneath.
    #[must_use]
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    /// [`StoreError::Unavailable`] caused by `source`.
    #[must_use]
    pub fn unavailable_because(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: Some(Cause::new(source)),
        }
    }
}

/// The error underneath a [`StoreError`] (a driver's, an I/O error), kept so that its
/// chain reaches the logs. Shared, so the store error stays `Clone`; two causes are
/// equal when they read the same.
#[derive(Debug, Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync>);

impl Cause {
    /// Wraps `error`.
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(error))
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.to_string() == other.to_string()
    }
}

impl Eq for Cause {}

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

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_store_error_keeps_its_cause_for_the_logs() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let error = StoreError::unavailable_because("cannot connect", io);
        assert_eq!(error.to_string(), "store unavailable: cannot connect");
        let cause = error.source().map(ToString::to_string);
        assert_eq!(cause.as_deref(), Some("refused"));
        assert_eq!(error.clone(), error, "clones compare equal");
        assert!(StoreError::corrupt("bad row").source().is_none());
    }
}
