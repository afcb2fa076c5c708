//! Authentication of the HTTP API, through `app::http::router` with
//! `tower::ServiceExt::oneshot`: missing and wrong tokens (401 + `WWW-Authenticate`),
//! customer-scoped tokens (404 for other customers' orders, 403 for placing an order for
//! another customer or reading cross-customer routes), the open probes, and the start-up
//! rules of `--auth-tokens-file` (a malformed file names the line; a non-loopback address
//! without it needs `--allow-unauthenticated`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::SocketAddr, sync::Arc};

use app::{
    http::{self, AppState, StoreAndBusProbe, Tokens},
    serve::{ServeConfig, StoreSpec, config::EdgeFlags},
};
use axum::{
    Router,
    body::Body,
    http::{HeaderMap, Method, Request, StatusCode, header},
};
use chrono::{TimeZone, Utc};
use http_body_util::BodyExt;
use orders_app::{ManualClock, OrdersConfig, OrdersService};
use orders_store::InMemoryOrderStore;
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKENS: &str = "\
# operators
admin-token
# customers
alice-token c-1
bob-token   c-2
";

fn router() -> Router {
    let store = Arc::new(InMemoryOrderStore::new());
    let now = Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap();
    let orders = OrdersService::new(
        store.clone(),
        Arc::new(ManualClock::new(now)),
        OrdersConfig::default(),
    );
    http::router(
        AppState::new(orders, Arc::new(StoreAndBusProbe::new(store, || true)))
            .auth(Some(Tokens::parse(TOKENS).unwrap())),
    )
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn send(
    router: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    json: Option<&Value>,
) -> Reply {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = match json {
        Some(json) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json.to_string())),
        None => builder.body(Body::empty()),
    }
    .unwrap();
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

fn order_body(customer: &str) -> Value {
    json!({
        "customerId": customer,
        "currency": "EUR",
        "items": [{"productId": "book", "quantity": 1, "price": 10}],
        "shippingAddress": {
            "street": "Main St 1", "city": "Berlin", "postalCode": "10115", "country": "DE"
        }
    })
}

async fn place(router: &Router, token: &str, customer: &str) -> String {
    let reply = send(
        router,
        Method::POST,
        "/orders",
        Some(token),
        Some(&order_body(customer)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply.body["orderId"].as_str().unwrap().to_owned()
}

fn assert_problem(reply: &Reply, status: StatusCode, kind: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(
        reply.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );
    assert_eq!(reply.body["type"], format!("urn:orders:problem:{kind}"));
    assert_eq!(reply.body["status"], status.as_u16());
}

#[tokio::test]
async fn a_missing_token_is_401_with_a_bearer_challenge_on_every_protected_route() {
    let router = router();
    let id = place(&router, "admin-token", "c-1").await;
    for (method, uri) in [
        (Method::POST, "/orders".to_owned()),
        (Method::GET, format!("/orders/{id}")),
        (Method::GET, format!("/orders/{id}/messages")),
        (Method::POST, format!("/orders/{id}/cancel")),
        (Method::GET, "/dead-letters".to_owned()),
        (Method::GET, "/dead-letters/1".to_owned()),
        (Method::GET, "/events".to_owned()),
    ] {
        let reply = send(&router, method.clone(), &uri, None, Some(&json!({}))).await;
        assert_problem(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
        assert_eq!(reply.headers[header::WWW_AUTHENTICATE], "Bearer", "{uri}");
    }
}

#[tokio::test]
async fn a_wrong_or_malformed_token_is_401_and_never_echoed() {
    let router = router();
    let reply = send(&router, Method::GET, "/orders/x", Some("admin-tokem"), None).await;
    assert_problem(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(
        reply.headers[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer"),
    );
    assert!(!reply.body.to_string().contains("admin-tokem"));

    for value in ["Basic YWRtaW46eA==", "Bearer", "admin-token"] {
        let request = Request::get("/orders/x")
            .header(header::AUTHORIZATION, value)
            .body(Body::empty())
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{value}");
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}

#[tokio::test]
async fn an_unscoped_token_reaches_every_order() {
    let router = router();
    let alices = place(&router, "alice-token", "c-1").await;
    let reply = send(
        &router,
        Method::GET,
        &format!("/orders/{alices}"),
        Some("admin-token"),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = send(&router, Method::GET, "/orders/x", Some("admin-token"), None).await;
    assert_problem(&reply, StatusCode::BAD_REQUEST, "bad-request");
}

#[tokio::test]
async fn a_scoped_token_gets_404_for_another_customers_order_exactly_like_an_unknown_one() {
    let router = router();
    let bobs = place(&router, "bob-token", "c-2").await;
    let unknown = uuid::Uuid::now_v7();

    let own = send(
        &router,
        Method::GET,
        &format!("/orders/{bobs}"),
        Some("bob-token"),
        None,
    )
    .await;
    assert_eq!(own.status, StatusCode::OK, "its own order is visible");

    for (method, path, body) in [
        (Method::GET, "", None),
        (Method::GET, "?afterVersion=1&waitMs=20000", None),
        (Method::GET, "/messages", None),
        (Method::POST, "/cancel", Some(json!({"reason": "mine now"}))),
    ] {
        let theirs = send(
            &router,
            method.clone(),
            &format!("/orders/{bobs}{path}"),
            Some("alice-token"),
            body.as_ref(),
        )
        .await;
        assert_problem(&theirs, StatusCode::NOT_FOUND, "not-found");
        let missing = send(
            &router,
            method,
            &format!("/orders/{unknown}{path}"),
            Some("alice-token"),
            body.as_ref(),
        )
        .await;
        assert_problem(&missing, StatusCode::NOT_FOUND, "not-found");
        assert_eq!(
            theirs.body["detail"].as_str().unwrap().replace(&bobs, "ID"),
            missing.body["detail"]
                .as_str()
                .unwrap()
                .replace(&unknown.to_string(), "ID"),
            "{path}: the answer does not tell that the order exists"
        );
    }

    let after = send(
        &router,
        Method::GET,
        &format!("/orders/{bobs}"),
        Some("bob-token"),
        None,
    )
    .await;
    assert_eq!(
        after.body["status"], own.body["status"],
        "the refused cancel changed nothing"
    );
}

#[tokio::test]
async fn a_scoped_token_cannot_place_an_order_for_another_customer() {
    let router = router();
    let reply = send(
        &router,
        Method::POST,
        "/orders",
        Some("alice-token"),
        Some(&order_body("c-2")),
    )
    .await;
    assert_problem(&reply, StatusCode::FORBIDDEN, "forbidden");
    place(&router, "alice-token", "c-1").await;
}

#[tokio::test]
async fn a_scoped_token_is_refused_on_cross_customer_routes() {
    let router = router();
    for uri in ["/dead-letters", "/events"] {
        let reply = send(&router, Method::GET, uri, Some("alice-token"), None).await;
        assert_problem(&reply, StatusCode::FORBIDDEN, "forbidden");
    }
}

#[tokio::test]
async fn probes_and_counters_stay_open() {
    let router = router();
    let reply = send(&router, Method::GET, "/healthz", None, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = send(&router, Method::GET, "/readyz", None, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    for uri in ["/stats", "/metrics"] {
        // Not configured in this router: 404, but never a demand for a token.
        let reply = send(&router, Method::GET, uri, None, None).await;
        assert_ne!(reply.status, StatusCode::UNAUTHORIZED, "{uri}");
    }
}

// ---------------------------------------------------------------------------------------
// Start-up rules

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

#[test]
fn without_a_tokens_file_a_non_loopback_address_needs_allow_unauthenticated() {
    let flags = EdgeFlags::default();
    let error = flags.settings(addr("0.0.0.0:8080")).unwrap_err();
    assert!(
        error.to_string().contains("--allow-unauthenticated"),
        "{error}"
    );
    assert!(flags.settings(addr("[::]:8080")).is_err());

    let on_loopback = flags.settings(addr("127.0.0.1:8080")).unwrap();
    assert!(on_loopback.tokens.is_none());
    assert!(flags.settings(addr("[::1]:8080")).is_ok());

    let allowed = EdgeFlags {
        allow_unauthenticated: true,
        ..EdgeFlags::default()
    };
    assert!(allowed.settings(addr("0.0.0.0:8080")).is_ok());
}

#[test]
fn a_tokens_file_allows_any_address_and_a_malformed_one_names_its_line() {
    let dir = std::env::temp_dir().join(format!("orders-auth-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("tokens");
    std::fs::write(&good, TOKENS).unwrap();
    let bad = dir.join("bad-tokens");
    std::fs::write(&bad, "ok-token\nsecret-token c-1 extra words\n").unwrap();

    let flags = EdgeFlags {
        auth_tokens_file: Some(good),
        ..EdgeFlags::default()
    };
    let settings = flags.settings(addr("0.0.0.0:8080")).unwrap();
    assert_eq!(settings.tokens.map(|t| t.len()), Some(3));

    let flags = EdgeFlags {
        auth_tokens_file: Some(bad),
        ..EdgeFlags::default()
    };
    let error = format!("{:#}", flags.settings(addr("127.0.0.1:0")).unwrap_err());
    assert!(error.contains("line 2"), "{error}");
    assert!(!error.contains("secret-token"), "{error}");

    let flags = EdgeFlags {
        auth_tokens_file: Some(dir.join("missing")),
        ..EdgeFlags::default()
    };
    assert!(flags.settings(addr("127.0.0.1:0")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn serve_refuses_to_start_open_on_the_network() {
    let config = ServeConfig::new(addr("0.0.0.0:0"), StoreSpec::Memory);
    let Err(error) = app::serve::spawn(config).await else {
        panic!("it must refuse");
    };
    assert!(
        format!("{error:#}").contains("without authentication"),
        "{error:#}"
    );
}
