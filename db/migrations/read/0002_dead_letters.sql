-- Events that failed for good, and what an operator decided about them.
--
-- A worker records an event here when it can never apply (a malformed
-- payload, a write the database refuses every time) or its retries ran out.
-- Such an event counts as resolved for the reconciler's watermark (it is
-- known, so it must not hide later losses), and is listed by
-- `npm run events -- list`, GET /admin/events and /metrics. An operator
-- either replays it after a fix (applied: its row goes) or parks it with a
-- reason (parked_at set): a parked event is never applied, and verify counts
-- its effect as decided instead of calling the read model wrong. The payload
-- is kept here so that verify can still do so after the outbox is pruned.
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

-- Retention: every event id at or below event_id counts as processed, whether
-- or not its processed_events row is still there. `npm run prune` raises it
-- (never above the reconciler's watermark) before it deletes rows below it,
-- so a late duplicate delivery of a pruned event is still skipped.
CREATE TABLE processed_floor (
  singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
  event_id  BIGINT NOT NULL DEFAULT 0
);
INSERT INTO processed_floor DEFAULT VALUES;
