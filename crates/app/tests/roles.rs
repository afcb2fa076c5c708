//! Process roles: Orders (`app serve --bus nats://… --sims none`, on SQLite), Payments
//! (`app payments`) and Stock (`app stock`) run as three OS processes on one NATS
//! JetStream server, under a subject prefix of their own. An order placed over HTTP
//! reaches StockReserved with the ids the separate simulators derive from it; a
//! cancelled one is refunded and released by them (seen by the test's own group on
//! the bus); all three stop gracefully on SIGTERM.
//!
//! The server's address comes from `ORDERS_TEST_NATS_URL` (skipped with a printed reason
//! when unset, a failure when `CI` is set). The streams the run created are deleted.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test: failing loudly is the point

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use contracts::topics;
use futures_util::StreamExt as _;
use messaging::{Envelope, HandlerError, MessageBus as _, MessageHandler, Subscription};
use messaging_nats::{NatsBus, NatsBusConfig, testing};
use serde_json::{Value, json};
use tokio::time::{Instant, timeout_at};
use uuid::Uuid;

/// How long anything in this test may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// What a role logs once it accepts connections, followed by its address.
const LISTENING: &str = "listening on http://";

/// A child process running one role; killed when dropped (a test that failed midway).
struct Role {
    name: &'static str,
    /// `None` once [`Role::terminate`] has reaped it.
    child: Option<Child>,
    /// The base URL, sent once the child logs that it listens.
    listening: Option<tokio::sync::oneshot::Receiver<String>>,
    /// Its log lines, shown when something fails.
    log: Arc<Mutex<Vec<String>>>,
}

impl Role {
    fn start(name: &'static str, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_app"))
            .args(args)
            .env("RUST_LOG", "warn,app=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn app {name}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (listening, address) = tokio::sync::oneshot::channel();
        let lines = log.clone();
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
                lines.lock().unwrap().push(line);
            }
        });
        Self {
            name,
            child: Some(child),
            listening: Some(address),
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits for the "listening" line, then for `/readyz` to answer 200; the base URL.
    async fn ready(&mut self, client: &reqwest::Client) -> String {
        let listening = self.listening.take().expect("awaited once");
        let base = match tokio::time::timeout(DEADLINE, listening).await {
            Ok(Ok(base)) => base,
            _ => panic!(
                "app {} did not listen within {DEADLINE:?}:\n{}",
                self.name,
                self.log()
            ),
        };
        let ready = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("GET /readyz");
        assert_eq!(
            ready.status(),
            200,
            "app {} not ready:\n{}",
            self.name,
            self.log()
        );
        let health = client.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        base
    }

    /// Sends SIGTERM and waits for a successful exit.
    async fn terminate(&mut self) {
        let mut child = self.child.take().expect("terminated once");
        let pid = child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        // The exit is awaited on a blocking thread, under the deadline.
        let exited =
            tokio::time::timeout(DEADLINE, tokio::task::spawn_blocking(move || child.wait())).await;
        let Ok(status) = exited else {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!(
                "app {} still running {DEADLINE:?} after SIGTERM:\n{}",
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
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Deletes the run's streams, also when the test fails.
struct Cleanup {
    url: String,
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), format!("{}_", self.prefix));
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(testing::delete_streams(&url, &prefix)))
        })
        .join();
    }
}

fn order_body(customer: &str) -> Value {
    json!({
        "customerId": customer,
        "currency": "EUR",
        "items": [{"productId": "sku-1", "quantity": 2, "price": 19.99}],
        "shippingAddress": {"street": "Main St 1", "city": "Berlin", "postalCode": "10115", "country": "DE"}
    })
}

async fn place(client: &reqwest::Client, orders: &str, customer: &str) -> Value {
    let response = client
        .post(format!("{orders}/orders"))
        .json(&order_body(customer))
        .send()
        .await
        .expect("POST /orders");
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

/// Blocking reads of `order` until its status is `status` (each waits for a newer
/// version, so nothing polls).
async fn await_status(
    client: &reqwest::Client,
    orders: &str,
    mut order: Value,
    status: &str,
) -> Value {
    let id = order["orderId"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + DEADLINE;
    while order["status"] != status {
        assert!(
            Instant::now() < deadline,
            "order {id} not {status} within {DEADLINE:?}: {order}"
        );
        let version = order["version"].as_u64().unwrap();
        let read = client
            .get(format!(
                "{orders}/orders/{id}?afterVersion={version}&waitMs=5000"
            ))
            .send();
        let response = timeout_at(deadline, read)
            .await
            .expect("blocking read within the deadline")
            .unwrap();
        assert_eq!(response.status(), 200);
        order = response.json().await.unwrap();
    }
    order
}

/// Scrapes `{base}/metrics` until it counts a message of `topic` applied by `group`
/// (the counter is written just after the handler returns; each scrape is a request).
async fn await_metric(client: &reqwest::Client, base: &str, topic: &str, group: &str) {
    let deadline = Instant::now() + DEADLINE;
    let group = format!(r#"group="{group}""#);
    loop {
        let response = client.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        let counted = text.lines().any(|line| {
            line.starts_with("messages_handled_total{")
                && line.contains(topic)
                && line.contains(&group)
                && line.contains(r#"outcome="applied""#)
        });
        if counted && text.contains(&format!("bus_backlog_messages{{{group}}}")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{base}/metrics lacks {topic} {group}:\n{text}"
        );
    }
}

/// Forwards the `(topic, orderId)` of every message it handles: the test's own group
/// on the run's prefix, watching what Payments and Stock publish that Orders ignores.
struct Watcher(tokio::sync::mpsc::UnboundedSender<(String, String)>);

#[async_trait::async_trait]
impl MessageHandler for Watcher {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        let payload: Value = envelope.decode()?;
        let order = payload["orderId"].as_str().unwrap_or_default().to_owned();
        let _ = self.0.send((envelope.topic.to_string(), order));
        Ok(())
    }
}

/// Waits until `seen` has delivered every topic in `topics` for order `id`.
async fn await_published(
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    id: &str,
    topics: &[&str],
) {
    let deadline = Instant::now() + DEADLINE;
    let mut missing: Vec<&str> = topics.to_vec();
    while !missing.is_empty() {
        let Ok(Some((topic, order))) = timeout_at(deadline, seen.recv()).await else {
            panic!("order {id}: {missing:?} not published within {DEADLINE:?}");
        };
        if order == id {
            missing.retain(|t| *t != topic);
        }
    }
}

/// The ack wait of `group`'s consumer on the stream of `topic` (under `prefix`), as the
/// server has it.
async fn ack_wait_of(url: &str, prefix: &str, topic: &str, group: &str) -> Duration {
    let client = async_nats::connect(url).await.expect("connect to NATS");
    let js = async_nats::jetstream::new(client);
    let subject = format!("{prefix}.{topic}");
    let mut names = js.stream_names();
    while let Some(name) = names.next().await {
        let name = name.expect("list streams");
        if !name.starts_with(prefix) {
            continue;
        }
        let mut stream = js.get_stream(&name).await.expect("read a stream");
        let info = stream.info().await.expect("read a stream's info");
        if info.config.subjects.contains(&subject) {
            let consumer = stream
                .consumer_info(group)
                .await
                .unwrap_or_else(|e| panic!("no consumer {group} on {name}: {e}"));
            return consumer.config.ack_wait;
        }
    }
    panic!("no stream of {subject}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_payments_and_stock_as_three_processes_over_nats() {
    let Some(url) = testing::test_url("orders_payments_and_stock_as_three_processes_over_nats")
    else {
        return;
    };
    let prefix = format!("roles{}", &Uuid::new_v4().simple().to_string()[..8]);
    let _cleanup = Cleanup {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    let data = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", data.path().join("orders.db").display());
    let bus = ["--bus", url.as_str(), "--bus-prefix", prefix.as_str()];
    let listen = ["--listen", "127.0.0.1:0"];

    let mut orders = Role::start(
        "serve",
        &[
            &["serve", "--sims", "none", "--store", &store][..],
            &bus,
            &listen,
        ]
        .concat(),
    );
    // Payments with its own ack wait, which its consumers on the server must carry.
    let mut payments = Role::start(
        "payments",
        &[&["payments", "--bus-ack-wait-secs", "7"][..], &bus, &listen].concat(),
    );
    let mut stock = Role::start("stock", &[&["stock"][..], &bus, &listen].concat());
    // The test's own group sees what Payments and Stock publish about cancellations.
    let watcher =
        NatsBus::connect(NatsBusConfig::new(url.as_str()).subject_prefix(prefix.as_str()))
            .await
            .expect("connect the watcher");
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let _watching = watcher
        .subscribe(
            Subscription::new("roles-test-watcher")
                .topic(topics::PAYMENT_REFUNDED)
                .topic(topics::STOCK_RELEASED),
            Arc::new(Watcher(seen_tx)),
        )
        .await
        .expect("subscribe the watcher");
    let client = reqwest::Client::new();
    let base = orders.ready(&client).await;
    let payments_base = payments.ready(&client).await;
    let stock_base = stock.ready(&client).await;
    assert_eq!(
        ack_wait_of(&url, &prefix, "order.placed", "payments").await,
        Duration::from_secs(7),
        "--bus-ack-wait-secs reaches the Payments consumer"
    );

    // One order through all three processes: the ids are the simulators', derived
    // from the order id.
    let placed = place(&client, &base, "roles-1").await;
    assert_eq!(placed["status"], "AwaitingPayment");
    let reserved = await_status(&client, &base, placed, "StockReserved").await;
    let id: Uuid = reserved["orderId"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        reserved["paymentId"],
        payments_sim::payment_id_for(id).as_str()
    );
    assert_eq!(
        reserved["reservationId"],
        stock_sim::reservation_id_for(id).as_str()
    );

    // Each role serves its own metrics: what its simulator handled, by topic and group.
    await_metric(
        &client,
        &payments_base,
        r#"topic="order.placed""#,
        "payments",
    )
    .await;
    await_metric(&client, &stock_base, r#"topic="order.paid""#, "stock").await;

    // Another, cancelled once reserved: Payments refunds it and Stock releases it.
    let placed = place(&client, &base, "roles-2").await;
    let reserved = await_status(&client, &base, placed, "StockReserved").await;
    let id = reserved["orderId"].as_str().unwrap().to_owned();
    let cancelled = client
        .post(format!("{base}/orders/{id}/cancel"))
        .json(&json!({"reason": "changed my mind"}))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200);
    let cancelled: Value = cancelled.json().await.unwrap();
    assert_eq!(cancelled["status"], "Cancelled");
    await_published(
        &mut seen,
        &id,
        &[topics::PAYMENT_REFUNDED, topics::STOCK_RELEASED],
    )
    .await;

    // Every process stops gracefully on SIGTERM.
    orders.terminate().await;
    payments.terminate().await;
    stock.terminate().await;
}
