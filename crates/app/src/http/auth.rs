//! Bearer-token authentication of the API.
//!
//! With a tokens file (`--auth-tokens-file`, parsed by [`Tokens::parse`]) every route but
//! the [`OPEN_PATHS`] (`/healthz`, `/readyz`, `/metrics`, `/stats`, `/openapi.json`, and
//! the live page's files `/`, `/page/app.js`, `/page/app.css`, which hold no data) needs
//! `Authorization: Bearer <token>`; a missing or unknown token is a 401 problem with
//! `WWW-Authenticate: Bearer`. Routes are closed by default, so `/orders…`,
//! `/dead-letters…`, `/events` and any route added later are protected.
//!
//! A token may be scoped to one customer (`token customer-id` in the file). The request
//! then carries a [`Caller`] scoped to that customer: the handlers answer 404 for other
//! customers' orders (the caller must not learn that they exist) and 403 for placing an
//! order for another customer; the cross-customer routes (`/dead-letters…`, `/events…`)
//! answer 403.
//!
//! Tokens are kept as [`SecretString`]s (zeroed on drop, redacted in `Debug`), compared
//! in constant time against every configured token (no early exit on a match), and never
//! logged; errors about the file name the line, never its content.

use std::{fmt, path::Path};

use axum::{
    extract::{FromRequestParts, Request, State},
    http::{HeaderValue, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};
use secrecy::{ExposeSecret as _, SecretString};
use subtle::ConstantTimeEq as _;

use super::problem::{Problem, ProblemType};

/// The routes that never need a token: probes and operational counters.
pub const OPEN_PATHS: [&str; 8] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/stats",
    "/openapi.json",
    // The live page's own files: they hold no data, and the page asks for a token.
    "/",
    "/page/app.js",
    "/page/app.css",
];

/// The routes that show every customer's data; a customer-scoped token gets 403 there.
pub const CROSS_CUSTOMER_PREFIXES: [&str; 2] = ["/dead-letters", "/events"];

/// The bearer tokens the API accepts, each optionally scoped to one customer.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<TokenEntry>,
}

#[derive(Clone)]
struct TokenEntry {
    token: SecretString,
    customer: Option<String>,
}

impl fmt::Debug for Tokens {
    /// Shows how many tokens there are, never a token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("count", &self.entries.len())
            .field(
                "scoped",
                &self.entries.iter().filter(|e| e.customer.is_some()).count(),
            )
            .finish()
    }
}

/// Why a tokens file was refused; names the line, never shows a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokensFileError {
    /// The 1-based line, `None` for the whole file.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for TokensFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for TokensFileError {}

/// The longest token accepted.
pub const MAX_TOKEN_LEN: usize = 4096;

impl Tokens {
    /// Parses a tokens file: one `token` or `token customer-id` per line; blank lines and
    /// lines starting with `#` are ignored. A token is visible ASCII without `#`
    /// (RFC 6750 allows letters, digits and `-._~+/=`), at most [`MAX_TOKEN_LEN`] bytes.
    ///
    /// # Errors
    /// A line with more than two words, a token with other characters, a token listed
    /// twice, or a file without any token.
    pub fn parse(text: &str) -> Result<Self, TokensFileError> {
        let mut entries: Vec<TokenEntry> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let at = |message: &str| TokensFileError {
                line: Some(index + 1),
                message: message.to_owned(),
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(token), customer) = (words.next(), words.next()) else {
                continue;
            };
            if words.next().is_some() {
                return Err(at(
                    "expected `token` or `token customer-id`, found more than two words",
                ));
            }
            if token.len() > MAX_TOKEN_LEN {
                return Err(at(&format!(
                    "the token is longer than {MAX_TOKEN_LEN} characters"
                )));
            }
            if !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
            {
                return Err(at(
                    "the token may only contain letters, digits and `-._~+/=`",
                ));
            }
            if entries
                .iter()
                .any(|e| e.token.expose_secret().as_bytes() == token.as_bytes())
            {
                return Err(at("the token is listed twice"));
            }
            if customer.is_some_and(|c| c.chars().count() > 128) {
                return Err(at("the customer id is longer than 128 characters"));
            }
            entries.push(TokenEntry {
                token: SecretString::from(token.to_owned()),
                customer: customer.map(str::to_owned),
            });
        }
        if entries.is_empty() {
            return Err(TokensFileError {
                line: None,
                message: "the file holds no token".to_owned(),
            });
        }
        Ok(Self { entries })
    }

    /// Reads and parses the file at `path`.
    ///
    /// # Errors
    /// The file cannot be read, or [`Tokens::parse`] refuses it.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the tokens file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid tokens file {}", path.display()))
    }

    /// How many tokens there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no token (never true for a parsed file).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The caller `presented` authenticates, `None` for an unknown token. Every
    /// configured token is compared, in constant time, whatever matches.
    #[must_use]
    pub fn authenticate(&self, presented: &[u8]) -> Option<Caller> {
        let mut found: Option<&TokenEntry> = None;
        for entry in &self.entries {
            let equal: bool = entry
                .token
                .expose_secret()
                .as_bytes()
                .ct_eq(presented)
                .into();
            if equal {
                found = Some(entry);
            }
        }
        found.map(|entry| Caller {
            customer: entry.customer.clone(),
        })
    }
}

/// Who sends a request: unrestricted (no authentication configured, or a token without
/// scope), or scoped to one customer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    customer: Option<String>,
}

impl Caller {
    /// A caller scoped to `customer`.
    #[must_use]
    pub fn customer(customer: impl Into<String>) -> Self {
        Self {
            customer: Some(customer.into()),
        }
    }

    /// The customer the caller is limited to, `None` when unrestricted.
    #[must_use]
    pub fn scope(&self) -> Option<&str> {
        self.customer.as_deref()
    }

    /// Whether the caller may see and act on `customer_id`'s orders.
    #[must_use]
    pub fn may_access(&self, customer_id: &str) -> bool {
        self.customer
            .as_deref()
            .is_none_or(|own| own == customer_id)
    }
}

/// The request's [`Caller`], as the authentication layer found it; unrestricted when the
/// API runs without authentication.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Self>().cloned().unwrap_or_default())
    }
}

/// Whether `path` is `prefix` or below it.
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The middleware: lets the [`OPEN_PATHS`] through, else authenticates the bearer token
/// and hands the [`Caller`] to the handlers.
pub(super) async fn authenticate(
    State(tokens): State<std::sync::Arc<Tokens>>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if OPEN_PATHS.contains(&path) {
        return next.run(request).await;
    }
    let cross_customer = CROSS_CUSTOMER_PREFIXES.iter().any(|p| under(path, p));
    let mut values = request.headers().get_all(header::AUTHORIZATION).iter();
    let presented = match (values.next(), values.next()) {
        (Some(value), None) => bearer(value),
        _ => None,
    };
    let Some(presented) = presented else {
        return unauthorized(
            "Bearer",
            "this resource needs an `Authorization: Bearer <token>` header",
        );
    };
    let Some(caller) = tokens.authenticate(presented) else {
        return unauthorized(
            "Bearer error=\"invalid_token\"",
            "the bearer token is not valid",
        );
    };
    if cross_customer && caller.scope().is_some() {
        return Problem::new(
            ProblemType::Forbidden,
            "a token scoped to one customer cannot read data of every customer",
        )
        .into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// The token of `Bearer <token>` (scheme case-insensitive).
fn bearer(value: &HeaderValue) -> Option<&[u8]> {
    let bytes = value.as_bytes();
    let scheme = bytes.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = bytes.get(7..)?.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// A 401 problem with its `WWW-Authenticate` challenge.
fn unauthorized(challenge: &'static str, detail: &str) -> Response {
    let mut response = Problem::new(ProblemType::Unauthorized, detail).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_tokens_file_has_plain_and_scoped_tokens_comments_and_blank_lines() {
        let tokens = Tokens::parse("# operators\nadmin-token\n\n  alice-token   c-1  \n").unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens.authenticate(b"admin-token"), Some(Caller::default()));
        assert_eq!(
            tokens.authenticate(b"alice-token"),
            Some(Caller::customer("c-1"))
        );
        assert_eq!(tokens.authenticate(b"alice-toke"), None);
        assert_eq!(tokens.authenticate(b""), None);
    }

    #[test]
    fn a_malformed_line_is_an_error_naming_it_without_the_token() {
        let error = Tokens::parse("ok-token\n\nsecret-token c-1 extra\n").unwrap_err();
        assert_eq!(error.line, Some(3));
        assert!(error.to_string().starts_with("line 3:"), "{error}");
        assert!(!error.to_string().contains("secret-token"), "{error}");

        let error = Tokens::parse("a\"b\n").unwrap_err();
        assert_eq!(error.line, Some(1));
        let error = Tokens::parse("same\nsame c-2\n").unwrap_err();
        assert_eq!(error.line, Some(2));
        let error = Tokens::parse("# nothing\n\n").unwrap_err();
        assert_eq!(error.line, None);
    }

    #[test]
    fn debug_never_shows_a_token() {
        let tokens = Tokens::parse("s3cret-token c-1\nother-s3cret\n").unwrap();
        let shown = format!("{tokens:?} {tokens:#?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("count: 2"), "{shown}");
    }

    #[test]
    fn bearer_values_parse_case_insensitively() {
        assert_eq!(
            bearer(&HeaderValue::from_static("Bearer abc")),
            Some(&b"abc"[..])
        );
        assert_eq!(
            bearer(&HeaderValue::from_static("bearer  abc ")),
            Some(&b"abc"[..])
        );
        assert_eq!(bearer(&HeaderValue::from_static("Basic abc")), None);
        assert_eq!(bearer(&HeaderValue::from_static("Bearer ")), None);
    }

    #[test]
    fn paths_are_matched_by_segment() {
        assert!(under("/events", "/events"));
        assert!(under("/dead-letters/1", "/dead-letters"));
        assert!(!under("/eventsx", "/events"));
    }
}
