//! Typed errors of the domain: invalid values and rejected transitions.

use crate::{Money, OrderStatus, PaymentId, ReservationId, order::Action};

/// A value that failed validation, naming the field it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The (wire) name of the offending field, e.g. `items[0].quantity`.
    pub field: String,
    /// What is wrong with it, in lowercase.
    pub message: String,
}

impl ValidationError {
    /// Builds an error for `field` with a message.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Returns the same error with `prefix.` put in front of the field name.
    #[must_use]
    pub fn within(self, prefix: &str) -> Self {
        Self {
            field: format!("{prefix}.{}", self.field),
            message: self.message,
        }
    }
}

/// Why the aggregate refused a command or a message. The order is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// The action is not allowed in the order's current state.
    #[error("cannot {action} an order that is {status}")]
    InvalidTransition {
        /// What was attempted.
        action: Action,
        /// The state the order is in.
        status: OrderStatus,
    },
    /// The order is already paid with another payment.
    #[error("order already paid with payment {existing}, refusing second payment {attempted}")]
    SecondPayment {
        /// The payment the order was paid with.
        existing: PaymentId,
        /// The payment that was refused.
        attempted: PaymentId,
    },
    /// Stock is already reserved under another reservation.
    #[error("stock already reserved under {existing}, refusing second reservation {attempted}")]
    SecondReservation {
        /// The reservation the order holds.
        existing: ReservationId,
        /// The reservation that was refused.
        attempted: ReservationId,
    },
    /// The approved amount or currency differs from the order total.
    #[error("approved {approved} does not match order total {expected}")]
    AmountMismatch {
        /// The order total.
        expected: Money,
        /// What Payments approved.
        approved: Money,
    },
    /// The order's payment deadline has not passed (or it has none): it keeps waiting.
    #[error("the order's payment deadline has not passed")]
    PaymentNotDue,
    /// The order is already cancelled; cancelling twice is rejected, not ignored.
    #[error("order is already cancelled")]
    AlreadyCancelled,
    /// An order needs at least one item.
    #[error("an order needs at least one item")]
    NoItems,
    /// All items of an order must be priced in one currency.
    #[error("items are priced in more than one currency ({first} and {other})")]
    MixedCurrencies {
        /// The currency of the first item.
        first: crate::Currency,
        /// A different currency found on a later item.
        other: crate::Currency,
    },
    /// The total does not fit in a decimal.
    #[error("order total overflows")]
    TotalOverflow,
}
