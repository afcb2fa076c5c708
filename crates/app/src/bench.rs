//! `app bench` (`cargo xtask bench`): measures the in-process system and prints a
//! Markdown table with percentiles, throughput, and the ratio to a raw baseline measured
//! in the same run.
//!
//! Workloads:
//! * publish latency with one subscriber (one `publish` call, timed one by one), next to
//!   a raw `tokio::sync::mpsc` send of the same envelope;
//! * throughput: N orders placed as fast as the system accepts them, all to
//!   StockReserved: flows/s, peak RSS and RSS kept per order after the run;
//! * latency: orders paced at a fixed rate: place → StockReserved committed, p50/p99/max;
//! * baseline: the same messages with the same JSON payloads, serialized and
//!   deserialized, through a raw tokio mpsc channel (no bus, no store, no domain).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use messaging::{Envelope, HandlerError, InMemoryBus, MessageBus, MessageHandler, Subscription};
use orders_domain::{OrderId, OrderStatus};
use rust_decimal::Decimal;

use crate::{
    changes::WatchedStore,
    scenarios::checkout,
    system::{InProcessSystem, Stores, SystemConfig},
};

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchConfig {
    /// Publishes timed in the publish-latency workload.
    #[arg(long, default_value_t = 100_000)]
    pub publishes: usize,
    /// Orders in the throughput workload.
    #[arg(long, default_value_t = 100_000)]
    pub orders: usize,
    /// Concurrent checkout tasks in the throughput workload.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Orders per second in the paced-latency workload.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Seconds of the paced-latency workload.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Which groups of rows to run: memory, sqlite, postgres, http (both HTTP rows), or
    /// one HTTP row alone: http-throughput, http-latency.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "memory,sqlite,postgres,http"
    )]
    pub only: Vec<String>,
    /// Orders in the SQLite and PostgreSQL throughput workloads.
    #[arg(long, default_value_t = 20_000)]
    pub sql_orders: usize,
    /// Orders per second in the SQLite and PostgreSQL paced-latency workloads.
    #[arg(long, default_value_t = 1_000)]
    pub sql_rate: u64,
    /// Seconds of the SQLite and PostgreSQL paced-latency workloads.
    #[arg(long, default_value_t = 5)]
    pub sql_seconds: u64,
    /// Orders in the HTTP throughput workload.
    #[arg(long, default_value_t = 5_000)]
    pub http_orders: usize,
    /// Orders in the HTTP latency workload (64 clients, simulated delays); the server's
    /// peak RSS is also read after the first 2,000.
    #[arg(long, default_value_t = 10_000)]
    pub http_latency_orders: usize,
    /// The PostgreSQL server to create scratch databases on.
    #[arg(
        long,
        env = "ORDERS_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    pub postgres_url: String,
}

/// One line of the result table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub workload: String,
    /// How many operations.
    pub count: usize,
    /// Latency percentiles, if measured.
    pub latency: Option<Percentiles>,
    /// Operations per second and the unit's name.
    pub throughput: Option<(f64, &'static str)>,
    /// Our throughput (or latency) relative to the raw baseline.
    pub ratio: Option<String>,
    /// Anything else (memory).
    pub note: String,
}

/// Latency percentiles.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Maximum.
    pub max: Duration,
}

impl Percentiles {
    /// Percentiles of `samples` (sorted in place).
    #[must_use]
    pub fn of(samples: &mut [Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let index = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[index]
        };
        Some(Self {
            p50: at(0.50),
            p99: at(0.99),
            max: samples[samples.len() - 1],
        })
    }
}

/// Runs every in-memory workload, printing progress to stderr.
///
/// # Errors
/// When the system cannot start or a workload does not complete.
pub async fn run(config: &BenchConfig) -> anyhow::Result<Vec<Row>> {
    let wants = |group: &str| config.only.iter().any(|g| g == group);
    let mut rows = Vec::new();
    if wants("memory") {
        eprintln!("bench: publish latency ({} publishes)…", config.publishes);
        rows.extend(publish_latency(config.publishes).await?);
        eprintln!("bench: raw baseline ({} flows)…", config.orders);
        let baseline = raw_baseline(config.orders).await?;
        eprintln!(
            "bench: throughput ({} orders, {} clients)…",
            config.orders, config.clients
        );
        let mut throughput = throughput(
            "in-memory",
            Stores::in_memory(),
            config.orders,
            config.clients,
        )
        .await?;
        if let (Some((ours, _)), Some((raw, _))) = (throughput.throughput, baseline.throughput) {
            throughput.ratio = Some(format!("{:.2} × raw", ours / raw));
        }
        rows.push(throughput);
        rows.push(baseline);
        eprintln!(
            "bench: paced latency ({} orders/s for {} s)…",
            config.rate, config.seconds
        );
        rows.push(
            paced_latency(
                "in-memory",
                Stores::in_memory(),
                config.rate,
                config.seconds,
            )
            .await?,
        );
    }
    if wants("sqlite") {
        let make = async || Ok(crate::bench_io::Scratch::sqlite());
        rows.extend(
            crate::bench_io::store_rows(
                "SQLite",
                make,
                config.sql_orders,
                config.clients,
                config.sql_rate,
                config.sql_seconds,
            )
            .await?,
        );
    }
    // HTTP runs on SQLite: before PostgreSQL, whose server goes on writing (checkpoints,
    // dropping the scratch database) after its rows and would share the cores.
    if wants("http") || wants("http-throughput") {
        rows.push(crate::bench_io::http_throughput(config.http_orders).await?);
    }
    if wants("http") || wants("http-latency") {
        rows.push(crate::bench_io::http_latency(config.http_latency_orders).await?);
    }
    if wants("postgres") {
        let url = config.postgres_url.clone();
        let make = async || crate::bench_io::Scratch::postgres(&url).await;
        match crate::bench_io::store_rows(
            "PostgreSQL",
            make,
            config.sql_orders,
            config.clients,
            config.sql_rate,
            config.sql_seconds,
        )
        .await
        {
            Ok(more) => rows.extend(more),
            Err(e) => {
                eprintln!("bench: PostgreSQL rows skipped: {e:#}");
                rows.push(Row {
                    workload: "PostgreSQL".to_owned(),
                    count: 0,
                    latency: None,
                    throughput: None,
                    ratio: None,
                    note: format!("skipped: {e:#}"),
                });
            }
        }
    }
    Ok(rows)
}

/// The table, in Markdown.
#[must_use]
pub fn render(rows: &[Row]) -> String {
    let mut out = String::from(
        "| workload | n | p50 | p99 | max | throughput | vs raw baseline | notes |\n|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for row in rows {
        let (p50, p99, max) = row.latency.map_or_else(
            || ("-".to_owned(), "-".to_owned(), "-".to_owned()),
            |l| {
                (
                    fmt_duration(l.p50),
                    fmt_duration(l.p99),
                    fmt_duration(l.max),
                )
            },
        );
        let throughput = row
            .throughput
            .map_or_else(|| "-".to_owned(), |(v, unit)| format!("{v:.0} {unit}"));
        out.push_str(&format!(
            "| {} | {} | {p50} | {p99} | {max} | {throughput} | {} | {} |\n",
            row.workload,
            row.count,
            row.ratio.as_deref().unwrap_or("-"),
            row.note
        ));
    }
    out
}

fn fmt_duration(d: Duration) -> String {
    let micros = d.as_secs_f64() * 1e6;
    if micros < 1000.0 {
        format!("{micros:.1} µs")
    } else {
        format!("{:.2} ms", micros / 1000.0)
    }
}

struct Discard;

#[async_trait]
impl MessageHandler for Discard {
    async fn handle(&self, _: &Envelope) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn sample_envelope() -> anyhow::Result<Envelope> {
    let payload = contracts::PaymentApproved {
        order_id: uuid::Uuid::new_v4(),
        payment_id: uuid::Uuid::new_v4().to_string(),
        approved_amount: Decimal::new(5980, 2),
        currency: "EUR".to_owned(),
        timestamp: chrono::Utc::now(),
    };
    Ok(Envelope::new(
        uuid::Uuid::new_v4(),
        contracts::topics::PAYMENT_APPROVED,
        chrono::Utc::now(),
        payload.order_id.to_string(),
        None,
        &payload,
    )?)
}

async fn publish_latency(n: usize) -> anyhow::Result<Vec<Row>> {
    let bus = InMemoryBus::default();
    let subscription = bus
        .subscribe(
            Subscription::new("bench").topic(contracts::topics::PAYMENT_APPROVED),
            Arc::new(Discard),
        )
        .await?;
    let template = sample_envelope()?;
    let mut envelopes: Vec<Envelope> = (0..n)
        .map(|i| Envelope {
            correlation_id: format!("order-{}", i % 1024),
            ..template.clone()
        })
        .collect();
    let mut samples = Vec::with_capacity(n);
    let started = Instant::now();
    for envelope in envelopes.drain(..) {
        let t = Instant::now();
        bus.publish(envelope).await?;
        samples.push(t.elapsed());
    }
    let elapsed = started.elapsed();
    bus.wait_idle(Duration::from_secs(30)).await;
    subscription.unsubscribe().await;

    // Baseline: the same envelopes through a raw bounded channel with a draining task.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Arc<Envelope>>(65_536);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let mut raw = Vec::with_capacity(n);
    let envelopes: Vec<Envelope> = (0..n).map(|_| template.clone()).collect();
    for envelope in envelopes {
        let t = Instant::now();
        tx.send(Arc::new(envelope))
            .await
            .map_err(|_| anyhow::anyhow!("baseline channel closed"))?;
        raw.push(t.elapsed());
    }
    drop(tx);
    drain.await?;
    let ours = Percentiles::of(&mut samples);
    let base = Percentiles::of(&mut raw);
    let ratio = match (ours, base) {
        (Some(o), Some(b)) => Some(format!(
            "p99 {:.1} × raw",
            o.p99.as_secs_f64() / b.p99.as_secs_f64().max(1e-9)
        )),
        _ => None,
    };
    Ok(vec![
        Row {
            workload: "publish, 1 subscriber (in-memory bus)".to_owned(),
            count: n,
            latency: ours,
            throughput: Some((n as f64 / elapsed.as_secs_f64(), "msg/s")),
            ratio,
            note: String::new(),
        },
        Row {
            workload: "baseline: raw mpsc send".to_owned(),
            count: n,
            latency: base,
            throughput: None,
            ratio: None,
            note: String::new(),
        },
    ])
}

/// Places `n` orders from `clients` tasks as fast as accepted; waits until all settled.
pub async fn throughput(
    label: &str,
    stores: Stores,
    n: usize,
    clients: usize,
) -> anyhow::Result<Row> {
    reset_peak_rss();
    let rss_before = rss_bytes();
    let system = InProcessSystem::start_with(
        SystemConfig::default(),
        stores,
        Arc::new(orders_app::SystemClock),
    )
    .await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    let per_client = n.div_ceil(clients.max(1));
    for client in 0..clients.max(1) {
        let orders = system.orders.clone();
        let count = per_client.min(n.saturating_sub(client * per_client));
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(count);
            for i in 0..count {
                let command = checkout(&format!("sku-{}", i % 100), Decimal::new(1999, 2), 2);
                ids.push(orders.place_order(command, None).await?.order_id);
            }
            Ok::<_, orders_app::AppError>(ids)
        }));
    }
    let mut ids = Vec::with_capacity(n);
    for task in tasks {
        ids.extend(task.await??);
    }
    let placed = started.elapsed();
    if !system.settle(Duration::from_secs(120)).await {
        system.shutdown().await;
        anyhow::bail!("the throughput run did not settle within 120 s");
    }
    let elapsed = started.elapsed();
    let peak = peak_rss_bytes();
    let mut reserved = 0;
    for id in &ids {
        if system.orders.order(*id).await.map(|o| o.status()) == Ok(OrderStatus::StockReserved) {
            reserved += 1;
        }
    }
    if reserved != n {
        system.shutdown().await;
        anyhow::bail!("only {reserved} of {n} orders reached StockReserved");
    }
    let rss_after = rss_bytes();
    let kept = rss_after.saturating_sub(rss_before);
    system.shutdown().await;
    Ok(Row {
        workload: format!("throughput: {n} orders → StockReserved ({label})"),
        count: n,
        latency: None,
        throughput: Some((n as f64 / elapsed.as_secs_f64(), "flows/s")),
        ratio: None,
        note: format!(
            "all placed in {:.2} s; peak RSS {} MiB; RSS kept after run {} MiB ≈ {} B/order",
            placed.as_secs_f64(),
            peak / (1 << 20),
            kept / (1 << 20),
            kept / n.max(1) as u64
        ),
    })
}

/// The raw baseline: the four messages of a flow, serialized and deserialized through a
/// tokio mpsc channel between two tasks.
async fn raw_baseline(flows: usize) -> anyhow::Result<Row> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4096);
    let consumer = tokio::spawn(async move {
        let mut n = 0usize;
        while let Some(bytes) = rx.recv().await {
            let envelope = Envelope::from_json(&bytes)?;
            match envelope.topic.as_ref() {
                contracts::topics::ORDER_PLACED => {
                    drop(envelope.decode::<contracts::OrderPlaced>()?)
                }
                contracts::topics::PAYMENT_APPROVED => {
                    drop(envelope.decode::<contracts::PaymentApproved>()?)
                }
                contracts::topics::ORDER_PAID => drop(envelope.decode::<contracts::OrderPaid>()?),
                _ => drop(envelope.decode::<contracts::StockReserved>()?),
            }
            n += 1;
        }
        Ok::<_, anyhow::Error>(n)
    });
    let started = Instant::now();
    let now = chrono::Utc::now();
    for _ in 0..flows {
        let order_id = uuid::Uuid::new_v4();
        let payment_id = uuid::Uuid::new_v4().to_string();
        let correlation = order_id.to_string();
        let items = vec![contracts::ItemQuantity {
            product_id: "sku-1".to_owned(),
            quantity: 2,
        }];
        let placed = contracts::OrderPlaced {
            order_id,
            customer_id: "customer-42".to_owned(),
            items: vec![contracts::PricedItem {
                product_id: "sku-1".to_owned(),
                quantity: 2,
                price: Decimal::new(1999, 2),
            }],
            total_amount: Decimal::new(3998, 2),
            currency: "EUR".to_owned(),
            shipping_address: contracts::ShippingAddress {
                street: "Hauptstrasse 1".to_owned(),
                city: "Berlin".to_owned(),
                postal_code: "10115".to_owned(),
                country: "DE".to_owned(),
            },
            timestamp: now,
        };
        let approved = contracts::PaymentApproved {
            order_id,
            payment_id: payment_id.clone(),
            approved_amount: Decimal::new(3998, 2),
            currency: "EUR".to_owned(),
            timestamp: now,
        };
        let paid = contracts::OrderPaid {
            order_id,
            payment_id,
            amount: Decimal::new(3998, 2),
            currency: "EUR".to_owned(),
            items: items.clone(),
            timestamp: now,
        };
        let reserved = contracts::StockReserved {
            order_id,
            reservation_id: uuid::Uuid::new_v4().to_string(),
            items,
            timestamp: now,
        };
        let messages = [
            Envelope::new(
                uuid::Uuid::new_v4(),
                contracts::topics::ORDER_PLACED,
                now,
                correlation.clone(),
                None,
                &placed,
            )?,
            Envelope::new(
                uuid::Uuid::new_v4(),
                contracts::topics::PAYMENT_APPROVED,
                now,
                correlation.clone(),
                None,
                &approved,
            )?,
            Envelope::new(
                uuid::Uuid::new_v4(),
                contracts::topics::ORDER_PAID,
                now,
                correlation.clone(),
                None,
                &paid,
            )?,
            Envelope::new(
                uuid::Uuid::new_v4(),
                contracts::topics::STOCK_RESERVED,
                now,
                correlation,
                None,
                &reserved,
            )?,
        ];
        for message in messages {
            tx.send(message.to_json()?)
                .await
                .map_err(|_| anyhow::anyhow!("baseline channel closed"))?;
        }
    }
    drop(tx);
    let received = consumer.await??;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        received == flows * 4,
        "baseline lost messages: {received} of {}",
        flows * 4
    );
    Ok(Row {
        workload: format!("baseline: {flows} flows' 4 JSON messages through raw mpsc"),
        count: flows,
        latency: None,
        throughput: Some((flows as f64 / elapsed.as_secs_f64(), "flows/s")),
        ratio: None,
        note: format!("{} messages encoded + decoded", flows * 4),
    })
}

/// Orders paced at `rate` per second for `seconds`: place → StockReserved committed.
pub async fn paced_latency(
    label: &str,
    stores: Stores,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Row> {
    // When each order's StockReserved change was committed. Sized up front: growing it
    // under its lock would stall the handlers it observes.
    let reserved: Arc<Mutex<HashMap<OrderId, Instant>>> =
        Arc::new(Mutex::new(HashMap::with_capacity(300_000)));
    let noted = reserved.clone();
    let observed = Arc::new(WatchedStore::with_observer(
        stores.store.clone(),
        Arc::new(move |id, status| {
            if status == OrderStatus::StockReserved {
                let now = Instant::now();
                if let Ok(mut map) = noted.lock() {
                    map.insert(id, now);
                }
            }
        }),
    ));
    let system = InProcessSystem::start_with(
        SystemConfig::default(),
        Stores {
            store: observed,
            outbox: stores.outbox.clone(),
            handler_concurrency: stores.handler_concurrency,
        },
        Arc::new(orders_app::SystemClock),
    )
    .await?;
    let total = (rate * seconds) as usize;
    // The timer ticks every millisecond; each tick places the orders due by then.
    let per_tick = (rate / 1000).max(1) as usize;
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut placing = Vec::with_capacity(total);
    let started = Instant::now();
    while placing.len() < total {
        ticker.tick().await;
        for _ in 0..per_tick.min(total - placing.len()) {
            // Each checkout on its own task: a slow store must not slow the pacing.
            let orders = system.orders.clone();
            placing.push(tokio::spawn(async move {
                let t = Instant::now();
                let command = checkout("sku-1", Decimal::new(1999, 2), 1);
                orders
                    .place_order(command, None)
                    .await
                    .map(|placed| (placed.order_id, t))
            }));
        }
    }
    let mut starts: Vec<(OrderId, Instant)> = Vec::with_capacity(total);
    for task in placing {
        starts.push(task.await??);
    }
    let achieved = total as f64 / started.elapsed().as_secs_f64();
    if !system.settle(Duration::from_secs(60)).await {
        system.shutdown().await;
        anyhow::bail!("the paced run did not settle within 60 s");
    }
    let reserved = reserved
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let mut samples: Vec<Duration> = starts
        .iter()
        .filter_map(|(id, t)| {
            reserved
                .get(id)
                .map(|done| done.saturating_duration_since(*t))
        })
        .collect();
    // Stopped before judging, so a failed run leaves no relay running on a closed store.
    system.shutdown().await;
    anyhow::ensure!(
        samples.len() == total,
        "only {} of {total} orders reached StockReserved",
        samples.len()
    );
    Ok(Row {
        workload: format!(
            "latency: {rate} orders/s for {seconds} s, place → StockReserved ({label})"
        ),
        count: total,
        latency: Percentiles::of(&mut samples),
        throughput: Some((achieved, "orders/s offered")),
        ratio: None,
        note: String::new(),
    })
}

fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory now, in bytes (0 where /proc is missing).
#[must_use]
pub fn rss_bytes() -> u64 {
    proc_status_kib("VmRSS:") * 1024
}

/// Peak resident memory since start or the last reset, in bytes.
#[must_use]
pub fn peak_rss_bytes() -> u64 {
    proc_status_kib("VmHWM:") * 1024
}

/// Resets the peak-RSS mark (Linux: write 5 to /proc/self/clear_refs).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
