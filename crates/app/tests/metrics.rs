//! `GET /metrics` (issue 10 §1): after one order goes through the real server (port 0,
//! in-memory store and bus, in-process simulators), the Prometheus text shows the flow's
//! counters, histograms and gauges with the expected labels; the route label is the
//! matched template; no label carries an order id; the route stays open when tokens are
//! configured; with telemetry off it answers 404.
//!
//! The recorder is the process's (one per test binary), so counts are read as "at
//! least": the tests of this file share it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use app::{
    http::{self, AppState, StoreAndBusProbe, Tokens},
    serve::{self, ServeConfig, StoreSpec},
    telemetry::{Instruments, Telemetry},
};
use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use http_body_util::BodyExt;
use orders_app::{OrdersConfig, OrdersService, SystemClock};
use orders_store::InMemoryOrderStore;
use serde_json::{Value, json};
use tower::ServiceExt;

const DEADLINE: Duration = Duration::from_secs(10);

/// One sample of the text format: name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (the subset the exporter writes: no escapes in
/// our label values, no timestamps).
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').expect("label=value");
                    (key.to_owned(), value.trim_matches('"').to_owned())
                })
                .collect();
            Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().expect("a number"),
            }
        })
        .collect()
}

/// The value of the series `name` whose labels include `labels`, summed over the rest.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<_> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    (!matching.is_empty()).then(|| matching.iter().map(|s| s.value).sum())
}

fn order_body() -> Value {
    json!({
        "customerId": "c-1",
        "currency": "EUR",
        "items": [{"productId": "book", "quantity": 2, "price": 10.50}],
        "shippingAddress": {"street": "Main St 1", "city": "Berlin", "postalCode": "10115", "country": "DE"}
    })
}

fn looks_like_a_uuid(text: &str) -> bool {
    text.split(|c: char| !c.is_ascii_hexdigit() && c != '-')
        .any(|word| word.len() == 36 && word.matches('-').count() == 4)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_shows_the_flows_counters_histograms_and_gauges() {
    let config = ServeConfig::new("127.0.0.1:0".parse().unwrap(), StoreSpec::Memory);
    let server = serve::spawn(config).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let client = reqwest::Client::new();

    // The customer places an order and follows it to StockReserved with blocking reads.
    let response = client
        .post(format!("{base}/orders"))
        .json(&order_body())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let mut order: Value = response.json().await.unwrap();
    let id = order["orderId"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + DEADLINE;
    while order["status"] != "StockReserved" {
        assert!(
            Instant::now() < deadline,
            "order not StockReserved: {order}"
        );
        let version = order["version"].as_u64().unwrap();
        order = client
            .get(format!(
                "{base}/orders/{id}?afterVersion={version}&waitMs=5000"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    }
    // An unknown path: counted, but not under its own path.
    let response = client
        .get(format!("{base}/no/such/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    // The handler records its outcome just after the commit the read saw: scrape until
    // the last hop is counted (each scrape is a request; nothing sleeps).
    let (samples, text) = loop {
        let response = client.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        let text = response.text().await.unwrap();
        let samples = parse(&text);
        let done = value(
            &samples,
            "messages_handled_total",
            &[("topic", "stock.reserved"), ("group", "orders")],
        )
        .is_some()
            && value(&samples, "orders_finished_total", &[]).is_some()
            && value(&samples, "bus_backlog_messages", &[("group", "orders")]).is_some()
            // The gauges come from a sampler task of their own: wait for its first pass.
            && value(&samples, "outbox_unsent_messages", &[]).is_some()
            && value(&samples, "outbox_oldest_unsent_age_seconds", &[]).is_some();
        if done {
            break (samples, text);
        }
        assert!(
            Instant::now() < deadline,
            "the flow's metrics did not appear:\n{text}"
        );
    };

    // HTTP: by method, route template and status, with a duration histogram.
    let placed = [("method", "POST"), ("route", "/orders"), ("status", "201")];
    assert!(value(&samples, "http_requests_total", &placed).unwrap() >= 1.0);
    assert!(value(&samples, "http_request_duration_seconds_count", &placed).unwrap() >= 1.0);
    let buckets: Vec<_> = samples
        .iter()
        .filter(|s| {
            s.name == "http_request_duration_seconds_bucket"
                && s.labels.get("route").map(String::as_str) == Some("/orders")
        })
        .collect();
    assert!(buckets.len() > 10, "ms-range buckets: {buckets:?}");
    assert!(buckets.iter().any(|s| s.labels["le"] == "0.001"));
    let read = [
        ("method", "GET"),
        ("route", "/orders/{id}"),
        ("status", "200"),
    ];
    assert!(value(&samples, "http_requests_total", &read).unwrap() >= 1.0);
    let unmatched = [("route", "unmatched"), ("status", "404")];
    assert!(value(&samples, "http_requests_total", &unmatched).unwrap() >= 1.0);

    // Messages: each hop of the flow, by topic, group and outcome, with its duration.
    for (topic, group) in [
        ("order.placed", "payments"),
        ("payment.approved", "orders"),
        ("order.paid", "stock"),
        ("stock.reserved", "orders"),
    ] {
        let labels = [("topic", topic), ("group", group), ("outcome", "applied")];
        assert!(
            value(&samples, "messages_handled_total", &labels).unwrap_or(0.0) >= 1.0,
            "{topic} in {group}:\n{text}"
        );
        assert!(
            value(
                &samples,
                "message_handling_duration_seconds_count",
                &[("topic", topic), ("group", group)]
            )
            .unwrap()
                >= 1.0
        );
    }

    // The relay, the outbox and the bus.
    for topic in ["order.placed", "order.paid"] {
        assert!(
            value(
                &samples,
                "relay_publish_duration_seconds_count",
                &[("topic", topic)]
            )
            .unwrap()
                >= 1.0
        );
        assert!(
            value(
                &samples,
                "relay_publish_lag_seconds_count",
                &[("topic", topic)]
            )
            .unwrap()
                >= 1.0
        );
    }
    assert!(value(&samples, "outbox_unsent_messages", &[]).is_some());
    assert!(value(&samples, "outbox_oldest_unsent_age_seconds", &[]).unwrap() >= 0.0);
    for group in ["orders", "payments", "stock"] {
        assert!(value(&samples, "bus_backlog_messages", &[("group", group)]).is_some());
    }

    // Orders by final state, and the flow's duration.
    let reserved = [("status", "StockReserved")];
    assert!(value(&samples, "orders_finished_total", &reserved).unwrap() >= 1.0);
    assert!(value(&samples, "order_flow_duration_seconds_count", &reserved).unwrap() >= 1.0);

    // Bounded labels: no order id, no id of any kind, anywhere.
    assert!(!text.contains(&id), "an order id in /metrics:\n{text}");
    for sample in &samples {
        for (key, value) in &sample.labels {
            assert!(
                !looks_like_a_uuid(value),
                "{}: label {key}={value} is an id",
                sample.name
            );
        }
    }

    server
        .shutdown(app::serve::StopReason::Requested)
        .await
        .unwrap();
}

fn router(auth: Option<Tokens>, telemetry: Telemetry) -> axum::Router {
    let store = Arc::new(InMemoryOrderStore::new());
    let orders = OrdersService::new(
        store.clone(),
        Arc::new(SystemClock),
        OrdersConfig::default(),
    );
    http::router(
        AppState::new(orders, Arc::new(StoreAndBusProbe::new(store, || true)))
            .auth(auth)
            .metrics(Instruments::new(telemetry).metrics()),
    )
}

async fn get(router: &axum::Router, uri: &str) -> (StatusCode, String) {
    let request = Request::builder().uri(uri).body(Body::empty()).unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn metrics_stay_open_when_tokens_are_configured() {
    let router = router(Some(Tokens::parse("admin-token\n").unwrap()), Telemetry::On);

    let (orders, _) = get(&router, "/orders/9f3e1c1e-0000-4000-8000-000000000001").await;
    let (metrics, text) = get(&router, "/metrics").await;

    assert_eq!(orders, StatusCode::UNAUTHORIZED, "the API itself is closed");
    assert_eq!(metrics, StatusCode::OK, "{text}");
    // The refused request is counted under its route template.
    let refused = [("route", "/orders/{id}"), ("status", "401")];
    assert!(value(&parse(&text), "http_requests_total", &refused).unwrap() >= 1.0);
}

#[tokio::test]
async fn with_telemetry_off_metrics_answer_404() {
    let router = router(None, Telemetry::Off);

    let (status, body) = get(&router, "/metrics").await;

    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("--telemetry off"), "{body}");
}
