//! Store selection: opens the adapter a [`StoreSpec`] names (in-memory, SQLite or
//! PostgreSQL) and keeps it to report parked rows and to close it on shutdown.

use std::{fmt, sync::Arc};

use orders_store::{PostgresOrderStore, SqliteOrderStore};

use super::config::StoreSpec;
use crate::system::Stores;

/// An opened store adapter: the ports the service uses, and what to close on shutdown.
pub struct OpenedStore {
    /// The ports (orders + outbox + inbox, and the relay's view of the outbox).
    pub stores: Stores,
    /// The concrete adapter, kept to close it (SQLite checkpoints its WAL on close).
    adapter: Adapter,
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

    /// Closes the adapter's connections; the ports fail as unavailable afterwards.
    pub async fn close(&self) {
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
        }),
        StoreSpec::Sqlite(url) => {
            let store = Arc::new(SqliteOrderStore::connect(url).await?);
            Ok(OpenedStore {
                stores: Stores::durable(store.clone()),
                adapter: Adapter::Sqlite(store),
            })
        }
        StoreSpec::Postgres(url) => {
            let store = Arc::new(PostgresOrderStore::connect(url.expose_secret()).await?);
            Ok(OpenedStore {
                stores: Stores::durable(store.clone()),
                adapter: Adapter::Postgres(store),
            })
        }
    }
}
