//! The dead-letter checks of the conformance suite: what the [`DeadLetters`] port of an
//! adapter lists, and what a replay does. Each check takes the bus, its port and a unique
//! prefix; counts are compared before and after, so letters of other checks on the same
//! bus do not matter.

use super::*;
use crate::{DeadLetterError, DeadLetterKind, DeadLetterRecord, DeadLetters};

/// The most records a check lists.
const LIST_LIMIT: usize = 10_000;

fn listed<T>(result: Result<T, DeadLetterError>) -> T {
    result.unwrap_or_else(|e| panic!("dead-letter port failed: {e}"))
}

/// The records of `group`, oldest first.
async fn records_of(letters: &dyn DeadLetters, group: &str) -> Vec<DeadLetterRecord> {
    listed(letters.list(LIST_LIMIT).await)
        .into_iter()
        .filter(|r| r.group == group)
        .collect()
}

/// Waits until `group` has a record other than those in `known`, and returns it.
async fn wait_new_record(
    letters: &dyn DeadLetters,
    group: &str,
    known: &[String],
) -> DeadLetterRecord {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let records = records_of(letters, group).await;
        if let Some(record) = records.into_iter().find(|r| !known.contains(&r.id)) {
            return record;
        }
        assert!(
            Instant::now() < deadline,
            "expected a new dead letter of {group} within {DEADLINE:?}"
        );
        // The port has no change signal: poll it until the deadline.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn subscribe(
    bus: &dyn MessageBus,
    group: &str,
    topic: &str,
    handler: Arc<dyn MessageHandler>,
) -> crate::SubscriptionHandle {
    subscribed(
        bus.subscribe(Subscription::new(group).topic(topic), handler)
            .await,
    )
}

fn subscribed<T>(result: Result<T, crate::BusError>) -> T {
    result.unwrap_or_else(|e| panic!("subscribe failed: {e}"))
}

/// A `Permanent` refusal is listed with its group, topic, message id, attempts, reason
/// and kind, and `get` finds it by its id.
pub async fn permanent_failure_is_listed(
    bus: Arc<dyn MessageBus>,
    letters: Arc<dyn DeadLetters>,
    prefix: &str,
) {
    let topic = format!("{prefix}.dl-listed");
    let group = format!("{prefix}-dl-listed");
    let handle = subscribe(bus.as_ref(), &group, &topic, Recorder::new(1, true)).await;
    let before = chrono::Utc::now();
    let envelope = probe(&topic, "c", 1);
    let message_id = envelope.message_id;
    publish_envelope(bus.as_ref(), envelope).await;
    let record = wait_new_record(letters.as_ref(), &group, &[]).await;
    assert_eq!(record.group, group);
    assert_eq!(record.topic, topic);
    assert_eq!(record.message_id, message_id);
    assert_eq!(record.envelope.message_id, message_id);
    assert_eq!(record.attempts, 1, "a refused message is tried once");
    assert_eq!(record.reason, "refused by test");
    assert_eq!(record.kind, DeadLetterKind::Permanent);
    // Clocks are read at millisecond precision on a network bus.
    let slack = chrono::Duration::milliseconds(5);
    assert!(
        record.first_failed_at + slack >= before
            && record.first_failed_at <= record.last_failed_at
            && record.last_failed_at <= chrono::Utc::now() + slack,
        "failure times out of order: {} .. {} (published at {before})",
        record.first_failed_at,
        record.last_failed_at
    );
    let found = listed(letters.get(&record.id).await)
        .unwrap_or_else(|| panic!("get({}) found nothing", record.id));
    assert_eq!(found.message_id, message_id);
    assert_eq!(found.group, group);
    handle.unsubscribe().await;
}

/// A message that keeps failing as retryable is listed as exhausted, after more than one
/// attempt, its first failure a backoff before its last.
pub async fn exhausted_retries_are_listed_with_first_and_last_failure(
    bus: Arc<dyn MessageBus>,
    letters: Arc<dyn DeadLetters>,
    prefix: &str,
) {
    let topic = format!("{prefix}.dl-exhausted");
    let group = format!("{prefix}-dl-exhausted");
    let handle = subscribe(bus.as_ref(), &group, &topic, Recorder::new(u32::MAX, false)).await;
    publish(bus.as_ref(), &topic, "c", 1).await;
    let record = wait_new_record(letters.as_ref(), &group, &[]).await;
    assert_eq!(record.kind, DeadLetterKind::Exhausted);
    assert_eq!(record.reason, "not yet");
    assert!(record.attempts > 1, "attempts: {}", record.attempts);
    assert!(
        record.last_failed_at - record.first_failed_at >= chrono::Duration::milliseconds(1),
        "first failure {} is not before the last {}",
        record.first_failed_at,
        record.last_failed_at
    );
    handle.unsubscribe().await;
}

/// A replay of a message whose handler now succeeds reaches that group once, and only
/// that group; the record leaves the list and the count follows.
pub async fn replay_reaches_its_group_only_once(
    bus: Arc<dyn MessageBus>,
    letters: Arc<dyn DeadLetters>,
    prefix: &str,
) {
    let topic = format!("{prefix}.dl-replay");
    let refusing = format!("{prefix}-dl-refusing");
    let other = format!("{prefix}-dl-other");
    // Refuses the first message, accepts from then on.
    let a = Recorder::new(1, true);
    let b = Recorder::new(0, false);
    let ha = subscribe(bus.as_ref(), &refusing, &topic, a.clone()).await;
    let hb = subscribe(bus.as_ref(), &other, &topic, b.clone()).await;
    publish(bus.as_ref(), &topic, "c", 1).await;
    let record = wait_new_record(letters.as_ref(), &refusing, &[]).await;
    b.wait_for(1, "the other group").await;
    let count = listed(letters.count().await);
    assert!(count >= 1, "count {count} with a letter listed");

    let replayed = listed(letters.replay(&record.id).await);
    assert_eq!(replayed.id, record.id);
    assert_eq!(replayed.group, refusing);
    assert_eq!(
        a.wait_for(1, "the replayed message").await,
        vec![("c".to_owned(), 1)]
    );
    assert!(
        records_of(letters.as_ref(), &refusing)
            .await
            .iter()
            .all(|r| r.id != record.id),
        "the replayed letter is still listed"
    );
    assert!(
        listed(letters.get(&record.id).await).is_none(),
        "get finds the replayed letter"
    );
    assert_eq!(
        listed(letters.count().await),
        count - 1,
        "the count did not follow"
    );

    // A later message: once both groups have it, a second copy of the replayed one
    // (to either group) would have arrived too.
    publish(bus.as_ref(), &topic, "c", 2).await;
    let mut seen_a: Vec<u32> = a
        .wait_for(2, "refusing group, later")
        .await
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    let seen_b: Vec<u32> = b
        .wait_for(2, "other group, later")
        .await
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    seen_a.sort_unstable();
    assert_eq!(seen_a, vec![1, 2], "the replay reached its group twice");
    assert_eq!(seen_b, vec![1, 2], "the replay reached another group");
    ha.unsubscribe().await;
    hb.unsubscribe().await;
}

/// Replaying an id the port does not know is the not-found error, and changes nothing.
pub async fn replay_of_an_unknown_id_is_not_found(
    _bus: Arc<dyn MessageBus>,
    letters: Arc<dyn DeadLetters>,
    _prefix: &str,
) {
    let count = listed(letters.count().await);
    for id in ["no-such-id", "999999999", "0", "+1", "01", ""] {
        match letters.replay(id).await {
            Err(DeadLetterError::NotFound(unknown)) => assert_eq!(unknown, id),
            other => panic!("replay({id:?}) answered {other:?}, not NotFound"),
        }
        assert!(
            listed(letters.get(id).await).is_none(),
            "get({id:?}) found one"
        );
    }
    assert_eq!(listed(letters.count().await), count);
}

/// A replayed message that fails again is listed again, as a new record.
pub async fn replay_that_fails_again_is_listed_again(
    bus: Arc<dyn MessageBus>,
    letters: Arc<dyn DeadLetters>,
    prefix: &str,
) {
    let topic = format!("{prefix}.dl-again");
    let group = format!("{prefix}-dl-again");
    // Refuses twice: the first delivery and the replay.
    let r = Recorder::new(2, true);
    let handle = subscribe(bus.as_ref(), &group, &topic, r.clone()).await;
    let envelope = probe(&topic, "c", 1);
    let message_id = envelope.message_id;
    publish_envelope(bus.as_ref(), envelope).await;
    let first = wait_new_record(letters.as_ref(), &group, &[]).await;
    listed(letters.replay(&first.id).await);
    let second = wait_new_record(letters.as_ref(), &group, std::slice::from_ref(&first.id)).await;
    assert_ne!(second.id, first.id);
    assert_eq!(second.message_id, message_id);
    assert_eq!(second.attempts, 1, "a replay starts with fresh attempts");
    assert_eq!(second.reason, "refused by test");
    let ids: Vec<String> = records_of(letters.as_ref(), &group)
        .await
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, vec![second.id.clone()], "listed: {ids:?}");
    assert!(r.seen().is_empty(), "the refused message was accepted");
    // And it can be replayed again: the handler accepts it now.
    listed(letters.replay(&second.id).await);
    assert_eq!(
        r.wait_for(1, "second replay").await,
        vec![("c".to_owned(), 1)]
    );
    handle.unsubscribe().await;
}

/// A replay to a group that is away waits for it: the group gets the message when it
/// comes back under its name.
pub async fn replay_to_a_group_that_is_away_reaches_it_on_return(
    bus: Arc<dyn MessageBus>,
    letters: Arc<dyn DeadLetters>,
    prefix: &str,
) {
    let topic = format!("{prefix}.dl-away");
    let group = format!("{prefix}-dl-away");
    let handle = subscribe(bus.as_ref(), &group, &topic, Recorder::new(1, true)).await;
    publish(bus.as_ref(), &topic, "c", 1).await;
    let record = wait_new_record(letters.as_ref(), &group, &[]).await;
    handle.unsubscribe().await;
    let replayed = listed(letters.replay(&record.id).await);
    assert_eq!(replayed.group, group);
    let back = Recorder::new(0, false);
    let handle = subscribe(bus.as_ref(), &group, &topic, back.clone()).await;
    assert_eq!(
        back.wait_for(1, "back from away").await,
        vec![("c".to_owned(), 1)]
    );
    assert!(
        records_of(letters.as_ref(), &group).await.is_empty(),
        "the replayed letter is listed"
    );
    handle.unsubscribe().await;
}

/// Runs every dead-letter check.
pub async fn run_dead_letters(
    bus: Arc<dyn MessageBus>,
    letters: Arc<dyn DeadLetters>,
    prefix: &str,
) {
    permanent_failure_is_listed(bus.clone(), letters.clone(), prefix).await;
    exhausted_retries_are_listed_with_first_and_last_failure(bus.clone(), letters.clone(), prefix)
        .await;
    replay_reaches_its_group_only_once(bus.clone(), letters.clone(), prefix).await;
    replay_of_an_unknown_id_is_not_found(bus.clone(), letters.clone(), prefix).await;
    replay_that_fails_again_is_listed_again(bus.clone(), letters.clone(), prefix).await;
    replay_to_a_group_that_is_away_reaches_it_on_return(bus, letters, prefix).await;
}
