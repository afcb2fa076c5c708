//! The conformance suite every adapter of `OrderStore` + `Outbox` must pass (after
//! Watermill's universal pub/sub tests): each check takes a [`Fixture`] with a fresh
//! store and panics with a clear message on failure. [`suite!`] turns every check into
//! one test per adapter.

use std::sync::Arc;

use orders_app::{
    Commit, Direction, HandlingOutcome, MessageRecord, StoreError,
    messaging::{Envelope, MessageBus},
};
use orders_domain::{CancellationReason, OrderStatus, PaymentId, ReservationId};
use uuid::Uuid;

use crate::support::{
    DEADLINE, Fixture, RecordingBus, at, eur, handled, inbox_only, messages_of, new_order,
    new_order_with_id, place, place_due, save,
};

/// One `#[tokio::test]` per check for the backend `$backend`; `durable` adds the checks
/// that need SQL access.
macro_rules! suite {
    ($backend:expr) => {
        crate::conformance::suite!(@checks $backend;
            an_order_round_trips_exactly,
            recent_orders_are_the_newest_first_of_everyone_or_of_one_customer,
            absent_things_read_as_absent,
            a_stale_version_conflicts_and_writes_nothing,
            concurrent_commits_at_one_version_let_exactly_one_win,
            a_refused_commit_among_many_concurrent_ones_fails_alone,
            a_duplicate_inbox_message_writes_nothing,
            an_idempotency_key_binds_one_order,
            the_relay_publishes_in_commit_order_once,
            the_relay_stops_at_a_bus_failure_and_resumes_without_loss,
            concurrent_relays_publish_each_message_once,
            the_history_lists_received_and_sent_messages_in_commit_order,
            prune_removes_only_old_inbox_records_and_sent_rows,
            a_commit_with_messages_wakes_the_relay,
            stalled_orders_get_their_latest_request_sent_again,
            a_stalled_order_gets_its_request_sent_again_not_a_later_refusal,
            due_for_payment_lists_exactly_the_due_orders_awaiting_payment,
            the_oldest_unsent_row_is_the_next_to_publish_and_keeps_its_trace_context,
        );
    };
    ($backend:expr, durable) => {
        crate::conformance::suite!($backend);
        crate::conformance::suite!(@checks $backend;
            a_corrupt_outbox_row_is_parked_and_later_rows_flow,
        );
    };
    (@checks $backend:expr; $($check:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                crate::support::run($backend, crate::conformance::$check).await;
            }
        )*
    };
}
pub(crate) use suite;

// Checks kept in files of their own, listed in the suite like the ones here.
pub use crate::recent::recent_orders_are_the_newest_first_of_everyone_or_of_one_customer;

pub async fn an_order_round_trips_exactly(f: Fixture) {
    let store = f.store.as_ref();
    // Sub-millisecond times too: the snapshot keeps full precision.
    let placed_at = at(0) + chrono::Duration::nanoseconds(123_456_789);
    let order = place(store, placed_at).await;
    assert_eq!(store.load(order.id()).await.unwrap().as_ref(), Some(&order));

    let mut paid = order.clone();
    let _ = paid
        .confirm_payment(PaymentId::new("pay-1").unwrap(), eur("60.27"), at(1))
        .unwrap();
    let paid = save(store, paid, None).await;
    let mut reserved = paid.clone();
    let _ = reserved
        .confirm_stock_reservation(ReservationId::new("res-1").unwrap(), at(2))
        .unwrap();
    let reserved = save(store, reserved, None).await;

    let loaded = store.load(order.id()).await.unwrap().unwrap();
    assert_eq!(loaded, reserved, "every field, processed ids included");
    assert_eq!(loaded.version(), 3);
    assert_eq!(loaded.status(), OrderStatus::StockReserved);
    assert_eq!(
        loaded.total().amount().to_string(),
        "60.27",
        "0.1 + 0.2 + 3 × 19.99, exact"
    );
    assert_eq!(loaded.remembered_payment_ids(), 1);
    assert_eq!(loaded.remembered_reservation_ids(), 1);
    assert_eq!(loaded.placed_at(), placed_at);

    let mut cancelled = loaded.clone();
    let _ = cancelled
        .cancel(CancellationReason::new("changed my mind").unwrap(), at(3))
        .unwrap();
    let cancelled = save(store, cancelled, None).await;
    let loaded = store.load(order.id()).await.unwrap().unwrap();
    assert_eq!(loaded, cancelled);
    assert_eq!(
        loaded.cancellation_reason().map(|r| r.as_str()),
        Some("changed my mind")
    );
}

pub async fn absent_things_read_as_absent(f: Fixture) {
    let store = f.store.as_ref();
    let id = orders_domain::OrderId::random();
    assert_eq!(store.load(id).await.unwrap(), None);
    assert_eq!(store.messages(id).await.unwrap(), []);
    assert!(!store.is_handled("orders", Uuid::new_v4()).await.unwrap());
    assert_eq!(store.find_by_idempotency_key("nope").await.unwrap(), None);
    assert_eq!(f.outbox.unsent().await.unwrap(), 0);
    let bus = RecordingBus::new();
    assert_eq!(f.outbox.relay(10, bus.as_ref()).await.unwrap(), 0);
}

pub async fn a_stale_version_conflicts_and_writes_nothing(f: Fixture) {
    let store = f.store.as_ref();
    let order = place(store, at(0)).await;
    let mut first = order.clone();
    let _ = first
        .confirm_payment(PaymentId::new("pay-1").unwrap(), eur("60.27"), at(1))
        .unwrap();
    save(store, first, None).await;
    let unsent = f.outbox.unsent().await.unwrap();

    // A writer that loaded version 1 too: its change, inbox record and message are refused.
    let mut stale = order.clone();
    let _ = stale
        .cancel(CancellationReason::new("too late").unwrap(), at(2))
        .unwrap();
    let record = handled(
        order.id(),
        "payment.declined",
        HandlingOutcome::Applied,
        at(2),
    );
    let message_id = record.message_id;
    let outbox = messages_of(&mut stale, Some(message_id));
    let result = store
        .commit(Commit {
            order: Some(stale),
            outbox,
            inbox: Some(record),
            idempotency_key: None,
        })
        .await;
    assert_eq!(
        result,
        Err(StoreError::Conflict {
            order_id: order.id(),
            expected: 1
        })
    );
    let loaded = store.load(order.id()).await.unwrap().unwrap();
    assert_eq!((loaded.version(), loaded.status()), (2, OrderStatus::Paid));
    assert!(!store.is_handled("orders", message_id).await.unwrap());
    assert_eq!(f.outbox.unsent().await.unwrap(), unsent);

    // Without messages too (no event id to collide): the version alone refuses it.
    let result = store
        .commit(Commit {
            order: Some(order.clone()),
            outbox: vec![],
            inbox: None,
            idempotency_key: None,
        })
        .await;
    assert_eq!(
        result,
        Err(StoreError::Conflict {
            order_id: order.id(),
            expected: 1
        })
    );

    // A second "new" order with an existing id conflicts at version 0.
    let mut twin = new_order_with_id(order.id(), at(3));
    let outbox = messages_of(&mut twin, None);
    let result = store
        .commit(Commit {
            order: Some(twin),
            outbox,
            inbox: None,
            idempotency_key: None,
        })
        .await;
    assert_eq!(
        result,
        Err(StoreError::Conflict {
            order_id: order.id(),
            expected: 0
        })
    );
    assert_eq!(store.load(order.id()).await.unwrap().unwrap().version(), 2);
    assert_eq!(f.outbox.unsent().await.unwrap(), unsent);
}

pub async fn concurrent_commits_at_one_version_let_exactly_one_win(f: Fixture) {
    const WRITERS: usize = 8;
    let order = place(f.store.as_ref(), at(0)).await;
    for round in 0..10u64 {
        let loaded = f.store.load(order.id()).await.unwrap().unwrap();
        assert_eq!(loaded.version(), round + 1);
        let unsent = f.outbox.unsent().await.unwrap();
        let start = Arc::new(tokio::sync::Barrier::new(WRITERS));
        let mut writers = Vec::new();
        for i in 0..WRITERS {
            let (store, start, loaded) = (f.store.clone(), start.clone(), loaded.clone());
            writers.push(tokio::spawn(async move {
                let record = handled(loaded.id(), "test.poke", HandlingOutcome::Applied, at(1));
                let message_id = record.message_id;
                let envelope = Envelope::new(
                    Uuid::new_v4(),
                    "test.poked",
                    at(1),
                    loaded.id().to_string(),
                    Some(message_id),
                    &i,
                )
                .unwrap();
                start.wait().await;
                let result = store
                    .commit(Commit {
                        order: Some(loaded),
                        outbox: vec![envelope],
                        inbox: Some(record),
                        idempotency_key: None,
                    })
                    .await;
                (message_id, result)
            }));
        }
        let mut winners = Vec::new();
        for writer in writers {
            let (message_id, result) = writer.await.unwrap();
            match result {
                Ok(version) => {
                    assert_eq!(version, round + 2);
                    winners.push(message_id);
                }
                Err(StoreError::Conflict { expected, .. }) => assert_eq!(expected, round + 1),
                Err(other) => panic!("round {round}: unexpected error {other}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one writer wins");
        let loaded = f.store.load(order.id()).await.unwrap().unwrap();
        assert_eq!(loaded.version(), round + 2);
        assert_eq!(
            f.outbox.unsent().await.unwrap(),
            unsent + 1,
            "only the winner's message"
        );
        let history = f.store.messages(order.id()).await.unwrap();
        let received: Vec<_> = history
            .iter()
            .filter(|r| r.direction == Direction::Received)
            .collect();
        assert_eq!(
            received.len() as u64,
            round + 1,
            "only the winners' inbox records"
        );
        assert!(f.store.is_handled("orders", winners[0]).await.unwrap());
    }
}

/// Stores that write concurrent commits together (group commit) must still answer each
/// on its own: one refused commit among many fails alone and the others are written.
pub async fn a_refused_commit_among_many_concurrent_ones_fails_alone(f: Fixture) {
    const PLACERS: usize = 32;
    let first = place(f.store.as_ref(), at(0)).await;
    let record = handled(first.id(), "test.poke", HandlingOutcome::Applied, at(1));
    assert_eq!(f.store.commit(inbox_only(record.clone())).await, Ok(0));
    let unsent = f.outbox.unsent().await.unwrap();
    for round in 0..5 {
        let start = Arc::new(tokio::sync::Barrier::new(PLACERS + 1));
        let mut placers = Vec::new();
        for i in 0..PLACERS {
            let (store, start) = (f.store.clone(), start.clone());
            placers.push(tokio::spawn(async move {
                start.wait().await;
                place(store.as_ref(), at(i64::try_from(i).unwrap())).await
            }));
        }
        let duplicate = {
            let (store, start, record) = (f.store.clone(), start.clone(), record.clone());
            tokio::spawn(async move {
                start.wait().await;
                store.commit(inbox_only(record)).await
            })
        };
        let mut placed = Vec::new();
        for placer in placers {
            placed.push(placer.await.unwrap());
        }
        assert_eq!(
            duplicate.await.unwrap(),
            Err(StoreError::DuplicateMessage {
                subscriber: "orders".to_owned(),
                message_id: record.message_id,
            }),
            "round {round}"
        );
        for order in &placed {
            assert_eq!(
                f.store.load(order.id()).await.unwrap().as_ref(),
                Some(order),
                "round {round}"
            );
        }
        assert_eq!(
            f.outbox.unsent().await.unwrap(),
            unsent + (round + 1) * PLACERS as u64,
            "round {round}: every placed order's message, once"
        );
    }
}

pub async fn a_duplicate_inbox_message_writes_nothing(f: Fixture) {
    let store = f.store.as_ref();
    let order = place(store, at(0)).await;
    let mut paid = order.clone();
    let _ = paid
        .confirm_payment(PaymentId::new("pay-1").unwrap(), eur("60.27"), at(1))
        .unwrap();
    let record = handled(
        order.id(),
        "payment.approved",
        HandlingOutcome::Applied,
        at(1),
    );
    let paid = save(store, paid, Some(record.clone())).await;
    assert!(store.is_handled("orders", record.message_id).await.unwrap());
    let unsent = f.outbox.unsent().await.unwrap();
    let history = store.messages(order.id()).await.unwrap();

    // The same message again, with a change at the right version: refused, all of it.
    let mut again = paid.clone();
    let _ = again
        .cancel(CancellationReason::new("redelivered").unwrap(), at(2))
        .unwrap();
    let outbox = messages_of(&mut again, Some(record.message_id));
    let duplicate = Err(StoreError::DuplicateMessage {
        subscriber: "orders".to_owned(),
        message_id: record.message_id,
    });
    let result = store
        .commit(Commit {
            order: Some(again),
            outbox,
            inbox: Some(record.clone()),
            idempotency_key: None,
        })
        .await;
    assert_eq!(result, duplicate);
    assert_eq!(store.load(order.id()).await.unwrap().as_ref(), Some(&paid));
    assert_eq!(f.outbox.unsent().await.unwrap(), unsent);
    assert_eq!(store.messages(order.id()).await.unwrap(), history);

    // Inbox only: refused too.
    assert_eq!(store.commit(inbox_only(record.clone())).await, duplicate);
    assert_eq!(store.messages(order.id()).await.unwrap(), history);

    // The inbox is per subscriber: another subscriber may handle the same message.
    let mut audit = record.clone();
    audit.subscriber = "audit".to_owned();
    assert_eq!(store.commit(inbox_only(audit)).await, Ok(0));
    assert!(store.is_handled("audit", record.message_id).await.unwrap());
    assert!(!store.is_handled("audit", Uuid::new_v4()).await.unwrap());
}

pub async fn an_idempotency_key_binds_one_order(f: Fixture) {
    let store = f.store.as_ref();
    let commit_with_key = |mut order: orders_domain::Order| {
        let outbox = messages_of(&mut order, None);
        Commit {
            order: Some(order),
            outbox,
            inbox: None,
            idempotency_key: Some("checkout-42".to_owned()),
        }
    };
    let first = new_order(at(0));
    assert_eq!(store.commit(commit_with_key(first.clone())).await, Ok(1));
    assert_eq!(
        store.find_by_idempotency_key("checkout-42").await.unwrap(),
        Some(first.id())
    );
    let unsent = f.outbox.unsent().await.unwrap();

    let second = new_order(at(1));
    assert_eq!(
        store.commit(commit_with_key(second.clone())).await,
        Err(StoreError::DuplicateIdempotencyKey(first.id()))
    );
    assert_eq!(
        store.load(second.id()).await.unwrap(),
        None,
        "nothing written"
    );
    assert_eq!(f.outbox.unsent().await.unwrap(), unsent);
    assert_eq!(
        store.find_by_idempotency_key("checkout-43").await.unwrap(),
        None
    );
}

/// Commits `n` new orders (one `order.placed` each); returns their messages in commit order.
async fn commit_orders(f: &Fixture, n: usize) -> Vec<Envelope> {
    let mut sent = Vec::new();
    for i in 0..n {
        let mut order = new_order(at(i64::try_from(i).unwrap()));
        let outbox = messages_of(&mut order, None);
        sent.extend(outbox.iter().cloned());
        f.store
            .commit(Commit {
                order: Some(order),
                outbox,
                inbox: None,
                idempotency_key: None,
            })
            .await
            .unwrap();
    }
    sent
}

fn ids(envelopes: &[Envelope]) -> Vec<Uuid> {
    envelopes.iter().map(|e| e.message_id).collect()
}

pub async fn the_relay_publishes_in_commit_order_once(f: Fixture) {
    let mut committed = commit_orders(&f, 3).await;
    // A commit with two messages keeps their order too.
    let mut order = new_order(at(10));
    let _ = order
        .cancel(CancellationReason::new("at once").unwrap(), at(10))
        .unwrap();
    let outbox = messages_of(&mut order, None);
    assert_eq!(outbox.len(), 2);
    committed.extend(outbox.iter().cloned());
    f.store
        .commit(Commit {
            order: Some(order),
            outbox,
            inbox: None,
            idempotency_key: None,
        })
        .await
        .unwrap();
    assert_eq!(f.outbox.unsent().await.unwrap(), 5);

    let bus = RecordingBus::new();
    assert_eq!(
        f.outbox.relay(2, bus.as_ref()).await.unwrap(),
        2,
        "up to the limit"
    );
    assert_eq!(f.outbox.unsent().await.unwrap(), 3);
    assert_eq!(f.outbox.relay(100, bus.as_ref()).await.unwrap(), 3);
    assert_eq!(f.outbox.unsent().await.unwrap(), 0);
    assert_eq!(
        f.outbox.relay(100, bus.as_ref()).await.unwrap(),
        0,
        "nothing twice"
    );
    assert_eq!(bus.ids(), ids(&committed), "commit order, each once");
    for (published, original) in bus.published().iter().zip(&committed) {
        assert_eq!(
            published.to_json().unwrap(),
            original.to_json().unwrap(),
            "published as committed"
        );
    }
}

pub async fn the_relay_stops_at_a_bus_failure_and_resumes_without_loss(f: Fixture) {
    let committed = commit_orders(&f, 5).await;
    let bus = RecordingBus::new();
    bus.fail_after(2);
    assert_eq!(f.outbox.relay(100, bus.as_ref()).await.unwrap(), 2);
    assert_eq!(
        f.outbox.unsent().await.unwrap(),
        3,
        "the refused one and the rest stay"
    );
    assert_eq!(
        f.outbox.relay(100, bus.as_ref()).await.unwrap(),
        0,
        "still down"
    );
    assert_eq!(f.outbox.unsent().await.unwrap(), 3);
    bus.heal();
    assert_eq!(f.outbox.relay(100, bus.as_ref()).await.unwrap(), 3);
    assert_eq!(f.outbox.unsent().await.unwrap(), 0);
    assert_eq!(
        bus.ids(),
        ids(&committed),
        "nothing lost, nothing twice, in order"
    );
}

pub async fn concurrent_relays_publish_each_message_once(f: Fixture) {
    let committed = commit_orders(&f, 60).await;
    let bus = RecordingBus::new();
    let mut relays = Vec::new();
    for _ in 0..3 {
        let (outbox, bus) = (f.outbox.clone(), bus.clone());
        relays.push(tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + DEADLINE;
            while outbox.unsent().await.unwrap() > 0 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "relays did not drain"
                );
                outbox
                    .relay(7, bus.as_ref() as &dyn MessageBus)
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
        }));
    }
    for relay in relays {
        relay.await.unwrap();
    }
    assert_eq!(
        bus.ids(),
        ids(&committed),
        "each message once, in commit order"
    );
}

pub async fn the_history_lists_received_and_sent_messages_in_commit_order(f: Fixture) {
    let store = f.store.as_ref();
    // Everything at one instant: the order must come from the commits, not the clock.
    let now = at(0);
    let order = place(store, now).await;
    let other = place(store, now).await;

    let mut paid = order.clone();
    let _ = paid
        .confirm_payment(PaymentId::new("pay-1").unwrap(), eur("60.27"), now)
        .unwrap();
    let payment = handled(
        order.id(),
        "payment.approved",
        HandlingOutcome::Applied,
        now,
    );
    let paid_events = paid.pending_events().to_vec();
    let paid = save(store, paid, Some(payment.clone())).await;

    let mut reserved = paid.clone();
    let _ = reserved
        .confirm_stock_reservation(ReservationId::new("res-1").unwrap(), now)
        .unwrap();
    let reservation = handled(order.id(), "stock.reserved", HandlingOutcome::Applied, now);
    let reserved = save(store, reserved, Some(reservation.clone())).await;

    let rejection = handled(
        order.id(),
        "payment.approved",
        HandlingOutcome::Rejected("second payment".to_owned()),
        now,
    );
    store.commit(inbox_only(rejection.clone())).await.unwrap();
    let repeat = handled(
        order.id(),
        "stock.reserved",
        HandlingOutcome::Duplicate,
        now,
    );
    store.commit(inbox_only(repeat.clone())).await.unwrap();

    let mut cancelled = reserved.clone();
    let _ = cancelled
        .cancel(CancellationReason::new("changed my mind").unwrap(), now)
        .unwrap();
    let cancel_events = cancelled.pending_events().to_vec();
    save(store, cancelled, None).await;

    let sent = |topic: &str, id: Uuid| MessageRecord {
        direction: Direction::Sent,
        message_id: id,
        topic: topic.to_owned(),
        outcome: None,
        at: now,
    };
    let received = |r: &orders_app::InboxRecord| MessageRecord {
        direction: Direction::Received,
        message_id: r.message_id,
        topic: r.topic.clone(),
        outcome: Some(r.outcome.clone()),
        at: now,
    };
    let placed_id = orders_domain::EventId::for_order_event(order.id(), 1).as_uuid();
    let expected = vec![
        sent("order.placed", placed_id),
        received(&payment),
        sent("order.paid", paid_events[0].event_id().as_uuid()),
        received(&reservation),
        received(&rejection),
        received(&repeat),
        sent("order.cancelled", cancel_events[0].event_id().as_uuid()),
    ];
    let history = store.messages(order.id()).await.unwrap();
    assert_eq!(history, expected);
    assert_eq!(
        store.messages(other.id()).await.unwrap().len(),
        1,
        "per order"
    );

    // Relaying does not change the history.
    f.outbox
        .relay(100, RecordingBus::new().as_ref())
        .await
        .unwrap();
    assert_eq!(store.messages(order.id()).await.unwrap(), expected);
}

pub async fn prune_removes_only_old_inbox_records_and_sent_rows(f: Fixture) {
    let store = f.store.as_ref();
    let now = chrono::Utc::now();
    let (old, young) = (
        now - chrono::Duration::days(2),
        now + chrono::Duration::days(1),
    );

    // An old order: its message relayed, an old inbox record.
    let old_order = place(store, old).await;
    let old_record = handled(
        old_order.id(),
        "payment.declined",
        HandlingOutcome::Duplicate,
        old,
    );
    store.commit(inbox_only(old_record.clone())).await.unwrap();
    let bus = RecordingBus::new();
    assert_eq!(f.outbox.relay(100, bus.as_ref()).await.unwrap(), 1);

    // A young order: its message not relayed yet, a young inbox record.
    let young_order = place(store, young).await;
    let young_record = handled(
        young_order.id(),
        "payment.declined",
        HandlingOutcome::Duplicate,
        young,
    );
    store
        .commit(inbox_only(young_record.clone()))
        .await
        .unwrap();
    // An old unsent message: never pruned while unsent.
    let old_unsent = place(store, old).await;

    let report = store.prune(now + chrono::Duration::hours(1)).await.unwrap();
    assert_eq!(report.inbox, 1, "the old inbox record only");
    let expected_outbox = u64::from(f.keeps_sent_rows());
    assert_eq!(report.outbox, expected_outbox, "the sent row only");
    assert!(
        !store
            .is_handled("orders", old_record.message_id)
            .await
            .unwrap()
    );
    assert!(
        store
            .is_handled("orders", young_record.message_id)
            .await
            .unwrap()
    );
    assert_eq!(f.outbox.unsent().await.unwrap(), 2, "unsent rows are kept");
    assert_eq!(store.messages(old_order.id()).await.unwrap(), []);
    assert_eq!(store.messages(young_order.id()).await.unwrap().len(), 2);
    // Orders themselves are never pruned.
    assert!(store.load(old_order.id()).await.unwrap().is_some());

    // Nothing is lost: the kept rows still go out.
    assert_eq!(f.outbox.relay(100, bus.as_ref()).await.unwrap(), 2);
    let published = bus.ids();
    assert_eq!(published.len(), 3);
    assert!(
        published.contains(&orders_domain::EventId::for_order_event(old_unsent.id(), 1).as_uuid())
    );

    // A second pass with an earlier horizon removes nothing more.
    let again = store.prune(now - chrono::Duration::days(1)).await.unwrap();
    assert_eq!((again.inbox, again.outbox), (0, 0));
}

pub async fn a_commit_with_messages_wakes_the_relay(f: Fixture) {
    let notified = f.outbox.committed().notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    place(f.store.as_ref(), at(0)).await;
    tokio::time::timeout(DEADLINE, notified)
        .await
        .expect("a commit with outbox rows notifies the relay");
}

pub async fn a_corrupt_outbox_row_is_parked_and_later_rows_flow(f: Fixture) {
    let sql = f.sql.clone().expect("a SQL adapter");
    let first = place(f.store.as_ref(), at(0)).await;
    sql.insert_corrupt_outbox_row(first.id()).await;
    let second = place(f.store.as_ref(), at(1)).await;
    assert_eq!(f.outbox.unsent().await.unwrap(), 3);

    let bus = RecordingBus::new();
    assert_eq!(f.outbox.relay(100, bus.as_ref()).await.unwrap(), 2);
    let placed =
        |o: &orders_domain::Order| orders_domain::EventId::for_order_event(o.id(), 1).as_uuid();
    assert_eq!(bus.ids(), [placed(&first), placed(&second)]);
    assert_eq!(sql.parked().await, 1);
    assert_eq!(
        f.outbox.unsent().await.unwrap(),
        0,
        "parked rows are not unsent"
    );
    assert_eq!(f.outbox.relay(100, bus.as_ref()).await.unwrap(), 0);

    // A batch made only of bad rows does not stop the good row behind them.
    for _ in 0..3 {
        sql.insert_corrupt_outbox_row(first.id()).await;
    }
    let third = place(f.store.as_ref(), at(2)).await;
    assert_eq!(f.outbox.relay(2, bus.as_ref()).await.unwrap(), 1);
    assert_eq!(bus.ids().last(), Some(&placed(&third)));
    assert_eq!(sql.parked().await, 4);
    assert_eq!(f.outbox.unsent().await.unwrap(), 0);
}

pub async fn stalled_orders_get_their_latest_request_sent_again(f: Fixture) {
    let store = f.store.as_ref();
    // A waits for Payments, B for Stock, C is done, D is recent.
    let a = place(store, at(0)).await;
    let mut b = place(store, at(0)).await;
    let total = b.total();
    let _ = b
        .confirm_payment(PaymentId::new("pay-b").unwrap(), total, at(1))
        .unwrap();
    let b = save(store, b, None).await;
    let mut c = place(store, at(0)).await;
    let total = c.total();
    let _ = c
        .confirm_payment(PaymentId::new("pay-c").unwrap(), total, at(1))
        .unwrap();
    let mut c = save(store, c, None).await;
    let _ = c
        .confirm_stock_reservation(ReservationId::new("res-c").unwrap(), at(2))
        .unwrap();
    let _c = save(store, c, None).await;
    let _d = place(store, at(100)).await;
    let bus = RecordingBus::new();
    while f.outbox.relay(100, bus.as_ref()).await.unwrap() > 0 {}
    let first = bus.published();

    assert_eq!(f.outbox.requeue_stalled(at(50)).await.unwrap(), 2);
    let again = RecordingBus::new();
    while f.outbox.relay(100, again.as_ref()).await.unwrap() > 0 {}
    let resent = again.published();
    let latest = |order: orders_domain::OrderId, topic: &str| {
        first
            .iter()
            .filter(|e| e.correlation_id == order.to_string() && e.topic == topic)
            .map(|e| e.message_id)
            .next_back()
            .unwrap()
    };
    let mut got: Vec<Uuid> = resent.iter().map(|e| e.message_id).collect();
    let mut want = vec![latest(a.id(), "order.placed"), latest(b.id(), "order.paid")];
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(
        got, want,
        "the same messages, same ids, only for waiting orders"
    );
    assert_eq!(f.outbox.unsent().await.unwrap(), 0);
}

/// Commits what Orders commits for a refused payment: the rejected inbox record and an
/// `order.payment_refused` outbox row, the order unchanged. Returns the refusal's id.
async fn refuse_a_payment(f: &Fixture, order: orders_domain::OrderId, now: i64) -> Uuid {
    let record = handled(
        order,
        "payment.approved",
        HandlingOutcome::Rejected("refused".to_owned()),
        at(now),
    );
    let refusal = Envelope::new(
        Uuid::new_v4(),
        "order.payment_refused",
        at(now),
        order.to_string(),
        Some(record.message_id),
        &serde_json::json!({ "orderId": order.as_uuid(), "paymentId": "pay-other" }),
    )
    .unwrap();
    let id = refusal.message_id;
    f.store
        .commit(Commit {
            order: None,
            outbox: vec![refusal],
            inbox: Some(record),
            idempotency_key: None,
        })
        .await
        .unwrap();
    id
}

pub async fn a_stalled_order_gets_its_request_sent_again_not_a_later_refusal(f: Fixture) {
    let store = f.store.as_ref();
    // A awaits payment, B is paid; each has a refused payment as its latest outbox row.
    let a = place(store, at(0)).await;
    let mut b = place(store, at(0)).await;
    let total = b.total();
    let _ = b
        .confirm_payment(PaymentId::new("pay-b").unwrap(), total, at(1))
        .unwrap();
    let b = save(store, b, None).await;
    let refused_a = refuse_a_payment(&f, a.id(), 2).await;
    let refused_b = refuse_a_payment(&f, b.id(), 2).await;
    let bus = RecordingBus::new();
    while f.outbox.relay(100, bus.as_ref()).await.unwrap() > 0 {}
    let first = bus.published();
    let last_of = |order: orders_domain::OrderId| {
        first
            .iter()
            .rfind(|e| e.correlation_id == order.to_string())
            .map(|e| e.message_id)
            .unwrap()
    };
    assert_eq!(last_of(a.id()), refused_a, "the refusal is A's latest row");
    assert_eq!(last_of(b.id()), refused_b, "the refusal is B's latest row");

    assert_eq!(f.outbox.requeue_stalled(at(50)).await.unwrap(), 2);
    let again = RecordingBus::new();
    while f.outbox.relay(100, again.as_ref()).await.unwrap() > 0 {}
    let mut got: Vec<(String, String)> = again
        .published()
        .iter()
        .map(|e| (e.correlation_id.clone(), e.topic.to_string()))
        .collect();
    let mut want = vec![
        (a.id().to_string(), "order.placed".to_owned()),
        (b.id().to_string(), "order.paid".to_owned()),
    ];
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(
        got, want,
        "the request each order waits on, never the refusal"
    );
    let request = |order: orders_domain::OrderId, topic: &str| {
        first
            .iter()
            .rfind(|e| e.correlation_id == order.to_string() && e.topic == topic)
            .map(|e| e.message_id)
            .unwrap()
    };
    let mut got: Vec<Uuid> = again.published().iter().map(|e| e.message_id).collect();
    let mut want = vec![
        request(a.id(), "order.placed"),
        request(b.id(), "order.paid"),
    ];
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "the same messages, same ids");
    assert_eq!(f.outbox.unsent().await.unwrap(), 0);
}

pub async fn due_for_payment_lists_exactly_the_due_orders_awaiting_payment(f: Fixture) {
    let store = f.store.as_ref();
    // Placed at 0, due at 100 and 200, awaiting payment.
    let first = place_due(store, at(0), at(100)).await;
    let second = place_due(store, at(0), at(200)).await;
    assert_eq!(
        store
            .load(first.id())
            .await
            .unwrap()
            .unwrap()
            .payment_due_at(),
        Some(at(100)),
        "the deadline is kept with the order"
    );
    // Due earlier, but paid in time.
    let mut paid = place_due(store, at(0), at(50)).await;
    let _ = paid
        .confirm_payment(PaymentId::new("pay-1").unwrap(), eur("60.27"), at(10))
        .unwrap();
    save(store, paid, None).await;
    // Due earlier, but cancelled by the customer.
    let mut cancelled = place_due(store, at(0), at(60)).await;
    let _ = cancelled
        .cancel(CancellationReason::new("changed my mind").unwrap(), at(10))
        .unwrap();
    save(store, cancelled, None).await;
    // No deadline at all (placed before deadlines existed): never due.
    place(store, at(0)).await;

    assert_eq!(store.due_for_payment(at(99), 10).await.unwrap(), []);
    assert_eq!(
        store.due_for_payment(at(100), 10).await.unwrap(),
        [first.id()],
        "due at its deadline, not after it"
    );
    assert_eq!(
        store.due_for_payment(at(10_000), 10).await.unwrap(),
        [first.id(), second.id()],
        "earliest deadline first"
    );
    assert_eq!(
        store.due_for_payment(at(10_000), 1).await.unwrap(),
        [first.id()],
        "at most `limit`"
    );

    // Cancelled for the deadline: no longer due.
    let mut expired = store.load(first.id()).await.unwrap().unwrap();
    let _ = expired.expire_payment(at(100)).unwrap();
    save(store, expired, None).await;
    assert_eq!(
        store.due_for_payment(at(10_000), 10).await.unwrap(),
        [second.id()]
    );
}

pub async fn the_oldest_unsent_row_is_the_next_to_publish_and_keeps_its_trace_context(f: Fixture) {
    assert_eq!(
        f.outbox.oldest_unsent().await.unwrap(),
        None,
        "nothing unsent"
    );
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut first = new_order(at(0));
    let mut outbox = messages_of(&mut first, None);
    outbox[0].traceparent = Some(traceparent.to_owned());
    f.store
        .commit(Commit {
            order: Some(first),
            outbox,
            inbox: None,
            idempotency_key: None,
        })
        .await
        .unwrap();
    let _second = place(f.store.as_ref(), at(5)).await;
    assert_eq!(f.outbox.oldest_unsent().await.unwrap(), Some(at(0)));

    let bus = RecordingBus::new();
    assert_eq!(f.outbox.relay(1, bus.as_ref()).await.unwrap(), 1);
    assert_eq!(f.outbox.oldest_unsent().await.unwrap(), Some(at(5)));
    assert_eq!(
        bus.published()[0].traceparent.as_deref(),
        Some(traceparent),
        "the outbox keeps the trace context of the commit"
    );
    assert_eq!(f.outbox.relay(100, bus.as_ref()).await.unwrap(), 1);
    assert_eq!(f.outbox.oldest_unsent().await.unwrap(), None, "all sent");
}
