//! Adapters of the Orders storage ports ([`orders_app::OrderStore`] and
//! [`orders_app::Outbox`]).
//!
//! * [`InMemoryOrderStore`]: everything in one mutex-guarded state, for the demo, tests
//!   and benchmarks. Atomic by construction: a commit happens under one lock.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod memory;

pub use memory::InMemoryOrderStore;
