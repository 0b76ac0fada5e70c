//! `http-get`: one HTTP request through the host's egress rules, returning the status, the
//! headers and the body (or one field of a JSON body). The tool may ask for any host; the
//! operator's `--allow-host` rules decide where it may really go.

mod exchange;

use exchange::{Failure, Request};
use guild_sdk::prelude::*;
use http::header::HeaderName;
use std::collections::BTreeMap;
use wasip2::http::types::{ErrorCode, Method};

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
///
/// # Errors
/// [`ToolError::InvalidInput`] for an unsupported method, a URL that is not `http://` or
/// `https://`, or a header name that is not one; [`ToolError::Denied`] when the host's egress rules
/// refuse the request; [`ToolError::Failed`] when the URL or a header value does not parse, the
/// request or its body fails, or `json_pointer` finds nothing (as [`select`]).
pub fn http_get(input: Input) -> Result<Output, ToolError> {
    let method = parse_method(input.method.as_deref().unwrap_or("GET"))?;
    if !(input.url.starts_with("http://") || input.url.starts_with("https://")) {
        return Err(ToolError::invalid_input(format!("{:?} is not an http:// or https:// URL", input.url)));
    }
    // Every header name is checked before anything else about the request: a bad name is the
    // caller's mistake, whatever else is wrong.
    let mut headers = Vec::with_capacity(input.headers.len());
    for (name, value) in input.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ToolError::invalid_input(format!("{name:?} is not a header name")))?;
        headers.push((name, value));
    }
    let response = request(method, &input.url, headers, input.body)
        .and_then(Request::send)
        .map_err(|failure| classify(&input.url, &failure))?;
    let status = response.status;
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &response.headers {
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

fn request(
    method: Method,
    url: &str,
    headers: Vec<(HeaderName, String)>,
    body: Option<String>,
) -> Result<Request, Failure> {
    let mut request = Request::new(method, url)?;
    for (name, value) in headers {
        request.header(name, value)?;
    }
    if let Some(body) = body {
        request.body(body.into_bytes());
    }
    Ok(request)
}

fn parse_method(method: &str) -> Result<Method, ToolError> {
    Ok(match method.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "PATCH" => Method::Patch,
        "DELETE" => Method::Delete,
        "OPTIONS" => Method::Options,
        other => return Err(ToolError::invalid_input(format!("unsupported method {other:?}"))),
    })
}

/// A refusal by the host's egress rules is a denial; anything else a failure.
fn classify(url: &str, failure: &Failure) -> ToolError {
    match failure {
        Failure::Http(ErrorCode::HttpRequestDenied | ErrorCode::DestinationIpProhibited) => {
            ToolError::denied(format!("the host refused the request to {url} ({failure})"))
        }
        _ => ToolError::failed(format!("request to {url} failed: {failure}")),
    }
}

/// The field of a JSON document that `pointer` names.
///
/// # Errors
/// [`ToolError::Failed`] when `bytes` are not JSON or hold nothing at `pointer`.
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
        let denied = classify("http://u/", &Failure::Http(ErrorCode::HttpRequestDenied));
        assert!(
            matches!(&denied, ToolError::Denied(m) if m == "the host refused the request to http://u/ (ErrorCode::HttpRequestDenied)"),
            "{denied:?}"
        );
        assert!(matches!(classify("u", &Failure::Http(ErrorCode::DestinationIpProhibited)), ToolError::Denied(_)));
        let refused = classify("http://u/", &Failure::Http(ErrorCode::ConnectionRefused));
        assert!(
            matches!(&refused, ToolError::Failed(m) if m == "request to http://u/ failed: ErrorCode::ConnectionRefused"),
            "{refused:?}"
        );
        assert!(matches!(classify("u", &Failure::Request("bad".into())), ToolError::Failed(_)));
    }

    #[test]
    fn a_url_or_header_value_the_http_crate_rejects_fails_before_sending() {
        let url = request(Method::Get, "http://exa mple/", Vec::new(), None).map(drop);
        assert!(matches!(url, Err(Failure::Request(_))));
        let value = vec![(HeaderName::from_static("x-a"), "line\nbreak".to_string())];
        let header = request(Method::Get, "http://example/", value, None).map(drop);
        assert!(matches!(header, Err(Failure::Request(ref m)) if m == "failed to parse header value"));
    }

    #[test]
    fn methods_and_schemes_are_checked() {
        assert!(parse_method("get").is_ok());
        assert!(matches!(parse_method("BREW"), Err(ToolError::InvalidInput(_))));
    }
}
