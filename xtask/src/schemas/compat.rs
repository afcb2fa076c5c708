//! The compatibility rules of docs/design.md §5, applied to two sets of JSON Schemas: the
//! released ones (the baseline) and the current ones. Pure: schemas in, breaking changes
//! out, so every rule is unit-tested on small fixtures below.
//!
//! Breaking (each needs a new topic version, `order.placed.v2`):
//! * a released topic (or the envelope) is gone;
//! * a field is gone — removed, or renamed, which is the same to a reader;
//! * a field becomes required: a new required field, or optional → required (readers
//!   built from the new schema refuse what current producers send);
//! * a field becomes optional: required → optional (the producer may now omit it, and
//!   released readers, which require it, refuse those messages);
//! * a type changes, `format` and every other constraint included (`uuid` → plain
//!   string, `uint32` → `uint64`, adding `null`, `additionalProperties: false`).
//!
//! Compatible: a new topic, a new optional field, and changed descriptions, titles or
//! defaults (they change no message). A field's identity is its path from the payload
//! root (`shippingAddress.postalCode`, `items[].price`). The schemas are expected inlined
//! (no `$ref`), as `contracts::schema` writes them; a `$ref` would compare as text.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

/// Keywords that describe rather than constrain: they never make a change breaking.
/// `properties`, `required` and `items` are compared field by field instead.
const NOT_COMPARED: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "default",
    "examples",
    "deprecated",
    "properties",
    "required",
    "items",
];

/// How an existing topic changed incompatibly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The released topic has no schema any more.
    TopicRemoved,
    /// A released field is gone (removed or renamed).
    FieldRemoved,
    /// A field that is new in this version is required.
    NewRequiredField,
    /// A released optional field became required.
    MadeRequired,
    /// A released required field became optional.
    MadeOptional,
    /// The field's type or one of its constraints changed; both shown compactly.
    TypeChanged {
        /// The released type and constraints.
        was: String,
        /// The current ones.
        now: String,
    },
}

/// One breaking change: which schema, which field, what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaking {
    /// The topic, or `envelope`.
    pub schema: String,
    /// The field's path (`shippingAddress.postalCode`, `items[].price`); empty for the
    /// payload (or envelope) as a whole.
    pub field: String,
    /// What happened to it.
    pub change: Change,
}

impl fmt::Display for Breaking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (schema, field) = (&self.schema, &self.field);
        match &self.change {
            Change::TopicRemoved => write!(
                f,
                "{schema}: removed, but it was released (retire it with \
                 `cargo xtask schemas --release --retire {schema} --note TEXT` once no one \
                 uses it)"
            ),
            Change::FieldRemoved => write!(f, "{schema}: field `{field}` removed or renamed"),
            Change::NewRequiredField => write!(
                f,
                "{schema}: new field `{field}` is required (a new field must be optional)"
            ),
            Change::MadeRequired => {
                write!(
                    f,
                    "{schema}: field `{field}` made required (it was optional)"
                )
            }
            Change::MadeOptional => write!(
                f,
                "{schema}: field `{field}` made optional (released consumers require it)"
            ),
            Change::TypeChanged { was, now } if field.is_empty() => {
                write!(f, "{schema}: payload type changed from {was} to {now}")
            }
            Change::TypeChanged { was, now } => {
                write!(
                    f,
                    "{schema}: field `{field}` changed type from {was} to {now}"
                )
            }
        }
    }
}

/// Every breaking change from `released` to `current` (schemas by name), in name order.
/// A schema in `current` only is a new topic: compatible.
#[must_use]
pub fn breaking_changes(
    released: &BTreeMap<String, Value>,
    current: &BTreeMap<String, Value>,
) -> Vec<Breaking> {
    let mut found = Vec::new();
    for (name, old) in released {
        match current.get(name) {
            None => found.push(Breaking {
                schema: name.clone(),
                field: String::new(),
                change: Change::TopicRemoved,
            }),
            Some(new) => compare(name, "", old, new, &mut found),
        }
    }
    found
}

/// Compares one node (the payload, a field, an array's items) and everything under it.
fn compare(schema: &str, field: &str, old: &Value, new: &Value, found: &mut Vec<Breaking>) {
    let breaking = |field: &str, change| Breaking {
        schema: schema.to_owned(),
        field: field.to_owned(),
        change,
    };
    let (was, now) = (constraints(old), constraints(new));
    if was != now {
        found.push(breaking(
            field,
            Change::TypeChanged {
                was: compact(&was),
                now: compact(&now),
            },
        ));
        // What is under a node whose type changed is not comparable.
        return;
    }

    let (old_fields, new_fields) = (properties(old), properties(new));
    let (old_required, new_required) = (required(old), required(new));
    for (name, old_field) in &old_fields {
        let path = join(field, name);
        let Some(new_field) = new_fields.get(name) else {
            found.push(breaking(&path, Change::FieldRemoved));
            continue;
        };
        match (old_required.contains(name), new_required.contains(name)) {
            (false, true) => found.push(breaking(&path, Change::MadeRequired)),
            (true, false) => found.push(breaking(&path, Change::MadeOptional)),
            _ => {}
        }
        compare(schema, &path, old_field, new_field, found);
    }
    for name in new_fields.keys() {
        if !old_fields.contains_key(name) && new_required.contains(name) {
            found.push(breaking(&join(field, name), Change::NewRequiredField));
        }
    }

    match (old.get("items"), new.get("items")) {
        (Some(old_items), Some(new_items)) => {
            compare(schema, &format!("{field}[]"), old_items, new_items, found);
        }
        (None, None) => {}
        (old_items, new_items) => found.push(breaking(
            &format!("{field}[]"),
            Change::TypeChanged {
                was: old_items.map_or_else(|| "no items".to_owned(), compact),
                now: new_items.map_or_else(|| "no items".to_owned(), compact),
            },
        )),
    }
}

/// The keywords of `node` that constrain a value at this level (its type, format, bounds,
/// enum, …), without the descriptive ones and without what is compared field by field.
fn constraints(node: &Value) -> Value {
    match node {
        Value::Object(keywords) => Value::Object(
            keywords
                .iter()
                .filter(|(keyword, _)| !NOT_COMPARED.contains(&keyword.as_str()))
                .map(|(keyword, value)| (keyword.clone(), value.clone()))
                .collect::<Map<String, Value>>(),
        ),
        // `true`/`false` schemas: compared as they are.
        other => other.clone(),
    }
}

/// The fields of an object schema (empty for anything else).
fn properties(node: &Value) -> BTreeMap<String, Value> {
    node.get("properties")
        .and_then(Value::as_object)
        .map(|fields| {
            fields
                .iter()
                .map(|(name, field)| (name.clone(), field.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The names an object schema requires.
fn required(node: &Value) -> Vec<String> {
    node.get("required")
        .and_then(Value::as_array)
        .map(|names| {
            names
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// `parent.name`, or `name` at the root.
fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}.{name}")
    }
}

/// One-line JSON (keys sorted: xtask's serde_json keeps maps ordered by key).
fn compact(value: &Value) -> String {
    value.to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A released `order.placed`-like fixture: required id and amount, an optional note,
    /// a nested address and an array of items.
    fn released() -> Value {
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "order.placed",
            "description": "An order was placed.",
            "type": "object",
            "properties": {
                "orderId": { "type": "string", "format": "uuid", "description": "The order." },
                "totalAmount": { "type": "number" },
                "note": { "type": ["string", "null"], "default": null },
                "shippingAddress": {
                    "type": "object",
                    "properties": {
                        "city": { "type": "string" },
                        "postalCode": { "type": "string" }
                    },
                    "required": ["city", "postalCode"]
                },
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "productId": { "type": "string" },
                            "quantity": { "type": "integer", "format": "uint32", "minimum": 0 }
                        },
                        "required": ["productId", "quantity"]
                    }
                }
            },
            "required": ["orderId", "totalAmount", "shippingAddress", "items"]
        })
    }

    fn set(schemas: &[(&str, Value)]) -> BTreeMap<String, Value> {
        schemas
            .iter()
            .map(|(name, schema)| ((*name).to_owned(), schema.clone()))
            .collect()
    }

    /// The breaking changes of `order.placed` when its schema becomes `edited(released)`.
    fn changes(edit: impl FnOnce(&mut Value)) -> Vec<Breaking> {
        let mut current = released();
        edit(&mut current);
        breaking_changes(
            &set(&[("order.placed", released())]),
            &set(&[("order.placed", current)]),
        )
    }

    /// The one breaking change `edit` makes, rendered.
    fn the_message(edit: impl FnOnce(&mut Value)) -> String {
        let found = changes(edit);
        assert_eq!(found.len(), 1, "{found:?}");
        found[0].to_string()
    }

    fn remove(node: &mut Value, key: &str) {
        node.as_object_mut().unwrap().remove(key);
    }

    fn require(node: &mut Value, name: &str) {
        node["required"].as_array_mut().unwrap().push(json!(name));
    }

    fn unrequire(node: &mut Value, name: &str) {
        node["required"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n != name);
    }

    // ---- compatible

    #[test]
    fn identical_schemas_are_compatible() {
        assert_eq!(changes(|_| {}), vec![]);
    }

    #[test]
    fn a_new_optional_field_is_compatible() {
        assert_eq!(
            changes(|s| s["properties"]["giftWrap"] = json!({ "type": ["boolean", "null"] })),
            vec![]
        );
    }

    #[test]
    fn a_new_optional_field_in_a_nested_object_or_array_item_is_compatible() {
        assert_eq!(
            changes(|s| {
                s["properties"]["shippingAddress"]["properties"]["region"] =
                    json!({ "type": "string" });
                s["properties"]["items"]["items"]["properties"]["sku"] =
                    json!({ "type": "string" });
            }),
            vec![]
        );
    }

    #[test]
    fn a_new_topic_is_compatible() {
        let found = breaking_changes(
            &set(&[("order.placed", released())]),
            &set(&[("order.placed", released()), ("order.placed.v2", json!({}))]),
        );

        assert_eq!(found, vec![]);
    }

    #[test]
    fn changed_descriptions_titles_and_defaults_are_compatible() {
        assert_eq!(
            changes(|s| {
                s["description"] = json!("Orders took an order.");
                s["title"] = json!("OrderPlaced");
                s["properties"]["orderId"]["description"] = json!("The order id.");
                s["properties"]["note"]["default"] = json!("none");
            }),
            vec![]
        );
    }

    // ---- breaking

    #[test]
    fn a_removed_topic_is_breaking_and_named() {
        let found = breaking_changes(
            &set(&[("order.placed", released()), ("order.paid", json!({}))]),
            &set(&[("order.placed", released())]),
        );

        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].change, Change::TopicRemoved);
        assert!(
            found[0].to_string().starts_with("order.paid: removed"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn a_removed_field_is_breaking_and_named() {
        assert_eq!(
            the_message(|s| remove(&mut s["properties"], "totalAmount")),
            "order.placed: field `totalAmount` removed or renamed"
        );
    }

    #[test]
    fn a_renamed_field_is_breaking_as_a_removed_one() {
        let found = changes(|s| {
            let field = s["properties"]["note"].clone();
            remove(&mut s["properties"], "note");
            s["properties"]["comment"] = field;
        });

        assert_eq!(
            found,
            vec![Breaking {
                schema: "order.placed".into(),
                field: "note".into(),
                change: Change::FieldRemoved,
            }]
        );
    }

    #[test]
    fn a_field_removed_from_a_nested_object_names_its_path() {
        assert_eq!(
            the_message(|s| remove(
                &mut s["properties"]["shippingAddress"]["properties"],
                "postalCode"
            )),
            "order.placed: field `shippingAddress.postalCode` removed or renamed"
        );
    }

    #[test]
    fn a_field_removed_from_array_items_names_its_path() {
        assert_eq!(
            the_message(|s| remove(
                &mut s["properties"]["items"]["items"]["properties"],
                "quantity"
            )),
            "order.placed: field `items[].quantity` removed or renamed"
        );
    }

    #[test]
    fn a_new_required_field_is_breaking_and_named() {
        assert_eq!(
            the_message(|s| {
                s["properties"]["channel"] = json!({ "type": "string" });
                require(s, "channel");
            }),
            "order.placed: new field `channel` is required (a new field must be optional)"
        );
    }

    #[test]
    fn an_optional_field_made_required_is_breaking_and_named() {
        assert_eq!(
            the_message(|s| require(s, "note")),
            "order.placed: field `note` made required (it was optional)"
        );
    }

    #[test]
    fn a_required_field_made_optional_is_breaking_and_named() {
        assert_eq!(
            the_message(|s| unrequire(&mut s["properties"]["shippingAddress"], "city")),
            "order.placed: field `shippingAddress.city` made optional (released consumers require it)"
        );
    }

    #[test]
    fn a_changed_type_is_breaking_and_named() {
        assert_eq!(
            the_message(|s| s["properties"]["totalAmount"] = json!({ "type": "string" })),
            r#"order.placed: field `totalAmount` changed type from {"type":"number"} to {"type":"string"}"#
        );
    }

    #[test]
    fn a_changed_format_is_a_changed_type() {
        assert_eq!(
            the_message(|s| remove(&mut s["properties"]["orderId"], "format")),
            r#"order.placed: field `orderId` changed type from {"format":"uuid","type":"string"} to {"type":"string"}"#
        );
    }

    #[test]
    fn a_field_that_may_now_be_null_has_a_changed_type() {
        let found = changes(|s| s["properties"]["totalAmount"]["type"] = json!(["number", "null"]));

        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].field, "totalAmount");
        assert!(matches!(found[0].change, Change::TypeChanged { .. }));
    }

    #[test]
    fn a_changed_integer_width_inside_array_items_is_a_changed_type() {
        let found = changes(|s| {
            s["properties"]["items"]["items"]["properties"]["quantity"]["format"] = json!("uint64");
        });

        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].field, "items[].quantity");
    }

    #[test]
    fn refusing_unknown_fields_is_a_changed_type() {
        let found = changes(|s| s["additionalProperties"] = json!(false));

        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].field, "");
        assert!(
            found[0].to_string().contains("payload type changed"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn every_breaking_change_is_reported_not_only_the_first() {
        let found = changes(|s| {
            remove(&mut s["properties"], "totalAmount");
            require(s, "note");
            s["properties"]["orderId"] = json!({ "type": "integer" });
        });

        let fields: Vec<&str> = found.iter().map(|b| b.field.as_str()).collect();
        assert_eq!(fields, vec!["note", "orderId", "totalAmount"]);
    }
}
