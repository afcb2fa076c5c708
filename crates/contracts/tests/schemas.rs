//! The checked-in JSON Schemas (`crates/contracts/schemas/*.json`) are exactly what the
//! contract types generate, so a change to a type is always a reviewed schema diff; and
//! the envelope's schema, which this crate writes without seeing `messaging`, names the
//! fields that `messaging::Envelope` writes.
#![allow(clippy::unwrap_used)]

use std::{collections::BTreeSet, fs, path::PathBuf};

use chrono::{TimeZone, Utc};
use contracts::{schema, topics};
use messaging::Envelope;
use serde_json::Value;
use uuid::Uuid;

/// What to do when the schemas and the types differ.
const REGENERATE: &str = "The contract types changed without their schemas: run `cargo xtask schemas` \
     to regenerate crates/contracts/schemas/, review the diff, and commit it with the type \
     change. `cargo xtask schemas --check` also says whether the change is compatible with \
     the released schemas (docs/design.md §5).";

#[test]
fn the_checked_in_schemas_are_the_ones_the_types_generate() {
    let dir = schemas_dir();
    let generated = schema::all();
    let mut problems = Vec::new();

    for (name, schema) in &generated {
        let file = format!("{name}.json");
        let expected = schema::to_pretty_json(schema).unwrap();
        match fs::read_to_string(dir.join(&file)) {
            Err(e) => problems.push(format!("{file}: cannot be read ({e})")),
            Ok(text) if text != expected => {
                problems.push(format!(
                    "{file}: differs, {}",
                    first_difference(&text, &expected)
                ));
            }
            Ok(_) => {}
        }
    }
    for file in checked_in_files() {
        let stem = file.trim_end_matches(".json");
        if !generated.contains_key(stem) {
            problems.push(format!("{file}: no contract type generates it"));
        }
    }

    assert!(
        problems.is_empty(),
        "{REGENERATE}\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn there_is_a_schema_file_for_every_topic_and_the_envelope() {
    let files: BTreeSet<String> = checked_in_files().into_iter().collect();

    for name in topics::ALL.iter().chain([&schema::ENVELOPE]) {
        assert!(files.contains(&format!("{name}.json")), "{name}: {files:?}");
    }
}

#[test]
fn the_envelope_schema_names_every_field_a_messaging_envelope_writes() {
    let at = Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap();
    let envelope = Envelope::new(
        Uuid::nil(),
        topics::ORDER_PLACED,
        at,
        "order-1",
        Some(Uuid::nil()),
        &serde_json::json!({ "orderId": "order-1" }),
    )
    .unwrap();
    let written: Value = serde_json::from_slice(&envelope.to_json().unwrap()).unwrap();
    let written = written.as_object().unwrap();
    let envelope_schema = schema::envelope();
    let properties = envelope_schema["properties"].as_object().unwrap();

    for (name, value) in written {
        let Some(property) = properties.get(name) else {
            panic!("messaging writes `{name}`, the envelope schema does not name it");
        };
        let types = property["type"].to_string();
        let json_type = match value {
            Value::String(_) => "\"string\"",
            Value::Object(_) => "\"object\"",
            other => panic!("`{name}` is written as {other}"),
        };
        assert!(types.contains(json_type), "`{name}`: {types} vs {value}");
    }
    for name in envelope_schema["required"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        assert!(
            written.contains_key(name),
            "required `{name}` is not written"
        );
    }
}

/// `crates/contracts/schemas/`.
fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

/// The names of the `*.json` files in [`schemas_dir`] (not in its subfolders).
fn checked_in_files() -> Vec<String> {
    let mut files: Vec<String> = fs::read_dir(schemas_dir())
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_type().unwrap().is_file())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.ends_with(".json"))
        .collect();
    files.sort();
    files
}

/// The first line where `checked_in` and `generated` part, both sides shown.
fn first_difference(checked_in: &str, generated: &str) -> String {
    let mut checked_in_lines = checked_in.lines();
    let mut generated_lines = generated.lines();
    for number in 1.. {
        match (checked_in_lines.next(), generated_lines.next()) {
            (None, None) => break,
            (left, right) if left == right => {}
            (left, right) => {
                return format!(
                    "first at line {number}: checked in {:?}, generated {:?}",
                    left.unwrap_or("<end>"),
                    right.unwrap_or("<end>")
                );
            }
        }
    }
    "only in line endings".to_owned()
}
