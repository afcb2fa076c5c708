//! Orders reaching a final state (`StockReserved`, `Cancelled`), counted by that state
//! with the time since they were placed (domain time, from the service's clock). A
//! cancelled order that had reserved stock counts once for each.
//!
//! Fed by the commits [`crate::changes::WatchedStore`] already reports to
//! [`crate::changes::OrderChanges`] (a commit that changes an order carries it; one
//! that only records a duplicate or a rejection does not), through the hook
//! [`FinishedOrders::hook`] makes: no second store decorator, no second look at each
//! commit.

use std::{sync::Arc, time::Duration};

use metrics::{Counter, Histogram};
use orders_domain::OrderStatus;

use super::{handles::Handles, metrics as names};
use crate::changes::FinishedHook;

/// The finished-orders counter and flow-duration histogram, by final state.
#[derive(Default)]
pub struct FinishedOrders {
    by_status: Handles<&'static str, (Counter, Histogram)>,
}

impl FinishedOrders {
    /// Records one order reaching `status` after `flow` since it was placed; other
    /// states are not final and are ignored.
    pub fn record(&self, status: OrderStatus, flow: Duration) {
        let status = match status {
            OrderStatus::StockReserved => "StockReserved",
            OrderStatus::Cancelled => "Cancelled",
            OrderStatus::AwaitingPayment | OrderStatus::Paid => return,
        };
        self.by_status.with(
            &status,
            || {
                (
                    status,
                    (
                        metrics::counter!(names::ORDERS_FINISHED, "status" => status),
                        metrics::histogram!(names::ORDER_FLOW_DURATION, "status" => status),
                    ),
                )
            },
            |(finished, durations)| {
                finished.increment(1);
                durations.record(flow);
            },
        );
    }

    /// The hook for [`crate::changes::OrderChanges::on_finished`].
    #[must_use]
    pub fn hook(self) -> FinishedHook {
        let this = Arc::new(self);
        Arc::new(move |status, flow| this.record(status, flow))
    }
}
