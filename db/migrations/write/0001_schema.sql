-- Write model (SPEC §2): exactly the design document's columns, plus the
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

-- Idempotency-Key of POST /orders: the stored response is replayed verbatim.
CREATE TABLE idempotency_keys (
  key          VARCHAR(255) PRIMARY KEY,
  request_hash TEXT NOT NULL,
  order_id     INTEGER NOT NULL REFERENCES orders (id),
  response     JSONB NOT NULL,
  created_at   TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);

-- The notification is only a wake-up for relays, never the data: a constant
-- payload and a statement-level trigger let PostgreSQL fold all of one
-- transaction's notifications into one.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('outbox', '');
  RETURN NULL;
END $$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
  FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- An order as the API returns it and as events carry it. Timestamps are UTC
-- ISO-8601; money is text with two decimals.
CREATE FUNCTION order_document(p_order_id INTEGER) RETURNS JSONB LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object(
    'id', o.id,
    'customer_id', o.customer_id,
    'status', o.status,
    'total', o.total::text,
    'created_at', to_char(o.created_at, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
    'items', (
      SELECT jsonb_agg(jsonb_build_object(
               'id', i.id,
               'product_id', i.product_id,
               'category', c.category,
               'quantity', i.quantity,
               'price', i.price::text,
               'line_total', (i.quantity * i.price)::text) ORDER BY i.id)
        FROM order_items i
        JOIN order_item_categories c ON c.order_item_id = i.id
       WHERE i.order_id = o.id))
  FROM orders o
  WHERE o.id = p_order_id
$$;

-- Errors raised below carry SQLSTATEs of class 'OP' that api/errors.ts maps
-- to problem details: OP001 insufficient_stock, OP002 unknown_product,
-- OP003 idempotency_key_reused, OP004 order_not_found, OP005 invalid_transition.

-- One order in one round trip: lock the products in id order (no deadlock
-- between concurrent orders), check, decrement stock, insert the order, its
-- items with the category at the time of sale, and the outbox event.
CREATE FUNCTION place_order(
  p_customer_id  INTEGER,
  p_product_ids  INTEGER[],
  p_quantities   INTEGER[],
  p_idem_key     TEXT,
  p_request_hash TEXT
) RETURNS JSONB LANGUAGE plpgsql AS $$
DECLARE
  v_prior     idempotency_keys%ROWTYPE;
  v_missing   INTEGER;
  v_short     JSONB;
  v_order_id  INTEGER;
  v_doc       JSONB;
  v_event_id  INTEGER;
  v_result    JSONB;
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

  PERFORM 1 FROM products WHERE id = ANY (p_product_ids) ORDER BY id FOR UPDATE;

  SELECT min(r.pid) INTO v_missing
    FROM unnest(p_product_ids) AS r (pid)
   WHERE NOT EXISTS (SELECT 1 FROM products p WHERE p.id = r.pid);
  IF v_missing IS NOT NULL THEN
    RAISE EXCEPTION USING ERRCODE = 'OP002', MESSAGE = 'unknown_product', DETAIL = v_missing::text;
  END IF;

  SELECT jsonb_agg(jsonb_build_object('product_id', p.id, 'requested', r.qty, 'available', p.stock) ORDER BY p.id)
    INTO v_short
    FROM (SELECT pid, sum(qty) AS qty FROM unnest(p_product_ids, p_quantities) AS u (pid, qty) GROUP BY pid) r
    JOIN products p ON p.id = r.pid
   WHERE p.stock < r.qty;
  IF v_short IS NOT NULL THEN
    RAISE EXCEPTION USING ERRCODE = 'OP001', MESSAGE = 'insufficient_stock', DETAIL = v_short::text;
  END IF;

  UPDATE products p
     SET stock = p.stock - r.qty
    FROM (SELECT pid, sum(qty) AS qty FROM unnest(p_product_ids, p_quantities) AS u (pid, qty) GROUP BY pid) r
   WHERE p.id = r.pid;

  INSERT INTO orders (customer_id, total)
  SELECT p_customer_id, sum(u.qty * p.price)
    FROM unnest(p_product_ids, p_quantities) AS u (pid, qty)
    JOIN products p ON p.id = u.pid
  RETURNING id INTO v_order_id;

  WITH items AS (
    INSERT INTO order_items (order_id, product_id, quantity, price)
    SELECT v_order_id, u.pid, u.qty, p.price
      FROM unnest(p_product_ids, p_quantities) WITH ORDINALITY AS u (pid, qty, ord)
      JOIN products p ON p.id = u.pid
     ORDER BY u.ord
    RETURNING id, product_id
  )
  INSERT INTO order_item_categories (order_item_id, category)
  SELECT items.id, p.category FROM items JOIN products p ON p.id = items.product_id;

  v_doc := order_document(v_order_id);
  INSERT INTO outbox (topic, payload) VALUES ('order.created', v_doc) RETURNING id INTO v_event_id;
  v_result := jsonb_build_object('order', v_doc, 'event_id', v_event_id);

  IF p_idem_key IS NOT NULL THEN
    INSERT INTO idempotency_keys (key, request_hash, order_id, response)
    VALUES (p_idem_key, p_request_hash, v_order_id, v_result);
  END IF;
  RETURN v_result;
END $$;

-- pending → paid → shipped; pending/paid → cancelled, which restores stock.
CREATE FUNCTION transition_order(p_order_id INTEGER, p_to TEXT) RETURNS JSONB LANGUAGE plpgsql AS $$
DECLARE
  v_allowed  TEXT[];
  v_status   TEXT;
  v_doc      JSONB;
  v_event_id INTEGER;
BEGIN
  v_allowed := CASE p_to
    WHEN 'paid' THEN ARRAY['pending']
    WHEN 'shipped' THEN ARRAY['paid']
    WHEN 'cancelled' THEN ARRAY['pending', 'paid']
  END;
  IF v_allowed IS NULL THEN
    RAISE EXCEPTION 'transition_order: unknown target status %', p_to;
  END IF;

  SELECT status INTO v_status FROM orders WHERE id = p_order_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'OP004', MESSAGE = 'order_not_found';
  END IF;
  IF NOT (v_status = ANY (v_allowed)) THEN
    RAISE EXCEPTION USING ERRCODE = 'OP005', MESSAGE = 'invalid_transition', DETAIL = v_status;
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
  INSERT INTO outbox (topic, payload) VALUES ('order.' || p_to, v_doc) RETURNING id INTO v_event_id;
  RETURN jsonb_build_object('order', v_doc, 'event_id', v_event_id);
END $$;
