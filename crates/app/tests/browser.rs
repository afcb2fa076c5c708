//! The live flow page in a real browser: `app serve` (in-memory store and bus, in-process
//! simulators) as a child process, `chromedriver` driving headless Chromium through
//! WebDriver (fantoccini). An operator places an order through the form and sees it reach
//! StockReserved in the list, opens its diagram and sees its four messages in order,
//! submits an invalid form and sees the errors by their fields, cancels the order and
//! sees it Cancelled with `order.cancelled` in its diagram, sees the list stay bounded and
//! live through a burst of a thousand orders, then sees the page reconnect after the
//! server restarts. A screenshot goes to
//! `$CARGO_TARGET_TMPDIR/browser/live-page.png` (its path is printed).
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian's `chromium` and
//! `chromium-driver`; other paths through `ORDERS_TEST_CHROMIUM` and
//! `ORDERS_TEST_CHROMEDRIVER`). Without them the test is skipped with a printed reason,
//! or fails when `CI` is set. Every wait is a WebDriver wait on the DOM with a deadline.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test: failing loudly is the point

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::TcpListener,
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::{FutureExt as _, StreamExt as _};
use serde_json::{Value, json};

/// How long any one thing may take to show on the page.
const DEADLINE: Duration = Duration::from_secs(10);

/// Orders placed at once to see that the page stays bounded and live.
const BURST: usize = 1000;

/// How often a wait looks at the DOM again.
const POLL: Duration = Duration::from_millis(50);

/// A child process, killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The browser and its driver, or why the test cannot run.
fn browser() -> Result<(PathBuf, PathBuf), String> {
    let find = |variable: &str, default: &str| {
        let path = std::env::var_os(variable).map_or_else(|| PathBuf::from(default), PathBuf::from);
        if path.exists() {
            Ok(path)
        } else {
            Err(format!(
                "{} not found (install Debian's chromium and chromium-driver, or set {variable})",
                path.display()
            ))
        }
    };
    Ok((
        find("ORDERS_TEST_CHROMIUM", "/usr/bin/chromium")?,
        find("ORDERS_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")?,
    ))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Starts `command`, copies its output to `log`, and returns once a line of it contains
/// `ready` (or fails after [`DEADLINE`] with the log's path).
fn start(mut command: Command, log: &Path, ready: &'static str) -> Process {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (seen, seen_rx) = mpsc::channel();
    for output in [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ] {
        let mut file = file.try_clone().expect("log file");
        let seen = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(output).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(file, "{line}");
                if line.contains(ready) {
                    let _ = seen.send(());
                }
            }
        });
    }
    let _ = writeln!(file, "---- started, waiting for {ready:?}");
    let process = Process(child);
    seen_rx
        .recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("not ready within {DEADLINE:?}; see {}", log.display()));
    process
}

/// `app serve` on `port`: in-memory store and bus, in-process simulators.
fn serve(port: u16, log: &Path) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_app"));
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--store",
            "memory",
            "--bus",
            "memory",
            "--sims",
            "in-process",
        ])
        .env("RUST_LOG", "warn,app::serve=info");
    start(command, log, "orders service listening")
}

/// `chromedriver` on `port`.
fn chromedriver(driver: &Path, port: u16, log: &Path) -> Process {
    let mut command = Command::new(driver);
    command.arg(format!("--port={port}"));
    start(command, log, "started successfully")
}

/// A WebDriver session of headless Chromium with a fresh profile in `profile`.
async fn session(driver_port: u16, chromium: &Path, profile: &Path) -> Client {
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--window-size=1440,1100",
                format!("--user-data-dir={}", profile.display()),
            ],
        },
    });
    let Value::Object(capabilities) = capabilities else {
        unreachable!("an object")
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await
        .expect("a WebDriver session")
}

/// Waits (a WebDriver wait, up to [`DEADLINE`]) until `css` matches an element.
async fn until(client: &Client, what: &str, css: &str) -> fantoccini::elements::Element {
    client
        .wait()
        .at_most(DEADLINE)
        .every(POLL)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{what}: `{css}` did not appear within {DEADLINE:?}: {e}"))
}

/// Runs `script` in the page and returns its value.
async fn eval(client: &Client, script: &str) -> Value {
    client.execute(script, vec![]).await.expect("script")
}

/// Sets the input `name` of the order form to `value`.
async fn fill(client: &Client, name: &str, value: &str) {
    let input = client
        .find(Locator::Css(&format!("#place-form [name=\"{name}\"]")))
        .await
        .unwrap_or_else(|e| panic!("no input {name}: {e}"));
    input.clear().await.unwrap();
    if !value.is_empty() {
        input.send_keys(value).await.unwrap();
    }
}

/// Submits the order form and returns the `#place-result` once it shows the outcome.
async fn submit_order(client: &Client, outcome: &str) -> fantoccini::elements::Element {
    client
        .find(Locator::Css("#place-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let css = match outcome {
        "ok" => "#place-result.ok[data-order-id]",
        _ => "#place-result.error",
    };
    until(client, "the form's outcome", css).await
}

/// The chosen order's diagram: `[direction, topic, outcome]` of each arrow, in order.
async fn diagram(client: &Client) -> Vec<(String, String, String)> {
    let arrows = eval(
        client,
        "return Array.from(document.querySelectorAll('#diagram g.msg'))
            .map(g => [g.dataset.direction, g.dataset.topic, g.dataset.outcome]);",
    )
    .await;
    serde_json::from_value(arrows).unwrap()
}

fn arrows(expected: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    expected
        .iter()
        .map(|(d, t, o)| ((*d).to_owned(), (*t).to_owned(), (*o).to_owned()))
        .collect()
}

/// Places an order through the API (not the page); returns its id.
async fn place_over_http(http: &reqwest::Client, base: &str, i: usize) -> String {
    let body = json!({
        "customerId": format!("customer-{}", i % 7),
        "currency": "EUR",
        "items": [{"productId": format!("sku-{}", i % 13), "quantity": 1 + i % 3, "price": 4.5}],
        "shippingAddress": {"street": "Main Street 1", "city": "Berlin", "postalCode": "10115", "country": "DE"},
    });
    let reply = http
        .post(format!("{base}/orders"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), reqwest::StatusCode::CREATED);
    let order: Value = reply.json().await.unwrap();
    order["orderId"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_places_follows_and_cancels_an_order_on_the_live_page() {
    let (chromium, driver) = match browser() {
        Ok(found) => found,
        Err(reason) if std::env::var_os("CI").is_some() => {
            panic!("CI is set and the browser is missing: {reason}")
        }
        Err(reason) => {
            println!("skipped: {reason}");
            return;
        }
    };
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&out).unwrap();
    let port = free_port();
    let server = serve(port, &out.join("serve.log"));
    let driver_port = free_port();
    let _driver = chromedriver(&driver, driver_port, &out.join("chromedriver.log"));
    let profile = tempfile::tempdir().unwrap();
    let client = session(driver_port, &chromium, profile.path()).await;

    let story = AssertUnwindSafe(story(&client, port, server, &out))
        .catch_unwind()
        .await;
    let _ = client.close().await;
    if let Err(panic) = story {
        std::panic::resume_unwind(panic);
    }
}

async fn story(client: &Client, port: u16, server: Process, out: &Path) {
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    // Placed before the page opens: only the list (`GET /orders`) can show it.
    let earlier = place_over_http(&http, &base, 0).await;
    client.goto(&format!("{base}/")).await.unwrap();
    until(
        client,
        "the stream is live",
        "#connection[data-state=\"live\"]",
    )
    .await;
    until(
        client,
        "the order placed before the page opened is listed",
        &format!("#orders tr[data-order-id=\"{earlier}\"]"),
    )
    .await;

    // Place an order through the form; it flows to StockReserved in the list.
    fill(client, "customerId", "browser-customer").await;
    let placed = submit_order(client, "ok").await;
    let id = placed.attr("data-order-id").await.unwrap().unwrap();
    until(
        client,
        "the order reaches StockReserved in the list",
        &format!("#orders tr[data-order-id=\"{id}\"][data-status=\"StockReserved\"]"),
    )
    .await;

    // Its diagram: four messages, in order, between the three lanes.
    client
        .find(Locator::Css(&format!("#orders tr[data-order-id=\"{id}\"]")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        client,
        "the diagram shows the fourth message",
        &format!("#detail-body[data-order-id=\"{id}\"] #diagram g.msg[data-index=\"3\"]"),
    )
    .await;
    assert_eq!(
        diagram(client).await,
        arrows(&[
            ("sent", "order.placed", ""),
            ("received", "payment.approved", "applied"),
            ("sent", "order.paid", ""),
            ("received", "stock.reserved", "applied"),
        ])
    );
    let lanes = eval(
        client,
        "return Array.from(document.querySelectorAll('#diagram .lane-name')).map(t => t.textContent);",
    )
    .await;
    assert_eq!(lanes, json!(["Orders", "Payments", "Stock"]));

    // An invalid form: the API's field errors show next to their fields.
    fill(client, "customerId", "").await;
    fill(client, "currency", "euro").await;
    fill(client, "items[0].quantity", "0").await;
    fill(client, "items[0].price", "-1").await;
    fill(client, "shippingAddress.city", "").await;
    submit_order(client, "error").await;
    let errors = eval(
        client,
        "return Object.fromEntries(Array.from(document.querySelectorAll('#place-form .field-error'))
            .filter(e => e.textContent).map(e => [e.dataset.errorFor, e.textContent]));",
    )
    .await;
    let fields: Vec<&String> = errors.as_object().unwrap().keys().collect();
    assert_eq!(
        fields,
        [
            "currency",
            "customerId",
            "items[0].price",
            "items[0].quantity",
            "shippingAddress.city"
        ],
        "{errors}"
    );
    assert_eq!(errors["items[0].price"], "must not be negative");
    let marked = eval(
        client,
        "return document.querySelector('#place-form [name=\"customerId\"]').getAttribute('aria-invalid');",
    )
    .await;
    assert_eq!(marked, "true");

    // Cancel the chosen order: Cancelled in the list, order.cancelled in its diagram.
    client
        .find(Locator::Css("#cancel-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        client,
        "the order is Cancelled in the list",
        &format!("#orders tr[data-order-id=\"{id}\"][data-status=\"Cancelled\"]"),
    )
    .await;
    until(
        client,
        "order.cancelled is in the diagram",
        &format!(
            "#detail-body[data-order-id=\"{id}\"] #diagram g.msg[data-topic=\"order.cancelled\"][data-direction=\"sent\"]"
        ),
    )
    .await;
    let shown = diagram(client).await;
    assert_eq!(
        shown[..4],
        arrows(&[
            ("sent", "order.placed", ""),
            ("received", "payment.approved", "applied"),
            ("sent", "order.paid", ""),
            ("received", "stock.reserved", "applied"),
        ])[..]
    );
    assert_eq!(shown[4].1, "order.cancelled");
    until(
        client,
        "the flow figures count both orders that reached a final state",
        "#kpi-finished[data-value=\"2\"]",
    )
    .await;

    // A thousand orders: the list stays bounded, the page keeps up.
    let placed: Vec<String> = futures_util::stream::iter(0..BURST)
        .map(|i| place_over_http(&http, &base, i))
        .buffered(16)
        .collect()
        .await;
    let last = placed.last().unwrap();
    until(
        client,
        "the last of the burst reaches StockReserved in the list",
        &format!("#orders tr[data-order-id=\"{last}\"][data-status=\"StockReserved\"]"),
    )
    .await;
    let rows = eval(
        client,
        "return document.querySelectorAll('#orders tbody tr').length;",
    )
    .await;
    assert!(
        rows.as_u64().unwrap() <= 51,
        "the 50 newest and the chosen one, not {rows}"
    );
    assert!(
        client
            .find(Locator::Css("#connection[data-state=\"live\"]"))
            .await
            .is_ok(),
        "still live after the burst"
    );
    let figures = eval(
        client,
        "return ['#kpi-throughput', '#kpi-p50', '#kpi-p99', '#kpi-finished']
            .map(k => document.querySelector(k).textContent).join(' | ');",
    )
    .await;
    println!("after {BURST} orders the page shows throughput | p50 | p99 | finished: {figures}");

    let screenshot = out.join("live-page.png");
    std::fs::write(&screenshot, client.screenshot().await.unwrap()).unwrap();
    println!("screenshot: {}", screenshot.display());

    // The server restarts: the page shows it reconnecting, then follows the new one.
    drop(server);
    until(
        client,
        "the page shows that it reconnects",
        "#connection[data-state=\"reconnecting\"]",
    )
    .await;
    let _server = serve(port, &out.join("serve.log"));
    until(
        client,
        "the stream is live again",
        "#connection[data-state=\"live\"]",
    )
    .await;
}
