//! The retention use case: inbox records and sent outbox rows older than the idempotency
//! window are pruned on a fixed interval, so the store stays bounded. The composition
//! root only schedules it ([`Retention::run`] on a task of its own).

use std::{future::Future, time::Duration};

use crate::{AppError, OrdersService, PruneReport};

/// Prunes what the idempotency window no longer needs, every `every`.
#[derive(Debug, Clone)]
pub struct Retention {
    orders: OrdersService,
    every: Duration,
}

impl Retention {
    /// A retention pass over `orders` every `every` (the first one `every` after start).
    #[must_use]
    pub fn new(orders: OrdersService, every: Duration) -> Self {
        Self { orders, every }
    }

    /// One pass, logged; a failure is logged and left to the next pass.
    ///
    /// # Errors
    /// [`AppError::Store`] when the store fails.
    pub async fn run_once(&self) -> Result<PruneReport, AppError> {
        match self.orders.prune().await {
            Ok(report) if report == PruneReport::default() => {
                tracing::debug!("retention: nothing to prune");
                Ok(report)
            }
            Ok(report) => {
                tracing::info!(
                    inbox = report.inbox,
                    outbox = report.outbox,
                    "retention: pruned"
                );
                Ok(report)
            }
            Err(error) => {
                tracing::warn!(%error, "retention pass failed; will retry");
                Err(error)
            }
        }
    }

    /// Runs a pass every interval until `shutdown` resolves. A pass that overruns the
    /// interval delays the next one rather than starting passes back to back.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let start = tokio::time::Instant::now() + self.every;
        let mut ticker = tokio::time::interval_at(start, self.every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = ticker.tick() => {
                    let _ = self.run_once().await;
                }
            }
        }
        tracing::info!("retention task stopped");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;
    use chrono::TimeZone;
    use messaging::MessageId;
    use orders_domain::{Order, OrderId, Timestamp};
    use tokio::sync::{mpsc, oneshot};

    use super::*;
    use crate::{Commit, ManualClock, MessageRecord, OrderStore, OrdersConfig, StoreError};

    /// Reports every prune's cut-off on a channel.
    struct PruneSpy(mpsc::UnboundedSender<Timestamp>);

    #[async_trait]
    impl OrderStore for PruneSpy {
        async fn load(&self, _: OrderId) -> Result<Option<Order>, StoreError> {
            Ok(None)
        }
        async fn is_handled(&self, _: &str, _: MessageId) -> Result<bool, StoreError> {
            Ok(false)
        }
        async fn find_by_idempotency_key(&self, _: &str) -> Result<Option<OrderId>, StoreError> {
            Ok(None)
        }
        async fn due_for_payment(
            &self,
            _: Timestamp,
            _: usize,
        ) -> Result<Vec<OrderId>, StoreError> {
            Ok(Vec::new())
        }
        async fn commit(&self, _: Commit) -> Result<u64, StoreError> {
            Ok(1)
        }
        async fn messages(&self, _: OrderId) -> Result<Vec<MessageRecord>, StoreError> {
            Ok(Vec::new())
        }
        async fn prune(&self, before: Timestamp) -> Result<PruneReport, StoreError> {
            let _ = self.0.send(before);
            Ok(PruneReport {
                inbox: 1,
                outbox: 0,
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_pass_prunes_what_is_older_than_the_window_until_shutdown() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap();
        let (tx, mut pruned) = mpsc::unbounded_channel();
        let config = OrdersConfig::default();
        let window = config.idempotency_window;
        let orders = OrdersService::new(
            Arc::new(PruneSpy(tx)),
            Arc::new(ManualClock::new(now)),
            config,
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(Retention::new(orders, Duration::from_secs(60)).run(async {
            let _ = stopped.await;
        }));
        for _ in 0..2 {
            let before = tokio::time::timeout(Duration::from_secs(120), pruned.recv())
                .await
                .expect("a pass within the interval")
                .expect("the spy is alive");
            assert_eq!(before, now - window);
        }
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("stops on shutdown")
            .unwrap();
    }
}
