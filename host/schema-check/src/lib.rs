//! Guild's JSON Schema checker, as a WebAssembly component (`wit/schema-check.wit`).
//!
//! A tool declares its own input and output schemas, so a schema is as hostile as the tool:
//! JSON Schema lets a few hundred bytes describe a check that takes hours (references that fan
//! out, backtracking patterns, `uniqueItems` over values that hash alike). No bound on the
//! schema alone holds, because the cost also grows with the value. So the host compiles this
//! crate to `wasm32-wasip2` and runs it under fuel and a memory limit, as it runs tools
//! (`host/runtime/src/schema_check.rs`): the check stops after a fixed amount of work, whatever
//! the schema and the value.
//!
//! One instance holds one compiled schema; `check` may then be called any number of times.

use jsonschema::error::ValidationErrorKind;

#[doc(hidden)]
#[allow(missing_docs, unreachable_pub, unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "schema-checker",
    });
}

use bindings::exports::guild::schema_check::checker::{Guest, Violation};

thread_local! {
    static COMPILED: std::cell::RefCell<Option<jsonschema::Validator>> = const { std::cell::RefCell::new(None) };
}

/// The component's exports.
pub struct Checker;

impl Guest for Checker {
    fn compile(schema: String) -> Result<(), String> {
        let validator = compile(&schema)?;
        COMPILED.with(|compiled| *compiled.borrow_mut() = Some(validator));
        Ok(())
    }

    fn check(value: String) -> Result<Option<Violation>, String> {
        let value: serde_json::Value =
            serde_json::from_str(&value).map_err(|e| format!("the value is not JSON: {e}"))?;
        COMPILED.with(|compiled| {
            let compiled = compiled.borrow();
            let validator = compiled.as_ref().ok_or("no schema was compiled")?;
            Ok(check(validator, &value))
        })
    }
}

/// `schema` (JSON text) compiled, with the schema checked against its draft's meta-schema.
///
/// # Errors
/// Why it is not JSON or not a JSON Schema.
pub fn compile(schema: &str) -> Result<jsonschema::Validator, String> {
    let schema: serde_json::Value = serde_json::from_str(schema).map_err(|e| format!("the schema is not JSON: {e}"))?;
    jsonschema::validator_for(&schema).map_err(|e| bounded(e.to_string()))
}

/// The longest text a violation carries in each of its fields, and a refusal of a schema, bytes:
/// a message quotes the value and the schema, which can be megabytes; longer text is cut at a
/// character boundary and ends with `…`.
pub const VIOLATION_TEXT_BYTES_MAX: usize = 4096;

/// The first way `value` breaks `validator`'s schema; `None` when it matches.
pub fn check(validator: &jsonschema::Validator, value: &serde_json::Value) -> Option<Violation> {
    let error = validator.validate(value).err()?;
    Some(Violation {
        instance_path: bounded(error.instance_path().as_str().to_string()),
        field: bounded(field_of(&error)),
        message: bounded(error.to_string()),
    })
}

/// `text` cut to [`VIOLATION_TEXT_BYTES_MAX`] bytes (the cut marked with `…`).
fn bounded(mut text: String) -> String {
    if text.len() > VIOLATION_TEXT_BYTES_MAX {
        let mut end = VIOLATION_TEXT_BYTES_MAX - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// The JSON pointer (RFC 6901) to the member `error` is about: where it was found, and for a
/// missing or an unexpected property, that property (joined by jsonschema's own `Location`,
/// which escapes `~` and `/` in its name).
fn field_of(error: &jsonschema::ValidationError<'_>) -> String {
    let at = error.instance_path();
    let field = match error.kind() {
        ValidationErrorKind::Required { property } => at.join(property.as_str().unwrap_or_default()),
        ValidationErrorKind::AdditionalProperties { unexpected } => match unexpected.first() {
            Some(first) => at.join(first),
            None => at.clone(),
        },
        _ => at.clone(),
    };
    field.as_str().to_string()
}

// Only a wasm build exports: a native build (the unit tests) cannot link the component's
// symbol names.
// The export glue is wit-bindgen's own (`unsafe` ABI shims).
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod export {
    use super::Checker;
    crate::bindings::export!(Checker with_types_in crate::bindings);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violation(schema: &str, value: &str) -> Option<Violation> {
        let validator = compile(schema).expect("schema compiles");
        check(&validator, &serde_json::from_str(value).expect("value is JSON"))
    }

    #[test]
    fn the_field_names_the_member_as_a_json_pointer() {
        let schema = r#"{"type":"object","properties":{"a/b~c":{"type":"string"},"n":{"type":"object","required":["x/y"]}},"additionalProperties":false}"#;
        let missing = violation(schema, r#"{"n":{}}"#).expect("invalid");
        assert_eq!((missing.instance_path.as_str(), missing.field.as_str()), ("/n", "/n/x~1y"));
        let unexpected = violation(schema, r#"{"p~q":1}"#).expect("invalid");
        assert_eq!((unexpected.instance_path.as_str(), unexpected.field.as_str()), ("", "/p~0q"));
        let wrong = violation(schema, r#"{"a/b~c":1}"#).expect("invalid");
        assert_eq!((wrong.instance_path.as_str(), wrong.field.as_str()), ("/a~1b~0c", "/a~1b~0c"));
        assert!(violation(schema, r#"{"a/b~c":"s"}"#).is_none());
    }

    /// A message quotes the value: one about a megabyte string is cut, so what crosses back to
    /// the host stays small.
    #[test]
    fn a_violation_is_bounded_whatever_the_value() {
        let long = format!("\"{}\"", "é".repeat(1 << 20));
        let violation = violation(r#"{"type":"integer"}"#, &long).expect("invalid");
        assert!(violation.message.len() <= VIOLATION_TEXT_BYTES_MAX, "{}", violation.message.len());
        assert!(violation.message.ends_with('…'));
    }

    /// A refusal of a schema quotes it too: cut the same way.
    #[test]
    fn a_refused_schema_is_named_in_bounded_text() {
        let long = format!(r#"{{"type":"{}"}}"#, "é".repeat(1 << 20));
        let refused = compile(&long).expect_err("not a type");
        assert!(refused.len() <= VIOLATION_TEXT_BYTES_MAX && refused.ends_with('…'), "{}", refused.len());
    }

    #[test]
    fn a_schema_that_is_not_json_schema_is_refused_with_the_reason() {
        assert!(compile("{").expect_err("not JSON").starts_with("the schema is not JSON"));
        let refused = compile(r#"{"type":"nonsense"}"#).expect_err("not a schema");
        assert!(refused.contains("nonsense"), "{refused}");
    }
}
