//! What Stock remembers per order, and the decisions taken against it. Pure state: no bus,
//! no clock (the caller passes `now`), so every rule is decided under one lock and the
//! answer is published after the lock is released.
//!
//! The ledger makes Stock an idempotent producer: an order is decided once and a repeated
//! question gets the recorded answer (the same `reservationId`), and a reservation is
//! released at most once, whatever the cancellation message says.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard, PoisonError},
};

use chrono::{DateTime, Utc};
use contracts::{OrderCancelled, OrderPaid, StockReleased, StockReservationFailed, StockReserved};
use uuid::Uuid;

use crate::StockConfig;

/// Every order Stock has heard of, and how many decisions of each kind it took.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    orders: HashMap<Uuid, Record>,
    reserved: usize,
    failed: usize,
    released: usize,
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

/// The answer to an `order.cancelled`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CancelledAnswer {
    /// Publish `stock.released`. `first` is false when the release was done before but its
    /// announcement did not reach the bus.
    Release { message: StockReleased, first: bool },
    /// Publish nothing: released and announced before.
    AlreadyReleased { reservation_id: String },
    /// Publish nothing: Stock holds no reservation for this order.
    NothingReserved,
}

impl Ledger {
    /// Decides `order` once; afterwards returns the recorded answer.
    pub(crate) fn on_paid(
        &self,
        order: &OrderPaid,
        config: &StockConfig,
        now: DateTime<Utc>,
    ) -> PaidAnswer {
        let mut state = self.lock();
        let State {
            orders,
            reserved,
            failed,
            ..
        } = &mut *state;
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
                *failed += 1;
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
                    orders.insert(order.order_id, Record::Failed(message.clone()));
                    *failed += 1;
                    PaidAnswer::Fail {
                        message,
                        first: true,
                    }
                }
                None => {
                    let message = StockReserved {
                        order_id: order.order_id,
                        reservation_id: Uuid::new_v4().to_string(),
                        items: order.items.clone(),
                        timestamp: now,
                    };
                    orders.insert(
                        order.order_id,
                        Record::Reserved(Reservation {
                            reserved: message.clone(),
                            release: None,
                        }),
                    );
                    *reserved += 1;
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
    /// have been reserved concurrently.
    pub(crate) fn on_cancelled(
        &self,
        cancelled: &OrderCancelled,
        now: DateTime<Utc>,
    ) -> CancelledAnswer {
        let mut state = self.lock();
        let State {
            orders, released, ..
        } = &mut *state;
        match orders.get_mut(&cancelled.order_id) {
            Some(Record::Reserved(reservation)) => match &reservation.release {
                Some(release) if release.announced => CancelledAnswer::AlreadyReleased {
                    reservation_id: release.message.reservation_id.clone(),
                },
                Some(release) => CancelledAnswer::Release {
                    message: release.message.clone(),
                    first: false,
                },
                None => {
                    let message = StockReleased {
                        order_id: cancelled.order_id,
                        reservation_id: reservation.reserved.reservation_id.clone(),
                        timestamp: now,
                    };
                    reservation.release = Some(Release {
                        message: message.clone(),
                        announced: false,
                    });
                    *released += 1;
                    CancelledAnswer::Release {
                        message,
                        first: true,
                    }
                }
            },
            Some(Record::Failed(_) | Record::CancelledUnreserved) => {
                CancelledAnswer::NothingReserved
            }
            None => {
                orders.insert(cancelled.order_id, Record::CancelledUnreserved);
                CancelledAnswer::NothingReserved
            }
        }
    }

    /// Notes that the release for `order_id` reached the bus.
    pub(crate) fn release_announced(&self, order_id: Uuid) {
        if let Some(Record::Reserved(Reservation {
            release: Some(release),
            ..
        })) = self.lock().orders.get_mut(&order_id)
        {
            release.announced = true;
        }
    }

    pub(crate) fn reserved_count(&self) -> usize {
        self.lock().reserved
    }

    pub(crate) fn failed_count(&self) -> usize {
        self.lock().failed
    }

    pub(crate) fn released_count(&self) -> usize {
        self.lock().released
    }

    /// The releases done for `order_id`: 0 or 1.
    pub(crate) fn releases_for(&self, order_id: Uuid) -> usize {
        match self.lock().orders.get(&order_id) {
            Some(Record::Reserved(Reservation {
                release: Some(_), ..
            })) => 1,
            _ => 0,
        }
    }

    /// The `reservationId` made for `order_id`, if any.
    pub(crate) fn reservation_for(&self, order_id: Uuid) -> Option<String> {
        match self.lock().orders.get(&order_id) {
            Some(Record::Reserved(reservation)) => {
                Some(reservation.reserved.reservation_id.clone())
            }
            _ => None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a handful of assignments with no await; a panic in another
        // handler cannot leave it half-done, so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
