//! The simulated Payments seen from the bus: what it answers to `order.placed`,
//! `order.cancelled` and `order.payment_refused` under each configuration, and that it
//! charges and refunds each order at most once however often it is asked.
#![allow(clippy::unwrap_used)]

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use contracts::{
    OrderCancelled, OrderPaymentRefused, OrderPlaced, PaymentApproved, PaymentDeclined,
    PaymentRefunded, PricedItem, ShippingAddress, topics,
};
use messaging::{
    BusError, Envelope, HandlerError, InMemoryBus, MessageBus, MessageHandler, Subscription,
    SubscriptionHandle,
};
use payments_sim::{PaymentDecision, PaymentsConfig, PaymentsHandle, PaymentsService};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use serde::de::DeserializeOwned;
use tokio::{sync::Notify, time::Instant};
use uuid::Uuid;

/// How long a test waits for the flow to settle before it fails.
const DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Scenarios

#[tokio::test]
async fn an_order_is_approved_for_its_total_with_a_new_payment_id() {
    let world = World::start(PaymentsConfig::default()).await;
    let placed = order_placed(dec!(30.30));

    let sent = world
        .publish(topics::ORDER_PLACED, placed.order_id, &placed)
        .await;
    world.settle().await;

    let answers = world.observer.envelopes();
    assert_eq!(answers.len(), 1, "one answer: {answers:?}");
    let answer = &answers[0];
    assert_eq!(answer.topic, topics::PAYMENT_APPROVED);
    assert_eq!(answer.correlation_id, placed.order_id.to_string());
    assert_eq!(answer.causation_id, Some(sent.message_id));
    let approved: PaymentApproved = answer.decode().unwrap();
    assert_eq!(approved.order_id, placed.order_id);
    assert_eq!(approved.approved_amount, dec!(30.30));
    assert_eq!(approved.currency, "EUR");
    assert!(Uuid::parse_str(&approved.payment_id).is_ok());
    assert_eq!(
        world.payments.payment_for(placed.order_id),
        Some(approved.payment_id)
    );
    assert_eq!(world.payments.approved_count(), 1);
    assert_eq!(world.payments.declined_count(), 0);
}

#[tokio::test]
async fn decline_all_declines_every_order_with_a_reason() {
    let world = World::start(PaymentsConfig::default().decision(PaymentDecision::DeclineAll)).await;
    let first = order_placed(dec!(1));
    let second = order_placed(dec!(1000));

    world
        .publish(topics::ORDER_PLACED, first.order_id, &first)
        .await;
    world
        .publish(topics::ORDER_PLACED, second.order_id, &second)
        .await;
    world.settle().await;

    let declined: Vec<PaymentDeclined> = world.observer.payloads(topics::PAYMENT_DECLINED);
    let mut orders: Vec<Uuid> = declined.iter().map(|d| d.order_id).collect();
    orders.sort();
    let mut expected = vec![first.order_id, second.order_id];
    expected.sort();
    assert_eq!(orders, expected);
    assert!(declined.iter().all(|d| !d.reason.is_empty()));
    assert!(world.observer.on(topics::PAYMENT_APPROVED).is_empty());
    assert_eq!(world.payments.declined_count(), 2);
    assert_eq!(world.payments.approved_count(), 0);
}

#[tokio::test]
async fn decline_above_a_limit_approves_up_to_the_limit_and_declines_beyond_it() {
    let config = PaymentsConfig::default().decision(PaymentDecision::DeclineAbove(dec!(100)));
    let world = World::start(config).await;
    let at_limit = order_placed(dec!(100.00));
    let beyond = order_placed(dec!(100.01));

    world
        .publish(topics::ORDER_PLACED, at_limit.order_id, &at_limit)
        .await;
    world
        .publish(topics::ORDER_PLACED, beyond.order_id, &beyond)
        .await;
    world.settle().await;

    let approved: Vec<PaymentApproved> = world.observer.payloads(topics::PAYMENT_APPROVED);
    let declined: Vec<PaymentDeclined> = world.observer.payloads(topics::PAYMENT_DECLINED);
    assert_eq!(approved.len(), 1);
    assert_eq!(approved[0].order_id, at_limit.order_id);
    assert_eq!(declined.len(), 1);
    assert_eq!(declined[0].order_id, beyond.order_id);
    assert!(
        declined[0].reason.contains("100.01"),
        "the reason names the amount: {}",
        declined[0].reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_comes_only_after_the_processing_delay() {
    let delay = Duration::from_millis(30);
    let world = World::start(PaymentsConfig::default().delay(delay)).await;
    let placed = order_placed(dec!(10));
    let started = Instant::now();

    world
        .publish(topics::ORDER_PLACED, placed.order_id, &placed)
        .await;

    // The delay runs on the real clock (see `simulate_processing`), so this waits it out.
    world.observer.wait_for(1).await;
    let took = started.elapsed();
    assert!(
        took >= delay,
        "answered after {took:?}, before the delay of {delay:?}"
    );
    assert_eq!(world.observer.on(topics::PAYMENT_APPROVED).len(), 1);
}

#[tokio::test]
async fn duplicate_replies_publish_two_envelopes_with_one_payload() {
    let world = World::start(PaymentsConfig::default().duplicate_replies(true)).await;
    let placed = order_placed(dec!(10));

    world
        .publish(topics::ORDER_PLACED, placed.order_id, &placed)
        .await;
    world.settle().await;

    let answers = world.observer.on(topics::PAYMENT_APPROVED);
    assert_eq!(answers.len(), 2);
    assert_ne!(answers[0].message_id, answers[1].message_id);
    assert_eq!(answers[0].payload.get(), answers[1].payload.get());
    assert_eq!(answers[0].causation_id, answers[1].causation_id);
    assert_eq!(world.payments.approved_count(), 1, "charged once");
}

#[tokio::test]
async fn a_redelivered_order_placed_gets_the_same_payment_id_and_is_charged_once() {
    let world = World::start(PaymentsConfig::default()).await;
    let placed = order_placed(dec!(10));
    let envelope = envelope(topics::ORDER_PLACED, placed.order_id, &placed);

    world.publish_envelope(envelope.clone()).await;
    world.publish_envelope(envelope).await;
    world.settle().await;

    let approved: Vec<PaymentApproved> = world.observer.payloads(topics::PAYMENT_APPROVED);
    assert_eq!(approved.len(), 2);
    assert_eq!(
        approved[0], approved[1],
        "the same approval, paymentId included"
    );
    assert_eq!(world.payments.approved_count(), 1);
}

#[tokio::test]
async fn a_restarted_payments_and_a_second_instance_answer_with_the_same_payment_id() {
    let world = World::start(PaymentsConfig::default()).await;
    let placed = order_placed(dec!(10));
    let request = envelope(topics::ORDER_PLACED, placed.order_id, &placed);
    world.publish_envelope(request.clone()).await;
    world.settle().await;

    // Restart: the same group on the same bus, with an empty ledger.
    let World {
        bus,
        observer,
        payments,
        _observing,
    } = world;
    payments.stop().await;
    let restarted = PaymentsService::start(Arc::new(bus.clone()), PaymentsConfig::default())
        .await
        .unwrap();
    assert_eq!(restarted.payment_for(placed.order_id), None, "empty ledger");
    bus.publish(request.clone()).await.unwrap();
    assert!(bus.wait_idle(DEADLINE).await);
    // A second instance, on a bus of its own: it never heard of the order.
    let second = World::start(PaymentsConfig::default()).await;
    second.publish_envelope(request).await;
    second.settle().await;

    let mut answers: Vec<PaymentApproved> = observer.payloads(topics::PAYMENT_APPROVED);
    answers.extend(
        second
            .observer
            .payloads::<PaymentApproved>(topics::PAYMENT_APPROVED),
    );
    assert_eq!(answers.len(), 3, "{answers:?}");
    let expected = payments_sim::payment_id_for(placed.order_id);
    assert!(
        answers.iter().all(|a| a.payment_id == expected),
        "one paymentId for the order: {answers:?}"
    );
    assert_eq!(restarted.payment_for(placed.order_id), Some(expected));
    assert_ne!(
        payments_sim::payment_id_for(Uuid::new_v4()),
        payments_sim::payment_id_for(placed.order_id),
        "another order, another paymentId"
    );
}

#[tokio::test]
async fn a_paid_order_is_refunded_exactly_once_even_when_the_cancellation_comes_twice() {
    let world = World::start(PaymentsConfig::default()).await;
    let placed = order_placed(dec!(42.50));
    world
        .publish(topics::ORDER_PLACED, placed.order_id, &placed)
        .await;
    world.settle().await;
    let payment_id = world.payments.payment_for(placed.order_id).unwrap();
    let cancelled = order_cancelled(placed.order_id, "Paid", Some(&payment_id));
    let envelope = envelope(topics::ORDER_CANCELLED, placed.order_id, &cancelled);

    world.publish_envelope(envelope.clone()).await;
    world.publish_envelope(envelope).await;
    world
        .publish(topics::ORDER_CANCELLED, placed.order_id, &cancelled)
        .await;
    world.settle().await;

    let refunds: Vec<PaymentRefunded> = world.observer.payloads(topics::PAYMENT_REFUNDED);
    assert_eq!(refunds.len(), 1, "one refund: {refunds:?}");
    assert_eq!(refunds[0].payment_id, payment_id);
    assert_eq!(refunds[0].amount, dec!(42.50));
    assert_eq!(refunds[0].currency, "EUR");
    assert_eq!(world.payments.refunds_for(placed.order_id), 1);
    assert_eq!(world.payments.refunded_count(), 1);
}

#[tokio::test]
async fn an_order_cancelled_while_awaiting_payment_is_refunded_when_payments_had_charged_it() {
    let world = World::start(PaymentsConfig::default()).await;
    let placed = order_placed(dec!(10));
    world
        .publish(topics::ORDER_PLACED, placed.order_id, &placed)
        .await;
    // Orders cancelled before the approval reached it: the message names no payment.
    let cancelled = order_cancelled(placed.order_id, "AwaitingPayment", None);
    world
        .publish(topics::ORDER_CANCELLED, placed.order_id, &cancelled)
        .await;
    world.settle().await;

    let refunds: Vec<PaymentRefunded> = world.observer.payloads(topics::PAYMENT_REFUNDED);
    assert_eq!(refunds.len(), 1);
    assert_eq!(
        Some(&refunds[0].payment_id),
        world.payments.payment_for(placed.order_id).as_ref()
    );
}

#[tokio::test]
async fn a_declined_order_that_is_cancelled_is_not_refunded() {
    let world = World::start(PaymentsConfig::default().decision(PaymentDecision::DeclineAll)).await;
    let placed = order_placed(dec!(10));
    world
        .publish(topics::ORDER_PLACED, placed.order_id, &placed)
        .await;
    let cancelled = order_cancelled(placed.order_id, "AwaitingPayment", None);
    world
        .publish(topics::ORDER_CANCELLED, placed.order_id, &cancelled)
        .await;
    world.settle().await;

    assert!(world.observer.on(topics::PAYMENT_REFUNDED).is_empty());
    assert_eq!(world.payments.refunds_for(placed.order_id), 0);
    assert_eq!(world.payments.refunded_count(), 0);
}

#[tokio::test]
async fn a_cancellation_naming_a_payment_payments_never_made_refunds_nothing() {
    let world = World::start(PaymentsConfig::default()).await;
    let order_id = Uuid::new_v4();
    let cancelled = order_cancelled(order_id, "Paid", Some("a-payment-from-elsewhere"));

    world
        .publish(topics::ORDER_CANCELLED, order_id, &cancelled)
        .await;
    world.settle().await;

    assert!(world.observer.envelopes().is_empty());
    assert_eq!(world.payments.refunded_count(), 0);
}

#[tokio::test]
async fn an_order_cancelled_before_payments_saw_it_placed_is_never_charged() {
    let world = World::start(PaymentsConfig::default()).await;
    let placed = order_placed(dec!(10));
    let cancelled = order_cancelled(placed.order_id, "AwaitingPayment", None);

    world
        .publish(topics::ORDER_CANCELLED, placed.order_id, &cancelled)
        .await;
    world
        .publish(topics::ORDER_PLACED, placed.order_id, &placed)
        .await;
    world.settle().await;

    assert!(world.observer.on(topics::PAYMENT_APPROVED).is_empty());
    assert_eq!(world.observer.on(topics::PAYMENT_DECLINED).len(), 1);
    assert_eq!(world.payments.approved_count(), 0);
}

#[tokio::test]
async fn a_refunded_order_placed_again_is_not_approved_again() {
    let world = World::start(PaymentsConfig::default()).await;
    let placed = order_placed(dec!(10));
    let placed_envelope = envelope(topics::ORDER_PLACED, placed.order_id, &placed);
    world.publish_envelope(placed_envelope.clone()).await;
    let cancelled = order_cancelled(placed.order_id, "Paid", None);
    world
        .publish(topics::ORDER_CANCELLED, placed.order_id, &cancelled)
        .await;

    world.publish_envelope(placed_envelope).await;
    world.settle().await;

    assert_eq!(world.observer.on(topics::PAYMENT_APPROVED).len(), 1);
    assert_eq!(world.observer.on(topics::PAYMENT_REFUNDED).len(), 1);
}

#[tokio::test]
async fn a_refund_whose_announcement_failed_is_announced_on_redelivery_and_issued_once() {
    let bus = InMemoryBus::default();
    let (observer, _observing) = Observer::attach(&bus).await;
    let flaky = Arc::new(FailingOnce::new(bus.clone(), topics::PAYMENT_REFUNDED));
    let payments = PaymentsService::start(flaky.clone(), PaymentsConfig::default())
        .await
        .unwrap();
    let placed = order_placed(dec!(10));
    bus.publish(envelope(topics::ORDER_PLACED, placed.order_id, &placed))
        .await
        .unwrap();
    let cancelled = order_cancelled(placed.order_id, "Paid", None);

    bus.publish(envelope(
        topics::ORDER_CANCELLED,
        placed.order_id,
        &cancelled,
    ))
    .await
    .unwrap();
    assert!(bus.wait_idle(DEADLINE).await);

    assert_eq!(flaky.failures(), 1, "the first announcement failed");
    assert_eq!(observer.on(topics::PAYMENT_REFUNDED).len(), 1);
    assert_eq!(payments.refunded_count(), 1);
    assert!(bus.dead_letters().is_empty());
}

#[tokio::test]
async fn a_refused_payment_is_refunded_once_however_often_it_is_refused_or_cancelled() {
    let world = World::start(PaymentsConfig::default()).await;
    let placed = order_placed(dec!(25));
    world
        .publish(topics::ORDER_PLACED, placed.order_id, &placed)
        .await;
    world.settle().await;
    assert_eq!(world.payments.net_charges_for(placed.order_id), 1);
    let payment_id = world.payments.payment_for(placed.order_id).unwrap();
    let refused = payment_refused(placed.order_id, &payment_id, dec!(25));

    // Orders refused it twice (a duplicate approval), and the order was cancelled too.
    let envelope = envelope(topics::ORDER_PAYMENT_REFUSED, placed.order_id, &refused);
    world.publish_envelope(envelope.clone()).await;
    world.publish_envelope(envelope).await;
    world
        .publish(topics::ORDER_PAYMENT_REFUSED, placed.order_id, &refused)
        .await;
    let cancelled = order_cancelled(placed.order_id, "Paid", Some(&payment_id));
    world
        .publish(topics::ORDER_CANCELLED, placed.order_id, &cancelled)
        .await;
    world.settle().await;

    let refunds: Vec<PaymentRefunded> = world.observer.payloads(topics::PAYMENT_REFUNDED);
    assert_eq!(refunds.len(), 1, "one refund: {refunds:?}");
    assert_eq!(refunds[0].payment_id, payment_id);
    assert_eq!(refunds[0].amount, dec!(25));
    assert_eq!(world.payments.refunded_count(), 1);
    assert_eq!(world.payments.net_charges_for(placed.order_id), 0);
    assert!(world.bus.dead_letters().is_empty());
}

#[tokio::test]
async fn a_refusal_of_another_payment_leaves_the_own_charge_alone() {
    let world = World::start(PaymentsConfig::default()).await;
    let placed = order_placed(dec!(25));
    world
        .publish(topics::ORDER_PLACED, placed.order_id, &placed)
        .await;
    let foreign = payment_refused(placed.order_id, "a-payment-from-elsewhere", dec!(25));
    world
        .publish(topics::ORDER_PAYMENT_REFUSED, placed.order_id, &foreign)
        .await;
    // And a refusal for an order Payments never heard of, naming a foreign payment.
    let stranger = Uuid::new_v4();
    let unknown = payment_refused(stranger, "another-foreign-payment", dec!(1));
    world
        .publish(topics::ORDER_PAYMENT_REFUSED, stranger, &unknown)
        .await;
    world.settle().await;

    assert!(world.observer.on(topics::PAYMENT_REFUNDED).is_empty());
    assert_eq!(world.payments.net_charges_for(placed.order_id), 1);
    assert_eq!(world.payments.net_charges_for(stranger), 0);
    assert_eq!(world.payments.refunded_count(), 0);
}

#[tokio::test]
async fn a_payment_charged_before_a_restart_is_refunded_when_orders_refuses_it() {
    // The first instance charged the order; a restarted one (empty ledger) receives the
    // refusal: the paymentId is the order's own, so it refunds it, once.
    let first = World::start(PaymentsConfig::default()).await;
    let placed = order_placed(dec!(12.34));
    first
        .publish(topics::ORDER_PLACED, placed.order_id, &placed)
        .await;
    first.settle().await;
    let restarted = World::start(PaymentsConfig::default()).await;
    let payment_id = payments_sim::payment_id_for(placed.order_id);
    let refused = payment_refused(placed.order_id, &payment_id, dec!(12.34));

    restarted
        .publish(topics::ORDER_PAYMENT_REFUSED, placed.order_id, &refused)
        .await;
    restarted
        .publish(topics::ORDER_PAYMENT_REFUSED, placed.order_id, &refused)
        .await;
    // A redelivered order.placed does not charge the refunded payment again.
    restarted
        .publish(topics::ORDER_PLACED, placed.order_id, &placed)
        .await;
    restarted.settle().await;

    let refunds: Vec<PaymentRefunded> = restarted.observer.payloads(topics::PAYMENT_REFUNDED);
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0].payment_id, payment_id);
    assert_eq!(refunds[0].amount, dec!(12.34));
    assert!(restarted.observer.on(topics::PAYMENT_APPROVED).is_empty());
    assert_eq!(
        first.payments.net_charges_for(placed.order_id)
            + restarted.payments.net_charges_for(placed.order_id),
        0,
        "charged by one instance, refunded by the other"
    );
}

#[tokio::test]
async fn a_payment_charged_before_a_restart_is_refunded_when_the_order_is_cancelled() {
    // The first instance charged the order; a restarted one (empty ledger) receives the
    // cancellation of the paid order, which names the order's own paymentId and what it
    // charged: it refunds it, once, and a redelivered order.placed charges nothing.
    let first = World::start(PaymentsConfig::default()).await;
    let placed = order_placed(dec!(12.34));
    first
        .publish(topics::ORDER_PLACED, placed.order_id, &placed)
        .await;
    first.settle().await;
    let restarted = World::start(PaymentsConfig::default()).await;
    let payment_id = payments_sim::payment_id_for(placed.order_id);
    let mut cancelled = order_cancelled(placed.order_id, "Paid", Some(&payment_id));
    cancelled.paid_amount = Some(dec!(12.34));
    cancelled.currency = Some("EUR".into());

    for _ in 0..2 {
        restarted
            .publish(topics::ORDER_CANCELLED, placed.order_id, &cancelled)
            .await;
    }
    restarted
        .publish(topics::ORDER_PLACED, placed.order_id, &placed)
        .await;
    restarted.settle().await;

    let refunds: Vec<PaymentRefunded> = restarted.observer.payloads(topics::PAYMENT_REFUNDED);
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0].payment_id, payment_id);
    assert_eq!(refunds[0].amount, dec!(12.34));
    assert_eq!(refunds[0].currency, "EUR");
    assert!(restarted.observer.on(topics::PAYMENT_APPROVED).is_empty());
    assert_eq!(
        first.payments.net_charges_for(placed.order_id)
            + restarted.payments.net_charges_for(placed.order_id),
        0,
        "charged by one instance, refunded by the other"
    );
}

#[tokio::test]
async fn a_cancellation_without_the_amount_or_of_another_payment_refunds_nothing_it_does_not_know()
{
    // A cancellation from before `paidAmount` existed, and one naming a payment that is
    // not the order's own: a Payments with an empty ledger cannot refund either.
    let world = World::start(PaymentsConfig::default()).await;
    let order_id = Uuid::now_v7();
    let own = payments_sim::payment_id_for(order_id);
    let old_style = order_cancelled(order_id, "Paid", Some(&own));
    world
        .publish(topics::ORDER_CANCELLED, order_id, &old_style)
        .await;
    let other_order = Uuid::now_v7();
    let mut foreign = order_cancelled(other_order, "Paid", Some("pay-from-elsewhere"));
    foreign.paid_amount = Some(dec!(5));
    foreign.currency = Some("EUR".into());
    world
        .publish(topics::ORDER_CANCELLED, other_order, &foreign)
        .await;
    world.settle().await;
    assert!(world.observer.on(topics::PAYMENT_REFUNDED).is_empty());
}

#[tokio::test]
async fn an_order_forgotten_after_the_window_is_answered_again_with_the_same_payment_id() {
    let clock = Arc::new(TestClock::default());
    let world = World::start_with_clock(
        PaymentsConfig::default().idempotency_window(Duration::from_secs(600)),
        clock.clone(),
    )
    .await;
    let placed = order_placed(dec!(10));
    world
        .publish(topics::ORDER_PLACED, placed.order_id, &placed)
        .await;
    world.settle().await;
    let payment_id = world.payments.payment_for(placed.order_id).unwrap();

    clock.advance(Duration::from_secs(599));
    assert_eq!(world.payments.prune(), 0, "still within the window");
    clock.advance(Duration::from_secs(2));
    assert_eq!(world.payments.prune(), 1);
    assert_eq!(world.payments.remembered_orders(), 0);
    assert_eq!(world.payments.payment_for(placed.order_id), None);

    world
        .publish(topics::ORDER_PLACED, placed.order_id, &placed)
        .await;
    world.settle().await;
    let approved: Vec<PaymentApproved> = world.observer.payloads(topics::PAYMENT_APPROVED);
    assert_eq!(approved.len(), 2);
    assert!(
        approved.iter().all(|a| a.payment_id == payment_id),
        "{approved:?}"
    );
    assert_eq!(world.payments.forgotten_count(), 1);
}

#[tokio::test]
async fn the_ledger_stays_flat_under_sustained_load() {
    // 60 minutes of 20 orders a minute, each order also cancelled, with a 10-minute
    // window: what is remembered levels off near 10 minutes' worth, without a sweep
    // from outside, instead of growing with every order.
    const PER_MINUTE: usize = 20;
    let clock = Arc::new(TestClock::default());
    let world = World::start_with_clock(
        PaymentsConfig::default().idempotency_window(Duration::from_secs(600)),
        clock.clone(),
    )
    .await;
    let mut most = 0;
    for minute in 0..60 {
        for _ in 0..PER_MINUTE {
            let placed = order_placed(dec!(10));
            world
                .publish(topics::ORDER_PLACED, placed.order_id, &placed)
                .await;
            let cancelled = order_cancelled(placed.order_id, "Paid", None);
            world
                .publish(topics::ORDER_CANCELLED, placed.order_id, &cancelled)
                .await;
        }
        world.settle().await;
        if minute >= 15 {
            most = most.max(world.payments.remembered_orders());
        }
        clock.advance(Duration::from_secs(60));
    }

    // The window, the minute in progress, and the few minutes a shard may wait for its
    // turn in the sweep.
    let bound = (10 + 1 + 4) * PER_MINUTE;
    assert!(
        most <= bound,
        "remembered up to {most} orders, bound {bound}"
    );
    assert!(world.payments.forgotten_count() >= 60 * PER_MINUTE - bound);
    assert_eq!(world.payments.approved_count(), 60 * PER_MINUTE);
    assert_eq!(world.payments.refunded_count(), 60 * PER_MINUTE);
}

#[tokio::test]
async fn a_payload_that_does_not_decode_is_dead_lettered_without_an_answer() {
    let world = World::start(PaymentsConfig::default()).await;
    let order_id = Uuid::new_v4();

    world
        .publish(topics::ORDER_PLACED, order_id, &"not an order")
        .await;
    world.settle().await;

    assert!(world.observer.envelopes().is_empty());
    let dead = world.bus.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].subscriber, payments_sim::CONSUMER_GROUP);
    assert_eq!(dead[0].attempts, 1, "not retried");
}

#[tokio::test]
async fn a_stopped_payments_leaves_new_orders_queued_for_its_return() {
    let World {
        bus,
        observer,
        payments,
        _observing,
    } = World::start(PaymentsConfig::default()).await;
    payments.stop().await;
    let placed = order_placed(dec!(10));

    bus.publish(envelope(topics::ORDER_PLACED, placed.order_id, &placed))
        .await
        .unwrap();
    assert!(bus.wait_idle(DEADLINE).await);
    assert!(observer.envelopes().is_empty());
    assert_eq!(bus.backlog(payments_sim::CONSUMER_GROUP), 1);

    let _back = PaymentsService::start(Arc::new(bus.clone()), PaymentsConfig::default())
        .await
        .unwrap();
    observer.wait_for(1).await;
    assert_eq!(observer.on(topics::PAYMENT_APPROVED).len(), 1);
}

#[tokio::test]
async fn a_second_payments_on_the_same_bus_is_refused() {
    let world = World::start(PaymentsConfig::default()).await;

    let second =
        PaymentsService::start(Arc::new(world.bus.clone()), PaymentsConfig::default()).await;

    assert!(matches!(second, Err(BusError::AlreadySubscribed(_))));
}

// ---------------------------------------------------------------------------------------
// Helpers

/// A bus with an observer on every Payments topic and a running Payments.
struct World {
    bus: InMemoryBus,
    observer: Arc<Observer>,
    payments: PaymentsHandle,
    /// Keeps the observer attached for the whole test.
    _observing: SubscriptionHandle,
}

impl World {
    async fn start(config: PaymentsConfig) -> Self {
        Self::start_with_clock(config, Arc::new(payments_sim::SystemClock)).await
    }

    async fn start_with_clock(config: PaymentsConfig, clock: Arc<dyn payments_sim::Clock>) -> Self {
        let bus = InMemoryBus::default();
        let (observer, observing) = Observer::attach(&bus).await;
        let payments = PaymentsService::start_with_clock(Arc::new(bus.clone()), config, clock)
            .await
            .unwrap();
        Self {
            bus,
            observer,
            payments,
            _observing: observing,
        }
    }

    /// Publishes `payload` in a new envelope correlated with `order_id`; returns it.
    async fn publish<T: serde::Serialize>(
        &self,
        topic: &'static str,
        order_id: Uuid,
        payload: &T,
    ) -> Envelope {
        let envelope = envelope(topic, order_id, payload);
        self.publish_envelope(envelope.clone()).await;
        envelope
    }

    async fn publish_envelope(&self, envelope: Envelope) {
        self.bus.publish(envelope).await.unwrap();
    }

    /// Waits until every message, answers included, is handled.
    async fn settle(&self) {
        assert!(
            self.bus.wait_idle(DEADLINE).await,
            "the bus did not settle within {DEADLINE:?}"
        );
    }
}

/// A clock that moves only when told to.
struct TestClock(Mutex<chrono::DateTime<Utc>>);

impl Default for TestClock {
    fn default() -> Self {
        Self(Mutex::new(
            Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap(),
        ))
    }
}

impl TestClock {
    fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += chrono::TimeDelta::from_std(by).unwrap();
    }
}

impl payments_sim::Clock for TestClock {
    fn now(&self) -> chrono::DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

/// Records every Payments answer.
#[derive(Default)]
struct Observer {
    seen: Mutex<Vec<Envelope>>,
    changed: Notify,
}

impl Observer {
    async fn attach(bus: &InMemoryBus) -> (Arc<Self>, SubscriptionHandle) {
        let observer = Arc::new(Self::default());
        let subscription = Subscription::new("observer")
            .topic(topics::PAYMENT_APPROVED)
            .topic(topics::PAYMENT_DECLINED)
            .topic(topics::PAYMENT_REFUNDED);
        let handle = bus.subscribe(subscription, observer.clone()).await.unwrap();
        (observer, handle)
    }

    fn envelopes(&self) -> Vec<Envelope> {
        self.seen.lock().unwrap().clone()
    }

    fn on(&self, topic: &str) -> Vec<Envelope> {
        self.envelopes()
            .into_iter()
            .filter(|e| e.topic == topic)
            .collect()
    }

    fn payloads<T: DeserializeOwned>(&self, topic: &str) -> Vec<T> {
        self.on(topic).iter().map(|e| e.decode().unwrap()).collect()
    }

    /// Waits until at least `count` answers arrived, or fails after [`DEADLINE`].
    async fn wait_for(&self, count: usize) -> Vec<Envelope> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let changed = self.changed.notified();
            let seen = self.envelopes();
            if seen.len() >= count {
                return seen;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!("expected {count} answers within {DEADLINE:?}, saw {seen:?}");
            }
        }
    }
}

#[async_trait]
impl MessageHandler for Observer {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        self.seen.lock().unwrap().push(envelope.clone());
        self.changed.notify_waiters();
        Ok(())
    }
}

/// A bus whose first publish on one topic fails with a transport error.
struct FailingOnce {
    bus: InMemoryBus,
    topic: &'static str,
    failures: AtomicUsize,
}

impl FailingOnce {
    fn new(bus: InMemoryBus, topic: &'static str) -> Self {
        Self {
            bus,
            topic,
            failures: AtomicUsize::new(0),
        }
    }

    fn failures(&self) -> usize {
        self.failures.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl MessageBus for FailingOnce {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        if envelope.topic == self.topic
            && self
                .failures
                .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            return Err(BusError::Transport("connection reset (simulated)".into()));
        }
        self.bus.publish(envelope).await
    }

    async fn subscribe(
        &self,
        subscription: Subscription,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<SubscriptionHandle, BusError> {
        self.bus.subscribe(subscription, handler).await
    }
}

fn envelope<T: serde::Serialize>(topic: &'static str, order_id: Uuid, payload: &T) -> Envelope {
    Envelope::new(
        Uuid::new_v4(),
        topic,
        Utc::now(),
        order_id.to_string(),
        None,
        payload,
    )
    .unwrap()
}

fn order_placed(total: Decimal) -> OrderPlaced {
    OrderPlaced {
        order_id: Uuid::new_v4(),
        customer_id: "customer-1".into(),
        items: vec![PricedItem {
            product_id: "sku-1".into(),
            quantity: 1,
            price: total,
        }],
        total_amount: total,
        currency: "EUR".into(),
        shipping_address: ShippingAddress {
            street: "1 Main Street".into(),
            city: "Lisbon".into(),
            postal_code: "1000-001".into(),
            country: "PT".into(),
        },
        timestamp: Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap(),
    }
}

fn payment_refused(order_id: Uuid, payment_id: &str, amount: Decimal) -> OrderPaymentRefused {
    OrderPaymentRefused {
        order_id,
        payment_id: payment_id.into(),
        amount,
        currency: "EUR".into(),
        reason: "cannot confirm payment of an order that is Cancelled".into(),
        timestamp: Utc.with_ymd_and_hms(2026, 1, 5, 10, 6, 0).unwrap(),
    }
}

fn order_cancelled(
    order_id: Uuid,
    previous_status: &str,
    payment_id: Option<&str>,
) -> OrderCancelled {
    OrderCancelled {
        order_id,
        reason: "customer changed their mind".into(),
        previous_status: previous_status.into(),
        payment_id: payment_id.map(str::to_owned),
        paid_amount: None,
        currency: None,
        reservation_id: None,
        timestamp: Utc.with_ymd_and_hms(2026, 1, 5, 10, 5, 0).unwrap(),
    }
}
