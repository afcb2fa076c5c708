//! Telemetry: log lines, Prometheus metrics and OpenTelemetry traces (issue 10 §1, §2).
//!
//! [`init`] is called once by the binary: log lines to stderr, and with
//! [`Telemetry::On`] (the default; `--telemetry off` or `ORDERS_TELEMETRY=off` turns it
//! off) the metrics recorder behind `GET /metrics` and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the tracing layer that turns the flow's spans
//! into OpenTelemetry spans exported over OTLP (without an endpoint no span is built:
//! [`traces`]). Off, none of the decorators below is wired and messages carry no trace
//! context.
//!
//! | file | job |
//! |---|---|
//! | [`metrics`] | the Prometheus recorder, metric names, buckets, `GET /metrics` |
//! | [`traces`] | the OpenTelemetry layer, OTLP export, `traceparent` in and out |
//! | [`http`] | per request: a server span and the request metrics, by route template |
//! | [`handler`] | per message handled: a span continuing the producer's trace, outcome metrics |
//! | [`relay`] | per message the outbox relay publishes: a span and the publish latency |
//! | [`finished`] | orders reaching a final state and their flow duration, from the commits' change feed |
//! | [`gauges`] | a periodic sample of the outbox and of the bus backlog per group |

pub mod finished;
pub mod gauges;
pub mod handler;
mod handles;
pub mod http;
pub mod metrics;
pub mod relay;
pub mod traces;

use std::sync::Arc;

use messaging::{MessageBus, MessageHandler};
use metrics_exporter_prometheus::PrometheusHandle;
use orders_app::OrdersMessageHandler;
use tracing_subscriber::{
    EnvFilter, Layer as _, filter::filter_fn, fmt, layer::SubscriberExt as _,
    util::SubscriberInitExt as _,
};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether metrics are recorded and spans traced (`--telemetry on|off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Telemetry {
    /// Metrics on `GET /metrics`; spans across the flow when
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` says where to export them.
    #[default]
    On,
    /// Neither: `GET /metrics` answers 404, messages carry no trace context.
    Off,
}

impl Telemetry {
    /// Whether it is on.
    #[must_use]
    pub const fn is_on(self) -> bool {
        matches!(self, Self::On)
    }
}

/// The `tracing` target of the flow's spans (HTTP request, relay publish, message
/// handling): the OpenTelemetry layer sees only these, the log lines never show them.
pub const SPAN_TARGET: &str = "otel";

/// Installs the global subscriber: `RUST_LOG` (default `default_filter`) to stderr, and
/// with `telemetry` on, the metrics recorder and, when spans have somewhere to go
/// (`OTEL_EXPORTER_OTLP_ENDPOINT`), the OpenTelemetry layer.
pub fn init(format: LogFormat, default_filter: &str, telemetry: Telemetry) {
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    if let Ok(quiet) = format!("{SPAN_TARGET}=off").parse() {
        filter = filter.add_directive(quiet);
    }
    let logs = fmt::layer().with_writer(std::io::stderr).with_target(false);
    let logs = match format {
        LogFormat::Text => logs.with_filter(filter).boxed(),
        LogFormat::Json => logs.json().with_filter(filter).boxed(),
    };
    if telemetry.is_on() {
        metrics::install();
    }
    let spans = telemetry
        .is_on()
        .then(traces::provider_from_env)
        .flatten()
        .map(|provider| {
            traces::install_propagation();
            traces::layer(provider).with_filter(filter_fn(|meta| meta.target() == SPAN_TARGET))
        });
    // A second call (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init();
    traces::report_export();
}

/// Flushes the spans not yet exported (OTLP), before the process exits.
pub fn shutdown() {
    traces::shutdown();
}

/// The decorators a composition root wires around the store, the handlers and the bus,
/// as the switch says: with [`Telemetry::Off`] each hands back what it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instruments(Telemetry);

impl Instruments {
    /// The decorators `telemetry` asks for.
    #[must_use]
    pub const fn new(telemetry: Telemetry) -> Self {
        Self(telemetry)
    }

    /// Whether telemetry is on.
    #[must_use]
    pub const fn is_on(self) -> bool {
        self.0.is_on()
    }

    /// The metrics recorder's handle (installed on first use), `None` when off.
    #[must_use]
    pub fn metrics(self) -> Option<PrometheusHandle> {
        if self.is_on() {
            metrics::install()
        } else {
            None
        }
    }

    /// The hook that counts finished orders ([`finished::FinishedOrders`]), for
    /// [`crate::changes::OrderChanges::on_finished`]; `None` when off.
    #[must_use]
    pub fn finished_orders(self) -> Option<crate::changes::FinishedHook> {
        self.is_on()
            .then(|| finished::FinishedOrders::default().hook())
    }

    /// The Orders handler ([`handler::ObservedOrdersHandler`]).
    #[must_use]
    pub fn orders_handler(self, handler: OrdersMessageHandler) -> Arc<dyn MessageHandler> {
        if self.is_on() {
            Arc::new(handler::ObservedOrdersHandler::new(handler))
        } else {
            Arc::new(handler)
        }
    }

    /// The bus the simulators subscribe on ([`handler::ObservedBus`]).
    #[must_use]
    pub fn subscriber_bus(self, bus: Arc<dyn MessageBus>) -> Arc<dyn MessageBus> {
        if self.is_on() {
            Arc::new(handler::ObservedBus::new(bus))
        } else {
            bus
        }
    }

    /// The bus the outbox relay publishes on ([`relay::RelayBus`]).
    #[must_use]
    pub fn relay_bus(self, bus: Arc<dyn MessageBus>) -> Arc<dyn MessageBus> {
        if self.is_on() {
            Arc::new(relay::RelayBus::new(bus))
        } else {
            bus
        }
    }
}
