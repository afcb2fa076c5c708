//! How the simulated Stock behaves: which products it lacks, how long it takes, and
//! whether it answers everything twice.

use std::{collections::HashSet, time::Duration};

use contracts::ItemQuantity;

/// How long Stock remembers an order after it was last asked about, unless configured
/// otherwise.
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Settings of the simulated Stock. The default has every product, answers at once,
/// answers each message once, and remembers an order for [`DEFAULT_IDEMPOTENCY_WINDOW`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockConfig {
    /// Product ids (SKUs) that cannot be reserved, whatever the quantity.
    pub out_of_stock: HashSet<String>,
    /// Simulated processing time: the handler waits this long before it answers any
    /// message (`order.paid`, `order.cancelled`, `order.reservation_refused`). Real time,
    /// to within microseconds; a test cannot pause it.
    pub delay: Duration,
    /// Publish every answer twice: two envelopes with different `messageId`s and the
    /// identical payload (the same `reservationId`), as an at-least-once producer that
    /// retried after a lost acknowledgement would. It exercises the consumer's
    /// domain-level idempotency (the `reservationId`), which a message-id inbox cannot.
    pub duplicate_replies: bool,
    /// How long an order is remembered after it was last asked about; then it is
    /// forgotten, so memory stays flat under sustained load. An order asked about again
    /// afterwards is decided anew, with the same `reservationId` (derived from the order
    /// id).
    pub idempotency_window: Duration,
    /// How many of its messages the simulator handles at once (its group's lanes);
    /// `None`: 256 with a delay (orders wait for their own delay, not for each other's),
    /// else 4 (on the in-memory bus an answer is microseconds of CPU). A network bus
    /// wants more: each answer waits for the broker's acknowledgements.
    pub lanes: Option<usize>,
}

impl Default for StockConfig {
    fn default() -> Self {
        Self {
            out_of_stock: HashSet::new(),
            delay: Duration::ZERO,
            duplicate_replies: false,
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
            lanes: None,
        }
    }
}

impl StockConfig {
    /// Sets the products that are out of stock (replacing any set before).
    #[must_use]
    pub fn out_of_stock<I, S>(mut self, products: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.out_of_stock = products.into_iter().map(Into::into).collect();
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

    /// Why `items` cannot be reserved, naming each missing product once in item order, or
    /// `None` when all are in stock.
    pub(crate) fn shortage(&self, items: &[ItemQuantity]) -> Option<String> {
        let mut missing: Vec<&str> = Vec::new();
        for item in items {
            let product = item.product_id.as_str();
            if self.out_of_stock.contains(product) && !missing.contains(&product) {
                missing.push(product);
            }
        }
        (!missing.is_empty()).then(|| format!("out of stock: {}", missing.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_follow_the_delay_unless_raised_for_a_network_bus() {
        let quick = StockConfig::default();
        assert_eq!(quick.lanes_in_effect(), 4);
        assert_eq!(quick.clone().lanes_at_least(64).lanes_in_effect(), 64);
        assert_eq!(quick.lanes_at_least(1).lanes_in_effect(), 4);
        let slow = StockConfig::default().delay(Duration::from_millis(10));
        assert_eq!(slow.lanes_in_effect(), 256);
        assert_eq!(
            slow.lanes_at_least(64).lanes_in_effect(),
            256,
            "never fewer"
        );
        assert_eq!(StockConfig::default().lanes(0).lanes_in_effect(), 1);
    }

    fn item(product: &str) -> ItemQuantity {
        ItemQuantity {
            product_id: product.to_owned(),
            quantity: 1,
        }
    }

    #[test]
    fn the_default_has_every_product_and_answers_at_once_and_once() {
        let config = StockConfig::default();
        assert!(config.out_of_stock.is_empty());
        assert_eq!(config.delay, Duration::ZERO);
        assert!(!config.duplicate_replies);
        assert_eq!(config.idempotency_window, DEFAULT_IDEMPOTENCY_WINDOW);
        assert_eq!(config.shortage(&[item("sku-1")]), None);
    }

    #[test]
    fn a_shortage_names_each_missing_product_once_in_item_order() {
        let config = StockConfig::default().out_of_stock(["sku-3", "sku-1"]);
        let items = [item("sku-1"), item("sku-2"), item("sku-3"), item("sku-1")];
        assert_eq!(
            config.shortage(&items).as_deref(),
            Some("out of stock: sku-1, sku-3")
        );
    }
}
