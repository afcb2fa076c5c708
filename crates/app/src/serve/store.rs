//! Store selection: opens the adapter a [`StoreSpec`] names (in-memory, SQLite or
//! PostgreSQL) and keeps it to report parked rows and to close it on shutdown.

use std::{fmt, sync::Arc};

use orders_store::{CommitListener, PostgresOrderStore, SqliteOrderStore};
use parking_lot::Mutex;

use super::config::StoreSpec;
use crate::{changes::OrderChanges, system::Stores};

/// An opened store adapter: the ports the service uses, and what to close on shutdown.
pub struct OpenedStore {
    /// The ports (orders + outbox + inbox, and the relay's view of the outbox).
    pub stores: Stores,
    /// The concrete adapter, kept to close it (SQLite checkpoints its WAL on close).
    adapter: Adapter,
    /// On PostgreSQL, what hears other replicas' commits (see
    /// [`OpenedStore::follow_commits`]); stopped on close.
    listener: Mutex<Option<CommitListener>>,
}

impl fmt::Debug for OpenedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenedStore").finish_non_exhaustive()
    }
}

enum Adapter {
    Memory,
    Sqlite(Arc<SqliteOrderStore>),
    Postgres(Arc<PostgresOrderStore>),
}

impl OpenedStore {
    /// Outbox rows parked because they could not be decoded; `None` for the in-memory
    /// store (it cannot hold an undecodable row) or when the store does not answer.
    pub async fn parked(&self) -> Option<u64> {
        match &self.adapter {
            Adapter::Memory => None,
            Adapter::Sqlite(store) => store.parked().await.ok(),
            Adapter::Postgres(store) => store.parked().await.ok(),
        }
    }

    /// Wakes the waiters of `changes` (blocking reads) when any process on the same
    /// database commits a change of their order, not only this one: on PostgreSQL it
    /// listens to every replica's commits (`LISTEN`/`NOTIFY`). The in-memory and SQLite
    /// stores have one process, whose commits [`crate::changes::WatchedStore`] reports
    /// already: nothing to do.
    ///
    /// # Errors
    /// When the listening connection cannot be opened.
    pub async fn follow_commits(&self, changes: Arc<OrderChanges>) -> anyhow::Result<()> {
        if let Adapter::Postgres(store) = &self.adapter {
            let listener = store
                .listen_commits(move |id, _version| changes.notify(id))
                .await?;
            *self.listener.lock() = Some(listener);
        }
        Ok(())
    }

    /// Closes the adapter's connections; the ports fail as unavailable afterwards.
    pub async fn close(&self) {
        drop(self.listener.lock().take());
        match &self.adapter {
            Adapter::Memory => {}
            Adapter::Sqlite(store) => store.close().await,
            Adapter::Postgres(store) => store.close().await,
        }
    }
}

/// Opens the store adapter `spec` names, running its migrations (a SQLite file is
/// created with its folder when missing).
///
/// # Errors
/// When the store cannot be reached, opened or migrated; the message never holds the
/// password.
pub async fn open_store(spec: &StoreSpec) -> anyhow::Result<OpenedStore> {
    match spec {
        StoreSpec::Memory => Ok(OpenedStore {
            stores: Stores::in_memory(),
            adapter: Adapter::Memory,
            listener: Mutex::default(),
        }),
        StoreSpec::Sqlite(url) => {
            let store = Arc::new(SqliteOrderStore::connect(url).await?);
            Ok(OpenedStore {
                stores: Stores::durable(store.clone()),
                adapter: Adapter::Sqlite(store),
                listener: Mutex::default(),
            })
        }
        StoreSpec::Postgres(url) => {
            let store = Arc::new(PostgresOrderStore::connect(url.expose_secret()).await?);
            Ok(OpenedStore {
                stores: Stores::durable(store.clone()),
                adapter: Adapter::Postgres(store),
                listener: Mutex::default(),
            })
        }
    }
}
