//! Every JSON-RPC frame an MCP client sends gets exactly one answer, on both transports: this
//! module looks at a frame before rmcp does and answers the ones rmcp would drop or misname
//! (rmcp skips a frame it cannot parse, answers a batch without `"id": null`, and answers
//! `tools/call` with malformed params as an unknown method).
//!
//! - unparsable JSON: `-32700 Parse error`, `id: null`;
//! - a batch (MCP since 2025-06-18 has none), a non-object, a bad `jsonrpc`, `id` or `method`:
//!   `-32600 Invalid Request`, with the id when it can be read, else `null`;
//! - params that are not an object, `tools/call` without a string `name` or with `arguments`
//!   that is not an object, a string holding an unpaired UTF-16 surrogate escape (strict JSON
//!   parsers refuse it), or params the typed request does not accept: `-32602 Invalid params`
//!   naming what is wrong, with the request's id.
//!
//! Notifications are never answered; a bad one is dropped and logged at warn.

use rmcp::model::ClientJsonRpcMessage;
use serde_json::{Value, json};

/// JSON-RPC's parse error.
pub(crate) const PARSE_ERROR: i64 = -32700;
/// JSON-RPC's invalid request.
pub(crate) const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC's invalid params.
pub(crate) const INVALID_PARAMS: i64 = -32602;

/// What to do with one frame.
#[derive(Debug)]
pub(crate) enum Screened {
    /// A well-formed message for rmcp.
    Pass(Box<ClientJsonRpcMessage>),
    /// Answer the client with this error object instead.
    Reply(Value),
    /// A bad notification or response: nothing to answer; log why.
    Drop(String),
}

/// A JSON-RPC error response.
pub(crate) fn error(id: Value, code: i64, message: impl Into<String>) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message.into() } })
}

/// Look at one frame (a stdio line, or an HTTP request body).
pub(crate) fn screen(frame: &[u8]) -> Screened {
    let frame = frame.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(frame);
    let text = match std::str::from_utf8(frame) {
        Ok(text) => text.trim(),
        Err(e) => return Screened::Reply(error(Value::Null, PARSE_ERROR, format!("Parse error: not UTF-8: {e}"))),
    };
    if text.is_empty() {
        return Screened::Drop("an empty frame".into());
    }
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(e) => return unparsable(text, &e),
    };
    let object = match value {
        Value::Array(_) => {
            return Screened::Reply(error(
                Value::Null,
                INVALID_REQUEST,
                "Invalid Request: JSON-RPC batches are not supported (MCP sends one message per frame)",
            ));
        }
        Value::Object(object) => object,
        _ => {
            return Screened::Reply(error(
                Value::Null,
                INVALID_REQUEST,
                "Invalid Request: a message must be an object",
            ));
        }
    };
    let id = match object.get("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_))) if id.is_string() || id.is_i64() || id.is_u64() => {
            Some(id.clone())
        }
        Some(_) => {
            return Screened::Reply(error(
                Value::Null,
                INVALID_REQUEST,
                "Invalid Request: id must be a string or an integer",
            ));
        }
    };
    let invalid = |message: String| match &id {
        Some(id) => Screened::Reply(error(id.clone(), INVALID_REQUEST, format!("Invalid Request: {message}"))),
        None => Screened::Drop(message),
    };
    if object.get("jsonrpc") != Some(&Value::String("2.0".into())) {
        return invalid("jsonrpc must be \"2.0\"".into());
    }
    let method = match object.get("method") {
        Some(Value::String(method)) => Some(method.as_str()),
        Some(_) => return invalid("method must be a string".into()),
        None => None,
    };
    let Some(method) = method else {
        if id.is_some() && (object.contains_key("result") || object.contains_key("error")) {
            return typed(Value::Object(object), None, "");
        }
        return invalid(
            "a message needs a method (a request or notification) or a result or error (a response)".into(),
        );
    };
    if let Some(problem) = params_problem(method, object.get("params")) {
        return match &id {
            Some(id) => Screened::Reply(error(id.clone(), INVALID_PARAMS, format!("Invalid params: {problem}"))),
            None => Screened::Drop(format!("notification {method}: {problem}")),
        };
    }
    let method = method.to_string();
    typed(Value::Object(object), id, &method)
}

/// Parse the checked value as rmcp's message type.
fn typed(value: Value, id: Option<Value>, method: &str) -> Screened {
    match serde_json::from_value::<ClientJsonRpcMessage>(value) {
        Ok(message) => Screened::Pass(Box::new(message)),
        Err(e) => match id {
            Some(id) if !method.is_empty() => {
                Screened::Reply(error(id, INVALID_PARAMS, format!("Invalid params for {method}: {e}")))
            }
            _ => Screened::Drop(format!("a message rmcp cannot read: {e}")),
        },
    }
}

/// What is wrong with a request's params, when something is.
fn params_problem(method: &str, params: Option<&Value>) -> Option<String> {
    match params {
        None | Some(Value::Object(_)) => {}
        Some(other) => return Some(format!("params must be an object, not {}", kind(other))),
    }
    if method != "tools/call" {
        return None;
    }
    let Some(params) = params else { return Some("tools/call needs params with a name".into()) };
    match params.get("name") {
        Some(Value::String(_)) => {}
        None => return Some("tools/call params.name is missing".into()),
        Some(other) => return Some(format!("tools/call params.name must be a string, not {}", kind(other))),
    }
    match params.get("arguments") {
        None | Some(Value::Object(_)) => None,
        Some(other) => Some(format!("tools/call params.arguments must be an object, not {}", kind(other))),
    }
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

/// A frame serde refused. A string with an unpaired UTF-16 surrogate escape (what a JavaScript
/// client sends for a cut emoji) is grammatical JSON that strict parsers refuse: answered as
/// invalid params, with the request's id recovered; anything else is a parse error.
fn unparsable(text: &str, error_: &serde_json::Error) -> Screened {
    let parse_error = || Screened::Reply(error(Value::Null, PARSE_ERROR, format!("Parse error: {error_}")));
    let Some(repaired) = replace_lone_surrogates(text) else {
        // Grammatical JSON nested deeper than the parser goes is a request that gets an
        // answer, with its id, when its id can be read at the top level.
        return match top_level_id(text) {
            Some(id) if error_.is_syntax() && error_.to_string().starts_with("recursion limit") => Screened::Reply(
                error(id, INVALID_REQUEST, "Invalid Request: the message is nested more than 128 levels deep"),
            ),
            _ => parse_error(),
        };
    };
    let Ok(Value::Object(object)) = serde_json::from_str::<Value>(&repaired) else { return parse_error() };
    let id = object.get("id").filter(|id| id.is_string() || id.is_i64() || id.is_u64()).cloned();
    let method = object.get("method").and_then(Value::as_str).unwrap_or("the message");
    let problem = format!(
        "{method}: a string holds an unpaired UTF-16 surrogate escape, which is not valid Unicode; send whole characters"
    );
    match id {
        Some(id) => Screened::Reply(error(id, INVALID_PARAMS, format!("Invalid params: {problem}"))),
        None => Screened::Drop(problem),
    }
}

/// The `id` member of a top-level object, read without parsing the rest (a string or an
/// integer; `None` when there is no such member or it is something else).
fn top_level_id(text: &str) -> Option<Value> {
    let bytes = text.as_bytes();
    let (mut depth, mut i, mut in_string) = (0usize, 0usize, false);
    let mut key_start = None;
    while i < bytes.len() {
        let byte = bytes[i];
        if in_string {
            match byte {
                b'\\' => i += 1,
                b'"' => {
                    in_string = false;
                    if let Some(start) = key_start.take()
                        && depth == 1
                        && &text[start..i] == "id"
                    {
                        let rest = text[i + 1..].trim_start().strip_prefix(':')?.trim_start();
                        let end = rest.find([',', '}']).unwrap_or(rest.len());
                        let id: Value = serde_json::from_str(rest[..end].trim()).ok()?;
                        return (id.is_string() || id.is_i64() || id.is_u64()).then_some(id);
                    }
                }
                _ => {}
            }
        } else {
            match byte {
                b'"' => {
                    in_string = true;
                    // A string right after `{` or `,` at depth 1 is a key.
                    let before = text[..i].trim_end();
                    if depth == 1 && (before.ends_with('{') || before.ends_with(',')) {
                        key_start = Some(i + 1);
                    }
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// `text` with every unpaired `\uD800`–`\uDFFF` escape replaced by `\uFFFD`, or `None` when it
/// has none.
fn replace_lone_surrogates(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let escape_at = |i: usize| -> Option<u16> {
        let hex = text.get(i + 2..i + 6)?;
        (bytes.get(i) == Some(&b'\\') && bytes.get(i + 1) == Some(&b'u')).then(|| u16::from_str_radix(hex, 16).ok())?
    };
    let mut out = String::with_capacity(text.len());
    let (mut i, mut replaced, mut in_string) = (0, false, false);
    while i < bytes.len() {
        let byte = bytes[i];
        if !in_string {
            in_string = byte == b'"';
        } else if byte == b'"' {
            in_string = false;
        } else if byte == b'\\' {
            match escape_at(i) {
                Some(0xD800..=0xDBFF) if matches!(escape_at(i + 6), Some(0xDC00..=0xDFFF)) => {
                    out.push_str(&text[i..i + 12]);
                    i += 12;
                    continue;
                }
                Some(0xD800..=0xDFFF) => {
                    out.push_str("\\uFFFD");
                    replaced = true;
                    i += 6;
                    continue;
                }
                _ => {
                    // Any other escape: copy it whole, so an escaped quote does not end the string.
                    let len = if escape_at(i).is_some() { 6 } else { 2 };
                    out.push_str(text.get(i..i + len).unwrap_or(&text[i..]));
                    i += len;
                    continue;
                }
            }
        }
        let ch_len = text[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&text[i..i + ch_len]);
        i += ch_len;
    }
    replaced.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(frame: &str) -> Value {
        match screen(frame.as_bytes()) {
            Screened::Reply(value) => value,
            other => panic!("{frame} was not answered with an error: {other:?}"),
        }
    }

    #[test]
    fn unparsable_frames_and_batches_are_answered_with_id_null() {
        let parse = reply("{not json");
        assert_eq!((parse["error"]["code"].as_i64(), &parse["id"]), (Some(PARSE_ERROR), &Value::Null));
        assert!(parse.as_object().expect("object").contains_key("id"), "id: null is written");
        let batch = reply(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#);
        assert_eq!((batch["error"]["code"].as_i64(), &batch["id"]), (Some(INVALID_REQUEST), &Value::Null));
        assert_eq!(reply("42")["error"]["code"], INVALID_REQUEST);
        assert_eq!(reply(r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#)["id"], Value::Null);
        assert_eq!(reply(r#"{"jsonrpc":"1.0","id":3,"method":"ping"}"#)["id"], 3);
    }

    #[test]
    fn malformed_tools_call_params_are_invalid_params_naming_the_field() {
        for (params, field) in [
            (r#""params":{"name":"echo","arguments":"text"}"#, "arguments"),
            (r#""params":{"name":"echo","arguments":[1]}"#, "arguments"),
            (r#""params":null"#, "params"),
            (r#""params":{"arguments":{}}"#, "name"),
            (r#""params":{"name":7}"#, "name"),
        ] {
            let frame = format!(r#"{{"jsonrpc":"2.0","id":"c1","method":"tools/call",{params}}}"#);
            let answer = reply(&frame);
            assert_eq!(answer["error"]["code"], INVALID_PARAMS, "{frame}");
            assert_eq!(answer["id"], "c1");
            assert!(answer["error"]["message"].as_str().expect("text").contains(field), "{answer}");
        }
    }

    #[test]
    fn an_unpaired_surrogate_is_invalid_params_with_the_request_id() {
        let frame = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","arguments":{"message":"truncated emoji: \ud83d"}}}"#;
        let answer = reply(frame);
        assert_eq!((answer["id"].as_i64(), answer["error"]["code"].as_i64()), (Some(9), Some(INVALID_PARAMS)));
        assert!(answer["error"]["message"].as_str().expect("text").contains("surrogate"));
        let paired = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","arguments":{"message":"\ud83d\ude00 \" \\u"}}}"#;
        assert!(matches!(screen(paired.as_bytes()), Screened::Pass(_)), "a whole emoji is fine");
    }

    #[test]
    fn a_request_nested_too_deep_is_answered_with_its_id() {
        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":14,"method":"tools/call","params":{{"name":"echo","arguments":{{"x":{}1{}}}}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let answer = reply(&deep);
        assert_eq!((answer["id"].as_i64(), answer["error"]["code"].as_i64()), (Some(14), Some(INVALID_REQUEST)));
        assert_eq!(top_level_id(r#"{"method":"x","params":{"id":1},"id":"outer"}"#), Some(Value::from("outer")));
        assert_eq!(top_level_id(r#"{"params":{"id":1}}"#), None);
    }

    #[test]
    fn good_messages_pass_and_bad_notifications_are_dropped() {
        assert!(matches!(screen(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#), Screened::Pass(_)));
        assert!(matches!(screen(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#), Screened::Pass(_)));
        assert!(matches!(screen(br#"{"jsonrpc":"2.0","method":"tools/call","params":5}"#), Screened::Drop(_)));
        assert!(matches!(screen(b"  \r"), Screened::Drop(_)));
    }
}
