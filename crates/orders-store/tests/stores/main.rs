//! Tests of the Orders store adapters: one conformance suite (`conformance`) run against
//! every adapter (in-memory, SQLite file, SQLite in memory, PostgreSQL), plus what only
//! one adapter has (reopening a file, connecting twice, relays in several processes).
//!
//! PostgreSQL tests need `ORDERS_TEST_POSTGRES_URL` (e.g.
//! `postgres://postgres@127.0.0.1:5432/test`); each uses a fresh schema, dropped after.
//! Without it they are skipped, or fail when `CI` is set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conformance;
mod recent;
mod support;

mod memory;
mod postgres;
mod sqlite;
