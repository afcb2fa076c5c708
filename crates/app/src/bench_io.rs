//! The I/O rows of `app bench`: the service code on SQLite and PostgreSQL (complete
//! flows/s and paced latency), a raw-driver baseline of the same transactions in plain
//! SQL, and HTTP rows against a real `app serve` child process on loopback.

use std::{
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use sqlx::{Connection, Executor};

use crate::{
    bench::{Percentiles, Row, paced_latency, throughput},
    serve::{OpenedStore, StoreSpec, open_store},
};

/// A fresh, empty store for one workload, and how to throw it away afterwards.
pub struct Scratch {
    /// What to pass as `--store` / to `open_store`.
    pub spec: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Files(std::path::PathBuf),
    Database { admin_url: String, name: String },
}

impl Scratch {
    /// Opens the store it names (applying the migrations).
    ///
    /// # Errors
    /// When the spec does not parse or the store cannot be opened.
    pub async fn open(&self) -> anyhow::Result<OpenedStore> {
        open_store(&self.spec.parse::<StoreSpec>().map_err(anyhow::Error::msg)?).await
    }

    /// A new SQLite file under the temp folder.
    #[must_use]
    pub fn sqlite() -> Self {
        let path =
            std::env::temp_dir().join(format!("orders-bench-{}.db", uuid::Uuid::new_v4().simple()));
        Self {
            spec: format!("sqlite:{}", path.display()),
            cleanup: Cleanup::Files(path),
        }
    }

    /// A new database on the PostgreSQL server of `admin_url`.
    ///
    /// # Errors
    /// When the server does not answer or refuses.
    pub async fn postgres(admin_url: &str) -> anyhow::Result<Self> {
        let name = format!("orders_bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .context("connect to PostgreSQL")?;
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await?;
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url, |(base, _)| base);
        Ok(Self {
            spec: format!("{base}/{name}"),
            cleanup: Cleanup::Database {
                admin_url: admin_url.to_owned(),
                name,
            },
        })
    }

    /// Removes the file or drops the database.
    pub async fn remove(self) {
        match self.cleanup {
            Cleanup::Files(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Cleanup::Database { admin_url, name } => {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = admin
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                }
            }
        }
    }
}

/// Service-code rows for one database: throughput, its raw-driver baseline and ratio,
/// and paced latency.
///
/// # Errors
/// When the database cannot be set up or a workload does not complete.
pub async fn store_rows(
    label: &str,
    make: impl AsyncFn() -> anyhow::Result<Scratch>,
    orders: usize,
    clients: usize,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Vec<Row>> {
    eprintln!("bench: {label} throughput ({orders} orders, {clients} clients)…");
    let scratch = make().await?;
    let opened = scratch.open().await?;
    let mut ours = throughput(label, opened.stores.clone(), orders, clients).await?;
    opened.close().await;
    scratch.remove().await;

    eprintln!("bench: {label} raw-driver baseline ({orders} flows)…");
    let scratch = make().await?;
    let raw = match scratch.spec.strip_prefix("sqlite:") {
        Some(path) => raw_sqlite(label, path, orders).await,
        None => raw_driver(label, &scratch.spec, orders, clients).await,
    };
    scratch.remove().await;
    let raw = raw?;
    if let (Some((o, _)), Some((r, _))) = (ours.throughput, raw.throughput) {
        ours.ratio = Some(format!("{:.2} × raw", o / r));
    }

    eprintln!("bench: {label} paced latency ({rate} orders/s for {seconds} s)…");
    let scratch = make().await?;
    let opened = scratch.open().await?;
    let paced = paced_latency(label, opened.stores.clone(), rate, seconds).await;
    opened.close().await;
    scratch.remove().await;
    Ok(vec![ours, raw, paced?])
}

/// The same transactions as a flow through the service, in plain SQL on the raw driver:
/// checkout (order + outbox row), relay mark, payment (inbox check, load, then inbox +
/// versioned update + outbox row), relay mark, reservation (inbox check, load, inbox +
/// versioned update). Payloads of the same size as the real ones.
async fn raw_driver(label: &str, url: &str, flows: usize, clients: usize) -> anyhow::Result<Row> {
    let envelope = "x".repeat(620);
    let order = "y".repeat(900);
    let run = |pool: sqlx::AnyPool| {
        let envelope = envelope.clone();
        let order = order.clone();
        async move {
            let per_client = flows.div_ceil(clients.max(1));
            let mut tasks = Vec::new();
            for client in 0..clients.max(1) {
                let pool = pool.clone();
                let (envelope, order) = (envelope.clone(), order.clone());
                let count = per_client.min(flows.saturating_sub(client * per_client));
                tasks.push(tokio::spawn(async move {
                    for _ in 0..count {
                        raw_flow(&pool, &envelope, &order).await?;
                    }
                    Ok::<_, sqlx::Error>(())
                }));
            }
            for task in tasks {
                task.await??;
            }
            Ok::<_, anyhow::Error>(())
        }
    };
    sqlx::any::install_default_drivers();
    let pool = if url.starts_with("sqlite:") {
        let url = format!("{url}?mode=rwc");
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;").await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        pool.execute(
            "CREATE TABLE orders (id TEXT PRIMARY KEY, version INTEGER NOT NULL, data TEXT NOT NULL);
             CREATE TABLE outbox (position INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT UNIQUE NOT NULL, order_id TEXT NOT NULL, envelope TEXT NOT NULL, sent_at TEXT);
             CREATE TABLE inbox (subscriber TEXT NOT NULL, message_id TEXT NOT NULL, order_id TEXT NOT NULL, PRIMARY KEY (subscriber, message_id));",
        )
        .await?;
        pool
    } else {
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(16)
            .connect(url)
            .await?;
        pool.execute(
            "CREATE TABLE orders (id TEXT PRIMARY KEY, version BIGINT NOT NULL, data TEXT NOT NULL);
             CREATE TABLE outbox (position BIGSERIAL PRIMARY KEY, message_id TEXT UNIQUE NOT NULL, order_id TEXT NOT NULL, envelope TEXT NOT NULL, sent_at TEXT);
             CREATE TABLE inbox (subscriber TEXT NOT NULL, message_id TEXT NOT NULL, order_id TEXT NOT NULL, PRIMARY KEY (subscriber, message_id));",
        )
        .await?;
        pool
    };
    let started = Instant::now();
    run(pool.clone()).await?;
    let elapsed = started.elapsed();
    pool.close().await;
    Ok(Row {
        workload: format!("baseline: the same transactions in plain SQL ({label}, raw sqlx)"),
        count: flows,
        latency: None,
        throughput: Some((flows as f64 / elapsed.as_secs_f64(), "flows/s")),
        ratio: None,
        note: "3 write transactions + 2 relay marks + 4 reads per flow".to_owned(),
    })
}

async fn raw_flow(pool: &sqlx::AnyPool, envelope: &str, order: &str) -> Result<(), sqlx::Error> {
    let id = uuid::Uuid::new_v4().to_string();
    let now = chrono::Utc::now().to_rfc3339();
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO orders (id, version, data) VALUES ($1, 1, $2)")
        .bind(&id)
        .bind(order)
        .execute(&mut *tx)
        .await?;
    let placed = insert_outbox(&mut tx, &id, envelope).await?;
    tx.commit().await?;
    mark_sent(pool, &now, &placed).await?;
    for (step, outbox) in [(2i64, true), (3, false)] {
        let message = uuid::Uuid::new_v4().to_string();
        sqlx::query("SELECT 1 FROM inbox WHERE subscriber = $1 AND message_id = $2")
            .bind("orders")
            .bind(&message)
            .fetch_optional(pool)
            .await?;
        sqlx::query("SELECT data, version FROM orders WHERE id = $1")
            .bind(&id)
            .fetch_one(pool)
            .await?;
        let mut tx = pool.begin().await?;
        sqlx::query("INSERT INTO inbox (subscriber, message_id, order_id) VALUES ($1, $2, $3)")
            .bind("orders")
            .bind(&message)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE orders SET data = $1, version = $2 WHERE id = $3 AND version = $4")
            .bind(order)
            .bind(step)
            .bind(&id)
            .bind(step - 1)
            .execute(&mut *tx)
            .await?;
        if outbox {
            let paid = insert_outbox(&mut tx, &id, envelope).await?;
            tx.commit().await?;
            mark_sent(pool, &now, &paid).await?;
        } else {
            tx.commit().await?;
        }
    }
    Ok(())
}

/// Adds an outbox row in `tx`; returns its message id.
async fn insert_outbox(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    order_id: &str,
    envelope: &str,
) -> Result<String, sqlx::Error> {
    let message_id = uuid::Uuid::new_v4().to_string();
    sqlx::query("INSERT INTO outbox (message_id, order_id, envelope) VALUES ($1, $2, $3)")
        .bind(&message_id)
        .bind(order_id)
        .bind(envelope)
        .execute(&mut **tx)
        .await?;
    Ok(message_id)
}

/// What the relay does after publishing a row.
async fn mark_sent(pool: &sqlx::AnyPool, now: &str, message_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE outbox SET sent_at = $1 WHERE message_id = $2")
        .bind(now)
        .bind(message_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// The SQLite baseline on the driver the store uses (rusqlite), in its plainest form:
/// one connection on one thread, each transaction of a flow (the same ones as
/// [`raw_driver`]) committed on its own, one flow after the other.
async fn raw_sqlite(label: &str, path: &str, flows: usize) -> anyhow::Result<Row> {
    let path = path.to_owned();
    let elapsed = tokio::task::spawn_blocking(move || -> anyhow::Result<Duration> {
        let mut conn = rusqlite::Connection::open(&path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;
             CREATE TABLE orders (id TEXT PRIMARY KEY, version INTEGER NOT NULL, data TEXT NOT NULL);
             CREATE TABLE outbox (position INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT UNIQUE NOT NULL, order_id TEXT NOT NULL, envelope TEXT NOT NULL, sent_at TEXT);
             CREATE TABLE inbox (subscriber TEXT NOT NULL, message_id TEXT NOT NULL, order_id TEXT NOT NULL, PRIMARY KEY (subscriber, message_id));",
        )?;
        let envelope = "x".repeat(620);
        let order = "y".repeat(900);
        let started = Instant::now();
        for _ in 0..flows {
            raw_sqlite_flow(&mut conn, &envelope, &order)?;
        }
        Ok(started.elapsed())
    })
    .await??;
    Ok(Row {
        workload: format!("baseline: the same transactions in plain SQL ({label}, raw rusqlite)"),
        count: flows,
        latency: None,
        throughput: Some((flows as f64 / elapsed.as_secs_f64(), "flows/s")),
        ratio: None,
        note: "3 write transactions + 2 relay marks + 4 reads per flow, one at a time".to_owned(),
    })
}

fn raw_sqlite_flow(
    conn: &mut rusqlite::Connection,
    envelope: &str,
    order: &str,
) -> rusqlite::Result<()> {
    use rusqlite::{OptionalExtension, params};
    let id = uuid::Uuid::now_v7().to_string();
    let now = chrono::Utc::now().to_rfc3339();
    let insert_outbox = |tx: &rusqlite::Transaction<'_>| -> rusqlite::Result<String> {
        let message_id = uuid::Uuid::now_v7().to_string();
        tx.prepare_cached(
            "INSERT INTO outbox (message_id, order_id, envelope) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![message_id, id, envelope])?;
        Ok(message_id)
    };
    let mark_sent = |conn: &rusqlite::Connection, message_id: &str| -> rusqlite::Result<()> {
        conn.prepare_cached("UPDATE outbox SET sent_at = ?1 WHERE message_id = ?2")?
            .execute(params![now, message_id])?;
        Ok(())
    };
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.prepare_cached("INSERT INTO orders (id, version, data) VALUES (?1, 1, ?2)")?
        .execute(params![id, order])?;
    let placed = insert_outbox(&tx)?;
    tx.commit()?;
    mark_sent(conn, &placed)?;
    for (step, outbox) in [(2_i64, true), (3, false)] {
        let message = uuid::Uuid::now_v7().to_string();
        conn.prepare_cached("SELECT 1 FROM inbox WHERE subscriber = ?1 AND message_id = ?2")?
            .query_row(params!["orders", message], |_| Ok(()))
            .optional()?;
        conn.prepare_cached("SELECT data, version FROM orders WHERE id = ?1")?
            .query_row(params![id], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.prepare_cached(
            "INSERT INTO inbox (subscriber, message_id, order_id) VALUES (?1, ?2, ?3)",
        )?
        .execute(params!["orders", message, id])?;
        tx.prepare_cached(
            "UPDATE orders SET data = ?1, version = ?2 WHERE id = ?3 AND version = ?4",
        )?
        .execute(params![order, step, id, step - 1])?;
        if outbox {
            let paid = insert_outbox(&tx)?;
            tx.commit()?;
            mark_sent(conn, &paid)?;
        } else {
            tx.commit()?;
        }
    }
    Ok(())
}

/// An `app serve` child process, killed when dropped.
struct ServerProcess {
    child: Child,
    base: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    async fn start(store: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let exe = std::env::current_exe()?;
        let child = Command::new(exe)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--store",
                store,
            ])
            .args(extra)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start app serve")?;
        let server = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", server.base)).send().await
                && r.status().is_success()
            {
                return Ok(server);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "app serve did not become ready within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn peak_rss(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
            * 1024
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
/// measures, so it should cost as little as it can (reqwest's pool and layers took
/// about a quarter of a core at 2,900 flows/s).
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

async fn http_load(
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

/// HTTP (a): 256 keep-alive clients against `app serve` on a fresh SQLite file, no
/// simulated delay: complete flows per second.
///
/// # Errors
/// When the server does not start or a flow fails.
pub async fn http_throughput(orders: usize) -> anyhow::Result<Row> {
    eprintln!("bench: HTTP throughput ({orders} orders, 256 clients)…");
    let scratch = Scratch::sqlite();
    let server = ServerProcess::start(&scratch.spec, &[]).await?;
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
pub async fn http_latency(orders: usize) -> anyhow::Result<Row> {
    eprintln!("bench: HTTP latency ({orders} orders, 64 clients, Payments and Stock delay 10 ms)…");
    let scratch = Scratch::sqlite();
    let server = ServerProcess::start(
        &scratch.spec,
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
        latency: Percentiles::of(&mut samples),
        throughput: Some((orders as f64 / elapsed.as_secs_f64(), "flows/s")),
        ratio: None,
        note: format!(
            "server peak RSS {:.1} MiB after the first {first} orders, {:.1} MiB after all {orders}",
            mib(peak_first),
            mib(peak)
        ),
    })
}
