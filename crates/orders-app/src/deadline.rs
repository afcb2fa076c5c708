//! The payment deadline use case: an order still AwaitingPayment when its deadline
//! (`payment_due_at`, set at checkout from the clock and
//! [`OrdersConfig::payment_timeout`](crate::OrdersConfig::payment_timeout)) passes is
//! cancelled with reason `payment timeout`, and its `order.cancelled` goes out through
//! the outbox, so Payments refunds an approval that arrives late.
//!
//! The deadline lives in the store with the order, so it survives restarts: a pass finds
//! every due order, however long the process was down. Each cancellation is an ordinary
//! commit at the version loaded; with several replicas running this worker, one wins
//! and the others get a conflict and skip, so an order is cancelled once. A failed pass
//! is logged and the next tick tries again. The composition root only schedules it
//! ([`PaymentDeadlines::run`] on a task of its own).

use std::{future::Future, time::Duration};

use crate::{AppError, OrdersService};

/// How many due orders one query asks for.
pub const DUE_BATCH: usize = 256;

/// The most batches one pass works through, so a huge backlog cannot hold one pass
/// forever (the next tick carries on).
const MAX_BATCHES_PER_PASS: usize = 64;

/// The longest time between two passes.
const MAX_TICK: Duration = Duration::from_secs(1);
/// The shortest time between two passes.
const MIN_TICK: Duration = Duration::from_millis(10);

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeadlinePass {
    /// Due orders found.
    pub due: usize,
    /// Orders this pass cancelled.
    pub cancelled: usize,
    /// Due orders left alone: paid or cancelled meanwhile (by another replica, say).
    pub skipped: usize,
    /// Due orders whose cancellation failed; they are tried again next pass.
    pub failed: usize,
}

/// Cancels the orders whose payment deadline passed, every `every`.
#[derive(Debug, Clone)]
pub struct PaymentDeadlines {
    orders: OrdersService,
    every: Duration,
}

impl PaymentDeadlines {
    /// A worker over `orders` that checks every `every`.
    #[must_use]
    pub fn new(orders: OrdersService, every: Duration) -> Self {
        Self { orders, every }
    }

    /// The tick for a payment timeout: a quarter of it, at most a second and at least
    /// 10 ms, so an order is cancelled at most that long after its deadline.
    #[must_use]
    pub fn tick_for(timeout: chrono::Duration) -> Duration {
        timeout
            .to_std()
            .map_or(MIN_TICK, |t| t / 4)
            .clamp(MIN_TICK, MAX_TICK)
    }

    /// One pass: asks the store for due orders and cancels each; an order that cannot
    /// be cancelled now is logged and left for the next pass.
    ///
    /// # Errors
    /// [`AppError::Store`] when the store cannot say which orders are due.
    pub async fn run_once(&self) -> Result<DeadlinePass, AppError> {
        let mut pass = DeadlinePass::default();
        for _ in 0..MAX_BATCHES_PER_PASS {
            let due = self.orders.due_for_payment(DUE_BATCH).await?;
            let full = due.len() == DUE_BATCH;
            pass.due += due.len();
            let failed_before = pass.failed;
            for order_id in due {
                match self.orders.expire_payment(order_id).await {
                    Ok(true) => pass.cancelled += 1,
                    Ok(false) => pass.skipped += 1,
                    Err(error) => {
                        pass.failed += 1;
                        tracing::warn!(%order_id, %error,
                            "cannot cancel an order past its payment deadline; will retry");
                    }
                }
            }
            // A short batch was the last one; after a failure the same orders would
            // come back at once, so they wait for the next pass.
            if !full || pass.failed > failed_before {
                break;
            }
        }
        if pass.due > 0 {
            tracing::info!(
                due = pass.due,
                cancelled = pass.cancelled,
                skipped = pass.skipped,
                failed = pass.failed,
                "payment deadlines: pass done"
            );
        }
        Ok(pass)
    }

    /// Runs a pass every interval until `shutdown` resolves. A failed pass is logged and
    /// the next one tries again; a pass that overruns the interval delays the next.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut ticker = tokio::time::interval(self.every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = ticker.tick() => {
                    if let Err(error) = self.run_once().await {
                        tracing::warn!(%error, "payment deadline pass failed; will retry");
                    }
                }
            }
        }
        tracing::info!("payment deadline task stopped");
    }
}
