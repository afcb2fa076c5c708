//! Dead letters through the HTTP API: a message Orders cannot read (a payload missing a
//! required field) is refused as permanent, listed by `GET /dead-letters` with the field
//! named in its reason, and replayed to the Orders group by `POST
//! /dead-letters/{id}/replay`; a replay that now succeeds leaves the list; unknown ids are
//! 404, bad limits 400, and behind authentication a token is needed and a
//! customer-scoped one gets 403.
//!
//! On the in-memory bus through `app::http::router` (flows awaited with
//! `InMemoryBus::wait_idle`); once over NATS through the served app
//! (`ORDERS_TEST_NATS_URL`, a unique prefix, its streams deleted at the end), where dead
//! letters are awaited by hearing the dead-letter subjects, never by polling; there an
//! `app payments` role on the same prefix lists only its own group's dead letters. On a
//! private nats-server killed and started again: 503 problems while it is down, and the
//! same record listed and replayed by a process connected after its restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::mpsc;

use app::{
    bus::BusFlags,
    http::{self, AppState, StoreAndBusProbe, Tokens},
    roles::{self, PaymentsRoleConfig},
    serve::{self, PaymentsFlags, ServeConfig, StopReason, StoreSpec},
};
use async_trait::async_trait;
use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use chrono::{TimeZone, Utc};
use contracts::topics;
use http_body_util::BodyExt;
use messaging::{
    Envelope, HandlerError, InMemoryBus, MessageBus, MessageHandler, Subscription,
    SubscriptionHandle,
};
use messaging_nats::{NatsBus, NatsBusConfig, testing};
use orders_app::{ManualClock, OrdersConfig, OrdersMessageHandler, OrdersService};
use orders_store::InMemoryOrderStore;
use serde_json::{Value, json};
use tower::ServiceExt;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(10);

const TOKENS: &str = "admin-token\nalice-token c-1\n";

/// The API over an in-memory bus with the Orders subscriber attached.
struct TestApp {
    router: Router,
    bus: InMemoryBus,
    _orders: SubscriptionHandle,
}

impl TestApp {
    async fn new(tokens: Option<&str>) -> Self {
        let store = Arc::new(InMemoryOrderStore::new());
        let now = Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap();
        let orders = OrdersService::new(
            store.clone(),
            Arc::new(ManualClock::new(now)),
            OrdersConfig::default(),
        );
        let bus = InMemoryBus::default();
        let handle = bus
            .subscribe(
                OrdersMessageHandler::subscription(),
                Arc::new(OrdersMessageHandler::new(orders.clone())),
            )
            .await
            .unwrap();
        let state = AppState::new(orders, Arc::new(StoreAndBusProbe::new(store, || true)))
            .dead_letters(Arc::new(bus.clone()))
            .auth(tokens.map(|t| Tokens::parse(t).unwrap()));
        Self {
            router: http::router(state),
            bus,
            _orders: handle,
        }
    }

    /// Publishes `envelope` and waits until every group has handled it.
    async fn deliver(&self, envelope: Envelope) {
        self.bus.publish(envelope).await.unwrap();
        assert!(self.bus.wait_idle(DEADLINE).await, "the bus did not settle");
    }

    async fn send(&self, method: Method, uri: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = self
            .router
            .clone()
            .oneshot(builder.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let problem = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v == "application/problem+json");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        if !status.is_success() {
            assert!(problem, "{status} is not a problem document: {body}");
        }
        (status, body)
    }

    async fn list(&self) -> Value {
        let (status, body) = self.send(Method::GET, "/dead-letters", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }
}

/// A `payment.approved` without its `paymentId`: Orders cannot decode it, ever.
fn payment_approved_without_payment_id() -> Envelope {
    let payload = json!({
        "orderId": Uuid::now_v7(),
        "approvedAmount": "10.00",
        "currency": "EUR",
        "timestamp": "2026-01-05T10:00:00.000Z",
    });
    let order = payload["orderId"].as_str().unwrap().to_owned();
    Envelope::new(
        Uuid::now_v7(),
        topics::PAYMENT_APPROVED,
        Utc::now(),
        order,
        None,
        &payload,
    )
    .unwrap()
}

#[tokio::test]
async fn a_message_orders_cannot_read_is_listed_with_the_missing_field_and_replayed_to_orders() {
    let app = TestApp::new(None).await;
    let envelope = payment_approved_without_payment_id();
    let message_id = envelope.message_id.to_string();
    app.deliver(envelope.clone()).await;

    let body = app.list().await;
    assert_eq!(body["count"], 1, "{body}");
    let letter = &body["deadLetters"][0];
    assert_eq!(letter["group"], "orders");
    assert_eq!(letter["topic"], "payment.approved");
    assert_eq!(letter["messageId"], message_id.as_str());
    assert_eq!(letter["attempts"], 1);
    assert_eq!(letter["kind"], "permanent");
    let reason = letter["reason"].as_str().unwrap();
    assert!(reason.contains("paymentId"), "reason: {reason}");
    for at in ["firstFailedAt", "lastFailedAt"] {
        let text = letter[at].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(text).is_ok(),
            "{at}: {text}"
        );
    }
    assert_eq!(letter["envelope"]["messageId"], message_id.as_str());
    assert_eq!(
        letter["envelope"]["payload"],
        serde_json::from_str::<Value>(envelope.payload.get()).unwrap()
    );
    let id = letter["id"].as_str().unwrap().to_owned();

    let (status, body) = app
        .send(Method::POST, &format!("/dead-letters/{id}/replay"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body, json!({ "replayed": id, "group": "orders" }));
    // Orders got it again and refused it again: a new dead letter of the same message.
    assert!(app.bus.wait_idle(DEADLINE).await);
    let body = app.list().await;
    assert_eq!(body["count"], 1, "{body}");
    let again = &body["deadLetters"][0];
    assert_eq!(again["messageId"], message_id.as_str());
    assert_ne!(
        again["id"],
        id.as_str(),
        "the replayed record is still listed"
    );

    // The replayed record is gone for good.
    let (status, body) = app
        .send(Method::POST, &format!("/dead-letters/{id}/replay"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["type"], "urn:orders:problem:not-found");
}

/// Refuses the first message, accepts every later one and sends its id on `accepted`.
struct RefusesOnce {
    refused: Mutex<bool>,
    accepted: mpsc::UnboundedSender<Uuid>,
}

impl RefusesOnce {
    fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<Uuid>) {
        let (accepted, rx) = mpsc::unbounded_channel();
        let handler = Self {
            refused: Mutex::new(false),
            accepted,
        };
        (Arc::new(handler), rx)
    }
}

#[async_trait]
impl MessageHandler for RefusesOnce {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        {
            let mut refused = self.refused.lock().unwrap();
            if !*refused {
                *refused = true;
                return Err(HandlerError::permanent("not today"));
            }
        }
        let _ = self.accepted.send(envelope.message_id);
        Ok(())
    }
}

#[tokio::test]
async fn a_replayed_message_that_now_succeeds_leaves_the_list() {
    let app = TestApp::new(None).await;
    let (audit, mut accepted) = RefusesOnce::new();
    let _handle = app
        .bus
        .subscribe(Subscription::new("audit").topic("audit.noted"), audit)
        .await
        .unwrap();
    let envelope =
        Envelope::new(Uuid::now_v7(), "audit.noted", Utc::now(), "a-1", None, &1).unwrap();
    app.deliver(envelope.clone()).await;
    let body = app.list().await;
    assert_eq!(body["count"], 1, "{body}");
    assert_eq!(body["deadLetters"][0]["reason"], "not today");
    let id = body["deadLetters"][0]["id"].as_str().unwrap().to_owned();

    let (status, body) = app
        .send(Method::POST, &format!("/dead-letters/{id}/replay"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["group"], "audit");
    assert!(app.bus.wait_idle(DEADLINE).await);
    assert_eq!(accepted.try_recv().ok(), Some(envelope.message_id));
    assert!(accepted.try_recv().is_err(), "handled twice");
    assert_eq!(app.list().await, json!({ "count": 0, "deadLetters": [] }));
}

#[tokio::test]
async fn the_limit_bounds_the_list_oldest_first_and_bad_limits_are_400() {
    let app = TestApp::new(None).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let envelope = payment_approved_without_payment_id();
        ids.push(envelope.message_id.to_string());
        app.deliver(envelope).await;
    }
    let (status, body) = app.send(Method::GET, "/dead-letters?limit=2", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 3, "the count is of all of them");
    let listed: Vec<&str> = body["deadLetters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["messageId"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[0].as_str(), ids[1].as_str()]);

    for bad in ["0", "1001", "-1", "ten", ""] {
        let (status, body) = app
            .send(Method::GET, &format!("/dead-letters?limit={bad}"), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "limit={bad}: {body}");
        assert_eq!(body["type"], "urn:orders:problem:bad-request");
    }
    let (status, _) = app
        .send(Method::GET, "/dead-letters?limit=1000", None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn replaying_an_unknown_id_is_404() {
    let app = TestApp::new(None).await;
    for id in ["1", "42", "no-such-letter"] {
        let (status, body) = app
            .send(Method::POST, &format!("/dead-letters/{id}/replay"), None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}: {body}");
        assert_eq!(body["type"], "urn:orders:problem:not-found");
    }
}

#[tokio::test]
async fn behind_authentication_a_token_is_needed_and_a_customer_token_is_refused() {
    let app = TestApp::new(Some(TOKENS)).await;
    app.deliver(payment_approved_without_payment_id()).await;
    for (method, uri) in [
        (Method::GET, "/dead-letters"),
        (Method::POST, "/dead-letters/1/replay"),
    ] {
        let (status, body) = app.send(method.clone(), uri, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}: {body}");
        let (status, body) = app.send(method.clone(), uri, Some("wrong")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}: {body}");
        let (status, body) = app.send(method, uri, Some("alice-token")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri}: {body}");
    }
    let (status, body) = app
        .send(Method::GET, "/dead-letters", Some("admin-token"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 1);
    let (status, body) = app
        .send(Method::POST, "/dead-letters/1/replay", Some("admin-token"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

#[tokio::test]
async fn a_service_without_dead_letters_answers_404() {
    let store = Arc::new(InMemoryOrderStore::new());
    let orders = OrdersService::new(
        store.clone(),
        Arc::new(ManualClock::new(Utc::now())),
        OrdersConfig::default(),
    );
    let router = http::router(AppState::new(
        orders,
        Arc::new(StoreAndBusProbe::new(store, || true)),
    ));
    let response = router
        .oneshot(
            Request::builder()
                .uri("/dead-letters")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

/// Deletes a test's streams when dropped, however the test ends.
struct Cleanup {
    url: String,
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), format!("{}_", self.prefix));
        // A fresh runtime on its own thread: the test's runtime may be gone or panicking.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(testing::delete_streams(&url, &prefix)))
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_nats_the_served_app_lists_and_replays_a_dead_letter() {
    let Some(url) = testing::test_url("over_nats_the_served_app_lists_and_replays_a_dead_letter")
    else {
        return;
    };
    let prefix = format!("dl{}", &Uuid::new_v4().simple().to_string()[..10]);
    let _cleanup = Cleanup {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    let mut config = ServeConfig::new("127.0.0.1:0".parse().unwrap(), StoreSpec::Memory);
    config.bus = BusFlags::nats(url.as_str(), Some(prefix.clone()));
    let server = serve::spawn(config).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let client = reqwest::Client::new();
    let get = |path: &str| {
        let request = client.get(format!("{base}{path}"));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let replay = |id: &str| {
        let request = client.post(format!("{base}/dead-letters/{id}/replay"));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };

    let mut watch = testing::DeadLetterWatch::start(&url, Some(&prefix))
        .await
        .unwrap();
    // Another process on the same prefix publishes what Orders cannot read.
    let publisher = NatsBus::connect(NatsBusConfig::new(url.as_str()).subject_prefix(&prefix))
        .await
        .unwrap();
    let envelope = payment_approved_without_payment_id();
    let message_id = envelope.message_id.to_string();
    publisher.publish(envelope).await.unwrap();
    assert_eq!(
        watch.next(DEADLINE).await.as_deref(),
        Some("orders"),
        "no dead letter"
    );

    let (status, body) = get("/dead-letters").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 1, "{body}");
    let letter = &body["deadLetters"][0];
    assert_eq!(letter["group"], "orders");
    assert_eq!(letter["topic"], "payment.approved");
    assert_eq!(letter["messageId"], message_id.as_str());
    assert_eq!(letter["kind"], "permanent");
    assert!(
        letter["reason"].as_str().unwrap().contains("paymentId"),
        "{letter}"
    );
    let id = letter["id"].as_str().unwrap().to_owned();
    let (status, stats) = get("/stats").await;
    assert_eq!(status, 200);
    assert_eq!(stats["deadLetters"], 1, "{stats}");

    // `app payments` on the same prefix shows its own group's dead letters only.
    let payments = roles::spawn_payments(PaymentsRoleConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        bus: BusFlags::nats(url.as_str(), Some(prefix.clone())),
        payments: PaymentsFlags::default(),
        duplicate_replies: false,
        shutdown_grace_secs: 1,
        auth_tokens_file: None,
        telemetry: app::telemetry::Telemetry::On,
    })
    .await
    .unwrap();
    let role = format!("http://{}", payments.local_addr());
    let response = client
        .get(format!("{role}/dead-letters"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({ "count": 0, "deadLetters": [] }));
    let response = client
        .post(format!("{role}/dead-letters/{id}/replay"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        404,
        "Payments replayed Orders' letter"
    );
    payments.shutdown(StopReason::Requested).await.unwrap();

    let (status, body) = replay(&id).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body, json!({ "replayed": id, "group": "orders" }));
    // It reached Orders through its replay subject, and was refused again.
    assert_eq!(
        watch.next(DEADLINE).await.as_deref(),
        Some("orders"),
        "the replay did not reach Orders"
    );
    let (_, body) = get("/dead-letters").await;
    assert_eq!(body["count"], 1, "{body}");
    assert_eq!(body["deadLetters"][0]["messageId"], message_id.as_str());
    assert_ne!(body["deadLetters"][0]["id"], id.as_str());
    let (status, body) = replay(&id).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["type"], "urn:orders:problem:not-found");

    server.shutdown(StopReason::Requested).await.unwrap();
}

/// The API over `port` alone, unauthenticated.
fn console(port: Arc<dyn messaging::DeadLetters>) -> Router {
    let store = Arc::new(InMemoryOrderStore::new());
    let orders = OrdersService::new(
        store.clone(),
        Arc::new(ManualClock::new(Utc::now())),
        OrdersConfig::default(),
    );
    http::router(
        AppState::new(orders, Arc::new(StoreAndBusProbe::new(store, || true))).dead_letters(port),
    )
}

async fn call(router: &Router, method: Method, uri: &str) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_nats_the_list_is_503_while_the_broker_is_down_and_survives_its_restart() {
    if !testing::server_available(
        "over_nats_the_list_is_503_while_the_broker_is_down_and_survives_its_restart",
    ) {
        return;
    }
    let mut server = testing::NatsServer::start().await.unwrap();
    let url = server.url();
    let config = || {
        let mut config =
            NatsBusConfig::new(url.as_str()).request_timeout(Duration::from_millis(500));
        config.max_reconnect_delay = Duration::from_millis(200);
        config
    };
    let bus = NatsBus::connect(config()).await.unwrap();
    let (audit, mut accepted) = RefusesOnce::new();
    let _handle = bus
        .subscribe(Subscription::new("audit").topic("audit.noted"), audit)
        .await
        .unwrap();
    let mut watch = testing::DeadLetterWatch::start(&url, None).await.unwrap();
    let envelope =
        Envelope::new(Uuid::now_v7(), "audit.noted", Utc::now(), "a-1", None, &1).unwrap();
    bus.publish(envelope.clone()).await.unwrap();
    assert_eq!(watch.next(DEADLINE).await.as_deref(), Some("audit"));
    let router = console(Arc::new(bus.clone()));
    let (status, body) = call(&router, Method::GET, "/dead-letters").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["deadLetters"][0]["id"].as_str().unwrap().to_owned();

    server.kill();
    let (status, body) = call(&router, Method::GET, "/dead-letters").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["type"], "urn:orders:problem:unavailable");
    let (status, body) = call(&router, Method::POST, &format!("/dead-letters/{id}/replay")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    // Back on the same store: a process started now sees the same record, and its
    // replay reaches the group, whose subscription reconnected by itself.
    server.restart().await.unwrap();
    let later = console(Arc::new(NatsBus::connect(config()).await.unwrap()));
    let (status, body) = call(&later, Method::GET, "/dead-letters").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 1, "{body}");
    assert_eq!(body["deadLetters"][0]["id"], id.as_str());
    assert_eq!(
        body["deadLetters"][0]["messageId"],
        envelope.message_id.to_string()
    );
    let (status, body) = call(&later, Method::POST, &format!("/dead-letters/{id}/replay")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let handled = tokio::time::timeout(Duration::from_secs(20), accepted.recv()).await;
    assert_eq!(handled.ok().flatten(), Some(envelope.message_id));
    let (_, body) = call(&later, Method::GET, "/dead-letters").await;
    assert_eq!(body, json!({ "count": 0, "deadLetters": [] }));
}
