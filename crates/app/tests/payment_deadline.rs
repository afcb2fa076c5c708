//! The payment deadline of `app serve`: `--payment-timeout-secs` (and
//! `ORDERS_PAYMENT_TIMEOUT_SECS`) is shown by `--help` and read from the environment by
//! the binary; a service with a one-second timeout and no Payments cancels an order
//! with reason `payment timeout` about a second after checkout (awaited with blocking
//! reads, never a sleep). The deadline itself, across restarts and replicas, is tested
//! with a manual clock in `orders-app` and `orders-store`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{process::Command, time::Duration};

use app::serve::{ServeConfig, SimsMode, StopReason, StoreSpec};
use orders_store::scratch::ScratchFile;
use serde_json::{Value, json};
use tokio::time::{Instant, timeout_at};

/// How long the test waits for the order to be cancelled.
const DEADLINE: Duration = Duration::from_secs(10);

#[test]
fn serve_help_shows_the_flag_and_its_environment_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_app"))
        .args(["serve", "--help"])
        .env_remove("ORDERS_PAYMENT_TIMEOUT_SECS")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(help.contains("--payment-timeout-secs <SECS>"), "{help}");
    assert!(help.contains("env: ORDERS_PAYMENT_TIMEOUT_SECS"), "{help}");
    assert!(help.contains("default: 900"), "{help}");
}

#[test]
fn the_environment_variable_is_read_and_validated_like_the_flag() {
    // Set: the help shows the value the binary read.
    let output = Command::new(env!("CARGO_BIN_EXE_app"))
        .args(["serve", "--help"])
        .env("ORDERS_PAYMENT_TIMEOUT_SECS", "42")
        .output()
        .unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(help.contains("ORDERS_PAYMENT_TIMEOUT_SECS=42"), "{help}");
    // Invalid: refused at start, naming the flag, before anything is opened.
    for bad in ["0", "soon"] {
        let output = Command::new(env!("CARGO_BIN_EXE_app"))
            .args(["serve", "--store", "memory", "--listen", "127.0.0.1:0"])
            .env("ORDERS_PAYMENT_TIMEOUT_SECS", bad)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{bad}: {output:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(stderr.contains("--payment-timeout-secs"), "{bad}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_nobody_pays_is_cancelled_for_payment_timeout() {
    let file = ScratchFile::new();
    let store = format!("sqlite:{}", file.path().to_str().unwrap());
    let mut config = ServeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        store.parse::<StoreSpec>().unwrap(),
    );
    // No Payments: nobody ever answers.
    config.sims = SimsMode::None;
    config.payment_timeout_secs = 1;
    let server = app::serve::spawn(config).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let client = reqwest::Client::new();

    let response = client
        .post(format!("{base}/orders"))
        .json(&json!({
            "customerId": "c-1",
            "currency": "EUR",
            "items": [{"productId": "sku-1", "quantity": 1, "price": 9.99}],
            "shippingAddress": {"street": "Main St 1", "city": "Berlin",
                                "postalCode": "10115", "country": "DE"}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let mut order: Value = response.json().await.unwrap();
    assert_eq!(order["status"], "AwaitingPayment");
    let id = order["orderId"].as_str().unwrap().to_owned();

    // Blocking reads: each answers when the order has a newer version.
    let deadline = Instant::now() + DEADLINE;
    while order["status"] == "AwaitingPayment" {
        let version = order["version"].as_u64().unwrap();
        let read = client
            .get(format!(
                "{base}/orders/{id}?afterVersion={version}&waitMs=5000"
            ))
            .send();
        let response = timeout_at(deadline, read)
            .await
            .expect("cancelled within the deadline")
            .unwrap();
        assert_eq!(response.status(), 200);
        order = response.json().await.unwrap();
    }
    assert_eq!(order["status"], "Cancelled", "{order}");
    assert_eq!(order["cancellationReason"], "payment timeout", "{order}");
    assert_eq!(order["version"], 2, "cancelled once: {order}");

    let messages: Value = client
        .get(format!("{base}/orders/{id}/messages"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cancelled = messages
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|m| m["topic"] == "order.cancelled")
                .count()
        })
        .unwrap_or_default();
    assert_eq!(cancelled, 1, "{messages}");
    server.shutdown(StopReason::Requested).await.unwrap();
}
