//! Where statements run: a fixed set of connections the store owns, each (re)opened
//! when needed, or an sqlx pool.

use std::sync::atomic::{AtomicUsize, Ordering};

use orders_app::StoreError;
use sqlx::{
    ConnectOptions, PgConnection, PgPool, Postgres, pool::PoolConnection,
    postgres::PgConnectOptions,
};
use tokio::sync::{Mutex, MutexGuard};

use super::Shared;
use crate::sql::store_error;

/// Where statements run.
pub(super) enum Connections {
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
pub(super) enum Conn<'a> {
    Owned(MutexGuard<'a, Option<PgConnection>>),
    Pooled(PoolConnection<Postgres>),
}

impl Conn<'_> {
    pub(super) fn get(&mut self) -> Result<&mut PgConnection, StoreError> {
        match self {
            Self::Owned(slot) => slot.as_mut().ok_or_else(|| {
                StoreError::Unavailable("the PostgreSQL connection is closed".to_owned())
            }),
            Self::Pooled(conn) => Ok(conn),
        }
    }

    /// Maps a statement's result (see [`Conn::failed`]).
    pub(super) fn check<T>(&mut self, result: Result<T, sqlx::Error>) -> Result<T, StoreError> {
        result.map_err(|e| self.failed(e))
    }

    /// The store error of a failed statement; a connection that failed at the connection
    /// level is dropped, so the next caller opens a fresh one.
    pub(super) fn failed(&mut self, error: sqlx::Error) -> StoreError {
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
pub(super) fn connection_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57")),
        _ => false,
    }
}

impl Shared {
    /// A free connection (waiting for one when all are busy), opened if needed.
    pub(super) async fn conn(&self) -> Result<Conn<'_>, StoreError> {
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
}
