//! The `app` binary: the Orders system's command line.
//!
//! * `cargo run -p app demo` runs every scenario in one process on the in-memory bus and
//!   store, prints each order's final state and the messages it saw, and exits 0 only
//!   when every scenario ended as expected. `RUST_LOG=info` shows every hop.
//! * `cargo run -p app -- serve` runs the Orders service: HTTP API on 127.0.0.1:8080,
//!   state in `./data/orders.db` (SQLite) unless `--store` says otherwise, Payments and
//!   Stock in-process. It logs one line when it listens and stops gracefully on
//!   SIGINT/SIGTERM; `--help` lists every flag and its environment variable.
//!   `--bus nats://HOST:PORT` puts it on NATS JetStream; with `--sims none` it runs
//!   Orders alone.
//! * `cargo run -p app -- payments --bus nats://HOST:PORT` and `… stock …` run the
//!   simulated Payments and Stock as services of their own on that bus, with the
//!   behaviour flags `serve` has for them and `/healthz` and `/readyz` on their own port.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use app::{scenarios, system::Stores, telemetry};
use clap::{Parser, Subcommand};

/// mimalloc: the flows allocate many small, short-lived buffers (JSON, envelopes);
/// glibc malloc spent a fifth of the CPU on them in the in-memory bench profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Orders bounded context and its simulated neighbours.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log line format.
    #[arg(
        long,
        global = true,
        env = "ORDERS_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    log_format: telemetry::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every scenario in one process and check its outcome.
    Demo,
    /// Run the Orders service: HTTP API, outbox relay, subscriber, in-process simulators.
    Serve(app::serve::ServeConfig),
    /// Run the simulated Payments as its own service on a NATS bus.
    Payments(app::roles::PaymentsRoleConfig),
    /// Run the simulated Stock as its own service on a NATS bus.
    Stock(app::roles::StockRoleConfig),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let huge_pages = opt_out_of_transparent_huge_pages();
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
    match cli.command {
        Command::Demo => {
            telemetry::init(cli.log_format, "warn", telemetry::Telemetry::Off);
            report_huge_pages(huge_pages);
            runtime.block_on(demo())
        }
        Command::Serve(config) => {
            telemetry::init(cli.log_format, "info", config.telemetry);
            report_huge_pages(huge_pages);
            let outcome = runtime.block_on(app::serve::run(config));
            telemetry::shutdown();
            exit_code(outcome)
        }
        Command::Payments(config) => {
            telemetry::init(cli.log_format, "info", config.telemetry);
            report_huge_pages(huge_pages);
            let outcome = runtime.block_on(app::roles::run_payments(config));
            telemetry::shutdown();
            exit_code(outcome)
        }
        Command::Stock(config) => {
            telemetry::init(cli.log_format, "info", config.telemetry);
            report_huge_pages(huge_pages);
            let outcome = runtime.block_on(app::roles::run_stock(config));
            telemetry::shutdown();
            exit_code(outcome)
        }
    }
}

/// Success, or the error's chain on stderr and a failure.
fn exit_code(outcome: anyhow::Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Turns transparent huge pages off for this process (Linux), before it touches much
/// memory, and says whether that worked.
///
/// Why: with THP on (`always`, the default of many distributions), the first touch of
/// fresh memory faults in and zeroes a whole huge page at once, stalling whichever
/// thread touched it for milliseconds while the store grows: the tail of the paced
/// latency (BENCHMARKS.md, "Design choices"). Redis and most databases advise the same.
/// Small pages cost the same in total, spread thinly.
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

fn report_huge_pages(result: Result<(), String>) {
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot turn transparent huge pages off: expect latency spikes while memory grows");
    }
}

async fn demo() -> ExitCode {
    let scenarios = scenarios::all();
    let total = scenarios.len();
    let mut failed = 0;
    println!("Orders demo: {total} scenarios, in-memory bus and store\n");
    for scenario in scenarios {
        let report = scenario.run(Stores::in_memory()).await;
        print!("{}", report.render());
        println!();
        if !report.passed() {
            failed += 1;
        }
    }
    println!("{} passed, {failed} failed", total - failed);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
