//! The conformance suite on PostgreSQL (a fresh schema per test), and what only a shared
//! database has: stores in several processes see each other and relay each row once.

use std::{sync::Arc, time::Duration};

use orders_app::{
    Clock as _, ManualClock, OrderStore, OrdersConfig, OrdersService, Outbox, PaymentDeadlines,
    messaging::MessageBus,
};
use orders_domain::OrderStatus;

use crate::support::{
    DEADLINE, RecordingBus, at, cancellations_sent, checkout, migrations, place, with_schema,
};

crate::conformance::suite!(crate::support::Backend::Postgres, durable);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_twice_applies_the_migrations_once() {
    with_schema(|schema| async move {
        let first = schema.connect().await;
        let second = schema.connect().await;
        let order = place(&first, at(0)).await;
        assert_eq!(second.load(order.id()).await.unwrap(), Some(order));
        let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
            .fetch_one(&mut schema.inspect().await)
            .await
            .unwrap();
        assert_eq!(applied, migrations("postgres"));
        first.close().await;
        second.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_of_several_processes_publish_each_row_once() {
    with_schema(|schema| async move {
        // Two stores = two pools = two "processes" on one database.
        let stores = [
            Arc::new(schema.connect().await),
            Arc::new(schema.connect().await),
        ];
        let mut committed = Vec::new();
        for i in 0..100 {
            let order = place(stores[i % 2].as_ref(), at(i64::try_from(i).unwrap())).await;
            committed.push(orders_domain::EventId::for_order_event(order.id(), 1).as_uuid());
        }
        let bus = RecordingBus::new();
        let mut relays = Vec::new();
        for store in &stores {
            let (store, bus) = (store.clone(), bus.clone());
            relays.push(tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + DEADLINE;
                while store.unsent().await.unwrap() > 0 {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "relays did not drain"
                    );
                    store
                        .relay(9, bus.as_ref() as &dyn MessageBus)
                        .await
                        .unwrap();
                    tokio::task::yield_now().await;
                }
            }));
        }
        for relay in relays {
            relay.await.unwrap();
        }
        assert_eq!(bus.ids(), committed, "each row once, in commit order");
        for store in &stores {
            store.close().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_hears_another_replicas_commit_at_once() {
    let Some(admin) = crate::support::postgres_url() else {
        return;
    };
    let database = orders_store::scratch::ScratchDatabase::create(&admin)
        .await
        .unwrap();
    // Two stores = two replicas on one database.
    let a = orders_store::PostgresOrderStore::connect(database.url())
        .await
        .unwrap();
    let b = orders_store::PostgresOrderStore::connect(database.url())
        .await
        .unwrap();
    let (heard, mut hearing) = tokio::sync::mpsc::unbounded_channel();
    let listener = a
        .listen_commits(move |id, version| {
            let _ = heard.send((id, version));
        })
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let order = place(&b, at(0)).await;
    let committed = started.elapsed();
    let got = tokio::time::timeout(crate::support::DEADLINE, hearing.recv())
        .await
        .expect("replica A did not hear B's commit")
        .unwrap();
    let heard_after = started.elapsed();
    println!(
        "replica A heard B's commit {} ms after it began ({} ms after it returned)",
        heard_after.as_millis(),
        heard_after.saturating_sub(committed).as_millis()
    );
    assert_eq!(got, (order.id(), 1));
    assert!(
        heard_after < std::time::Duration::from_secs(2),
        "heard in {heard_after:?}, expected within milliseconds"
    );
    // A commit that fails announces nothing: a stale version conflicts.
    let mut stale = order.clone();
    stale.mark_saved(0);
    let failed = b
        .commit(orders_app::Commit {
            order: Some(stale),
            outbox: vec![],
            inbox: None,
            idempotency_key: None,
        })
        .await;
    assert!(failed.is_err(), "a stale commit fails");
    let next = place(&b, at(1)).await;
    let got = tokio::time::timeout(crate::support::DEADLINE, hearing.recv())
        .await
        .expect("replica A did not hear B's second commit")
        .unwrap();
    assert_eq!(got, (next.id(), 1), "the failed commit was not announced");

    listener.stop();
    a.close().await;
    b.close().await;
    database.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_racing_on_due_orders_cancel_each_once_and_the_deadline_survives_reconnecting() {
    with_schema(|schema| async move {
        let clock = Arc::new(ManualClock::new(at(0)));
        let config = OrdersConfig {
            payment_timeout: chrono::Duration::minutes(15),
            ..OrdersConfig::default()
        };
        let placing = Arc::new(schema.connect().await);
        let orders = OrdersService::new(placing.clone(), clock.clone(), config.clone());
        let mut ids = Vec::new();
        for _ in 0..40 {
            ids.push(orders.place_order(checkout(), None).await.unwrap().order_id);
        }
        placing.close().await;
        drop((orders, placing));

        clock.advance(chrono::Duration::minutes(15));
        // Two replicas (two stores: two "processes"), each with its deadline worker.
        let replicas = [
            Arc::new(schema.connect().await),
            Arc::new(schema.connect().await),
        ];
        let due_at = at(0) + chrono::Duration::minutes(15);
        for id in &ids {
            let order = replicas[1].load(*id).await.unwrap().unwrap();
            assert_eq!(order.payment_due_at(), Some(due_at), "kept in the database");
        }
        assert_eq!(
            replicas[0]
                .due_for_payment(clock.now(), 100)
                .await
                .unwrap()
                .len(),
            ids.len()
        );
        let passes: Vec<_> = replicas
            .iter()
            .map(|store| {
                let worker = PaymentDeadlines::new(
                    OrdersService::new(store.clone(), clock.clone(), config.clone()),
                    Duration::from_secs(1),
                );
                tokio::spawn(async move { worker.run_once().await.unwrap() })
            })
            .collect();
        let mut cancelled = 0;
        for pass in passes {
            let pass = pass.await.unwrap();
            assert_eq!(pass.failed, 0, "{pass:?}");
            cancelled += pass.cancelled;
        }
        assert_eq!(cancelled, ids.len(), "each order cancelled by one replica");
        for id in &ids {
            let order = replicas[0].load(*id).await.unwrap().unwrap();
            assert_eq!(order.status(), OrderStatus::Cancelled);
            assert_eq!(
                cancellations_sent(replicas[0].as_ref(), *id).await,
                1,
                "{id}"
            );
        }
        assert_eq!(
            replicas[1].due_for_payment(clock.now(), 100).await.unwrap(),
            []
        );
        for store in &replicas {
            store.close().await;
        }
    })
    .await;
}
