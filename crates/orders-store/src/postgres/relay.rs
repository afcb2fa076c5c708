//! The PostgreSQL relay: one transaction that holds an advisory lock and row locks on
//! its batch, publishes, marks the rows sent and commits (see the module docs of
//! [`super`]).

use async_trait::async_trait;
use chrono::Utc;
use orders_app::{Outbox, StoreError, messaging::MessageBus};
use orders_domain::Timestamp;
use sqlx::{Connection, PgConnection, Postgres, Transaction};
use tokio::sync::Notify;

use super::PostgresOrderStore;
use crate::sql::{self, REQUEUE_STALLED, RelayTable};

/// First half of the relay's advisory lock key ("ORDS"); the second half is a hash of
/// the current schema, so deployments in different schemas do not block each other.
const RELAY_LOCK_CLASS: i32 = 0x4f52_4453;

/// The relay's work on one connection, in one transaction (see the module doc).
async fn relay_on(
    conn: &mut PgConnection,
    limit: usize,
    bus: &dyn MessageBus,
) -> Result<usize, sqlx::Error> {
    // Most calls find nothing (the relay asks until it gets 0): one cheap look first.
    let pending: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM outbox WHERE sent_at IS NULL AND parked_at IS NULL)",
    )
    .fetch_one(&mut *conn)
    .await?;
    if !pending {
        return Ok(0);
    }
    let mut table = Table(conn.begin().await?);
    let sent = sql::relay_from_table(&mut table, limit, bus).await?.sent;
    table.0.commit().await?;
    Ok(sent)
}

/// The outbox table inside the relay's transaction.
struct Table<'c>(Transaction<'c, Postgres>);

impl RelayTable for Table<'_> {
    type Error = sqlx::Error;

    async fn unsent(&mut self, limit: usize) -> Result<Vec<(i64, String)>, sqlx::Error> {
        // No rows either when another relay holds the lock: it will publish them.
        sqlx::query_as(
            "WITH relay_lock AS MATERIALIZED ( \
                 SELECT pg_try_advisory_xact_lock($1, hashtext(coalesce(current_schema(), ''))) \
                     AS held) \
             SELECT position, envelope FROM outbox \
             WHERE (SELECT held FROM relay_lock) AND sent_at IS NULL AND parked_at IS NULL \
             ORDER BY position LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(RELAY_LOCK_CLASS)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *self.0)
        .await
    }

    async fn park(&mut self, rows: Vec<(i64, String)>) -> Result<(), sqlx::Error> {
        let (positions, reasons): (Vec<i64>, Vec<String>) = rows.into_iter().unzip();
        sqlx::query(
            "UPDATE outbox SET parked_at = $1, park_reason = r.reason \
             FROM UNNEST($2::bigint[], $3::text[]) AS r (position, reason) \
             WHERE outbox.position = r.position",
        )
        .bind(Utc::now())
        .bind(positions)
        .bind(reasons)
        .execute(&mut *self.0)
        .await
        .map(|_| ())
    }

    async fn mark_sent(&mut self, positions: &[i64]) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE outbox SET sent_at = $1 WHERE position = ANY($2)")
            .bind(Utc::now())
            .bind(positions)
            .execute(&mut *self.0)
            .await
            .map(|_| ())
    }
}

#[async_trait]
impl Outbox for PostgresOrderStore {
    async fn relay(&self, limit: usize, bus: &dyn MessageBus) -> Result<usize, StoreError> {
        let mut conn = self.shared.conn().await?;
        let sent = relay_on(conn.get()?, limit, bus).await;
        conn.check(sent)
    }

    async fn unsent(&self) -> Result<u64, StoreError> {
        let mut conn = self.shared.conn().await?;
        let n = sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND parked_at IS NULL",
        )
        .fetch_one(conn.get()?)
        .await;
        let n: i64 = conn.check(n)?;
        Ok(u64::try_from(n).unwrap_or_default())
    }

    fn committed(&self) -> &Notify {
        &self.shared.committed
    }

    async fn oldest_unsent(&self) -> Result<Option<Timestamp>, StoreError> {
        let mut conn = self.shared.conn().await?;
        let oldest = sqlx::query_scalar(crate::sql::OLDEST_UNSENT)
            .fetch_optional(conn.get()?)
            .await;
        conn.check(oldest)
    }

    async fn requeue_stalled(&self, before: Timestamp) -> Result<u64, StoreError> {
        let mut conn = self.shared.conn().await?;
        let requeued = sqlx::query(REQUEUE_STALLED)
            .bind(before)
            .execute(conn.get()?)
            .await;
        let requeued = conn.check(requeued)?.rows_affected();
        if requeued > 0 {
            self.shared.committed.notify_waiters();
        }
        Ok(requeued)
    }
}
