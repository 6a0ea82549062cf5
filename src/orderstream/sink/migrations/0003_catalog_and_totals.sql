-- What a shop needs around the sale: prices and totals (exact numerics, never floats),
-- the order's addresses and notes, who overrode an order, and the catalog of a product.
-- Every column is NULL where nothing is known: rows written before stay valid as they are.

-- The order's total in `currency` (NULL while a line has no price), and its metadata
-- as the shop sent it; the sink never erases these with an event that lacks them.
ALTER TABLE orders ADD COLUMN total numeric(16, 4);
ALTER TABLE orders ADD COLUMN currency text;
ALTER TABLE orders ADD COLUMN shipping_address jsonb;
ALTER TABLE orders ADD COLUMN billing_address jsonb;
ALTER TABLE orders ADD COLUMN notes text;

-- The unit price the line was decided at: a later change of the catalog never alters it.
ALTER TABLE order_items ADD COLUMN unit_price numeric(14, 4);
ALTER TABLE order_items ADD COLUMN currency text;

-- Why the transition happened, and the operator who made it when it was an override.
ALTER TABLE order_events ADD COLUMN detail text;
ALTER TABLE order_events ADD COLUMN actor text;

-- The catalog as the product's last stock change carried it: the price of lines decided
-- from then on, and the product's own per-user limit (NULL: the default setting).
ALTER TABLE product_stock ADD COLUMN price numeric(14, 4);
ALTER TABLE product_stock ADD COLUMN currency text;
ALTER TABLE product_stock ADD COLUMN max_per_user integer;
