//! The handlers: each parses its request with the problem-rejecting extractors, calls one
//! use case of [`orders_app::OrdersService`], and renders a view or a [`Problem`].

use axum::{
    Json,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use orders_app::{AppError, CancelOrder, PlaceOrder};
use orders_domain::{Order, OrderId};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use super::{
    AppState,
    auth::Caller,
    extract::{IdempotencyKey, JsonBody, OrderIdPath, QueryParams},
    openapi::{CancelBodyDoc, PROBLEM, PlaceOrderBody},
    problem::{Problem, ProblemType},
    view::{MessageView, OrderView},
};

/// The body of `POST /orders/{id}/cancel`.
#[derive(Debug, Deserialize)]
pub(super) struct CancelBody {
    reason: String,
}

/// `POST /orders`: 201 for a new order, 200 for an idempotent replay; both with
/// `Location` and the order.
#[utoipa::path(
    post,
    path = "/orders",
    tag = "orders",
    summary = "Place an order (checkout)",
    params(
        ("Idempotency-Key" = Option<String>, Header,
         description = "1 to 200 visible ASCII characters; a retry with the same key answers 200 with the order it created")
    ),
    request_body(content = PlaceOrderBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Placed: the new order, AwaitingPayment", body = OrderView,
         headers(("Location" = String, description = "`/orders/{id}`"))),
        (status = 200, description = "The order an earlier request with this Idempotency-Key placed", body = OrderView,
         headers(("Location" = String, description = "`/orders/{id}`"))),
        (status = 400, description = "The body is not JSON, or the Idempotency-Key is malformed", body = Problem, content_type = PROBLEM),
        (status = 403, description = "A customer-scoped token placing an order for another customer", body = Problem, content_type = PROBLEM),
        (status = 409, description = "The order was changed concurrently; try again", body = Problem, content_type = PROBLEM),
        (status = 413, description = "The body is larger than 64 KiB", body = Problem, content_type = PROBLEM),
        (status = 415, description = "The body is not declared as JSON", body = Problem, content_type = PROBLEM),
        (status = 422, description = "Invalid values (each bad field in `errors`), JSON of the wrong shape, more than 100 items or a field over 200 characters", body = Problem, content_type = PROBLEM),
    )
)]
pub(super) async fn place_order(
    State(state): State<AppState>,
    caller: Caller,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(command): JsonBody<PlaceOrder>,
) -> Result<Response, Problem> {
    super::limits::check_place_order(&command)?;
    if !caller.may_access(&command.customer_id) {
        return Err(Problem::new(
            ProblemType::Forbidden,
            "this token may only place orders for its own customer",
        ));
    }
    let placed = state.orders.place_order(command, key).await?;
    let order = state.orders.order(placed.order_id).await?;
    let status = if placed.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let location = format!("/orders/{}", placed.order_id);
    let mut response = (status, Json(OrderView::from(&order))).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /orders/{id}`.
///
/// With `?afterVersion=N&waitMs=M` it is a blocking read: it answers as soon as the
/// order's version is above N, or after M milliseconds (at most
/// [`MAX_WAIT_MS`]) with the order as it is. Clients wait for a change without polling.
#[utoipa::path(
    get,
    path = "/orders/{id}",
    tag = "orders",
    summary = "Read an order, or wait for its next change",
    params(("id" = String, Path, description = "The order id"), WaitQuery),
    responses(
        (status = 200, description = "The order", body = OrderView),
        (status = 400, description = "The id is not a UUID, or the query is malformed (afterVersion and waitMs go together)", body = Problem, content_type = PROBLEM),
        (status = 404, description = "No such order (or another customer's, for a scoped token)", body = Problem, content_type = PROBLEM),
    )
)]
pub(super) async fn get_order(
    State(state): State<AppState>,
    caller: Caller,
    OrderIdPath(id): OrderIdPath,
    QueryParams(query): QueryParams<WaitQuery>,
) -> Result<Json<OrderView>, Problem> {
    let wait = query.wait()?;
    let (Some((after, wait_ms)), Some(changes)) = (wait, state.changes.clone()) else {
        let order = visible_order(&state, &caller, id).await?;
        return Ok(Json(OrderView::from(&order)));
    };
    if caller.scope().is_some() {
        // Another customer's order is unknown at once, exactly like a missing one.
        visible_order(&state, &caller, id).await?;
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(wait_ms);
    loop {
        let notify = changes.watch(id);
        let (loaded, done) = {
            // Registered before the read, so a change between read and wait still wakes us.
            let changed = notify.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let loaded = state.orders.order(id).await;
            let done = match &loaded {
                Ok(order) => order.version() > after || tokio::time::Instant::now() >= deadline,
                Err(_) => true,
            };
            if !done {
                let _ = tokio::time::timeout_at(deadline, changed).await;
            }
            (loaded, done)
        };
        changes.release(id, notify);
        if done {
            return Ok(Json(OrderView::from(&loaded?)));
        }
    }
}

/// The order `id`, when `caller` may see it; another customer's order is answered
/// exactly like an unknown one (404), so a scoped token cannot learn that it exists.
async fn visible_order(state: &AppState, caller: &Caller, id: OrderId) -> Result<Order, Problem> {
    let order = state.orders.order(id).await?;
    if caller.may_access(order.customer_id().as_str()) {
        Ok(order)
    } else {
        Err(AppError::NotFound(id).into())
    }
}

/// The longest a blocking read waits, in milliseconds (below the request timeout).
pub const MAX_WAIT_MS: u64 = 20_000;

/// The query of `GET /orders/{id}`: `afterVersion` and `waitMs`, both or neither; any
/// other parameter is refused.
#[derive(Debug, Clone, Copy, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct WaitQuery {
    /// Answer once the order's version is above this (with `waitMs`).
    after_version: Option<u64>,
    /// Wait at most this long, in milliseconds, capped at 20,000 (with `afterVersion`).
    wait_ms: Option<u64>,
}

impl WaitQuery {
    /// `(afterVersion, waitMs)` for a blocking read, `None` for a plain one.
    fn wait(self) -> Result<Option<(u64, u64)>, Problem> {
        match (self.after_version, self.wait_ms) {
            (Some(after), Some(wait)) => Ok(Some((after, wait.min(MAX_WAIT_MS)))),
            (None, None) => Ok(None),
            _ => Err(Problem::new(
                ProblemType::BadRequest,
                "afterVersion and waitMs go together",
            )),
        }
    }
}

/// `POST /orders/{id}/cancel`.
#[utoipa::path(
    post,
    path = "/orders/{id}/cancel",
    tag = "orders",
    summary = "Cancel an order",
    params(("id" = String, Path, description = "The order id")),
    request_body(content = CancelBodyDoc, content_type = "application/json"),
    responses(
        (status = 200, description = "The cancelled order (also when it was cancelled before)", body = OrderView),
        (status = 400, description = "The id is not a UUID, or the body is not JSON", body = Problem, content_type = PROBLEM),
        (status = 404, description = "No such order (or another customer's, for a scoped token)", body = Problem, content_type = PROBLEM),
        (status = 409, description = "The order's state does not allow it (StockReserved), or it changed concurrently", body = Problem, content_type = PROBLEM),
        (status = 413, description = "The body is larger than 64 KiB", body = Problem, content_type = PROBLEM),
        (status = 415, description = "The body is not declared as JSON", body = Problem, content_type = PROBLEM),
        (status = 422, description = "No reason, or a reason over 500 characters", body = Problem, content_type = PROBLEM),
    )
)]
pub(super) async fn cancel_order(
    State(state): State<AppState>,
    caller: Caller,
    OrderIdPath(order_id): OrderIdPath,
    JsonBody(body): JsonBody<CancelBody>,
) -> Result<Json<OrderView>, Problem> {
    super::limits::check_cancel_reason(&body.reason)?;
    if caller.scope().is_some() {
        // The customer of an order never changes: checked once, before the cancel.
        visible_order(&state, &caller, order_id).await?;
    }
    let order = state
        .orders
        .cancel_order(CancelOrder {
            order_id,
            reason: body.reason,
        })
        .await?;
    Ok(Json(OrderView::from(&order)))
}

/// `GET /orders/{id}/messages`: 404 when the order does not exist.
#[utoipa::path(
    get,
    path = "/orders/{id}/messages",
    tag = "orders",
    summary = "The messages an order sent and received, in commit order",
    params(("id" = String, Path, description = "The order id")),
    responses(
        (status = 200, description = "Its message history", body = Vec<MessageView>),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = PROBLEM),
        (status = 404, description = "No such order (or another customer's, for a scoped token)", body = Problem, content_type = PROBLEM),
    )
)]
pub(super) async fn order_messages(
    State(state): State<AppState>,
    caller: Caller,
    OrderIdPath(id): OrderIdPath,
) -> Result<Json<Vec<MessageView>>, Problem> {
    // The history alone cannot tell an unknown order from a quiet one.
    let _exists = visible_order(&state, &caller, id).await?;
    let messages = state.orders.messages(id).await?;
    Ok(Json(messages.iter().map(MessageView::from).collect()))
}

/// `GET /healthz`: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness: the process answers",
    responses((status = 200, description = "`{\"status\":\"ok\"}`", body = Health))
)]
pub(super) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The answer of `GET /healthz`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub(super) struct Health {
    /// Always `ok`.
    #[schema(value_type = String, example = "ok")]
    status: &'static str,
}

/// The answer of `GET /readyz` when ready (a 503 problem carries the same `checks`).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub(super) struct Ready {
    /// `ready`.
    #[schema(value_type = String, example = "ready")]
    status: &'static str,
    /// Each dependency: `ok` or `unavailable`.
    checks: Checks,
}

/// The dependencies `GET /readyz` checks.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub(super) struct Checks {
    /// The store: `ok` or `unavailable`.
    #[schema(value_type = String, example = "ok")]
    store: &'static str,
    /// The bus: `ok` or `unavailable`.
    #[schema(value_type = String, example = "ok")]
    bus: &'static str,
}

/// `GET /readyz`: 200 when the store and the bus answer, else a 503 problem listing the
/// checks.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness: the store and the bus answer",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "A dependency is not available; `checks` says which", body = Problem, content_type = PROBLEM),
    )
)]
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = state.readiness.check().await;
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    let checks = Checks {
        store: word(readiness.store),
        bus: word(readiness.bus),
    };
    if readiness.is_ready() {
        Json(Ready {
            status: "ready",
            checks,
        })
        .into_response()
    } else {
        Problem::new(ProblemType::Unavailable, "a dependency is not available")
            .with("checks", json!(checks))
            .into_response()
    }
}

/// Any path that is not a route.
pub(super) async fn no_route() -> Problem {
    Problem::new(ProblemType::NotFound, "no such resource")
}

/// A route asked with a method it does not have.
pub(super) async fn method_not_allowed() -> Problem {
    Problem::new(
        ProblemType::MethodNotAllowed,
        "the resource does not support this method",
    )
}

/// `GET /stats`: dead letters, parked and unsent outbox rows (404 when not configured).
#[utoipa::path(
    get,
    path = "/stats",
    tag = "operations",
    summary = "Dead letters, parked and unsent outbox rows",
    responses(
        (status = 200, description = "The counts", body = super::stats::Stats),
        (status = 404, description = "This service has no stats", body = Problem, content_type = PROBLEM),
    )
)]
pub(super) async fn stats(
    State(state): State<AppState>,
) -> Result<Json<super::stats::Stats>, Problem> {
    match &state.stats {
        Some(probe) => Ok(Json(probe.stats().await)),
        None => Err(Problem::new(
            ProblemType::NotFound,
            "this service has no stats",
        )),
    }
}

/// The longest list `GET /orders` answers.
pub const MAX_LIST_LIMIT: usize = 200;

/// The list `GET /orders` answers without `limit`.
pub const DEFAULT_LIST_LIMIT: usize = 50;

/// The query of `GET /orders`: `limit`, 1 to [`MAX_LIST_LIMIT`].
#[derive(Debug, Clone, Copy, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// How many orders, 1 to 200 (default 50).
    limit: Option<u64>,
}

/// The answer of `GET /orders`.
#[derive(Debug, serde::Serialize, ToSchema)]
pub(super) struct OrderList {
    /// Newest first.
    orders: Vec<OrderView>,
}

#[utoipa::path(
    get,
    path = "/orders",
    tag = "orders",
    summary = "The newest orders first (a customer-scoped token: its customer's)",
    params(ListQuery),
    responses(
        (status = 200, description = "At most `limit` orders, the newest first", body = OrderList),
        (status = 400, description = "An unknown query parameter, or a limit that is not a number", body = Problem, content_type = PROBLEM),
        (status = 422, description = "A limit of 0 or over 200", body = Problem, content_type = PROBLEM),
    )
)]
/// `GET /orders?limit=N`: the newest orders first (default [`DEFAULT_LIST_LIMIT`]); only
/// its customer's for a scoped token. 422 for a limit of 0 or over [`MAX_LIST_LIMIT`].
pub(super) async fn list_orders(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<OrderList>, Problem> {
    let limit = match query.limit {
        None => DEFAULT_LIST_LIMIT,
        Some(n) if (1..=MAX_LIST_LIMIT as u64).contains(&n) => n as usize,
        Some(_) => {
            return Err(Problem::validation(
                "1 invalid field(s)",
                vec![super::problem::FieldError {
                    field: "limit".to_owned(),
                    message: format!("must be between 1 and {MAX_LIST_LIMIT}"),
                }],
            ));
        }
    };
    let orders = state
        .orders
        .store()
        .recent_orders(limit, caller.scope())
        .await
        .map_err(AppError::from)?;
    Ok(Json(OrderList {
        orders: orders.iter().map(OrderView::from).collect(),
    }))
}
