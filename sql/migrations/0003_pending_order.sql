-- Stored messages are delivered in the order their server accepted them, not the
-- order they were stored in: a message whose live delivery failed is stored later
-- than newer ones that went straight to storage. order_key is the accepting server's
-- monotonic counter (its incarnation in the high bits), so (sent_at, order_key) keeps
-- each sender's order.
ALTER TABLE pending ADD COLUMN order_key bigint NOT NULL DEFAULT 0;
CREATE INDEX pending_recipient_order ON pending (recipient, sent_at, order_key);
