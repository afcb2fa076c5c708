//! `app serve`: the Orders service as a long-running process: the HTTP API ([`crate::http`]),
//! the Orders subscriber, the outbox relay, a retention task and (by default) the
//! simulated Payments and Stock, all on the in-memory bus.
//!
//! ```text
//! cargo run -p app -- serve                                  # SQLite file ./data/orders.db
//! cargo run -p app -- serve --store memory --listen 127.0.0.1:0
//! ORDERS_STORE=postgres://orders:secret@localhost/orders cargo run -p app -- serve
//! ```
//!
//! It logs one line with the address and the store kind when it listens, and stops on
//! SIGINT or SIGTERM: it stops accepting, lets in-flight requests finish (up to
//! `--shutdown-grace-secs`), stops the relay (which flushes the outbox), the subscriber
//! (which finishes the message in hand), the retention task and the simulators, and logs
//! why it stopped. Start-up failures (store, bind) are errors, never panics.
//!
//! [`spawn`] starts everything and hands back a [`RunningServer`] (its bound address
//! and its shutdown), which is what the tests use with port 0.

use std::{fmt, future::Future, net::SocketAddr, str::FromStr, sync::Arc, time::Duration};

use anyhow::Context as _;
use messaging::{InMemoryBus, InMemoryBusConfig, MessageBus, SubscriptionHandle};
use orders_app::{
    ORDERS_SUBSCRIBER, OrdersConfig, OrdersMessageHandler, OrdersService, OutboxRelay, PruneReport,
    RelayStopped, SystemClock,
};
use payments_sim::{PaymentDecision, PaymentsConfig, PaymentsHandle, PaymentsService};
use rust_decimal::Decimal;
use stock_sim::{StockConfig, StockHandle, StockService};
use tokio::{
    net::TcpListener,
    sync::{oneshot, watch},
    task::JoinHandle,
};

use orders_store::{PostgresOrderStore, SqliteOrderStore};

use crate::{
    http::{self, AppState, StoreAndBusProbe},
    system::Stores,
};

/// Connections the kernel may hold for us before they are accepted. tokio's `bind`
/// (like std's) asks for 128: a burst of more new connections than that (the bench's 256
/// clients at once; any crowd reconnecting after a restart) overflowed it, and each
/// dropped SYN cost its client a one-second retransmission. The kernel caps the value
/// at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 1024;

/// Binds `addr` (address reuse on, as tokio's `bind` does) and listens with
/// [`LISTEN_BACKLOG`].
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The default store: a SQLite file under `./data`.
pub const DEFAULT_STORE: &str = "sqlite:./data/orders.db";
/// The default idempotency window, in seconds (24 h).
pub const DEFAULT_IDEMPOTENCY_WINDOW_SECS: u64 = 86_400;
/// The default time between two retention passes, in seconds.
pub const DEFAULT_RETENTION_INTERVAL_SECS: u64 = 60;
/// The default request timeout, in seconds.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 30;
/// The default time in-flight requests get to finish on shutdown, in seconds.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 30;

/// The settings of `app serve`, from flags and `ORDERS_*` environment variables.
/// `Debug` redacts the store's password.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Address to listen on (`HOST:PORT`; port 0 picks a free port).
    #[arg(long, env = "ORDERS_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Where orders are stored: `memory`, `sqlite:PATH` or `postgres://USER:PASSWORD@HOST/DB`.
    #[arg(long, env = "ORDERS_STORE", default_value = DEFAULT_STORE, hide_env_values = true)]
    pub store: StoreSpec,
    /// Whether Payments and Stock run inside this process (on the in-memory bus).
    #[arg(long, env = "ORDERS_SIMS", value_enum, default_value_t = SimsMode::InProcess)]
    pub sims: SimsMode,
    /// How the in-process simulators behave.
    #[command(flatten)]
    pub simulators: SimulatorFlags,
    /// How long processed payment/reservation ids and inbox records are kept, in seconds.
    #[arg(
        long,
        env = "ORDERS_IDEMPOTENCY_WINDOW_SECS",
        default_value_t = DEFAULT_IDEMPOTENCY_WINDOW_SECS,
        value_parser = clap::value_parser!(u64).range(1..=3_153_600_000)
    )]
    pub idempotency_window_secs: u64,
    /// Time between two retention passes (pruning what is older than the window), in seconds.
    #[arg(
        long,
        env = "ORDERS_RETENTION_INTERVAL_SECS",
        default_value_t = DEFAULT_RETENTION_INTERVAL_SECS,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub retention_interval_secs: u64,
    /// How long one HTTP request may take before it is answered with 503, in seconds.
    #[arg(long, env = "ORDERS_REQUEST_TIMEOUT_SECS", default_value_t = DEFAULT_REQUEST_TIMEOUT_SECS,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_secs: u64,
    /// How long in-flight requests may take to finish on shutdown, in seconds.
    #[arg(long, env = "ORDERS_SHUTDOWN_GRACE_SECS", default_value_t = DEFAULT_SHUTDOWN_GRACE_SECS)]
    pub shutdown_grace_secs: u64,
}

impl ServeConfig {
    /// The defaults, listening on `listen` with `store` (what tests start from).
    #[must_use]
    pub fn new(listen: SocketAddr, store: StoreSpec) -> Self {
        Self {
            listen,
            store,
            sims: SimsMode::InProcess,
            simulators: SimulatorFlags::default(),
            idempotency_window_secs: DEFAULT_IDEMPOTENCY_WINDOW_SECS,
            retention_interval_secs: DEFAULT_RETENTION_INTERVAL_SECS,
            request_timeout_secs: DEFAULT_REQUEST_TIMEOUT_SECS,
            shutdown_grace_secs: DEFAULT_SHUTDOWN_GRACE_SECS,
        }
    }

    /// The Orders service settings these flags ask for.
    #[must_use]
    pub fn orders(&self) -> OrdersConfig {
        let seconds = i64::try_from(self.idempotency_window_secs).unwrap_or(i64::MAX);
        OrdersConfig {
            idempotency_window: chrono::Duration::try_seconds(seconds)
                .unwrap_or_else(orders_domain::default_idempotency_window),
            ..OrdersConfig::default()
        }
    }
}

/// Whether the simulated Payments and Stock run in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SimsMode {
    /// Payments and Stock answer on the in-memory bus, inside this process.
    InProcess,
    /// No simulators: orders wait for Payments and Stock running elsewhere.
    None,
}

/// The behaviour of the in-process simulators (see `payments_sim::PaymentsConfig` and
/// `stock_sim::StockConfig`). The default approves everything and has every product.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct SimulatorFlags {
    /// Payments declines orders whose total is strictly above AMOUNT.
    #[arg(
        long,
        env = "ORDERS_DECLINE_ABOVE",
        value_name = "AMOUNT",
        conflicts_with = "decline_all"
    )]
    pub decline_above: Option<Decimal>,
    /// Payments declines every order.
    #[arg(long, env = "ORDERS_DECLINE_ALL")]
    pub decline_all: bool,
    /// Payments waits this long before answering, in milliseconds.
    #[arg(
        long,
        env = "ORDERS_PAYMENTS_DELAY_MS",
        value_name = "MS",
        default_value_t = 0
    )]
    pub payments_delay_ms: u64,
    /// Stock waits this long before answering, in milliseconds.
    #[arg(
        long,
        env = "ORDERS_STOCK_DELAY_MS",
        value_name = "MS",
        default_value_t = 0
    )]
    pub stock_delay_ms: u64,
    /// A product Stock never has (repeatable; comma-separated in the environment).
    #[arg(
        long = "out-of-stock",
        env = "ORDERS_OUT_OF_STOCK",
        value_name = "SKU",
        value_delimiter = ','
    )]
    pub out_of_stock: Vec<String>,
    /// Payments and Stock publish every answer twice (at-least-once producers).
    #[arg(long, env = "ORDERS_DUPLICATE_REPLIES")]
    pub duplicate_replies: bool,
}

impl SimulatorFlags {
    /// The Payments simulator settings.
    #[must_use]
    pub fn payments(&self) -> PaymentsConfig {
        let decision = match (self.decline_all, self.decline_above) {
            (true, _) => PaymentDecision::DeclineAll,
            (false, Some(limit)) => PaymentDecision::DeclineAbove(limit),
            (false, None) => PaymentDecision::ApproveAll,
        };
        PaymentsConfig::default()
            .decision(decision)
            .delay(Duration::from_millis(self.payments_delay_ms))
            .duplicate_replies(self.duplicate_replies)
    }

    /// The Stock simulator settings.
    #[must_use]
    pub fn stock(&self) -> StockConfig {
        StockConfig::default()
            .out_of_stock(self.out_of_stock.iter().map(|sku| sku.trim().to_owned()))
            .delay(Duration::from_millis(self.stock_delay_ms))
            .duplicate_replies(self.duplicate_replies)
    }
}

/// Which store adapter to use, parsed from `--store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// `memory`: everything is lost when the process stops.
    Memory,
    /// `sqlite:PATH` (or `sqlite://PATH`): a file, created with its folder if missing.
    Sqlite(String),
    /// `postgres://…` or `postgresql://…`; the password is redacted in `Debug` and logs.
    Postgres(SecretUrl),
}

impl StoreSpec {
    /// `memory`, `sqlite` or `postgres`.
    #[must_use]
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

impl FromStr for StoreSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "memory" {
            return Ok(Self::Memory);
        }
        if let Some(rest) = s.strip_prefix("sqlite:") {
            let path = sqlite_path(rest);
            if path.is_empty() {
                return Err("a sqlite store needs a path: sqlite:PATH".to_owned());
            }
            return Ok(Self::Sqlite(s.to_owned()));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(Self::Postgres(SecretUrl(s.to_owned())));
        }
        Err(format!(
            "unknown store `{}`: use `memory`, `sqlite:PATH` or `postgres://USER:PASSWORD@HOST/DB`",
            redact_url(s)
        ))
    }
}

impl fmt::Display for StoreSpec {
    /// The spec as given, with the password redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::Sqlite(url) => f.write_str(url),
            Self::Postgres(url) => fmt::Display::fmt(url, f),
        }
    }
}

/// The path part of a `sqlite:` URL (after the scheme, before any `?` options).
fn sqlite_path(rest: &str) -> &str {
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    rest.split('?').next().unwrap_or_default()
}

/// A connection URL holding a password: `Debug` and `Display` show it redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The URL with its password, for the driver only; never log it.
    #[must_use]
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({:?})", redact_url(&self.0))
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

/// Replaces the password of `scheme://user:password@host/…` and the value of any query
/// parameter whose name contains `password` with `***`.
#[must_use]
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.to_ascii_lowercase().contains("password") => {
                        format!("{key}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// An opened store adapter: the ports the service uses, and what to close on shutdown.
pub struct OpenedStore {
    /// The ports (orders + outbox + inbox, and the relay's view of the outbox).
    pub stores: Stores,
    /// The concrete adapter, kept to close it (SQLite checkpoints its WAL on close).
    adapter: Adapter,
}

impl fmt::Debug for OpenedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenedStore").finish_non_exhaustive()
    }
}

enum Adapter {
    Memory,
    Sqlite(Arc<SqliteOrderStore>),
    Postgres(Arc<PostgresOrderStore>),
}

impl OpenedStore {
    /// Outbox rows parked because they could not be decoded; `None` for the in-memory
    /// store (it cannot hold an undecodable row) or when the store does not answer.
    pub async fn parked(&self) -> Option<u64> {
        match &self.adapter {
            Adapter::Memory => None,
            Adapter::Sqlite(store) => store.parked().await.ok(),
            Adapter::Postgres(store) => store.parked().await.ok(),
        }
    }

    /// Closes the adapter's connections; the ports fail as unavailable afterwards.
    pub async fn close(&self) {
        match &self.adapter {
            Adapter::Memory => {}
            Adapter::Sqlite(store) => store.close().await,
            Adapter::Postgres(store) => store.close().await,
        }
    }
}

/// Opens the store adapter `spec` names, running its migrations (a SQLite file is
/// created with its folder when missing).
///
/// # Errors
/// When the store cannot be reached, opened or migrated; the message never holds the
/// password.
pub async fn open_store(spec: &StoreSpec) -> anyhow::Result<OpenedStore> {
    match spec {
        StoreSpec::Memory => Ok(OpenedStore {
            stores: Stores::in_memory(),
            adapter: Adapter::Memory,
        }),
        StoreSpec::Sqlite(url) => {
            let store = Arc::new(SqliteOrderStore::connect(url).await?);
            Ok(OpenedStore {
                stores: Stores::durable(store.clone()),
                adapter: Adapter::Sqlite(store),
            })
        }
        StoreSpec::Postgres(url) => {
            let store = Arc::new(PostgresOrderStore::connect(url.expose_secret()).await?);
            Ok(OpenedStore {
                stores: Stores::durable(store.clone()),
                adapter: Adapter::Postgres(store),
            })
        }
    }
}

/// Why the service stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// SIGINT (Ctrl-C).
    Interrupted,
    /// SIGTERM.
    Terminated,
    /// [`RunningServer::shutdown`] was called (tests, embedding).
    Requested,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Interrupted => "interrupted (SIGINT)",
            Self::Terminated => "terminated (SIGTERM)",
            Self::Requested => "shutdown requested",
        })
    }
}

/// A started service: its address, and everything [`RunningServer::shutdown`] stops.
pub struct RunningServer {
    /// The address actually bound (the real port when 0 was asked for).
    local_addr: SocketAddr,
    /// The Orders use cases the API runs on (for tests and embedding).
    orders: OrdersService,
    /// Fired to stop accepting connections; axum then drains the open ones.
    stop_accepting: Option<oneshot::Sender<()>>,
    /// The HTTP server; ends when every connection is closed after `stop_accepting`.
    http: Option<JoinHandle<std::io::Result<()>>>,
    /// Set to `true` to stop the relay and the retention task.
    stop_background: watch::Sender<bool>,
    /// The outbox relay; flushes once more when stopped.
    relay: JoinHandle<RelayStopped>,
    /// The retention task.
    retention: JoinHandle<()>,
    /// The Orders subscriber on the bus.
    subscription: SubscriptionHandle,
    /// The in-process simulators, when `--sims in-process`.
    simulators: Option<(PaymentsHandle, StockHandle)>,
    /// How long in-flight requests get on shutdown.
    shutdown_grace: Duration,
    /// The store adapter, closed last.
    store: Arc<OpenedStore>,
}

impl fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// Opens the store, binds the listener, starts the subscriber, the simulators, the relay,
/// the retention task and the HTTP server, and returns once it accepts connections.
///
/// # Errors
/// When the store cannot be opened, the address cannot be bound, or a subscription fails;
/// whatever was started is stopped again.
pub async fn spawn(config: ServeConfig) -> anyhow::Result<RunningServer> {
    let opened = open_store(&config.store).await.with_context(|| {
        format!(
            "cannot open the {} store {}",
            config.store.kind(),
            config.store
        )
    })?;
    let opened = Arc::new(opened);
    let stores = opened.stores.clone();
    let listener =
        listen(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
    let local_addr = listener
        .local_addr()
        .context("cannot read the bound address")?;

    let bus = InMemoryBus::new(InMemoryBusConfig::default());
    let shared: Arc<dyn MessageBus> = Arc::new(bus.clone());
    // Committed changes wake blocking reads (`GET /orders/{id}?afterVersion=&waitMs=`).
    let changes = Arc::new(crate::changes::OrderChanges::default());
    let watched = Arc::new(crate::changes::WatchedStore::new(
        stores.store.clone(),
        changes.clone(),
    ));
    let orders = OrdersService::new(watched, Arc::new(SystemClock), config.orders());
    // Dropped handles stop their workers, so an early return below leaves nothing running.
    let subscription = shared
        .subscribe(
            OrdersMessageHandler::subscription().concurrency(stores.handler_concurrency),
            Arc::new(OrdersMessageHandler::new(orders.clone())),
        )
        .await
        .context("cannot subscribe the Orders handler")?;
    let simulators = match config.sims {
        SimsMode::InProcess => {
            let payments = PaymentsService::start(shared.clone(), config.simulators.payments())
                .await
                .context("cannot start the Payments simulator")?;
            let stock = StockService::start(shared.clone(), config.simulators.stock())
                .await
                .context("cannot start the Stock simulator")?;
            Some((payments, stock))
        }
        SimsMode::None => {
            tracing::warn!("no simulators: orders wait for Payments and Stock on the bus");
            None
        }
    };

    // The in-memory bus lived and died with the previous process: whatever it held then
    // is gone. Orders still waiting on Payments or Stock get their request sent again
    // (same message id; the simulators and inboxes are idempotent).
    match stores.outbox.requeue_stalled(chrono::Utc::now()).await {
        Ok(0) => {}
        Ok(requeued) => tracing::warn!(
            requeued,
            "re-sending the pending request of orders still waiting after a restart"
        ),
        Err(e) => tracing::error!(error = %e, "cannot requeue the requests of waiting orders"),
    }
    let (stop_background, stop_rx) = watch::channel(false);
    let relay =
        tokio::spawn(OutboxRelay::new(stores.outbox.clone(), shared).run(stopped(stop_rx.clone())));
    let retention = tokio::spawn(retention(
        orders.clone(),
        Duration::from_secs(config.retention_interval_secs),
        stopped(stop_rx),
    ));

    let probe_bus = bus.clone();
    let probe = StoreAndBusProbe::new(stores.store.clone(), move || {
        probe_bus.is_attached(ORDERS_SUBSCRIBER)
    });
    let state = AppState::new(orders.clone(), Arc::new(probe))
        .request_timeout(Duration::from_secs(config.request_timeout_secs))
        .changes(changes)
        .stats(Arc::new(ServiceStats {
            bus: bus.clone(),
            outbox: stores.outbox.clone(),
            store: opened.clone(),
        }));
    let (stop_accepting, stop_accepting_rx) = oneshot::channel::<()>();
    let http = tokio::spawn(async move {
        axum::serve(listener, http::router(state))
            .with_graceful_shutdown(async move {
                let _ = stop_accepting_rx.await;
            })
            .await
    });
    tracing::info!(listen = %local_addr, store = config.store.kind(), store_url = %config.store,
        sims = ?config.sims, "orders service listening on http://{local_addr}");
    Ok(RunningServer {
        local_addr,
        orders,
        stop_accepting: Some(stop_accepting),
        http: Some(http),
        stop_background,
        relay,
        retention,
        subscription,
        simulators,
        shutdown_grace: Duration::from_secs(config.shutdown_grace_secs),
        store: opened,
    })
}

/// `GET /stats` of the running service.
struct ServiceStats {
    bus: InMemoryBus,
    outbox: Arc<dyn orders_app::Outbox>,
    store: Arc<OpenedStore>,
}

#[async_trait::async_trait]
impl http::StatsProbe for ServiceStats {
    async fn stats(&self) -> http::Stats {
        http::Stats {
            dead_letters: self.bus.dead_letters().len() as u64,
            parked_outbox_rows: self.store.parked().await,
            unsent_outbox_rows: self.outbox.unsent().await.ok(),
        }
    }
}

/// Resolves once `stop` turns `true` (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Prunes what is older than the idempotency window every `every`, until `shutdown`.
async fn retention(orders: OrdersService, every: Duration, shutdown: impl Future<Output = ()>) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticker.tick() => prune_once(&orders).await,
        }
    }
    tracing::info!("retention task stopped");
}

/// One retention pass; a failure is logged and retried at the next tick.
async fn prune_once(orders: &OrdersService) {
    match orders.prune().await {
        Ok(report) if report == PruneReport::default() => {
            tracing::debug!("retention: nothing to prune");
        }
        Ok(report) => {
            tracing::info!(
                inbox = report.inbox,
                outbox = report.outbox,
                "retention: pruned"
            );
        }
        Err(error) => tracing::warn!(%error, "retention pass failed; will retry"),
    }
}

impl RunningServer {
    /// The address the server listens on.
    #[must_use]
    pub const fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The Orders use cases behind the API.
    #[must_use]
    pub const fn orders(&self) -> &OrdersService {
        &self.orders
    }

    /// Runs until `signal` resolves (e.g. [`shutdown_signal`]), then shuts down. Returns
    /// why it stopped.
    ///
    /// # Errors
    /// When the HTTP server fails on its own (it is then shut down as well).
    pub async fn run_until(
        mut self,
        signal: impl Future<Output = StopReason>,
    ) -> anyhow::Result<StopReason> {
        let Some(mut http) = self.http.take() else {
            anyhow::bail!("the HTTP server is not running");
        };
        tokio::select! {
            reason = signal => {
                self.http = Some(http);
                self.shutdown(reason).await?;
                Ok(reason)
            }
            ended = &mut http => {
                let error = match ended {
                    Ok(Ok(())) => anyhow::anyhow!("the HTTP server stopped on its own"),
                    Ok(Err(e)) => anyhow::Error::new(e).context("the HTTP server failed"),
                    Err(e) => anyhow::Error::new(e).context("the HTTP server task failed"),
                };
                tracing::error!(
                    error = format!("{error:#}"),
                    "orders service stopping: HTTP server ended"
                );
                self.stop_background().await;
                Err(error)
            }
        }
    }

    /// Graceful shutdown: stops accepting, lets in-flight requests finish (up to the
    /// grace period), then stops the relay (after a last flush), the subscriber (after
    /// the message in hand), the retention task and the simulators. Logs `reason`.
    ///
    /// # Errors
    /// When the HTTP server failed while draining; everything else is stopped anyway.
    pub async fn shutdown(mut self, reason: StopReason) -> anyhow::Result<()> {
        tracing::info!(%reason, "orders service shutting down: no new connections");
        if let Some(stop) = self.stop_accepting.take() {
            let _ = stop.send(());
        }
        let mut outcome = Ok(());
        if let Some(mut http) = self.http.take() {
            match tokio::time::timeout(self.shutdown_grace, &mut http).await {
                Ok(Ok(Ok(()))) => tracing::info!("in-flight requests finished"),
                Ok(Ok(Err(e))) => {
                    outcome = Err(anyhow::Error::new(e).context("the HTTP server failed"))
                }
                Ok(Err(e)) => {
                    outcome = Err(anyhow::Error::new(e).context("the HTTP server task failed"))
                }
                Err(_) => {
                    tracing::warn!(
                        grace = ?self.shutdown_grace,
                        "requests still in flight after the grace period: aborted"
                    );
                    http.abort();
                }
            }
        }
        self.stop_background().await;
        tracing::info!(%reason, "orders service stopped");
        outcome
    }

    /// Stops everything but the HTTP server, in order: relay (flush), subscriber,
    /// retention, simulators, and closes the store.
    async fn stop_background(self) {
        let _ = self.stop_background.send(true);
        match self.relay.await {
            Ok(RelayStopped::Shutdown) => {}
            Err(e) => tracing::error!(error = %e, "outbox relay task failed"),
        }
        self.subscription.unsubscribe().await;
        if let Err(e) = self.retention.await {
            tracing::error!(error = %e, "retention task failed");
        }
        if let Some((payments, stock)) = self.simulators {
            payments.stop().await;
            stock.stop().await;
        }
        self.store.close().await;
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM with which one it was. A signal that cannot be
/// listened for is logged and never fires.
pub async fn shutdown_signal() -> StopReason {
    let interrupt = async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => StopReason::Interrupted,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGINT");
                std::future::pending().await
            }
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
                StopReason::Terminated
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending().await
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<StopReason>();
    tokio::select! {
        reason = interrupt => reason,
        reason = terminate => reason,
    }
}

/// `app serve`: starts the service and runs it until SIGINT or SIGTERM.
///
/// # Errors
/// Start-up failures (store, bind, subscriptions) and a failing HTTP server; each is
/// logged before it is returned.
pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    tracing::debug!(?config, "starting the orders service");
    let server = match spawn(config).await {
        Ok(server) => server,
        Err(error) => {
            tracing::error!(
                error = format!("{error:#}"),
                "orders service could not start"
            );
            return Err(error);
        }
    };
    server.run_until(shutdown_signal()).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeConfig,
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_300_connections_is_queued_not_dropped() {
        // Nothing accepts: the kernel holds the connections in the listen queue. With
        // tokio's default backlog of 128 the rest of the SYNs were dropped, and their
        // clients retried after a second.
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects: Vec<_> = (0..300)
            .map(|_| {
                tokio::spawn(async move {
                    tokio::time::timeout(
                        Duration::from_millis(700),
                        tokio::net::TcpStream::connect(addr),
                    )
                    .await
                })
            })
            .collect();
        let mut connected = Vec::new();
        for connect in connects {
            connected.push(
                connect
                    .await
                    .unwrap()
                    .expect("connect waited for a SYN retry")
                    .unwrap(),
            );
        }
        assert_eq!(connected.len(), 300);
        drop(listener);
    }

    #[test]
    fn the_postgres_password_is_redacted_in_debug_and_display() {
        let spec: StoreSpec = "postgres://orders:s3cret@db:5432/orders?sslmode=require&password=p2"
            .parse()
            .unwrap();
        let shown = format!("{spec:?} {spec}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("p2"),
            "{shown}"
        );
        assert_eq!(
            spec.to_string(),
            "postgres://orders:***@db:5432/orders?sslmode=require&password=***"
        );
    }

    #[test]
    fn store_specs_parse_by_scheme() {
        assert_eq!("memory".parse::<StoreSpec>(), Ok(StoreSpec::Memory));
        assert_eq!(
            "sqlite:./data/orders.db"
                .parse::<StoreSpec>()
                .map(|s| s.kind()),
            Ok("sqlite")
        );
        assert_eq!(
            "postgresql://h/db".parse::<StoreSpec>().map(|s| s.kind()),
            Ok("postgres")
        );
        assert!("sqlite:".parse::<StoreSpec>().is_err());
        assert!(
            "mysql://u:pw@h/db"
                .parse::<StoreSpec>()
                .is_err_and(|e| !e.contains("pw"))
        );
    }

    #[test]
    fn flags_build_the_typed_config() {
        let cli = Cli::try_parse_from([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "memory",
            "--sims",
            "none",
            "--decline-above",
            "100.50",
            "--out-of-stock",
            "sku-1",
            "--out-of-stock",
            "sku-2",
            "--duplicate-replies",
            "--payments-delay-ms",
            "5",
        ])
        .unwrap();
        let config = cli.serve;
        assert_eq!(config.store, StoreSpec::Memory);
        assert_eq!(config.sims, SimsMode::None);
        assert_eq!(
            config.simulators.payments().decision,
            PaymentDecision::DeclineAbove(Decimal::new(10050, 2))
        );
        assert_eq!(config.simulators.payments().delay, Duration::from_millis(5));
        assert!(config.simulators.stock().out_of_stock.contains("sku-2"));
        assert!(config.simulators.stock().duplicate_replies);
    }

    #[test]
    fn decline_all_and_decline_above_conflict() {
        let parsed = Cli::try_parse_from(["serve", "--decline-all", "--decline-above", "1"]);
        assert!(parsed.is_err());
    }

    #[test]
    fn an_unknown_store_is_a_clear_error() {
        let error = Cli::try_parse_from(["serve", "--store", "redis://x"]).unwrap_err();
        assert!(error.to_string().contains("unknown store"), "{error}");
    }
}
