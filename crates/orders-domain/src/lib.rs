//! The Orders domain: the [`Order`] aggregate, its value objects and its domain events.
//!
//! This crate is pure: no I/O, no async runtime, no logging and no clock. Time is always
//! passed in by the caller, so every transition is deterministic and testable.
//!
//! The state machine (see `ARCHITECTURE.md`):
//!
//! ```text
//! AwaitingPayment ──confirm_payment──► Paid ──confirm_stock_reservation──► StockReserved
//!        │                              │                                     │
//!        └── cancel / decline_payment ──┴── cancel / fail_stock_reservation ──┴── cancel ──► Cancelled
//!            / expire_payment (deadline passed: reason `payment timeout`)
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod events;
mod ids;
mod money;
mod order;
mod values;

pub use error::{OrderError, ValidationError};
pub use events::{DomainEvent, OrderCancelled, OrderPaid, OrderPlaced};
pub use ids::{CustomerId, EventId, OrderId, PaymentId, ProductId, ReservationId};
pub use money::{Currency, Money};
pub use order::{Action, Order, OrderSnapshot, OrderStatus, Transition};
pub use values::{CancellationReason, OrderItem, Quantity, ShippingAddress};

/// A point in time, always UTC. The domain never reads the clock; callers pass `now`.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// How long processed payment and reservation ids are remembered (default 24 h).
pub type IdempotencyWindow = chrono::Duration;

/// The default idempotency window: 24 hours.
#[must_use]
pub fn default_idempotency_window() -> IdempotencyWindow {
    chrono::Duration::hours(24)
}
