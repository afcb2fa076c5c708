//! The reader threads: each owns a connection and takes reads from one shared queue.

use std::sync::mpsc::Receiver;

use parking_lot::Mutex;

use rusqlite::Connection;

/// Work for a reader thread.
pub(super) type ReaderWork = Box<dyn FnOnce(&Connection) + Send + 'static>;

/// A reader thread: runs reads from the shared queue until it closes.
pub(super) fn read_loop(conn: Connection, waiting: &Mutex<Receiver<ReaderWork>>) {
    loop {
        // One thread waits in `recv` while holding the lock; the others queue behind it.
        let work = waiting.lock().recv();
        match work {
            Ok(work) => work(&conn),
            Err(_) => break,
        }
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing a SQLite reader failed");
    }
}
