//! The moves the stories are made of: start a system, place and cancel an order, wait
//! for a status, inject a message as another context would, and finish (settle, record
//! the final state and the transcript). Each records what went wrong in the report
//! instead of failing.

use std::{collections::BTreeSet, sync::Arc};

use contracts::topics;
use messaging::{Envelope, MessageBus};
use orders_app::{AddressInput, CancelOrder, Direction, ItemInput, MessageRecord, PlaceOrder};
use orders_domain::{OrderId, OrderStatus};
use rust_decimal::Decimal;

use super::{DEADLINE, ScenarioReport, report::transcript};
use crate::system::{InProcessSystem, Stores, SystemConfig};

/// A valid checkout of `total` EUR (one line).
#[must_use]
pub fn checkout(product: &str, price: Decimal, quantity: i64) -> PlaceOrder {
    PlaceOrder {
        customer_id: "customer-42".to_owned(),
        currency: "EUR".to_owned(),
        items: vec![ItemInput {
            product_id: product.to_owned(),
            quantity,
            price,
        }],
        shipping_address: AddressInput {
            street: "Hauptstrasse 1".to_owned(),
            city: "Berlin".to_owned(),
            postal_code: "10115".to_owned(),
            country: "DE".to_owned(),
        },
    }
}

pub(super) fn config() -> SystemConfig {
    SystemConfig {
        tap: true,
        ..SystemConfig::default()
    }
}

pub(super) async fn start(
    report: &mut ScenarioReport,
    config: SystemConfig,
    stores: Stores,
) -> Option<InProcessSystem> {
    match InProcessSystem::start_with(config, stores, Arc::new(orders_app::SystemClock)).await {
        Ok(system) => Some(system),
        Err(e) => {
            report.failures.push(format!("system did not start: {e}"));
            None
        }
    }
}

pub(super) async fn place(
    report: &mut ScenarioReport,
    system: &InProcessSystem,
    command: PlaceOrder,
) -> Option<OrderId> {
    match system.orders.place_order(command, None).await {
        Ok(placed) => {
            report.order_id = Some(placed.order_id);
            Some(placed.order_id)
        }
        Err(e) => {
            report.failures.push(format!("checkout failed: {e}"));
            None
        }
    }
}

pub(super) async fn wait(
    report: &mut ScenarioReport,
    system: &InProcessSystem,
    id: OrderId,
    status: OrderStatus,
) {
    if let Err(e) = system.wait_for_status(id, status, DEADLINE).await {
        report.failures.push(e);
    }
}

pub(super) async fn cancel(report: &mut ScenarioReport, system: &InProcessSystem, id: OrderId) {
    let command = CancelOrder {
        order_id: id,
        reason: "customer changed their mind".to_owned(),
    };
    if let Err(e) = system.orders.cancel_order(command).await {
        report.failures.push(format!("cancel failed: {e}"));
    }
}

/// Settles the system, then records the final status and the transcript and checks
/// the expected status.
pub(super) async fn finish(
    report: &mut ScenarioReport,
    system: InProcessSystem,
    id: OrderId,
    expected: OrderStatus,
) -> Vec<Envelope> {
    if !system.settle(DEADLINE).await {
        report.failures.push("the system did not settle".to_owned());
    }
    report.status = system.orders.order(id).await.ok().map(|o| o.status());
    report.check(
        report.status == Some(expected),
        format!("expected final state {expected}, got {:?}", report.status),
    );
    let messages = system
        .tap
        .as_ref()
        .map(|t| t.messages(&id.to_string()))
        .unwrap_or_default();
    let history = system.orders.messages(id).await.unwrap_or_default();
    report.transcript = transcript(&messages, &history);
    system.shutdown().await;
    messages
}

/// The `reservationId`s announced by `stock.reserved` among `messages` and never by
/// `stock.released` (a reservation announced twice counts once).
pub(super) fn held_reservations(messages: &[Envelope]) -> Vec<String> {
    let released: BTreeSet<String> = messages
        .iter()
        .filter(|e| e.topic == topics::STOCK_RELEASED)
        .filter_map(|e| e.decode::<contracts::StockReleased>().ok())
        .map(|p| p.reservation_id)
        .collect();
    let reserved: BTreeSet<String> = messages
        .iter()
        .filter(|e| e.topic == topics::STOCK_RESERVED)
        .filter_map(|e| e.decode::<contracts::StockReserved>().ok())
        .map(|p| p.reservation_id)
        .collect();
    reserved.difference(&released).cloned().collect()
}

pub(super) fn count(messages: &[Envelope], topic: &str) -> usize {
    messages.iter().filter(|e| e.topic == topic).count()
}

pub(super) fn outcomes(history: &[MessageRecord], topic: &str) -> Vec<String> {
    history
        .iter()
        .filter(|r| r.direction == Direction::Received && r.topic == topic)
        .filter_map(|r| r.outcome.as_ref().map(|o| o.as_str().to_owned()))
        .collect()
}

pub(super) fn expect_topics(
    report: &mut ScenarioReport,
    messages: &[Envelope],
    expected: &[(&str, usize)],
) {
    for (topic, n) in expected {
        let seen = count(messages, topic);
        report.check(seen == *n, format!("expected {n} × {topic}, saw {seen}"));
    }
}

/// Records a simulator that could not come back.
pub(super) fn resume(report: &mut ScenarioReport, result: Result<(), messaging::BusError>) {
    if let Err(e) = result {
        report
            .failures
            .push(format!("a simulator could not come back: {e}"));
    }
}

/// Publishes a message as if another context had sent it (not caused by anything).
pub(super) async fn inject<T: serde::Serialize>(
    report: &mut ScenarioReport,
    system: &InProcessSystem,
    topic: &'static str,
    id: OrderId,
    payload: &T,
) {
    let now = chrono::Utc::now();
    match Envelope::new(
        uuid::Uuid::new_v4(),
        topic,
        now,
        id.to_string(),
        None,
        payload,
    ) {
        Ok(envelope) => {
            if let Err(e) = system.bus.publish(envelope).await {
                report.failures.push(format!("publish failed: {e}"));
            }
        }
        Err(e) => report.failures.push(format!("encode failed: {e}")),
    }
}
