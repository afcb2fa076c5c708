//! A lane's consumer. While a group is attached, one worker task per lane takes the
//! lane's receiver and hands each message to the subscription's handler, whose result
//! decides: `Ok` acks; `Retryable` retries on the same lane with exponential backoff
//! (keeping order) up to `max_attempts`; `Permanent` or attempts exhausted records a
//! [`DeadLetter`].
//!
//! On unsubscribe (or a panicking handler) the receiver goes back to the lane, with the
//! message in hand if any: a group that is away keeps queueing, and when it comes back
//! under the same name it receives everything, in order. A panic in one lane detaches
//! the whole group: every lane stops after its message in hand.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use chrono::Utc;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::{
    Inner,
    affinity::lane_hash,
    dead_letter::DeadLetter,
    group::{Group, InHand, Parked},
};
use crate::{Envelope, HandlerError, MessageHandler};

/// What the workers of one subscription share.
pub(super) struct Attachment {
    /// Raised when a handler panics, so every lane of the group stops.
    pub(super) detach: watch::Sender<bool>,
    /// Lane workers still running; the last one out detaches the group.
    pub(super) live: AtomicUsize,
}

/// A lane's consumer. However its task ends (stop, panicking handler, runtime shut
/// down), its drop gives the receiver and the message in hand back to the lane; the last
/// worker of a subscription detaches the group.
pub(super) struct Worker {
    inner: Arc<Inner>,
    group: Arc<Group>,
    /// Index of the lane in `group.lanes`, where the drop parks `rx`.
    lane: usize,
    attachment: Arc<Attachment>,
    /// Always `Some` until the drop takes it back to the lane.
    rx: Option<mpsc::UnboundedReceiver<Arc<Envelope>>>,
    /// The message being handled or waiting for a retry, its attempts and first failure.
    in_hand: Option<InHand>,
}

/// Whether the worker goes on after a message.
enum Next {
    Continue,
    Stop,
}

impl Worker {
    /// The worker of lane `lane` of `group`, with what was parked there.
    pub(super) fn new(
        inner: Arc<Inner>,
        group: Arc<Group>,
        lane: usize,
        attachment: Arc<Attachment>,
        parked: Parked,
    ) -> Self {
        Self {
            inner,
            group,
            lane,
            attachment,
            rx: Some(parked.rx),
            in_hand: parked.in_hand,
        }
    }

    /// Handles the lane's messages until `stop` or `detach` is raised (between messages
    /// or during a retry backoff) or the lane closes.
    pub(super) async fn run(
        mut self,
        handler: Arc<dyn MessageHandler>,
        mut stop: watch::Receiver<bool>,
        mut detach: watch::Receiver<bool>,
    ) {
        loop {
            if self.in_hand.is_none() {
                // Between messages: the only place a worker stops with a message queued.
                if stopping(&stop) || stopping(&detach) {
                    return;
                }
                let Some(rx) = self.rx.as_mut() else { return };
                // The lane first: with a message ready the stop signals are not even
                // polled (they were checked just above). Not `try_recv`: it parks the
                // thread when it meets a send in progress.
                let envelope = tokio::select! {
                    biased;
                    next = rx.recv() => match next {
                        Some(envelope) => envelope,
                        None => return,
                    },
                    _ = stop.changed() => return,
                    _ = detach.changed() => return,
                };
                self.in_hand = Some(InHand {
                    envelope,
                    attempts: 0,
                    first_failed_at: None,
                });
            }
            if let Next::Stop = self.handle(&*handler, &mut stop, &mut detach).await {
                return;
            }
        }
    }

    /// Handles the message in hand until it is acked, dead-lettered, or the worker is
    /// stopped during a retry backoff (then it stays in hand, to be parked).
    async fn handle(
        &mut self,
        handler: &dyn MessageHandler,
        stop: &mut watch::Receiver<bool>,
        detach: &mut watch::Receiver<bool>,
    ) -> Next {
        let Some(InHand { envelope, .. }) = &self.in_hand else {
            return Next::Continue;
        };
        let envelope = envelope.clone();
        let span = tracing::info_span!("handle", subscriber = %self.group.name, topic = %envelope.topic,
            message_id = %envelope.message_id, correlation_id = %envelope.correlation_id,
            causation_id = ?envelope.causation_id);
        let retry = self.inner.config.retry;
        loop {
            // Counted before the call, so an attempt that panics counts too.
            let attempt = match &mut self.in_hand {
                Some(in_hand) => {
                    in_hand.attempts += 1;
                    in_hand.attempts
                }
                None => return Next::Continue,
            };
            let error = match handler.handle(&envelope).instrument(span.clone()).await {
                Ok(()) => {
                    self.finish();
                    return Next::Continue;
                }
                Err(error) => error,
            };
            let failed_at = Utc::now();
            let first_failed_at = match &mut self.in_hand {
                Some(in_hand) => *in_hand.first_failed_at.get_or_insert(failed_at),
                None => failed_at,
            };
            if let HandlerError::Retryable(_) = error
                && attempt < retry.max_attempts.max(1)
            {
                let wait = retry.backoff(attempt);
                tracing::warn!(parent: &span, attempt, ?wait, error = %error, "handler failed, will retry");
                tokio::select! {
                    biased;
                    // Stopped: the message stays in hand and is parked with the lane.
                    _ = stop.changed() => return Next::Stop,
                    _ = detach.changed() => return Next::Stop,
                    () = tokio::time::sleep(wait) => continue,
                }
            }
            // Recorded before the message is done, so `wait_idle` sees the letter.
            self.inner.dead_letters.record(DeadLetter {
                subscriber: self.group.name.clone(),
                envelope: (*envelope).clone(),
                error,
                attempts: attempt,
                first_at: first_failed_at,
                at: failed_at,
            });
            self.finish();
            return Next::Continue;
        }
    }

    /// The message in hand is done with: its lane and its room are given back.
    fn finish(&mut self) {
        if let Some(InHand { envelope, .. }) = self.in_hand.take() {
            self.group.unassign(lane_hash(&envelope.correlation_id));
            self.group
                .release(&self.inner.activity, self.inner.config.backlog_limit);
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(rx) = self.rx.take() {
            *self.group.lanes[self.lane].parked.lock() = Some(Parked {
                rx,
                in_hand: self.in_hand.take(),
            });
        }
        if std::thread::panicking() {
            tracing::error!(subscriber = %self.group.name,
                "handler panicked: subscriber detached, message kept for its return");
            self.attachment.detach.send_replace(true);
        }
        if self.attachment.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.group.detach(&self.inner.activity);
            tracing::debug!(subscriber = %self.group.name, "detached");
        }
    }
}

/// Whether the stop signal was raised (or its sender is gone).
fn stopping(signal: &watch::Receiver<bool>) -> bool {
    !matches!(signal.has_changed(), Ok(false))
}
