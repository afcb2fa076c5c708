//! Idle accounting: how many messages are queued or in hand for attached groups, so
//! [`InMemoryBus::wait_idle`](super::InMemoryBus::wait_idle) knows when everything,
//! follow-ups included, has been handled.
//!
//! Every change raises the count before and lowers it after the group's own count
//! changes, so it may over-count for an instant but never under-counts: `wait_idle`
//! cannot return while a message (or a follow-up published by a handler) is pending.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use tokio::sync::Notify;

use super::DecrementOnDrop;

/// The bus-wide count of pending messages, and the waiters for it to reach zero.
pub(super) struct Activity {
    /// Messages queued or in hand for attached groups. May over-count for an instant,
    /// never under-counts: the bus is idle when this is 0.
    busy: AtomicUsize,
    /// Tasks inside `wait_idle`, so the hot path skips `idle` when nobody waits.
    waiters: AtomicUsize,
    /// Woken when `busy` reaches zero.
    idle: Notify,
}

impl Activity {
    /// Nothing pending, nobody waiting.
    pub(super) fn new() -> Self {
        Self {
            busy: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }

    /// `n` more messages are pending (raised before the group's own count).
    pub(super) fn raise(&self, n: usize) {
        self.busy.fetch_add(n, Ordering::SeqCst);
    }

    /// `n` fewer messages are pending; wakes `wait_idle` when none is left.
    pub(super) fn lower(&self, n: usize) {
        if self.busy.fetch_sub(n, Ordering::SeqCst) == n && self.waiters.load(Ordering::SeqCst) > 0
        {
            self.idle.notify_waiters();
        }
    }

    /// Whether nothing is pending.
    pub(super) fn is_idle(&self) -> bool {
        self.busy.load(Ordering::SeqCst) == 0
    }

    /// Waits until [`Activity::is_idle`], or `timeout` passes. Returns whether idle.
    pub(super) async fn wait_idle(&self, timeout: Duration) -> bool {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiter = DecrementOnDrop(&self.waiters);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Created before the check: `notify_waiters` reaches it from here on.
            let notified = self.idle.notified();
            if self.is_idle() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_idle();
            }
        }
    }
}
