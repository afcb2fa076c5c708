//! The PostgreSQL adapter of [`OrderStore`] and [`Outbox`](orders_app::Outbox), for
//! several processes on one database.
//!
//! Commits that queue up while the last group is written are written together, as one
//! statement ([`COMMIT_SQL`](commit::COMMIT_SQL), one round trip and one WAL flush for
//! all) by one of [`COMMITTERS`] group committer tasks; when a precondition of one of
//! them fails, each is written alone with the same statement, so only the failing ones
//! fail. Its preconditions are constraints: the inbox and idempotency-key primary keys, and
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
//! statement (see `connections`). Statements use generic plans (`plan_cache_mode`),
//! planned once per connection.
//!
//! Every commit announces the orders it wrote (`NOTIFY`), so other processes' blocking
//! reads hear of it ([`PostgresOrderStore::listen_commits`]).
//!
//! Where things are: `connections`, `commit` (group commit and why a commit failed),
//! `changes` (announcing and hearing commits), `relay`; the reads of the ports are here.

mod changes;
mod commit;
mod connections;
mod relay;

use std::sync::Arc;

pub use self::changes::{CHANGES_CHANNEL, CommitListener};

use async_trait::async_trait;
use orders_app::{
    Commit, MessageRecord, OrderStore, PruneReport, StoreError, messaging::MessageId,
};
use orders_domain::{Order, OrderId, Timestamp};
use sqlx::{ConnectOptions, postgres::PgConnectOptions};
use tokio::sync::{Mutex, Notify, mpsc, oneshot};
use uuid::Uuid;

use self::{
    commit::{COMMITTERS, PgCommit, Queued, group_committer},
    connections::{Conn, Connections},
};
use crate::{
    rows::message_record,
    snapshot,
    sql::{DUE_FOR_PAYMENT, MESSAGES, store_error},
};

/// Connections of a store opened by [`PostgresOrderStore::connect`].
const DEFAULT_CONNECTIONS: u32 = 16;

/// The PostgreSQL adapter of [`OrderStore`] and [`Outbox`](orders_app::Outbox).
pub struct PostgresOrderStore {
    shared: Arc<Shared>,
    /// The group committers' queue.
    commits: mpsc::UnboundedSender<Queued>,
    /// How to connect, for [`PostgresOrderStore::listen_commits`]' own connection.
    options: Box<PgConnectOptions>,
}

/// What the store and its group committers share.
struct Shared {
    connections: Connections,
    /// Wakes this process's relay after a commit with outbox rows (other processes'
    /// commits are found by the relay's polling).
    committed: Notify,
}

impl Shared {
    /// A free connection (waiting for one when all are busy).
    async fn conn(&self) -> Result<Conn<'_>, StoreError> {
        self.connections.get().await
    }
}

impl std::fmt::Debug for PostgresOrderStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOrderStore")
            .field("connections", &self.shared.connections.len())
            .finish_non_exhaustive()
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
            .map_err(|e| StoreError::unavailable_because("invalid PostgreSQL URL", e))?;
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
        let connections = Connections::new(options.clone(), first, max_connections);
        let shared = Arc::new(Shared {
            connections,
            committed: Notify::new(),
        });
        let (commits, queue) = mpsc::unbounded_channel();
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..COMMITTERS {
            tokio::spawn(group_committer(shared.clone(), queue.clone()));
        }
        Ok(Self {
            shared,
            commits,
            options: Box::new(options),
        })
    }

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

    /// Closes the connections. Later calls open new ones.
    pub async fn close(&self) {
        self.shared.connections.close().await;
    }
}

/// The newest orders, by id (time-ordered ids: the primary key gives the order), of one
/// customer when `$2` is not null, at most `$1`.
const RECENT_ORDERS: &str = "\
    SELECT id, version, data::text FROM orders \
    WHERE $2::text IS NULL OR data->>'customerId' = $2::text \
    ORDER BY id DESC LIMIT $1";

impl PostgresOrderStore {
    /// [`OrderStore::recent_orders`].
    async fn newest(&self, limit: usize, customer: Option<&str>) -> Result<Vec<Order>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut conn = self.shared.conn().await?;
        let rows = sqlx::query_as(RECENT_ORDERS)
            .bind(limit)
            .bind(customer)
            .fetch_all(conn.get()?)
            .await;
        let rows: Vec<(Uuid, i64, String)> = conn.check(rows)?;
        drop(conn);
        let mut orders = rows
            .into_iter()
            .map(|(id, version, data)| snapshot::decode_row(OrderId::from_uuid(id), version, &data))
            .collect::<Result<Vec<_>, _>>()?;
        crate::sql::newest_first(&mut orders);
        Ok(orders)
    }
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

    async fn recent_orders(
        &self,
        limit: usize,
        customer: Option<&str>,
    ) -> Result<Vec<Order>, StoreError> {
        self.newest(limit, customer).await
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

    async fn due_for_payment(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<OrderId>, StoreError> {
        let mut conn = self.shared.conn().await?;
        let ids = sqlx::query_scalar(DUE_FOR_PAYMENT)
            .bind(now)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(conn.get()?)
            .await;
        let ids: Vec<Uuid> = conn.check(ids)?;
        Ok(ids.into_iter().map(OrderId::from_uuid).collect())
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
        self.commits
            .send((commit, answer))
            .map_err(|_| StoreError::unavailable("the PostgreSQL group committers have stopped"))?;
        answered
            .await
            .map_err(|_| StoreError::unavailable("a PostgreSQL group committer stopped"))?
    }

    async fn messages(&self, id: OrderId) -> Result<Vec<MessageRecord>, StoreError> {
        type Row = (
            bool,
            i64,
            Uuid,
            String,
            Option<String>,
            Option<String>,
            Timestamp,
        );
        let mut conn = self.shared.conn().await?;
        let rows = sqlx::query_as(MESSAGES)
            .bind(id.as_uuid())
            .fetch_all(conn.get()?)
            .await;
        let rows: Vec<Row> = conn.check(rows)?;
        drop(conn);
        rows.into_iter()
            .map(|(sent, _, message_id, topic, outcome, detail, at)| {
                message_record(sent, message_id, topic, outcome, detail, at)
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
