//! Scratch stores for the end-to-end tests: a fresh, empty SQLite file or PostgreSQL
//! database, and how to throw it away afterwards. (The benchmarks moved to the `bench`
//! crate, which has its own copy.)
// TODO(merge): replace with orders_store::scratch and remove this module.

use anyhow::Context;
use sqlx::{Connection, Executor};

use crate::serve::{OpenedStore, StoreSpec, open_store};

/// A fresh, empty store for one workload, and how to throw it away afterwards.
pub struct Scratch {
    /// What to pass as `--store` / to `open_store`.
    pub spec: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Files(std::path::PathBuf),
    Database { admin_url: String, name: String },
}

impl Scratch {
    /// Opens the store it names (applying the migrations).
    ///
    /// # Errors
    /// When the spec does not parse or the store cannot be opened.
    pub async fn open(&self) -> anyhow::Result<OpenedStore> {
        open_store(&self.spec.parse::<StoreSpec>().map_err(anyhow::Error::msg)?).await
    }

    /// A new SQLite file under the temp folder.
    #[must_use]
    pub fn sqlite() -> Self {
        let path =
            std::env::temp_dir().join(format!("orders-bench-{}.db", uuid::Uuid::new_v4().simple()));
        Self {
            spec: format!("sqlite:{}", path.display()),
            cleanup: Cleanup::Files(path),
        }
    }

    /// A new database on the PostgreSQL server of `admin_url`.
    ///
    /// # Errors
    /// When the server does not answer or refuses.
    pub async fn postgres(admin_url: &str) -> anyhow::Result<Self> {
        let name = format!("orders_bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .context("connect to PostgreSQL")?;
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await?;
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url, |(base, _)| base);
        Ok(Self {
            spec: format!("{base}/{name}"),
            cleanup: Cleanup::Database {
                admin_url: admin_url.to_owned(),
                name,
            },
        })
    }

    /// Removes the file or drops the database.
    pub async fn remove(self) {
        match self.cleanup {
            Cleanup::Files(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Cleanup::Database { admin_url, name } => {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = admin
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                }
            }
        }
    }
}
