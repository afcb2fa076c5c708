//! The `bench` binary (`cargo xtask bench`): measures the Orders system and prints a
//! Markdown table with percentiles, throughput, and the ratio to a raw baseline measured
//! in the same run.
//!
//! It is the workspace's second composition root: like `app`, it wires the ports of
//! `orders-app` to the adapters of `orders-store` and `messaging` and to the simulated
//! Payments and Stock, here to load them in one process ([`system`]). It does not link
//! `app`: the HTTP rows start the built `app` binary as a child process (`app serve`,
//! path from `--app-bin`), so the service measured is the one that ships, and the load
//! generator, the raw-driver baselines and their drivers stay out of the service.
//!
//! Rows, in the order they run (`--only` picks groups):
//! * `memory` ([`memory`], [`flows`]): publish latency on the in-memory bus next to a raw
//!   mpsc send; flows/s of the whole system next to the same JSON messages through a raw
//!   channel; paced place → StockReserved latency;
//! * `sqlite` ([`sql`]): the same service rows on a scratch SQLite file, next to the same
//!   transactions in plain SQL on rusqlite;
//! * `http`, `http-throughput`, `http-latency` ([`http`]): keep-alive clients against
//!   `app serve` on a scratch SQLite file;
//! * `postgres` ([`sql`]): the service rows on a scratch PostgreSQL database, next to the
//!   same transactions on raw sqlx;
//! * `telemetry` ([`http`]): the HTTP rows against `app serve --telemetry off` and `on`,
//!   alternated, with the cost of metrics and spans as a ratio;
//! * `nats` ([`nats`]): Orders, Payments and Stock as three `app` processes on NATS
//!   JetStream, next to the same messages through raw async-nats;
//! * `telemetry-instructions` ([`instructions`], not in the default set: it needs
//!   valgrind and takes a few minutes): the instructions `app serve` executes per flow
//!   with telemetry off and on, counted by callgrind.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod flows;
mod http;
mod instructions;
mod memory;
mod nats;
mod report;
mod rss;
mod scratch;
mod sql;
mod system;

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use tracing_subscriber::{EnvFilter, fmt};

use crate::report::Row;

/// mimalloc, as in `app`: the in-process rows measure the system with the allocator the
/// service runs on (the flows allocate many small, short-lived buffers).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Measure latency and throughput of the Orders system; print a Markdown table (build
/// with --release).
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
struct BenchConfig {
    /// Publishes timed in the publish-latency workload.
    #[arg(long, default_value_t = 100_000)]
    publishes: usize,
    /// Orders in the throughput workload.
    #[arg(long, default_value_t = 100_000)]
    orders: usize,
    /// Concurrent checkout tasks in the throughput workload.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Orders per second in the paced-latency workload.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Seconds of the paced-latency workload.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Which groups of rows to run: memory, sqlite, postgres, http (both HTTP rows),
    /// telemetry (HTTP rows with telemetry off and on), nats, or
    /// one HTTP row alone: http-throughput, http-latency; and, only when named (it needs
    /// valgrind), telemetry-instructions.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "memory,sqlite,postgres,http,telemetry,nats"
    )]
    only: Vec<String>,
    /// Orders in the SQLite and PostgreSQL throughput workloads.
    #[arg(long, default_value_t = 20_000)]
    sql_orders: usize,
    /// Orders per second in the SQLite and PostgreSQL paced-latency workloads.
    #[arg(long, default_value_t = 1_000)]
    sql_rate: u64,
    /// Seconds of the SQLite and PostgreSQL paced-latency workloads.
    #[arg(long, default_value_t = 5)]
    sql_seconds: u64,
    /// Orders in the HTTP throughput workload.
    #[arg(long, default_value_t = 5_000)]
    http_orders: usize,
    /// Orders in the HTTP latency workload (64 clients, simulated delays); the server's
    /// peak RSS is also read after the first 2,000.
    #[arg(long, default_value_t = 10_000)]
    http_latency_orders: usize,
    /// Orders per run of the telemetry-cost throughput rows (256 clients).
    #[arg(long, default_value_t = 2_000)]
    telemetry_orders: usize,
    /// Orders of the larger run of each mode in the telemetry-instructions rows (the
    /// smaller has 200).
    #[arg(long, default_value_t = 2_200)]
    instructions_orders: usize,
    /// Orders per run of the telemetry-cost latency rows (64 clients, 10 ms simulators).
    #[arg(long, default_value_t = 1_000)]
    telemetry_latency_orders: usize,
    /// Orders in the NATS throughput row and flows of its raw baseline.
    #[arg(long, default_value_t = 5_000)]
    nats_orders: usize,
    /// Orders in the NATS latency row (64 clients, simulated delays).
    #[arg(long, default_value_t = 5_000)]
    nats_latency_orders: usize,
    /// The NATS server (with JetStream) of the NATS rows; streams are made under a
    /// prefix of the run and deleted afterwards.
    #[arg(
        long,
        env = "ORDERS_BENCH_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// The PostgreSQL server to create scratch databases on.
    #[arg(
        long,
        env = "ORDERS_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    postgres_url: String,
    /// The `app` binary the HTTP rows run as their server (`app serve`); default: the
    /// `app` next to this executable (target/release/app after `cargo build --release`).
    #[arg(long, value_name = "PATH")]
    app_bin: Option<PathBuf>,
}

fn main() -> ExitCode {
    let config = BenchConfig::parse();
    let huge_pages = opt_out_of_transparent_huge_pages();
    init_logging();
    if let Err(e) = huge_pages {
        tracing::warn!(error = %e, "cannot turn transparent huge pages off: expect latency spikes while memory grows");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&config)) {
        Ok(rows) => {
            println!("{}", report::render(&rows));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Errors of the system under load to stderr (`RUST_LOG` overrides), as `app` logs them.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("error"));
    let _ = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Turns transparent huge pages off for this process (Linux), before it touches much
/// memory, as `app` does: with THP on, the first touch of fresh memory faults in and
/// zeroes a whole 2 MiB page while the store grows, which stalls the thread that touched
/// it and makes the tail of the paced in-memory row.
fn opt_out_of_transparent_huge_pages() -> Result<(), String> {
    #[cfg(target_os = "linux")]
    {
        rustix::thread::disable_transparent_huge_pages(true).map_err(|e| e.to_string())
    }
    #[cfg(not(target_os = "linux"))]
    {
        Ok(())
    }
}

/// The `app` binary next to this executable.
fn default_app_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let folder = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{} has no folder", exe.display()))?;
    Ok(folder.join(format!("app{}", std::env::consts::EXE_SUFFIX)))
}

/// Runs the groups `config.only` names, printing progress to stderr.
async fn run(config: &BenchConfig) -> anyhow::Result<Vec<Row>> {
    let wants = |group: &str| config.only.iter().any(|g| g == group);
    let mut rows = Vec::new();
    if wants("memory") {
        rows.extend(
            memory::rows(
                config.publishes,
                config.orders,
                config.clients,
                config.rate,
                config.seconds,
            )
            .await?,
        );
    }
    if wants("sqlite") {
        let make = async || Ok(scratch::Scratch::sqlite());
        rows.extend(
            sql::store_rows(
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
    let http_throughput = wants("http") || wants("http-throughput");
    let http_latency = wants("http") || wants("http-latency");
    let app = || -> anyhow::Result<PathBuf> {
        let app = match &config.app_bin {
            Some(path) => path.clone(),
            None => default_app_bin()?,
        };
        anyhow::ensure!(
            app.is_file(),
            "no app binary at {} (build it with `cargo build --release -p app`, or pass --app-bin)",
            app.display()
        );
        Ok(app)
    };
    if http_throughput || http_latency {
        let app = app()?;
        if http_throughput {
            rows.push(http::throughput(&app, config.http_orders).await?);
        }
        if http_latency {
            rows.push(http::latency(&app, config.http_latency_orders).await?);
        }
    }
    if wants("telemetry-instructions") {
        rows.extend(
            instructions::telemetry_instructions(&app()?, 200, config.instructions_orders).await?,
        );
    }
    if wants("telemetry") {
        rows.extend(
            http::telemetry_cost(
                &app()?,
                config.telemetry_orders,
                config.telemetry_latency_orders,
            )
            .await?,
        );
    }
    // Before PostgreSQL for the same reason as HTTP.
    if wants("nats") {
        match nats::rows(
            &app()?,
            &config.nats_url,
            config.nats_orders,
            config.nats_latency_orders,
        )
        .await
        {
            Ok(more) => rows.extend(more),
            Err(e) => {
                eprintln!("bench: NATS rows failed: {e:#}");
                rows.push(Row::skipped("NATS", &format!("{e:#}")));
            }
        }
    }
    if wants("postgres") {
        let url = config.postgres_url.clone();
        let make = async || scratch::Scratch::postgres(&url).await;
        match sql::store_rows(
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
                rows.push(Row::skipped("PostgreSQL", &format!("{e:#}")));
            }
        }
    }
    Ok(rows)
}
