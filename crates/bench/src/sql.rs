//! The SQL rows: the service code on a scratch SQLite file or PostgreSQL database
//! (complete flows/s and paced latency), next to a raw-driver baseline of the same
//! transactions in plain SQL: rusqlite for SQLite (the driver its store writes with),
//! sqlx for PostgreSQL.

use std::time::{Duration, Instant};

use sqlx::{Executor, PgPool, postgres::PgPoolOptions};

use crate::{
    flows::{paced_latency, throughput},
    report::Row,
    scratch::Scratch,
    system::OpenedStore,
};

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
    let opened = OpenedStore::open(&scratch.url).await?;
    let mut ours = throughput(label, opened.stores(), orders, clients).await?;
    opened.close().await;
    scratch.remove().await;

    eprintln!("bench: {label} raw-driver baseline ({orders} flows)…");
    let scratch = make().await?;
    let raw = match scratch.url.strip_prefix("sqlite:") {
        Some(path) => raw_sqlite(label, path, orders).await,
        None => raw_postgres(label, &scratch.url, orders, clients).await,
    };
    scratch.remove().await;
    let raw = raw?;
    if let (Some((o, _)), Some((r, _))) = (ours.throughput, raw.throughput) {
        ours.ratio = Some(format!("{:.2} × raw", o / r));
    }

    eprintln!("bench: {label} paced latency ({rate} orders/s for {seconds} s)…");
    let scratch = make().await?;
    let opened = OpenedStore::open(&scratch.url).await?;
    let paced = paced_latency(label, opened.stores(), rate, seconds).await;
    opened.close().await;
    scratch.remove().await;
    Ok(vec![ours, raw, paced?])
}

/// The same transactions as a flow through the service, in plain SQL on raw sqlx
/// (PostgreSQL, `clients` tasks on 16 pooled connections): checkout (order + outbox
/// row), relay mark, payment (inbox check, load, then inbox + versioned update + outbox
/// row), relay mark, reservation (inbox check, load, inbox + versioned update). Payloads
/// of the same size as the real ones.
async fn raw_postgres(label: &str, url: &str, flows: usize, clients: usize) -> anyhow::Result<Row> {
    let envelope = "x".repeat(620);
    let order = "y".repeat(900);
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect(url)
        .await?;
    pool.execute(
        "CREATE TABLE orders (id TEXT PRIMARY KEY, version BIGINT NOT NULL, data TEXT NOT NULL);
         CREATE TABLE outbox (position BIGSERIAL PRIMARY KEY, message_id TEXT UNIQUE NOT NULL, order_id TEXT NOT NULL, envelope TEXT NOT NULL, sent_at TEXT);
         CREATE TABLE inbox (subscriber TEXT NOT NULL, message_id TEXT NOT NULL, order_id TEXT NOT NULL, PRIMARY KEY (subscriber, message_id));",
    )
    .await?;
    let started = Instant::now();
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

async fn raw_flow(pool: &PgPool, envelope: &str, order: &str) -> Result<(), sqlx::Error> {
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
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
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
async fn mark_sent(pool: &PgPool, now: &str, message_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE outbox SET sent_at = $1 WHERE message_id = $2")
        .bind(now)
        .bind(message_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// The SQLite baseline on the driver the store uses (rusqlite), in its plainest form:
/// one connection on one thread, each transaction of a flow (the same ones as
/// [`raw_postgres`]) committed on its own, one flow after the other.
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
