//! A simulated Stock bounded context. It knows Orders only through the published language
//! ([`contracts`]) on a [`messaging::MessageBus`]:
//!
//! * `order.paid` → `stock.reserved`, or `stock.reservation_failed` naming the products
//!   that are out of stock;
//! * `order.cancelled` → `stock.released` when, by its own records, it holds a reservation
//!   for the order that it has not released yet (or the message names the order's
//!   reservation that another Stock process, or this one before a restart, made);
//! * `order.reservation_refused` → `stock.released` of the reservation Orders refused,
//!   unless it was released already.
//!
//! It is an idempotent producer: a redelivered `order.paid` gets the same answer again
//! (the same `reservationId`, derived from the order id, so a restarted or a second instance
//! answers with it too), and a reservation is released at most once, however often
//! `order.cancelled` or `order.reservation_refused` ask.
//! It forgets an order once it was not asked about for its idempotency window, so its
//! memory stays flat under sustained load.
//! [`StockConfig`] makes it slow, short of products or chatty (duplicate replies) for tests
//! and demos; [`StockHandle`] counts what it did.
//!
//! ```no_run
//! # async fn run(bus: std::sync::Arc<dyn messaging::MessageBus>) -> Result<(), messaging::BusError> {
//! use stock_sim::{StockConfig, StockService};
//!
//! let config = StockConfig::default().out_of_stock(["sku-404"]);
//! let stock = StockService::start(bus, config).await?;
//! // … orders flow …
//! stock.stop().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod config;
mod ledger;
mod retention;
mod service;

pub use config::{DEFAULT_IDEMPOTENCY_WINDOW, StockConfig};
pub use ledger::reservation_id_for;
pub use retention::{Clock, SystemClock};
pub use service::{CONSUMER_GROUP, StockHandle, StockService};
