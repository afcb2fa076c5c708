//! The composition root of the Orders system: wiring of ports to adapters, the demo
//! scenarios, the service, and telemetry setup. The `app` binary (`main.rs`) is a
//! thin command line over this library; the end-to-end tests use it too.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod bus;
pub mod changes;
pub mod http;
pub mod roles;
pub mod scenarios;
pub mod serve;
pub mod system;
pub mod telemetry;
