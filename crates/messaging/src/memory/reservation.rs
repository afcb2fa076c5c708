//! Room for one publish. A publish first reserves room in every group it goes to, then
//! queues the message everywhere at once: it is accepted by all its groups or by none.
//! When a group is full, the [`OverflowPolicy`] decides: wait for room (backpressure) or
//! refuse with [`BusError::BacklogFull`]. Either way the overflow is logged once per
//! episode (until the backlog has drained to half). Nothing is ever dropped silently.

use std::sync::{Arc, atomic::Ordering};

use super::{DecrementOnDrop, Inner, OverflowPolicy, group::Group};
use crate::{BusError, Envelope};

/// Room taken in the first `reserved` groups of `listeners` for one message. Given back
/// on drop unless committed: a refused or cancelled publish leaves no trace.
pub(super) struct Reservation<'a> {
    inner: &'a Inner,
    listeners: &'a [Arc<Group>],
    reserved: usize,
}

impl<'a> Reservation<'a> {
    /// No room taken yet in `listeners`.
    pub(super) fn new(inner: &'a Inner, listeners: &'a [Arc<Group>]) -> Self {
        Self::resume(inner, listeners, 0)
    }

    /// Room for one message in `listeners`, of which the first `reserved` groups already
    /// hold room for it (see [`Reservation::keep`]).
    pub(super) fn resume(inner: &'a Inner, listeners: &'a [Arc<Group>], reserved: usize) -> Self {
        Self {
            inner,
            listeners,
            reserved,
        }
    }

    /// Takes room in the groups in turn, without waiting, up to the first full one.
    /// Returns whether every group holds room now.
    pub(super) fn try_reserve_all(&mut self) -> bool {
        while let Some(group) = self.listeners.get(self.reserved) {
            if !group.try_reserve(&self.inner.activity, self.inner.config.backlog_limit) {
                return false;
            }
            self.reserved += 1;
        }
        true
    }

    /// Lets go of the reservation without giving its room back: returns how many groups
    /// hold room, for [`Reservation::resume`].
    pub(super) fn keep(mut self) -> usize {
        std::mem::take(&mut self.reserved)
    }

    /// Takes room in the groups not yet reserved, as the overflow policy says for each
    /// full one: wait for room, or refuse.
    async fn reserve_rest(&mut self) -> Result<(), BusError> {
        let inner = self.inner;
        while let Some(group) = self.listeners.get(self.reserved) {
            if !group.try_reserve(&inner.activity, inner.config.backlog_limit) {
                overflow_started(inner, group);
                match inner.config.overflow {
                    OverflowPolicy::Reject => return Err(full(inner, group)),
                    OverflowPolicy::Backpressure => reserve_waiting(inner, group).await,
                }
            }
            self.reserved += 1;
        }
        Ok(())
    }

    /// Queues the message in every reserved group; `hash` picks the lane.
    pub(super) fn commit(mut self, hash: u64, envelope: Envelope) -> Result<(), BusError> {
        let listeners = self.listeners;
        let groups = &listeners[..std::mem::take(&mut self.reserved)];
        let envelope = Arc::new(envelope);
        let mut result = Ok(());
        for group in groups {
            let lane = &group.lanes[group.assign(hash)];
            if lane.tx.send(envelope.clone()).is_err() {
                // Cannot happen: a lane's receiver is always held or parked.
                tracing::error!(subscriber = %group.name, "lane closed: message not queued");
                group.unassign(hash);
                group.release(&self.inner.activity, self.inner.config.backlog_limit);
                result = Err(BusError::Closed);
            }
        }
        result
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        for group in &self.listeners[..self.reserved] {
            group.release(&self.inner.activity, self.inner.config.backlog_limit);
        }
    }
}

/// Queues `envelope` for every group of `listeners`, or for none, waiting for room or
/// refusing as the overflow policy says. `hash` picks the lane. The first `reserved`
/// groups already hold room for it.
pub(super) async fn deliver(
    inner: &Inner,
    listeners: &[Arc<Group>],
    reserved: usize,
    hash: u64,
    envelope: Envelope,
) -> Result<(), BusError> {
    let mut reservation = Reservation::resume(inner, listeners, reserved);
    reservation.reserve_rest().await?;
    reservation.commit(hash, envelope)
}

/// Logs the start of an overflow episode of `group`.
fn overflow_started(inner: &Inner, group: &Group) {
    if group.overflowing.swap(true, Ordering::AcqRel) {
        return;
    }
    let limit = inner.config.backlog_limit;
    match inner.config.overflow {
        OverflowPolicy::Reject => tracing::error!(subscriber = %group.name, limit,
            "backlog full: publishes are refused until the subscriber catches up"),
        OverflowPolicy::Backpressure => tracing::warn!(subscriber = %group.name, limit,
            "backlog full: publishers wait until the subscriber catches up"),
    }
}

/// Waits until `group` has room, and takes it. Cancel-safe: nothing is held while
/// waiting.
async fn reserve_waiting(inner: &Inner, group: &Group) {
    group.waiting.fetch_add(1, Ordering::SeqCst);
    let _waiting = DecrementOnDrop(&group.waiting);
    loop {
        let notified = group.room.notified();
        tokio::pin!(notified);
        // Registered before the check, so a release in between is not missed.
        notified.as_mut().enable();
        if group.try_reserve(&inner.activity, inner.config.backlog_limit) {
            return;
        }
        notified.await;
    }
}

fn full(inner: &Inner, group: &Group) -> BusError {
    BusError::BacklogFull {
        subscriber: group.name.clone(),
        limit: inner.config.backlog_limit,
    }
}
