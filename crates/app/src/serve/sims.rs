//! The simulators' flags: whether Payments and Stock run inside `app serve`
//! ([`SimsMode`]), and how they behave ([`SimulatorFlags`], [`PaymentsFlags`],
//! [`StockFlags`]), parsed into `payments_sim::PaymentsConfig` and
//! `stock_sim::StockConfig`. `app payments` and `app stock` take the same flags.

use std::time::Duration;

use payments_sim::{PaymentDecision, PaymentsConfig};
use rust_decimal::Decimal;
use stock_sim::StockConfig;

/// Whether the simulated Payments and Stock run in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SimsMode {
    /// Payments and Stock answer on the service's bus, inside this process.
    InProcess,
    /// No simulators: orders wait for Payments and Stock running elsewhere (`app
    /// payments` and `app stock` on the same NATS bus).
    None,
}

/// The behaviour of the in-process simulators (see `payments_sim::PaymentsConfig` and
/// `stock_sim::StockConfig`). The default approves everything and has every product.
/// `app payments` and `app stock` take the same flags ([`PaymentsFlags`], [`StockFlags`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct SimulatorFlags {
    /// How Payments behaves.
    #[command(flatten)]
    pub payments: PaymentsFlags,
    /// How Stock behaves.
    #[command(flatten)]
    pub stock: StockFlags,
    /// Payments and Stock publish every answer twice (at-least-once producers).
    #[arg(long, env = "ORDERS_DUPLICATE_REPLIES")]
    pub duplicate_replies: bool,
}

impl SimulatorFlags {
    /// The Payments simulator settings.
    #[must_use]
    pub fn payments(&self) -> PaymentsConfig {
        self.payments.config(self.duplicate_replies)
    }

    /// The Stock simulator settings.
    #[must_use]
    pub fn stock(&self) -> StockConfig {
        self.stock.config(self.duplicate_replies)
    }
}

/// How the simulated Payments behaves (`app serve` and `app payments`).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct PaymentsFlags {
    /// Payments declines orders whose total is strictly above AMOUNT.
    #[arg(
        long,
        env = "ORDERS_DECLINE_ABOVE",
        value_name = "AMOUNT",
        conflicts_with = "decline_all"
    )]
    pub decline_above: Option<Decimal>,
    /// Payments declines every order.
    #[arg(long, env = "ORDERS_DECLINE_ALL")]
    pub decline_all: bool,
    /// Payments waits this long before answering, in milliseconds.
    #[arg(
        long,
        env = "ORDERS_PAYMENTS_DELAY_MS",
        value_name = "MS",
        default_value_t = 0
    )]
    pub payments_delay_ms: u64,
}

impl PaymentsFlags {
    /// The Payments simulator settings; `duplicate_replies` publishes every answer twice.
    #[must_use]
    pub fn config(&self, duplicate_replies: bool) -> PaymentsConfig {
        let decision = match (self.decline_all, self.decline_above) {
            (true, _) => PaymentDecision::DeclineAll,
            (false, Some(limit)) => PaymentDecision::DeclineAbove(limit),
            (false, None) => PaymentDecision::ApproveAll,
        };
        PaymentsConfig::default()
            .decision(decision)
            .delay(Duration::from_millis(self.payments_delay_ms))
            .duplicate_replies(duplicate_replies)
    }
}

/// How the simulated Stock behaves (`app serve` and `app stock`).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct StockFlags {
    /// Stock waits this long before answering, in milliseconds.
    #[arg(
        long,
        env = "ORDERS_STOCK_DELAY_MS",
        value_name = "MS",
        default_value_t = 0
    )]
    pub stock_delay_ms: u64,
    /// A product Stock never has (repeatable; comma-separated in the environment).
    #[arg(
        long = "out-of-stock",
        env = "ORDERS_OUT_OF_STOCK",
        value_name = "SKU",
        value_delimiter = ','
    )]
    pub out_of_stock: Vec<String>,
}

impl StockFlags {
    /// The Stock simulator settings; `duplicate_replies` publishes every answer twice.
    #[must_use]
    pub fn config(&self, duplicate_replies: bool) -> StockConfig {
        StockConfig::default()
            .out_of_stock(self.out_of_stock.iter().map(|sku| sku.trim().to_owned()))
            .delay(Duration::from_millis(self.stock_delay_ms))
            .duplicate_replies(duplicate_replies)
    }
}
