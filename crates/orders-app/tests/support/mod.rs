//! What the refusal tests share (`payment_refusal.rs`, `reservation_refusal.rs`): a
//! recording store whose commits are all or nothing and which can fail the next commit
//! or let a concurrent handler commit first, a world of service and handler on it, and
//! the messages the other contexts send.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)] // each test uses a part

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use contracts::topics;
use messaging::{Envelope, MessageId};
use orders_app::{
    AddressInput, CancelOrder, Commit, HandlingOutcome, ItemInput, ManualClock, MessageRecord,
    OrderStore, OrdersConfig, OrdersMessageHandler, OrdersService, PlaceOrder, PruneReport,
    StoreError,
};
use orders_domain::{Order, OrderId, OrderStatus, Timestamp};
use rust_decimal::Decimal;
use uuid::Uuid;

/// The order total of [`placed`]: 2 × 10.50 EUR.
pub const TOTAL: Decimal = Decimal::from_parts(2100, 0, 0, false, 2);

/// Orders, inbox and every commit, in maps; a commit is all or nothing. Can be told to
/// fail the next commit, or to let a concurrent handler commit first (a race).
#[derive(Default)]
pub struct RecordingStore {
    pub orders: Mutex<HashMap<OrderId, Order>>,
    pub inbox: Mutex<HashSet<MessageId>>,
    pub commits: Mutex<Vec<Commit>>,
    pub fail_next_commit: Mutex<bool>,
    /// Handled by `concurrent_handler` just before the next commit that writes an order.
    pub before_next_order_commit: Mutex<Option<Envelope>>,
    pub concurrent_handler: Mutex<Option<OrdersMessageHandler>>,
}

impl RecordingStore {
    pub fn last_commit(&self) -> Commit {
        self.commits
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a commit")
    }

    /// Every message committed to the outbox on `topic`, decoded, in order.
    pub fn sent_on<T: serde::de::DeserializeOwned>(&self, topic: &str) -> Vec<T> {
        self.commits
            .lock()
            .unwrap()
            .iter()
            .flat_map(|c| c.outbox.iter())
            .filter(|e| e.topic == topic)
            .map(|e| e.decode().unwrap())
            .collect()
    }

    /// How many messages were committed to the outbox on `topic`.
    pub fn sent(&self, topic: &str) -> usize {
        self.commits
            .lock()
            .unwrap()
            .iter()
            .flat_map(|c| c.outbox.iter())
            .filter(|e| e.topic == topic)
            .count()
    }
}

#[async_trait]
impl OrderStore for RecordingStore {
    async fn load(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        Ok(self.orders.lock().unwrap().get(&id).cloned())
    }
    async fn is_handled(&self, _: &str, message_id: MessageId) -> Result<bool, StoreError> {
        Ok(self.inbox.lock().unwrap().contains(&message_id))
    }
    async fn find_by_idempotency_key(&self, _: &str) -> Result<Option<OrderId>, StoreError> {
        Ok(None)
    }
    async fn due_for_payment(&self, _: Timestamp, _: usize) -> Result<Vec<OrderId>, StoreError> {
        // These tests run no payment deadline worker.
        Ok(Vec::new())
    }
    async fn commit(&self, commit: Commit) -> Result<u64, StoreError> {
        if commit.order.is_some() {
            let first = self.before_next_order_commit.lock().unwrap().take();
            if let Some(first) = first {
                let handler = self.concurrent_handler.lock().unwrap().take().unwrap();
                handler.dispatch(&first).await.unwrap();
            }
        }
        if std::mem::take(&mut *self.fail_next_commit.lock().unwrap()) {
            return Err(StoreError::unavailable("down for the test"));
        }
        if let Some(order) = &commit.order {
            let stored = self
                .orders
                .lock()
                .unwrap()
                .get(&order.id())
                .map(Order::version);
            let fresh = match order.version() {
                0 => stored.is_none(),
                v => stored == Some(v),
            };
            if !fresh {
                return Err(StoreError::Conflict {
                    order_id: order.id(),
                    expected: order.version(),
                });
            }
        }
        if let Some(record) = &commit.inbox
            && !self.inbox.lock().unwrap().insert(record.message_id)
        {
            return Err(StoreError::DuplicateMessage {
                subscriber: record.subscriber.clone(),
                message_id: record.message_id,
            });
        }
        let mut version = 0;
        if let Some(mut order) = commit.order.clone() {
            version = order.version() + 1;
            order.mark_saved(version);
            self.orders.lock().unwrap().insert(order.id(), order);
        }
        self.commits.lock().unwrap().push(commit);
        Ok(version)
    }
    async fn messages(&self, _: OrderId) -> Result<Vec<MessageRecord>, StoreError> {
        Ok(vec![])
    }
    async fn prune(&self, _: Timestamp) -> Result<PruneReport, StoreError> {
        Ok(PruneReport::default())
    }
}

pub struct World {
    pub store: Arc<RecordingStore>,
    pub service: OrdersService,
    pub handler: OrdersMessageHandler,
}

impl World {
    pub async fn status(&self, id: OrderId) -> OrderStatus {
        self.service.order(id).await.unwrap().status()
    }
}

pub fn world() -> World {
    let store = Arc::new(RecordingStore::default());
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap(),
    ));
    let service = OrdersService::new(store.clone(), clock, OrdersConfig::default());
    World {
        store,
        handler: OrdersMessageHandler::new(service.clone()),
        service,
    }
}

pub async fn placed(w: &World) -> OrderId {
    let command = PlaceOrder {
        customer_id: "c-1".into(),
        currency: "EUR".into(),
        items: vec![ItemInput {
            product_id: "book".into(),
            quantity: 2,
            price: Decimal::new(1050, 2),
        }],
        shipping_address: AddressInput {
            street: "Main St 1".into(),
            city: "Berlin".into(),
            postal_code: "10115".into(),
            country: "DE".into(),
        },
    };
    w.service.place_order(command, None).await.unwrap().order_id
}

/// A placed order, paid (Paid).
pub async fn paid(w: &World) -> OrderId {
    let id = placed(w).await;
    assert_eq!(
        w.handler
            .dispatch(&approved(id, "pay-1", TOTAL, "EUR"))
            .await,
        Ok(HandlingOutcome::Applied)
    );
    id
}

pub async fn cancel(w: &World, id: OrderId) {
    let command = CancelOrder {
        order_id: id,
        reason: "customer changed their mind".into(),
    };
    w.service.cancel_order(command).await.unwrap();
}

pub fn approved(order: OrderId, payment: &str, amount: Decimal, currency: &str) -> Envelope {
    let payload = contracts::PaymentApproved {
        order_id: order.as_uuid(),
        payment_id: payment.into(),
        approved_amount: amount,
        currency: currency.into(),
        timestamp: Utc::now(),
    };
    envelope_about(topics::PAYMENT_APPROVED, order, &payload)
}

pub fn reserved(order: OrderId, reservation: &str) -> Envelope {
    let payload = contracts::StockReserved {
        order_id: order.as_uuid(),
        reservation_id: reservation.into(),
        items: vec![contracts::ItemQuantity {
            product_id: "book".into(),
            quantity: 2,
        }],
        timestamp: Utc::now(),
    };
    envelope_about(topics::STOCK_RESERVED, order, &payload)
}

/// A new message (fresh id) about `order`.
pub fn envelope_about(
    topic: &'static str,
    order: OrderId,
    payload: &impl serde::Serialize,
) -> Envelope {
    Envelope::new(
        Uuid::new_v4(),
        topic,
        Utc::now(),
        order.to_string(),
        None,
        payload,
    )
    .unwrap()
}
