//! Every error the API answers: a status and a JSON body with a stable
//! code (see the README's API section for the list).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bulwark_actors::cap::PartitionError;
use bulwark_actors::schedule::{InvalidInput, Rejection};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable code: BAD_REQUEST, UNSUPPORTED_MEDIA_TYPE, PAYLOAD_TOO_LARGE,
    /// UNAUTHORIZED, FORBIDDEN, API_CLOSED, NOT_FOUND, RULE_VIOLATION, KEY_REUSED,
    /// OVERLOADED, PARTITIONED, NO_LEADER, TIMED_OUT, UNAVAILABLE.
    pub code: String,
    /// For people.
    pub message: String,
    /// The request field at fault (400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The schedule rule broken (409), e.g. DOUBLE_BOOKING.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The partition state (503 PARTITIONED): MINORITY or ISOLATED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// The operation's mode (503 PARTITIONED): CP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// When to retry (429, 503), also in `Retry-After` (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// An error answer: a status and its body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body (boxed: errors travel in `Result`s).
    pub body: Box<ErrorBody>,
}

impl ApiError {
    /// An error with only a code and a message.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: Box::new(ErrorBody {
                code: code.into(),
                message: message.into(),
                field: None,
                rule: None,
                partition: None,
                mode: None,
                retry_after_ms: None,
            }),
        }
    }

    /// 400 naming the field.
    pub fn bad(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message);
        e.body.field = Some(field.into());
        e
    }

    /// 409 naming the rule.
    pub fn rule(r: &Rejection) -> ApiError {
        let mut e = ApiError::new(StatusCode::CONFLICT, "RULE_VIOLATION", r.to_string());
        e.body.rule = Some(r.rule.code().into());
        e
    }

    /// 503 with the partition state and the mode.
    pub fn partitioned(p: &PartitionError) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "PARTITIONED",
            p.to_string(),
        );
        e.body.partition = Some(p.state.code().into());
        e.body.mode = Some(p.mode.code().into());
        e.retry(5_000)
    }

    /// 503: try again later.
    pub fn unavailable(code: &str, message: impl Into<String>, retry_after_ms: u64) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message).retry(retry_after_ms)
    }

    /// Sets when to retry.
    pub fn retry(mut self, ms: u64) -> ApiError {
        self.body.retry_after_ms = Some(ms);
        self
    }
}

impl From<InvalidInput> for ApiError {
    fn from(e: InvalidInput) -> ApiError {
        ApiError::bad(e.field, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry = self.body.retry_after_ms;
        let code = super::audit::ErrorCode(self.body.code.clone());
        let mut resp = (self.status, Json(*self.body)).into_response();
        resp.extensions_mut().insert(code);
        if let Some(ms) = retry {
            let secs = ms.div_ceil(1000).max(1);
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&secs.to_string()).expect("digits"),
            );
        }
        resp
    }
}

/// The field a JSON decoding error is about: the path where it failed, or
/// the field an unknown/missing-field message names, or `body`.
pub fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    // The path is "." at the top level and "?" where serde has none.
    let path = match e.path().to_string() {
        p if p == "?" => ".".to_string(),
        p => p,
    };
    let inner = e.into_inner();
    let msg = inner.to_string();
    let named = msg
        .split('`')
        .nth(1)
        .filter(|_| msg.starts_with("unknown field") || msg.starts_with("missing field"));
    let field = match named {
        Some(name) if path == "." => name.to_string(),
        Some(name) if path == name || path.ends_with(&format!(".{name}")) => path,
        Some(name) => format!("{path}.{name}"),
        None if path == "." => "body".to_string(),
        None => path,
    };
    // An unknown key may be empty (`{"": 1}`): the field is then the body.
    let field = if field.is_empty() || field.ends_with('.') {
        "body".to_string()
    } else {
        field
    };
    ApiError::bad(field, format!("invalid JSON body: {msg}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        person: String,
        day: u32,
    }

    fn field(json: &str) -> String {
        let mut de = serde_json::Deserializer::from_str(json);
        let e = serde_path_to_error::deserialize::<_, T>(&mut de).unwrap_err();
        json_error(e).body.field.unwrap()
    }

    #[test]
    fn names_the_field() {
        assert_eq!(field(r#"{"person":"p","day":1,"x":2}"#), "x");
        assert_eq!(field(r#"{"day":1}"#), "person");
        assert_eq!(field(r#"{"person":"p","day":-1}"#), "day");
        assert_eq!(field(r#"{"person":"p""#), "body");
        assert_eq!(field("[]"), "body");
        // Found by the http_body fuzz target: an empty unknown key.
        assert_eq!(field(r#"{"":1,"person":"p","day":1}"#), "body");
    }
}
