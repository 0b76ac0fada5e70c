//! The API's error answer: a status, a stable code, a message, and sometimes the field at fault
//! or a retry delay, as `{"error": {"code", "message", "field"?}}` (with `Retry-After`); counted
//! by code in `guild_api_errors_total`.

use crate::auth::ErrorCode;
use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An API error: a status, a stable code, a message, and sometimes a field or a retry delay.
pub(crate) struct ApiError {
    /// The HTTP status.
    pub(crate) status: StatusCode,
    /// The stable error code.
    pub(crate) code: &'static str,
    /// What happened and what to do, for people.
    pub(crate) message: String,
    /// The JSON pointer at fault in the request, for invalid input.
    pub(crate) field: Option<String>,
    /// Seconds until worth retrying (`Retry-After`).
    pub(crate) retry_after_s: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), field: None, retry_after_s: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::json!({ "code": self.code, "message": self.message });
        if let Some(field) = self.field {
            error["field"] = field.into();
        }
        let mut response = (self.status, Json(serde_json::json!({ "error": error }))).into_response();
        response.extensions_mut().insert(ErrorCode(self.code));
        if let Some(seconds) = self.retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// A body that could not be read: over its limit (413, naming the setting) or cut off (400).
pub(crate) fn too_large(rejection: BytesRejection, setting: &str, limit: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("the body is larger than {limit} bytes; send less or raise {setting}"),
        )
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("the body could not be read: {rejection}"))
    }
}
