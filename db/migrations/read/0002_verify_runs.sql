-- What `npm run verify` found each time it ran (the last 100 runs are kept):
-- the admin view and GET /admin/projections show the latest. outcome is
-- equal, different, failed_events (dead letters wait for a decision) or
-- not_caught_up; mismatches holds, per projection's table, the number of
-- (key, column) differences, {} when none were compared or all were equal.
CREATE TABLE verify_runs (
  id          BIGSERIAL PRIMARY KEY,
  started_at  TIMESTAMP NOT NULL,
  finished_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
  ok          BOOLEAN NOT NULL,
  outcome     VARCHAR(32) NOT NULL CHECK (outcome IN ('equal', 'different', 'failed_events', 'not_caught_up')),
  events      INTEGER,
  unapplied   INTEGER NOT NULL DEFAULT 0,
  failed      INTEGER NOT NULL DEFAULT 0,
  parked      INTEGER NOT NULL DEFAULT 0,
  mismatches  JSONB NOT NULL DEFAULT '{}'
);
