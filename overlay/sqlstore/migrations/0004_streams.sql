-- Stream definitions: the name, the key its creator publishes with and when
-- it was made. With PostgreSQL every node of a cluster reads them here, so
-- any node accepts any creator's key. A single node on SQLite keeps them in
-- streams.json in the data directory and leaves this table empty.
CREATE TABLE streams (
	name       TEXT PRIMARY KEY,
	stream_key TEXT NOT NULL,
	created_at BIGINT NOT NULL
);
