//! Payments with the real Orders handler (and the simulated Stock) on one in-memory bus:
//! the net charges of an order, counted on the bus as distinct `paymentId`s approved
//! less distinct `paymentId`s refunded, are one for a StockReserved order and zero for a
//! Cancelled one, also with duplicate replies, a Payments that restarted with an empty
//! ledger, and a second Payments instance answering the same orders.
//!
//! Orders' store here is a map that hands its outbox to the bus as it commits (the relay
//! of the real stores, without the table); the orders-store crate proves the rest.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use contracts::{PaymentApproved, PaymentRefunded, topics};
use messaging::{
    Envelope, HandlerError, InMemoryBus, MessageBus, MessageHandler, MessageId, Subscription,
    SubscriptionHandle,
};
use orders_app::{
    AddressInput, CancelOrder, Commit, Direction, HandlingOutcome, ItemInput, MessageRecord,
    OrderStore, OrdersConfig, OrdersMessageHandler, OrdersService, PlaceOrder, PruneReport,
    StoreError, SystemClock,
    domain::{Order, OrderId, OrderStatus, Timestamp},
};
use payments_sim::{PaymentsConfig, PaymentsHandle, PaymentsService};
use rust_decimal::Decimal;
use stock_sim::{StockConfig, StockHandle, StockService};

/// How long a test waits for the flow to settle before it fails.
const DEADLINE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_stock_reserved_order_is_charged_once_even_with_duplicate_replies() {
    let world = World::start(PaymentsConfig::default().duplicate_replies(true)).await;

    let id = world.place().await;
    world.settle().await;

    assert_eq!(world.status(id).await, OrderStatus::StockReserved);
    assert_eq!(world.net_charges(id), 1);
    assert_eq!(world.payments().net_charges_for(id.as_uuid()), 1);
    assert_eq!(
        world.outcomes(id, topics::PAYMENT_APPROVED).await,
        ["applied", "duplicate"]
    );
    assert!(
        world
            .sent(id, topics::ORDER_PAYMENT_REFUSED)
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn an_order_cancelled_before_payments_answered_is_not_left_charged() {
    // Payments is away while the order is placed and cancelled; it comes back with an
    // empty ledger, charges, then refunds on the cancellation; Orders refuses the late
    // approval, and the refusal refunds nothing twice.
    let mut world = World::start(PaymentsConfig::default()).await;
    world.payments.take().unwrap().stop().await;
    let id = world.place().await;
    world.cancel(id).await;

    world.payments = Some(
        PaymentsService::start(Arc::new(world.bus.clone()), PaymentsConfig::default())
            .await
            .unwrap(),
    );
    world.settle().await;

    assert_eq!(world.status(id).await, OrderStatus::Cancelled);
    assert_eq!(world.net_charges(id), 0);
    assert_eq!(world.payments().net_charges_for(id.as_uuid()), 0);
    assert_eq!(
        world.count(topics::PAYMENT_REFUNDED, id),
        1,
        "refunded once"
    );
    assert_eq!(
        world.outcomes(id, topics::PAYMENT_APPROVED).await,
        ["rejected"]
    );
    assert_eq!(
        world.sent(id, topics::ORDER_PAYMENT_REFUSED).await.len(),
        1,
        "the late approval is refused"
    );
}

#[tokio::test]
async fn two_payments_instances_charge_an_order_once() {
    // A second Payments (its own ledger, reached over a bridge) answers the same
    // order.placed: the same paymentId, so Orders sees a duplicate, not a second payment.
    let world = World::start(PaymentsConfig::default()).await;
    let second = SecondPayments::attach(&world.bus).await;

    let id = world.place().await;
    world.settle_with(&second).await;

    assert_eq!(world.status(id).await, OrderStatus::StockReserved);
    assert_eq!(
        world.count(topics::PAYMENT_APPROVED, id),
        2,
        "both answered"
    );
    assert_eq!(world.net_charges(id), 1);
    assert_eq!(
        world.outcomes(id, topics::PAYMENT_APPROVED).await,
        ["applied", "duplicate"]
    );
}

#[tokio::test]
async fn a_payment_for_a_cancelled_order_made_by_an_instance_that_missed_the_cancel_is_refunded() {
    // The order is cancelled while awaiting payment. The first Payments sees placed and
    // cancelled, charges and refunds. The second sees only order.placed (the bridge does
    // not carry cancellations), so only Orders' refusal can make it refund.
    let mut world = World::start(PaymentsConfig::default()).await;
    world.payments.take().unwrap().stop().await;
    let second = SecondPayments::attach(&world.bus).await;
    second.hold();
    let id = world.place().await;
    world.cancel(id).await;
    world.settle_with(&second).await;

    world.payments = Some(
        PaymentsService::start(Arc::new(world.bus.clone()), PaymentsConfig::default())
            .await
            .unwrap(),
    );
    second.release().await;
    world.settle_with(&second).await;

    assert_eq!(world.status(id).await, OrderStatus::Cancelled);
    assert_eq!(world.net_charges(id), 0);
    let second_net = second
        .payments
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .net_charges_for(id.as_uuid());
    assert_eq!(
        world.payments().net_charges_for(id.as_uuid()) + second_net,
        0,
        "summed over both instances"
    );
    assert_eq!(second_net, 0, "the second instance refunded its charge");
    assert!(world.bus.dead_letters().is_empty());
}

// ---------------------------------------------------------------------------------------
// Helpers

/// One bus with Orders (handler and store), Payments, Stock, and a recorder of every
/// answer of Payments.
struct World {
    bus: InMemoryBus,
    orders: OrdersService,
    payments: Option<PaymentsHandle>,
    _stock: StockHandle,
    recorder: Arc<Recorder>,
    _subscriptions: Vec<SubscriptionHandle>,
}

impl World {
    async fn start(payments: PaymentsConfig) -> Self {
        let bus = InMemoryBus::default();
        let store = Arc::new(MapStore::new(bus.clone()));
        let orders = OrdersService::new(store, Arc::new(SystemClock), OrdersConfig::default());
        let handler = Arc::new(OrdersMessageHandler::new(orders.clone()));
        let shared: Arc<dyn MessageBus> = Arc::new(bus.clone());
        let mut subscriptions = vec![
            bus.subscribe(OrdersMessageHandler::subscription(), handler)
                .await
                .unwrap(),
        ];
        let recorder = Arc::new(Recorder::default());
        let recording = Subscription::new("recorder")
            .topic(topics::PAYMENT_APPROVED)
            .topic(topics::PAYMENT_REFUNDED);
        subscriptions.push(bus.subscribe(recording, recorder.clone()).await.unwrap());
        let payments = PaymentsService::start(shared.clone(), payments)
            .await
            .unwrap();
        let stock = StockService::start(shared, StockConfig::default().duplicate_replies(true))
            .await
            .unwrap();
        Self {
            bus,
            orders,
            payments: Some(payments),
            _stock: stock,
            recorder,
            _subscriptions: subscriptions,
        }
    }

    fn payments(&self) -> &PaymentsHandle {
        self.payments.as_ref().unwrap()
    }

    async fn place(&self) -> OrderId {
        let command = PlaceOrder {
            customer_id: "customer-1".into(),
            currency: "EUR".into(),
            items: vec![ItemInput {
                product_id: "sku-1".into(),
                quantity: 2,
                price: Decimal::new(1050, 2),
            }],
            shipping_address: AddressInput {
                street: "1 Main Street".into(),
                city: "Lisbon".into(),
                postal_code: "1000-001".into(),
                country: "PT".into(),
            },
        };
        self.orders
            .place_order(command, None)
            .await
            .unwrap()
            .order_id
    }

    async fn cancel(&self, id: OrderId) {
        let command = CancelOrder {
            order_id: id,
            reason: "customer changed their mind".into(),
        };
        self.orders.cancel_order(command).await.unwrap();
    }

    async fn status(&self, id: OrderId) -> OrderStatus {
        self.orders.order(id).await.unwrap().status()
    }

    async fn settle(&self) {
        assert!(
            self.bus.wait_idle(DEADLINE).await,
            "the bus did not settle within {DEADLINE:?}"
        );
    }

    /// Settles this bus and the second instance's until neither has work left: a round
    /// in which no message crossed a bridge leaves both idle.
    async fn settle_with(&self, second: &SecondPayments) {
        loop {
            let crossed = second.crossed.load(Ordering::SeqCst);
            self.settle().await;
            assert!(
                second.bus.wait_idle(DEADLINE).await,
                "the second bus did not settle"
            );
            self.settle().await;
            if second.crossed.load(Ordering::SeqCst) == crossed {
                return;
            }
        }
    }

    /// How many messages of `topic` about order `id` the recorder saw.
    fn count(&self, topic: &str, id: OrderId) -> usize {
        self.recorder.about(topic, id).len()
    }

    /// Distinct `paymentId`s approved for `id` less distinct `paymentId`s refunded.
    fn net_charges(&self, id: OrderId) -> i64 {
        let approved: BTreeSet<String> = self
            .recorder
            .about(topics::PAYMENT_APPROVED, id)
            .iter()
            .map(|e| e.decode::<PaymentApproved>().unwrap().payment_id)
            .collect();
        let refunded: BTreeSet<String> = self
            .recorder
            .about(topics::PAYMENT_REFUNDED, id)
            .iter()
            .map(|e| e.decode::<PaymentRefunded>().unwrap().payment_id)
            .collect();
        assert!(
            refunded.is_subset(&approved),
            "a refund of a payment never approved"
        );
        i64::try_from(approved.len()).unwrap() - i64::try_from(refunded.len()).unwrap()
    }

    /// How Orders handled each message of `topic` about `id`, in order.
    async fn outcomes(&self, id: OrderId, topic: &str) -> Vec<&'static str> {
        self.orders
            .messages(id)
            .await
            .unwrap()
            .iter()
            .filter(|r| r.direction == Direction::Received && r.topic == topic)
            .filter_map(|r| r.outcome.as_ref().map(HandlingOutcome::as_str))
            .collect()
    }

    /// The messages of `topic` Orders committed for `id`.
    async fn sent(&self, id: OrderId, topic: &str) -> Vec<MessageRecord> {
        self.orders
            .messages(id)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.direction == Direction::Sent && r.topic == topic)
            .collect()
    }
}

/// A second Payments instance on a bus of its own, bridged to the main bus: it receives
/// `order.placed` and `order.payment_refused` (not `order.cancelled`), and its answers
/// go back to the main bus. `hold` keeps it from answering until `release`.
struct SecondPayments {
    bus: InMemoryBus,
    payments: Mutex<Option<PaymentsHandle>>,
    /// Messages that crossed a bridge, either way.
    crossed: Arc<AtomicUsize>,
    _bridges: Vec<SubscriptionHandle>,
}

impl SecondPayments {
    async fn attach(main: &InMemoryBus) -> Self {
        let bus = InMemoryBus::default();
        let to_second = Subscription::new("bridge-to-second-payments")
            .topic(topics::ORDER_PLACED)
            .topic(topics::ORDER_PAYMENT_REFUSED);
        let back = Subscription::new("bridge-from-second-payments")
            .topic(topics::PAYMENT_APPROVED)
            .topic(topics::PAYMENT_DECLINED)
            .topic(topics::PAYMENT_REFUNDED);
        let crossed = Arc::new(AtomicUsize::new(0));
        let bridges = vec![
            main.subscribe(to_second, Arc::new(Bridge(bus.clone(), crossed.clone())))
                .await
                .unwrap(),
            bus.subscribe(back, Arc::new(Bridge(main.clone(), crossed.clone())))
                .await
                .unwrap(),
        ];
        let payments = PaymentsService::start(Arc::new(bus.clone()), PaymentsConfig::default())
            .await
            .unwrap();
        Self {
            bus,
            payments: Mutex::new(Some(payments)),
            crossed,
            _bridges: bridges,
        }
    }

    /// Stops the instance; what reaches it waits in its group.
    fn hold(&self) {
        let payments = self.payments.lock().unwrap().take().unwrap();
        drop(payments);
    }

    /// Starts it again (an empty ledger) to answer what waited.
    async fn release(&self) {
        let payments =
            PaymentsService::start(Arc::new(self.bus.clone()), PaymentsConfig::default())
                .await
                .unwrap();
        *self.payments.lock().unwrap() = Some(payments);
    }
}

/// Re-publishes every message on another bus, and counts it.
struct Bridge(InMemoryBus, Arc<AtomicUsize>);

#[async_trait]
impl MessageHandler for Bridge {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0
            .publish(envelope.clone())
            .await
            .map_err(|e| HandlerError::retryable(e.to_string()))
    }
}

/// Records every envelope it is given.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<Envelope>>,
}

impl Recorder {
    fn about(&self, topic: &str, id: OrderId) -> Vec<Envelope> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.topic == topic && e.correlation_id == id.to_string())
            .cloned()
            .collect()
    }
}

#[async_trait]
impl MessageHandler for Recorder {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        self.seen.lock().unwrap().push(envelope.clone());
        Ok(())
    }
}

/// Orders, inbox and message history in maps; the outbox goes to the bus as the commit
/// is made (all checks pass first, so a failed commit publishes nothing).
struct MapStore {
    bus: InMemoryBus,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    orders: HashMap<OrderId, Order>,
    inbox: HashSet<(String, MessageId)>,
    history: HashMap<OrderId, Vec<MessageRecord>>,
}

impl MapStore {
    fn new(bus: InMemoryBus) -> Self {
        Self {
            bus,
            state: Mutex::default(),
        }
    }
}

#[async_trait]
impl OrderStore for MapStore {
    async fn load(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        Ok(self.state.lock().unwrap().orders.get(&id).cloned())
    }

    async fn is_handled(&self, subscriber: &str, id: MessageId) -> Result<bool, StoreError> {
        let key = (subscriber.to_owned(), id);
        Ok(self.state.lock().unwrap().inbox.contains(&key))
    }

    async fn find_by_idempotency_key(&self, _: &str) -> Result<Option<OrderId>, StoreError> {
        Ok(None)
    }
    async fn due_for_payment(&self, _: Timestamp, _: usize) -> Result<Vec<OrderId>, StoreError> {
        // These tests run no payment deadline worker.
        Ok(Vec::new())
    }

    async fn commit(&self, commit: Commit) -> Result<u64, StoreError> {
        let mut version = 0;
        {
            let mut state = self.state.lock().unwrap();
            if let Some(order) = &commit.order {
                let stored = state.orders.get(&order.id()).map(Order::version);
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
            if let Some(record) = &commit.inbox {
                let key = (record.subscriber.clone(), record.message_id);
                if state.inbox.contains(&key) {
                    return Err(StoreError::DuplicateMessage {
                        subscriber: record.subscriber.clone(),
                        message_id: record.message_id,
                    });
                }
                state.inbox.insert(key);
                state
                    .history
                    .entry(record.order_id)
                    .or_default()
                    .push(MessageRecord {
                        direction: Direction::Received,
                        message_id: record.message_id,
                        topic: record.topic.clone(),
                        outcome: Some(record.outcome.clone()),
                        at: record.handled_at,
                    });
            }
            let order_id = commit
                .order
                .as_ref()
                .map(Order::id)
                .or(commit.inbox.as_ref().map(|r| r.order_id));
            if let Some(order_id) = order_id {
                for envelope in &commit.outbox {
                    state
                        .history
                        .entry(order_id)
                        .or_default()
                        .push(MessageRecord {
                            direction: Direction::Sent,
                            message_id: envelope.message_id,
                            topic: envelope.topic.to_string(),
                            outcome: None,
                            at: envelope.timestamp,
                        });
                }
            }
            if let Some(mut order) = commit.order {
                version = order.version() + 1;
                order.mark_saved(version);
                state.orders.insert(order.id(), order);
            }
        }
        for envelope in commit.outbox {
            self.bus
                .publish(envelope)
                .await
                .map_err(|e| StoreError::unavailable(e.to_string()))?;
        }
        Ok(version)
    }

    async fn messages(&self, id: OrderId) -> Result<Vec<MessageRecord>, StoreError> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .history
            .get(&id)
            .cloned()
            .unwrap_or_default())
    }

    async fn prune(&self, _: Timestamp) -> Result<PruneReport, StoreError> {
        Ok(PruneReport::default())
    }
}
