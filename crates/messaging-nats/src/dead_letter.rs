//! The dead-letter stream: a message a group gives up on is published there, body
//! unchanged, with the group, the attempts, the reason and the first and last failure
//! times in headers, then terminated on its own stream. [`read`] turns the stream back
//! into [`DeadLetter`]s, each under its stream sequence.
//!
//! The [`DeadLetters`] port over it: the id of a record is its sequence in the
//! dead-letter stream, so any process on the same prefix (or one started later) lists
//! and replays the same records. A replay publishes the body to the group's replay
//! subject (`[prefix.]replay.<group>`, read only by that group's consumer, see
//! `subscriber`), waits for the server to store it, and then deletes the record; a
//! replay that fails leaves the record. The replay's `Nats-Msg-Id` is the record's
//! sequence, so a replay repeated after a failed delete is dropped by the server.

use std::sync::atomic::Ordering;

use async_nats::{
    HeaderMap,
    jetstream::{
        self, AckKind, context::Publish, message::StreamMessage, stream::RawMessageErrorKind,
    },
};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use messaging::{
    BusError, DeadLetter, DeadLetterError, DeadLetterRecord, DeadLetters, Envelope, HandlerError,
    Replayed, numbered_id,
};

use crate::{
    NatsBus,
    bus::{Inner, reason},
};

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
/// Header: when the first attempt failed (RFC 3339, UTC, milliseconds).
pub const FIRST_FAILED_HEADER: &str = "Dead-Letter-First-Failed-At";
/// Header: when the last attempt failed (RFC 3339, UTC, milliseconds).
pub const LAST_FAILED_HEADER: &str = "Dead-Letter-Last-Failed-At";

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
    (attempts, first_failed_at): (u32, DateTime<Utc>),
    error: &HandlerError,
) -> Result<(), BusError> {
    let (kind, why) = reason(error);
    let mut headers = HeaderMap::new();
    headers.insert(GROUP_HEADER, one_line(group));
    headers.insert(ATTEMPTS_HEADER, attempts.to_string());
    headers.insert(REASON_HEADER, one_line(why));
    headers.insert(KIND_HEADER, kind);
    headers.insert(SUBJECT_HEADER, message.subject.to_string());
    headers.insert(FIRST_FAILED_HEADER, timestamp(first_failed_at));
    headers.insert(LAST_FAILED_HEADER, timestamp(Utc::now()));
    let mut publish = Publish::build()
        .payload(message.payload.clone())
        .headers(headers);
    if let Some(envelope) = envelope {
        // One dead letter per delivered copy: a copy delivered again (its term was lost)
        // is dropped by the server, a replayed copy (another stream, another sequence)
        // that fails again is a new dead letter.
        let copy = message
            .info()
            .map(|info| format!(":{}:{}", info.stream, info.stream_sequence))
            .unwrap_or_default();
        publish = publish.message_id(format!("{}:{group}{copy}", envelope.message_id));
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

/// `at` as RFC 3339, UTC, milliseconds.
fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn transport(what: &str, error: &dyn std::fmt::Display) -> BusError {
    BusError::Transport(format!("{what}: {error}"))
}

/// The dead letters on the server for this prefix, oldest first, with their sequences:
/// at most `limit`.
pub(crate) async fn read(inner: &Inner, limit: usize) -> Result<Vec<(u64, DeadLetter)>, BusError> {
    let name = inner.names.dead_letter_stream();
    let fail = |e: &dyn std::fmt::Display| transport(&format!("read {name}"), e);
    let stream = inner.js.get_stream(&name).await.map_err(|e| fail(&e))?;
    let state = stream.get_info().await.map_err(|e| fail(&e))?.state;
    let mut letters = Vec::new();
    if state.messages == 0 {
        return Ok(letters);
    }
    for sequence in state.first_sequence..=state.last_sequence {
        if letters.len() >= limit {
            break;
        }
        let raw = match stream.get_raw_message(sequence).await {
            Ok(raw) => raw,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => continue,
            Err(e) => return Err(fail(&e)),
        };
        if let Some(letter) = letter(&name, sequence, &raw) {
            letters.push((sequence, letter));
        }
    }
    Ok(letters)
}

/// Dead letter `sequence`, `None` when the stream has no such message.
async fn read_one(inner: &Inner, sequence: u64) -> Result<Option<DeadLetter>, BusError> {
    let name = inner.names.dead_letter_stream();
    let fail = |e: &dyn std::fmt::Display| transport(&format!("read {name}"), e);
    let stream = inner.js.get_stream(&name).await.map_err(|e| fail(&e))?;
    match stream.get_raw_message(sequence).await {
        Ok(raw) => Ok(letter(&name, sequence, &raw)),
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(fail(&e)),
    }
}

/// The dead letter a stream message holds; `None` (logged) for a body that is not an
/// envelope.
fn letter(stream: &str, sequence: u64, raw: &StreamMessage) -> Option<DeadLetter> {
    let header = |name: &str| {
        raw.headers
            .get(name)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    };
    let envelope = match Envelope::from_json(&raw.payload) {
        Ok(envelope) => envelope,
        Err(e) => {
            tracing::warn!(%stream, sequence, error = %e, "dead letter is not an envelope; skipped");
            return None;
        }
    };
    let stored = i64::try_from(raw.time.unix_timestamp_nanos())
        .map(DateTime::<Utc>::from_timestamp_nanos)
        .unwrap_or_default();
    let time = |name: &str| {
        DateTime::parse_from_rfc3339(&header(name))
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(stored)
    };
    let why = header(REASON_HEADER);
    Some(DeadLetter {
        subscriber: header(GROUP_HEADER),
        envelope,
        error: if header(KIND_HEADER) == "retryable" {
            HandlerError::Retryable(why)
        } else {
            HandlerError::Permanent(why)
        },
        attempts: header(ATTEMPTS_HEADER).parse().unwrap_or(0),
        first_at: time(FIRST_FAILED_HEADER),
        at: time(LAST_FAILED_HEADER),
    })
}

/// The dead-letter stream behind the port: ids are stream sequences.
#[async_trait]
impl DeadLetters for NatsBus {
    async fn list(&self, limit: usize) -> Result<Vec<DeadLetterRecord>, DeadLetterError> {
        Ok(read(&self.inner, limit)
            .await?
            .into_iter()
            .map(|(sequence, letter)| letter.record(sequence.to_string()))
            .collect())
    }

    async fn get(&self, id: &str) -> Result<Option<DeadLetterRecord>, DeadLetterError> {
        let Some(sequence) = numbered_id(id) else {
            return Ok(None);
        };
        Ok(read_one(&self.inner, sequence)
            .await?
            .map(|letter| letter.record(id.to_owned())))
    }

    async fn count(&self) -> Result<u64, DeadLetterError> {
        let name = self.inner.names.dead_letter_stream();
        let fail = |e: &dyn std::fmt::Display| transport(&format!("count {name}"), e);
        let stream = self
            .inner
            .js
            .get_stream(&name)
            .await
            .map_err(|e| fail(&e))?;
        Ok(stream
            .get_info()
            .await
            .map_err(|e| fail(&e))?
            .state
            .messages)
    }

    async fn replay(&self, id: &str) -> Result<Replayed, DeadLetterError> {
        let not_found = || DeadLetterError::NotFound(id.to_owned());
        let sequence = numbered_id(id).ok_or_else(not_found)?;
        let inner = &self.inner;
        let name = inner.names.dead_letter_stream();
        let stream = inner
            .js
            .get_stream(&name)
            .await
            .map_err(|e| transport(&format!("read {name}"), &e))?;
        let raw = match stream.get_raw_message(sequence).await {
            Ok(raw) => raw,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => return Err(not_found()),
            Err(e) => return Err(transport(&format!("read {name}"), &e).into()),
        };
        let group = raw
            .headers
            .get(GROUP_HEADER)
            .map(|v| v.as_str().to_owned())
            .ok_or_else(|| {
                BusError::Transport(format!("dead letter {id} in {name} names no group"))
            })?;
        let subject = inner.names.replay_subject(&group);
        inner
            .js
            .send_publish(
                subject.clone(),
                Publish::build()
                    .payload(raw.payload.clone())
                    .message_id(format!("replay:{name}:{sequence}")),
            )
            .await
            .map_err(|e| transport(&format!("replay to {subject}"), &e))?
            .await
            .map_err(|e| transport(&format!("replay to {subject} not confirmed"), &e))?;
        // Stored for the group: only now does the record go.
        if let Err(e) = stream.delete_message(sequence).await {
            tracing::warn!(stream = %name, sequence, error = %e,
                "replayed dead letter not removed; a second replay is dropped as a duplicate");
            return Err(transport(&format!("remove {id} from {name}"), &e).into());
        }
        tracing::info!(subscriber = %group, stream = %name, sequence, "dead letter replayed");
        Ok(Replayed {
            id: id.to_owned(),
            group,
        })
    }
}
