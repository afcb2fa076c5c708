//! Two `app serve` replicas on one PostgreSQL database: a blocking read on one answers
//! when the other commits the change, within milliseconds, not at its timeout.
//!
//! Needs `ORDERS_TEST_POSTGRES_URL`; skipped without it, failing when `CI` is set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use app::{
    changes::OrderChanges,
    serve::{StoreSpec, open_store},
};
use orders_app::Commit;
use orders_domain::{
    Currency, CustomerId, Money, Order, OrderId, OrderItem, ProductId, Quantity, ShippingAddress,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_read_on_one_replica_answers_when_another_commits() {
    let Ok(admin_url) = std::env::var("ORDERS_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "ORDERS_TEST_POSTGRES_URL must be set in CI"
        );
        println!("skipping: ORDERS_TEST_POSTGRES_URL not set");
        return;
    };
    let database = orders_store::scratch::ScratchDatabase::create(&admin_url)
        .await
        .unwrap();
    let url = database.url().to_owned();
    let spec: StoreSpec = url.parse().unwrap();
    let a = open_store(&spec).await.unwrap();
    let b = open_store(&spec).await.unwrap();
    let changes = Arc::new(OrderChanges::default());
    a.follow_commits(changes.clone()).await.unwrap();

    // Replica A waits for an order replica B has not committed yet.
    let order = new_order();
    let id = order.id();
    let store_a = a.stores.store.clone();
    let waiting = {
        let changes = changes.clone();
        tokio::spawn(async move {
            changes
                .wait_for(id, Duration::from_secs(10), || {
                    let store = store_a.clone();
                    async move { store.load(id).await.unwrap() }
                })
                .await
        })
    };
    // The waiter is registered before B commits.
    let deadline = Instant::now() + Duration::from_secs(10);
    while changes.watched() == 0 {
        assert!(Instant::now() < deadline, "the waiter never registered");
        tokio::task::yield_now().await;
    }
    let started = Instant::now();
    b.stores
        .store
        .commit(Commit {
            order: Some(order),
            outbox: vec![],
            inbox: None,
            idempotency_key: None,
        })
        .await
        .unwrap();
    let found = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiter did not end")
        .unwrap();
    let took = started.elapsed();
    println!(
        "replica A's blocking read answered {} ms after B's commit began",
        took.as_millis()
    );
    assert_eq!(found.map(|o| o.id()), Some(id));
    assert!(
        took < Duration::from_secs(2),
        "answered after {took:?}, not at once"
    );

    a.close().await;
    b.close().await;
    database.remove().await.unwrap();
}

fn new_order() -> Order {
    let price = Money::new(
        rust_decimal::Decimal::from_str_exact("9.99").unwrap(),
        Currency::new("EUR").unwrap(),
    )
    .unwrap();
    let mut order = Order::place(
        OrderId::random(),
        CustomerId::new("customer-1").unwrap(),
        vec![OrderItem::new(
            ProductId::new("sku-a").unwrap(),
            Quantity::new(1).unwrap(),
            price,
        )],
        ShippingAddress::new("Main Street 1", "Berlin", "10115", "DE").unwrap(),
        chrono::Utc::now(),
    )
    .unwrap();
    let _ = order.take_events();
    order
}
