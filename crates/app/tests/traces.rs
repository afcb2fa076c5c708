//! One order is one trace (issue 10 §2): in the in-process system (in-memory bus and
//! store), the spans of one order, exported to the OpenTelemetry SDK's in-memory
//! exporter, share one trace id and form the chain the messages' `traceparent` carries:
//! `POST /orders` → relay publish order.placed → payments handle order.placed → orders
//! handle payment.approved → relay publish order.paid → stock handle order.paid →
//! orders handle stock.reserved (the final commit).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{sync::Arc, time::Duration};

use app::{
    http::{self, AppState, StoreAndBusProbe},
    system::{InProcessSystem, SystemConfig},
    telemetry::{self, Instruments, Telemetry},
};
use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use http_body_util::BodyExt;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use orders_domain::{OrderId, OrderStatus};
use serde_json::{Value, json};
use tower::ServiceExt;
use tracing_subscriber::{Layer as _, filter::filter_fn, layer::SubscriberExt as _};

const DEADLINE: Duration = Duration::from_secs(5);

/// The chain, as span names: each span's parent is the one before it.
const CHAIN: [&str; 7] = [
    "POST /orders",
    "relay publish order.placed",
    "payments handle order.placed",
    "orders handle payment.approved",
    "relay publish order.paid",
    "stock handle order.paid",
    "orders handle stock.reserved",
];

/// The exporter every span of this test binary ends in.
fn trace_into_memory() -> InMemorySpanExporter {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry().with(
        telemetry::traces::layer(provider)
            .with_filter(filter_fn(|meta| meta.target() == telemetry::SPAN_TARGET)),
    );
    tracing::subscriber::set_global_default(subscriber).unwrap();
    telemetry::traces::install_propagation();
    exporter
}

fn span<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let named: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(
        named.len(),
        1,
        "one span named {name:?}; all: {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    named[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_orders_spans_share_a_trace_and_form_the_flows_parent_chain() {
    let exporter = trace_into_memory();
    let system = InProcessSystem::start(SystemConfig::default())
        .await
        .unwrap();
    let router = http::router(
        AppState::new(
            system.orders.clone(),
            Arc::new(StoreAndBusProbe::new(system.orders.store().clone(), || {
                true
            })),
        )
        .metrics(Instruments::new(Telemetry::On).metrics()),
    );

    let body = json!({
        "customerId": "c-1",
        "currency": "EUR",
        "items": [{"productId": "book", "quantity": 1, "price": 12.00}],
        "shippingAddress": {"street": "Main St 1", "city": "Berlin", "postalCode": "10115", "country": "DE"}
    });
    let request = Request::post("/orders")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = router.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let order: Value = serde_json::from_slice(&bytes).unwrap();
    let id: OrderId = order["orderId"].as_str().unwrap().parse().unwrap();
    system
        .wait_for_status(id, OrderStatus::StockReserved, DEADLINE)
        .await
        .unwrap();
    // Every handler has returned (its span ended) once the system is idle.
    assert!(system.settle(DEADLINE).await, "the system did not settle");

    let spans = exporter.get_finished_spans().unwrap();
    let chain: Vec<&SpanData> = CHAIN.iter().map(|name| span(&spans, name)).collect();
    let trace: TraceId = chain[0].span_context.trace_id();
    assert_eq!(
        chain[0].parent_span_id,
        SpanId::INVALID,
        "the request starts the trace"
    );
    for pair in chain.windows(2) {
        let (parent, child) = (pair[0], pair[1]);
        assert_eq!(
            child.span_context.trace_id(),
            trace,
            "{} is in the order's trace",
            child.name
        );
        assert_eq!(
            child.parent_span_id,
            parent.span_context.span_id(),
            "{} is a child of {}",
            child.name,
            parent.name
        );
    }
    // The messages Orders committed kept the request's trace: nothing of this order
    // started a trace of its own.
    let roots: Vec<_> = spans
        .iter()
        .filter(|s| s.parent_span_id == SpanId::INVALID)
        .map(|s| &s.name)
        .collect();
    assert_eq!(roots, ["POST /orders"], "one root span");
    assert!(spans.iter().all(|s| s.span_context.trace_id() == trace));

    system.shutdown().await;
}
