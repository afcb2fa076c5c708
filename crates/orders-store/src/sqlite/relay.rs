//! The relay of the SQLite store: it publishes the rows the writer hands over from
//! memory and reads the table only to catch up (see the module docs of [`super`]).

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use chrono::Utc;
use orders_app::{
    Outbox, StoreError,
    messaging::{Envelope, MessageBus},
};
use orders_domain::Timestamp;
use parking_lot::Mutex;
use rusqlite::{Connection, params};
use tokio::sync::{Notify, oneshot};

use super::{
    SqliteOrderStore, closed, count, sqlite_error, timestamp_text,
    writer::{GroupWrite, Job},
};
use crate::sql::{self, REQUEUE_STALLED, RelayTable, Relayed, publish_in_order};

/// Committed outbox rows the writer hands to the relay at most; past it, the relay reads
/// the table instead (a relay that cannot keep up does not make memory grow).
pub(super) const FRESH_LIMIT: usize = 65_536;

/// Published rows whose "sent" marks the relay sends to the writer in one go, at most...
pub(super) const MARK_BATCH: usize = 64;

/// ...or after this long, whichever comes first. A crash before a mark lands publishes
/// those rows again, with their messageIds, as it always could.
pub(super) const MARK_DELAY: Duration = Duration::from_millis(10);

/// How often the relay reads the table although the hand-over had everything: rows
/// committed by another writer of the file are published within this long.
pub(super) const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// One statement (one prepared plan) whatever the batch size: positions as a JSON array.
pub(super) const MARK_SENT: &str = "UPDATE outbox SET sent_at = ?1 \
     WHERE position IN (SELECT value FROM json_each(?2))";

impl SqliteOrderStore {
    pub(super) async fn mark_parked(&self, park: Vec<(i64, String)>) -> Result<(), StoreError> {
        if park.is_empty() {
            return Ok(());
        }
        let now = timestamp_text(Utc::now());
        self.on_writer(move |conn| {
            let tx = conn.transaction().map_err(sqlite_error)?;
            {
                let mut update = tx
                    .prepare_cached(
                        "UPDATE outbox SET parked_at = ?1, park_reason = ?2 WHERE position = ?3",
                    )
                    .map_err(sqlite_error)?;
                for (position, reason) in park {
                    update
                        .execute(params![now, reason, position])
                        .map_err(sqlite_error)?;
                }
            }
            tx.commit().map_err(sqlite_error)
        })
        .await
    }

    pub(super) async fn mark_sent(&self, positions: &[i64]) -> Result<(), StoreError> {
        if positions.is_empty() {
            return Ok(());
        }
        self.send_mark(positions)?.await.map_err(|_| closed())?
    }

    /// Queues the "sent" mark of `positions` for the writer; the answer says how it went.
    pub(super) fn send_mark(&self, positions: &[i64]) -> Result<MarkAnswer, StoreError> {
        let positions = serde_json::to_string(positions)
            .map_err(|e| StoreError::corrupt_because("cannot encode positions", e))?;
        let (answer, answered) = oneshot::channel();
        self.writer
            .send(Job::Write(GroupWrite::MarkSent {
                positions,
                at: timestamp_text(Utc::now()),
                answer,
            }))
            .map_err(|_| closed())?;
        Ok(answered)
    }

    /// Sends the marks of the rows published since the last ones went out.
    pub(super) fn send_unmarked(&self, state: &mut RelayState) -> Result<(), StoreError> {
        state.unmarked_since = None;
        if state.unmarked.is_empty() {
            return Ok(());
        }
        let positions = std::mem::take(&mut state.unmarked);
        let mark = self.send_mark(&positions)?;
        state.marks.push_back(mark);
        Ok(())
    }

    /// Sends what is unmarked and waits for every mark.
    pub(super) async fn settle_marks(&self, state: &mut RelayState) -> Result<(), StoreError> {
        self.send_unmarked(state)?;
        state.await_marks().await;
        Ok(())
    }

    /// Publishes unsent rows read from the table, in position order, and marks them
    /// (waiting for the marks). Clears `state.scan` once it has read everything unsent.
    pub(super) async fn relay_from_table(
        &self,
        state: &mut RelayState,
        limit: usize,
        bus: &dyn MessageBus,
    ) -> Result<usize, StoreError> {
        // Set until this read has caught up, so a failure half way means "read again".
        state.scan = true;
        state.last_scan = Some(Instant::now());
        let mut table = Table { store: self, state };
        let Relayed { sent, caught_up } = sql::relay_from_table(&mut table, limit, bus).await?;
        if caught_up {
            table.state.scan = false;
        }
        Ok(sent)
    }
}

/// The outbox table as the relay reads it (on a reader) and marks it (on the writer).
struct Table<'a> {
    store: &'a SqliteOrderStore,
    state: &'a mut RelayState,
}

impl RelayTable for Table<'_> {
    type Error = StoreError;

    async fn unsent(&mut self, limit: usize) -> Result<Vec<(i64, String)>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.store
            .read(move |conn| {
                let mut select = conn
                    .prepare_cached(
                        "SELECT position, envelope FROM outbox \
                         WHERE sent_at IS NULL AND parked_at IS NULL \
                         ORDER BY position LIMIT ?1",
                    )
                    .map_err(sqlite_error)?;
                let rows = select
                    .query_map([limit], |row| Ok((row.get(0)?, row.get(1)?)))
                    .map_err(sqlite_error)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(sqlite_error)
            })
            .await
    }

    async fn park(&mut self, rows: Vec<(i64, String)>) -> Result<(), StoreError> {
        self.store.mark_parked(rows).await
    }

    async fn mark_sent(&mut self, positions: &[i64]) -> Result<(), StoreError> {
        self.store.mark_sent(positions).await?;
        if let Some(&last) = positions.last() {
            self.state.cursor = self.state.cursor.max(last);
        }
        Ok(())
    }
}

/// Outbox rows this process committed, handed from the writer thread to the relay so
/// that it publishes them at once instead of reading them back from the file.
#[derive(Default)]
pub(super) struct FreshRows {
    queue: Mutex<FreshQueue>,
}

#[derive(Default)]
pub(super) struct FreshQueue {
    /// `(position, envelope)` in commit order.
    rows: VecDeque<(i64, Envelope)>,
    /// Rows were dropped (more than [`FRESH_LIMIT`] waiting) since the relay last took.
    overflowed: bool,
}

impl FreshRows {
    /// Adds committed rows, in commit order; past [`FRESH_LIMIT`] it forgets what it
    /// holds and says so: the rows are in the table.
    pub(super) fn push(&self, rows: impl IntoIterator<Item = (i64, Envelope)>) {
        let mut queue = self.queue.lock();
        for row in rows {
            if queue.rows.len() >= FRESH_LIMIT {
                queue.rows.clear();
                queue.overflowed = true;
            }
            queue.rows.push_back(row);
        }
    }

    /// Up to `limit` rows after position `cursor` (older ones are dropped: the relay has
    /// them from the table), and whether rows were dropped for want of room.
    pub(super) fn take(&self, cursor: i64, limit: usize) -> (Vec<(i64, Envelope)>, bool) {
        let mut queue = self.queue.lock();
        while queue
            .rows
            .front()
            .is_some_and(|(position, _)| *position <= cursor)
        {
            queue.rows.pop_front();
        }
        let n = limit.min(queue.rows.len());
        let rows = queue.rows.drain(..n).collect();
        (rows, std::mem::take(&mut queue.overflowed))
    }
}

/// The writer's answer to a "sent" mark.
pub(super) type MarkAnswer = oneshot::Receiver<Result<(), StoreError>>;

/// What the relay keeps between calls.
pub(super) struct RelayState {
    /// Read the table before trusting the hand-over (see the module docs).
    pub(super) scan: bool,
    /// When the table was last read.
    pub(super) last_scan: Option<Instant>,
    /// The highest position published: older rows handed over are not published again.
    pub(super) cursor: i64,
    /// Marks sent to the writer and not yet seen answered, oldest first.
    pub(super) marks: VecDeque<MarkAnswer>,
    /// Positions published and not yet sent to be marked, and since when: marks go out
    /// [`MARK_BATCH`] rows or [`MARK_DELAY`] at a time, not one per commit.
    pub(super) unmarked: Vec<i64>,
    pub(super) unmarked_since: Option<Instant>,
}

impl Default for RelayState {
    fn default() -> Self {
        Self {
            scan: true,
            last_scan: None,
            cursor: 0,
            marks: VecDeque::new(),
            unmarked: Vec::new(),
            unmarked_since: None,
        }
    }
}

impl RelayState {
    /// Takes the answers of the marks that are done; a failed one means the table must
    /// be read (its rows are still unsent there).
    pub(super) fn collect_marks(&mut self) {
        while let Some(answer) = self.marks.front_mut() {
            match answer.try_recv() {
                Ok(result) => {
                    self.marks.pop_front();
                    self.note_mark(result);
                }
                Err(oneshot::error::TryRecvError::Empty) => break,
                Err(oneshot::error::TryRecvError::Closed) => {
                    self.marks.pop_front();
                    self.note_mark(Err(closed()));
                }
            }
        }
    }

    /// Waits for every mark sent so far.
    pub(super) async fn await_marks(&mut self) {
        while let Some(answer) = self.marks.pop_front() {
            let result = answer.await.unwrap_or_else(|_| Err(closed()));
            self.note_mark(result);
        }
    }

    pub(super) fn note_mark(&mut self, result: Result<(), StoreError>) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "marking published outbox rows sent failed; they stay unsent and are published again");
            self.scan = true;
        }
    }
}

pub(super) fn mark_sent(conn: &Connection, positions: &str, at: &str) -> Result<(), StoreError> {
    conn.prepare_cached(MARK_SENT)
        .and_then(|mut s| s.execute(params![at, positions]))
        .map(|_| ())
        .map_err(sqlite_error)
}

#[async_trait]
impl Outbox for SqliteOrderStore {
    async fn relay(&self, limit: usize, bus: &dyn MessageBus) -> Result<usize, StoreError> {
        let mut state = self.relay.lock().await;
        state.collect_marks();
        let (rows, overflowed) = self.fresh.take(state.cursor, limit);
        if overflowed {
            tracing::warn!(
                limit = FRESH_LIMIT,
                "relay fell behind the commits: reading them from the table"
            );
            state.scan = true;
        }
        let rescan_due = state
            .last_scan
            .is_none_or(|at| at.elapsed() >= RESCAN_EVERY);
        if state.scan || rescan_due {
            // The rows just taken are still unsent in the table: the read finds them.
            self.settle_marks(&mut state).await?;
            return self.relay_from_table(&mut state, limit, bus).await;
        }
        let ready = rows.len();
        let published = publish_in_order(rows, bus).await;
        if published.len() < ready {
            // The rest is unsent in the table; read it from there next time.
            state.scan = true;
        }
        if let Some(&last) = published.last() {
            state.cursor = state.cursor.max(last);
            state.unmarked.extend_from_slice(&published);
            state.unmarked_since.get_or_insert_with(Instant::now);
        }
        let marks_due = state.unmarked.len() >= MARK_BATCH
            || state
                .unmarked_since
                .is_some_and(|since| since.elapsed() >= MARK_DELAY);
        if marks_due {
            self.send_unmarked(&mut state)?;
        }
        Ok(published.len())
    }

    async fn unsent(&self) -> Result<u64, StoreError> {
        // Counted after the relay's marks landed, so a published row does not count.
        self.settle_marks(&mut *self.relay.lock().await).await?;
        self.read(|conn| {
            count(
                conn,
                "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND parked_at IS NULL",
            )
        })
        .await
    }

    fn committed(&self) -> &Notify {
        &self.committed
    }

    async fn oldest_unsent(&self) -> Result<Option<Timestamp>, StoreError> {
        // As `unsent`: after the relay's marks landed.
        self.settle_marks(&mut *self.relay.lock().await).await?;
        self.read(|conn| {
            let text: Option<String> = conn
                .prepare_cached(crate::sql::OLDEST_UNSENT)
                .and_then(|mut s| {
                    rusqlite::OptionalExtension::optional(s.query_row([], |row| row.get(0)))
                })
                .map_err(sqlite_error)?;
            text.as_deref().map(super::parse_timestamp).transpose()
        })
        .await
    }

    async fn requeue_stalled(&self, before: Timestamp) -> Result<u64, StoreError> {
        let before = timestamp_text(before);
        let requeued = self
            .on_writer(move |conn| {
                let n = conn
                    .execute(REQUEUE_STALLED, [before])
                    .map_err(sqlite_error)?;
                Ok(n as u64)
            })
            .await?;
        if requeued > 0 {
            // Rows behind the relay's cursor are unsent again: it must read the table.
            self.relay.lock().await.scan = true;
            self.committed.notify_waiters();
        }
        Ok(requeued)
    }
}
