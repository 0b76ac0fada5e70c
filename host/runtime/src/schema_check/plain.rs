//! Plain schemas: the part of JSON Schema 2020-12 that the host checks itself, so that the common
//! case (a value that matches a tool's schema) costs microseconds instead of the schema checker's
//! start (mapping its compiled code, building jsonschema's meta-schema validator: ~3 ms for each
//! schema in a fresh process).
//!
//! A schema is plain when every keyword in it is one of: `type`, `properties`, `required`,
//! `additionalProperties`, `items`, `enum`, `const`, `minimum`, `maximum`, `exclusiveMinimum`,
//! `exclusiveMaximum`, `minLength`, `maxLength`, `minItems`, `maxItems`, `minProperties`,
//! `maxProperties`, `anyOf`, `allOf`, `$ref` to `#/$defs/NAME` and `$defs` at the root, and the
//! annotations `$schema` (the 2020-12 meta-schema, at the root), `$comment`, `title`,
//! `description`, `default`, `examples`, `deprecated`, `readOnly`, `writeOnly` and `format` (an
//! annotation in 2020-12), each with a value of the shape the draft's meta-schema asks for. That is
//! what `schemars` writes for Rust types, the SDK's tools among them. Anything else, or anything
//! of another shape, and the schema is not plain: the checker compiles and checks it.
//!
//! The host only ever answers "valid" from here. A check that cannot say so for certain (the
//! value breaks the schema, is not JSON, compares numbers it cannot compare exactly, or takes more
//! than [`PLAIN_CHECK_STEPS_BASE`] plus [`PLAIN_CHECK_STEPS_PER_BYTE`] steps) goes to the checker,
//! which names the violation in jsonschema's words or stops at its limits. So the one property
//! this module must keep is: a value it calls valid, jsonschema calls valid
//! (`schema_check::tests::plain_checks_agree_with_the_checker` draws schemas and values at random
//! to hold it to that). No keyword here can say "valid" because another part failed (`not`,
//! `oneOf` and `if` are not plain), so a check stopped early, or unsure, never turns into a yes.

use serde_json::{Map, Number, Value};
use std::cmp::Ordering;

/// Steps a plain check may take before it gives up and leaves the value to the checker, on top of
/// [`PLAIN_CHECK_STEPS_PER_BYTE`]: steps are visits of a (schema, value) pair, properties looked up
/// and values compared.
pub(crate) const PLAIN_CHECK_STEPS_BASE: u64 = 100_000;
/// Steps a plain check may take for each byte of the value's JSON text.
pub(crate) const PLAIN_CHECK_STEPS_PER_BYTE: u64 = 4;
/// How deep a plain check nests (value levels, references and `anyOf`/`allOf` branches together)
/// before it leaves the value to the checker.
const PLAIN_CHECK_DEPTH_MAX: usize = 256;
/// How deep a schema may nest and still be plain.
const PLAIN_SCHEMA_DEPTH_MAX: usize = 64;

/// The draft-2020-12 meta-schema, the only `$schema` a plain schema may name (jsonschema also
/// takes a schema without one as 2020-12).
const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

/// A plain schema, ready to check values.
#[derive(Debug)]
pub(crate) struct Plan {
    root: Node,
    /// The root's `$defs`, which `$ref`s point at by index.
    defs: Vec<Node>,
}

#[derive(Debug)]
enum Node {
    /// `true` or `false`.
    Always(bool),
    Keywords(Box<Keywords>),
}

/// What one schema object asks; `None` or empty where it does not say.
#[derive(Debug, Default)]
struct Keywords {
    /// `type`, as a bit set of [`type_bit`]s.
    types: Option<u8>,
    /// `properties`, sorted by name.
    properties: Vec<(String, Node)>,
    required: Vec<String>,
    additional_properties: Option<Node>,
    items: Option<Node>,
    enumeration: Option<Vec<Value>>,
    constant: Option<Value>,
    minimum: Option<Number>,
    maximum: Option<Number>,
    exclusive_minimum: Option<Number>,
    exclusive_maximum: Option<Number>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    min_items: Option<u64>,
    max_items: Option<u64>,
    min_properties: Option<u64>,
    max_properties: Option<u64>,
    any_of: Vec<Node>,
    all_of: Vec<Node>,
    /// `$ref`, as an index into [`Plan::defs`].
    reference: Option<usize>,
}

impl Plan {
    /// The plan for `schema` when it is plain; `None` when the checker must handle it.
    pub(crate) fn of(schema: &Value) -> Option<Self> {
        let mut names = Vec::new();
        let mut def_schemas = Vec::new();
        if let Value::Object(root) = schema {
            if let Some(schema_uri) = root.get("$schema") {
                (schema_uri.as_str() == Some(DRAFT_2020_12)).then_some(())?;
            }
            if let Some(defs) = root.get("$defs") {
                for (name, def) in defs.as_object()? {
                    plain_def_name(name).then_some(())?;
                    names.push(name.as_str());
                    def_schemas.push(def);
                }
            }
        }
        let reader = Reader { names: &names };
        let root = reader.node(schema, 0, true)?;
        let defs = def_schemas.into_iter().map(|def| reader.node(def, 1, false)).collect::<Option<Vec<_>>>()?;
        let plan = Self { root, defs };
        (!plan.loops_in_place()).then_some(plan)
    }

    /// Whether some definition leads back to itself through `$ref`, `anyOf` and `allOf` alone,
    /// checking the same value forever (`{"$defs": {"a": {"$ref": "#/$defs/a"}}}`). Such a schema
    /// is left to the checker, so that what jsonschema makes of it (a refusal, or its stack
    /// limit) is decided once, at compile.
    fn loops_in_place(&self) -> bool {
        fn targets(node: &Node, out: &mut Vec<usize>) {
            if let Node::Keywords(k) = node {
                out.extend(k.reference);
                k.any_of.iter().chain(&k.all_of).for_each(|branch| targets(branch, out));
            }
        }
        let edges: Vec<Vec<usize>> = self
            .defs
            .iter()
            .map(|def| {
                let mut out = Vec::new();
                targets(def, &mut out);
                out
            })
            .collect();
        // Depth-first search: 0 unseen, 1 on the current path, 2 done.
        fn on_a_loop(at: usize, edges: &[Vec<usize>], state: &mut [u8]) -> bool {
            match state[at] {
                1 => return true,
                2 => return false,
                _ => {}
            }
            state[at] = 1;
            if edges[at].iter().any(|&next| on_a_loop(next, edges, state)) {
                return true;
            }
            state[at] = 2;
            false
        }
        let mut state = vec![0u8; self.defs.len()];
        (0..self.defs.len()).any(|def| on_a_loop(def, &edges, &mut state))
    }

    /// Whether `value` (JSON text) certainly matches the schema. `false` means "not known to":
    /// the value may break the schema, not be JSON, or the check may have stopped at its step or
    /// depth bound.
    pub(crate) fn accepts(&self, value: &str) -> bool {
        let Ok(parsed) = serde_json::from_str::<Value>(value) else {
            return false;
        };
        let bytes = u64::try_from(value.len()).unwrap_or(u64::MAX);
        let steps = PLAIN_CHECK_STEPS_BASE.saturating_add(PLAIN_CHECK_STEPS_PER_BYTE.saturating_mul(bytes));
        let mut walk = Walk { plan: self, steps_left: steps };
        walk.accepts(&self.root, &parsed, 0)
    }
}

/// One check's walk of a value, with the steps it has left.
struct Walk<'a> {
    plan: &'a Plan,
    steps_left: u64,
}

impl Walk<'_> {
    /// Spend `steps`; `false` once the walk has none left.
    fn spend(&mut self, steps: usize) -> bool {
        let steps = u64::try_from(steps).unwrap_or(u64::MAX);
        match self.steps_left.checked_sub(steps) {
            Some(left) => {
                self.steps_left = left;
                true
            }
            None => {
                self.steps_left = 0;
                false
            }
        }
    }

    fn accepts(&mut self, node: &Node, value: &Value, depth: usize) -> bool {
        if depth > PLAIN_CHECK_DEPTH_MAX || !self.spend(1) {
            return false;
        }
        let k = match node {
            Node::Always(always) => return *always,
            Node::Keywords(k) => k,
        };
        if k.types.is_some_and(|types| !has_type(types, value)) {
            return false;
        }
        if let Some(options) = &k.enumeration {
            let mut found = false;
            for option in options {
                if !self.spend(1) {
                    return false;
                }
                if self.certainly_equal(option, value) {
                    found = true;
                    break;
                }
            }
            if !found {
                return false;
            }
        }
        if let Some(constant) = &k.constant
            && !self.certainly_equal(constant, value)
        {
            return false;
        }
        let checked = match value {
            Value::Number(n) => number_within(k, n),
            Value::String(s) => {
                let chars = || u64::try_from(s.chars().count()).unwrap_or(u64::MAX);
                (k.min_length.is_none() && k.max_length.is_none())
                    || (self.spend(s.len() / 64) && {
                        let n = chars();
                        k.min_length.is_none_or(|min| n >= min) && k.max_length.is_none_or(|max| n <= max)
                    })
            }
            Value::Array(items) => self.array_accepted(k, items, depth),
            Value::Object(members) => self.object_accepted(k, members, depth),
            Value::Null | Value::Bool(_) => true,
        };
        if !checked {
            return false;
        }
        if let Some(target) = k.reference
            && !self.accepts(&self.plan.defs[target], value, depth + 1)
        {
            return false;
        }
        if !k.all_of.iter().all(|branch| self.accepts(branch, value, depth + 1)) {
            return false;
        }
        k.any_of.is_empty() || k.any_of.iter().any(|branch| self.accepts(branch, value, depth + 1))
    }

    fn array_accepted(&mut self, k: &Keywords, items: &[Value], depth: usize) -> bool {
        let n = u64::try_from(items.len()).unwrap_or(u64::MAX);
        if !(k.min_items.is_none_or(|min| n >= min) && k.max_items.is_none_or(|max| n <= max)) {
            return false;
        }
        match &k.items {
            Some(schema) => items.iter().all(|item| self.accepts(schema, item, depth + 1)),
            None => true,
        }
    }

    fn object_accepted(&mut self, k: &Keywords, members: &Map<String, Value>, depth: usize) -> bool {
        let n = u64::try_from(members.len()).unwrap_or(u64::MAX);
        if !(k.min_properties.is_none_or(|min| n >= min) && k.max_properties.is_none_or(|max| n <= max)) {
            return false;
        }
        if !self.spend(k.required.len()) || !k.required.iter().all(|name| members.contains_key(name)) {
            return false;
        }
        if k.properties.is_empty() && k.additional_properties.is_none() {
            return true;
        }
        for (name, member) in members {
            if !self.spend(1) {
                return false;
            }
            let schema = match k.properties.binary_search_by(|(known, _)| known.as_str().cmp(name)) {
                Ok(at) => &k.properties[at].1,
                Err(_) => match &k.additional_properties {
                    Some(schema) => schema,
                    None => continue,
                },
            };
            if !self.accepts(schema, member, depth + 1) {
                return false;
            }
        }
        true
    }

    /// Whether `a` and `b` are certainly equal as JSON Schema compares values (numbers by their
    /// value: `1` is `1.0`). Numbers [`compare`] cannot compare exactly are left to the checker.
    fn certainly_equal(&mut self, a: &Value, b: &Value) -> bool {
        if !self.spend(1) {
            return false;
        }
        match (a, b) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::String(a), Value::String(b)) => self.spend(a.len() / 64) && a == b,
            (Value::Number(a), Value::Number(b)) => compare(a, b) == Some(Ordering::Equal),
            (Value::Array(a), Value::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(a, b)| self.certainly_equal(a, b))
            }
            (Value::Object(a), Value::Object(b)) => {
                a.len() == b.len() && a.iter().all(|(name, a)| b.get(name).is_some_and(|b| self.certainly_equal(a, b)))
            }
            _ => false,
        }
    }
}

/// Whether `value` is one of the `types`. A float is never certainly an integer here (jsonschema
/// takes `1.0` as one; the checker decides it).
fn has_type(types: u8, value: &Value) -> bool {
    let bit = match value {
        Value::Null => 1,
        Value::Bool(_) => 2,
        Value::Object(_) => 4,
        Value::Array(_) => 8,
        Value::String(_) => 32,
        Value::Number(n) if n.is_f64() => 16,
        Value::Number(_) => 16 | 64,
    };
    types & bit != 0
}

/// Whether `n` is certainly within the number keywords of `k`.
fn number_within(k: &Keywords, n: &Number) -> bool {
    let at_least = |limit: &Option<Number>, strictly: bool| {
        limit.as_ref().is_none_or(|limit| match compare(n, limit) {
            Some(Ordering::Greater) => true,
            Some(Ordering::Equal) => !strictly,
            _ => false,
        })
    };
    let at_most = |limit: &Option<Number>, strictly: bool| {
        limit.as_ref().is_none_or(|limit| match compare(n, limit) {
            Some(Ordering::Less) => true,
            Some(Ordering::Equal) => !strictly,
            _ => false,
        })
    };
    at_least(&k.minimum, false)
        && at_least(&k.exclusive_minimum, true)
        && at_most(&k.maximum, false)
        && at_most(&k.exclusive_maximum, true)
}

/// `a` against `b` by value, when that is exact: two integers, two floats, or an integer within
/// ±2^53 (which a float holds exactly) and a float. `None` otherwise.
fn compare(a: &Number, b: &Number) -> Option<Ordering> {
    let integer = |n: &Number| n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from));
    match (integer(a), integer(b)) {
        (Some(a), Some(b)) => Some(a.cmp(&b)),
        (None, None) => a.as_f64()?.partial_cmp(&b.as_f64()?),
        (Some(a), None) => exact_float(a)?.partial_cmp(&b.as_f64()?),
        (None, Some(b)) => a.as_f64()?.partial_cmp(&exact_float(b)?),
    }
}

/// `n` as a float when the float holds it exactly.
fn exact_float(n: i128) -> Option<f64> {
    const EXACT: i128 = 1 << 53;
    #[allow(clippy::cast_precision_loss, reason = "within ±2^53 the conversion is exact")]
    (-EXACT..=EXACT).contains(&n).then_some(n as f64)
}

/// Reads a schema into [`Node`]s, refusing anything not plain.
struct Reader<'a> {
    /// The root's `$defs` names, in [`Plan::defs`] order.
    names: &'a [&'a str],
}

impl Reader<'_> {
    fn node(&self, schema: &Value, depth: usize, root: bool) -> Option<Node> {
        (depth <= PLAIN_SCHEMA_DEPTH_MAX).then_some(())?;
        let object = match schema {
            Value::Bool(always) => return Some(Node::Always(*always)),
            Value::Object(object) => object,
            _ => return None,
        };
        let mut k = Keywords::default();
        for (keyword, value) in object {
            match keyword.as_str() {
                "$schema" | "$defs" if root => {} // read by Plan::of
                "$comment" | "title" | "description" | "format" => {
                    value.as_str()?;
                }
                "default" => {}
                "examples" => {
                    value.as_array()?;
                }
                "deprecated" | "readOnly" | "writeOnly" => {
                    value.as_bool()?;
                }
                "type" => k.types = Some(types(value)?),
                "properties" => {
                    let mut properties = Vec::new();
                    for (name, schema) in value.as_object()? {
                        properties.push((name.clone(), self.node(schema, depth + 1, false)?));
                    }
                    properties.sort_by(|a, b| a.0.cmp(&b.0));
                    k.properties = properties;
                }
                "required" => k.required = unique_strings(value)?,
                "additionalProperties" => k.additional_properties = Some(self.node(value, depth + 1, false)?),
                "items" => k.items = Some(self.node(value, depth + 1, false)?),
                "enum" => k.enumeration = Some(value.as_array()?.clone()),
                "const" => k.constant = Some(value.clone()),
                "minimum" => k.minimum = Some(number(value)?),
                "maximum" => k.maximum = Some(number(value)?),
                "exclusiveMinimum" => k.exclusive_minimum = Some(number(value)?),
                "exclusiveMaximum" => k.exclusive_maximum = Some(number(value)?),
                "minLength" => k.min_length = Some(value.as_u64()?),
                "maxLength" => k.max_length = Some(value.as_u64()?),
                "minItems" => k.min_items = Some(value.as_u64()?),
                "maxItems" => k.max_items = Some(value.as_u64()?),
                "minProperties" => k.min_properties = Some(value.as_u64()?),
                "maxProperties" => k.max_properties = Some(value.as_u64()?),
                "anyOf" => k.any_of = self.branches(value, depth)?,
                "allOf" => k.all_of = self.branches(value, depth)?,
                "$ref" => {
                    let name = value.as_str()?.strip_prefix("#/$defs/")?;
                    k.reference = Some(self.names.iter().position(|known| *known == name)?);
                }
                _ => return None,
            }
        }
        Some(Node::Keywords(Box::new(k)))
    }

    /// `anyOf` or `allOf`: a non-empty array of schemas.
    fn branches(&self, value: &Value, depth: usize) -> Option<Vec<Node>> {
        let schemas = value.as_array()?;
        (!schemas.is_empty()).then_some(())?;
        schemas.iter().map(|schema| self.node(schema, depth + 1, false)).collect()
    }
}

/// A `$defs` name that `#/$defs/NAME` reaches as written: no JSON-pointer escapes (`~`, `/`) and
/// nothing a URI would percent-encode or cut (`%`, `#`, `?`, spaces, non-ASCII).
fn plain_def_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

const fn type_bit(name: &str) -> Option<u8> {
    Some(match name.as_bytes() {
        b"null" => 1,
        b"boolean" => 2,
        b"object" => 4,
        b"array" => 8,
        b"number" => 16,
        b"string" => 32,
        b"integer" => 64,
        _ => return None,
    })
}

/// `type`: one type name, or a non-empty array of distinct ones.
fn types(value: &Value) -> Option<u8> {
    match value {
        Value::String(name) => type_bit(name),
        Value::Array(names) => {
            (!names.is_empty()).then_some(())?;
            let mut set = 0u8;
            for name in names {
                let bit = type_bit(name.as_str()?)?;
                (set & bit == 0).then_some(())?;
                set |= bit;
            }
            Some(set)
        }
        _ => None,
    }
}

/// `required`: an array of distinct strings.
fn unique_strings(value: &Value) -> Option<Vec<String>> {
    let mut names: Vec<String> =
        value.as_array()?.iter().map(|name| name.as_str().map(str::to_owned)).collect::<Option<_>>()?;
    let mut sorted = names.clone();
    sorted.sort();
    sorted.windows(2).all(|pair| pair[0] != pair[1]).then_some(())?;
    names.shrink_to_fit();
    Some(names)
}

fn number(value: &Value) -> Option<Number> {
    value.as_number().cloned()
}
