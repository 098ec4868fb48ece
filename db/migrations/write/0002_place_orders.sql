-- Profile-guided (pg_stat_statements with track = all, `npm run bench -- --only
-- profile`; docs/performance.md): of ≈ 2.0 ms per place_order() call,
-- 0.67 ms went to order_document(). A LANGUAGE sql function called from
-- PL/pgSQL is parsed and planned again on every call; in PL/pgSQL its plan is
-- cached for the session. The rest was spread over seven statements.
--
-- An order is now two statements: lock-and-check (order_check), then one CTE
-- chain (order_insert) that decrements stock, inserts the order, items,
-- categories and the outbox event, and builds the order document from what
-- the inserts returned. place_order() runs one order; place_orders() runs
-- many in one transaction (group commit, used by the API when requests
-- arrive faster than the pool can commit them). Errors, results and the
-- locking order are unchanged.

-- The order document's shape, in one place: order_document() reads it from
-- the tables, order_insert() from the rows it just inserted. Plain SQL
-- expressions, so the planner inlines them into the calling query (no call,
-- no planning of their own).
CREATE FUNCTION order_item_json(p_id INTEGER, p_product_id INTEGER, p_category VARCHAR, p_quantity INTEGER, p_price NUMERIC)
RETURNS JSONB LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object(
    'id', p_id,
    'product_id', p_product_id,
    'category', p_category,
    'quantity', p_quantity,
    'price', p_price::text,
    'line_total', (p_quantity * p_price)::text)
$$;

CREATE FUNCTION order_json(p_id INTEGER, p_customer_id INTEGER, p_status VARCHAR, p_total NUMERIC, p_created_at TIMESTAMP, p_items JSONB)
RETURNS JSONB LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object(
    'id', p_id,
    'customer_id', p_customer_id,
    'status', p_status,
    'total', p_total::text,
    'created_at', to_char(p_created_at, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
    'items', p_items)
$$;

CREATE OR REPLACE FUNCTION order_document(p_order_id INTEGER) RETURNS JSONB LANGUAGE plpgsql STABLE AS $$
BEGIN
  RETURN (
    SELECT order_json(o.id, o.customer_id, o.status, o.total, o.created_at, (
             SELECT jsonb_agg(order_item_json(i.id, i.product_id, c.category, i.quantity, i.price) ORDER BY i.id)
               FROM order_items i
               JOIN order_item_categories c ON c.order_item_id = i.id
              WHERE i.order_id = o.id))
      FROM orders o
     WHERE o.id = p_order_id);
END $$;

-- Lock the products in id order and check them. Returns NULL when the order
-- can be placed, else the problem as {"code": SQLSTATE, "detail": text},
-- the same pair place_order raises. The aggregate reads every row of the
-- join, so every requested product that exists is locked before anything is
-- written.
CREATE FUNCTION order_check(p_product_ids INTEGER[], p_quantities INTEGER[]) RETURNS JSONB LANGUAGE plpgsql AS $$
DECLARE
  v_missing INTEGER;
  v_short   JSONB;
BEGIN
  SELECT min(w.pid) FILTER (WHERE l.id IS NULL),
         jsonb_agg(jsonb_build_object('product_id', l.id, 'requested', w.qty, 'available', l.stock) ORDER BY l.id)
           FILTER (WHERE l.stock < w.qty)
    INTO v_missing, v_short
    FROM (SELECT pid, sum(qty) AS qty FROM unnest(p_product_ids, p_quantities) AS u (pid, qty) GROUP BY pid) w
    LEFT JOIN (SELECT id, stock FROM products WHERE id = ANY (p_product_ids) ORDER BY id FOR UPDATE) l ON l.id = w.pid;
  IF v_missing IS NOT NULL THEN
    RETURN jsonb_build_object('code', 'OP002', 'message', 'unknown_product', 'detail', v_missing::text);
  END IF;
  IF v_short IS NOT NULL THEN
    RETURN jsonb_build_object('code', 'OP001', 'message', 'insufficient_stock', 'detail', v_short::text);
  END IF;
  RETURN NULL;
END $$;

-- Write a checked order (its products locked by this transaction): returns
-- {"order": document, "event_id": outbox id}. Every CTE sees the snapshot
-- taken before the UPDATE; price and category, read through `lines`, are
-- not what it changes.
CREATE FUNCTION order_insert(p_customer_id INTEGER, p_product_ids INTEGER[], p_quantities INTEGER[]) RETURNS JSONB LANGUAGE plpgsql AS $$
DECLARE
  v_result JSONB;
BEGIN
  WITH lines AS MATERIALIZED (
    SELECT u.ord, u.pid, u.qty, p.price, p.category
      FROM unnest(p_product_ids, p_quantities) WITH ORDINALITY AS u (pid, qty, ord)
      JOIN products p ON p.id = u.pid
  ), decrement AS (
    UPDATE products p
       SET stock = p.stock - w.qty
      FROM (SELECT pid, sum(qty) AS qty FROM lines GROUP BY pid) w
     WHERE p.id = w.pid
  ), new_order AS (
    INSERT INTO orders (customer_id, total)
    SELECT p_customer_id, sum(qty * price) FROM lines
    RETURNING id, customer_id, status, total, created_at
  ), items AS (
    INSERT INTO order_items (order_id, product_id, quantity, price)
    SELECT o.id, l.pid, l.qty, l.price FROM new_order o CROSS JOIN lines l ORDER BY l.ord
    RETURNING id, product_id, quantity, price
  ), categories AS (
    INSERT INTO order_item_categories (order_item_id, category)
    SELECT i.id, l.category FROM items i JOIN (SELECT DISTINCT pid, category FROM lines) l ON l.pid = i.product_id
    RETURNING order_item_id, category
  ), doc AS (
    SELECT order_json(o.id, o.customer_id, o.status, o.total, o.created_at, (
             SELECT jsonb_agg(order_item_json(i.id, i.product_id, c.category, i.quantity, i.price) ORDER BY i.id)
               FROM items i
               JOIN categories c ON c.order_item_id = i.id)) AS doc
      FROM new_order o
  ), event AS (
    INSERT INTO outbox (topic, payload) SELECT 'order.created', doc.doc FROM doc
    RETURNING id
  )
  SELECT jsonb_build_object('order', doc.doc, 'event_id', event.id) INTO v_result FROM doc, event;
  RETURN v_result;
END $$;

CREATE OR REPLACE FUNCTION place_order(
  p_customer_id  INTEGER,
  p_product_ids  INTEGER[],
  p_quantities   INTEGER[],
  p_idem_key     TEXT,
  p_request_hash TEXT
) RETURNS JSONB LANGUAGE plpgsql AS $$
DECLARE
  v_prior   idempotency_keys%ROWTYPE;
  v_problem JSONB;
  v_result  JSONB;
BEGIN
  IF p_idem_key IS NOT NULL THEN
    -- Serialises requests that share a key; the loser sees the winner's row.
    PERFORM pg_advisory_xact_lock(74110, hashtext(p_idem_key));
    SELECT * INTO v_prior FROM idempotency_keys WHERE key = p_idem_key;
    IF FOUND THEN
      IF v_prior.request_hash <> p_request_hash THEN
        RAISE EXCEPTION USING ERRCODE = 'OP003', MESSAGE = 'idempotency_key_reused';
      END IF;
      RETURN v_prior.response || '{"replayed": true}';
    END IF;
  END IF;

  v_problem := order_check(p_product_ids, p_quantities);
  IF v_problem IS NOT NULL THEN
    RAISE EXCEPTION USING ERRCODE = v_problem->>'code', MESSAGE = v_problem->>'message', DETAIL = v_problem->>'detail';
  END IF;
  v_result := order_insert(p_customer_id, p_product_ids, p_quantities);

  IF p_idem_key IS NOT NULL THEN
    INSERT INTO idempotency_keys (key, request_hash, order_id, response)
    VALUES (p_idem_key, p_request_hash, (v_result->'order'->>'id')::int, v_result);
  END IF;
  RETURN v_result;
END $$;

-- Many orders (no Idempotency-Key) in one transaction:
-- p_orders = [{"customer_id": 1, "items": [{"product_id": 2, "quantity": 3}, …]}, …].
-- Returns one element per order, in order: place_order's result, or
-- {"code", "message", "detail"} for an order that cannot be placed (nothing
-- of it is written; the others are). All products of the batch are locked
-- first, in id order, so batches cannot deadlock with each other or with
-- single orders. Any other error aborts the whole batch.
CREATE FUNCTION place_orders(p_orders JSONB) RETURNS JSONB LANGUAGE plpgsql AS $$
DECLARE
  v_order   JSONB;
  v_ids     INTEGER[];
  v_qtys    INTEGER[];
  v_problem JSONB;
  v_results JSONB[] := '{}';
BEGIN
  PERFORM 1 FROM products
   WHERE id IN (SELECT (i->>'product_id')::int FROM jsonb_array_elements(p_orders) o, jsonb_array_elements(o->'items') i)
   ORDER BY id FOR UPDATE;
  FOR v_order IN SELECT value FROM jsonb_array_elements(p_orders) LOOP
    SELECT array_agg((i->>'product_id')::int ORDER BY n), array_agg((i->>'quantity')::int ORDER BY n)
      INTO v_ids, v_qtys
      FROM jsonb_array_elements(v_order->'items') WITH ORDINALITY AS e (i, n);
    v_problem := order_check(v_ids, v_qtys);
    IF v_problem IS NULL THEN
      v_results := v_results || order_insert((v_order->>'customer_id')::int, v_ids, v_qtys);
    ELSE
      v_results := v_results || v_problem;
    END IF;
  END LOOP;
  RETURN to_jsonb(v_results);
END $$;
