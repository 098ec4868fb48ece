-- OpenTelemetry: an outbox row carries the W3C traceparent of the request
-- that wrote it, so the relay and the projector continue that request's
-- trace (lib/tracing.ts, docs/operations.md "Tracing"). NULL when tracing is
-- off or the writer had no span.
ALTER TABLE outbox ADD COLUMN traceparent TEXT;

-- Writers that go through order_insert() or transition_order() name the
-- traceparent for their transaction with
--   set_config('op.traceparent', <traceparent>, true)
-- in the same statement (db/orders.ts); a transaction that sets nothing writes NULL.
ALTER TABLE outbox ALTER COLUMN traceparent SET DEFAULT nullif(current_setting('op.traceparent', true), '');

-- place_orders(): each element of p_orders may carry its own "traceparent";
-- it goes into that order's outbox row. The per-order path sets it before
-- each order_insert(); orders_insert() writes it with the row.
CREATE OR REPLACE FUNCTION place_orders_one_by_one(p_orders JSONB) RETURNS JSONB LANGUAGE plpgsql AS $$
DECLARE
  v_order   JSONB;
  v_ids     INTEGER[];
  v_qtys    INTEGER[];
  v_problem JSONB;
  v_results JSONB[] := '{}';
BEGIN
  FOR v_order IN SELECT value FROM jsonb_array_elements(p_orders) LOOP
    SELECT array_agg((i->>'product_id')::int ORDER BY n), array_agg((i->>'quantity')::int ORDER BY n)
      INTO v_ids, v_qtys
      FROM jsonb_array_elements(v_order->'items') WITH ORDINALITY AS e (i, n);
    v_problem := order_check(v_ids, v_qtys);
    IF v_problem IS NULL THEN
      PERFORM set_config('op.traceparent', coalesce(v_order->>'traceparent', ''), true);
      v_results := v_results || order_insert((v_order->>'customer_id')::int, v_ids, v_qtys);
    ELSE
      v_results := v_results || v_problem;
    END IF;
  END LOOP;
  RETURN to_jsonb(v_results);
END $$;

CREATE OR REPLACE FUNCTION orders_insert(p_orders JSONB) RETURNS JSONB LANGUAGE plpgsql
SET jit = off
AS $$
DECLARE
  v_result JSONB;
BEGIN
  WITH req AS MATERIALIZED (
    SELECT o.n AS ord, (o.v->>'customer_id')::int AS customer_id, i.n AS line,
           (i.v->>'product_id')::int AS pid, (i.v->>'quantity')::int AS qty
      FROM jsonb_array_elements(p_orders) WITH ORDINALITY AS o (v, n),
           jsonb_array_elements(o.v->'items') WITH ORDINALITY AS i (v, n)
  ), new_ids AS MATERIALIZED (
    SELECT ord, customer_id, nextval(pg_get_serial_sequence('orders', 'id'))::int AS order_id,
           p_orders->(ord::int - 1)->>'traceparent' AS traceparent
      FROM (SELECT DISTINCT ord, customer_id FROM req) o
     ORDER BY ord
  ), lines AS MATERIALIZED (
    SELECT r.ord, n.order_id, n.customer_id, r.pid, r.qty, p.price, p.category,
           nextval(pg_get_serial_sequence('order_items', 'id'))::int AS item_id
      FROM req r
      JOIN new_ids n ON n.ord = r.ord
      JOIN products p ON p.id = r.pid
     ORDER BY r.ord, r.line
  ), decrement AS (
    UPDATE products p
       SET stock = p.stock - w.qty
      FROM (SELECT pid, sum(qty) AS qty FROM lines GROUP BY pid) w
     WHERE p.id = w.pid
  ), new_orders AS (
    INSERT INTO orders (id, customer_id, total)
    SELECT order_id, customer_id, sum(qty * price) FROM lines GROUP BY order_id, customer_id ORDER BY order_id
    RETURNING id, customer_id, status, total, created_at
  ), items AS (
    INSERT INTO order_items (id, order_id, product_id, quantity, price)
    SELECT item_id, order_id, pid, qty, price FROM lines ORDER BY item_id
    RETURNING id, order_id, product_id, quantity, price
  ), categories AS (
    INSERT INTO order_item_categories (order_item_id, category)
    SELECT item_id, category FROM lines
    RETURNING order_item_id, category
  ), docs AS (
    SELECT o.id, order_json(o.id, o.customer_id, o.status, o.total, o.created_at,
             jsonb_agg(order_item_json(i.id, i.product_id, c.category, i.quantity, i.price) ORDER BY i.id)) AS doc
      FROM new_orders o
      JOIN items i ON i.order_id = o.id
      JOIN categories c ON c.order_item_id = i.id
     GROUP BY o.id, o.customer_id, o.status, o.total, o.created_at
  ), events AS (
    INSERT INTO outbox (topic, payload, traceparent)
    SELECT '{{TOPIC_CREATED}}', d.doc, n.traceparent FROM docs d JOIN new_ids n ON n.order_id = d.id ORDER BY d.id
    RETURNING id, (payload->>'id')::int AS order_id
  )
  SELECT jsonb_agg(jsonb_build_object('order', d.doc, 'event_id', e.id) ORDER BY n.ord) INTO v_result
    FROM new_ids n
    JOIN docs d ON d.id = n.order_id
    JOIN events e ON e.order_id = n.order_id;
  RETURN v_result;
END $$;

-- claim_outbox() returns the traceparent too (a new result type: dropped and created again).
DROP FUNCTION claim_outbox(INTEGER);
CREATE FUNCTION claim_outbox(p_limit INTEGER)
RETURNS TABLE (id INTEGER, topic VARCHAR, payload JSONB, created_at TIMESTAMP, traceparent TEXT)
LANGUAGE sql
SET enable_bitmapscan = off
SET enable_seqscan = off
AS $$
  UPDATE outbox o
     SET published_at = clock_timestamp() AT TIME ZONE 'UTC'
    FROM (SELECT u.id FROM outbox u
           WHERE u.published_at IS NULL
           ORDER BY u.id
           LIMIT p_limit
             FOR UPDATE SKIP LOCKED) claimed
   WHERE o.id = claimed.id
  RETURNING o.id, o.topic, o.payload, o.created_at, o.traceparent
$$;
