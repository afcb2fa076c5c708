//! Problem details (RFC 9457): every error the API answers is an
//! `application/problem+json` document built here, so no plain-text rejection and no
//! internal detail (store errors, paths, SQL) ever reaches a client.
//!
//! The `type` of each problem is a URN `urn:orders:problem:<slug>`; the slugs are the
//! constants of [`ProblemType`]. `errors` (one `{field, message}` per bad field) is
//! present on validation problems (422) only.

use std::error::Error as StdError;

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use orders_app::{AppError, StoreError, domain::OrderError};
use serde::Serialize;
use utoipa::ToSchema;

/// The media type of a problem document.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The kinds of problem the API reports; each is a stable `type` URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemType {
    /// 400: the body is not JSON, or a header or path segment is malformed.
    BadRequest,
    /// 401: the route needs a bearer token, and none or an unknown one was sent.
    Unauthorized,
    /// 403: the token may not do this (a customer-scoped token acting for another).
    Forbidden,
    /// 404: no such order, or no such route.
    NotFound,
    /// 405: the route exists but not for this method.
    MethodNotAllowed,
    /// 409: the order's state does not allow the request.
    Conflict,
    /// 413: the body is larger than the limit.
    PayloadTooLarge,
    /// 415: the body is not declared as JSON.
    UnsupportedMediaType,
    /// 422: a well-formed request with invalid values (or JSON of the wrong shape).
    Validation,
    /// 429: the client sent more requests than its rate limit allows.
    TooManyRequests,
    /// 500: something failed that the client cannot fix.
    Internal,
    /// 503: a dependency (store, bus) is unavailable, or the request timed out.
    Unavailable,
}

impl ProblemType {
    /// The `type` URI.
    #[must_use]
    pub const fn uri(self) -> &'static str {
        match self {
            Self::BadRequest => "urn:orders:problem:bad-request",
            Self::Unauthorized => "urn:orders:problem:unauthorized",
            Self::Forbidden => "urn:orders:problem:forbidden",
            Self::NotFound => "urn:orders:problem:not-found",
            Self::MethodNotAllowed => "urn:orders:problem:method-not-allowed",
            Self::Conflict => "urn:orders:problem:conflict",
            Self::PayloadTooLarge => "urn:orders:problem:payload-too-large",
            Self::UnsupportedMediaType => "urn:orders:problem:unsupported-media-type",
            Self::Validation => "urn:orders:problem:validation",
            Self::TooManyRequests => "urn:orders:problem:too-many-requests",
            Self::Internal => "urn:orders:problem:internal",
            Self::Unavailable => "urn:orders:problem:unavailable",
        }
    }

    /// The HTTP status that goes with it.
    #[must_use]
    pub const fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Validation => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A short, fixed, human-readable summary.
    #[must_use]
    pub const fn title(self) -> &'static str {
        match self {
            Self::BadRequest => "Bad request",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::Conflict => "Conflict with the order's state",
            Self::PayloadTooLarge => "Payload too large",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::Validation => "Invalid request",
            Self::TooManyRequests => "Too many requests",
            Self::Internal => "Internal error",
            Self::Unavailable => "Service unavailable",
        }
    }
}

/// One invalid field of a validation problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// The wire name of the field, e.g. `items[0].quantity`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// An RFC 9457 problem document; renders itself as the response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "urn:orders:problem:not-found",
    "title": "Not found",
    "status": 404,
    "detail": "order 0193a5d2-8c1e-7b7e-9f00-3c1d2e4f5a6b not found"
}))]
pub struct Problem {
    /// The problem type URI, `urn:orders:problem:<slug>`.
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "urn:orders:problem:not-found")]
    kind: &'static str,
    /// The fixed summary of the type.
    #[schema(value_type = String)]
    title: &'static str,
    /// The HTTP status, repeated in the body.
    status: u16,
    /// What went wrong for this request; written for the client, never internals.
    detail: String,
    /// Every bad field (validation problems only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
    errors: Vec<FieldError>,
    /// Extra members (e.g. the readiness checks), flattened into the document.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    extensions: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Problem {
    /// A problem of `kind` with `detail`.
    #[must_use]
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            kind: kind.uri(),
            title: kind.title(),
            status: kind.status().as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            extensions: None,
        }
    }

    /// A validation problem (422) naming every bad field.
    #[must_use]
    pub fn validation(detail: impl Into<String>, errors: Vec<FieldError>) -> Self {
        Self {
            errors,
            ..Self::new(ProblemType::Validation, detail)
        }
    }

    /// Adds an extension member.
    #[must_use]
    pub fn with(mut self, name: &str, value: serde_json::Value) -> Self {
        self.extensions
            .get_or_insert_with(serde_json::Map::new)
            .insert(name.to_owned(), value);
        self
    }

    /// The HTTP status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The detail text.
    #[must_use]
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The invalid fields (empty unless a validation problem).
    #[must_use]
    pub fn errors(&self) -> &[FieldError] {
        &self.errors
    }

    /// A 500 for a failure the client cannot do anything about. The cause chain is
    /// logged at error level here; the client sees a generic detail.
    #[must_use]
    pub fn internal(context: &str, error: &(dyn StdError + 'static)) -> Self {
        tracing::error!(error = %cause_chain(error), "{context}");
        Self::new(
            ProblemType::Internal,
            "the request could not be completed; it has been logged",
        )
    }

    /// A 503 for a dependency that failed; the cause chain is logged at error level here.
    #[must_use]
    pub fn unavailable(context: &str, error: &(dyn StdError + 'static)) -> Self {
        tracing::error!(error = %cause_chain(error), "{context}");
        Self::new(
            ProblemType::Unavailable,
            "the service is temporarily unavailable; try again later",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match serde_json::to_vec(&self) {
            Ok(body) => body,
            // Serializing strings and numbers cannot fail; keep a valid document anyway.
            Err(_) => {
                br#"{"type":"urn:orders:problem:internal","title":"Internal error","status":500}"#
                    .to_vec()
            }
        };
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

impl From<AppError> for Problem {
    /// Maps a use-case failure: invalid input → 422 naming every field, unknown order →
    /// 404, a refused transition → 409 (a refused checkout → 422), store failures → 503
    /// (unavailable, conflicts) or 500 (corrupt data), logged with their cause chain.
    fn from(error: AppError) -> Self {
        match error {
            AppError::Validation(errors) => Self::validation(
                format!("{} invalid field(s)", errors.len()),
                errors
                    .into_iter()
                    .map(|e| FieldError {
                        field: e.field,
                        message: e.message,
                    })
                    .collect(),
            ),
            AppError::NotFound(id) => {
                Self::new(ProblemType::NotFound, format!("order {id} not found"))
            }
            AppError::Rejected(
                e @ (OrderError::NoItems
                | OrderError::MixedCurrencies { .. }
                | OrderError::TotalOverflow),
            ) => Self::validation(
                e.to_string(),
                vec![FieldError {
                    field: "items".to_owned(),
                    message: e.to_string(),
                }],
            ),
            AppError::Rejected(e) => Self::new(ProblemType::Conflict, e.to_string()),
            AppError::Store(e @ StoreError::Corrupt { .. }) => Self::internal("store failed", &e),
            AppError::Store(
                e @ (StoreError::Conflict { .. } | StoreError::DuplicateMessage { .. }),
            ) => {
                tracing::warn!(error = %e, "store conflict persisted after retries");
                Self::new(
                    ProblemType::Conflict,
                    "the order was changed concurrently; try again",
                )
            }
            AppError::Store(e) => Self::unavailable("store failed", &e),
        }
    }
}

/// `error: cause: cause…`, for logs only.
#[must_use]
pub fn cause_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
