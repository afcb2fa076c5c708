//! A commit as the writer writes it: encoded into column values on the caller's task,
//! written with cached statements, a failure explained (which precondition failed).

use orders_app::{
    Commit, StoreError,
    messaging::{Envelope, MessageId},
};
use orders_domain::{Order, OrderId};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::{cache::WriteThroughCache, relay::FreshRows, sqlite_error, timestamp_text};
use crate::{
    rows::{NewOutboxRow, outcome_columns, version_column},
    snapshot,
};

/// What the version triggers say when they refuse a write.
pub(super) const VERSION_CONFLICT: &str = "order version conflict";

pub(super) const INSERT_INBOX: &str = "INSERT INTO inbox \
     (subscriber, message_id, seq, order_id, topic, outcome, detail, handled_at) \
     VALUES (?1, ?2, \
       coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0) + 1, \
       ?3, ?4, ?5, ?6, ?7)";

pub(super) const INSERT_KEY: &str = "INSERT INTO idempotency_keys (key, order_id) VALUES (?1, ?2)";

/// Inserted at version 1, or updated to the version read + 1; the triggers refuse
/// anything else (a lost update).
pub(super) const UPSERT_ORDER: &str = "INSERT INTO orders \
     (id, version, status, data, placed_at, updated_at, payment_due_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
     ON CONFLICT (id) DO UPDATE SET version = excluded.version, \
       status = excluded.status, data = excluded.data, updated_at = excluded.updated_at, \
       payment_due_at = excluded.payment_due_at";

pub(super) const INSERT_OUTBOX: &str = "INSERT INTO outbox (message_id, order_id, topic, envelope, created_at) \
     VALUES (?1, ?2, ?3, ?4, ?5)";

/// The order bound to `key`.
pub(super) fn key_owner(conn: &Connection, key: &str) -> Result<Option<OrderId>, StoreError> {
    let row: Option<String> = conn
        .prepare_cached("SELECT order_id FROM idempotency_keys WHERE key = ?1")
        .and_then(|mut s| s.query_row([key], |row| row.get(0)).optional())
        .map_err(sqlite_error)?;
    row.map(|id| snapshot::parse(&id, "order id")).transpose()
}

/// The inbox row of a commit, as column values.
pub(super) struct InboxRow {
    subscriber: String,
    message_id: String,
    order_id: String,
    topic: String,
    outcome: &'static str,
    detail: Option<String>,
    handled_at: String,
}

/// The order row of a commit, as column values.
pub(super) struct OrderRow {
    id: String,
    version: i64,
    status: &'static str,
    data: String,
    placed_at: String,
    updated_at: String,
    payment_due_at: Option<String>,
}

/// An outbox row of a commit, as column values.
pub(super) struct OutboxRow {
    message_id: String,
    order_id: Option<String>,
    topic: String,
    envelope: String,
    created_at: String,
}

/// A commit turned into column values, encoded on the caller's task so that the writer
/// only writes, and what is needed to explain a failure.
pub(super) struct PreparedCommit {
    inbox: Option<InboxRow>,
    /// `(key, order id)`.
    key: Option<(String, String)>,
    order: Option<OrderRow>,
    outbox: Vec<OutboxRow>,
    /// The order and its version as loaded.
    loaded: Option<(OrderId, u64)>,
    /// The inbox record's subscriber and message.
    handled: Option<(String, MessageId)>,
    idempotency_key: Option<String>,
    /// The key must be free but is not bound (a commit without an order).
    check_key_only: bool,
    /// The order as it will be once committed, for the cache.
    cached: Option<Order>,
    /// The outbox messages themselves, handed to the relay once committed.
    envelopes: Vec<Envelope>,
}

impl PreparedCommit {
    /// The rows of `commit`, written in precondition order: inbox, idempotency key,
    /// order, outbox.
    pub(super) fn new(commit: Commit) -> Result<Self, StoreError> {
        let Commit {
            order,
            outbox,
            inbox,
            idempotency_key,
        } = commit;
        let rows = outbox
            .iter()
            .map(|envelope| {
                let row = NewOutboxRow::new(envelope)?;
                Ok(OutboxRow {
                    message_id: row.message_id.to_string(),
                    order_id: row.order_id.map(|id| id.to_string()),
                    topic: row.topic,
                    envelope: row.envelope,
                    created_at: timestamp_text(row.envelope_timestamp),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let inbox_row = inbox.as_ref().map(|record| {
            let (outcome, detail) = outcome_columns(&record.outcome);
            InboxRow {
                subscriber: record.subscriber.clone(),
                message_id: record.message_id.to_string(),
                order_id: record.order_id.to_string(),
                topic: record.topic.clone(),
                outcome,
                detail: detail.map(str::to_owned),
                handled_at: timestamp_text(record.handled_at),
            }
        });
        let order_row = order
            .as_ref()
            .map(|o| {
                Ok::<_, StoreError>(OrderRow {
                    id: o.id().to_string(),
                    version: version_column(o.version().saturating_add(1))?,
                    status: o.status().as_str(),
                    data: snapshot::encode(o)?,
                    placed_at: timestamp_text(o.placed_at()),
                    updated_at: timestamp_text(o.updated_at()),
                    payment_due_at: o.payment_due_at().map(timestamp_text),
                })
            })
            .transpose()?;
        Ok(Self {
            inbox: inbox_row,
            key: match (&idempotency_key, &order) {
                (Some(key), Some(o)) => Some((key.clone(), o.id().to_string())),
                _ => None,
            },
            order: order_row,
            outbox: rows,
            loaded: order.as_ref().map(|o| (o.id(), o.version())),
            handled: inbox.map(|r| (r.subscriber, r.message_id)),
            check_key_only: idempotency_key.is_some() && order.is_none(),
            idempotency_key,
            cached: order.map(|mut o| {
                o.mark_saved(o.version().saturating_add(1));
                o
            }),
            envelopes: outbox,
        })
    }

    pub(super) fn new_version(&self) -> u64 {
        self.loaded.map_or(0, |(_, v)| v.saturating_add(1))
    }

    pub(super) fn has_outbox(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Answers the caller, after bringing the cache up to date with `result`: called by
    /// the writer thread in commit order, so a slow caller cannot put an older version
    /// back in the cache after a newer one.
    pub(super) fn answer(
        self: Box<Self>,
        cache: &WriteThroughCache,
        answer: oneshot::Sender<Result<u64, StoreError>>,
        result: Result<(), StoreError>,
    ) {
        let result = result.map(|()| self.new_version());
        match &result {
            Ok(_) => cache.committed(self.cached, self.handled),
            Err(StoreError::Conflict { order_id, .. }) => cache.evict(*order_id),
            Err(_) => {}
        }
        let _ = answer.send(result);
    }

    /// Hands the committed outbox rows (at `positions`) to the relay.
    pub(super) fn hand_over(&mut self, positions: Vec<i64>, fresh: &FreshRows) {
        let envelopes = std::mem::take(&mut self.envelopes);
        fresh.push(positions.into_iter().zip(envelopes));
    }

    /// Writes the rows on `conn`, inside the caller's transaction, and returns the
    /// positions of its outbox rows; a failure is explained (which precondition), and
    /// the caller rolls the rows back.
    pub(super) fn write(&self, conn: &Connection) -> Result<Vec<i64>, StoreError> {
        if self.check_key_only
            && let Some(key) = &self.idempotency_key
            && let Some(existing) = key_owner(conn, key)?
        {
            return Err(StoreError::DuplicateIdempotencyKey(existing));
        }
        self.execute(conn).map_err(|e| self.explain(conn, e))
    }

    pub(super) fn execute(&self, conn: &Connection) -> rusqlite::Result<Vec<i64>> {
        if let Some(r) = &self.inbox {
            conn.prepare_cached(INSERT_INBOX)?.execute(params![
                r.subscriber,
                r.message_id,
                r.order_id,
                r.topic,
                r.outcome,
                r.detail,
                r.handled_at
            ])?;
        }
        if let Some((key, order_id)) = &self.key {
            conn.prepare_cached(INSERT_KEY)?
                .execute(params![key, order_id])?;
        }
        if let Some(o) = &self.order {
            conn.prepare_cached(UPSERT_ORDER)?.execute(params![
                o.id,
                o.version,
                o.status,
                o.data,
                o.placed_at,
                o.updated_at,
                o.payment_due_at
            ])?;
        }
        let mut positions = Vec::with_capacity(self.outbox.len());
        if !self.outbox.is_empty() {
            let mut insert = conn.prepare_cached(INSERT_OUTBOX)?;
            for row in &self.outbox {
                insert.execute(params![
                    row.message_id,
                    row.order_id,
                    row.topic,
                    row.envelope,
                    row.created_at
                ])?;
                positions.push(conn.last_insert_rowid());
            }
        }
        Ok(positions)
    }

    /// What a failed statement means for the caller.
    pub(super) fn explain(&self, conn: &Connection, error: rusqlite::Error) -> StoreError {
        let message = match &error {
            rusqlite::Error::SqliteFailure(_, Some(message)) => message.as_str(),
            _ => return sqlite_error(error),
        };
        if (message.contains(VERSION_CONFLICT)
            || message.starts_with("UNIQUE constraint failed: orders.")
            || message.starts_with("UNIQUE constraint failed: outbox."))
            && let Some((order_id, expected)) = self.loaded
        {
            return StoreError::Conflict { order_id, expected };
        }
        if message.starts_with("UNIQUE constraint failed: inbox.")
            && let Some((subscriber, message_id)) = &self.handled
        {
            return StoreError::DuplicateMessage {
                subscriber: subscriber.clone(),
                message_id: *message_id,
            };
        }
        if message.starts_with("UNIQUE constraint failed: idempotency_keys.")
            && let Some(key) = &self.idempotency_key
        {
            return match key_owner(conn, key) {
                Ok(Some(existing)) => StoreError::DuplicateIdempotencyKey(existing),
                Ok(None) => sqlite_error(error),
                Err(e) => e,
            };
        }
        sqlite_error(error)
    }
}
