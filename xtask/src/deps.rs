//! The dependency direction of docs/design.md §3, checked against `cargo metadata`.
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
use cargo_metadata::{DependencyKind, Metadata, MetadataCommand, Package, PackageId};

/// Which crates of ours (workspace members) a crate may depend on.
#[derive(Debug, Clone, Copy)]
pub enum Ours {
    /// Only the listed crates; an empty list means no crate of ours at all.
    Only(&'static [&'static str]),
    /// Any crate of ours: the composition root.
    Any,
}

/// One row of the table of docs/design.md §3.
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

/// docs/design.md §3 as data. A workspace member missing here fails the check, so a new crate
/// cannot slip in without deciding where it sits.
pub const RULES: &[Rule] = &[
    Rule {
        krate: "orders-domain",
        layer: "domain",
        may_use: Ours::Only(&[]),
        // No runtime, no async, no serialization, no logging, no I/O: the domain is
        // pure; the wire format is the contracts crate's business.
        must_not_use: &[
            "serde",
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
        // docs/design.md §3 names orders-app and orders-domain. contracts and messaging are
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
        // The service ships no HTTP client and no SQL driver of its own: load generators
        // and raw-driver baselines live in `bench`, the drivers behind orders-store.
        must_not_use: &[
            "reqwest",
            "hyper-util",
            "http-body-util",
            "ureq",
            "rusqlite",
            "sqlx",
        ],
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

/// "One date-time crate for the whole workspace" (docs/design.md §3): at most one of these.
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
    /// Whether every arrow points the way docs/design.md §3 says.
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
/// When cargo metadata cannot be run or its output cannot be read. A violated rule is
/// not an error here: it is in the returned [`Report`].
pub fn check_workspace(root: &Path) -> Result<Report> {
    let metadata = |no_deps: bool| {
        let mut command = MetadataCommand::new();
        command.manifest_path(root.join("Cargo.toml"));
        if let Some(cargo) = std::env::var_os("CARGO") {
            command.cargo_path(cargo);
        }
        if no_deps {
            command.no_deps();
        }
        command.exec()
    };
    // Full metadata (with `resolve`) first. It needs every package of the lock file,
    // for every platform, so offline it can fail where a build succeeds; the declared
    // dependencies of `--no-deps` already hold every direct one, so fall back to them.
    let metadata = match metadata(false) {
        Ok(metadata) => metadata,
        Err(full) => {
            eprintln!(
                "note: full cargo metadata failed, checking declared dependencies only \
                 (cargo metadata --no-deps): {full}"
            );
            metadata(true).context("cargo metadata --no-deps")?
        }
    };
    Ok(check(&Workspace::from_metadata(&metadata), RULES))
}

impl Workspace {
    /// The members and their direct normal dependencies: the declared ones (optional
    /// ones included) and, when cargo resolved the graph, the resolved ones.
    #[must_use]
    pub fn from_metadata(metadata: &Metadata) -> Self {
        let member_ids: BTreeSet<&PackageId> = metadata.workspace_members.iter().collect();
        let members: Vec<&Package> = metadata
            .packages
            .iter()
            .filter(|package| member_ids.contains(&package.id))
            .collect();
        let member_names: BTreeSet<&str> = members
            .iter()
            .map(|package| package.name.as_str())
            .collect();

        let mut workspace = Workspace::default();
        for package in &members {
            workspace
                .members
                .entry(package.name.to_string())
                .or_default();
            // A path dependency (no `source`) on a member is ours; a registry crate that
            // happens to share a member's name is not.
            for dependency in &package.dependencies {
                if dependency.kind != DependencyKind::Normal {
                    continue;
                }
                let ours =
                    dependency.source.is_none() && member_names.contains(dependency.name.as_str());
                workspace.insert(&package.name, &dependency.name, ours);
            }
        }

        let Some(resolve) = &metadata.resolve else {
            return workspace;
        };
        for node in &resolve.nodes {
            let Some(package) = members.iter().find(|package| package.id == node.id) else {
                continue;
            };
            for dep in &node.deps {
                let normal = dep.dep_kinds.is_empty()
                    || dep
                        .dep_kinds
                        .iter()
                        .any(|kind| kind.kind == DependencyKind::Normal);
                if !normal {
                    continue;
                }
                if let Some(target) = metadata.packages.iter().find(|p| p.id == dep.pkg) {
                    workspace.insert(&package.name, &target.name, member_ids.contains(&dep.pkg));
                }
            }
        }
        workspace
    }

    /// Records that `member` depends on `dep`.
    fn insert(&mut self, member: &str, dep: &str, ours: bool) {
        self.members
            .entry(member.to_owned())
            .or_default()
            .insert(Dep {
                name: dep.to_owned(),
                ours,
            });
    }
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
                        "{} must not depend on {} (docs/design.md §3: {} may depend on {may})",
                        rule.krate, dep.name, rule.krate
                    ));
                }
            } else if rule.must_not_use.contains(&dep.name.as_str()) {
                report.violations.push(format!(
                    "{} must not depend on {} (docs/design.md §3)",
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
                 table in xtask/src/deps.rs (and to docs/design.md §3)"
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
            "the workspace must use one date-time crate, it uses {} ({uses}) (docs/design.md §3)",
            date_time_users.len()
        ));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell;

    /// A made-up workspace, so every rule can be shown to fail on the arrow it forbids.
    #[derive(Default)]
    struct FakeWorkspace {
        /// Member name → `(dependency, dev?)` as declared in its manifest.
        declared: BTreeMap<String, Vec<(String, bool)>>,
        /// Registry crates named like a member (a crates.io `messaging`, say).
        registry_twins: BTreeSet<String>,
    }

    impl FakeWorkspace {
        fn member(mut self, name: &str, deps: &[&str]) -> Self {
            let deps = deps.iter().map(|dep| ((*dep).to_owned(), false)).collect();
            self.declared.insert(name.to_owned(), deps);
            self
        }

        fn dev_dep(mut self, member: &str, dep: &str) -> Self {
            self.declared
                .entry(member.to_owned())
                .or_default()
                .push((dep.to_owned(), true));
            self
        }

        fn registry_twin(mut self, name: &str) -> Self {
            self.registry_twins.insert(name.to_owned());
            self
        }

        fn check(&self) -> Report {
            let mut workspace = Workspace::default();
            for (member, deps) in &self.declared {
                workspace.members.entry(member.clone()).or_default();
                for (dep, dev) in deps {
                    if !dev {
                        let ours =
                            self.declared.contains_key(dep) && !self.registry_twins.contains(dep);
                        workspace.insert(member, dep, ours);
                    }
                }
            }
            check(&workspace, RULES)
        }
    }

    /// The workspace as docs/design.md §3 intends it.
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
            ["orders-domain must not depend on tokio (docs/design.md §3)"]
        );
    }

    #[test]
    fn orders_domain_depending_on_serde_fails() {
        let report = as_designed()
            .member("orders-domain", &["rust_decimal", "serde"])
            .check();
        assert_eq!(
            report.violations,
            ["orders-domain must not depend on serde (docs/design.md §3)"]
        );
    }

    #[test]
    fn app_depending_on_an_http_client_or_a_sql_driver_fails() {
        let report = as_designed()
            .member("app", &["orders-app", "orders-store", "reqwest", "sqlx"])
            .dev_dep("app", "hyper-util")
            .check();
        assert_eq!(
            report.violations,
            [
                "app must not depend on reqwest (docs/design.md §3)",
                "app must not depend on sqlx (docs/design.md §3)",
            ]
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
              (docs/design.md §3: payments-sim may depend on contracts, messaging)"]
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
              (docs/design.md §3: orders-domain may depend on no crate of ours)"]
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
            "orders-app must not depend on sqlx (docs/design.md §3)"
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
             (chrono in contracts, orders-domain; time in payments-sim) (docs/design.md §3)"
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
    fn the_dependency_direction_of_design_md_holds() {
        let root = shell::repo_root().unwrap();
        let report = check_workspace(&root).unwrap();
        assert!(report.holds(), "\n{}", report.render());
    }

    #[test]
    fn the_real_metadata_reads_ours_and_skips_dev_dependencies() {
        let root = shell::repo_root().unwrap();
        let metadata = MetadataCommand::new()
            .manifest_path(root.join("Cargo.toml"))
            .exec()
            .unwrap();
        let workspace = Workspace::from_metadata(&metadata);
        let orders_app = &workspace.members["orders-app"];
        assert!(orders_app.contains(&Dep {
            name: "orders-domain".to_owned(),
            ours: true
        }));
        // proptest is a dev-dependency of orders-domain only.
        assert!(
            !workspace.members["orders-domain"]
                .iter()
                .any(|dep| dep.name == "proptest")
        );
        // A registry crate is never ours.
        assert!(
            orders_app
                .iter()
                .filter(|dep| dep.name == "tokio")
                .all(|dep| !dep.ours)
        );
    }
}
