//! Orders that run to their end with nobody interfering: approved and reserved, declined
//! by Payments, or out of stock after payment.

use contracts::topics;
use orders_app::PlaceOrder;
use orders_domain::OrderStatus;
use payments_sim::{PaymentDecision, PaymentsConfig};
use rust_decimal::Decimal;
use stock_sim::StockConfig;

use super::{
    ScenarioReport,
    steps::{checkout, config, expect_topics, finish, place, start},
};
use crate::system::{Stores, SystemConfig};

pub(super) async fn happy_path(stores: Stores) -> ScenarioReport {
    straight_through(
        stores,
        "happy path",
        config(),
        checkout("book-1", Decimal::new(2990, 2), 2),
        OrderStatus::StockReserved,
        &[
            (topics::ORDER_PLACED, 1),
            (topics::PAYMENT_APPROVED, 1),
            (topics::ORDER_PAID, 1),
            (topics::STOCK_RESERVED, 1),
            (topics::ORDER_RESERVATION_REFUSED, 0),
            (topics::STOCK_RELEASED, 0),
        ],
    )
    .await
}

/// Places one order, lets the flow run to its end and checks the final state and how
/// many messages of each topic the order had.
pub(super) async fn straight_through(
    stores: Stores,
    name: &'static str,
    cfg: SystemConfig,
    command: PlaceOrder,
    expected: OrderStatus,
    topics: &[(&str, usize)],
) -> ScenarioReport {
    let mut report = ScenarioReport::new(name);
    let Some(system) = start(&mut report, cfg, stores).await else {
        return report;
    };
    let Some(id) = place(&mut report, &system, command).await else {
        return report;
    };
    let messages = finish(&mut report, system, id, expected).await;
    expect_topics(&mut report, &messages, topics);
    report
}

pub(super) async fn payment_declined(stores: Stores) -> ScenarioReport {
    let mut cfg = config();
    cfg.payments =
        PaymentsConfig::default().decision(PaymentDecision::DeclineAbove(Decimal::new(1000, 0)));
    straight_through(
        stores,
        "payment declined",
        cfg,
        checkout("piano", Decimal::new(4999, 0), 1),
        OrderStatus::Cancelled,
        &[
            (topics::PAYMENT_DECLINED, 1),
            (topics::ORDER_PAID, 0),
            (topics::ORDER_CANCELLED, 1),
            (topics::PAYMENT_REFUNDED, 0),
        ],
    )
    .await
}

pub(super) async fn out_of_stock(stores: Stores) -> ScenarioReport {
    let mut cfg = config();
    cfg.stock = StockConfig::default().out_of_stock(["rare-vinyl"]);
    straight_through(
        stores,
        "out of stock after payment",
        cfg,
        checkout("rare-vinyl", Decimal::new(3500, 2), 1),
        OrderStatus::Cancelled,
        &[
            (topics::ORDER_PAID, 1),
            (topics::STOCK_RESERVATION_FAILED, 1),
            (topics::ORDER_CANCELLED, 1),
            (topics::PAYMENT_REFUNDED, 1),
            (topics::STOCK_RELEASED, 0),
        ],
    )
    .await
}
