-- A stored message is fetched by (recipient, sent_at, order_key) only, along
-- pending_recipient_order (see take_pending), which also serves the foreign key's
-- lookups by recipient. The older index on (recipient, seq) served no query and cost
-- every stored message an index entry.
DROP INDEX IF EXISTS pending_recipient;
