//! The dependency direction of DESIGN.md §3, checked against `cargo metadata`.
//!
//! The table of §3 is encoded below as data ([`RULES`]). Only *direct, normal*
//! dependencies of workspace members count: dev-dependencies (test helpers such as
//! `insta` or tokio's `test-util`) and build-dependencies may cross layers. A wrong arrow
//! fails `cargo xtask deps`, `cargo xtask ci`, and — through the test at the bottom of
//! this file — plain `cargo test --workspace`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::shell;

/// Which crates of ours (workspace members) a crate may depend on.
#[derive(Debug, Clone, Copy)]
pub enum Ours {
    /// Only the listed crates; an empty list means no crate of ours at all.
    Only(&'static [&'static str]),
    /// Any crate of ours: the composition root.
    Any,
}

/// One row of the table of DESIGN.md §3.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// The crate (package) name, like its folder under `crates/`.
    pub krate: &'static str,
    /// The layer, shown in the report so a reader sees why the rule is what it is.
    pub layer: &'static str,
    /// The workspace crates it may depend on; every other crate of ours is forbidden.
    pub may_use: Ours,
    /// External crates it must not depend on. Everything else external is allowed: the
    /// table's "may depend on" column for externals is advice, its absences are the rule.
    pub must_not_use: &'static [&'static str],
}

/// DESIGN.md §3 as data. A workspace member missing here fails the check, so a new crate
/// cannot slip in without deciding where it sits.
pub const RULES: &[Rule] = &[
    Rule {
        krate: "orders-domain",
        layer: "domain",
        may_use: Ours::Only(&[]),
        // No runtime, no async, no JSON, no logging, no I/O: the domain is pure.
        must_not_use: &[
            "tokio",
            "async-trait",
            "serde_json",
            "tracing",
            "sqlx",
            "rusqlite",
            "axum",
        ],
    },
    Rule {
        krate: "contracts",
        layer: "published language",
        may_use: Ours::Only(&[]),
        // Plain data shared by three contexts: no runtime and no I/O technology.
        must_not_use: &["tokio", "sqlx", "rusqlite", "axum"],
    },
    Rule {
        krate: "messaging",
        layer: "bus port + in-memory adapter",
        may_use: Ours::Only(&[]),
        must_not_use: &["sqlx", "rusqlite", "axum"],
    },
    Rule {
        krate: "orders-app",
        layer: "application",
        may_use: Ours::Only(&["orders-domain", "contracts", "messaging"]),
        // "No adapter crate": ours are excluded by the list above, and the
        // technologies the adapters wrap are excluded here.
        must_not_use: &["sqlx", "rusqlite", "axum", "async-nats"],
    },
    Rule {
        krate: "orders-store",
        layer: "storage adapters",
        // DESIGN.md §3 names orders-app and orders-domain. contracts and messaging are
        // allowed too, on purpose: the outbox stores and relays the integration messages
        // whose types orders-app's ports expose from those two crates. Never `app`.
        may_use: Ours::Only(&["orders-app", "orders-domain", "contracts", "messaging"]),
        must_not_use: &["axum"],
    },
    Rule {
        krate: "messaging-nats",
        layer: "NATS JetStream bus adapter",
        may_use: Ours::Only(&["messaging"]),
        must_not_use: &["sqlx", "axum"],
    },
    Rule {
        krate: "payments-sim",
        layer: "other context (simulated)",
        may_use: Ours::Only(&["contracts", "messaging"]),
        must_not_use: &[],
    },
    Rule {
        krate: "stock-sim",
        layer: "other context (simulated)",
        may_use: Ours::Only(&["contracts", "messaging"]),
        must_not_use: &[],
    },
    Rule {
        krate: "app",
        layer: "composition root",
        may_use: Ours::Any,
        must_not_use: &[],
    },
    Rule {
        krate: "bench",
        layer: "second composition root (benchmarks)",
        // The crates `app` wires, to wire them the same way in one process; never `app`
        // itself: the HTTP rows run the built `app` binary as a process.
        may_use: Ours::Only(&[
            "orders-domain",
            "contracts",
            "messaging",
            "orders-app",
            "orders-store",
            "payments-sim",
            "stock-sim",
        ]),
        must_not_use: &[],
    },
];

/// Workspace members outside the layering: the end-to-end test package and this one.
pub const EXEMPT: &[&str] = &["tests", "xtask"];

/// "One date-time crate for the whole workspace" (DESIGN.md §3): at most one of these.
pub const DATE_TIME_CRATES: &[&str] = &["chrono", "jiff", "time"];

/// A direct, normal dependency of a workspace member.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dep {
    /// The package name (not the `rename`d name the code uses).
    pub name: String,
    /// Whether it is a member of this workspace (a crate of ours).
    pub ours: bool,
}

/// What the check needs from `cargo metadata`: each member and its direct normal deps.
#[derive(Debug, Default)]
pub struct Workspace {
    /// Member name → its direct normal dependencies.
    pub members: BTreeMap<String, BTreeSet<Dep>>,
}

/// The outcome of a check: one row per table entry or member, and every violation.
#[derive(Debug, Default)]
pub struct Report {
    /// `[crate, layer, crates of ours it uses, verdict]`, in table order.
    pub rows: Vec<[String; 4]>,
    /// Precise, human-readable messages; empty when the direction holds.
    pub violations: Vec<String>,
}

impl Report {
    /// Whether every arrow points the way DESIGN.md §3 says.
    #[must_use]
    pub fn holds(&self) -> bool {
        self.violations.is_empty()
    }

    /// The rows as an aligned text table, followed by the violations.
    #[must_use]
    pub fn render(&self) -> String {
        let header = [
            "crate".to_owned(),
            "layer".to_owned(),
            "uses (ours)".to_owned(),
            "verdict".to_owned(),
        ];
        let mut widths = [0usize; 4];
        for row in std::iter::once(&header).chain(&self.rows) {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let line = row
                .iter()
                .zip(widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect::<Vec<_>>()
                .join("  ");
            let _ = writeln!(out, "{}", line.trim_end());
        }
        for violation in &self.violations {
            let _ = writeln!(out, "error: {violation}");
        }
        out
    }
}

/// Runs `cargo metadata` on the workspace at `root` and checks it against [`RULES`].
///
/// # Errors
/// When cargo metadata cannot be run or its output is not what cargo documents. A
/// violated rule is not an error here: it is in the returned [`Report`].
pub fn check_workspace(root: &Path) -> Result<Report> {
    let metadata = |extra: &[&str]| {
        shell::read_stdout(
            shell::cargo_command(root)
                .args(["metadata", "--format-version", "1"])
                .args(extra)
                .arg("--manifest-path")
                .arg(root.join("Cargo.toml")),
        )
    };
    // Full metadata (with `resolve`) first. It needs every package of the lock file,
    // for every platform, so offline it can fail where a build succeeds; the declared
    // dependencies of `--no-deps` already hold every direct one, so fall back to them.
    let json = match metadata(&[]) {
        Ok(json) => json,
        Err(full) => {
            eprintln!(
                "note: full cargo metadata failed, checking declared dependencies only \
                 (cargo metadata --no-deps): {full:#}"
            );
            metadata(&["--no-deps"])?
        }
    };
    let workspace = parse_metadata(&json)?;
    Ok(check(&workspace, RULES))
}

/// Extracts the members and their direct normal dependencies from `cargo metadata`
/// output: the declared ones (`packages[].dependencies`, optional ones included) and,
/// when present, the resolved ones (`resolve.nodes[].deps`).
///
/// # Errors
/// When the text is not JSON or lacks fields cargo's format version 1 always has.
pub fn parse_metadata(json: &str) -> Result<Workspace> {
    let metadata: Value = serde_json::from_str(json).context("cargo metadata: not JSON")?;
    let member_ids: BTreeSet<&str> = array(&metadata, "workspace_members")?
        .iter()
        .map(|id| {
            id.as_str()
                .context("cargo metadata: a workspace member id is not a string")
        })
        .collect::<Result<_>>()?;

    let mut names_by_id = BTreeMap::new();
    for package in array(&metadata, "packages")? {
        names_by_id.insert(string(package, "id")?, string(package, "name")?);
    }
    let member_names: BTreeSet<&str> = member_ids
        .iter()
        .map(|id| {
            names_by_id
                .get(id)
                .copied()
                .with_context(|| format!("cargo metadata: no package for member {id}"))
        })
        .collect::<Result<_>>()?;

    let mut workspace = Workspace::default();
    for name in &member_names {
        workspace
            .members
            .insert((*name).to_owned(), BTreeSet::new());
    }

    // Declared in Cargo.toml. A path dependency (no `source`) on a member is ours; a
    // registry crate that happens to share a member's name is not.
    for package in array(&metadata, "packages")? {
        if !member_ids.contains(string(package, "id")?) {
            continue;
        }
        let name = string(package, "name")?;
        for dependency in array(package, "dependencies")? {
            if !dependency.get("kind").is_none_or(Value::is_null) {
                continue; // "dev" or "build"
            }
            let dep_name = string(dependency, "name")?;
            let ours = dependency.get("source").is_none_or(Value::is_null)
                && member_names.contains(dep_name);
            insert(&mut workspace, name, dep_name, ours);
        }
    }

    // Resolved by cargo. `resolve` is null under `--no-deps`.
    if let Some(nodes) = metadata
        .get("resolve")
        .and_then(|resolve| resolve.get("nodes"))
        .and_then(Value::as_array)
    {
        for node in nodes {
            let id = string(node, "id")?;
            if !member_ids.contains(id) {
                continue;
            }
            let name = names_by_id
                .get(id)
                .copied()
                .with_context(|| format!("cargo metadata: no package for node {id}"))?;
            for dep in array(node, "deps")? {
                let normal = dep
                    .get("dep_kinds")
                    .and_then(Value::as_array)
                    .is_none_or(|kinds| {
                        kinds
                            .iter()
                            .any(|kind| kind.get("kind").is_none_or(Value::is_null))
                    });
                if !normal {
                    continue;
                }
                let pkg = string(dep, "pkg")?;
                let dep_name = names_by_id
                    .get(pkg)
                    .copied()
                    .with_context(|| format!("cargo metadata: no package for {pkg}"))?;
                insert(&mut workspace, name, dep_name, member_ids.contains(pkg));
            }
        }
    }
    Ok(workspace)
}

/// Records that `member` depends on `dep`.
fn insert(workspace: &mut Workspace, member: &str, dep: &str, ours: bool) {
    workspace
        .members
        .entry(member.to_owned())
        .or_default()
        .insert(Dep {
            name: dep.to_owned(),
            ours,
        });
}

/// The array under `key`, or an error naming it.
fn array<'a>(value: &'a Value, key: &str) -> Result<&'a Vec<Value>> {
    value
        .get(key)
        .and_then(Value::as_array)
        .with_context(|| format!("cargo metadata: `{key}` is missing or not an array"))
}

/// The string under `key`, or an error naming it.
fn string<'a>(value: &'a Value, key: &str) -> Result<&'a str> {
    value
        .get(key)
        .and_then(Value::as_str)
        .with_context(|| format!("cargo metadata: `{key}` is missing or not a string"))
}

/// Checks a workspace against the rules; pure, so it is tested on synthetic input.
#[must_use]
pub fn check(workspace: &Workspace, rules: &[Rule]) -> Report {
    let mut report = Report::default();

    for rule in rules {
        let Some(deps) = workspace.members.get(rule.krate) else {
            report.rows.push([
                rule.krate.to_owned(),
                rule.layer.to_owned(),
                String::new(),
                "absent (skipped)".to_owned(),
            ]);
            continue;
        };
        let before = report.violations.len();
        for dep in deps {
            if dep.ours {
                if let Ours::Only(allowed) = rule.may_use
                    && !allowed.contains(&dep.name.as_str())
                {
                    let may = if allowed.is_empty() {
                        "no crate of ours".to_owned()
                    } else {
                        allowed.join(", ")
                    };
                    report.violations.push(format!(
                        "{} must not depend on {} (DESIGN.md §3: {} may depend on {may})",
                        rule.krate, dep.name, rule.krate
                    ));
                }
            } else if rule.must_not_use.contains(&dep.name.as_str()) {
                report.violations.push(format!(
                    "{} must not depend on {} (DESIGN.md §3)",
                    rule.krate, dep.name
                ));
            }
        }
        let ours = deps
            .iter()
            .filter(|dep| dep.ours)
            .map(|dep| dep.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let found = report.violations.len() - before;
        let verdict = match found {
            0 => "ok".to_owned(),
            1 => "1 violation".to_owned(),
            n => format!("{n} violations"),
        };
        report.rows.push([
            rule.krate.to_owned(),
            rule.layer.to_owned(),
            if ours.is_empty() {
                "-".to_owned()
            } else {
                ours
            },
            verdict,
        ]);
    }

    for (member, deps) in &workspace.members {
        if EXEMPT.contains(&member.as_str()) {
            report.rows.push([
                member.clone(),
                "outside the layers".to_owned(),
                format!("{} deps, not checked", deps.len()),
                "exempt".to_owned(),
            ]);
        } else if !rules.iter().any(|rule| rule.krate == member) {
            report.rows.push([
                member.clone(),
                "?".to_owned(),
                String::new(),
                "not in the table".to_owned(),
            ]);
            report.violations.push(format!(
                "workspace member {member} is not in the dependency table: add it to the \
                 table in xtask/src/deps.rs (and to DESIGN.md §3)"
            ));
        }
    }

    let mut date_time_users: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (member, deps) in &workspace.members {
        if EXEMPT.contains(&member.as_str()) {
            continue;
        }
        for dep in deps {
            if !dep.ours && DATE_TIME_CRATES.contains(&dep.name.as_str()) {
                date_time_users
                    .entry(dep.name.as_str())
                    .or_default()
                    .push(member.as_str());
            }
        }
    }
    if date_time_users.len() > 1 {
        let uses = date_time_users
            .iter()
            .map(|(krate, users)| format!("{krate} in {}", users.join(", ")))
            .collect::<Vec<_>>()
            .join("; ");
        report.violations.push(format!(
            "the workspace must use one date-time crate, it uses {} ({uses}) (DESIGN.md §3)",
            date_time_users.len()
        ));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Builds `cargo metadata` JSON for a made-up workspace, so every rule can be shown
    /// to fail on the arrow it forbids.
    #[derive(Default)]
    struct FakeWorkspace {
        /// Member name → `(dependency, kind)` as declared in its manifest.
        declared: BTreeMap<String, Vec<(String, Option<&'static str>)>>,
        /// Member name → dependencies that only the resolve graph shows.
        resolved_only: BTreeMap<String, Vec<String>>,
        /// Registry crates named like a member (a crates.io `messaging`, say).
        registry_twins: BTreeSet<String>,
    }

    impl FakeWorkspace {
        fn member(mut self, name: &str, deps: &[&str]) -> Self {
            let deps = deps.iter().map(|dep| ((*dep).to_owned(), None)).collect();
            self.declared.insert(name.to_owned(), deps);
            self
        }

        fn dev_dep(mut self, member: &str, dep: &str) -> Self {
            self.declared
                .entry(member.to_owned())
                .or_default()
                .push((dep.to_owned(), Some("dev")));
            self
        }

        fn resolved_only(mut self, member: &str, dep: &str) -> Self {
            self.resolved_only
                .entry(member.to_owned())
                .or_default()
                .push(dep.to_owned());
            self
        }

        fn registry_twin(mut self, name: &str) -> Self {
            self.registry_twins.insert(name.to_owned());
            self
        }

        fn id(&self, name: &str, from_registry: bool) -> String {
            if !from_registry && self.declared.contains_key(name) {
                format!("path+file:///repo/crates/{name}#0.1.0")
            } else {
                format!("registry+https://github.com/rust-lang/crates.io-index#{name}@1.0.0")
            }
        }

        fn json(&self) -> String {
            let is_member = |name: &str| self.declared.contains_key(name);
            let twin = |name: &str| self.registry_twins.contains(name);
            let mut externals = BTreeSet::new();
            let mut packages = Vec::new();
            let mut nodes = Vec::new();
            for (member, deps) in &self.declared {
                let declared = deps
                    .iter()
                    .map(|(dep, kind)| {
                        let path = is_member(dep) && !twin(dep);
                        if !path {
                            externals.insert(dep.clone());
                        }
                        json!({
                            "name": dep,
                            "source": if path { Value::Null } else {
                                json!("registry+https://github.com/rust-lang/crates.io-index")
                            },
                            "kind": kind,
                            "optional": false,
                        })
                    })
                    .collect::<Vec<_>>();
                packages.push(json!({
                    "id": self.id(member, false),
                    "name": member,
                    "dependencies": declared,
                }));
                let resolved_extra = self.resolved_only.get(member).cloned().unwrap_or_default();
                externals.extend(resolved_extra.iter().filter(|dep| !is_member(dep)).cloned());
                let resolved = deps
                    .iter()
                    .map(|(dep, kind)| (dep.clone(), *kind))
                    .chain(resolved_extra.into_iter().map(|dep| (dep, None)))
                    .map(|(dep, kind)| {
                        json!({
                            "name": dep.replace('-', "_"),
                            "pkg": self.id(&dep, twin(&dep)),
                            "dep_kinds": [{ "kind": kind, "target": null }],
                        })
                    })
                    .collect::<Vec<_>>();
                nodes.push(json!({ "id": self.id(member, false), "deps": resolved }));
            }
            for external in &externals {
                packages.push(json!({
                    "id": self.id(external, true),
                    "name": external,
                    "dependencies": [],
                }));
            }
            let members = self
                .declared
                .keys()
                .map(|member| self.id(member, false))
                .collect::<Vec<_>>();
            json!({
                "packages": packages,
                "workspace_members": members,
                "resolve": { "nodes": nodes, "root": null },
                "version": 1,
            })
            .to_string()
        }

        fn check(&self) -> Report {
            check(&parse_metadata(&self.json()).unwrap(), RULES)
        }
    }

    /// The workspace as DESIGN.md §3 intends it.
    fn as_designed() -> FakeWorkspace {
        FakeWorkspace::default()
            .member(
                "orders-domain",
                &["chrono", "rust_decimal", "thiserror", "uuid"],
            )
            .member("contracts", &["chrono", "serde", "rust_decimal", "uuid"])
            .member(
                "messaging",
                &["tokio", "async-trait", "serde_json", "tracing"],
            )
            .member(
                "orders-app",
                &["orders-domain", "contracts", "messaging", "tokio"],
            )
            .member(
                "orders-store",
                &["orders-app", "orders-domain", "messaging", "sqlx"],
            )
            .member("messaging-nats", &["messaging", "async-nats"])
            .member("payments-sim", &["contracts", "messaging"])
            .member("stock-sim", &["contracts", "messaging"])
            .member(
                "app",
                &["orders-app", "orders-store", "payments-sim", "axum"],
            )
            .member("tests", &["app", "orders-domain", "sqlx"])
            .member("xtask", &["anyhow", "serde_json"])
    }

    #[test]
    fn the_designed_workspace_passes() {
        let report = as_designed().check();
        assert!(report.holds(), "{}", report.render());
    }

    #[test]
    fn orders_domain_depending_on_tokio_fails_with_a_precise_message() {
        let report = as_designed()
            .member("orders-domain", &["rust_decimal", "tokio"])
            .check();
        assert_eq!(
            report.violations,
            ["orders-domain must not depend on tokio (DESIGN.md §3)"]
        );
    }

    #[test]
    fn payments_sim_depending_on_orders_domain_fails() {
        let report = as_designed()
            .member("payments-sim", &["contracts", "messaging", "orders-domain"])
            .check();
        assert_eq!(
            report.violations,
            ["payments-sim must not depend on orders-domain \
              (DESIGN.md §3: payments-sim may depend on contracts, messaging)"]
        );
    }

    #[test]
    fn orders_domain_depending_on_any_crate_of_ours_fails() {
        let report = as_designed()
            .member("orders-domain", &["contracts"])
            .check();
        assert_eq!(
            report.violations,
            ["orders-domain must not depend on contracts \
              (DESIGN.md §3: orders-domain may depend on no crate of ours)"]
        );
    }

    #[test]
    fn orders_app_depending_on_an_adapter_or_app_fails() {
        let report = as_designed()
            .member(
                "orders-app",
                &["orders-domain", "orders-store", "app", "sqlx"],
            )
            .check();
        assert_eq!(report.violations.len(), 3, "{}", report.render());
        assert!(report.violations[0].starts_with("orders-app must not depend on app "));
        assert!(report.violations[1].starts_with("orders-app must not depend on orders-store "));
        assert_eq!(
            report.violations[2],
            "orders-app must not depend on sqlx (DESIGN.md §3)"
        );
    }

    #[test]
    fn orders_store_depending_on_app_fails() {
        let report = as_designed()
            .member("orders-store", &["orders-app", "app"])
            .check();
        assert_eq!(report.violations.len(), 1, "{}", report.render());
        assert!(report.violations[0].starts_with("orders-store must not depend on app "));
    }

    #[test]
    fn messaging_nats_may_depend_on_messaging_only() {
        let report = as_designed()
            .member("messaging-nats", &["messaging", "orders-app"])
            .check();
        assert_eq!(report.violations.len(), 1, "{}", report.render());
        assert!(report.violations[0].starts_with("messaging-nats must not depend on orders-app "));
    }

    #[test]
    fn a_dev_dependency_may_cross_layers() {
        let report = as_designed()
            .dev_dep("orders-domain", "tokio")
            .dev_dep("orders-domain", "serde_json")
            .dev_dep("payments-sim", "orders-domain")
            .check();
        assert!(report.holds(), "{}", report.render());
    }

    #[test]
    fn a_dependency_only_the_resolve_graph_shows_still_counts() {
        let report = as_designed()
            .resolved_only("contracts", "tokio")
            .resolved_only("stock-sim", "orders-app")
            .check();
        assert_eq!(
            report.violations,
            [
                "contracts must not depend on tokio (DESIGN.md §3)",
                "stock-sim must not depend on orders-app \
                 (DESIGN.md §3: stock-sim may depend on contracts, messaging)",
            ]
        );
    }

    #[test]
    fn a_member_missing_from_the_table_fails_and_says_to_add_it() {
        let report = as_designed().member("shipping-sim", &["messaging"]).check();
        assert_eq!(report.violations.len(), 1, "{}", report.render());
        assert!(report.violations[0].contains("shipping-sim"));
        assert!(report.violations[0].contains("add it to the table"));
    }

    #[test]
    fn a_crate_of_the_table_that_does_not_exist_yet_is_skipped() {
        let mut workspace = as_designed();
        workspace.declared.remove("messaging-nats");
        let report = workspace.check();
        assert!(report.holds(), "{}", report.render());
        assert!(report.render().contains("absent (skipped)"));
    }

    #[test]
    fn a_registry_crate_named_like_a_member_is_not_ours() {
        // A crates.io crate called `app` is an external dependency, not our `app`.
        let report = as_designed()
            .registry_twin("app")
            .member("contracts", &["serde", "app"])
            .check();
        assert!(report.holds(), "{}", report.render());
    }

    #[test]
    fn two_date_time_crates_in_the_workspace_fail() {
        let report = as_designed()
            .member("payments-sim", &["contracts", "messaging", "time"])
            .check();
        assert_eq!(report.violations.len(), 1, "{}", report.render());
        assert_eq!(
            report.violations[0],
            "the workspace must use one date-time crate, it uses 2 \
             (chrono in contracts, orders-domain; time in payments-sim) (DESIGN.md §3)"
        );
    }

    #[test]
    fn the_table_only_names_crates_it_has_rows_for() {
        for rule in RULES {
            if let Ours::Only(allowed) = rule.may_use {
                for krate in allowed {
                    assert!(
                        RULES.iter().any(|other| other.krate == *krate),
                        "{} may use {krate}, which has no row",
                        rule.krate
                    );
                    assert_ne!(*krate, rule.krate);
                }
            }
        }
    }

    #[test]
    fn metadata_that_is_not_json_is_an_error_not_a_panic() {
        assert!(parse_metadata("warning: something\n{").is_err());
        assert!(parse_metadata("{}").is_err());
    }

    #[test]
    fn the_dependency_direction_of_design_md_holds() {
        let root = shell::repo_root().unwrap();
        let report = check_workspace(&root).unwrap();
        assert!(report.holds(), "\n{}", report.render());
    }
}
