//! The simulated Stock seen from the bus: what it answers to `order.paid`,
//! `order.cancelled` and `order.reservation_refused` under each configuration, and that it
//! reserves and releases each order at most once however often it is asked, a restart
//! with an empty ledger included.
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
    ItemQuantity, OrderCancelled, OrderPaid, OrderReservationRefused, StockReleased,
    StockReservationFailed, StockReserved, topics,
};
use messaging::{
    BusError, Envelope, HandlerError, InMemoryBus, MessageBus, MessageHandler, Subscription,
    SubscriptionHandle,
};
use rust_decimal_macros::dec;
use serde::de::DeserializeOwned;
use stock_sim::{StockConfig, StockHandle, StockService};
use tokio::{sync::Notify, time::Instant};
use uuid::Uuid;

/// How long a test waits for the flow to settle before it fails.
const DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Scenarios

#[tokio::test]
async fn a_paid_order_is_reserved_with_a_new_reservation_id_and_its_items() {
    let world = World::start(StockConfig::default()).await;
    let paid = order_paid(&[("sku-1", 2), ("sku-2", 1)]);

    let sent = world
        .publish(topics::ORDER_PAID, paid.order_id, &paid)
        .await;
    world.settle().await;

    let answers = world.observer.envelopes();
    assert_eq!(answers.len(), 1, "one answer: {answers:?}");
    let answer = &answers[0];
    assert_eq!(answer.topic, topics::STOCK_RESERVED);
    assert_eq!(answer.correlation_id, paid.order_id.to_string());
    assert_eq!(answer.causation_id, Some(sent.message_id));
    let reserved: StockReserved = answer.decode().unwrap();
    assert_eq!(reserved.order_id, paid.order_id);
    assert_eq!(reserved.items, paid.items);
    assert!(Uuid::parse_str(&reserved.reservation_id).is_ok());
    assert_eq!(
        world.stock.reservation_for(paid.order_id),
        Some(reserved.reservation_id)
    );
    assert_eq!(world.stock.reserved_count(), 1);
    assert_eq!(world.stock.failed_count(), 0);
}

#[tokio::test]
async fn an_order_with_a_product_out_of_stock_fails_naming_the_product() {
    let world = World::start(StockConfig::default().out_of_stock(["sku-404"])).await;
    let paid = order_paid(&[("sku-1", 1), ("sku-404", 3)]);

    world
        .publish(topics::ORDER_PAID, paid.order_id, &paid)
        .await;
    world.settle().await;

    let failed: Vec<StockReservationFailed> =
        world.observer.payloads(topics::STOCK_RESERVATION_FAILED);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].order_id, paid.order_id);
    assert_eq!(failed[0].reason, "out of stock: sku-404");
    assert!(world.observer.on(topics::STOCK_RESERVED).is_empty());
    assert_eq!(world.stock.reservation_for(paid.order_id), None);
    assert_eq!(world.stock.failed_count(), 1);
}

#[tokio::test]
async fn orders_without_a_missing_product_are_still_reserved() {
    let world = World::start(StockConfig::default().out_of_stock(["sku-404"])).await;
    let paid = order_paid(&[("sku-1", 1)]);

    world
        .publish(topics::ORDER_PAID, paid.order_id, &paid)
        .await;
    world.settle().await;

    assert_eq!(world.observer.on(topics::STOCK_RESERVED).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_comes_only_after_the_processing_delay() {
    let delay = Duration::from_millis(30);
    let world = World::start(StockConfig::default().delay(delay)).await;
    let paid = order_paid(&[("sku-1", 1)]);
    let started = Instant::now();

    world
        .publish(topics::ORDER_PAID, paid.order_id, &paid)
        .await;

    // The delay runs on the real clock (see `simulate_processing`), so this waits it out.
    world.observer.wait_for(1).await;
    let took = started.elapsed();
    assert!(
        took >= delay,
        "answered after {took:?}, before the delay of {delay:?}"
    );
}

#[tokio::test]
async fn duplicate_replies_publish_two_envelopes_with_one_payload() {
    let world = World::start(StockConfig::default().duplicate_replies(true)).await;
    let paid = order_paid(&[("sku-1", 1)]);

    world
        .publish(topics::ORDER_PAID, paid.order_id, &paid)
        .await;
    world.settle().await;

    let answers = world.observer.on(topics::STOCK_RESERVED);
    assert_eq!(answers.len(), 2);
    assert_ne!(answers[0].message_id, answers[1].message_id);
    assert_eq!(answers[0].payload.get(), answers[1].payload.get());
    assert_eq!(world.stock.reserved_count(), 1, "reserved once");
}

#[tokio::test]
async fn a_redelivered_order_paid_gets_the_same_reservation_id_and_is_reserved_once() {
    let world = World::start(StockConfig::default()).await;
    let paid = order_paid(&[("sku-1", 1)]);
    let envelope = envelope(topics::ORDER_PAID, paid.order_id, &paid);

    world.publish_envelope(envelope.clone()).await;
    world.publish_envelope(envelope).await;
    world.settle().await;

    let reserved: Vec<StockReserved> = world.observer.payloads(topics::STOCK_RESERVED);
    assert_eq!(reserved.len(), 2);
    assert_eq!(
        reserved[0], reserved[1],
        "the same reservation, reservationId included"
    );
    assert_eq!(world.stock.reserved_count(), 1);
}

#[tokio::test]
async fn a_restarted_stock_and_a_second_instance_answer_with_the_same_reservation_id() {
    let world = World::start(StockConfig::default()).await;
    let paid = order_paid(&[("sku-1", 1)]);
    let request = envelope(topics::ORDER_PAID, paid.order_id, &paid);
    world.publish_envelope(request.clone()).await;
    world.settle().await;

    // Restart: the same group on the same bus, with an empty ledger.
    let World {
        bus,
        observer,
        stock,
        _observing,
    } = world;
    stock.stop().await;
    let restarted = StockService::start(Arc::new(bus.clone()), StockConfig::default())
        .await
        .unwrap();
    assert_eq!(
        restarted.reservation_for(paid.order_id),
        None,
        "empty ledger"
    );
    bus.publish(request.clone()).await.unwrap();
    assert!(bus.wait_idle(DEADLINE).await);
    // A second instance, on a bus of its own: it never heard of the order.
    let second = World::start(StockConfig::default()).await;
    second.publish_envelope(request).await;
    second.settle().await;

    let mut answers: Vec<StockReserved> = observer.payloads(topics::STOCK_RESERVED);
    answers.extend(
        second
            .observer
            .payloads::<StockReserved>(topics::STOCK_RESERVED),
    );
    assert_eq!(answers.len(), 3, "{answers:?}");
    let expected = stock_sim::reservation_id_for(paid.order_id);
    assert!(
        answers.iter().all(|a| a.reservation_id == expected),
        "one reservationId for the order: {answers:?}"
    );
    assert_eq!(restarted.reservation_for(paid.order_id), Some(expected));
    assert_ne!(
        stock_sim::reservation_id_for(Uuid::new_v4()),
        stock_sim::reservation_id_for(paid.order_id),
        "another order, another reservationId"
    );
}

#[tokio::test]
async fn a_reservation_is_released_exactly_once_even_when_the_cancellation_comes_twice() {
    let world = World::start(StockConfig::default()).await;
    let paid = order_paid(&[("sku-1", 1)]);
    world
        .publish(topics::ORDER_PAID, paid.order_id, &paid)
        .await;
    world.settle().await;
    let reservation_id = world.stock.reservation_for(paid.order_id).unwrap();
    let cancelled = order_cancelled(paid.order_id, "StockReserved", Some(&reservation_id));
    let envelope = envelope(topics::ORDER_CANCELLED, paid.order_id, &cancelled);

    world.publish_envelope(envelope.clone()).await;
    world.publish_envelope(envelope).await;
    world
        .publish(topics::ORDER_CANCELLED, paid.order_id, &cancelled)
        .await;
    world.settle().await;

    let released: Vec<StockReleased> = world.observer.payloads(topics::STOCK_RELEASED);
    assert_eq!(released.len(), 1, "one release: {released:?}");
    assert_eq!(released[0].reservation_id, reservation_id);
    assert_eq!(world.stock.releases_for(paid.order_id), 1);
    assert_eq!(world.stock.released_count(), 1);
}

#[tokio::test]
async fn an_order_cancelled_while_paid_is_released_when_stock_had_reserved_it() {
    let world = World::start(StockConfig::default()).await;
    let paid = order_paid(&[("sku-1", 1)]);
    world
        .publish(topics::ORDER_PAID, paid.order_id, &paid)
        .await;
    // Orders cancelled before the reservation reached it: the message names none.
    let cancelled = order_cancelled(paid.order_id, "Paid", None);
    world
        .publish(topics::ORDER_CANCELLED, paid.order_id, &cancelled)
        .await;
    world.settle().await;

    let released: Vec<StockReleased> = world.observer.payloads(topics::STOCK_RELEASED);
    assert_eq!(released.len(), 1);
    assert_eq!(
        Some(&released[0].reservation_id),
        world.stock.reservation_for(paid.order_id).as_ref()
    );
}

#[tokio::test]
async fn an_order_that_failed_to_reserve_is_not_released_when_cancelled() {
    let world = World::start(StockConfig::default().out_of_stock(["sku-404"])).await;
    let paid = order_paid(&[("sku-404", 1)]);
    world
        .publish(topics::ORDER_PAID, paid.order_id, &paid)
        .await;
    let cancelled = order_cancelled(paid.order_id, "Paid", None);
    world
        .publish(topics::ORDER_CANCELLED, paid.order_id, &cancelled)
        .await;
    world.settle().await;

    assert!(world.observer.on(topics::STOCK_RELEASED).is_empty());
    assert_eq!(world.stock.releases_for(paid.order_id), 0);
}

#[tokio::test]
async fn a_cancellation_without_a_reservation_releases_nothing() {
    let world = World::start(StockConfig::default()).await;
    let order_id = Uuid::new_v4();
    let cancelled = order_cancelled(order_id, "AwaitingPayment", None);

    world
        .publish(topics::ORDER_CANCELLED, order_id, &cancelled)
        .await;
    world.settle().await;

    assert!(world.observer.envelopes().is_empty());
    assert_eq!(world.stock.released_count(), 0);
}

#[tokio::test]
async fn a_released_order_paid_again_is_not_reserved_again() {
    let world = World::start(StockConfig::default()).await;
    let paid = order_paid(&[("sku-1", 1)]);
    let paid_envelope = envelope(topics::ORDER_PAID, paid.order_id, &paid);
    world.publish_envelope(paid_envelope.clone()).await;
    let cancelled = order_cancelled(paid.order_id, "StockReserved", None);
    world
        .publish(topics::ORDER_CANCELLED, paid.order_id, &cancelled)
        .await;

    world.publish_envelope(paid_envelope).await;
    world.settle().await;

    assert_eq!(world.observer.on(topics::STOCK_RESERVED).len(), 1);
    assert_eq!(world.observer.on(topics::STOCK_RELEASED).len(), 1);
}

#[tokio::test]
async fn a_release_whose_announcement_failed_is_announced_on_redelivery_and_done_once() {
    let bus = InMemoryBus::default();
    let (observer, _observing) = Observer::attach(&bus).await;
    let flaky = Arc::new(FailingOnce::new(bus.clone(), topics::STOCK_RELEASED));
    let stock = StockService::start(flaky.clone(), StockConfig::default())
        .await
        .unwrap();
    let paid = order_paid(&[("sku-1", 1)]);
    bus.publish(envelope(topics::ORDER_PAID, paid.order_id, &paid))
        .await
        .unwrap();
    let cancelled = order_cancelled(paid.order_id, "StockReserved", None);

    bus.publish(envelope(topics::ORDER_CANCELLED, paid.order_id, &cancelled))
        .await
        .unwrap();
    assert!(bus.wait_idle(DEADLINE).await);

    assert_eq!(flaky.failures(), 1, "the first announcement failed");
    assert_eq!(observer.on(topics::STOCK_RELEASED).len(), 1);
    assert_eq!(stock.released_count(), 1);
    assert!(bus.dead_letters().is_empty());
}

// ---------------------------------------------------------------------------------------
// Reservations Orders refused (order.reservation_refused)

#[tokio::test]
async fn a_refused_reservation_is_released_once_and_a_second_refusal_releases_nothing_more() {
    let world = World::start(StockConfig::default()).await;
    let paid = order_paid(&[("sku-1", 1)]);
    world
        .publish(topics::ORDER_PAID, paid.order_id, &paid)
        .await;
    world.settle().await;
    let reservation_id = world.stock.reservation_for(paid.order_id).unwrap();
    let refused = reservation_refused(paid.order_id, &reservation_id);

    world
        .publish(topics::ORDER_RESERVATION_REFUSED, paid.order_id, &refused)
        .await;
    world.settle().await;
    let released: Vec<StockReleased> = world.observer.payloads(topics::STOCK_RELEASED);
    assert_eq!(released.len(), 1, "{released:?}");
    assert_eq!(released[0].reservation_id, reservation_id);
    assert_eq!(released[0].order_id, paid.order_id);
    assert_eq!(world.stock.net_reservations_for(paid.order_id), 0);

    // The same refusal again (a redelivery), and a second refusal of the same reservation
    // under a new message id: released already.
    let again = world
        .publish(topics::ORDER_RESERVATION_REFUSED, paid.order_id, &refused)
        .await;
    world.publish_envelope(again).await;
    world.settle().await;

    assert_eq!(world.observer.on(topics::STOCK_RELEASED).len(), 1);
    assert_eq!(world.stock.released_count(), 1);
    assert_eq!(world.stock.releases_for(paid.order_id), 1);
    assert_eq!(world.stock.net_reservations_for(paid.order_id), 0);
}

#[tokio::test]
async fn a_reservation_released_on_cancellation_is_not_released_again_when_refused() {
    // Cancelled while Paid: order.cancelled names no reservation, Stock releases its own;
    // then Orders refuses the stock.reserved that reached it after the cancel.
    let world = World::start(StockConfig::default()).await;
    let paid = order_paid(&[("sku-1", 1)]);
    world
        .publish(topics::ORDER_PAID, paid.order_id, &paid)
        .await;
    world
        .publish(
            topics::ORDER_CANCELLED,
            paid.order_id,
            &order_cancelled(paid.order_id, "Paid", None),
        )
        .await;
    world.settle().await;
    let reservation_id = world.stock.reservation_for(paid.order_id).unwrap();

    world
        .publish(
            topics::ORDER_RESERVATION_REFUSED,
            paid.order_id,
            &reservation_refused(paid.order_id, &reservation_id),
        )
        .await;
    world.settle().await;

    assert_eq!(world.observer.on(topics::STOCK_RELEASED).len(), 1);
    assert_eq!(world.stock.released_count(), 1);
}

#[tokio::test]
async fn a_refusal_first_then_the_cancellation_releases_once() {
    // order.reservation_refused and order.cancelled travel on different streams: either
    // may come first.
    let world = World::start(StockConfig::default()).await;
    let paid = order_paid(&[("sku-1", 1)]);
    world
        .publish(topics::ORDER_PAID, paid.order_id, &paid)
        .await;
    world.settle().await;
    let reservation_id = world.stock.reservation_for(paid.order_id).unwrap();

    world
        .publish(
            topics::ORDER_RESERVATION_REFUSED,
            paid.order_id,
            &reservation_refused(paid.order_id, &reservation_id),
        )
        .await;
    world
        .publish(
            topics::ORDER_CANCELLED,
            paid.order_id,
            &order_cancelled(paid.order_id, "Paid", None),
        )
        .await;
    world.settle().await;

    assert_eq!(world.observer.on(topics::STOCK_RELEASED).len(), 1);
    assert_eq!(world.stock.released_count(), 1);
}

#[tokio::test]
async fn a_restarted_stock_with_an_empty_ledger_releases_the_refused_reservation_once() {
    let world = World::start(StockConfig::default()).await;
    let paid = order_paid(&[("sku-1", 1)]);
    let paid_envelope = world
        .publish(topics::ORDER_PAID, paid.order_id, &paid)
        .await;
    world.settle().await;
    let reservation_id = world.stock.reservation_for(paid.order_id).unwrap();

    // Restart: the same group on the same bus, with an empty ledger.
    let World {
        bus,
        observer,
        stock,
        _observing,
    } = world;
    stock.stop().await;
    let restarted = StockService::start(Arc::new(bus.clone()), StockConfig::default())
        .await
        .unwrap();
    let refused = reservation_refused(paid.order_id, &reservation_id);
    bus.publish(envelope(
        topics::ORDER_RESERVATION_REFUSED,
        paid.order_id,
        &refused,
    ))
    .await
    .unwrap();
    assert!(bus.wait_idle(DEADLINE).await);

    let released: Vec<StockReleased> = observer.payloads(topics::STOCK_RELEASED);
    assert_eq!(released.len(), 1, "{released:?}");
    assert_eq!(released[0].reservation_id, reservation_id);
    assert_eq!(
        restarted.net_reservations_for(paid.order_id),
        -1,
        "released what the first process reserved"
    );
    assert_eq!(
        restarted.reservation_for(paid.order_id),
        None,
        "not made here"
    );

    // Asked again, and order.paid redelivered: nothing more is released or reserved.
    bus.publish(envelope(
        topics::ORDER_RESERVATION_REFUSED,
        paid.order_id,
        &refused,
    ))
    .await
    .unwrap();
    bus.publish(paid_envelope).await.unwrap();
    assert!(bus.wait_idle(DEADLINE).await);
    assert_eq!(observer.on(topics::STOCK_RELEASED).len(), 1);
    assert_eq!(observer.on(topics::STOCK_RESERVED).len(), 1);
    assert_eq!(restarted.released_count(), 1);
}

#[tokio::test]
async fn a_restarted_stock_that_saw_the_cancellation_first_still_releases_the_refused_reservation()
{
    // The crash case: the first Stock reserved and announced it, then died before its ack;
    // the restarted one sees order.cancelled (naming no reservation) for an order it does
    // not know, then the redelivered order.paid, then Orders' refusal of the reservation.
    let world = World::start(StockConfig::default()).await;
    let paid = order_paid(&[("sku-1", 1)]);
    let paid_envelope = world
        .publish(topics::ORDER_PAID, paid.order_id, &paid)
        .await;
    world.settle().await;
    let reservation_id = world.stock.reservation_for(paid.order_id).unwrap();
    let World {
        bus,
        observer,
        stock,
        _observing,
    } = world;
    stock.stop().await;
    let restarted = StockService::start(Arc::new(bus.clone()), StockConfig::default())
        .await
        .unwrap();

    let cancelled = order_cancelled(paid.order_id, "Paid", None);
    bus.publish(envelope(topics::ORDER_CANCELLED, paid.order_id, &cancelled))
        .await
        .unwrap();
    bus.publish(paid_envelope).await.unwrap();
    assert!(bus.wait_idle(DEADLINE).await);
    assert!(
        observer.on(topics::STOCK_RELEASED).is_empty(),
        "its ledger knew of no reservation"
    );
    bus.publish(envelope(
        topics::ORDER_RESERVATION_REFUSED,
        paid.order_id,
        &reservation_refused(paid.order_id, &reservation_id),
    ))
    .await
    .unwrap();
    assert!(bus.wait_idle(DEADLINE).await);

    let released: Vec<StockReleased> = observer.payloads(topics::STOCK_RELEASED);
    assert_eq!(released.len(), 1, "{released:?}");
    assert_eq!(released[0].reservation_id, reservation_id);
    assert_eq!(restarted.net_reservations_for(paid.order_id), -1);
}

#[tokio::test]
async fn a_restarted_stock_releases_the_reservation_a_cancellation_names() {
    // Cancelled while StockReserved: order.cancelled names the reservation the first
    // Stock made; the restarted one does not know it, but the id is the order's.
    let world = World::start(StockConfig::default()).await;
    let paid = order_paid(&[("sku-1", 1)]);
    world
        .publish(topics::ORDER_PAID, paid.order_id, &paid)
        .await;
    world.settle().await;
    let reservation_id = world.stock.reservation_for(paid.order_id).unwrap();
    let World {
        bus,
        observer,
        stock,
        _observing,
    } = world;
    stock.stop().await;
    let restarted = StockService::start(Arc::new(bus.clone()), StockConfig::default())
        .await
        .unwrap();

    let cancelled = order_cancelled(paid.order_id, "StockReserved", Some(&reservation_id));
    let cancelled = envelope(topics::ORDER_CANCELLED, paid.order_id, &cancelled);
    bus.publish(cancelled.clone()).await.unwrap();
    bus.publish(cancelled).await.unwrap();
    assert!(bus.wait_idle(DEADLINE).await);

    let released: Vec<StockReleased> = observer.payloads(topics::STOCK_RELEASED);
    assert_eq!(released.len(), 1, "{released:?}");
    assert_eq!(released[0].reservation_id, reservation_id);
    assert_eq!(restarted.net_reservations_for(paid.order_id), -1);
}

#[tokio::test]
async fn a_refusal_of_a_reservation_stock_never_made_releases_nothing() {
    let world = World::start(StockConfig::default()).await;
    let paid = order_paid(&[("sku-1", 1)]);
    world
        .publish(topics::ORDER_PAID, paid.order_id, &paid)
        .await;
    world.settle().await;

    // Another reservation of a reserved order, and one of an order Stock never saw.
    world
        .publish(
            topics::ORDER_RESERVATION_REFUSED,
            paid.order_id,
            &reservation_refused(paid.order_id, "a-reservation-from-elsewhere"),
        )
        .await;
    let stranger = Uuid::new_v4();
    world
        .publish(
            topics::ORDER_RESERVATION_REFUSED,
            stranger,
            &reservation_refused(stranger, "forged-reservation"),
        )
        .await;
    world.settle().await;

    assert!(world.observer.on(topics::STOCK_RELEASED).is_empty());
    assert_eq!(
        world.stock.net_reservations_for(paid.order_id),
        1,
        "its own stays"
    );
    assert_eq!(world.stock.released_count(), 0);
}

#[tokio::test]
async fn an_order_forgotten_after_the_window_is_answered_again_with_the_same_reservation_id() {
    let clock = Arc::new(TestClock::default());
    let world = World::start_with_clock(
        StockConfig::default().idempotency_window(Duration::from_secs(600)),
        clock.clone(),
    )
    .await;
    let paid = order_paid(&[("sku-1", 1)]);
    world
        .publish(topics::ORDER_PAID, paid.order_id, &paid)
        .await;
    world.settle().await;
    let reservation_id = world.stock.reservation_for(paid.order_id).unwrap();

    clock.advance(Duration::from_secs(599));
    assert_eq!(world.stock.prune(), 0, "still within the window");
    clock.advance(Duration::from_secs(2));
    assert_eq!(world.stock.prune(), 1);
    assert_eq!(world.stock.remembered_orders(), 0);
    assert_eq!(world.stock.reservation_for(paid.order_id), None);

    world
        .publish(topics::ORDER_PAID, paid.order_id, &paid)
        .await;
    world.settle().await;
    let reserved: Vec<StockReserved> = world.observer.payloads(topics::STOCK_RESERVED);
    assert_eq!(reserved.len(), 2);
    assert!(
        reserved.iter().all(|r| r.reservation_id == reservation_id),
        "{reserved:?}"
    );
    assert_eq!(world.stock.forgotten_count(), 1);
}

#[tokio::test]
async fn the_ledger_stays_flat_under_sustained_load() {
    // 60 minutes of 20 orders a minute, each order also cancelled, with a 10-minute
    // window: what is remembered levels off near 10 minutes' worth, without a sweep
    // from outside, instead of growing with every order.
    const PER_MINUTE: usize = 20;
    let clock = Arc::new(TestClock::default());
    let world = World::start_with_clock(
        StockConfig::default().idempotency_window(Duration::from_secs(600)),
        clock.clone(),
    )
    .await;
    let mut most = 0;
    for minute in 0..60 {
        for _ in 0..PER_MINUTE {
            let paid = order_paid(&[("sku-1", 1)]);
            world
                .publish(topics::ORDER_PAID, paid.order_id, &paid)
                .await;
            let cancelled = order_cancelled(paid.order_id, "StockReserved", None);
            world
                .publish(topics::ORDER_CANCELLED, paid.order_id, &cancelled)
                .await;
        }
        world.settle().await;
        if minute >= 15 {
            most = most.max(world.stock.remembered_orders());
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
    assert!(world.stock.forgotten_count() >= 60 * PER_MINUTE - bound);
    assert_eq!(world.stock.reserved_count(), 60 * PER_MINUTE);
    assert_eq!(world.stock.released_count(), 60 * PER_MINUTE);
}

#[tokio::test]
async fn a_payload_that_does_not_decode_is_dead_lettered_without_an_answer() {
    let world = World::start(StockConfig::default()).await;
    let order_id = Uuid::new_v4();

    world
        .publish(topics::ORDER_PAID, order_id, &"not an order")
        .await;
    world.settle().await;

    assert!(world.observer.envelopes().is_empty());
    let dead = world.bus.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].subscriber, stock_sim::CONSUMER_GROUP);
    assert_eq!(dead[0].attempts, 1, "not retried");
}

#[tokio::test]
async fn a_stopped_stock_leaves_new_orders_queued_for_its_return() {
    let World {
        bus,
        observer,
        stock,
        _observing,
    } = World::start(StockConfig::default()).await;
    stock.stop().await;
    let paid = order_paid(&[("sku-1", 1)]);

    bus.publish(envelope(topics::ORDER_PAID, paid.order_id, &paid))
        .await
        .unwrap();
    assert!(bus.wait_idle(DEADLINE).await);
    assert!(observer.envelopes().is_empty());
    assert_eq!(bus.backlog(stock_sim::CONSUMER_GROUP), 1);

    let _back = StockService::start(Arc::new(bus.clone()), StockConfig::default())
        .await
        .unwrap();
    observer.wait_for(1).await;
    assert_eq!(observer.on(topics::STOCK_RESERVED).len(), 1);
}

// ---------------------------------------------------------------------------------------
// Helpers

/// A bus with an observer on every Stock topic and a running Stock.
struct World {
    bus: InMemoryBus,
    observer: Arc<Observer>,
    stock: StockHandle,
    /// Keeps the observer attached for the whole test.
    _observing: SubscriptionHandle,
}

impl World {
    async fn start(config: StockConfig) -> Self {
        Self::start_with_clock(config, Arc::new(stock_sim::SystemClock)).await
    }

    async fn start_with_clock(config: StockConfig, clock: Arc<dyn stock_sim::Clock>) -> Self {
        let bus = InMemoryBus::default();
        let (observer, observing) = Observer::attach(&bus).await;
        let stock = StockService::start_with_clock(Arc::new(bus.clone()), config, clock)
            .await
            .unwrap();
        Self {
            bus,
            observer,
            stock,
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

impl stock_sim::Clock for TestClock {
    fn now(&self) -> chrono::DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

/// Records every Stock answer.
#[derive(Default)]
struct Observer {
    seen: Mutex<Vec<Envelope>>,
    changed: Notify,
}

impl Observer {
    async fn attach(bus: &InMemoryBus) -> (Arc<Self>, SubscriptionHandle) {
        let observer = Arc::new(Self::default());
        let subscription = Subscription::new("observer")
            .topic(topics::STOCK_RESERVED)
            .topic(topics::STOCK_RESERVATION_FAILED)
            .topic(topics::STOCK_RELEASED);
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

fn order_paid(items: &[(&str, u32)]) -> OrderPaid {
    OrderPaid {
        order_id: Uuid::new_v4(),
        payment_id: Uuid::new_v4().to_string(),
        amount: dec!(25.00),
        currency: "EUR".into(),
        items: items
            .iter()
            .map(|(product, quantity)| ItemQuantity {
                product_id: (*product).to_owned(),
                quantity: *quantity,
            })
            .collect(),
        timestamp: Utc.with_ymd_and_hms(2026, 1, 5, 10, 1, 0).unwrap(),
    }
}

fn order_cancelled(
    order_id: Uuid,
    previous_status: &str,
    reservation_id: Option<&str>,
) -> OrderCancelled {
    OrderCancelled {
        order_id,
        reason: "customer changed their mind".into(),
        previous_status: previous_status.into(),
        payment_id: Some("payment-1".into()),
        paid_amount: None,
        currency: None,
        reservation_id: reservation_id.map(str::to_owned),
        timestamp: Utc.with_ymd_and_hms(2026, 1, 5, 10, 5, 0).unwrap(),
    }
}

fn reservation_refused(order_id: Uuid, reservation_id: &str) -> OrderReservationRefused {
    OrderReservationRefused {
        order_id,
        reservation_id: reservation_id.to_owned(),
        reason: "order is Cancelled".into(),
        timestamp: Utc.with_ymd_and_hms(2026, 1, 5, 10, 6, 0).unwrap(),
    }
}
