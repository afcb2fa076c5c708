//! `app serve`: the Orders service as a long-running process: the HTTP API ([`crate::http`]),
//! the Orders subscriber, the outbox relay, a retention task, the payment deadline task
//! (cancels orders unpaid after `--payment-timeout-secs`) and (by default) the
//! simulated Payments and Stock, on the in-memory bus (the default) or on NATS JetStream
//! (`--bus nats://HOST:PORT`; with `--sims none`, Payments and Stock are the separate
//! processes `app payments` and `app stock`, see [`crate::roles`]).
//!
//! ```text
//! cargo run -p app -- serve                                  # SQLite file ./data/orders.db
//! cargo run -p app -- serve --store memory --listen 127.0.0.1:0
//! ORDERS_STORE=postgres://orders:secret@localhost/orders cargo run -p app -- serve
//! cargo run -p app -- serve --bus nats://127.0.0.1:4222 --sims none
//! ```
//!
//! It logs one line with the address and the store kind when it listens, and stops on
//! SIGINT or SIGTERM: it stops accepting, lets in-flight requests finish (up to
//! `--shutdown-grace-secs`), stops the relay (which flushes the outbox), the subscriber
//! (which finishes the message in hand), the retention and deadline tasks and the
//! simulators, and logs
//! why it stopped. Start-up failures (store, bind, a NATS server that does not answer
//! or has no JetStream) are errors, never panics.
//!
//! [`spawn`] starts everything and hands back a [`RunningServer`] (its bound address
//! and its shutdown), which is what the tests use with port 0.
//!
//! | file | job |
//! |---|---|
//! | [`config`] | flags and environment variables, the store spec and its secret URL |
//! | [`sims`] | the simulators' flags: in this process or not, and how they behave |
//! | [`store`] | opening the store adapter the spec names |
//! | `wiring` | bus, store, relay, handlers, simulators, retention, payment deadlines and HTTP, started together |
//! | `shutdown` | stop reasons, signals, and the order things stop in |

pub mod config;
mod shutdown;
pub mod sims;
pub mod store;
mod wiring;

pub use config::{
    DEFAULT_IDEMPOTENCY_WINDOW_SECS, DEFAULT_LISTEN, DEFAULT_PAYMENT_TIMEOUT_SECS,
    DEFAULT_REQUEST_TIMEOUT_SECS, DEFAULT_RETENTION_INTERVAL_SECS, DEFAULT_SHUTDOWN_GRACE_SECS,
    DEFAULT_STORE, PaymentsFlags, SecretUrl, ServeConfig, SimsMode, SimulatorFlags, StockFlags,
    StoreSpec, redact_url,
};
pub use shutdown::{RunningServer, StopReason, http_server_ended, shutdown_signal};
pub use store::{OpenedStore, open_store};
pub use wiring::{LISTEN_BACKLOG, spawn};

/// `app serve`: starts the service and runs it until SIGINT or SIGTERM.
///
/// # Errors
/// Start-up failures (store, bind, bus, subscriptions) and a failing HTTP server; each is
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
