//! What the SQLite and PostgreSQL adapters share: error mapping, the statements both
//! run as they are (the message history, the requeue), and the relay's reading of the
//! table. Row encoding is in [`crate::rows`].
//!
//! Shared statements name their parameters `$1`, `$2`…: PostgreSQL's placeholders, and
//! in SQLite named parameters bound by position (a name used twice is one parameter).

use std::future::Future;

use orders_app::{
    StoreError,
    messaging::{Envelope, MessageBus},
};

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
        | sqlx::Error::TypeNotFound { .. } => {
            StoreError::corrupt_because("a stored value does not decode", error)
        }
        other => StoreError::unavailable_because("the database failed", other),
    }
}

/// A migration failure: the schema cannot be brought up to date, so the store is unusable.
pub(crate) fn migrate_error(error: sqlx::migrate::MigrateError) -> StoreError {
    StoreError::unavailable_because("cannot apply migrations", error)
}

/// An order's message history, `$1` its id: inbox and outbox rows, in commit order (the
/// inbox `seq` and the outbox `position` come from one counter), what a commit received
/// before what it sent. Columns: `sent`, `seq`, `message_id`, `topic`, `outcome`,
/// `detail`, `at` (see [`crate::rows::message_record`]).
pub(crate) const MESSAGES: &str = "\
    SELECT false AS sent, seq, message_id, topic, outcome, detail, handled_at AS at \
    FROM inbox WHERE order_id = $1 \
    UNION ALL \
    SELECT true, position, message_id, topic, NULL, NULL, created_at \
    FROM outbox WHERE order_id = $1 \
    ORDER BY seq, sent, at, message_id";

/// The request every order still waiting on another context (`$1`: that last changed
/// before it) waits on, if it was sent, becomes unsent again (see
/// [`orders_app::Outbox::requeue_stalled`]): its latest `order.placed` when it awaits
/// payment, its latest `order.paid` when it is paid. Not simply its latest row: a
/// refused payment adds an `order.payment_refused` after the request without changing
/// the order.
pub(crate) const REQUEUE_STALLED: &str = "\
    UPDATE outbox SET sent_at = NULL \
    WHERE sent_at IS NOT NULL AND parked_at IS NULL AND position IN ( \
        SELECT (SELECT max(o.position) FROM outbox o \
                WHERE o.order_id = d.id AND o.topic = CASE d.status \
                    WHEN 'AwaitingPayment' THEN 'order.placed' ELSE 'order.paid' END) \
        FROM orders d \
        WHERE d.status IN ('AwaitingPayment', 'Paid') AND d.updated_at < $1)";

/// The orders whose payment is due (see [`orders_app::OrderStore::due_for_payment`]):
/// `$1` now, `$2` how many; earliest deadline first. Its conditions are those of the
/// partial index `orders_payment_due`, so it is a range scan of that index.
pub(crate) const DUE_FOR_PAYMENT: &str = "\
    SELECT id FROM orders \
    WHERE status = 'AwaitingPayment' AND payment_due_at IS NOT NULL AND payment_due_at <= $1 \
    ORDER BY payment_due_at, id LIMIT $2";

/// The commit time of the oldest unsent, unparked outbox row (the relay's index, one row).
pub(crate) const OLDEST_UNSENT: &str = "\
    SELECT created_at FROM outbox WHERE sent_at IS NULL AND parked_at IS NULL \
    ORDER BY position LIMIT 1";

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

/// Publishes `rows` in order until the bus refuses one ([`MessageBus::publish_all`]: on
/// NATS all in flight at once). Returns the positions the bus accepted; the refused row
/// and the ones after it stay unsent (published again later with the same message ids).
pub(crate) async fn publish_in_order(rows: Vec<(i64, Envelope)>, bus: &dyn MessageBus) -> Vec<i64> {
    let (positions, envelopes): (Vec<i64>, Vec<Envelope>) = rows.into_iter().unzip();
    let first_ids: Vec<_> = envelopes.iter().map(|e| e.message_id).collect();
    let (accepted, error) = bus.publish_all(envelopes).await;
    if let Some(error) = error
        && let (Some(&position), Some(message_id)) =
            (positions.get(accepted), first_ids.get(accepted))
    {
        tracing::error!(%message_id, position, %error, "publish failed; message stays in the outbox");
    }
    positions.into_iter().take(accepted).collect()
}

/// The outbox table as a relay reads and marks it.
pub(crate) trait RelayTable: Send {
    /// What a statement fails with.
    type Error: Send;

    /// Up to `limit` unsent, unparked rows, `(position, envelope text)` in position order.
    fn unsent(
        &mut self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(i64, String)>, Self::Error>> + Send;

    /// Parks `rows` (never empty): `(position, why)`.
    fn park(
        &mut self,
        rows: Vec<(i64, String)>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Marks the rows at `positions` (never empty) sent.
    fn mark_sent(
        &mut self,
        positions: &[i64],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// What [`relay_from_table`] did.
pub(crate) struct Relayed {
    /// Rows published and marked.
    pub sent: usize,
    /// Every unsent row was read: the table had fewer than asked for.
    pub caught_up: bool,
}

/// Publishes up to `limit` unsent rows of `table` to `bus` in position order, parking
/// the ones that do not decode and marking the published ones sent. Stops at the first
/// refused publish, and after one batch unless parked rows made it short: then it reads
/// on to fill it, so bad rows never hold back the good ones behind them.
pub(crate) async fn relay_from_table<T: RelayTable>(
    table: &mut T,
    limit: usize,
    bus: &dyn MessageBus,
) -> Result<Relayed, T::Error> {
    let mut sent = 0;
    while sent < limit {
        let want = limit - sent;
        let rows = table.unsent(want).await?;
        let caught_up = rows.len() < want;
        let RelayBatch { publish, park } = RelayBatch::decode(rows);
        let parked_some = !park.is_empty();
        if parked_some {
            table.park(park).await?;
        }
        let ready = publish.len();
        let published = publish_in_order(publish, bus).await;
        if !published.is_empty() {
            table.mark_sent(&published).await?;
        }
        sent += published.len();
        if published.len() < ready {
            break;
        }
        if caught_up {
            return Ok(Relayed {
                sent,
                caught_up: true,
            });
        }
        if !parked_some {
            break;
        }
    }
    Ok(Relayed {
        sent,
        caught_up: false,
    })
}

/// Sorts orders newest first by when they were placed (ids break ties): the SQL adapters
/// select the newest by id, time-ordered only to the millisecond.
pub(crate) fn newest_first(orders: &mut [orders_domain::Order]) {
    orders.sort_unstable_by_key(|o| std::cmp::Reverse((o.placed_at(), o.id().as_uuid())));
}

#[cfg(test)]
mod tests {
    use super::*;

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
