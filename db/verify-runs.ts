import { z } from 'zod';
import type { CommonQueryMethods } from 'slonik';
import { sql } from './pool.js';

/**
 * What `npm run verify` found, kept in read_db's verify_runs (migration
 * read/0002): the admin view and GET /admin/projections show the latest run.
 */

export type VerifyOutcome = 'equal' | 'different' | 'failed_events' | 'not_caught_up';

export const verifyRun = z.object({
  started_at: z.string(),
  finished_at: z.string(),
  ok: z.boolean(),
  outcome: z.enum(['equal', 'different', 'failed_events', 'not_caught_up']),
  /** Outbox events compared (null when the read model had not caught up). */
  events: z.number().nullable(),
  /** Events not yet applied when verify gave up waiting (not_caught_up). */
  unapplied: z.number(),
  failed: z.number(),
  parked: z.number(),
  /** (key, column) differences per projection's table; every projection compared is named, 0 when equal. */
  mismatches: z.record(z.string(), z.number()),
});
export type VerifyRun = z.infer<typeof verifyRun>;

/** How many runs are kept; older ones are deleted as a new one is recorded. */
const KEEP = 100;

export async function recordVerifyRun(db: CommonQueryMethods, run: Omit<VerifyRun, 'finished_at'>): Promise<void> {
  await db.query(sql.typeAlias('void')`
    WITH added AS (
      INSERT INTO verify_runs (started_at, ok, outcome, events, unapplied, failed, parked, mismatches)
      VALUES (${run.started_at}::timestamptz AT TIME ZONE 'UTC', ${run.ok}, ${run.outcome}, ${run.events}, ${run.unapplied}, ${run.failed}, ${run.parked}, ${sql.jsonb(run.mismatches)})
      RETURNING id)
    DELETE FROM verify_runs WHERE id <= (SELECT id FROM added) - ${KEEP}`);
}

export function lastVerifyRun(db: CommonQueryMethods): Promise<VerifyRun | null> {
  return db.maybeOne(sql.type(verifyRun)`
    SELECT started_at, finished_at, ok, outcome, events, unapplied, failed, parked, mismatches
      FROM verify_runs ORDER BY id DESC LIMIT 1`);
}
