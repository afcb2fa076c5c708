//! Per message handled: a span continuing the producer's trace (the envelope's
//! `traceparent`), the handling time, and the outcome.
//!
//! Outcomes (`messages_handled_total{outcome}`): the Orders handler says `applied`,
//! `duplicate` or `rejected` (acknowledged and recorded in its inbox, see
//! [`orders_app::HandlingOutcome`]); any other handler's success is `applied`. A
//! retryable error is `retried` (the bus delivers it again), a permanent one
//! `dead_lettered` (the bus records it as a dead letter at once).
//!
//! [`ObservedBus`] wraps a bus so every handler subscribed through it is observed: what
//! the simulators get. The Orders handler is subscribed as [`ObservedOrdersHandler`].

use std::{sync::Arc, time::Instant};

use async_trait::async_trait;
use messaging::{
    BusError, Envelope, ErrorKind, HandlerError, MessageBus, MessageHandler, Subscription,
    SubscriptionHandle,
};
use orders_app::{HandlingOutcome, OrdersMessageHandler};
use tracing::Instrument as _;

use super::{SPAN_TARGET, handles::Handles, metrics as names, traces};

/// The span of handling `envelope` in `group`: a consumer span whose parent is the
/// producer's span named by the envelope's `traceparent`.
fn span(group: &str, envelope: &Envelope) -> tracing::Span {
    let span = tracing::info_span!(target: SPAN_TARGET, parent: None, "handle message",
        otel.name = %format_args!("{group} handle {}", envelope.topic), otel.kind = "consumer",
        messaging.consumer.group.name = %group,
        messaging.destination.name = %envelope.topic,
        messaging.message.id = %envelope.message_id,
        outcome = tracing::field::Empty);
    traces::continue_trace(&span, envelope.traceparent.as_deref());
    span
}

/// The handling metrics of one group, their handles kept per topic and outcome.
struct MessageMetrics {
    group: String,
    by_topic: Handles<String, TopicMetrics>,
}

/// One topic's handling-time histogram and its outcome counters.
struct TopicMetrics {
    duration: metrics::Histogram,
    outcomes: Handles<&'static str, metrics::Counter>,
}

impl MessageMetrics {
    fn new(group: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            by_topic: Handles::default(),
        }
    }

    /// Records one handled message.
    fn record(&self, envelope: &Envelope, outcome: &'static str, started: Instant) {
        let topic = envelope.topic.as_ref();
        let elapsed = started.elapsed();
        let make = || {
            let duration = metrics::histogram!(names::MESSAGE_HANDLING_DURATION,
                "topic" => topic.to_owned(), "group" => self.group.clone());
            (
                topic.to_owned(),
                TopicMetrics {
                    duration,
                    outcomes: Handles::default(),
                },
            )
        };
        self.by_topic.with(topic, make, |metrics| {
            metrics.duration.record(elapsed);
            let make = || {
                let counter = metrics::counter!(names::MESSAGES_HANDLED,
                    "topic" => topic.to_owned(), "group" => self.group.clone(), "outcome" => outcome);
                (outcome, counter)
            };
            metrics
                .outcomes
                .with(&outcome, make, |handled| handled.increment(1));
        });
    }
}

/// The outcome label of a handler error.
const fn failure(error: &HandlerError) -> &'static str {
    match error.kind() {
        ErrorKind::Retryable => "retried",
        ErrorKind::Permanent => "dead_lettered",
    }
}

/// Observes a handler of `group` (any handler: success is `applied`).
pub struct ObservedHandler {
    group: String,
    inner: Arc<dyn MessageHandler>,
    metrics: MessageMetrics,
}

impl ObservedHandler {
    /// Decorates `inner`, the handler of `group`.
    #[must_use]
    pub fn new(group: impl Into<String>, inner: Arc<dyn MessageHandler>) -> Self {
        let group = group.into();
        Self {
            metrics: MessageMetrics::new(group.clone()),
            group,
            inner,
        }
    }
}

#[async_trait]
impl MessageHandler for ObservedHandler {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        let started = Instant::now();
        let span = span(&self.group, envelope);
        // Without a tracing layer the span is disabled: no need to wrap the future.
        let result = if span.is_disabled() {
            self.inner.handle(envelope).await
        } else {
            self.inner.handle(envelope).instrument(span.clone()).await
        };
        let outcome = result.as_ref().map_or_else(failure, |()| "applied");
        span.record("outcome", outcome);
        self.metrics.record(envelope, outcome, started);
        result
    }
}

/// The Orders handler, observed with the outcome it recorded in its inbox.
pub struct ObservedOrdersHandler {
    inner: OrdersMessageHandler,
    metrics: MessageMetrics,
}

impl ObservedOrdersHandler {
    /// Decorates `inner`.
    #[must_use]
    pub fn new(inner: OrdersMessageHandler) -> Self {
        Self {
            inner,
            metrics: MessageMetrics::new(orders_app::ORDERS_SUBSCRIBER),
        }
    }
}

#[async_trait]
impl MessageHandler for ObservedOrdersHandler {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        let started = Instant::now();
        let group = orders_app::ORDERS_SUBSCRIBER;
        let span = span(group, envelope);
        let result = if span.is_disabled() {
            self.inner.dispatch(envelope).await
        } else {
            self.inner.dispatch(envelope).instrument(span.clone()).await
        };
        let outcome = match &result {
            Ok(HandlingOutcome::Applied) => "applied",
            Ok(HandlingOutcome::Duplicate) => "duplicate",
            Ok(HandlingOutcome::Rejected(_)) => "rejected",
            Err(error) => failure(error),
        };
        span.record("outcome", outcome);
        self.metrics.record(envelope, outcome, started);
        result.map(|_| ())
    }
}

/// A bus whose subscriptions are observed ([`ObservedHandler`]); publishing is the
/// inner bus's.
pub struct ObservedBus {
    inner: Arc<dyn MessageBus>,
}

impl ObservedBus {
    /// Decorates `inner`.
    #[must_use]
    pub fn new(inner: Arc<dyn MessageBus>) -> Self {
        Self { inner }
    }
}

#[async_trait]
impl MessageBus for ObservedBus {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        self.inner.publish(envelope).await
    }

    async fn publish_all(&self, envelopes: Vec<Envelope>) -> (usize, Option<BusError>) {
        self.inner.publish_all(envelopes).await
    }

    async fn subscribe(
        &self,
        subscription: Subscription,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<SubscriptionHandle, BusError> {
        let observed = Arc::new(ObservedHandler::new(subscription.name.clone(), handler));
        self.inner.subscribe(subscription, observed).await
    }

    async fn backlogs(&self) -> Result<Vec<(String, u64)>, BusError> {
        self.inner.backlogs().await
    }
}
