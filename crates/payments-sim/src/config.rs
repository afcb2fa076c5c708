//! How the simulated Payments behaves: which orders it charges, how long it takes, and
//! whether it answers everything twice.

use std::time::Duration;

use rust_decimal::Decimal;

/// Which orders Payments charges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaymentDecision {
    /// Charge every order.
    #[default]
    ApproveAll,
    /// Charge no order.
    DeclineAll,
    /// Decline an order whose `totalAmount` is strictly greater than the limit; charge the
    /// rest (an order of exactly the limit is approved).
    DeclineAbove(Decimal),
}

/// How long Payments remembers an order after it was last asked about, unless configured
/// otherwise: as long as Orders' default payment deadline, after which Orders stops
/// waiting for Payments (a later approval is refused and refunded).
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Settings of the simulated Payments. The default approves everything, at once, answers
/// each message once, and remembers an order for [`DEFAULT_IDEMPOTENCY_WINDOW`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentsConfig {
    /// Which orders are charged.
    pub decision: PaymentDecision,
    /// Simulated processing time: the handler waits this long before it answers any
    /// message (`order.placed`, `order.cancelled`, `order.payment_refused`), so a demo
    /// can cancel an order while its payment is "in progress". Real time, to within
    /// microseconds; a test cannot pause it.
    pub delay: Duration,
    /// Publish every answer twice: two envelopes with different `messageId`s and the
    /// identical payload (the same `paymentId`), as an at-least-once producer that retried
    /// after a lost acknowledgement would. The message-id inbox cannot catch the second
    /// copy; it exercises the consumer's domain-level idempotency (the `paymentId`).
    pub duplicate_replies: bool,
    /// How long an order is remembered after it was last asked about; then it is
    /// forgotten, so memory stays flat under sustained load. An order asked about again
    /// afterwards is decided anew, with the same `paymentId` (derived from the order id).
    pub idempotency_window: Duration,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        Self {
            decision: PaymentDecision::default(),
            delay: Duration::ZERO,
            duplicate_replies: false,
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
        }
    }
}

impl PaymentsConfig {
    /// Sets which orders are charged.
    #[must_use]
    pub fn decision(mut self, decision: PaymentDecision) -> Self {
        self.decision = decision;
        self
    }

    /// Sets the simulated processing time.
    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Sets whether every answer is published twice (see the field).
    #[must_use]
    pub fn duplicate_replies(mut self, duplicate: bool) -> Self {
        self.duplicate_replies = duplicate;
        self
    }

    /// Sets how long an order is remembered after it was last asked about.
    #[must_use]
    pub fn idempotency_window(mut self, window: Duration) -> Self {
        self.idempotency_window = window;
        self
    }
}

impl PaymentDecision {
    /// Why an order of `total` is declined, or `None` when it is approved.
    pub(crate) fn decline_reason(&self, total: Decimal, currency: &str) -> Option<String> {
        match self {
            Self::ApproveAll => None,
            Self::DeclineAll => Some("payment declined by the card issuer".to_owned()),
            Self::DeclineAbove(limit) if total > *limit => Some(format!(
                "amount {total} {currency} exceeds the limit of {limit} {currency}"
            )),
            Self::DeclineAbove(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal_macros::dec;

    use super::*;

    #[test]
    fn the_default_approves_everything_at_once_and_answers_once() {
        let config = PaymentsConfig::default();
        assert_eq!(config.decision, PaymentDecision::ApproveAll);
        assert_eq!(config.delay, Duration::ZERO);
        assert!(!config.duplicate_replies);
        assert_eq!(config.idempotency_window, DEFAULT_IDEMPOTENCY_WINDOW);
    }

    #[test]
    fn an_amount_equal_to_the_limit_is_approved_and_one_cent_more_is_declined() {
        let decision = PaymentDecision::DeclineAbove(dec!(100.00));
        assert_eq!(decision.decline_reason(dec!(100.00), "EUR"), None);
        assert_eq!(
            decision.decline_reason(dec!(100.01), "EUR").as_deref(),
            Some("amount 100.01 EUR exceeds the limit of 100.00 EUR")
        );
    }
}
