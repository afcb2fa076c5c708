//! Property test: any sequence of external messages — approvals, declines, reservations,
//! failures, cancels, with duplicates, redeliveries and any order — keeps the order's
//! invariants: paid at most once, StockReserved only after Paid, Cancelled is final,
//! an order.cancelled at most once, exactly one order.reservation_refused per refused
//! stock.reserved (none for a duplicate), and nothing panics.

use std::sync::Arc;

use app::scenarios::checkout;
use chrono::{TimeZone, Utc};
use contracts::topics;
use messaging::Envelope;
use orders_app::{
    CancelOrder, Direction, HandlingOutcome, ManualClock, OrdersConfig, OrdersMessageHandler,
    OrdersService,
};
use orders_domain::{OrderId, OrderStatus};
use orders_store::InMemoryOrderStore;
use proptest::prelude::*;
use rust_decimal::Decimal;

#[derive(Debug, Clone)]
enum Step {
    Approve {
        payment: u8,
        right_amount: bool,
    },
    Decline,
    Reserve {
        reservation: u8,
    },
    FailReservation,
    Cancel,
    /// Deliver again the n-th message sent so far (same message id).
    Redeliver(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u8..3, prop::bool::weighted(0.8)).prop_map(|(payment, right_amount)| Step::Approve { payment, right_amount }),
        1 => Just(Step::Decline),
        3 => (0u8..3).prop_map(|reservation| Step::Reserve { reservation }),
        1 => Just(Step::FailReservation),
        1 => Just(Step::Cancel),
        2 => (0usize..32).prop_map(Step::Redeliver),
    ]
}

fn envelope<T: serde::Serialize>(topic: &'static str, order: OrderId, payload: &T) -> Envelope {
    Envelope::new(
        uuid::Uuid::new_v4(),
        topic,
        Utc::now(),
        order.to_string(),
        None,
        payload,
    )
    .expect("encode")
}

async fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let store = Arc::new(InMemoryOrderStore::new());
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap(),
    ));
    let service = OrdersService::new(store.clone(), clock.clone(), OrdersConfig::default());
    let handler = OrdersMessageHandler::new(service.clone());
    let placed = service
        .place_order(checkout("sku", Decimal::new(1250, 2), 2), None)
        .await
        .expect("checkout");
    let id = placed.order_id;
    let total = Decimal::new(2500, 2);
    let mut sent: Vec<Envelope> = Vec::new();
    let mut was_cancelled = false;
    let mut was_paid = false;
    for step in steps {
        clock.advance(chrono::Duration::seconds(1));
        let message = match step {
            Step::Approve {
                payment,
                right_amount,
            } => Some(envelope(
                topics::PAYMENT_APPROVED,
                id,
                &contracts::PaymentApproved {
                    order_id: id.as_uuid(),
                    payment_id: format!("pay-{payment}"),
                    approved_amount: if right_amount {
                        total
                    } else {
                        total + Decimal::ONE
                    },
                    currency: "EUR".to_owned(),
                    timestamp: Utc::now(),
                },
            )),
            Step::Decline => Some(envelope(
                topics::PAYMENT_DECLINED,
                id,
                &contracts::PaymentDeclined {
                    order_id: id.as_uuid(),
                    reason: "no funds".to_owned(),
                    timestamp: Utc::now(),
                },
            )),
            Step::Reserve { reservation } => Some(envelope(
                topics::STOCK_RESERVED,
                id,
                &contracts::StockReserved {
                    order_id: id.as_uuid(),
                    reservation_id: format!("res-{reservation}"),
                    items: vec![],
                    timestamp: Utc::now(),
                },
            )),
            Step::FailReservation => Some(envelope(
                topics::STOCK_RESERVATION_FAILED,
                id,
                &contracts::StockReservationFailed {
                    order_id: id.as_uuid(),
                    reason: "gone".to_owned(),
                    timestamp: Utc::now(),
                },
            )),
            Step::Cancel => {
                let _ = service
                    .cancel_order(CancelOrder {
                        order_id: id,
                        reason: "changed mind".to_owned(),
                    })
                    .await;
                None
            }
            Step::Redeliver(n) => sent.get(n % sent.len().max(1)).cloned(),
        };
        if let Some(message) = message {
            let before = service.order(id).await.expect("order");
            let outcome = handler.dispatch(&message).await;
            prop_assert!(outcome.is_ok(), "handler failed: {outcome:?}");
            let after = service.order(id).await.expect("order");
            if after.version() == before.version() {
                prop_assert_eq!(after.status(), before.status());
            }
            sent.push(message);
        }
        let order = service.order(id).await.expect("order");
        let history = service.messages(id).await.expect("history");
        let count = |topic: &str| {
            history
                .iter()
                .filter(|r| r.direction == Direction::Sent && r.topic == topic)
                .count()
        };
        prop_assert!(count(topics::ORDER_PAID) <= 1, "paid twice");
        prop_assert!(count(topics::ORDER_CANCELLED) <= 1, "cancelled twice");
        prop_assert_eq!(count(topics::ORDER_PLACED), 1);
        let refused_reservations = history
            .iter()
            .filter(|r| r.direction == Direction::Received && r.topic == topics::STOCK_RESERVED)
            .filter(|r| matches!(r.outcome, Some(HandlingOutcome::Rejected(_))))
            .count();
        prop_assert_eq!(
            count(topics::ORDER_RESERVATION_REFUSED),
            refused_reservations,
            "one order.reservation_refused per refused stock.reserved"
        );
        if order.status() == OrderStatus::StockReserved {
            prop_assert!(
                count(topics::ORDER_PAID) == 1 && order.payment_id().is_some(),
                "reserved before paid"
            );
        }
        if matches!(
            order.status(),
            OrderStatus::Paid | OrderStatus::StockReserved
        ) {
            was_paid = true;
            prop_assert_eq!(order.total().amount(), total);
        }
        if was_cancelled {
            prop_assert_eq!(order.status(), OrderStatus::Cancelled, "left Cancelled");
        }
        was_cancelled |= order.status() == OrderStatus::Cancelled;
        if was_paid && order.status() != OrderStatus::Cancelled {
            prop_assert!(order.payment_id().is_some());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_sequence_of_messages_keeps_the_order_invariants(steps in prop::collection::vec(step(), 1..24)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(run(steps))?;
    }
}
