-- Group commit, set-based. place_orders() ran order_check() and
-- order_insert() once per order of the batch: one CTE chain per order, so
-- the executor work per order stayed what it is for a lone order. When the
-- batch's total demand fits every product's stock (the usual case), every
-- order in it can be filled whatever their order, so orders_insert() writes
-- them all in one statement: one decrement per product, one insert each into
-- orders, order_items, order_item_categories and outbox. Otherwise — a
-- product missing, or stock that would run out within the batch — the
-- per-order loop decides order by order, as before. Results, documents,
-- locking order and errors are unchanged.

-- Write a batch of orders known to fit (their products locked by this
-- transaction): returns one {"order": document, "event_id": outbox id} per
-- order, in the batch's order. Ids are drawn from the sequences up front, in
-- batch order, so that every row can be tied to its order without relying on
-- the order of RETURNING. (nextval in a select list with ORDER BY runs after
-- the sort.)
--
-- jit is off for it: the planner cannot know how many elements a JSON array
-- has (it assumes 100 per jsonb_array_elements), so the estimated cost of
-- this statement passes jit_above_cost and every call spent ≈ 0.8 s
-- compiling a plan that then ran in under a millisecond.
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
    SELECT 'order.created', doc FROM docs ORDER BY id
    RETURNING id, (payload->>'id')::int AS order_id
  )
  SELECT jsonb_agg(jsonb_build_object('order', d.doc, 'event_id', e.id) ORDER BY n.ord) INTO v_result
    FROM new_ids n
    JOIN docs d ON d.id = n.order_id
    JOIN events e ON e.order_id = n.order_id;
  RETURN v_result;
END $$;

-- The per-order loop of 0002 stays as it is, under a name that says what it
-- does; place_orders() now only decides which way a batch goes.
ALTER FUNCTION place_orders(JSONB) RENAME TO place_orders_one_by_one;

-- Lock every product of the batch in id order, then: all there, and enough
-- of each for the whole batch, means every order fits: one statement for
-- all. The aggregate reads every row of the join, so every product is
-- locked before the choice (the loop locks them again, a no-op).
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
