-- The HTTP intake's Idempotency-Keys: each key is claimed with a digest of the validated
-- order, before the order is published, so that a retry with the same key is answered
-- as the first request was and a reuse with another body is refused. Rows older than
-- the dedup window are deleted by the intake (the index makes that a range scan).
CREATE TABLE idempotency_keys (
    key          text PRIMARY KEY,
    body_sha256  bytea NOT NULL CHECK (length(body_sha256) = 32),
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

-- GET /admin/orders: every order, newest first, order_id breaking ties (its keyset).
-- Filters by status and time read this index too; status gets no index of its own: it
-- changes on every transition, and an indexed column would deny the sink's updates of
-- orders the cheap in-page (HOT) path.
CREATE INDEX orders_by_created ON orders (created_at DESC, order_id DESC);
-- Orders having an item of a product: the items' key starts with order_id, so without
-- this index a rarely sold product's orders are found by reading every order.
CREATE INDEX order_items_by_product ON order_items (product_id, order_id);
