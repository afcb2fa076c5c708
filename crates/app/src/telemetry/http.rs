//! Per HTTP request: a server span (`POST /orders`, continuing an incoming
//! `traceparent` header) and the request metrics, labelled by the matched route's
//! template (`/orders/{id}`, never the id) or `unmatched`; and `GET /metrics`.

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request},
    http::{HeaderValue, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use metrics_exporter_prometheus::PrometheusHandle;
use tracing::Instrument as _;

use super::{SPAN_TARGET, metrics as names, traces};
use crate::http::{Problem, ProblemType};

/// The route label of a request no route matched (404s, probes of unknown paths).
pub const UNMATCHED: &str = "unmatched";

/// Middleware (for `Router::layer`, so the route is matched when it runs): times the
/// request inside a span named after its method and route template, and counts it by
/// method, route and status.
pub async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED.to_owned(), |path| path.as_str().to_owned());
    let span = tracing::info_span!(target: SPAN_TARGET, "http request",
        otel.name = %format_args!("{method} {route}"), otel.kind = "server",
        http.request.method = %method, http.route = %route,
        http.response.status_code = tracing::field::Empty);
    traces::continue_trace(
        &span,
        request
            .headers()
            .get(traces::TRACEPARENT)
            .and_then(|value| value.to_str().ok()),
    );
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    let labels = [
        ("method", method),
        ("route", route),
        ("status", status.to_string()),
    ];
    metrics::histogram!(names::HTTP_REQUEST_DURATION, &labels).record(started.elapsed());
    metrics::counter!(names::HTTP_REQUESTS, &labels).increment(1);
    response
}

/// `GET /metrics`: the Prometheus text format; 404 when telemetry is off.
pub async fn metrics(handle: Option<PrometheusHandle>) -> Response {
    match handle {
        Some(handle) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            names::render(&handle),
        )
            .into_response(),
        None => {
            Problem::new(ProblemType::NotFound, "metrics are off (--telemetry off)").into_response()
        }
    }
}
