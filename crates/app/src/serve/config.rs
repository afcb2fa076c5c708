//! The settings of `app serve`: flags and `ORDERS_*` environment variables, parsed into
//! typed values ([`ServeConfig`], [`StoreSpec`], [`BusFlags`]; the simulators' flags are
//! in [`super::sims`]). The store URL's password is a [`SecretString`]: it never appears
//! in `Debug`, `Display` or logs.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr};

use orders_app::OrdersConfig;
use secrecy::{ExposeSecret as _, SecretString};

pub use super::sims::{PaymentsFlags, SimsMode, SimulatorFlags, StockFlags};
use crate::bus::BusFlags;
use crate::http::{RateLimit, Tokens};

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
/// The default payment timeout, in seconds (15 minutes).
pub const DEFAULT_PAYMENT_TIMEOUT_SECS: u64 = 900;

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
    /// The message bus (`memory` or `nats://HOST:PORT`) and its subject prefix.
    #[command(flatten)]
    pub bus: BusFlags,
    /// Whether Payments and Stock run inside this process (on the same bus).
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
    /// How long an order may wait for its payment, in seconds: still AwaitingPayment
    /// then, it is cancelled with reason `payment timeout` (a late approval is refunded).
    #[arg(
        long,
        env = "ORDERS_PAYMENT_TIMEOUT_SECS",
        value_name = "SECS",
        default_value_t = DEFAULT_PAYMENT_TIMEOUT_SECS,
        value_parser = clap::value_parser!(u64).range(1..=3_153_600_000)
    )]
    pub payment_timeout_secs: u64,
    /// How long one HTTP request may take before it is answered with 503, in seconds.
    #[arg(long, env = "ORDERS_REQUEST_TIMEOUT_SECS", default_value_t = DEFAULT_REQUEST_TIMEOUT_SECS,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_secs: u64,
    /// How long in-flight requests may take to finish on shutdown, in seconds.
    #[arg(long, env = "ORDERS_SHUTDOWN_GRACE_SECS", default_value_t = DEFAULT_SHUTDOWN_GRACE_SECS)]
    pub shutdown_grace_secs: u64,
    /// Metrics (`GET /metrics`) and traces across the flow, or neither (`off`: to
    /// measure what they cost).
    #[arg(long, env = "ORDERS_TELEMETRY", value_enum, default_value_t = crate::telemetry::Telemetry::On)]
    pub telemetry: crate::telemetry::Telemetry,
    /// Authentication and request limits of the HTTP API (boxed: the config is moved
    /// around by value, in `main`'s command enum among others).
    #[command(flatten)]
    pub edge: Box<EdgeFlags>,
}

impl ServeConfig {
    /// The defaults, listening on `listen` with `store` (what tests start from).
    #[must_use]
    pub fn new(listen: SocketAddr, store: StoreSpec) -> Self {
        Self {
            listen,
            store,
            bus: BusFlags::memory(),
            sims: SimsMode::InProcess,
            simulators: SimulatorFlags::default(),
            idempotency_window_secs: DEFAULT_IDEMPOTENCY_WINDOW_SECS,
            retention_interval_secs: DEFAULT_RETENTION_INTERVAL_SECS,
            payment_timeout_secs: DEFAULT_PAYMENT_TIMEOUT_SECS,
            request_timeout_secs: DEFAULT_REQUEST_TIMEOUT_SECS,
            shutdown_grace_secs: DEFAULT_SHUTDOWN_GRACE_SECS,
            edge: Box::default(),
            telemetry: crate::telemetry::Telemetry::On,
        }
    }

    /// The Orders service settings these flags ask for.
    #[must_use]
    pub fn orders(&self) -> OrdersConfig {
        let seconds = i64::try_from(self.idempotency_window_secs).unwrap_or(i64::MAX);
        // Both are bounded by their flags' ranges (at most 100 years), so they fit.
        let payment_timeout = i64::try_from(self.payment_timeout_secs).unwrap_or(i64::MAX);
        OrdersConfig {
            idempotency_window: chrono::Duration::try_seconds(seconds)
                .unwrap_or_else(orders_domain::default_idempotency_window),
            payment_timeout: chrono::Duration::try_seconds(payment_timeout)
                .unwrap_or_else(orders_app::default_payment_timeout),
            ..OrdersConfig::default()
        }
    }
}

/// Authentication and request limits of the HTTP API (see [`crate::http::auth`] and
/// [`crate::http::limits`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct EdgeFlags {
    /// A file of accepted bearer tokens, one per line, optionally `token customer-id` to
    /// scope it to one customer; `#` comments and blank lines are ignored. Without it the
    /// API accepts unauthenticated requests.
    #[arg(long, env = "ORDERS_AUTH_TOKENS_FILE", value_name = "PATH")]
    pub auth_tokens_file: Option<PathBuf>,
    /// Start without `--auth-tokens-file` on a non-loopback address (anyone who reaches
    /// the port can then read and cancel every order).
    #[arg(long, env = "ORDERS_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// Requests a second each client (peer IP) may send; unlimited when absent.
    #[arg(long, env = "ORDERS_RATE_LIMIT_PER_SEC", value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_per_sec: Option<u32>,
    /// Requests a client may send at once after a quiet period (default: the rate).
    #[arg(long, env = "ORDERS_RATE_LIMIT_BURST", value_name = "N",
        requires = "rate_limit_per_sec", value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_burst: Option<u32>,
}

/// What [`EdgeFlags::settings`] resolves: the tokens (read from their file) and the rate.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    /// The accepted tokens; `None`: unauthenticated.
    pub tokens: Option<Tokens>,
    /// The per-client rate; `None`: unlimited.
    pub rate_limit: Option<RateLimit>,
}

impl EdgeFlags {
    /// Reads the tokens file and checks that an unauthenticated API is meant: without a
    /// tokens file, listening on a non-loopback `listen` address needs
    /// `--allow-unauthenticated`. Logs once that requests are not authenticated.
    ///
    /// # Errors
    /// The tokens file cannot be read or is malformed (the error names the line), or the
    /// API would be open to the network without `--allow-unauthenticated`.
    pub fn settings(&self, listen: SocketAddr) -> anyhow::Result<EdgeSettings> {
        let tokens = match &self.auth_tokens_file {
            Some(path) => {
                let tokens = Tokens::load(path)?;
                tracing::info!(
                    tokens = tokens.len(),
                    "the HTTP API requires a bearer token"
                );
                Some(tokens)
            }
            None if !listen.ip().is_loopback() && !self.allow_unauthenticated => {
                anyhow::bail!(
                    "refusing to listen on {listen} without authentication: anyone who \
                     reaches it could read and cancel every order; give \
                     --auth-tokens-file PATH, or --allow-unauthenticated to accept that"
                );
            }
            None => {
                tracing::warn!(%listen, "the HTTP API accepts unauthenticated requests");
                None
            }
        };
        let rate_limit = self.rate_limit_per_sec.map(|per_sec| RateLimit {
            per_sec,
            burst: self.rate_limit_burst.unwrap_or(per_sec),
        });
        Ok(EdgeSettings { tokens, rate_limit })
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
            return Ok(Self::Postgres(SecretUrl::new(s)));
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

/// A connection URL holding a password, kept as a [`SecretString`] (zeroed on drop):
/// `Debug` and `Display` show it redacted; only [`SecretUrl::expose_secret`] gives the
/// password, for the driver.
#[derive(Clone)]
pub struct SecretUrl(SecretString);

impl SecretUrl {
    /// Wraps `url`.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self(SecretString::from(url.into()))
    }

    /// The URL with its password, for the driver only; never log it.
    #[must_use]
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl PartialEq for SecretUrl {
    fn eq(&self, other: &Self) -> bool {
        self.expose_secret() == other.expose_secret()
    }
}

impl Eq for SecretUrl {}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({:?})", redact_url(self.expose_secret()))
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(self.expose_secret()))
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use payments_sim::PaymentDecision;
    use rust_decimal::Decimal;

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeConfig,
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
    fn the_config_debug_never_shows_the_store_password() {
        let cli = Cli::try_parse_from([
            "serve",
            "--store",
            "postgres://orders:s3cret@db:5432/orders?password=p2",
        ])
        .unwrap();
        let shown = format!("{:?} {:#?}", cli.serve, cli.serve);
        assert!(
            !shown.contains("s3cret") && !shown.contains("p2"),
            "{shown}"
        );
        assert!(shown.contains("orders:***@db:5432"), "{shown}");
        let StoreSpec::Postgres(url) = &cli.serve.store else {
            panic!("not a postgres store: {:?}", cli.serve.store);
        };
        assert_eq!(
            url.expose_secret(),
            "postgres://orders:s3cret@db:5432/orders?password=p2",
            "the driver still gets the password"
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
    fn the_payment_timeout_is_a_flag_or_an_environment_variable_and_defaults_to_15_minutes() {
        let cli = Cli::try_parse_from(["serve"]).unwrap();
        assert_eq!(cli.serve.payment_timeout_secs, DEFAULT_PAYMENT_TIMEOUT_SECS);
        assert_eq!(
            cli.serve.orders().payment_timeout,
            chrono::Duration::minutes(15)
        );
        let cli = Cli::try_parse_from(["serve", "--payment-timeout-secs", "30"]).unwrap();
        assert_eq!(
            cli.serve.orders().payment_timeout,
            chrono::Duration::seconds(30)
        );
        for bad in ["0", "-5", "soon", "3153600001"] {
            assert!(
                Cli::try_parse_from(["serve", "--payment-timeout-secs", bad]).is_err(),
                "{bad}"
            );
        }
        // Setting a variable in this process would race the other tests (and needs
        // `unsafe`); the binding is checked here, its reading by clap in
        // `tests/payment_deadline.rs` on a child process.
        let command = <Cli as clap::CommandFactory>::command();
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some("payment-timeout-secs"))
            .expect("the flag exists");
        assert_eq!(
            arg.get_env().and_then(|e| e.to_str()),
            Some("ORDERS_PAYMENT_TIMEOUT_SECS")
        );
        assert_eq!(
            ServeConfig::new(DEFAULT_LISTEN.parse().unwrap(), StoreSpec::Memory)
                .payment_timeout_secs,
            DEFAULT_PAYMENT_TIMEOUT_SECS
        );
    }

    #[test]
    fn decline_all_and_decline_above_conflict() {
        let parsed = Cli::try_parse_from(["serve", "--decline-all", "--decline-above", "1"]);
        assert!(parsed.is_err());
    }

    #[test]
    fn rate_limit_flags_build_the_limit_and_the_burst_needs_the_rate() {
        let cli = Cli::try_parse_from(["serve", "--rate-limit-per-sec", "5"]).unwrap();
        let settings = cli.serve.edge.settings(cli.serve.listen).unwrap();
        assert_eq!(
            settings.rate_limit,
            Some(RateLimit {
                per_sec: 5,
                burst: 5
            })
        );
        let cli = Cli::try_parse_from([
            "serve",
            "--rate-limit-per-sec",
            "5",
            "--rate-limit-burst",
            "20",
        ])
        .unwrap();
        let settings = cli.serve.edge.settings(cli.serve.listen).unwrap();
        assert_eq!(settings.rate_limit.map(|l| l.burst), Some(20));
        assert!(Cli::try_parse_from(["serve", "--rate-limit-burst", "20"]).is_err());
        assert!(Cli::try_parse_from(["serve", "--rate-limit-per-sec", "0"]).is_err());
        let cli = Cli::try_parse_from(["serve"]).unwrap();
        let settings = cli.serve.edge.settings(cli.serve.listen).unwrap();
        assert!(settings.rate_limit.is_none() && settings.tokens.is_none());
    }

    #[test]
    fn an_unknown_store_is_a_clear_error() {
        let error = Cli::try_parse_from(["serve", "--store", "redis://x"]).unwrap_err();
        assert!(error.to_string().contains("unknown store"), "{error}");
    }
}
