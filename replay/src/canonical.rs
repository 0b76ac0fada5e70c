//! Canonical JSON: object keys sorted by their UTF-8 bytes, no insignificant whitespace, strings
//! escaped as serde_json escapes them. The same value always gives the same bytes, so a digest
//! of canonical JSON identifies the value.

use serde::Serialize;
use serde_json::Value;

/// Serialize `value` as canonical JSON.
///
/// # Errors
/// The `serde_json::Error` when `value` is not a JSON value: its `Serialize` fails, or a map has
/// keys JSON cannot hold.
pub fn to_canonical_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let value = serde_json::to_value(value)?;
    let mut out = Vec::with_capacity(256);
    write_value(&value, &mut out)?;
    Ok(out)
}

/// Whether `bytes` are exactly the canonical form of the JSON they hold. Bundles refuse
/// documents that are not, so two encodings of one document cannot carry two ids.
pub fn is_canonical(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|value| to_canonical_bytes(&value).ok())
        .is_some_and(|canonical| canonical == bytes)
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key)?;
                out.push(b':');
                write_value(&map[key], out)?;
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sorted_at_every_depth() {
        let value = serde_json::json!({"b": 1, "a": {"d": [true, null], "c": "x\"y"}});
        let bytes = to_canonical_bytes(&value).expect("serializes");
        assert_eq!(String::from_utf8(bytes.clone()).expect("utf-8"), r#"{"a":{"c":"x\"y","d":[true,null]},"b":1}"#);
        assert!(is_canonical(&bytes));
        assert!(!is_canonical(br#"{"b":1,"a":2}"#));
        assert!(!is_canonical(br#"{"a": 2}"#));
    }
}
