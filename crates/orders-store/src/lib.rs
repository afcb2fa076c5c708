//! Adapters of the Orders storage ports ([`orders_app::OrderStore`] and
//! [`orders_app::Outbox`]).
//!
//! * [`InMemoryOrderStore`]: sharded mutex-guarded maps, for the demo, tests and
//!   benchmarks. Atomic: a commit holds the locks of every shard it touches.
//! * [`SqliteOrderStore`]: the embedded default, one SQLite file in WAL mode.
//! * [`PostgresOrderStore`]: for several processes on one PostgreSQL database.
//!
//! The durable adapters share one schema shape (versioned migrations under
//! `migrations/`, embedded in the binary and applied when a store connects):
//!
//! * `orders`: one row per order, the whole snapshot as JSON in `data` (amounts as
//!   strings, so they stay exact) and `version` for optimistic concurrency;
//!   `payment_due_at` (migration 0002) with a partial index over the orders still
//!   AwaitingPayment, for `due_for_payment` (`NULL` in rows older than it: never due).
//! * `idempotency_keys`: checkout keys → order ids.
//! * `outbox`: integration messages in commit order (`position`), the whole envelope as
//!   JSON; unsent until relayed, parked when the envelope cannot be decoded.
//! * `inbox`: per subscriber, the messages handled, with their outcome.
//!
//! With the `scratch` feature, the `scratch` module makes throwaway databases for tests and
//! benchmarks.
//!
//! A commit is one transaction: the inbox record, the idempotency key, the order (insert
//! at version 0, or update at its expected version) and the outbox rows, or nothing.
//!
//! What the two SQL adapters share is written once: `rows` (row encoding) and `sql`
//! (error mapping, the shared statements, the relay's reading of the table).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod memory;
mod postgres;
mod rows;
#[cfg(feature = "scratch")]
pub mod scratch;
mod snapshot;
mod sql;
mod sqlite;

pub use memory::InMemoryOrderStore;
pub use postgres::{CHANGES_CHANNEL, CommitListener, PostgresOrderStore};
pub use sqlite::SqliteOrderStore;
