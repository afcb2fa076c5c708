//! The dead-letter console of the API, over the bus's [`DeadLetters`] port (no adapter
//! code here: the in-memory bus and NATS answer alike).
//!
//! | route | answer |
//! |---|---|
//! | `GET /dead-letters?limit=N` | 200 `{"count", "deadLetters": [...]}`, oldest first, at most N (default [`DEFAULT_LIMIT`], 1 to [`MAX_LIMIT`]; another value is a 400) |
//! | `POST /dead-letters/{id}/replay` | 202 `{"replayed": id, "group"}`: the message is back with its group only; 404 for an unknown id |
//!
//! Both answer 503 when the bus cannot, and 404 on a service without dead letters. They
//! show every customer's messages: behind authentication, a customer-scoped token gets
//! 403 ([`super::auth::CROSS_CUSTOMER_PREFIXES`]). [`role_router`] serves them on the
//! `payments` and `stock` processes, limited to their own groups ([`GroupDeadLetters`]).

use std::sync::Arc;

use async_trait::async_trait;
use axum::{
    Json, Router,
    extract::{FromRef, Path, State},
    http::StatusCode,
    middleware,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, SecondsFormat, Utc};
use messaging::{DeadLetterError, DeadLetterRecord, DeadLetters, Envelope, Replayed};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    AppState, Tokens,
    extract::QueryParams,
    openapi::PROBLEM,
    problem::{Problem, ProblemType},
};

/// How many dead letters `GET /dead-letters` lists without `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` accepted.
pub const MAX_LIMIT: usize = 1000;

/// What the handlers need: the port, `None` on a service that keeps no dead letters.
#[derive(Clone)]
pub struct DeadLetterConsole(Option<Arc<dyn DeadLetters>>);

impl FromRef<AppState> for DeadLetterConsole {
    fn from_ref(state: &AppState) -> Self {
        Self(state.dead_letters.clone())
    }
}

impl DeadLetterConsole {
    fn port(&self) -> Result<&dyn DeadLetters, Problem> {
        self.0.as_deref().ok_or_else(|| {
            Problem::new(ProblemType::NotFound, "this service keeps no dead letters")
        })
    }
}

/// The query of `GET /dead-letters`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// How many to list, 1 to 1000 (default 100).
    limit: Option<usize>,
}

/// The body of `GET /dead-letters`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLettersView {
    /// How many dead letters there are in all (not only those listed).
    pub count: u64,
    /// The oldest ones, oldest first.
    pub dead_letters: Vec<DeadLetterView>,
}

/// One dead letter on the wire.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterView {
    /// Opaque; what `POST /dead-letters/{id}/replay` takes.
    pub id: String,
    /// The consumer group that gave up.
    pub group: String,
    /// The message's topic.
    pub topic: String,
    /// The message's id.
    pub message_id: String,
    /// Delivery attempts made.
    pub attempts: u32,
    /// `permanent` (refused) or `exhausted` (retries ran out).
    #[schema(value_type = String, example = "permanent")]
    pub kind: &'static str,
    /// The handler's last reason.
    pub reason: String,
    /// When the first attempt failed (RFC 3339, UTC, milliseconds).
    pub first_failed_at: String,
    /// When the last attempt failed.
    pub last_failed_at: String,
    /// The message as it travelled (the envelope of the wire contract).
    #[schema(value_type = Object)]
    pub envelope: Envelope,
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl From<DeadLetterRecord> for DeadLetterView {
    fn from(record: DeadLetterRecord) -> Self {
        Self {
            id: record.id,
            group: record.group,
            topic: record.topic,
            message_id: record.message_id.to_string(),
            attempts: record.attempts,
            kind: record.kind.as_str(),
            reason: record.reason,
            first_failed_at: timestamp(record.first_failed_at),
            last_failed_at: timestamp(record.last_failed_at),
            envelope: record.envelope,
        }
    }
}

/// The body of a 202 to `POST /dead-letters/{id}/replay`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayedView {
    /// The id of the record replayed (now gone from the list).
    pub replayed: String,
    /// The group the message went back to.
    pub group: String,
}

/// A port failure as a problem: 404 for an unknown id, else 503 (logged).
fn problem(error: DeadLetterError) -> Problem {
    match error {
        DeadLetterError::NotFound(id) => {
            Problem::new(ProblemType::NotFound, format!("dead letter {id} not found"))
        }
        DeadLetterError::Bus(e) => Problem::unavailable("dead letters unavailable", &e),
    }
}

/// `GET /dead-letters?limit=N`.
#[utoipa::path(
    get,
    path = "/dead-letters",
    tag = "operations",
    summary = "Messages a consumer group gave up on, oldest first",
    params(ListQuery),
    responses(
        (status = 200, description = "The count and the oldest dead letters", body = DeadLettersView),
        (status = 400, description = "The limit is not between 1 and 1000", body = Problem, content_type = PROBLEM),
        (status = 403, description = "A customer-scoped token (dead letters show every customer)", body = Problem, content_type = PROBLEM),
        (status = 404, description = "This service keeps no dead letters", body = Problem, content_type = PROBLEM),
    )
)]
pub(super) async fn list(
    State(console): State<DeadLetterConsole>,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<DeadLettersView>, Problem> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Problem::new(
            ProblemType::BadRequest,
            format!("limit must be between 1 and {MAX_LIMIT}"),
        ));
    }
    let port = console.port()?;
    let count = port.count().await.map_err(problem)?;
    let records = port.list(limit).await.map_err(problem)?;
    Ok(Json(DeadLettersView {
        count,
        dead_letters: records.into_iter().map(DeadLetterView::from).collect(),
    }))
}

/// `POST /dead-letters/{id}/replay`.
#[utoipa::path(
    post,
    path = "/dead-letters/{id}/replay",
    tag = "operations",
    summary = "Send a dead letter back to its group",
    params(("id" = String, Path, description = "The dead letter's id, as listed")),
    responses(
        (status = 202, description = "Back with its group; gone from the list", body = ReplayedView),
        (status = 400, description = "The id is malformed", body = Problem, content_type = PROBLEM),
        (status = 403, description = "A customer-scoped token (dead letters show every customer)", body = Problem, content_type = PROBLEM),
        (status = 404, description = "No such dead letter, or this service keeps none", body = Problem, content_type = PROBLEM),
    )
)]
pub(super) async fn replay(
    State(console): State<DeadLetterConsole>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, Problem> {
    let Ok(Path(id)) = id else {
        return Err(Problem::new(
            ProblemType::BadRequest,
            "the dead-letter id in the path is malformed",
        ));
    };
    let port = console.port()?;
    let Replayed { id, group } = port.replay(&id).await.map_err(problem)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(ReplayedView {
            replayed: id,
            group,
        }),
    )
        .into_response())
}

/// The two routes alone, over `port`, behind `tokens` when given (the same rules as the
/// service's API: a token is needed, a customer-scoped one gets 403): what the
/// `payments` and `stock` processes serve next to their probes.
pub fn role_router(port: Arc<dyn DeadLetters>, tokens: Option<Tokens>) -> Router {
    let (router, _) = role_routes().split_for_parts();
    let mut router = router.with_state(DeadLetterConsole(Some(port)));
    if let Some(tokens) = tokens {
        router = router.layer(middleware::from_fn_with_state(
            Arc::new(tokens),
            super::auth::authenticate,
        ));
    }
    router
}

/// The two routes with their descriptions.
fn role_routes() -> OpenApiRouter<DeadLetterConsole> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(replay))
}

/// The path templates of [`role_router`] (for the request metrics' route label).
#[must_use]
pub fn role_paths() -> Vec<String> {
    role_routes()
        .into_openapi()
        .paths
        .paths
        .into_keys()
        .collect()
}

/// The dead letters of some groups only (a process's own), over the whole port.
/// Listing and counting read every record, so meant for the bounded lists of one bus.
pub struct GroupDeadLetters {
    port: Arc<dyn DeadLetters>,
    groups: Vec<String>,
}

impl GroupDeadLetters {
    /// `port`'s dead letters of `groups`.
    #[must_use]
    pub fn new(port: Arc<dyn DeadLetters>, groups: &[&str]) -> Self {
        Self {
            port,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    fn mine(&self, record: &DeadLetterRecord) -> bool {
        self.groups.contains(&record.group)
    }

    async fn all(&self) -> Result<Vec<DeadLetterRecord>, DeadLetterError> {
        let mut records = self.port.list(usize::MAX).await?;
        records.retain(|r| self.mine(r));
        Ok(records)
    }
}

#[async_trait]
impl DeadLetters for GroupDeadLetters {
    async fn list(&self, limit: usize) -> Result<Vec<DeadLetterRecord>, DeadLetterError> {
        let mut records = self.all().await?;
        records.truncate(limit);
        Ok(records)
    }

    async fn get(&self, id: &str) -> Result<Option<DeadLetterRecord>, DeadLetterError> {
        Ok(self.port.get(id).await?.filter(|r| self.mine(r)))
    }

    async fn count(&self) -> Result<u64, DeadLetterError> {
        Ok(self.all().await?.len() as u64)
    }

    async fn replay(&self, id: &str) -> Result<Replayed, DeadLetterError> {
        // Another group's letter is unknown here, exactly like a missing one.
        if self.get(id).await?.is_none() {
            return Err(DeadLetterError::NotFound(id.to_owned()));
        }
        self.port.replay(id).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use messaging::{InMemoryBus, MessageBus, MessageHandler, Subscription};

    use super::*;

    struct Refuses;

    #[async_trait]
    impl MessageHandler for Refuses {
        async fn handle(&self, _: &Envelope) -> Result<(), messaging::HandlerError> {
            Err(messaging::HandlerError::permanent("no"))
        }
    }

    #[tokio::test]
    async fn a_group_view_shows_and_replays_only_its_groups_letters() {
        let bus = InMemoryBus::default();
        let mut handles = Vec::new();
        for group in ["mine", "theirs"] {
            let subscription = Subscription::new(group).topic("t");
            handles.push(
                bus.subscribe(subscription, Arc::new(Refuses))
                    .await
                    .unwrap(),
            );
        }
        let envelope = Envelope::new(uuid::Uuid::now_v7(), "t", Utc::now(), "c", None, &1);
        bus.publish(envelope.unwrap()).await.unwrap();
        assert!(bus.wait_idle(std::time::Duration::from_secs(5)).await);
        let all = bus.list(10).await.unwrap();
        assert_eq!(all.len(), 2);
        let theirs = all.iter().find(|r| r.group == "theirs").unwrap();

        let view = GroupDeadLetters::new(Arc::new(bus.clone()), &["mine"]);
        let listed = view.list(10).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].group, "mine");
        assert_eq!(view.count().await.unwrap(), 1);
        assert!(view.get(&theirs.id).await.unwrap().is_none());
        assert!(matches!(
            view.replay(&theirs.id).await,
            Err(DeadLetterError::NotFound(_))
        ));
        assert_eq!(bus.count().await.unwrap(), 2, "their letter was replayed");
        let replayed = view.replay(&listed[0].id).await.unwrap();
        assert_eq!(replayed.group, "mine");
    }

    #[tokio::test]
    async fn a_roles_routes_need_a_token_and_refuse_a_customer_token() {
        use axum::{body::Body, http::Request};
        use tower::ServiceExt as _;

        let tokens = Tokens::parse("admin-token\nalice-token c-1\n").unwrap();
        let router = role_router(Arc::new(InMemoryBus::default()), Some(tokens));
        let status = |token: Option<&'static str>| {
            let router = router.clone();
            async move {
                let mut request = Request::builder().uri("/dead-letters");
                if let Some(token) = token {
                    request = request.header("authorization", format!("Bearer {token}"));
                }
                let request = request.body(Body::empty()).unwrap();
                router.oneshot(request).await.unwrap().status()
            }
        };
        assert_eq!(status(None).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status(Some("alice-token")).await, StatusCode::FORBIDDEN);
        assert_eq!(status(Some("admin-token")).await, StatusCode::OK);
    }
}
