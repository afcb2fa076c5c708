//! Scratch stores for one workload, from orders-store's `scratch` feature: a fresh SQLite
//! file or PostgreSQL database, thrown away afterwards.

use anyhow::Context;
use orders_store::scratch::{ScratchDatabase, ScratchFile};

/// A fresh, empty store for one workload.
pub struct Scratch {
    /// Its URL: `sqlite:PATH` or `postgres://…/NAME`.
    pub url: String,
    place: Place,
}

/// Where the scratch store lives, which decides how it is thrown away.
enum Place {
    File(ScratchFile),
    Database(ScratchDatabase),
}

impl Scratch {
    /// A new SQLite file under the temp folder.
    #[must_use]
    pub fn sqlite() -> Self {
        let file = ScratchFile::new();
        Self {
            url: file.url(),
            place: Place::File(file),
        }
    }

    /// A new database on the PostgreSQL server of `admin_url`.
    ///
    /// # Errors
    /// When the server does not answer or refuses.
    pub async fn postgres(admin_url: &str) -> anyhow::Result<Self> {
        let database = ScratchDatabase::create(admin_url)
            .await
            .context("create a scratch PostgreSQL database")?;
        Ok(Self {
            url: database.url().to_owned(),
            place: Place::Database(database),
        })
    }

    /// Removes the file (and its WAL) or drops the database; a failure is logged, since
    /// the workload's figures stand either way.
    pub async fn remove(self) {
        match self.place {
            Place::File(file) => drop(file),
            Place::Database(database) => {
                let name = database.name().to_owned();
                if let Err(error) = database.remove().await {
                    tracing::warn!(%error, database = %name, "cannot drop the scratch database");
                }
            }
        }
    }
}
