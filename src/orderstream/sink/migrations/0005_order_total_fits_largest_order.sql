-- An order's total fits whatever order the rules accept. The largest is the largest
-- price (numeric(14, 4): 9999999999.9999) x the largest line quantity (2^31 - 1, topics.
-- MAX_QUANTITY) x the most lines (100, topics.MAX_LINE_COUNT) = 2147483646999978525163.53:
-- 22 digits before the point, 4 after. numeric(16, 4) held 12 before it, so PostgreSQL
-- refused such an order's every event (dead-lettered) while the shopper was charged.
-- A line's unit price and a product's price stay numeric(14, 4): exactly a Price.
-- tests/unit/test_money_columns.py recomputes the bound from the limits, so a wider limit
-- that outgrows this column fails there. Widening a numeric at the same scale rewrites
-- no row.
ALTER TABLE orders ALTER COLUMN total TYPE numeric(26, 4);
