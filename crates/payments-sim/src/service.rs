//! The running Payments service: the consumer group `payments` on `order.placed`,
//! `order.cancelled` and `order.payment_refused`, its message handler, and the handle the caller keeps to inspect and
//! stop it.

use std::sync::Arc;

use async_trait::async_trait;
use contracts::{
    OrderCancelled, OrderPaymentRefused, OrderPlaced, PaymentApproved, PaymentDeclined,
    PaymentRefunded, topics,
};
use messaging::{
    BusError, Envelope, HandlerError, MessageBus, MessageHandler, Subscription, SubscriptionHandle,
};
use uuid::Uuid;

use crate::{
    Clock, PaymentsConfig, SystemClock,
    ledger::{Ledger, PlacedAnswer, RefundAnswer},
};

/// The consumer group Payments subscribes as. One subscription covers its three topics,
/// so the messages of one order (one correlation id) reach it in order.
pub const CONSUMER_GROUP: &str = "payments";

/// The simulated Payments context. Start it with [`PaymentsService::start`]; it runs until
/// [`PaymentsHandle::stop`] (or until the handle is dropped).
pub struct PaymentsService {
    /// Where the answers go.
    bus: Arc<dyn MessageBus>,
    /// Decision, delay and duplication.
    config: PaymentsConfig,
    /// Shared with the handle, which reads the counters.
    ledger: Arc<Ledger>,
    /// When answers happen, and when remembered orders expire.
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for PaymentsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentsService")
            .field("config", &self.config)
            .field("ledger", &self.ledger)
            .finish_non_exhaustive()
    }
}

impl PaymentsService {
    /// Subscribes the consumer group [`CONSUMER_GROUP`] to `order.placed`,
    /// `order.cancelled` and `order.payment_refused` on `bus`, and answers on the same
    /// bus.
    ///
    /// # Errors
    /// The bus's [`BusError`] when the subscription fails, e.g.
    /// [`BusError::AlreadySubscribed`] when another Payments is attached to this bus.
    pub async fn start(
        bus: Arc<dyn MessageBus>,
        config: PaymentsConfig,
    ) -> Result<PaymentsHandle, BusError> {
        Self::start_with_clock(bus, config, Arc::new(SystemClock)).await
    }

    /// [`PaymentsService::start`] telling the time by `clock` (tests cross the
    /// idempotency window with a clock of their own, without waiting).
    ///
    /// # Errors
    /// As [`PaymentsService::start`].
    pub async fn start_with_clock(
        bus: Arc<dyn MessageBus>,
        config: PaymentsConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<PaymentsHandle, BusError> {
        let concurrency = config.lanes_in_effect();
        let ledger = Arc::new(Ledger::new(config.idempotency_window));
        let service = Arc::new(Self {
            bus: bus.clone(),
            config,
            ledger: ledger.clone(),
            clock: clock.clone(),
        });
        let subscription = Subscription::new(CONSUMER_GROUP)
            .concurrency(concurrency)
            .topic(topics::ORDER_PLACED)
            .topic(topics::ORDER_CANCELLED)
            .topic(topics::ORDER_PAYMENT_REFUSED);
        let subscription = bus.subscribe(subscription, service).await?;
        tracing::info!(subscriber = CONSUMER_GROUP, "payments simulator started");
        Ok(PaymentsHandle {
            ledger,
            clock,
            subscription,
        })
    }

    async fn on_order_placed(
        &self,
        incoming: &Envelope,
        order: &OrderPlaced,
    ) -> Result<(), HandlerError> {
        match self
            .ledger
            .on_placed(order, &self.config.decision, self.clock.now())
        {
            PlacedAnswer::Approve { message, first } => {
                tracing::info!(order_id = %message.order_id, payment_id = %message.payment_id,
                    amount = %message.approved_amount, currency = %message.currency,
                    decision = "approved", repeated = !first, "payment approved");
                self.send(incoming, &Reply::Approved(message)).await
            }
            PlacedAnswer::Decline { message, first } => {
                tracing::info!(order_id = %message.order_id, reason = %message.reason,
                    decision = "declined", repeated = !first, "payment declined");
                self.send(incoming, &Reply::Declined(message)).await
            }
            PlacedAnswer::AlreadyRefunded { payment_id } => {
                tracing::info!(order_id = %order.order_id, payment_id = %payment_id,
                    decision = "ignored", "order.placed again for a refunded payment: nothing to do");
                Ok(())
            }
        }
    }

    async fn on_order_cancelled(
        &self,
        incoming: &Envelope,
        cancelled: &OrderCancelled,
    ) -> Result<(), HandlerError> {
        let answer = self.ledger.on_cancelled(cancelled, self.clock.now());
        if let RefundAnswer::Refund { message, .. } = &answer
            && let Some(theirs) = cancelled
                .payment_id
                .as_deref()
                .filter(|theirs| *theirs != message.payment_id)
        {
            tracing::warn!(order_id = %message.order_id, their_payment_id = %theirs,
                payment_id = %message.payment_id,
                "order.cancelled names a payment Payments does not know: refunding its own");
        }
        match answer {
            RefundAnswer::Refund { message, first } => {
                tracing::info!(order_id = %message.order_id, payment_id = %message.payment_id,
                    amount = %message.amount, currency = %message.currency,
                    previous_status = %cancelled.previous_status,
                    decision = "refunded", repeated = !first, "payment refunded");
                self.announce_refund(incoming, message).await
            }
            RefundAnswer::AlreadyRefunded { payment_id } => {
                tracing::info!(order_id = %cancelled.order_id, payment_id = %payment_id,
                    decision = "ignored", "order.cancelled again: refunded already");
                Ok(())
            }
            RefundAnswer::NothingCharged | RefundAnswer::NotOurs { .. } => {
                match &cancelled.payment_id {
                    Some(theirs) => tracing::warn!(order_id = %cancelled.order_id,
                        their_payment_id = %theirs, decision = "ignored",
                        "order.cancelled names a payment Payments never approved: nothing to refund"),
                    None => tracing::info!(order_id = %cancelled.order_id, decision = "ignored",
                        previous_status = %cancelled.previous_status,
                        "order cancelled before it was charged: nothing to refund"),
                }
                Ok(())
            }
        }
    }

    /// Orders refused a payment (a second payment of a paid order, an approval of a
    /// cancelled one, a wrong amount): refund it, at most once.
    async fn on_payment_refused(
        &self,
        incoming: &Envelope,
        refused: &OrderPaymentRefused,
    ) -> Result<(), HandlerError> {
        match self.ledger.on_refused(refused, self.clock.now()) {
            RefundAnswer::Refund { message, first } => {
                tracing::info!(order_id = %message.order_id, payment_id = %message.payment_id,
                    amount = %message.amount, currency = %message.currency,
                    refusal = %refused.reason, decision = "refunded", repeated = !first,
                    "payment refused by Orders: refunded");
                self.announce_refund(incoming, message).await
            }
            RefundAnswer::AlreadyRefunded { payment_id } => {
                tracing::info!(order_id = %refused.order_id, payment_id = %payment_id,
                    decision = "ignored", "order.payment_refused: refunded already");
                Ok(())
            }
            RefundAnswer::NotOurs { ours } => {
                tracing::warn!(order_id = %refused.order_id, their_payment_id = %refused.payment_id,
                    payment_id = %ours, decision = "ignored",
                    "order.payment_refused names another payment than Payments made: nothing to refund");
                Ok(())
            }
            RefundAnswer::NothingCharged => {
                tracing::warn!(order_id = %refused.order_id, their_payment_id = %refused.payment_id,
                    decision = "ignored",
                    "order.payment_refused names a payment Payments never made: nothing to refund");
                Ok(())
            }
        }
    }

    /// Publishes the refund, then notes that it reached the bus (until then a repeated
    /// request re-sends the same refund, never a second one).
    async fn announce_refund(
        &self,
        incoming: &Envelope,
        message: PaymentRefunded,
    ) -> Result<(), HandlerError> {
        let order_id = message.order_id;
        self.send(incoming, &Reply::Refunded(message)).await?;
        self.ledger.refund_announced(order_id);
        Ok(())
    }

    /// Takes the configured processing time (decoding comes first, so a bad payload
    /// fails at once). On async-io's timer, which wakes within a few microseconds of the
    /// deadline: tokio's rounds up to its next millisecond tick and its poll timeout up
    /// to the next millisecond again, which adds about a millisecond per hop.
    async fn simulate_processing(&self) {
        if !self.config.delay.is_zero() {
            async_io::Timer::after(self.config.delay).await;
        }
    }

    /// Publishes `reply` as a reaction to `incoming`, twice when configured so (two
    /// envelopes, one payload).
    async fn send(&self, incoming: &Envelope, reply: &Reply) -> Result<(), HandlerError> {
        let copies = if self.config.duplicate_replies { 2 } else { 1 };
        for _ in 0..copies {
            let envelope = reply.envelope(incoming, self.clock.now())?;
            self.bus.publish(envelope).await.map_err(|e| {
                HandlerError::retryable(format!("cannot publish {}: {e}", reply.topic()))
            })?;
        }
        Ok(())
    }
}

#[async_trait]
impl MessageHandler for PaymentsService {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        match envelope.topic.as_ref() {
            topics::ORDER_PLACED => {
                let order: OrderPlaced = envelope.decode()?;
                self.simulate_processing().await;
                self.on_order_placed(envelope, &order).await
            }
            topics::ORDER_CANCELLED => {
                let cancelled: OrderCancelled = envelope.decode()?;
                self.simulate_processing().await;
                self.on_order_cancelled(envelope, &cancelled).await
            }
            topics::ORDER_PAYMENT_REFUSED => {
                let refused: OrderPaymentRefused = envelope.decode()?;
                self.simulate_processing().await;
                self.on_payment_refused(envelope, &refused).await
            }
            other => Err(HandlerError::permanent(format!(
                "payments does not handle topic {other}"
            ))),
        }
    }
}

/// An answer of Payments, ready to wrap.
enum Reply {
    Approved(PaymentApproved),
    Declined(PaymentDeclined),
    Refunded(PaymentRefunded),
}

impl Reply {
    fn topic(&self) -> &'static str {
        match self {
            Self::Approved(_) => topics::PAYMENT_APPROVED,
            Self::Declined(_) => topics::PAYMENT_DECLINED,
            Self::Refunded(_) => topics::PAYMENT_REFUNDED,
        }
    }

    /// A new envelope (fresh `messageId`) around the payload, caused by `incoming`.
    fn envelope(
        &self,
        incoming: &Envelope,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Envelope, HandlerError> {
        match self {
            Self::Approved(payload) => incoming.reply(self.topic(), now, payload),
            Self::Declined(payload) => incoming.reply(self.topic(), now, payload),
            Self::Refunded(payload) => incoming.reply(self.topic(), now, payload),
        }
        .map_err(|e| HandlerError::permanent(format!("cannot encode {}: {e}", self.topic())))
    }
}

/// The caller's handle on a running Payments: counters for tests and demos, and
/// [`PaymentsHandle::stop`]. Dropping it also stops the subscription.
pub struct PaymentsHandle {
    ledger: Arc<Ledger>,
    clock: Arc<dyn Clock>,
    subscription: SubscriptionHandle,
}

impl std::fmt::Debug for PaymentsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentsHandle")
            .field("ledger", &self.ledger)
            .field("subscription", &self.subscription)
            .finish_non_exhaustive()
    }
}

impl PaymentsHandle {
    /// Orders charged so far (each order once, however often it was asked about).
    #[must_use]
    pub fn approved_count(&self) -> usize {
        self.ledger.approved_count()
    }

    /// Orders declined so far (each order once).
    #[must_use]
    pub fn declined_count(&self) -> usize {
        self.ledger.declined_count()
    }

    /// Payments refunded so far (each payment at most once).
    #[must_use]
    pub fn refunded_count(&self) -> usize {
        self.ledger.refunded_count()
    }

    /// Refunds issued for `order_id`: 0 or 1.
    #[must_use]
    pub fn refunds_for(&self, order_id: Uuid) -> usize {
        self.ledger.refunds_for(order_id)
    }

    /// The charges Payments made for `order_id` less the refunds it issued for it: 1
    /// while charged, 0 when never charged or charged and refunded, -1 when it refunded a
    /// payment of the order that another Payments process charged (so the sum over every
    /// instance is the order's net charge).
    #[must_use]
    pub fn net_charges_for(&self, order_id: Uuid) -> i64 {
        self.ledger.net_charges_for(order_id)
    }

    /// The `paymentId` Payments approved for `order_id`, if it approved one.
    #[must_use]
    pub fn payment_for(&self, order_id: Uuid) -> Option<String> {
        self.ledger.payment_for(order_id)
    }

    /// Orders remembered right now: those asked about within the idempotency window
    /// (and expired ones not swept yet).
    #[must_use]
    pub fn remembered_orders(&self) -> usize {
        self.ledger.remembered()
    }

    /// Orders forgotten so far because they were not asked about for the window.
    #[must_use]
    pub fn forgotten_count(&self) -> usize {
        self.ledger.forgotten_count()
    }

    /// Forgets now every order not asked about for the idempotency window, and returns
    /// how many. Handling messages does this as it goes, a shard or two per message; this
    /// sweeps them all.
    pub fn prune(&self) -> usize {
        self.ledger.prune(self.clock.now())
    }

    /// Unsubscribes, after the message in hand is answered. Messages still queued stay
    /// with the group `payments` for a Payments that starts again on the same bus.
    pub async fn stop(self) {
        self.subscription.unsubscribe().await;
        tracing::info!(subscriber = CONSUMER_GROUP, "payments simulator stopped");
    }
}
