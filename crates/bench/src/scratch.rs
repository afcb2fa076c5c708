//! Scratch stores: a fresh, empty SQLite file or PostgreSQL database for one workload,
//! and how to throw it away afterwards.
// TODO(merge): replace with orders_store::scratch

use anyhow::Context;
use sqlx::{Connection, Executor};

/// A fresh, empty store for one workload.
pub struct Scratch {
    /// Its URL: `sqlite:PATH` or `postgres://…/NAME`.
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Files(std::path::PathBuf),
    Database { admin_url: String, name: String },
}

impl Scratch {
    /// A new SQLite file under the temp folder.
    #[must_use]
    pub fn sqlite() -> Self {
        let path =
            std::env::temp_dir().join(format!("orders-bench-{}.db", uuid::Uuid::new_v4().simple()));
        Self {
            url: format!("sqlite:{}", path.display()),
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
            url: format!("{base}/{name}"),
            cleanup: Cleanup::Database {
                admin_url: admin_url.to_owned(),
                name,
            },
        })
    }

    /// Removes the file (and its WAL) or drops the database.
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
