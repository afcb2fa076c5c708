//! The Prometheus recorder and the metrics of the flow (issue 10 §1).
//!
//! One recorder per process ([`install`], idempotent), rendered by `GET /metrics`
//! ([`render`]); the `metrics` macros record nothing until it is installed, so with
//! telemetry off they cost a branch. Names follow Prometheus conventions: the unit in
//! the name, `_total` for counters, label values from small fixed sets (methods, route
//! templates, status codes, topics, groups, outcomes, order statuses), never an id.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `http_requests_total` | counter | `method`, `route` (template, or `unmatched`), `status` |
//! | `http_request_duration_seconds` | histogram | `method`, `route`, `status` |
//! | `messages_handled_total` | counter | `topic`, `group`, `outcome` (`applied`, `duplicate`, `rejected`, `retried`, `dead_lettered`) |
//! | `message_handling_duration_seconds` | histogram | `topic`, `group` |
//! | `outbox_unsent_messages` | gauge | |
//! | `outbox_oldest_unsent_age_seconds` | gauge | |
//! | `relay_publish_duration_seconds` | histogram | `topic` |
//! | `relay_publish_lag_seconds` | histogram | `topic` (commit to publish) |
//! | `orders_finished_total` | counter | `status` (`StockReserved`, `Cancelled`) |
//! | `order_flow_duration_seconds` | histogram | `status` (placed to that state) |
//! | `bus_backlog_messages` | gauge | `group` |

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// HTTP requests answered.
pub const HTTP_REQUESTS: &str = "http_requests_total";
/// Time to answer an HTTP request.
pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";
/// Messages handled, by outcome.
pub const MESSAGES_HANDLED: &str = "messages_handled_total";
/// Time a handler took for one message.
pub const MESSAGE_HANDLING_DURATION: &str = "message_handling_duration_seconds";
/// Outbox rows not yet published.
pub const OUTBOX_UNSENT: &str = "outbox_unsent_messages";
/// Age of the oldest outbox row not yet published (0 when none).
pub const OUTBOX_OLDEST_UNSENT_AGE: &str = "outbox_oldest_unsent_age_seconds";
/// Time the bus took to accept a message the relay published.
pub const RELAY_PUBLISH_DURATION: &str = "relay_publish_duration_seconds";
/// Time from a message's commit (its timestamp) to its publication by the relay.
pub const RELAY_PUBLISH_LAG: &str = "relay_publish_lag_seconds";
/// Orders that reached a final state.
pub const ORDERS_FINISHED: &str = "orders_finished_total";
/// Time from placing an order to its final state.
pub const ORDER_FLOW_DURATION: &str = "order_flow_duration_seconds";
/// Messages queued or in hand per consumer group.
pub const BUS_BACKLOG: &str = "bus_backlog_messages";

/// Histogram buckets, in seconds, for this service: a commit or a handler takes
/// tenths of a millisecond to a few milliseconds, a whole flow a few milliseconds on
/// the in-memory bus and tens on a database; the long tail reaches seconds (retries,
/// a slow store).
pub const BUCKETS: [f64; 16] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's recorder (once; later calls return the same handle). `None`
/// when another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &BUCKETS);
            match builder.and_then(PrometheusBuilder::install_recorder) {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot install the metrics recorder: /metrics stays empty");
                    None
                }
            }
        })
        .clone()
}

/// The installed recorder's handle, if [`install`] ran.
#[must_use]
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE.get().cloned().flatten()
}

/// The metrics in the Prometheus text format.
#[must_use]
pub fn render(handle: &PrometheusHandle) -> String {
    handle.render()
}

/// The help lines of `/metrics`.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(HTTP_REQUESTS, "HTTP requests answered");
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "Time to answer an HTTP request"
    );
    describe_counter!(
        MESSAGES_HANDLED,
        "Messages handled, by topic, consumer group and outcome"
    );
    describe_histogram!(
        MESSAGE_HANDLING_DURATION,
        Unit::Seconds,
        "Time a handler took for one message"
    );
    describe_gauge!(OUTBOX_UNSENT, "Outbox rows not yet published");
    describe_gauge!(
        OUTBOX_OLDEST_UNSENT_AGE,
        Unit::Seconds,
        "Age of the oldest outbox row not yet published (0 when none)"
    );
    describe_histogram!(
        RELAY_PUBLISH_DURATION,
        Unit::Seconds,
        "Time the bus took to accept a message the outbox relay published"
    );
    describe_histogram!(
        RELAY_PUBLISH_LAG,
        Unit::Seconds,
        "Time from a message's commit to its publication by the outbox relay"
    );
    describe_counter!(ORDERS_FINISHED, "Orders that reached a final state");
    describe_histogram!(
        ORDER_FLOW_DURATION,
        Unit::Seconds,
        "Time from placing an order to its final state"
    );
    describe_gauge!(BUS_BACKLOG, "Messages queued or in hand per consumer group");
}
