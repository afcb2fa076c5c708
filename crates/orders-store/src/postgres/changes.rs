//! Commits of other processes, heard: every commit announces the orders it wrote on
//! [`CHANGES_CHANNEL`] (PostgreSQL `NOTIFY`, sent when the commit's transaction commits,
//! see [`COMMIT_SQL`](super::commit::COMMIT_SQL)), and [`PostgresOrderStore::listen_commits`]
//! hears them (`LISTEN`), so a replica's blocking reads answer when another replica
//! commits, not at their deadline.
//!
//! Delivery is best effort, as `NOTIFY` is: what is announced while the listening
//! connection is down is not heard (it reconnects by itself), and a waiter that misses a
//! change still answers at its deadline.

use std::time::Duration;

use orders_app::StoreError;
use orders_domain::OrderId;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::PostgresOrderStore;
use crate::sql::store_error;

/// The channel commits announce their orders on, payload `<order id>:<version>`.
pub const CHANGES_CHANNEL: &str = "orders_changed";

/// How long the listener waits before listening again after its connection failed.
const RETRY: Duration = Duration::from_millis(500);

/// Hears the commits of every process on the database until dropped or stopped.
#[derive(Debug)]
pub struct CommitListener {
    task: JoinHandle<()>,
}

impl CommitListener {
    /// Stops listening.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for CommitListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PostgresOrderStore {
    /// Listens, on a connection of its own, to the commits of every process on this
    /// database (this one's too): `on_commit` is called with each written order's id and
    /// new version, after its transaction committed. Listening has begun when this
    /// returns.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the listening connection cannot be opened or
    /// `LISTEN` fails.
    pub async fn listen_commits<F>(&self, on_commit: F) -> Result<CommitListener, StoreError>
    where
        F: Fn(OrderId, u64) + Send + Sync + 'static,
    {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(self.options.as_ref().clone())
            .await
            .map_err(store_error)?;
        let mut listener = PgListener::connect_with(&pool).await.map_err(store_error)?;
        listener
            .listen(CHANGES_CHANNEL)
            .await
            .map_err(store_error)?;
        let task = tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(notification) => match parse(notification.payload()) {
                        Some((id, version)) => on_commit(id, version),
                        None => tracing::warn!(
                            payload = notification.payload(),
                            "unreadable commit notification ignored"
                        ),
                    },
                    Err(error) => {
                        // `recv` reconnects and listens again on its next call.
                        tracing::warn!(%error, "commit listener lost its connection; reconnecting");
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
        });
        Ok(CommitListener { task })
    }
}

/// `<order id>:<version>`.
fn parse(payload: &str) -> Option<(OrderId, u64)> {
    let (id, version) = payload.split_once(':')?;
    Some((
        OrderId::from_uuid(Uuid::parse_str(id).ok()?),
        version.parse().ok()?,
    ))
}
