//! Trace context in messages (DESIGN §5): the W3C `traceparent` an [`Envelope`] carries,
//! so the hops of one order (HTTP request, relay, Payments, Orders, Stock) form one trace.
//!
//! This crate knows no tracing backend. The process's composition root installs, once,
//! the function that reads the `traceparent` of the current span
//! ([`set_current_traceparent`]); [`Envelope::new`] (and so [`Envelope::reply`]) stamps
//! every message it creates with it. Without one (the default, and with telemetry off)
//! messages carry no trace context and creating them costs nothing more.
//!
//! [`Envelope`]: crate::Envelope
//! [`Envelope::new`]: crate::Envelope::new
//! [`Envelope::reply`]: crate::Envelope::reply

use std::sync::OnceLock;

/// Reads the W3C `traceparent` of the span the caller runs in, if any.
pub type TraceparentSource = fn() -> Option<String>;

static CURRENT: OnceLock<TraceparentSource> = OnceLock::new();

/// Installs the process-wide source of the current `traceparent`. Only the first call
/// counts; returns whether this one did.
pub fn set_current_traceparent(source: TraceparentSource) -> bool {
    CURRENT.set(source).is_ok()
}

/// The `traceparent` of the current span, from the installed source; `None` without one.
#[must_use]
pub fn current_traceparent() -> Option<String> {
    CURRENT.get().and_then(|source| source())
}
