//! `http-get`: one HTTP request through the host's egress rules, returning the status, the
//! headers and the body (or one field of a JSON body). The tool may ask for any host; the
//! operator's `--allow-host` rules decide where it may really go.

use guild_sdk::prelude::*;
use std::collections::BTreeMap;

/// Input of `http-get`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The URL to request, `http://` or `https://`.
    pub url: String,
    /// HTTP method; GET when omitted.
    #[serde(default)]
    pub method: Option<String>,
    /// Request headers. A value may name a secret as `{{secret:NAME}}`; the host fills it in.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Request body, sent as UTF-8.
    #[serde(default)]
    pub body: Option<String>,
    /// Return only this field of a JSON response, as a JSON pointer (`/data/0/name`).
    #[serde(default)]
    pub json_pointer: Option<String>,
}

/// Output of `http-get`.
#[derive(Debug, Serialize, JsonSchema, PartialEq)]
pub struct Output {
    /// HTTP status code.
    pub status: u16,
    /// Response headers (lowercase names; repeated headers joined with `, `).
    pub headers: BTreeMap<String, String>,
    /// The body as text, when `json_pointer` was not given.
    pub body: Option<String>,
    /// The selected JSON field, when `json_pointer` was given.
    pub json: Option<serde_json::Value>,
}

/// Make the request.
pub fn http_get(input: Input) -> Result<Output, ToolError> {
    let method = parse_method(input.method.as_deref().unwrap_or("GET"))?;
    if !(input.url.starts_with("http://") || input.url.starts_with("https://")) {
        return Err(ToolError::invalid_input(format!("{:?} is not an http:// or https:// URL", input.url)));
    }
    let mut request = waki::Client::new().request(method, &input.url);
    for (name, value) in input.headers {
        let name = waki::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ToolError::invalid_input(format!("{name:?} is not a header name")))?;
        request = request.header(name, value);
    }
    if let Some(body) = input.body {
        request = request.body(body.into_bytes());
    }
    let response = request.send().map_err(|e| classify(&input.url, &e.to_string()))?;
    let status = response.status_code();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in response.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers.entry(name.as_str().to_string()).and_modify(|v| *v = format!("{v}, {value}")).or_insert(value);
    }
    let bytes = response.body().map_err(|e| ToolError::failed(format!("reading the body of {}: {e}", input.url)))?;
    guild_sdk::log::info(format!("{} → {status}, {} bytes", input.url, bytes.len()));
    let (body, json) = match input.json_pointer {
        None => (Some(String::from_utf8_lossy(&bytes).into_owned()), None),
        Some(pointer) => (None, Some(select(&bytes, &pointer)?)),
    };
    Ok(Output { status, headers, body, json })
}

fn parse_method(method: &str) -> Result<waki::Method, ToolError> {
    Ok(match method.to_ascii_uppercase().as_str() {
        "GET" => waki::Method::Get,
        "HEAD" => waki::Method::Head,
        "POST" => waki::Method::Post,
        "PUT" => waki::Method::Put,
        "PATCH" => waki::Method::Patch,
        "DELETE" => waki::Method::Delete,
        "OPTIONS" => waki::Method::Options,
        other => return Err(ToolError::invalid_input(format!("unsupported method {other:?}"))),
    })
}

/// A refusal by the host's egress rules is a denial; anything else a failure.
fn classify(url: &str, error: &str) -> ToolError {
    const DENIALS: [&str; 2] = ["HttpRequestDenied", "DestinationIpProhibited"];
    if DENIALS.iter().any(|d| error.contains(d)) {
        ToolError::denied(format!("the host refused the request to {url} ({error})"))
    } else {
        ToolError::failed(format!("request to {url} failed: {error}"))
    }
}

/// The field of a JSON document that `pointer` names.
pub fn select(bytes: &[u8], pointer: &str) -> Result<serde_json::Value, ToolError> {
    let document: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ToolError::failed(format!("the response is not JSON: {e}")))?;
    document
        .pointer(pointer)
        .cloned()
        .ok_or_else(|| ToolError::failed(format!("the response has nothing at {pointer:?}")))
}

guild_sdk::export_tool! {
    run: http_get,
    describe: Info::new("http-get", "Makes one HTTP request and returns its status, headers and body (or one JSON field).")
        .host("http://*:*")
        .host("https://*:*")
        .secret("*"),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_json_fields() {
        let body = br#"{"data":[{"name":"guild"}]}"#;
        assert_eq!(select(body, "/data/0/name").expect("present"), serde_json::json!("guild"));
        assert!(matches!(select(body, "/nope"), Err(ToolError::Failed(_))));
        assert!(matches!(select(b"not json", "/x"), Err(ToolError::Failed(_))));
    }

    #[test]
    fn refusals_are_denials_and_the_rest_failures() {
        assert!(matches!(classify("u", "ErrorCode::HttpRequestDenied"), ToolError::Denied(_)));
        assert!(matches!(classify("u", "ErrorCode::DestinationIpProhibited"), ToolError::Denied(_)));
        assert!(matches!(classify("u", "ErrorCode::ConnectionRefused"), ToolError::Failed(_)));
    }

    #[test]
    fn methods_and_schemes_are_checked() {
        assert!(parse_method("get").is_ok());
        assert!(matches!(parse_method("BREW"), Err(ToolError::InvalidInput(_))));
    }
}
