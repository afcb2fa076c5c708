//! Errors of the bus port and of handlers. Each has a [`ErrorKind`] the caller branches on.

/// Whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A transient failure (a database away, a conflict): try again later.
    Retryable,
    /// Will never succeed (bad payload, rejected by the domain): do not retry.
    Permanent,
}

/// What a handler tells the bus about a message it could not handle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Redeliver later, with backoff.
    #[error("retryable: {0}")]
    Retryable(String),
    /// Do not redeliver; record as a dead letter.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl HandlerError {
    /// A retryable error.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::Retryable(message.into())
    }

    /// A permanent error.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::Permanent(message.into())
    }

    /// Whether a retry can help.
    #[must_use]
    pub const fn kind(&self) -> ErrorKind {
        match self {
            Self::Retryable(_) => ErrorKind::Retryable,
            Self::Permanent(_) => ErrorKind::Permanent,
        }
    }
}

/// A failure of the bus itself.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus was shut down.
    #[error("the bus is closed")]
    Closed,
    /// A subscriber's backlog is full and the overflow policy is to refuse.
    #[error("backlog of subscriber {subscriber} is full ({limit} messages)")]
    BacklogFull {
        /// The subscriber whose backlog is full.
        subscriber: String,
        /// The configured limit.
        limit: usize,
    },
    /// A subscriber with this name is already attached.
    #[error("subscriber {0} is already attached")]
    AlreadySubscribed(String),
    /// The payload could not be encoded.
    #[error("cannot encode payload: {0}")]
    Encode(#[from] serde_json::Error),
    /// The transport failed (network bus).
    #[error("transport: {0}")]
    Transport(String),
}

impl BusError {
    /// Whether a retry can help.
    #[must_use]
    pub const fn kind(&self) -> ErrorKind {
        match self {
            Self::BacklogFull { .. } | Self::Transport(_) => ErrorKind::Retryable,
            Self::Closed | Self::AlreadySubscribed(_) | Self::Encode(_) => ErrorKind::Permanent,
        }
    }
}
