//! A payment Orders refuses does not stay charged: the Orders handler commits the
//! rejected inbox record of the `payment.approved` and an `order.payment_refused` for
//! Payments in one commit, for a second, different `paymentId` on a paid order, an
//! approval for a cancelled order and a wrong amount; a repeated `paymentId` stays a
//! duplicate that refuses nothing; and a redelivered refused approval refuses nothing
//! again.
#![allow(clippy::expect_used, clippy::unwrap_used)] // tests: failing loudly is the point

mod support;

use contracts::{OrderPaymentRefused, topics};
use messaging::{Envelope, ErrorKind};
use orders_app::HandlingOutcome;
use orders_domain::{OrderId, OrderStatus, PaymentId};
use rust_decimal::Decimal;
use support::*;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------
// Refused payments are answered with order.payment_refused

#[tokio::test]
async fn an_approval_for_a_cancelled_order_is_refused_and_refunded_in_the_same_commit() {
    let w = world();
    let id = placed(&w).await;
    cancel(&w, id).await;
    let approval = approved(id, "pay-late", TOTAL, "EUR");

    let outcome = w.handler.dispatch(&approval).await.unwrap();

    assert!(
        matches!(&outcome, HandlingOutcome::Rejected(why) if why.contains("Cancelled")),
        "{outcome:?}"
    );
    let commit = w.store.last_commit();
    assert!(commit.order.is_none(), "the order is unchanged");
    let inbox = commit.inbox.expect("the approval is recorded");
    assert_eq!(inbox.message_id, approval.message_id);
    assert_eq!(inbox.outcome, outcome);
    assert_eq!(commit.outbox.len(), 1, "{:?}", commit.outbox);
    let refusal = &commit.outbox[0];
    assert_eq!(refusal.topic, topics::ORDER_PAYMENT_REFUSED);
    assert_eq!(refusal.correlation_id, id.to_string());
    assert_eq!(refusal.causation_id, Some(approval.message_id));
    let payload: OrderPaymentRefused = refusal.decode().unwrap();
    assert_eq!(payload.order_id, id.as_uuid());
    assert_eq!(payload.payment_id, "pay-late");
    assert_eq!(payload.amount, TOTAL);
    assert_eq!(payload.currency, "EUR");
    assert!(payload.reason.contains("Cancelled"), "{}", payload.reason);
    assert_eq!(w.status(id).await, OrderStatus::Cancelled);
}

#[tokio::test]
async fn a_second_different_payment_for_a_paid_or_stock_reserved_order_is_refused() {
    let w = world();
    let id = placed(&w).await;
    let first = approved(id, "pay-1", TOTAL, "EUR");
    assert_eq!(
        w.handler.dispatch(&first).await,
        Ok(HandlingOutcome::Applied)
    );

    let second = approved(id, "pay-2", TOTAL, "EUR");
    assert!(matches!(
        w.handler.dispatch(&second).await,
        Ok(HandlingOutcome::Rejected(_))
    ));
    let refused = w
        .store
        .sent_on::<OrderPaymentRefused>(topics::ORDER_PAYMENT_REFUSED);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(
        refused[0].payment_id, "pay-2",
        "the second payment, not the first"
    );

    let reserved = reserved(id, "res-1");
    assert_eq!(
        w.handler.dispatch(&reserved).await,
        Ok(HandlingOutcome::Applied)
    );
    let third = approved(id, "pay-3", TOTAL, "EUR");
    assert!(matches!(
        w.handler.dispatch(&third).await,
        Ok(HandlingOutcome::Rejected(_))
    ));
    let refused = w
        .store
        .sent_on::<OrderPaymentRefused>(topics::ORDER_PAYMENT_REFUSED);
    assert_eq!(refused.len(), 2);
    assert_eq!(refused[1].payment_id, "pay-3");
    let order = w.service.order(id).await.unwrap();
    assert_eq!(order.status(), OrderStatus::StockReserved);
    assert_eq!(
        order.payment_id().map(ToString::to_string).as_deref(),
        Some("pay-1")
    );
}

#[tokio::test]
async fn an_approval_of_another_amount_is_refused_and_the_order_still_awaits_payment() {
    let w = world();
    let id = placed(&w).await;
    let wrong = approved(id, "pay-1", Decimal::new(2000, 2), "EUR");

    assert!(matches!(
        w.handler.dispatch(&wrong).await,
        Ok(HandlingOutcome::Rejected(ref why)) if why.contains("does not match")
    ));

    let refused = w
        .store
        .sent_on::<OrderPaymentRefused>(topics::ORDER_PAYMENT_REFUSED);
    assert_eq!(refused.len(), 1);
    assert_eq!(
        refused[0].amount,
        Decimal::new(2000, 2),
        "as Payments announced it"
    );
    assert_eq!(w.status(id).await, OrderStatus::AwaitingPayment);
}

#[tokio::test]
async fn a_repeated_payment_id_is_a_duplicate_and_never_refused_even_once_cancelled() {
    let w = world();
    let id = placed(&w).await;
    assert_eq!(
        w.handler
            .dispatch(&approved(id, "pay-1", TOTAL, "EUR"))
            .await,
        Ok(HandlingOutcome::Applied)
    );
    // The same payment re-sent as a new message (a duplicate reply).
    assert_eq!(
        w.handler
            .dispatch(&approved(id, "pay-1", TOTAL, "EUR"))
            .await,
        Ok(HandlingOutcome::Duplicate)
    );
    // Cancelled while Paid: order.cancelled refunds pay-1; a late copy refuses nothing.
    cancel(&w, id).await;
    assert_eq!(
        w.handler
            .dispatch(&approved(id, "pay-1", TOTAL, "EUR"))
            .await,
        Ok(HandlingOutcome::Duplicate)
    );

    assert!(
        w.store
            .sent_on::<OrderPaymentRefused>(topics::ORDER_PAYMENT_REFUSED)
            .is_empty(),
        "{:?}",
        w.store
            .sent_on::<OrderPaymentRefused>(topics::ORDER_PAYMENT_REFUSED)
    );
}

#[tokio::test]
async fn a_redelivered_refused_approval_refuses_nothing_again() {
    let w = world();
    let id = placed(&w).await;
    cancel(&w, id).await;
    let approval = approved(id, "pay-late", TOTAL, "EUR");

    assert!(matches!(
        w.handler.dispatch(&approval).await,
        Ok(HandlingOutcome::Rejected(_))
    ));
    assert_eq!(
        w.handler.dispatch(&approval).await,
        Ok(HandlingOutcome::Duplicate)
    );

    assert_eq!(
        w.store
            .sent_on::<OrderPaymentRefused>(topics::ORDER_PAYMENT_REFUSED)
            .len(),
        1
    );
}

#[tokio::test]
async fn a_refusal_keeps_its_message_id_when_produced_again() {
    // Two stores (say, the commit was lost and the approval is handled again elsewhere):
    // the same approval message yields the same refusal message id.
    let approval_id = Uuid::new_v4();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let w = world();
        let id = placed(&w).await;
        cancel(&w, id).await;
        let approval = Envelope {
            message_id: approval_id,
            ..approved(id, "pay-late", TOTAL, "EUR")
        };
        w.handler.dispatch(&approval).await.unwrap();
        ids.push(w.store.last_commit().outbox[0].message_id);
    }
    assert_eq!(ids[0], ids[1]);
    assert_ne!(ids[0], approval_id);
}

#[tokio::test]
async fn a_store_that_fails_the_refusal_writes_nothing_and_the_redelivery_refuses_once() {
    let w = world();
    let id = placed(&w).await;
    cancel(&w, id).await;
    let approval = approved(id, "pay-late", TOTAL, "EUR");
    *w.store.fail_next_commit.lock().unwrap() = true;

    let error = w.handler.dispatch(&approval).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Retryable);
    assert!(
        w.store
            .sent_on::<OrderPaymentRefused>(topics::ORDER_PAYMENT_REFUSED)
            .is_empty(),
        "all or nothing"
    );

    assert!(matches!(
        w.handler.dispatch(&approval).await,
        Ok(HandlingOutcome::Rejected(_))
    ));
    assert_eq!(
        w.store
            .sent_on::<OrderPaymentRefused>(topics::ORDER_PAYMENT_REFUSED)
            .len(),
        1
    );
}

#[tokio::test]
async fn a_payment_that_loses_the_race_to_another_is_refused_on_the_reload() {
    // Two approvals of one order handled at once (two Orders replicas): pay-2 is decided
    // on an AwaitingPayment order, but pay-1 commits first, so pay-2's commit conflicts;
    // on the reload pay-2 is a second payment, refused with order.payment_refused.
    let w = world();
    let id = placed(&w).await;
    let winner = approved(id, "pay-1", TOTAL, "EUR");
    *w.store.before_next_order_commit.lock().unwrap() = Some(winner);
    *w.store.concurrent_handler.lock().unwrap() = Some(w.handler.clone());

    let loser = approved(id, "pay-2", TOTAL, "EUR");
    assert!(matches!(
        w.handler.dispatch(&loser).await,
        Ok(HandlingOutcome::Rejected(_))
    ));

    let order = w.service.order(id).await.unwrap();
    assert_eq!(
        order.payment_id(),
        Some(&PaymentId::new("pay-1").unwrap()),
        "the winner paid"
    );
    let refused = w
        .store
        .sent_on::<OrderPaymentRefused>(topics::ORDER_PAYMENT_REFUSED);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].payment_id, "pay-2");
}

#[tokio::test]
async fn an_approval_for_an_unknown_order_is_rejected_without_a_refusal() {
    let w = world();
    let unknown = OrderId::random();

    assert_eq!(
        w.handler
            .dispatch(&approved(unknown, "pay-1", TOTAL, "EUR"))
            .await,
        Ok(HandlingOutcome::Rejected("unknown order".into()))
    );
    assert!(
        w.store
            .sent_on::<OrderPaymentRefused>(topics::ORDER_PAYMENT_REFUSED)
            .is_empty()
    );
}
