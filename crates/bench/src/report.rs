//! The result table: one [`Row`] per workload, latency [`Percentiles`] from an HDR
//! histogram, and the Markdown the bench prints.

use std::time::Duration;

use hdrhistogram::Histogram;

/// One line of the result table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub workload: String,
    /// How many operations.
    pub count: usize,
    /// Latency percentiles, if measured.
    pub latency: Option<Percentiles>,
    /// Operations per second and the unit's name.
    pub throughput: Option<(f64, &'static str)>,
    /// Our throughput (or latency) relative to the raw baseline.
    pub ratio: Option<String>,
    /// Anything else (memory).
    pub note: String,
}

impl Row {
    /// A row that only says why a group did not run.
    #[must_use]
    pub fn skipped(workload: &str, why: &str) -> Self {
        Self {
            workload: workload.to_owned(),
            count: 0,
            latency: None,
            throughput: None,
            ratio: None,
            note: format!("skipped: {why}"),
        }
    }
}

/// Latency percentiles.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Maximum.
    pub max: Duration,
}

/// Significant decimal digits the histogram keeps: every value within 0.1 %.
const SIGNIFICANT_DIGITS: u8 = 3;
/// The longest latency the histogram tracks (an hour, in nanoseconds); longer ones count
/// as an hour.
const HIGHEST_NANOS: u64 = 3_600_000_000_000;

impl Percentiles {
    /// Percentiles of `samples`, from an HDR histogram of nanoseconds (values within
    /// 0.1 %); `None` when there are none.
    #[must_use]
    pub fn of(samples: &[Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut histogram =
            Histogram::<u64>::new_with_bounds(1, HIGHEST_NANOS, SIGNIFICANT_DIGITS).ok()?;
        for sample in samples {
            let nanos = u64::try_from(sample.as_nanos()).unwrap_or(u64::MAX);
            histogram.saturating_record(nanos);
        }
        let at = |q: f64| Duration::from_nanos(histogram.value_at_quantile(q));
        Some(Self {
            p50: at(0.50),
            p99: at(0.99),
            max: Duration::from_nanos(histogram.max()),
        })
    }
}

/// The table, in Markdown.
#[must_use]
pub fn render(rows: &[Row]) -> String {
    let mut out = String::from(
        "| workload | n | p50 | p99 | max | throughput | vs raw baseline | notes |\n|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for row in rows {
        let (p50, p99, max) = row.latency.map_or_else(
            || ("-".to_owned(), "-".to_owned(), "-".to_owned()),
            |l| {
                (
                    fmt_duration(l.p50),
                    fmt_duration(l.p99),
                    fmt_duration(l.max),
                )
            },
        );
        let throughput = row
            .throughput
            .map_or_else(|| "-".to_owned(), |(v, unit)| format!("{v:.0} {unit}"));
        out.push_str(&format!(
            "| {} | {} | {p50} | {p99} | {max} | {throughput} | {} | {} |\n",
            row.workload,
            row.count,
            row.ratio.as_deref().unwrap_or("-"),
            row.note
        ));
    }
    out
}

fn fmt_duration(d: Duration) -> String {
    let micros = d.as_secs_f64() * 1e6;
    if micros < 1000.0 {
        format!("{micros:.1} µs")
    } else {
        format!("{:.2} ms", micros / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_within_the_histogram_precision() {
        let samples: Vec<Duration> = (1..=1000).map(Duration::from_micros).collect();
        let p = Percentiles::of(&samples).unwrap();
        let near = |d: Duration, micros: u64| {
            let want = micros as f64 * 1000.0;
            (d.as_nanos() as f64 - want).abs() <= want * 0.001
        };
        assert!(near(p.p50, 500), "{p:?}");
        assert!(near(p.p99, 990), "{p:?}");
        assert!(near(p.max, 1000), "{p:?}");
        assert!(Percentiles::of(&[]).is_none());
    }

    #[test]
    fn the_table_has_the_header_and_a_dash_for_what_was_not_measured() {
        let text = render(&[Row::skipped("PostgreSQL", "no server")]);
        assert!(text.starts_with(
            "| workload | n | p50 | p99 | max | throughput | vs raw baseline | notes |\n"
        ));
        assert!(text.contains("| PostgreSQL | 0 | - | - | - | - | - | skipped: no server |"));
        assert_eq!(fmt_duration(Duration::from_nanos(1500)), "1.5 µs");
        assert_eq!(fmt_duration(Duration::from_micros(2345)), "2.35 ms");
    }
}
