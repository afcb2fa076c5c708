//! The cost of telemetry in instructions: `app serve` run under valgrind's callgrind
//! with `--telemetry off` and `on`, loaded with the HTTP throughput workload, and the
//! instructions it executed counted. Unlike throughput on this machine (whose speed
//! swings from minute to minute), the count hardly depends on the machine's mood, so it
//! tells a cost of one or two per cent apart from the noise.
//!
//! Each mode runs twice, with `small` and `large` orders; the difference between the two
//! counts divided by `large − small` is the instructions per flow, without the start and
//! the stop. The server runs some 50 times slower under callgrind, so the load is small;
//! how many blocking reads a flow takes depends a little on timing, so expect the per-flow
//! figures to move by about a per cent from run to run.
//!
//! Needs `valgrind` on the PATH (Debian's `valgrind` package); not in the default groups.

use std::{path::Path, process::Command, time::Duration};

use anyhow::Context as _;

use crate::{
    http::{ServerProcess, http_load},
    report::Row,
    scratch::Scratch,
};

/// Rows: instructions per flow with telemetry off, and on (as a ratio of off).
///
/// # Errors
/// When valgrind is missing, a server does not start or stop, or a flow fails.
pub async fn telemetry_instructions(
    app: &Path,
    small: usize,
    large: usize,
) -> anyhow::Result<Vec<Row>> {
    anyhow::ensure!(
        large > small,
        "--instructions-orders must be more than {small}"
    );
    let version = Command::new("valgrind")
        .arg("--version")
        .output()
        .context("valgrind is needed for the instruction counts (apt-get install valgrind)")?;
    anyhow::ensure!(version.status.success(), "valgrind --version failed");
    eprintln!(
        "bench: telemetry cost in instructions (app serve under callgrind, {small} and {large} orders per mode)…"
    );
    let folder = tempfile::Builder::new()
        .prefix("bench-callgrind-")
        .tempdir()
        .context("create a folder for callgrind's output")?;
    let mut per_flow = [0.0; 2];
    for (index, mode) in ["off", "on"].into_iter().enumerate() {
        let mut counts = [0u64; 2];
        for (slot, orders) in [small, large].into_iter().enumerate() {
            counts[slot] = count(app, folder.path(), mode, orders).await?;
        }
        per_flow[index] = counts[1].saturating_sub(counts[0]) as f64 / (large - small) as f64;
    }
    let [off, on] = per_flow;
    let note =
        format!("callgrind, app serve on SQLite, 256 clients; ({large} − {small} orders) per mode");
    Ok(vec![
        Row {
            workload: "instructions per flow of app serve, telemetry off".to_owned(),
            count: large - small,
            latency: None,
            throughput: Some((off, "instructions/flow")),
            ratio: None,
            note: note.clone(),
        },
        Row {
            workload:
                "instructions per flow of app serve, telemetry on (metrics + spans, no exporter)"
                    .to_owned(),
            count: large - small,
            latency: None,
            throughput: Some((on, "instructions/flow")),
            ratio: Some(format!("{:.3} × off", on / off)),
            note,
        },
    ])
}

/// Runs `app serve --telemetry MODE` under callgrind through `orders` flows and returns
/// the instructions it executed, start and stop included.
async fn count(app: &Path, folder: &Path, mode: &str, orders: usize) -> anyhow::Result<u64> {
    let out = folder.join(format!("{mode}-{orders}.out"));
    let scratch = Scratch::sqlite();
    let result = async {
        let tool = [
            "--tool=callgrind".to_owned(),
            format!("--callgrind-out-file={}", out.display()),
        ];
        let server = ServerProcess::start_under(
            Some(("valgrind", &tool[..])),
            app,
            "serve",
            &["--store", scratch.url.as_str(), "--telemetry", mode],
        )
        .await?;
        http_load(&server.base, 256, orders).await?;
        // SIGTERM: the server stops gracefully and callgrind writes its counts.
        server.terminate(Duration::from_secs(120)).await?;
        let text = std::fs::read_to_string(&out)
            .with_context(|| format!("read callgrind's output {}", out.display()))?;
        summary(&text).with_context(|| format!("no summary line in {}", out.display()))
    }
    .await;
    scratch.remove().await;
    result
}

/// The instruction total of a callgrind output file (its `summary:` or `totals:` line).
fn summary(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| {
            line.strip_prefix("summary:")
                .or_else(|| line.strip_prefix("totals:"))
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::summary;

    #[test]
    fn the_summary_line_gives_the_instruction_total() {
        let text = "version: 1\ncmd: app serve\nevents: Ir\nfl=(1) x\n0 3\nsummary: 165032223\n";
        assert_eq!(summary(text), Some(165_032_223));
        assert_eq!(summary("totals: 42\n"), Some(42));
        assert_eq!(summary("events: Ir\n"), None);
    }
}
