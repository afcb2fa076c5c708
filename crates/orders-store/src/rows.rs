//! Row encoding the SQLite and PostgreSQL adapters share: inbox outcomes as columns,
//! outbox rows, the version column, and an order's message history from its rows.

use orders_app::{
    Direction, HandlingOutcome, MessageRecord, StoreError,
    messaging::{Envelope, MessageId},
};
use orders_domain::{OrderId, Timestamp};

/// An order's version as stored (`bigint`/`INTEGER`).
pub(crate) fn version_column(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version).map_err(|_| StoreError::corrupt(format!("version {version} too large")))
}

/// `(outcome, detail)` columns of an inbox row.
pub(crate) fn outcome_columns(outcome: &HandlingOutcome) -> (&'static str, Option<&str>) {
    match outcome {
        HandlingOutcome::Rejected(reason) => (outcome.as_str(), Some(reason.as_str())),
        HandlingOutcome::Applied | HandlingOutcome::Duplicate => (outcome.as_str(), None),
    }
}

/// The outcome stored as `(outcome, detail)`.
pub(crate) fn outcome_from_columns(
    outcome: &str,
    detail: Option<String>,
) -> Result<HandlingOutcome, StoreError> {
    match outcome {
        "applied" => Ok(HandlingOutcome::Applied),
        "duplicate" => Ok(HandlingOutcome::Duplicate),
        "rejected" => Ok(HandlingOutcome::Rejected(detail.unwrap_or_default())),
        other => Err(StoreError::corrupt(format!(
            "unknown inbox outcome {other:?}"
        ))),
    }
}

/// An outbox row to insert.
pub(crate) struct NewOutboxRow {
    pub message_id: MessageId,
    /// The order the message is about: its correlation id, when that is an order id.
    pub order_id: Option<OrderId>,
    pub topic: String,
    /// The whole envelope as JSON text: exactly what will be published.
    pub envelope: String,
    pub envelope_timestamp: orders_domain::Timestamp,
}

impl NewOutboxRow {
    /// Encodes `envelope` for the outbox.
    pub(crate) fn new(envelope: &Envelope) -> Result<Self, StoreError> {
        let json = envelope.to_json().map_err(|e| {
            StoreError::corrupt_because(format!("cannot encode message {}", envelope.message_id), e)
        })?;
        let envelope_text = String::from_utf8(json).map_err(|e| {
            StoreError::corrupt_because(format!("message {} is not UTF-8", envelope.message_id), e)
        })?;
        Ok(Self {
            message_id: envelope.message_id,
            order_id: envelope.correlation_id.parse().ok(),
            topic: envelope.topic.to_string(),
            envelope: envelope_text,
            envelope_timestamp: envelope.timestamp,
        })
    }
}

/// One row of [`crate::sql::MESSAGES`], decoded: `sent` says which table it came from.
pub(crate) fn message_record(
    sent: bool,
    message_id: MessageId,
    topic: String,
    outcome: Option<String>,
    detail: Option<String>,
    at: Timestamp,
) -> Result<MessageRecord, StoreError> {
    Ok(MessageRecord {
        direction: if sent {
            Direction::Sent
        } else {
            Direction::Received
        },
        message_id,
        topic,
        outcome: match (sent, outcome) {
            (false, Some(outcome)) => Some(outcome_from_columns(&outcome, detail)?),
            _ => None,
        },
        at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_through_their_columns() {
        for outcome in [
            HandlingOutcome::Applied,
            HandlingOutcome::Duplicate,
            HandlingOutcome::Rejected("second payment".to_owned()),
        ] {
            let (name, detail) = outcome_columns(&outcome);
            assert_eq!(
                outcome_from_columns(name, detail.map(str::to_owned)),
                Ok(outcome.clone())
            );
        }
        assert!(matches!(
            outcome_from_columns("lost", None),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
