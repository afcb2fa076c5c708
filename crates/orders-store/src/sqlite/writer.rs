//! The writer thread: owns the writing connection and runs every write in arrival
//! order; commits and relay marks that queued up together are written as one group.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
    mpsc::{Receiver, SyncSender},
};

use orders_app::StoreError;
use rusqlite::Connection;
use tokio::sync::{Notify, oneshot};

use super::{
    cache::WriteThroughCache,
    checkpoint::{CHECKPOINT_EVERY, finish_checkpoint},
    commit::PreparedCommit,
    relay::{FreshRows, mark_sent},
    sqlite_error,
};

/// The most writes in one transaction.
pub(super) const MAX_GROUP: usize = 256;

/// Work for the writer thread, answering through a channel it captured.
pub(super) type WriterWork = Box<dyn FnOnce(&mut Connection) + Send + 'static>;

/// What the writer thread does.
pub(super) enum Job {
    /// A write that joins a group transaction with the writes queued beside it.
    Write(GroupWrite),
    /// Anything else that needs the writing connection, alone.
    Run(WriterWork),
    /// Close the connection and stop.
    Close(oneshot::Sender<()>),
}

/// A write that may share its transaction with others (see [`write_group`]).
pub(super) enum GroupWrite {
    /// A commit, prepared; answered with the new version once committed.
    Commit(
        Box<PreparedCommit>,
        oneshot::Sender<Result<u64, StoreError>>,
    ),
    /// Outbox rows the relay published: their positions as a JSON array, and when.
    MarkSent {
        positions: String,
        at: String,
        answer: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// The writer thread: runs jobs in arrival order; commits and relay marks that queued up
/// together are written as a group ([`write_group`]). Ends when the store is dropped or
/// closed.
pub(super) fn write_loop(mut conn: Connection, jobs: &Receiver<Job>, writer: &Writer) {
    let mut next = None;
    let mut since_checkpoint = 0;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => match jobs.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
        };
        match job {
            Job::Close(done) => {
                if let Err((_, e)) = conn.close() {
                    tracing::warn!(error = %e, "closing the SQLite writer failed");
                }
                let _ = done.send(());
                return;
            }
            Job::Run(work) => work(&mut conn),
            Job::Write(first) => {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match jobs.try_recv() {
                        Ok(Job::Write(write)) => group.push(write),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                since_checkpoint += group.len();
                if since_checkpoint >= CHECKPOINT_EVERY {
                    if let Some(due) = &writer.checkpoints {
                        // Full: one is pending already, which will do.
                        let _ = due.try_send(());
                    }
                    since_checkpoint = 0;
                }
                if write_group(&mut conn, writer, group) {
                    writer.committed.notify_waiters();
                }
                if writer.caught_up.swap(false, Ordering::AcqRel) {
                    finish_checkpoint(&conn);
                }
            }
        }
    }
}

/// What the writer thread shares with the store.
pub(super) struct Writer {
    /// Notified after a commit with outbox rows.
    pub(super) committed: Arc<Notify>,
    pub(super) cache: Arc<WriteThroughCache>,
    /// Where committed outbox rows go for the relay.
    pub(super) fresh: Arc<FreshRows>,
    /// Asks the checkpoint thread for a checkpoint.
    pub(super) checkpoints: Option<SyncSender<()>>,
    /// Set by the checkpoint thread when it copied back every frame it saw.
    pub(super) caught_up: Arc<AtomicBool>,
}

/// Writes `group`, answers each write, and says whether outbox rows were committed.
///
/// Optimistically all in one transaction. When that fails (a commit's precondition,
/// usually), it is rolled back and each write is done alone, in its own transaction, so
/// each gets its own answer and only the failing ones fail. Nobody hears "committed"
/// before `COMMIT` returned.
pub(super) fn write_group(conn: &mut Connection, writer: &Writer, group: Vec<GroupWrite>) -> bool {
    let cache = &*writer.cache;
    if group.len() > 1 {
        match write_together(conn, &group) {
            Ok(mut positions) => {
                let mut wrote_outbox = false;
                for job in group {
                    match job {
                        GroupWrite::Commit(mut commit, answer) => {
                            wrote_outbox |= commit.has_outbox();
                            commit.hand_over(positions.next().unwrap_or_default(), &writer.fresh);
                            commit.answer(cache, answer, Ok(()));
                        }
                        GroupWrite::MarkSent { answer, .. } => {
                            let _ = answer.send(Ok(()));
                        }
                    }
                }
                return wrote_outbox;
            }
            Err(e) => {
                roll_back(conn);
                tracing::debug!(error = %e, size = group.len(), "group commit failed; writing one by one");
            }
        }
    }
    let mut wrote_outbox = false;
    for job in group {
        match job {
            GroupWrite::Commit(mut commit, answer) => {
                let result = in_transaction(conn, |conn| commit.write(conn)).map(|positions| {
                    wrote_outbox |= commit.has_outbox();
                    commit.hand_over(positions, &writer.fresh);
                });
                commit.answer(cache, answer, result);
            }
            GroupWrite::MarkSent {
                positions,
                at,
                answer,
            } => {
                let _ = answer.send(in_transaction(conn, |conn| {
                    mark_sent(conn, &positions, &at)
                }));
            }
        }
    }
    wrote_outbox
}

/// Every write of `group` in one transaction, committed; the first failure stops it
/// (and the caller rolls back). Returns the outbox positions of each commit, in order.
pub(super) fn write_together(
    conn: &Connection,
    group: &[GroupWrite],
) -> Result<std::vec::IntoIter<Vec<i64>>, StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(sqlite_error)?;
    let mut positions = Vec::with_capacity(group.len());
    for job in group {
        match job {
            GroupWrite::Commit(commit, _) => positions.push(commit.write(conn)?),
            GroupWrite::MarkSent { positions, at, .. } => mark_sent(conn, positions, at)?,
        }
    }
    conn.execute_batch("COMMIT").map_err(sqlite_error)?;
    Ok(positions.into_iter())
}

/// `write` in a transaction of its own: committed when it succeeds, rolled back when not.
pub(super) fn in_transaction<T>(
    conn: &Connection,
    write: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(sqlite_error)?;
    let result = write(conn).and_then(|written| {
        conn.execute_batch("COMMIT")
            .map_err(sqlite_error)
            .map(|()| written)
    });
    if result.is_err() {
        roll_back(conn);
    }
    result
}

/// Ends the transaction a failed write may have left open; "no transaction" (SQLite
/// already rolled it back) is fine.
pub(super) fn roll_back(conn: &Connection) {
    if !conn.is_autocommit()
        && let Err(e) = conn.execute_batch("ROLLBACK")
    {
        tracing::warn!(error = %e, "rollback after a failed commit");
    }
}
