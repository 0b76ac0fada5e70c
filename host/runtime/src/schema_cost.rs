//! What checking one value against a tool's own JSON Schema can cost, bounded before the schema
//! is used.
//!
//! A tool declares its input and output schemas, and the host checks every input (the daemon)
//! and every output (every path) against them, on its own CPU, after the guest's fuel and time
//! stopped counting. A `$ref` makes a schema a graph: `a_i = {"allOf": [{"$ref": a_(i-1)},
//! {"$ref": a_(i-1)}]}` for i up to 22 is a few hundred bytes, and checking one output against it
//! took 14.6 s here (jsonschema 0.61). So a schema's cost is counted at load, the way a checker
//! walks it: each node once where it is written, and again at each `$ref` (or `$dynamicRef`,
//! `$recursiveRef`) that leads to it, a reference back into the nodes being walked counted once
//! (recursion follows the value, a level at a time). A schema past
//! [`SCHEMA_NODES_VISITED_MAX`] is refused; the walk stops there, so counting costs at most
//! that many steps.

use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// The most schema nodes checking one level of a value may visit, counted as described in this
/// module: a tool whose input or output schema needs more is refused at load. Tool schemas
/// generated from types (schemars, pydantic, zod) count a few hundred.
pub const SCHEMA_NODES_VISITED_MAX: u64 = 100_000;

/// What a reference to one of the JSON Schema meta-schemas (bundled in the checker, never
/// fetched) counts: more than any of them has nodes.
const META_SCHEMA_NODES: u64 = 1_000;

/// Keywords whose values are data, not schemas: a `$ref` inside them is not followed.
const DATA_KEYWORDS: &[&str] = &["const", "enum", "default", "examples"];

/// Check `schema`'s cost.
///
/// # Errors
/// A message (to follow "the input schema " or "the output schema ") when checking a value
/// against it could visit more than [`SCHEMA_NODES_VISITED_MAX`] nodes, or when it refers to
/// something that is neither inside it nor a JSON Schema meta-schema, so its cost cannot be
/// known.
pub(crate) fn check(schema: &Value) -> Result<(), String> {
    let places = Places::of(schema);
    let mut visited: u64 = 0;
    let mut on_path: HashSet<*const Value> = HashSet::new();
    let mut stack: Vec<Step<'_>> = vec![Step::Enter(schema)];
    while let Some(step) = stack.pop() {
        let node = match step {
            Step::Leave(node) => {
                on_path.remove(&node);
                continue;
            }
            Step::Enter(node) => node,
        };
        let key: *const Value = node;
        if on_path.contains(&key) {
            visited += 1;
            continue;
        }
        visited += 1;
        if visited > SCHEMA_NODES_VISITED_MAX {
            return Err(format!(
                "costs more than {SCHEMA_NODES_VISITED_MAX} schema nodes to check one value against \
                 (SCHEMA_NODES_VISITED_MAX; each `$ref` counts the schema it refers to again): \
                 the host checks every value against it, so refer to a shared definition from fewer \
                 places, or nest references less deeply"
            ));
        }
        let Value::Object(members) = node else {
            // An array (of subschemas) or a scalar: its elements are walked below by their parent.
            continue;
        };
        on_path.insert(key);
        stack.push(Step::Leave(key));
        for (name, value) in members {
            if DATA_KEYWORDS.contains(&name.as_str()) {
                continue;
            }
            match (name.as_str(), value) {
                ("$ref" | "$dynamicRef" | "$recursiveRef", Value::String(reference)) => {
                    match places.resolve(node, name, reference)? {
                        Target::Nodes(targets) => stack.extend(targets.into_iter().map(Step::Enter)),
                        Target::MetaSchema => visited += META_SCHEMA_NODES,
                    }
                }
                (_, Value::Object(_)) => stack.push(Step::Enter(value)),
                (_, Value::Array(items)) => {
                    stack.extend(items.iter().filter(|item| item.is_object()).map(Step::Enter));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

enum Step<'a> {
    Enter(&'a Value),
    Leave(*const Value),
}

enum Target<'a> {
    Nodes(Vec<&'a Value>),
    MetaSchema,
}

/// Where a reference can lead, found in one walk of the document as written: each object's
/// resource (itself when it has an `$id`, else its parent's), the `$id`s, and the anchors.
struct Places<'a> {
    resource_of: HashMap<*const Value, &'a Value>,
    ids: Vec<(&'a str, &'a Value)>,
    anchors: HashMap<&'a str, Vec<&'a Value>>,
    recursive_anchors: Vec<&'a Value>,
}

impl<'a> Places<'a> {
    fn of(root: &'a Value) -> Self {
        let mut places = Places {
            resource_of: HashMap::new(),
            ids: Vec::new(),
            anchors: HashMap::new(),
            recursive_anchors: Vec::new(),
        };
        let mut stack: Vec<(&'a Value, &'a Value)> = vec![(root, root)];
        while let Some((node, parent_resource)) = stack.pop() {
            let Value::Object(members) = node else { continue };
            let resource = match members.get("$id") {
                Some(Value::String(id)) => {
                    places.ids.push((id.trim_end_matches('#'), node));
                    node
                }
                _ => parent_resource,
            };
            places.resource_of.insert(node, resource);
            for anchor in ["$anchor", "$dynamicAnchor"] {
                if let Some(Value::String(name)) = members.get(anchor) {
                    places.anchors.entry(name.as_str()).or_default().push(node);
                }
            }
            if members.get("$recursiveAnchor") == Some(&Value::Bool(true)) {
                places.recursive_anchors.push(node);
            }
            for (name, value) in members {
                if DATA_KEYWORDS.contains(&name.as_str()) {
                    continue;
                }
                match value {
                    Value::Object(_) => stack.push((value, resource)),
                    Value::Array(items) => stack.extend(items.iter().map(|item| (item, resource))),
                    _ => {}
                }
            }
        }
        places
    }

    /// The nodes `reference` (the value of `keyword` in `from`) can lead to: every candidate
    /// where the checker's own resolution could pick one of several (an anchor named twice, a
    /// dynamic anchor), so the count is never less than what the checker does.
    fn resolve(&self, from: &'a Value, keyword: &str, reference: &str) -> Result<Target<'a>, String> {
        let cannot = || {
            format!(
                "refers to `{reference}`, which is neither inside the schema nor a JSON Schema \
                 meta-schema, so what checking a value against it costs cannot be known; refer \
                 within the schema (`#/$defs/...`)"
            )
        };
        let (base, fragment) = reference.split_once('#').unwrap_or((reference, ""));
        let resources: Vec<&'a Value> = if base.is_empty() {
            vec![self.resource_of.get(&(from as *const Value)).copied().unwrap_or(from)]
        } else {
            let found: Vec<&'a Value> = self
                .ids
                .iter()
                .filter(|(id, _)| *id == base || id.ends_with(&format!("/{base}")) || base.ends_with(&format!("/{id}")))
                .map(|(_, node)| *node)
                .collect();
            if found.is_empty() {
                if base.starts_with("https://json-schema.org/") || base.starts_with("http://json-schema.org/") {
                    return Ok(Target::MetaSchema);
                }
                return Err(cannot());
            }
            found
        };
        let mut targets = Vec::new();
        if fragment.is_empty() {
            targets.extend(resources);
            if keyword == "$recursiveRef" {
                targets.extend(self.recursive_anchors.iter().copied());
            }
        } else if fragment.starts_with('/') {
            let pointer = percent_decode(fragment).ok_or_else(cannot)?;
            for resource in resources {
                targets.push(resource.pointer(&pointer).ok_or_else(cannot)?);
            }
        } else {
            let named = self.anchors.get(fragment).ok_or_else(cannot)?;
            targets.extend(named.iter().copied());
        }
        Ok(Target::Nodes(targets))
    }
}

/// A URI fragment's `%XX` escapes decoded; `None` when one is malformed or the result is not
/// UTF-8.
fn percent_decode(fragment: &str) -> Option<String> {
    let bytes = fragment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `a_i = allOf [a_(i-1), a_(i-1)]` by `$ref`, `n` levels: 2^n nodes to check one value.
    fn doubling(n: usize) -> Value {
        let mut defs = serde_json::Map::new();
        defs.insert("a0".into(), json!({"type": "string"}));
        for i in 1..=n {
            let to = format!("#/$defs/a{}", i - 1);
            defs.insert(format!("a{i}"), json!({"allOf": [{"$ref": to}, {"$ref": to}]}));
        }
        json!({"$defs": defs, "$ref": format!("#/$defs/a{n}")})
    }

    #[test]
    fn a_schema_whose_references_double_at_each_level_is_refused_quickly() {
        // 14.6 s of jsonschema at n = 22; 2^60 would never finish. Counting stops at the limit.
        for n in [17, 22, 60] {
            let started = std::time::Instant::now();
            let error = check(&doubling(n)).expect_err("refused");
            assert!(error.contains("SCHEMA_NODES_VISITED_MAX"), "{error}");
            assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
        }
        check(&doubling(10)).expect("2^10 nodes is within the limit");
    }

    #[test]
    fn the_same_doubling_through_anchors_or_ids_is_refused_too() {
        let mut defs = serde_json::Map::new();
        defs.insert("a0".into(), json!({"$anchor": "a0", "type": "string"}));
        for i in 1..=22 {
            let to = format!("#a{}", i - 1);
            defs.insert(format!("a{i}"), json!({"$anchor": format!("a{i}"), "anyOf": [{"$ref": to}, {"$ref": to}]}));
        }
        assert!(check(&json!({"$defs": defs, "$ref": "#a22"})).is_err());
        let mut defs = serde_json::Map::new();
        defs.insert("a0".into(), json!({"$id": "urn:a0", "type": "string"}));
        for i in 1..=22 {
            let to = format!("urn:a{}", i - 1);
            defs.insert(format!("a{i}"), json!({"$id": format!("urn:a{i}"), "oneOf": [{"$ref": to}, {"$ref": to}]}));
        }
        assert!(check(&json!({"$defs": defs, "$ref": "urn:a22"})).is_err());
    }

    #[test]
    fn schemas_as_tools_declare_them_pass() {
        // Shared definitions, a recursive type, a meta-schema reference, a nested resource, and
        // data that looks like a reference.
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "a": {"$ref": "#/$defs/point"},
                "b": {"$ref": "#/$defs/point"},
                "tree": {"$ref": "#/$defs/node"},
                "schema": {"$ref": "https://json-schema.org/draft/2020-12/schema"},
                "nested": {"$id": "https://example.com/nested", "$defs": {"x": {"type": "integer"}}, "$ref": "#/$defs/x"},
                "mode": {"enum": [{"$ref": "#/nowhere"}], "default": {"$ref": "nowhere"}},
                "pct": {"$ref": "#/$defs/with%20space"}
            },
            "$defs": {
                "point": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}},
                "node": {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}},
                "with space": {"type": "string"}
            }
        });
        check(&schema).expect("a schema tools declare");
        check(&json!(true)).expect("a boolean schema");
        check(&json!({})).expect("the empty schema");
    }

    #[test]
    fn a_reference_outside_the_schema_or_to_nothing_is_refused_with_what_it_names() {
        for reference in ["https://evil.example/s.json", "other.json#/x", "#/$defs/missing", "#nowhere", "#/%zz"] {
            let error = check(&json!({"$ref": reference, "$defs": {}})).expect_err(reference);
            assert!(error.contains(reference), "{error}");
        }
    }
}
