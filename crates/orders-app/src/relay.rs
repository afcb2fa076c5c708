//! The outbox relay: publishes committed outbox messages to the bus, in commit order,
//! woken on every commit, with a polling fallback (for commits by other processes and
//! for retrying after a bus failure).

use std::{future::Future, sync::Arc, time::Duration};

use messaging::MessageBus;

use crate::Outbox;

/// Why the relay stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayStopped {
    /// The shutdown signal fired; everything committed before was flushed (or the flush
    /// failed and the rows stay in the outbox for the next start).
    Shutdown,
}

/// Moves outbox rows to the bus.
pub struct OutboxRelay {
    outbox: Arc<dyn Outbox>,
    bus: Arc<dyn MessageBus>,
    /// Rows per store round trip.
    batch: usize,
    /// How often to look for rows when no commit woke the relay.
    poll_interval: Duration,
}

impl std::fmt::Debug for OutboxRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelay")
            .field("batch", &self.batch)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

impl OutboxRelay {
    /// A relay with batches of 256 and a 500 ms polling fallback.
    #[must_use]
    pub fn new(outbox: Arc<dyn Outbox>, bus: Arc<dyn MessageBus>) -> Self {
        Self {
            outbox,
            bus,
            batch: 256,
            poll_interval: Duration::from_millis(500),
        }
    }

    /// Sets the batch size.
    #[must_use]
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Sets the polling fallback interval.
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Publishes until nothing is left (or a failure). Returns how many were published.
    pub async fn drain(&self) -> usize {
        let mut total = 0;
        loop {
            match self.outbox.relay(self.batch, self.bus.as_ref()).await {
                Ok(0) => return total,
                Ok(n) => total += n,
                Err(e) => {
                    tracing::error!(error = %e, "outbox relay failed; will retry");
                    return total;
                }
            }
        }
    }

    /// Runs until `shutdown` resolves, then flushes once more and reports why it stopped.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> RelayStopped {
        tokio::pin!(shutdown);
        loop {
            let committed = self.outbox.committed().notified();
            tokio::pin!(committed);
            committed.as_mut().enable();
            self.drain().await;
            tokio::select! {
                () = &mut shutdown => {
                    let flushed = self.drain().await;
                    tracing::info!(flushed, "outbox relay stopped");
                    return RelayStopped::Shutdown;
                }
                () = committed => {}
                () = tokio::time::sleep(self.poll_interval) => {}
            }
        }
    }
}
