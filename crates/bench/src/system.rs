//! The bench's wiring: the whole Orders system in one process (in-memory bus, a store
//! adapter, the Orders service with its subscriber and outbox relay, simulated Payments
//! and Stock), set up as `app` sets it up for the demo and the service, with the
//! defaults of every part. Also the store adapters on a scratch database, a store
//! decorator that reports commits (for timing), and the checkout command the rows place.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use messaging::{InMemoryBus, MessageBus, MessageId, SubscriptionHandle};
use orders_app::{
    AddressInput, Commit, ItemInput, MessageRecord, OrderStore, OrdersConfig, OrdersMessageHandler,
    OrdersService, Outbox, OutboxRelay, PlaceOrder, PruneReport, RelayStopped, StoreError,
    SystemClock,
};
use orders_domain::{Order, OrderId, OrderStatus, Timestamp};
use orders_store::{InMemoryOrderStore, PostgresOrderStore, SqliteOrderStore};
use payments_sim::{PaymentsConfig, PaymentsHandle, PaymentsService};
use rust_decimal::Decimal;
use stock_sim::{StockConfig, StockHandle, StockService};
use tokio::{sync::watch, task::JoinHandle};

/// The Orders handler's concurrency on the in-memory store, as in `app`: a commit is a
/// few microseconds of CPU, so more lanes only add wake-ups.
const IN_MEMORY_HANDLER_CONCURRENCY: usize = 4;
/// The Orders handler's concurrency on a database, as in `app`: handlers mostly wait for
/// their commit, and both stores group the commits that wait together.
const DURABLE_HANDLER_CONCURRENCY: usize = 256;

/// The storage adapters the system runs on.
#[derive(Clone)]
pub struct Stores {
    /// Orders + outbox + inbox.
    pub store: Arc<dyn OrderStore>,
    /// The relay's view of the outbox (the same object).
    pub outbox: Arc<dyn Outbox>,
    /// How many messages the Orders handler handles at once (one at a time per order).
    pub handler_concurrency: usize,
}

impl Stores {
    /// The in-memory adapter.
    #[must_use]
    pub fn in_memory() -> Self {
        let store = Arc::new(InMemoryOrderStore::new());
        Self {
            store: store.clone(),
            outbox: store,
            handler_concurrency: IN_MEMORY_HANDLER_CONCURRENCY,
        }
    }

    /// A database adapter (SQLite, PostgreSQL), which is both the store and the outbox.
    fn durable<S: OrderStore + Outbox + 'static>(store: Arc<S>) -> Self {
        Self {
            store: store.clone(),
            outbox: store,
            handler_concurrency: DURABLE_HANDLER_CONCURRENCY,
        }
    }

    /// The same adapters with `store` (a decorator of this one's) in front.
    #[must_use]
    pub fn with_store(self, store: Arc<dyn OrderStore>) -> Self {
        Self { store, ..self }
    }
}

/// A database store opened for a workload; [`OpenedStore::close`] closes its connections
/// (SQLite checkpoints its WAL on close).
pub enum OpenedStore {
    /// `sqlite:PATH`.
    Sqlite(Arc<SqliteOrderStore>),
    /// `postgres://…`.
    Postgres(Arc<PostgresOrderStore>),
}

impl OpenedStore {
    /// Opens the store `url` names (`sqlite:PATH` or `postgres://…`), applying the
    /// migrations.
    ///
    /// # Errors
    /// When the store cannot be reached, opened or migrated.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        Ok(if url.starts_with("sqlite:") {
            Self::Sqlite(Arc::new(SqliteOrderStore::connect(url).await?))
        } else {
            Self::Postgres(Arc::new(PostgresOrderStore::connect(url).await?))
        })
    }

    /// The ports on this store.
    #[must_use]
    pub fn stores(&self) -> Stores {
        match self {
            Self::Sqlite(store) => Stores::durable(store.clone()),
            Self::Postgres(store) => Stores::durable(store.clone()),
        }
    }

    /// Closes the adapter's connections.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(store) => store.close().await,
            Self::Postgres(store) => store.close().await,
        }
    }
}

/// A running in-process system with default settings.
pub struct System {
    /// The bus everything talks over.
    bus: InMemoryBus,
    /// The Orders use cases.
    pub orders: OrdersService,
    /// The outbox the relay drains.
    outbox: Arc<dyn Outbox>,
    payments: PaymentsHandle,
    stock: StockHandle,
    orders_subscription: SubscriptionHandle,
    stop_relay: watch::Sender<bool>,
    relay: JoinHandle<RelayStopped>,
}

impl System {
    /// Starts everything on `stores`, with the system clock.
    ///
    /// # Errors
    /// When a subscription fails.
    pub async fn start(stores: Stores) -> anyhow::Result<Self> {
        let bus = InMemoryBus::default();
        let shared: Arc<dyn MessageBus> = Arc::new(bus.clone());
        let orders = OrdersService::new(
            stores.store.clone(),
            Arc::new(SystemClock),
            OrdersConfig::default(),
        );
        let orders_subscription = shared
            .subscribe(
                OrdersMessageHandler::subscription().concurrency(stores.handler_concurrency),
                Arc::new(OrdersMessageHandler::new(orders.clone())),
            )
            .await?;
        let payments = PaymentsService::start(shared.clone(), PaymentsConfig::default()).await?;
        let stock = StockService::start(shared.clone(), StockConfig::default()).await?;
        let (stop_relay, mut stop_rx) = watch::channel(false);
        let relay = OutboxRelay::new(stores.outbox.clone(), shared);
        let relay = tokio::spawn(relay.run(async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        }));
        Ok(Self {
            bus,
            orders,
            outbox: stores.outbox,
            payments,
            stock,
            orders_subscription,
            stop_relay,
            relay,
        })
    }

    /// Waits until nothing is left to do: the outbox is empty and every subscriber idle.
    /// Returns whether that happened before `timeout`.
    pub async fn settle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !self.bus.wait_idle(remaining).await {
                return false;
            }
            if self.outbox.unsent().await.unwrap_or(1) == 0 && self.bus.is_idle() {
                // Re-check after letting the relay run: it may hold a batch in hand.
                tokio::task::yield_now().await;
                if self.outbox.unsent().await.unwrap_or(1) == 0 && self.bus.is_idle() {
                    return true;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Stops the relay (after a last flush), the subscriber and the simulators.
    pub async fn shutdown(self) {
        let _ = self.stop_relay.send(true);
        if let Err(e) = self.relay.await {
            tracing::error!(error = %e, "relay task failed");
        }
        self.orders_subscription.unsubscribe().await;
        self.payments.stop().await;
        self.stock.stop().await;
    }
}

/// Called after each successful commit of an order, with its id and new status.
pub type CommitObserver = Arc<dyn Fn(OrderId, OrderStatus) + Send + Sync>;

/// An [`OrderStore`] that reports every committed order change to an observer (the
/// paced rows time StockReserved with it).
pub struct ObservedStore {
    inner: Arc<dyn OrderStore>,
    observer: CommitObserver,
}

impl ObservedStore {
    /// Decorates `inner`, calling `observer` after each commit of an order.
    #[must_use]
    pub fn new(inner: Arc<dyn OrderStore>, observer: CommitObserver) -> Self {
        Self { inner, observer }
    }
}

#[async_trait]
impl OrderStore for ObservedStore {
    async fn load(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        self.inner.load(id).await
    }
    async fn is_handled(
        &self,
        subscriber: &str,
        message_id: MessageId,
    ) -> Result<bool, StoreError> {
        self.inner.is_handled(subscriber, message_id).await
    }
    async fn find_by_idempotency_key(&self, key: &str) -> Result<Option<OrderId>, StoreError> {
        self.inner.find_by_idempotency_key(key).await
    }
    async fn due_for_payment(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<OrderId>, StoreError> {
        self.inner.due_for_payment(now, limit).await
    }
    async fn commit(&self, commit: Commit) -> Result<u64, StoreError> {
        let changed = commit.order.as_ref().map(|o| (o.id(), o.status()));
        let version = self.inner.commit(commit).await?;
        if let Some((id, status)) = changed {
            (self.observer)(id, status);
        }
        Ok(version)
    }
    async fn messages(&self, id: OrderId) -> Result<Vec<MessageRecord>, StoreError> {
        self.inner.messages(id).await
    }
    async fn prune(&self, before: Timestamp) -> Result<PruneReport, StoreError> {
        self.inner.prune(before).await
    }
}

/// The checkout the rows place: one item line, the demo's customer and address.
#[must_use]
pub fn checkout(product: &str, price: Decimal, quantity: i64) -> PlaceOrder {
    PlaceOrder {
        customer_id: "customer-42".to_owned(),
        currency: "EUR".to_owned(),
        items: vec![ItemInput {
            product_id: product.to_owned(),
            quantity,
            price,
        }],
        shipping_address: AddressInput {
            street: "Hauptstrasse 1".to_owned(),
            city: "Berlin".to_owned(),
            postal_code: "10115".to_owned(),
            country: "DE".to_owned(),
        },
    }
}
