//! The settings of an [`InMemoryBus`](super::InMemoryBus): lanes per group, the backlog
//! bound and what a full backlog does to publishers, redelivery of retryable failures,
//! and how many dead letters are kept.

use std::time::Duration;

/// What to do when a subscriber's backlog is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverflowPolicy {
    /// The publisher waits for room (logged at WARN once per episode).
    Backpressure,
    /// The publish fails with [`BusError::BacklogFull`](crate::BusError::BacklogFull)
    /// (logged at ERROR once per episode); nothing already accepted is lost.
    Reject,
}

/// Redelivery of messages whose handler returned a retryable error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, including the first; then the message is dead-lettered.
    /// `0` counts as `1`.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles each time.
    pub initial_backoff: Duration,
    /// Upper bound of the wait.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` (attempt counts from 1).
    #[must_use]
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Settings of an [`InMemoryBus`](super::InMemoryBus).
#[derive(Debug, Clone)]
pub struct InMemoryBusConfig {
    /// Parallel lanes per consumer group (order is kept per correlation id).
    pub lanes: usize,
    /// Messages a group may have queued or in hand, over all its lanes.
    pub backlog_limit: usize,
    /// What a full backlog does to publishers.
    pub overflow: OverflowPolicy,
    /// Redelivery of retryable failures.
    pub retry: RetryPolicy,
    /// How many dead letters are kept for inspection (the oldest go first, loudly).
    pub dead_letter_limit: usize,
}

impl Default for InMemoryBusConfig {
    fn default() -> Self {
        Self {
            lanes: 4,
            backlog_limit: 65_536,
            overflow: OverflowPolicy::Backpressure,
            retry: RetryPolicy::default(),
            dead_letter_limit: 10_000,
        }
    }
}

impl InMemoryBusConfig {
    /// Sets the number of lanes per group (at least 1).
    #[must_use]
    pub fn lanes(mut self, lanes: usize) -> Self {
        self.lanes = lanes.max(1);
        self
    }
    /// Sets the backlog limit per group (at least 1).
    #[must_use]
    pub fn backlog_limit(mut self, limit: usize) -> Self {
        self.backlog_limit = limit.max(1);
        self
    }
    /// Sets the overflow policy.
    #[must_use]
    pub fn overflow(mut self, policy: OverflowPolicy) -> Self {
        self.overflow = policy;
        self
    }
    /// Sets the retry policy.
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
    /// Sets how many dead letters are kept (at least 1).
    #[must_use]
    pub fn dead_letter_limit(mut self, limit: usize) -> Self {
        self.dead_letter_limit = limit.max(1);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_bound() {
        let retry = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        };
        let waits: Vec<u128> = (1..=5).map(|a| retry.backoff(a).as_millis()).collect();
        assert_eq!(waits, vec![10, 20, 40, 50, 50]);
        assert_eq!(retry.backoff(200), Duration::from_millis(50));
    }
}
