//! A consumer group: its lanes, and one state word that counts its backlog and says
//! whether workers consume it.
//!
//! A group is created the first time its name subscribes, and stays. It owns `lanes`
//! FIFO queues; [`Affinity`] picks a message's lane. A group holds at most
//! `backlog_limit` messages, queued or in hand, over all its lanes. While it is attached
//! its messages count as busy for [`Activity`]; while it is away they wait for its
//! return and keep nobody busy.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

use super::{activity::Activity, affinity::Affinity};
use crate::Envelope;

/// Bit of [`Group::state`] set while workers consume the group.
const ATTACHED: u64 = 1 << 63;
/// Bits of [`Group::state`] that count the messages queued or in hand.
const COUNT: u64 = ATTACHED - 1;

pub(super) struct Group {
    /// The consumer-group name, for errors, logs and dead letters.
    pub(super) name: String,
    /// One FIFO per lane; [`Group::affinity`] picks a message's lane.
    pub(super) lanes: Box<[Lane]>,
    /// Which lane each correlation id with pending messages is on, and how busy each
    /// lane is: per-order order without head-of-line blocking between orders.
    affinity: Mutex<Affinity>,
    /// `ATTACHED | pending`, where pending is the number of messages queued or in hand
    /// (including room reserved by publishers). One word, so the attached flag and the
    /// count change together and the bus's busy count can follow them exactly.
    state: AtomicU64,
    /// Held by a subscription from `subscribe` until its last worker has parked its
    /// lane: the guard against two subscriptions under one name.
    pub(super) claimed: AtomicBool,
    /// The topics of the latest subscription (its routes).
    pub(super) topics: Mutex<Vec<String>>,
    /// Publishers waiting for room, so the handling path only wakes `room` when needed.
    pub(super) waiting: AtomicUsize,
    /// Woken (one publisher at a time) when a message of this group is done.
    pub(super) room: Notify,
    /// Set from the first refused or waiting publish until the backlog is down to half:
    /// the overflow is logged once per episode, not once per message.
    pub(super) overflowing: AtomicBool,
}

pub(super) struct Lane {
    /// Unbounded: the group's `state` count is the bound, over all its lanes.
    pub(super) tx: mpsc::UnboundedSender<Arc<Envelope>>,
    /// The receiver while no worker holds it, plus a message a stopped worker had in hand.
    pub(super) parked: Mutex<Option<Parked>>,
}

pub(super) struct Parked {
    pub(super) rx: mpsc::UnboundedReceiver<Arc<Envelope>>,
    /// The message a stopped worker had in hand, the attempts already made and when
    /// the first of them failed.
    pub(super) in_hand: Option<InHand>,
}

/// A message a worker holds: the attempts made so far, and when the first one failed
/// (kept for the dead letter, should it come to that).
pub(super) struct InHand {
    pub(super) envelope: Arc<Envelope>,
    pub(super) attempts: u32,
    pub(super) first_failed_at: Option<DateTime<Utc>>,
}

impl Group {
    /// A group named `name` with `lanes` empty lanes, away, every receiver parked.
    pub(super) fn new(name: &str, lanes: usize) -> Self {
        Self {
            name: name.to_owned(),
            affinity: Mutex::new(Affinity::new(lanes)),
            lanes: (0..lanes)
                .map(|_| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    Lane {
                        tx,
                        parked: Mutex::new(Some(Parked { rx, in_hand: None })),
                    }
                })
                .collect(),
            state: AtomicU64::new(0),
            claimed: AtomicBool::new(false),
            topics: Mutex::new(Vec::new()),
            waiting: AtomicUsize::new(0),
            room: Notify::new(),
            overflowing: AtomicBool::new(false),
        }
    }

    /// Messages queued or in hand, whether the group is attached or away.
    pub(super) fn pending(&self) -> usize {
        count_of(self.state.load(Ordering::SeqCst))
    }

    /// Picks the lane of one more message of `hash`.
    pub(super) fn assign(&self, hash: u64) -> usize {
        if self.lanes.len() <= 1 {
            return 0;
        }
        self.affinity.lock().assign(hash)
    }

    /// Forgets one message of `hash` (see [`Affinity::release`]).
    pub(super) fn unassign(&self, hash: u64) {
        if self.lanes.len() > 1 {
            self.affinity.lock().release(hash);
        }
    }

    /// Takes room for one message, or returns false when `limit` messages are pending.
    pub(super) fn try_reserve(&self, activity: &Activity, limit: usize) -> bool {
        // Raised first: should the group detach meanwhile, `busy` over-counts, never under.
        activity.raise(1);
        let limit = limit.max(1) as u64;
        let mut state = self.state.load(Ordering::SeqCst);
        loop {
            if state & COUNT >= limit {
                activity.lower(1);
                return false;
            }
            match self.state.compare_exchange_weak(
                state,
                state + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break,
                Err(actual) => state = actual,
            }
        }
        if state & ATTACHED == 0 {
            // Away: the message waits for the group's return and keeps nobody busy.
            activity.lower(1);
        }
        true
    }

    /// Gives back room for one message: handled, dead-lettered, or a reservation that
    /// was not used. Ends the overflow episode once the backlog is down to half `limit`,
    /// and wakes a publisher waiting for room.
    pub(super) fn release(&self, activity: &Activity, limit: usize) {
        let before = self.state.fetch_sub(1, Ordering::SeqCst);
        if before & ATTACHED != 0 {
            activity.lower(1);
        }
        if self.overflowing.load(Ordering::Relaxed)
            && count_of(before) <= limit / 2 + 1
            && self.overflowing.swap(false, Ordering::AcqRel)
        {
            tracing::info!(subscriber = %self.name, "backlog drained: overflow over");
        }
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.room.notify_one();
        }
    }

    /// Marks the group attached, counting what it already has as busy.
    pub(super) fn attach(&self, activity: &Activity) {
        let mut state = self.state.load(Ordering::SeqCst);
        loop {
            let pending = count_of(state);
            // Raised before the flag is set: over-count for an instant, never under.
            activity.raise(pending);
            match self.state.compare_exchange(
                state,
                state | ATTACHED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return,
                Err(actual) => {
                    activity.lower(pending);
                    state = actual;
                }
            }
        }
    }

    /// Marks the group away: what it has no longer keeps the bus busy, and its name is
    /// free for the next subscription.
    pub(super) fn detach(&self, activity: &Activity) {
        let before = self.state.fetch_and(!ATTACHED, Ordering::SeqCst);
        self.claimed.store(false, Ordering::SeqCst);
        // Last, so a woken `wait_idle` already sees the name free.
        activity.lower(count_of(before));
    }
}

fn count_of(state: u64) -> usize {
    usize::try_from(state & COUNT).unwrap_or(usize::MAX)
}
