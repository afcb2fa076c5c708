//! The HTTP API of the Orders service (axum). [`router`] builds it over an [`AppState`];
//! `serve` binds it to a socket, tests drive it with `oneshot` and no socket.
//!
//! | route | answer |
//! |---|---|
//! | `GET /orders?limit=N` | 200 + `{"orders": [...]}`, the newest first (default 50, at most 200; a scoped token: its customer's) |
//! | `POST /orders` | 201 + `Location` + the order; 200 + the same order when an `Idempotency-Key` was used before |
//! | `GET /orders/{id}` | 200 + the order |
//! | `POST /orders/{id}/cancel` `{"reason"}` | 200 + the cancelled order; 409 when its state does not allow it |
//! | `GET /orders/{id}/messages` | 200 + the messages the order sent and received, in commit order |
//! | `GET /dead-letters?limit=N` | 200 + the dead-letter count and the oldest N dead letters ([`dead_letters`]) |
//! | `POST /dead-letters/{id}/replay` | 202: the message goes back to its group; 404 for an unknown id |
//! | `GET /events` | Server-Sent Events: `order` after each commit of an order, `flow` every second ([`events`]) |
//! | `GET /flow` | 200 + throughput, p50/p99 placed → final over the last minute, dead letters ([`flow`]); 403 for a customer-scoped token |
//! | `GET /` | the live flow page, and its script and style under `/page/` ([`page`]); open like the probes |
//! | `GET /healthz` | 200 `{"status":"ok"}` while the process runs |
//! | `GET /readyz` | 200 when the store and the bus answer, 503 otherwise |
//! | `GET /stats` | dead letters, parked and unsent outbox rows |
//! | `GET /openapi.json` | the OpenAPI 3.1 document of all of this ([`openapi`]) |
//! | `GET /metrics` | 200 + the Prometheus text format ([`crate::telemetry::metrics`]); 404 with telemetry off |
//!
//! Every error is an `application/problem+json` document ([`problem`]): 400 for a body
//! that is not JSON, a malformed id or `Idempotency-Key`; 401 (with `WWW-Authenticate:
//! Bearer`) for a missing or unknown token and 403 for a customer-scoped token placing
//! an order for another customer, when authentication is on ([`auth`]); 404 for an
//! unknown order (or another customer's, for a scoped token) or route; 413 for a body over [`MAX_BODY_BYTES`]; 415 for a body not declared JSON; 422
//! for JSON of the wrong shape (missing field, wrong type: serde's message as detail) and
//! for invalid values (every bad field in `errors`) and for requests over the
//! [`limits`]; 429 (with `Retry-After`) for a client over its rate limit; 503 when the store fails or a
//! request takes longer than the request timeout; 500 for corrupt stored data. Causes
//! are logged, never shown.

pub mod auth;
pub mod dead_letters;
pub mod events;
pub mod extract;
pub mod flow;
pub mod limits;
pub mod openapi;
pub mod page;
pub mod problem;
pub mod readiness;
mod routes;
pub mod stats;
pub mod view;

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::{StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
};
use orders_app::OrdersService;
use tower_http::{
    timeout::TimeoutLayer,
    trace::{DefaultOnFailure, TraceLayer},
};
use tracing::Level;
use utoipa_axum::{router::OpenApiRouter, routes};

pub use auth::{Caller, Tokens};
pub use limits::{RateLimit, RateLimiter};
pub use problem::{FieldError, Problem, ProblemType};
pub use readiness::{Readiness, ReadinessProbe, StoreAndBusProbe};
pub use stats::{Stats, StatsProbe};

/// The largest request body accepted (64 KiB); larger ones are refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The default time a request may take before it is answered with 503.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The Orders use cases.
    orders: OrdersService,
    /// Decides `/readyz`.
    readiness: Arc<dyn ReadinessProbe>,
    /// How long one request may take; a slow store must not hold connections forever.
    request_timeout: Duration,
    /// Wakes blocking reads of an order when it changes; `None`: reads never block.
    changes: Option<Arc<crate::changes::OrderChanges>>,
    /// Feeds `GET /stats`; `None`: the route answers 404.
    stats: Option<Arc<dyn stats::StatsProbe>>,
    /// The bus's dead letters (`/dead-letters…`); `None`: those routes answer 404.
    dead_letters: Option<Arc<dyn messaging::DeadLetters>>,
    /// The accepted bearer tokens; `None`: no authentication.
    tokens: Option<Arc<Tokens>>,
    /// The per-client request rate; `None`: unlimited.
    rate_limiter: Option<Arc<RateLimiter>>,
    /// Renders `GET /metrics`; `None` (telemetry off): the route answers 404 and
    /// requests are neither timed nor traced.
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("orders", &self.orders)
            .field("request_timeout", &self.request_timeout)
            .field("tokens", &self.tokens)
            .field("rate_limit", &self.rate_limiter.as_ref().map(|l| l.limit()))
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State over `orders`, with `readiness` deciding `/readyz` and the
    /// [`DEFAULT_REQUEST_TIMEOUT`].
    #[must_use]
    pub fn new(orders: OrdersService, readiness: Arc<dyn ReadinessProbe>) -> Self {
        Self {
            orders,
            readiness,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            changes: None,
            stats: None,
            dead_letters: None,
            tokens: None,
            rate_limiter: None,
            metrics: None,
        }
    }

    /// Serves `GET /metrics` from `handle`, and times and traces every request
    /// ([`crate::telemetry::http`]); `None` leaves both off.
    #[must_use]
    pub fn metrics(
        mut self,
        handle: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> Self {
        self.metrics = handle;
        self
    }

    /// Requires a bearer token from `tokens` on every route but the open ones
    /// ([`auth::OPEN_PATHS`]); `None` keeps the API unauthenticated.
    #[must_use]
    pub fn auth(mut self, tokens: Option<Tokens>) -> Self {
        self.tokens = tokens.map(Arc::new);
        self
    }

    /// Limits every client (peer IP) to `limit`; `None` leaves requests unlimited.
    #[must_use]
    pub fn rate_limit(mut self, limit: Option<RateLimit>) -> Self {
        self.rate_limiter = limit.map(|limit| Arc::new(RateLimiter::new(limit)));
        self
    }

    /// Enables `GET /stats` with `probe`.
    #[must_use]
    pub fn stats(mut self, probe: Arc<dyn stats::StatsProbe>) -> Self {
        self.stats = Some(probe);
        self
    }

    /// Enables `GET /dead-letters` and `POST /dead-letters/{id}/replay` over `port`.
    #[must_use]
    pub fn dead_letters(mut self, port: Arc<dyn messaging::DeadLetters>) -> Self {
        self.dead_letters = Some(port);
        self
    }

    /// Enables blocking reads (`GET /orders/{id}?afterVersion=N&waitMs=M`), woken by
    /// `changes` (fed by a [`crate::changes::WatchedStore`] under the service).
    #[must_use]
    pub fn changes(mut self, changes: Arc<crate::changes::OrderChanges>) -> Self {
        self.changes = Some(changes);
        self
    }

    /// Sets how long one request may take.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The Orders use cases.
    #[must_use]
    pub fn orders(&self) -> &OrdersService {
        &self.orders
    }
}

/// The API: every route of the table above, bearer-token authentication and the
/// per-client rate limit when configured ([`auth`], [`limits`]), the 64 KiB body limit,
/// the request timeout
/// (tower-http's [`TimeoutLayer`], answered as a 503 problem), request tracing
/// (tower-http's [`TraceLayer`]: a span per request, its status and latency at debug
/// level), and problem documents for unknown routes and methods; with metrics on, every
/// request observed ([`crate::telemetry::http`]). As a [`Router`] (for tests and for
/// nesting); the server itself runs [`service`], the same without the outer router the
/// observation needs here.
pub fn router(state: AppState) -> Router {
    match parts(state) {
        (router, Some(observe)) => observe.around(router),
        (router, None) => router,
    }
}

/// What `app serve` runs: [`router`]'s API, with the request metrics' layer (when on)
/// put directly around the router rather than inside another one.
pub type ApiService = tower::util::Either<crate::telemetry::http::Observe<Router>, Router>;

/// [`router`] as the server runs it ([`ApiService`]).
pub fn service(state: AppState) -> ApiService {
    match parts(state) {
        (router, Some(observe)) => tower::util::Either::Left(tower::Layer::layer(&observe, router)),
        (router, None) => tower::util::Either::Right(router),
    }
}

/// The API's router, and the layer that observes its requests when metrics are on
/// (labelled by the documented routes' templates).
fn parts(state: AppState) -> (Router, Option<crate::telemetry::http::ObserveLayer>) {
    let timeout = state.request_timeout;
    let tokens = state.tokens.clone();
    let rate_limiter = state.rate_limiter.clone();
    let metrics = state.metrics.clone();
    let (router, documented) = documented_routes().split_for_parts();
    let mut router = router
        .fallback(routes::no_route)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    if let Some(tokens) = tokens {
        router = router.layer(middleware::from_fn_with_state(tokens, auth::authenticate));
    }
    // Outside authentication: guessing tokens counts against the rate too.
    if let Some(limiter) = rate_limiter {
        router = router.layer(middleware::from_fn_with_state(limiter, limits::rate_limit));
    }
    let router = router
        // The handler's future is dropped at the deadline: a store transaction in
        // flight is rolled back, never half-done.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(middleware::map_response(move |response: Response| {
            timed_out_as_problem(response, timeout)
        }))
        .layer(
            TraceLayer::new_for_http()
                // Causes of 5xx answers are logged where they arise; this is the summary.
                .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
        )
        .with_state(state);
    // Around everything: every answer is counted, labelled by the documented route its
    // path matches.
    let observe = metrics
        .map(|_| crate::telemetry::http::ObserveLayer::new(documented.paths.paths.into_keys()));
    (router, observe)
}

/// Every route, each registered with its OpenAPI description ([`openapi`]): a handler
/// without a `#[utoipa::path]` attribute does not compile here, so nothing is served
/// undocumented. Register new routes here, never with a plain `Router::route`.
pub(crate) fn documented_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(routes::place_order, routes::list_orders))
        .routes(routes!(routes::get_order))
        .routes(routes!(routes::cancel_order))
        .routes(routes!(routes::order_messages))
        .routes(routes!(routes::healthz))
        .routes(routes!(routes::readyz))
        .routes(routes!(routes::stats))
        .routes(routes!(dead_letters::list))
        .routes(routes!(dead_letters::replay))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(metrics_route))
        .routes(routes!(events::events))
        .routes(routes!(flow::flow))
        .routes(routes!(page::index))
        .routes(routes!(page::script))
        .routes(routes!(page::style))
}

/// `GET /metrics` ([`crate::telemetry::http::metrics`]).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics of the flow",
    responses(
        (status = 200, description = "The Prometheus text exposition format", content_type = "text/plain; version=0.0.4"),
        (status = 404, description = "Telemetry is off (--telemetry off)", body = Problem, content_type = openapi::PROBLEM),
    )
)]
async fn metrics_route(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    crate::telemetry::http::metrics(state.metrics).await
}

/// Turns the timeout layer's bare 503 (no body, no content type; every 503 of the
/// handlers is a problem document) into the 503 problem document.
async fn timed_out_as_problem(response: Response, timeout: Duration) -> Response {
    if response.status() != StatusCode::SERVICE_UNAVAILABLE
        || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    tracing::error!(?timeout, "request timed out");
    Problem::new(
        ProblemType::Unavailable,
        "the request took too long; try again later",
    )
    .into_response()
}
