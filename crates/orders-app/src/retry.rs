//! Optimistic-concurrency retries, written once for every use case that loads an order,
//! changes it and commits it at the version it loaded.

use std::future::Future;

use orders_domain::OrderId;

use crate::{AppError, StoreError};

/// An error that may be an optimistic-concurrency conflict ([`StoreError::Conflict`]):
/// the order changed between load and commit, so the attempt is worth running again
/// on a fresh load.
pub(crate) trait IsConflict {
    /// Whether this error is such a conflict.
    fn is_conflict(&self) -> bool;
}

impl IsConflict for StoreError {
    fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }
}

impl IsConflict for AppError {
    fn is_conflict(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_conflict())
    }
}

/// Runs `attempt` (load `order_id`, change it, commit) and runs it again while it fails
/// with a conflict, at most `retries` more times; any other outcome, and the last
/// conflict, is returned as it is.
///
/// # Errors
/// The attempt's own error.
pub(crate) async fn retry_on_conflict<T, E, F, Fut>(
    retries: u32,
    order_id: OrderId,
    mut attempt: F,
) -> Result<T, E>
where
    E: IsConflict,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut retried = 0;
    loop {
        match attempt().await {
            Err(e) if e.is_conflict() && retried < retries => {
                retried += 1;
                tracing::debug!(%order_id, retried, "conflict: reloading");
            }
            outcome => return outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use orders_domain::OrderId;

    use super::*;

    fn conflict() -> StoreError {
        StoreError::Conflict {
            order_id: OrderId::random(),
            expected: 1,
        }
    }

    #[tokio::test]
    async fn conflicts_are_retried_up_to_the_limit_then_returned() {
        let calls = Cell::new(0);
        let outcome: Result<(), StoreError> = retry_on_conflict(3, OrderId::random(), || {
            calls.set(calls.get() + 1);
            async { Err(conflict()) }
        })
        .await;
        assert!(outcome.unwrap_err().is_conflict());
        assert_eq!(calls.get(), 4, "one attempt and three retries");
    }

    #[tokio::test]
    async fn success_after_a_conflict_and_other_errors_end_the_retries() {
        let calls = Cell::new(0);
        let outcome = retry_on_conflict(3, OrderId::random(), || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n == 1 {
                    Err(AppError::Store(conflict()))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(outcome, Ok(2));

        let calls = Cell::new(0);
        let outcome: Result<(), StoreError> = retry_on_conflict(3, OrderId::random(), || {
            calls.set(calls.get() + 1);
            async { Err(StoreError::unavailable("down")) }
        })
        .await;
        assert!(outcome.is_err());
        assert_eq!(calls.get(), 1, "only conflicts are retried");
    }
}
