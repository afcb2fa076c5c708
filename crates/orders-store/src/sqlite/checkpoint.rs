//! Copying the WAL back into the database file (see the module docs of
//! [`super`]): a connection of its own checkpoints in the background, and the writer
//! finishes what is left between two groups.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    mpsc::Receiver,
};

use rusqlite::Connection;

/// Passes of one background checkpoint (see `checkpoint_loop`).
pub(super) const CHECKPOINT_PASSES: usize = 3;

/// Commits between two background checkpoints.
pub(super) const CHECKPOINT_EVERY: usize = 1000;

/// One passive checkpoint: (busy, frames in the WAL, frames copied back).
pub(super) fn checkpoint_pass(conn: &Connection) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
    })
}

/// Copies back the frames written since the background checkpoint finished, on the
/// writer's connection between two groups, so that its next write starts the WAL over
/// (see the module docs).
pub(super) fn finish_checkpoint(conn: &Connection) {
    if let Err(e) = checkpoint_pass(conn) {
        tracing::debug!(error = %e, "finishing the checkpoint failed; the next one will");
    }
}

/// Copies the WAL back into the database file when the writer asks, on a connection of
/// its own: the writer's thread does not spend its time on it. Ends with the writer.
pub(super) fn checkpoint_loop(conn: Connection, asked: &Receiver<()>, caught_up: &AtomicBool) {
    while asked.recv().is_ok() {
        // Each pass copies what the writer wrote during the one before, so the passes
        // get shorter, and so does what is left for the writer to finish.
        let mut all_copied = false;
        for _ in 0..CHECKPOINT_PASSES {
            match checkpoint_pass(&conn) {
                Ok((0, frames, copied)) if frames > 0 && copied == frames => all_copied = true,
                Ok(_) => {
                    all_copied = false;
                    break;
                }
                Err(e) => {
                    all_copied = false;
                    tracing::warn!(error = %e, "WAL checkpoint failed; the writer's automatic one will do it");
                    break;
                }
            }
        }
        if all_copied {
            caught_up.store(true, Ordering::Release);
        }
    }
    if let Err((_, e)) = conn.close() {
        tracing::debug!(error = %e, "closing the checkpoint connection failed");
    }
}
