//! Messages that must not change an order twice or at all: replayed answers, a forged
//! `stock.reserved` for an unpaid order (refused, and the refusal releases nothing: Stock
//! never made that reservation), and a payment for an order that does not exist.

use contracts::topics;
use messaging::{Envelope, MessageBus};
use orders_domain::{OrderId, OrderStatus};
use rust_decimal::Decimal;

use super::{
    DEADLINE, ScenarioReport,
    report::transcript,
    steps::{
        checkout, config, count, expect_topics, finish, inject, outcomes, place, resume, start,
        wait,
    },
};
use crate::system::Stores;

pub(super) async fn replayed_messages(stores: Stores) -> ScenarioReport {
    let mut report = ScenarioReport::new("replayed payment.approved and stock.reserved");
    let Some(system) = start(&mut report, config(), stores).await else {
        return report;
    };
    let Some(id) = place(
        &mut report,
        &system,
        checkout("book-1", Decimal::new(1000, 2), 1),
    )
    .await
    else {
        return report;
    };
    wait(&mut report, &system, id, OrderStatus::StockReserved).await;
    system.settle(DEADLINE).await;
    let version = system.orders.order(id).await.map(|o| o.version()).ok();
    let seen = system
        .tap
        .as_ref()
        .map(|t| t.messages(&id.to_string()))
        .unwrap_or_default();
    let replay: Vec<Envelope> = seen
        .iter()
        .filter(|e| e.topic == topics::PAYMENT_APPROVED || e.topic == topics::STOCK_RESERVED)
        .cloned()
        .collect();
    report.check(
        replay.len() == 2,
        "expected one payment.approved and one stock.reserved to replay",
    );
    for envelope in replay {
        // The same message redelivered (same message id: the inbox drops it) …
        let again = envelope.clone();
        // … and the same answer re-sent as a new message (same paymentId/reservationId:
        // the aggregate's idempotency drops it).
        let resent = Envelope {
            message_id: uuid::Uuid::new_v4(),
            ..envelope
        };
        for e in [again, resent] {
            if let Err(err) = system.bus.publish(e).await {
                report
                    .failures
                    .push(format!("replay publish failed: {err}"));
            }
        }
    }
    let store = system.orders.clone();
    let messages = finish(&mut report, system, id, OrderStatus::StockReserved).await;
    let after = store.order(id).await.map(|o| o.version()).ok();
    report.check(
        version == after,
        format!("version changed by replays: {version:?} -> {after:?}"),
    );
    expect_topics(
        &mut report,
        &messages,
        &[
            (topics::ORDER_PAID, 1),
            (topics::PAYMENT_APPROVED, 3),
            (topics::STOCK_RESERVED, 3),
            (topics::ORDER_RESERVATION_REFUSED, 0),
            (topics::STOCK_RELEASED, 0),
        ],
    );
    let history = store.messages(id).await.unwrap_or_default();
    for topic in [topics::PAYMENT_APPROVED, topics::STOCK_RESERVED] {
        let got = outcomes(&history, topic);
        // The redelivered message id never reaches the aggregate (the inbox drops it);
        // the re-sent answer under a new message id is a domain-level duplicate.
        report.check(
            got == ["applied", "duplicate"],
            format!("{topic} outcomes: {got:?}"),
        );
    }
    report
}

pub(super) async fn stock_reserved_for_unpaid_order(stores: Stores) -> ScenarioReport {
    let mut report = ScenarioReport::new("stock.reserved for an unpaid order");
    let Some(mut system) = start(&mut report, config(), stores).await else {
        return report;
    };
    // Payments is away until Orders has dealt with the forged message.
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
    let forged = contracts::StockReserved {
        order_id: id.as_uuid(),
        reservation_id: "forged-reservation".to_owned(),
        items: vec![],
        timestamp: chrono::Utc::now(),
    };
    inject(&mut report, &system, topics::STOCK_RESERVED, id, &forged).await;
    // Awaited on the order's changes: the rejection's inbox record wakes the wait.
    let orders = &system.orders;
    let handled = system
        .changes()
        .wait_for(id, DEADLINE, move || async move {
            let history = orders.messages(id).await.unwrap_or_default();
            (!outcomes(&history, topics::STOCK_RESERVED).is_empty()).then_some(())
        })
        .await;
    if handled.is_none() {
        report
            .failures
            .push("the forged stock.reserved was never handled".to_owned());
    }
    resume(&mut report, system.resume_payments().await);
    let store = system.orders.clone();
    // The forged message is refused; the real flow then completes normally, and Stock
    // keeps its own reservation (the refusal names one it never made).
    let messages = finish(&mut report, system, id, OrderStatus::StockReserved).await;
    expect_topics(
        &mut report,
        &messages,
        &[
            (topics::STOCK_RESERVED, 2),
            (topics::ORDER_RESERVATION_REFUSED, 1),
            (topics::STOCK_RELEASED, 0),
        ],
    );
    let history = store.messages(id).await.unwrap_or_default();
    let got = outcomes(&history, topics::STOCK_RESERVED);
    report.check(
        got == ["rejected", "applied"],
        format!("stock.reserved outcomes: {got:?}"),
    );
    report
}

pub(super) async fn payment_for_unknown_order(stores: Stores) -> ScenarioReport {
    let mut report = ScenarioReport::new("payment.approved for an unknown order");
    let Some(system) = start(&mut report, config(), stores).await else {
        return report;
    };
    let id = OrderId::random();
    report.order_id = Some(id);
    let payload = contracts::PaymentApproved {
        order_id: id.as_uuid(),
        payment_id: "pay-unknown".to_owned(),
        approved_amount: Decimal::new(1000, 2),
        currency: "EUR".to_owned(),
        timestamp: chrono::Utc::now(),
    };
    inject(&mut report, &system, topics::PAYMENT_APPROVED, id, &payload).await;
    if !system.settle(DEADLINE).await {
        report.failures.push("the system did not settle".to_owned());
    }
    let exists = system.orders.order(id).await.is_ok();
    report.check(!exists, "an order appeared out of nowhere");
    let messages = system
        .tap
        .as_ref()
        .map(|t| t.messages(&id.to_string()))
        .unwrap_or_default();
    let history = system.orders.messages(id).await.unwrap_or_default();
    report.transcript = transcript(&messages, &history);
    let got = outcomes(&history, topics::PAYMENT_APPROVED);
    report.check(
        got == ["rejected"],
        format!("payment.approved outcomes: {got:?}"),
    );
    report.check(
        count(&messages, topics::ORDER_PAID) == 0,
        "an unknown order was paid",
    );
    system.shutdown().await;
    report
}
