//! The HTTP rows: keep-alive clients on loopback against the built `app` binary,
//! started as `app serve` on a scratch SQLite file, each client on one HTTP/1.1
//! connection of hyper's client: `POST /orders`, then blocking reads until StockReserved.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::{
    report::{Percentiles, Row},
    scratch::Scratch,
};

/// An `app` child process (`serve`, `payments` or `stock`), killed when dropped.
pub(crate) struct ServerProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub(crate) base: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// Starts `app serve` on a free loopback port and waits until `/readyz` answers 200.
    async fn start(app: &Path, store: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let mut args = vec!["--store", store];
        args.extend_from_slice(extra);
        Self::start_role(app, "serve", &args).await
    }

    /// Starts `app ROLE --listen 127.0.0.1:PORT ARGS…` on a free port and waits until its
    /// `/readyz` answers 200.
    pub(crate) async fn start_role(app: &Path, role: &str, args: &[&str]) -> anyhow::Result<Self> {
        Self::start_under(None, app, role, args).await
    }

    /// [`ServerProcess::start_role`], run by `wrapper` (a program and its arguments, then
    /// the app's command line) when given: valgrind, for the instruction counts.
    pub(crate) async fn start_under(
        wrapper: Option<(&str, &[String])>,
        app: &Path,
        role: &str,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut command = match wrapper {
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(app);
                command
            }
            None => Command::new(app),
        };
        let child = command
            .args([role, "--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start {} {role}", app.display()))?;
        let mut server = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        // The server is another process: poll its readiness until a deadline (long
        // enough for one started under valgrind).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if server.ready().await {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                anyhow::bail!("app {role} exited before it was ready ({status})");
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "app {role} did not become ready within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether `GET /readyz` answers 200 now.
    async fn ready(&self) -> bool {
        let Ok(mut connection) = LoadConnection::open(&self.base).await else {
            return false;
        };
        matches!(
            connection.send(hyper::Method::GET, "/readyz", None).await,
            Ok((status, _, _)) if status.is_success()
        )
    }

    pub(crate) fn peak_rss(&self) -> u64 {
        crate::rss::peak_rss_of(self.child.id())
    }

    /// Asks the server to stop (SIGTERM) and waits up to `within` for it to exit.
    ///
    /// # Errors
    /// When the signal cannot be sent or the server is still running at the deadline.
    pub(crate) async fn terminate(mut self, within: Duration) -> anyhow::Result<()> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .context("run kill")?;
        anyhow::ensure!(sent.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + within;
        while self.child.try_wait()?.is_none() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "server {pid} still running {within:?} after SIGTERM"
            );
            // Another process: its exit cannot be awaited, only polled.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// CPU seconds the server has used so far (all its threads).
    pub(crate) fn cpu_seconds(&self) -> f64 {
        crate::rss::cpu_seconds_of(self.child.id())
    }
}

fn order_body(i: usize) -> serde_json::Value {
    serde_json::json!({
        "customerId": format!("bench-{i}"),
        "currency": "EUR",
        "items": [{"productId": format!("sku-{}", i % 100), "quantity": 2, "price": 19.99}],
        "shippingAddress": {"street": "Hauptstrasse 1", "city": "Berlin", "postalCode": "10115", "country": "DE"}
    })
}

/// What the load generator reads of an order: the fields it follows, nothing else, so
/// its own share of the two cores stays small.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Seen {
    order_id: String,
    status: String,
    version: u64,
}

/// One keep-alive HTTP/1.1 connection of the load generator, on hyper's client
/// connection itself: the load generator shares the two cores with the server it
/// measures, so it should cost as little as it can (no pool, no middleware layers).
struct LoadConnection {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    /// `host:port`, for the `Host` header.
    authority: String,
}

impl LoadConnection {
    async fn open(base: &str) -> anyhow::Result<Self> {
        let authority = base
            .strip_prefix("http://")
            .context("the load generator speaks plain http only")?
            .to_owned();
        let stream = tokio::net::TcpStream::connect(&authority).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("bench: load connection ended: {e}");
            }
        });
        Ok(Self { sender, authority })
    }

    /// Sends one request and reads the whole answer. Returns the status, the moment the
    /// answer's head arrived, and the body.
    async fn send(
        &mut self,
        method: hyper::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(hyper::StatusCode, Instant, bytes::Bytes)> {
        use http_body_util::BodyExt;
        self.sender.ready().await?;
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority);
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request.body(http_body_util::Full::new(bytes::Bytes::from(
            body.unwrap_or_default(),
        )))?;
        let response = self.sender.send_request(request).await?;
        let arrived = Instant::now();
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, arrived, body))
    }
}

/// POST one order, then poll `GET /orders/{id}` until StockReserved. Each poll is a
/// blocking read (`?afterVersion=V&waitMs=5000`): the server answers when the order
/// changes, so a client makes about one GET per state change instead of a poll storm.
/// Returns the time from the 201 to StockReserved seen.
async fn http_flow(connection: &mut LoadConnection, i: usize) -> anyhow::Result<Duration> {
    let body = serde_json::to_vec(&order_body(i))?;
    let (status, created, answer) = connection
        .send(hyper::Method::POST, "/orders", Some(body))
        .await?;
    anyhow::ensure!(status == 201, "POST /orders answered {status}");
    let mut order: Seen = serde_json::from_slice(&answer)?;
    let deadline = created + Duration::from_secs(60);
    loop {
        match order.status.as_str() {
            "StockReserved" => return Ok(created.elapsed()),
            "Cancelled" => anyhow::bail!("order {} was cancelled", order.order_id),
            _ => {}
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "order {} not StockReserved within 60 s",
            order.order_id
        );
        let path = format!(
            "/orders/{}?afterVersion={}&waitMs=5000",
            order.order_id, order.version
        );
        let (status, _, answer) = connection.send(hyper::Method::GET, &path, None).await?;
        anyhow::ensure!(status == 200, "GET {path} answered {status}");
        order = serde_json::from_slice(&answer)?;
    }
}

/// `orders` flows (POST, then blocking reads until StockReserved) by `clients` keep-alive
/// connections to `base`: the elapsed time and each flow's 201 → StockReserved time.
pub(crate) async fn http_load(
    base: &str,
    clients: usize,
    orders: usize,
) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (base, next) = (base.to_owned(), next.clone());
            tokio::spawn(async move {
                let mut connection = LoadConnection::open(&base).await?;
                let mut samples = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= orders {
                        return Ok::<_, anyhow::Error>(samples);
                    }
                    samples.push(http_flow(&mut connection, i).await?);
                }
            })
        })
        .collect();
    let mut samples = Vec::with_capacity(orders);
    for task in tasks {
        samples.extend(task.await??);
    }
    Ok((started.elapsed(), samples))
}

/// HTTP (a): 256 keep-alive clients against `app serve` (the binary at `app`) on a fresh SQLite file, no
/// simulated delay: complete flows per second.
///
/// # Errors
/// When the server does not start or a flow fails.
pub async fn throughput(app: &Path, orders: usize) -> anyhow::Result<Row> {
    eprintln!("bench: HTTP throughput ({orders} orders, 256 clients)…");
    let scratch = Scratch::sqlite();
    let server = ServerProcess::start(app, &scratch.url, &[]).await?;
    let (elapsed, _) = http_load(&server.base, 256, orders).await?;
    drop(server);
    scratch.remove().await;
    Ok(Row {
        workload: "HTTP: 256 clients, POST /orders → StockReserved seen by blocking GET (SQLite)"
            .to_owned(),
        count: orders,
        latency: None,
        throughput: Some((orders as f64 / elapsed.as_secs_f64(), "flows/s")),
        ratio: None,
        note: "keep-alive clients on loopback, no simulated delay".to_owned(),
    })
}

/// Orders after which HTTP (c) reads the server's peak RSS.
const RSS_AFTER_ORDERS: usize = 2_000;

/// HTTP (b) and (c): 64 clients, Payments and Stock taking 10 ms each: latency from the
/// 201 to StockReserved seen over `orders` flows, and the server's peak RSS after the
/// first 2,000 of them and at the end.
///
/// # Errors
/// When the server does not start or a flow fails.
pub async fn latency(app: &Path, orders: usize) -> anyhow::Result<Row> {
    eprintln!("bench: HTTP latency ({orders} orders, 64 clients, Payments and Stock delay 10 ms)…");
    let scratch = Scratch::sqlite();
    let server = ServerProcess::start(
        app,
        &scratch.url,
        &["--payments-delay-ms", "10", "--stock-delay-ms", "10"],
    )
    .await?;
    let first = orders.min(RSS_AFTER_ORDERS);
    let (mut elapsed, mut samples) = http_load(&server.base, 64, first).await?;
    let peak_first = server.peak_rss();
    if orders > first {
        let (more_elapsed, more) = http_load(&server.base, 64, orders - first).await?;
        elapsed += more_elapsed;
        samples.extend(more);
    }
    let peak = server.peak_rss();
    drop(server);
    scratch.remove().await;
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    Ok(Row {
        workload:
            "HTTP: 64 clients, Payments + Stock 10 ms each, 201 → StockReserved seen by blocking GET (SQLite)"
                .to_owned(),
        count: orders,
        latency: Percentiles::of(&samples),
        throughput: Some((orders as f64 / elapsed.as_secs_f64(), "flows/s")),
        ratio: None,
        note: format!(
            "server peak RSS {:.1} MiB after the first {first} orders, {:.1} MiB after all {orders}",
            mib(peak_first),
            mib(peak)
        ),
    })
}

/// The middle of sorted `values` (the mean of the two middle ones for an even count).
fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Rounds of the telemetry-cost rows: each runs the workload with telemetry off and on,
/// in the order off, on in even rounds and on, off in odd ones (ABBA), so that neither
/// mode always runs second (after the other's scratch file and server went away).
const TELEMETRY_ROUNDS: usize = 20;

/// The cost of telemetry: the HTTP throughput workload (256 clients, no delay, `orders`
/// flows) and the HTTP latency workload (64 clients, 10 ms simulators, `latency_orders`
/// flows) against `app serve --telemetry off` and `--telemetry on` (metrics recorded,
/// spans made, no exporter), alternated [`TELEMETRY_ROUNDS`] times so that both see the
/// same moods of the machine. Rows: throughput off / on, on as the median of the rounds'
/// on/off ratios (each round's two runs follow each other, so a ratio compares runs in
/// one mood; the median ignores the rounds the machine's mood changed in the middle of),
/// with the server's CPU time per flow of each; p99 off / on.
///
/// # Errors
/// When a server does not start or a flow fails.
pub async fn telemetry_cost(
    app: &Path,
    orders: usize,
    latency_orders: usize,
) -> anyhow::Result<Vec<Row>> {
    eprintln!(
        "bench: telemetry cost ({TELEMETRY_ROUNDS} rounds of off/on: {orders} orders at 256 clients, {latency_orders} at 64 clients with 10 ms simulators)…"
    );
    let mut throughput = [Vec::new(), Vec::new()];
    let mut cpu_per_flow = [Vec::new(), Vec::new()];
    let mut latency: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut latency_elapsed = [Duration::ZERO; 2];
    for round in 0..TELEMETRY_ROUNDS {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for index in order {
            let mode = ["off", "on"][index];
            let scratch = Scratch::sqlite();
            let server = ServerProcess::start(app, &scratch.url, &["--telemetry", mode]).await?;
            let cpu_before = server.cpu_seconds();
            let (elapsed, _) = http_load(&server.base, 256, orders).await?;
            let cpu = server.cpu_seconds() - cpu_before;
            drop(server);
            scratch.remove().await;
            throughput[index].push(orders as f64 / elapsed.as_secs_f64());
            cpu_per_flow[index].push(cpu / orders as f64);

            let scratch = Scratch::sqlite();
            let server = ServerProcess::start(
                app,
                &scratch.url,
                &[
                    "--telemetry",
                    mode,
                    "--payments-delay-ms",
                    "10",
                    "--stock-delay-ms",
                    "10",
                ],
            )
            .await?;
            let (elapsed, samples) = http_load(&server.base, 64, latency_orders).await?;
            drop(server);
            scratch.remove().await;
            latency_elapsed[index] += elapsed;
            latency[index].extend(samples);
        }
    }
    let mean = |runs: &[f64]| runs.iter().sum::<f64>() / runs.len().max(1) as f64;
    let runs = |runs: &[f64]| {
        runs.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let [off_runs, on_runs] = &throughput;
    let (off, on) = (mean(off_runs), mean(on_runs));
    let mut ratios: Vec<f64> = on_runs
        .iter()
        .zip(off_runs)
        .map(|(on, off)| on / off)
        .collect();
    ratios.sort_by(f64::total_cmp);
    let median_ratio = median(&ratios);
    let (lowest, highest) = (
        ratios.first().copied().unwrap_or(f64::NAN),
        ratios.last().copied().unwrap_or(f64::NAN),
    );
    let [off_cpu, on_cpu] = [mean(&cpu_per_flow[0]), mean(&cpu_per_flow[1])];
    let micros = |seconds: f64| seconds * 1e6;
    let [off_lat, on_lat] = [Percentiles::of(&latency[0]), Percentiles::of(&latency[1])];
    let p99_ratio = match (off_lat, on_lat) {
        (Some(off), Some(on)) => Some(format!(
            "p99 {:.2} × off",
            on.p99.as_secs_f64() / off.p99.as_secs_f64()
        )),
        _ => None,
    };
    let total = TELEMETRY_ROUNDS * orders;
    let latency_total = TELEMETRY_ROUNDS * latency_orders;
    Ok(vec![
        Row {
            workload: "HTTP: 256 clients, POST → StockReserved (SQLite), telemetry off".to_owned(),
            count: total,
            latency: None,
            throughput: Some((off, "flows/s")),
            ratio: None,
            note: format!(
                "mean of {TELEMETRY_ROUNDS} runs: {} flows/s; server CPU {:.0} µs per flow",
                runs(off_runs),
                micros(off_cpu)
            ),
        },
        Row {
            workload: "HTTP: the same, telemetry on (metrics + spans, no exporter)".to_owned(),
            count: total,
            latency: None,
            throughput: Some((on, "flows/s")),
            ratio: Some(format!("{median_ratio:.3} × off")),
            note: format!(
                "mean of {TELEMETRY_ROUNDS} runs, alternated with the off runs (ABBA): {} flows/s; ratio: median of the rounds' on/off ({lowest:.2}–{highest:.2}; of the means {:.3}); server CPU {:.0} µs per flow ({:.3} × off)",
                runs(on_runs),
                on / off,
                micros(on_cpu),
                on_cpu / off_cpu
            ),
        },
        Row {
            workload: "HTTP: 64 clients, Payments + Stock 10 ms each (SQLite), telemetry off"
                .to_owned(),
            count: latency_total,
            latency: off_lat,
            throughput: Some((
                latency_total as f64 / latency_elapsed[0].as_secs_f64(),
                "flows/s",
            )),
            ratio: None,
            note: String::new(),
        },
        Row {
            workload: "HTTP: the same, telemetry on (metrics + spans, no exporter)".to_owned(),
            count: latency_total,
            latency: on_lat,
            throughput: Some((
                latency_total as f64 / latency_elapsed[1].as_secs_f64(),
                "flows/s",
            )),
            ratio: p99_ratio,
            note: String::new(),
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_is_the_middle_value_or_the_mean_of_the_two_middle_ones() {
        assert!((median(&[1.0, 2.0, 9.0]) - 2.0).abs() < f64::EPSILON);
        assert!((median(&[1.0, 2.0, 4.0, 9.0]) - 3.0).abs() < f64::EPSILON);
        assert!(median(&[]).is_nan());
    }
}
