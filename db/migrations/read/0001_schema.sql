-- Read model (SPEC §2). Rows are only ever changed by adding deltas, so any
-- arrival order of events gives the same result.

CREATE TABLE product_sales_view (
  product_id          INTEGER PRIMARY KEY,
  total_quantity_sold INTEGER NOT NULL DEFAULT 0,
  total_revenue       DECIMAL NOT NULL DEFAULT 0,
  order_count         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX product_sales_view_revenue_idx ON product_sales_view (total_revenue DESC, product_id);
CREATE INDEX product_sales_view_quantity_idx ON product_sales_view (total_quantity_sold DESC, product_id);

CREATE TABLE category_metrics_view (
  category_name VARCHAR PRIMARY KEY,
  total_revenue DECIMAL NOT NULL DEFAULT 0,
  total_orders  INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE customer_ltv_view (
  customer_id     INTEGER PRIMARY KEY,
  total_spent     DECIMAL NOT NULL DEFAULT 0,
  order_count     INTEGER NOT NULL DEFAULT 0,
  last_order_date TIMESTAMP
);
CREATE INDEX customer_ltv_view_spent_idx ON customer_ltv_view (total_spent DESC, customer_id);

CREATE TABLE hourly_sales_view (
  hour_timestamp TIMESTAMP PRIMARY KEY,
  total_orders   INTEGER NOT NULL DEFAULT 0,
  total_revenue  DECIMAL NOT NULL DEFAULT 0
);

CREATE TABLE processed_events (
  event_id     VARCHAR PRIMARY KEY,
  processed_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);

-- Every outbox id at or below last_event_id is known to be in processed_events
-- (or never existed); the reconciler only looks above it. One row.
CREATE TABLE reconciler_watermark (
  singleton     BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
  last_event_id BIGINT NOT NULL DEFAULT 0
);
INSERT INTO reconciler_watermark DEFAULT VALUES;
