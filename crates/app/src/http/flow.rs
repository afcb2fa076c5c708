//! `GET /flow`: is it flowing? Throughput (orders reaching a final state per second) and
//! end-to-end latency (placed → StockReserved or Cancelled, p50 and p99) over the last
//! minute, and the dead-letter count.
//!
//! [`FlowWindow`] is a small rolling window fed by this process's commits (see
//! [`crate::changes::OrderChanges::committed`]): each order is counted once, the first
//! time a commit leaves it in a final state (an order cancelled after its stock was
//! reserved is not counted twice), with `updatedAt − placedAt` of that commit as its
//! latency. Its memory is bounded whatever the load: at most [`MAX_SAMPLES`] samples (at
//! higher rates the figures cover less than a minute) and [`MAX_REMEMBERED`] counted
//! ids.
//!
//! The same figures reach the live page as the `flow` event of `GET /events`, once a
//! second.

use std::{
    collections::{HashSet, VecDeque},
    time::{Duration, Instant},
};

use axum::{Json, extract::State};
use orders_domain::{OrderId, OrderStatus};
use parking_lot::Mutex;
use serde::Serialize;

use super::{
    AppState,
    auth::Caller,
    problem::{Problem, ProblemType},
};

/// How far back the latency percentiles and counts look.
pub const WINDOW: Duration = Duration::from_secs(60);

/// How far back the throughput looks (shorter than [`WINDOW`], so it follows changes).
pub const THROUGHPUT_SPAN: Duration = Duration::from_secs(10);

/// The most samples kept (about 1,700 finished orders a second over a minute).
pub const MAX_SAMPLES: usize = 100_000;

/// The most order ids remembered as counted.
pub const MAX_REMEMBERED: usize = 50_000;

/// The figures of `GET /flow` (and of the `flow` event).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowFigures {
    /// The span of the counts and percentiles, in seconds (60).
    pub window_seconds: u64,
    /// Orders that reached a final state within the window.
    pub finished: u64,
    /// Of those, the ones that reached StockReserved.
    pub stock_reserved: u64,
    /// Of those, the ones cancelled.
    pub cancelled: u64,
    /// Orders reaching a final state per second, over the last 10 seconds.
    pub throughput_per_second: f64,
    /// Placed → final state, in milliseconds, over the window.
    pub latency_ms: Percentiles,
    /// Messages given up on, held by the bus; `None` when this service has no stats.
    pub dead_letters: Option<u64>,
}

/// Latency percentiles; `None` without any sample in the window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Percentiles {
    /// The median.
    pub p50: Option<f64>,
    /// The 99th percentile.
    pub p99: Option<f64>,
}

/// Orders reaching a final state, over the last minute (see the module docs).
#[derive(Debug, Default)]
pub struct FlowWindow {
    inner: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    /// In arrival order.
    samples: VecDeque<Sample>,
    /// Orders already counted, and the order they were counted in (to forget the oldest).
    counted: HashSet<OrderId>,
    counted_order: VecDeque<OrderId>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    latency_ms: f64,
    reserved: bool,
}

impl FlowWindow {
    /// Counts order `id` reaching `status` (a final one) `latency` after it was placed,
    /// unless it was counted before.
    pub fn finished(&self, id: OrderId, status: OrderStatus, latency: Duration) {
        self.finished_at(Instant::now(), id, status, latency);
    }

    fn finished_at(&self, now: Instant, id: OrderId, status: OrderStatus, latency: Duration) {
        let mut window = self.inner.lock();
        if !window.counted.insert(id) {
            return;
        }
        window.counted_order.push_back(id);
        if window.counted_order.len() > MAX_REMEMBERED
            && let Some(oldest) = window.counted_order.pop_front()
        {
            window.counted.remove(&oldest);
        }
        window.samples.push_back(Sample {
            at: now,
            latency_ms: latency.as_secs_f64() * 1000.0,
            reserved: status == OrderStatus::StockReserved,
        });
        window.forget_before(now);
    }

    /// The figures now (`dead_letters` is left `None`: the window does not know it).
    #[must_use]
    pub fn figures(&self) -> FlowFigures {
        self.figures_at(Instant::now())
    }

    fn figures_at(&self, now: Instant) -> FlowFigures {
        let mut latencies = Vec::new();
        let (mut reserved, mut recent) = (0_u64, 0_u64);
        {
            let mut window = self.inner.lock();
            window.forget_before(now);
            latencies.reserve(window.samples.len());
            for sample in &window.samples {
                latencies.push(sample.latency_ms);
                reserved += u64::from(sample.reserved);
                recent += u64::from(now.saturating_duration_since(sample.at) <= THROUGHPUT_SPAN);
            }
        }
        latencies.sort_unstable_by(f64::total_cmp);
        let finished = latencies.len() as u64;
        FlowFigures {
            window_seconds: WINDOW.as_secs(),
            finished,
            stock_reserved: reserved,
            cancelled: finished - reserved,
            throughput_per_second: recent as f64 / THROUGHPUT_SPAN.as_secs_f64(),
            latency_ms: Percentiles {
                p50: percentile(&latencies, 0.50),
                p99: percentile(&latencies, 0.99),
            },
            dead_letters: None,
        }
    }
}

impl Window {
    /// Drops the samples older than the window, and the oldest beyond [`MAX_SAMPLES`].
    fn forget_before(&mut self, now: Instant) {
        while self
            .samples
            .front()
            .is_some_and(|s| now.saturating_duration_since(s.at) > WINDOW)
            || self.samples.len() > MAX_SAMPLES
        {
            self.samples.pop_front();
        }
    }
}

/// The nearest-rank `q` percentile of `sorted`, rounded to 0.1 ms.
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    let value = sorted[rank.clamp(1, sorted.len()) - 1];
    Some((value * 10.0).round() / 10.0)
}

/// The figures of `state`'s window with the dead-letter count; `None` when the service
/// has no change feed.
pub(super) async fn figures(state: &AppState) -> Option<FlowFigures> {
    let mut figures = state.changes.as_ref()?.flow().figures();
    if let Some(stats) = &state.stats {
        figures.dead_letters = Some(stats.stats().await.dead_letters);
    }
    Some(figures)
}

#[utoipa::path(
    get,
    path = "/flow",
    tag = "live",
    summary = "Throughput and placed → final latency over the last minute, and the dead-letter count",
    responses(
        (status = 200, description = "The figures", body = FlowFigures),
        (status = 403, description = "A customer-scoped token: the figures are of every customer", body = Problem, content_type = super::openapi::PROBLEM),
        (status = 404, description = "This service does not follow its flow", body = Problem, content_type = super::openapi::PROBLEM),
    )
)]
/// `GET /flow`: 404 when the service has no change feed; 403 for a customer-scoped token
/// (the figures are of every customer's orders, like `/events`).
pub(super) async fn flow(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<FlowFigures>, Problem> {
    if caller.scope().is_some() {
        return Err(Problem::new(
            ProblemType::Forbidden,
            "a token scoped to one customer cannot read data of every customer",
        ));
    }
    figures(&state).await.map(Json).ok_or_else(|| {
        Problem::new(
            ProblemType::NotFound,
            "this service does not follow its flow",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn an_empty_window_has_no_percentiles_and_no_throughput() {
        let figures = FlowWindow::default().figures();
        assert_eq!(figures.finished, 0);
        assert_eq!(figures.throughput_per_second, 0.0);
        assert_eq!(figures.latency_ms.p50, None);
        assert_eq!(figures.latency_ms.p99, None);
    }

    #[test]
    fn percentiles_and_counts_cover_the_last_minute_and_throughput_the_last_ten_seconds() {
        let window = FlowWindow::default();
        let start = Instant::now();
        // 100 orders, 1 ms … 100 ms, one every 100 ms: over ten seconds.
        for i in 1..=100_u64 {
            let status = if i % 10 == 0 {
                OrderStatus::Cancelled
            } else {
                OrderStatus::StockReserved
            };
            window.finished_at(start + ms(i * 100), OrderId::random(), status, ms(i));
        }
        let now = start + ms(10_000);
        let figures = window.figures_at(now);
        assert_eq!(figures.finished, 100);
        assert_eq!((figures.stock_reserved, figures.cancelled), (90, 10));
        assert_eq!(figures.latency_ms.p50, Some(50.0));
        assert_eq!(figures.latency_ms.p99, Some(99.0));
        // Within ten seconds of `now`: every sample from 0.0 s on.
        assert_eq!(figures.throughput_per_second, 10.0);

        // 20 s later none is within the throughput span, all are within the minute.
        let later = window.figures_at(now + ms(20_000));
        assert_eq!(later.throughput_per_second, 0.0);
        assert_eq!(later.finished, 100);
        // A minute after the last one, the window is empty again.
        let gone = window.figures_at(start + ms(10_000 + 60_001));
        assert_eq!(gone.finished, 0);
        assert_eq!(gone.latency_ms.p99, None);
    }

    #[test]
    fn an_order_is_counted_once_even_when_cancelled_after_its_reservation() {
        let window = FlowWindow::default();
        let id = OrderId::random();
        let now = Instant::now();
        window.finished_at(now, id, OrderStatus::StockReserved, ms(40));
        window.finished_at(now, id, OrderStatus::Cancelled, ms(9_000));
        let figures = window.figures_at(now);
        assert_eq!(figures.finished, 1);
        assert_eq!(figures.stock_reserved, 1);
        assert_eq!(figures.latency_ms.p99, Some(40.0));
    }

    #[test]
    fn memory_stays_bounded_under_any_rate() {
        let window = FlowWindow::default();
        let now = Instant::now();
        for _ in 0..(MAX_SAMPLES + 10) {
            window.finished_at(now, OrderId::random(), OrderStatus::StockReserved, ms(5));
        }
        let inner = window.inner.lock();
        assert_eq!(inner.samples.len(), MAX_SAMPLES);
        assert_eq!(inner.counted.len(), MAX_REMEMBERED);
        assert_eq!(inner.counted_order.len(), MAX_REMEMBERED);
    }
}
