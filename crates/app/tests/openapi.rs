//! The OpenAPI document against the running router (`app::http::router` with
//! `tower::ServiceExt::oneshot`): `GET /openapi.json` serves it, open even with
//! authentication on; every documented operation is served (not the "no such resource"
//! fallback); and every status a battery of good and bad requests draws from an operation
//! (no token, a scoped token, malformed ids, unknown ids, bodies that are not JSON, not
//! declared JSON, too large, of the wrong shape, invalid, over the limits, a conflicting
//! cancel, the rate limit, a dependency down) is one the document lists for it.
//!
//! That no route is served undocumented is enforced where routes are registered
//! (`app::http::documented_routes` takes only `#[utoipa::path]` handlers) and checked by
//! the source test at the end of this file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use app::http::{self, AppState, RateLimit, StoreAndBusProbe, Tokens, openapi};
use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use chrono::{TimeZone, Utc};
use http_body_util::BodyExt;
use orders_app::{ManualClock, OrdersConfig, OrdersService};
use orders_store::InMemoryOrderStore;
use serde_json::{Value, json};
use tower::ServiceExt;
use utoipa::openapi::HttpMethod;

const TOKENS: &str = "admin-token\nalice-token c-1\n";

/// A router with authentication, and optionally a rate limit and a readiness switch.
fn router(rate_limit: Option<RateLimit>, ready: Arc<AtomicBool>) -> Router {
    let store = Arc::new(InMemoryOrderStore::new());
    let now = Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap();
    let orders = OrdersService::new(
        store.clone(),
        Arc::new(ManualClock::new(now)),
        OrdersConfig::default(),
    );
    let probe = StoreAndBusProbe::new(store, move || ready.load(Ordering::SeqCst));
    http::router(
        AppState::new(orders, Arc::new(probe))
            .auth(Some(Tokens::parse(TOKENS).unwrap()))
            .rate_limit(rate_limit),
    )
}

/// One request of the battery.
struct Try {
    method: Method,
    uri: String,
    token: Option<&'static str>,
    content_type: Option<&'static str>,
    body: Option<Vec<u8>>,
}

impl Try {
    fn new(method: Method, uri: impl Into<String>) -> Self {
        Self {
            method,
            uri: uri.into(),
            token: Some("admin-token"),
            content_type: None,
            body: None,
        }
    }

    fn token(mut self, token: Option<&'static str>) -> Self {
        self.token = token;
        self
    }

    fn json(mut self, json: &Value) -> Self {
        self.content_type = Some("application/json");
        self.body = Some(json.to_string().into_bytes());
        self
    }

    fn raw(mut self, content_type: Option<&'static str>, body: impl Into<Vec<u8>>) -> Self {
        self.content_type = content_type;
        self.body = Some(body.into());
        self
    }
}

struct Reply {
    status: StatusCode,
    body: Value,
}

async fn send(router: &Router, attempt: &Try) -> Reply {
    let mut builder = Request::builder()
        .method(attempt.method.clone())
        .uri(&attempt.uri);
    if let Some(token) = attempt.token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if let Some(content_type) = attempt.content_type {
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    let body = attempt.body.clone().map_or_else(Body::empty, Body::from);
    let response = router
        .clone()
        .oneshot(builder.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

fn order_body(customer: &str) -> Value {
    json!({
        "customerId": customer,
        "currency": "EUR",
        "items": [{ "productId": "sku-1", "quantity": 2, "price": 29.9 }],
        "shippingAddress": {
            "street": "Hauptstrasse 1", "city": "Berlin", "postalCode": "10115", "country": "DE"
        }
    })
}

fn http_method(method: &Method) -> HttpMethod {
    match *method {
        Method::GET => HttpMethod::Get,
        Method::POST => HttpMethod::Post,
        Method::PUT => HttpMethod::Put,
        Method::DELETE => HttpMethod::Delete,
        Method::PATCH => HttpMethod::Patch,
        Method::HEAD => HttpMethod::Head,
        Method::OPTIONS => HttpMethod::Options,
        _ => HttpMethod::Trace,
    }
}

/// Every (path template, method) of the document.
fn documented_operations() -> Vec<(String, Method)> {
    let doc = serde_json::to_value(openapi::document()).unwrap();
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
            operations.push((path.clone(), method));
        }
    }
    operations
}

/// Places an order for `customer` and returns its id.
async fn place(router: &Router, customer: &str) -> String {
    let reply = send(
        router,
        &Try::new(Method::POST, "/orders").json(&order_body(customer)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply.body["orderId"].as_str().unwrap().to_owned()
}

/// The battery for one operation: `template` with `{id}` filled in several ways.
fn battery(template: &str, method: &Method, ids: &Ids) -> Vec<Try> {
    let fill = |id: &str| template.replace("{id}", id);
    let mut tries = Vec::new();
    let ids_to_try: Vec<&str> = if template.contains("{id}") {
        vec![
            &ids.alices,
            &ids.bobs,
            &ids.cancelled,
            &ids.unknown,
            "not-a-uuid",
        ]
    } else {
        vec![""]
    };
    for id in ids_to_try {
        let uri = fill(id);
        for token in [
            None,
            Some("wrong-token"),
            Some("admin-token"),
            Some("alice-token"),
        ] {
            tries.push(Try::new(method.clone(), uri.clone()).token(token));
            if *method == Method::POST {
                let good = if template == "/orders" {
                    order_body("c-1")
                } else {
                    json!({ "reason": "changed my mind" })
                };
                tries.push(
                    Try::new(method.clone(), uri.clone())
                        .token(token)
                        .json(&good),
                );
                tries.push(
                    Try::new(method.clone(), uri.clone())
                        .token(token)
                        .json(&order_body("c-2")),
                );
                let bad_bodies = [
                    json!({}),
                    json!({ "reason": "" }),
                    json!({ "reason": "x".repeat(501) }),
                    json!({ "customerId": "c-1" }),
                    json!([1, 2]),
                    {
                        let mut many = order_body("c-1");
                        many["items"] = Value::Array(vec![many["items"][0].clone(); 101]);
                        many
                    },
                    {
                        let mut long = order_body("c-1");
                        long["customerId"] = Value::String("c".repeat(201));
                        long
                    },
                    {
                        let mut invalid = order_body("c-1");
                        invalid["items"][0]["quantity"] = json!(-1);
                        invalid
                    },
                ];
                for bad in bad_bodies {
                    tries.push(
                        Try::new(method.clone(), uri.clone())
                            .token(token)
                            .json(&bad),
                    );
                }
                tries.push(
                    Try::new(method.clone(), uri.clone())
                        .token(token)
                        .raw(Some("application/json"), "{not json"),
                );
                tries.push(
                    Try::new(method.clone(), uri.clone())
                        .token(token)
                        .raw(Some("text/plain"), "hello"),
                );
                tries.push(
                    Try::new(method.clone(), uri.clone())
                        .token(token)
                        .raw(None, "{}"),
                );
                tries.push(Try::new(method.clone(), uri.clone()).token(token).raw(
                    Some("application/json"),
                    vec![b' '; http::MAX_BODY_BYTES + 1],
                ));
            } else {
                for query in ["?afterVersion=1&waitMs=1", "?afterVersion=1", "?bogus=1"] {
                    tries.push(Try::new(method.clone(), format!("{uri}{query}")).token(token));
                }
            }
        }
    }
    tries
}

struct Ids {
    alices: String,
    bobs: String,
    cancelled: String,
    unknown: String,
}

#[tokio::test]
async fn every_status_an_operation_answers_is_documented_for_it() {
    let ready = Arc::new(AtomicBool::new(true));
    let app = router(None, ready.clone());
    let ids = Ids {
        alices: place(&app, "c-1").await,
        bobs: place(&app, "c-2").await,
        // Cancelled before the battery, so a second cancel is a conflict-free repeat and
        // other transitions are refused.
        cancelled: {
            let id = place(&app, "c-1").await;
            let reply = send(
                &app,
                &Try::new(Method::POST, format!("/orders/{id}/cancel"))
                    .json(&json!({ "reason": "first" })),
            )
            .await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            id
        },
        unknown: uuid::Uuid::new_v4().to_string(),
    };

    // (operation, status) → how many requests drew it.
    let mut seen: BTreeMap<(String, String), BTreeSet<u16>> = BTreeMap::new();
    let mut undocumented = Vec::new();
    let operations = documented_operations();
    assert!(operations.len() >= 8, "{operations:?}");
    for (template, method) in &operations {
        let documented =
            openapi::documented_statuses(template, http_method(method)).unwrap_or_default();
        for attempt in battery(template, method, &ids) {
            let reply = send(&app, &attempt).await;
            let status = reply.status.as_u16();
            assert!(
                !(status == 404 && reply.body["detail"] == "no such resource"),
                "{method} {} is documented but not served",
                attempt.uri
            );
            seen.entry((template.clone(), method.to_string()))
                .or_default()
                .insert(status);
            if !documented.contains(&status) {
                undocumented.push(format!(
                    "{method} {} (as {template}) answered {status}: {}",
                    attempt.uri, reply.body
                ));
            }
        }
    }

    // The rate limit: a burst of one, then 429 on every limited route.
    let limited = router(
        Some(RateLimit {
            per_sec: 1,
            burst: 1,
        }),
        ready.clone(),
    );
    for (template, method) in &operations {
        let uri = template.replace("{id}", &ids.unknown);
        let documented =
            openapi::documented_statuses(template, http_method(method)).unwrap_or_default();
        for _ in 0..3 {
            let status = send(&limited, &Try::new(method.clone(), uri.clone()))
                .await
                .status
                .as_u16();
            seen.entry((template.clone(), method.to_string()))
                .or_default()
                .insert(status);
            if !documented.contains(&status) {
                undocumented.push(format!("{method} {uri} (rate limited) answered {status}"));
            }
        }
    }

    // A dependency down: readiness answers 503.
    ready.store(false, Ordering::SeqCst);
    let reply = send(&app, &Try::new(Method::GET, "/readyz")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        openapi::documented_statuses("/readyz", HttpMethod::Get)
            .unwrap()
            .contains(&503)
    );

    assert!(
        undocumented.is_empty(),
        "answers missing from the OpenAPI document:\n{}",
        undocumented.join("\n")
    );
    // The battery reached the answers it is meant to reach, so it cannot pass idly.
    let statuses: BTreeSet<u16> = seen.values().flatten().copied().collect();
    for expected in [200, 201, 400, 401, 403, 404, 409, 413, 415, 422, 429] {
        assert!(
            statuses.contains(&expected),
            "no request drew {expected}: {seen:?}"
        );
    }
    println!("statuses drawn per operation: {seen:?}");
}

#[tokio::test]
async fn the_document_is_served_open_even_with_authentication_on() {
    let app = router(None, Arc::new(AtomicBool::new(true)));
    let reply = send(&app, &Try::new(Method::GET, "/openapi.json").token(None)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["openapi"], "3.1.0");
    assert_eq!(
        reply.body,
        serde_json::to_value(openapi::document()).unwrap(),
        "the served document is the generated one"
    );
    for path in ["/orders", "/orders/{id}/cancel", "/openapi.json"] {
        assert!(reply.body["paths"][path].is_object(), "{path}");
    }
}

/// Routes are registered only through `documented_routes` (`routes!` of `#[utoipa::path]`
/// handlers); a plain `.route(` anywhere in the HTTP module would serve a path the
/// document does not know.
#[test]
fn no_route_is_registered_outside_the_documented_router() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut offenders = Vec::new();
    let mut files = 0;
    let mut stack = vec![dir];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_some_and(|ext| ext == "rs") {
                files += 1;
                let text = std::fs::read_to_string(&path).unwrap();
                for (number, line) in text.lines().enumerate() {
                    let code = line.split("//").next().unwrap_or_default();
                    for call in [".route(", ".route_service(", ".nest(", ".nest_service("] {
                        if code.contains(call) {
                            offenders.push(format!("{}:{}: {line}", path.display(), number + 1));
                        }
                    }
                }
            }
        }
    }
    assert!(files >= 5, "read {files} files");
    assert!(
        offenders.is_empty(),
        "routes registered without their OpenAPI description (use `routes!` in documented_routes):\n{}",
        offenders.join("\n")
    );
}
