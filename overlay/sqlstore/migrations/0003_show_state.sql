-- What each stream's show is doing, so that a restart picks it up: the
-- product whose card is on screen ('' for none), the list-price sale that
-- makes it buyable, the flash sale running ('' for none) and the
-- run-of-show with its progress (JSON of overlay.RunOfShow). Written in the
-- transaction that opens and ends those sales.
CREATE TABLE show_state (
	stream       TEXT PRIMARY KEY,
	card_sku     TEXT NOT NULL DEFAULT '',
	list_sale_id TEXT NOT NULL DEFAULT '',
	sale_id      TEXT NOT NULL DEFAULT '',
	run_of_show  TEXT NOT NULL DEFAULT '',
	updated_at   BIGINT NOT NULL
);
