//! The SQLite adapter of [`OrderStore`] and [`Outbox`](orders_app::Outbox): the embedded
//! default, one file in WAL mode, on rusqlite.
//!
//! SQLite is a library, not a server: a statement is a function call that blocks its
//! thread. So each connection lives on a thread of its own and async callers hand it
//! work through a channel and await the answer; the costs to watch are those hand-offs
//! and the WAL writes, not the SQL. So:
//!
//! * **One writer thread** owns the writing connection and runs every write in arrival
//!   order: SQLite lets one connection write at a time anyway, and queueing in-process is
//!   cheaper than SQLite's sleeping busy handler. Callers send it a job and await the
//!   answer, so a caller that gives up never leaves a transaction half done.
//! * **Group commit**: the commits (and relay marks) that queued up while the writer was
//!   busy are written in one transaction, so the WAL is written once for all of them.
//!   If that transaction fails (a precondition of one of them, usually), it is rolled
//!   back and each write is done alone, so only the failing ones fail. Nobody hears
//!   "committed" before `COMMIT` returned. Statements are prepared once per connection
//!   and cached.
//! * Preconditions are constraints, checked by SQLite: the inbox and idempotency-key
//!   primary keys, and triggers that allow an order's version only to go up by one (a new
//!   order starts at 1). The error says which one failed.
//! * Reads go to [`READERS`](connect::READERS) reader threads, which WAL lets run beside the writer. An
//!   in-memory database (`sqlite::memory:`) exists only in its one connection, so there
//!   the writer thread reads too.
//! * A separate connection checkpoints the WAL every [`CHECKPOINT_EVERY`](checkpoint::CHECKPOINT_EVERY) commits, off
//!   the writer's thread. Under steady load that alone never lets the WAL start over:
//!   SQLite restarts it only when a write begins with every frame copied back, and the
//!   writer always has new frames by then. So when a background checkpoint has copied
//!   all it saw, the writer copies the frames written meanwhile itself, between two
//!   groups, and its next write starts the WAL over. The background checkpoint runs in
//!   three passes, each copying what was written during the one before, so what is
//!   left for the writer is small (its fsyncs wait only for the pages written
//!   meanwhile). Without it the WAL grows past
//!   [`WAL_AUTOCHECKPOINT`](connect::WAL_AUTOCHECKPOINT) pages within seconds and the
//!   writer then checkpoints after every group, stalling commits each time. The figures,
//!   and the thresholds tried and not kept, are in BENCHMARKS.md.
//! * The migrations (`migrations/sqlite`) are embedded and applied with rusqlite before
//!   the other connections open; the schema version is `PRAGMA user_version`.
//! * **The relay publishes from memory.** After `COMMIT` the writer hands the committed
//!   outbox rows (position and envelope) to the relay, which publishes them at once and
//!   sends their "sent" marks to the writer without waiting for them, [`MARK_BATCH`](relay::MARK_BATCH)
//!   rows or [`MARK_DELAY`](relay::MARK_DELAY) at a time: the marks join the next group commit. The table
//!   is read only to catch up: at start, after rows were requeued, after a failed
//!   publish or mark, when more rows were committed than the hand-over holds, and once
//!   a second to find rows that some other writer committed. Before it reads the table
//!   the relay waits for its marks, so a row being marked is not taken for unsent; a
//!   crash before a mark lands publishes that row again, with its messageId, as it
//!   always could.
//!
//! The relay is serialised in-process by a mutex and holds no connection while it
//! publishes. One process only may open a file: a second one fails at start naming the
//! file and the holder's pid (`lock`: an advisory lock on `<file>.lock`); several
//! processes on one database is what PostgreSQL is for.
//!
//! Where things are: `connect` (opening the file and its connections), `lock`, `migrate`,
//! `writer` (the writer thread and group commit), `commit` (a commit's rows and why one
//! failed), `readers`, `checkpoint`, `relay` (the hand-over and the table reads),
//! `cache` (the write-through cache); the reads of the ports are here.

mod cache;
mod checkpoint;
mod commit;
mod connect;
mod lock;
mod migrate;
mod readers;
mod relay;
mod writer;

use std::{
    sync::{
        Arc,
        atomic::AtomicBool,
        mpsc::{self as std_mpsc, Sender},
    },
    thread,
};

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use orders_app::{
    Commit, MessageRecord, OrderStore, PruneReport, StoreError, messaging::MessageId,
};
use orders_domain::{Order, OrderId, Timestamp};
use parking_lot::Mutex as SyncMutex;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{Mutex, Notify, oneshot};

use self::{
    cache::WriteThroughCache,
    checkpoint::checkpoint_loop,
    commit::{PreparedCommit, key_owner},
    readers::{ReaderWork, read_loop},
    relay::{FreshRows, RelayState},
    writer::{GroupWrite, Job, Writer, write_loop},
};
use crate::{
    rows::message_record,
    snapshot,
    sql::{DUE_FOR_PAYMENT, MESSAGES},
};

/// The SQLite adapter of [`OrderStore`] and [`Outbox`](orders_app::Outbox).
pub struct SqliteOrderStore {
    /// The writer thread's queue.
    writer: Sender<Job>,
    /// The reader threads' queue; `None` once closed.
    readers: SyncMutex<Option<Sender<ReaderWork>>>,
    /// One per reader thread, resolved when it has ended (closed its connection).
    reader_ends: SyncMutex<Vec<oneshot::Receiver<()>>>,
    /// An in-memory database: the writer thread reads too.
    in_memory: bool,
    /// The process's hold on the file's lock (none in memory); released by `close`, or
    /// on drop.
    lock: SyncMutex<Option<lock::FileLock>>,
    /// Serialises relays in this process, so rows leave in commit order, once; and what
    /// the relay knows between calls.
    relay: Mutex<RelayState>,
    /// Committed outbox rows, handed over by the writer thread for the relay.
    fresh: Arc<FreshRows>,
    /// Wakes the relay after a commit with outbox rows (shared with the writer thread).
    committed: Arc<Notify>,
    /// What this process (the only writer) committed last, for the flow's reads.
    /// Kept by the writer thread, in commit order, so it never goes back in time.
    cache: Arc<WriteThroughCache>,
}

impl std::fmt::Debug for SqliteOrderStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteOrderStore")
            .field("in_memory", &self.in_memory)
            .finish_non_exhaustive()
    }
}

impl SqliteOrderStore {
    fn start(
        writer: Connection,
        readers: Vec<Connection>,
        checkpointer: Option<Connection>,
        in_memory: bool,
        lock: Option<lock::FileLock>,
    ) -> Result<Self, StoreError> {
        let committed = Arc::new(Notify::new());
        let caught_up = Arc::new(AtomicBool::new(false));
        let checkpoints = match checkpointer {
            Some(conn) => {
                let (due, asked) = std_mpsc::sync_channel(1);
                let done = caught_up.clone();
                spawn("sqlite-checkpoint", move || {
                    checkpoint_loop(conn, &asked, &done)
                })?;
                Some(due)
            }
            None => None,
        };
        let (jobs, queued) = std_mpsc::channel();
        let cache = Arc::new(WriteThroughCache::default());
        let fresh = Arc::new(FreshRows::default());
        let writer_side = Writer {
            committed: committed.clone(),
            cache: cache.clone(),
            fresh: fresh.clone(),
            checkpoints,
            caught_up,
        };
        spawn("sqlite-writer", move || {
            write_loop(writer, &queued, &writer_side)
        })?;
        let (work, waiting) = std_mpsc::channel::<ReaderWork>();
        let waiting = Arc::new(SyncMutex::new(waiting));
        let mut reader_ends = Vec::new();
        for (i, conn) in readers.into_iter().enumerate() {
            let waiting = waiting.clone();
            let (ended, end) = oneshot::channel::<()>();
            reader_ends.push(end);
            spawn(&format!("sqlite-reader-{i}"), move || {
                read_loop(conn, &waiting);
                drop(ended);
            })?;
        }
        Ok(Self {
            writer: jobs,
            readers: SyncMutex::new(Some(work)),
            reader_ends: SyncMutex::new(reader_ends),
            in_memory,
            lock: SyncMutex::new(lock),
            relay: Mutex::new(RelayState::default()),
            fresh,
            cache,
            committed,
        })
    }

    /// Runs `sql` (statements separated by `;`, no results) on the writing connection,
    /// for tests that work below the ports (feature `scratch`); an in-memory database
    /// is reachable only this way. Returns the rows the last statement changed.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when a statement fails.
    #[cfg(feature = "scratch")]
    pub async fn execute_admin(&self, sql: &str) -> Result<u64, StoreError> {
        let sql = sql.to_owned();
        let changed = self
            .on_writer(move |conn| {
                conn.execute_batch(&sql).map_err(sqlite_error)?;
                Ok(conn.changes())
            })
            .await;
        // It may have written outbox rows the hand-over knows nothing of.
        self.relay.lock().await.scan = true;
        changed
    }

    /// Outbox rows parked because their envelope could not be decoded; they are never
    /// published and need an operator.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn parked(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            count(
                conn,
                "SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL",
            )
        })
        .await
    }

    /// Closes the connections (the last one checkpoints the WAL) after the writes queued
    /// before. Later calls fail as unavailable.
    pub async fn close(&self) {
        // Published rows are marked first, so a clean stop publishes nothing twice.
        if let Err(e) = self.settle_marks(&mut *self.relay.lock().await).await {
            tracing::warn!(error = %e, "marking published outbox rows failed; they are published again on start");
        }
        // The reader threads end when their queue closes, after the reads queued before.
        drop(self.readers.lock().take());
        let ends = std::mem::take(&mut *self.reader_ends.lock());
        for end in ends {
            let _ = end.await;
        }
        let (done, closed) = oneshot::channel();
        if self.writer.send(Job::Close(done)).is_ok() {
            let _ = closed.await;
        }
        // Only now may another process open the file.
        drop(self.lock.lock().take());
    }

    /// Runs `work` on the writing connection, in order with the other writes.
    async fn on_writer<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let job = Job::Run(Box::new(move |conn| {
            let _ = answer.send(work(conn));
        }));
        self.writer.send(job).map_err(|_| closed())?;
        answered.await.map_err(|_| closed())?
    }

    /// Runs `work` on a reader connection (the writer's, for an in-memory database).
    async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        if self.in_memory {
            return self.on_writer(move |conn| work(conn)).await;
        }
        let (answer, answered) = oneshot::channel();
        let job: ReaderWork = Box::new(move |conn| {
            let _ = answer.send(work(conn));
        });
        self.readers
            .lock()
            .as_ref()
            .ok_or_else(closed)?
            .send(job)
            .map_err(|_| closed())?;
        answered.await.map_err(|_| closed())?
    }
}

/// The newest orders, by id (time-ordered ids: the primary key gives the order), of one
/// customer when `?2` is not null, at most `?1`.
const RECENT_ORDERS: &str = "\
    SELECT id, version, data FROM orders \
    WHERE ?2 IS NULL OR json_extract(data, '$.customerId') = ?2 \
    ORDER BY id DESC LIMIT ?1";

impl SqliteOrderStore {
    /// [`OrderStore::recent_orders`].
    async fn newest(&self, limit: usize, customer: Option<&str>) -> Result<Vec<Order>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let customer = customer.map(str::to_owned);
        let rows: Vec<(String, i64, String)> = self
            .read(move |conn| {
                let mut select = conn.prepare_cached(RECENT_ORDERS).map_err(sqlite_error)?;
                let rows = select
                    .query_map(params![limit, customer], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })
                    .map_err(sqlite_error)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(sqlite_error)
            })
            .await?;
        let mut orders = rows
            .into_iter()
            .map(|(id, version, data)| {
                snapshot::decode_row(snapshot::parse(&id, "order id")?, version, &data)
            })
            .collect::<Result<Vec<_>, _>>()?;
        crate::sql::newest_first(&mut orders);
        Ok(orders)
    }
}

fn closed() -> StoreError {
    StoreError::unavailable("the SQLite store is closed")
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<(), StoreError> {
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
        .map(|_| ())
        .map_err(|e| StoreError::unavailable_because(format!("cannot start thread {name}"), e))
}

/// A SQLite error as the ports see it: a value that does not decode is corrupt data,
/// anything else means the database cannot do the work now.
fn sqlite_error(error: rusqlite::Error) -> StoreError {
    use rusqlite::Error as E;
    match error {
        E::FromSqlConversionFailure(..)
        | E::IntegralValueOutOfRange(..)
        | E::Utf8Error(_)
        | E::InvalidColumnIndex(_)
        | E::InvalidColumnName(_)
        | E::InvalidColumnType(..) => {
            StoreError::corrupt_because("a stored value does not decode", error)
        }
        other => StoreError::unavailable_because("SQLite failed", other),
    }
}

fn timestamp_text(at: Timestamp) -> String {
    // Fixed-width UTC text (`2026-01-05T10:00:00.000000000Z`), so text order is time
    // order; chrono's RFC 3339 writer, not a format string parsed on every call.
    at.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn parse_timestamp(text: &str) -> Result<Timestamp, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::corrupt_because(format!("invalid stored timestamp {text:?}"), e))
}

/// A `SELECT count(*)` as a count.
fn count(conn: &Connection, sql: &str) -> Result<u64, StoreError> {
    let n: i64 = conn
        .prepare_cached(sql)
        .and_then(|mut s| s.query_row([], |row| row.get(0)))
        .map_err(sqlite_error)?;
    Ok(u64::try_from(n).unwrap_or_default())
}

#[async_trait]
impl OrderStore for SqliteOrderStore {
    async fn load(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        if let Some(order) = self.cache.order(id) {
            return Ok(Some(order));
        }
        let row: Option<(i64, String)> = self
            .read(move |conn| {
                conn.prepare_cached("SELECT version, data FROM orders WHERE id = ?1")
                    .and_then(|mut s| {
                        s.query_row([id.to_string()], |row| Ok((row.get(0)?, row.get(1)?)))
                            .optional()
                    })
                    .map_err(sqlite_error)
            })
            .await?;
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
        if self.cache.handled(subscriber, message_id) {
            return Ok(true);
        }
        let subscriber = subscriber.to_owned();
        self.read(move |conn| {
            conn.prepare_cached("SELECT 1 FROM inbox WHERE subscriber = ?1 AND message_id = ?2")
                .and_then(|mut s| s.exists(params![subscriber, message_id.to_string()]))
                .map_err(sqlite_error)
        })
        .await
    }

    async fn find_by_idempotency_key(&self, key: &str) -> Result<Option<OrderId>, StoreError> {
        let key = key.to_owned();
        self.read(move |conn| key_owner(conn, &key)).await
    }

    async fn due_for_payment(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<OrderId>, StoreError> {
        let now = timestamp_text(now);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let ids: Vec<String> = self
            .read(move |conn| {
                let mut select = conn.prepare_cached(DUE_FOR_PAYMENT).map_err(sqlite_error)?;
                let rows = select
                    .query_map(params![now, limit], |row| row.get(0))
                    .map_err(sqlite_error)?;
                rows.collect::<Result<Vec<String>, _>>()
                    .map_err(sqlite_error)
            })
            .await?;
        ids.iter()
            .map(|id| snapshot::parse(id, "order id"))
            .collect()
    }

    async fn commit(&self, commit: Commit) -> Result<u64, StoreError> {
        // Encoded here, on the caller's task, so the writer only writes. The writer
        // updates the cache, in commit order, before it answers.
        let prepared = Box::new(PreparedCommit::new(commit)?);
        let (answer, answered) = oneshot::channel();
        self.writer
            .send(Job::Write(GroupWrite::Commit(prepared, answer)))
            .map_err(|_| closed())?;
        answered.await.map_err(|_| closed())?
    }

    async fn messages(&self, id: OrderId) -> Result<Vec<MessageRecord>, StoreError> {
        type Row = (bool, String, String, Option<String>, Option<String>, String);
        let rows: Vec<Row> = self
            .read(move |conn| {
                let mut select = conn.prepare_cached(MESSAGES).map_err(sqlite_error)?;
                let rows = select
                    .query_map([id.to_string()], |row| {
                        Ok((
                            row.get(0)?,
                            row.get(2)?,
                            row.get(3)?,
                            row.get(4)?,
                            row.get(5)?,
                            row.get(6)?,
                        ))
                    })
                    .map_err(sqlite_error)?;
                rows.collect::<Result<Vec<Row>, _>>().map_err(sqlite_error)
            })
            .await?;
        rows.into_iter()
            .map(|(sent, message_id, topic, outcome, detail, at)| {
                message_record(
                    sent,
                    snapshot::parse(&message_id, "message id")?,
                    topic,
                    outcome,
                    detail,
                    parse_timestamp(&at)?,
                )
            })
            .collect()
    }

    async fn prune(&self, before: Timestamp) -> Result<PruneReport, StoreError> {
        self.cache.forget_handled();
        let before = timestamp_text(before);
        self.on_writer(move |conn| {
            let tx = conn.transaction().map_err(sqlite_error)?;
            let inbox = tx
                .execute("DELETE FROM inbox WHERE handled_at < ?1", [&before])
                .map_err(sqlite_error)?;
            let outbox = tx
                .execute(
                    "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?1",
                    [&before],
                )
                .map_err(sqlite_error)?;
            tx.commit().map_err(sqlite_error)?;
            Ok(PruneReport {
                inbox: inbox as u64,
                outbox: outbox as u64,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn timestamps_are_fixed_width_so_text_order_is_time_order() {
        let a = Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap();
        let b = a + chrono::Duration::nanoseconds(1);
        let c = a + chrono::Duration::milliseconds(500);
        let (ta, tb, tc) = (timestamp_text(a), timestamp_text(b), timestamp_text(c));
        assert_eq!(ta, "2026-01-05T10:00:00.000000000Z");
        assert!(ta < tb && tb < tc);
        assert_eq!(parse_timestamp(&tb).unwrap(), b);
    }
}
