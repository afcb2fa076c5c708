//! The dead-letter stream: a message a group gives up on is published there, body
//! unchanged, with the group, the attempts and the reason in headers, then terminated
//! on its own stream. [`read_all`] turns the stream back into [`DeadLetter`]s.

use std::sync::atomic::Ordering;

use async_nats::{
    HeaderMap,
    jetstream::{self, AckKind, context::Publish},
};
use chrono::{DateTime, Utc};
use messaging::{BusError, DeadLetter, Envelope, HandlerError};

use crate::bus::{Inner, reason};

/// Header: the consumer group that gave up.
pub const GROUP_HEADER: &str = "Dead-Letter-Group";
/// Header: delivery attempts made, as a decimal number.
pub const ATTEMPTS_HEADER: &str = "Dead-Letter-Attempts";
/// Header: the handler's reason, on one line.
pub const REASON_HEADER: &str = "Dead-Letter-Reason";
/// Header: `permanent` (refused) or `retryable` (attempts exhausted).
pub const KIND_HEADER: &str = "Dead-Letter-Kind";
/// Header: the subject the message was consumed from.
pub const SUBJECT_HEADER: &str = "Dead-Letter-Subject";

/// `text` on one line (a header value holds no line breaks).
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Publishes `message` to `group`'s dead-letter subject and terminates it. On failure
/// the message is left alone: the caller naks it, so it comes back and is tried again.
pub(crate) async fn send(
    inner: &Inner,
    group: &str,
    message: &jetstream::Message,
    envelope: Option<&Envelope>,
    attempts: u32,
    error: &HandlerError,
) -> Result<(), BusError> {
    let (kind, why) = reason(error);
    let mut headers = HeaderMap::new();
    headers.insert(GROUP_HEADER, one_line(group));
    headers.insert(ATTEMPTS_HEADER, attempts.to_string());
    headers.insert(REASON_HEADER, one_line(why));
    headers.insert(KIND_HEADER, kind);
    headers.insert(SUBJECT_HEADER, message.subject.to_string());
    let mut publish = Publish::build()
        .payload(message.payload.clone())
        .headers(headers);
    if let Some(envelope) = envelope {
        publish = publish.message_id(format!("{}:{group}", envelope.message_id));
    }
    let subject = inner.names.dead_letter_subject(group);
    inner
        .js
        .send_publish(subject.clone(), publish)
        .await
        .map_err(|e| BusError::Transport(format!("dead letter to {subject}: {e}")))?
        .await
        .map_err(|e| BusError::Transport(format!("dead letter to {subject} not confirmed: {e}")))?;
    inner.dead_lettered.fetch_add(1, Ordering::SeqCst);
    tracing::error!(
        subscriber = group, subject = %message.subject,
        message_id = ?envelope.map(|e| e.message_id),
        correlation_id = ?envelope.map(|e| &e.correlation_id),
        attempts, error = %error, "message dead-lettered"
    );
    if let Err(e) = message.ack_with(AckKind::Term).await {
        // Comes back after the ack wait and is dead-lettered again, de-duplicated.
        tracing::warn!(subscriber = group, error = %e, "terminating a dead-lettered message failed");
    }
    Ok(())
}

/// Every dead letter on the server for this prefix, oldest first.
pub(crate) async fn read_all(inner: &Inner) -> Result<Vec<DeadLetter>, BusError> {
    let name = inner.names.dead_letter_stream();
    let fail = |e: &dyn std::fmt::Display| BusError::Transport(format!("read {name}: {e}"));
    let stream = inner.js.get_stream(&name).await.map_err(|e| fail(&e))?;
    let state = stream.get_info().await.map_err(|e| fail(&e))?.state;
    let mut letters = Vec::new();
    if state.messages == 0 {
        return Ok(letters);
    }
    for sequence in state.first_sequence..=state.last_sequence {
        let raw = match stream.get_raw_message(sequence).await {
            Ok(raw) => raw,
            Err(e) if e.to_string().contains("not found") => continue,
            Err(e) => return Err(fail(&e)),
        };
        let header = |name: &str| {
            raw.headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        let envelope = match Envelope::from_json(&raw.payload) {
            Ok(envelope) => envelope,
            Err(e) => {
                tracing::warn!(stream = %name, sequence, error = %e, "dead letter is not an envelope; skipped");
                continue;
            }
        };
        let why = header(REASON_HEADER);
        letters.push(DeadLetter {
            subscriber: header(GROUP_HEADER),
            envelope,
            error: if header(KIND_HEADER) == "retryable" {
                HandlerError::Retryable(why)
            } else {
                HandlerError::Permanent(why)
            },
            attempts: header(ATTEMPTS_HEADER).parse().unwrap_or(0),
            at: i64::try_from(raw.time.unix_timestamp_nanos())
                .map(DateTime::<Utc>::from_timestamp_nanos)
                .unwrap_or_default(),
        });
    }
    Ok(letters)
}
