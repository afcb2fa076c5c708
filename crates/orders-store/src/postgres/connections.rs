//! Where statements run: a fixed set of connections the store owns, each (re)opened
//! when needed. Not an sqlx pool: the pool pings a connection every time it comes back,
//! one more round trip per statement.

use std::sync::atomic::{AtomicUsize, Ordering};

use orders_app::StoreError;
use sqlx::{ConnectOptions, Connection as _, PgConnection, postgres::PgConnectOptions};
use tokio::sync::{Mutex, MutexGuard};

use crate::sql::store_error;

/// The store's connections, opened by [`super::PostgresOrderStore::connect_with`].
pub(super) struct Connections {
    options: Box<PgConnectOptions>,
    slots: Vec<Mutex<Option<PgConnection>>>,
    /// Where the next caller starts looking for a free connection.
    next: AtomicUsize,
}

impl Connections {
    /// `count` connections (at least 2: the relay holds one while it publishes) with
    /// `options`; `first` is already open, the others open when first needed.
    pub(super) fn new(options: PgConnectOptions, first: PgConnection, count: u32) -> Self {
        let mut slots = vec![Mutex::new(Some(first))];
        slots.extend((1..count.max(2)).map(|_| Mutex::new(None)));
        Self {
            options: Box::new(options),
            slots,
            next: AtomicUsize::new(0),
        }
    }

    /// How many.
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// A free connection (waiting for one when all are busy), opened if needed.
    pub(super) async fn get(&self) -> Result<Conn<'_>, StoreError> {
        let slots = &self.slots;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
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
            *slot = Some(self.options.connect().await.map_err(store_error)?);
        }
        Ok(Conn(slot))
    }

    /// Closes every connection; later calls open new ones.
    pub(super) async fn close(&self) {
        for slot in &self.slots {
            if let Some(conn) = slot.lock().await.take()
                && let Err(e) = conn.close().await
            {
                tracing::debug!(error = %e, "closing a PostgreSQL connection failed");
            }
        }
    }
}

/// A connection in hand.
pub(super) struct Conn<'a>(MutexGuard<'a, Option<PgConnection>>);

impl Conn<'_> {
    pub(super) fn get(&mut self) -> Result<&mut PgConnection, StoreError> {
        self.0
            .as_mut()
            .ok_or_else(|| StoreError::unavailable("the PostgreSQL connection is closed"))
    }

    /// Maps a statement's result (see [`Conn::failed`]).
    pub(super) fn check<T>(&mut self, result: Result<T, sqlx::Error>) -> Result<T, StoreError> {
        result.map_err(|e| self.failed(e))
    }

    /// The store error of a failed statement; a connection that failed at the connection
    /// level is dropped, so the next caller opens a fresh one.
    pub(super) fn failed(&mut self, error: sqlx::Error) -> StoreError {
        if connection_lost(&error) {
            tracing::warn!(%error, "PostgreSQL connection lost; reconnecting on next use");
            self.0.take();
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
