//! The bus itself: connection, streams and consumers created or updated on demand,
//! publishing with `Nats-Msg-Id`, and the dead-letter stream.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::{
    ConnectOptions, Event,
    connection::State,
    jetstream::{
        self,
        consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
        context::{Publish, PublishErrorKind},
        stream::{self, RetentionPolicy, StorageType},
    },
};
use async_trait::async_trait;
use messaging::{
    BusError, DeadLetter, Envelope, HandlerError, MessageBus, MessageHandler, Subscription,
    SubscriptionHandle,
};

use crate::{NatsBusConfig, dead_letter, names::Names, subscriber};

/// A [`MessageBus`] on NATS JetStream. Cheap to clone; clones share the connection.
///
/// * Publishing creates (or updates) the topic's stream on first use in the process and
///   returns once the server has stored the message. While the connection is down it
///   fails at once with a retryable [`BusError::Transport`]; the client reconnects by
///   itself.
/// * A subscription is a durable pull consumer per topic, named after the group: every
///   group gets every message; processes subscribing under the same name share them.
/// * Delivery follows the handler's verdict (see the crate docs).
#[derive(Clone)]
pub struct NatsBus {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// What the clones of one bus and its subscriptions share.
pub(crate) struct Inner {
    pub(crate) config: NatsBusConfig,
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) names: Names,
    /// Topics whose stream this process has created or updated.
    streams: tokio::sync::Mutex<HashSet<String>>,
    /// Groups attached in this process.
    pub(crate) attached: Mutex<HashSet<String>>,
    /// Messages this process has put on the dead-letter stream.
    pub(crate) dead_lettered: AtomicU64,
}

fn transport(what: impl std::fmt::Display, error: impl std::fmt::Display) -> BusError {
    BusError::Transport(format!("{what}: {error}"))
}

impl NatsBus {
    /// Connects to `config.url`, checks that the server has JetStream, and creates or
    /// updates the dead-letter and replay streams.
    ///
    /// # Errors
    /// [`BusError::Transport`] naming what is wrong: the server cannot be reached, has
    /// no JetStream, or refuses a stream setting.
    pub async fn connect(config: NatsBusConfig) -> Result<Self, BusError> {
        let url = config.url.clone();
        let max_delay = config.max_reconnect_delay;
        let events_url = url.clone();
        let client = ConnectOptions::new()
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.request_timeout))
            .max_reconnects(None)
            .reconnect_delay_callback(move |attempts| {
                let shift = u32::try_from(attempts.min(16)).unwrap_or(16);
                Duration::from_millis(10u64 << shift).min(max_delay)
            })
            .event_callback(move |event| {
                let url = events_url.clone();
                async move {
                    match event {
                        Event::Disconnected => {
                            tracing::warn!(%url, "NATS connection lost; reconnecting")
                        }
                        Event::Connected => tracing::info!(%url, "NATS connected"),
                        other => tracing::warn!(%url, event = %other, "NATS event"),
                    }
                }
            })
            .connect(url.as_str())
            .await
            .map_err(|e| transport(format_args!("cannot connect to NATS at {url}"), e))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.request_timeout);
        check_jetstream(&client, &url).await?;
        let bus = Self {
            inner: Arc::new(Inner {
                names: Names::new(config.subject_prefix.clone()),
                config,
                client,
                js,
                streams: tokio::sync::Mutex::new(HashSet::new()),
                attached: Mutex::new(HashSet::new()),
                dead_lettered: AtomicU64::new(0),
            }),
        };
        bus.inner.ensure_dead_letter_stream().await?;
        Ok(bus)
    }

    /// How many messages this process has dead-lettered.
    #[must_use]
    pub fn dead_letter_count(&self) -> u64 {
        self.inner.dead_lettered.load(Ordering::SeqCst)
    }

    /// The dead letters on the server (of every process with this prefix), oldest
    /// first; bodies that are not envelopes are skipped (logged).
    ///
    /// # Errors
    /// [`BusError::Transport`] when the stream cannot be read.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, BusError> {
        let letters = dead_letter::read(&self.inner, usize::MAX).await?;
        Ok(letters.into_iter().map(|(_, letter)| letter).collect())
    }

    /// Whether the client is connected now.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.inner.client.connection_state() == State::Connected
    }
}

/// Asks the server for its JetStream account info (the raw API, which every server
/// version answers alike) and says clearly when it has none.
async fn check_jetstream(client: &async_nats::Client, url: &str) -> Result<(), BusError> {
    let no_js = |detail: &dyn std::fmt::Display| {
        BusError::Transport(format!(
            "the NATS server at {url} has no usable JetStream (start nats-server with -js): {detail}"
        ))
    };
    let reply = client
        .request("$JS.API.INFO", bytes::Bytes::new())
        .await
        .map_err(|e| no_js(&e))?;
    let info: serde_json::Value = serde_json::from_slice(&reply.payload).map_err(|e| no_js(&e))?;
    if let Some(error) = info.get("error") {
        return Err(no_js(error));
    }
    Ok(())
}

impl Inner {
    /// Creates or updates the stream of `topic`, once per process.
    pub(crate) async fn ensure_stream(&self, topic: &str) -> Result<(), BusError> {
        let mut streams = self.streams.lock().await;
        if streams.contains(topic) {
            return Ok(());
        }
        let name = self.names.stream(topic);
        let subject = self.names.subject(topic);
        self.create_or_update_stream(&name, subject).await?;
        streams.insert(topic.to_owned());
        Ok(())
    }

    async fn ensure_dead_letter_stream(&self) -> Result<(), BusError> {
        let name = self.names.dead_letter_stream();
        self.create_or_update_stream(&name, self.names.dead_letter_subjects())
            .await?;
        let name = self.names.replay_stream();
        self.create_or_update_stream(&name, self.names.replay_subjects())
            .await
    }

    async fn create_or_update_stream(&self, name: &str, subject: String) -> Result<(), BusError> {
        let config = stream::Config {
            name: name.to_owned(),
            subjects: vec![subject.clone()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            max_age: self.config.max_age,
            duplicate_window: self.config.duplicate_window,
            num_replicas: 1,
            ..Default::default()
        };
        let info = self.js.create_or_update_stream(config).await.map_err(|e| {
            transport(
                format_args!("the NATS server refused stream {name} on subject {subject}"),
                e,
            )
        })?;
        if !info.config.subjects.contains(&subject) {
            return Err(BusError::Transport(format!(
                "stream {name} exists for subjects {:?}, not {subject}: two topics map to one stream name",
                info.config.subjects
            )));
        }
        Ok(())
    }

    /// Creates or updates the durable pull consumer of `group` on `topic`'s stream.
    pub(crate) async fn ensure_consumer(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<PullConsumer, BusError> {
        let stream_name = self.names.stream(topic);
        let filter = self.names.subject(topic);
        self.ensure_consumer_on(stream_name, filter, group).await
    }

    /// Creates or updates the durable pull consumer of `group` on the replay stream,
    /// filtered to the group's replay subject: the dead letters replayed to it.
    pub(crate) async fn ensure_replay_consumer(
        &self,
        group: &str,
    ) -> Result<PullConsumer, BusError> {
        let stream_name = self.names.replay_stream();
        let filter = self.names.replay_subject(group);
        self.ensure_consumer_on(stream_name, filter, group).await
    }

    async fn ensure_consumer_on(
        &self,
        stream_name: String,
        filter_subject: String,
        group: &str,
    ) -> Result<PullConsumer, BusError> {
        let consumer = Names::consumer(group);
        let config = pull::Config {
            durable_name: Some(consumer.clone()),
            filter_subject,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.config.ack_wait,
            deliver_policy: DeliverPolicy::All,
            // The bus counts attempts itself and dead-letters; the server never gives up.
            max_deliver: -1,
            max_ack_pending: self.config.max_ack_pending,
            ..Default::default()
        };
        self.js
            .create_consumer_on_stream(config, stream_name.as_str())
            .await
            .map_err(|e| {
                transport(
                    format_args!(
                        "the NATS server refused consumer {consumer} on stream {stream_name}"
                    ),
                    e,
                )
            })
    }

    /// Publishes `envelope` and waits for the server to store it.
    async fn publish(&self, envelope: &Envelope) -> Result<(), BusError> {
        let sent = self.send(envelope).await?;
        self.confirm(sent).await
    }

    /// Publishes `envelopes` in order, all in flight at once: every message is sent,
    /// then the server's acknowledgements are awaited in order. Returns how many, from
    /// the first, the server stored, and the error that stopped the count.
    async fn publish_all(&self, envelopes: &[Envelope]) -> (usize, Option<BusError>) {
        let mut in_flight = Vec::with_capacity(envelopes.len());
        let mut stopped = None;
        for envelope in envelopes {
            match self.send(envelope).await {
                Ok(sent) => in_flight.push(sent),
                Err(e) => {
                    stopped = Some(e);
                    break;
                }
            }
        }
        let mut accepted = 0;
        for sent in in_flight {
            if let Err(e) = self.confirm(sent).await {
                return (accepted, Some(e));
            }
            accepted += 1;
        }
        (accepted, stopped)
    }

    /// Sends `envelope` to its subject (creating its stream first if needed), without
    /// waiting for the server to store it.
    async fn send(&self, envelope: &Envelope) -> Result<Sent, BusError> {
        if self.client.connection_state() != State::Connected {
            return Err(BusError::Transport(format!(
                "not connected to NATS at {} (reconnecting): message {} not published",
                self.config.url, envelope.message_id
            )));
        }
        self.ensure_stream(&envelope.topic).await?;
        let body = envelope.to_json()?;
        let subject = self.names.subject(&envelope.topic);
        let ack = self
            .js
            .send_publish(
                subject.clone(),
                Publish::build()
                    .payload(body.into())
                    .message_id(envelope.message_id.to_string()),
            )
            .await
            .map_err(|e| transport(format_args!("publish to {subject}"), e))?;
        Ok(Sent {
            ack,
            subject,
            topic: envelope.topic.to_string(),
            message_id: envelope.message_id,
        })
    }

    /// Waits until the server stored a message [`Inner::send`] sent.
    async fn confirm(&self, sent: Sent) -> Result<(), BusError> {
        let Sent {
            ack,
            subject,
            topic,
            message_id,
        } = sent;
        let ack = match ack.await {
            Ok(ack) => ack,
            Err(e) => {
                if e.kind() == PublishErrorKind::StreamNotFound {
                    // The server lost the stream (a new store): create it on the next try.
                    self.streams.lock().await.remove(topic.as_str());
                }
                return Err(transport(
                    format_args!("publish to {subject} not confirmed"),
                    e,
                ));
            }
        };
        if ack.duplicate {
            tracing::debug!(%message_id, %subject,
                "duplicate message id: the server kept the first copy");
        }
        Ok(())
    }

    /// Records `group` as attached in this process; false if it already is.
    pub(crate) fn attach(&self, group: &str) -> bool {
        self.attached
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(group.to_owned())
    }

    /// `group` is no longer attached in this process.
    pub(crate) fn detach(&self, group: &str) {
        self.attached
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(group);
    }
}

/// A message sent to the server, its acknowledgement still to come.
struct Sent {
    ack: async_nats::jetstream::context::PublishAckFuture,
    subject: String,
    topic: String,
    message_id: messaging::MessageId,
}

#[async_trait]
impl MessageBus for NatsBus {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        self.inner.publish(&envelope).await
    }

    /// All in flight at once: sent, then confirmed in order ([`MessageBus::publish_all`]).
    async fn publish_all(&self, envelopes: Vec<Envelope>) -> (usize, Option<BusError>) {
        self.inner.publish_all(&envelopes).await
    }

    async fn subscribe(
        &self,
        subscription: Subscription,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<SubscriptionHandle, BusError> {
        subscriber::start(self.inner.clone(), subscription, handler).await
    }

    /// Per group attached in this process: the messages its consumers have yet to
    /// deliver or to see acknowledged, on the topics this process knows, as the server
    /// counts them (the consumers are shared with the group's other processes).
    async fn backlogs(&self) -> Result<Vec<(String, u64)>, BusError> {
        backlogs(&self.inner).await
    }
}

/// See [`NatsBus`]'s `backlogs`: one consumer-info request per group and topic; a
/// consumer that does not exist (a topic the group does not listen to) counts nothing.
async fn backlogs(inner: &Inner) -> Result<Vec<(String, u64)>, BusError> {
    let groups: Vec<String> = inner
        .attached
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .cloned()
        .collect();
    let topics: Vec<String> = inner.streams.lock().await.iter().cloned().collect();
    let mut backlogs = Vec::with_capacity(groups.len());
    for group in groups {
        let consumer = Names::consumer(&group);
        let mut pending = 0;
        for topic in &topics {
            let stream = inner
                .js
                .get_stream_no_info(inner.names.stream(topic))
                .await
                .map_err(|e| transport(format_args!("cannot reach stream of {topic}"), e))?;
            if let Ok(info) = stream.consumer_info(&consumer).await {
                pending += info.num_pending + info.num_ack_pending as u64;
            }
        }
        backlogs.push((group, pending));
    }
    Ok(backlogs)
}

/// The kind (`retryable` / `permanent`) and the reason of a handler's error.
pub(crate) fn reason(error: &HandlerError) -> (&'static str, &str) {
    match error {
        HandlerError::Retryable(r) => ("retryable", r),
        HandlerError::Permanent(r) => ("permanent", r),
    }
}
