//! Helpers of the end-to-end test package: the store adapters a suite runs against.
//! Each suite is written once and run against every store (see `e2e/main.rs`).
#![forbid(unsafe_code)]

use app::{
    serve::{OpenedStore, StoreSpec, open_store},
    system::Stores,
};
use orders_store::scratch::{self, ScratchDatabase, ScratchFile};

/// A store the suites can run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// `orders_store::InMemoryOrderStore`.
    Memory,
    /// `orders_store::SqliteOrderStore` on a fresh file.
    Sqlite,
    /// `orders_store::PostgresOrderStore` on a fresh database of the server at
    /// `ORDERS_TEST_POSTGRES_URL`.
    Postgres,
}

/// A fresh, empty store; [`FreshStore::remove`] closes and deletes it.
pub struct FreshStore {
    /// The ports to run a system on.
    pub stores: Stores,
    opened: Option<OpenedStore>,
    scratch: Scratch,
}

/// The scratch file or database under a fresh store.
enum Scratch {
    None,
    File(ScratchFile),
    Database(ScratchDatabase),
}

impl FreshStore {
    /// Closes the store and deletes its file or database.
    pub async fn remove(self) {
        if let Some(opened) = self.opened {
            opened.close().await;
        }
        match self.scratch {
            Scratch::None => {}
            Scratch::File(file) => drop(file),
            Scratch::Database(database) => {
                if let Err(error) = database.remove().await {
                    eprintln!("cannot drop a scratch database: {error}");
                }
            }
        }
    }
}

impl StoreKind {
    /// A fresh, empty store of this kind, or `None` (with the reason printed) when its
    /// server is not configured outside CI.
    ///
    /// # Panics
    /// When `CI` is set and the PostgreSQL address is missing: in CI a missing service is
    /// a failure, never a skip.
    ///
    /// # Errors
    /// When the store cannot be created.
    pub async fn fresh(self) -> anyhow::Result<Option<FreshStore>> {
        let (url, scratch) = match self {
            Self::Memory => {
                return Ok(Some(FreshStore {
                    stores: Stores::in_memory(),
                    opened: None,
                    scratch: Scratch::None,
                }));
            }
            Self::Sqlite => {
                let file = ScratchFile::new();
                (file.url(), Scratch::File(file))
            }
            Self::Postgres => {
                let Some(url) = scratch::postgres_admin_url() else {
                    assert!(
                        std::env::var_os("CI").is_none(),
                        "ORDERS_TEST_POSTGRES_URL must be set in CI (cargo xtask ci sets it)"
                    );
                    println!("skipping PostgreSQL: ORDERS_TEST_POSTGRES_URL not set");
                    return Ok(None);
                };
                let database = ScratchDatabase::create(&url).await?;
                (database.url().to_owned(), Scratch::Database(database))
            }
        };
        let opened = open_store(&url.parse::<StoreSpec>().map_err(anyhow::Error::msg)?).await?;
        Ok(Some(FreshStore {
            stores: opened.stores.clone(),
            opened: Some(opened),
            scratch,
        }))
    }
}

/// Every kind of store, in the order the suites run them.
pub const ALL_STORES: [StoreKind; 3] = [StoreKind::Memory, StoreKind::Sqlite, StoreKind::Postgres];
