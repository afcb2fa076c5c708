//! The demo scenarios across processes: Orders (`app serve --bus nats://… --sims none`,
//! on SQLite), Payments (`app payments`) and Stock (`app stock`) as three OS processes
//! on one NATS JetStream server, each scenario under a subject prefix of its own. Every
//! scenario of `app::scenarios::all()` has a counterpart here ([`COUNTERPARTS`], matched
//! by name: a scenario without one fails the coverage test) that drives Orders over
//! HTTP, publishes stray messages with a bus of its own, and checks the same outcome:
//! the final status, the messages of the order on the broker, and how Orders handled
//! each (`GET /orders/{id}/messages`).
//!
//! A simulator the in-process story pauses is, here, one that answers late
//! (`--payments-delay-ms` / `--stock-delay-ms`: the customer's cancel comes first, and
//! the bus hands a process an order's messages in order), or one started later.
//!
//! Also here: 1,000 concurrent orders over HTTP spread over two Orders replicas on one
//! PostgreSQL database, with Payments and Stock as their own processes.
//!
//! The server's address comes from `ORDERS_TEST_NATS_URL`, PostgreSQL's from
//! `ORDERS_TEST_POSTGRES_URL` (skipped with a printed reason when unset, a failure when
//! `CI` is set). The streams a run created are deleted.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test: failing loudly is the point

mod common;

use std::{
    collections::{BTreeMap, HashSet},
    future::Future,
    pin::Pin,
    time::{Duration, Instant},
};

use common::{Broker, Cleanup, Orders, Role, checkout, count, distinct, outcomes};
use contracts::topics;
use messaging::{Envelope, MessageBus as _};
use messaging_nats::{NatsBus, NatsBusConfig, testing};
use orders_app::{Direction, OrderStore as _};
use serde_json::Value;
use uuid::Uuid;

/// How long one step of a scenario (a status, the system at rest) may take.
const STEP: Duration = Duration::from_secs(20);
/// How long a process may take to start or to stop.
const PROCESS: Duration = Duration::from_secs(30);
/// How late a "paused" simulator answers: time enough for the customer's cancel.
const LATE_MS: &str = "1500";

/// Held by each test that runs processes, so they run one after the other: a scenario
/// whose simulator answers late must not be starved by the 1,000-order load.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A scenario's cross-process counterpart: its name in `app::scenarios::all()` and the
/// story, given the server and a prefix of its own.
struct Counterpart {
    name: &'static str,
    run: fn(Setup) -> Pin<Box<dyn Future<Output = Report> + Send>>,
}

/// Every counterpart, in the order of `app::scenarios::all()`.
const COUNTERPARTS: &[Counterpart] = &[
    Counterpart {
        name: "happy path",
        run: |s| Box::pin(happy_path(s)),
    },
    Counterpart {
        name: "replayed payment.approved and stock.reserved",
        run: |s| Box::pin(replayed_messages(s)),
    },
    Counterpart {
        name: "cancel while AwaitingPayment",
        run: |s| Box::pin(cancel_awaiting_payment(s)),
    },
    Counterpart {
        name: "cancel while Paid",
        run: |s| Box::pin(cancel_paid(s)),
    },
    Counterpart {
        name: "cancel while StockReserved",
        run: |s| Box::pin(cancel_stock_reserved(s)),
    },
    Counterpart {
        name: "payment declined",
        run: |s| Box::pin(payment_declined(s)),
    },
    Counterpart {
        name: "out of stock after payment",
        run: |s| Box::pin(out_of_stock(s)),
    },
    Counterpart {
        name: "stock.reserved for an unpaid order",
        run: |s| Box::pin(stock_reserved_for_unpaid_order(s)),
    },
    Counterpart {
        name: "payment.approved for an unknown order",
        run: |s| Box::pin(payment_for_unknown_order(s)),
    },
    Counterpart {
        name: "payment after the deadline",
        run: |s| Box::pin(payment_after_the_deadline(s)),
    },
];

#[test]
fn every_demo_scenario_has_a_cross_process_counterpart() {
    let scenarios: Vec<&str> = app::scenarios::all().iter().map(|s| s.name).collect();
    let missing: Vec<&str> = scenarios
        .iter()
        .copied()
        .filter(|name| !COUNTERPARTS.iter().any(|c| c.name == *name))
        .collect();
    assert!(
        missing.is_empty(),
        "scenarios without a cross-process counterpart in crates/app/tests/cluster.rs: {missing:?}"
    );
    let names: HashSet<&str> = COUNTERPARTS.iter().map(|c| c.name).collect();
    assert_eq!(
        names.len(),
        COUNTERPARTS.len(),
        "two counterparts of one scenario"
    );
    let stale: Vec<&str> = COUNTERPARTS
        .iter()
        .map(|c| c.name)
        .filter(|name| !scenarios.contains(name))
        .collect();
    assert!(
        stale.is_empty(),
        "counterparts of scenarios that no longer exist: {stale:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_scenario_across_three_processes_over_nats() {
    let Some(url) = testing::test_url("every_demo_scenario_across_three_processes_over_nats")
    else {
        return;
    };
    let _turn = ONE_AT_A_TIME.lock().await;
    let run = common::unique_prefix("scn");
    let _cleanup = Cleanup {
        url: url.clone(),
        prefix: run.clone(),
    };
    let started = Instant::now();
    let mut failed = Vec::new();
    for (index, counterpart) in COUNTERPARTS.iter().enumerate() {
        let setup = Setup {
            url: url.clone(),
            prefix: format!("{run}s{index}"),
        };
        let took = Instant::now();
        let report = (counterpart.run)(setup).await;
        assert_eq!(report.name, counterpart.name, "a counterpart names itself");
        print!("{}", report.render(took.elapsed()));
        if !report.failures.is_empty() {
            failed.push(report.name);
        }
    }
    println!(
        "{} scenarios across three processes in {:.1} s",
        COUNTERPARTS.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(failed.is_empty(), "scenarios that failed: {failed:?}");
}

/// Where a counterpart runs: the server, and a subject prefix of its own.
struct Setup {
    url: String,
    prefix: String,
}

/// The extra flags of each process, for the simulators' behaviour.
#[derive(Default)]
struct Flags {
    orders: Vec<&'static str>,
    payments: Vec<&'static str>,
    stock: Vec<&'static str>,
    /// Payments starts only when the story says so ([`Cluster::start_payments`]).
    payments_later: bool,
}

/// What a counterpart found; printed like the demo's report.
struct Report {
    name: &'static str,
    status: Option<String>,
    transcript: Vec<String>,
    failures: Vec<String>,
    /// The processes' last log lines, kept when something failed.
    logs: Vec<String>,
}

impl Report {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            status: None,
            transcript: Vec::new(),
            failures: Vec::new(),
            logs: Vec::new(),
        }
    }

    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.failures.push(what.into());
        }
    }

    /// Records the error of a step; `None` then.
    fn step<T>(&mut self, result: Result<T, String>) -> Option<T> {
        result.map_err(|e| self.failures.push(e)).ok()
    }

    fn expect_topics(&mut self, messages: &[Envelope], expected: &[(&str, usize)]) {
        for (topic, n) in expected {
            let seen = count(messages, topic);
            self.check(seen == *n, format!("expected {n} × {topic}, saw {seen}"));
        }
    }

    fn render(&self, took: Duration) -> String {
        let verdict = if self.failures.is_empty() {
            "ok"
        } else {
            "FAILED"
        };
        let mut out = format!(
            "== {} [{verdict}] final state: {} ({:.1} s, three processes)\n",
            self.name,
            self.status.as_deref().unwrap_or("-"),
            took.as_secs_f64()
        );
        for line in &self.transcript {
            out.push_str(&format!("   {line}\n"));
        }
        for failure in &self.failures {
            out.push_str(&format!("   !! {failure}\n"));
        }
        for log in &self.logs {
            out.push_str(&format!("{log}\n"));
        }
        out
    }
}

/// Orders, Payments and Stock as processes on one prefix, the test's own bus (to
/// publish stray messages) and its view of the streams.
struct Cluster {
    orders_role: Role,
    payments: Role,
    stock: Role,
    payments_started: bool,
    orders: Orders,
    broker: Broker,
    bus: NatsBus,
    store: String,
    _data: tempfile::TempDir,
}

impl Cluster {
    async fn start(setup: &Setup, flags: Flags) -> Self {
        let data = tempfile::tempdir().unwrap();
        let store = format!("sqlite:{}", data.path().join("orders.db").display());
        let bus = [
            "--bus",
            setup.url.as_str(),
            "--bus-prefix",
            setup.prefix.as_str(),
            "--listen",
            "127.0.0.1:0",
        ];
        let orders_args = [
            &["serve", "--sims", "none", "--store", &store][..],
            &bus,
            &flags.orders,
        ]
        .concat();
        let mut orders_role = Role::start("orders", &orders_args);
        let payments_args = [&["payments"][..], &bus, &flags.payments].concat();
        let mut payments = Role::new("payments", &payments_args);
        let mut stock = Role::start("stock", &[&["stock"][..], &bus, &flags.stock].concat());
        let client = reqwest::Client::new();
        let base = orders_role.ready(&client, PROCESS).await;
        stock.ready(&client, PROCESS).await;
        let payments_started = !flags.payments_later;
        if payments_started {
            payments.restart();
            payments.ready(&client, PROCESS).await;
        }
        let own = NatsBus::connect(
            NatsBusConfig::new(setup.url.as_str()).subject_prefix(setup.prefix.as_str()),
        )
        .await
        .expect("the test's own bus");
        Self {
            orders_role,
            payments,
            stock,
            payments_started,
            orders: Orders { base, client },
            broker: Broker::connect(&setup.url, &setup.prefix).await,
            bus: own,
            store,
            _data: data,
        }
    }

    /// Starts Payments (held back with `payments_later`).
    async fn start_payments(&mut self) {
        if !self.payments_started {
            self.payments.restart();
            self.payments.ready(&self.orders.client, PROCESS).await;
            self.payments_started = true;
        }
    }

    /// Places `body`; the order id.
    async fn place(&self, report: &mut Report, body: &Value) -> Option<String> {
        let order = report.step(self.orders.place(body, None).await)?;
        Some(order["orderId"].as_str()?.to_owned())
    }

    async fn wait(&self, report: &mut Report, id: &str, status: &str) {
        report.step(self.orders.await_status(id, &[status], STEP).await);
    }

    async fn cancel(&self, report: &mut Report, id: &str) {
        report.step(self.orders.cancel(id).await);
    }

    /// Publishes `payload` on `topic` as another context would (a new message id).
    async fn inject<T: serde::Serialize>(
        &self,
        report: &mut Report,
        topic: &'static str,
        id: &str,
        payload: &T,
    ) {
        let envelope = Envelope::new(Uuid::new_v4(), topic, chrono::Utc::now(), id, None, payload)
            .expect("encode");
        if let Err(e) = self.bus.publish(envelope).await {
            report.failures.push(format!("publish {topic}: {e}"));
        }
    }

    /// Waits for the system to come to rest, records the final status and the
    /// transcript (the order's messages on the broker, with how Orders handled each),
    /// checks the status; the order's messages.
    async fn finish(&self, report: &mut Report, id: &str, expected: &str) -> Vec<Envelope> {
        report.step(self.orders.await_status(id, &[expected], STEP).await);
        report.step(self.broker.settle(&[&self.orders], STEP).await);
        let order = report
            .step(self.orders.order(id, None, Duration::ZERO).await)
            .flatten();
        report.status = order.map(|o| o["status"].as_str().unwrap_or("?").to_owned());
        report.check(
            report.status.as_deref() == Some(expected),
            format!("expected final state {expected}, got {:?}", report.status),
        );
        let history = report
            .step(self.orders.messages(id).await)
            .flatten()
            .unwrap_or_default();
        self.transcript(report, id, &history).await
    }

    /// The order's messages on the broker, and the report's transcript of them.
    async fn transcript(&self, report: &mut Report, id: &str, history: &[Value]) -> Vec<Envelope> {
        let messages: Vec<Envelope> = report
            .step(self.broker.messages().await)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.correlation_id == id)
            .collect();
        let mut seen = HashSet::new();
        report.transcript = messages
            .iter()
            .enumerate()
            .map(|(i, envelope)| {
                let first = seen.insert(envelope.message_id);
                let handled: Vec<String> = history
                    .iter()
                    .filter(|m| {
                        m["direction"] == "received"
                            && m["messageId"] == envelope.message_id.to_string()
                    })
                    .map(|m| match m["reason"].as_str() {
                        Some(why) => format!("{} ({why})", m["outcome"].as_str().unwrap_or("?")),
                        None => m["outcome"].as_str().unwrap_or("?").to_owned(),
                    })
                    .collect();
                let note = match (handled.is_empty(), first) {
                    (true, _) => String::new(),
                    (false, true) => format!("-> Orders: {}", handled.join(", ")),
                    (false, false) => {
                        "-> Orders: redelivered message id, dropped by the inbox".to_owned()
                    }
                };
                format!("{:>2}. {:<26}{note}", i + 1, envelope.topic)
            })
            .collect();
        messages
    }

    /// Stops every process with SIGTERM and records a dead-lettered message as a
    /// failure.
    async fn stop(mut self, report: &mut Report) {
        if let Some(n) = report.step(self.broker.dead_letters().await) {
            report.check(n == 0, format!("{n} message(s) dead-lettered"));
        }
        if !report.failures.is_empty() {
            for role in [&self.orders_role, &self.payments, &self.stock] {
                report
                    .logs
                    .push(format!("--- {} log\n{}", role.name, role.log()));
            }
        }
        // All at once: a simulator may take a moment to end its pull from the broker.
        tokio::join!(
            self.orders_role.terminate(PROCESS),
            self.payments.terminate(PROCESS),
            self.stock.terminate(PROCESS),
        );
        self.broker.close().await;
    }
}

/// Places one order with the given flags, lets it run to its end, checks the final
/// state and how many messages of each topic the order had.
async fn straight_through(
    setup: Setup,
    name: &'static str,
    flags: Flags,
    body: Value,
    expected: &str,
    topics: &[(&str, usize)],
) -> Report {
    let mut report = Report::new(name);
    let cluster = Cluster::start(&setup, flags).await;
    if let Some(id) = cluster.place(&mut report, &body).await {
        let messages = cluster.finish(&mut report, &id, expected).await;
        report.expect_topics(&messages, topics);
    }
    cluster.stop(&mut report).await;
    report
}

/// Orders gives up on the payment after 1 s; Payments answers after 2.5 s: the order is
/// cancelled for the deadline, the late approval is refused and refunded.
async fn payment_after_the_deadline(setup: Setup) -> Report {
    straight_through(
        setup,
        "payment after the deadline",
        Flags {
            orders: vec!["--payment-timeout-secs", "1"],
            payments: vec!["--payments-delay-ms", "2500"],
            ..Flags::default()
        },
        checkout("customer-42", "book-1", "15.00", 1),
        "Cancelled",
        &[
            (topics::ORDER_CANCELLED, 1),
            (topics::PAYMENT_APPROVED, 1),
            (topics::ORDER_PAID, 0),
            (topics::ORDER_PAYMENT_REFUSED, 1),
            (topics::PAYMENT_REFUNDED, 1),
            (topics::STOCK_RESERVED, 0),
        ],
    )
    .await
}

async fn happy_path(setup: Setup) -> Report {
    straight_through(
        setup,
        "happy path",
        Flags::default(),
        checkout("customer-42", "book-1", "29.90", 2),
        "StockReserved",
        &[
            (topics::ORDER_PLACED, 1),
            (topics::PAYMENT_APPROVED, 1),
            (topics::ORDER_PAID, 1),
            (topics::STOCK_RESERVED, 1),
            (topics::ORDER_RESERVATION_REFUSED, 0),
            (topics::STOCK_RELEASED, 0),
        ],
    )
    .await
}

async fn payment_declined(setup: Setup) -> Report {
    straight_through(
        setup,
        "payment declined",
        Flags {
            payments: vec!["--decline-above", "1000"],
            ..Flags::default()
        },
        checkout("customer-42", "piano", "4999", 1),
        "Cancelled",
        &[
            (topics::PAYMENT_DECLINED, 1),
            (topics::ORDER_PAID, 0),
            (topics::ORDER_CANCELLED, 1),
            (topics::PAYMENT_REFUNDED, 0),
        ],
    )
    .await
}

async fn out_of_stock(setup: Setup) -> Report {
    straight_through(
        setup,
        "out of stock after payment",
        Flags {
            stock: vec!["--out-of-stock", "rare-vinyl"],
            ..Flags::default()
        },
        checkout("customer-42", "rare-vinyl", "35.00", 1),
        "Cancelled",
        &[
            (topics::ORDER_PAID, 1),
            (topics::STOCK_RESERVATION_FAILED, 1),
            (topics::ORDER_CANCELLED, 1),
            (topics::PAYMENT_REFUNDED, 1),
            (topics::STOCK_RELEASED, 0),
        ],
    )
    .await
}

async fn cancel_awaiting_payment(setup: Setup) -> Report {
    let mut report = Report::new("cancel while AwaitingPayment");
    // Payments answers late: the customer's cancel comes before its approval.
    let cluster = Cluster::start(
        &setup,
        Flags {
            payments: vec!["--payments-delay-ms", LATE_MS],
            ..Flags::default()
        },
    )
    .await;
    if let Some(id) = cluster
        .place(&mut report, &checkout("customer-42", "book-1", "15.00", 1))
        .await
    {
        cluster.cancel(&mut report, &id).await;
        let messages = cluster.finish(&mut report, &id, "Cancelled").await;
        // Payments had approved before it saw the cancellation: it refunds.
        report.expect_topics(
            &messages,
            &[
                (topics::ORDER_CANCELLED, 1),
                (topics::ORDER_PAID, 0),
                (topics::PAYMENT_REFUNDED, 1),
                (topics::STOCK_RELEASED, 0),
            ],
        );
        let got = report
            .step(cluster.orders.outcomes(&id, topics::PAYMENT_APPROVED).await)
            .unwrap_or_default();
        report.check(
            got == ["rejected"],
            format!("late payment.approved must be rejected: {got:?}"),
        );
    }
    cluster.stop(&mut report).await;
    report
}

async fn cancel_paid(setup: Setup) -> Report {
    // Stock answers late: the cancel comes first; it then reserves, Orders refuses that
    // reservation (order.reservation_refused), and Stock, asked by the cancellation and
    // by the refusal, releases once.
    cancel_once(
        setup,
        "cancel while Paid",
        "Paid",
        Flags {
            stock: vec!["--stock-delay-ms", LATE_MS],
            ..Flags::default()
        },
    )
    .await
}

async fn cancel_stock_reserved(setup: Setup) -> Report {
    cancel_once(
        setup,
        "cancel while StockReserved",
        "StockReserved",
        Flags::default(),
    )
    .await
}

/// Places an order, cancels it once it is `status`, expects a refund and one release of
/// the one reservation (refused by Orders when it came after the cancel, while Paid).
async fn cancel_once(setup: Setup, name: &'static str, status: &str, flags: Flags) -> Report {
    let mut report = Report::new(name);
    let cluster = Cluster::start(&setup, flags).await;
    if let Some(id) = cluster
        .place(&mut report, &checkout("customer-42", "book-1", "15.00", 1))
        .await
    {
        cluster.wait(&mut report, &id, status).await;
        cluster.cancel(&mut report, &id).await;
        let messages = cluster.finish(&mut report, &id, "Cancelled").await;
        let refused = usize::from(status == "Paid");
        report.expect_topics(
            &messages,
            &[
                (topics::ORDER_CANCELLED, 1),
                (topics::PAYMENT_REFUNDED, 1),
                (topics::STOCK_RESERVED, 1),
                (topics::ORDER_RESERVATION_REFUSED, refused),
                (topics::STOCK_RELEASED, 1),
            ],
        );
        let got = report
            .step(cluster.orders.outcomes(&id, topics::STOCK_RESERVED).await)
            .unwrap_or_default();
        let expected = if refused == 1 { "rejected" } else { "applied" };
        report.check(
            got == [expected],
            format!("stock.reserved outcomes: {got:?}"),
        );
    }
    cluster.stop(&mut report).await;
    report
}

async fn replayed_messages(setup: Setup) -> Report {
    let mut report = Report::new("replayed payment.approved and stock.reserved");
    let cluster = Cluster::start(&setup, Flags::default()).await;
    let Some(id) = cluster
        .place(&mut report, &checkout("customer-42", "book-1", "10.00", 1))
        .await
    else {
        cluster.stop(&mut report).await;
        return report;
    };
    cluster.wait(&mut report, &id, "StockReserved").await;
    report.step(cluster.broker.settle(&[&cluster.orders], STEP).await);
    let version = report
        .step(cluster.orders.order(&id, None, Duration::ZERO).await)
        .flatten()
        .map(|o| o["version"].clone());
    let replay: Vec<Envelope> = report
        .step(cluster.broker.messages().await)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e.correlation_id == id
                && (e.topic == topics::PAYMENT_APPROVED || e.topic == topics::STOCK_RESERVED)
        })
        .collect();
    report.check(
        replay.len() == 2,
        "expected one payment.approved and one stock.reserved to replay",
    );
    for envelope in replay {
        // The same message redelivered (same message id: the inbox drops it). Through
        // the bus the server itself drops it inside its duplicate window, so it is
        // published once with the bus (dropped) and once without the header (delivered).
        if let Err(e) = cluster.bus.publish(envelope.clone()).await {
            report.failures.push(format!("replay publish failed: {e}"));
        }
        report.step(cluster.broker.publish_without_message_id(&envelope).await);
        // The same answer re-sent as a new message (same paymentId/reservationId: the
        // aggregate's idempotency drops it).
        let resent = Envelope {
            message_id: Uuid::new_v4(),
            ..envelope
        };
        if let Err(e) = cluster.bus.publish(resent).await {
            report.failures.push(format!("replay publish failed: {e}"));
        }
    }
    let messages = cluster.finish(&mut report, &id, "StockReserved").await;
    let after = report
        .step(cluster.orders.order(&id, None, Duration::ZERO).await)
        .flatten()
        .map(|o| o["version"].clone());
    report.check(
        version == after,
        format!("version changed by replays: {version:?} -> {after:?}"),
    );
    report.expect_topics(
        &messages,
        &[
            (topics::ORDER_PAID, 1),
            (topics::PAYMENT_APPROVED, 3),
            (topics::STOCK_RESERVED, 3),
            (topics::ORDER_RESERVATION_REFUSED, 0),
            (topics::STOCK_RELEASED, 0),
        ],
    );
    for topic in [topics::PAYMENT_APPROVED, topics::STOCK_RESERVED] {
        let got = report
            .step(cluster.orders.outcomes(&id, topic).await)
            .unwrap_or_default();
        report.check(
            got == ["applied", "duplicate"],
            format!("{topic} outcomes: {got:?}"),
        );
    }
    cluster.stop(&mut report).await;
    report
}

async fn stock_reserved_for_unpaid_order(setup: Setup) -> Report {
    let mut report = Report::new("stock.reserved for an unpaid order");
    // Payments starts only once Orders has dealt with the forged message.
    let mut cluster = Cluster::start(
        &setup,
        Flags {
            payments_later: true,
            ..Flags::default()
        },
    )
    .await;
    if let Some(id) = cluster
        .place(&mut report, &checkout("customer-42", "book-1", "15.00", 1))
        .await
    {
        let forged = contracts::StockReserved {
            order_id: id.parse().unwrap(),
            reservation_id: "forged-reservation".to_owned(),
            items: vec![],
            timestamp: chrono::Utc::now(),
        };
        cluster
            .inject(&mut report, topics::STOCK_RESERVED, &id, &forged)
            .await;
        report.step(
            cluster
                .orders
                .await_handled(&id, topics::STOCK_RESERVED, 1, STEP)
                .await,
        );
        cluster.start_payments().await;
        // The forged message is refused; the real flow then completes normally, and
        // Stock keeps its own reservation (the refusal names one it never made).
        let messages = cluster.finish(&mut report, &id, "StockReserved").await;
        report.expect_topics(
            &messages,
            &[
                (topics::STOCK_RESERVED, 2),
                (topics::ORDER_RESERVATION_REFUSED, 1),
                (topics::STOCK_RELEASED, 0),
            ],
        );
        let got = report
            .step(cluster.orders.outcomes(&id, topics::STOCK_RESERVED).await)
            .unwrap_or_default();
        report.check(
            got == ["rejected", "applied"],
            format!("stock.reserved outcomes: {got:?}"),
        );
    }
    cluster.stop(&mut report).await;
    report
}

async fn payment_for_unknown_order(setup: Setup) -> Report {
    let mut report = Report::new("payment.approved for an unknown order");
    let mut cluster = Cluster::start(&setup, Flags::default()).await;
    let id = Uuid::new_v4();
    let payload = contracts::PaymentApproved {
        order_id: id,
        payment_id: "pay-unknown".to_owned(),
        approved_amount: rust_decimal::Decimal::new(1000, 2),
        currency: "EUR".to_owned(),
        timestamp: chrono::Utc::now(),
    };
    let id = id.to_string();
    cluster
        .inject(&mut report, topics::PAYMENT_APPROVED, &id, &payload)
        .await;
    report.step(cluster.broker.settle(&[&cluster.orders], STEP).await);
    let order = report.step(cluster.orders.order(&id, None, Duration::ZERO).await);
    report.check(
        matches!(order, Some(None)),
        "an order appeared out of nowhere",
    );
    report.status = order.flatten().map(|o| o["status"].to_string());
    // An unknown order has no `/messages` over HTTP (404): its history is read from
    // the store once Orders has stopped.
    cluster.orders_role.terminate(PROCESS).await;
    let store = orders_store::SqliteOrderStore::connect(&cluster.store)
        .await
        .expect("open the stopped Orders' store");
    let history: Vec<Value> = store
        .messages(id.parse().unwrap())
        .await
        .expect("history")
        .iter()
        .map(|r| {
            serde_json::json!({
                "direction": if r.direction == Direction::Received { "received" } else { "sent" },
                "messageId": r.message_id.to_string(),
                "topic": r.topic,
                "outcome": r.outcome.as_ref().map(|o| o.as_str()),
            })
        })
        .collect();
    let messages = cluster.transcript(&mut report, &id, &history).await;
    let got = outcomes(&history, topics::PAYMENT_APPROVED);
    report.check(
        got == ["rejected"],
        format!("payment.approved outcomes: {got:?}"),
    );
    report.check(
        count(&messages, topics::ORDER_PAID) == 0,
        "an unknown order was paid",
    );
    cluster.stop(&mut report).await;
    report
}

/// 1,000 orders placed at once over HTTP, spread over two Orders replicas on one
/// PostgreSQL database, with Payments and Stock as processes of their own: every order
/// reaches StockReserved with one paymentId, the outbox is empty and nothing is
/// dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_orders_over_two_orders_replicas_on_postgres() {
    const ORDERS: usize = 1_000;
    let test = "a_thousand_concurrent_orders_over_two_orders_replicas_on_postgres";
    let Some(url) = testing::test_url(test) else {
        return;
    };
    let Ok(admin_url) = std::env::var("ORDERS_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "ORDERS_TEST_POSTGRES_URL must be set in CI"
        );
        println!("{test}: skipped, ORDERS_TEST_POSTGRES_URL not set");
        return;
    };
    let _turn = ONE_AT_A_TIME.lock().await;
    let database = orders_store::scratch::ScratchDatabase::create(&admin_url)
        .await
        .expect("a scratch database");
    let prefix = common::unique_prefix("load");
    let _cleanup = Cleanup {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    let bus = [
        "--bus",
        url.as_str(),
        "--bus-prefix",
        prefix.as_str(),
        "--listen",
        "127.0.0.1:0",
    ];
    let serve = [
        &["serve", "--sims", "none", "--store", database.url()][..],
        &bus,
    ]
    .concat();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    // The first replica creates the schema; the second starts on it.
    let mut first = Role::start("orders-1", &serve);
    let first_base = first.ready(&client, PROCESS).await;
    let mut second = Role::start("orders-2", &serve);
    let mut payments = Role::start("payments", &[&["payments"][..], &bus].concat());
    let mut stock = Role::start("stock", &[&["stock"][..], &bus].concat());
    let second_base = second.ready(&client, PROCESS).await;
    payments.ready(&client, PROCESS).await;
    stock.ready(&client, PROCESS).await;
    let replicas = [
        Orders {
            base: first_base,
            client: client.clone(),
        },
        Orders {
            base: second_base,
            client: client.clone(),
        },
    ];

    let started = Instant::now();
    let placing: Vec<_> = (0..ORDERS)
        .map(|i| {
            let replica = replicas[i % 2].clone();
            tokio::spawn(async move {
                let price = format!("{}.{:02}", 1 + i / 100, i % 100);
                let body = checkout(&format!("load-{i}"), &format!("sku-{}", i % 17), &price, 1);
                replica.place(&body, Some(&format!("load-{i}"))).await
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(ORDERS);
    for task in placing {
        let order = task
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("checkout: {e}"));
        ids.push(order["orderId"].as_str().unwrap().to_owned());
    }
    let placed = started.elapsed();
    let broker = Broker::connect(&url, &prefix).await;
    broker
        .settle(&[&replicas[0], &replicas[1]], Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}\norders-1:\n{}\norders-2:\n{}",
                first.log(),
                second.log()
            )
        });
    let settled = started.elapsed();

    // Every order reached StockReserved (read on the other replica than it was placed
    // on), with one paymentId.
    let by_order = broker.messages_by_order().await.unwrap();
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let order = replicas[(i + 1) % 2]
            .order(id, None, Duration::ZERO)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("order {id} lost"));
        *statuses
            .entry(order["status"].as_str().unwrap().to_owned())
            .or_default() += 1;
        assert_eq!(order["status"], "StockReserved", "order {id}");
        let messages = by_order.get(id).map(Vec::as_slice).unwrap_or_default();
        let payments = distinct(messages, topics::PAYMENT_APPROVED, "paymentId");
        assert_eq!(payments.len(), 1, "order {id}: paymentIds {payments:?}");
        assert_eq!(
            order["paymentId"].as_str(),
            payments.first().map(String::as_str)
        );
        assert_eq!(count(messages, topics::ORDER_PLACED), 1, "order {id}");
        assert_eq!(count(messages, topics::ORDER_PAID), 1, "order {id}");
    }
    let mut unsent = 0;
    for replica in &replicas {
        let stats = replica.stats().await.unwrap();
        unsent += stats["unsentOutboxRows"].as_u64().unwrap();
    }
    assert_eq!(unsent, 0, "outbox rows never published");
    let dead = broker.dead_letters().await.unwrap();
    assert_eq!(dead, 0, "messages dead-lettered");
    let total: usize = by_order.values().map(Vec::len).sum();
    println!(
        "{ORDERS} concurrent orders over two Orders replicas on PostgreSQL, Payments and \
         Stock over NATS: {statuses:?}, {total} messages on the bus, all placed in {:.2} s, \
         all settled in {:.2} s; outbox unsent {unsent}, dead letters {dead}",
        placed.as_secs_f64(),
        settled.as_secs_f64()
    );
    broker.close().await;
    tokio::join!(
        first.terminate(PROCESS),
        second.terminate(PROCESS),
        payments.terminate(PROCESS),
        stock.terminate(PROCESS),
    );
    database.remove().await.expect("drop the scratch database");
}
