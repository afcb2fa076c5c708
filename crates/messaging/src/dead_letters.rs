//! The dead-letter port: list the messages a group gave up on, and replay one to that
//! group. Every adapter implements it ([`InMemoryBus`](crate::InMemoryBus) here, the NATS
//! bus in its crate), so an operator console needs no adapter-specific code.
//!
//! * A record has an opaque string id (the adapter's: a sequence number in memory, the
//!   dead-letter stream's sequence on NATS), the group, the topic, the attempts, the
//!   reason and its kind, when the message first and last failed, and the envelope.
//! * [`DeadLetters::replay`] sends the message back to its group only (the topic's
//!   other groups do not see it again), with fresh attempts, and removes the record. If
//!   it fails again it becomes a new record, with a new id.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::{BusError, Envelope, HandlerError, MessageId};

/// Why a message was given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterKind {
    /// The handler refused it ([`HandlerError::Permanent`]).
    Permanent,
    /// It kept failing as retryable until the attempts ran out.
    Exhausted,
}

impl DeadLetterKind {
    /// The kind a handler's last error means.
    #[must_use]
    pub const fn of(error: &HandlerError) -> Self {
        match error {
            HandlerError::Permanent(_) => Self::Permanent,
            HandlerError::Retryable(_) => Self::Exhausted,
        }
    }

    /// `permanent` or `exhausted`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Permanent => "permanent",
            Self::Exhausted => "exhausted",
        }
    }
}

/// One dead letter, as the port shows it.
#[derive(Debug, Clone)]
pub struct DeadLetterRecord {
    /// Opaque id, unique among the adapter's dead letters; what `get` and `replay` take.
    pub id: String,
    /// The consumer group that gave up.
    pub group: String,
    /// The message's topic.
    pub topic: String,
    /// The message's id.
    pub message_id: MessageId,
    /// Delivery attempts made.
    pub attempts: u32,
    /// The handler's last reason.
    pub reason: String,
    /// Refused, or retries exhausted.
    pub kind: DeadLetterKind,
    /// When the first attempt failed.
    pub first_failed_at: DateTime<Utc>,
    /// When the last attempt failed (the message was given up on).
    pub last_failed_at: DateTime<Utc>,
    /// The message itself.
    pub envelope: Envelope,
}

/// A replay that the bus accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// The id of the record that was replayed (and removed).
    pub id: String,
    /// The group the message went back to.
    pub group: String,
}

/// The number an id written as a number names: a decimal without sign or leading zeros,
/// from 1 (the form adapters that number their letters write). `None` for any other id,
/// which then names no letter.
#[must_use]
pub fn numbered_id(id: &str) -> Option<u64> {
    id.parse::<u64>()
        .ok()
        .filter(|n| *n > 0 && n.to_string() == id)
}

/// Why the port could not answer.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// No dead letter has this id (never had, or already replayed).
    #[error("no dead letter with id {0}")]
    NotFound(String),
    /// The bus failed (NATS away, a full backlog under the reject policy).
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// The dead letters of a bus: inspect and replay. Dyn-compatible: the composition root
/// hands out `Arc<dyn DeadLetters>`.
#[async_trait]
pub trait DeadLetters: Send + Sync + 'static {
    /// The oldest `limit` dead letters, oldest first.
    ///
    /// # Errors
    /// [`DeadLetterError::Bus`] when they cannot be read.
    async fn list(&self, limit: usize) -> Result<Vec<DeadLetterRecord>, DeadLetterError>;

    /// The dead letter `id`, `None` when there is none.
    ///
    /// # Errors
    /// [`DeadLetterError::Bus`] when it cannot be read.
    async fn get(&self, id: &str) -> Result<Option<DeadLetterRecord>, DeadLetterError>;

    /// How many dead letters there are.
    ///
    /// # Errors
    /// [`DeadLetterError::Bus`] when they cannot be counted.
    async fn count(&self) -> Result<u64, DeadLetterError>;

    /// Sends dead letter `id` back to its group only, with fresh attempts, and removes
    /// it from the list once the bus has accepted it.
    ///
    /// # Errors
    /// [`DeadLetterError::NotFound`] for an unknown id; [`DeadLetterError::Bus`] when the
    /// bus does not accept it (the record stays).
    async fn replay(&self, id: &str) -> Result<Replayed, DeadLetterError>;
}
