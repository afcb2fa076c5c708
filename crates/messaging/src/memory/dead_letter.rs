//! Dead letters: the messages a group could not handle (a permanent error, or retries
//! exhausted), logged at ERROR and kept, oldest first and bounded, for inspection and
//! replay to the same group.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use crate::{Envelope, HandlerError};

/// A message a subscriber could not handle, kept for inspection and replay.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The consumer group.
    pub subscriber: String,
    /// The message.
    pub envelope: Envelope,
    /// The last error.
    pub error: HandlerError,
    /// How many attempts were made.
    pub attempts: u32,
    /// When it was given up.
    pub at: DateTime<Utc>,
}

/// The dead letters of every group, oldest first, at most `limit`.
pub(super) struct DeadLetters {
    letters: Mutex<VecDeque<DeadLetter>>,
    /// At least 1; when full, the oldest letter is forgotten (loudly) for the newest.
    limit: usize,
}

impl DeadLetters {
    /// An empty store keeping at most `limit` letters (at least 1).
    pub(super) fn new(limit: usize) -> Self {
        Self {
            letters: Mutex::new(VecDeque::new()),
            limit: limit.max(1),
        }
    }

    /// Logs `letter` at ERROR and keeps it, forgetting the oldest when full.
    pub(super) fn record(&self, letter: DeadLetter) {
        tracing::error!(
            subscriber = %letter.subscriber, topic = %letter.envelope.topic,
            message_id = %letter.envelope.message_id, correlation_id = %letter.envelope.correlation_id,
            attempts = letter.attempts, error = %letter.error, "message dead-lettered"
        );
        let mut letters = self.letters.lock();
        if letters.len() >= self.limit
            && let Some(old) = letters.pop_front()
        {
            tracing::error!(subscriber = %old.subscriber, message_id = %old.envelope.message_id,
                "dead-letter store full: oldest dead letter forgotten");
        }
        letters.push_back(letter);
    }

    /// A copy of every letter, oldest first.
    pub(super) fn all(&self) -> Vec<DeadLetter> {
        self.letters.lock().iter().cloned().collect()
    }

    /// Takes out the letters of `subscriber`, oldest first, for redelivery; the others
    /// stay. What is not sent goes back when the [`Unsent`] is dropped.
    pub(super) fn take(&self, subscriber: &str) -> Unsent<'_> {
        let mut all = self.letters.lock();
        let (mine, rest): (VecDeque<_>, VecDeque<_>) =
            all.drain(..).partition(|d| d.subscriber == subscriber);
        *all = rest;
        Unsent {
            store: self,
            letters: mine,
        }
    }
}

/// Dead letters taken out for redelivery and not yet queued: put back in front, in
/// their order, on drop (a failed or cancelled redelivery loses none).
pub(super) struct Unsent<'a> {
    store: &'a DeadLetters,
    letters: VecDeque<DeadLetter>,
}

impl Unsent<'_> {
    /// The oldest letter not yet sent.
    pub(super) fn next(&self) -> Option<&DeadLetter> {
        self.letters.front()
    }

    /// The oldest letter was sent: it is not put back.
    pub(super) fn sent(&mut self) {
        self.letters.pop_front();
    }
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if !self.letters.is_empty() {
            let mut all = self.store.letters.lock();
            for letter in self.letters.drain(..).rev() {
                all.push_front(letter);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(subscriber: &str, n: u32) -> DeadLetter {
        DeadLetter {
            subscriber: subscriber.to_owned(),
            envelope: Envelope::new(uuid::Uuid::nil(), "t", Utc::now(), "c", None, &n).unwrap(),
            error: HandlerError::permanent("refused"),
            attempts: n,
            at: Utc::now(),
        }
    }

    fn attempts(letters: &[DeadLetter]) -> Vec<(String, u32)> {
        letters
            .iter()
            .map(|l| (l.subscriber.clone(), l.attempts))
            .collect()
    }

    #[test]
    fn a_full_store_forgets_its_oldest_letter_for_the_newest() {
        let store = DeadLetters::new(2);
        for n in 1..=3 {
            store.record(letter("a", n));
        }
        assert_eq!(
            attempts(&store.all()),
            [("a".to_owned(), 2), ("a".to_owned(), 3)]
        );
    }

    #[test]
    fn letters_not_sent_go_back_in_front_in_their_order() {
        let store = DeadLetters::new(10);
        for (subscriber, n) in [("a", 1), ("b", 2), ("a", 3), ("a", 4)] {
            store.record(letter(subscriber, n));
        }
        {
            let mut unsent = store.take("a");
            assert_eq!(unsent.next().map(|l| l.attempts), Some(1));
            unsent.sent();
            assert_eq!(attempts(&store.all()), [("b".to_owned(), 2)]);
        }
        assert_eq!(
            attempts(&store.all()),
            [
                ("a".to_owned(), 3),
                ("a".to_owned(), 4),
                ("b".to_owned(), 2)
            ]
        );
    }
}
