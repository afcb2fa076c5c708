//! The extended checks of the conformance suite: what needs more than one bus instance
//! on the same broker, the dead letters or the retry policy (a [`Harness`]).

use super::*;

/// What the extended checks need beyond a bus.
#[async_trait]
pub trait Harness: Send + Sync {
    /// The bus the checks publish on.
    fn bus(&self) -> Arc<dyn MessageBus>;

    /// Another instance of the bus on the same broker, as a second process would have
    /// (its own connection, sharing groups with the others), or `None` where the adapter
    /// has no such thing: the in-memory bus keeps a group inside one bus value.
    async fn instance(&self) -> Option<Arc<dyn MessageBus>>;

    /// The dead letters of `group` recorded so far, oldest first.
    async fn dead_letters(&self, group: &str) -> Vec<DeadLetter>;

    /// The retry policy of the buses (at least 4 attempts for these checks).
    fn retry(&self) -> RetryPolicy;

    /// Whether a message published again with the same messageId is dropped by the bus
    /// itself (NATS' `Nats-Msg-Id`); the in-memory bus leaves that to the inboxes.
    fn deduplicates(&self) -> bool;
}

fn subscribed<T>(result: Result<T, crate::BusError>) -> T {
    result.unwrap_or_else(|e| panic!("subscribe failed: {e}"))
}

/// Waits until `group` has at least `count` dead letters.
async fn wait_dead_letters(h: &dyn Harness, group: &str, count: usize) -> Vec<DeadLetter> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let letters = h.dead_letters(group).await;
        if letters.len() >= count {
            return letters;
        }
        assert!(
            Instant::now() < deadline,
            "expected {count} dead letters of {group} within {DEADLINE:?}, saw {letters:?}"
        );
        // The harness has no change signal for dead letters: poll it until the deadline.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A group whose process went away (its bus instance dropped) receives on its return,
/// in a new instance, what was published meanwhile, in order.
pub async fn group_that_was_down_receives_on_return(h: &dyn Harness, prefix: &str) {
    let topic = format!("{prefix}.down");
    let group = format!("{prefix}-down");
    let bus = h.bus();
    let first_bus = h.instance().await.unwrap_or_else(|| bus.clone());
    let first = Recorder::new(0, false);
    let handle = subscribed(
        first_bus
            .subscribe(Subscription::new(&group).topic(&topic), first.clone())
            .await,
    );
    publish(bus.as_ref(), &topic, "c", 0).await;
    first.wait_for(1, "before going down").await;
    handle.unsubscribe().await;
    drop(first_bus);
    for n in 1..=10 {
        publish(bus.as_ref(), &topic, "c", n).await;
    }
    let second_bus = h.instance().await.unwrap_or_else(|| bus.clone());
    let second = Recorder::new(0, false);
    let handle = subscribed(
        second_bus
            .subscribe(Subscription::new(&group).topic(&topic), second.clone())
            .await,
    );
    let seen: Vec<u32> = second
        .wait_for(10, "after coming back")
        .await
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert_eq!(seen, (1..=10).collect::<Vec<_>>(), "missed or reordered");
    handle.unsubscribe().await;
}

/// Two instances in one group share its messages: each message is handled by one of
/// them, and both take part (the first holds its messages until the second has
/// handled one, so a first instance that took everything fails the check).
pub async fn competing_consumers_share_a_group(h: &dyn Harness, prefix: &str) {
    let (Some(one), Some(two)) = (h.instance().await, h.instance().await) else {
        eprintln!(
            "competing_consumers_share_a_group: skipped, the bus has no second instance to share a group with"
        );
        return;
    };
    let topic = format!("{prefix}.compete");
    let group = format!("{prefix}-compete");
    let second = Recorder::new(0, false);
    let first = Arc::new(Waiting {
        inner: Recorder::new(0, false),
        until: second.clone(),
    });
    let h1 = subscribed(
        one.subscribe(Subscription::new(&group).topic(&topic), first.clone())
            .await,
    );
    let h2 = subscribed(
        two.subscribe(Subscription::new(&group).topic(&topic), second.clone())
            .await,
    );
    let count = 40;
    for n in 0..count {
        publish(h.bus().as_ref(), &topic, &format!("c{n}"), n).await;
    }
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let notified = first.inner.changed.notified();
        let notified_second = second.changed.notified();
        let total = first.inner.seen().len() + second.seen().len();
        if total >= count as usize {
            break;
        }
        let waited = tokio::time::timeout_at(deadline, async {
            tokio::select! {
                () = notified => {},
                () = notified_second => {},
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "competing: {total} of {count} handled within {DEADLINE:?}"
        );
    }
    let a: HashSet<u32> = first.inner.seen().into_iter().map(|(_, n)| n).collect();
    let b: HashSet<u32> = second.seen().into_iter().map(|(_, n)| n).collect();
    assert!(!b.is_empty(), "the second instance handled nothing");
    assert!(
        a.is_disjoint(&b),
        "handled by both: {:?}",
        a.intersection(&b)
    );
    let all: HashSet<u32> = a.union(&b).copied().collect();
    assert_eq!(all, (0..count).collect(), "a message was lost");
    h1.unsubscribe().await;
    h2.unsubscribe().await;
}

/// A handler that answers as `inner` once `until` has seen a message.
struct Waiting {
    inner: Arc<Recorder>,
    until: Arc<Recorder>,
}

#[async_trait]
impl MessageHandler for Waiting {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let notified = self.until.changed.notified();
            if !self.until.seen().is_empty() {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        self.inner.handle(envelope).await
    }
}

/// Two groups, on different instances where the bus has them, each receive every
/// message once.
pub async fn fan_out_to_two_groups(h: &dyn Harness, prefix: &str) {
    let topic = format!("{prefix}.fan");
    let bus = h.bus();
    let other = h.instance().await.unwrap_or_else(|| bus.clone());
    let a = Recorder::new(0, false);
    let b = Recorder::new(0, false);
    let ha = subscribed(
        bus.subscribe(
            Subscription::new(format!("{prefix}-fan-a")).topic(&topic),
            a.clone(),
        )
        .await,
    );
    let hb = subscribed(
        other
            .subscribe(
                Subscription::new(format!("{prefix}-fan-b")).topic(&topic),
                b.clone(),
            )
            .await,
    );
    for n in 0..30 {
        publish(bus.as_ref(), &topic, &format!("c{}", n % 5), n).await;
    }
    for (name, recorder) in [("a", &a), ("b", &b)] {
        let mut seen: Vec<u32> = recorder
            .wait_for(30, name)
            .await
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..30).collect::<Vec<_>>(), "group {name}");
    }
    ha.unsubscribe().await;
    hb.unsubscribe().await;
}

/// Retries wait the policy's backoff: not less, and not much more.
pub async fn backoff_timing_is_within_bounds(h: &dyn Harness, prefix: &str) {
    let retry = h.retry();
    assert!(retry.max_attempts >= 4, "the check needs 4 attempts");
    let topic = format!("{prefix}.backoff");
    let r = Recorder::new(3, false);
    let handle = subscribed(
        h.bus()
            .subscribe(
                Subscription::new(format!("{prefix}-backoff")).topic(&topic),
                r.clone(),
            )
            .await,
    );
    publish(h.bus().as_ref(), &topic, "c", 1).await;
    r.wait_for(1, "after retries").await;
    let calls = r.wait_for_calls(4, "attempts").await;
    for attempt in 1..=3u32 {
        let index = attempt as usize;
        let gap = calls[index].duration_since(calls[index - 1]);
        let wait = retry.backoff(attempt);
        // A timer may fire a little early on a coarse clock; the late side allows for a
        // loaded machine and the broker's round trips.
        let low = wait.mul_f64(0.9);
        let high = wait * 2 + Duration::from_millis(500);
        assert!(
            gap >= low && gap <= high,
            "attempt {} came {gap:?} after attempt {attempt}; backoff is {wait:?}",
            attempt + 1
        );
    }
    handle.unsubscribe().await;
}

/// A `Permanent` refusal is dead-lettered after one attempt, its reason readable.
pub async fn permanent_refusal_is_dead_lettered_with_reason(h: &dyn Harness, prefix: &str) {
    let topic = format!("{prefix}.refuse");
    let group = format!("{prefix}-refuse");
    let r = Recorder::new(1, true);
    let handle = subscribed(
        h.bus()
            .subscribe(Subscription::new(&group).topic(&topic), r.clone())
            .await,
    );
    let envelope = probe(&topic, "c", 1);
    let id = envelope.message_id;
    publish_envelope(h.bus().as_ref(), envelope).await;
    let letters = wait_dead_letters(h, &group, 1).await;
    let letter = &letters[0];
    assert_eq!(letter.subscriber, group);
    assert_eq!(letter.envelope.message_id, id);
    assert_eq!(letter.attempts, 1, "a refused message is tried once");
    assert_eq!(
        letter.error,
        HandlerError::permanent("refused by test"),
        "the reason is kept"
    );
    handle.unsubscribe().await;
}

/// A message that keeps failing as retryable is dead-lettered after the maximum
/// attempts, with the attempts and the last reason.
pub async fn exhausted_retries_are_dead_lettered(h: &dyn Harness, prefix: &str) {
    let retry = h.retry();
    let topic = format!("{prefix}.exhaust");
    let group = format!("{prefix}-exhaust");
    let r = Recorder::new(u32::MAX, false);
    let handle = subscribed(
        h.bus()
            .subscribe(Subscription::new(&group).topic(&topic), r.clone())
            .await,
    );
    publish(h.bus().as_ref(), &topic, "c", 1).await;
    let letters = wait_dead_letters(h, &group, 1).await;
    let letter = &letters[0];
    assert_eq!(letter.attempts, retry.max_attempts.max(1));
    assert_eq!(letter.error, HandlerError::retryable("not yet"));
    assert_eq!(
        r.calls().len(),
        retry.max_attempts.max(1) as usize,
        "tried more than the maximum"
    );
    handle.unsubscribe().await;
}

/// A message published twice with one messageId is delivered once, where the bus
/// de-duplicates.
pub async fn republished_message_id_is_delivered_once(h: &dyn Harness, prefix: &str) {
    if !h.deduplicates() {
        eprintln!(
            "republished_message_id_is_delivered_once: skipped, this bus leaves de-duplication to the consumers' inboxes"
        );
        return;
    }
    let topic = format!("{prefix}.dedup");
    let r = Recorder::new(0, false);
    let handle = subscribed(
        h.bus()
            .subscribe(
                Subscription::new(format!("{prefix}-dedup")).topic(&topic),
                r.clone(),
            )
            .await,
    );
    let envelope = probe(&topic, "c", 1);
    publish_envelope(h.bus().as_ref(), envelope.clone()).await;
    publish_envelope(h.bus().as_ref(), envelope).await;
    // A later message of the same flow: once it is in, a copy would have been too.
    publish(h.bus().as_ref(), &topic, "c", 2).await;
    r.wait_for(2, "dedup").await;
    let seen: Vec<u32> = r.seen().into_iter().map(|(_, n)| n).collect();
    assert_eq!(seen, vec![1, 2], "the re-published message came twice");
    handle.unsubscribe().await;
}

/// A handler that never returns does not keep its message: another instance of the
/// group gets it.
pub async fn stuck_handler_message_goes_to_another_instance(h: &dyn Harness, prefix: &str) {
    let (Some(one), Some(two)) = (h.instance().await, h.instance().await) else {
        eprintln!(
            "stuck_handler_message_goes_to_another_instance: skipped, the bus has no second instance to take over"
        );
        return;
    };
    let topic = format!("{prefix}.stuck");
    let group = format!("{prefix}-stuck");
    let stuck = Arc::new(Stuck {
        started: Recorder::new(0, false),
    });
    let h1 = subscribed(
        one.subscribe(Subscription::new(&group).topic(&topic), stuck.clone())
            .await,
    );
    publish(h.bus().as_ref(), &topic, "c", 1).await;
    stuck.started.wait_for(1, "stuck handler started").await;
    let r = Recorder::new(0, false);
    let h2 = subscribed(
        two.subscribe(Subscription::new(&group).topic(&topic), r.clone())
            .await,
    );
    assert_eq!(r.wait_for(1, "taken over").await, vec![("c".to_owned(), 1)]);
    drop(h1);
    h2.unsubscribe().await;
}

/// A handler that records that it started, then never returns.
struct Stuck {
    started: Arc<Recorder>,
}

#[async_trait]
impl MessageHandler for Stuck {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        self.started.handle(envelope).await?;
        std::future::pending::<()>().await;
        Ok(())
    }
}

/// Runs every extended check.
pub async fn run_extended(h: &dyn Harness, prefix: &str) {
    group_that_was_down_receives_on_return(h, prefix).await;
    competing_consumers_share_a_group(h, prefix).await;
    fan_out_to_two_groups(h, prefix).await;
    backoff_timing_is_within_bounds(h, prefix).await;
    permanent_refusal_is_dead_lettered_with_reason(h, prefix).await;
    exhausted_retries_are_dead_lettered(h, prefix).await;
    republished_message_id_is_delivered_once(h, prefix).await;
    stuck_handler_message_goes_to_another_instance(h, prefix).await;
}
