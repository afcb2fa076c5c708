//! Messaging: the message-bus port, the envelope every message travels in, typed helpers,
//! and the in-memory adapter.
//!
//! * [`MessageBus`] is the port: publish an [`Envelope`]; subscribe a named consumer
//!   group with a [`MessageHandler`]. The handler's result decides delivery: `Ok` acks,
//!   [`HandlerError::Retryable`] redelivers with backoff, [`HandlerError::Permanent`]
//!   dead-letters at once.
//! * [`MessageBusExt::publish_json`] and [`typed_handler`] keep raw JSON out of call sites.
//! * [`DeadLetters`] is the dead-letter port: list what a group gave up on, replay one
//!   to that group only.
//! * [`InMemoryBus`] runs everything in one process on tokio.
//! * [`trace`] stamps new envelopes with the current W3C `traceparent`, once the
//!   composition root says how to read it.
//! * `conformance` (feature `conformance`, for adapters' tests) is the suite every
//!   adapter must pass.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(feature = "conformance")]
pub mod conformance;
mod dead_letters;
mod envelope;
mod error;
mod memory;
mod port;
pub mod trace;
mod typed;

pub use dead_letters::{
    DeadLetterError, DeadLetterKind, DeadLetterRecord, DeadLetters, Replayed, numbered_id,
};
pub use envelope::{Envelope, MessageId};
pub use error::{BusError, ErrorKind, HandlerError};
pub use memory::{DeadLetter, InMemoryBus, InMemoryBusConfig, OverflowPolicy, RetryPolicy};
pub use port::{MessageBus, MessageHandler, Subscription, SubscriptionHandle};
pub use typed::{MessageBusExt, TypedHandler, typed_handler};
