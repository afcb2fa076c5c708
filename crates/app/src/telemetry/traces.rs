//! OpenTelemetry traces through `tracing` (issue 10 §2).
//!
//! The flow's spans (target [`super::SPAN_TARGET`]) become OpenTelemetry spans through
//! `tracing-opentelemetry`. A message carries the W3C `traceparent` of the span that
//! produced it (`messaging::Envelope::traceparent`, DESIGN §5): [`install_propagation`]
//! makes every new envelope take the current span's, and [`continue_trace`] makes a
//! consumer's span a child of it. So one order is one trace: `POST /orders` → the
//! relay's publish → Payments' handling → Orders' handling → the relay's publish →
//! Stock → Orders' handling and the final commit, across processes on NATS as well.
//!
//! Spans are exported over OTLP (http/protobuf) only when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set (the exporter reads the other `OTEL_EXPORTER_OTLP_*` variables too). Without
//! it no span is built (the OpenTelemetry layer is not installed, so the flow's span
//! call sites are disabled) and messages carry no `traceparent`: a trace nobody can see
//! costs nothing. For a whole trace across processes, give each the endpoint.

use std::sync::OnceLock;

use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator as _},
    trace::{TraceContextExt as _, TracerProvider as _},
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The environment variable that turns OTLP export on.
pub const OTLP_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// The header (and envelope field) name of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

static PROVIDER: OnceLock<Option<SdkTracerProvider>> = OnceLock::new();

/// Where spans go, said by [`report_export`] once logging is up: the endpoint, or why
/// the exporter could not be built.
static EXPORT: OnceLock<Result<String, (String, String)>> = OnceLock::new();

/// The tracer provider of the process, with a batching OTLP exporter, when
/// [`OTLP_ENDPOINT_VAR`] is set and the exporter can be built; `None` otherwise: spans
/// nobody receives are not built at all (their `tracing` call sites stay disabled, and
/// messages carry no trace context). Kept for [`shutdown`].
pub fn provider_from_env() -> Option<SdkTracerProvider> {
    PROVIDER
        .get_or_init(|| {
            let endpoint = std::env::var(OTLP_ENDPOINT_VAR)
                .ok()
                .filter(|endpoint| !endpoint.trim().is_empty())?;
            match opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
            {
                Ok(exporter) => {
                    let _ = EXPORT.set(Ok(endpoint));
                    Some(
                        SdkTracerProvider::builder()
                            .with_batch_exporter(exporter)
                            .build(),
                    )
                }
                Err(error) => {
                    let _ = EXPORT.set(Err((endpoint, error.to_string())));
                    None
                }
            }
        })
        .clone()
}

/// Logs where spans are exported (nothing when OTLP export is not configured).
pub fn report_export() {
    match EXPORT.get() {
        Some(Ok(endpoint)) => tracing::info!(%endpoint, "exporting spans over OTLP"),
        Some(Err((endpoint, error))) => {
            tracing::warn!(%endpoint, %error, "cannot export spans over OTLP: not exported");
        }
        None => {}
    }
}

/// The `tracing` layer turning spans into OpenTelemetry spans of `provider`, lean.
pub fn layer<S>(
    provider: SdkTracerProvider,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    // Only what a reader of the trace needs: no source locations, thread names or
    // busy/idle timings per span (each costs work on every span of every request).
    tracing_opentelemetry::layer()
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_tracer(provider.tracer("orders"))
}

/// Makes new envelopes carry the current span's `traceparent` (process-wide, once).
pub fn install_propagation() {
    messaging::trace::set_current_traceparent(current_traceparent);
}

/// The W3C `traceparent` of the current span; `None` outside a traced span.
#[must_use]
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// The W3C `traceparent` of `span`; `None` when it is not traced.
#[must_use]
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut header = Traceparent(None);
    TraceContextPropagator::new().inject_context(&cx, &mut header);
    header.0
}

/// Makes `span` (not yet entered) a child of the span `traceparent` names; a missing or
/// malformed value leaves it the root of a new trace.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(value) = traceparent.filter(|_| !span.is_disabled()) else {
        return;
    };
    let cx = TraceContextPropagator::new().extract(&Traceparent(Some(value.to_owned())));
    if cx.span().span_context().is_valid() {
        // Fails only when the span is not traced (telemetry off): nothing to link then.
        let _ = span.set_parent(cx);
    }
}

/// Flushes and stops the exporter, if any.
pub fn shutdown() {
    if let Some(Err(error)) = PROVIDER
        .get()
        .and_then(Option::as_ref)
        .map(SdkTracerProvider::shutdown)
    {
        tracing::debug!(%error, "tracer provider shutdown");
    }
}

/// One `traceparent` value, as a propagator carrier.
struct Traceparent(Option<String>);

impl Injector for Traceparent {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

impl Extractor for Traceparent {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0.as_deref()).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}
