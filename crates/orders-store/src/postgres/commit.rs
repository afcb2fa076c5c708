//! Group commit: commits that queue up while a group is written are written together,
//! as one statement; when one of them is refused, each is written alone (see the module
//! docs of [`super`]).

use std::sync::Arc;

use orders_app::{Commit, InboxRecord, StoreError};
use orders_domain::{Order, OrderId, Timestamp};
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use super::Shared;
use crate::{
    rows::{NewOutboxRow, outcome_columns, version_column},
    snapshot,
    sql::store_error,
};

/// Group committers: one writes a group while the next group forms.
pub(super) const COMMITTERS: usize = 2;

/// The most commits in one group statement.
pub(super) const MAX_GROUP: usize = 128;

/// A commit waiting for a group committer, and where its answer goes.
pub(super) type Queued = (PgCommit, oneshot::Sender<Result<u64, StoreError>>);

/// A commit, encoded before any connection is taken.
pub(super) struct PgCommit {
    pub(super) order: Option<Order>,
    /// The order's snapshot as JSON: `Some` exactly when `order` is (see [`PgCommit::new`]).
    pub(super) data: Option<String>,
    pub(super) outbox: Vec<NewOutboxRow>,
    pub(super) inbox: Option<InboxRecord>,
    pub(super) idempotency_key: Option<String>,
}

impl PgCommit {
    pub(super) fn new(commit: Commit) -> Result<Self, StoreError> {
        let Commit {
            order,
            outbox,
            inbox,
            idempotency_key,
        } = commit;
        Ok(Self {
            data: order.as_ref().map(snapshot::encode).transpose()?,
            outbox: outbox
                .iter()
                .map(NewOutboxRow::new)
                .collect::<Result<Vec<_>, _>>()?,
            order,
            inbox,
            idempotency_key,
        })
    }

    pub(super) fn new_version(&self) -> u64 {
        self.order
            .as_ref()
            .map_or(0, |o| o.version().saturating_add(1))
    }
}

/// Commits in one statement, so one round trip and atomic without `BEGIN`/`COMMIT`,
/// one element of its arrays per row of every commit: the inbox records, the idempotency
/// keys, the orders (an upsert: inserted at version 1 or updated to the version read + 1;
/// the `orders_version_guard` triggers refuse anything else) and the outbox rows. A
/// failed precondition of any commit is an error (a unique violation or the guard's
/// serialization failure), which aborts the whole statement: nothing is written.
/// Positions are taken from the sequence up front: `$1` is how many, and each inbox and
/// outbox row names its position's ordinal (1-based, in commit order, a commit's inbox
/// row before its outbox rows), so the history lists what a commit received before what
/// it sent. Each written order is announced on [`CHANGES_CHANNEL`](super::changes::CHANGES_CHANNEL)
/// (`<order id>:<version>`): PostgreSQL delivers it to listeners when the statement's
/// transaction commits, and never when it fails.
pub(super) const COMMIT_SQL: &str = "\
WITH seqs AS MATERIALIZED (
    SELECT s, (row_number() OVER (ORDER BY s))::int AS i
    FROM (SELECT nextval('outbox_position_seq') AS s FROM generate_series(1, $1::int)) AS t
),
inbox_rows AS (
    INSERT INTO inbox (subscriber, message_id, seq, order_id, topic, outcome, detail, handled_at)
    SELECT r.sub, r.mid, seqs.s, r.oid, r.topic, r.outcome, r.detail, r.at
    FROM UNNEST($2::text[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[],
                $8::timestamptz[], $9::int[]) AS r (sub, mid, oid, topic, outcome, detail, at, n)
    JOIN seqs ON seqs.i = r.n
),
key_rows AS (
    INSERT INTO idempotency_keys (key, order_id)
    SELECT k, o FROM UNNEST($10::text[], $11::uuid[]) AS r (k, o)
),
order_rows AS (
    INSERT INTO orders (id, version, status, data, placed_at, updated_at, payment_due_at)
    SELECT r.id, r.v, r.st, r.d::jsonb, r.p, r.u, r.due
    FROM UNNEST($12::uuid[], $13::bigint[], $14::text[], $15::text[], $16::timestamptz[],
                $17::timestamptz[], $24::timestamptz[]) AS r (id, v, st, d, p, u, due)
    ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, status = EXCLUDED.status,
        data = EXCLUDED.data, updated_at = EXCLUDED.updated_at,
        payment_due_at = EXCLUDED.payment_due_at
),
outbox_rows AS (
    INSERT INTO outbox (position, message_id, order_id, topic, envelope, created_at)
    SELECT seqs.s, r.m, r.o, r.t, r.e, r.c
    FROM UNNEST($18::uuid[], $19::uuid[], $20::text[], $21::text[], $22::timestamptz[],
                $23::int[]) AS r (m, o, t, e, c, n)
    JOIN seqs ON seqs.i = r.n
)
SELECT count(pg_notify('orders_changed', r.id::text || ':' || r.v::text))
FROM UNNEST($12::uuid[], $13::bigint[]) AS r (id, v)";

/// Takes the commits that queued up while the last group was written and writes them
/// as one group; [`COMMITTERS`] of these run, so one group is written while the next
/// forms. Ends when the store is dropped.
pub(super) async fn group_committer(
    shared: Arc<Shared>,
    queue: Arc<Mutex<mpsc::UnboundedReceiver<Queued>>>,
) {
    loop {
        let mut group = Vec::new();
        {
            let mut queue = queue.lock().await;
            match queue.recv().await {
                Some(first) => group.push(first),
                None => return,
            }
            while group.len() < MAX_GROUP {
                match queue.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
        }
        shared.write_group(group).await;
    }
}

impl Shared {
    /// The order bound to `key`.
    pub(super) async fn key_owner(&self, key: &str) -> Result<Option<OrderId>, StoreError> {
        let mut conn = self.conn().await?;
        let row = sqlx::query_scalar("SELECT order_id FROM idempotency_keys WHERE key = $1")
            .bind(key)
            .fetch_optional(conn.get()?)
            .await;
        let row: Option<Uuid> = conn.check(row)?;
        Ok(row.map(OrderId::from_uuid))
    }

    /// What a failed commit statement means for the caller (nothing was written).
    pub(super) async fn explain(
        &self,
        error: sqlx::Error,
        order: Option<&Order>,
        inbox: Option<&InboxRecord>,
        key: Option<&str>,
    ) -> StoreError {
        let sqlx::Error::Database(db) = &error else {
            return store_error(error);
        };
        let conflict = order.map(|o| StoreError::Conflict {
            order_id: o.id(),
            expected: o.version(),
        });
        if db.message().contains("order version conflict")
            && let Some(conflict) = conflict
        {
            return conflict;
        }
        match db.constraint() {
            Some("inbox_pkey") => {
                if let Some(record) = inbox {
                    return StoreError::DuplicateMessage {
                        subscriber: record.subscriber.clone(),
                        message_id: record.message_id,
                    };
                }
            }
            Some("idempotency_keys_pkey") => {
                if let Some(key) = key {
                    return match self.key_owner(key).await {
                        Ok(Some(existing)) => StoreError::DuplicateIdempotencyKey(existing),
                        Ok(None) => store_error(error),
                        Err(e) => e,
                    };
                }
            }
            // The same event committed twice: someone else saved this change.
            Some("outbox_message_id_key") => {
                if let Some(conflict) = conflict {
                    return conflict;
                }
            }
            _ => {}
        }
        store_error(error)
    }

    /// Writes `group` in one statement; when that fails on a precondition, writes each
    /// commit alone so only the failing ones fail. Answers every commit.
    pub(super) async fn write_group(&self, group: Vec<Queued>) {
        if group.len() > 1 {
            match self.commit_together(group.iter().map(|(c, _)| c)).await {
                Ok(()) => {
                    if group.iter().any(|(c, _)| !c.outbox.is_empty()) {
                        self.committed.notify_waiters();
                    }
                    for (commit, answer) in group {
                        let _ = answer.send(Ok(commit.new_version()));
                    }
                    return;
                }
                Err(CommitFailure::Unavailable(error)) => {
                    for (_, answer) in group {
                        let _ = answer.send(Err(error.clone()));
                    }
                    return;
                }
                Err(CommitFailure::Refused(e)) => {
                    tracing::debug!(error = %e, size = group.len(), "group commit refused; committing one by one");
                }
            }
        }
        for (commit, answer) in group {
            let _ = answer.send(self.commit_alone(&commit).await);
        }
    }

    /// `commits` in one [`COMMIT_SQL`] statement.
    pub(super) async fn commit_together<'c>(
        &self,
        commits: impl IntoIterator<Item = &'c PgCommit>,
    ) -> Result<(), CommitFailure> {
        let mut ordinal: i32 = 0;
        let mut next = || {
            ordinal += 1;
            ordinal
        };
        let mut inbox = InboxColumns::default();
        let mut keys: (Vec<&str>, Vec<Uuid>) = (Vec::new(), Vec::new());
        let mut orders = OrderColumns::default();
        let mut outbox = OutboxColumns::default();
        for commit in commits {
            if let Some(r) = &commit.inbox {
                let (outcome, detail) = outcome_columns(&r.outcome);
                inbox.subscriber.push(r.subscriber.as_str());
                inbox.message_id.push(r.message_id);
                inbox.order_id.push(r.order_id.as_uuid());
                inbox.topic.push(r.topic.as_str());
                inbox.outcome.push(outcome);
                inbox.detail.push(detail);
                inbox.handled_at.push(r.handled_at);
                inbox.ordinal.push(next());
            }
            if let (Some(o), Some(data)) = (&commit.order, &commit.data) {
                if let Some(key) = &commit.idempotency_key {
                    keys.0.push(key.as_str());
                    keys.1.push(o.id().as_uuid());
                }
                orders.id.push(o.id().as_uuid());
                orders.version.push(
                    version_column(o.version().saturating_add(1))
                        .map_err(CommitFailure::Unavailable)?,
                );
                orders.status.push(o.status().as_str());
                orders.data.push(data.as_str());
                orders.placed_at.push(o.placed_at());
                orders.updated_at.push(o.updated_at());
                orders.payment_due_at.push(o.payment_due_at());
            }
            for row in &commit.outbox {
                outbox.message_id.push(row.message_id);
                outbox.order_id.push(row.order_id.map(|id| id.as_uuid()));
                outbox.topic.push(row.topic.as_str());
                outbox.envelope.push(row.envelope.as_str());
                outbox.created_at.push(row.envelope_timestamp);
                outbox.ordinal.push(next());
            }
        }
        let mut conn = self.conn().await.map_err(CommitFailure::Unavailable)?;
        let result = sqlx::query(COMMIT_SQL)
            .bind(ordinal)
            .bind(inbox.subscriber)
            .bind(inbox.message_id)
            .bind(inbox.order_id)
            .bind(inbox.topic)
            .bind(inbox.outcome)
            .bind(inbox.detail)
            .bind(inbox.handled_at)
            .bind(inbox.ordinal)
            .bind(keys.0)
            .bind(keys.1)
            .bind(orders.id)
            .bind(orders.version)
            .bind(orders.status)
            .bind(orders.data)
            .bind(orders.placed_at)
            .bind(orders.updated_at)
            .bind(outbox.message_id)
            .bind(outbox.order_id)
            .bind(outbox.topic)
            .bind(outbox.envelope)
            .bind(outbox.created_at)
            .bind(outbox.ordinal)
            .bind(orders.payment_due_at)
            .execute(conn.get().map_err(CommitFailure::Unavailable)?)
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error @ sqlx::Error::Database(_)) => Err(CommitFailure::Refused(error)),
            Err(error) => Err(CommitFailure::Unavailable(conn.failed(error))),
        }
    }

    /// One commit alone; a refused one is explained (which precondition failed).
    pub(super) async fn commit_alone(&self, commit: &PgCommit) -> Result<u64, StoreError> {
        match self.commit_together([commit]).await {
            Ok(()) => {
                if !commit.outbox.is_empty() {
                    self.committed.notify_waiters();
                }
                Ok(commit.new_version())
            }
            Err(CommitFailure::Unavailable(error)) => Err(error),
            Err(CommitFailure::Refused(error)) => Err(self
                .explain(
                    error,
                    commit.order.as_ref(),
                    commit.inbox.as_ref(),
                    commit.idempotency_key.as_deref(),
                )
                .await),
        }
    }
}

/// Why a group was not written.
pub(super) enum CommitFailure {
    /// A precondition of one of its commits: write them one by one.
    Refused(sqlx::Error),
    /// The database cannot be reached: every commit fails.
    Unavailable(StoreError),
}

/// The inbox rows of a group, column by column.
#[derive(Default)]
pub(super) struct InboxColumns<'a> {
    subscriber: Vec<&'a str>,
    message_id: Vec<Uuid>,
    order_id: Vec<Uuid>,
    topic: Vec<&'a str>,
    outcome: Vec<&'static str>,
    detail: Vec<Option<&'a str>>,
    handled_at: Vec<Timestamp>,
    ordinal: Vec<i32>,
}

/// The order rows of a group, column by column.
#[derive(Default)]
pub(super) struct OrderColumns<'a> {
    id: Vec<Uuid>,
    version: Vec<i64>,
    status: Vec<&'static str>,
    data: Vec<&'a str>,
    placed_at: Vec<Timestamp>,
    updated_at: Vec<Timestamp>,
    payment_due_at: Vec<Option<Timestamp>>,
}

/// The outbox rows of a group, column by column.
#[derive(Default)]
pub(super) struct OutboxColumns<'a> {
    message_id: Vec<Uuid>,
    order_id: Vec<Option<Uuid>>,
    topic: Vec<&'a str>,
    envelope: Vec<&'a str>,
    created_at: Vec<Timestamp>,
    ordinal: Vec<i32>,
}
