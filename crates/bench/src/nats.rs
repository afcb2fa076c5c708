//! The NATS rows: Orders, Payments and Stock as three OS processes (`app serve --bus
//! nats://… --sims none` on a scratch SQLite file, `app payments`, `app stock`) on one
//! JetStream server, under a subject prefix of this run, loaded over HTTP; next to a raw
//! async-nats baseline that moves the same four messages per flow through the same
//! JetStream layout with no domain and no store.
//!
//! * throughput: 256 keep-alive clients, no simulated delay, complete flows per second
//!   (201 → StockReserved seen), as a ratio to the raw baseline;
//! * baseline: per flow, `order.placed` published (and its publish acknowledged),
//!   consumed by a "payments" durable pull consumer that publishes `payment.approved`
//!   and double-acks; consumed by "orders", which publishes `order.paid`; by "stock",
//!   which publishes `stock.reserved`; by "orders", which ends the flow. One stream per
//!   subject on file storage with the adapter's duplicate window, a `Nats-Msg-Id` per
//!   message, 256 flows in flight, every consumer handling up to 256 messages at once.
//! * latency: 64 clients, Payments and Stock delaying 10 ms each, 201 → StockReserved.
//!
//! The streams of the run's prefix are deleted at the end, also after a failure.

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, pull},
    context::Publish,
    stream::{self, RetentionPolicy, StorageType},
};
use futures_util::StreamExt as _;
use tokio::sync::{Semaphore, oneshot};

use crate::{
    http::{ServerProcess, http_load},
    report::{Percentiles, Row},
    scratch::Scratch,
};

/// Clients of the throughput rows, and flows in flight in the baseline.
const THROUGHPUT_CLIENTS: usize = 256;

/// The NATS rows, in order: throughput, baseline, latency. Streams of this run are
/// deleted afterwards whatever happened.
///
/// # Errors
/// When the NATS server cannot be reached, a process does not start, or a flow fails.
pub async fn rows(
    app: &Path,
    url: &str,
    orders: usize,
    latency_orders: usize,
) -> anyhow::Result<Vec<Row>> {
    let prefix = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let result = run(app, url, &prefix, orders, latency_orders).await;
    match delete_streams(url, &prefix).await {
        Ok(deleted) => eprintln!("bench: NATS: deleted {deleted} streams of prefix {prefix}"),
        Err(e) => eprintln!("bench: NATS: could not delete the streams of prefix {prefix}: {e:#}"),
    }
    result
}

async fn run(
    app: &Path,
    url: &str,
    prefix: &str,
    orders: usize,
    latency_orders: usize,
) -> anyhow::Result<Vec<Row>> {
    eprintln!(
        "bench: NATS throughput ({orders} orders, {THROUGHPUT_CLIENTS} clients, three processes)…"
    );
    let system_prefix = format!("{prefix}-sys");
    let (elapsed, _) = with_cluster(app, url, &system_prefix, [&[], &[]], |base| async move {
        http_load(&base, THROUGHPUT_CLIENTS, orders).await
    })
    .await?;
    let system = orders as f64 / elapsed.as_secs_f64();

    eprintln!("bench: NATS raw baseline ({orders} flows, {THROUGHPUT_CLIENTS} in flight)…");
    let raw_elapsed = raw_baseline(url, &format!("{prefix}-raw"), orders).await?;
    let raw = orders as f64 / raw_elapsed.as_secs_f64();

    eprintln!(
        "bench: NATS latency ({latency_orders} orders, 64 clients, Payments and Stock delay 10 ms)…"
    );
    let latency_prefix = format!("{prefix}-lat");
    let (latency_elapsed, samples) = with_cluster(
        app,
        url,
        &latency_prefix,
        [&["--payments-delay-ms", "10"], &["--stock-delay-ms", "10"]],
        |base| async move { http_load(&base, 64, latency_orders).await },
    )
    .await?;

    Ok(vec![
        Row {
            workload: format!(
                "NATS: 3 processes, {THROUGHPUT_CLIENTS} clients, POST /orders → StockReserved seen by blocking GET (Orders on SQLite)"
            ),
            count: orders,
            latency: None,
            throughput: Some((system, "flows/s")),
            ratio: Some(format!("{:.2} × raw", system / raw)),
            note: "app serve --bus nats --sims none, app payments, app stock; no simulated delay"
                .to_owned(),
        },
        Row {
            workload: "baseline: raw async-nats JetStream, the flow's 4 messages published, consumed and double-acked"
                .to_owned(),
            count: orders,
            latency: None,
            throughput: Some((raw, "flows/s")),
            ratio: None,
            note: format!(
                "{THROUGHPUT_CLIENTS} flows in flight; file streams, Nats-Msg-Id, durable pull consumers; no domain, no store"
            ),
        },
        Row {
            workload: "NATS: 3 processes, 64 clients, Payments + Stock 10 ms each, 201 → StockReserved seen by blocking GET (Orders on SQLite)"
                .to_owned(),
            count: latency_orders,
            latency: Percentiles::of(&samples),
            throughput: Some((latency_orders as f64 / latency_elapsed.as_secs_f64(), "flows/s")),
            ratio: None,
            note: String::new(),
        },
    ])
}

/// Starts Orders (on a scratch SQLite file), Payments and Stock (with `sims`: the flags of
/// each) on `prefix`, runs `load` against Orders, and stops the three.
async fn with_cluster<T, F, Fut>(
    app: &Path,
    url: &str,
    prefix: &str,
    sims: [&[&str]; 2],
    load: F,
) -> anyhow::Result<T>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let bus = ["--bus", url, "--bus-prefix", prefix];
    let scratch = Scratch::sqlite();
    let result = async {
        let mut serve = vec!["--store", scratch.url.as_str(), "--sims", "none"];
        serve.extend_from_slice(&bus);
        let orders = ServerProcess::start_role(app, "serve", &serve).await?;
        let payments_args = [&bus[..], sims[0]].concat();
        let payments = ServerProcess::start_role(app, "payments", &payments_args).await?;
        let stock_args = [&bus[..], sims[1]].concat();
        let stock = ServerProcess::start_role(app, "stock", &stock_args).await?;
        let outcome = load(orders.base.clone()).await;
        drop((orders, payments, stock));
        outcome
    }
    .await;
    scratch.remove().await;
    result
}

/// The subjects of a flow, in order: each consumer takes one and publishes the next.
const TOPICS: [&str; 4] = [
    "order.placed",
    "payment.approved",
    "order.paid",
    "stock.reserved",
];

/// A payload of the size of the system's envelopes (about 400 bytes of JSON).
fn payload(flow: usize, topic: &str) -> bytes::Bytes {
    serde_json::json!({
        "messageId": uuid::Uuid::new_v4(),
        "topic": topic,
        "timestamp": "2026-12-02T10:00:00.000Z",
        "correlationId": flow.to_string(),
        "causationId": uuid::Uuid::new_v4(),
        "payload": {
            "orderId": uuid::Uuid::new_v4(),
            "customerId": format!("bench-{flow}"),
            "items": [{"productId": "sku-1", "quantity": 2, "price": 19.99}],
            "totalAmount": 39.98,
            "currency": "EUR"
        }
    })
    .to_string()
    .into()
}

/// Flows waiting for their last message, by flow number.
type Waiting = Arc<parking_lot::Mutex<HashMap<usize, oneshot::Sender<()>>>>;

/// The raw baseline: `flows` flows through the four subjects; returns the elapsed time.
async fn raw_baseline(url: &str, prefix: &str, flows: usize) -> anyhow::Result<Duration> {
    let client = async_nats::connect(url)
        .await
        .with_context(|| format!("connect to NATS at {url}"))?;
    let js = jetstream::new(client.clone());
    let mut consumers = Vec::new();
    for topic in TOPICS {
        let subject = format!("{prefix}.{topic}");
        let name = subject.replace('.', "_");
        js.create_or_update_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            duplicate_window: Duration::from_secs(120),
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .with_context(|| format!("create stream {name}"))?;
        let consumer = js
            .create_consumer_on_stream(
                pull::Config {
                    durable_name: Some("raw".to_owned()),
                    ack_policy: AckPolicy::Explicit,
                    deliver_policy: DeliverPolicy::All,
                    max_ack_pending: 10_000,
                    ..Default::default()
                },
                name.as_str(),
            )
            .await
            .with_context(|| format!("create consumer on {name}"))?;
        consumers.push(consumer);
    }

    let waiting: Waiting = Arc::default();
    let mut tasks = Vec::new();
    for (index, consumer) in consumers.into_iter().enumerate() {
        let next = TOPICS
            .get(index + 1)
            .map(|topic| format!("{prefix}.{topic}"));
        let (client, js, waiting) = (client.clone(), js.clone(), waiting.clone());
        let mut messages = consumer.messages().await.context("start a pull consumer")?;
        tasks.push(tokio::spawn(async move {
            let room = Arc::new(Semaphore::new(THROUGHPUT_CLIENTS));
            while let Some(message) = messages.next().await {
                let message = match message {
                    Ok(message) => message,
                    Err(e) => {
                        eprintln!("bench: raw consumer: {e}");
                        continue;
                    }
                };
                let Ok(permit) = room.clone().acquire_owned().await else {
                    return;
                };
                let (client, js, waiting, next) =
                    (client.clone(), js.clone(), waiting.clone(), next.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let flow: usize = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Flow"))
                        .and_then(|v| v.as_str().parse().ok())
                        .unwrap_or(usize::MAX);
                    if let Some(subject) = next.clone()
                        && let Err(e) = publish(&js, subject, flow).await
                    {
                        eprintln!("bench: raw publish: {e:#}");
                        return;
                    }
                    if let Some(reply) = message.reply.clone() {
                        // The double ack, as the adapter does it: +ACK as a request.
                        if let Err(e) = client.request(reply, "+ACK".into()).await {
                            eprintln!("bench: raw ack: {e}");
                        }
                    }
                    let last = next.is_none();
                    if last && let Some(done) = waiting.lock().remove(&flow) {
                        let _ = done.send(());
                    }
                });
            }
        }));
    }

    let first = format!("{prefix}.{}", TOPICS[0]);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let drivers: Vec<_> = (0..THROUGHPUT_CLIENTS)
        .map(|_| {
            let (js, waiting, next, first) =
                (js.clone(), waiting.clone(), next.clone(), first.clone());
            tokio::spawn(async move {
                loop {
                    let flow = next.fetch_add(1, Ordering::Relaxed);
                    if flow >= flows {
                        return Ok::<_, anyhow::Error>(());
                    }
                    let (done, finished) = oneshot::channel();
                    waiting.lock().insert(flow, done);
                    publish(&js, first.clone(), flow).await?;
                    tokio::time::timeout(Duration::from_secs(60), finished)
                        .await
                        .with_context(|| format!("raw flow {flow} did not finish within 60 s"))?
                        .context("raw consumers stopped")?;
                }
            })
        })
        .collect();
    for driver in drivers {
        driver.await??;
    }
    let elapsed = started.elapsed();
    for task in tasks {
        task.abort();
    }
    Ok(elapsed)
}

/// Publishes one message of `flow` to `subject` and awaits the server's acknowledgement.
async fn publish(js: &jetstream::Context, subject: String, flow: usize) -> anyhow::Result<()> {
    let topic = subject.rsplit_once('.').map_or("", |(_, t)| t).to_owned();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Flow", flow.to_string().as_str());
    js.send_publish(
        subject,
        Publish::build()
            .payload(payload(flow, &topic))
            .message_id(uuid::Uuid::new_v4().to_string())
            .headers(headers),
    )
    .await
    .context("publish")?
    .await
    .context("publish not acknowledged")?;
    Ok(())
}

/// Deletes every stream whose name starts with `prefix` (as a stream-name token).
async fn delete_streams(url: &str, prefix: &str) -> anyhow::Result<usize> {
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client);
    let token = prefix.replace('.', "_");
    let mut names = js.stream_names();
    let mut ours = Vec::new();
    while let Some(name) = names.next().await {
        let name = name?;
        if name.starts_with(&token) {
            ours.push(name);
        }
    }
    for name in &ours {
        js.delete_stream(name).await?;
    }
    Ok(ours.len())
}
