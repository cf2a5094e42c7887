-- One schema for SQLite and PostgreSQL: only types and clauses both accept.
-- Times are BIGINT microseconds since the Unix epoch (0 = not set), so both
-- drivers hand back the same value and no time zone is ever involved. IDs are
-- random text made by the store, so no dialect's auto-increment is needed.

CREATE TABLE products (
	sku              TEXT PRIMARY KEY,
	title            TEXT NOT NULL,
	description      TEXT NOT NULL DEFAULT '',
	price_minor      BIGINT NOT NULL,
	currency         TEXT NOT NULL,
	image_url        TEXT NOT NULL DEFAULT '',
	-- The CHECKs repeat the store's conditional updates as a last line of
	-- defence: a bug there fails a transaction instead of overselling.
	stock            BIGINT NOT NULL CHECK (stock >= 0),
	per_viewer_limit BIGINT NOT NULL DEFAULT 0,
	active           BOOLEAN NOT NULL,
	created_at       BIGINT NOT NULL,
	updated_at       BIGINT NOT NULL
);

CREATE TABLE sales (
	id          TEXT PRIMARY KEY,
	stream      TEXT NOT NULL,
	sku         TEXT NOT NULL,
	price_minor BIGINT NOT NULL,
	units       BIGINT NOT NULL,
	units_left  BIGINT NOT NULL CHECK (units_left >= 0),
	starts_at   BIGINT NOT NULL,
	ends_at     BIGINT NOT NULL,
	status      TEXT NOT NULL
);
-- At most one running sale per product on a stream.
CREATE UNIQUE INDEX sales_one_active ON sales (stream, sku) WHERE status = 'active';

CREATE TABLE orders (
	id               TEXT PRIMARY KEY,
	stream           TEXT NOT NULL,
	sku              TEXT NOT NULL,
	sale_id          TEXT NOT NULL,
	viewer_id        TEXT NOT NULL,
	qty              BIGINT NOT NULL,
	unit_price_minor BIGINT NOT NULL,
	currency         TEXT NOT NULL,
	status           TEXT NOT NULL,
	idempotency_key  TEXT NOT NULL,
	created_at       BIGINT NOT NULL,
	expires_at       BIGINT NOT NULL,
	confirmed_at     BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX orders_stream ON orders (stream, created_at);
CREATE INDEX orders_reserved ON orders (expires_at) WHERE status = 'reserved';

-- Units each viewer holds (reserved or confirmed) per product: the per-viewer
-- limit is a conditional upsert on this row.
CREATE TABLE viewer_units (
	sku       TEXT NOT NULL,
	viewer_id TEXT NOT NULL,
	units     BIGINT NOT NULL CHECK (units >= 0),
	PRIMARY KEY (sku, viewer_id)
);

-- First result of each buy, by (viewer, idempotency key). request is what
-- was asked, to refuse a key reused for something else.
CREATE TABLE buy_keys (
	viewer_id       TEXT NOT NULL,
	idempotency_key TEXT NOT NULL,
	request         TEXT NOT NULL,
	result          TEXT NOT NULL,
	created_at      BIGINT NOT NULL,
	PRIMARY KEY (viewer_id, idempotency_key)
);

-- Events for the merchant, written in the transaction of the change.
CREATE TABLE outbox (
	id              TEXT PRIMARY KEY,
	type            TEXT NOT NULL,
	payload         TEXT NOT NULL,
	created_at      BIGINT NOT NULL,
	next_attempt_at BIGINT NOT NULL,
	attempts        BIGINT NOT NULL DEFAULT 0,
	last_error      TEXT NOT NULL DEFAULT '',
	delivered_at    BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE delivered_at = 0;
