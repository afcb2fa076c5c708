-- The Orders store on SQLite: orders, idempotency keys, the transactional outbox and the
-- inbox. Timestamps are TEXT in one fixed-width UTC format (YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ),
-- so text order is time order and range scans on the indexes work.

-- One row per order. `data` is the whole order snapshot as JSON (amounts as strings, so
-- they stay exact); `version`, `status` and the times are copied out for SQL readers.
CREATE TABLE orders (
    id         TEXT    PRIMARY KEY NOT NULL,
    version    INTEGER NOT NULL CHECK (version > 0),
    status     TEXT    NOT NULL,
    data       TEXT    NOT NULL,
    placed_at  TEXT    NOT NULL,
    updated_at TEXT    NOT NULL
);

-- Optimistic concurrency, enforced by the database: a write stores `version` = the
-- version it read + 1, and a new order is inserted at version 1. Anything else would be
-- a lost update: the statement fails (and the store rolls the commit back).
CREATE TRIGGER orders_insert_at_version_one AFTER INSERT ON orders
    WHEN NEW.version <> 1
BEGIN
    SELECT RAISE(ABORT, 'order version conflict');
END;
CREATE TRIGGER orders_update_one_version_up BEFORE UPDATE OF version ON orders
    WHEN NEW.version <> OLD.version + 1
BEGIN
    SELECT RAISE(ABORT, 'order version conflict');
END;

-- A client's checkout idempotency key → the order it created.
CREATE TABLE idempotency_keys (
    key      TEXT PRIMARY KEY NOT NULL,
    order_id TEXT NOT NULL REFERENCES orders (id) DEFERRABLE INITIALLY DEFERRED
) WITHOUT ROWID;

-- Integration messages committed with the order change that produced them. `position`
-- is the commit order (AUTOINCREMENT: never reused, even after pruning). A row is unsent
-- until the relay publishes it; a row whose envelope cannot be decoded is parked.
CREATE TABLE outbox (
    position    INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id  TEXT NOT NULL UNIQUE,
    order_id    TEXT,
    topic       TEXT NOT NULL,
    envelope    TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    sent_at     TEXT,
    parked_at   TEXT,
    park_reason TEXT
);
-- What the relay scans: only unsent, unparked rows, in position order.
CREATE INDEX outbox_unsent ON outbox (position) WHERE sent_at IS NULL AND parked_at IS NULL;
CREATE INDEX outbox_parked ON outbox (position) WHERE parked_at IS NOT NULL;
-- Retention: sent rows by age.
CREATE INDEX outbox_sent_at ON outbox (sent_at) WHERE sent_at IS NOT NULL;
-- An order's history.
CREATE INDEX outbox_order ON outbox (order_id);

-- Messages each subscriber handled, written with their effect. `seq` is taken from the
-- outbox's AUTOINCREMENT counter (the insert reads it + 1, the trigger below stores it
-- back), so inbox and outbox rows share one commit order, like one sequence would.
CREATE TABLE inbox (
    subscriber TEXT    NOT NULL,
    message_id TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    order_id   TEXT    NOT NULL,
    topic      TEXT    NOT NULL,
    outcome    TEXT    NOT NULL CHECK (outcome IN ('applied', 'duplicate', 'rejected')),
    detail     TEXT,
    handled_at TEXT    NOT NULL,
    PRIMARY KEY (subscriber, message_id)
) WITHOUT ROWID;
CREATE INDEX inbox_order ON inbox (order_id);
CREATE INDEX inbox_handled_at ON inbox (handled_at);

-- Moves the outbox's counter past the inbox row's `seq`, so the next outbox row (in this
-- commit or a later one) gets a higher position.
CREATE TRIGGER inbox_takes_a_position AFTER INSERT ON inbox
BEGIN
    INSERT INTO sqlite_sequence (name, seq)
        SELECT 'outbox', 0 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'outbox');
    UPDATE sqlite_sequence SET seq = NEW.seq WHERE name = 'outbox' AND seq < NEW.seq;
END;
