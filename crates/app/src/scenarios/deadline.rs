//! Payment after the deadline: Payments is away, the order's payment deadline passes (on
//! the manual clock the system runs on), Orders cancels it with reason `payment timeout`;
//! Payments comes back and approves late, Orders refuses that payment
//! (`order.payment_refused`), and Payments refunds it: nothing stays charged.

use std::sync::Arc;

use contracts::topics;
use messaging::Envelope;
use orders_app::ManualClock;
use orders_domain::{CancellationReason, OrderStatus};
use rust_decimal::Decimal;

use super::{
    ScenarioReport,
    steps::{checkout, config, expect_topics, finish, outcomes, place, resume, wait},
};
use crate::system::{InProcessSystem, Stores};

pub(super) async fn payment_after_the_deadline(stores: Stores) -> ScenarioReport {
    let mut report = ScenarioReport::new("payment after the deadline");
    let config = config();
    let timeout = config.orders.payment_timeout;
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let mut system = match InProcessSystem::start_with(config, stores, clock.clone()).await {
        Ok(system) => system,
        Err(e) => {
            report.failures.push(format!("system did not start: {e}"));
            return report;
        }
    };
    // Payments is away: the order waits for its payment past the deadline.
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
    let due = system.orders.order(id).await.ok().and_then(|o| {
        let placed = o.placed_at();
        o.payment_due_at().map(|due| due - placed)
    });
    report.check(
        due == Some(timeout),
        format!("the deadline is the timeout after checkout: {due:?}"),
    );
    // The deadline passes; the deadline task (ticking on real time, reading the manual
    // clock) cancels the order.
    clock.advance(timeout + chrono::Duration::seconds(1));
    wait(&mut report, &system, id, OrderStatus::Cancelled).await;
    let reason = system
        .orders
        .order(id)
        .await
        .ok()
        .and_then(|o| o.cancellation_reason().map(ToString::to_string));
    report.check(
        reason.as_deref() == Some(CancellationReason::PAYMENT_TIMEOUT),
        format!("cancelled for {reason:?}, not for payment timeout"),
    );
    // Payments comes back and approves the order it missed: too late.
    resume(&mut report, system.resume_payments().await);
    let store = system.orders.clone();
    let messages = finish(&mut report, system, id, OrderStatus::Cancelled).await;
    expect_topics(
        &mut report,
        &messages,
        &[
            (topics::ORDER_CANCELLED, 1),
            (topics::PAYMENT_APPROVED, 1),
            (topics::ORDER_PAID, 0),
            (topics::ORDER_PAYMENT_REFUSED, 1),
            (topics::PAYMENT_REFUNDED, 1),
            (topics::STOCK_RESERVED, 0),
        ],
    );
    let history = store.messages(id).await.unwrap_or_default();
    report.check(
        outcomes(&history, topics::PAYMENT_APPROVED) == ["rejected"],
        "the late payment.approved must be rejected",
    );
    let charged = net_charge(&messages);
    report.check(
        charged == Some(Decimal::ZERO),
        format!("net charge after the refund: {charged:?}, not zero"),
    );
    report
}

/// Approved minus refunded, over the order's messages (`None` when one does not decode).
fn net_charge(messages: &[Envelope]) -> Option<Decimal> {
    let mut net = Decimal::ZERO;
    for envelope in messages {
        if envelope.topic == topics::PAYMENT_APPROVED {
            net += envelope
                .decode::<contracts::PaymentApproved>()
                .ok()?
                .approved_amount;
        } else if envelope.topic == topics::PAYMENT_REFUNDED {
            net -= envelope.decode::<contracts::PaymentRefunded>().ok()?.amount;
        }
    }
    Some(net)
}
