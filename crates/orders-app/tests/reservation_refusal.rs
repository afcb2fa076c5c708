//! A stock reservation Orders refuses does not stay held: the Orders handler commits the
//! rejected inbox record of the `stock.reserved` and an `order.reservation_refused` for
//! Stock in one commit, for a reservation of a cancelled order (the crash case: a
//! redelivered `order.paid` reached Stock after `order.cancelled`), a second, different
//! `reservationId` on a reserved order and a reservation of an unpaid order; a repeated
//! `reservationId` stays a duplicate that refuses nothing; and a redelivered refused
//! `stock.reserved` refuses nothing again.
#![allow(clippy::expect_used, clippy::unwrap_used)] // tests: failing loudly is the point

mod support;

use contracts::{OrderReservationRefused, topics};
use messaging::{Envelope, ErrorKind};
use orders_app::HandlingOutcome;
use orders_domain::{OrderId, OrderStatus};
use support::*;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------
// Refused reservations are answered with order.reservation_refused

#[tokio::test]
async fn a_reservation_for_an_order_cancelled_while_paid_is_refused_and_released_in_the_same_commit()
 {
    let w = world();
    let id = paid(&w).await;
    cancel(&w, id).await;
    let reservation = reserved(id, "res-late");

    let outcome = w.handler.dispatch(&reservation).await.unwrap();

    assert!(
        matches!(&outcome, HandlingOutcome::Rejected(why) if why.contains("Cancelled")),
        "{outcome:?}"
    );
    let commit = w.store.last_commit();
    assert!(commit.order.is_none(), "the order is unchanged");
    let inbox = commit.inbox.expect("the reservation is recorded");
    assert_eq!(inbox.message_id, reservation.message_id);
    assert_eq!(inbox.outcome, outcome);
    assert_eq!(commit.outbox.len(), 1, "{:?}", commit.outbox);
    let refusal = &commit.outbox[0];
    assert_eq!(refusal.topic, topics::ORDER_RESERVATION_REFUSED);
    assert_eq!(refusal.correlation_id, id.to_string());
    assert_eq!(refusal.causation_id, Some(reservation.message_id));
    let payload: OrderReservationRefused = refusal.decode().unwrap();
    assert_eq!(payload.order_id, id.as_uuid());
    assert_eq!(payload.reservation_id, "res-late");
    assert!(payload.reason.contains("Cancelled"), "{}", payload.reason);
    assert_eq!(
        w.store
            .sent_on::<OrderReservationRefused>(topics::ORDER_RESERVATION_REFUSED)
            .len(),
        1,
        "exactly one refusal"
    );
    assert_eq!(w.status(id).await, OrderStatus::Cancelled);
}

#[tokio::test]
async fn a_second_different_reservation_for_a_reserved_order_is_refused_and_the_first_kept() {
    let w = world();
    let id = paid(&w).await;
    assert_eq!(
        w.handler.dispatch(&reserved(id, "res-1")).await,
        Ok(HandlingOutcome::Applied)
    );

    let second = w.handler.dispatch(&reserved(id, "res-2")).await;

    assert!(
        matches!(&second, Ok(HandlingOutcome::Rejected(why)) if why.contains("res-2")),
        "{second:?}"
    );
    let refused = w
        .store
        .sent_on::<OrderReservationRefused>(topics::ORDER_RESERVATION_REFUSED);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(
        refused[0].reservation_id, "res-2",
        "the second reservation, not the first"
    );
    let order = w.service.order(id).await.unwrap();
    assert_eq!(order.status(), OrderStatus::StockReserved);
    assert_eq!(
        order.reservation_id().map(ToString::to_string).as_deref(),
        Some("res-1")
    );
}

#[tokio::test]
async fn a_reservation_for_an_unpaid_order_is_refused_too() {
    let w = world();
    let id = placed(&w).await;

    assert!(matches!(
        w.handler.dispatch(&reserved(id, "forged")).await,
        Ok(HandlingOutcome::Rejected(_))
    ));

    let refused = w
        .store
        .sent_on::<OrderReservationRefused>(topics::ORDER_RESERVATION_REFUSED);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].reservation_id, "forged");
    assert_eq!(w.status(id).await, OrderStatus::AwaitingPayment);
}

#[tokio::test]
async fn a_repeated_reservation_id_is_a_duplicate_and_never_refused_even_once_cancelled() {
    let w = world();
    let id = paid(&w).await;
    assert_eq!(
        w.handler.dispatch(&reserved(id, "res-1")).await,
        Ok(HandlingOutcome::Applied)
    );
    // The same reservation re-sent as a new message (a duplicate reply).
    assert_eq!(
        w.handler.dispatch(&reserved(id, "res-1")).await,
        Ok(HandlingOutcome::Duplicate)
    );
    // Cancelled while reserved: order.cancelled releases res-1; a late copy refuses
    // nothing.
    cancel(&w, id).await;
    assert_eq!(
        w.handler.dispatch(&reserved(id, "res-1")).await,
        Ok(HandlingOutcome::Duplicate)
    );

    assert!(
        w.store
            .sent_on::<OrderReservationRefused>(topics::ORDER_RESERVATION_REFUSED)
            .is_empty(),
        "{:?}",
        w.store
            .sent_on::<OrderReservationRefused>(topics::ORDER_RESERVATION_REFUSED)
    );
    assert_eq!(w.store.sent(topics::ORDER_RESERVATION_REFUSED), 0);
}

#[tokio::test]
async fn a_redelivered_refused_reservation_refuses_nothing_again() {
    let w = world();
    let id = paid(&w).await;
    cancel(&w, id).await;
    let reservation = reserved(id, "res-late");

    assert!(matches!(
        w.handler.dispatch(&reservation).await,
        Ok(HandlingOutcome::Rejected(_))
    ));
    assert_eq!(
        w.handler.dispatch(&reservation).await,
        Ok(HandlingOutcome::Duplicate)
    );

    assert_eq!(
        w.store
            .sent_on::<OrderReservationRefused>(topics::ORDER_RESERVATION_REFUSED)
            .len(),
        1
    );
}

#[tokio::test]
async fn a_refusal_keeps_its_message_id_when_produced_again() {
    // Two stores (say, the commit was lost and the reservation is handled again
    // elsewhere): the same stock.reserved message yields the same refusal message id.
    let reserved_id = Uuid::new_v4();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let w = world();
        let id = paid(&w).await;
        cancel(&w, id).await;
        let reservation = Envelope {
            message_id: reserved_id,
            ..reserved(id, "res-late")
        };
        w.handler.dispatch(&reservation).await.unwrap();
        ids.push(w.store.last_commit().outbox[0].message_id);
    }
    assert_eq!(ids[0], ids[1]);
    assert_ne!(ids[0], reserved_id);
}

#[tokio::test]
async fn a_store_that_fails_the_refusal_writes_nothing_and_the_redelivery_refuses_once() {
    let w = world();
    let id = paid(&w).await;
    cancel(&w, id).await;
    let reservation = reserved(id, "res-late");
    *w.store.fail_next_commit.lock().unwrap() = true;

    let error = w.handler.dispatch(&reservation).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Retryable);
    assert!(
        w.store
            .sent_on::<OrderReservationRefused>(topics::ORDER_RESERVATION_REFUSED)
            .is_empty(),
        "all or nothing"
    );

    assert!(matches!(
        w.handler.dispatch(&reservation).await,
        Ok(HandlingOutcome::Rejected(_))
    ));
    assert_eq!(
        w.store
            .sent_on::<OrderReservationRefused>(topics::ORDER_RESERVATION_REFUSED)
            .len(),
        1
    );
}

#[tokio::test]
async fn a_reservation_for_an_unknown_order_is_rejected_without_a_refusal() {
    let w = world();
    let unknown = OrderId::random();

    assert_eq!(
        w.handler.dispatch(&reserved(unknown, "res-1")).await,
        Ok(HandlingOutcome::Rejected("unknown order".into()))
    );
    assert!(
        w.store
            .sent_on::<OrderReservationRefused>(topics::ORDER_RESERVATION_REFUSED)
            .is_empty()
    );
}
