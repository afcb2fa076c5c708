//! The conformance suite on SQLite (a temp file per test, and `sqlite::memory:`), and what
//! only a file has: it survives reopening, its folder is created, migrations run once.

use std::{sync::Arc, time::Duration};

use orders_app::{
    Clock as _, Commit, DeadlinePass, HandlingOutcome, ManualClock, OrderStore, OrdersConfig,
    OrdersService, Outbox, PaymentDeadlines,
};
use orders_domain::OrderStatus;
use orders_store::SqliteOrderStore;
use rusqlite::Connection;
use uuid::Uuid;

use orders_store::scratch::ScratchFile;

use crate::support::{
    RecordingBus, at, cancellations_sent, checkout, handled, messages_of, migrations, new_order,
    path_of, place,
};

mod file {
    crate::conformance::suite!(crate::support::Backend::SqliteFile, durable);
}

mod in_memory {
    crate::conformance::suite!(crate::support::Backend::SqliteInMemory, durable);
}

#[tokio::test]
async fn data_survives_reopening_the_file() {
    let file = ScratchFile::new();
    let store = SqliteOrderStore::connect(path_of(&file)).await.unwrap();
    let mut order = new_order(at(0));
    let outbox = messages_of(&mut order, None);
    let record = handled(order.id(), "test.created", HandlingOutcome::Applied, at(0));
    let version = store
        .commit(Commit {
            order: Some(order.clone()),
            outbox,
            inbox: Some(record.clone()),
            idempotency_key: Some("key-1".to_owned()),
        })
        .await
        .unwrap();
    order.mark_saved(version);
    let second = place(&store, at(1)).await;
    assert_eq!(
        store.relay(1, RecordingBus::new().as_ref()).await.unwrap(),
        1
    );
    let history = store.messages(order.id()).await.unwrap();
    store.close().await;
    drop(store);

    let store = SqliteOrderStore::connect(&format!("sqlite:{}", path_of(&file)))
        .await
        .unwrap();
    assert_eq!(store.load(order.id()).await.unwrap(), Some(order.clone()));
    assert_eq!(store.load(second.id()).await.unwrap(), Some(second));
    assert!(store.is_handled("orders", record.message_id).await.unwrap());
    assert_eq!(
        store.find_by_idempotency_key("key-1").await.unwrap(),
        Some(order.id())
    );
    assert_eq!(store.messages(order.id()).await.unwrap(), history);
    assert_eq!(
        store.unsent().await.unwrap(),
        1,
        "sent stays sent, unsent stays unsent"
    );
    store.close().await;
}

/// A plain connection to the file, to look at it from outside the store.
fn inspect(file: &ScratchFile) -> Connection {
    Connection::open(path_of(file)).unwrap()
}

/// The file's schema version: the number of migrations applied.
fn user_version(conn: &Connection) -> i64 {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap()
}

#[tokio::test]
async fn connecting_twice_applies_the_migrations_once() {
    let file = ScratchFile::new();
    let first = SqliteOrderStore::connect(path_of(&file)).await.unwrap();
    let second = SqliteOrderStore::connect(path_of(&file)).await.unwrap();
    let order = place(&first, at(0)).await;
    assert_eq!(second.load(order.id()).await.unwrap(), Some(order));
    assert_eq!(user_version(&inspect(&file)), migrations("sqlite"));
    first.close().await;
    second.close().await;
}

#[tokio::test]
async fn a_file_migrated_by_the_old_sqlx_migrator_opens_without_rerunning_it() {
    // What the old store left: the schema, sqlx's record of migration 1, user_version 0.
    let file = ScratchFile::new();
    {
        let conn = inspect(&file);
        conn.execute_batch(include_str!(
            "../../migrations/sqlite/0001_orders_outbox_inbox.sql"
        ))
        .unwrap();
        conn.execute_batch(
            "CREATE TABLE _sqlx_migrations (
                 version BIGINT PRIMARY KEY, description TEXT NOT NULL,
                 installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
                 success BOOLEAN NOT NULL, checksum BLOB NOT NULL,
                 execution_time BIGINT NOT NULL);
             INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
                 VALUES (1, 'orders outbox inbox', TRUE, x'00', 1);",
        )
        .unwrap();
        assert_eq!(user_version(&conn), 0);
    }
    // Re-running migration 1 would fail on its CREATE TABLE: connecting proves it did not.
    let store = SqliteOrderStore::connect(&format!("sqlite:{}", path_of(&file)))
        .await
        .unwrap();
    let order = place(&store, at(0)).await;
    assert_eq!(store.load(order.id()).await.unwrap(), Some(order));
    store.close().await;
    assert_eq!(user_version(&inspect(&file)), migrations("sqlite"));
}

#[tokio::test]
async fn a_missing_folder_is_created_and_the_file_is_in_wal_mode() {
    let folder =
        std::env::temp_dir().join(format!("orders-store-test-{}", Uuid::new_v4().simple()));
    let path = folder.join("nested").join("orders.db");
    let store = SqliteOrderStore::connect(path.to_str().unwrap())
        .await
        .unwrap();
    assert!(path.exists());
    let conn = Connection::open(&path).unwrap();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    drop(conn);
    store.close().await;
    std::fs::remove_dir_all(folder).unwrap();
}

#[tokio::test]
async fn a_bad_url_is_unavailable_not_a_panic() {
    let result = SqliteOrderStore::connect("sqlite:///proc/definitely/not/here.db").await;
    assert!(
        matches!(result, Err(orders_app::StoreError::Unavailable { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_store_can_be_opened_on_a_spawned_task() {
    // The connect future must be `Send`, or the app could not open a store in a task.
    let file = ScratchFile::new();
    let path = path_of(&file).to_owned();
    let store = tokio::spawn(async move { SqliteOrderStore::connect(&path).await })
        .await
        .unwrap()
        .unwrap();
    store.close().await;
}

#[tokio::test]
async fn a_relay_between_every_commit_publishes_each_row_once_in_commit_order() {
    // The relay takes what the writer hands over, after its first read of the table.
    let file = ScratchFile::new();
    let store = SqliteOrderStore::connect(path_of(&file)).await.unwrap();
    let bus = RecordingBus::new();
    let mut placed = Vec::new();
    for i in 0..50 {
        placed.push(place(&store, at(i)).await.id());
        store.relay(4, bus.as_ref()).await.unwrap();
    }
    while store.relay(4, bus.as_ref()).await.unwrap() > 0 {}
    let published: Vec<String> = bus
        .published()
        .iter()
        .map(|e| e.correlation_id.clone())
        .collect();
    let expected: Vec<String> = placed.iter().map(ToString::to_string).collect();
    assert_eq!(published, expected);
    assert_eq!(
        store.unsent().await.unwrap(),
        0,
        "every published row is marked sent"
    );
    store.close().await;
}

#[tokio::test]
async fn a_row_another_store_committed_to_the_file_is_relayed_by_the_next_table_read() {
    let file = ScratchFile::new();
    let relaying = SqliteOrderStore::connect(path_of(&file)).await.unwrap();
    let other = SqliteOrderStore::connect(path_of(&file)).await.unwrap();
    let bus = RecordingBus::new();
    assert_eq!(relaying.relay(10, bus.as_ref()).await.unwrap(), 0);

    let order = place(&other, at(0)).await;
    // Nothing hands this row to `relaying`: it finds it when it reads the table again,
    // which it does once a second. That interval is the behaviour under test and nothing
    // signals it, so the relay is asked every 20 ms until then, under a deadline.
    let deadline = tokio::time::Instant::now() + crate::support::DEADLINE;
    while relaying.relay(10, bus.as_ref()).await.unwrap() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the other store's row was not relayed within {:?}",
            crate::support::DEADLINE
        );
        // tidy: allow(sleep) — the relay's re-read interval has no signal to await.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let published = bus.published();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].correlation_id, order.id().to_string());
    assert_eq!(relaying.unsent().await.unwrap(), 0);
    relaying.close().await;
    other.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_steady_concurrent_writes_the_wal_starts_over() {
    let file = ScratchFile::new();
    let store = std::sync::Arc::new(SqliteOrderStore::connect(path_of(&file)).await.unwrap());
    let wal = format!("{}-wal", path_of(&file));
    let writers: Vec<_> = (0..32)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..600 {
                    place(store.as_ref(), at(w * 1000 + i)).await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    // The WAL header's checkpoint sequence number (bytes 12..16, big-endian, in the
    // documented file format) counts the times the WAL started over.
    let header = std::fs::read(&wal).unwrap();
    let restarts = u32::from_be_bytes([header[12], header[13], header[14], header[15]]);
    store.close().await;
    // 19,200 commits make ~19 background checkpoints. Measured: 18 restarts when the
    // writer finishes each one, 4-5 (all before the load built up) when it does not,
    // and then the WAL grew to the writer's own limit of 20,000 pages.
    assert!(
        restarts >= 10,
        "the WAL started over {restarts} times: not under steady load"
    );
}

#[tokio::test]
async fn closing_marks_what_the_relay_published_so_a_restart_sends_nothing_twice() {
    let file = ScratchFile::new();
    let store = SqliteOrderStore::connect(path_of(&file)).await.unwrap();
    let bus = RecordingBus::new();
    assert_eq!(store.relay(10, bus.as_ref()).await.unwrap(), 0);
    for i in 0..3 {
        place(&store, at(i)).await;
    }
    // Published from the hand-over; their marks wait for a batch to fill.
    assert_eq!(store.relay(10, bus.as_ref()).await.unwrap(), 3);
    store.close().await;
    drop(store);

    let store = SqliteOrderStore::connect(path_of(&file)).await.unwrap();
    assert_eq!(store.unsent().await.unwrap(), 0);
    assert_eq!(store.relay(10, bus.as_ref()).await.unwrap(), 0);
    assert_eq!(bus.published().len(), 3);
    store.close().await;
}

/// Set in the child process of [`a_second_process_on_the_file_fails_naming_it_and_the_holder`]:
/// the file it tries to open.
const SECOND_PROCESS_FILE: &str = "ORDERS_STORE_TEST_SECOND_PROCESS_FILE";

/// Runs this test binary again as a second process that opens `file` (see
/// [`a_second_process_on_the_file_fails_naming_it_and_the_holder`]); returns what it printed.
async fn open_in_another_process(file: &str) -> String {
    let file = file.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "sqlite::a_second_process_on_the_file_fails_naming_it_and_the_holder",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(SECOND_PROCESS_FILE, file)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the second process failed: {output:?}"
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn a_second_process_on_the_file_fails_naming_it_and_the_holder() {
    if let Ok(file) = std::env::var(SECOND_PROCESS_FILE) {
        // The second process: report what opening gave.
        match SqliteOrderStore::connect(&file).await {
            Ok(store) => {
                println!("SECOND: opened");
                store.close().await;
            }
            Err(e) => println!("SECOND: refused: {e}"),
        }
        return;
    }
    let file = ScratchFile::new();
    let store = SqliteOrderStore::connect(path_of(&file)).await.unwrap();
    let order = place(&store, at(0)).await;
    let pid = std::process::id();
    let lock = std::fs::read_to_string(format!("{}.lock", path_of(&file))).unwrap();
    assert_eq!(
        lock.trim(),
        pid.to_string(),
        "the lock file names the holder"
    );

    let second = open_in_another_process(path_of(&file)).await;
    println!("{second}");
    assert!(second.contains("SECOND: refused"), "{second}");
    assert!(second.contains(path_of(&file)), "names the file: {second}");
    assert!(
        second.contains(&format!("process {pid}")),
        "names the holder: {second}"
    );
    // Stores of the holding process share its lock.
    let same_process = SqliteOrderStore::connect(path_of(&file)).await.unwrap();
    assert_eq!(
        same_process.load(order.id()).await.unwrap(),
        Some(order.clone())
    );
    same_process.close().await;
    let still = open_in_another_process(path_of(&file)).await;
    assert!(
        still.contains("SECOND: refused"),
        "held while a store is open: {still}"
    );

    store.close().await;
    let after = open_in_another_process(path_of(&file)).await;
    assert!(
        after.contains("SECOND: opened"),
        "after close it opens: {after}"
    );
    let again = SqliteOrderStore::connect(path_of(&file)).await.unwrap();
    assert_eq!(again.load(order.id()).await.unwrap(), Some(order));
    again.close().await;
}

#[tokio::test]
async fn an_order_whose_deadline_passed_while_the_file_was_closed_is_cancelled_once() {
    let file = ScratchFile::new();
    let clock = Arc::new(ManualClock::new(at(0)));
    let config = OrdersConfig {
        payment_timeout: chrono::Duration::minutes(15),
        ..OrdersConfig::default()
    };
    let open = || async { Arc::new(SqliteOrderStore::connect(path_of(&file)).await.unwrap()) };
    let store = open().await;
    let orders = OrdersService::new(store.clone(), clock.clone(), config.clone());
    let id = orders.place_order(checkout(), None).await.unwrap().order_id;
    store.close().await;
    drop((orders, store));

    // The process was down while the deadline passed.
    clock.advance(chrono::Duration::minutes(16));
    let store = open().await;
    let order = store.load(id).await.unwrap().unwrap();
    assert_eq!(
        order.payment_due_at(),
        Some(at(0) + chrono::Duration::minutes(15)),
        "the deadline survived reopening"
    );
    assert_eq!(store.due_for_payment(clock.now(), 10).await.unwrap(), [id]);
    let deadlines = PaymentDeadlines::new(
        OrdersService::new(store.clone(), clock.clone(), config.clone()),
        Duration::from_secs(1),
    );
    let pass = deadlines.run_once().await.unwrap();
    assert_eq!((pass.due, pass.cancelled), (1, 1), "{pass:?}");
    assert_eq!(deadlines.run_once().await.unwrap(), DeadlinePass::default());
    store.close().await;
    drop((deadlines, store));

    // And after another restart it stays cancelled, once.
    let store = open().await;
    let deadlines = PaymentDeadlines::new(
        OrdersService::new(store.clone(), clock.clone(), config),
        Duration::from_secs(1),
    );
    assert_eq!(deadlines.run_once().await.unwrap(), DeadlinePass::default());
    let order = store.load(id).await.unwrap().unwrap();
    assert_eq!(order.status(), OrderStatus::Cancelled);
    assert_eq!(
        order.cancellation_reason().map(|r| r.as_str()),
        Some("payment timeout")
    );
    assert_eq!(cancellations_sent(store.as_ref(), id).await, 1);
    store.close().await;
}
