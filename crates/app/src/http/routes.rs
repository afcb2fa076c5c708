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
use serde::Deserialize;
use serde_json::json;

use super::{
    AppState,
    auth::Caller,
    extract::{IdempotencyKey, JsonBody, OrderIdPath, QueryParams},
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
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct WaitQuery {
    /// Answer once the order's version is above this.
    after_version: Option<u64>,
    /// Wait at most this long, in milliseconds (capped at [`MAX_WAIT_MS`]).
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
pub(super) async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 when the store and the bus answer, else a 503 problem listing the
/// checks.
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = state.readiness.check().await;
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    let checks = json!({ "store": word(readiness.store), "bus": word(readiness.bus) });
    if readiness.is_ready() {
        Json(json!({ "status": "ready", "checks": checks })).into_response()
    } else {
        Problem::new(ProblemType::Unavailable, "a dependency is not available")
            .with("checks", checks)
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
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    limit: Option<u64>,
}

/// The answer of `GET /orders`.
#[derive(Debug, serde::Serialize)]
pub(super) struct OrderList {
    /// Newest first.
    orders: Vec<OrderView>,
}

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
