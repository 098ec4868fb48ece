import { z } from 'zod';
import { sql, isDataError, type Db } from '../../db/pool.js';
import { CHANNELS } from '../../lib/contract.js';
import type { OrderEvent } from './events.js';
import { upsertFragment, type Projection } from './projection.js';
import { PROJECTIONS } from './projections/index.js';

export interface ProjectionEvent {
  event_id: string;
  /** The parsed event; undefined for a topic that changes no view (it is still recorded as processed). */
  event: OrderEvent | undefined;
}

export interface ApplyResult {
  /** Event ids recorded by this call: their rows are now in the views. */
  applied: string[];
  /** Event ids already processed (in processed_events, or at or below the retention floor): skipped. */
  duplicates: string[];
  /** Event ids an operator parked: never applied. */
  parked: string[];
}

/** What became of one event of a batch; an Error when it can never apply (its batch-mates were applied without it). */
export type Outcome = 'applied' | 'duplicate' | 'parked' | Error;

/**
 * One row per id recorded (parked false) or parked (true), and one row of
 * nulls for the NOTIFY. Ids at or below processed_floor are left out: their
 * rows may have been pruned, and they must still count as processed. Parked
 * ids are left out: an operator decided they are never applied. Both are read
 * by the statement's snapshot, taken after it has its lock on
 * processed_events, and prune and park change them under a lock that
 * conflicts with it: a batch running alongside either sees the floor or the
 * parked row as committed, or holds them off until it commits. A failed dead
 * letter of an event that is applied now (replayed after a fix) or was
 * already is resolved in the same statement.
 */
const recorded = z.object({ event_id: z.string().nullable(), parked: z.boolean().nullable() });

/**
 * Apply a batch of events exactly once, in one read_db statement (so one
 * round trip and one implicit transaction, whatever the number of views):
 *  1. record the ids in processed_events; ON CONFLICT DO NOTHING returns only
 *     the new ones. Ids at or below the retention floor count as processed
 *     and parked ids are never recorded;
 *  2. add the rows of those new events to every projection's view, one
 *     set-based upsert per view (a data-modifying CTE reading the ids step 1
 *     returned), rows in key order and views in one fixed order, hot views
 *     last: concurrent batches wait on each other instead of deadlocking (a
 *     deadlock would be retried, as a busy database), and on the rows every
 *     batch shares only for the end of the statement and its commit;
 *  3. wake read-your-writes waiters in the web processes (NOTIFY, delivered
 *     at commit) when anything was applied.
 */
export async function applyEvents(db: Db, events: ProjectionEvent[], projections: readonly Projection[] = PROJECTIONS): Promise<ApplyResult> {
  const byId = new Map<string, ProjectionEvent>();
  for (const e of events) if (!byId.has(e.event_id)) byId.set(e.event_id, e);
  const ids = [...byId.keys()].sort();
  const inserted = sql.identifier(['inserted']);
  // PostgreSQL runs the data-modifying CTEs nobody reads after the main
  // query, in reverse order of listing: hot views are listed first so their
  // rows are locked last, the others in registry order before them. One
  // order for every batch, so concurrent batches never lock in crossed order.
  const ordered = [...projections.filter((p) => p.hot), ...projections.filter((p) => !p.hot).reverse()];
  const upserts = ordered.flatMap((p, i) => {
    const rows = [...byId.values()].flatMap((e) => (e.event ? p.evolve(e.event).map((row) => ({ eventId: e.event_id, row })) : []));
    const upsert = upsertFragment(p, rows, inserted);
    return upsert ? [sql.fragment`, ${sql.identifier([`view_${i}`])} AS (${upsert})`] : [];
  });
  const rows = await db.any(sql.type(recorded)`
    WITH batch AS (
      SELECT id FROM unnest(${sql.array(ids, 'text')}) AS id
    ), parked AS (
      SELECT d.event_id FROM dead_letters d JOIN batch b ON b.id = d.event_id WHERE d.parked_at IS NOT NULL
    ), inserted AS (
      INSERT INTO processed_events (event_id, processed_at)
      SELECT id, now() AT TIME ZONE 'UTC' FROM batch
       WHERE id::bigint > (SELECT event_id FROM processed_floor)
         AND id NOT IN (SELECT event_id FROM parked)
       ORDER BY id
      ON CONFLICT (event_id) DO NOTHING
      RETURNING event_id
    ), resolved AS (
      DELETE FROM dead_letters d
       WHERE d.parked_at IS NULL AND d.event_id IN (SELECT id FROM batch)
         AND (d.event_id IN (SELECT event_id FROM inserted) OR EXISTS (SELECT 1 FROM processed_events p WHERE p.event_id = d.event_id))
    )${upserts.length > 0 ? sql.join(upserts, sql.fragment``) : sql.fragment``}
    SELECT event_id, false AS parked FROM inserted
    UNION ALL
    SELECT event_id, true FROM parked
    UNION ALL
    SELECT NULL, NULL FROM (SELECT pg_notify(${CHANNELS.applied}, '') WHERE EXISTS (SELECT 1 FROM inserted)) AS woken`);
  const applied = rows.flatMap((r) => (r.parked === false ? [r.event_id!] : []));
  const parked = rows.flatMap((r) => (r.parked === true ? [r.event_id!] : []));
  const settled = new Set([...applied, ...parked]);
  return { applied, parked, duplicates: ids.filter((id) => !settled.has(id)) };
}

/**
 * Apply a batch, isolating failures: when the database refuses the batch for
 * what it says about the data (a value out of range, a constraint, a
 * malformed id: isDataError), split it in halves and apply each, down to the
 * single event at fault; every other event is applied. Returns one outcome
 * per event, in the order given. Any other failure (the database away or
 * read-only, a timeout, a missing table) is not the events' fault: it is
 * thrown for the caller to retry the whole batch.
 */
export async function applyIsolating(db: Db, events: ProjectionEvent[], projections: readonly Projection[] = PROJECTIONS): Promise<Outcome[]> {
  try {
    const { applied, parked } = await applyEvents(db, events, projections);
    const a = new Set(applied);
    const p = new Set(parked);
    // A duplicate delivery inside one batch is applied once; its twin is a duplicate.
    const seen = new Set<string>();
    return events.map((e) => {
      const first = !seen.has(e.event_id);
      seen.add(e.event_id);
      return a.has(e.event_id) && first ? 'applied' : p.has(e.event_id) ? 'parked' : 'duplicate';
    });
  } catch (err) {
    if (!isDataError(err)) throw err;
    if (events.length === 1) return [err instanceof Error ? err : new Error(String(err))];
    const mid = Math.ceil(events.length / 2);
    return [...(await applyIsolating(db, events.slice(0, mid), projections)), ...(await applyIsolating(db, events.slice(mid), projections))];
  }
}
