//! Typed helpers over the port, so call sites never touch raw JSON.

use std::{borrow::Cow, future::Future, marker::PhantomData, sync::Arc};

use async_trait::async_trait;
use chrono::Utc;
use serde::{Serialize, de::DeserializeOwned};
use uuid::Uuid;

use crate::{BusError, Envelope, HandlerError, MessageBus, MessageHandler, MessageId};

/// Typed publishing on any bus.
#[async_trait]
pub trait MessageBusExt {
    /// Wraps `payload` in a new envelope (fresh message id, now) and publishes it.
    /// Returns the message id.
    ///
    /// # Errors
    /// [`BusError::Encode`] or the bus's own error.
    async fn publish_json<T: Serialize + Sync + ?Sized>(
        &self,
        topic: &'static str,
        correlation_id: &str,
        causation_id: Option<MessageId>,
        payload: &T,
    ) -> Result<MessageId, BusError>;
}

#[async_trait]
impl<B: MessageBus + ?Sized> MessageBusExt for B {
    async fn publish_json<T: Serialize + Sync + ?Sized>(
        &self,
        topic: &'static str,
        correlation_id: &str,
        causation_id: Option<MessageId>,
        payload: &T,
    ) -> Result<MessageId, BusError> {
        // Time-ordered (v7): the inboxes that record it index it at their end.
        let id = Uuid::now_v7();
        let envelope = Envelope::new(
            id,
            Cow::Borrowed(topic),
            Utc::now(),
            correlation_id,
            causation_id,
            payload,
        )?;
        self.publish(envelope).await?;
        Ok(id)
    }
}

/// A handler that decodes the payload as `T` before calling `f`. A payload that does
/// not decode is a permanent error (dead letter), never a panic.
pub struct TypedHandler<T, F> {
    f: F,
    _payload: PhantomData<fn() -> T>,
}

/// Builds a [`TypedHandler`] from an async closure `(envelope, payload) -> Result`.
pub fn typed_handler<T, F, Fut>(f: F) -> Arc<dyn MessageHandler>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(Envelope, T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    Arc::new(TypedHandler {
        f,
        _payload: PhantomData,
    })
}

#[async_trait]
impl<T, F, Fut> MessageHandler for TypedHandler<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(Envelope, T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        let payload = envelope.decode::<T>()?;
        (self.f)(envelope.clone(), payload).await
    }
}
