//! `GET /events`: the live page's stream (Server-Sent Events), fed by commits, not by
//! polling.
//!
//! | event | data | when |
//! |---|---|---|
//! | `ready` | `{}` | first, once the stream follows the commits (reload the list then) |
//! | `order` | the order as `GET /orders/{id}` shows it, with its version | after each commit that touched it (its own change, or a message about it) |
//! | `flow` | the figures of `GET /flow` ([`super::flow`]) | at once, then every second |
//! | `resync` | `{"missed": n}` | this client fell more than [`FEED_CAPACITY`] changes behind: reload |
//!
//! Comments keep the connection alive every [`KEEP_ALIVE`]. The stream ends when the
//! service stops; the page reconnects. An order may arrive twice at one version (a
//! commit heard from this process and from PostgreSQL's `NOTIFY`); `Last-Event-ID` is
//! not supported: after a reconnect, reload. A customer-scoped token only sees its
//! customer's orders (the auth layer refuses it here for now: see [`super::auth`]).
//!
//! [`FEED_CAPACITY`]: crate::changes::FEED_CAPACITY

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::State,
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use orders_domain::OrderId;
use serde_json::json;
use tokio::{
    sync::{broadcast, watch},
    time::{Interval, MissedTickBehavior},
};

use super::{
    AppState,
    auth::Caller,
    flow,
    problem::{Problem, ProblemType},
    view::OrderView,
};

/// How often a keep-alive comment is sent on a quiet stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// How often the `flow` event is sent.
pub const FLOW_EVERY: Duration = Duration::from_secs(1);

/// What one open stream holds.
struct Stream {
    state: AppState,
    caller: Caller,
    feed: broadcast::Receiver<OrderId>,
    closing: watch::Receiver<bool>,
    flow: Interval,
    ready_sent: bool,
}

/// What woke a stream.
enum Woken {
    Closing,
    Change(Result<OrderId, broadcast::error::RecvError>),
    Tick,
}

#[utoipa::path(
    get,
    path = "/events",
    tag = "live",
    summary = "Server-Sent Events: `ready`, then `order` after each commit of an order, `flow` every second, `resync` when behind",
    responses(
        (status = 200, description = "An endless `text/event-stream` (see the module docs of `app::http::events`)", body = String, content_type = "text/event-stream"),
        (status = 403, description = "A customer-scoped token: the stream shows every customer", body = Problem, content_type = super::openapi::PROBLEM),
        (status = 404, description = "This service has no change feed", body = Problem, content_type = super::openapi::PROBLEM),
    )
)]
/// `GET /events`: 404 when the service has no change feed.
pub(super) async fn events(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, Problem> {
    let Some(changes) = state.changes.clone() else {
        return Err(Problem::new(
            ProblemType::NotFound,
            "this service has no change feed",
        ));
    };
    let mut flow = tokio::time::interval(FLOW_EVERY);
    flow.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let stream = Stream {
        feed: changes.feed(),
        closing: changes.closing(),
        state,
        caller,
        flow,
        ready_sent: false,
    };
    let events = futures_util::stream::unfold(stream, |mut stream| async move {
        let event = stream.next().await?;
        Some((Ok::<_, Infallible>(event), stream))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

impl Stream {
    /// The next event, `None` when the stream ends (the service stops).
    async fn next(&mut self) -> Option<Event> {
        if !self.ready_sent {
            self.ready_sent = true;
            return Some(Event::default().event("ready").data("{}"));
        }
        loop {
            let woken = tokio::select! {
                biased;
                _ = self.closing.wait_for(|closing| *closing) => Woken::Closing,
                change = self.feed.recv() => Woken::Change(change),
                _ = self.flow.tick() => Woken::Tick,
            };
            match woken {
                Woken::Closing | Woken::Change(Err(broadcast::error::RecvError::Closed)) => {
                    return None;
                }
                Woken::Change(Ok(id)) => {
                    if let Some(event) = self.order_event(id).await {
                        return Some(event);
                    }
                }
                Woken::Change(Err(broadcast::error::RecvError::Lagged(missed))) => {
                    tracing::debug!(missed, "an event stream fell behind; it resyncs");
                    return Some(
                        Event::default()
                            .event("resync")
                            .data(json!({ "missed": missed }).to_string()),
                    );
                }
                Woken::Tick => {
                    let figures = flow::figures(&self.state).await?;
                    if let Ok(event) = Event::default().event("flow").json_data(figures) {
                        return Some(event);
                    }
                }
            }
        }
    }

    /// The `order` event of `id`, when the caller may see it and it can be read.
    async fn order_event(&self, id: OrderId) -> Option<Event> {
        match self.state.orders.order(id).await {
            Ok(order) if self.caller.may_access(order.customer_id().as_str()) => Event::default()
                .event("order")
                .json_data(OrderView::from(&order))
                .ok(),
            Ok(_) => None,
            Err(error) => {
                // A message about an unknown order (rejected), or a store failure: the
                // page learns of the order with its next change.
                tracing::debug!(order_id = %id, %error, "no order event");
                None
            }
        }
    }
}
