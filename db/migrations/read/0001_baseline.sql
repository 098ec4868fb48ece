-- read_db, as of the first release: the four views of SPEC §2 (one per
-- projection module in workers/projector/projections/), the idempotent
-- consumer's processed_events, and the pipeline's own bookkeeping. Rows of
-- the views only ever change by adding deltas, so any arrival order of events
-- gives the same result.

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

-- The reconciler's watermark: every outbox id at or below last_event_id is
-- resolved (applied, or a dead letter) or never existed. One row.
CREATE TABLE reconciler_watermark (
  singleton     BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
  last_event_id BIGINT NOT NULL DEFAULT 0
);
INSERT INTO reconciler_watermark DEFAULT VALUES;

-- Events that failed for good (a malformed payload, a write read_db refuses
-- every time, retries run out), and what an operator decided about them:
-- replayed after a fix (the row goes when it applies) or parked with a
-- reason (never applied; verify counts it as decided). The payload is kept
-- so that verify can still do so after the outbox is pruned.
CREATE TABLE dead_letters (
  event_id    VARCHAR PRIMARY KEY,
  topic       VARCHAR(255) NOT NULL,
  payload     JSONB NOT NULL,
  error       TEXT NOT NULL,
  attempts    INTEGER NOT NULL,
  failed_at   TIMESTAMP NOT NULL,
  parked_at   TIMESTAMP,
  park_reason TEXT,
  CHECK ((parked_at IS NULL) = (park_reason IS NULL))
);

-- Retention: every event id at or below event_id counts as processed,
-- whether or not its processed_events row is still there (db/retention.ts).
CREATE TABLE processed_floor (
  singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
  event_id  BIGINT NOT NULL DEFAULT 0
);
INSERT INTO processed_floor DEFAULT VALUES;
