//! Unit tests of the Order aggregate: one test per cell of the state table, written as
//! given / when / then.

use chrono::{Duration, TimeZone, Utc};
use rust_decimal_macros::dec;

use super::*;
use crate::{Currency, ProductId, Quantity};

fn t0() -> Timestamp {
    Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap()
}

fn eur(amount: rust_decimal::Decimal) -> Money {
    Money::new(amount, Currency::new("EUR").unwrap()).unwrap()
}

fn pay(id: &str) -> PaymentId {
    PaymentId::new(id).unwrap()
}

fn res(id: &str) -> ReservationId {
    ReservationId::new(id).unwrap()
}

fn reason() -> CancellationReason {
    CancellationReason::new("customer request").unwrap()
}

fn new_order() -> Order {
    let items = vec![
        OrderItem::new(
            ProductId::new("book").unwrap(),
            Quantity::new(2).unwrap(),
            eur(dec!(10.10)),
        ),
        OrderItem::new(
            ProductId::new("pen").unwrap(),
            Quantity::new(1).unwrap(),
            eur(dec!(0.30)),
        ),
    ];
    let address = ShippingAddress::new("Main St 1", "Berlin", "10115", "DE").unwrap();
    let mut order = Order::place(
        OrderId::random(),
        CustomerId::new("c-1").unwrap(),
        items,
        address,
        t0(),
    )
    .unwrap();
    let _ = order.take_events();
    order
}

/// Given an order in `status`, reached through the real transitions.
fn given(status: OrderStatus) -> Order {
    let mut order = new_order();
    let now = t0();
    if matches!(status, OrderStatus::Paid | OrderStatus::StockReserved) {
        assert_eq!(
            order.confirm_payment(pay("p1"), order.total(), now),
            Ok(Transition::Applied)
        );
    }
    if status == OrderStatus::StockReserved {
        assert_eq!(
            order.confirm_stock_reservation(res("r1"), now),
            Ok(Transition::Applied)
        );
    }
    if status == OrderStatus::Cancelled {
        assert_eq!(order.cancel(reason(), now), Ok(Transition::Applied));
    }
    let _ = order.take_events();
    order
}

/// Then: the result is `expected`, and a rejected or repeated command changed nothing.
fn then_unchanged(before: &Order, after: &Order, result: &Result<Transition, OrderError>) {
    if !matches!(result, Ok(Transition::Applied)) {
        assert_eq!(before, after, "order changed on {result:?}");
        assert!(after.pending_events().is_empty());
    }
}

fn event_names(order: &Order) -> Vec<&'static str> {
    order
        .pending_events()
        .iter()
        .map(DomainEvent::name)
        .collect()
}

// ---- placing ----------------------------------------------------------------------------

#[test]
fn placing_an_order_totals_its_lines_exactly_and_records_order_placed() {
    let items = vec![
        OrderItem::new(
            ProductId::new("a").unwrap(),
            Quantity::new(1).unwrap(),
            eur(dec!(0.1)),
        ),
        OrderItem::new(
            ProductId::new("b").unwrap(),
            Quantity::new(1).unwrap(),
            eur(dec!(0.2)),
        ),
    ];
    let address = ShippingAddress::new("s", "c", "p", "DE").unwrap();
    let order = Order::place(
        OrderId::random(),
        CustomerId::new("c").unwrap(),
        items,
        address,
        t0(),
    )
    .unwrap();
    assert_eq!(order.total(), eur(dec!(0.3)));
    assert_eq!(order.status(), OrderStatus::AwaitingPayment);
    assert_eq!(event_names(&order), ["OrderPlaced"]);
}

#[test]
fn an_order_without_items_is_refused() {
    let address = ShippingAddress::new("s", "c", "p", "DE").unwrap();
    let err = Order::place(
        OrderId::random(),
        CustomerId::new("c").unwrap(),
        vec![],
        address,
        t0(),
    );
    assert_eq!(err.unwrap_err(), OrderError::NoItems);
}

#[test]
fn an_order_in_two_currencies_is_refused() {
    let usd = Money::new(dec!(1), Currency::new("USD").unwrap()).unwrap();
    let items = vec![
        OrderItem::new(
            ProductId::new("a").unwrap(),
            Quantity::new(1).unwrap(),
            eur(dec!(1)),
        ),
        OrderItem::new(ProductId::new("b").unwrap(), Quantity::new(1).unwrap(), usd),
    ];
    let address = ShippingAddress::new("s", "c", "p", "DE").unwrap();
    let err = Order::place(
        OrderId::random(),
        CustomerId::new("c").unwrap(),
        items,
        address,
        t0(),
    );
    assert!(matches!(err, Err(OrderError::MixedCurrencies { .. })));
}

// ---- AwaitingPayment row ------------------------------------------------------------------

#[test]
fn awaiting_payment_approved_becomes_paid_and_records_order_paid() {
    let mut order = given(OrderStatus::AwaitingPayment);
    let total = order.total();
    assert_eq!(
        order.confirm_payment(pay("p1"), total, t0()),
        Ok(Transition::Applied)
    );
    assert_eq!(order.status(), OrderStatus::Paid);
    assert_eq!(order.payment_id(), Some(&pay("p1")));
    assert_eq!(event_names(&order), ["OrderPaid"]);
}

#[test]
fn awaiting_payment_with_a_different_amount_is_rejected() {
    let mut order = given(OrderStatus::AwaitingPayment);
    let before = order.clone();
    let result = order.confirm_payment(pay("p1"), eur(dec!(20.49)), t0());
    assert!(matches!(result, Err(OrderError::AmountMismatch { .. })));
    then_unchanged(&before, &order, &result);
}

#[test]
fn awaiting_payment_with_a_different_currency_is_rejected() {
    let mut order = given(OrderStatus::AwaitingPayment);
    let before = order.clone();
    let usd = Money::new(order.total().amount(), Currency::new("USD").unwrap()).unwrap();
    let result = order.confirm_payment(pay("p1"), usd, t0());
    assert!(matches!(result, Err(OrderError::AmountMismatch { .. })));
    then_unchanged(&before, &order, &result);
}

#[test]
fn awaiting_payment_stock_reserved_is_rejected() {
    let mut order = given(OrderStatus::AwaitingPayment);
    let before = order.clone();
    let result = order.confirm_stock_reservation(res("r1"), t0());
    assert_eq!(
        result,
        Err(OrderError::InvalidTransition {
            action: Action::ConfirmStockReservation,
            status: OrderStatus::AwaitingPayment
        })
    );
    then_unchanged(&before, &order, &result);
}

#[test]
fn awaiting_payment_cancel_becomes_cancelled_without_refund() {
    let mut order = given(OrderStatus::AwaitingPayment);
    assert_eq!(order.cancel(reason(), t0()), Ok(Transition::Applied));
    assert_eq!(order.status(), OrderStatus::Cancelled);
    let DomainEvent::OrderCancelled(e) = &order.pending_events()[0] else {
        panic!("not cancelled")
    };
    assert_eq!(e.previous_status, OrderStatus::AwaitingPayment);
    assert_eq!(e.payment_id, None);
    assert_eq!(e.paid_amount, None, "nothing was paid");
    assert_eq!(e.reservation_id, None);
}

#[test]
fn awaiting_payment_declined_becomes_cancelled() {
    let mut order = given(OrderStatus::AwaitingPayment);
    assert_eq!(
        order.decline_payment(reason(), t0()),
        Ok(Transition::Applied)
    );
    assert_eq!(order.status(), OrderStatus::Cancelled);
    assert_eq!(event_names(&order), ["OrderCancelled"]);
}

#[test]
fn awaiting_payment_reservation_failed_is_rejected() {
    let mut order = given(OrderStatus::AwaitingPayment);
    let before = order.clone();
    let result = order.fail_stock_reservation(reason(), t0());
    assert!(matches!(result, Err(OrderError::InvalidTransition { .. })));
    then_unchanged(&before, &order, &result);
}

// ---- Paid row ---------------------------------------------------------------------------

#[test]
fn paid_second_payment_is_rejected() {
    let mut order = given(OrderStatus::Paid);
    let before = order.clone();
    let total = order.total();
    let result = order.confirm_payment(pay("p2"), total, t0());
    assert_eq!(
        result,
        Err(OrderError::SecondPayment {
            existing: pay("p1"),
            attempted: pay("p2")
        })
    );
    then_unchanged(&before, &order, &result);
}

#[test]
fn paid_same_payment_again_is_a_no_op() {
    let mut order = given(OrderStatus::Paid);
    let before = order.clone();
    let total = order.total();
    let result = order.confirm_payment(pay("p1"), total, t0());
    assert_eq!(result, Ok(Transition::AlreadyApplied));
    then_unchanged(&before, &order, &result);
}

#[test]
fn paid_stock_reserved_becomes_stock_reserved() {
    let mut order = given(OrderStatus::Paid);
    assert_eq!(
        order.confirm_stock_reservation(res("r1"), t0()),
        Ok(Transition::Applied)
    );
    assert_eq!(order.status(), OrderStatus::StockReserved);
    assert_eq!(order.reservation_id(), Some(&res("r1")));
}

#[test]
fn paid_cancel_becomes_cancelled_with_refund() {
    let mut order = given(OrderStatus::Paid);
    assert_eq!(order.cancel(reason(), t0()), Ok(Transition::Applied));
    let DomainEvent::OrderCancelled(e) = &order.pending_events()[0] else {
        panic!("not cancelled")
    };
    assert_eq!(e.previous_status, OrderStatus::Paid);
    assert_eq!(e.payment_id, Some(pay("p1")));
    assert_eq!(
        e.paid_amount,
        Some(order.total()),
        "what the refund gives back"
    );
    assert_eq!(e.reservation_id, None);
}

#[test]
fn paid_declined_is_rejected() {
    let mut order = given(OrderStatus::Paid);
    let before = order.clone();
    let result = order.decline_payment(reason(), t0());
    assert!(matches!(result, Err(OrderError::InvalidTransition { .. })));
    then_unchanged(&before, &order, &result);
}

#[test]
fn paid_reservation_failed_becomes_cancelled_with_refund() {
    let mut order = given(OrderStatus::Paid);
    assert_eq!(
        order.fail_stock_reservation(reason(), t0()),
        Ok(Transition::Applied)
    );
    assert_eq!(order.status(), OrderStatus::Cancelled);
    let DomainEvent::OrderCancelled(e) = &order.pending_events()[0] else {
        panic!("not cancelled")
    };
    assert_eq!(e.payment_id, Some(pay("p1")));
}

// ---- StockReserved row ------------------------------------------------------------------

#[test]
fn stock_reserved_new_payment_is_rejected() {
    let mut order = given(OrderStatus::StockReserved);
    let before = order.clone();
    let total = order.total();
    let result = order.confirm_payment(pay("p2"), total, t0());
    assert!(matches!(result, Err(OrderError::SecondPayment { .. })));
    then_unchanged(&before, &order, &result);
}

#[test]
fn stock_reserved_same_payment_is_a_no_op() {
    let mut order = given(OrderStatus::StockReserved);
    let before = order.clone();
    let total = order.total();
    let result = order.confirm_payment(pay("p1"), total, t0());
    assert_eq!(result, Ok(Transition::AlreadyApplied));
    then_unchanged(&before, &order, &result);
}

#[test]
fn stock_reserved_new_reservation_is_rejected() {
    let mut order = given(OrderStatus::StockReserved);
    let before = order.clone();
    let result = order.confirm_stock_reservation(res("r2"), t0());
    assert!(matches!(result, Err(OrderError::SecondReservation { .. })));
    then_unchanged(&before, &order, &result);
}

#[test]
fn stock_reserved_same_reservation_is_a_no_op() {
    let mut order = given(OrderStatus::StockReserved);
    let before = order.clone();
    let result = order.confirm_stock_reservation(res("r1"), t0());
    assert_eq!(result, Ok(Transition::AlreadyApplied));
    then_unchanged(&before, &order, &result);
}

#[test]
fn stock_reserved_cancel_refunds_and_releases() {
    let mut order = given(OrderStatus::StockReserved);
    assert_eq!(order.cancel(reason(), t0()), Ok(Transition::Applied));
    let DomainEvent::OrderCancelled(e) = &order.pending_events()[0] else {
        panic!("not cancelled")
    };
    assert_eq!(e.previous_status, OrderStatus::StockReserved);
    assert_eq!(e.payment_id, Some(pay("p1")));
    assert_eq!(e.reservation_id, Some(res("r1")));
}

#[test]
fn stock_reserved_declined_is_rejected() {
    let mut order = given(OrderStatus::StockReserved);
    let before = order.clone();
    let result = order.decline_payment(reason(), t0());
    assert!(matches!(result, Err(OrderError::InvalidTransition { .. })));
    then_unchanged(&before, &order, &result);
}

#[test]
fn stock_reserved_reservation_failed_is_rejected() {
    let mut order = given(OrderStatus::StockReserved);
    let before = order.clone();
    let result = order.fail_stock_reservation(reason(), t0());
    assert!(matches!(result, Err(OrderError::InvalidTransition { .. })));
    then_unchanged(&before, &order, &result);
}

// ---- Cancelled row ----------------------------------------------------------------------

#[test]
fn cancelled_new_payment_is_rejected() {
    let mut order = given(OrderStatus::Cancelled);
    let before = order.clone();
    let total = order.total();
    let result = order.confirm_payment(pay("p9"), total, t0());
    assert_eq!(
        result,
        Err(OrderError::InvalidTransition {
            action: Action::ConfirmPayment,
            status: OrderStatus::Cancelled
        })
    );
    then_unchanged(&before, &order, &result);
}

#[test]
fn cancelled_same_payment_is_a_no_op() {
    let mut order = given(OrderStatus::Paid);
    let _ = order.cancel(reason(), t0()).unwrap();
    let _ = order.take_events();
    let before = order.clone();
    let total = order.total();
    let result = order.confirm_payment(pay("p1"), total, t0());
    assert_eq!(result, Ok(Transition::AlreadyApplied));
    then_unchanged(&before, &order, &result);
}

#[test]
fn cancelled_new_reservation_is_rejected() {
    let mut order = given(OrderStatus::Cancelled);
    let before = order.clone();
    let result = order.confirm_stock_reservation(res("r9"), t0());
    assert!(matches!(result, Err(OrderError::InvalidTransition { .. })));
    then_unchanged(&before, &order, &result);
}

#[test]
fn cancelled_same_reservation_is_a_no_op() {
    let mut order = given(OrderStatus::StockReserved);
    let _ = order.cancel(reason(), t0()).unwrap();
    let _ = order.take_events();
    let before = order.clone();
    let result = order.confirm_stock_reservation(res("r1"), t0());
    assert_eq!(result, Ok(Transition::AlreadyApplied));
    then_unchanged(&before, &order, &result);
}

#[test]
fn cancelled_cancel_again_is_rejected_as_already_cancelled() {
    let mut order = given(OrderStatus::Cancelled);
    let before = order.clone();
    let result = order.cancel(reason(), t0());
    assert_eq!(result, Err(OrderError::AlreadyCancelled));
    then_unchanged(&before, &order, &result);
}

#[test]
fn cancelled_declined_is_a_no_op() {
    let mut order = given(OrderStatus::Cancelled);
    let before = order.clone();
    let result = order.decline_payment(reason(), t0());
    assert_eq!(result, Ok(Transition::AlreadyApplied));
    then_unchanged(&before, &order, &result);
}

#[test]
fn cancelled_reservation_failed_is_a_no_op() {
    let mut order = given(OrderStatus::Cancelled);
    let before = order.clone();
    let result = order.fail_stock_reservation(reason(), t0());
    assert_eq!(result, Ok(Transition::AlreadyApplied));
    then_unchanged(&before, &order, &result);
}

// ---- idempotency window -----------------------------------------------------------------

#[test]
fn processed_ids_are_pruned_after_the_window_but_the_order_still_refuses_a_double_effect() {
    let mut order = given(OrderStatus::StockReserved);
    assert_eq!(order.remembered_payment_ids(), 1);
    order.prune_processed_ids(t0() + Duration::hours(23), Duration::hours(24));
    assert_eq!(
        order.remembered_payment_ids(),
        1,
        "pruned inside the window"
    );
    order.prune_processed_ids(t0() + Duration::hours(25), Duration::hours(24));
    assert_eq!(order.remembered_payment_ids(), 0);
    assert_eq!(order.remembered_reservation_ids(), 0);
    let total = order.total();
    // The order's own payment is still recognised; a new one is still a second payment.
    assert_eq!(
        order.confirm_payment(pay("p1"), total, t0()),
        Ok(Transition::AlreadyApplied)
    );
    assert!(order.confirm_payment(pay("p2"), total, t0()).is_err());
}

#[test]
fn rehydrating_a_snapshot_gives_back_the_same_order() {
    let order = given(OrderStatus::StockReserved);
    assert_eq!(Order::rehydrate(order.snapshot()), order);
}

#[test]
fn event_ids_follow_the_order_and_never_repeat() {
    let mut order = new_order();
    let total = order.total();
    let _ = order.confirm_payment(pay("p1"), total, t0()).unwrap();
    let _ = order.cancel(reason(), t0()).unwrap();
    let ids: Vec<_> = order
        .take_events()
        .iter()
        .map(DomainEvent::event_id)
        .collect();
    assert_eq!(ids[0], EventId::for_order_event(order.id(), 2));
    assert_eq!(ids[1], EventId::for_order_event(order.id(), 3));
}

// ---- payment deadline -------------------------------------------------------------------

/// Given an order in `status` whose payment is due 15 minutes after it was placed.
fn given_with_deadline(status: OrderStatus) -> Order {
    let mut snapshot = given(status).snapshot();
    snapshot.payment_due_at = Some(t0() + Duration::minutes(15));
    Order::rehydrate(snapshot)
}

#[test]
fn awaiting_payment_past_its_deadline_is_cancelled_for_payment_timeout() {
    let mut order = given_with_deadline(OrderStatus::AwaitingPayment);
    let due = order.payment_due_at().unwrap();
    assert_eq!(order.expire_payment(due), Ok(Transition::Applied));
    assert_eq!(order.status(), OrderStatus::Cancelled);
    assert_eq!(
        order.cancellation_reason().map(CancellationReason::as_str),
        Some("payment timeout")
    );
    let DomainEvent::OrderCancelled(e) = &order.pending_events()[0] else {
        panic!("not cancelled")
    };
    assert_eq!(e.previous_status, OrderStatus::AwaitingPayment);
    assert_eq!(e.reason.as_str(), CancellationReason::PAYMENT_TIMEOUT);
}

#[test]
fn awaiting_payment_before_its_deadline_or_without_one_is_not_due() {
    let mut order = given_with_deadline(OrderStatus::AwaitingPayment);
    let before = order.clone();
    let early = order.payment_due_at().unwrap() - Duration::nanoseconds(1);
    let result = order.expire_payment(early);
    assert_eq!(result, Err(OrderError::PaymentNotDue));
    then_unchanged(&before, &order, &result);

    let mut order = given(OrderStatus::AwaitingPayment);
    assert_eq!(order.payment_due_at(), None);
    let before = order.clone();
    let result = order.expire_payment(t0() + Duration::days(365));
    assert_eq!(result, Err(OrderError::PaymentNotDue));
    then_unchanged(&before, &order, &result);
}

#[test]
fn a_paid_order_ignores_its_passed_deadline_and_a_cancelled_one_is_a_no_op() {
    let late = t0() + Duration::hours(1);
    for status in [OrderStatus::Paid, OrderStatus::StockReserved] {
        let mut order = given_with_deadline(status);
        let before = order.clone();
        let result = order.expire_payment(late);
        assert!(
            matches!(
                result,
                Err(OrderError::InvalidTransition {
                    action: Action::ExpirePayment,
                    ..
                })
            ),
            "{status}: {result:?}"
        );
        then_unchanged(&before, &order, &result);
    }
    let mut order = given_with_deadline(OrderStatus::Cancelled);
    let before = order.clone();
    let result = order.expire_payment(late);
    assert_eq!(result, Ok(Transition::AlreadyApplied));
    then_unchanged(&before, &order, &result);
}

#[test]
fn the_deadline_survives_a_snapshot() {
    let order = new_order().with_payment_deadline(t0() + Duration::minutes(15));
    let back = Order::rehydrate(order.snapshot());
    assert_eq!(back.payment_due_at(), Some(t0() + Duration::minutes(15)));
}
