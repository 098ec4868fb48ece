import { z } from 'zod';
import type { CommonQueryMethods } from 'slonik';
import { sql } from './pool.js';
import { LOCKS } from '../lib/contract.js';
import { lastOutboxId, outboxBacklog } from './outbox.js';
import { lastVerifyRun, verifyRun } from './verify-runs.js';
import { within } from '../lib/timeout.js';
import { PROJECTIONS } from '../workers/projector/projections/index.js';
import type { Projection } from '../workers/projector/projection.js';

/**
 * Where each projection stands: the one query module behind
 * GET /admin/projections, the projection_* gauges of /metrics and the admin
 * view.
 *
 * Position and lag are the pipeline's, the same for every projection, and
 * that is exact rather than a shortcut: the projector applies each event to
 * every projection in one transaction with one processed_events row
 * (workers/projector/apply.ts), so no projection can be ahead of another. An
 * event a projection ignores (its evolve() returns no rows) is applied to it
 * all the same, as a no-op. The last event that actually changed a view is not
 * tracked.
 */

/**
 * A projection's rebuild, from read_db's `rebuild_state` (written by the
 * blue/green rebuild, db/rebuild.ts; see rebuildStates). `projection` is
 * null only in IDLE. A rebuild is running while `state` is none of idle,
 * done, failed, crashed.
 */
export interface RebuildState {
  projection: string | null;
  state: string;
  phase: string | null;
  rows_done: number | null;
  rows_total: number | null;
  started_at: string | null;
  updated_at: string | null;
  finished_at: string | null;
  error: string | null;
}

export const IDLE: RebuildState = { projection: null, state: 'idle', phase: null, rows_done: null, rows_total: null, started_at: null, updated_at: null, finished_at: null, error: null };
const SETTLED = new Set(['idle', 'done', 'failed', 'crashed']);
export const isRebuilding = (s: RebuildState) => !SETTLED.has(s.state);

const text = z.union([z.string(), z.number()]).nullish().transform((v) => (v == null ? null : String(v)));
const count = z.union([z.number(), z.string()]).nullish().transform((v) => (v == null || !Number.isFinite(Number(v)) ? null : Number(v)));
const rebuildRow = z.object({
  projection: text,
  state: text.transform((v) => v ?? 'unknown'),
  phase: text,
  rows_done: count,
  rows_total: count,
  started_at: text,
  updated_at: text,
  finished_at: text,
  error: text,
});

/** A run that has not written its progress for this long is taken for dead (kill -9): the next run cleans up after it. */
const STALE_MS = 30_000;

/**
 * The blue/green rebuild's row of rebuild_state (migration read/0003, see
 * db/rebuild.ts), one state per projection it rebuilds: running while it
 * has not finished and wrote progress lately; done (a dry run too; its
 * phase says dry_run_done) or failed once finished; crashed when it stopped writing without
 * finishing.
 */
export async function rebuildStates(read: CommonQueryMethods): Promise<RebuildState[]> {
  const exists = await read.oneFirst(sql.type(z.object({ exists: z.boolean() }))`SELECT to_regclass('rebuild_state') IS NOT NULL AS exists`);
  if (!exists) return [];
  // As JSON: whatever columns the table has, missing ones read as null.
  const rows = await read.anyFirst(sql.type(z.object({ row: z.record(z.string(), z.unknown()) }))`SELECT to_jsonb(r) AS row FROM rebuild_state r`);
  return rows.flatMap((r) => {
    const finished = r.finished_at != null;
    const fresh = r.updated_at != null && Date.now() - Date.parse(`${String(r.updated_at)}Z`) < STALE_MS;
    const state = finished ? (r.phase === 'failed' ? 'failed' : 'done') : fresh ? 'running' : 'crashed';
    return (r.projections as unknown[]).map((projection) => rebuildRow.parse({ ...r, projection, state }));
  });
}

/**
 * Rebuilds running on this read_db, whoever started them: `npm run rebuild`
 * (db/rebuild.ts) holds its advisory lock there from its first statement,
 * before it has written rebuild_state, and lets go of it before it closes its
 * connections. (Counting its sessions, as until 2026-11-26, showed a rebuild
 * running for a moment after it had exited, while PostgreSQL closed them.)
 */
export function rebuildLockHolders(read: CommonQueryMethods): Promise<number> {
  // A bigint key shows as its high half in classid and its low half in objid, objsubid 1 (PostgreSQL's pg_locks).
  return read.oneFirst(sql.type(z.object({ n: z.number() }))`
    SELECT count(*)::int AS n FROM pg_locks
     WHERE locktype = 'advisory' AND granted AND objsubid = 1
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND classid = ${Math.floor(LOCKS.rebuild / 2 ** 32)}::oid AND objid = ${LOCKS.rebuild % 2 ** 32}::oid`);
}

/** A projection's rebuild: its row, else running when a rebuild holds its lock (no progress written yet), else idle. */
export function rebuildOf(states: readonly RebuildState[], table: string, holders = 0): RebuildState {
  const own = states.find((s) => s.projection === table);
  if (own) return own;
  return holders > 0 ? { ...IDLE, state: 'running', phase: 'starting (npm run rebuild has begun; no progress written yet)' } : IDLE;
}

export const projectionStatus = z.object({
  projection: z.string(),
  /** Highest event id applied (to every projection alike, see above); null when none is. */
  last_applied_event_id: z.string().nullable(),
  /** When it was applied; null when unknown (pruned below the retention floor). */
  last_applied_at: z.string().nullable(),
  /** Outbox events above the last applied one; null while write_db is away. */
  events_behind: z.number().nullable(),
  /** Age of the oldest of those (0 when none); null while write_db is away. */
  seconds_behind: z.number().nullable(),
  rows: z.number(),
  /** false: PostgreSQL's estimate (a view past ROW_COUNT_EXACT_BELOW rows), not a count. */
  rows_exact: z.boolean(),
  /** The latest `npm run verify` (from verify_runs): its outcome and this projection's differences; null when never run. */
  last_verify: z.object({ at: z.string(), ok: z.boolean(), outcome: verifyRun.shape.outcome, mismatches: z.number().nullable() }).nullable(),
  rebuild: z.object({ state: z.string(), phase: z.string().nullable(), rows_done: z.number().nullable(), rows_total: z.number().nullable(), updated_at: z.string().nullable(), error: z.string().nullable() }),
});
export type ProjectionStatus = z.infer<typeof projectionStatus>;

export const statusReport = z.object({
  as_of: z.string(),
  outbox: z.object({ last_event_id: z.number(), unpublished: z.number(), oldest_unpublished_age_seconds: z.number() }).nullable(),
  projections: z.array(projectionStatus),
});
export type StatusReport = z.infer<typeof statusReport>;

/** Views estimated at this many rows or more are not counted (a count reads the whole table). */
const ROW_COUNT_EXACT_BELOW = 1_000_000;
/** write_db gets this long; read_db answers or the status fails. */
const WRITE_TIMEOUT_MS = 1500;

/**
 * The highest applied event id and when. processed_events.event_id is text
 * (no numeric index), and max(event_id::bigint) reads the whole table; ids
 * are digits without leading zeros, so among ids of one length the text
 * order is the numeric order, and the highest id is the last of the longest
 * in the primary key's index: a backward index scan from the outbox's last
 * id. With write_db away (no last id), the whole table is read.
 */
export async function lastApplied(read: CommonQueryMethods, lastId: number | undefined): Promise<{ id: string; at: string | null } | null> {
  // The floor counts as applied (everything below it may have been pruned, or a full rebuild raised it).
  const { floor, at } = await read.one(sql.type(z.object({ floor: z.number(), at: z.string().nullable() }))`SELECT event_id AS floor, applied_at AS at FROM processed_floor`);
  const found = await lastRecorded(read, lastId);
  if (found && Number(found.id) >= floor) return found;
  return floor > 0 ? { id: String(floor), at } : null;
}

/** The processed_events row of the highest id at or below `lastId` (with no `lastId`, the highest of all), or null. */
export async function lastRecorded(read: CommonQueryMethods, lastId: number | undefined): Promise<{ id: string; at: string | null } | null> {
  const row = z.object({ event_id: z.string(), processed_at: z.string() });
  if (lastId !== undefined) {
    for (let digits = String(lastId).length; digits >= 1; digits--) {
      const upper = digits === String(lastId).length ? String(lastId) : '9'.repeat(digits);
      const found = await read.maybeOne(sql.type(row)`
        SELECT event_id, processed_at FROM processed_events
         WHERE event_id <= ${upper} AND length(event_id) = ${digits} ORDER BY event_id DESC LIMIT 1`);
      if (found) return { id: found.event_id, at: found.processed_at };
    }
  } else {
    const found = await read.maybeOne(sql.type(row)`SELECT event_id, processed_at FROM processed_events ORDER BY event_id::bigint DESC LIMIT 1`);
    if (found) return { id: found.event_id, at: found.processed_at };
  }
  return null;
}

async function rowCounts(read: CommonQueryMethods, projections: readonly Projection[]): Promise<Map<string, { rows: number; exact: boolean }>> {
  const estimates = await read.any(sql.type(z.object({ view: z.string(), n: z.number() }))`
    SELECT relname AS view, greatest(reltuples, 0)::float8 AS n FROM pg_class
     WHERE relkind = 'r' AND relname = ANY (${sql.array(projections.map((p) => p.table), 'text')})`);
  const out = new Map<string, { rows: number; exact: boolean }>();
  for (const p of projections) {
    const estimate = estimates.find((e) => e.view === p.table)?.n ?? 0;
    if (estimate >= ROW_COUNT_EXACT_BELOW) out.set(p.table, { rows: Math.round(estimate), exact: false });
    else out.set(p.table, { rows: await read.oneFirst(sql.type(z.object({ n: z.number() }))`SELECT count(*)::int AS n FROM ${sql.identifier([p.table])}`), exact: true });
  }
  return out;
}

/**
 * Every projection's status. read_db must answer; write_db (the outbox side:
 * lag, backlog) gets WRITE_TIMEOUT_MS and is reported null when away.
 */
export async function projectionStatuses(write: CommonQueryMethods, read: CommonQueryMethods, projections: readonly Projection[] = PROJECTIONS): Promise<StatusReport> {
  const outbox = await within(
    (async () => {
      const [last, backlog] = await Promise.all([lastOutboxId(write), outboxBacklog(write)]);
      return { last_event_id: last, unpublished: backlog.unpublished, oldest_unpublished_age_seconds: backlog.oldestAgeSeconds };
    })(),
    WRITE_TIMEOUT_MS,
  );
  const applied = await lastApplied(read, outbox?.last_event_id);
  const behind = outbox
    ? await within(
        write.one(sql.type(z.object({ n: z.number(), age: z.number().nullable() }))`
          SELECT count(*)::int AS n, extract(epoch FROM (now() AT TIME ZONE 'UTC') - min(created_at))::float8 AS age
            FROM outbox WHERE id > ${applied ? Number(applied.id) : 0}`),
        WRITE_TIMEOUT_MS,
      )
    : undefined;
  const [rows, verify, rebuilds, holders] = await Promise.all([rowCounts(read, projections), lastVerifyRun(read), rebuildStates(read), rebuildLockHolders(read)]);
  return {
    as_of: new Date().toISOString(),
    outbox: outbox ?? null,
    projections: projections.map((p) => {
      const r = rebuildOf(rebuilds, p.table, holders);
      const n = rows.get(p.table) ?? { rows: 0, exact: false };
      return {
        projection: p.table,
        last_applied_event_id: applied?.id ?? null,
        last_applied_at: applied?.at ?? null,
        events_behind: behind?.n ?? null,
        seconds_behind: behind ? Math.max(0, behind.age ?? 0) : null,
        rows: n.rows,
        rows_exact: n.exact,
        last_verify: verify ? { at: verify.finished_at, ok: verify.ok, outcome: verify.outcome, mismatches: verify.mismatches[p.table] ?? null } : null,
        rebuild: { state: r.state, phase: r.phase, rows_done: r.rows_done, rows_total: r.rows_total, updated_at: r.updated_at, error: r.error },
      };
    }),
  };
}

/** What a phase's progress counts (rows_done / rows_total): rows copied, tables indexed or compared, events caught up; nothing in the others. */
export function progressUnit(phase: string | null): 'rows' | 'tables' | 'events' | undefined {
  if (phase === 'copy') return 'rows';
  if (phase === 'index' || phase === 'compare') return 'tables';
  if (phase === 'catchup' || phase === 'done' || phase === 'dry_run_done') return 'events';
  return undefined;
}
