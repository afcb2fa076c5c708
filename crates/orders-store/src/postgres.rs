//! The PostgreSQL adapter of [`OrderStore`] and [`Outbox`], for several processes on one
//! database.
//!
//! Commits that queue up while the last group is written are written together, as one
//! statement ([`COMMIT_SQL`], one round trip and one WAL flush for all) by one of
//! [`COMMITTERS`] group committer tasks; when a precondition of one of them fails, each
//! is written alone with the same statement, so only the failing ones fail. Its
//! preconditions are constraints: the inbox and idempotency-key primary keys, and
//! triggers that let an order's version only go up by one (a new order starts at 1). A
//! concurrent writer is waited for, then re-checked against the row it committed, so of
//! two commits at one expected version exactly one succeeds; the error of a failed one
//! says which precondition failed, and nothing of it is written.
//!
//! The relay publishes inside a transaction that holds a transaction-scoped advisory
//! lock (one key per schema; a relay that does not get it publishes nothing this time)
//! and row locks (`FOR UPDATE SKIP LOCKED`) on the batch, marks
//! the published rows sent, then commits: several relays on one database never publish a
//! row twice in normal operation. A crash between publish and commit publishes the rows
//! again, with the same message ids, which consumers' inboxes drop.
//!
//! Outbox positions come from a sequence and are taken when a commit runs, not when it
//! becomes visible, so rows of different orders may become visible out of position
//! order. Rows of one order cannot: a commit at version v + 1 is made from the order
//! loaded after the commit at version v was visible, so it takes later positions.
//! Per-order (per correlation id) order, the one the bus keeps, is kept.
//!
//! The store owns a fixed set of connections ([`PostgresOrderStore::connect_with`]),
//! opened as needed and reopened after a connection-level failure, rather than an sqlx
//! pool: the pool pings each connection when it is returned, a second round trip per
//! statement. Statements use generic plans (`plan_cache_mode`), planned once per
//! connection.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use async_trait::async_trait;
use chrono::Utc;
use orders_app::{
    Commit, Direction, InboxRecord, MessageRecord, OrderStore, Outbox, PruneReport, StoreError,
    messaging::{MessageBus, MessageId},
};
use orders_domain::{Order, OrderId, Timestamp};
use sqlx::{
    ConnectOptions, Connection, PgConnection, PgPool, Postgres, pool::PoolConnection,
    postgres::PgConnectOptions,
};
use tokio::sync::{Mutex, MutexGuard, Notify, mpsc, oneshot};
use uuid::Uuid;

use crate::{
    snapshot,
    sql::{
        NewOutboxRow, RelayBatch, outcome_columns, outcome_from_columns, publish_in_order,
        store_error,
    },
};

/// Group committers: one writes a group while the next group forms.
const COMMITTERS: usize = 2;
/// The most commits in one group statement.
const MAX_GROUP: usize = 128;
/// Connections of a store opened by [`PostgresOrderStore::connect`].
const DEFAULT_CONNECTIONS: u32 = 16;
/// First half of the relay's advisory lock key ("ORDS"); the second half is a hash of
/// the current schema, so deployments in different schemas do not block each other.
const RELAY_LOCK_CLASS: i32 = 0x4f52_4453;

/// The PostgreSQL adapter of [`OrderStore`] and [`Outbox`].
pub struct PostgresOrderStore {
    shared: Arc<Shared>,
    /// The group committers' queue.
    commits: mpsc::UnboundedSender<Queued>,
}

/// What the store and its group committers share.
struct Shared {
    connections: Connections,
    /// Wakes this process's relay after a commit with outbox rows (other processes'
    /// commits are found by the relay's polling).
    committed: Notify,
}

/// A commit waiting for a group committer, and where its answer goes.
type Queued = (PgCommit, oneshot::Sender<Result<u64, StoreError>>);

/// A commit, encoded before any connection is taken.
struct PgCommit {
    order: Option<Order>,
    /// The order's snapshot as JSON: `Some` exactly when `order` is (see [`PgCommit::new`]).
    data: Option<String>,
    outbox: Vec<NewOutboxRow>,
    inbox: Option<InboxRecord>,
    idempotency_key: Option<String>,
}

impl PgCommit {
    fn new(commit: Commit) -> Result<Self, StoreError> {
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

    fn new_version(&self) -> u64 {
        self.order
            .as_ref()
            .map_or(0, |o| o.version().saturating_add(1))
    }
}

impl std::fmt::Debug for PostgresOrderStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let connections = match &self.shared.connections {
            Connections::Owned { slots, .. } => format!("{} owned", slots.len()),
            Connections::Pool(pool) => format!("{pool:?}"),
        };
        f.debug_struct("PostgresOrderStore")
            .field("connections", &connections)
            .finish_non_exhaustive()
    }
}

/// Where statements run.
enum Connections {
    /// Opened by [`PostgresOrderStore::connect_with`]: a fixed set of connections, each
    /// (re)opened when first needed. Not a pool: sqlx's pool pings a connection every
    /// time it comes back, one more round trip per statement.
    Owned {
        options: Box<PgConnectOptions>,
        slots: Vec<Mutex<Option<PgConnection>>>,
        /// Where the next caller starts looking for a free connection.
        next: AtomicUsize,
    },
    /// Given to [`PostgresOrderStore::from_pool`].
    Pool(PgPool),
}

/// A connection in hand.
enum Conn<'a> {
    Owned(MutexGuard<'a, Option<PgConnection>>),
    Pooled(PoolConnection<Postgres>),
}

impl Conn<'_> {
    fn get(&mut self) -> Result<&mut PgConnection, StoreError> {
        match self {
            Self::Owned(slot) => slot.as_mut().ok_or_else(|| {
                StoreError::Unavailable("the PostgreSQL connection is closed".to_owned())
            }),
            Self::Pooled(conn) => Ok(conn),
        }
    }

    /// Maps a statement's result (see [`Conn::failed`]).
    fn check<T>(&mut self, result: Result<T, sqlx::Error>) -> Result<T, StoreError> {
        result.map_err(|e| self.failed(e))
    }

    /// The store error of a failed statement; a connection that failed at the connection
    /// level is dropped, so the next caller opens a fresh one.
    fn failed(&mut self, error: sqlx::Error) -> StoreError {
        if let Self::Owned(slot) = self
            && connection_lost(&error)
        {
            tracing::warn!(%error, "PostgreSQL connection lost; reconnecting on next use");
            slot.take();
        }
        store_error(error)
    }
}

/// Whether `error` means the connection is unusable (I/O, protocol, or the server ending
/// the session: SQLSTATE classes 08 and 57).
fn connection_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57")),
        _ => false,
    }
}

fn migrator() -> sqlx::migrate::Migrator {
    sqlx::migrate!("./migrations/postgres")
}

impl PostgresOrderStore {
    /// Connects to `url` (`postgres://user@host:port/database`) with up to 16
    /// connections and applies the migrations (in the first schema of the search path).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the URL is invalid, the server cannot be reached
    /// or the migrations fail.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("invalid PostgreSQL URL: {e}")))?;
        Self::connect_with(options, DEFAULT_CONNECTIONS).await
    }

    /// Connects with explicit `options` (e.g. a search path) and up to `max_connections`
    /// connections (at least 2: the relay holds one while it publishes), opening the first
    /// one now to apply the migrations and the others when needed.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the server cannot be reached or the migrations fail.
    pub async fn connect_with(
        options: PgConnectOptions,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        // Plan each statement once per connection: the commit statement is costly to plan
        // and its best plan does not depend on the values.
        let options = options.options([("plan_cache_mode", "force_generic_plan")]);
        let mut first = options.connect().await.map_err(store_error)?;
        migrator()
            .run_direct(&mut first)
            .await
            .map_err(crate::sql::migrate_error)?;
        let mut slots = vec![Mutex::new(Some(first))];
        slots.extend((1..max_connections.max(2)).map(|_| Mutex::new(None)));
        Ok(Self::new(Connections::Owned {
            options: Box::new(options),
            slots,
            next: AtomicUsize::new(0),
        }))
    }

    /// A store over an existing pool; applies the migrations.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the migrations fail.
    pub async fn from_pool(pool: PgPool) -> Result<Self, StoreError> {
        migrator()
            .run(&pool)
            .await
            .map_err(crate::sql::migrate_error)?;
        Ok(Self::new(Connections::Pool(pool)))
    }

    fn new(connections: Connections) -> Self {
        let shared = Arc::new(Shared {
            connections,
            committed: Notify::new(),
        });
        let (commits, queue) = mpsc::unbounded_channel();
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..COMMITTERS {
            tokio::spawn(group_committer(shared.clone(), queue.clone()));
        }
        Self { shared, commits }
    }

    /// Runs `sql` (one statement, no results): for administration and tests. Returns the
    /// rows changed.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the statement fails.
    pub async fn execute_admin(&self, sql: &str) -> Result<u64, StoreError> {
        let mut conn = self.shared.conn().await?;
        let result = sqlx::query(sql).execute(conn.get()?).await;
        Ok(conn.check(result)?.rows_affected())
    }
}

impl Shared {
    /// A free connection (waiting for one when all are busy), opened if needed.
    async fn conn(&self) -> Result<Conn<'_>, StoreError> {
        let (options, slots, next) = match &self.connections {
            Connections::Pool(pool) => {
                return pool.acquire().await.map(Conn::Pooled).map_err(store_error);
            }
            Connections::Owned {
                options,
                slots,
                next,
            } => (options, slots, next),
        };
        let start = next.fetch_add(1, Ordering::Relaxed);
        let mut slot = None;
        for i in 0..slots.len() {
            if let Ok(free) = slots[(start + i) % slots.len()].try_lock() {
                slot = Some(free);
                break;
            }
        }
        let mut slot = match slot {
            Some(slot) => slot,
            None => slots[start % slots.len()].lock().await,
        };
        if slot.is_none() {
            *slot = Some(options.connect().await.map_err(store_error)?);
        }
        Ok(Conn::Owned(slot))
    }

    /// The order bound to `key`.
    async fn key_owner(&self, key: &str) -> Result<Option<OrderId>, StoreError> {
        let mut conn = self.conn().await?;
        let row = sqlx::query_scalar("SELECT order_id FROM idempotency_keys WHERE key = $1")
            .bind(key)
            .fetch_optional(conn.get()?)
            .await;
        let row: Option<Uuid> = conn.check(row)?;
        Ok(row.map(OrderId::from_uuid))
    }
}

impl PostgresOrderStore {
    /// Outbox rows parked because their envelope could not be decoded; they are never
    /// published and need an operator.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn parked(&self) -> Result<u64, StoreError> {
        let mut conn = self.shared.conn().await?;
        let n = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL")
            .fetch_one(conn.get()?)
            .await;
        let n: i64 = conn.check(n)?;
        Ok(u64::try_from(n).unwrap_or_default())
    }
}

impl Shared {
    /// What a failed commit statement means for the caller (nothing was written).
    async fn explain(
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
}

impl PostgresOrderStore {
    /// Closes the connections. Later calls open new ones (a store from
    /// [`PostgresOrderStore::connect`]) or fail as unavailable (from a pool).
    pub async fn close(&self) {
        match &self.shared.connections {
            Connections::Owned { slots, .. } => {
                for slot in slots {
                    if let Some(conn) = slot.lock().await.take()
                        && let Err(e) = conn.close().await
                    {
                        tracing::debug!(error = %e, "closing a PostgreSQL connection failed");
                    }
                }
            }
            Connections::Pool(pool) => pool.close().await,
        }
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
/// it sent.
const COMMIT_SQL: &str = "\
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
    INSERT INTO orders (id, version, status, data, placed_at, updated_at)
    SELECT r.id, r.v, r.st, r.d::jsonb, r.p, r.u
    FROM UNNEST($12::uuid[], $13::bigint[], $14::text[], $15::text[], $16::timestamptz[],
                $17::timestamptz[]) AS r (id, v, st, d, p, u)
    ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, status = EXCLUDED.status,
        data = EXCLUDED.data, updated_at = EXCLUDED.updated_at
),
outbox_rows AS (
    INSERT INTO outbox (position, message_id, order_id, topic, envelope, created_at)
    SELECT seqs.s, r.m, r.o, r.t, r.e, r.c
    FROM UNNEST($18::uuid[], $19::uuid[], $20::text[], $21::text[], $22::timestamptz[],
                $23::int[]) AS r (m, o, t, e, c, n)
    JOIN seqs ON seqs.i = r.n
)
SELECT 1";

/// Takes the commits that queued up while the last group was written and writes them
/// as one group; [`COMMITTERS`] of these run, so one group is written while the next
/// forms. Ends when the store is dropped.
async fn group_committer(shared: Arc<Shared>, queue: Arc<Mutex<mpsc::UnboundedReceiver<Queued>>>) {
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
    /// Writes `group` in one statement; when that fails on a precondition, writes each
    /// commit alone so only the failing ones fail. Answers every commit.
    async fn write_group(&self, group: Vec<Queued>) {
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
    async fn commit_together<'c>(
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
            .execute(conn.get().map_err(CommitFailure::Unavailable)?)
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error @ sqlx::Error::Database(_)) => Err(CommitFailure::Refused(error)),
            Err(error) => Err(CommitFailure::Unavailable(conn.failed(error))),
        }
    }

    /// One commit alone; a refused one is explained (which precondition failed).
    async fn commit_alone(&self, commit: &PgCommit) -> Result<u64, StoreError> {
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
enum CommitFailure {
    /// A precondition of one of its commits: write them one by one.
    Refused(sqlx::Error),
    /// The database cannot be reached: every commit fails.
    Unavailable(StoreError),
}

/// The inbox rows of a group, column by column.
#[derive(Default)]
struct InboxColumns<'a> {
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
struct OrderColumns<'a> {
    id: Vec<Uuid>,
    version: Vec<i64>,
    status: Vec<&'static str>,
    data: Vec<&'a str>,
    placed_at: Vec<Timestamp>,
    updated_at: Vec<Timestamp>,
}

/// The outbox rows of a group, column by column.
#[derive(Default)]
struct OutboxColumns<'a> {
    message_id: Vec<Uuid>,
    order_id: Vec<Option<Uuid>>,
    topic: Vec<&'a str>,
    envelope: Vec<&'a str>,
    created_at: Vec<Timestamp>,
    ordinal: Vec<i32>,
}

fn version_column(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version).map_err(|_| StoreError::Corrupt(format!("version {version} too large")))
}

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
    let mut tx = conn.begin().await?;

    let mut sent = 0;
    while sent < limit {
        let want = i64::try_from(limit - sent).unwrap_or(i64::MAX);
        // No rows either when another relay holds the lock: it will publish them.
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "WITH relay_lock AS MATERIALIZED ( \
                 SELECT pg_try_advisory_xact_lock($1, hashtext(coalesce(current_schema(), ''))) \
                     AS held) \
             SELECT position, envelope FROM outbox \
             WHERE (SELECT held FROM relay_lock) AND sent_at IS NULL AND parked_at IS NULL \
             ORDER BY position LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(RELAY_LOCK_CLASS)
        .bind(want)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            break;
        }
        let RelayBatch { publish, park } = RelayBatch::decode(rows);
        let parked_some = !park.is_empty();
        if parked_some {
            let (positions, reasons): (Vec<i64>, Vec<String>) = park.into_iter().unzip();
            sqlx::query(
                "UPDATE outbox SET parked_at = $1, park_reason = r.reason \
                 FROM UNNEST($2::bigint[], $3::text[]) AS r (position, reason) \
                 WHERE outbox.position = r.position",
            )
            .bind(Utc::now())
            .bind(positions)
            .bind(reasons)
            .execute(&mut *tx)
            .await?;
        }
        let ready = publish.len();
        let published = publish_in_order(publish, bus).await;
        if !published.is_empty() {
            sqlx::query("UPDATE outbox SET sent_at = $1 WHERE position = ANY($2)")
                .bind(Utc::now())
                .bind(&published)
                .execute(&mut *tx)
                .await?;
        }
        sent += published.len();
        // Go on only to fill a batch that parked rows made short.
        if published.len() < ready || !parked_some {
            break;
        }
    }
    tx.commit().await?;
    Ok(sent)
}

#[async_trait]
impl OrderStore for PostgresOrderStore {
    async fn load(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        let mut conn = self.shared.conn().await?;
        let row = sqlx::query_as("SELECT version, data::text FROM orders WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_optional(conn.get()?)
            .await;
        let row: Option<(i64, String)> = conn.check(row)?;
        drop(conn);
        row.map(|(version, data)| snapshot::decode_row(id, version, &data))
            .transpose()
    }

    async fn is_handled(
        &self,
        subscriber: &str,
        message_id: MessageId,
    ) -> Result<bool, StoreError> {
        let mut conn = self.shared.conn().await?;
        let row =
            sqlx::query_scalar("SELECT 1 FROM inbox WHERE subscriber = $1 AND message_id = $2")
                .bind(subscriber)
                .bind(message_id)
                .fetch_optional(conn.get()?)
                .await;
        let row: Option<i32> = conn.check(row)?;
        Ok(row.is_some())
    }

    async fn find_by_idempotency_key(&self, key: &str) -> Result<Option<OrderId>, StoreError> {
        self.shared.key_owner(key).await
    }

    async fn commit(&self, commit: Commit) -> Result<u64, StoreError> {
        // Encode everything before taking a connection.
        let commit = PgCommit::new(commit)?;
        if let (Some(key), None) = (&commit.idempotency_key, &commit.order) {
            // Nothing to bind the key to: only check that it is free.
            if let Some(existing) = self.shared.key_owner(key).await? {
                return Err(StoreError::DuplicateIdempotencyKey(existing));
            }
        }
        let (answer, answered) = oneshot::channel();
        self.commits.send((commit, answer)).map_err(|_| {
            StoreError::Unavailable("the PostgreSQL group committers have stopped".to_owned())
        })?;
        answered.await.map_err(|_| {
            StoreError::Unavailable("a PostgreSQL group committer stopped".to_owned())
        })?
    }

    async fn messages(&self, id: OrderId) -> Result<Vec<MessageRecord>, StoreError> {
        // Inbox and outbox rows draw `seq`/`position` from one sequence: commit order.
        let mut conn = self.shared.conn().await?;
        #[allow(clippy::type_complexity)]
        let rows: Result<
            Vec<(
                bool,
                i64,
                Uuid,
                String,
                Option<String>,
                Option<String>,
                Timestamp,
            )>,
            _,
        > = sqlx::query_as(
            "SELECT false AS sent, seq, message_id, topic, outcome, detail, handled_at AS at \
             FROM inbox WHERE order_id = $1 \
             UNION ALL \
             SELECT true, position, message_id, topic, NULL, NULL, created_at \
             FROM outbox WHERE order_id = $1 \
             ORDER BY seq, sent, at, message_id",
        )
        .bind(id.as_uuid())
        .fetch_all(conn.get()?)
        .await;
        let rows = conn.check(rows)?;
        drop(conn);
        rows.into_iter()
            .map(|(sent, _, message_id, topic, outcome, detail, at)| {
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
            })
            .collect()
    }

    async fn prune(&self, before: Timestamp) -> Result<PruneReport, StoreError> {
        let mut conn = self.shared.conn().await?;
        let inbox = sqlx::query("DELETE FROM inbox WHERE handled_at < $1")
            .bind(before)
            .execute(conn.get()?)
            .await;
        let inbox = conn.check(inbox)?.rows_affected();
        let outbox = sqlx::query("DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1")
            .bind(before)
            .execute(conn.get()?)
            .await;
        let outbox = conn.check(outbox)?.rows_affected();
        Ok(PruneReport { inbox, outbox })
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

/// The latest outbox row of every order still waiting on another context, if it was
/// sent, becomes unsent again (see [`Outbox::requeue_stalled`]).
const REQUEUE_STALLED: &str = "
    UPDATE outbox SET sent_at = NULL
    WHERE sent_at IS NOT NULL AND parked_at IS NULL AND position IN (
        SELECT (SELECT max(o.position) FROM outbox o WHERE o.order_id = d.id)
        FROM orders d
        WHERE d.status IN ('AwaitingPayment', 'Paid') AND d.updated_at < $1
    )";
