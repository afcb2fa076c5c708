//! What the tests that run the `app` binary as OS processes over NATS share: a role
//! process ([`Role`]: start, await ready, SIGKILL, restart, SIGTERM), the run's streams
//! on the broker ([`Broker`]: every message published, whether everything is handled,
//! dead letters, a redelivery without a message id), and the HTTP moves on Orders
//! ([`Orders`]: place, cancel, blocking reads, the messages of an order, `/stats`).
//!
//! Waits are deadline-based: blocking reads where Orders offers them, else a condition
//! checked on a short interval (a process's readiness, the broker's consumer counts and
//! Orders' outbox have nothing to be notified by).

#![allow(dead_code)] // each test binary uses its own part of the helpers
#![allow(clippy::expect_used, clippy::unwrap_used)] // tests: failing loudly is the point

use std::{
    collections::{BTreeMap, VecDeque},
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream;
use futures_util::{StreamExt as _, TryStreamExt as _};
use messaging::Envelope;
use messaging_nats::testing;
use serde_json::{Value, json};
use tokio::time::{Instant, MissedTickBehavior, interval, timeout_at};

/// What a role logs once it accepts connections, followed by its address.
const LISTENING: &str = "listening on http://";

/// How many of a role's last log lines are kept (shown when something fails).
const LOG_LINES: usize = 400;

/// How often a condition with nothing to be notified by is checked.
pub const POLL: Duration = Duration::from_millis(20);

/// An interval of [`POLL`] that does not burst after a slow check.
fn poll() -> tokio::time::Interval {
    let mut ticks = interval(POLL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks
}

/// A short unique prefix for a run's subjects and streams (`<what><8 hex>`).
#[must_use]
pub fn unique_prefix(what: &str) -> String {
    format!("{what}{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// A child process running one role of `app`, restartable with the same arguments;
/// killed when dropped (a test that failed midway).
pub struct Role {
    pub name: String,
    args: Vec<String>,
    child: Option<Child>,
    /// The base URL, sent once the child logs that it listens.
    listening: Option<tokio::sync::oneshot::Receiver<String>>,
    base: Option<String>,
    /// Its last log lines over every run, shown when something fails.
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Role {
    /// Starts `app ARGS…`; `name` names it in failures.
    pub fn start(name: &str, args: &[&str]) -> Self {
        let mut role = Self::new(name, args);
        role.spawn();
        role
    }

    /// `app ARGS…` not started yet: [`Role::restart`] starts it.
    pub fn new(name: &str, args: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
            listening: None,
            base: None,
            log: Arc::new(Mutex::new(VecDeque::new())),
        }
    }

    fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_app"))
            .args(&self.args)
            .env("RUST_LOG", "warn,app=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn app {}: {e}", self.name));
        let stderr = child.stderr.take().expect("piped stderr");
        let (listening, address) = tokio::sync::oneshot::channel();
        let lines = self.log.clone();
        let pid = child.id();
        std::thread::spawn(move || {
            let mut listening = Some(listening);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find(LISTENING)
                    && let Some(listening) = listening.take()
                {
                    let rest = &line[at + LISTENING.len()..];
                    let end = rest
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == ':'))
                        .unwrap_or(rest.len());
                    let _ = listening.send(format!("http://{}", &rest[..end]));
                }
                let mut log = lines.lock().unwrap();
                if log.len() == LOG_LINES {
                    log.pop_front();
                }
                log.push_back(format!("[{pid}] {line}"));
            }
        });
        self.child = Some(child);
        self.listening = Some(address);
        self.base = None;
    }

    /// Its last log lines.
    pub fn log(&self) -> String {
        let log = self.log.lock().unwrap();
        log.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// The base URL of its HTTP port (after [`Role::ready`]).
    pub fn base(&self) -> &str {
        self.base.as_deref().expect("awaited ready")
    }

    /// Waits for the "listening" line (once per start), then for `/readyz` to answer
    /// 200 (the bus connected) within `within`; the base URL.
    pub async fn ready(&mut self, client: &reqwest::Client, within: Duration) -> String {
        let deadline = Instant::now() + within;
        if let Some(listening) = self.listening.take() {
            match timeout_at(deadline, listening).await {
                Ok(Ok(base)) => self.base = Some(base),
                _ => panic!(
                    "app {} did not listen within {within:?}:\n{}",
                    self.name,
                    self.log()
                ),
            }
        }
        let base = self.base().to_owned();
        let mut ticks = poll();
        loop {
            if let Ok(response) = client.get(format!("{base}/readyz")).send().await
                && response.status() == 200
            {
                return base;
            }
            assert!(
                Instant::now() < deadline,
                "app {} not ready within {within:?}:\n{}",
                self.name,
                self.log()
            );
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("app {} exited ({status}):\n{}", self.name, self.log());
            }
            ticks.tick().await;
        }
    }

    /// Whether the process has ended on its own (its status), without waiting.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL (no shutdown at all) and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again with the same arguments (after [`Role::kill`] or
    /// [`Role::terminate`]); await [`Role::ready`] next.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Sends SIGTERM and waits (under `within`) for a successful exit.
    pub async fn terminate(&mut self, within: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        let exited =
            tokio::time::timeout(within, tokio::task::spawn_blocking(move || child.wait())).await;
        let Ok(status) = exited else {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!(
                "app {} still running {within:?} after SIGTERM:\n{}",
                self.name,
                self.log()
            );
        };
        let status = status.unwrap().unwrap();
        assert!(
            status.success(),
            "app {} exited with {status} on SIGTERM:\n{}",
            self.name,
            self.log()
        );
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Deletes the streams of a run on the shared server, also when the test fails.
pub struct Cleanup {
    pub url: String,
    pub prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(testing::delete_streams(&url, &prefix)))
        })
        .join();
    }
}

/// The streams of one subject prefix on a NATS server, read with a client of the
/// test's own (not a bus subscription: reading changes nothing).
#[derive(Clone)]
pub struct Broker {
    client: async_nats::Client,
    js: jetstream::Context,
    prefix: String,
}

/// What [`Broker::snapshot`] saw: whether every consumer had handled everything, and
/// how many messages the streams held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// No consumer had a message left to deliver or awaiting its ack.
    pub quiet: bool,
    /// Messages in the topic streams.
    pub messages: u64,
}

impl Broker {
    /// Connects to `url` for the streams of `prefix` (letters and digits only).
    pub async fn connect(url: &str, prefix: &str) -> Self {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(url)
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        Self {
            js: jetstream::new(client.clone()),
            client,
            prefix: prefix.to_owned(),
        }
    }

    fn dead_letter_stream(&self) -> String {
        format!("{}_dead-letter", self.prefix)
    }

    /// The names of the run's topic streams.
    async fn topic_streams(&self) -> Result<Vec<String>, String> {
        let names: Vec<String> = self
            .js
            .stream_names()
            .try_collect()
            .await
            .map_err(|e| format!("list streams: {e}"))?;
        let mine = format!("{}_", self.prefix);
        let dead = self.dead_letter_stream();
        Ok(names
            .into_iter()
            .filter(|n| n.starts_with(&mine) && *n != dead)
            .collect())
    }

    /// Whether every consumer of the run's streams has handled all it was given, and
    /// how many messages the streams hold.
    pub async fn snapshot(&self) -> Result<Snapshot, String> {
        let mut quiet = true;
        let mut messages = 0;
        for name in self.topic_streams().await? {
            let stream = self
                .js
                .get_stream(&name)
                .await
                .map_err(|e| format!("stream {name}: {e}"))?;
            messages += stream
                .get_info()
                .await
                .map_err(|e| format!("stream {name}: {e}"))?
                .state
                .messages;
            let consumers: Vec<_> = stream
                .consumers()
                .try_collect()
                .await
                .map_err(|e| format!("consumers of {name}: {e}"))?;
            // The durable groups only: a reader of the test's own is ephemeral.
            quiet &= consumers
                .iter()
                .filter(|c| c.config.durable_name.is_some())
                .all(|c| c.num_pending == 0 && c.num_ack_pending == 0);
        }
        Ok(Snapshot { quiet, messages })
    }

    /// Waits until the system is at rest: every consumer has handled everything, no
    /// Orders replica has an unsent outbox row, and nothing was published in between
    /// (two such observations in a row with the same message count).
    pub async fn settle(&self, orders: &[&Orders], within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let mut previous: Option<u64> = None;
        let mut last = String::new();
        let mut ticks = poll();
        loop {
            let snapshot = self.snapshot().await;
            let mut unsent = 0;
            for replica in orders {
                unsent += replica
                    .stats()
                    .await
                    .map_or(1, |s| s["unsentOutboxRows"].as_u64().unwrap_or(1));
            }
            match snapshot {
                Ok(s) if s.quiet && unsent == 0 => {
                    if previous == Some(s.messages) {
                        return Ok(());
                    }
                    previous = Some(s.messages);
                }
                other => {
                    last = format!("{other:?}, unsent outbox rows {unsent}");
                    previous = None;
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("not settled within {within:?}: {last}"));
            }
            ticks.tick().await;
        }
    }

    /// Every message in the run's topic streams (as published: a copy the server
    /// dropped as a duplicate is not there), in stream order per topic.
    pub async fn messages(&self) -> Result<Vec<Envelope>, String> {
        let mut all = Vec::new();
        for name in self.topic_streams().await? {
            let stream = self
                .js
                .get_stream(&name)
                .await
                .map_err(|e| format!("stream {name}: {e}"))?;
            let state = stream
                .get_info()
                .await
                .map_err(|e| format!("stream {name}: {e}"))?
                .state;
            if state.messages == 0 {
                continue;
            }
            // An ephemeral ordered consumer without acks: one pass over the stream.
            let reader = stream
                .create_consumer(jetstream::consumer::pull::OrderedConfig {
                    deliver_policy: jetstream::consumer::DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("read {name}: {e}"))?;
            let mut messages = reader
                .messages()
                .await
                .map_err(|e| format!("read {name}: {e}"))?;
            let deadline = Instant::now() + Duration::from_secs(30);
            for _ in 0..state.messages {
                let message = match timeout_at(deadline, messages.next()).await {
                    Ok(Some(Ok(message))) => message,
                    Ok(Some(Err(e))) => return Err(format!("read {name}: {e}")),
                    Ok(None) | Err(_) => {
                        return Err(format!(
                            "read {name}: fewer than {} messages",
                            state.messages
                        ));
                    }
                };
                all.push(
                    Envelope::from_json(&message.payload)
                        .map_err(|e| format!("{name}: not an envelope: {e}"))?,
                );
            }
        }
        all.sort_by_key(|e| e.timestamp);
        Ok(all)
    }

    /// The run's messages grouped by correlation id (the order id).
    pub async fn messages_by_order(&self) -> Result<BTreeMap<String, Vec<Envelope>>, String> {
        let mut by_order: BTreeMap<String, Vec<Envelope>> = BTreeMap::new();
        for envelope in self.messages().await? {
            by_order
                .entry(envelope.correlation_id.clone())
                .or_default()
                .push(envelope);
        }
        Ok(by_order)
    }

    /// How many messages the run's dead-letter stream holds (0 when it does not exist).
    pub async fn dead_letters(&self) -> Result<u64, String> {
        match self.js.get_stream(self.dead_letter_stream()).await {
            Ok(stream) => Ok(stream
                .get_info()
                .await
                .map_err(|e| format!("dead-letter stream: {e}"))?
                .state
                .messages),
            Err(e) if e.to_string().contains("not found") => Ok(0),
            Err(e) => Err(format!("dead-letter stream: {e}")),
        }
    }

    /// Publishes `envelope` again without a `Nats-Msg-Id` header, so the server cannot
    /// drop it as a duplicate: what a redelivery of the same message looks like to a
    /// consumer.
    pub async fn publish_without_message_id(&self, envelope: &Envelope) -> Result<(), String> {
        let subject = format!("{}.{}", self.prefix, envelope.topic);
        let body = envelope.to_json().map_err(|e| e.to_string())?;
        self.js
            .publish(subject.clone(), body.into())
            .await
            .map_err(|e| format!("publish to {subject}: {e}"))?
            .await
            .map_err(|e| format!("publish to {subject} not confirmed: {e}"))?;
        Ok(())
    }

    /// Flushes and closes the connection.
    pub async fn close(self) {
        let _ = self.client.flush().await;
    }
}

/// The distinct values of `field` in the payloads of `topic` among `messages`.
pub fn distinct(
    messages: &[Envelope],
    topic: &str,
    field: &str,
) -> std::collections::BTreeSet<String> {
    messages
        .iter()
        .filter(|e| e.topic == topic)
        .filter_map(|e| e.decode::<Value>().ok())
        .filter_map(|p| p[field].as_str().map(str::to_owned))
        .collect()
}

/// How many of `messages` are on `topic`.
pub fn count(messages: &[Envelope], topic: &str) -> usize {
    messages.iter().filter(|e| e.topic == topic).count()
}

/// A checkout body: one line of `quantity` × `product` at `price` EUR.
pub fn checkout(customer: &str, product: &str, price: &str, quantity: u32) -> Value {
    json!({
        "customerId": customer,
        "currency": "EUR",
        "items": [{"productId": product, "quantity": quantity,
                   "price": price.parse::<serde_json::Number>().expect("a price")}],
        "shippingAddress": {"street": "Hauptstrasse 1", "city": "Berlin", "postalCode": "10115", "country": "DE"}
    })
}

/// One Orders process seen over HTTP.
#[derive(Clone)]
pub struct Orders {
    pub base: String,
    pub client: reqwest::Client,
}

impl Orders {
    /// `POST /orders`: the order, or what went wrong (a status or a connection error).
    pub async fn place(&self, body: &Value, key: Option<&str>) -> Result<Value, String> {
        let mut request = self.client.post(format!("{}/orders", self.base)).json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        if status != 201 && status != 200 {
            return Err(format!(
                "POST /orders: {status} {}",
                response.text().await.unwrap_or_default()
            ));
        }
        response.json().await.map_err(|e| e.to_string())
    }

    /// `POST /orders/{id}/cancel`.
    pub async fn cancel(&self, id: &str) -> Result<Value, String> {
        let response = self
            .client
            .post(format!("{}/orders/{id}/cancel", self.base))
            .json(&json!({"reason": "customer changed their mind"}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status() != 200 {
            return Err(format!("cancel {id}: {}", response.status()));
        }
        response.json().await.map_err(|e| e.to_string())
    }

    /// `GET /orders/{id}`, blocking until its version is above `after` or `wait` passed
    /// (with `after` = `None`: at once). `Ok(None)`: 404.
    pub async fn order(
        &self,
        id: &str,
        after: Option<u64>,
        wait: Duration,
    ) -> Result<Option<Value>, String> {
        let url = match after {
            Some(version) => format!(
                "{}/orders/{id}?afterVersion={version}&waitMs={}",
                self.base,
                wait.as_millis()
            ),
            None => format!("{}/orders/{id}", self.base),
        };
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match response.status().as_u16() {
            200 => response.json().await.map(Some).map_err(|e| e.to_string()),
            404 => Ok(None),
            other => Err(format!("GET /orders/{id}: {other}")),
        }
    }

    /// Follows order `id` with blocking reads until its status is one of `statuses`.
    pub async fn await_status(
        &self,
        id: &str,
        statuses: &[&str],
        within: Duration,
    ) -> Result<Value, String> {
        let deadline = Instant::now() + within;
        let mut version = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = left.min(Duration::from_secs(3));
            let order = match timeout_at(
                deadline + Duration::from_secs(1),
                self.order(id, Some(version), wait),
            )
            .await
            {
                Ok(Ok(Some(order))) => order,
                Ok(Ok(None)) => return Err(format!("order {id} not found")),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(format!("order {id}: no answer within {within:?}")),
            };
            if statuses.iter().any(|s| order["status"] == *s) {
                return Ok(order);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "order {id} not {statuses:?} within {within:?}: {}",
                    order["status"]
                ));
            }
            version = order["version"].as_u64().unwrap_or(0);
        }
    }

    /// `GET /orders/{id}/messages`: what Orders sent and received for the order, with the
    /// handling outcomes. `Ok(None)`: the order does not exist (404).
    pub async fn messages(&self, id: &str) -> Result<Option<Vec<Value>>, String> {
        let response = self
            .client
            .get(format!("{}/orders/{id}/messages", self.base))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match response.status().as_u16() {
            200 => response.json().await.map(Some).map_err(|e| e.to_string()),
            404 => Ok(None),
            other => Err(format!("GET /orders/{id}/messages: {other}")),
        }
    }

    /// The outcomes with which Orders handled the received messages of `topic`.
    pub async fn outcomes(&self, id: &str, topic: &str) -> Result<Vec<String>, String> {
        Ok(outcomes(
            &self.messages(id).await?.unwrap_or_default(),
            topic,
        ))
    }

    /// Waits until Orders has handled `n` received messages of `topic` for order `id`
    /// (paced by blocking reads of the order, which answer early when it changes).
    pub async fn await_handled(
        &self,
        id: &str,
        topic: &str,
        n: usize,
        within: Duration,
    ) -> Result<Vec<String>, String> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.outcomes(id, topic).await?;
            if got.len() >= n {
                return Ok(got);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "order {id}: {n} × {topic} not handled within {within:?}: {got:?}"
                ));
            }
            let version = self
                .order(id, None, Duration::ZERO)
                .await?
                .and_then(|o| o["version"].as_u64())
                .unwrap_or(0);
            self.order(id, Some(version), Duration::from_millis(50))
                .await?;
        }
    }

    /// `GET /stats`.
    pub async fn stats(&self) -> Result<Value, String> {
        let response = self
            .client
            .get(format!("{}/stats", self.base))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status() != 200 {
            return Err(format!("GET /stats: {}", response.status()));
        }
        response.json().await.map_err(|e| e.to_string())
    }
}

/// The outcomes of the received messages of `topic` in an order's message list.
pub fn outcomes(messages: &[Value], topic: &str) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m["direction"] == "received" && m["topic"] == topic)
        .filter_map(|m| m["outcome"].as_str().map(str::to_owned))
        .collect()
}
