//! The conformance check of `OrderStore::recent_orders` (the live page's list), run on
//! every adapter through [`crate::conformance::suite!`].

use orders_domain::PaymentId;

use crate::support::{Fixture, at, eur, new_order, save};

/// `recent_orders`: newest first (time-ordered ids), bounded, each at its latest version,
/// and only one customer's when asked.
pub async fn recent_orders_are_the_newest_first_of_everyone_or_of_one_customer(f: Fixture) {
    use orders_domain::{CustomerId, Order, OrderId, ShippingAddress};

    let store = f.store.as_ref();
    let order_of = |customer: &str, seconds: i64| {
        let template = new_order(at(seconds));
        Order::place(
            OrderId::time_ordered(at(seconds)),
            CustomerId::new(customer).unwrap(),
            template.items().to_vec(),
            ShippingAddress::new("Main Street 1", "Berlin", "10115", "DE").unwrap(),
            at(seconds),
        )
        .unwrap()
    };
    let mut placed = Vec::new();
    for (seconds, customer) in [
        (1, "alice"),
        (2, "bob"),
        (3, "alice"),
        (4, "alice"),
        (5, "bob"),
    ] {
        placed.push(save(store, order_of(customer, seconds), None).await);
    }
    // The oldest changes later: still listed by when it was placed, at its new version.
    let mut paid = placed[0].clone();
    let _ = paid
        .confirm_payment(PaymentId::new("pay-1").unwrap(), eur("60.27"), at(9))
        .unwrap();
    let paid = save(store, paid, None).await;

    let ids = |orders: &[orders_domain::Order]| orders.iter().map(|o| o.id()).collect::<Vec<_>>();
    let newest = store.recent_orders(3, None).await.unwrap();
    assert_eq!(
        ids(&newest),
        [placed[4].id(), placed[3].id(), placed[2].id()]
    );
    assert_eq!(newest[0], placed[4], "whole orders, as loaded");

    let everyone = store.recent_orders(50, None).await.unwrap();
    assert_eq!(everyone.len(), 5);
    assert_eq!(everyone[4], paid, "the latest version of the oldest order");

    let bob = store.recent_orders(50, Some("bob")).await.unwrap();
    assert_eq!(ids(&bob), [placed[4].id(), placed[1].id()]);
    let alice = store.recent_orders(2, Some("alice")).await.unwrap();
    assert_eq!(ids(&alice), [placed[3].id(), placed[2].id()]);
    assert_eq!(store.recent_orders(50, Some("carol")).await.unwrap(), []);

    // Within one millisecond ids are random: the time of placement orders them.
    let mut same_ms = Vec::new();
    for nanos in [300, 100, 200] {
        let at_nanos = at(20) + chrono::Duration::nanoseconds(nanos);
        let mut order = order_of("dave", 20);
        order = Order::place(
            OrderId::time_ordered(at_nanos),
            order.customer_id().clone(),
            order.items().to_vec(),
            order.shipping_address().clone(),
            at_nanos,
        )
        .unwrap();
        same_ms.push(save(store, order, None).await);
    }
    let dave = store.recent_orders(3, Some("dave")).await.unwrap();
    assert_eq!(
        ids(&dave),
        [same_ms[0].id(), same_ms[2].id(), same_ms[1].id()]
    );
    assert_eq!(store.recent_orders(0, None).await.unwrap(), []);
}
