//! The Order aggregate: guards every transition, then records an event and changes state.
//!
//! Each command method either returns a typed [`OrderError`] and leaves the order
//! untouched, or returns a [`Transition`]: `Applied` (state changed, one event recorded)
//! or `AlreadyApplied` (an idempotent repeat; nothing changed, nothing recorded).
//!
//! One noun, kept in one file on purpose (about 600 lines): every transition and the
//! guards it shares with the others read together as the state machine of
//! docs/design.md; its tests live in `order/tests.rs`.

use std::{collections::HashMap, fmt, str::FromStr};

use crate::{
    CancellationReason, CustomerId, DomainEvent, EventId, IdempotencyWindow, Money, OrderCancelled,
    OrderError, OrderId, OrderItem, OrderPaid, OrderPlaced, PaymentId, ReservationId,
    ShippingAddress, Timestamp, ValidationError,
};

/// Where an order is in its life. Names match the wire and the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    /// Placed, waiting for Payments.
    AwaitingPayment,
    /// Paid, waiting for Stock.
    Paid,
    /// Paid and stock reserved: the happy end.
    StockReserved,
    /// Cancelled: final.
    Cancelled,
}

impl OrderStatus {
    /// The wire name, e.g. `AwaitingPayment`.
    #[must_use]
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::AwaitingPayment => "AwaitingPayment",
            Self::Paid => "Paid",
            Self::StockReserved => "StockReserved",
            Self::Cancelled => "Cancelled",
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrderStatus {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "AwaitingPayment" => Ok(Self::AwaitingPayment),
            "Paid" => Ok(Self::Paid),
            "StockReserved" => Ok(Self::StockReserved),
            "Cancelled" => Ok(Self::Cancelled),
            _ => Err(ValidationError::new("status", "unknown order status")),
        }
    }
}

/// The actions an order can be asked to take; used in [`OrderError::InvalidTransition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Apply an approved payment.
    ConfirmPayment,
    /// Apply a stock reservation.
    ConfirmStockReservation,
    /// Cancel on request.
    Cancel,
    /// Cancel because Payments declined.
    DeclinePayment,
    /// Cancel because Stock could not reserve.
    FailStockReservation,
    /// Cancel because the payment deadline passed.
    ExpirePayment,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ConfirmPayment => "confirm payment of",
            Self::ConfirmStockReservation => "confirm stock reservation of",
            Self::Cancel => "cancel",
            Self::DeclinePayment => "decline payment of",
            Self::FailStockReservation => "fail stock reservation of",
            Self::ExpirePayment => "expire the payment deadline of",
        })
    }
}

/// The outcome of an accepted command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "an applied transition recorded events that must be stored"]
pub enum Transition {
    /// The state changed and one event was recorded.
    Applied,
    /// An idempotent repeat: nothing changed, nothing recorded.
    AlreadyApplied,
}

/// Every field of an order, for storing and rebuilding it. Not a way to bypass the guards:
/// only adapters that load what they stored use [`Order::rehydrate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderSnapshot {
    /// The id.
    pub id: OrderId,
    /// The customer.
    pub customer_id: CustomerId,
    /// The lines.
    pub items: Vec<OrderItem>,
    /// The shipping address.
    pub shipping_address: ShippingAddress,
    /// The total.
    pub total: Money,
    /// The status.
    pub status: OrderStatus,
    /// The payment, once paid.
    pub payment_id: Option<PaymentId>,
    /// The reservation, once reserved.
    pub reservation_id: Option<ReservationId>,
    /// Why it was cancelled, once cancelled.
    pub cancellation_reason: Option<CancellationReason>,
    /// The number of committed changes (0 before the first save).
    pub version: u64,
    /// The number of events ever recorded; seeds deterministic event ids.
    pub event_count: u64,
    /// When it was placed.
    pub placed_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// When it is cancelled if still unpaid; `None` for an order placed without a
    /// deadline (before deadlines existed): it waits for Payments indefinitely.
    pub payment_due_at: Option<Timestamp>,
    /// Payment ids already processed, with when.
    pub processed_payments: Vec<(PaymentId, Timestamp)>,
    /// Reservation ids already processed, with when.
    pub processed_reservations: Vec<(ReservationId, Timestamp)>,
}

/// The Order aggregate root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    id: OrderId,
    customer_id: CustomerId,
    items: Vec<OrderItem>,
    shipping_address: ShippingAddress,
    total: Money,
    status: OrderStatus,
    payment_id: Option<PaymentId>,
    reservation_id: Option<ReservationId>,
    cancellation_reason: Option<CancellationReason>,
    /// Optimistic-concurrency version as loaded; the store writes `version + 1`.
    version: u64,
    /// Events ever recorded (committed or pending): the next event id is derived from it.
    event_count: u64,
    placed_at: Timestamp,
    updated_at: Timestamp,
    /// When it is cancelled if still AwaitingPayment (`None`: never).
    payment_due_at: Option<Timestamp>,
    /// Why a map: O(1) look-up of "did I already apply this payment?", with the time it
    /// was applied so that entries past the idempotency window can be pruned.
    processed_payments: HashMap<PaymentId, Timestamp>,
    /// Same as `processed_payments`, for reservations.
    processed_reservations: HashMap<ReservationId, Timestamp>,
    /// Events recorded since the order was loaded, to be stored with it (outbox).
    pending_events: Vec<DomainEvent>,
}

impl Order {
    /// Places a new order (checkout). Records [`OrderPlaced`].
    ///
    /// # Errors
    /// [`OrderError::NoItems`], [`OrderError::MixedCurrencies`] or
    /// [`OrderError::TotalOverflow`].
    pub fn place(
        id: OrderId,
        customer_id: CustomerId,
        items: Vec<OrderItem>,
        shipping_address: ShippingAddress,
        now: Timestamp,
    ) -> Result<Self, OrderError> {
        let first = items.first().ok_or(OrderError::NoItems)?;
        let currency = first.unit_price().currency();
        let mut total = Money::zero(currency);
        for item in &items {
            let price = item.unit_price();
            if price.currency() != currency {
                return Err(OrderError::MixedCurrencies {
                    first: currency,
                    other: price.currency(),
                });
            }
            let line = item.line_total().ok_or(OrderError::TotalOverflow)?;
            total = total.checked_add(&line).ok_or(OrderError::TotalOverflow)?;
        }
        let mut order = Self {
            id,
            customer_id,
            items,
            shipping_address,
            total,
            status: OrderStatus::AwaitingPayment,
            payment_id: None,
            reservation_id: None,
            cancellation_reason: None,
            version: 0,
            event_count: 0,
            placed_at: now,
            updated_at: now,
            payment_due_at: None,
            processed_payments: HashMap::new(),
            processed_reservations: HashMap::new(),
            pending_events: Vec::new(),
        };
        let event_id = order.next_event_id();
        order
            .pending_events
            .push(DomainEvent::OrderPlaced(OrderPlaced {
                event_id,
                order_id: id,
                customer_id: order.customer_id.clone(),
                items: order.items.clone(),
                total,
                shipping_address: order.shipping_address.clone(),
                occurred_at: now,
            }));
        Ok(order)
    }

    /// Gives a newly placed order its payment deadline: if it is still AwaitingPayment
    /// at `due_at`, [`Order::expire_payment`] cancels it. Records no event.
    #[must_use]
    pub fn with_payment_deadline(mut self, due_at: Timestamp) -> Self {
        self.payment_due_at = Some(due_at);
        self
    }

    /// Applies an approved payment: AwaitingPayment → Paid, recording [`OrderPaid`].
    /// A payment id already processed is a no-op in every state.
    ///
    /// # Errors
    /// [`OrderError::AmountMismatch`] when the approved money differs from the total,
    /// [`OrderError::SecondPayment`] when already paid with another payment,
    /// [`OrderError::InvalidTransition`] when cancelled.
    pub fn confirm_payment(
        &mut self,
        payment_id: PaymentId,
        approved: Money,
        now: Timestamp,
    ) -> Result<Transition, OrderError> {
        if self.processed_payments.contains_key(&payment_id)
            || self.payment_id.as_ref() == Some(&payment_id)
        {
            return Ok(Transition::AlreadyApplied);
        }
        match self.status {
            OrderStatus::AwaitingPayment => {}
            OrderStatus::Paid | OrderStatus::StockReserved => {
                return Err(OrderError::SecondPayment {
                    existing: self
                        .payment_id
                        .clone()
                        .unwrap_or_else(|| payment_id.clone()),
                    attempted: payment_id,
                });
            }
            OrderStatus::Cancelled => return Err(self.invalid(Action::ConfirmPayment)),
        }
        if approved != self.total {
            return Err(OrderError::AmountMismatch {
                expected: self.total,
                approved,
            });
        }
        self.processed_payments.insert(payment_id.clone(), now);
        self.payment_id = Some(payment_id.clone());
        self.status = OrderStatus::Paid;
        self.updated_at = now;
        let event_id = self.next_event_id();
        self.pending_events.push(DomainEvent::OrderPaid(OrderPaid {
            event_id,
            order_id: self.id,
            payment_id,
            amount: approved,
            items: self.items.clone(),
            occurred_at: now,
        }));
        Ok(Transition::Applied)
    }

    /// Applies a stock reservation: Paid → StockReserved. Records no integration event
    /// (nothing downstream needs it). A reservation id already processed is a no-op.
    ///
    /// # Errors
    /// [`OrderError::InvalidTransition`] unless Paid, [`OrderError::SecondReservation`]
    /// when another reservation is already held.
    pub fn confirm_stock_reservation(
        &mut self,
        reservation_id: ReservationId,
        now: Timestamp,
    ) -> Result<Transition, OrderError> {
        if self.processed_reservations.contains_key(&reservation_id)
            || self.reservation_id.as_ref() == Some(&reservation_id)
        {
            return Ok(Transition::AlreadyApplied);
        }
        match self.status {
            OrderStatus::Paid => {}
            OrderStatus::StockReserved => {
                return Err(OrderError::SecondReservation {
                    existing: self
                        .reservation_id
                        .clone()
                        .unwrap_or_else(|| reservation_id.clone()),
                    attempted: reservation_id,
                });
            }
            OrderStatus::AwaitingPayment | OrderStatus::Cancelled => {
                return Err(self.invalid(Action::ConfirmStockReservation));
            }
        }
        self.processed_reservations
            .insert(reservation_id.clone(), now);
        self.reservation_id = Some(reservation_id);
        self.status = OrderStatus::StockReserved;
        self.updated_at = now;
        Ok(Transition::Applied)
    }

    /// Cancels on request, from any state but Cancelled. Records [`OrderCancelled`] with
    /// the payment to refund and the reservation to release.
    ///
    /// # Errors
    /// [`OrderError::AlreadyCancelled`]: cancelling twice is rejected, so a client learns
    /// that its request changed nothing.
    pub fn cancel(
        &mut self,
        reason: CancellationReason,
        now: Timestamp,
    ) -> Result<Transition, OrderError> {
        if self.status == OrderStatus::Cancelled {
            return Err(OrderError::AlreadyCancelled);
        }
        self.record_cancellation(reason, now);
        Ok(Transition::Applied)
    }

    /// Payments declined: AwaitingPayment → Cancelled. A no-op when already cancelled.
    ///
    /// # Errors
    /// [`OrderError::InvalidTransition`] when Paid or StockReserved.
    pub fn decline_payment(
        &mut self,
        reason: CancellationReason,
        now: Timestamp,
    ) -> Result<Transition, OrderError> {
        match self.status {
            OrderStatus::AwaitingPayment => {
                self.record_cancellation(reason, now);
                Ok(Transition::Applied)
            }
            OrderStatus::Cancelled => Ok(Transition::AlreadyApplied),
            OrderStatus::Paid | OrderStatus::StockReserved => {
                Err(self.invalid(Action::DeclinePayment))
            }
        }
    }

    /// Stock could not reserve: Paid → Cancelled, so Payments refunds. A no-op when
    /// already cancelled.
    ///
    /// # Errors
    /// [`OrderError::InvalidTransition`] when AwaitingPayment or StockReserved.
    pub fn fail_stock_reservation(
        &mut self,
        reason: CancellationReason,
        now: Timestamp,
    ) -> Result<Transition, OrderError> {
        match self.status {
            OrderStatus::Paid => {
                self.record_cancellation(reason, now);
                Ok(Transition::Applied)
            }
            OrderStatus::Cancelled => Ok(Transition::AlreadyApplied),
            OrderStatus::AwaitingPayment | OrderStatus::StockReserved => {
                Err(self.invalid(Action::FailStockReservation))
            }
        }
    }

    /// The payment deadline passed: AwaitingPayment → Cancelled with reason
    /// [`CancellationReason::PAYMENT_TIMEOUT`], recording [`OrderCancelled`] (so a late
    /// approval is refused and refunded). A no-op when already cancelled.
    ///
    /// # Errors
    /// [`OrderError::PaymentNotDue`] when AwaitingPayment but the deadline is later than
    /// `now` or there is none; [`OrderError::InvalidTransition`] when Paid or
    /// StockReserved (the payment came in time).
    pub fn expire_payment(&mut self, now: Timestamp) -> Result<Transition, OrderError> {
        match self.status {
            OrderStatus::AwaitingPayment => match self.payment_due_at {
                Some(due_at) if due_at <= now => {
                    self.record_cancellation(CancellationReason::payment_timeout(), now);
                    Ok(Transition::Applied)
                }
                _ => Err(OrderError::PaymentNotDue),
            },
            OrderStatus::Cancelled => Ok(Transition::AlreadyApplied),
            OrderStatus::Paid | OrderStatus::StockReserved => {
                Err(self.invalid(Action::ExpirePayment))
            }
        }
    }

    /// Forgets processed payment and reservation ids older than `window`. The current
    /// payment and reservation stay recorded on the order itself, so a very late repeat
    /// is still refused as a second payment, never applied.
    pub fn prune_processed_ids(&mut self, now: Timestamp, window: IdempotencyWindow) {
        let horizon = now - window;
        self.processed_payments.retain(|_, at| *at > horizon);
        self.processed_reservations.retain(|_, at| *at > horizon);
    }

    /// Takes the events recorded since load, leaving none pending.
    #[must_use = "taken events must be stored in the outbox"]
    pub fn take_events(&mut self) -> Vec<DomainEvent> {
        std::mem::take(&mut self.pending_events)
    }

    /// The events recorded since load.
    #[must_use]
    pub fn pending_events(&self) -> &[DomainEvent] {
        &self.pending_events
    }

    /// Every field, for storing.
    #[must_use]
    pub fn snapshot(&self) -> OrderSnapshot {
        OrderSnapshot {
            id: self.id,
            customer_id: self.customer_id.clone(),
            items: self.items.clone(),
            shipping_address: self.shipping_address.clone(),
            total: self.total,
            status: self.status,
            payment_id: self.payment_id.clone(),
            reservation_id: self.reservation_id.clone(),
            cancellation_reason: self.cancellation_reason.clone(),
            version: self.version,
            event_count: self.event_count,
            placed_at: self.placed_at,
            updated_at: self.updated_at,
            payment_due_at: self.payment_due_at,
            processed_payments: self
                .processed_payments
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            processed_reservations: self
                .processed_reservations
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        }
    }

    /// Rebuilds an order from what a store saved; records no events.
    #[must_use]
    pub fn rehydrate(snapshot: OrderSnapshot) -> Self {
        Self {
            id: snapshot.id,
            customer_id: snapshot.customer_id,
            items: snapshot.items,
            shipping_address: snapshot.shipping_address,
            total: snapshot.total,
            status: snapshot.status,
            payment_id: snapshot.payment_id,
            reservation_id: snapshot.reservation_id,
            cancellation_reason: snapshot.cancellation_reason,
            version: snapshot.version,
            event_count: snapshot.event_count,
            placed_at: snapshot.placed_at,
            updated_at: snapshot.updated_at,
            payment_due_at: snapshot.payment_due_at,
            processed_payments: snapshot.processed_payments.into_iter().collect(),
            processed_reservations: snapshot.processed_reservations.into_iter().collect(),
            pending_events: Vec::new(),
        }
    }

    /// Sets the version after a successful save (called by stores only).
    pub fn mark_saved(&mut self, version: u64) {
        self.version = version;
    }

    /// The id.
    #[must_use]
    pub const fn id(&self) -> OrderId {
        self.id
    }
    /// The customer.
    #[must_use]
    pub const fn customer_id(&self) -> &CustomerId {
        &self.customer_id
    }
    /// The lines.
    #[must_use]
    pub fn items(&self) -> &[OrderItem] {
        &self.items
    }
    /// The shipping address.
    #[must_use]
    pub const fn shipping_address(&self) -> &ShippingAddress {
        &self.shipping_address
    }
    /// The total.
    #[must_use]
    pub const fn total(&self) -> Money {
        self.total
    }
    /// The status.
    #[must_use]
    pub const fn status(&self) -> OrderStatus {
        self.status
    }
    /// The payment, once paid.
    #[must_use]
    pub const fn payment_id(&self) -> Option<&PaymentId> {
        self.payment_id.as_ref()
    }
    /// The reservation, once reserved.
    #[must_use]
    pub const fn reservation_id(&self) -> Option<&ReservationId> {
        self.reservation_id.as_ref()
    }
    /// Why it was cancelled.
    #[must_use]
    pub const fn cancellation_reason(&self) -> Option<&CancellationReason> {
        self.cancellation_reason.as_ref()
    }
    /// The version as loaded (0 for a new order).
    #[must_use]
    pub const fn version(&self) -> u64 {
        self.version
    }
    /// When it was placed.
    #[must_use]
    pub const fn placed_at(&self) -> Timestamp {
        self.placed_at
    }
    /// When it last changed.
    #[must_use]
    pub const fn updated_at(&self) -> Timestamp {
        self.updated_at
    }
    /// When it is cancelled if still unpaid (`None`: never).
    #[must_use]
    pub const fn payment_due_at(&self) -> Option<Timestamp> {
        self.payment_due_at
    }
    /// How many payment ids are remembered (for tests and metrics).
    #[must_use]
    pub fn remembered_payment_ids(&self) -> usize {
        self.processed_payments.len()
    }
    /// How many reservation ids are remembered (for tests and metrics).
    #[must_use]
    pub fn remembered_reservation_ids(&self) -> usize {
        self.processed_reservations.len()
    }

    fn invalid(&self, action: Action) -> OrderError {
        OrderError::InvalidTransition {
            action,
            status: self.status,
        }
    }

    fn next_event_id(&mut self) -> EventId {
        self.event_count += 1;
        EventId::for_order_event(self.id, self.event_count)
    }

    fn record_cancellation(&mut self, reason: CancellationReason, now: Timestamp) {
        let previous_status = self.status;
        self.status = OrderStatus::Cancelled;
        self.cancellation_reason = Some(reason.clone());
        self.updated_at = now;
        let event_id = self.next_event_id();
        self.pending_events
            .push(DomainEvent::OrderCancelled(OrderCancelled {
                event_id,
                order_id: self.id,
                reason,
                previous_status,
                payment_id: self.payment_id.clone(),
                paid_amount: self.payment_id.as_ref().map(|_| self.total),
                reservation_id: self.reservation_id.clone(),
                occurred_at: now,
            }));
    }
}

#[cfg(test)]
mod tests;
