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

use super::{SPAN_TARGET, metrics as names, traces};

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

/// Records one handled message.
fn record(group: &str, envelope: &Envelope, outcome: &'static str, started: Instant) {
    let topic = envelope.topic.to_string();
    metrics::histogram!(names::MESSAGE_HANDLING_DURATION,
        "topic" => topic.clone(), "group" => group.to_owned())
    .record(started.elapsed());
    metrics::counter!(names::MESSAGES_HANDLED,
        "topic" => topic, "group" => group.to_owned(), "outcome" => outcome)
    .increment(1);
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
}

impl ObservedHandler {
    /// Decorates `inner`, the handler of `group`.
    #[must_use]
    pub fn new(group: impl Into<String>, inner: Arc<dyn MessageHandler>) -> Self {
        Self {
            group: group.into(),
            inner,
        }
    }
}

#[async_trait]
impl MessageHandler for ObservedHandler {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        let started = Instant::now();
        let span = span(&self.group, envelope);
        let result = self.inner.handle(envelope).instrument(span.clone()).await;
        let outcome = result.as_ref().map_or_else(failure, |()| "applied");
        span.record("outcome", outcome);
        record(&self.group, envelope, outcome, started);
        result
    }
}

/// The Orders handler, observed with the outcome it recorded in its inbox.
pub struct ObservedOrdersHandler {
    inner: OrdersMessageHandler,
}

impl ObservedOrdersHandler {
    /// Decorates `inner`.
    #[must_use]
    pub const fn new(inner: OrdersMessageHandler) -> Self {
        Self { inner }
    }
}

#[async_trait]
impl MessageHandler for ObservedOrdersHandler {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        let started = Instant::now();
        let group = orders_app::ORDERS_SUBSCRIBER;
        let span = span(group, envelope);
        let result = self.inner.dispatch(envelope).instrument(span.clone()).await;
        let outcome = match &result {
            Ok(HandlingOutcome::Applied) => "applied",
            Ok(HandlingOutcome::Duplicate) => "duplicate",
            Ok(HandlingOutcome::Rejected(_)) => "rejected",
            Err(error) => failure(error),
        };
        span.record("outcome", outcome);
        record(group, envelope, outcome, started);
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
