//! The Orders application layer: use cases (place and cancel an order), the handlers of
//! Payments' and Stock's messages, the outbox relay, and the ports they need.
//!
//! * Ports: [`OrderStore`] (orders + outbox + inbox, committed atomically), [`Outbox`]
//!   (what the relay reads), [`Clock`]. Adapters live in `orders-store`.
//! * [`Retention`] prunes what the idempotency window no longer needs, on an interval.
//! * [`PaymentDeadlines`] cancels orders whose payment did not come in time, on a tick.
//! * [`OrdersService`] holds `Arc<dyn Port>`s; `app` wires them.
//! * Every change is one [`Commit`]: the order at its expected version, the integration
//!   messages its events became, and the inbox record of the message that caused it.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod clock;
mod commands;
mod deadline;
mod error;
mod handlers;
mod ports;
mod publishing;
mod relay;
mod retention;
mod retry;
mod service;

pub use clock::{Clock, ManualClock, SystemClock};
pub use commands::{AddressInput, CancelOrder, ItemInput, PlaceOrder};
pub use deadline::{DUE_BATCH, DeadlinePass, PaymentDeadlines};
pub use error::{AppError, Cause, StoreError};
pub use handlers::{ORDERS_SUBSCRIBER, OrdersMessageHandler};
pub use ports::{
    Commit, Direction, HandlingOutcome, InboxRecord, MessageRecord, OrderStore, Outbox, PruneReport,
};
pub use publishing::envelope_for;
pub use relay::{OutboxRelay, RelayStopped};
pub use retention::Retention;
pub use service::{OrdersConfig, OrdersService, Placed, default_payment_timeout};

/// Re-exports so adapters and the composition root use the same versions.
pub use messaging;
pub use orders_domain as domain;
