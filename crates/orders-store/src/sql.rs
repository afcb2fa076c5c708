//! What the SQLite and PostgreSQL adapters share: error mapping, the encoding of inbox
//! outcomes and outbox rows, and the publishing half of the relay.

use orders_app::{
    HandlingOutcome, StoreError,
    messaging::{Envelope, MessageBus, MessageId},
};
use orders_domain::OrderId;

/// How a failed statement reads to the application: decoding problems mean the stored
/// data is bad ([`StoreError::Corrupt`]); everything else (connection, pool, I/O,
/// constraint, timeout) means the store is not usable right now
/// ([`StoreError::Unavailable`]).
pub(crate) fn store_error(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::Decode(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => StoreError::Corrupt(error.to_string()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// A migration failure: the schema cannot be brought up to date, so the store is unusable.
pub(crate) fn migrate_error(error: sqlx::migrate::MigrateError) -> StoreError {
    StoreError::Unavailable(format!("cannot apply migrations: {error}"))
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
        other => Err(StoreError::Corrupt(format!(
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
            StoreError::Corrupt(format!(
                "cannot encode message {}: {e}",
                envelope.message_id
            ))
        })?;
        let envelope_text = String::from_utf8(json).map_err(|e| {
            StoreError::Corrupt(format!("message {} is not UTF-8: {e}", envelope.message_id))
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

/// Unsent outbox rows as read by a relay, split into those to publish and those to park.
#[derive(Default)]
pub(crate) struct RelayBatch {
    /// Decoded rows, in position order.
    pub publish: Vec<(i64, Envelope)>,
    /// Rows whose envelope does not decode, with why.
    pub park: Vec<(i64, String)>,
}

impl RelayBatch {
    /// Decodes `(position, envelope text)` rows; the ones that do not decode are logged
    /// and set aside for parking, so they never block the rows after them.
    pub(crate) fn decode(rows: Vec<(i64, String)>) -> Self {
        let mut batch = Self::default();
        for (position, text) in rows {
            match Envelope::from_json(text.as_bytes()) {
                Ok(envelope) => batch.publish.push((position, envelope)),
                Err(e) => {
                    let reason = format!("cannot decode envelope: {e}");
                    tracing::error!(position, %reason, "outbox row parked: it will not be published");
                    batch.park.push((position, reason));
                }
            }
        }
        batch
    }
}

/// Publishes `rows` in order until the bus refuses one. Returns the positions the bus
/// accepted; the refused row and the ones after it stay unsent.
pub(crate) async fn publish_in_order(rows: Vec<(i64, Envelope)>, bus: &dyn MessageBus) -> Vec<i64> {
    let mut published = Vec::with_capacity(rows.len());
    for (position, envelope) in rows {
        let message_id = envelope.message_id;
        if let Err(error) = bus.publish(envelope).await {
            tracing::error!(%message_id, position, %error, "publish failed; message stays in the outbox");
            break;
        }
        published.push(position);
    }
    published
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
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn undecodable_rows_are_set_aside_and_the_rest_kept_in_order() {
        let good = |n: u32| {
            let e = Envelope::new(
                uuid::Uuid::new_v4(),
                "order.placed",
                chrono::Utc::now(),
                "o",
                None,
                &n,
            )
            .unwrap();
            String::from_utf8(e.to_json().unwrap()).unwrap()
        };
        let batch = RelayBatch::decode(vec![(1, good(1)), (2, "garbage".to_owned()), (3, good(3))]);
        let positions: Vec<_> = batch.publish.iter().map(|(p, _)| *p).collect();
        assert_eq!(positions, [1, 3]);
        assert_eq!(batch.park.len(), 1);
        assert_eq!(batch.park[0].0, 2);
    }
}
