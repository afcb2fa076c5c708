//! Limits that protect the service from one greedy or careless client.
//!
//! * A per-client request rate ([`RateLimiter`], off unless configured): a token bucket
//!   per peer IP address, refilled at `per_sec` requests a second up to `burst`. A request
//!   over it is a 429 problem with `Retry-After` (whole seconds until a request fits).
//!   `/healthz` and `/readyz` are never limited, so probes keep working under load.
//! * Request size limits on checkout and cancel ([`check_place_order`],
//!   [`check_cancel_reason`]): at most [`MAX_ITEMS_PER_ORDER`] items, text fields of at
//!   most [`MAX_FIELD_CHARS`] characters (the reason at most [`MAX_REASON_CHARS`]).
//!   A request over a limit is a 422 validation problem naming each field over it,
//!   answered before anything else of the request is looked at. The domain's own rules
//!   (ids at most 128 characters, a three-letter currency) still apply below these caps.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderValue, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use orders_app::PlaceOrder;
use parking_lot::Mutex;

use super::problem::{FieldError, Problem, ProblemType};

/// The most items one order may have.
pub const MAX_ITEMS_PER_ORDER: usize = 100;

/// The longest text field of a checkout (`customerId`, `currency`, `items[i].productId`,
/// `shippingAddress.*`), in characters.
pub const MAX_FIELD_CHARS: usize = 200;

/// The longest cancellation `reason`, in characters.
pub const MAX_REASON_CHARS: usize = 500;

/// The routes the rate limit never applies to.
pub const UNLIMITED_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// How many clients are tracked before idle ones (full buckets) are forgotten.
const PRUNE_ABOVE: usize = 10_000;

/// The rate limit of one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests a second, sustained.
    pub per_sec: u32,
    /// Requests at once after a quiet period (at least 1).
    pub burst: u32,
}

/// A token bucket per client IP address.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// A limiter allowing `limit` to every client.
    #[must_use]
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit: RateLimit {
                per_sec: limit.per_sec.max(1),
                burst: limit.burst.max(1),
            },
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The limit it applies.
    #[must_use]
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes one request of `client`'s allowance at `now`: `Ok` when it fits, else how
    /// long until one fits.
    ///
    /// # Errors
    /// The wait until the next request fits, when the client is over its limit.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(self.limit.per_sec);
        let burst = f64::from(self.limit.burst);
        let mut buckets = self.buckets.lock();
        if buckets.len() > PRUNE_ABOVE {
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refilled = now.saturating_duration_since(bucket.at).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refilled).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

/// The middleware: answers 429 with `Retry-After` to a client over its rate. The client
/// is the peer address of the connection (axum's [`ConnectInfo`]); requests without one
/// (a router driven without a socket) share one allowance.
pub(super) async fn rate_limit(
    State(limiter): State<Arc<RateLimiter>>,
    request: Request,
    next: Next,
) -> Response {
    if UNLIMITED_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
    match limiter.check(client, Instant::now()) {
        Ok(()) => next.run(request).await,
        Err(wait) => too_many_requests(wait),
    }
}

/// The 429 problem with `Retry-After` in whole seconds (at least 1).
fn too_many_requests(wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let mut response = Problem::new(
        ProblemType::TooManyRequests,
        format!("too many requests; retry in {seconds} s"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// `field` when `value` is longer than `max` characters.
fn too_long(errors: &mut Vec<FieldError>, field: impl Into<String>, value: &str, max: usize) {
    if value.chars().count() > max {
        errors.push(FieldError {
            field: field.into(),
            message: format!("must be at most {max} characters"),
        });
    }
}

/// The request limits of a checkout: item count and text field lengths.
///
/// # Errors
/// A 422 validation problem naming every field over its limit.
pub fn check_place_order(command: &PlaceOrder) -> Result<(), Problem> {
    let mut errors = Vec::new();
    too_long(
        &mut errors,
        "customerId",
        &command.customer_id,
        MAX_FIELD_CHARS,
    );
    too_long(&mut errors, "currency", &command.currency, MAX_FIELD_CHARS);
    if command.items.len() > MAX_ITEMS_PER_ORDER {
        errors.push(FieldError {
            field: "items".to_owned(),
            message: format!("must contain at most {MAX_ITEMS_PER_ORDER} items"),
        });
    } else {
        for (i, item) in command.items.iter().enumerate() {
            too_long(
                &mut errors,
                format!("items[{i}].productId"),
                &item.product_id,
                MAX_FIELD_CHARS,
            );
        }
    }
    let address = &command.shipping_address;
    for (name, value) in [
        ("street", &address.street),
        ("city", &address.city),
        ("postalCode", &address.postal_code),
        ("country", &address.country),
    ] {
        too_long(
            &mut errors,
            format!("shippingAddress.{name}"),
            value,
            MAX_FIELD_CHARS,
        );
    }
    over_limits(errors)
}

/// The request limit of a cancellation: the reason's length.
///
/// # Errors
/// A 422 validation problem naming `reason`.
pub fn check_cancel_reason(reason: &str) -> Result<(), Problem> {
    let mut errors = Vec::new();
    too_long(&mut errors, "reason", reason, MAX_REASON_CHARS);
    over_limits(errors)
}

fn over_limits(errors: Vec<FieldError>) -> Result<(), Problem> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Problem::validation(
            format!("{} field(s) over the request limits", errors.len()),
            errors,
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_client_gets_its_burst_then_waits_for_the_refill() {
        let limiter = RateLimiter::new(RateLimit {
            per_sec: 2,
            burst: 3,
        });
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check(client, start).is_ok());
        }
        let wait = limiter.check(client, start).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(limiter.check(other, start).is_ok(), "clients are separate");
        let later = start + Duration::from_millis(500);
        assert!(limiter.check(client, later).is_ok(), "one refilled");
        assert!(limiter.check(client, later).is_err());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let response = too_many_requests(Duration::from_millis(1200));
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        let response = too_many_requests(Duration::from_millis(10));
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}
