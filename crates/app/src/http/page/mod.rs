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
//! These routes need no token (they are among [`super::auth::OPEN_PATHS`]: they hold no
//! data; the page asks for a token when the API wants one and keeps it in the tab's
//! session storage). A Content-Security-Policy keeps the page to its own origin.

use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// Only this origin: no inline script, no external resource.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// `GET /`: the page.
#[utoipa::path(
    get,
    path = "/",
    tag = "live",
    summary = "The live flow page",
    responses((status = 200, description = "The page", body = String, content_type = "text/html"))
)]
pub(super) async fn index() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

/// `GET /page/app.js`: the page's script.
#[utoipa::path(
    get,
    path = "/page/app.js",
    tag = "live",
    summary = "The live page's script",
    responses((status = 200, description = "The script", body = String, content_type = "text/javascript"))
)]
pub(super) async fn script() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

/// `GET /page/app.css`: the page's style.
#[utoipa::path(
    get,
    path = "/page/app.css",
    tag = "live",
    summary = "The live page's style",
    responses((status = 200, description = "The style", body = String, content_type = "text/css"))
)]
pub(super) async fn style() -> Response {
    asset(APP_CSS, "text/css; charset=utf-8")
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
