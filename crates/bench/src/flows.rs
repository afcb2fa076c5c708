//! The service rows, on any store: flows/s of the whole in-process system (checkouts as
//! fast as accepted, until every order is StockReserved), and paced place →
//! StockReserved latency.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use orders_domain::{OrderId, OrderStatus};
use rust_decimal::Decimal;

use crate::{
    report::{Percentiles, Row},
    rss::{peak_rss_bytes, reset_peak_rss, rss_bytes},
    system::{ObservedStore, Stores, System, checkout},
};

/// Places `n` orders from `clients` tasks as fast as accepted; waits until all settled.
///
/// # Errors
/// When the system cannot start, a checkout fails, or the orders do not all reach
/// StockReserved within 120 s.
pub async fn throughput(
    label: &str,
    stores: Stores,
    n: usize,
    clients: usize,
) -> anyhow::Result<Row> {
    reset_peak_rss();
    let rss_before = rss_bytes();
    let system = System::start(stores).await?;
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

/// Orders paced at `rate` per second for `seconds`: place → StockReserved committed.
///
/// # Errors
/// When the system cannot start, a checkout fails, or the orders do not all reach
/// StockReserved within 60 s of the last one.
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
    let observed = Arc::new(ObservedStore::new(
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
    let system = System::start(stores.with_store(observed)).await?;
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
    let samples: Vec<Duration> = starts
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
        latency: Percentiles::of(&samples),
        throughput: Some((achieved, "orders/s offered")),
        ratio: None,
        note: String::new(),
    })
}
