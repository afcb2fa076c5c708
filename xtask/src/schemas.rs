//! `cargo xtask schemas`: the JSON Schemas of the wire contract (docs/design.md §5),
//! generated from the `contracts` types (`contracts::schema`), checked in, and compared
//! with the last released ones.
//!
//! * `cargo xtask schemas` writes `crates/contracts/schemas/<name>.json` (one per topic,
//!   and `envelope.json`), removes the files no type generates any more, and says whether
//!   the result is compatible with the released schemas.
//! * `cargo xtask schemas --check` (a step of `cargo xtask ci`) fails when the checked-in
//!   files differ from the types, or when the types break a released schema (the rules
//!   are in [`compat`]).
//! * `cargo xtask schemas --release [--retire TOPIC --note TEXT]` makes the current
//!   schemas the released baseline, `crates/contracts/schemas/released/`. Done
//!   deliberately, when a contract version ships. It refuses a breaking change, except
//!   the removal of the topics named with `--retire`, which are recorded with the note in
//!   `released/retired.json`; a retired name is never used again.

mod compat;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Where the checked-in schemas live, relative to the repository root.
const CURRENT_DIR: &str = "crates/contracts/schemas";
/// Where the released baseline lives, relative to the repository root.
const RELEASED_DIR: &str = "crates/contracts/schemas/released";
/// The retired topics and why, in the released folder: `{ "topic": "note" }`.
const RETIRED_FILE: &str = "retired.json";

/// What to do when a type changed and its schema did not.
const REGENERATE: &str = "run `cargo xtask schemas`, review the diff and commit it";
/// What to do about a breaking change.
const NEW_VERSION: &str = "a breaking change needs a new topic version: leave the released \
     topic as it is and add `<topic>.v2` beside it (docs/design.md §5)";

/// The two folders the task reads and writes.
#[derive(Debug, Clone)]
struct Layout {
    /// The checked-in schemas (`*.json` directly in it).
    current: PathBuf,
    /// The released baseline, with [`RETIRED_FILE`].
    released: PathBuf,
}

impl Layout {
    fn of_repository(root: &Path) -> Self {
        Self {
            current: root.join(CURRENT_DIR),
            released: root.join(RELEASED_DIR),
        }
    }
}

/// What the arguments ask for.
#[derive(Debug, PartialEq, Eq)]
enum Mode {
    /// Write the schemas from the types.
    Write,
    /// Fail on drift or on a breaking change.
    Check,
    /// Make the current schemas the released baseline.
    Release {
        /// Released topics whose removal is deliberate.
        retire: Vec<String>,
        /// Why they are retired (required with `retire`).
        note: Option<String>,
    },
}

/// `cargo xtask schemas [--check | --release [--retire TOPIC]... [--note TEXT]]`.
pub fn task(root: &Path, args: &[String]) -> Result<()> {
    let layout = Layout::of_repository(root);
    let generated = generated()?;
    match parse(args)? {
        Mode::Write => write(&layout, &generated),
        Mode::Check => check(&layout, &generated),
        Mode::Release { retire, note } => release(&layout, &generated, &retire, note.as_deref()),
    }
}

fn parse(args: &[String]) -> Result<Mode> {
    let Some((first, rest)) = args.split_first() else {
        return Ok(Mode::Write);
    };
    match first.as_str() {
        "--check" if rest.is_empty() => Ok(Mode::Check),
        "--check" => bail!(
            "--check takes no further arguments, got: {}",
            rest.join(" ")
        ),
        "--release" => parse_release(rest),
        other => bail!("unknown argument `{other}`; expected --check or --release"),
    }
}

/// The arguments after `--release`: `--retire TOPIC` (repeatable) and `--note TEXT`.
fn parse_release(args: &[String]) -> Result<Mode> {
    let (mut retire, mut note) = (Vec::new(), None);
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        if !matches!(flag.as_str(), "--retire" | "--note") {
            bail!("unknown argument `{flag}`; --release takes --retire TOPIC and --note TEXT");
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?
            .clone();
        if flag == "--retire" {
            retire.push(value);
        } else if note.replace(value).is_some() {
            bail!("--note is given twice");
        }
    }
    if !retire.is_empty() && note.as_deref().is_none_or(|n| n.trim().is_empty()) {
        bail!("--retire needs --note TEXT: why the topic is retired and what replaces it");
    }
    if retire.is_empty() && note.is_some() {
        bail!("--note goes with --retire TOPIC");
    }
    Ok(Mode::Release { retire, note })
}

/// The schemas the contract types generate, by name.
fn generated() -> Result<BTreeMap<String, String>> {
    contracts::schema::all()
        .into_iter()
        .map(|(name, schema)| {
            let text = contracts::schema::to_pretty_json(&schema)
                .with_context(|| format!("cannot print the schema of {name}"))?;
            Ok((name, text))
        })
        .collect()
}

/// `cargo xtask schemas`: writes what changed, removes what is stale, reports the verdict.
fn write(layout: &Layout, generated: &BTreeMap<String, String>) -> Result<()> {
    fs::create_dir_all(&layout.current)
        .with_context(|| format!("cannot create {}", layout.current.display()))?;
    let checked_in = read_texts(&layout.current)?;
    let mut unchanged = 0;
    for (name, text) in generated {
        if checked_in.get(name) == Some(text) {
            unchanged += 1;
            continue;
        }
        let path = layout.current.join(format!("{name}.json"));
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    for name in checked_in
        .keys()
        .filter(|name| !generated.contains_key(*name))
    {
        let path = layout.current.join(format!("{name}.json"));
        fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        println!("removed {} (no contract type generates it)", path.display());
    }
    println!("schemas: {unchanged} of {} unchanged", generated.len());
    compatibility(layout, generated)
}

/// `cargo xtask schemas --check`: drift first, then compatibility; every problem listed.
fn check(layout: &Layout, generated: &BTreeMap<String, String>) -> Result<()> {
    let drift = drift(layout, generated)?;
    if !drift.is_empty() {
        bail!(
            "the checked-in schemas differ from the contract types ({REGENERATE}):\n  {}",
            drift.join("\n  ")
        );
    }
    println!(
        "schemas: the {} checked-in files match the contract types",
        generated.len()
    );
    compatibility(layout, generated)
}

/// Fails on every breaking change from the released schemas to `generated`.
fn compatibility(layout: &Layout, generated: &BTreeMap<String, String>) -> Result<()> {
    let released = parse_all(&read_texts(&layout.released)?)?;
    let retired = read_retired(&layout.released)?;
    let current = parse_all(generated)?;
    let mut problems: Vec<String> = compat::breaking_changes(&released, &current)
        .iter()
        .map(ToString::to_string)
        .collect();
    for (topic, note) in &retired {
        if current.contains_key(topic) {
            problems.push(format!(
                "{topic}: was retired ({note}); a retired name is never used again, \
                 publish a new version instead"
            ));
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} breaking change(s) to the released schemas ({NEW_VERSION}):\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    let new: Vec<&str> = current
        .keys()
        .filter(|name| !released.contains_key(*name))
        .map(String::as_str)
        .collect();
    let mut verdict = format!(
        "schemas: compatible with the {} released ones",
        released.len()
    );
    if !new.is_empty() {
        let _ = write!(verdict, "; not released yet: {}", new.join(", "));
    }
    println!("{verdict}");
    Ok(())
}

/// `cargo xtask schemas --release`: the checked-in schemas become the baseline.
fn release(
    layout: &Layout,
    generated: &BTreeMap<String, String>,
    retire: &[String],
    note: Option<&str>,
) -> Result<()> {
    let drift = drift(layout, generated)?;
    if !drift.is_empty() {
        bail!(
            "the checked-in schemas differ from the contract types; {REGENERATE} first:\n  {}",
            drift.join("\n  ")
        );
    }
    let released_texts = read_texts(&layout.released)?;
    let released = parse_all(&released_texts)?;
    let current = parse_all(generated)?;
    for topic in retire {
        if !released.contains_key(topic) {
            bail!("--retire {topic}: no such released topic");
        }
        if current.contains_key(topic) {
            bail!("--retire {topic}: its type still generates a schema; remove it first");
        }
    }
    let breaking: Vec<String> = compat::breaking_changes(&released, &current)
        .into_iter()
        .filter(|b| !(b.change == compat::Change::TopicRemoved && retire.contains(&b.schema)))
        .map(|b| b.to_string())
        .collect();
    if !breaking.is_empty() {
        bail!(
            "refusing to release {} breaking change(s) ({NEW_VERSION}):\n  {}",
            breaking.len(),
            breaking.join("\n  ")
        );
    }
    let mut retired = read_retired(&layout.released)?;
    if let Some(reused) = current.keys().find(|name| retired.contains_key(*name)) {
        bail!("{reused} was retired; a retired name is never used again");
    }

    fs::create_dir_all(&layout.released)
        .with_context(|| format!("cannot create {}", layout.released.display()))?;
    for name in released_texts.keys() {
        let path = layout.released.join(format!("{name}.json"));
        fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    for (name, text) in generated {
        let path = layout.released.join(format!("{name}.json"));
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    for topic in retire {
        retired.insert(topic.clone(), note.unwrap_or_default().to_owned());
        println!("retired {topic}");
    }
    if !retired.is_empty() {
        let path = layout.released.join(RETIRED_FILE);
        let text = serde_json::to_string_pretty(&retired)? + "\n";
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    for name in current.keys().filter(|name| !released.contains_key(*name)) {
        println!("released {name} for the first time");
    }
    println!(
        "schemas: {} released to {}",
        generated.len(),
        layout.released.display()
    );
    Ok(())
}

/// How the checked-in files differ from `generated`: one line per file.
fn drift(layout: &Layout, generated: &BTreeMap<String, String>) -> Result<Vec<String>> {
    let checked_in = read_texts(&layout.current)?;
    let mut drift = Vec::new();
    for (name, text) in generated {
        match checked_in.get(name) {
            None => drift.push(format!("{name}.json is missing")),
            Some(file) if file != text => drift.push(format!("{name}.json differs")),
            Some(_) => {}
        }
    }
    for name in checked_in
        .keys()
        .filter(|name| !generated.contains_key(*name))
    {
        drift.push(format!("{name}.json: no contract type generates it"));
    }
    Ok(drift)
}

/// The `*.json` files directly in `dir` (not [`RETIRED_FILE`]) by name without the
/// extension; an absent folder holds none.
fn read_texts(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut texts = BTreeMap::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(texts),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot list {}", dir.display()))?
            .path();
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        let Some(name) = file.strip_suffix(".json") else {
            continue;
        };
        if !path.is_file() || file == RETIRED_FILE {
            continue;
        }
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        texts.insert(name.to_owned(), text);
    }
    Ok(texts)
}

/// The retired topics and their notes (none when the file does not exist).
fn read_retired(released: &Path) -> Result<BTreeMap<String, String>> {
    let path = released.join(RETIRED_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not a JSON object of notes", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Parses every text, naming the file that is not JSON.
fn parse_all(texts: &BTreeMap<String, String>) -> Result<BTreeMap<String, Value>> {
    texts
        .iter()
        .map(|(name, text)| {
            let schema = serde_json::from_str(text)
                .with_context(|| format!("{name}.json is not valid JSON"))?;
            Ok((name.clone(), schema))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    /// A fresh pair of folders under the system's temporary folder, removed on drop.
    struct Fixture {
        root: PathBuf,
        layout: Layout,
    }

    impl Fixture {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let root = std::env::temp_dir().join(format!(
                "xtask-schemas-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::SeqCst)
            ));
            let layout = Layout {
                current: root.join("schemas"),
                released: root.join("schemas/released"),
            };
            fs::create_dir_all(&layout.released).unwrap();
            Self { root, layout }
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    fn schemas(entries: &[(&str, Value)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(name, schema)| {
                let text = contracts::schema::to_pretty_json(schema).unwrap();
                ((*name).to_owned(), text)
            })
            .collect()
    }

    fn object(fields: &[&str]) -> Value {
        let properties: serde_json::Map<String, Value> = fields
            .iter()
            .map(|name| ((*name).to_owned(), serde_json::json!({ "type": "string" })))
            .collect();
        serde_json::json!({ "type": "object", "properties": properties, "required": fields })
    }

    #[test]
    fn arguments_select_the_mode() {
        assert_eq!(parse(&[]).unwrap(), Mode::Write);
        assert_eq!(parse(&args("--check")).unwrap(), Mode::Check);
        assert_eq!(
            parse(&args("--release --retire order.placed --note replaced")).unwrap(),
            Mode::Release {
                retire: vec!["order.placed".into()],
                note: Some("replaced".into()),
            }
        );
    }

    #[test]
    fn retiring_without_a_note_or_a_note_without_retiring_is_refused() {
        assert!(parse(&args("--release --retire order.placed")).is_err());
        assert!(parse(&args("--release --note why")).is_err());
        assert!(parse(&args("--check --release")).is_err());
        assert!(parse(&args("--release --check")).is_err());
        assert!(parse(&args("--release --retire")).is_err());
        assert!(parse(&args("--publish")).is_err());
    }

    #[test]
    fn write_then_check_passes_and_a_stale_file_is_removed() {
        let fixture = Fixture::new();
        let layout = &fixture.layout;
        fs::write(layout.current.join("order.shipped.json"), "{}").unwrap();
        let generated = schemas(&[("order.placed", object(&["orderId"]))]);

        write(layout, &generated).unwrap();

        assert!(!layout.current.join("order.shipped.json").exists());
        check(layout, &generated).unwrap();
    }

    #[test]
    fn check_fails_on_a_file_that_differs_from_the_types() {
        let fixture = Fixture::new();
        let layout = &fixture.layout;
        write(layout, &schemas(&[("order.placed", object(&["orderId"]))])).unwrap();

        let changed = schemas(&[("order.placed", object(&["orderId", "customerId"]))]);
        let error = check(layout, &changed).unwrap_err().to_string();

        assert!(error.contains("order.placed.json differs"), "{error}");
        assert!(error.contains("cargo xtask schemas"), "{error}");
    }

    #[test]
    fn release_refuses_a_breaking_change_and_keeps_the_baseline() {
        let fixture = Fixture::new();
        let layout = &fixture.layout;
        let v1 = schemas(&[("order.placed", object(&["orderId", "customerId"]))]);
        write(layout, &v1).unwrap();
        release(layout, &v1, &[], None).unwrap();

        let broken = schemas(&[("order.placed", object(&["orderId"]))]);
        write(layout, &broken).unwrap_err();
        let error = release(layout, &broken, &[], None).unwrap_err().to_string();

        assert!(error.contains("field `customerId` removed"), "{error}");
        assert_eq!(read_texts(&layout.released).unwrap(), v1);
    }

    #[test]
    fn a_retired_topic_leaves_the_baseline_with_its_note_and_its_name_is_not_reused() {
        let fixture = Fixture::new();
        let layout = &fixture.layout;
        let both = schemas(&[
            ("order.placed", object(&["orderId"])),
            ("order.placed.v2", object(&["orderId", "channel"])),
        ]);
        write(layout, &both).unwrap();
        release(layout, &both, &[], None).unwrap();
        let v2_only = schemas(&[("order.placed.v2", object(&["orderId", "channel"]))]);
        write(layout, &v2_only).unwrap_err(); // v1 is still released: breaking until retired

        release(
            layout,
            &v2_only,
            &["order.placed".to_owned()],
            Some("replaced by order.placed.v2"),
        )
        .unwrap();

        assert_eq!(read_texts(&layout.released).unwrap(), v2_only);
        let retired = read_retired(&layout.released).unwrap();
        assert_eq!(retired["order.placed"], "replaced by order.placed.v2");
        check(layout, &v2_only).unwrap();
        let reused = schemas(&[
            ("order.placed", object(&["orderId"])),
            ("order.placed.v2", object(&["orderId", "channel"])),
        ]);
        write(layout, &reused).unwrap_err();
        let error = check(layout, &reused).unwrap_err().to_string();
        assert!(error.contains("order.placed: was retired"), "{error}");
    }

    #[test]
    fn the_repository_schemas_match_the_types_and_keep_the_released_contract() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();

        check(&Layout::of_repository(&root), &generated().unwrap()).unwrap();
    }
}
