//! Per message the outbox relay publishes: a producer span, child of the span that
//! committed the message (the `traceparent` stored with it in the outbox), whose own
//! context the published message carries on; and the publish latency.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use messaging::{BusError, Envelope, MessageBus, MessageHandler, Subscription, SubscriptionHandle};
use tracing::Instrument as _;

use metrics::Histogram;

use super::{SPAN_TARGET, handles::Handles, metrics as names, traces};

/// The bus as the outbox relay sees it (give it to `OutboxRelay::new`).
pub struct RelayBus {
    inner: Arc<dyn MessageBus>,
    /// The publish-duration and lag histograms, by topic.
    by_topic: Handles<String, (Histogram, Histogram)>,
}

impl RelayBus {
    /// Decorates `inner`.
    #[must_use]
    pub fn new(inner: Arc<dyn MessageBus>) -> Self {
        Self {
            inner,
            by_topic: Handles::default(),
        }
    }

    /// Records one published message of `topic`.
    fn record(&self, topic: &str, duration: Duration, lag: Duration) {
        self.by_topic.with(
            topic,
            || {
                (
                    topic.to_owned(),
                    (
                        metrics::histogram!(names::RELAY_PUBLISH_DURATION, "topic" => topic.to_owned()),
                        metrics::histogram!(names::RELAY_PUBLISH_LAG, "topic" => topic.to_owned()),
                    ),
                )
            },
            |(durations, lags)| {
                durations.record(duration);
                lags.record(lag);
            },
        );
    }
}

#[async_trait]
impl MessageBus for RelayBus {
    async fn publish(&self, mut envelope: Envelope) -> Result<(), BusError> {
        let started = Instant::now();
        let (topic, lag, span) = producer_span(&mut envelope, chrono::Utc::now());
        let published = self.inner.publish(envelope).instrument(span).await;
        if published.is_ok() {
            self.record(&topic, started.elapsed(), lag);
        }
        published
    }

    /// The batch the relay publishes at once: a producer span per message (the context
    /// each message carries on), then one [`MessageBus::publish_all`] of the inner bus, so
    /// a network bus keeps them all in flight; the latency recorded is the batch's.
    async fn publish_all(&self, mut envelopes: Vec<Envelope>) -> (usize, Option<BusError>) {
        let started = Instant::now();
        let now = chrono::Utc::now();
        let mut topics = Vec::with_capacity(envelopes.len());
        for envelope in &mut envelopes {
            // Kept open until the batch is confirmed: each span lasts as its publish.
            topics.push(producer_span(envelope, now));
        }
        let (accepted, error) = self.inner.publish_all(envelopes).await;
        let elapsed = started.elapsed();
        for (topic, lag, _span) in topics.into_iter().take(accepted) {
            self.record(&topic, elapsed, lag);
        }
        (accepted, error)
    }

    async fn subscribe(
        &self,
        subscription: Subscription,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<SubscriptionHandle, BusError> {
        self.inner.subscribe(subscription, handler).await
    }

    async fn backlogs(&self) -> Result<Vec<(String, u64)>, BusError> {
        self.inner.backlogs().await
    }
}

/// The producer span of publishing `envelope` (a child of the span that committed it),
/// whose context the envelope then carries on; with its topic and its lag since the
/// commit, at `now`.
fn producer_span(
    envelope: &mut Envelope,
    now: chrono::DateTime<chrono::Utc>,
) -> (String, Duration, tracing::Span) {
    let topic = envelope.topic.to_string();
    let lag = (now - envelope.timestamp).to_std().unwrap_or_default();
    let span = tracing::info_span!(target: SPAN_TARGET, parent: None, "relay publish",
        otel.name = %format_args!("relay publish {topic}"), otel.kind = "producer",
        messaging.destination.name = %topic,
        messaging.message.id = %envelope.message_id);
    traces::continue_trace(&span, envelope.traceparent.as_deref());
    if let Some(traceparent) = traces::traceparent_of(&span) {
        envelope.traceparent = Some(traceparent);
    }
    (topic, lag, span)
}
