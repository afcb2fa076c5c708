//! A simulated Payments bounded context. It knows Orders only through the published
//! language ([`contracts`]) on a [`messaging::MessageBus`]:
//!
//! * `order.placed` → decide by [`PaymentDecision`] → `payment.approved` or
//!   `payment.declined`;
//! * `order.cancelled` → `payment.refunded` when, by its own records, it charged the order
//!   and has not refunded it yet;
//! * `order.payment_refused` → `payment.refunded` of the payment Orders refused, unless it
//!   was refunded already.
//!
//! It is an idempotent producer: a redelivered `order.placed` gets the same answer again
//! (the same `paymentId`, derived from the order id, so a restarted or a second instance
//! answers with it too), and a payment is refunded at most once, however often
//! `order.cancelled` or `order.payment_refused` ask.
//! It forgets an order once it was not asked about for its idempotency window, so its
//! memory stays flat under sustained load.
//! [`PaymentsConfig`] makes it slow, stingy or chatty (duplicate replies) for tests and
//! demos; [`PaymentsHandle`] counts what it did.
//!
//! ```no_run
//! # async fn run(bus: std::sync::Arc<dyn messaging::MessageBus>) -> Result<(), messaging::BusError> {
//! use payments_sim::{PaymentDecision, PaymentsConfig, PaymentsService};
//!
//! let config = PaymentsConfig::default().decision(PaymentDecision::DeclineAll);
//! let payments = PaymentsService::start(bus, config).await?;
//! // … orders flow …
//! payments.stop().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod config;
mod ledger;
mod retention;
mod service;

pub use config::{DEFAULT_IDEMPOTENCY_WINDOW, PaymentDecision, PaymentsConfig};
pub use ledger::payment_id_for;
pub use retention::{Clock, SystemClock};
pub use service::{CONSUMER_GROUP, PaymentsHandle, PaymentsService};
