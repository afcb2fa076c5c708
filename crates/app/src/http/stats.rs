//! `GET /stats`: what an operator must see without reading logs — messages that could
//! not be handled (dead letters), outbox rows that could not be decoded (parked), and
//! the relay's backlog.

use async_trait::async_trait;
use serde::Serialize;

/// The counts `GET /stats` shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Inbound messages given up on (undecodable, or failing past their retries); kept
    /// by the bus for inspection and replay (`/dead-letters`): the count of its
    /// dead-letter port, on NATS every process's of the prefix.
    pub dead_letters: u64,
    /// Outbox rows whose envelope could not be decoded, kept aside and never published;
    /// `None` for a store that cannot park (in-memory).
    pub parked_outbox_rows: Option<u64>,
    /// Committed messages not yet published; `None` when the store did not answer.
    pub unsent_outbox_rows: Option<u64>,
}

/// Collects [`Stats`]. Dyn-compatible: the composition root knows the adapters.
#[async_trait]
pub trait StatsProbe: Send + Sync + 'static {
    /// The counts now. Must not fail: what cannot be read is `None`.
    async fn stats(&self) -> Stats;
}
