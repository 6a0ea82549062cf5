-- Orders of several lines: an order event may carry every line with its own status.

-- The seq of the order event that last wrote the row: an item only moves with its order,
-- so a replayed or late event (lower seq) never overwrites a newer one. Rows written
-- before this migration take their order's seq.
ALTER TABLE order_items ADD COLUMN seq integer NOT NULL DEFAULT 0;
UPDATE order_items AS i SET seq = o.seq FROM orders AS o WHERE o.order_id = i.order_id;
ALTER TABLE order_items ALTER COLUMN seq DROP DEFAULT;

-- `status` stays the order's status, as on every row so far. The line's own status
-- (RESERVED, REJECTED, RELEASED, COMMITTED) and why it was rejected are known when the
-- event listed the order's items (every multi-line order's events do); NULL otherwise.
ALTER TABLE order_items ADD COLUMN line_status text;
ALTER TABLE order_items ADD COLUMN line_reason text;
