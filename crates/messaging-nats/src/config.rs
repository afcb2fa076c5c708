//! The settings of a [`NatsBus`](crate::NatsBus): where the server is, how subjects and
//! streams are named, redelivery, ack deadlines and the in-flight bound.

use std::time::Duration;

use messaging::RetryPolicy;

/// Settings of a [`NatsBus`](crate::NatsBus).
#[derive(Debug, Clone)]
pub struct NatsBusConfig {
    /// The server, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Put in front of every subject (`<prefix>.<topic>`) and stream name, so several
    /// deployments (or test runs) share one server without seeing each other.
    pub subject_prefix: Option<String>,
    /// Redelivery of retryable failures: attempts in all, then the dead-letter stream;
    /// the nak delay doubles from `initial_backoff` up to `max_backoff`.
    pub retry: RetryPolicy,
    /// How long the server waits for an ack before it redelivers. Messages held by the
    /// process are kept alive with progress acks, so this bounds how soon a message of a
    /// process that died is delivered again.
    pub ack_wait: Duration,
    /// A handler still running after this long is cancelled and its message counts as a
    /// retryable failure (redelivered, maybe to another process).
    pub max_handling_time: Duration,
    /// Messages (of different correlation ids) a group handles at once in this process
    /// when its subscription does not say.
    pub lanes: usize,
    /// Messages a subscription holds in this process at once, queued or in hand: the
    /// backpressure bound (pulling stops until one is done). A replayed dead letter
    /// comes on top, one at a time.
    pub max_in_flight: usize,
    /// Unacknowledged messages the server hands out per consumer over all processes.
    pub max_ack_pending: i64,
    /// The server-side de-duplication window for `Nats-Msg-Id`.
    pub duplicate_window: Duration,
    /// How long a stream keeps messages (acknowledged or not).
    pub max_age: Duration,
    /// How long a publish or a JetStream API call waits for the server's answer.
    pub request_timeout: Duration,
    /// How long the first connection may take.
    pub connect_timeout: Duration,
    /// Upper bound of the wait between reconnection attempts.
    pub max_reconnect_delay: Duration,
}

impl NatsBusConfig {
    /// Defaults for the server at `url`.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            subject_prefix: None,
            retry: RetryPolicy {
                max_attempts: 5,
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(10),
            },
            ack_wait: Duration::from_secs(30),
            max_handling_time: Duration::from_secs(300),
            lanes: 4,
            max_in_flight: 256,
            max_ack_pending: 10_000,
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::from_secs(7 * 24 * 3600),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_reconnect_delay: Duration::from_secs(2),
        }
    }

    /// Sets the subject prefix (empty = none).
    #[must_use]
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        self.subject_prefix = (!prefix.is_empty()).then_some(prefix);
        self
    }

    /// Sets the retry policy.
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the ack wait (at least 100 ms).
    #[must_use]
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait.max(Duration::from_millis(100));
        self
    }

    /// Sets the longest a handler may run.
    #[must_use]
    pub fn max_handling_time(mut self, limit: Duration) -> Self {
        self.max_handling_time = limit;
        self
    }

    /// Sets the default lanes per group (at least 1).
    #[must_use]
    pub fn lanes(mut self, lanes: usize) -> Self {
        self.lanes = lanes.max(1);
        self
    }

    /// Sets the in-flight bound per subscription (at least 1).
    #[must_use]
    pub fn max_in_flight(mut self, limit: usize) -> Self {
        self.max_in_flight = limit.max(1);
        self
    }

    /// Sets the request timeout.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
}
