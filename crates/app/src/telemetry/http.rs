//! Per HTTP request: a server span (`POST /orders`, continuing an incoming
//! `traceparent` header) and the request metrics, labelled by the route template the
//! path matches (`/orders/{id}`, never the id) or `unmatched`; and `GET /metrics`.
//!
//! The layer wraps the whole router ([`ObserveLayer::around`]), not each route: axum's
//! `Router::layer` wraps every route's service, and the wrapped route is cloned (with
//! the application state) and boxed again on every request. Outside the router the
//! matched route is not known, so the layer matches the path itself against the
//! templates of the documented routes (with matchit, the matcher axum uses).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::Request,
    http::{HeaderName, HeaderValue, Method, header},
    response::{IntoResponse, Response},
};
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::PrometheusHandle;
use tracing::{Instrument as _, instrument::Instrumented};

use super::{SPAN_TARGET, handles::Handles, metrics as names, traces};
use crate::http::{Problem, ProblemType};

/// The route label of a request no route matched (404s, probes of unknown paths).
pub const UNMATCHED: &str = "unmatched";

/// The W3C trace context header.
static TRACEPARENT: HeaderName = HeaderName::from_static(traces::TRACEPARENT);

/// The request counter and duration histogram of one method, route and status.
type RequestMetrics = (Counter, Histogram);

/// One route template and its request metrics by method and status.
type Route = (String, Handles<(Method, u16), RequestMetrics>);

/// The route templates, and the request metrics' handles of each by method and status.
struct HttpMetrics {
    /// Path → index into `routes`.
    matcher: matchit::Router<usize>,
    /// Per template (the last one [`UNMATCHED`]).
    routes: Vec<Route>,
}

impl HttpMetrics {
    fn new(templates: impl IntoIterator<Item = String>) -> Self {
        let mut matcher = matchit::Router::new();
        let mut routes = Vec::new();
        for template in templates {
            match matcher.insert(template.as_str(), routes.len()) {
                Ok(()) => routes.push((template, Handles::default())),
                // Templates come from a router axum accepted, so this does not happen;
                // such a route would count as unmatched.
                Err(error) => tracing::warn!(%template, %error, "route template not matched"),
            }
        }
        routes.push((UNMATCHED.to_owned(), Handles::default()));
        Self { matcher, routes }
    }

    /// The index of the route `path` matches ([`UNMATCHED`]'s when none does).
    fn route_of(&self, path: &str) -> usize {
        self.matcher
            .at(path)
            .map_or(self.routes.len() - 1, |matched| *matched.value)
    }

    fn template(&self, route: usize) -> &str {
        self.routes
            .get(route)
            .map_or(UNMATCHED, |(t, _)| t.as_str())
    }

    /// Counts one request `method route → status` that took `elapsed`.
    fn record(&self, method: &Method, route: usize, status: u16, elapsed: Duration) {
        let Some((template, handles)) = self.routes.get(route) else {
            return;
        };
        let key = (method.clone(), status);
        let make = || {
            let labels = [
                ("method", method.as_str().to_owned()),
                ("route", template.clone()),
                ("status", status.to_string()),
            ];
            (
                key.clone(),
                (
                    metrics::counter!(names::HTTP_REQUESTS, &labels),
                    metrics::histogram!(names::HTTP_REQUEST_DURATION, &labels),
                ),
            )
        };
        handles.with(&key, make, |(requests, duration)| {
            duration.record(elapsed);
            requests.increment(1);
        });
    }
}

/// The layer that times each request inside a span named after its method and route
/// template, and counts it by method, route and status. Put it around the whole router
/// with [`ObserveLayer::around`].
#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Arc<HttpMetrics>,
}

impl ObserveLayer {
    /// A layer labelling requests by `templates` (axum's path syntax, `/orders/{id}`).
    #[must_use]
    pub fn new(templates: impl IntoIterator<Item = String>) -> Self {
        Self {
            metrics: Arc::new(HttpMetrics::new(templates)),
        }
    }

    /// `router` observed: a router whose only service is `router` wrapped in this layer
    /// (so its type stays `Router`, and no route is wrapped one by one).
    pub fn around(self, router: Router) -> Router {
        Router::new().fallback_service(tower::Layer::layer(&self, router))
    }
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
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let route = self.metrics.route_of(request.uri().path());
        let method = request.method().clone();
        let template = self.metrics.template(route);
        let span = tracing::info_span!(target: SPAN_TARGET, "http request",
            otel.name = %format_args!("{method} {template}"), otel.kind = "server",
            http.request.method = %method, http.route = %template,
            http.response.status_code = tracing::field::Empty);
        if !span.is_disabled() {
            traces::continue_trace(
                &span,
                request
                    .headers()
                    .get(&TRACEPARENT)
                    .and_then(|value| value.to_str().ok()),
            );
        }
        Observed {
            answer: self.inner.call(request).instrument(span),
            started,
            method,
            route,
            metrics: self.metrics.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Observe`]: the inner answer in its span; records the request when
    /// the answer is ready.
    pub struct Observed<F> {
        #[pin]
        answer: Instrumented<F>,
        started: Instant,
        method: Method,
        route: usize,
        metrics: Arc<HttpMetrics>,
    }
}

impl<F, E> Future for Observed<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let response = ready!(this.answer.as_mut().poll(cx))?;
        let status = response.status().as_u16();
        this.answer
            .span()
            .record("http.response.status_code", status);
        this.metrics
            .record(this.method, *this.route, status, this.started.elapsed());
        Poll::Ready(Ok(response))
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
