//! Dead letters: the messages a group could not handle (a permanent error, or retries
//! exhausted), logged at ERROR and kept, oldest first and bounded, each under a sequence
//! number (its id for the [`DeadLetters`](crate::DeadLetters) port), for inspection and
//! replay to the same group.

use std::{
    collections::VecDeque,
    sync::atomic::{AtomicU64, Ordering},
};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use crate::{DeadLetterKind, DeadLetterRecord, Envelope, HandlerError};

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
    /// When the first attempt failed.
    pub first_at: DateTime<Utc>,
    /// When it was given up (the last attempt failed).
    pub at: DateTime<Utc>,
}

impl DeadLetter {
    /// The letter as the [`DeadLetters`](crate::DeadLetters) port shows it, under `id`.
    #[must_use]
    pub fn record(&self, id: String) -> DeadLetterRecord {
        let reason = match &self.error {
            HandlerError::Permanent(r) | HandlerError::Retryable(r) => r.clone(),
        };
        DeadLetterRecord {
            id,
            group: self.subscriber.clone(),
            topic: self.envelope.topic.to_string(),
            message_id: self.envelope.message_id,
            attempts: self.attempts,
            reason,
            kind: DeadLetterKind::of(&self.error),
            first_failed_at: self.first_at,
            last_failed_at: self.at,
            envelope: self.envelope.clone(),
        }
    }
}

/// A kept letter and its sequence number.
pub(super) type Numbered = (u64, DeadLetter);

/// The dead letters of every group, oldest first, at most `limit`.
pub(super) struct DeadLetterStore {
    letters: Mutex<VecDeque<Numbered>>,
    /// The number the next letter gets (from 1).
    next: AtomicU64,
    /// At least 1; when full, the oldest letter is forgotten (loudly) for the newest.
    limit: usize,
}

impl DeadLetterStore {
    /// An empty store keeping at most `limit` letters (at least 1).
    pub(super) fn new(limit: usize) -> Self {
        Self {
            letters: Mutex::new(VecDeque::new()),
            next: AtomicU64::new(1),
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
            && let Some((_, old)) = letters.pop_front()
        {
            tracing::error!(subscriber = %old.subscriber, message_id = %old.envelope.message_id,
                "dead-letter store full: oldest dead letter forgotten");
        }
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        letters.push_back((number, letter));
    }

    /// A copy of every letter, oldest first.
    pub(super) fn all(&self) -> Vec<DeadLetter> {
        self.letters.lock().iter().map(|(_, l)| l.clone()).collect()
    }

    /// A copy of the oldest `limit` letters with their numbers.
    pub(super) fn oldest(&self, limit: usize) -> Vec<Numbered> {
        self.letters.lock().iter().take(limit).cloned().collect()
    }

    /// A copy of letter `number`.
    pub(super) fn get(&self, number: u64) -> Option<DeadLetter> {
        let letters = self.letters.lock();
        letters
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, l)| l.clone())
    }

    /// How many letters are kept.
    pub(super) fn len(&self) -> usize {
        self.letters.lock().len()
    }

    /// Takes out the letters of `subscriber`, oldest first, for redelivery; the others
    /// stay. What is not sent goes back when the [`Unsent`] is dropped.
    pub(super) fn take(&self, subscriber: &str) -> Unsent<'_> {
        self.take_where(|(_, d)| d.subscriber == subscriber)
    }

    /// Takes out letter `number` for redelivery (none if there is no such letter).
    pub(super) fn take_one(&self, number: u64) -> Unsent<'_> {
        self.take_where(|(n, _)| *n == number)
    }

    fn take_where(&self, mine: impl Fn(&Numbered) -> bool) -> Unsent<'_> {
        let mut all = self.letters.lock();
        let (mine, rest): (VecDeque<_>, VecDeque<_>) = all.drain(..).partition(|d| mine(d));
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
    store: &'a DeadLetterStore,
    letters: VecDeque<Numbered>,
}

impl Unsent<'_> {
    /// The oldest letter not yet sent.
    pub(super) fn next(&self) -> Option<&DeadLetter> {
        self.letters.front().map(|(_, l)| l)
    }

    /// The oldest letter was sent: it is not put back.
    pub(super) fn sent(&mut self) {
        self.letters.pop_front();
    }
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if !self.letters.is_empty() {
            // Back in number order: they may have been taken from among the others.
            let mut all = self.store.letters.lock();
            all.extend(self.letters.drain(..));
            all.make_contiguous().sort_by_key(|(n, _)| *n);
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
            first_at: Utc::now(),
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
        let store = DeadLetterStore::new(2);
        for n in 1..=3 {
            store.record(letter("a", n));
        }
        assert_eq!(
            attempts(&store.all()),
            [("a".to_owned(), 2), ("a".to_owned(), 3)]
        );
    }

    #[test]
    fn letters_not_sent_go_back_to_their_place_oldest_first() {
        let store = DeadLetterStore::new(10);
        for (subscriber, n) in [("a", 1), ("b", 2), ("a", 3), ("a", 4)] {
            store.record(letter(subscriber, n));
        }
        {
            let mut unsent = store.take("a");
            assert_eq!(unsent.next().map(|l| l.attempts), Some(1));
            unsent.sent();
            assert_eq!(attempts(&store.all()), [("b".to_owned(), 2)]);
        }
        // A letter recorded later comes after them all.
        store.record(letter("c", 5));
        assert_eq!(
            attempts(&store.all()),
            [
                ("b".to_owned(), 2),
                ("a".to_owned(), 3),
                ("a".to_owned(), 4),
                ("c".to_owned(), 5)
            ]
        );
    }

    #[test]
    fn one_letter_is_taken_by_its_number() {
        let store = DeadLetterStore::new(10);
        for n in 1..=3 {
            store.record(letter("a", n));
        }
        let numbers: Vec<u64> = store.oldest(10).iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [1, 2, 3]);
        assert_eq!(store.get(2).map(|l| l.attempts), Some(2));
        {
            let mut unsent = store.take_one(2);
            assert_eq!(unsent.next().map(|l| l.attempts), Some(2));
            unsent.sent();
        }
        assert!(store.get(2).is_none());
        assert!(store.take_one(2).next().is_none(), "taken twice");
        assert_eq!(store.len(), 2);
        // Numbers are not reused.
        store.record(letter("a", 4));
        let numbers: Vec<u64> = store.oldest(10).iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [1, 3, 4]);
    }
}
