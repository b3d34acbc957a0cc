//! What a simulated client sends and reads: requests as an HTTP client
//! would build them (bearer token, `Idempotency-Key`, a JSON body) and
//! answers decoded as JSON.

use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};

/// Largest answer body a client reads, in bytes.
pub const ANSWER_LEN_MAX: usize = 4 * 1024 * 1024;

/// A write: `POST path` with the bearer `token`, the idempotency `key`
/// and `body` as JSON.
pub fn post(path: &str, token: &str, key: &str, body: &serde_json::Value) -> Request<Body> {
    Request::post(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header("idempotency-key", key)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("a valid request")
}

/// A read: `GET path` with `token`.
pub fn get(path: &str, token: &str) -> Request<Body> {
    Request::get(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .expect("a valid request")
}

/// An answer's status and its JSON body (`Null` when it is not JSON).
pub async fn json(resp: Response<Body>) -> (StatusCode, serde_json::Value) {
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), ANSWER_LEN_MAX)
        .await
        .unwrap_or_default();
    let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, v)
}
