-- write_db, as of the first release. Names in double braces come from
-- lib/contract.ts (db/migrate.ts renders them). Why each piece is shaped the
-- way it is, with the measurements: docs/performance.md and docs/pipeline.md.

-- Tables (SPEC §2): exactly the design document's columns, plus the
-- constraints that protect the data and two extra tables.

CREATE TABLE products (
  id         SERIAL PRIMARY KEY,
  name       VARCHAR(255) NOT NULL CHECK (btrim(name) <> ''),
  category   VARCHAR(255) NOT NULL CHECK (btrim(category) <> ''),
  price      DECIMAL(10, 2) NOT NULL CHECK (price >= 0),
  stock      INTEGER NOT NULL CHECK (stock >= 0),
  created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);
CREATE INDEX products_category_id_idx ON products (category, id);

CREATE TABLE orders (
  id          SERIAL PRIMARY KEY,
  customer_id INTEGER NOT NULL CHECK (customer_id > 0),
  total       DECIMAL(10, 2) NOT NULL CHECK (total >= 0),
  status      VARCHAR(50) NOT NULL DEFAULT 'pending'
              CHECK (status IN ('pending', 'paid', 'shipped', 'cancelled')),
  created_at  TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);
CREATE INDEX orders_customer_id_idx ON orders (customer_id, id);

CREATE TABLE order_items (
  id         SERIAL PRIMARY KEY,
  order_id   INTEGER NOT NULL REFERENCES orders (id),
  product_id INTEGER NOT NULL REFERENCES products (id),
  quantity   INTEGER NOT NULL CHECK (quantity > 0),
  price      DECIMAL(10, 2) NOT NULL CHECK (price >= 0)
);
CREATE INDEX order_items_order_id_idx ON order_items (order_id);
CREATE INDEX order_items_product_id_idx ON order_items (product_id);

-- The category each item was sold under. Products may change category later;
-- verify and rebuild read this, never products.category, and it outlives any
-- pruning of the outbox.
CREATE TABLE order_item_categories (
  order_item_id INTEGER PRIMARY KEY REFERENCES order_items (id),
  category      VARCHAR(255) NOT NULL
);

CREATE TABLE outbox (
  id           SERIAL PRIMARY KEY,
  topic        VARCHAR(255) NOT NULL,
  payload      JSONB NOT NULL,
  created_at   TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
  published_at TIMESTAMP
);
CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;
-- Vacuumed after a fixed number of published rows, not after 20 % of a table that only grows.
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 50000);

-- An outbox id is drawn only by a transaction that already has its
-- transaction id: the reconciler's bound depends on it (outbox_horizon below,
-- docs/pipeline.md). A plain INSERT would draw its default before it writes,
-- which is when an xid is assigned; so the default takes the xid first. The
-- sequence is not cached per session (CACHE 1), so ids are handed out in order.
CREATE FUNCTION outbox_next_id() RETURNS INTEGER LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_current_xact_id();
  RETURN nextval('outbox_id_seq');
END $$;
ALTER TABLE outbox ALTER COLUMN id SET DEFAULT outbox_next_id();
ALTER SEQUENCE outbox_id_seq CACHE 1;

-- The reconciler's horizon: the last outbox id drawn so far, then (in that
-- order, in one transaction) a transaction id of the caller's own.
CREATE FUNCTION outbox_horizon(OUT seq BIGINT, OUT xid TEXT) LANGUAGE plpgsql AS $$
BEGIN
  SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END INTO seq FROM outbox_id_seq;
  xid := pg_current_xact_id()::text;
END $$;

-- A wake-up for relays, never the data: a constant payload and a
-- statement-level trigger, so PostgreSQL folds one transaction's
-- notifications into one.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('{{OUTBOX_CHANNEL}}', '');
  RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Idempotency-Key of POST /orders: the stored outcome (an order, or a
-- refusal for lack of stock: order_id NULL) is replayed verbatim.
CREATE TABLE idempotency_keys (
  key          VARCHAR(255) PRIMARY KEY,
  request_hash TEXT NOT NULL,
  order_id     INTEGER REFERENCES orders (id),
  response     JSONB NOT NULL,
  created_at   TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);

-- The order document: an order as the API returns it and as its events carry
-- it (lib/contract.ts describes the same shape). Plain SQL expressions, so
-- the planner inlines them into the calling query.
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

-- An order's document read from the tables (PL/pgSQL: its plan is cached per session).
CREATE FUNCTION order_document(p_order_id INTEGER) RETURNS JSONB LANGUAGE plpgsql STABLE AS $$
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

-- Lock the order's products in id order (no deadlock between concurrent
-- orders) and check them. NULL when the order can be placed; else the
-- problem as {"code": SQLSTATE, "message", "detail"}. The aggregate reads
-- every row of the join, so every requested product that exists is locked
-- before anything is written.
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
    RETURN jsonb_build_object('code', '{{ERR_UNKNOWN_PRODUCT}}', 'message', 'unknown_product', 'detail', v_missing::text);
  END IF;
  IF v_short IS NOT NULL THEN
    RETURN jsonb_build_object('code', '{{ERR_INSUFFICIENT_STOCK}}', 'message', 'insufficient_stock', 'detail', v_short::text);
  END IF;
  RETURN NULL;
END $$;

-- Write a checked order (its products locked by this transaction) in one
-- statement: stock decrement, order, items, their categories at the time of
-- sale, and the order.created event, with the document built from what the
-- inserts returned. Returns {"order": document, "event_id": outbox id}.
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
    INSERT INTO outbox (topic, payload) SELECT '{{TOPIC_CREATED}}', doc.doc FROM doc
    RETURNING id
  )
  SELECT jsonb_build_object('order', doc.doc, 'event_id', event.id) INTO v_result FROM doc, event;
  RETURN v_result;
END $$;

-- One order, with an optional Idempotency-Key (Stripe's semantics): requests
-- sharing a key are serialised by an advisory lock and the later ones find
-- the first one's stored outcome; the same key with another body raises
-- idempotency_key_reused. A refusal for lack of stock is an outcome too:
-- stored and returned as {"problem": …}. A product that does not exist is a
-- validation failure: raised, nothing stored.
CREATE FUNCTION place_order(
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
    PERFORM pg_advisory_xact_lock({{LOCK_IDEMPOTENCY_KEY}}, hashtext(p_idem_key));
    SELECT * INTO v_prior FROM idempotency_keys WHERE key = p_idem_key;
    IF FOUND THEN
      IF v_prior.request_hash <> p_request_hash THEN
        RAISE EXCEPTION USING ERRCODE = '{{ERR_IDEMPOTENCY_KEY_REUSED}}', MESSAGE = 'idempotency_key_reused';
      END IF;
      RETURN v_prior.response || '{"replayed": true}';
    END IF;
  END IF;

  v_problem := order_check(p_product_ids, p_quantities);
  IF v_problem IS NOT NULL THEN
    IF p_idem_key IS NOT NULL AND v_problem->>'code' = '{{ERR_INSUFFICIENT_STOCK}}' THEN
      v_result := jsonb_build_object('problem', v_problem);
      INSERT INTO idempotency_keys (key, request_hash, order_id, response)
      VALUES (p_idem_key, p_request_hash, NULL, v_result);
      RETURN v_result;
    END IF;
    RAISE EXCEPTION USING ERRCODE = v_problem->>'code', MESSAGE = v_problem->>'message', DETAIL = v_problem->>'detail';
  END IF;
  v_result := order_insert(p_customer_id, p_product_ids, p_quantities);

  IF p_idem_key IS NOT NULL THEN
    INSERT INTO idempotency_keys (key, request_hash, order_id, response)
    VALUES (p_idem_key, p_request_hash, (v_result->'order'->>'id')::int, v_result);
  END IF;
  RETURN v_result;
END $$;

-- Group commit (db/orders.ts, OrderIntake): many orders without a key in
-- one transaction, p_orders = [{"customer_id": 1, "items": [{"product_id": 2,
-- "quantity": 3}, …]}, …]. Returns one element per order, in order:
-- place_order's result, or {"code", "message", "detail"} for an order that
-- cannot be placed (nothing of it is written; the others are).
--
-- Every product of the batch is locked first, in id order (no deadlock with
-- other batches or single orders). When the batch's total demand fits every
-- product's stock, every order fits whatever their order: orders_insert()
-- writes them all in one statement. Otherwise place_orders_one_by_one()
-- decides order by order, so a shortage hits only the orders that come too late.
CREATE FUNCTION place_orders(p_orders JSONB) RETURNS JSONB LANGUAGE plpgsql AS $$
DECLARE
  v_fits BOOLEAN;
BEGIN
  WITH demand AS MATERIALIZED (
    SELECT (i->>'product_id')::int AS pid, sum((i->>'quantity')::int) AS qty
      FROM jsonb_array_elements(p_orders) o, jsonb_array_elements(o->'items') i
     GROUP BY 1
  ), locked AS MATERIALIZED (
    SELECT id, stock FROM products WHERE id IN (SELECT pid FROM demand) ORDER BY id FOR UPDATE
  )
  SELECT coalesce(bool_and(l.id IS NOT NULL AND l.stock >= d.qty), false) INTO v_fits
    FROM demand d LEFT JOIN locked l ON l.id = d.pid;
  IF v_fits AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(p_orders) o WHERE jsonb_array_length(o->'items') = 0) THEN
    RETURN orders_insert(p_orders);
  END IF;
  RETURN place_orders_one_by_one(p_orders);
END $$;

-- The per-order path of place_orders(): order_check() and order_insert() for each.
CREATE FUNCTION place_orders_one_by_one(p_orders JSONB) RETURNS JSONB LANGUAGE plpgsql AS $$
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
      v_results := v_results || order_insert((v_order->>'customer_id')::int, v_ids, v_qtys);
    ELSE
      v_results := v_results || v_problem;
    END IF;
  END LOOP;
  RETURN to_jsonb(v_results);
END $$;

-- A batch of orders known to fit (products locked) in one statement: one
-- decrement per product, one insert each into orders, order_items,
-- order_item_categories and outbox. Ids are drawn from the sequences up
-- front, in batch order, so every row is tied to its order without relying
-- on the order of RETURNING. jit is off: the planner cannot know how many
-- elements a JSON array has, and its estimate would make every call compile.
CREATE FUNCTION orders_insert(p_orders JSONB) RETURNS JSONB LANGUAGE plpgsql
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
    SELECT ord, customer_id, nextval(pg_get_serial_sequence('orders', 'id'))::int AS order_id
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
    INSERT INTO outbox (topic, payload)
    SELECT '{{TOPIC_CREATED}}', doc FROM docs ORDER BY id
    RETURNING id, (payload->>'id')::int AS order_id
  )
  SELECT jsonb_agg(jsonb_build_object('order', d.doc, 'event_id', e.id) ORDER BY n.ord) INTO v_result
    FROM new_ids n
    JOIN docs d ON d.id = n.order_id
    JOIN events e ON e.order_id = n.order_id;
  RETURN v_result;
END $$;

-- pending → paid → shipped; pending or paid → cancelled, which restores stock.
-- Writes the matching event. Returns {"order": document, "event_id": outbox id}.
CREATE FUNCTION transition_order(p_order_id INTEGER, p_to TEXT) RETURNS JSONB LANGUAGE plpgsql AS $$
DECLARE
  v_allowed  TEXT[];
  v_topic    TEXT;
  v_status   TEXT;
  v_doc      JSONB;
  v_event_id INTEGER;
BEGIN
  SELECT CASE p_to WHEN 'paid' THEN ARRAY['pending'] WHEN 'shipped' THEN ARRAY['paid'] WHEN 'cancelled' THEN ARRAY['pending', 'paid'] END,
         CASE p_to WHEN 'paid' THEN '{{TOPIC_PAID}}' WHEN 'shipped' THEN '{{TOPIC_SHIPPED}}' WHEN 'cancelled' THEN '{{TOPIC_CANCELLED}}' END
    INTO v_allowed, v_topic;
  IF v_allowed IS NULL THEN
    RAISE EXCEPTION 'transition_order: unknown target status %', p_to;
  END IF;

  SELECT status INTO v_status FROM orders WHERE id = p_order_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = '{{ERR_ORDER_NOT_FOUND}}', MESSAGE = 'order_not_found';
  END IF;
  IF NOT (v_status = ANY (v_allowed)) THEN
    RAISE EXCEPTION USING ERRCODE = '{{ERR_INVALID_TRANSITION}}', MESSAGE = 'invalid_transition', DETAIL = v_status;
  END IF;

  UPDATE orders SET status = p_to WHERE id = p_order_id;

  IF p_to = 'cancelled' THEN
    PERFORM 1 FROM products
     WHERE id IN (SELECT product_id FROM order_items WHERE order_id = p_order_id)
     ORDER BY id FOR UPDATE;
    UPDATE products p
       SET stock = p.stock + r.qty
      FROM (SELECT product_id, sum(quantity) AS qty FROM order_items WHERE order_id = p_order_id GROUP BY product_id) r
     WHERE p.id = r.product_id;
  END IF;

  v_doc := order_document(p_order_id);
  INSERT INTO outbox (topic, payload) VALUES (v_topic, v_doc) RETURNING id INTO v_event_id;
  RETURN jsonb_build_object('order', v_doc, 'event_id', v_event_id);
END $$;

-- The relay's claim in one statement: lock the oldest unpublished rows no
-- other relay holds (SKIP LOCKED) and mark them published. The caller runs it
-- inside a transaction and commits only after the jobs are in Redis; if Redis
-- refuses, it rolls back and nothing is marked. The claim walks the partial
-- index in id order (an index scan marks the dead entries of published rows
-- as it passes them, so the next claim skips them) and updates the rows it
-- locked through the primary key; bitmap and sequential scans are off for
-- this function so that no plan, cached or fresh, brings either back.
CREATE FUNCTION claim_outbox(p_limit INTEGER)
RETURNS TABLE (id INTEGER, topic VARCHAR, payload JSONB, created_at TIMESTAMP)
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
  RETURNING o.id, o.topic, o.payload, o.created_at
$$;
