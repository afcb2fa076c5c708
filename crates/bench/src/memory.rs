//! The in-memory rows: publish latency on the in-memory bus next to a raw mpsc send,
//! flows/s of the whole system on the in-memory store next to the same four JSON
//! messages per flow through a raw channel, and paced latency.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use messaging::{Envelope, HandlerError, InMemoryBus, MessageBus, MessageHandler, Subscription};
use rust_decimal::Decimal;

use crate::{
    flows::{paced_latency, throughput},
    report::{Percentiles, Row},
    system::Stores,
};

/// The `memory` group: publish latency and its baseline, throughput, its raw baseline
/// and ratio, and paced latency.
///
/// # Errors
/// When a workload does not complete.
pub async fn rows(
    publishes: usize,
    orders: usize,
    clients: usize,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    eprintln!("bench: publish latency ({publishes} publishes)…");
    rows.extend(publish_latency(publishes).await?);
    eprintln!("bench: raw baseline ({orders} flows)…");
    let baseline = raw_baseline(orders).await?;
    eprintln!("bench: throughput ({orders} orders, {clients} clients)…");
    let mut ours = throughput("in-memory", Stores::in_memory(), orders, clients).await?;
    if let (Some((o, _)), Some((raw, _))) = (ours.throughput, baseline.throughput) {
        ours.ratio = Some(format!("{:.2} × raw", o / raw));
    }
    rows.push(ours);
    rows.push(baseline);
    eprintln!("bench: paced latency ({rate} orders/s for {seconds} s)…");
    rows.push(paced_latency("in-memory", Stores::in_memory(), rate, seconds).await?);
    Ok(rows)
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
    let ours = Percentiles::of(&samples);
    let base = Percentiles::of(&raw);
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
