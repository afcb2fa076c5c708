//! The envelope: metadata around every integration message (DESIGN §5).
//!
//! ```json
//! { "messageId": "uuid", "topic": "order.placed", "timestamp": "2026-01-05T10:00:00.000Z",
//!   "correlationId": "<orderId>", "causationId": null, "payload": { },
//!   "traceparent": "00-<trace id>-<parent span id>-01" }
//! ```
//!
//! `traceparent` (W3C Trace Context) is optional: written only when the producer ran in
//! a traced span ([`crate::trace`]), and a message without it parses as before.

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de::DeserializeOwned};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::HandlerError;

/// Identifies one message. Re-publishing the same message keeps its id, so consumers'
/// inboxes (and NATS' `Nats-Msg-Id` de-duplication) can drop the repeat.
pub type MessageId = Uuid;

/// One integration message with its metadata. The payload is kept as JSON text: it is
/// encoded once by the producer and decoded once by each consumer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Unique id of this message.
    pub message_id: MessageId,
    /// The topic, e.g. `order.placed`.
    pub topic: Cow<'static, str>,
    /// When the message was created, RFC 3339 UTC with milliseconds.
    #[serde(serialize_with = "ser_timestamp", deserialize_with = "de_timestamp")]
    pub timestamp: DateTime<Utc>,
    /// Groups all messages of one business flow; the order id. Ordering is per value.
    pub correlation_id: String,
    /// The message that caused this one, or `None` for a message caused by a command.
    pub causation_id: Option<MessageId>,
    /// The payload as JSON.
    pub payload: Box<RawValue>,
    /// The W3C Trace Context `traceparent` of the span that produced this message, so
    /// its consumer's span joins the same trace; `None` (and absent on the wire) when
    /// the producer was not traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl Envelope {
    /// Wraps `payload`, encoded as JSON. The trace context is the current span's
    /// ([`crate::trace::current_traceparent`]).
    ///
    /// # Errors
    /// The serialization error if `payload` cannot be encoded.
    pub fn new<T: Serialize + ?Sized>(
        message_id: MessageId,
        topic: impl Into<Cow<'static, str>>,
        timestamp: DateTime<Utc>,
        correlation_id: impl Into<String>,
        causation_id: Option<MessageId>,
        payload: &T,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            message_id,
            topic: topic.into(),
            timestamp,
            correlation_id: correlation_id.into(),
            causation_id,
            payload: serde_json::value::to_raw_value(payload)?,
            traceparent: crate::trace::current_traceparent(),
        })
    }

    /// A reaction to this message: same correlation id, causation id = this message id.
    ///
    /// # Errors
    /// The serialization error if `payload` cannot be encoded.
    pub fn reply<T: Serialize + ?Sized>(
        &self,
        topic: impl Into<Cow<'static, str>>,
        timestamp: DateTime<Utc>,
        payload: &T,
    ) -> Result<Self, serde_json::Error> {
        Self::new(
            Uuid::now_v7(),
            topic,
            timestamp,
            self.correlation_id.clone(),
            Some(self.message_id),
            payload,
        )
    }

    /// Decodes the payload.
    ///
    /// # Errors
    /// A permanent [`HandlerError`]: a payload that does not decode now never will.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_str(self.payload.get()).map_err(|e| {
            HandlerError::permanent(format!("cannot decode {} payload: {e}", self.topic))
        })
    }

    /// The whole envelope as JSON bytes (the body on a network bus).
    ///
    /// # Errors
    /// The serialization error (cannot happen for a well-formed envelope).
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Parses an envelope from JSON bytes.
    ///
    /// # Errors
    /// The parse error when the bytes are not an envelope.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

fn ser_timestamp<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn de_timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let text = Cow::<str>::deserialize(d)?;
    DateTime::parse_from_rfc3339(&text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn envelope_round_trips_and_ignores_unknown_fields() {
        let at = Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap();
        let env = Envelope::new(
            Uuid::nil(),
            "order.placed",
            at,
            "o-1",
            None,
            &serde_json::json!({"a": 1}),
        )
        .unwrap();
        let json = String::from_utf8(env.to_json().unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"messageId":"00000000-0000-0000-0000-000000000000","topic":"order.placed","timestamp":"2026-01-05T10:00:00.000Z","correlationId":"o-1","causationId":null,"payload":{"a":1}}"#
        );
        let with_extra = json.replacen('{', r#"{"extra":true,"#, 1);
        let back = Envelope::from_json(with_extra.as_bytes()).unwrap();
        assert_eq!(back.timestamp, at);
        assert_eq!(
            back.traceparent, None,
            "an old message has no trace context"
        );
        assert_eq!(back.payload.get(), r#"{"a":1}"#);
    }

    #[test]
    fn a_traceparent_is_written_when_present_and_read_back() {
        let at = Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap();
        let mut env = Envelope::new(Uuid::nil(), "a", at, "o-1", None, &1).unwrap();
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        env.traceparent = Some(parent.to_owned());
        let json = String::from_utf8(env.to_json().unwrap()).unwrap();
        assert!(json.ends_with(&format!(r#""payload":1,"traceparent":"{parent}"}}"#)));
        let back = Envelope::from_json(json.as_bytes()).unwrap();
        assert_eq!(back.traceparent.as_deref(), Some(parent));
    }

    #[test]
    fn reply_copies_correlation_and_sets_causation() {
        let at = Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap();
        let first = Envelope::new(Uuid::new_v4(), "a", at, "o-1", None, &1).unwrap();
        let second = first.reply("b", at, &2).unwrap();
        assert_eq!(second.correlation_id, "o-1");
        assert_eq!(second.causation_id, Some(first.message_id));
        assert_ne!(second.message_id, first.message_id);
    }

    #[test]
    fn a_payload_that_does_not_decode_is_a_permanent_error() {
        let env = Envelope::new(Uuid::nil(), "a", Utc::now(), "o", None, &"text").unwrap();
        let err = env.decode::<u32>().unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Permanent);
    }
}
