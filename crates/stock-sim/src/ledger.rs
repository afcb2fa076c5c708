//! What Stock remembers per order, and the decisions taken against it. Pure state: no bus,
//! no clock (the caller passes `now`), so every rule is decided under its order's shard
//! lock and the answer is published after the lock is released. All state of one order
//! lives in one shard; sharding bounds the stall of any one table resize and lets handlers
//! of different orders run without contending for one lock.
//!
//! The ledger makes Stock an idempotent producer: an order is decided once and a repeated
//! question gets the recorded answer (the same `reservationId`), and a reservation is
//! released at most once, whatever the cancellation or refusal messages say.
//!
//! A reservation of an order's deterministic `reservationId` that this ledger does not
//! hold (another Stock process made it, or this one before it restarted with an empty
//! ledger) is released when `order.cancelled` or `order.reservation_refused` names it:
//! the id in the message is enough, since only a Stock process makes that id.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use chrono::{DateTime, TimeDelta, Utc};
use contracts::{
    OrderCancelled, OrderPaid, OrderReservationRefused, StockReleased, StockReservationFailed,
    StockReserved,
};
use parking_lot::{Mutex, MutexGuard};
use uuid::Uuid;

use crate::{StockConfig, retention::Shard};

/// The namespace of the name-based (v5) reservation ids: fixed forever, so that every
/// Stock process, before and after a restart, derives the same id for one order.
const RESERVATION_ID_NAMESPACE: Uuid = Uuid::from_u128(0x9b47_03de_61a2_4c85_b7f0_2e9d_58c1_a634);

/// The `reservationId` Stock gives the reservation of `order_id`: a name-based UUID (v5)
/// of the order id. Deterministic, so a redelivered or repeated `order.paid` gets the same
/// `reservationId` from any Stock process, even one that restarted with an empty ledger
/// or forgot the order after the idempotency window: Orders sees a duplicate, never a
/// second reservation.
#[must_use]
pub fn reservation_id_for(order_id: Uuid) -> String {
    Uuid::new_v5(&RESERVATION_ID_NAMESPACE, order_id.as_bytes()).to_string()
}

/// How many shards the per-order records are spread over.
const SHARDS: usize = 64;

/// Every order Stock has heard of within the idempotency window, and how many decisions
/// of each kind it took.
#[derive(Debug)]
pub(crate) struct Ledger {
    /// The orders, sharded by order id; see [`Ledger::shard`].
    shards: Box<[Mutex<Shard<Record>>]>,
    /// How long an order is remembered after it was last asked about.
    window: TimeDelta,
    /// The next shard to sweep for expired orders, besides the one being decided on.
    sweep: AtomicUsize,
    /// Counters, incremented while the deciding shard lock is held.
    reserved: AtomicUsize,
    failed: AtomicUsize,
    released: AtomicUsize,
    forgotten: AtomicUsize,
}

/// What Stock knows about one order.
#[derive(Debug)]
enum Record {
    /// Items set aside; possibly released since.
    Reserved(Reservation),
    /// Could not reserve; a repeated question gets the same answer.
    Failed(StockReservationFailed),
    /// Cancelled before Stock saw it paid: it must never be reserved.
    CancelledUnreserved,
}

#[derive(Debug)]
struct Reservation {
    /// The reservation as first published, re-sent verbatim when asked again.
    reserved: StockReserved,
    /// Whether this ledger reserved it. `false` for a reservation of this order's
    /// deterministic `reservationId` that another Stock process (or this one, before it
    /// lost its ledger) made, and this one released when a message named it; then
    /// `reserved` is made up from that message and has no items.
    reserved_here: bool,
    /// The release, once done.
    release: Option<Release>,
}

#[derive(Debug)]
struct Release {
    message: StockReleased,
    /// Whether `stock.released` reached the bus. Until it did, a redelivered
    /// `order.cancelled` publishes the same release again (never a second release).
    announced: bool,
}

/// The answer to an `order.paid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PaidAnswer {
    /// Publish `stock.reserved`. `first` is false when re-sending a recorded reservation.
    Reserve { message: StockReserved, first: bool },
    /// Publish `stock.reservation_failed`. `first` is false when re-sending it.
    Fail {
        message: StockReservationFailed,
        first: bool,
    },
    /// Publish nothing: the reservation was released already; announcing it again would
    /// contradict the release.
    AlreadyReleased { reservation_id: String },
}

/// The answer to an `order.cancelled` or an `order.reservation_refused`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReleaseAnswer {
    /// Publish `stock.released`. `first` is false when the release was done before but its
    /// announcement did not reach the bus.
    Release { message: StockReleased, first: bool },
    /// Publish nothing: released and announced before.
    AlreadyReleased { reservation_id: String },
    /// Publish nothing: Stock holds no reservation for this order.
    NothingReserved,
    /// Publish nothing: the refused reservation is not the one Stock made for this order
    /// (`ours`), so Stock has nothing of it to give back; its own stays.
    NotOurs { ours: String },
}

impl Ledger {
    /// An empty ledger that forgets an order `window` after it was last asked about.
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            window: TimeDelta::from_std(window).unwrap_or(TimeDelta::MAX),
            sweep: AtomicUsize::new(0),
            reserved: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            released: AtomicUsize::new(0),
            forgotten: AtomicUsize::new(0),
        }
    }

    /// Decides `order` once; afterwards returns the recorded answer.
    pub(crate) fn on_paid(
        &self,
        order: &OrderPaid,
        config: &StockConfig,
        now: DateTime<Utc>,
    ) -> PaidAnswer {
        let mut orders = self.shard_at(order.order_id, now);
        match orders.get_mut(&order.order_id) {
            Some(Record::Reserved(reservation)) => match &reservation.release {
                Some(release) => PaidAnswer::AlreadyReleased {
                    reservation_id: release.message.reservation_id.clone(),
                },
                None => PaidAnswer::Reserve {
                    message: reservation.reserved.clone(),
                    first: false,
                },
            },
            Some(Record::Failed(message)) => PaidAnswer::Fail {
                message: message.clone(),
                first: false,
            },
            Some(record @ Record::CancelledUnreserved) => {
                let message = StockReservationFailed {
                    order_id: order.order_id,
                    reason: "the order was cancelled before stock was reserved".to_owned(),
                    timestamp: now,
                };
                *record = Record::Failed(message.clone());
                self.failed.fetch_add(1, Ordering::Relaxed);
                PaidAnswer::Fail {
                    message,
                    first: true,
                }
            }
            None => match config.shortage(&order.items) {
                Some(reason) => {
                    let message = StockReservationFailed {
                        order_id: order.order_id,
                        reason,
                        timestamp: now,
                    };
                    orders.insert(order.order_id, Record::Failed(message.clone()), now);
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    PaidAnswer::Fail {
                        message,
                        first: true,
                    }
                }
                None => {
                    let message = StockReserved {
                        order_id: order.order_id,
                        reservation_id: reservation_id_for(order.order_id),
                        items: order.items.clone(),
                        timestamp: now,
                    };
                    orders.insert(
                        order.order_id,
                        Record::Reserved(Reservation {
                            reserved: message.clone(),
                            reserved_here: true,
                            release: None,
                        }),
                        now,
                    );
                    self.reserved.fetch_add(1, Ordering::Relaxed);
                    PaidAnswer::Reserve {
                        message,
                        first: true,
                    }
                }
            },
        }
    }

    /// Releases what Stock reserved for the cancelled order, once. Decides on its own
    /// records, not on the message's `reservationId`: an order cancelled while paid may
    /// have been reserved concurrently. Only when it holds no reservation of the order and
    /// the message names the order's deterministic `reservationId` (made by another Stock
    /// process, or by this one before a restart) is that reservation released.
    pub(crate) fn on_cancelled(
        &self,
        cancelled: &OrderCancelled,
        now: DateTime<Utc>,
    ) -> ReleaseAnswer {
        let order_id = cancelled.order_id;
        let mut orders = self.shard_at(order_id, now);
        match orders.get_mut(&order_id) {
            Some(Record::Reserved(reservation)) => self.release_once(reservation, now),
            _ if cancelled.reservation_id.as_deref() == Some(&reservation_id_for(order_id)) => {
                self.release_made_elsewhere(&mut orders, order_id, now)
            }
            Some(Record::Failed(_) | Record::CancelledUnreserved) => ReleaseAnswer::NothingReserved,
            None => {
                orders.insert(order_id, Record::CancelledUnreserved, now);
                ReleaseAnswer::NothingReserved
            }
        }
    }

    /// Releases the reservation Orders refused, once. Only the named reservation: a
    /// refusal of a reservation Stock did not make leaves its own alone. A reservation of
    /// this order's deterministic `reservationId` that this ledger does not hold was made
    /// by another Stock process, or by this one before it lost its ledger: it is released,
    /// and remembered as released (a later `order.paid` for the order reserves nothing).
    pub(crate) fn on_refused(
        &self,
        refused: &OrderReservationRefused,
        now: DateTime<Utc>,
    ) -> ReleaseAnswer {
        let order_id = refused.order_id;
        let mut orders = self.shard_at(order_id, now);
        match orders.get_mut(&order_id) {
            Some(Record::Reserved(reservation))
                if reservation.reserved.reservation_id == refused.reservation_id =>
            {
                self.release_once(reservation, now)
            }
            Some(Record::Reserved(reservation)) => ReleaseAnswer::NotOurs {
                ours: reservation.reserved.reservation_id.clone(),
            },
            _ if refused.reservation_id == reservation_id_for(order_id) => {
                self.release_made_elsewhere(&mut orders, order_id, now)
            }
            _ => ReleaseAnswer::NothingReserved,
        }
    }

    /// Releases the reservation of `order_id`'s deterministic `reservationId` that this
    /// ledger did not make, and records it (replacing what the ledger knew of the order)
    /// as released.
    fn release_made_elsewhere(
        &self,
        orders: &mut Shard<Record>,
        order_id: Uuid,
        now: DateTime<Utc>,
    ) -> ReleaseAnswer {
        let mut reservation = Reservation {
            reserved: StockReserved {
                order_id,
                reservation_id: reservation_id_for(order_id),
                items: Vec::new(),
                timestamp: now,
            },
            reserved_here: false,
            release: None,
        };
        let answer = self.release_once(&mut reservation, now);
        orders.insert(order_id, Record::Reserved(reservation), now);
        answer
    }

    /// Releases `reservation` unless it was released before; then re-sends the release
    /// whose announcement did not reach the bus, or answers that it was announced.
    fn release_once(&self, reservation: &mut Reservation, now: DateTime<Utc>) -> ReleaseAnswer {
        match &reservation.release {
            Some(release) if release.announced => ReleaseAnswer::AlreadyReleased {
                reservation_id: release.message.reservation_id.clone(),
            },
            Some(release) => ReleaseAnswer::Release {
                message: release.message.clone(),
                first: false,
            },
            None => {
                let message = StockReleased {
                    order_id: reservation.reserved.order_id,
                    reservation_id: reservation.reserved.reservation_id.clone(),
                    timestamp: now,
                };
                reservation.release = Some(Release {
                    message: message.clone(),
                    announced: false,
                });
                self.released.fetch_add(1, Ordering::Relaxed);
                ReleaseAnswer::Release {
                    message,
                    first: true,
                }
            }
        }
    }

    /// Notes that the release for `order_id` reached the bus.
    pub(crate) fn release_announced(&self, order_id: Uuid) {
        if let Some(Record::Reserved(Reservation {
            release: Some(release),
            ..
        })) = self.shard(order_id).get_mut(&order_id)
        {
            release.announced = true;
        }
    }

    pub(crate) fn reserved_count(&self) -> usize {
        self.reserved.load(Ordering::Relaxed)
    }

    pub(crate) fn failed_count(&self) -> usize {
        self.failed.load(Ordering::Relaxed)
    }

    pub(crate) fn released_count(&self) -> usize {
        self.released.load(Ordering::Relaxed)
    }

    /// The releases done for `order_id`: 0 or 1.
    pub(crate) fn releases_for(&self, order_id: Uuid) -> usize {
        match self.shard(order_id).get(&order_id) {
            Some(Record::Reserved(Reservation {
                release: Some(_), ..
            })) => 1,
            _ => 0,
        }
    }

    /// The `reservationId` this ledger reserved for `order_id`, if any.
    pub(crate) fn reservation_for(&self, order_id: Uuid) -> Option<String> {
        match self.shard(order_id).get(&order_id) {
            Some(Record::Reserved(reservation)) if reservation.reserved_here => {
                Some(reservation.reserved.reservation_id.clone())
            }
            _ => None,
        }
    }

    /// The reservations this ledger made for `order_id` less the releases it did for it:
    /// 1 while held, 0 when never reserved or reserved and released, -1 when it released
    /// a reservation another Stock process made.
    pub(crate) fn net_reservations_for(&self, order_id: Uuid) -> i64 {
        match self.shard(order_id).get(&order_id) {
            Some(Record::Reserved(reservation)) => {
                i64::from(reservation.reserved_here) - i64::from(reservation.release.is_some())
            }
            _ => 0,
        }
    }

    /// Forgets every order not asked about since `now` less the window; returns how
    /// many.
    pub(crate) fn prune(&self, now: DateTime<Utc>) -> usize {
        let Some(cutoff) = now.checked_sub_signed(self.window) else {
            return 0;
        };
        let forgotten = self.shards.iter().map(|s| s.lock().prune(cutoff)).sum();
        self.forgotten.fetch_add(forgotten, Ordering::Relaxed);
        forgotten
    }

    /// How many orders are remembered.
    pub(crate) fn remembered(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// How many orders were forgotten after the window.
    pub(crate) fn forgotten_count(&self) -> usize {
        self.forgotten.load(Ordering::Relaxed)
    }

    /// Locks the shard holding `order_id` to decide about it `now`: first forgets the
    /// expired orders of that shard and of one other (in turn, so a shard that no message
    /// reaches still forgets), then notes that `order_id` was asked about.
    fn shard_at(&self, order_id: Uuid, now: DateTime<Utc>) -> MutexGuard<'_, Shard<Record>> {
        let index = Self::index(order_id);
        let cutoff = now.checked_sub_signed(self.window);
        if let Some(cutoff) = cutoff {
            let other = self.sweep.fetch_add(1, Ordering::Relaxed) % SHARDS;
            if other != index {
                let forgotten = self.shards[other].lock().prune(cutoff);
                self.forgotten.fetch_add(forgotten, Ordering::Relaxed);
            }
        }
        let mut shard = self.shard(order_id);
        if let Some(cutoff) = cutoff {
            let forgotten = shard.prune(cutoff);
            self.forgotten.fetch_add(forgotten, Ordering::Relaxed);
        }
        shard.touch(order_id, now);
        shard
    }

    /// Locks the shard holding `order_id`. Every record of one order lives in that
    /// shard, so holding its lock is enough to decide anything about the order.
    fn shard(&self, order_id: Uuid) -> MutexGuard<'_, Shard<Record>> {
        // Not poisoned by a panic elsewhere: every update is a handful of assignments
        // with no await, so a panic in another handler cannot leave a record half-done.
        self.shards[Self::index(order_id)].lock()
    }

    fn index(order_id: Uuid) -> usize {
        // Order ids end in random bits (v7, or v4 from elsewhere): the low bits spread
        // orders evenly.
        (order_id.as_u128() % SHARDS as u128) as usize
    }
}
