//! Limits of the HTTP API: the per-client rate limit (429 + `Retry-After` once the burst
//! is spent, per peer address, probes exempt) through `app::http::router` with
//! `tower::ServiceExt::oneshot`, and through the real server (`app::serve::spawn`) where
//! the peer address comes from the socket; the caps on items per order and on field
//! lengths (422 naming the field).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::SocketAddr, sync::Arc};

use app::{
    http::{
        self, AppState, RateLimit, StoreAndBusProbe,
        limits::{MAX_FIELD_CHARS, MAX_ITEMS_PER_ORDER, MAX_REASON_CHARS},
    },
    serve::{ServeConfig, StopReason, StoreSpec},
};
use axum::{
    Router,
    body::Body,
    extract::ConnectInfo,
    http::{HeaderMap, Method, Request, StatusCode, header},
};
use chrono::{TimeZone, Utc};
use http_body_util::BodyExt;
use orders_app::{ManualClock, OrdersConfig, OrdersService};
use orders_store::InMemoryOrderStore;
use serde_json::{Value, json};
use tower::ServiceExt;

fn router(rate_limit: Option<RateLimit>) -> Router {
    let store = Arc::new(InMemoryOrderStore::new());
    let now = Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap();
    let orders = OrdersService::new(
        store.clone(),
        Arc::new(ManualClock::new(now)),
        OrdersConfig::default(),
    );
    http::router(
        AppState::new(orders, Arc::new(StoreAndBusProbe::new(store, || true)))
            .rate_limit(rate_limit),
    )
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn send(router: &Router, mut request: Request<Body>, peer: Option<&str>) -> Reply {
    if let Some(peer) = peer {
        let peer: SocketAddr = peer.parse().unwrap();
        request.extensions_mut().insert(ConnectInfo(peer));
    }
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn post_json(uri: &str, json: &Value) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json.to_string()))
        .unwrap()
}

fn order_body() -> Value {
    json!({
        "customerId": "c-1",
        "currency": "EUR",
        "items": [{"productId": "book", "quantity": 1, "price": 10}],
        "shippingAddress": {
            "street": "Main St 1", "city": "Berlin", "postalCode": "10115", "country": "DE"
        }
    })
}

fn fields(reply: &Reply) -> Vec<String> {
    reply.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect()
}

fn assert_validation(reply: &Reply, field: &str, message: &str) {
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    assert_eq!(
        reply.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );
    assert_eq!(reply.body["type"], "urn:orders:problem:validation");
    assert_eq!(fields(reply), [field], "{}", reply.body);
    assert_eq!(reply.body["errors"][0]["message"], message);
}

// ---------------------------------------------------------------------------------------
// Rate limit

#[tokio::test]
async fn a_client_over_its_burst_gets_429_with_retry_after() {
    // One a second: the refill during the test cannot add a whole request.
    let router = router(Some(RateLimit {
        per_sec: 1,
        burst: 3,
    }));
    for _ in 0..3 {
        let reply = send(&router, get("/orders/x"), Some("10.0.0.1:5000")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "under the limit");
    }
    let reply = send(&router, get("/orders/x"), Some("10.0.0.1:5001")).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        reply.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );
    assert_eq!(reply.body["type"], "urn:orders:problem:too-many-requests");
    assert_eq!(reply.body["status"], 429);
    let retry_after: u64 = reply.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry_after, 1);

    let other = send(&router, get("/orders/x"), Some("10.0.0.2:5000")).await;
    assert_eq!(
        other.status,
        StatusCode::BAD_REQUEST,
        "another client has its own allowance"
    );
    for probe in ["/healthz", "/readyz"] {
        let reply = send(&router, get(probe), Some("10.0.0.1:5000")).await;
        assert_eq!(reply.status, StatusCode::OK, "{probe} is never limited");
    }
}

#[tokio::test]
async fn without_a_rate_limit_nothing_is_refused() {
    let router = router(None);
    for _ in 0..50 {
        let reply = send(&router, get("/healthz"), Some("10.0.0.1:5000")).await;
        assert_eq!(reply.status, StatusCode::OK);
        let reply = send(&router, get("/orders/x"), Some("10.0.0.1:5000")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn the_server_limits_by_peer_address_and_authenticates() {
    let dir = std::env::temp_dir().join(format!("orders-limits-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "the-token\n").unwrap();
    let mut config = ServeConfig::new("127.0.0.1:0".parse().unwrap(), StoreSpec::Memory);
    config.edge.auth_tokens_file = Some(tokens);
    config.edge.rate_limit_per_sec = Some(1);
    config.edge.rate_limit_burst = Some(2);
    let server = app::serve::spawn(config).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let client = reqwest::Client::new();

    let unauthenticated = client.get(format!("{base}/orders/x")).send().await.unwrap();
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        unauthenticated.headers()[header::WWW_AUTHENTICATE],
        "Bearer"
    );
    let authenticated = client
        .get(format!("{base}/orders/x"))
        .bearer_auth("the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(authenticated.status(), StatusCode::BAD_REQUEST);
    let limited = client
        .get(format!("{base}/orders/x"))
        .bearer_auth("the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key(header::RETRY_AFTER));
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    server.shutdown(StopReason::Requested).await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------
// Request limits

#[tokio::test]
async fn too_many_items_is_422_naming_items() {
    let router = router(None);
    let mut body = order_body();
    let item = body["items"][0].clone();
    body["items"] = Value::Array(vec![item; MAX_ITEMS_PER_ORDER]);
    let reply = send(&router, post_json("/orders", &body), None).await;
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "the cap itself is allowed"
    );

    let item = body["items"][0].clone();
    body["items"] = Value::Array(vec![item; MAX_ITEMS_PER_ORDER + 1]);
    let reply = send(&router, post_json("/orders", &body), None).await;
    assert_validation(
        &reply,
        "items",
        &format!("must contain at most {MAX_ITEMS_PER_ORDER} items"),
    );
}

#[tokio::test]
async fn a_too_long_field_is_422_naming_it() {
    let router = router(None);
    let too_long = "x".repeat(MAX_FIELD_CHARS + 1);
    let message = format!("must be at most {MAX_FIELD_CHARS} characters");
    for (pointer, field) in [
        ("/customerId", "customerId"),
        ("/currency", "currency"),
        ("/items/0/productId", "items[0].productId"),
        ("/shippingAddress/street", "shippingAddress.street"),
        ("/shippingAddress/city", "shippingAddress.city"),
        ("/shippingAddress/postalCode", "shippingAddress.postalCode"),
        ("/shippingAddress/country", "shippingAddress.country"),
    ] {
        let mut body = order_body();
        *body.pointer_mut(pointer).unwrap() = json!(too_long);
        let reply = send(&router, post_json("/orders", &body), None).await;
        assert_validation(&reply, field, &message);
    }
}

#[tokio::test]
async fn a_too_long_cancellation_reason_is_422_naming_it() {
    let router = router(None);
    let placed = send(&router, post_json("/orders", &order_body()), None).await;
    let id = placed.body["orderId"].as_str().unwrap();
    let reason = "x".repeat(MAX_REASON_CHARS + 1);
    let reply = send(
        &router,
        post_json(
            &format!("/orders/{id}/cancel"),
            &json!({ "reason": reason }),
        ),
        None,
    )
    .await;
    assert_validation(
        &reply,
        "reason",
        &format!("must be at most {MAX_REASON_CHARS} characters"),
    );
}
