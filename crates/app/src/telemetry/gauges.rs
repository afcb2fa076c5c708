//! The gauges no single event updates: the outbox's unsent rows and the age of the
//! oldest, and the bus backlog per consumer group, sampled every few seconds (one cheap
//! indexed query each) by [`sample_every`], which also runs the recorder's upkeep every
//! [`UPKEEP_INTERVAL`]: histogram samples wait in a buffer until then, so the upkeep
//! bounds the memory they take under load.

use std::{sync::Arc, time::Duration};

use messaging::MessageBus;
use orders_app::Outbox;

use super::metrics as names;

/// How often [`sample_every`] samples by default.
pub const DEFAULT_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// How often the recorder folds buffered histogram samples into their buckets.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Samples the gauges once. The outbox is `None` where the process has none (the
/// simulator roles).
pub async fn sample(outbox: Option<&dyn Outbox>, bus: &dyn MessageBus) {
    if let Some(outbox) = outbox {
        if let Ok(unsent) = outbox.unsent().await {
            #[allow(clippy::cast_precision_loss)] // a count far below 2^52
            metrics::gauge!(names::OUTBOX_UNSENT).set(unsent as f64);
        }
        if let Ok(oldest) = outbox.oldest_unsent().await {
            let age = oldest.map_or(0.0, |at| {
                (chrono::Utc::now() - at)
                    .to_std()
                    .map_or(0.0, |age| age.as_secs_f64())
            });
            metrics::gauge!(names::OUTBOX_OLDEST_UNSENT_AGE).set(age);
        }
    }
    match bus.backlogs().await {
        Ok(backlogs) => {
            for (group, messages) in backlogs {
                #[allow(clippy::cast_precision_loss)] // a count far below 2^52
                metrics::gauge!(names::BUS_BACKLOG, "group" => group).set(messages as f64);
            }
        }
        Err(error) => tracing::debug!(%error, "cannot read the bus backlog"),
    }
}

/// Samples the gauges now and every `interval`, and runs the recorder's upkeep every
/// [`UPKEEP_INTERVAL`], until `stop` resolves.
pub async fn sample_every(
    outbox: Option<Arc<dyn Outbox>>,
    bus: Arc<dyn MessageBus>,
    interval: Duration,
    stop: impl Future<Output = ()> + Send,
) {
    tokio::pin!(stop);
    let mut samples = tokio::time::interval(interval);
    samples.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut upkeeps = tokio::time::interval(UPKEEP_INTERVAL);
    upkeeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let handle = names::handle();
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = samples.tick() => sample(outbox.as_deref(), bus.as_ref()).await,
            _ = upkeeps.tick() => {
                if let Some(handle) = &handle {
                    handle.run_upkeep();
                }
            }
        }
    }
}
