//! 1,000 orders placed at once all reach their expected state, with no message lost or
//! applied twice — also when Payments and Stock answer every message twice.

use std::{sync::Arc, time::Duration};

use app::{
    scenarios::checkout,
    system::{InProcessSystem, SystemConfig},
};
use contracts::topics;
use orders_app::{Direction, HandlingOutcome};
use orders_domain::OrderStatus;
use payments_sim::PaymentsConfig;
use rust_decimal::Decimal;
use stock_sim::StockConfig;
use tests::ALL_STORES;

const ORDERS: usize = 1_000;

async fn thousand_orders(config: SystemConfig) {
    for kind in ALL_STORES {
        let fresh = kind
            .fresh()
            .await
            .unwrap_or_else(|e| panic!("{kind:?} store: {e:#}"));
        let Some(fresh) = fresh else { continue };
        let system = InProcessSystem::start_with(
            config.clone(),
            fresh.stores.clone(),
            Arc::new(orders_app::SystemClock),
        )
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
        let tasks: Vec<_> = (0..ORDERS)
            .map(|i| {
                let orders = system.orders.clone();
                tokio::spawn(async move {
                    let price = Decimal::new(100 + i64::try_from(i).unwrap_or(0), 2);
                    orders
                        .place_order(checkout(&format!("sku-{}", i % 17), price, 1), None)
                        .await
                })
            })
            .collect();
        let mut ids = Vec::with_capacity(ORDERS);
        for task in tasks {
            ids.push(task.await.expect("task").expect("checkout").order_id);
        }
        assert!(
            system.settle(Duration::from_secs(30)).await,
            "{kind:?}: did not settle"
        );
        let tap = system.tap.clone().expect("tap on");
        for id in &ids {
            let order = system.orders.order(*id).await.expect("order exists");
            assert_eq!(
                order.status(),
                OrderStatus::StockReserved,
                "{kind:?}: order {id}"
            );
            let correlation = id.to_string();
            // Nothing lost: every hop happened; nothing doubled: Orders published each once.
            assert_eq!(tap.count(&correlation, topics::ORDER_PLACED), 1, "{id}");
            assert_eq!(tap.count(&correlation, topics::ORDER_PAID), 1, "{id}");
            // A repeated reservation is a duplicate, never refused, so nothing is released.
            assert_eq!(
                tap.count(&correlation, topics::ORDER_RESERVATION_REFUSED),
                0,
                "{id}"
            );
            assert_eq!(tap.count(&correlation, topics::STOCK_RELEASED), 0, "{id}");
            let history = system.orders.messages(*id).await.expect("history");
            let applied = |topic: &str| {
                history
                    .iter()
                    .filter(|r| r.direction == Direction::Received && r.topic == topic)
                    .filter(|r| r.outcome == Some(HandlingOutcome::Applied))
                    .count()
            };
            assert_eq!(
                applied(topics::PAYMENT_APPROVED),
                1,
                "{id}: payment applied once"
            );
            assert_eq!(
                applied(topics::STOCK_RESERVED),
                1,
                "{id}: reservation applied once"
            );
            assert_eq!(order.version(), 3, "{id}: placed, paid, reserved");
        }
        assert!(
            system.bus.dead_letters().is_empty(),
            "dead letters: {:?}",
            system.bus.dead_letters()
        );
        system.shutdown().await;
        fresh.remove().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_orders_placed_at_once_all_reach_stock_reserved_exactly_once() {
    thousand_orders(SystemConfig {
        tap: true,
        ..SystemConfig::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_orders_stay_exact_when_every_answer_arrives_twice() {
    thousand_orders(SystemConfig {
        tap: true,
        payments: PaymentsConfig::default().duplicate_replies(true),
        stock: StockConfig::default().duplicate_replies(true),
        ..SystemConfig::default()
    })
    .await;
}
