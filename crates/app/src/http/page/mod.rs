//! The live flow page at `GET /`: static HTML, script and style embedded in the binary
//! (`include_str!`: no build step, nothing fetched from elsewhere), for an operator
//! watching orders flow.
//!
//! | file | route | what |
//! |---|---|---|
//! | `index.html` | `GET /` | the layout: orders, the chosen order's message diagram, the order form, flow figures, dead letters |
//! | `app.js` | `GET /page/app.js` | reads `GET /orders`, follows `GET /events` (a streaming `fetch`, so it can send `Authorization: Bearer`; reconnects with backoff), draws the diagram from `GET /orders/{id}/messages`, places and cancels orders, lists and replays dead letters |
//! | `app.css` | `GET /page/app.css` | the look |
//!
//! These routes need no token (they hold no data; the page asks for a token when the
//! API wants one and keeps it in the tab's session storage). A Content-Security-Policy
//! keeps the page to its own origin.

use axum::{
    Router,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
    routing::get,
};

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// Only this origin: no inline script, no external resource.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The page's routes.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/page/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/page/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
}

/// `body` as `content_type`, revalidated on each load (a new binary may serve new files).
fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}
