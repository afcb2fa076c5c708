//! A rough throughput probe of the store adapters through the Orders service: complete
//! order flows (checkout, `payment.approved`, `stock.reserved`, each handled by the real
//! `OrdersMessageHandler`), with the outbox relay running beside them on a bus that
//! accepts everything. Each flow is 3 commits, 2 inbox checks, 2 loads and 2 relayed
//! messages. The clock stops when the last flow is done and the outbox is empty.
//!
//! ```text
//! cargo run --release -p orders-store --example store_flows -- sqlite [FLOWS] [CONCURRENCY]
//! cargo run --release -p orders-store --example store_flows -- memory
//! ORDERS_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo run --release -p orders-store --example store_flows -- postgres
//! ```
//! SQLite runs on a temp file (removed after); PostgreSQL in a fresh schema (dropped after).
//! `ORDERS_BENCH_PG_CONNECTIONS` sets the PostgreSQL store's connections (default 16);
//! `ORDERS_BENCH_PG_ASYNC_COMMIT=1` turns `synchronous_commit` off, to see how much of the
//! time is the WAL flush (diagnosis only). Defaults: 20,000 flows, 64 concurrent tasks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use orders_app::{
    AddressInput, HandlingOutcome, ItemInput, OrderStore, OrdersConfig, OrdersMessageHandler,
    OrdersService, Outbox, OutboxRelay, PlaceOrder, SystemClock,
    messaging::{BusError, Envelope, MessageBus, MessageHandler, Subscription, SubscriptionHandle},
};
use orders_store::{
    InMemoryOrderStore, PostgresOrderStore, SqliteOrderStore,
    scratch::{self, ScratchFile, ScratchSchema},
};
use rust_decimal::Decimal;

/// Total time and count of one kind of store call.
#[derive(Default)]
struct Timing {
    nanos: AtomicU64,
    calls: AtomicU64,
}

impl Timing {
    fn add(&self, since: Instant) {
        self.nanos
            .fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    fn show(&self, name: &str) -> String {
        let calls = self.calls.load(Ordering::Relaxed).max(1);
        format!(
            "{name} {:.0}µs",
            self.nanos.load(Ordering::Relaxed) as f64 / calls as f64 / 1000.0
        )
    }
}

/// The store, timing each call (to see where a flow waits).
struct Timed {
    inner: Arc<dyn OrderStore>,
    load: Timing,
    handled: Timing,
    commit: Timing,
}

#[async_trait]
impl OrderStore for Timed {
    async fn load(
        &self,
        id: orders_domain::OrderId,
    ) -> Result<Option<orders_domain::Order>, orders_app::StoreError> {
        let t = Instant::now();
        let r = self.inner.load(id).await;
        self.load.add(t);
        r
    }
    async fn is_handled(&self, s: &str, m: uuid::Uuid) -> Result<bool, orders_app::StoreError> {
        let t = Instant::now();
        let r = self.inner.is_handled(s, m).await;
        self.handled.add(t);
        r
    }
    async fn find_by_idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<orders_domain::OrderId>, orders_app::StoreError> {
        self.inner.find_by_idempotency_key(key).await
    }
    async fn due_for_payment(
        &self,
        now: orders_domain::Timestamp,
        limit: usize,
    ) -> Result<Vec<orders_domain::OrderId>, orders_app::StoreError> {
        self.inner.due_for_payment(now, limit).await
    }
    async fn commit(&self, commit: orders_app::Commit) -> Result<u64, orders_app::StoreError> {
        let t = Instant::now();
        let r = self.inner.commit(commit).await;
        self.commit.add(t);
        r
    }
    async fn messages(
        &self,
        id: orders_domain::OrderId,
    ) -> Result<Vec<orders_app::MessageRecord>, orders_app::StoreError> {
        self.inner.messages(id).await
    }
    async fn prune(
        &self,
        before: orders_domain::Timestamp,
    ) -> Result<orders_app::PruneReport, orders_app::StoreError> {
        self.inner.prune(before).await
    }
}

/// Accepts and counts every message.
#[derive(Default)]
struct CountingBus(AtomicU64);

#[async_trait]
impl MessageBus for CountingBus {
    async fn publish(&self, _envelope: Envelope) -> Result<(), BusError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn subscribe(
        &self,
        _subscription: Subscription,
        _handler: Arc<dyn MessageHandler>,
    ) -> Result<SubscriptionHandle, BusError> {
        Err(BusError::Transport("no subscribers here".to_owned()))
    }
}

fn checkout() -> PlaceOrder {
    PlaceOrder {
        customer_id: "customer-1".to_owned(),
        currency: "EUR".to_owned(),
        items: vec![ItemInput {
            product_id: "sku-1".to_owned(),
            quantity: 2,
            price: Decimal::from_str("10.25").unwrap(),
        }],
        shipping_address: AddressInput {
            street: "Main Street 1".to_owned(),
            city: "Berlin".to_owned(),
            postal_code: "10115".to_owned(),
            country: "DE".to_owned(),
        },
    }
}

async fn flow(service: &OrdersService, handler: &OrdersMessageHandler) {
    let placed = service.place_order(checkout(), None).await.unwrap();
    let order_id = placed.order_id.as_uuid();
    let now = chrono::Utc::now();
    let payment = Envelope::new(
        uuid::Uuid::now_v7(),
        contracts::topics::PAYMENT_APPROVED,
        now,
        order_id.to_string(),
        None,
        &contracts::PaymentApproved {
            order_id,
            payment_id: format!("pay-{order_id}"),
            approved_amount: Decimal::from_str("20.5").unwrap(),
            currency: "EUR".to_owned(),
            timestamp: now,
        },
    )
    .unwrap();
    assert_eq!(
        handler.dispatch(&payment).await.unwrap(),
        HandlingOutcome::Applied
    );
    let reservation = Envelope::new(
        uuid::Uuid::now_v7(),
        contracts::topics::STOCK_RESERVED,
        now,
        order_id.to_string(),
        Some(payment.message_id),
        &contracts::StockReserved {
            order_id,
            reservation_id: format!("res-{order_id}"),
            items: vec![contracts::ItemQuantity {
                product_id: "sku-1".to_owned(),
                quantity: 2,
            }],
            timestamp: now,
        },
    )
    .unwrap();
    assert_eq!(
        handler.dispatch(&reservation).await.unwrap(),
        HandlingOutcome::Applied
    );
}

async fn measure(store: Arc<dyn OrderStore>, outbox: Arc<dyn Outbox>, flows: usize, tasks: usize) {
    let timed = Arc::new(Timed {
        inner: store,
        load: Timing::default(),
        handled: Timing::default(),
        commit: Timing::default(),
    });
    let service = OrdersService::new(
        timed.clone(),
        Arc::new(SystemClock),
        OrdersConfig::default(),
    );
    let handler = OrdersMessageHandler::new(service.clone());
    let bus = Arc::new(CountingBus::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let relay =
        OutboxRelay::new(outbox.clone(), bus.clone()).poll_interval(Duration::from_millis(50));
    let relay = tokio::spawn(relay.run(async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|s| *s).await;
    }));

    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..tasks {
        let (service, handler, next) = (service.clone(), handler.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < flows as u64 {
                flow(&service, &handler).await;
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let flows_done = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    while outbox.unsent().await.unwrap() > 0 {
        assert!(
            Instant::now() < deadline,
            "the relay did not drain the outbox"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    let _ = stop.send(true);
    relay.await.unwrap();
    println!(
        "{flows} flows, {tasks} tasks: {:.0} flows/s ({:.2?} for the flows, {:.2?} until the outbox was empty; {} messages relayed)",
        flows as f64 / elapsed.as_secs_f64(),
        flows_done,
        elapsed,
        bus.0.load(Ordering::Relaxed),
    );
    println!(
        "mean latency per call: {}, {}, {}",
        timed.load.show("load"),
        timed.handled.show("is_handled"),
        timed.commit.show("commit")
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backend = args.first().map_or("sqlite", String::as_str).to_owned();
    let flows: usize = args.get(1).map_or(20_000, |a| a.parse().unwrap());
    let tasks: usize = args.get(2).map_or(64, |a| a.parse().unwrap());
    match backend.as_str() {
        "memory" => {
            let store = Arc::new(InMemoryOrderStore::new());
            measure(store.clone(), store, flows, tasks).await;
        }
        "sqlite" => {
            let file = ScratchFile::new();
            let store = Arc::new(SqliteOrderStore::connect(&file.url()).await.unwrap());
            measure(store.clone(), store.clone(), flows, tasks).await;
            store.close().await;
        }
        "postgres" => {
            let url = scratch::postgres_admin_url().unwrap_or_else(|| {
                panic!(
                    "set {}, e.g. postgres://postgres@127.0.0.1:5432/test",
                    scratch::POSTGRES_URL_VAR
                )
            });
            let schema = ScratchSchema::create(&url).await.unwrap();
            let connections: u32 =
                std::env::var("ORDERS_BENCH_PG_CONNECTIONS").map_or(16, |n| n.parse().unwrap());
            let mut options = schema.connect_options();
            if std::env::var_os("ORDERS_BENCH_PG_ASYNC_COMMIT").is_some() {
                // Diagnosis only: how much of a commit is the WAL flush.
                options = options.options([("synchronous_commit", "off")]);
            }
            let store = Arc::new(
                PostgresOrderStore::connect_with(options, connections)
                    .await
                    .unwrap(),
            );
            measure(store.clone(), store.clone(), flows, tasks).await;
            store.close().await;
            schema.remove().await.unwrap();
        }
        other => panic!("unknown backend {other}: memory, sqlite or postgres"),
    }
}
