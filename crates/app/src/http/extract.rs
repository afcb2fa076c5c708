//! Extractors whose rejections are problem documents, never axum's plain-text ones.
//!
//! * [`JsonBody`]: 415 unless the body is declared JSON (`application/json` or
//!   `application/*+json`), 413 over [`super::MAX_BODY_BYTES`], 400 for a body that is
//!   not JSON (syntax error, truncated), 422 for JSON of the wrong shape (missing field,
//!   wrong type) with serde's message as detail.
//! * [`OrderIdPath`]: 400 for an `{id}` that is not a UUID.
//! * [`IdempotencyKey`]: the optional `Idempotency-Key` header, 1 to 200 visible ASCII
//!   characters, else 400.
//! * [`QueryParams`]: axum's [`Query`] (a `Deserialize` struct), 400 for a query that does
//!   not fit it (unknown parameter, a value of the wrong type).

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Query, Request},
    http::{StatusCode, header, request::Parts},
};
use orders_domain::OrderId;
use serde::de::DeserializeOwned;

use super::{
    MAX_BODY_BYTES,
    problem::{Problem, ProblemType},
};

/// The name of the idempotency header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;

/// A JSON request body of type `T`.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(request.headers().get(header::CONTENT_TYPE)) {
            return Err(Problem::new(
                ProblemType::UnsupportedMediaType,
                "the body must be JSON, sent with `Content-Type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    too_large()
                } else {
                    Problem::new(ProblemType::BadRequest, "the body could not be read")
                }
            })?;
        // The body limit layer also applies without a Content-Length; check in case a
        // caller mounts the extractor on a router without it.
        if bytes.len() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        parse(&bytes).map(Self)
    }
}

fn too_large() -> Problem {
    Problem::new(
        ProblemType::PayloadTooLarge,
        format!("the body must not be larger than {MAX_BODY_BYTES} bytes"),
    )
}

/// Parses a JSON document: a body that is not JSON is 400, JSON of the wrong shape 422.
/// The whole document is checked for syntax first, so `{} trailing` is a 400 even though
/// `{}` alone would be a shape error.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(|e| {
        Problem::new(
            ProblemType::BadRequest,
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    serde_json::from_slice(bytes).map_err(|e| {
        Problem::new(
            ProblemType::Validation,
            format!("the JSON document does not have the expected shape: {e}"),
        )
    })
}

/// `application/json`, or any `application/<something>+json`, with any parameters.
fn is_json(content_type: Option<&axum::http::HeaderValue>) -> bool {
    let Some(value) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|subtype| subtype.ends_with("+json"))
}

/// The `{id}` path segment, parsed as an order id.
#[derive(Debug, Clone, Copy)]
pub struct OrderIdPath(pub OrderId);

impl<S: Send + Sync> FromRequestParts<S> for OrderIdPath {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let malformed = || {
            Problem::new(
                ProblemType::BadRequest,
                "the order id in the path must be a UUID",
            )
        };
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| malformed())?;
        raw.parse::<OrderId>().map(Self).map_err(|_| malformed())
    }
}

/// The query string, deserialized into `T` by axum's [`Query`]; a query that does not fit
/// `T` is a 400 problem whose detail is serde's message.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueryParams<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(query)| Self(query))
            .map_err(|rejection| {
                Problem::new(
                    ProblemType::BadRequest,
                    format!("the query is malformed: {}", rejection.body_text()),
                )
            })
    }
}

/// The optional `Idempotency-Key` header of a checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let mut values = parts.headers.get_all(IDEMPOTENCY_KEY).iter();
        let Some(value) = values.next() else {
            return Ok(Self(None));
        };
        let invalid = || {
            Problem::new(
                ProblemType::BadRequest,
                format!(
                    "the Idempotency-Key header must be one value of 1 to \
                     {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
                ),
            )
        };
        if values.next().is_some() {
            return Err(invalid());
        }
        let bytes = value.as_bytes();
        if bytes.is_empty()
            || bytes.len() > MAX_IDEMPOTENCY_KEY_LEN
            || !bytes.iter().all(u8::is_ascii_graphic)
        {
            return Err(invalid());
        }
        // Visible ASCII is valid UTF-8.
        let key = String::from_utf8_lossy(bytes).into_owned();
        Ok(Self(Some(key)))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn json_and_json_suffixed_media_types_are_json() {
        for accepted in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
        ] {
            assert!(
                is_json(Some(&HeaderValue::from_static(accepted))),
                "{accepted}"
            );
        }
        for refused in ["text/plain", "application/jsonx", "json", ""] {
            assert!(
                !is_json(Some(&HeaderValue::from_static(refused))),
                "{refused}"
            );
        }
        assert!(!is_json(None));
    }
}
