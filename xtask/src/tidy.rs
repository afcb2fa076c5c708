//! Tidy: style rules of STYLE.md that a machine can check, run as ordinary tests (after
//! rust-analyzer's `xtask/src/tidy.rs`).
//!
//! * Every `.rs` file under `crates/`, `tests/` and `xtask/` opens with a `//!` doc
//!   saying what it is for (practice 8): the first non-empty line starts with `//!`, so
//!   not even an `#![...]` attribute may come before it.
//! * No test is switched off or expects a panic, and nothing sleeps to wait for a flow
//!   (practice 9): no `#[ignore`, `#[should_panic` or `thread::sleep` in any `.rs` file.
//!   This file is the one exception, because it has to spell them out.
//! * Tests and scenarios do not poll (practice 9): no `sleep(` or `sleep_until(` in a
//!   file under a `tests` folder or a `scenarios` module, where a short sleep in a loop
//!   stands in for the change notifications that exist. A deliberate pause (pacing a load,
//!   holding a state for a while) says so on its line or the line above with
//!   `// tidy: allow(sleep) — <reason>` (in the comment block right above also counts).

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The folders, relative to the repository root, whose Rust files are checked.
pub const CHECKED_FOLDERS: &[&str] = &["crates", "tests", "xtask"];

/// Text no Rust file may contain, and why. Prefixes, so `#[ignore = "slow"]` and
/// `#[should_panic(expected = "…")]` are caught too.
pub const FORBIDDEN: &[(&str, &str)] = &[
    (
        "#[ignore",
        "a test is switched off with #[ignore] (STYLE.md practice 9)",
    ),
    (
        "#[should_panic",
        "a test expects a panic with #[should_panic]; assert on the typed error instead \
         (STYLE.md practice 9)",
    ),
    (
        "thread::sleep",
        "std::thread::sleep: await a condition with a deadline instead (STYLE.md practice 9)",
    ),
];

/// The marker that allows one deliberate sleep in a test or scenario, followed by its
/// reason.
pub const ALLOW_SLEEP: &str = "tidy: allow(sleep)";

/// Whether a file (relative, `/`-separated) is test or scenario code, where sleeping is
/// polling unless marked with [`ALLOW_SLEEP`].
#[must_use]
pub fn is_test_or_scenario(name: &str) -> bool {
    name.split('/')
        .any(|part| matches!(part, "tests" | "scenarios" | "scenarios.rs"))
}

/// One broken rule at one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The file, relative to the repository root, with `/` separators.
    pub file: String,
    /// The 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// Checks every Rust file of [`CHECKED_FOLDERS`] under `root`.
///
/// # Errors
/// When a folder or file cannot be read.
pub fn check_repository(root: &Path) -> Result<Vec<Finding>> {
    let mut files = Vec::new();
    for folder in CHECKED_FOLDERS {
        let folder = root.join(folder);
        if folder.is_dir() {
            collect_rust_files(&folder, &mut files)?;
        }
    }
    files.sort();
    let this_file = Path::new("xtask").join("src").join("tidy.rs");

    let mut findings = Vec::new();
    for path in files {
        let relative = path.strip_prefix(root).unwrap_or(&path);
        let name = relative
            .components()
            .map(|part| part.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        findings.extend(check_file(&name, &text, relative != this_file));
    }
    Ok(findings)
}

/// Adds every `.rs` file under `folder` to `files`, skipping `target` folders and hidden
/// ones (`.git`, editor folders).
fn collect_rust_files(folder: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let entries =
        fs::read_dir(folder).with_context(|| format!("cannot list {}", folder.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", folder.display()))?;
        let path = entry.path();
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        let kind = entry
            .file_type()
            .with_context(|| format!("cannot stat {}", path.display()))?;
        if kind.is_dir() {
            if file_name != "target" && !file_name.starts_with('.') {
                collect_rust_files(&path, files)?;
            }
        } else if kind.is_file() && file_name.ends_with(".rs") {
            files.push(path);
        }
    }
    Ok(())
}

/// Checks one file's text; `search_forbidden` is false only for this file.
#[must_use]
pub fn check_file(name: &str, text: &str, search_forbidden: bool) -> Vec<Finding> {
    let mut findings = Vec::new();
    let first = text
        .lines()
        .enumerate()
        .find(|(_, line)| !line.trim().is_empty());
    match first {
        Some((_, line)) if line.trim_start_matches('\u{feff}').starts_with("//!") => {}
        Some((index, line)) => findings.push(Finding {
            file: name.to_owned(),
            line: index + 1,
            message: format!(
                "the file must open with a `//!` doc saying what it is for, not `{}`",
                shorten(line.trim())
            ),
        }),
        None => findings.push(Finding {
            file: name.to_owned(),
            line: 1,
            message: "the file is empty: it must open with a `//!` doc saying what it is for"
                .to_owned(),
        }),
    }
    if search_forbidden && is_test_or_scenario(name) {
        let lines: Vec<&str> = text.lines().collect();
        for (index, line) in lines.iter().enumerate() {
            let sleeps = line.contains("sleep(") || line.contains("sleep_until(");
            // The marker may sit on the line itself or in the comment block right above.
            let allowed = line.contains(ALLOW_SLEEP)
                || lines[..index]
                    .iter()
                    .rev()
                    .take_while(|above| above.trim_start().starts_with("//"))
                    .any(|above| above.contains(ALLOW_SLEEP));
            if sleeps && !allowed && !line.trim_start().starts_with("//") {
                findings.push(Finding {
                    file: name.to_owned(),
                    line: index + 1,
                    message: format!(
                        "a sleep in a test or scenario: await a change notification or a \
                         condition with a deadline instead, or mark a deliberate pause with \
                         `// {ALLOW_SLEEP} — <reason>` (STYLE.md practice 9)"
                    ),
                });
            }
        }
    }
    if search_forbidden {
        for (index, line) in text.lines().enumerate() {
            for (needle, why) in FORBIDDEN {
                if line.contains(needle) {
                    findings.push(Finding {
                        file: name.to_owned(),
                        line: index + 1,
                        message: (*why).to_owned(),
                    });
                }
            }
        }
    }
    findings
}

/// The first 60 characters of a line, for messages.
fn shorten(line: &str) -> String {
    let mut short: String = line.chars().take(60).collect();
    if short.len() < line.len() {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    fn findings(text: &str) -> Vec<String> {
        check_file("crates/x/src/lib.rs", text, true)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_file_opening_with_a_module_doc_passes() {
        assert!(findings("\n//! What this is for.\n\nfn f() {}\n").is_empty());
    }

    #[test]
    fn a_file_opening_with_code_or_an_attribute_fails() {
        assert_eq!(
            findings("use std::fs;\n"),
            [
                "crates/x/src/lib.rs:1: the file must open with a `//!` doc saying what it is \
              for, not `use std::fs;`"
            ]
        );
        assert_eq!(findings("#![forbid(unsafe_code)]\n//! Doc.\n").len(), 1);
        assert_eq!(findings("// a plain comment\n//! Doc.\n").len(), 1);
        assert_eq!(findings("").len(), 1);
    }

    #[test]
    fn ignored_panicking_and_sleeping_tests_fail_with_their_line() {
        let text = "//! Doc.\n#[test]\n#[ignore = \"slow\"]\nfn a() {}\n\
                    #[should_panic]\nfn b() { std::thread::sleep(d); }\n";
        let found = findings(text);
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(found[0].starts_with("crates/x/src/lib.rs:3: a test is switched off"));
        assert!(found[1].starts_with("crates/x/src/lib.rs:5: a test expects a panic"));
        assert!(found[2].starts_with("crates/x/src/lib.rs:6: std::thread::sleep"));
    }

    #[test]
    fn a_sleep_in_a_test_or_scenario_fails_unless_marked_with_a_reason() {
        let polling = "//! Doc.\nloop {\n    tokio::time::sleep(ms(1)).await;\n}\n";
        for name in [
            "crates/app/tests/http.rs",
            "tests/tests/e2e.rs",
            "crates/app/src/scenarios/cancel.rs",
            "crates/app/src/scenarios.rs",
        ] {
            let found = check_file(name, polling, true);
            assert_eq!(found.len(), 1, "{name}: {found:#?}");
            assert_eq!(found[0].line, 3);
            assert!(found[0].message.contains("a sleep in a test or scenario"));
        }
        let marked_above =
            "//! Doc.\n// tidy: allow(sleep) — paces the load\nsleep(ms(5)).await;\n";
        let marked_in_block = "//! Doc.\n// tidy: allow(sleep) — a child process\n// gives no signal.\nsleep(ms(5)).await;\n";
        assert!(check_file("crates/app/tests/crash.rs", marked_in_block, true).is_empty());
        let marked_inline =
            "//! Doc.\nsleep_until(stop).await; // tidy: allow(sleep) — load runs 3 s\n";
        assert!(check_file("crates/app/tests/crash.rs", marked_above, true).is_empty());
        assert!(check_file("crates/app/tests/crash.rs", marked_inline, true).is_empty());
        // Production code may wait on a timer (a relay's poll interval, a backoff).
        assert!(check_file("crates/orders-app/src/relay.rs", polling, true).is_empty());
    }

    #[test]
    fn this_file_may_name_what_it_forbids() {
        assert!(check_file("xtask/src/tidy.rs", "//! Doc.\n#[ignore]\n", false).is_empty());
    }

    #[test]
    fn every_rust_file_opens_with_a_doc_and_no_test_is_ignored_panicking_or_sleeping() {
        let root = crate::shell::repo_root().unwrap();
        let findings = check_repository(&root).unwrap();
        let listed: Vec<String> = findings.iter().map(ToString::to_string).collect();
        assert!(
            findings.is_empty(),
            "tidy: {} finding(s):\n{}",
            findings.len(),
            listed.join("\n")
        );
    }
}
