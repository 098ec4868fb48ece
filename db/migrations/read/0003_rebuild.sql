-- Blue/green rebuild (db/rebuild.ts, docs/rebuild.md): its progress for the
-- terminal, /metrics and operators, and its two work sets. Shadow tables
-- (<view>__rebuild) are created and dropped by the rebuild itself.

-- The current or last rebuild, one row. Written by the rebuild only.
CREATE TABLE rebuild_state (
  singleton     BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
  run_id        TEXT NOT NULL,
  pid           INTEGER NOT NULL,
  projections   TEXT[] NOT NULL,
  dry_run       BOOLEAN NOT NULL,
  phase         TEXT NOT NULL,
  current_table TEXT,
  rows_done     BIGINT NOT NULL DEFAULT 0,
  rows_total    BIGINT,
  rows_per_sec  DOUBLE PRECISION,
  eta_seconds   DOUBLE PRECISION,
  events_caught_up BIGINT NOT NULL DEFAULT 0,
  events_marked BIGINT NOT NULL DEFAULT 0,
  snapshot_high BIGINT,
  checksums     JSONB NOT NULL DEFAULT '{}',
  swap_ms       DOUBLE PRECISION,
  error         TEXT,
  started_at    TIMESTAMP NOT NULL,
  updated_at    TIMESTAMP NOT NULL,
  finished_at   TIMESTAMP
);

-- Events after the snapshot that the shadow tables already hold (applied to
-- them exactly once: a row here is inserted in the same statement as the deltas).
CREATE TABLE rebuild_caught (
  event_id VARCHAR PRIMARY KEY
);

-- Events of the snapshot not in processed_events when last looked: recorded
-- processed at the swap (the shadow tables hold them already).
CREATE TABLE rebuild_pending (
  event_id VARCHAR PRIMARY KEY
);

-- The shadow of a view gets the view's indexes, constraints and grants (after
-- its rows are loaded: faster than maintaining them row by row), under the
-- same names plus '__rebuild'.
CREATE FUNCTION rebuild_copy_indexes(live TEXT, shadow TEXT) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  r RECORD;
BEGIN
  FOR r IN SELECT i.relname AS name, x.indisunique AS uniq, pg_get_indexdef(x.indexrelid) AS def, c.conname AS con, pg_get_constraintdef(c.oid) AS condef
             FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
             LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid AND c.conrelid = x.indrelid AND c.contype IN ('p', 'u', 'x')
            WHERE x.indrelid = live::regclass ORDER BY x.indisprimary DESC, i.relname
  LOOP
    IF r.con IS NOT NULL THEN
      EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I %s', shadow, r.con || '__rebuild', r.condef);
    ELSE
      EXECUTE format('CREATE %s INDEX %I ON %I%s', CASE WHEN r.uniq THEN 'UNIQUE' ELSE '' END, r.name || '__rebuild', shadow, substring(r.def FROM ' USING .*$'));
    END IF;
  END LOOP;
  FOR r IN SELECT a.grantee, a.privilege_type FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = live::regclass AND a.grantee <> c.relowner
  LOOP
    EXECUTE format('GRANT %s ON %I TO %s', r.privilege_type, shadow, CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r.grantee)) END);
  END LOOP;
END $$;

-- The swap of one view, inside the rebuild's swap transaction: the old table
-- goes, the shadow takes its name and its indexes take theirs.
CREATE FUNCTION rebuild_swap(live TEXT, shadow TEXT) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  r RECORD;
BEGIN
  EXECUTE format('DROP TABLE %I', live);
  EXECUTE format('ALTER TABLE %I RENAME TO %I', shadow, live);
  FOR r IN SELECT i.relname AS name FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
            WHERE x.indrelid = live::regclass AND i.relname LIKE '%\_\_rebuild'
  LOOP
    EXECUTE format('ALTER INDEX %I RENAME TO %I', r.name, left(r.name, length(r.name) - length('__rebuild')));
  END LOOP;
END $$;
