//! Per HTTP request: a server span (`POST /orders`, continuing an incoming
//! `traceparent` header) and the request metrics, labelled by the matched route's
//! template (`/orders/{id}`, never the id) or `unmatched`; and `GET /metrics`.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use axum::{
    extract::{MatchedPath, Request},
    http::{HeaderValue, Method, header},
    response::{IntoResponse, Response},
};
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::PrometheusHandle;
use tracing::Instrument as _;

use super::{SPAN_TARGET, handles::Handles, metrics as names, traces};
use crate::http::{Problem, ProblemType};

/// The route label of a request no route matched (404s, probes of unknown paths).
pub const UNMATCHED: &str = "unmatched";

/// The request counter and duration histogram of one method, route and status.
type RequestMetrics = (Counter, Histogram);

/// The request metrics' handles, kept by method and status, then route template.
#[derive(Default)]
pub struct HttpMetrics {
    by_answer: Handles<(Method, u16), Arc<Handles<String, RequestMetrics>>>,
}

impl HttpMetrics {
    /// The counter and histogram of `method route → status`.
    fn of(&self, method: &Method, route: &str, status: u16) -> RequestMetrics {
        let key = (method.clone(), status);
        let by_route = self.by_answer.get(&key, || (key.clone(), Arc::default()));
        by_route.get(route, || {
            let labels = [
                ("method", method.as_str().to_owned()),
                ("route", route.to_owned()),
                ("status", status.to_string()),
            ];
            (
                route.to_owned(),
                (
                    metrics::counter!(names::HTTP_REQUESTS, &labels),
                    metrics::histogram!(names::HTTP_REQUEST_DURATION, &labels),
                ),
            )
        })
    }
}

/// The layer (for `Router::layer`, so the route is matched when it runs) that times each
/// request inside a span named after its method and route template, and counts it by
/// method, route and status. A plain [`tower::Layer`]: unlike a `from_fn` middleware it
/// does not clone and box the inner service for every request (that cost two thirds of
/// telemetry's share of the HTTP throughput; BENCHMARKS.md).
#[derive(Clone, Default)]
pub struct ObserveLayer {
    metrics: Arc<HttpMetrics>,
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`ObserveLayer`].
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<HttpMetrics>,
}

impl<S> tower::Service<Request> for Observe<S>
where
    S: tower::Service<Request, Response = Response> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let method = request.method().clone();
        let matched = request.extensions().get::<MatchedPath>().cloned();
        let route = matched.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
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
        let answer = self.inner.call(request);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let response = answer.instrument(span.clone()).await?;
            let status = response.status().as_u16();
            span.record("http.response.status_code", status);
            let route = matched.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
            let (requests, duration) = metrics.of(&method, route, status);
            duration.record(started.elapsed());
            requests.increment(1);
            Ok(response)
        })
    }
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
