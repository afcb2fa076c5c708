//! How topics and groups map to NATS names: subject = `[prefix.]topic`, one stream per
//! subject (named after it, `.` and other characters NATS refuses in names become `_`),
//! one durable pull consumer per group in each stream (named after the group), one
//! dead-letter stream per prefix on `[prefix.]dead-letter.<group>`, and one replay
//! stream per prefix on `[prefix.]replay.<group>`, where each group has its own consumer
//! filtered to its subject (one filter subject: nats-server 2.9 has no more).

/// Names for one bus (one subject prefix).
#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: Option<String>,
}

/// The subject token (after the prefix) of the dead-letter stream.
const DEAD_LETTER: &str = "dead-letter";
/// The subject token (after the prefix) of the replay stream.
const REPLAY: &str = "replay";

impl Names {
    pub(crate) fn new(prefix: Option<String>) -> Self {
        Self { prefix }
    }

    fn prefixed(&self, tail: &str) -> String {
        match &self.prefix {
            Some(p) => format!("{p}.{tail}"),
            None => tail.to_owned(),
        }
    }

    /// The subject of `topic`.
    pub(crate) fn subject(&self, topic: &str) -> String {
        self.prefixed(topic)
    }

    /// The stream holding `topic`.
    pub(crate) fn stream(&self, topic: &str) -> String {
        token(&self.subject(topic))
    }

    /// The durable consumer of `group` (in each of its topics' streams).
    pub(crate) fn consumer(group: &str) -> String {
        token(group)
    }

    /// Where `group`'s dead letters are published.
    pub(crate) fn dead_letter_subject(&self, group: &str) -> String {
        format!("{}.{}", self.prefixed(DEAD_LETTER), token(group))
    }

    /// The subjects of the dead-letter stream.
    pub(crate) fn dead_letter_subjects(&self) -> String {
        format!("{}.>", self.prefixed(DEAD_LETTER))
    }

    /// The dead-letter stream.
    pub(crate) fn dead_letter_stream(&self) -> String {
        token(&self.prefixed(DEAD_LETTER))
    }

    /// Where dead letters replayed to `group` are published (only its consumer reads it).
    pub(crate) fn replay_subject(&self, group: &str) -> String {
        format!("{}.{}", self.prefixed(REPLAY), token(group))
    }

    /// The subjects of the replay stream.
    pub(crate) fn replay_subjects(&self) -> String {
        format!("{}.>", self.prefixed(REPLAY))
    }

    /// The replay stream.
    pub(crate) fn replay_stream(&self) -> String {
        token(&self.prefixed(REPLAY))
    }
}

/// `text` with every character NATS refuses in a stream, consumer or subject token
/// (`.`, `*`, `>`, whitespace, path separators, …) replaced by `_`.
pub(crate) fn token(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_topic_and_the_prefix() {
        let names = Names::new(Some("t1".to_owned()));
        assert_eq!(names.subject("order.placed"), "t1.order.placed");
        assert_eq!(
            names.stream("order.payment_refused"),
            "t1_order_payment_refused"
        );
        assert_eq!(Names::consumer("orders.payments"), "orders_payments");
        assert_eq!(names.dead_letter_subject("a.b"), "t1.dead-letter.a_b");
        assert_eq!(names.dead_letter_stream(), "t1_dead-letter");
        assert_eq!(names.replay_subject("a.b"), "t1.replay.a_b");
        assert_eq!(names.replay_subjects(), "t1.replay.>");
        assert_eq!(names.replay_stream(), "t1_replay");
        let bare = Names::new(None);
        assert_eq!(bare.subject("order.placed"), "order.placed");
        assert_eq!(bare.dead_letter_subjects(), "dead-letter.>");
    }
}
