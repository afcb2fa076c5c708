//! Which message bus a process uses (`--bus`, `ORDERS_BUS`): the in-memory bus (one
//! process, the default) or NATS JetStream (Orders, Payments and Stock as separate
//! processes), and the connected bus behind the port.

use std::{fmt, str::FromStr, sync::Arc};

use anyhow::Context as _;
use messaging::{DeadLetters, InMemoryBus, InMemoryBusConfig, MessageBus};
use messaging_nats::{NatsBus, NatsBusConfig};

/// The bus a `--bus` value names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BusSpec {
    /// `memory`: the in-memory bus; every context must run in this process.
    #[default]
    Memory,
    /// `nats://HOST:PORT`: NATS JetStream at that URL.
    Nats(String),
}

/// The lanes a simulator gets at least on a network bus: each answer waits for two
/// acknowledgements of the broker (its publish, then its ack), so the few lanes that
/// suit the in-memory bus leave it idle while the broker answers (NATS flows/s rose
/// from 2,151 to 2,992 going from 4 to 32 in one sitting; BENCHMARKS.md).
pub const NETWORK_SIMULATOR_LANES: usize = 64;

impl BusSpec {
    /// The lanes a simulator on this bus gets at least: 1 in memory (its own rule
    /// holds), [`NETWORK_SIMULATOR_LANES`] on NATS.
    #[must_use]
    pub const fn simulator_lanes(&self) -> usize {
        match self {
            Self::Memory => 1,
            Self::Nats(_) => NETWORK_SIMULATOR_LANES,
        }
    }

    /// `memory` or `nats`.
    #[must_use]
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Nats(_) => "nats",
        }
    }
}

impl FromStr for BusSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "memory" {
            return Ok(Self::Memory);
        }
        if let Some(rest) = s.strip_prefix("nats://") {
            if rest.is_empty() {
                return Err("a NATS bus needs an address: nats://HOST:PORT".to_owned());
            }
            return Ok(Self::Nats(s.to_owned()));
        }
        Err(format!(
            "unknown bus `{s}`: use `memory` or `nats://HOST:PORT`"
        ))
    }
}

impl fmt::Display for BusSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::Nats(url) => f.write_str(url),
        }
    }
}

/// The bus flags every process role shares.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct BusFlags {
    /// The message bus: `memory` (everything in this process) or `nats://HOST:PORT`
    /// (NATS JetStream, shared with the other processes).
    #[arg(long, env = "ORDERS_BUS", default_value = "memory")]
    pub bus: BusSpec,
    /// Put in front of every NATS subject and stream name, so several deployments (or
    /// test runs) share one server without seeing each other. Ignored by `memory`.
    #[arg(long, env = "ORDERS_BUS_PREFIX", value_name = "PREFIX")]
    pub bus_prefix: Option<String>,
    /// How long NATS waits for a message's ack before it delivers the message again
    /// (default 30): after a process dies, what it held comes back this long after it
    /// was last kept alive. Messages held by a live process are kept alive with progress
    /// acks, so a slow handler is not affected. Ignored by `memory`.
    #[arg(
        long,
        env = "ORDERS_BUS_ACK_WAIT_SECS",
        value_name = "SECONDS",
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub bus_ack_wait_secs: Option<u64>,
}

impl BusFlags {
    /// The in-memory bus (the default).
    #[must_use]
    pub fn memory() -> Self {
        Self::default()
    }

    /// NATS at `url`, with `prefix` (if any).
    #[must_use]
    pub fn nats(url: impl Into<String>, prefix: Option<String>) -> Self {
        Self {
            bus: BusSpec::Nats(url.into()),
            bus_prefix: prefix,
            bus_ack_wait_secs: None,
        }
    }
}

/// A connected bus: the port for the services, and what the probes and `/stats` ask.
#[derive(Debug, Clone)]
pub enum ConnectedBus {
    /// The in-memory bus.
    Memory(InMemoryBus),
    /// NATS JetStream.
    Nats(NatsBus),
}

impl ConnectedBus {
    /// Connects to the bus `flags` name: creates the in-memory bus, or connects to NATS
    /// and checks that it has JetStream.
    ///
    /// # Errors
    /// When NATS cannot be reached, has no JetStream, or refuses a stream setting; the
    /// message says which.
    pub async fn connect(flags: &BusFlags) -> anyhow::Result<Self> {
        match &flags.bus {
            BusSpec::Memory => Ok(Self::Memory(InMemoryBus::new(InMemoryBusConfig::default()))),
            BusSpec::Nats(url) => {
                let mut config = NatsBusConfig::new(url.as_str());
                if let Some(prefix) = &flags.bus_prefix {
                    config = config.subject_prefix(prefix.as_str());
                }
                if let Some(seconds) = flags.bus_ack_wait_secs {
                    config = config.ack_wait(std::time::Duration::from_secs(seconds));
                }
                let bus = NatsBus::connect(config)
                    .await
                    .with_context(|| format!("cannot use the NATS bus at {url}"))?;
                Ok(Self::Nats(bus))
            }
        }
    }

    /// The bus behind the [`MessageBus`] port.
    #[must_use]
    pub fn shared(&self) -> Arc<dyn MessageBus> {
        match self {
            Self::Memory(bus) => Arc::new(bus.clone()),
            Self::Nats(bus) => Arc::new(bus.clone()),
        }
    }

    /// Whether the bus can deliver to `group`'s subscriber now: for the in-memory bus,
    /// whether it is attached (it detaches when its handler panics or on shutdown); for
    /// NATS, whether the client is connected (the consumers are durable on the server).
    #[must_use]
    pub fn is_ready(&self, group: &str) -> bool {
        match self {
            Self::Memory(bus) => bus.is_attached(group),
            Self::Nats(bus) => bus.is_connected(),
        }
    }

    /// The bus's dead letters behind the [`DeadLetters`] port: the in-memory bus's own,
    /// or the NATS dead-letter stream of this prefix (every process's).
    #[must_use]
    pub fn dead_letters(&self) -> Arc<dyn DeadLetters> {
        match self {
            Self::Memory(bus) => Arc::new(bus.clone()),
            Self::Nats(bus) => Arc::new(bus.clone()),
        }
    }

    /// Messages this process has dead-lettered (what `/stats` falls back to when the
    /// [`DeadLetters`] port cannot count).
    #[must_use]
    pub fn dead_letter_count(&self) -> u64 {
        match self {
            Self::Memory(bus) => bus.dead_letters().len() as u64,
            Self::Nats(bus) => bus.dead_letter_count(),
        }
    }

    /// Whether the bus lives and dies with this process (what it held before a restart
    /// is gone).
    #[must_use]
    pub const fn is_in_process(&self) -> bool {
        matches!(self, Self::Memory(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_specs_parse_by_scheme() {
        assert_eq!("memory".parse::<BusSpec>(), Ok(BusSpec::Memory));
        assert_eq!(
            "nats://127.0.0.1:4222".parse::<BusSpec>(),
            Ok(BusSpec::Nats("nats://127.0.0.1:4222".to_owned()))
        );
        assert!("nats://".parse::<BusSpec>().is_err());
        assert!(
            "kafka://h:9092"
                .parse::<BusSpec>()
                .is_err_and(|e| e.contains("unknown bus"))
        );
    }

    #[tokio::test]
    async fn an_unreachable_nats_is_a_clear_error() {
        // Port 1 on loopback: nothing listens there.
        let flags = BusFlags::nats("nats://127.0.0.1:1", None);
        let error = ConnectedBus::connect(&flags).await.unwrap_err();
        let shown = format!("{error:#}");
        assert!(
            shown.contains("cannot use the NATS bus at nats://127.0.0.1:1"),
            "{shown}"
        );
    }
}
