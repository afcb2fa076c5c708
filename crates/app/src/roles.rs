//! `app payments` and `app stock`: the simulated Payments and Stock as services of their
//! own, on the NATS bus that Orders (`app serve --bus nats://… --sims none`) uses.
//!
//! ```text
//! cargo run -p app -- serve    --bus nats://127.0.0.1:4222 --sims none
//! cargo run -p app -- payments --bus nats://127.0.0.1:4222 --decline-above 500
//! cargo run -p app -- stock    --bus nats://127.0.0.1:4222 --out-of-stock sku-404
//! ```
//!
//! Each takes the behaviour flags it has in `serve` ([`PaymentsFlags`], [`StockFlags`],
//! `--duplicate-replies`), listens on its own small HTTP port (`GET /healthz`: the process
//! answers; `GET /readyz`: 200 while the bus is connected, else 503), logs one line when
//! it listens, and stops gracefully on SIGINT or SIGTERM (no new connections, then the
//! simulator unsubscribes after the message in hand). Every flag is also an environment
//! variable. The in-memory bus is refused: it cannot reach another process.
//!
//! Each also serves the dead-letter console of its own group (`GET /dead-letters`,
//! `POST /dead-letters/{id}/replay`, as in `serve`, see [`crate::http::dead_letters`]):
//! behind `--auth-tokens-file` when given; without it only on a loopback address.

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{
    Json, Router,
    extract::State,
    response::{IntoResponse, Response},
    routing::get,
};
use payments_sim::{PaymentsHandle, PaymentsService};
use serde_json::json;
use stock_sim::{StockHandle, StockService};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use crate::{
    bus::{BusFlags, ConnectedBus},
    http::{Problem, ProblemType, Tokens, dead_letters},
    serve::{PaymentsFlags, StockFlags, StopReason, shutdown_signal},
    telemetry::Instruments,
};

/// The default listen address of `app payments`.
pub const DEFAULT_PAYMENTS_LISTEN: &str = "127.0.0.1:8081";
/// The default listen address of `app stock`.
pub const DEFAULT_STOCK_LISTEN: &str = "127.0.0.1:8082";
/// The default time in-flight requests get to finish on shutdown, in seconds.
pub const DEFAULT_ROLE_SHUTDOWN_GRACE_SECS: u64 = 5;

/// The settings of `app payments`.
#[derive(Debug, Clone, clap::Args)]
pub struct PaymentsRoleConfig {
    /// Address of the health endpoints (`HOST:PORT`; port 0 picks a free port).
    #[arg(long, env = "ORDERS_PAYMENTS_LISTEN", default_value = DEFAULT_PAYMENTS_LISTEN)]
    pub listen: SocketAddr,
    /// The bus shared with Orders (`nats://HOST:PORT`).
    #[command(flatten)]
    pub bus: BusFlags,
    /// How Payments behaves.
    #[command(flatten)]
    pub payments: PaymentsFlags,
    /// Publish every answer twice (an at-least-once producer).
    #[arg(long, env = "ORDERS_DUPLICATE_REPLIES")]
    pub duplicate_replies: bool,
    /// How long in-flight requests may take to finish on shutdown, in seconds.
    #[arg(long, env = "ORDERS_SHUTDOWN_GRACE_SECS", default_value_t = DEFAULT_ROLE_SHUTDOWN_GRACE_SECS)]
    pub shutdown_grace_secs: u64,
    /// Bearer tokens for the dead-letter routes (the format of `serve`'s); without it
    /// they are served on a loopback address only.
    #[arg(long, env = "ORDERS_AUTH_TOKENS_FILE", value_name = "PATH")]
    pub auth_tokens_file: Option<PathBuf>,
    /// Metrics (`GET /metrics`) and traces, or neither (`off`).
    #[arg(long, env = "ORDERS_TELEMETRY", value_enum, default_value_t = crate::telemetry::Telemetry::On)]
    pub telemetry: crate::telemetry::Telemetry,
}

/// The settings of `app stock`.
#[derive(Debug, Clone, clap::Args)]
pub struct StockRoleConfig {
    /// Address of the health endpoints (`HOST:PORT`; port 0 picks a free port).
    #[arg(long, env = "ORDERS_STOCK_LISTEN", default_value = DEFAULT_STOCK_LISTEN)]
    pub listen: SocketAddr,
    /// The bus shared with Orders (`nats://HOST:PORT`).
    #[command(flatten)]
    pub bus: BusFlags,
    /// How Stock behaves.
    #[command(flatten)]
    pub stock: StockFlags,
    /// Publish every answer twice (an at-least-once producer).
    #[arg(long, env = "ORDERS_DUPLICATE_REPLIES")]
    pub duplicate_replies: bool,
    /// How long in-flight requests may take to finish on shutdown, in seconds.
    #[arg(long, env = "ORDERS_SHUTDOWN_GRACE_SECS", default_value_t = DEFAULT_ROLE_SHUTDOWN_GRACE_SECS)]
    pub shutdown_grace_secs: u64,
    /// Bearer tokens for the dead-letter routes (the format of `serve`'s); without it
    /// they are served on a loopback address only.
    #[arg(long, env = "ORDERS_AUTH_TOKENS_FILE", value_name = "PATH")]
    pub auth_tokens_file: Option<PathBuf>,
    /// Metrics (`GET /metrics`) and traces, or neither (`off`).
    #[arg(long, env = "ORDERS_TELEMETRY", value_enum, default_value_t = crate::telemetry::Telemetry::On)]
    pub telemetry: crate::telemetry::Telemetry,
}

/// The simulator a role runs.
enum Simulator {
    Payments(PaymentsHandle),
    Stock(StockHandle),
}

impl Simulator {
    async fn stop(self) {
        match self {
            Self::Payments(handle) => handle.stop().await,
            Self::Stock(handle) => handle.stop().await,
        }
    }
}

/// A started `payments` or `stock` process: its address, and what its shutdown stops.
pub struct RunningRole {
    name: &'static str,
    local_addr: SocketAddr,
    stop_accepting: Option<oneshot::Sender<()>>,
    http: Option<JoinHandle<std::io::Result<()>>>,
    simulator: Simulator,
    shutdown_grace: Duration,
}

impl std::fmt::Debug for RunningRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningRole")
            .field("name", &self.name)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// `app payments`: starts Payments and runs it until SIGINT or SIGTERM.
///
/// # Errors
/// Start-up failures (the in-memory bus, NATS unreachable or without JetStream, bind,
/// subscription) and a failing HTTP server.
pub async fn run_payments(config: PaymentsRoleConfig) -> anyhow::Result<()> {
    let role = spawn_payments(config).await.inspect_err(|error| {
        tracing::error!(error = format!("{error:#}"), "payments could not start");
    })?;
    role.run_until(shutdown_signal()).await.map(|_| ())
}

/// `app stock`: starts Stock and runs it until SIGINT or SIGTERM.
///
/// # Errors
/// As [`run_payments`].
pub async fn run_stock(config: StockRoleConfig) -> anyhow::Result<()> {
    let role = spawn_stock(config).await.inspect_err(|error| {
        tracing::error!(error = format!("{error:#}"), "stock could not start");
    })?;
    role.run_until(shutdown_signal()).await.map(|_| ())
}

/// Connects the bus, subscribes Payments, and serves its health endpoints.
///
/// # Errors
/// As [`run_payments`]; whatever was started is stopped again.
pub async fn spawn_payments(config: PaymentsRoleConfig) -> anyhow::Result<RunningRole> {
    let bus = shared_bus("payments", &config.bus).await?;
    let console = dead_letter_console(
        &bus,
        payments_sim::CONSUMER_GROUP,
        config.auth_tokens_file.as_deref(),
        config.listen,
    )?;
    let listener = bind(config.listen).await?;
    let instruments = Instruments::new(config.telemetry);
    let handle = PaymentsService::start(
        instruments.subscriber_bus(bus.shared()),
        config
            .payments
            .config(config.duplicate_replies)
            .lanes_at_least(config.bus.bus.simulator_lanes()),
    )
    .await
    .context("cannot start the Payments simulator")?;
    serve(
        "payments",
        listener,
        (bus, &config.bus),
        Simulator::Payments(handle),
        (config.shutdown_grace_secs, instruments),
        console,
    )
}

/// Connects the bus, subscribes Stock, and serves its health endpoints.
///
/// # Errors
/// As [`run_payments`]; whatever was started is stopped again.
pub async fn spawn_stock(config: StockRoleConfig) -> anyhow::Result<RunningRole> {
    let bus = shared_bus("stock", &config.bus).await?;
    let console = dead_letter_console(
        &bus,
        stock_sim::CONSUMER_GROUP,
        config.auth_tokens_file.as_deref(),
        config.listen,
    )?;
    let listener = bind(config.listen).await?;
    let instruments = Instruments::new(config.telemetry);
    let handle = StockService::start(
        instruments.subscriber_bus(bus.shared()),
        config
            .stock
            .config(config.duplicate_replies)
            .lanes_at_least(config.bus.bus.simulator_lanes()),
    )
    .await
    .context("cannot start the Stock simulator")?;
    serve(
        "stock",
        listener,
        (bus, &config.bus),
        Simulator::Stock(handle),
        (config.shutdown_grace_secs, instruments),
        console,
    )
}

/// Connects the bus `flags` name, refusing the in-memory one.
async fn shared_bus(role: &str, flags: &BusFlags) -> anyhow::Result<ConnectedBus> {
    if !matches!(flags.bus, crate::bus::BusSpec::Nats(_)) {
        anyhow::bail!(
            "`app {role}` needs a bus shared with Orders: --bus nats://HOST:PORT (or ORDERS_BUS); \
             the in-memory bus only reaches its own process (use `app serve --sims in-process`)"
        );
    }
    ConnectedBus::connect(flags).await
}

/// The dead-letter routes of `group` on a role's port: behind the tokens of
/// `tokens_file`, or without authentication on a loopback `listen` address; `None`
/// (logged) on another address without tokens.
///
/// # Errors
/// The tokens file cannot be read or is malformed.
fn dead_letter_console(
    bus: &ConnectedBus,
    group: &str,
    tokens_file: Option<&std::path::Path>,
    listen: SocketAddr,
) -> anyhow::Result<Option<Router>> {
    let tokens = tokens_file.map(Tokens::load).transpose()?;
    if tokens.is_none() && !listen.ip().is_loopback() {
        tracing::warn!(%listen, "no --auth-tokens-file: the dead-letter routes are not served on a non-loopback address");
        return Ok(None);
    }
    let port = Arc::new(dead_letters::GroupDeadLetters::new(
        bus.dead_letters(),
        &[group],
    ));
    Ok(Some(dead_letters::role_router(port, tokens)))
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// A role's own routes, served and named as metric labels from these.
const HEALTHZ: &str = "/healthz";
const READYZ: &str = "/readyz";
const METRICS: &str = "/metrics";

/// Starts the health endpoints on `listener` and logs that the role listens.
fn serve(
    name: &'static str,
    listener: TcpListener,
    (bus, flags): (ConnectedBus, &BusFlags),
    simulator: Simulator,
    (shutdown_grace_secs, instruments): (u64, Instruments),
    dead_letters: Option<Router>,
) -> anyhow::Result<RunningRole> {
    let local_addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let mut router = Router::new()
        .route(HEALTHZ, get(healthz))
        .route(READYZ, get(readyz))
        .with_state((bus.clone(), name));
    let mut paths = vec![HEALTHZ.to_owned(), READYZ.to_owned()];
    if let Some(dead_letters) = dead_letters {
        router = router.merge(dead_letters);
        paths.extend(dead_letters::role_paths());
    }
    let router = with_metrics(router, paths, &bus, instruments);
    let (stop_accepting, stop_rx) = oneshot::channel::<()>();
    let http = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await
    });
    tracing::info!(role = name, listen = %local_addr, bus_url = %flags.bus,
        bus_prefix = flags.bus_prefix.as_deref().unwrap_or_default(),
        "{name} service listening on http://{local_addr}");
    Ok(RunningRole {
        name,
        local_addr,
        stop_accepting: Some(stop_accepting),
        http: Some(http),
        simulator,
        shutdown_grace: Duration::from_secs(shutdown_grace_secs),
    })
}

/// `GET /metrics` on a role's router, requests timed and traced (labelled by `paths`,
/// the templates of its routes), and the bus backlog sampled, when telemetry is on; the
/// router as it is when off.
fn with_metrics(
    router: Router,
    mut paths: Vec<String>,
    bus: &ConnectedBus,
    instruments: Instruments,
) -> Router {
    let Some(handle) = instruments.metrics() else {
        return router;
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let stop = std::sync::Arc::new(stop);
    tokio::spawn(crate::telemetry::gauges::sample_every(
        None,
        bus.shared(),
        crate::telemetry::gauges::DEFAULT_SAMPLE_INTERVAL,
        async move {
            let _ = stopped.await;
        },
    ));
    let router = router.route(
        METRICS,
        get(move || {
            // The sampler lives as long as the route (the server) does.
            let _keep = stop.clone();
            crate::telemetry::http::metrics(Some(handle.clone()))
        }),
    );
    paths.push(METRICS.to_owned());
    crate::telemetry::http::ObserveLayer::new(paths).around(router)
}

/// `GET /healthz`: the process answers.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 while the bus is usable, else a 503 problem.
async fn readyz(State((bus, name)): State<(ConnectedBus, &'static str)>) -> Response {
    if bus.is_ready(name) {
        Json(json!({ "status": "ready", "checks": { "bus": "ok" } })).into_response()
    } else {
        tracing::warn!(role = name, "readiness: bus is not usable");
        Problem::new(ProblemType::Unavailable, "the bus is not available")
            .with("checks", json!({ "bus": "unavailable" }))
            .into_response()
    }
}

impl RunningRole {
    /// The address of the health endpoints.
    #[must_use]
    pub const fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Runs until `signal` resolves, then shuts down. Returns why it stopped.
    ///
    /// # Errors
    /// When the HTTP server fails on its own (the simulator is then stopped as well).
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
                let error = crate::serve::http_server_ended(ended);
                tracing::error!(role = self.name, error = format!("{error:#}"),
                    "{} stopping: HTTP server ended", self.name);
                self.simulator.stop().await;
                Err(error)
            }
        }
    }

    /// Graceful shutdown: no new connections, open ones drained (up to the grace
    /// period), then the simulator unsubscribes after the message in hand. Logs `reason`.
    ///
    /// # Errors
    /// When the HTTP server failed while draining; the simulator is stopped anyway.
    pub async fn shutdown(mut self, reason: StopReason) -> anyhow::Result<()> {
        tracing::info!(role = self.name, %reason, "{} shutting down", self.name);
        if let Some(stop) = self.stop_accepting.take() {
            let _ = stop.send(());
        }
        let mut outcome = Ok(());
        if let Some(mut http) = self.http.take() {
            match tokio::time::timeout(self.shutdown_grace, &mut http).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    outcome = Err(anyhow::Error::new(e).context("the HTTP server failed"));
                }
                Ok(Err(e)) => {
                    outcome = Err(anyhow::Error::new(e).context("the HTTP server task failed"));
                }
                Err(_) => http.abort(),
            }
        }
        self.simulator.stop().await;
        tracing::info!(role = self.name, %reason, "{} stopped", self.name);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::bus::BusSpec;

    #[derive(Debug, Parser)]
    enum Cli {
        Payments(PaymentsRoleConfig),
        Stock(StockRoleConfig),
    }

    #[test]
    fn an_ack_wait_of_zero_or_past_a_day_is_refused() {
        for bad in ["0", "86401", "soon"] {
            let error = Cli::try_parse_from(["app", "stock", "--bus-ack-wait-secs", bad])
                .unwrap_err()
                .to_string();
            assert!(error.contains("--bus-ack-wait-secs"), "{bad}: {error}");
        }
    }

    #[test]
    fn each_role_takes_the_bus_and_its_simulator_flags() {
        let Cli::Payments(payments) = Cli::try_parse_from([
            "app",
            "payments",
            "--bus",
            "nats://127.0.0.1:4222",
            "--bus-prefix",
            "p1",
            "--bus-ack-wait-secs",
            "7",
            "--decline-all",
            "--duplicate-replies",
        ])
        .unwrap() else {
            panic!("not payments");
        };
        assert_eq!(
            payments.bus.bus,
            BusSpec::Nats("nats://127.0.0.1:4222".to_owned())
        );
        assert_eq!(payments.bus.bus_prefix.as_deref(), Some("p1"));
        assert_eq!(payments.bus.bus_ack_wait_secs, Some(7));
        let config = payments.payments.config(payments.duplicate_replies);
        assert_eq!(config.decision, payments_sim::PaymentDecision::DeclineAll);
        assert!(config.duplicate_replies);
        assert_eq!(payments.listen.to_string(), DEFAULT_PAYMENTS_LISTEN);

        let Cli::Stock(stock) = Cli::try_parse_from([
            "app",
            "stock",
            "--bus",
            "nats://h:4222",
            "--out-of-stock",
            "sku-9",
            "--stock-delay-ms",
            "7",
        ])
        .unwrap() else {
            panic!("not stock");
        };
        assert_eq!(stock.bus.bus_ack_wait_secs, None, "the adapter's default");
        let config = stock.stock.config(stock.duplicate_replies);
        assert!(config.out_of_stock.contains("sku-9"));
        assert_eq!(config.delay, Duration::from_millis(7));
        assert_eq!(stock.listen.to_string(), DEFAULT_STOCK_LISTEN);
    }

    #[tokio::test]
    async fn a_role_on_the_in_memory_bus_is_a_clear_error() {
        let error = shared_bus("payments", &BusFlags::memory())
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("--bus nats://HOST:PORT"),
            "{error}"
        );
    }
}
