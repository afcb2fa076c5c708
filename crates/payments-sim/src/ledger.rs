//! What Payments remembers per order, and the decisions taken against it. Pure state: no
//! bus, no clock (the caller passes `now`), so every rule is decided under its order's
//! shard lock and the answer is published after the lock is released. All state of one
//! order lives in one shard; sharding bounds the stall of any one table resize and lets
//! handlers of different orders run without contending for one lock. An order not asked
//! about for longer than the idempotency window is forgotten (see [`crate::retention`]).
//!
//! The ledger makes Payments an idempotent producer: an order is decided once and a
//! repeated question gets the recorded answer (the same `paymentId`), and a payment is
//! refunded at most once, whatever the cancellation or refusal messages say.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use chrono::{DateTime, TimeDelta, Utc};
use contracts::{
    OrderCancelled, OrderPaymentRefused, OrderPlaced, PaymentApproved, PaymentDeclined,
    PaymentRefunded,
};
use parking_lot::{Mutex, MutexGuard};
use uuid::Uuid;

use crate::{PaymentDecision, retention::Shard};

/// The namespace of the name-based (v5) payment ids: fixed forever, so that every
/// Payments process, before and after a restart, derives the same id for one order.
const PAYMENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5c2e_8a41_7d0b_4f6e_9a13_c4d7_e2b8_0f51);

/// The approval a cancellation names when the order was paid with its deterministic
/// `paymentId` and the message carries the amount: what a Payments process that lost
/// its ledger needs to refund it. `None` for an unpaid order, another payment, or a
/// cancellation from before `paidAmount` existed.
fn forgotten_payment(cancelled: &OrderCancelled) -> Option<PaymentApproved> {
    let payment_id = cancelled.payment_id.as_ref()?;
    if *payment_id != payment_id_for(cancelled.order_id) {
        return None;
    }
    Some(PaymentApproved {
        order_id: cancelled.order_id,
        payment_id: payment_id.clone(),
        approved_amount: cancelled.paid_amount?,
        currency: cancelled.currency.clone()?,
        timestamp: cancelled.timestamp,
    })
}

/// The `paymentId` Payments gives the charge of `order_id`: a name-based UUID (v5) of the
/// order id. Deterministic, so a redelivered or repeated `order.placed` gets the same
/// `paymentId` from any Payments process, even one that restarted with an empty ledger
/// or forgot the order after the idempotency window: Orders sees a duplicate, never a
/// second payment.
#[must_use]
pub fn payment_id_for(order_id: Uuid) -> String {
    Uuid::new_v5(&PAYMENT_ID_NAMESPACE, order_id.as_bytes()).to_string()
}

/// How many shards the per-order records are spread over.
const SHARDS: usize = 64;

/// Every order Payments has heard of within the idempotency window, and how many
/// decisions of each kind it took.
#[derive(Debug)]
pub(crate) struct Ledger {
    /// The orders, sharded by order id; see [`Ledger::shard`].
    shards: Box<[Mutex<Shard<Record>>]>,
    /// How long an order is remembered after it was last asked about.
    window: TimeDelta,
    /// The next shard to sweep for expired orders, besides the one being decided on.
    sweep: AtomicUsize,
    /// Counters, incremented while the deciding shard lock is held.
    approved: AtomicUsize,
    declined: AtomicUsize,
    refunded: AtomicUsize,
    forgotten: AtomicUsize,
}

/// What Payments knows about one order.
#[derive(Debug)]
enum Record {
    /// Charged; possibly refunded since.
    Approved(Payment),
    /// Refused; a repeated question gets the same refusal.
    Declined(PaymentDeclined),
    /// Cancelled before Payments saw it placed: it must never be charged.
    CancelledUnpaid,
}

#[derive(Debug)]
struct Payment {
    /// The approval as first published, re-sent verbatim when asked again.
    approval: PaymentApproved,
    /// Whether this ledger charged it. `false` for a payment of this order's
    /// deterministic `paymentId` that another Payments process (or this one, before it
    /// lost its ledger) charged, and this one refunded on `order.payment_refused`.
    charged_here: bool,
    /// The refund, once issued.
    refund: Option<Refund>,
}

#[derive(Debug)]
struct Refund {
    message: PaymentRefunded,
    /// Whether `payment.refunded` reached the bus. Until it did, a redelivered
    /// `order.cancelled` publishes the same refund again (never a second refund).
    announced: bool,
}

/// The answer to an `order.placed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PlacedAnswer {
    /// Publish `payment.approved`. `first` is false when re-sending a recorded approval.
    Approve {
        message: PaymentApproved,
        first: bool,
    },
    /// Publish `payment.declined`. `first` is false when re-sending a recorded refusal.
    Decline {
        message: PaymentDeclined,
        first: bool,
    },
    /// Publish nothing: the order was charged and refunded already; approving it again
    /// would contradict the refund.
    AlreadyRefunded { payment_id: String },
}

/// The answer to an `order.cancelled` or an `order.payment_refused`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RefundAnswer {
    /// Publish `payment.refunded`. `first` is false when the refund was issued before but
    /// its announcement did not reach the bus.
    Refund {
        message: PaymentRefunded,
        first: bool,
    },
    /// Publish nothing: refunded and announced before.
    AlreadyRefunded { payment_id: String },
    /// Publish nothing: Payments never charged this order.
    NothingCharged,
    /// Publish nothing: the refused payment is not the one Payments charged for this
    /// order (`ours`), so Payments has nothing of it to give back; its own stays.
    NotOurs { ours: String },
}

impl Ledger {
    /// An empty ledger that forgets an order `window` after it was last asked about.
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            window: TimeDelta::from_std(window).unwrap_or(TimeDelta::MAX),
            sweep: AtomicUsize::new(0),
            approved: AtomicUsize::new(0),
            declined: AtomicUsize::new(0),
            refunded: AtomicUsize::new(0),
            forgotten: AtomicUsize::new(0),
        }
    }

    /// Decides `order` once; afterwards returns the recorded answer.
    pub(crate) fn on_placed(
        &self,
        order: &OrderPlaced,
        decision: &PaymentDecision,
        now: DateTime<Utc>,
    ) -> PlacedAnswer {
        let mut orders = self.shard_at(order.order_id, now);
        match orders.get_mut(&order.order_id) {
            Some(Record::Approved(payment)) => match &payment.refund {
                Some(_) => PlacedAnswer::AlreadyRefunded {
                    payment_id: payment.approval.payment_id.clone(),
                },
                None => PlacedAnswer::Approve {
                    message: payment.approval.clone(),
                    first: false,
                },
            },
            Some(Record::Declined(message)) => PlacedAnswer::Decline {
                message: message.clone(),
                first: false,
            },
            Some(record @ Record::CancelledUnpaid) => {
                let message = PaymentDeclined {
                    order_id: order.order_id,
                    reason: "the order was cancelled before it was charged".to_owned(),
                    timestamp: now,
                };
                *record = Record::Declined(message.clone());
                self.declined.fetch_add(1, Ordering::Relaxed);
                PlacedAnswer::Decline {
                    message,
                    first: true,
                }
            }
            None => match decision.decline_reason(order.total_amount, &order.currency) {
                Some(reason) => {
                    let message = PaymentDeclined {
                        order_id: order.order_id,
                        reason,
                        timestamp: now,
                    };
                    orders.insert(order.order_id, Record::Declined(message.clone()), now);
                    self.declined.fetch_add(1, Ordering::Relaxed);
                    PlacedAnswer::Decline {
                        message,
                        first: true,
                    }
                }
                None => {
                    let approval = PaymentApproved {
                        order_id: order.order_id,
                        payment_id: payment_id_for(order.order_id),
                        approved_amount: order.total_amount,
                        currency: order.currency.clone(),
                        timestamp: now,
                    };
                    orders.insert(
                        order.order_id,
                        Record::Approved(Payment {
                            approval: approval.clone(),
                            charged_here: true,
                            refund: None,
                        }),
                        now,
                    );
                    self.approved.fetch_add(1, Ordering::Relaxed);
                    PlacedAnswer::Approve {
                        message: approval,
                        first: true,
                    }
                }
            },
        }
    }

    /// Refunds what Payments charged for the cancelled order, once. Decides on its own
    /// records, not on the message's `paymentId`: an order cancelled while awaiting
    /// payment may have been charged concurrently. An order this ledger does not hold
    /// whose cancellation names the order's deterministic `paymentId` with the amount it
    /// charged was paid by another Payments process, or by this one before it lost its
    /// ledger (a restart): it is refunded for that amount, and remembered as refunded.
    pub(crate) fn on_cancelled(
        &self,
        cancelled: &OrderCancelled,
        now: DateTime<Utc>,
    ) -> RefundAnswer {
        let mut orders = self.shard_at(cancelled.order_id, now);
        match orders.get_mut(&cancelled.order_id) {
            Some(Record::Approved(payment)) => self.refund_once(payment, now),
            Some(Record::Declined(_)) => RefundAnswer::NothingCharged,
            _ => match forgotten_payment(cancelled) {
                Some(approval) => {
                    let mut payment = Payment {
                        approval,
                        charged_here: false,
                        refund: None,
                    };
                    let answer = self.refund_once(&mut payment, now);
                    orders.insert(cancelled.order_id, Record::Approved(payment), now);
                    answer
                }
                None => {
                    orders.insert(cancelled.order_id, Record::CancelledUnpaid, now);
                    RefundAnswer::NothingCharged
                }
            },
        }
    }

    /// Refunds the payment Orders refused, once. Only the named payment: a refusal of a
    /// payment Payments did not make leaves its own charge alone. A payment of this
    /// order's deterministic `paymentId` that this ledger does not hold was charged by
    /// another Payments process, or by this one before it lost its ledger: it is refunded
    /// for the amount the refusal names, and remembered as refunded.
    pub(crate) fn on_refused(
        &self,
        refused: &OrderPaymentRefused,
        now: DateTime<Utc>,
    ) -> RefundAnswer {
        let mut orders = self.shard_at(refused.order_id, now);
        match orders.get_mut(&refused.order_id) {
            Some(Record::Approved(payment))
                if payment.approval.payment_id == refused.payment_id =>
            {
                self.refund_once(payment, now)
            }
            Some(Record::Approved(payment)) => RefundAnswer::NotOurs {
                ours: payment.approval.payment_id.clone(),
            },
            _ if refused.payment_id == payment_id_for(refused.order_id) => {
                let mut payment = Payment {
                    approval: PaymentApproved {
                        order_id: refused.order_id,
                        payment_id: refused.payment_id.clone(),
                        approved_amount: refused.amount,
                        currency: refused.currency.clone(),
                        timestamp: refused.timestamp,
                    },
                    charged_here: false,
                    refund: None,
                };
                let answer = self.refund_once(&mut payment, now);
                orders.insert(refused.order_id, Record::Approved(payment), now);
                answer
            }
            _ => RefundAnswer::NothingCharged,
        }
    }

    /// Refunds `payment` unless it was refunded before; then re-sends the refund whose
    /// announcement did not reach the bus, or answers that it was announced.
    fn refund_once(&self, payment: &mut Payment, now: DateTime<Utc>) -> RefundAnswer {
        match &payment.refund {
            Some(refund) if refund.announced => RefundAnswer::AlreadyRefunded {
                payment_id: refund.message.payment_id.clone(),
            },
            Some(refund) => RefundAnswer::Refund {
                message: refund.message.clone(),
                first: false,
            },
            None => {
                let message = PaymentRefunded {
                    order_id: payment.approval.order_id,
                    payment_id: payment.approval.payment_id.clone(),
                    amount: payment.approval.approved_amount,
                    currency: payment.approval.currency.clone(),
                    timestamp: now,
                };
                payment.refund = Some(Refund {
                    message: message.clone(),
                    announced: false,
                });
                self.refunded.fetch_add(1, Ordering::Relaxed);
                RefundAnswer::Refund {
                    message,
                    first: true,
                }
            }
        }
    }

    /// Notes that the refund of `order_id` reached the bus.
    pub(crate) fn refund_announced(&self, order_id: Uuid) {
        if let Some(Record::Approved(Payment {
            refund: Some(refund),
            ..
        })) = self.shard(order_id).get_mut(&order_id)
        {
            refund.announced = true;
        }
    }

    pub(crate) fn approved_count(&self) -> usize {
        self.approved.load(Ordering::Relaxed)
    }

    pub(crate) fn declined_count(&self) -> usize {
        self.declined.load(Ordering::Relaxed)
    }

    pub(crate) fn refunded_count(&self) -> usize {
        self.refunded.load(Ordering::Relaxed)
    }

    /// The refunds issued for `order_id`: 0 or 1.
    pub(crate) fn refunds_for(&self, order_id: Uuid) -> usize {
        match self.shard(order_id).get(&order_id) {
            Some(Record::Approved(Payment {
                refund: Some(_), ..
            })) => 1,
            _ => 0,
        }
    }

    /// The charges this ledger made for `order_id` less the refunds it issued for it:
    /// 1 while charged, 0 when never charged or charged and refunded, -1 when it refunded
    /// a payment another Payments process charged.
    pub(crate) fn net_charges_for(&self, order_id: Uuid) -> i64 {
        match self.shard(order_id).get(&order_id) {
            Some(Record::Approved(payment)) => {
                i64::from(payment.charged_here) - i64::from(payment.refund.is_some())
            }
            _ => 0,
        }
    }

    /// The `paymentId` approved for `order_id`, if any.
    pub(crate) fn payment_for(&self, order_id: Uuid) -> Option<String> {
        match self.shard(order_id).get(&order_id) {
            Some(Record::Approved(payment)) if payment.charged_here => {
                Some(payment.approval.payment_id.clone())
            }
            _ => None,
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
