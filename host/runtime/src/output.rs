//! The output contract a tool's result is held to, once, in the host.

use crate::schema_check::CompiledSchema;
use guild_vocab::{Outcome, ToolErrorKind};

/// The output contract, checked once, here, for every path a run takes (CLI, API, MCP, workers)
/// and recorded in the bundle: the output is JSON that strict parsers accept (no unpaired UTF-16
/// surrogate escapes, which many parsers refuse), and matches the tool's own output schema when
/// it declares one. A tool that breaks it failed, and so did one whose output could not be
/// checked within the schema checker's limits. (Its size was bounded before it was copied out
/// of the guest.)
pub(crate) fn check_output(output: String, schema: Option<&CompiledSchema>) -> Outcome {
    let broken = |message: String| Outcome::ToolError { kind: ToolErrorKind::Failed, message };
    // Read whole (not skimmed): only reading each string checks its escapes.
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&output) {
        return broken(format!("the tool returned output that is not valid JSON: {e}"));
    }
    if let Err(e) = serde_json::from_str::<UniqueKeys>(&output) {
        return broken(format!("the tool returned output that strict JSON parsers refuse: {e}"));
    }
    match schema.map(|schema| schema.check(&output)) {
        None | Some(Ok(None)) => Outcome::Output { output },
        Some(Ok(Some(violation))) => {
            let at = if violation.instance_path.is_empty() { "/" } else { violation.instance_path.as_str() };
            broken(format!(
                "the tool's output does not match its declared output schema at {at}: {}",
                violation.message
            ))
        }
        Some(Err(e)) => {
            broken(format!("the tool's output could not be checked against its declared output schema: {e}"))
        }
    }
}

/// Any JSON value whose objects never name a key twice: RFC 8259 leaves what such an object
/// means open (parsers keep the first, the last, or refuse it), so a consumer could read another
/// output than the one checked and recorded.
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("the key {key:?} appears twice in one object")));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
    }
}

#[cfg(test)]
mod tests {
    use crate::cache::DiskCache;
    use crate::schema_check::{CompiledSchema, SchemaCheckError, SchemaCheckLimits};

    /// A tool's schemas come from the tool: compiling one must not read a file or open a
    /// connection, whatever it refers to (the checker runs with nothing granted, and jsonschema
    /// is built without its `resolve-file` and `resolve-http` features). Such a schema does not
    /// compile, and a tool whose output schema does not compile is refused at load.
    #[test]
    fn a_schema_that_refers_outside_the_process_does_not_compile_and_reaches_nothing() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("schema.json");
        std::fs::write(&file, r#"{"type": "string"}"#).expect("write");
        let schemas = [
            serde_json::json!({"$ref": format!("file://{}", file.display())}),
            serde_json::json!({"$ref": format!("http://127.0.0.1:{port}/schema.json")}),
            serde_json::json!({"$schema": format!("http://127.0.0.1:{port}/meta"), "type": "object"}),
            serde_json::json!({"properties": {"a": {"$ref": format!("http://127.0.0.1:{port}/a#/x")}}}),
        ];
        for schema in &schemas {
            let compiled = CompiledSchema::compile(schema, SchemaCheckLimits::default(), &DiskCache::new(None));
            assert!(matches!(compiled, Err(SchemaCheckError::Invalid(_))), "{schema}: {compiled:?}");
        }
        match listener.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("compiling the schemas reached the listener: {other:?}"),
        }
    }
}
