//! A customer cancelling in each state: before payment, once paid, once reserved. A
//! simulator is paused where the story needs the cancel to come first. Once paid, the
//! reservation Stock makes after the cancel is refused (`order.reservation_refused`) and
//! released once, though both the cancellation and the refusal ask for it.

use contracts::topics;
use orders_domain::OrderStatus;
use rust_decimal::Decimal;

use super::{
    ScenarioReport,
    steps::{
        cancel, checkout, config, expect_topics, finish, held_reservations, outcomes, place,
        resume, start, wait,
    },
};
use crate::system::Stores;

pub(super) async fn cancel_awaiting_payment(stores: Stores) -> ScenarioReport {
    let mut report = ScenarioReport::new("cancel while AwaitingPayment");
    let Some(mut system) = start(&mut report, config(), stores).await else {
        return report;
    };
    // Payments is away until the customer has cancelled: the cancel comes first.
    system.pause_payments().await;
    let Some(id) = place(
        &mut report,
        &system,
        checkout("book-1", Decimal::new(1500, 2), 1),
    )
    .await
    else {
        return report;
    };
    cancel(&mut report, &system, id).await;
    resume(&mut report, system.resume_payments().await);
    let store = system.orders.clone();
    let messages = finish(&mut report, system, id, OrderStatus::Cancelled).await;
    // Payments had approved before it saw the cancellation: it refunds. Nothing to release.
    expect_topics(
        &mut report,
        &messages,
        &[
            (topics::ORDER_CANCELLED, 1),
            (topics::ORDER_PAID, 0),
            (topics::PAYMENT_REFUNDED, 1),
            (topics::STOCK_RELEASED, 0),
        ],
    );
    let history = store.messages(id).await.unwrap_or_default();
    report.check(
        outcomes(&history, topics::PAYMENT_APPROVED) == ["rejected"],
        "late payment.approved must be rejected",
    );
    report
}

pub(super) async fn cancel_paid(stores: Stores) -> ScenarioReport {
    cancel_once(stores, "cancel while Paid", OrderStatus::Paid).await
}

pub(super) async fn cancel_stock_reserved(stores: Stores) -> ScenarioReport {
    cancel_once(
        stores,
        "cancel while StockReserved",
        OrderStatus::StockReserved,
    )
    .await
}

/// Places an order, cancels it once it is `status`, and expects a refund and a release.
/// For Paid, Stock is away until the cancel is done; it then reserves, Orders refuses
/// that reservation (`stock.reserved` rejected, `order.reservation_refused` published),
/// and Stock, seeing the cancellation and the refusal, releases once.
pub(super) async fn cancel_once(
    stores: Stores,
    name: &'static str,
    status: OrderStatus,
) -> ScenarioReport {
    let mut report = ScenarioReport::new(name);
    let Some(mut system) = start(&mut report, config(), stores).await else {
        return report;
    };
    let hold_stock = status == OrderStatus::Paid;
    if hold_stock {
        system.pause_stock().await;
    }
    let Some(id) = place(
        &mut report,
        &system,
        checkout("book-1", Decimal::new(1500, 2), 1),
    )
    .await
    else {
        return report;
    };
    wait(&mut report, &system, id, status).await;
    cancel(&mut report, &system, id).await;
    if hold_stock {
        resume(&mut report, system.resume_stock().await);
    }
    let store = system.orders.clone();
    let messages = finish(&mut report, system, id, OrderStatus::Cancelled).await;
    expect_topics(
        &mut report,
        &messages,
        &[
            (topics::ORDER_CANCELLED, 1),
            (topics::PAYMENT_REFUNDED, 1),
            (topics::STOCK_RESERVED, 1),
            (topics::ORDER_RESERVATION_REFUSED, usize::from(hold_stock)),
            (topics::STOCK_RELEASED, 1),
        ],
    );
    let history = store.messages(id).await.unwrap_or_default();
    let expected: &[&str] = if hold_stock {
        &["rejected"]
    } else {
        &["applied"]
    };
    let got = outcomes(&history, topics::STOCK_RESERVED);
    report.check(got == expected, format!("stock.reserved outcomes: {got:?}"));
    let held = held_reservations(&messages);
    report.check(
        held.is_empty(),
        format!("reservations still held: {held:?}"),
    );
    report
}
