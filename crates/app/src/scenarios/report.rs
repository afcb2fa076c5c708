//! What a scenario found: the order's final status, its transcript (every message with
//! how Orders handled it), and what did not go as expected.

use std::fmt::Write as _;

use messaging::Envelope;
use orders_app::{Direction, HandlingOutcome, MessageRecord};
use orders_domain::{OrderId, OrderStatus};

/// The outcome of one scenario.
#[derive(Debug, Clone)]
pub struct ScenarioReport {
    /// Its name.
    pub name: &'static str,
    /// The order it followed.
    pub order_id: Option<OrderId>,
    /// The order's final status.
    pub status: Option<OrderStatus>,
    /// Every message of the order, in order, with how Orders handled it.
    pub transcript: Vec<String>,
    /// What did not go as expected (empty = passed).
    pub failures: Vec<String>,
}

impl ScenarioReport {
    pub(super) fn new(name: &'static str) -> Self {
        Self {
            name,
            order_id: None,
            status: None,
            transcript: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// Whether everything went as expected.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    pub(super) fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.failures.push(what.into());
        }
    }

    /// The report as printed by the demo.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        let verdict = if self.passed() { "ok" } else { "FAILED" };
        let status = self
            .status
            .map_or_else(|| "-".to_owned(), |s| s.to_string());
        let _ = writeln!(out, "== {} [{verdict}] final state: {status}", self.name);
        for line in &self.transcript {
            let _ = writeln!(out, "   {line}");
        }
        for failure in &self.failures {
            let _ = writeln!(out, "   !! {failure}");
        }
        out
    }
}

pub(super) fn transcript(messages: &[Envelope], history: &[MessageRecord]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    messages
        .iter()
        .enumerate()
        .map(|(i, envelope)| {
            let first_delivery = seen.insert(envelope.message_id);
            let handled = history
                .iter()
                .filter(|r| {
                    r.direction == Direction::Received && r.message_id == envelope.message_id
                })
                .filter_map(|r| r.outcome.as_ref())
                .map(describe)
                .collect::<Vec<_>>()
                .join(", ");
            let note = match (handled.is_empty(), first_delivery) {
                (true, _) => String::new(),
                (false, true) => format!("-> Orders: {handled}"),
                (false, false) => {
                    "-> Orders: redelivered message id, dropped by the inbox".to_owned()
                }
            };
            format!("{:>2}. {:<26}{note}", i + 1, envelope.topic)
        })
        .collect()
}

pub(super) fn describe(outcome: &HandlingOutcome) -> String {
    match outcome {
        HandlingOutcome::Rejected(why) => format!("rejected ({why})"),
        other => other.as_str().to_owned(),
    }
}
