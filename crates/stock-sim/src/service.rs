//! The running Stock service: the consumer group `stock` on `order.paid`,
//! `order.cancelled` and `order.reservation_refused`, its message handler, and the handle
//! the caller keeps to inspect and stop it.

use std::sync::Arc;

use async_trait::async_trait;
use contracts::{
    OrderCancelled, OrderPaid, OrderReservationRefused, StockReleased, StockReservationFailed,
    StockReserved, topics,
};
use messaging::{
    BusError, Envelope, HandlerError, MessageBus, MessageHandler, Subscription, SubscriptionHandle,
};
use uuid::Uuid;

use crate::{
    Clock, StockConfig, SystemClock,
    ledger::{Ledger, PaidAnswer, ReleaseAnswer},
};

/// The consumer group Stock subscribes as. One subscription covers its three topics, so
/// the messages of one order (one correlation id) reach it in order.
pub const CONSUMER_GROUP: &str = "stock";

/// The simulated Stock context. Start it with [`StockService::start`]; it runs until
/// [`StockHandle::stop`] (or until the handle is dropped).
pub struct StockService {
    /// Where the answers go.
    bus: Arc<dyn MessageBus>,
    /// Shortages, delay and duplication.
    config: StockConfig,
    /// Shared with the handle, which reads the counters.
    ledger: Arc<Ledger>,
    /// When answers happen, and when remembered orders expire.
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for StockService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StockService")
            .field("config", &self.config)
            .field("ledger", &self.ledger)
            .finish_non_exhaustive()
    }
}

impl StockService {
    /// Subscribes the consumer group [`CONSUMER_GROUP`] to `order.paid`,
    /// `order.cancelled` and `order.reservation_refused` on `bus`, and answers on the same
    /// bus.
    ///
    /// # Errors
    /// The bus's [`BusError`] when the subscription fails, e.g.
    /// [`BusError::AlreadySubscribed`] when another Stock is attached to this bus.
    pub async fn start(
        bus: Arc<dyn MessageBus>,
        config: StockConfig,
    ) -> Result<StockHandle, BusError> {
        Self::start_with_clock(bus, config, Arc::new(SystemClock)).await
    }

    /// [`StockService::start`] telling the time by `clock` (tests cross the idempotency
    /// window with a clock of their own, without waiting).
    ///
    /// # Errors
    /// As [`StockService::start`].
    pub async fn start_with_clock(
        bus: Arc<dyn MessageBus>,
        config: StockConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<StockHandle, BusError> {
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
            .topic(topics::ORDER_PAID)
            .topic(topics::ORDER_CANCELLED)
            .topic(topics::ORDER_RESERVATION_REFUSED);
        let subscription = bus.subscribe(subscription, service).await?;
        tracing::info!(subscriber = CONSUMER_GROUP, "stock simulator started");
        Ok(StockHandle {
            ledger,
            clock,
            subscription,
        })
    }

    async fn on_order_paid(
        &self,
        incoming: &Envelope,
        order: &OrderPaid,
    ) -> Result<(), HandlerError> {
        match self.ledger.on_paid(order, &self.config, self.clock.now()) {
            PaidAnswer::Reserve { message, first } => {
                tracing::info!(order_id = %message.order_id, reservation_id = %message.reservation_id,
                    items = message.items.len(), decision = "reserved", repeated = !first,
                    "stock reserved");
                self.send(incoming, &Reply::Reserved(message)).await
            }
            PaidAnswer::Fail { message, first } => {
                tracing::info!(order_id = %message.order_id, reason = %message.reason,
                    decision = "reservation_failed", repeated = !first, "stock reservation failed");
                self.send(incoming, &Reply::ReservationFailed(message))
                    .await
            }
            PaidAnswer::AlreadyReleased { reservation_id } => {
                tracing::info!(order_id = %order.order_id, reservation_id = %reservation_id,
                    decision = "ignored", "order.paid again for a released reservation: nothing to do");
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
        if let ReleaseAnswer::Release { message, .. } = &answer
            && let Some(theirs) = cancelled
                .reservation_id
                .as_deref()
                .filter(|theirs| *theirs != message.reservation_id)
        {
            tracing::warn!(order_id = %message.order_id, their_reservation_id = %theirs,
                reservation_id = %message.reservation_id,
                "order.cancelled names a reservation Stock does not know: releasing its own");
        }
        match answer {
            ReleaseAnswer::Release { message, first } => {
                tracing::info!(order_id = %message.order_id, reservation_id = %message.reservation_id,
                    previous_status = %cancelled.previous_status,
                    decision = "released", repeated = !first, "stock released");
                self.announce_release(incoming, message).await
            }
            ReleaseAnswer::AlreadyReleased { reservation_id } => {
                tracing::info!(order_id = %cancelled.order_id, reservation_id = %reservation_id,
                    decision = "ignored", "order.cancelled again: released already");
                Ok(())
            }
            ReleaseAnswer::NothingReserved | ReleaseAnswer::NotOurs { .. } => {
                match &cancelled.reservation_id {
                    Some(theirs) => tracing::warn!(order_id = %cancelled.order_id,
                        their_reservation_id = %theirs, decision = "ignored",
                        "order.cancelled names a reservation Stock never made: nothing to release"),
                    None => tracing::info!(order_id = %cancelled.order_id, decision = "ignored",
                        previous_status = %cancelled.previous_status,
                        "order cancelled before stock was reserved: nothing to release"),
                }
                Ok(())
            }
        }
    }

    /// Orders refused a reservation (one for a cancelled order, a second one for a
    /// reserved order): release it, at most once.
    async fn on_reservation_refused(
        &self,
        incoming: &Envelope,
        refused: &OrderReservationRefused,
    ) -> Result<(), HandlerError> {
        match self.ledger.on_refused(refused, self.clock.now()) {
            ReleaseAnswer::Release { message, first } => {
                tracing::info!(order_id = %message.order_id, reservation_id = %message.reservation_id,
                    refusal = %refused.reason, decision = "released", repeated = !first,
                    "reservation refused by Orders: released");
                self.announce_release(incoming, message).await
            }
            ReleaseAnswer::AlreadyReleased { reservation_id } => {
                tracing::info!(order_id = %refused.order_id, reservation_id = %reservation_id,
                    decision = "ignored", "order.reservation_refused: released already");
                Ok(())
            }
            ReleaseAnswer::NotOurs { ours } => {
                tracing::warn!(order_id = %refused.order_id,
                    their_reservation_id = %refused.reservation_id, reservation_id = %ours,
                    decision = "ignored",
                    "order.reservation_refused names another reservation than Stock made: nothing to release");
                Ok(())
            }
            ReleaseAnswer::NothingReserved => {
                tracing::warn!(order_id = %refused.order_id,
                    their_reservation_id = %refused.reservation_id, decision = "ignored",
                    "order.reservation_refused names a reservation Stock never made: nothing to release");
                Ok(())
            }
        }
    }

    /// Publishes the release, then notes that it reached the bus (until then a repeated
    /// request re-sends the same release, never a second one).
    async fn announce_release(
        &self,
        incoming: &Envelope,
        message: StockReleased,
    ) -> Result<(), HandlerError> {
        let order_id = message.order_id;
        self.send(incoming, &Reply::Released(message)).await?;
        self.ledger.release_announced(order_id);
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
impl MessageHandler for StockService {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        match envelope.topic.as_ref() {
            topics::ORDER_PAID => {
                let order: OrderPaid = envelope.decode()?;
                self.simulate_processing().await;
                self.on_order_paid(envelope, &order).await
            }
            topics::ORDER_CANCELLED => {
                let cancelled: OrderCancelled = envelope.decode()?;
                self.simulate_processing().await;
                self.on_order_cancelled(envelope, &cancelled).await
            }
            topics::ORDER_RESERVATION_REFUSED => {
                let refused: OrderReservationRefused = envelope.decode()?;
                self.simulate_processing().await;
                self.on_reservation_refused(envelope, &refused).await
            }
            other => Err(HandlerError::permanent(format!(
                "stock does not handle topic {other}"
            ))),
        }
    }
}

/// An answer of Stock, ready to wrap.
enum Reply {
    Reserved(StockReserved),
    ReservationFailed(StockReservationFailed),
    Released(StockReleased),
}

impl Reply {
    fn topic(&self) -> &'static str {
        match self {
            Self::Reserved(_) => topics::STOCK_RESERVED,
            Self::ReservationFailed(_) => topics::STOCK_RESERVATION_FAILED,
            Self::Released(_) => topics::STOCK_RELEASED,
        }
    }

    /// A new envelope (fresh `messageId`) around the payload, caused by `incoming`.
    fn envelope(
        &self,
        incoming: &Envelope,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Envelope, HandlerError> {
        match self {
            Self::Reserved(payload) => incoming.reply(self.topic(), now, payload),
            Self::ReservationFailed(payload) => incoming.reply(self.topic(), now, payload),
            Self::Released(payload) => incoming.reply(self.topic(), now, payload),
        }
        .map_err(|e| HandlerError::permanent(format!("cannot encode {}: {e}", self.topic())))
    }
}

/// The caller's handle on a running Stock: counters for tests and demos, and
/// [`StockHandle::stop`]. Dropping it also stops the subscription.
pub struct StockHandle {
    ledger: Arc<Ledger>,
    clock: Arc<dyn Clock>,
    subscription: SubscriptionHandle,
}

impl std::fmt::Debug for StockHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StockHandle")
            .field("ledger", &self.ledger)
            .field("subscription", &self.subscription)
            .finish_non_exhaustive()
    }
}

impl StockHandle {
    /// Orders reserved so far (each order once, however often it was asked about).
    #[must_use]
    pub fn reserved_count(&self) -> usize {
        self.ledger.reserved_count()
    }

    /// Orders that could not be reserved so far (each order once).
    #[must_use]
    pub fn failed_count(&self) -> usize {
        self.ledger.failed_count()
    }

    /// Reservations released so far (each reservation at most once).
    #[must_use]
    pub fn released_count(&self) -> usize {
        self.ledger.released_count()
    }

    /// Releases done for `order_id`: 0 or 1.
    #[must_use]
    pub fn releases_for(&self, order_id: Uuid) -> usize {
        self.ledger.releases_for(order_id)
    }

    /// The reservations Stock made for `order_id` less the releases it did for it: 1
    /// while held, 0 when never reserved or reserved and released, -1 when it released a
    /// reservation of the order that another Stock process (or this one before a restart)
    /// made (so the sum over every instance is what the order still holds).
    #[must_use]
    pub fn net_reservations_for(&self, order_id: Uuid) -> i64 {
        self.ledger.net_reservations_for(order_id)
    }

    /// The `reservationId` Stock made for `order_id`, if this process made one.
    #[must_use]
    pub fn reservation_for(&self, order_id: Uuid) -> Option<String> {
        self.ledger.reservation_for(order_id)
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
    /// with the group `stock` for a Stock that starts again on the same bus.
    pub async fn stop(self) {
        self.subscription.unsubscribe().await;
        tracing::info!(subscriber = CONSUMER_GROUP, "stock simulator stopped");
    }
}
