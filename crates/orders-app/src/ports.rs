//! Ports the application needs from storage. Adapters: `orders-store` (in-memory,
//! SQLite, PostgreSQL).

use async_trait::async_trait;
use messaging::{Envelope, MessageBus, MessageId};
use orders_domain::{Order, OrderId, Timestamp};
use tokio::sync::Notify;

use crate::StoreError;

/// How the Orders subscriber dealt with a message (kept in the inbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlingOutcome {
    /// The order changed.
    Applied,
    /// An idempotent repeat (same paymentId/reservationId): nothing changed.
    Duplicate,
    /// Refused (invalid transition, unknown order, mismatched amount), with why.
    Rejected(String),
}

impl HandlingOutcome {
    /// `applied`, `duplicate` or `rejected`.
    #[must_use]
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Duplicate => "duplicate",
            Self::Rejected(_) => "rejected",
        }
    }
}

/// The inbox record of a handled message, written in the same transaction as its effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxRecord {
    /// The consumer group that handled it.
    pub subscriber: String,
    /// The message.
    pub message_id: MessageId,
    /// Its topic.
    pub topic: String,
    /// The order it was about (may not exist, for a rejected message).
    pub order_id: OrderId,
    /// What happened.
    pub outcome: HandlingOutcome,
    /// When.
    pub handled_at: Timestamp,
}

/// One atomic change: all of it is stored, or none.
#[derive(Debug, Clone)]
pub struct Commit {
    /// The order to insert (version 0) or update (at its loaded version); `None` when
    /// only the inbox is written (a duplicate or a rejection).
    pub order: Option<Order>,
    /// Integration messages to publish after commit (the outbox), in order.
    pub outbox: Vec<Envelope>,
    /// The inbox record of the handled message, if the change was caused by one.
    pub inbox: Option<InboxRecord>,
    /// A client's idempotency key for a new order (checkout retries).
    pub idempotency_key: Option<String>,
}

impl Commit {
    /// A commit of only the inbox record of a handled message that changed nothing (a
    /// duplicate or a rejection).
    #[must_use]
    pub fn inbox_only(record: InboxRecord) -> Self {
        Self {
            order: None,
            outbox: vec![],
            inbox: Some(record),
            idempotency_key: None,
        }
    }
}

/// Whether a message was sent or received by the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Published by Orders (from the outbox).
    Sent,
    /// Received and handled by Orders (from the inbox).
    Received,
}

/// One line of an order's message history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    /// Sent or received.
    pub direction: Direction,
    /// The message.
    pub message_id: MessageId,
    /// Its topic.
    pub topic: String,
    /// For received messages, how they were handled; `None` for sent ones.
    pub outcome: Option<HandlingOutcome>,
    /// When it was committed.
    pub at: Timestamp,
}

/// What a retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Inbox records removed.
    pub inbox: u64,
    /// Sent outbox rows removed.
    pub outbox: u64,
}

/// Orders, their outbox and their inbox.
#[async_trait]
pub trait OrderStore: Send + Sync + 'static {
    /// Loads an order.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] or [`StoreError::Corrupt`].
    async fn load(&self, id: OrderId) -> Result<Option<Order>, StoreError>;

    /// Whether `subscriber` already handled `message_id`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn is_handled(&self, subscriber: &str, message_id: MessageId)
    -> Result<bool, StoreError>;

    /// The order bound to an idempotency key, if any.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn find_by_idempotency_key(&self, key: &str) -> Result<Option<OrderId>, StoreError>;

    /// Up to `limit` orders still AwaitingPayment whose payment deadline is at or before
    /// `now`, earliest deadline first. Orders without a deadline (stored before
    /// deadlines existed) are never due. Served by an index, so it stays cheap however
    /// many orders are stored.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`], or [`StoreError::Corrupt`] for an undecodable id.
    async fn due_for_payment(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<OrderId>, StoreError>;

    /// Stores `commit` atomically. Returns the order's new version (0 if no order).
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the order's stored version is not the loaded one
    /// (or it exists already, for a new order); [`StoreError::DuplicateMessage`] when the
    /// inbox already holds the message; [`StoreError::DuplicateIdempotencyKey`]; in every
    /// error case nothing was written.
    async fn commit(&self, commit: Commit) -> Result<u64, StoreError>;

    /// The order's message history (sent and received), in commit order.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn messages(&self, id: OrderId) -> Result<Vec<MessageRecord>, StoreError>;

    /// Removes inbox records and sent outbox rows older than `before`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn prune(&self, before: Timestamp) -> Result<PruneReport, StoreError>;

    /// The newest orders first (by when they were placed), at most `limit`; only
    /// `customer`'s when given. For the live page's list (`GET /orders?limit=N`).
    ///
    /// The SQL adapters find them by id: order ids are time-ordered to the millisecond
    /// ([`OrderId::time_ordered`]), so the primary key finds them without another index.
    /// Among orders placed within the same millisecond as the oldest one listed, the
    /// ones listed are not necessarily the latest of that millisecond.
    ///
    /// The store adapters implement it; the default, for test doubles, answers
    /// [`StoreError::Unavailable`]. A decorator must forward it, or the list behind it
    /// answers 503.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] or [`StoreError::Corrupt`].
    async fn recent_orders(
        &self,
        limit: usize,
        customer: Option<&str>,
    ) -> Result<Vec<Order>, StoreError> {
        let _ = (limit, customer);
        Err(StoreError::unavailable("this store cannot list orders"))
    }
}

/// What the outbox relay needs.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Publishes up to `limit` unsent messages to `bus` in commit order and marks each
    /// sent once the bus accepted it. Stops at the first failure: that message and the
    /// ones after it stay unsent for the next call. Returns how many were published.
    ///
    /// # Errors
    /// [`StoreError`] when the store fails; a bus failure is logged and ends the batch.
    async fn relay(&self, limit: usize, bus: &dyn MessageBus) -> Result<usize, StoreError>;

    /// Unsent messages right now.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn unsent(&self) -> Result<u64, StoreError>;

    /// Notified after every commit that added outbox rows (in this process).
    fn committed(&self) -> &Notify;

    /// Puts the latest message of every order still waiting on another context
    /// (AwaitingPayment: its `order.placed`; Paid: its `order.paid`) that last changed
    /// before `before` back into the outbox as unsent, so the relay publishes it again
    /// with the same message id. For a bus that loses what it held when the process dies
    /// (the in-memory bus) and as a saga timeout. Returns how many were requeued.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn requeue_stalled(&self, before: Timestamp) -> Result<u64, StoreError>;

    /// When the oldest unsent message was committed (its envelope's timestamp), `None`
    /// when nothing is unsent: the age the `outbox_oldest_unsent_age_seconds` gauge
    /// shows. The default answers `None` (an adapter that cannot tell cheaply).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn oldest_unsent(&self) -> Result<Option<Timestamp>, StoreError> {
        Ok(None)
    }
}
