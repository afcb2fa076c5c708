//! One order is one trace (issue 10 §2): in the in-process system (in-memory bus and
//! store), the spans of one order, exported to the OpenTelemetry SDK's in-memory
//! exporter, share one trace id and form the chain the messages' `traceparent` carries:
//! `POST /orders` → relay publish order.placed → payments handle order.placed → orders
//! handle payment.approved → relay publish order.paid → stock handle order.paid →
//! orders handle stock.reserved (the final commit).
//!
//! And `app serve` with `OTEL_EXPORTER_OTLP_ENDPOINT` set exports those spans over
//! OTLP http/protobuf: a fake collector on a local port receives them, at the latest
//! when the service stops.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

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

/// Reads one HTTP/1.1 request from `stream`: `(request line, content type, body)`;
/// `None` when the peer closed without one.
async fn receive(stream: &mut tokio::net::TcpStream) -> Option<(String, String, Vec<u8>)> {
    use tokio::io::AsyncReadExt as _;
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let header = |name: &str| {
        head.lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let length: usize = header("content-length").parse().unwrap_or(0);
    let mut body = buffer[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0u8; length - body.len()];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let request_line = head.lines().next().unwrap_or_default().to_owned();
    Some((request_line, header("content-type"), body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_exports_an_orders_spans_over_otlp_when_an_endpoint_is_set() {
    // The fake collector: every request it receives, until the test ends.
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", collector.local_addr().unwrap());
    let (received_tx, mut received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = collector.accept().await {
            let received_tx = received_tx.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt as _;
                // Recorded before it is answered: once the service has exited, every
                // export it made is in the channel.
                while let Some(request) = receive(&mut stream).await {
                    let _ = received_tx.send(request);
                    let answered = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    if answered.is_err() {
                        break;
                    }
                }
            });
        }
    });

    let mut child = Command::new(env!("CARGO_BIN_EXE_app"))
        .args(["serve", "--store", "memory", "--listen", "127.0.0.1:0"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let stderr = child.stderr.take().unwrap();
    let (listening_tx, listening) = tokio::sync::oneshot::channel();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let lines = log.clone();
    std::thread::spawn(move || {
        let mut listening_tx = Some(listening_tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(at) = line.find("listening on http://") {
                let rest = &line[at + "listening on ".len()..];
                let url = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                if let Some(tx) = listening_tx.take() {
                    let _ = tx.send(url);
                }
            }
            lines.lock().unwrap().push(line);
        }
    });
    let base = tokio::time::timeout(DEADLINE, listening)
        .await
        .expect("the service listens")
        .unwrap();

    let client = reqwest::Client::new();
    let body = json!({
        "customerId": "c-1",
        "currency": "EUR",
        "items": [{"productId": "book", "quantity": 1, "price": 12.00}],
        "shippingAddress": {"street": "Main St 1", "city": "Berlin", "postalCode": "10115", "country": "DE"}
    });
    let response = client
        .post(format!("{base}/orders"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let mut order: Value = response.json().await.unwrap();
    let id = order["orderId"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while order["status"] != "StockReserved" {
        assert!(tokio::time::Instant::now() < deadline, "{order}");
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

    // Stopping flushes the batch of spans not yet exported.
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exited = tokio::time::timeout(DEADLINE, tokio::task::spawn_blocking(move || child.wait()))
        .await
        .expect("the service stops on SIGTERM")
        .unwrap()
        .unwrap();
    assert!(exited.success(), "{}", log.lock().unwrap().join("\n"));
    let log = log.lock().unwrap().join("\n");
    assert!(log.contains("exporting spans over OTLP"), "{log}");

    // The protobuf strings are plain UTF-8: the span names are readable in the bodies.
    let mut exported = Vec::new();
    while let Ok((request_line, content_type, body)) = received.try_recv() {
        assert!(
            request_line.starts_with("POST /v1/traces "),
            "{request_line}"
        );
        assert_eq!(content_type, "application/x-protobuf");
        exported.extend_from_slice(&body);
    }
    let exported = String::from_utf8_lossy(&exported);
    for name in CHAIN {
        assert!(exported.contains(name), "{name} not exported over OTLP");
    }
}
