-- The Orders store on PostgreSQL: orders, idempotency keys, the transactional outbox and
-- the inbox. Tables are created in the first schema of the search_path.

-- One row per order. `data` is the whole order snapshot (amounts as strings, so they
-- stay exact); `version`, `status` and the times are copied out for SQL readers.
CREATE TABLE orders (
    id         UUID        PRIMARY KEY,
    version    BIGINT      NOT NULL CHECK (version > 0),
    status     TEXT        NOT NULL,
    data       JSONB       NOT NULL,
    placed_at  TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

-- Optimistic concurrency, enforced by the database: a write stores `version` = the
-- version it read + 1, and a new order is inserted at version 1. Anything else would be
-- a lost update: the statement fails with a serialization failure.
CREATE FUNCTION orders_version_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (TG_OP = 'INSERT' AND NEW.version <> 1)
       OR (TG_OP = 'UPDATE' AND NEW.version <> OLD.version + 1) THEN
        RAISE EXCEPTION 'order version conflict' USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN NEW;
END
$$;
-- AFTER INSERT, not BEFORE: an upsert fires BEFORE INSERT triggers even when it updates.
CREATE TRIGGER orders_insert_at_version_one AFTER INSERT ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_version_guard();
CREATE TRIGGER orders_update_one_version_up BEFORE UPDATE OF version ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_version_guard();

-- A client's checkout idempotency key → the order it created.
CREATE TABLE idempotency_keys (
    key      TEXT PRIMARY KEY,
    order_id UUID NOT NULL REFERENCES orders (id) DEFERRABLE INITIALLY DEFERRED
);

-- Integration messages committed with the order change that produced them. A row is
-- unsent until the relay publishes it; a row whose envelope cannot be decoded is parked.
-- The envelope is kept as the exact text that will be published.
CREATE TABLE outbox (
    position    BIGSERIAL   PRIMARY KEY,
    message_id  UUID        NOT NULL UNIQUE,
    order_id    UUID,
    topic       TEXT        NOT NULL,
    envelope    TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    sent_at     TIMESTAMPTZ,
    parked_at   TIMESTAMPTZ,
    park_reason TEXT
);
-- What the relay scans: only unsent, unparked rows, in position order.
CREATE INDEX outbox_unsent ON outbox (position) WHERE sent_at IS NULL AND parked_at IS NULL;
CREATE INDEX outbox_parked ON outbox (position) WHERE parked_at IS NOT NULL;
-- Retention: sent rows by age.
CREATE INDEX outbox_sent_at ON outbox (sent_at) WHERE sent_at IS NOT NULL;
-- An order's history.
CREATE INDEX outbox_order ON outbox (order_id);

-- Messages each subscriber handled, written with their effect. `seq` draws from the
-- outbox's sequence (a commit takes the inbox row's number before its outbox rows'), so
-- inbox and outbox rows share one commit order.
CREATE TABLE inbox (
    subscriber TEXT        NOT NULL,
    message_id UUID        NOT NULL,
    seq        BIGINT      NOT NULL DEFAULT nextval('outbox_position_seq'),
    order_id   UUID        NOT NULL,
    topic      TEXT        NOT NULL,
    outcome    TEXT        NOT NULL CHECK (outcome IN ('applied', 'duplicate', 'rejected')),
    detail     TEXT,
    handled_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (subscriber, message_id)
);
CREATE INDEX inbox_order ON inbox (order_id);
CREATE INDEX inbox_handled_at ON inbox (handled_at);
