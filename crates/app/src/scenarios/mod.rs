//! The demo scenarios. Each runs on a fresh in-process system, drives one order through
//! a story, and checks the outcome: final status, which messages flowed, and how Orders
//! handled each. `app demo` prints them; the end-to-end tests assert them.
//!
//! | file | holds |
//! |---|---|
//! | [`report`] | what a scenario found, and its transcript |
//! | `steps` | the moves the stories are made of: start, place, cancel, inject, finish |
//! | `straight` | orders that run to their end untouched (approved, declined, out of stock) |
//! | `cancellation` | a customer cancelling in each state |
//! | `deadline` | a payment that comes after the order's payment deadline: cancelled, refunded |
//! | `stray` | messages that should not change anything: replays, forged and unknown ones |

mod cancellation;
mod deadline;
pub mod report;
mod steps;
mod straight;
mod stray;

use std::{future::Future, pin::Pin, time::Duration};

pub use report::ScenarioReport;
pub use steps::checkout;

use crate::system::Stores;

/// How long a scenario may take before it counts as failed.
pub const DEADLINE: Duration = Duration::from_secs(10);

type ScenarioFuture = Pin<Box<dyn Future<Output = ScenarioReport> + Send>>;

/// A named scenario, runnable against any store.
pub struct Scenario {
    /// Its name, as printed and used by tests.
    pub name: &'static str,
    run: fn(Stores) -> ScenarioFuture,
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Scenario {
    /// Runs it on `stores`.
    pub async fn run(&self, stores: Stores) -> ScenarioReport {
        (self.run)(stores).await
    }
}

/// Every scenario of the demo, in the order it runs them.
#[must_use]
pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "happy path",
            run: |s| Box::pin(straight::happy_path(s)),
        },
        Scenario {
            name: "replayed payment.approved and stock.reserved",
            run: |s| Box::pin(stray::replayed_messages(s)),
        },
        Scenario {
            name: "cancel while AwaitingPayment",
            run: |s| Box::pin(cancellation::cancel_awaiting_payment(s)),
        },
        Scenario {
            name: "cancel while Paid",
            run: |s| Box::pin(cancellation::cancel_paid(s)),
        },
        Scenario {
            name: "cancel while StockReserved",
            run: |s| Box::pin(cancellation::cancel_stock_reserved(s)),
        },
        Scenario {
            name: "payment declined",
            run: |s| Box::pin(straight::payment_declined(s)),
        },
        Scenario {
            name: "payment after the deadline",
            run: |s| Box::pin(deadline::payment_after_the_deadline(s)),
        },
        Scenario {
            name: "out of stock after payment",
            run: |s| Box::pin(straight::out_of_stock(s)),
        },
        Scenario {
            name: "stock.reserved for an unpaid order",
            run: |s| Box::pin(stray::stock_reserved_for_unpaid_order(s)),
        },
        Scenario {
            name: "payment.approved for an unknown order",
            run: |s| Box::pin(stray::payment_for_unknown_order(s)),
        },
    ]
}
