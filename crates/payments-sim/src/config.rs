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
    /// How many of its messages the simulator handles at once (its group's lanes);
    /// `None`: 256 with a delay (orders wait for their own delay, not for each other's),
    /// else 4 (on the in-memory bus an answer is microseconds of CPU). A network bus
    /// wants more: each answer waits for the broker's acknowledgements.
    pub lanes: Option<usize>,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        Self {
            decision: PaymentDecision::default(),
            delay: Duration::ZERO,
            duplicate_replies: false,
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
            lanes: None,
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

    /// Sets how many messages are handled at once (see the field); at least one.
    #[must_use]
    pub fn lanes(mut self, lanes: usize) -> Self {
        self.lanes = Some(lanes.max(1));
        self
    }

    /// Raises the lanes in effect to at least `lanes` (what a network bus needs).
    #[must_use]
    pub fn lanes_at_least(self, lanes: usize) -> Self {
        let at_least = self.lanes_in_effect().max(lanes);
        self.lanes(at_least)
    }

    /// The lanes in effect: [`Self::lanes`] if set, else by the delay.
    #[must_use]
    pub fn lanes_in_effect(&self) -> usize {
        self.lanes
            .unwrap_or(if self.delay.is_zero() { 4 } else { 256 })
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

    #[test]
    fn lanes_follow_the_delay_unless_raised_for_a_network_bus() {
        let quick = PaymentsConfig::default();
        assert_eq!(quick.lanes_in_effect(), 4);
        assert_eq!(quick.clone().lanes_at_least(64).lanes_in_effect(), 64);
        assert_eq!(quick.lanes_at_least(1).lanes_in_effect(), 4);
        let slow = PaymentsConfig::default().delay(Duration::from_millis(10));
        assert_eq!(slow.lanes_in_effect(), 256);
        assert_eq!(
            slow.lanes_at_least(64).lanes_in_effect(),
            256,
            "never fewer"
        );
        assert_eq!(PaymentsConfig::default().lanes(0).lanes_in_effect(), 1);
    }

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
