-- The read side of the pipeline: what was decided, as the sink persists it.

CREATE TABLE orders (
    order_id    text PRIMARY KEY,
    user_id     text NOT NULL,
    status      text NOT NULL,
    reason      text,
    detail      text,
    -- The order's last applied event: a replayed or late event with a lower seq is ignored.
    seq         integer NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
-- Keyset pagination of a user's orders: newest first, order_id breaks ties.
CREATE INDEX orders_by_user ON orders (user_id, created_at DESC, order_id DESC);

CREATE TABLE order_items (
    order_id    text NOT NULL REFERENCES orders (order_id),
    product_id  text NOT NULL,
    quantity    integer NOT NULL CHECK (quantity >= 1),
    status      text NOT NULL,
    PRIMARY KEY (order_id, product_id)
);

-- The history: one row per (order, seq), whatever replays happen.
CREATE TABLE order_events (
    order_id         text NOT NULL,
    seq              integer NOT NULL,
    status           text NOT NULL,
    reason           text,
    product_id       text NOT NULL,
    quantity         integer NOT NULL,
    requested_at     timestamptz NOT NULL,
    occurred_at      timestamptz NOT NULL,
    kafka_partition  integer NOT NULL,
    kafka_offset     bigint NOT NULL,
    PRIMARY KEY (order_id, seq)
);

CREATE TABLE product_stock (
    product_id  text PRIMARY KEY,
    available   bigint NOT NULL CHECK (available >= 0),
    reserved    bigint NOT NULL CHECK (reserved >= 0),
    sold        bigint NOT NULL CHECK (sold >= 0),
    -- Initial stock + restocks: the conservation invariant is total_in = the sum of the three.
    total_in    bigint NOT NULL CHECK (total_in = available + reserved + sold),
    version     bigint NOT NULL,
    updated_at  timestamptz NOT NULL
);
