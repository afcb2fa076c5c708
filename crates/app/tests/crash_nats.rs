//! Crash test over NATS: Orders (`app serve --bus nats://… --sims none`, on SQLite),
//! Payments and Stock run as OS processes on a private nats-server under HTTP load.
//! At random moments one of the three is killed with SIGKILL and restarted (at least
//! 20 kills a run), and the nats-server itself is killed and restarted (at least 3
//! times, with the load going on while it is down).
//!
//! Every tenth order is cancelled by its customer right after it is placed.
//!
//! Afterwards every order whose POST returned 201 (or whose retry with the same
//! Idempotency-Key did) reaches its final state (StockReserved, or Cancelled when
//! cancelled); on the broker each order has at most one distinct paymentId and one
//! reservation, and net charges (approved minus refunded payments) and held
//! reservations (reserved minus released) of one for a StockReserved order, none for a
//! Cancelled one (a reservation Stock made after the cancel is refused by Orders with
//! `order.reservation_refused` and released, also by a Stock that restarted with an empty
//! ledger); nothing is left unsent in the outbox or dead-lettered; and Orders'
//! store applied one payment and one reservation per StockReserved order. The test
//! prints its counts.
//!
//! Needs the nats-server binary (`ORDERS_NATS_SERVER`, `/usr/sbin/nats-server` or the
//! `PATH`); skipped with a printed reason without it, a failure when `CI` is set.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test: failing loudly is the point

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::TcpListener,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Broker, Orders, Role, checkout, count, distinct};
use contracts::topics;
use messaging_nats::testing::{self, NatsServer};
use orders_app::{Direction, HandlingOutcome, OrderStore as _, Outbox as _};
use orders_domain::{OrderId, OrderStatus};

/// Process kills a run makes at least (Orders, Payments and Stock together).
const PROCESS_KILLS: usize = 20;
/// Broker kills a run makes at least.
const BROKER_KILLS: usize = 3;
/// Clients placing orders at once.
const CLIENTS: usize = 4;
/// How long a process may take to start and connect.
const PROCESS: Duration = Duration::from_secs(30);
/// The processes' ack wait (`--bus-ack-wait-secs`): a message a killed process held is
/// redelivered this long after its last progress ack. Shorter than the default 30 s, so
/// the run converges sooner and live processes' progress acks (every third of it) are
/// put to the test under load.
const ACK_WAIT_SECS: &str = "5";
/// How long every confirmed order has to reach its final state once the kills end.
const CONVERGE: Duration = Duration::from_secs(90);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// xorshift: random but repeatable choices.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.roll(to - from))
    }
}

/// Every this many orders, the customer cancels right after placing it.
const CANCEL_EVERY: usize = 10;

/// What the clients learned: keys whose POST returned the order, keys still unanswered
/// when the load stopped (retried with the same key afterwards), and the cancellations
/// done and still to do.
#[derive(Default)]
struct Ledger {
    confirmed: BTreeMap<usize, String>,
    uncertain: BTreeSet<usize>,
    cancelled: BTreeSet<usize>,
    to_cancel: BTreeSet<usize>,
    attempts_failed: usize,
}

/// One attempt to cancel order `id`: done when Orders answers the cancel, or answers
/// 409 for an order that is Cancelled already (an earlier attempt whose answer was lost).
async fn cancel(orders: &Orders, id: &str) -> bool {
    match orders.cancel(id).await {
        Ok(_) => true,
        Err(e) if e.contains("409") => matches!(
            orders.order(id, None, Duration::ZERO).await,
            Ok(Some(order)) if order["status"] == "Cancelled"
        ),
        Err(_) => false,
    }
}

fn body(key: usize) -> serde_json::Value {
    checkout(
        &format!("crash-{key}"),
        &format!("sku-{}", key % 7),
        "19.99",
        u32::try_from(1 + key % 3).unwrap(),
    )
}

/// One client: places orders one after another, cancelling every
/// [`CANCEL_EVERY`]th at once; a POST that fails (Orders down, restarting, or answering
/// 5xx) is retried, a checkout with the same Idempotency-Key.
async fn client(
    orders: Orders,
    ledger: Arc<Mutex<Ledger>>,
    next: Arc<Mutex<usize>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        let key = {
            let mut n = next.lock().unwrap();
            *n += 1;
            *n
        };
        ledger.lock().unwrap().uncertain.insert(key);
        while !stop.load(Ordering::SeqCst) {
            match orders
                .place(&body(key), Some(&format!("crash-key-{key}")))
                .await
            {
                Ok(order) => {
                    let mut ledger = ledger.lock().unwrap();
                    ledger.uncertain.remove(&key);
                    ledger
                        .confirmed
                        .insert(key, order["orderId"].as_str().unwrap().to_owned());
                    if key % CANCEL_EVERY == 0 {
                        ledger.to_cancel.insert(key);
                    }
                    break;
                }
                Err(_) => {
                    ledger.lock().unwrap().attempts_failed += 1;
                    // tidy: allow(sleep) — a client backing off before it retries the
                    // same key while Orders is down (load, not a wait for the flow).
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        let id = {
            let ledger = ledger.lock().unwrap();
            ledger
                .to_cancel
                .contains(&key)
                .then(|| ledger.confirmed[&key].clone())
        };
        if let Some(id) = id {
            while !stop.load(Ordering::SeqCst) {
                if cancel(&orders, &id).await {
                    let mut ledger = ledger.lock().unwrap();
                    ledger.to_cancel.remove(&key);
                    ledger.cancelled.insert(key);
                    break;
                }
                ledger.lock().unwrap().attempts_failed += 1;
                // tidy: allow(sleep) — a client backing off before it retries the cancel
                // while Orders is down (load, not a wait for the flow).
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_and_the_broker_survive_repeated_sigkill_without_losing_or_doubling() {
    let test = "three_processes_and_the_broker_survive_repeated_sigkill_without_losing_or_doubling";
    if !testing::server_available(test) {
        return;
    }
    let started = Instant::now();
    let mut server = NatsServer::start()
        .await
        .expect("start a private nats-server");
    let url = server.url();
    let prefix = common::unique_prefix("crash");
    let data = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", data.path().join("orders.db").display());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let bus = [
        "--bus",
        url.as_str(),
        "--bus-prefix",
        prefix.as_str(),
        "--bus-ack-wait-secs",
        ACK_WAIT_SECS,
    ];
    let any_port = ["--listen", "127.0.0.1:0"];
    let mut roles = [
        Role::start(
            "orders",
            &[
                &[
                    "serve", "--sims", "none", "--store", &store, "--listen", &listen,
                ][..],
                &bus,
            ]
            .concat(),
        ),
        Role::start("payments", &[&["payments"][..], &bus, &any_port].concat()),
        Role::start("stock", &[&["stock"][..], &bus, &any_port].concat()),
    ];
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for role in &mut roles {
        role.ready(&http, PROCESS).await;
    }
    let orders = Orders {
        base: format!("http://{listen}"),
        client: http.clone(),
    };

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let next = Arc::new(Mutex::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(client(
                orders.clone(),
                ledger.clone(),
                next.clone(),
                stop.clone(),
            ))
        })
        .collect();

    let mut dice = Dice(0x5eed_cafe_f00d);
    let mut kills: BTreeMap<String, usize> = BTreeMap::new();
    let mut process_kills = 0;
    let mut broker_kills = 0;
    let mut round = 0;
    while process_kills < PROCESS_KILLS || broker_kills < BROKER_KILLS {
        round += 1;
        // tidy: allow(sleep) — the kill moment: a random point in the load.
        tokio::time::sleep(dice.millis(100, 400)).await;
        if round % 7 == 3 || (process_kills >= PROCESS_KILLS && broker_kills < BROKER_KILLS) {
            // The broker dies with the load going on, stays down a moment, comes back
            // on the same port and store folder; every process reconnects by itself.
            server.kill();
            broker_kills += 1;
            // tidy: allow(sleep) — how long the broker stays down (not a wait for a flow).
            tokio::time::sleep(dice.millis(100, 500)).await;
            server.restart().await.expect("restart nats-server");
            for role in &mut roles {
                role.ready(&http, PROCESS).await;
            }
        } else {
            let victim = &mut roles[usize::try_from(dice.roll(3)).unwrap()];
            victim.kill();
            *kills.entry(victim.name.clone()).or_default() += 1;
            process_kills += 1;
            victim.restart();
            victim.ready(&http, PROCESS).await;
        }
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let load_took = started.elapsed();

    // A real client retries what it is unsure of, with the same key.
    let uncertain: Vec<usize> = ledger.lock().unwrap().uncertain.iter().copied().collect();
    for key in uncertain {
        let order = orders
            .place(&body(key), Some(&format!("crash-key-{key}")))
            .await
            .unwrap_or_else(|e| panic!("retry of key {key}: {e}"));
        let mut ledger = ledger.lock().unwrap();
        ledger.uncertain.remove(&key);
        ledger
            .confirmed
            .insert(key, order["orderId"].as_str().unwrap().to_owned());
        if key % CANCEL_EVERY == 0 {
            ledger.to_cancel.insert(key);
        }
    }
    // … and the cancellations it did not see answered.
    let to_cancel: Vec<(usize, String)> = {
        let ledger = ledger.lock().unwrap();
        ledger
            .to_cancel
            .iter()
            .map(|key| (*key, ledger.confirmed[key].clone()))
            .collect()
    };
    for (key, id) in to_cancel {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cancel(&orders, &id).await {
            assert!(Instant::now() < deadline, "cancel of order {id}");
            // The cancel met a concurrent change of the order (409): wait for its next
            // change (a blocking read, at most half a second), then try again.
            let version = orders
                .order(&id, None, Duration::ZERO)
                .await
                .ok()
                .flatten()
                .and_then(|order| order["version"].as_u64());
            let _ = orders.order(&id, version, Duration::from_millis(500)).await;
        }
        let mut ledger = ledger.lock().unwrap();
        ledger.to_cancel.remove(&key);
        ledger.cancelled.insert(key);
    }
    // Each confirmed order with the final state it must reach.
    let (expected, failed_attempts): (Vec<(String, &str)>, usize) = {
        let ledger = ledger.lock().unwrap();
        (
            ledger
                .confirmed
                .iter()
                .map(|(key, id)| {
                    let end = if ledger.cancelled.contains(key) {
                        "Cancelled"
                    } else {
                        "StockReserved"
                    };
                    (id.clone(), end)
                })
                .collect(),
            ledger.attempts_failed,
        )
    };
    let ids: Vec<&String> = expected.iter().map(|(id, _)| id).collect();
    let cancelled = expected
        .iter()
        .filter(|(_, end)| *end == "Cancelled")
        .count();
    assert!(
        ids.len() >= 100,
        "too few orders to mean anything: {}",
        ids.len()
    );

    // Every confirmed order reaches its final state (blocking reads).
    let deadline = Instant::now() + CONVERGE;
    for (id, end) in &expected {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = orders.await_status(id, &[end], left).await {
            panic!(
                "{e}\n--- orders\n{}\n--- payments\n{}\n--- stock\n{}",
                roles[0].log(),
                roles[1].log(),
                roles[2].log()
            );
        }
    }
    let broker = Broker::connect(&url, &prefix).await;
    broker
        .settle(&[&orders], Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let converged = started.elapsed();

    // On the broker: at most one paymentId and one reservation per order; net charges
    // and held reservations of one for a StockReserved order, none for a Cancelled one.
    let by_order = broker.messages_by_order().await.unwrap();
    let mut redelivered_answers = 0;
    let mut refused_reservations = 0;
    for (id, end) in &expected {
        let messages = by_order.get(id).map(Vec::as_slice).unwrap_or_default();
        let approved = distinct(messages, topics::PAYMENT_APPROVED, "paymentId");
        let refunded = distinct(messages, topics::PAYMENT_REFUNDED, "paymentId");
        let reserved = distinct(messages, topics::STOCK_RESERVED, "reservationId");
        let released = distinct(messages, topics::STOCK_RELEASED, "reservationId");
        let held = usize::from(*end == "StockReserved");
        assert!(approved.len() <= 1, "order {id}: paymentIds {approved:?}");
        assert!(reserved.len() <= 1, "order {id}: reservations {reserved:?}");
        assert_eq!(
            approved.difference(&refunded).count(),
            held,
            "{end} order {id}: net charges (approved {approved:?}, refunded {refunded:?})"
        );
        assert_eq!(
            reserved.difference(&released).count(),
            held,
            "{end} order {id}: reservations held (reserved {reserved:?}, released {released:?})"
        );
        redelivered_answers += count(messages, topics::PAYMENT_APPROVED).saturating_sub(1)
            + count(messages, topics::STOCK_RESERVED).saturating_sub(1);
        refused_reservations += count(messages, topics::ORDER_RESERVATION_REFUSED);
    }
    let dead = broker.dead_letters().await.unwrap();
    assert_eq!(dead, 0, "messages dead-lettered");
    broker.close().await;

    // In Orders' store, once it stopped: nothing unsent; a StockReserved order placed,
    // paid and reserved once; a Cancelled one with at most one payment and reservation.
    roles[0].terminate(PROCESS).await;
    let sqlite = orders_store::SqliteOrderStore::connect(&store)
        .await
        .expect("open the stopped Orders' store");
    assert_eq!(
        sqlite.unsent().await.unwrap(),
        0,
        "outbox rows never published"
    );
    for (id, end) in &expected {
        let id: OrderId = id.parse().unwrap();
        let order = sqlite
            .load(id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("order {id} lost"));
        assert_eq!(order.status().as_str(), *end, "order {id}");
        let reserved = order.status() == OrderStatus::StockReserved;
        let history = sqlite.messages(id).await.unwrap();
        let applied = |topic: &str| {
            history
                .iter()
                .filter(|r| {
                    r.direction == Direction::Received
                        && r.topic == topic
                        && r.outcome == Some(HandlingOutcome::Applied)
                })
                .count()
        };
        if reserved {
            assert_eq!(order.version(), 3, "order {id}: placed, paid, reserved");
            assert_eq!(applied(topics::PAYMENT_APPROVED), 1, "order {id}: payments");
            assert_eq!(
                applied(topics::STOCK_RESERVED),
                1,
                "order {id}: reservations"
            );
        } else {
            assert!(
                applied(topics::PAYMENT_APPROVED) <= 1,
                "order {id}: payments"
            );
            assert!(
                applied(topics::STOCK_RESERVED) <= 1,
                "order {id}: reservations"
            );
        }
    }
    println!(
        "crash test over NATS: {} orders confirmed ({cancelled} cancelled by the customer), each \
         in its final state with at most one paymentId and one reservation, net charges one \
         per StockReserved order and none per Cancelled one; kills {kills:?} ({process_kills} processes), {broker_kills} broker \
         kills; {failed_attempts} failed POST attempts retried; {redelivered_answers} answers \
         published again after a restart (duplicates to Orders); {refused_reservations} \
         reservations refused by Orders and released; load {:.1} s, converged at \
         {:.1} s; outbox unsent 0, dead letters 0",
        ids.len(),
        load_took.as_secs_f64(),
        converged.as_secs_f64()
    );
    roles[1].terminate(PROCESS).await;
    roles[2].terminate(PROCESS).await;
}
