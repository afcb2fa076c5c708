//! `cargo xtask`: the project's automation, in Rust, run through the alias in
//! `.cargo/config.toml` (`xtask = "run --package xtask --"`).
//!
//! Run `cargo xtask` alone to list the tasks. `cargo xtask ci` is what CI runs (through
//! `.ci/run`, which first makes sure PostgreSQL and NATS answer); it exits non-zero on the
//! first failing step. Every child process is killed and reaped when its step ends, even
//! when the step fails.
//!
//! Dependencies are anyhow, serde_json, cargo_metadata (for `deps`), `contracts`
//! (with its `schema` feature, for `schemas`) and tokio (for `cluster`'s child processes
//! and Ctrl-C); arguments are parsed by hand.

mod cluster;
mod deps;
mod schemas;
mod services;
mod shell;
mod tidy;

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A task: `cargo xtask <name> [args]`.
struct Task {
    /// What to type after `cargo xtask`.
    name: &'static str,
    /// How its arguments are written in the task list (empty: it takes none).
    args: &'static str,
    /// One line for the task list.
    about: &'static str,
    /// The work, given the repository root and the arguments after the name.
    run: fn(&Path, &[String]) -> Result<()>,
}

/// Every task, in the order the task list shows them.
const TASKS: &[Task] = &[
    Task {
        name: "ci",
        args: "",
        about: "fmt check, clippy -D warnings, dependency direction, schema compatibility, all tests (what CI runs)",
        run: ci,
    },
    Task {
        name: "e2e",
        args: "",
        about: "the end-to-end tests: cargo test -p tests, then the app's cross-process tests over NATS",
        run: e2e,
    },
    Task {
        name: "cluster",
        args: "[--nats URL] [--orders-port N] [--payments-port N] [--stock-port N] [--store S] [--prefix P]",
        about: "Orders, Payments and Stock as three processes on NATS (started if none answers); Ctrl-C stops all",
        run: cluster::task,
    },
    Task {
        name: "bench",
        args: "[ARGS...]",
        about: "cargo build --release -p app -p bench, then bench --app-bin <target>/release/app [ARGS...]",
        run: bench,
    },
    Task {
        name: "deps",
        args: "",
        about: "check the crate dependency direction of docs/design.md §3",
        run: deps_task,
    },
    Task {
        name: "schemas",
        args: "[--check | --release]",
        about: "write the contract JSON Schemas; --check drift and compatibility; --release [--retire TOPIC --note TEXT]",
        run: schemas::task,
    },
    Task {
        name: "tidy",
        args: "",
        about: "check the style rules that tests also check (//! docs, no ignored tests, no sleeps)",
        run: tidy_task,
    },
];

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Parses the arguments and runs the task they name.
fn run() -> Result<()> {
    let args = std::env::args_os()
        .skip(1)
        .map(|arg| {
            arg.into_string()
                .map_err(|arg| anyhow::anyhow!("argument {arg:?} is not valid UTF-8"))
        })
        .collect::<Result<Vec<String>>>()?;
    let Some((name, rest)) = args.split_first() else {
        print!("{}", usage());
        return Ok(());
    };
    if matches!(name.as_str(), "help" | "-h" | "--help") {
        print!("{}", usage());
        return Ok(());
    }
    let Some(task) = TASKS.iter().find(|task| task.name == name) else {
        bail!("unknown task `{name}`\n\n{}", usage());
    };
    if task.args.is_empty() && !rest.is_empty() {
        bail!("task `{name}` takes no arguments, got: {}", rest.join(" "));
    }
    let root = shell::repo_root()?;
    (task.run)(&root, rest)
}

/// The task list.
fn usage() -> String {
    let width = TASKS
        .iter()
        .map(|task| signature(task).len())
        .max()
        .unwrap_or_default();
    let mut text = String::from("Usage: cargo xtask <TASK> [ARGS...]\n\nTasks:\n");
    for task in TASKS {
        text.push_str(&format!("  {:<width$}  {}\n", signature(task), task.about));
    }
    text
}

/// `bench [ARGS...]`, as the task list shows it.
fn signature(task: &Task) -> String {
    if task.args.is_empty() {
        task.name.to_owned()
    } else {
        format!("{} {}", task.name, task.args)
    }
}

/// One step of `ci`.
struct Step {
    /// Shown in progress lines and in the summary.
    name: &'static str,
    /// The work.
    run: fn(&Path) -> Result<()>,
}

/// `cargo xtask ci`: every step in order; stops at the first failure.
fn ci(root: &Path, _: &[String]) -> Result<()> {
    let steps = [
        Step {
            name: "fmt",
            run: |root| {
                shell::run(shell::cargo_command(root).args(["fmt", "--all", "--", "--check"]))
            },
        },
        Step {
            name: "clippy",
            run: |root| {
                shell::run(shell::cargo_command(root).args([
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ]))
            },
        },
        Step {
            name: "deps",
            run: |root| deps_task(root, &[]),
        },
        Step {
            name: "schemas",
            run: |root| schemas::task(root, &["--check".to_owned()]),
        },
        Step {
            name: "test",
            run: |root| {
                services::report_reachability();
                let mut command = shell::cargo_command(root);
                command.args(["test", "--workspace"]);
                services::provide_env(&mut command);
                shell::run(&mut command)
            },
        },
    ];

    let started = Instant::now();
    let total = steps.len();
    // The time each step that ran took; the last one failed if `failure` is set.
    let mut timings: Vec<Duration> = Vec::new();
    let mut failure = None;
    for (index, step) in steps.iter().enumerate() {
        let number = index + 1;
        eprintln!("==> [{number}/{total}] {}", step.name);
        let step_started = Instant::now();
        let result = (step.run)(root);
        let elapsed = step_started.elapsed();
        timings.push(elapsed);
        let elapsed = seconds(elapsed);
        match result {
            Ok(()) => eprintln!("<== [{number}/{total}] {} ok in {elapsed}", step.name),
            Err(error) => {
                eprintln!(
                    "<== [{number}/{total}] {} FAILED after {elapsed}",
                    step.name
                );
                failure = Some((step.name, error));
                break;
            }
        }
    }

    eprintln!("\nci summary:");
    for (index, step) in steps.iter().enumerate() {
        let verdict = match timings.get(index) {
            None => "skipped".to_owned(),
            Some(elapsed) if failure.is_some() && index + 1 == timings.len() => {
                format!("FAILED  {}", seconds(*elapsed))
            }
            Some(elapsed) => format!("ok      {}", seconds(*elapsed)),
        };
        eprintln!("  {:<8}{verdict}", step.name);
    }
    eprintln!("  {:<8}{}", "total", seconds(started.elapsed()));

    match failure {
        None => {
            eprintln!("ci: all {total} steps passed");
            Ok(())
        }
        Some((name, error)) => Err(error.context(format!("ci failed at step `{name}`"))),
    }
}

/// `1.2s`, or `3m04s` for long steps.
fn seconds(elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let whole = elapsed.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

/// The `app` test targets that run the `app` binary as processes over NATS: the roles,
/// every demo scenario and the two-replica load (`cluster`), the crash test.
const CROSS_PROCESS_TESTS: &[&str] = &["roles", "cluster", "crash_nats"];

/// `cargo xtask e2e`: the end-to-end test package, then the cross-process tests of
/// `app`, with the service addresses.
fn e2e(root: &Path, _: &[String]) -> Result<()> {
    services::report_reachability();
    let mut command = shell::cargo_command(root);
    command.args(["test", "-p", "tests"]);
    services::provide_env(&mut command);
    shell::run(&mut command)?;
    let mut command = shell::cargo_command(root);
    command.args(["test", "-p", "app"]);
    for test in CROSS_PROCESS_TESTS {
        command.args(["--test", test]);
    }
    // Their counts (orders, kills, elapsed) and the scenarios' transcripts are the point.
    command.args(["--", "--nocapture"]);
    services::provide_env(&mut command);
    shell::run(&mut command)
}

/// `cargo xtask bench [ARGS...]`: builds `app` and `bench` in release mode, then runs
/// the bench binary with the built `app` as the server of its HTTP rows.
fn bench(root: &Path, args: &[String]) -> Result<()> {
    shell::run(shell::cargo_command(root).args([
        "build",
        "--release",
        "-p",
        "app",
        "-p",
        "bench",
    ]))?;
    let release = target_dir(root).join("release");
    let exe = |name: &str| release.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    shell::run(
        std::process::Command::new(exe("bench"))
            .current_dir(root)
            .arg("--app-bin")
            .arg(exe("app"))
            .args(args),
    )
}

/// Where cargo puts its builds: `CARGO_TARGET_DIR` (relative to the repository root) when
/// set, else `target/` in the repository root.
fn target_dir(root: &Path) -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| root.join("target"), |dir| root.join(dir))
}

/// `cargo xtask deps`: prints the table of docs/design.md §3 with a verdict per crate.
fn deps_task(root: &Path, _: &[String]) -> Result<()> {
    let report = deps::check_workspace(root).context("dependency direction check")?;
    print!("{}", report.render());
    if !report.holds() {
        bail!(
            "{} violation(s) of the dependency direction (docs/design.md §3); first: {}",
            report.violations.len(),
            report.violations.first().map_or("", String::as_str)
        );
    }
    println!("dependency direction: ok (docs/design.md §3)");
    Ok(())
}

/// `cargo xtask tidy`: prints every tidy finding.
fn tidy_task(root: &Path, _: &[String]) -> Result<()> {
    let findings = tidy::check_repository(root)?;
    for finding in &findings {
        println!("{finding}");
    }
    if !findings.is_empty() {
        bail!("tidy: {} finding(s)", findings.len());
    }
    println!("tidy: ok");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_list_names_every_task() {
        let text = usage();
        for task in TASKS {
            assert!(text.contains(&format!("  {}", signature(task))), "{text}");
        }
    }

    #[test]
    fn every_cross_process_test_of_e2e_exists() {
        let root = shell::repo_root().unwrap();
        for test in CROSS_PROCESS_TESTS {
            let file = root.join("crates/app/tests").join(format!("{test}.rs"));
            assert!(file.is_file(), "{} is missing", file.display());
        }
    }

    #[test]
    fn durations_read_as_seconds_or_minutes() {
        assert_eq!(seconds(Duration::from_millis(1250)), "1.2s");
        assert_eq!(seconds(Duration::from_secs(184)), "3m04s");
    }
}
