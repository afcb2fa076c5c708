//! The HTTP API, through `app::http::router` with `tower::ServiceExt::oneshot` and no
//! socket: checkout, reads, cancel, idempotency, the message history, health and
//! readiness, and every error as a problem document. One test starts the real server
//! (`app::serve::spawn`) on port 0 and talks to it with a plain HTTP/1 client.
//!
//! Flows are awaited with a deadline (`wait_for_status`, `settle`, blocking reads), never
//! with sleeps.
//! Bodies are snapshotted as serde_json writes them, or through typed structs for
//! `assert_json_snapshot!` (insta's own data model does not know serde_json's
//! arbitrary-precision numbers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{sync::Arc, time::Duration};

use app::{
    http::{self, AppState, MAX_BODY_BYTES, StoreAndBusProbe},
    serve::{self, ServeConfig, StopReason, StoreSpec},
    system::{InProcessSystem, SystemConfig},
};
use async_trait::async_trait;
use axum::{
    Router,
    body::{Body, Bytes},
    http::{HeaderMap, Method, Request, StatusCode, header},
};
use chrono::{TimeZone, Utc};
use contracts::topics;
use http_body_util::{BodyExt, Full};
use messaging::{Envelope, MessageId};
use orders_app::{
    Commit, ManualClock, MessageRecord, ORDERS_SUBSCRIBER, OrderStore, OrdersConfig,
    OrdersMessageHandler, OrdersService, PruneReport, StoreError,
};
use orders_domain::{Order, OrderId, OrderStatus, Timestamp};
use orders_store::InMemoryOrderStore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tower::ServiceExt;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(10);
const NOW: &str = "2026-01-05T10:00:00.000Z";

// ---------------------------------------------------------------------------------------
// Checkout and reads

#[tokio::test]
async fn placing_an_order_answers_201_with_its_location_and_the_order() {
    let app = TestApp::new();

    let reply = app.send(post_json("/orders", &order_body())).await;

    assert_eq!(reply.status, StatusCode::CREATED);
    let id = reply.body["orderId"].as_str().unwrap().to_owned();
    assert_eq!(reply.location(), format!("/orders/{id}"));
    assert_eq!(
        reply.headers[header::CONTENT_TYPE],
        "application/json",
        "an order is plain JSON"
    );
    insta::assert_snapshot!(reply.text.replace(&id, "[order-id]"), @r#"{"orderId":"[order-id]","customerId":"c-1","status":"AwaitingPayment","items":[{"productId":"book","quantity":2,"price":10.5},{"productId":"pen","quantity":3,"price":0.1}],"totalAmount":21.3,"currency":"EUR","shippingAddress":{"street":"Main St 1","city":"Berlin","postalCode":"10115","country":"DE"},"paymentId":null,"reservationId":null,"cancellationReason":null,"version":1,"placedAt":"2026-01-05T10:00:00.000Z","updatedAt":"2026-01-05T10:00:00.000Z"}"#);
}

#[tokio::test]
async fn reading_an_order_returns_the_same_view_as_checkout() {
    let app = TestApp::new();
    let placed = app.send(post_json("/orders", &order_body())).await;
    let id = placed.body["orderId"].as_str().unwrap();

    let read = app.send(get(&format!("/orders/{id}"))).await;

    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.text, placed.text);
    assert_eq!(
        read.body["totalAmount"].to_string(),
        "21.3",
        "amounts are exact"
    );
}

#[tokio::test]
async fn an_order_placed_over_http_reaches_stock_reserved() {
    let system = InProcessSystem::start(SystemConfig::default())
        .await
        .unwrap();
    let bus = system.bus.clone();
    let router = http::router(AppState::new(
        system.orders.clone(),
        Arc::new(StoreAndBusProbe::new(
            system.orders.store().clone(),
            move || bus.is_attached(ORDERS_SUBSCRIBER),
        )),
    ));

    let placed = send(&router, post_json("/orders", &order_body())).await;
    assert_eq!(placed.status, StatusCode::CREATED);
    assert_eq!(placed.body["status"], "AwaitingPayment");
    let id: OrderId = placed.body["orderId"].as_str().unwrap().parse().unwrap();
    system
        .wait_for_status(id, OrderStatus::StockReserved, DEADLINE)
        .await
        .unwrap();

    let read = send(&router, get(&format!("/orders/{id}"))).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body["status"], "StockReserved");
    assert!(read.body["paymentId"].is_string(), "{}", read.text);
    assert!(read.body["reservationId"].is_string(), "{}", read.text);
    assert_eq!(read.body["version"].to_string(), "3");
    let ready = send(&router, get("/readyz")).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);

    assert!(system.settle(DEADLINE).await);
    system.shutdown().await;
}

#[tokio::test]
async fn a_retried_checkout_with_the_same_idempotency_key_returns_the_same_order() {
    let app = TestApp::new();
    let request = || {
        let mut request = post_json("/orders", &order_body());
        request
            .headers_mut()
            .insert("idempotency-key", "checkout-7f3a".parse().unwrap());
        request
    };

    let first = app.send(request()).await;
    let retry = app.send(request()).await;

    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(retry.status, StatusCode::OK, "a replay is 200");
    assert_eq!(retry.body["orderId"], first.body["orderId"]);
    assert_eq!(retry.location(), first.location());
    assert_eq!(app.store.order_count(), 1);
}

#[tokio::test]
async fn an_invalid_idempotency_key_is_400() {
    let app = TestApp::new();
    for key in ["", "has space", &"k".repeat(201), "caf\u{e9}"] {
        let mut request = post_json("/orders", &order_body());
        request.headers_mut().insert(
            "idempotency-key",
            axum::http::HeaderValue::from_bytes(key.as_bytes()).unwrap(),
        );

        let reply = app.send(request).await;

        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "key {key:?}");
        assert_problem(&reply, "bad-request");
    }
    assert_eq!(app.store.order_count(), 0);
}

// ---------------------------------------------------------------------------------------
// Cancel

#[tokio::test]
async fn cancelling_answers_the_cancelled_order_and_cancelling_again_conflicts() {
    let app = TestApp::new();
    let id = app.place().await;
    let cancel = || {
        post_json(
            &format!("/orders/{id}/cancel"),
            &json!({"reason": "changed my mind"}),
        )
    };

    let first = app.send(cancel()).await;
    let second = app.send(cancel()).await;

    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.body["status"], "Cancelled");
    assert_eq!(first.body["cancellationReason"], "changed my mind");
    assert_eq!(second.status, StatusCode::CONFLICT);
    assert_problem(&second, "conflict");
    assert_eq!(second.body["detail"], "order is already cancelled");
}

#[tokio::test]
async fn a_blank_cancellation_reason_is_422_naming_the_field() {
    let app = TestApp::new();
    let id = app.place().await;

    let reply = app
        .send(post_json(
            &format!("/orders/{id}/cancel"),
            &json!({"reason": "  "}),
        ))
        .await;

    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    let problem: ProblemBody = serde_json::from_str(&reply.text).unwrap();
    assert_eq!(problem.errors.len(), 1);
    assert_eq!(problem.errors[0].field, "reason");
}

// ---------------------------------------------------------------------------------------
// Not found, malformed

#[tokio::test]
async fn an_unknown_order_is_404_on_every_route() {
    let app = TestApp::new();
    let id = Uuid::new_v4();
    for request in [
        get(&format!("/orders/{id}")),
        get(&format!("/orders/{id}/messages")),
        post_json(&format!("/orders/{id}/cancel"), &json!({"reason": "x"})),
    ] {
        let reply = app.send(request).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text);
        assert_problem(&reply, "not-found");
        assert_eq!(reply.body["detail"], format!("order {id} not found"));
    }
}

#[tokio::test]
async fn a_malformed_order_id_is_400() {
    let app = TestApp::new();
    for path in [
        "/orders/not-a-uuid",
        "/orders/42/messages",
        "/orders/%FF%FE",
    ] {
        let reply = app.send(get(path)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
        assert_problem(&reply, "bad-request");
    }
    let reply = app
        .send(post_json("/orders/nope/cancel", &json!({"reason": "x"})))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn an_unknown_route_or_method_is_a_problem() {
    let app = TestApp::new();

    let missing = app.send(get("/nowhere")).await;
    let wrong_method = app.send(request(Method::DELETE, "/orders", None)).await;

    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_problem(&missing, "not-found");
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_problem(&wrong_method, "method-not-allowed");
}

// ---------------------------------------------------------------------------------------
// Bodies: malformed, wrong shape, invalid values, too large, wrong type

#[tokio::test]
async fn malformed_json_is_400() {
    let app = TestApp::new();
    for body in ["{", "{\"customerId\": }", "not json", "", "{} trailing"] {
        let reply = app
            .send(post_raw("/orders", "application/json", body))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body:?}: {}",
            reply.text
        );
        assert_problem(&reply, "bad-request");
    }
}

#[tokio::test]
async fn json_of_the_wrong_shape_is_422_with_serdes_message() {
    let app = TestApp::new();
    let mut wrong_type = order_body();
    wrong_type["items"][0]["quantity"] = json!("two");
    let mut missing = order_body();
    missing.as_object_mut().unwrap().remove("currency");

    let wrong_type = app.send(post_json("/orders", &wrong_type)).await;
    let missing = app.send(post_json("/orders", &missing)).await;
    let not_an_object = app.send(post_json("/orders", &json!([1, 2]))).await;

    assert_eq!(wrong_type.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_problem(&wrong_type, "validation");
    assert!(
        wrong_type.body["detail"]
            .as_str()
            .unwrap()
            .contains("invalid type")
    );
    assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        missing.body["detail"]
            .as_str()
            .unwrap()
            .contains("missing field `currency`"),
        "{}",
        missing.text
    );
    assert_eq!(not_an_object.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn invalid_values_are_422_naming_every_bad_field() {
    let app = TestApp::new();
    let body = json!({
        "customerId": "",
        "currency": "euro",
        "items": [
            {"productId": "", "quantity": 0, "price": -1},
            {"productId": "pen", "quantity": -3, "price": 0.12345}
        ],
        "shippingAddress": {
            "street": "Main St 1", "city": " ", "postalCode": "10115", "country": "DE"
        }
    });

    let reply = app.send(post_json("/orders", &body)).await;

    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        reply.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let problem: ProblemBody = serde_json::from_str(&reply.text).unwrap();
    insta::assert_json_snapshot!(problem, @r#"
    {
      "type": "urn:orders:problem:validation",
      "title": "Invalid request",
      "status": 422,
      "detail": "8 invalid field(s)",
      "errors": [
        {
          "field": "customerId",
          "message": "must not be empty"
        },
        {
          "field": "currency",
          "message": "must be an ISO 4217 code of three uppercase letters"
        },
        {
          "field": "items[0].productId",
          "message": "must not be empty"
        },
        {
          "field": "items[0].quantity",
          "message": "must be at least 1"
        },
        {
          "field": "items[0].price",
          "message": "must not be negative"
        },
        {
          "field": "items[1].quantity",
          "message": "must be at least 1"
        },
        {
          "field": "items[1].price",
          "message": "must have at most 4 decimal places"
        },
        {
          "field": "shippingAddress.city",
          "message": "must not be blank"
        }
      ]
    }
    "#);
    assert_eq!(app.store.order_count(), 0);
}

#[tokio::test]
async fn a_body_over_64_kib_is_413() {
    let app = TestApp::new();
    let mut body = order_body();
    body["customerId"] = json!("x".repeat(MAX_BODY_BYTES));
    let text = body.to_string();
    assert!(text.len() > MAX_BODY_BYTES);

    let undeclared = app
        .send(post_raw("/orders", "application/json", &text))
        .await;
    let declared = {
        let mut request = post_raw("/orders", "application/json", &text);
        request
            .headers_mut()
            .insert(header::CONTENT_LENGTH, text.len().into());
        app.send(request).await
    };

    for reply in [undeclared, declared] {
        assert_eq!(
            reply.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{}",
            reply.text
        );
        assert_problem(&reply, "payload-too-large");
    }
}

#[tokio::test]
async fn a_wrong_or_missing_content_type_is_415() {
    let app = TestApp::new();
    let body = order_body().to_string();
    let missing = Request::post("/orders")
        .body(Body::from(body.clone()))
        .unwrap();

    for reply in [
        app.send(post_raw("/orders", "text/plain", &body)).await,
        app.send(post_raw(
            "/orders",
            "application/x-www-form-urlencoded",
            &body,
        ))
        .await,
        app.send(missing).await,
    ] {
        assert_eq!(
            reply.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{}",
            reply.text
        );
        assert_problem(&reply, "unsupported-media-type");
    }
    let charset = app
        .send(post_raw(
            "/orders",
            "application/json; charset=utf-8",
            &body,
        ))
        .await;
    assert_eq!(charset.status, StatusCode::CREATED);
}

// ---------------------------------------------------------------------------------------
// The message history

#[tokio::test]
async fn the_message_history_lists_sent_and_received_messages_with_their_outcomes() {
    let app = TestApp::new();
    let id = app.place().await;
    let handler = OrdersMessageHandler::new(app.orders.clone());
    let approved = |message_id: Uuid, payment_id: &str| {
        Envelope::new(
            message_id,
            topics::PAYMENT_APPROVED,
            Utc::now(),
            id.to_string(),
            None,
            &contracts::PaymentApproved {
                order_id: id.as_uuid(),
                payment_id: payment_id.to_owned(),
                approved_amount: "21.30".parse().unwrap(),
                currency: "EUR".into(),
                timestamp: Utc::now(),
            },
        )
        .unwrap()
    };
    let first = Uuid::new_v4();
    let repeat = Uuid::new_v4();
    let second = Uuid::new_v4();
    handler.dispatch(&approved(first, "pay-1")).await.unwrap();
    handler.dispatch(&approved(repeat, "pay-1")).await.unwrap();
    handler.dispatch(&approved(second, "pay-2")).await.unwrap();

    let reply = app.send(get(&format!("/orders/{id}/messages"))).await;

    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let lines: Vec<MessageLine> = serde_json::from_str(&reply.text).unwrap();
    let summary: Vec<_> = lines
        .iter()
        .map(|l| {
            (
                l.direction.as_str(),
                l.topic.as_str(),
                l.outcome.as_deref(),
                l.reason.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("sent", "order.placed", None, None),
            ("received", "payment.approved", Some("applied"), None),
            ("sent", "order.paid", None, None),
            ("received", "payment.approved", Some("duplicate"), None),
            (
                "received",
                "payment.approved",
                Some("rejected"),
                Some("order already paid with payment pay-1, refusing second payment pay-2")
            ),
            // The refused payment is handed back to Payments, which refunds it.
            ("sent", "order.payment_refused", None, None),
        ]
    );
    let received: Vec<_> = lines
        .iter()
        .filter(|l| l.direction == "received")
        .map(|l| l.message_id.as_str())
        .collect();
    assert_eq!(
        received,
        [first.to_string(), repeat.to_string(), second.to_string()]
    );
    assert!(lines.iter().all(|l| l.at == NOW), "{}", reply.text);
}

// ---------------------------------------------------------------------------------------
// Health, readiness, failures

#[tokio::test]
async fn health_is_ok_and_ready_when_store_and_bus_answer() {
    let app = TestApp::new();

    let health = app.send(get("/healthz")).await;
    let ready = app.send(get("/readyz")).await;

    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body, json!({"status": "ok"}));
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(
        ready.body,
        json!({"status": "ready", "checks": {"store": "ok", "bus": "ok"}})
    );
}

#[tokio::test]
async fn readiness_is_503_when_the_bus_or_the_store_does_not_answer() {
    let store = Arc::new(InMemoryOrderStore::new());
    let bus_down = router_over(
        store.clone(),
        Arc::new(StoreAndBusProbe::new(store, || false)),
    );
    let broken = Arc::new(BrokenStore::failing());
    let store_down = router_over(
        broken.clone(),
        Arc::new(StoreAndBusProbe::new(broken, || true)),
    );

    let bus_down = send(&bus_down, get("/readyz")).await;
    let store_down = send(&store_down, get("/readyz")).await;

    assert_eq!(bus_down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_problem(&bus_down, "unavailable");
    assert_eq!(
        bus_down.body["checks"],
        json!({"store": "ok", "bus": "unavailable"})
    );
    assert_eq!(store_down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        store_down.body["checks"],
        json!({"store": "unavailable", "bus": "ok"})
    );
    assert!(!store_down.text.contains(BrokenStore::SECRET));
}

#[tokio::test]
async fn a_store_failure_is_503_and_shows_no_internals() {
    let broken = Arc::new(BrokenStore::failing());
    let router = router_over(
        broken.clone(),
        Arc::new(StoreAndBusProbe::new(broken, || true)),
    );

    for request in [
        post_json("/orders", &order_body()),
        get(&format!("/orders/{}", Uuid::new_v4())),
        get(&format!("/orders/{}/messages", Uuid::new_v4())),
    ] {
        let reply = send(&router, request).await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.text
        );
        assert_problem(&reply, "unavailable");
        assert!(!reply.text.contains(BrokenStore::SECRET), "{}", reply.text);
    }
}

#[tokio::test]
async fn a_request_that_takes_too_long_is_503() {
    let hanging = Arc::new(BrokenStore::hanging());
    let state = AppState::new(
        service_over(hanging.clone()),
        Arc::new(StoreAndBusProbe::new(hanging, || true)),
    )
    .request_timeout(Duration::from_millis(50));
    let router = http::router(state);

    let reply = send(&router, get(&format!("/orders/{}", Uuid::new_v4()))).await;

    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_problem(&reply, "unavailable");
}

// ---------------------------------------------------------------------------------------
// The real server

#[tokio::test]
async fn the_real_server_answers_on_a_free_port_and_shuts_down_gracefully() {
    let config = ServeConfig::new("127.0.0.1:0".parse().unwrap(), StoreSpec::Memory);
    let server = serve::spawn(config.clone()).await.unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);

    let (status, body) = http1(
        addr,
        Method::POST,
        "/orders",
        Some(order_body().to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id: OrderId = serde_json::from_str::<Value>(&body).unwrap()["orderId"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // Followed with blocking reads: each answers when the order changes.
    let mut version = 0;
    loop {
        let path = format!("/orders/{id}?afterVersion={version}&waitMs=5000");
        let (status, body) = http1(addr, Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let order: Value = serde_json::from_str(&body).unwrap();
        if order["status"] == "StockReserved" {
            break;
        }
        let next = order["version"].as_u64().unwrap();
        assert!(next > version, "the read answered without a change: {body}");
        version = next;
    }
    let (status, body) = http1(addr, Method::GET, "/readyz", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let mut taken = config;
    taken.listen = addr;
    let error = serve::spawn(taken).await.unwrap_err();
    assert!(
        format!("{error:#}").contains(&format!("cannot listen on {addr}")),
        "{error:#}"
    );

    server.shutdown(StopReason::Requested).await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn a_blocking_read_answers_as_soon_as_the_order_changes() {
    let store = Arc::new(InMemoryOrderStore::new());
    let changes = Arc::new(app::changes::OrderChanges::default());
    let watched = Arc::new(app::changes::WatchedStore::new(
        store.clone(),
        changes.clone(),
    ));
    let orders = service_over(watched);
    let router = http::router(
        AppState::new(
            orders.clone(),
            Arc::new(StoreAndBusProbe::new(store, || true)),
        )
        .changes(changes.clone()),
    );
    let placed = send(&router, post_json("/orders", &order_body())).await;
    let id: OrderId = placed.body["orderId"].as_str().unwrap().parse().unwrap();
    let started = std::time::Instant::now();
    let reader = {
        let router = router.clone();
        tokio::spawn(async move {
            send(
                &router,
                get(&format!("/orders/{id}?afterVersion=1&waitMs=15000")),
            )
            .await
        })
    };
    // Wait (with a deadline) until the read is parked, then change the order.
    let deadline = std::time::Instant::now() + DEADLINE;
    while changes.watched() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the read never waited"
        );
        tokio::task::yield_now().await;
    }
    orders
        .cancel_order(orders_app::CancelOrder {
            order_id: id,
            reason: "changed my mind".to_owned(),
        })
        .await
        .unwrap();
    let read = reader.await.unwrap();
    assert_eq!(read.status, StatusCode::OK, "{}", read.text);
    assert_eq!(read.body["status"], "Cancelled");
    assert_eq!(read.body["version"].to_string(), "2");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "it waited for its deadline"
    );
    assert_eq!(changes.watched(), 0, "the waiter was cleaned up");
}

#[tokio::test]
async fn a_blocking_read_answers_at_its_deadline_with_the_order_as_it_is() {
    let store = Arc::new(InMemoryOrderStore::new());
    let changes = Arc::new(app::changes::OrderChanges::default());
    let watched = Arc::new(app::changes::WatchedStore::new(
        store.clone(),
        changes.clone(),
    ));
    let router = http::router(
        AppState::new(
            service_over(watched),
            Arc::new(StoreAndBusProbe::new(store, || true)),
        )
        .changes(changes),
    );
    let placed = send(&router, post_json("/orders", &order_body())).await;
    let id = placed.body["orderId"].as_str().unwrap().to_owned();
    let read = send(
        &router,
        get(&format!("/orders/{id}?afterVersion=1&waitMs=30")),
    )
    .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.text);
    assert_eq!(read.body["version"].to_string(), "1");
    let already = send(
        &router,
        get(&format!("/orders/{id}?afterVersion=0&waitMs=15000")),
    )
    .await;
    assert_eq!(
        already.body["version"].to_string(),
        "1",
        "no wait when already newer"
    );
}

#[tokio::test]
async fn a_blocking_read_with_bad_parameters_is_400() {
    let app = TestApp::new();
    let id = app.place().await;
    for query in [
        "afterVersion=1",
        "waitMs=10",
        "afterVersion=x&waitMs=10",
        "afterVersion=1&waitMs=-1",
        "since=3",
    ] {
        let reply = app.send(get(&format!("/orders/{id}?{query}"))).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{query}: {}",
            reply.text
        );
        assert_problem(&reply, "bad-request");
    }
}

#[tokio::test]
async fn stats_show_dead_letters_and_parked_and_unsent_outbox_rows() {
    struct Fixed;
    #[async_trait::async_trait]
    impl http::StatsProbe for Fixed {
        async fn stats(&self) -> http::Stats {
            http::Stats {
                dead_letters: 2,
                parked_outbox_rows: Some(1),
                unsent_outbox_rows: None,
            }
        }
    }
    let store = Arc::new(InMemoryOrderStore::new());
    let router = http::router(
        AppState::new(
            service_over(store.clone()),
            Arc::new(StoreAndBusProbe::new(store, || true)),
        )
        .stats(Arc::new(Fixed)),
    );
    let reply = send(&router, get("/stats")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(
        reply.text,
        r#"{"deadLetters":2,"parkedOutboxRows":1,"unsentOutboxRows":null}"#
    );
}

#[tokio::test]
async fn stats_are_404_when_the_service_has_none() {
    let app = TestApp::new();
    let reply = app.send(get("/stats")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_problem(&reply, "not-found");
}

fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        "[ -~]{0,12}".prop_map(Value::String),
        Just(serde_json::json!(-0.01)),
        Just(serde_json::json!(1e300)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("customerId".to_owned()),
                        Just("currency".to_owned()),
                        Just("items".to_owned()),
                        Just("productId".to_owned()),
                        Just("quantity".to_owned()),
                        Just("price".to_owned()),
                        Just("shippingAddress".to_owned()),
                        "[a-z]{1,6}",
                    ],
                    inner
                ),
                0..5
            )
            .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..Default::default()
    })]

    /// Whatever JSON a client sends to checkout, the answer is a 2xx or a 4xx problem:
    /// never a 5xx, never a panic.
    #[test]
    fn no_checkout_body_makes_the_server_fail(body in arbitrary_json()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let status = runtime.block_on(async {
            let app = TestApp::new();
            app.send(post_json("/orders", &body)).await.status
        });
        proptest::prop_assert!(status.is_success() || status.is_client_error(), "{status} for {body}");
    }

    /// Any bytes as a body, and any text as an order id, give a 4xx at worst.
    #[test]
    fn no_raw_body_or_path_makes_the_server_fail(raw in "[ -~]{0,64}", id in "[A-Za-z0-9._~!$&'()*+,;=:@-]{1,40}") {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (a, b) = runtime.block_on(async {
            let app = TestApp::new();
            let a = app.send(post_raw("/orders", "application/json", &raw)).await.status;
            let b = app.send(get(&format!("/orders/{id}"))).await.status;
            (a, b)
        });
        proptest::prop_assert!(a.is_client_error() || a.is_success(), "{a} for {raw:?}");
        proptest::prop_assert!(b.is_client_error() || b.is_success(), "{b} for {id:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

/// A router over an in-memory store, a manual clock at [`NOW`], always ready.
struct TestApp {
    router: Router,
    orders: OrdersService,
    store: Arc<InMemoryOrderStore>,
}

impl TestApp {
    fn new() -> Self {
        let store = Arc::new(InMemoryOrderStore::new());
        let orders = service_over(store.clone());
        let router = http::router(AppState::new(
            orders.clone(),
            Arc::new(StoreAndBusProbe::new(store.clone(), || true)),
        ));
        Self {
            router,
            orders,
            store,
        }
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        send(&self.router, request).await
    }

    async fn place(&self) -> OrderId {
        let reply = self.send(post_json("/orders", &order_body())).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        reply.body["orderId"].as_str().unwrap().parse().unwrap()
    }
}

fn service_over(store: Arc<dyn OrderStore>) -> OrdersService {
    let now = Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap();
    OrdersService::new(
        store,
        Arc::new(ManualClock::new(now)),
        OrdersConfig::default(),
    )
}

fn router_over(store: Arc<dyn OrderStore>, probe: Arc<StoreAndBusProbe>) -> Router {
    http::router(AppState::new(service_over(store), probe))
}

/// A response, with its body as text and (when it is JSON) as a value.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
    body: Value,
}

impl Reply {
    fn location(&self) -> &str {
        self.headers[header::LOCATION].to_str().unwrap()
    }
}

async fn send(router: &Router, request: Request<Body>) -> Reply {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {text:?}"));
    Reply {
        status,
        headers,
        text,
        body,
    }
}

fn request(method: Method, uri: &str, json: Option<&Value>) -> Request<Body> {
    let builder = Request::builder().method(method).uri(uri);
    match json {
        Some(json) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json.to_string())),
        None => builder.body(Body::empty()),
    }
    .unwrap()
}

fn get(uri: &str) -> Request<Body> {
    request(Method::GET, uri, None)
}

fn post_json(uri: &str, json: &Value) -> Request<Body> {
    request(Method::POST, uri, Some(json))
}

fn post_raw(uri: &str, content_type: &str, body: &str) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body.to_owned()))
        .unwrap()
}

/// A valid checkout: 2 × 10.50 + 3 × 0.1 = 21.3 EUR, exactly (in binary floating point
/// it would not be).
fn order_body() -> Value {
    serde_json::from_str(
        r#"{
            "customerId": "c-1",
            "currency": "EUR",
            "items": [
                {"productId": "book", "quantity": 2, "price": 10.50},
                {"productId": "pen", "quantity": 3, "price": 0.1}
            ],
            "shippingAddress": {
                "street": "Main St 1", "city": "Berlin", "postalCode": "10115", "country": "DE"
            }
        }"#,
    )
    .unwrap()
}

/// The problem document, typed (so insta sees plain numbers), with no unknown member.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProblemBody {
    #[serde(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
    #[serde(default)]
    errors: Vec<FieldErrorBody>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldErrorBody {
    field: String,
    message: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MessageLine {
    direction: String,
    message_id: String,
    topic: String,
    outcome: Option<String>,
    reason: Option<String>,
    at: String,
}

/// Asserts a problem document of type `slug` whose `status` repeats the HTTP status.
fn assert_problem(reply: &Reply, slug: &str) {
    assert_eq!(
        reply.headers[header::CONTENT_TYPE],
        "application/problem+json",
        "{}",
        reply.text
    );
    assert_eq!(
        reply.body["type"],
        format!("urn:orders:problem:{slug}"),
        "{}",
        reply.text
    );
    assert_eq!(
        reply.body["status"].to_string(),
        reply.status.as_u16().to_string()
    );
    assert!(reply.body["title"].is_string() && reply.body["detail"].is_string());
}

/// A store that fails every call (with a message that must never reach a client), or
/// never answers.
struct BrokenStore {
    hang: bool,
}

impl BrokenStore {
    const SECRET: &'static str = "connection to 10.1.2.3:5432 refused for user orders";

    const fn failing() -> Self {
        Self { hang: false }
    }

    const fn hanging() -> Self {
        Self { hang: true }
    }

    async fn fail<T>(&self) -> Result<T, StoreError> {
        if self.hang {
            std::future::pending::<()>().await;
        }
        Err(StoreError::unavailable(Self::SECRET))
    }
}

#[async_trait]
impl OrderStore for BrokenStore {
    async fn load(&self, _id: OrderId) -> Result<Option<Order>, StoreError> {
        self.fail().await
    }
    async fn is_handled(
        &self,
        _subscriber: &str,
        _message_id: MessageId,
    ) -> Result<bool, StoreError> {
        self.fail().await
    }
    async fn find_by_idempotency_key(&self, _key: &str) -> Result<Option<OrderId>, StoreError> {
        self.fail().await
    }
    async fn due_for_payment(
        &self,
        _now: Timestamp,
        _limit: usize,
    ) -> Result<Vec<OrderId>, StoreError> {
        self.fail().await
    }
    async fn commit(&self, _commit: Commit) -> Result<u64, StoreError> {
        self.fail().await
    }
    async fn messages(&self, _id: OrderId) -> Result<Vec<MessageRecord>, StoreError> {
        self.fail().await
    }
    async fn prune(&self, _before: Timestamp) -> Result<PruneReport, StoreError> {
        self.fail().await
    }
}

/// One HTTP/1.1 request over a fresh connection, with hyper's client.
async fn http1(
    addr: std::net::SocketAddr,
    method: Method,
    path: &str,
    json: Option<String>,
) -> (StatusCode, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string());
    if json.is_some() {
        builder = builder.header(header::CONTENT_TYPE, "application/json");
    }
    let request = builder
        .body(Full::new(Bytes::from(json.unwrap_or_default())))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    drop(sender);
    connection.await.unwrap().unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}
