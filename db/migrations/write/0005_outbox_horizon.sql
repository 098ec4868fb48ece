-- What the reconciler and Idempotency-Key need from write_db.

-- 1. An outbox id is drawn only by a transaction that already has its
-- transaction id. The reconciler (workers/relay/reconciler.ts) decides that
-- no outbox id at or below a sequence value S can still appear by reading S
-- and only then taking a transaction id X of its own (outbox_horizon below):
-- any transaction that drew an id ≤ S got its own transaction id before
-- drawing, so before S was read, so before X; once a snapshot's xmin has
-- passed X, every one of them has committed or rolled back. That holds only
-- if the id is never drawn before the drawing transaction has an xid, and a
-- plain INSERT draws its default before it writes (which is when an xid is
-- assigned). So the default assigns the xid first. A cached sequence would
-- hand out ids out of order between sessions: CACHE 1 (the default) is
-- stated here so that nobody changes it without reading this.
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

-- 2. Idempotency-Key with Stripe's semantics: once a keyed order has started
-- executing, its outcome is stored and replayed, a refusal for lack of stock
-- included. An order naming a product that does not exist failed validation
-- (422) and stores nothing, so a retry after the product is created places it.
ALTER TABLE idempotency_keys ALTER COLUMN order_id DROP NOT NULL;

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
    IF p_idem_key IS NOT NULL AND v_problem->>'code' = 'OP001' THEN
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
