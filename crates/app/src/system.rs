//! Wiring: builds the whole Orders system in one process (in-memory bus, a store
//! adapter, the Orders service with its subscriber and outbox relay, and the simulated
//! Payments and Stock contexts). Used by the demo, the end-to-end tests and the bench.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use messaging::{
    BusError, Envelope, HandlerError, InMemoryBus, InMemoryBusConfig, MessageBus, MessageHandler,
    Subscription, SubscriptionHandle,
};
use orders_app::{
    Clock, OrderStore, OrdersConfig, OrdersMessageHandler, OrdersService, Outbox, OutboxRelay,
    PaymentDeadlines, RelayStopped, SystemClock,
};
use orders_domain::{Order, OrderId, OrderStatus};
use orders_store::InMemoryOrderStore;
use parking_lot::Mutex;
use payments_sim::{PaymentsConfig, PaymentsHandle, PaymentsService};
use stock_sim::{StockConfig, StockHandle, StockService};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    changes::{OrderChanges, RelayedOutbox, WatchedStore},
    telemetry::{Instruments, Telemetry},
};

/// The storage adapters the system runs on.
#[derive(Clone)]
pub struct Stores {
    /// Orders + outbox + inbox.
    pub store: Arc<dyn OrderStore>,
    /// The relay's view of the outbox (usually the same object).
    pub outbox: Arc<dyn Outbox>,
    /// How many messages the Orders handler handles at once (one at a time per order).
    pub handler_concurrency: usize,
}

/// The Orders handler's concurrency on the in-memory store: a commit is a few
/// microseconds of CPU, so more lanes only add wake-ups.
pub const IN_MEMORY_HANDLER_CONCURRENCY: usize = 4;
/// The Orders handler's concurrency on a database (SQLite, PostgreSQL): each handler
/// mostly waits for its commit, and both stores write the commits that wait together
/// in one transaction (group commit), so many in flight make few, full transactions
/// (the figures behind 256 are in BENCHMARKS.md, "Design choices").
pub const DURABLE_HANDLER_CONCURRENCY: usize = 256;

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
    #[must_use]
    pub fn durable<S: OrderStore + Outbox + 'static>(store: Arc<S>) -> Self {
        Self {
            store: store.clone(),
            outbox: store,
            handler_concurrency: DURABLE_HANDLER_CONCURRENCY,
        }
    }
}

/// Settings of an in-process system.
#[derive(Debug, Clone, Default)]
pub struct SystemConfig {
    /// The in-memory bus.
    pub bus: InMemoryBusConfig,
    /// The Orders service, its payment timeout included (the deadline task checks every
    /// quarter of it, at most every second, on the clock the system is started with).
    pub orders: OrdersConfig,
    /// Simulated Payments behaviour.
    pub payments: PaymentsConfig,
    /// Simulated Stock behaviour.
    pub stock: StockConfig,
    /// Record every message per correlation id (demo and tests; memory grows with it).
    pub tap: bool,
}

/// A running in-process system.
pub struct InProcessSystem {
    /// The bus everything talks over.
    pub bus: InMemoryBus,
    /// The Orders use cases.
    pub orders: OrdersService,
    /// The outbox the relay drains.
    pub outbox: Arc<dyn Outbox>,
    /// Simulated Payments (`None` while paused).
    pub payments: Option<PaymentsHandle>,
    /// Simulated Stock (`None` while paused).
    pub stock: Option<StockHandle>,
    /// The bus as the port, for restarting a simulator.
    shared: Arc<dyn MessageBus>,
    /// How the simulators were configured, for restarting one.
    sims: (PaymentsConfig, StockConfig),
    /// Every message seen, per correlation id, when `tap` was on.
    pub tap: Option<Arc<Tap>>,
    /// Wakes whoever waits for an order to change (every commit touching it).
    changes: Arc<OrderChanges>,
    /// The outbox as the relay sees it: says when a relay pass ends.
    relayed: Arc<RelayedOutbox>,
    orders_subscription: SubscriptionHandle,
    tap_subscription: Option<SubscriptionHandle>,
    stop_relay: watch::Sender<bool>,
    relay: JoinHandle<RelayStopped>,
    /// Cancels orders unpaid past their deadline; stops with the relay.
    deadlines: JoinHandle<()>,
}

impl std::fmt::Debug for InProcessSystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessSystem").finish_non_exhaustive()
    }
}

impl InProcessSystem {
    /// Starts everything on the in-memory store with the system clock.
    ///
    /// # Errors
    /// A [`BusError`] when a subscription fails.
    pub async fn start(config: SystemConfig) -> Result<Self, BusError> {
        Self::start_with(config, Stores::in_memory(), Arc::new(SystemClock)).await
    }

    /// Starts everything on `stores`, reading time from `clock`.
    ///
    /// # Errors
    /// A [`BusError`] when a subscription fails.
    pub async fn start_with(
        config: SystemConfig,
        stores: Stores,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, BusError> {
        let bus = InMemoryBus::new(config.bus.clone());
        let shared: Arc<dyn MessageBus> = Arc::new(bus.clone());
        let tap = config.tap.then(|| Arc::new(Tap::default()));
        let tap_subscription = match &tap {
            Some(tap) => {
                let mut subscription = Subscription::new("tap");
                for topic in contracts::topics::ALL {
                    subscription = subscription.topic(topic);
                }
                Some(shared.subscribe(subscription, tap.clone()).await?)
            }
            None => None,
        };
        // Spans and metrics cost next to nothing until the process installs a tracing
        // layer or a metrics recorder (the telemetry tests do).
        let instruments = Instruments::new(Telemetry::On);
        let changes = Arc::new(OrderChanges::default().on_finished(instruments.finished_orders()));
        let watched = Arc::new(WatchedStore::new(stores.store.clone(), changes.clone()));
        let orders = OrdersService::new(watched, clock, config.orders.clone());
        let orders_subscription = shared
            .subscribe(
                OrdersMessageHandler::subscription().concurrency(stores.handler_concurrency),
                instruments.orders_handler(OrdersMessageHandler::new(orders.clone())),
            )
            .await?;
        let shared_for_sims = instruments.subscriber_bus(shared.clone());
        let payments =
            PaymentsService::start(shared_for_sims.clone(), config.payments.clone()).await?;
        let stock = StockService::start(shared_for_sims.clone(), config.stock.clone()).await?;
        let (stop_relay, mut stop_rx) = watch::channel(false);
        let relayed = Arc::new(RelayedOutbox::new(stores.outbox.clone()));
        let relay = OutboxRelay::new(relayed.clone(), instruments.relay_bus(shared));
        let mut stop_deadlines = stop_rx.clone();
        let relay = tokio::spawn(relay.run(async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        }));
        let deadlines = PaymentDeadlines::new(
            orders.clone(),
            PaymentDeadlines::tick_for(config.orders.payment_timeout),
        );
        let deadlines = tokio::spawn(deadlines.run(async move {
            let _ = stop_deadlines.wait_for(|stop| *stop).await;
        }));
        Ok(Self {
            bus,
            orders,
            outbox: stores.outbox,
            payments: Some(payments),
            stock: Some(stock),
            shared: shared_for_sims,
            sims: (config.payments.clone(), config.stock.clone()),
            tap,
            changes,
            relayed,
            orders_subscription,
            tap_subscription,
            stop_relay,
            relay,
            deadlines,
        })
    }

    /// Waits until nothing is left to do: the outbox is empty, no relay pass is in hand,
    /// and every subscriber is idle. Returns whether that happened before `timeout`.
    /// Woken by the bus going idle and by the relay's passes, never by polling.
    pub async fn settle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let relayed = self.relayed.relayed().notified();
            tokio::pin!(relayed);
            relayed.as_mut().enable();
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !self.bus.wait_idle(remaining).await {
                return false;
            }
            // Idle handlers commit nothing new: only the relay can still add work, from
            // rows unsent or in hand. Checked in this order, so a row published between
            // two checks leaves the bus busy for the last one.
            if self.outbox.unsent().await.unwrap_or(1) == 0
                && !self.relayed.relaying()
                && self.bus.is_idle()
            {
                return true;
            }
            if tokio::time::timeout_at(deadline, relayed).await.is_err() {
                return false;
            }
        }
    }

    /// Waits until the order has `status`, or `timeout` passes; woken by each commit
    /// that touches the order.
    ///
    /// # Errors
    /// A message with the order's last status when the deadline passes.
    pub async fn wait_for_status(
        &self,
        id: OrderId,
        status: OrderStatus,
        timeout: Duration,
    ) -> Result<Order, String> {
        let orders = &self.orders;
        let reached = self
            .changes
            .wait_for(id, timeout, move || async move {
                orders
                    .order(id)
                    .await
                    .ok()
                    .filter(|order| order.status() == status)
            })
            .await;
        match reached {
            Some(order) => Ok(order),
            None => {
                let order = self.orders.order(id).await.ok();
                Err(format!(
                    "order {id} did not reach {status} within {timeout:?}; it is {}",
                    order.map_or_else(|| "missing".to_owned(), |o| o.status().to_string())
                ))
            }
        }
    }

    /// Who waits for which order: woken by every commit that touches an order (its
    /// change, or the inbox record of a message about it).
    #[must_use]
    pub fn changes(&self) -> &Arc<OrderChanges> {
        &self.changes
    }

    /// Takes Payments away (it finishes the message in hand). Its consumer group stays:
    /// what is published meanwhile waits for [`InProcessSystem::resume_payments`].
    /// Scenarios use it to decide what happens first without relying on timing.
    pub async fn pause_payments(&mut self) {
        if let Some(payments) = self.payments.take() {
            payments.stop().await;
        }
    }

    /// Brings Payments back; it receives, in order, what was published while it was away.
    ///
    /// # Errors
    /// A [`BusError`] when it cannot subscribe again.
    pub async fn resume_payments(&mut self) -> Result<(), BusError> {
        if self.payments.is_none() {
            self.payments =
                Some(PaymentsService::start(self.shared.clone(), self.sims.0.clone()).await?);
        }
        Ok(())
    }

    /// Takes Stock away, like [`InProcessSystem::pause_payments`].
    pub async fn pause_stock(&mut self) {
        if let Some(stock) = self.stock.take() {
            stock.stop().await;
        }
    }

    /// Brings Stock back, like [`InProcessSystem::resume_payments`].
    ///
    /// # Errors
    /// A [`BusError`] when it cannot subscribe again.
    pub async fn resume_stock(&mut self) -> Result<(), BusError> {
        if self.stock.is_none() {
            self.stock = Some(StockService::start(self.shared.clone(), self.sims.1.clone()).await?);
        }
        Ok(())
    }

    /// Stops the payment deadline task, the relay (after a last flush), the subscribers
    /// and the simulators.
    pub async fn shutdown(self) {
        let _ = self.stop_relay.send(true);
        if let Err(e) = self.deadlines.await {
            tracing::error!(error = %e, "payment deadline task failed");
        }
        if let Err(e) = self.relay.await {
            tracing::error!(error = %e, "relay task failed");
        }
        self.orders_subscription.unsubscribe().await;
        if let Some(payments) = self.payments {
            payments.stop().await;
        }
        if let Some(stock) = self.stock {
            stock.stop().await;
        }
        if let Some(tap) = self.tap_subscription {
            tap.unsubscribe().await;
        }
    }
}

/// Records every message, per correlation id, in the order delivered.
#[derive(Debug, Default)]
pub struct Tap {
    seen: Mutex<HashMap<String, Vec<Envelope>>>,
}

impl Tap {
    /// The messages of one correlation id (order), in order.
    #[must_use]
    pub fn messages(&self, correlation_id: &str) -> Vec<Envelope> {
        self.seen
            .lock()
            .get(correlation_id)
            .cloned()
            .unwrap_or_default()
    }

    /// How many messages of `topic` the order had.
    #[must_use]
    pub fn count(&self, correlation_id: &str, topic: &str) -> usize {
        self.messages(correlation_id)
            .iter()
            .filter(|e| e.topic == topic)
            .count()
    }
}

#[async_trait]
impl MessageHandler for Tap {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        self.seen
            .lock()
            .entry(envelope.correlation_id.clone())
            .or_default()
            .push(envelope.clone());
        Ok(())
    }
}
