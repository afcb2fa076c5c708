//! Domain events: facts the Order aggregate records, named in the past tense.

use crate::{
    CancellationReason, CustomerId, EventId, Money, OrderId, OrderItem, OrderStatus, PaymentId,
    ReservationId, ShippingAddress, Timestamp,
};

/// A customer placed an order; it now awaits payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderPlaced {
    /// Unique id of this event.
    pub event_id: EventId,
    /// The order.
    pub order_id: OrderId,
    /// Who ordered.
    pub customer_id: CustomerId,
    /// What was ordered.
    pub items: Vec<OrderItem>,
    /// The sum of all lines.
    pub total: Money,
    /// Where it goes.
    pub shipping_address: ShippingAddress,
    /// When it was placed.
    pub occurred_at: Timestamp,
}

/// Payments approved the order's payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderPaid {
    /// Unique id of this event.
    pub event_id: EventId,
    /// The order.
    pub order_id: OrderId,
    /// The payment that paid it.
    pub payment_id: PaymentId,
    /// The amount paid (equal to the order total).
    pub amount: Money,
    /// The order's lines, for Stock to reserve.
    pub items: Vec<OrderItem>,
    /// When the payment was applied.
    pub occurred_at: Timestamp,
}

/// The order was cancelled; whatever was paid or reserved must be given back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderCancelled {
    /// Unique id of this event.
    pub event_id: EventId,
    /// The order.
    pub order_id: OrderId,
    /// Why.
    pub reason: CancellationReason,
    /// The state it was in before.
    pub previous_status: OrderStatus,
    /// The payment to refund, if it was paid.
    pub payment_id: Option<PaymentId>,
    /// What that payment charged (the order's total), if it was paid: enough for
    /// Payments to refund it even when it no longer remembers the payment.
    pub paid_amount: Option<Money>,
    /// The reservation to release, if stock was reserved.
    pub reservation_id: Option<ReservationId>,
    /// When it was cancelled.
    pub occurred_at: Timestamp,
}

/// Any event the Order aggregate records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainEvent {
    /// See [`OrderPlaced`].
    OrderPlaced(OrderPlaced),
    /// See [`OrderPaid`].
    OrderPaid(OrderPaid),
    /// See [`OrderCancelled`].
    OrderCancelled(OrderCancelled),
}

impl DomainEvent {
    /// The event's id.
    #[must_use]
    pub const fn event_id(&self) -> EventId {
        match self {
            Self::OrderPlaced(e) => e.event_id,
            Self::OrderPaid(e) => e.event_id,
            Self::OrderCancelled(e) => e.event_id,
        }
    }

    /// The order it is about.
    #[must_use]
    pub const fn order_id(&self) -> OrderId {
        match self {
            Self::OrderPlaced(e) => e.order_id,
            Self::OrderPaid(e) => e.order_id,
            Self::OrderCancelled(e) => e.order_id,
        }
    }

    /// The event's stable name.
    #[must_use]
    pub const fn name(&self) -> &'static str {
        match self {
            Self::OrderPlaced(_) => "OrderPlaced",
            Self::OrderPaid(_) => "OrderPaid",
            Self::OrderCancelled(_) => "OrderCancelled",
        }
    }
}
