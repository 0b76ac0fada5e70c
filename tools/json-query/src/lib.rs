//! `json-query`: picks a value out of a JSON document, given inline or as a file under `/data`,
//! with a small dotted-path query language (`a.b[2].c`, `[-1]`, `[*]`; see [`query`]).

pub mod query;

use guild_sdk::prelude::*;
use query::Segment;
use serde::Deserializer;
use serde_json::Value;
use std::fs::File;
use std::io::Read;

/// Largest document file read. The whole document is held in memory as a `serde_json::Value`,
/// several times its size on disk, so a bound keeps a stray large file from exhausting memory.
pub const DOCUMENT_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Input of `json-query`: the query and exactly one of `document` and `path`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The JSON document to query, inline. Any JSON value, `null` included.
    #[serde(default, deserialize_with = "present")]
    #[schemars(transform = no_default)]
    pub document: Option<Value>,
    /// A JSON file to query instead, under the `/data` mount, e.g. `/data/config.json`.
    #[serde(default)]
    pub path: Option<String>,
    /// The query: keys joined by `.` (`a.b`), array indexes (`[2]`, `[-1]` for the last),
    /// `[*]` to apply the rest of the query to every element of an array, `["odd.key"]` for keys
    /// with special characters. An empty query returns the whole document.
    pub query: String,
}

/// Without this, `"document": null` would read as an absent document and be refused.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// The derived schema would say `"default": null`, but an explicit `null` is a document here,
/// not the same as leaving `document` out.
fn no_default(schema: &mut guild_sdk::schemars::Schema) {
    schema.remove("default");
}

/// Output of `json-query`.
#[derive(Debug, Serialize, JsonSchema, PartialEq)]
pub struct Output {
    /// The selected value; after a `[*]`, an array with one result per element.
    pub result: Value,
}

/// Run `input.query` against the document.
///
/// # Errors
/// [`ToolError::InvalidInput`] when the query does not parse, or not exactly one of `document` and
/// a non-empty `path` is given; [`ToolError::Denied`] (no permission) or [`ToolError::Failed`] when
/// the file cannot be read; [`ToolError::Failed`] when it is larger than [`DOCUMENT_BYTES_MAX`] or
/// not JSON, or when the query finds nothing (as [`evaluate`]).
pub fn json_query(input: Input) -> Result<Output, ToolError> {
    let segments = query::parse(&input.query)
        .map_err(|e| ToolError::invalid_input(format!("malformed query {:?} {e}", input.query)))?;
    let (document, source) = match (input.document, input.path) {
        (Some(document), None) => (document, "inline document".to_string()),
        (None, Some(path)) => (read_document(&path)?, path),
        (Some(_), Some(_)) => return Err(ToolError::invalid_input("give either `document` or `path`, not both")),
        (None, None) => {
            return Err(ToolError::invalid_input("give the JSON inline as `document`, or a `path` under /data"));
        }
    };
    let result =
        evaluate(&document, &segments).map_err(|e| ToolError::failed(format!("query {:?}: {e}", input.query)))?;
    guild_sdk::log::info(format!("json-query {:?} on {source}: {}", input.query, kind(&result)));
    Ok(Output { result })
}

fn read_document(path: &str) -> Result<Value, ToolError> {
    if path.is_empty() {
        return Err(ToolError::invalid_input("path must not be empty; give a JSON file under /data"));
    }
    let file = File::open(path).map_err(|e| ToolError::io(path, e))?;
    let mut bytes = Vec::new();
    // One byte past the limit tells "exactly at the limit" from "over it" without a stat.
    file.take(DOCUMENT_BYTES_MAX + 1).read_to_end(&mut bytes).map_err(|e| ToolError::io(path, e))?;
    if bytes.len() as u64 > DOCUMENT_BYTES_MAX {
        return Err(ToolError::failed(format!(
            "{path} is larger than {DOCUMENT_BYTES_MAX} bytes; query a smaller document"
        )));
    }
    serde_json::from_slice(&bytes).map_err(|e| ToolError::failed(format!("{path} is not valid JSON: {e}")))
}

/// Apply parsed query steps to `document`.
///
/// # Errors
/// A message naming the first step that found nothing (a missing key, an index out of range, or a
/// value of the wrong kind) and where in the document it looked.
pub fn evaluate(document: &Value, segments: &[Segment]) -> Result<Value, String> {
    let mut at = String::new();
    eval(document, segments, &mut at)
}

/// `at` is the path walked so far, in query syntax, kept for error messages; each step appends
/// to it and truncates back, so a wildcard over a large array does not allocate a path per item.
fn eval(value: &Value, segments: &[Segment], at: &mut String) -> Result<Value, String> {
    let Some((segment, rest)) = segments.split_first() else {
        return Ok(value.clone());
    };
    let depth = at.len();
    let result = match segment {
        Segment::Key(key) => {
            let object = value.as_object().ok_or_else(|| mismatch(at, value, "an object", segment))?;
            let child = object
                .get(key)
                .ok_or_else(|| format!("{} not found: {} has no key {key:?}", shown(segment), place(at)))?;
            segment.write_to(at);
            eval(child, rest, at)
        }
        Segment::Index(index) => {
            let array = value.as_array().ok_or_else(|| mismatch(at, value, "an array", segment))?;
            let item = resolve(*index, array.len()).and_then(|i| array.get(i)).ok_or_else(|| {
                let plural = if array.len() == 1 { "" } else { "s" };
                format!("{} not found: {} is an array of {} element{plural}", shown(segment), place(at), array.len())
            })?;
            segment.write_to(at);
            eval(item, rest, at)
        }
        Segment::Wildcard => {
            let array = value.as_array().ok_or_else(|| mismatch(at, value, "an array", segment))?;
            let mut results = Vec::with_capacity(array.len());
            for (i, item) in array.iter().enumerate() {
                let before = at.len();
                Segment::Index(i64::try_from(i).unwrap_or(i64::MAX)).write_to(at);
                results.push(eval(item, rest, at)?);
                at.truncate(before);
            }
            Ok(Value::Array(results))
        }
    };
    at.truncate(depth);
    result
}

/// The position `index` names in an array of `len`, counting from the end when negative.
fn resolve(index: i64, len: usize) -> Option<usize> {
    let len = i64::try_from(len).ok()?;
    let position = if index < 0 { len + index } else { index };
    if (0..len).contains(&position) { usize::try_from(position).ok() } else { None }
}

fn mismatch(at: &str, value: &Value, expected: &str, segment: &Segment) -> String {
    format!("{} not found: {} is {}, not {expected}", shown(segment), place(at), kind(value))
}

fn shown(segment: &Segment) -> String {
    let mut text = String::new();
    segment.write_to(&mut text);
    match segment {
        Segment::Key(_) if !text.starts_with('[') => format!("`.{text}`"),
        _ => format!("`{text}`"),
    }
}

fn place(at: &str) -> String {
    if at.is_empty() { "the document root".to_string() } else { format!("`{at}`") }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

guild_sdk::export_tool! {
    run: json_query,
    describe: Info::new(
        "json-query",
        "Selects a value from a JSON document with a dotted path such as `a.b[2].c`, `[-1]` or `items[*].id`.",
    )
    .dir("/data", Access::ReadOnly, "JSON files to query"),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "a": { "b": [10, 20, { "c": "deep" }] },
            "items": [ { "id": 1, "tags": ["x"] }, { "id": 2, "tags": ["y", "z"] } ],
            "odd.key": { "": null },
            "empty": []
        })
    }

    fn run(query: &str) -> Result<Value, ToolError> {
        json_query(Input { document: Some(doc()), path: None, query: query.to_string() }).map(|o| o.result)
    }

    fn failure(query: &str) -> String {
        match run(query) {
            Err(ToolError::Failed(message)) => message,
            other => panic!("{query:?} should fail, got {other:?}"),
        }
    }

    #[test]
    fn selects_by_key_index_and_negative_index() {
        assert_eq!(run("a.b[2].c").expect("query"), json!("deep"));
        assert_eq!(run("a.b[0]").expect("query"), json!(10));
        assert_eq!(run("a.b[-1].c").expect("query"), json!("deep"));
        assert_eq!(run("a.b[-3]").expect("query"), json!(10));
        assert_eq!(run(r#"["odd.key"][""]"#).expect("query"), Value::Null);
        assert_eq!(run("").expect("query"), doc());
    }

    #[test]
    fn wildcards_map_over_arrays_and_nest() {
        assert_eq!(run("items[*].id").expect("query"), json!([1, 2]));
        assert_eq!(run("items[*].tags[*]").expect("query"), json!([["x"], ["y", "z"]]));
        assert_eq!(run("items[*].tags[-1]").expect("query"), json!(["x", "z"]));
        assert_eq!(run("empty[*].anything").expect("query"), json!([]));
    }

    #[test]
    fn a_missing_step_fails_naming_the_step_and_where() {
        let message = failure("a.b[2].nope");
        assert!(message.contains("`.nope` not found: `a.b[2]` has no key \"nope\""), "{message}");
        let message = failure("a.b[3]");
        assert!(message.contains("`[3]` not found: `a.b` is an array of 3 elements"), "{message}");
        let message = failure("a.b[-4]");
        assert!(message.contains("`[-4]` not found"), "{message}");
        let message = failure("missing");
        assert!(message.contains("the document root has no key \"missing\""), "{message}");
    }

    #[test]
    fn a_type_mismatch_fails_saying_what_was_found() {
        let message = failure("a.b[0].c");
        assert!(message.contains("`a.b[0]` is a number, not an object"), "{message}");
        let message = failure("a[0]");
        assert!(message.contains("`a` is an object, not an array"), "{message}");
        let message = failure("a.b[2].c[*]");
        assert!(message.contains("`a.b[2].c` is a string, not an array"), "{message}");
    }

    #[test]
    fn a_failure_inside_a_wildcard_names_the_element() {
        let document = json!({ "xs": [ { "v": 1 }, { "w": 2 } ] });
        let err = json_query(Input { document: Some(document), path: None, query: "xs[*].v".into() })
            .expect_err("second element has no v");
        assert!(matches!(&err, ToolError::Failed(m) if m.contains("`xs[1]` has no key \"v\"")), "{err:?}");
    }

    #[test]
    fn a_malformed_query_is_invalid_input_with_its_position() {
        let err = run("a.b[x]").expect_err("must fail");
        assert!(matches!(&err, ToolError::InvalidInput(m) if m.contains("at position 4")), "{err:?}");
    }

    #[test]
    fn reads_the_document_from_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("doc.json");
        std::fs::write(&file, doc().to_string()).expect("write");
        let path = file.display().to_string();
        let out = json_query(Input { document: None, path: Some(path), query: "items[1].tags".into() }).expect("query");
        assert_eq!(out.result, json!(["y", "z"]));

        std::fs::write(&file, "{ not json").expect("write");
        let err = json_query(Input { document: None, path: Some(file.display().to_string()), query: String::new() })
            .expect_err("must fail");
        assert!(matches!(&err, ToolError::Failed(m) if m.contains("not valid JSON")), "{err:?}");

        let missing = dir.path().join("nope.json").display().to_string();
        let err = json_query(Input { document: None, path: Some(missing), query: String::new() }).expect_err("fail");
        assert!(matches!(&err, ToolError::Failed(m) if m.contains("nope.json")), "{err:?}");
    }

    #[test]
    fn needs_exactly_one_source_and_null_is_a_document() {
        let err = guild_sdk::__run(json_query, r#"{"query":"a"}"#).expect_err("no source");
        assert!(format!("{err:?}").contains("give the JSON inline"), "{err:?}");
        let err = guild_sdk::__run(json_query, r#"{"query":"","document":1,"path":"/data/x.json"}"#)
            .expect_err("two sources");
        assert!(format!("{err:?}").contains("not both"), "{err:?}");
        let out = guild_sdk::__run(json_query, r#"{"query":"","document":null}"#).expect("null is a document");
        assert_eq!(out, r#"{"result":null}"#);
        let err = guild_sdk::__run(json_query, r#"{"query":"","document":1,"extra":1}"#).expect_err("unknown");
        assert!(format!("{err:?}").contains("unknown field"), "{err:?}");
    }

    #[test]
    fn resolves_indexes_from_either_end() {
        assert_eq!(resolve(0, 3), Some(0));
        assert_eq!(resolve(2, 3), Some(2));
        assert_eq!(resolve(3, 3), None);
        assert_eq!(resolve(-1, 3), Some(2));
        assert_eq!(resolve(-3, 3), Some(0));
        assert_eq!(resolve(-4, 3), None);
        assert_eq!(resolve(0, 0), None);
        assert_eq!(resolve(i64::MIN, 3), None);
    }
}
