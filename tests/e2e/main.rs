//! End-to-end tests of the Orders flow across crates: every demo scenario, a load of
//! 1,000 concurrent orders, and property tests of the handlers under duplicated and
//! reordered messages. One test binary (it links once).

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests: failing loudly is the point

mod load;
mod properties;
mod scenarios;
