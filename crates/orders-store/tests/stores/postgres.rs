//! The conformance suite on PostgreSQL (a fresh schema per test), and what only a shared
//! database has: stores in several processes see each other and relay each row once.

use std::sync::Arc;

use orders_app::{OrderStore, Outbox, messaging::MessageBus};

use crate::support::{DEADLINE, RecordingBus, at, place, with_schema};

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
        assert_eq!(applied, 1);
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
