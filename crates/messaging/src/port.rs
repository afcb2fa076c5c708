//! The bus port: what every adapter (in-memory, NATS JetStream) implements.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::{sync::watch, task::JoinHandle};

use crate::{BusError, Envelope, HandlerError};

/// Handles the messages of one subscription. The result decides delivery:
/// `Ok` = ack, `Retryable` = redeliver with backoff, `Permanent` = dead letter.
#[async_trait]
pub trait MessageHandler: Send + Sync + 'static {
    /// Handles one message.
    ///
    /// # Errors
    /// A [`HandlerError`] whose kind decides redelivery.
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError>;
}

/// A named consumer group and the topics it listens to. Every group gets every message
/// of its topics; within a group each message is delivered once (at least once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The group name. A subscriber that comes back under the same name receives what
    /// was published while it was away.
    pub name: String,
    /// The topics.
    pub topics: Vec<String>,
    /// How many messages (of different correlation ids) the group may handle at once;
    /// `None` takes the bus's default. On the in-memory bus: its number of lanes, fixed
    /// when the group is first created. A handler that waits (a slow neighbour, a
    /// simulated delay) needs more to keep its throughput.
    pub concurrency: Option<usize>,
}

impl Subscription {
    /// A subscription named `name` with no topics yet.
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            topics: Vec::new(),
            concurrency: None,
        }
    }

    /// Sets how many messages the group may handle at once (at least 1).
    #[must_use]
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = Some(concurrency.max(1));
        self
    }

    /// Adds a topic.
    #[must_use]
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }
}

/// The message bus port. Dyn-compatible: services hold `Arc<dyn MessageBus>`.
#[async_trait]
pub trait MessageBus: Send + Sync + 'static {
    /// Publishes one message to its topic. Returns once the bus has accepted it (queued
    /// for every group in memory; stored by the server on a network bus).
    ///
    /// # Errors
    /// [`BusError`] when the bus is closed, a backlog is full, or the transport fails.
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError>;

    /// Publishes `envelopes` in order, as [`MessageBus::publish`] would one by one, and
    /// returns how many of them, from the first, the bus accepted, with the error that
    /// stopped it. A network bus may keep several in flight at once (the NATS adapter
    /// sends them all, then awaits the server's acknowledgements in order): when one
    /// fails, some after it may have been stored too, so a caller publishes them again
    /// with the same message ids, which the bus's duplicate detection drops. The default
    /// publishes one at a time.
    async fn publish_all(&self, envelopes: Vec<Envelope>) -> (usize, Option<BusError>) {
        let mut accepted = 0;
        for envelope in envelopes {
            if let Err(error) = self.publish(envelope).await {
                return (accepted, Some(error));
            }
            accepted += 1;
        }
        (accepted, None)
    }

    /// Attaches `handler` as the consumer group `subscription.name`.
    ///
    /// # Errors
    /// [`BusError::AlreadySubscribed`] when that group is attached, or a transport error.
    async fn subscribe(
        &self,
        subscription: Subscription,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<SubscriptionHandle, BusError>;

    /// Messages queued or in hand per consumer group, `(group, messages)`, as far as
    /// this bus can tell cheaply (the `bus_backlog_messages` gauge). The default knows
    /// none.
    ///
    /// # Errors
    /// [`BusError`] when the transport cannot say.
    async fn backlogs(&self) -> Result<Vec<(String, u64)>, BusError> {
        Ok(Vec::new())
    }
}

/// A running subscription. [`SubscriptionHandle::unsubscribe`] stops it after the
/// messages in hand are handled; what is still queued stays for the group's return.
/// Dropping the handle without calling it also stops the workers (they see the signal).
#[derive(Debug)]
pub struct SubscriptionHandle {
    name: String,
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
}

impl SubscriptionHandle {
    /// For adapters: a handle over worker tasks that watch `stop`.
    #[must_use]
    pub fn new(name: String, stop: watch::Sender<bool>, workers: Vec<JoinHandle<()>>) -> Self {
        Self {
            name,
            stop,
            workers,
        }
    }

    /// The group name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops the workers and waits until the messages in hand are handled.
    pub async fn unsubscribe(mut self) {
        let _ = self.stop.send(true);
        for worker in std::mem::take(&mut self.workers) {
            if let Err(e) = worker.await {
                tracing::error!(subscriber = %self.name, error = %e, "subscriber worker ended abnormally");
            }
        }
    }
}

impl Drop for SubscriptionHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
