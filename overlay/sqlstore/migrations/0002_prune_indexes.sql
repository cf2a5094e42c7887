-- Prune finds old idempotency keys and acknowledged events by time. Without
-- these it would scan whole tables while holding the writer that buyers
-- queue for.
CREATE INDEX buy_keys_created ON buy_keys (created_at);
CREATE INDEX outbox_delivered ON outbox (delivered_at) WHERE delivered_at <> 0;
