-- The relay's claim in one statement: lock the oldest unpublished rows that no
-- other relay holds (SKIP LOCKED) and mark them published. The caller runs it
-- inside a transaction and commits only after the jobs are in Redis; if Redis
-- refuses, it rolls back and nothing is marked. (Before: SELECT … FOR UPDATE
-- SKIP LOCKED, then UPDATE … WHERE id = ANY — one round trip more.)
--
-- Why: every published row leaves a dead row version and a dead entry in
-- outbox_unpublished_idx until VACUUM gets to it (never, on the development
-- machine, where autovacuum is off; minutes, elsewhere). The two statements
-- before visited all of them on every claim: the UPDATE … WHERE id = ANY($1)
-- kept the generic plan made while the table was small, a sequential scan
-- (EXPLAIN EXECUTE still shows it after 20,000 rows), and the SELECT with a
-- known limit is planned as a bitmap scan of the partial index, which never
-- marks dead entries. Measured at 1,150 orders/s with relay and worker
-- running (bench/, docs/performance.md): write_db used 0.69–0.80 cores in a
-- fresh database and 1.08 after 35,000 more orders; pg_stat_statements had
-- that UPDATE going from 2 ms to 23 ms a call within 40 s.
--
-- Here the claim walks the partial index in id order (an index scan: it
-- marks the dead entries it passes, so the next claim skips them) and updates
-- the rows it locked through the primary key. Bitmap and sequential scans are
-- switched off for this one function so that no plan, cached or fresh, can
-- bring either back. Same load: 0.70–0.75 cores fresh, 0.79–0.80 after
-- 35,000 more orders; five one-event relays after 5,000 published rows
-- touch 36 heap pages of the outbox instead of 321 (test/faults.int.spec.ts).
-- VACUUM still reclaims the space.
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

-- Vacuum the outbox after a fixed number of published rows rather than after
-- 20 % of a table that only grows (the default): with 10 M rows retained that
-- would be 2 M dead index entries between vacuums. Takes effect where
-- autovacuum is on (it should be; docs/operations.md).
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 50000);
