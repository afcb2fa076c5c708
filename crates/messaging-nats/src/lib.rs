//! The NATS JetStream adapter of the [`MessageBus`](messaging::MessageBus) port.
//!
//! Wire (DESIGN.md §5, "NATS mapping"): subject = topic, with an optional prefix; body =
//! the envelope JSON; header `Nats-Msg-Id` = messageId, so the server drops a message
//! re-published within its duplicate window. One stream per subject, one durable pull
//! consumer per (group, topic) — which the nats-server 2.9 shipped by Debian supports, as
//! do later ones — and one dead-letter stream per prefix.
//!
//! Delivery: `Ok` is a double ack; `Retryable` a nak with exponential backoff;
//! `Permanent` or the last attempt a copy on the dead-letter stream (headers
//! [`GROUP_HEADER`], [`ATTEMPTS_HEADER`], [`REASON_HEADER`], [`KIND_HEADER`],
//! [`FIRST_FAILED_HEADER`], [`LAST_FAILED_HEADER`]) and a term. The bus implements the
//! [`DeadLetters`](messaging::DeadLetters) port over that stream: a replay goes to the
//! group's own replay subject, which only that group's consumer reads.
//! Progress acks keep slow handlers' messages; a handler past `max_handling_time` is
//! cancelled and its process steps back so another process of the group takes the
//! message; a process that dies stops its progress acks, and the server redelivers after
//! the ack wait. Order per correlation id within a process; at most `max_in_flight`
//! messages held per subscription (and one replayed dead letter). The client reconnects by itself; a publish while it
//! is disconnected fails as retryable.
//!
//! Tests: the module `testing` (feature `testing`) starts private servers and cleans up streams.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod bus;
mod config;
mod dead_letter;
mod lanes;
mod names;
mod subscriber;
#[cfg(feature = "testing")]
pub mod testing;

pub use bus::NatsBus;
pub use config::NatsBusConfig;
pub use dead_letter::{
    ATTEMPTS_HEADER, FIRST_FAILED_HEADER, GROUP_HEADER, KIND_HEADER, LAST_FAILED_HEADER,
    REASON_HEADER, SUBJECT_HEADER,
};
