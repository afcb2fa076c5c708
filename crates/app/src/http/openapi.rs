//! The OpenAPI 3.1 document of the API, generated from the code: every handler carries a
//! `#[utoipa::path]` attribute (its path, parameters, request body and the answers it can
//! give), the views and [`Problem`] derive their schemas, and [`super::router`] registers
//! the handlers through `utoipa_axum`'s router, so a route cannot be served without
//! being described. `GET /openapi.json` answers with the document.
//!
//! What the middleware adds to every route is added here, after the routes are
//! collected ([`cross_cutting`]): `401` with `WWW-Authenticate: Bearer` and the bearer
//! security requirement on every route outside [`auth::OPEN_PATHS`]; `429` with
//! `Retry-After` on every route outside [`limits::UNLIMITED_PATHS`]; `503` (a dependency
//! down, or the request timeout) and `500` everywhere.
//!
//! The request body of `POST /orders` is described by [`PlaceOrderBody`], a mirror of
//! [`orders_app::PlaceOrder`] (the application layer does not depend on the documentation
//! crate); a test proves the two accept the same documents.

use std::sync::OnceLock;

use serde::Serialize;
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::{
        self, HttpMethod, RefOr,
        header::HeaderBuilder,
        path::{Operation, PathItem},
        response::{Response, ResponseBuilder},
        security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme},
    },
};

use super::{auth, limits, problem::PROBLEM_JSON};

/// The media type of every problem answer, for the `responses(...)` of the handlers.
pub(super) const PROBLEM: &str = PROBLEM_JSON;

/// The document's fixed parts; the paths come from the router ([`super::documented_routes`]).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Orders",
        description = "The Orders bounded context: checkout, cancellation and the order's \
                       message history. Every error is an RFC 9457 problem document \
                       (`application/problem+json`) whose `type` is `urn:orders:problem:<slug>`.",
        license(name = "MIT OR Apache-2.0")
    ),
    tags(
        (name = "orders", description = "Place, read and cancel orders"),
        (name = "operations", description = "Health, readiness, counts and this document"),
        (name = "live", description = "The live flow page and what it reads: the event stream and the flow figures")
    ),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

/// Adds the `bearer` security scheme (tokens of `--auth-tokens-file`).
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token of `--auth-tokens-file`; required on every route but \
                         /healthz, /readyz, /metrics, /stats and /openapi.json when the \
                         service runs with that flag",
                    ))
                    .build(),
            ),
        );
    }
}

/// The fixed parts of the document, before the routes add their paths.
pub(super) fn base() -> openapi::OpenApi {
    ApiDoc::openapi()
}

/// The whole document: [`base`], the documented routes, and the answers of the middleware.
/// Built once.
pub fn document() -> &'static openapi::OpenApi {
    static DOCUMENT: OnceLock<openapi::OpenApi> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let (_, mut doc) = super::documented_routes().split_for_parts();
        cross_cutting(&mut doc);
        doc
    })
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json"))
)]
pub(super) async fn openapi_json() -> axum::Json<&'static openapi::OpenApi> {
    axum::Json(document())
}

/// Adds to every operation what the middleware can answer (see the module doc).
fn cross_cutting(doc: &mut openapi::OpenApi) {
    for (path, item) in &mut doc.paths.paths {
        let open = auth::OPEN_PATHS.contains(&path.as_str()) || path == "/openapi.json";
        let unlimited = limits::UNLIMITED_PATHS.contains(&path.as_str());
        for operation in operations(item) {
            if !open {
                add(
                    operation,
                    401,
                    problem_response(
                        "No bearer token, or an unknown one (only when the service runs with \
                         --auth-tokens-file)",
                    )
                    .header(
                        "WWW-Authenticate",
                        HeaderBuilder::new()
                            .description(Some("`Bearer`"))
                            .schema(
                                openapi::ObjectBuilder::new()
                                    .schema_type(openapi::schema::Type::String),
                            )
                            .build(),
                    )
                    .build(),
                );
                operation
                    .security
                    .get_or_insert_with(Vec::new)
                    .push(SecurityRequirement::new::<_, _, &str>("bearer", []));
            }
            if !unlimited {
                add(
                    operation,
                    429,
                    problem_response(
                        "The client is over its rate limit (only when the service runs with \
                         --rate-limit-per-sec)",
                    )
                    .header(
                        "Retry-After",
                        HeaderBuilder::new()
                            .description(Some("Whole seconds until a request fits"))
                            .schema(
                                openapi::ObjectBuilder::new()
                                    .schema_type(openapi::schema::Type::Integer),
                            )
                            .build(),
                    )
                    .build(),
                );
            }
            add(
                operation,
                500,
                problem_response("A failure the client cannot fix (logged)").build(),
            );
            add(
                operation,
                503,
                problem_response("A dependency is unavailable, or the request took too long")
                    .build(),
            );
        }
    }
}

/// Every operation of a path item.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.options.as_mut(),
        item.head.as_mut(),
        item.patch.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// Adds `response` under `status` unless the route documents that status itself.
fn add(operation: &mut Operation, status: u16, response: Response) {
    operation
        .responses
        .responses
        .entry(status.to_string())
        .or_insert(RefOr::T(response));
}

/// A problem+json response with `description`.
fn problem_response(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        PROBLEM,
        openapi::ContentBuilder::new()
            .schema(Some(RefOr::Ref(openapi::Ref::from_schema_name("Problem"))))
            .build(),
    )
}

/// The statuses documented for `method path`, for tests.
#[must_use]
pub fn documented_statuses(path: &str, method: HttpMethod) -> Option<Vec<u16>> {
    let item = document().paths.paths.get(path)?;
    let operation = match method {
        HttpMethod::Get => item.get.as_ref(),
        HttpMethod::Post => item.post.as_ref(),
        HttpMethod::Put => item.put.as_ref(),
        HttpMethod::Delete => item.delete.as_ref(),
        HttpMethod::Patch => item.patch.as_ref(),
        HttpMethod::Head => item.head.as_ref(),
        HttpMethod::Options => item.options.as_ref(),
        HttpMethod::Trace => item.trace.as_ref(),
    }?;
    Some(
        operation
            .responses
            .responses
            .keys()
            .filter_map(|status| status.parse().ok())
            .collect(),
    )
}

/// The status of an order, as the API names it.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub enum StatusName {
    /// Placed; waiting for Payments.
    AwaitingPayment,
    /// Payments approved; waiting for Stock.
    Paid,
    /// Stock reserved: the flow's happy end.
    StockReserved,
    /// Cancelled by the customer, by a refusal of Payments or Stock, or by the payment
    /// deadline.
    Cancelled,
}

/// Who sent a message of an order's history.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DirectionName {
    /// Published by Orders.
    Sent,
    /// Handled by Orders.
    Received,
}

/// How Orders handled a received message.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutcomeName {
    /// It changed the order.
    Applied,
    /// It had been handled before; nothing changed.
    Duplicate,
    /// The order's state does not allow it; nothing changed (`reason` says why).
    Rejected,
}

/// The body of `POST /orders` (a checkout). Text fields are at most
/// [`limits::MAX_FIELD_CHARS`] characters and an order has at most [`limits::MAX_ITEMS_PER_ORDER`]
/// items (422 naming the field otherwise).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "customerId": "customer-42",
    "currency": "EUR",
    "items": [{ "productId": "sku-1", "quantity": 2, "price": 29.9 }],
    "shippingAddress": {
        "street": "Hauptstrasse 1", "city": "Berlin", "postalCode": "10115", "country": "DE"
    }
}))]
pub struct PlaceOrderBody {
    /// Who orders (a customer-scoped token may only name its own customer: 403).
    #[schema(min_length = 1, max_length = 200)]
    pub customer_id: String,
    /// ISO 4217 code; every item is priced in it.
    #[schema(min_length = 3, max_length = 3, example = "EUR")]
    pub currency: String,
    /// The lines: 1 to 100.
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<ItemBody>,
    /// Where it goes.
    pub shipping_address: AddressBody,
}

/// One line of a [`PlaceOrderBody`].
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ItemBody {
    /// The product (SKU).
    #[schema(min_length = 1, max_length = 200)]
    pub product_id: String,
    /// Units, at least 1.
    #[schema(minimum = 1)]
    pub quantity: i64,
    /// Unit price, an exact decimal number above zero, in the order's currency.
    #[schema(value_type = f64, example = 29.9)]
    pub price: rust_decimal::Decimal,
}

/// The address of a [`PlaceOrderBody`].
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressBody {
    /// Street and number.
    #[schema(min_length = 1, max_length = 200)]
    pub street: String,
    /// City.
    #[schema(min_length = 1, max_length = 200)]
    pub city: String,
    /// Postal code.
    #[schema(min_length = 1, max_length = 200)]
    pub postal_code: String,
    /// Country.
    #[schema(min_length = 1, max_length = 200)]
    pub country: String,
}

/// The body of `POST /orders/{id}/cancel`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({ "reason": "changed my mind" }))]
pub struct CancelBodyDoc {
    /// Why the customer cancels; at most 500 characters.
    #[schema(min_length = 1, max_length = 500)]
    pub reason: String,
}

/// The required properties of an object schema, for the "does the mirror agree" test.
#[cfg(test)]
fn required_of(schema: &RefOr<openapi::schema::Schema>) -> Vec<String> {
    match schema {
        RefOr::T(openapi::schema::Schema::Object(object)) => object.required.clone(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use orders_app::PlaceOrder;

    use super::super::limits::{MAX_FIELD_CHARS, MAX_ITEMS_PER_ORDER};
    use serde_json::Value;
    use utoipa::PartialSchema as _;

    use super::*;

    /// `PlaceOrderBody`'s example, which the document shows.
    fn example() -> Value {
        serde_json::to_value(document())
            .unwrap()
            .pointer("/components/schemas/PlaceOrderBody/example")
            .cloned()
            .expect("PlaceOrderBody has an example")
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_route() {
        let doc = serde_json::to_value(document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for path in [
            "/orders",
            "/orders/{id}",
            "/orders/{id}/cancel",
            "/orders/{id}/messages",
            "/healthz",
            "/readyz",
            "/stats",
            "/openapi.json",
        ] {
            assert!(paths.contains(&path), "{path} missing from {paths:?}");
        }
    }

    #[test]
    fn the_documented_checkout_body_is_what_the_use_case_reads() {
        // The example, built from the documented field names, is a valid checkout…
        let example = example();
        let parsed: PlaceOrder = serde_json::from_value(example.clone())
            .expect("the documented example deserializes into PlaceOrder");
        assert_eq!(parsed.items.len(), 1);

        // …and every documented required field is required by the use case too (a
        // renamed field fails here, because the documented name would then be missing).
        let own = PlaceOrderBody::schema();
        let required = required_of(&own);
        assert_eq!(
            required,
            ["customerId", "currency", "items", "shippingAddress"],
            "documented as required"
        );
        for field in &required {
            let mut without = example.clone();
            without.as_object_mut().unwrap().remove(field);
            assert!(
                serde_json::from_value::<PlaceOrder>(without).is_err(),
                "PlaceOrder accepts a checkout without {field}, the document says it is required"
            );
        }
        for (nested, schema) in [
            ("items/0", ItemBody::schema()),
            ("shippingAddress", AddressBody::schema()),
        ] {
            for field in required_of(&schema) {
                let mut without = example.clone();
                without
                    .pointer_mut(&format!("/{nested}"))
                    .and_then(Value::as_object_mut)
                    .unwrap()
                    .remove(&field);
                assert!(
                    serde_json::from_value::<PlaceOrder>(without).is_err(),
                    "PlaceOrder accepts {nested} without {field}, the document says it is required"
                );
            }
        }
    }

    #[test]
    fn the_documented_limits_are_the_enforced_ones() {
        let doc = serde_json::to_value(document()).unwrap();
        let body = &doc["components"]["schemas"]["PlaceOrderBody"]["properties"];
        assert_eq!(body["items"]["maxItems"], MAX_ITEMS_PER_ORDER);
        assert_eq!(body["customerId"]["maxLength"], MAX_FIELD_CHARS);
        let reason = &doc["components"]["schemas"]["CancelBodyDoc"]["properties"]["reason"];
        assert_eq!(reason["maxLength"], limits::MAX_REASON_CHARS);
    }

    #[test]
    fn protected_routes_document_401_and_the_bearer_requirement_open_ones_do_not() {
        let statuses = documented_statuses("/orders", HttpMethod::Post).unwrap();
        for status in [401, 429, 500, 503] {
            assert!(statuses.contains(&status), "POST /orders lacks {status}");
        }
        let health = documented_statuses("/healthz", HttpMethod::Get).unwrap();
        assert!(
            !health.contains(&401) && !health.contains(&429),
            "{health:?}"
        );
        let doc = serde_json::to_value(document()).unwrap();
        assert!(doc["paths"]["/orders"]["post"]["security"].is_array());
        assert!(doc["paths"]["/healthz"]["get"]["security"].is_null());
    }

    #[test]
    fn every_problem_answer_refers_to_the_problem_schema() {
        let doc = serde_json::to_value(document()).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    if status.starts_with('4') || status.starts_with('5') {
                        let schema = &response["content"][PROBLEM]["schema"]["$ref"];
                        assert_eq!(
                            schema, "#/components/schemas/Problem",
                            "{method} {path} {status} is not a problem document"
                        );
                    }
                }
            }
        }
        assert!(doc["components"]["schemas"]["Problem"].is_object());
    }
}
