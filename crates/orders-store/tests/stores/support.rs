//! Fixtures of the store tests: a fresh store per test for each adapter (in-memory,
//! SQLite file, SQLite in memory, PostgreSQL schema), cleaned up after the check even when
//! it fails; a bus that records what it is given and refuses on demand; order builders.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use orders_app::{
    Commit, InboxRecord, OrderStore, Outbox, envelope_for,
    messaging::{
        BusError, Envelope, MessageBus, MessageHandler, MessageId, Subscription, SubscriptionHandle,
    },
};
use orders_domain::{
    Currency, CustomerId, Money, Order, OrderId, OrderItem, ProductId, Quantity, ShippingAddress,
    Timestamp,
};
use orders_store::{
    InMemoryOrderStore, PostgresOrderStore, SqliteOrderStore,
    scratch::{self, ScratchFile, ScratchSchema},
};
use rust_decimal::Decimal;
use sqlx::{Connection, Executor, PgConnection, postgres::PgConnectOptions};
use uuid::Uuid;

/// How long a test waits for a condition before it fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The adapters under test.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Memory,
    SqliteFile,
    SqliteInMemory,
    Postgres,
}

/// What a check gets: the store behind both ports, and, for the SQL adapters, raw access.
pub struct Fixture {
    pub store: Arc<dyn OrderStore>,
    pub outbox: Arc<dyn Outbox>,
    /// SQL-level access; `None` for the in-memory adapter.
    pub sql: Option<Arc<dyn SqlAccess>>,
}

impl Fixture {
    /// Whether sent outbox rows are kept (and pruned later) rather than dropped at once.
    pub fn keeps_sent_rows(&self) -> bool {
        self.sql.is_some()
    }
}

/// What the tests do below the ports.
#[async_trait]
pub trait SqlAccess: Send + Sync {
    /// Inserts an outbox row whose envelope is not an envelope, straight with SQL.
    async fn insert_corrupt_outbox_row(&self, order_id: OrderId);
    /// Parked outbox rows.
    async fn parked(&self) -> u64;
}

#[async_trait]
impl SqlAccess for SqliteOrderStore {
    async fn insert_corrupt_outbox_row(&self, order_id: OrderId) {
        self.execute_admin(&format!(
            "INSERT INTO outbox (message_id, order_id, topic, envelope, created_at) \
             VALUES ('{}', '{order_id}', 'order.placed', '{{\"messageId\": 42', \
                     '2026-01-05T10:00:00.000000000Z')",
            Uuid::new_v4()
        ))
        .await
        .unwrap();
    }

    async fn parked(&self) -> u64 {
        SqliteOrderStore::parked(self).await.unwrap()
    }
}

/// SQL access to a store in a PostgreSQL schema: a connection of its own.
pub struct PgAccess {
    store: Arc<PostgresOrderStore>,
    options: PgConnectOptions,
}

#[async_trait]
impl SqlAccess for PgAccess {
    async fn insert_corrupt_outbox_row(&self, order_id: OrderId) {
        let mut conn = PgConnection::connect_with(&self.options).await.unwrap();
        conn.execute(
            format!(
                "INSERT INTO outbox (message_id, order_id, topic, envelope, created_at) \
                 VALUES ('{}', '{order_id}', 'order.placed', '{{\"messageId\": 42', now())",
                Uuid::new_v4()
            )
            .as_str(),
        )
        .await
        .unwrap();
        conn.close().await.unwrap();
    }

    async fn parked(&self) -> u64 {
        self.store.parked().await.unwrap()
    }
}

/// Runs `check` on a fresh store of `backend`, then cleans up, then re-raises a failure.
/// PostgreSQL checks are skipped (or fail under CI) without `ORDERS_TEST_POSTGRES_URL`.
pub async fn run<F, Fut>(backend: Backend, check: F)
where
    F: FnOnce(Fixture) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (fixture, cleanup) = match backend {
        Backend::Memory => {
            let store = Arc::new(InMemoryOrderStore::new());
            let fixture = Fixture {
                store: store.clone(),
                outbox: store,
                sql: None,
            };
            (fixture, Cleanup::Nothing)
        }
        Backend::SqliteFile => {
            let file = ScratchFile::new();
            let store = Arc::new(SqliteOrderStore::connect(path_of(&file)).await.unwrap());
            let fixture = Fixture {
                store: store.clone(),
                outbox: store.clone(),
                sql: Some(store.clone()),
            };
            (fixture, Cleanup::Sqlite(store, file))
        }
        Backend::SqliteInMemory => {
            let store = Arc::new(SqliteOrderStore::connect("sqlite::memory:").await.unwrap());
            let fixture = Fixture {
                store: store.clone(),
                outbox: store.clone(),
                sql: Some(store),
            };
            (fixture, Cleanup::Nothing)
        }
        Backend::Postgres => {
            let Some(schema) = PgSchema::create().await else {
                return;
            };
            let store = Arc::new(schema.connect().await);
            let fixture = Fixture {
                store: store.clone(),
                outbox: store.clone(),
                sql: Some(Arc::new(PgAccess {
                    store: store.clone(),
                    options: schema.options(),
                })),
            };
            (fixture, Cleanup::Postgres(store, schema))
        }
    };
    let outcome = tokio::spawn(check(fixture)).await;
    cleanup.run().await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("check did not finish: {e}"),
        }
    }
}

enum Cleanup {
    Nothing,
    Sqlite(Arc<SqliteOrderStore>, ScratchFile),
    Postgres(Arc<PostgresOrderStore>, PgSchema),
}

impl Cleanup {
    async fn run(self) {
        match self {
            Self::Nothing => {}
            Self::Sqlite(store, file) => {
                store.close().await;
                drop(file);
            }
            Self::Postgres(store, schema) => {
                store.close().await;
                schema.drop().await;
            }
        }
    }
}

/// The path of a scratch SQLite file, as text.
pub fn path_of(file: &ScratchFile) -> &str {
    file.path().to_str().unwrap()
}

/// The PostgreSQL server to test against, from `ORDERS_TEST_POSTGRES_URL`. Without it:
/// a failure under CI (the adapter must not go untested there), else a skip.
pub fn postgres_url() -> Option<String> {
    match scratch::postgres_admin_url() {
        Some(url) => Some(url),
        None if std::env::var_os("CI").is_some() => panic!(
            "{} is not set but CI is: the PostgreSQL adapter must be tested in CI \
             (e.g. {}=postgres://postgres@127.0.0.1:5432/test)",
            scratch::POSTGRES_URL_VAR,
            scratch::POSTGRES_URL_VAR,
        ),
        None => {
            eprintln!("skipping: {} not set", scratch::POSTGRES_URL_VAR);
            None
        }
    }
}

/// Runs `test` with a fresh schema, then drops the schema, then re-raises a failure.
/// Skipped (or failing under CI) without `ORDERS_TEST_POSTGRES_URL`.
pub async fn with_schema<F, Fut>(test: F)
where
    F: FnOnce(Arc<PgSchema>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let schema = Arc::new(schema);
    let outcome = tokio::spawn(test(schema.clone())).await;
    if let Ok(schema) = Arc::try_unwrap(schema) {
        schema.drop().await;
    }
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test did not finish: {e}"),
        }
    }
}

/// A fresh schema for one test, dropped with everything in it at the end.
pub struct PgSchema(ScratchSchema);

impl PgSchema {
    pub async fn create() -> Option<Self> {
        let url = postgres_url()?;
        Some(Self(ScratchSchema::create(&url).await.unwrap()))
    }

    /// Connection options with the search path set to this schema.
    pub fn options(&self) -> PgConnectOptions {
        self.0.connect_options()
    }

    /// A plain connection to this schema, to look at it from outside the store.
    pub async fn inspect(&self) -> PgConnection {
        PgConnection::connect_with(&self.options()).await.unwrap()
    }

    /// A store in this schema (migrations applied).
    pub async fn connect(&self) -> PostgresOrderStore {
        PostgresOrderStore::connect_with(self.options(), 4)
            .await
            .unwrap()
    }

    pub async fn drop(self) {
        self.0.remove().await.unwrap();
    }
}

/// A bus that records what it accepts and, on demand, refuses.
#[derive(Default)]
pub struct RecordingBus {
    published: Mutex<Vec<Envelope>>,
    /// How many more messages it accepts; `None`: all.
    accepts: Mutex<Option<usize>>,
}

impl RecordingBus {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Accepts `n` more messages, then refuses every one until [`RecordingBus::heal`].
    pub fn fail_after(&self, n: usize) {
        *self.accepts.lock().unwrap() = Some(n);
    }

    pub fn heal(&self) {
        *self.accepts.lock().unwrap() = None;
    }

    pub fn published(&self) -> Vec<Envelope> {
        self.published.lock().unwrap().clone()
    }

    pub fn ids(&self) -> Vec<MessageId> {
        self.published().iter().map(|e| e.message_id).collect()
    }
}

#[async_trait]
impl MessageBus for RecordingBus {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        let mut accepts = self.accepts.lock().unwrap();
        match accepts.as_mut() {
            Some(0) => return Err(BusError::Transport("bus down (test)".to_owned())),
            Some(n) => *n -= 1,
            None => {}
        }
        self.published.lock().unwrap().push(envelope);
        Ok(())
    }

    async fn subscribe(
        &self,
        _subscription: Subscription,
        _handler: Arc<dyn MessageHandler>,
    ) -> Result<SubscriptionHandle, BusError> {
        Err(BusError::Transport(
            "the recording bus has no subscribers".to_owned(),
        ))
    }
}

/// 2026-01-05T10:00:00Z plus `seconds`.
pub fn at(seconds: i64) -> Timestamp {
    Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap() + chrono::Duration::seconds(seconds)
}

pub fn eur(amount: &str) -> Money {
    Money::new(
        Decimal::from_str_exact(amount).unwrap(),
        Currency::new("EUR").unwrap(),
    )
    .unwrap()
}

/// A new order (version 0, its `order.placed` pending): 0.1 + 0.2 + 3 × 19.99 = 60.27 EUR.
pub fn new_order_with_id(id: OrderId, now: Timestamp) -> Order {
    let item = |product: &str, quantity: u32, price: &str| {
        OrderItem::new(
            ProductId::new(product).unwrap(),
            Quantity::new(quantity).unwrap(),
            eur(price),
        )
    };
    Order::place(
        id,
        CustomerId::new("customer-1").unwrap(),
        vec![
            item("sku-a", 1, "0.1"),
            item("sku-b", 1, "0.2"),
            item("sku-c", 3, "19.99"),
        ],
        ShippingAddress::new("Main Street 1", "Berlin", "10115", "DE").unwrap(),
        now,
    )
    .unwrap()
}

pub fn new_order(now: Timestamp) -> Order {
    new_order_with_id(OrderId::random(), now)
}

/// The integration messages of the order's pending events.
pub fn messages_of(order: &mut Order, causation: Option<MessageId>) -> Vec<Envelope> {
    order
        .take_events()
        .iter()
        .map(|event| envelope_for(event, causation).unwrap())
        .collect()
}

/// Commits `order` with its pending events; returns it saved.
pub async fn save(store: &dyn OrderStore, mut order: Order, inbox: Option<InboxRecord>) -> Order {
    let causation = inbox.as_ref().map(|r| r.message_id);
    let outbox = messages_of(&mut order, causation);
    let version = store
        .commit(Commit {
            order: Some(order.clone()),
            outbox,
            inbox,
            idempotency_key: None,
        })
        .await
        .unwrap();
    order.mark_saved(version);
    order
}

/// Places and stores a new order at `now`.
pub async fn place(store: &dyn OrderStore, now: Timestamp) -> Order {
    save(store, new_order(now), None).await
}

/// A checkout of 2 × 10.50 EUR, as the Orders service takes it.
pub fn checkout() -> orders_app::PlaceOrder {
    orders_app::PlaceOrder {
        customer_id: "customer-1".to_owned(),
        currency: "EUR".to_owned(),
        items: vec![orders_app::ItemInput {
            product_id: "sku-a".to_owned(),
            quantity: 2,
            price: Decimal::new(1050, 2),
        }],
        shipping_address: orders_app::AddressInput {
            street: "Main Street 1".to_owned(),
            city: "Berlin".to_owned(),
            postal_code: "10115".to_owned(),
            country: "DE".to_owned(),
        },
    }
}

/// How many `order.cancelled` the order's history says it sent.
pub async fn cancellations_sent(store: &dyn OrderStore, id: OrderId) -> usize {
    store
        .messages(id)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.direction == orders_app::Direction::Sent && r.topic == "order.cancelled")
        .count()
}

/// Places and stores a new order at `now` whose payment is due at `due_at`.
pub async fn place_due(store: &dyn OrderStore, now: Timestamp, due_at: Timestamp) -> Order {
    save(store, new_order(now).with_payment_deadline(due_at), None).await
}

/// How many migrations of `backend` (`sqlite`, `postgres`) there are: the schema version
/// a fully migrated database has.
pub fn migrations(backend: &str) -> i64 {
    let folder = format!("{}/migrations/{backend}", env!("CARGO_MANIFEST_DIR"));
    let count = std::fs::read_dir(folder)
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
    i64::try_from(count).unwrap()
}

/// The inbox record of a message handled by the `orders` subscriber.
pub fn handled(
    order_id: OrderId,
    topic: &str,
    outcome: orders_app::HandlingOutcome,
    now: Timestamp,
) -> InboxRecord {
    InboxRecord {
        subscriber: "orders".to_owned(),
        message_id: Uuid::new_v4(),
        topic: topic.to_owned(),
        order_id,
        outcome,
        handled_at: now,
    }
}

/// An inbox-only commit (a duplicate or a rejection).
pub fn inbox_only(record: InboxRecord) -> Commit {
    Commit {
        order: None,
        outbox: vec![],
        inbox: Some(record),
        idempotency_key: None,
    }
}
