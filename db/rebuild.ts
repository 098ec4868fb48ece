import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { setPriority } from 'node:os';
import { z } from 'zod';
import type { CommonQueryMethods, DatabaseConnection, FragmentSqlToken, IdentifierSqlToken } from 'slonik';
import { createDb, pgCode, sql, type Db } from './pool.js';
import { createLogger } from '../lib/logger.js';
import { LOCKS } from '../lib/contract.js';
import { insertRows, upsertFragment, type EventRow, type Projection, type SqlType } from '../workers/projector/projection.js';
import { PROJECTIONS } from '../workers/projector/projections/index.js';
import { orderEvent, type OrderEvent } from '../workers/projector/events.js';
import { realEvents } from './recompute.js';
import { outboxHorizon, snapshotXmin } from './outbox.js';

/**
 * Blue/green rebuild (docs/rebuild.md). Projectors keep applying live events
 * to the live views throughout; only the swap pauses them, for one short
 * transaction.
 *
 * S: the outbox ids visible in a REPEATABLE READ snapshot of write_db,
 * described by `high` (the highest), `low` (the lowest above the retention
 * floor) and the gaps in between (ids not visible: rolled back, or in flight
 * at the snapshot). `settled`: no id at or below it can commit after the
 * snapshot (the floor, the reconciler's watermark, or a horizon the rebuild
 * takes itself). Ids between it and `low` are a gap too: one of them may be
 * in flight. P: processed_events (plus every id at or below processed_floor).
 *
 *  1. shadow tables <view>__rebuild are filled with each projection's
 *     recomputation from S (set-based in write_db, streamed in chunks), get
 *     the view's indexes, and are compared with the recomputation (a
 *     checksum per table);
 *  2. events of P not in S (applied to the live views after the snapshot)
 *     are applied to the shadows through the projector's own upsert, each
 *     exactly once: rebuild_caught records the id in the same statement.
 *     Repeated until few are left;
 *  3. the ids of S not in P are gathered in rebuild_pending;
 *  4. swap, one transaction: processed_events locked against projectors
 *     (SHARE ROW EXCLUSIVE, as prune does), the views ACCESS EXCLUSIVE; the
 *     last events of P \ S are caught up (P cannot grow now), S \ P is
 *     recorded processed, dead letters of S are resolved, the shadows take
 *     the views' names. The shadows then hold exactly P ∪ S, and
 *     processed_events is P ∪ S. A full rebuild records most of S \ P by
 *     raising processed_floor (see firstNotInS), so the swap stays short even
 *     when the live views were empty.
 *
 * A crash anywhere leaves the live views and processed_events as they were
 * (or, after the swap's commit, swapped whole); the next run drops what a
 * crashed one left and starts over.
 *
 * Rebuilding some projections only (by table name): the others keep their
 * live tables, so events of S \ P are applied to them in the swap like a
 * projector would, and dead letters stay dead letters (the rebuilt views
 * leave out what they would have added, as the others do).
 */

export type RebuildPhase = 'start' | 'snapshot' | 'copy' | 'index' | 'compare' | 'catchup' | 'swap' | 'done' | 'dry_run_done' | 'failed';

export interface RebuildProgress {
  phase: RebuildPhase;
  table?: string;
  rows: number;
  total?: number;
  /** Rows per second of this phase so far. */
  rate?: number;
  /** Seconds left in this phase at that rate, when its total is known. */
  etaSeconds?: number;
}

export interface TableCheck {
  rows: number;
  /** Sum of a 64-bit hash of each row's canonical text, from write_db's recomputation and from the shadow table. */
  expected: string;
  actual: string;
  match: boolean;
}

export interface RebuildResult {
  /** Events of the snapshot recorded processed at the swap, one row each (they were not yet). */
  events: number;
  /**
   * processed_floor after the run: every id at or below it counts as
   * processed. A full rebuild raises it to cover the snapshot's ids up to its
   * first gap (see firstNotInS), instead of a row per id.
   */
  floor: number;
  /** Events applied to the live views after the snapshot, applied to the shadows. */
  caughtUp: number;
  /** Dead letters (failed or parked) whose events the recomputation now covers. */
  deadLettersResolved: number;
  rows: Record<string, number>;
  checksums: Record<string, TableCheck>;
  swapped: boolean;
  /** Time the swap transaction held its locks, ms (0 for a dry run). */
  swapMs: number;
  seconds: number;
}

export interface RebuildOptions {
  /** Table names of the projections to rebuild; all when absent or empty. */
  only?: readonly string[];
  /** Build and compare, then drop the shadows: nothing live changes. */
  dryRun?: boolean;
  /**
   * Recomputations run at once, each on its own write_db connection sharing
   * the snapshot. Unset: 1 while orders flow (events written in the last 10 s:
   * a core stays with the pipeline, whose freshness would otherwise suffer),
   * else 2.
   */
  parallel?: number;
  /** How long the swap waits for its locks before it lets go and tries again (1000 ms). */
  lockTimeoutMs?: number;
}

export const SHADOW_SUFFIX = '__rebuild';
const shadowName = (table: string) => `${table}${SHADOW_SUFFIX}`;
const id = (name: string): IdentifierSqlToken => sql.identifier([name]);
const textRow = z.record(z.string(), z.string().nullable());
const PENDING_CHUNK = 250_000;
/** Catch-up rounds before the swap stop once a round finds fewer events than this. */
const TAIL = 200;
const SWAP_TRIES = 20;
/** work_mem of the recomputations' sessions in write_db, for the run only. */
const WORK_MEM = '128MB';

export class RebuildError extends Error {
  override name = 'RebuildError';
}

/** What S is: see the comment at the top. */
interface Snapshot {
  exported: string;
  high: number;
  low: number;
  floor: number;
  /** No id at or below it can commit after the snapshot: max(floor, the reconciler's watermark, the rebuild's own horizon). */
  settled: number;
  gapLo: number[];
  gapHi: number[];
}

/** S's gaps as an int8multirange literal. */
const gapsLiteral = (s: Snapshot) => `{${s.gapLo.map((lo, i) => `[${lo},${s.gapHi[i]}]`).join(',')}}`;
/** Is the id (a bigint SQL expression) in S, given it is in [low, high]? */
const inS = (s: Snapshot, expr: FragmentSqlToken) => sql.fragment`NOT (${expr} <@ ${gapsLiteral(s)}::int8multirange)`;

/**
 * The lowest id above `settled` that is not in S (the first gap above it,
 * else high + 1). Every id from `settled` up to just below it is in S or was
 * never written and never will be: a full rebuild counts them all processed
 * by raising the floor there, and only a move of the floor past it during the
 * run can take an event of P \ S away before it is caught up.
 */
export function firstNotInS(s: Pick<Snapshot, 'high' | 'settled' | 'gapLo' | 'gapHi'>): number {
  let first = s.high + 1;
  s.gapLo.forEach((lo, i) => {
    if (s.gapHi[i]! > s.settled) first = Math.min(first, Math.max(lo, s.settled + 1));
  });
  return first;
}

/**
 * The recomputations are the rebuild's heaviest work: aggregates over all of
 * write_db, a core each, for seconds. When PostgreSQL runs on this machine
 * and lets this process, their backends get the lowest CPU priority (nice
 * 19), so the pipeline's own processes and sessions, waking up, run first and
 * the rebuild takes what is left. Safe for these sessions only: they read a
 * snapshot and hold no lock anything waits on (the swap and every write run
 * at normal priority). The backend is recognised by its process title, which
 * names the session's client port, so a pid from another machine or pid
 * namespace is never touched. Anything else (PostgreSQL elsewhere, no
 * permission, titles off): nothing happens.
 */
async function yieldCpu(w: CommonQueryMethods): Promise<boolean> {
  const me = await w.maybeOne(sql.type(z.object({ pid: z.number(), addr: z.string().nullable(), port: z.number().nullable() }))`
    SELECT pid, host(client_addr) AS addr, client_port AS port FROM pg_stat_activity WHERE pid = pg_backend_pid()`);
  if (!me?.addr || !me.port || me.port < 0) return false;
  const title = await readFile(`/proc/${me.pid}/cmdline`, 'utf8').catch(() => '');
  if (!title.startsWith('postgres') || !title.includes(` ${me.addr}(${me.port}) `)) return false;
  try {
    setPriority(me.pid, 19);
    return true;
  } catch {
    return false;
  }
}

/**
 * write_db's outbox horizon (outboxHorizon, as the reconciler takes it);
 * waits up to 2 s for every older transaction to end, so that the snapshot
 * taken next likely settles every id up to `seq`.
 */
async function takeHorizon(db: Db): Promise<{ seq: number; xid: bigint }> {
  const h = await outboxHorizon(db);
  for (let waited = 0; waited < 2000 && (await snapshotXmin(db)) <= h.xid; waited += 10) await new Promise((r) => setTimeout(r, 10));
  return h;
}

/** The canonical text of a row (as verify compares), hashed to a signed 64-bit integer. */
function rowHash(p: Projection, key: string): FragmentSqlToken {
  const part = (col: string, type: SqlType) =>
    type === 'timestamp'
      ? sql.fragment`coalesce(to_char(t.${id(col)}, 'YYYY-MM-DD"T"HH24:MI:SS.US'), '-')`
      : type === 'text'
        ? sql.fragment`coalesce(t.${id(col)}::text, '-')`
        : sql.fragment`coalesce(trim_scale(t.${id(col)}::numeric)::text, '-')`;
  const parts = [part(key, p.key.type), ...p.columns.map((c) => part(c.name, c.type))];
  return sql.fragment`('x' || left(md5(${sql.join(parts, sql.fragment` || '|' || `)}), 16))::bit(64)::bigint`;
}

const void_ = sql.typeAlias('void');

/** Rate and ETA of a phase, for the terminal and rebuild_state. */
class Meter {
  private readonly t0 = performance.now();
  constructor(
    readonly phase: RebuildPhase,
    readonly total?: number,
    readonly table?: string,
  ) {}
  at(rows: number): RebuildProgress {
    const seconds = (performance.now() - this.t0) / 1000;
    const rate = seconds > 0 ? rows / seconds : undefined;
    const etaSeconds = this.total !== undefined && rate ? Math.max(0, (this.total - rows) / rate) : undefined;
    return { phase: this.phase, table: this.table, rows, total: this.total, rate, etaSeconds };
  }
}

export async function rebuild(
  writeUrl: string,
  readUrl: string,
  /** Told of progress; when it returns a promise, the rebuild waits for it (tests act between phases). */
  onProgress: (p: RebuildProgress) => unknown = () => undefined,
  registry: readonly Projection[] = PROJECTIONS,
  options: RebuildOptions = {},
): Promise<RebuildResult> {
  const started = performance.now();
  const only = options.only?.length ? options.only : undefined;
  const unknown = only?.filter((t) => !registry.some((p) => p.table === t));
  if (unknown?.length) throw new RebuildError(`no projection named ${unknown.join(', ')} (known: ${registry.map((p) => p.table).join(', ')})`);
  const targets = only ? registry.filter((p) => only.includes(p.table)) : registry;
  const others = registry.filter((p) => !targets.includes(p));
  const parallel = options.parallel === undefined ? undefined : Math.max(1, Math.floor(options.parallel));
  const log = createLogger('warn', 'rebuild');
  const writeDb = createDb(writeUrl, { name: 'rebuild', max: (parallel ?? 2) + 2, log });
  const readDb = createDb(readUrl, { name: 'rebuild', max: (parallel ?? 2) + 3, log });
  try {
    return await readDb.connect(async (control) => {
      const locked = await control.oneFirst(sql.type(z.object({ ok: z.boolean() }))`SELECT pg_try_advisory_lock(${LOCKS.rebuild}) AS ok`);
      if (!locked) throw new RebuildError('another rebuild is running on this read_db');
      const state = new StateWriter(control);
      try {
        const result = await run(writeDb, readDb, state, { targets, others, registry, parallel, started, onProgress, dryRun: options.dryRun ?? false, lockTimeoutMs: options.lockTimeoutMs ?? 1000 });
        return result;
      } catch (err) {
        await state.set({ phase: 'failed', error: (err as Error).message, finished: true }).catch(() => undefined);
        throw err;
      } finally {
        await control.query(void_`SELECT FROM pg_advisory_unlock(${LOCKS.rebuild})`).catch(() => undefined);
      }
    });
  } finally {
    await Promise.allSettled([writeDb.end(), readDb.end()]);
  }
}

interface StatePatch {
  phase?: RebuildPhase;
  table?: string | null;
  rows?: number;
  total?: number | null;
  rate?: number | null;
  eta?: number | null;
  caught?: number;
  marked?: number;
  high?: number;
  checksums?: Record<string, TableCheck>;
  swapMs?: number;
  error?: string;
  finished?: boolean;
}

/** rebuild_state, written on the control connection (throttled for progress). */
class StateWriter {
  private last = 0;
  private chain: Promise<unknown> = Promise.resolve();
  constructor(private readonly conn: CommonQueryMethods) {}

  /** One query at a time on the connection, in order. */
  private serial(q: () => Promise<unknown>): Promise<void> {
    const next = this.chain.then(q, q);
    this.chain = next.catch(() => undefined);
    return next.then(() => undefined);
  }

  begin(runId: string, projections: string[], dryRun: boolean): Promise<void> {
    return this.serial(() => this.conn.query(void_`
      INSERT INTO rebuild_state (singleton, run_id, pid, projections, dry_run, phase, started_at, updated_at)
      VALUES (true, ${runId}, ${process.pid}, ${sql.array(projections, 'text')}, ${dryRun}, 'start', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC')
      ON CONFLICT (singleton) DO UPDATE SET run_id = EXCLUDED.run_id, pid = EXCLUDED.pid, projections = EXCLUDED.projections, dry_run = EXCLUDED.dry_run,
        phase = 'start', current_table = NULL, rows_done = 0, rows_total = NULL, rows_per_sec = NULL, eta_seconds = NULL, events_caught_up = 0,
        events_marked = 0, snapshot_high = NULL, checksums = '{}', swap_ms = NULL, error = NULL, started_at = EXCLUDED.started_at,
        updated_at = EXCLUDED.updated_at, finished_at = NULL`));
  }

  async progress(p: RebuildProgress): Promise<void> {
    const now = Date.now();
    if (now - this.last < 500) return;
    this.last = now;
    await this.set({ phase: p.phase, table: p.table ?? null, rows: p.rows, total: p.total ?? null, rate: p.rate ?? null, eta: p.etaSeconds ?? null });
  }

  async set(s: StatePatch): Promise<void> {
    const sets: FragmentSqlToken[] = [sql.fragment`updated_at = now() AT TIME ZONE 'UTC'`];
    if (s.phase !== undefined) sets.push(sql.fragment`phase = ${s.phase}`);
    if (s.table !== undefined) sets.push(sql.fragment`current_table = ${s.table}`);
    if (s.rows !== undefined) sets.push(sql.fragment`rows_done = ${s.rows}`);
    if (s.total !== undefined) sets.push(sql.fragment`rows_total = ${s.total}`);
    if (s.rate !== undefined) sets.push(sql.fragment`rows_per_sec = ${s.rate}`);
    if (s.eta !== undefined) sets.push(sql.fragment`eta_seconds = ${s.eta}`);
    if (s.caught !== undefined) sets.push(sql.fragment`events_caught_up = ${s.caught}`);
    if (s.marked !== undefined) sets.push(sql.fragment`events_marked = ${s.marked}`);
    if (s.high !== undefined) sets.push(sql.fragment`snapshot_high = ${s.high}`);
    if (s.checksums !== undefined) sets.push(sql.fragment`checksums = ${sql.jsonb(s.checksums as never)}`);
    if (s.swapMs !== undefined) sets.push(sql.fragment`swap_ms = ${s.swapMs}`);
    if (s.error !== undefined) sets.push(sql.fragment`error = ${s.error}`);
    if (s.finished) sets.push(sql.fragment`finished_at = now() AT TIME ZONE 'UTC'`);
    await this.serial(() => this.conn.query(void_`UPDATE rebuild_state SET ${sql.join(sets, sql.fragment`, `)}`));
  }
}

interface RunOptions {
  targets: readonly Projection[];
  others: readonly Projection[];
  registry: readonly Projection[];
  parallel: number | undefined;
  started: number;
  dryRun: boolean;
  lockTimeoutMs: number;
  onProgress: (p: RebuildProgress) => unknown;
}

async function run(writeDb: Db, readDb: Db, state: StateWriter, o: RunOptions): Promise<RebuildResult> {
  const report = async (p: RebuildProgress) => {
    void state.progress(p).catch(() => undefined);
    const waited = o.onProgress(p);
    if (waited instanceof Promise) await waited;
  };
  await state.begin(randomBytes(6).toString('hex'), o.targets.map((p) => p.table), o.dryRun);

  // What a crashed run left: dropped, whatever phase it died in (the swap is one transaction: it either happened or not).
  for (const p of o.registry) await readDb.query(void_`DROP TABLE IF EXISTS ${id(shadowName(p.table))}`);
  await readDb.query(void_`TRUNCATE rebuild_caught, rebuild_pending`);

  const shadows = o.targets.map((p) => ({ ...p, table: shadowName(p.table) }));
  const live = new Map(shadows.map((s, i) => [s.table, o.targets[i]!]));
  const rows: Record<string, number> = {};
  const checksums: Record<string, TableCheck> = {};

  return writeDb.connect(async (lead) => {
    // The snapshot: read the floor before it, so that every id the snapshot misses above the floor is a gap (docs/rebuild.md).
    await report({ phase: 'snapshot', rows: 0 });
    const { floor, watermark } = await readDb.one(sql.type(z.object({ floor: z.number(), watermark: z.number() }))`
      SELECT (SELECT event_id FROM processed_floor) AS floor, (SELECT last_event_id FROM reconciler_watermark) AS watermark`);
    const horizon = await takeHorizon(writeDb);
    await lead.query(void_`BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`);
    try {
      const exported = await lead.oneFirst(sql.type(z.object({ s: z.string() }))`SELECT pg_export_snapshot() AS s`);
      // Every transaction older than the horizon's had ended when the snapshot was taken: no id up to it can commit later.
      const settled = Math.max(floor, watermark, (await snapshotXmin(lead)) > horizon.xid ? horizon.seq : 0);
      const bounds = await lead.one(sql.type(z.object({ high: z.number(), low: z.number() }))`
        SELECT coalesce(max(id), 0) AS high, coalesce(min(id) FILTER (WHERE id > ${floor}), 0) AS low FROM outbox`);
      const gaps = [...(await lead.any(sql.type(z.object({ lo: z.number(), hi: z.number() }))`
        SELECT id + 1 AS lo, next - 1 AS hi FROM (SELECT id, lead(id) OVER (ORDER BY id) AS next FROM outbox WHERE id >= ${bounds.low}) t WHERE next > id + 1`))];
      // Ids between `settled` and `low` are not in S either: none was written, or one was in flight and may still commit. A gap too.
      if (bounds.low > settled + 1) gaps.unshift({ lo: settled + 1, hi: bounds.low - 1 });
      const snap: Snapshot = { exported, high: bounds.high, low: bounds.low, floor, settled, gapLo: gaps.map((g) => g.lo), gapHi: gaps.map((g) => g.hi) };
      // A full rebuild raises the floor to `cover` at the swap instead of recording each id of S below it.
      const cover = o.others.length === 0 && snap.low > 0 ? Math.max(settled, firstNotInS(snap) - 1) : floor;
      await state.set({ high: snap.high });

      // 1. Shadows: created bare, filled from the recomputation (two at a time, same snapshot), indexed, compared.
      for (const s of shadows) {
        await readDb.query(void_`CREATE TABLE ${id(s.table)} (LIKE ${id(live.get(s.table)!.table)} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)`);
      }
      const queue = [...shadows];
      const copyWorker = () =>
        writeDb.connect(async (w) => {
          await yieldCpu(w);
          for (let s = queue.shift(); s; s = queue.shift()) {
            await w.query(void_`BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`);
            try {
              await w.query(void_`SET TRANSACTION SNAPSHOT ${sql.literalValue(snap.exported)}`);
              // A cursor is planned for its first 10 % by default: nested loops over 2 M index lookups instead of one
              // hash join. Plan for all rows, sort and hash in memory, and skip JIT compilation (seconds, for one run).
              await w.query(void_`SELECT FROM set_config('cursor_tuple_fraction', '1', true) a, set_config('work_mem', ${WORK_MEM}, true) b, set_config('jit', 'off', true) c`);
              const c = await copy(w, readDb, s, live.get(s.table)!, report);
              rows[live.get(s.table)!.table] = c.rows;
              checksums[live.get(s.table)!.table] = { rows: c.rows, expected: c.sum.toString(), actual: '', match: false };
            } finally {
              await w.query(void_`COMMIT`);
            }
          }
        });
      const flowing = await lead.exists(sql.typeAlias('void')`
        SELECT FROM outbox WHERE id > ${snap.high - 1000} AND created_at > (now() AT TIME ZONE 'UTC') - interval '10 seconds'`);
      const parallel = Math.min(o.parallel ?? (flowing ? 1 : 2), shadows.length);
      await Promise.all(Array.from({ length: parallel }, copyWorker));
      await gatherPending(readDb, snap, Math.max(watermark, cover), report);

      await report({ phase: 'index', rows: 0, total: shadows.length });
      for (const [i, s] of shadows.entries()) {
        await readDb.query(void_`SELECT FROM rebuild_copy_indexes(${live.get(s.table)!.table}, ${s.table})`);
        await readDb.query(void_`ANALYZE ${id(s.table)}`);
        await report({ phase: 'index', table: live.get(s.table)!.table, rows: i + 1, total: shadows.length });
      }

      await report({ phase: 'compare', rows: 0, total: shadows.length });
      for (const s of shadows) {
        const p = live.get(s.table)!;
        const got = await readDb.one(sql.type(z.object({ n: z.number(), sum: z.string() }))`
          SELECT count(*)::int AS n, coalesce(sum(${rowHash(p, p.key.name)}), 0)::text AS sum FROM ${id(s.table)} t`);
        const c = checksums[p.table]!;
        c.actual = got.sum;
        c.match = got.n === c.rows && got.sum === c.expected;
      }
      await state.set({ phase: 'compare', checksums });
      const bad = Object.entries(checksums).filter(([, c]) => !c.match);
      if (bad.length > 0) throw new RebuildError(`shadow differs from the recomputation: ${bad.map(([t, c]) => `${t} (${c.rows} rows, ${c.expected} ≠ ${c.actual})`).join(', ')}`);

      // 2. Catch up with the events applied to the live views since the snapshot, round after round, until few are left.
      let caught = 0;
      for (let round = 0; round < 20; round++) {
        const n = await readDb.connect((r) => catchUp(r, writeDb, snap, shadows));
        caught += n;
        await report({ phase: 'catchup', rows: caught });
        if (n < TAIL) break;
      }
      await state.set({ phase: 'catchup', caught });

      if (o.dryRun) {
        for (const s of shadows) await readDb.query(void_`DROP TABLE IF EXISTS ${id(s.table)}`);
        await readDb.query(void_`TRUNCATE rebuild_caught, rebuild_pending`);
        const seconds = (performance.now() - o.started) / 1000;
        await state.set({ phase: 'dry_run_done', caught, finished: true });
        await report({ phase: 'dry_run_done', rows: caught });
        return { events: 0, floor, caughtUp: caught, deadLettersResolved: 0, rows, checksums, swapped: false, swapMs: 0, seconds };
      }

      // 3. The swap.
      await report({ phase: 'swap', rows: 0 });
      await state.set({ phase: 'swap' });
      let swap: SwapResult | undefined;
      for (let attempt = 1; !swap; attempt++) {
        try {
          swap = await readDb.connect((r) => swapIn(r, writeDb, lead, snap, cover, shadows, o));
        } catch (err) {
          // Lock timeout, or a deadlock with a statement that locked a view before processed_events (none does today).
          if (!['55P03', '40P01'].includes(pgCode(err) ?? '') || attempt >= SWAP_TRIES) throw err;
          // Readers or a long batch held a view: let them through, catch up a little more, try again.
          caught += await readDb.connect((r) => catchUp(r, writeDb, snap, shadows));
          await new Promise((r) => setTimeout(r, Math.min(50 * attempt, 500)));
        }
      }
      caught += swap.caught;
      await readDb.query(void_`TRUNCATE rebuild_caught, rebuild_pending`);
      const seconds = (performance.now() - o.started) / 1000;
      await state.set({ phase: 'done', caught, marked: swap.marked, swapMs: swap.ms, finished: true });
      await report({ phase: 'done', rows: caught });
      return { events: swap.marked, floor: swap.floor, caughtUp: caught, deadLettersResolved: swap.resolved, rows, checksums, swapped: true, swapMs: swap.ms, seconds };
    } finally {
      await lead.query(void_`COMMIT`).catch(() => undefined);
    }
  });
}

/** One projection's recomputation from the snapshot into its shadow, 20,000 rows at a time; returns the rows and their checksum. */
async function copy(w: DatabaseConnection, readDb: Db, shadow: Projection, p: Projection, report: (p: RebuildProgress) => Promise<void>): Promise<{ rows: number; sum: bigint }> {
  const total = await readDb.oneFirst(sql.type(z.object({ n: z.number() }))`SELECT count(*)::int AS n FROM ${id(p.table)}`);
  const meter = new Meter('copy', total, p.table);
  const names = ['key', ...p.columns.map((c) => c.name)];
  const cols = p.columns.map((c) => sql.fragment`t.${id(c.name)}::text`);
  const cursor = id(`rebuild_${p.table}`);
  await w.query(void_`DECLARE ${cursor} NO SCROLL CURSOR FOR
    SELECT t.key::text AS key, ${sql.join(cols, sql.fragment`, `)}, ${rowHash(p, 'key')}::text AS h FROM (${p.recompute}) t`);
  let n = 0;
  let sum = 0n;
  for (;;) {
    const batch = await w.any(sql.type(textRow)`FETCH 20000 FROM ${cursor}`);
    if (batch.length === 0) break;
    for (const r of batch) sum += BigInt(r.h!);
    await insertRows(readDb, shadow, batch.map((r) => names.map((c) => r[c] ?? null)));
    n += batch.length;
    await report(meter.at(n));
  }
  await w.query(void_`CLOSE ${cursor}`);
  return { rows: n, sum };
}

/**
 * rebuild_pending := the ids of S in [low, high] not in processed_events,
 * set-based in read_db, in ranges. Ids at or below the reconciler's
 * watermark are skipped: each is processed, a dead letter (the swap takes
 * those from dead_letters) or was never written (docs/rebuild.md).
 */
async function gatherPending(readDb: Db, s: Snapshot, watermark: number, report: (p: RebuildProgress) => Promise<void>): Promise<void> {
  const first = Math.max(s.low, watermark + 1);
  if (s.low === 0 || first > s.high) return;
  const meter = new Meter('copy', s.high - first + 1, 'rebuild_pending');
  for (let from = first; from <= s.high; from += PENDING_CHUNK) {
    const to = Math.min(s.high, from + PENDING_CHUNK - 1);
    await readDb.query(void_`
      INSERT INTO rebuild_pending (event_id)
      SELECT g::text FROM generate_series(${from}::bigint, ${to}::bigint) g
       WHERE ${inS(s, sql.fragment`g`)} AND NOT EXISTS (SELECT 1 FROM processed_events p WHERE p.event_id = g::text)
      ON CONFLICT DO NOTHING`);
    await report(meter.at(to - first + 1));
  }
}

const outboxRow = z.object({ id: z.string(), topic: z.string(), payload: z.unknown() });

/** Outbox rows of these ids, read committed (outside the snapshot). */
function payloads(writeDb: Db, ids: readonly string[]) {
  return writeDb.any(sql.type(outboxRow)`SELECT id::text AS id, topic, payload FROM outbox WHERE id = ANY (${sql.array(ids, 'int8')}) ORDER BY id`);
}

function parse(e: z.infer<typeof outboxRow>): OrderEvent | undefined {
  try {
    return orderEvent(e.topic, e.payload);
  } catch (err) {
    throw new RebuildError(`event ${e.id}: ${(err as Error).message}`);
  }
}

/**
 * Apply to the shadows the events of P \ S not applied to them yet, each
 * once: the ids go into rebuild_caught in the same statement as the deltas.
 * `r` may be inside the swap's transaction (then P cannot grow meanwhile).
 */
async function catchUp(r: CommonQueryMethods, writeDb: Db, s: Snapshot, shadows: readonly Projection[]): Promise<number> {
  // Outbox ids not in S: above high, or in a gap (committed after the snapshot).
  const after = await writeDb.anyFirst(sql.type(z.object({ id: z.string() }))`
    SELECT id::text AS id FROM outbox WHERE id > ${s.high}
    UNION ALL
    SELECT o.id::text FROM outbox o JOIN unnest(${sql.array(s.gapLo, 'int8')}::int8[], ${sql.array(s.gapHi, 'int8')}::int8[]) g (lo, hi) ON o.id BETWEEN g.lo AND g.hi`);
  if (after.length === 0) return 0;
  const todo = await r.anyFirst(sql.type(z.object({ id: z.string() }))`
    SELECT id FROM unnest(${sql.array(after, 'text')}) AS id
     WHERE EXISTS (SELECT 1 FROM processed_events p WHERE p.event_id = id)
       AND NOT EXISTS (SELECT 1 FROM rebuild_caught c WHERE c.event_id = id)`);
  let n = 0;
  for (let i = 0; i < todo.length; i += 1000) {
    const events = (await payloads(writeDb, todo.slice(i, i + 1000))).map((e) => ({ id: e.id, event: parse(e) }));
    const caught = id('caught');
    const upserts = shadows.flatMap((p, k) => {
      const rowsOf: EventRow[] = events.flatMap((e) => (e.event ? p.evolve(e.event).map((row) => ({ eventId: e.id, row })) : []));
      const u = upsertFragment(p, rowsOf, caught);
      return u ? [sql.fragment`, ${id(`shadow_${k}`)} AS (${u})`] : [];
    });
    n += await r.oneFirst(sql.type(z.object({ n: z.number() }))`
      WITH caught AS (
        INSERT INTO rebuild_caught (event_id) SELECT unnest(${sql.array(events.map((e) => e.id), 'text')}) ON CONFLICT DO NOTHING RETURNING event_id
      )${upserts.length > 0 ? sql.join(upserts, sql.fragment``) : sql.fragment``}
      SELECT count(*)::int AS n FROM caught`);
  }
  return n;
}

interface SwapResult {
  ms: number;
  floor: number;
  caught: number;
  marked: number;
  resolved: number;
}

/** The swap, one transaction: see the comment at the top. */
async function swapIn(r: DatabaseConnection, writeDb: Db, lead: DatabaseConnection, s: Snapshot, cover: number, shadows: readonly Projection[], o: RunOptions): Promise<SwapResult> {
  // BEGIN and COMMIT by hand: slonik refuses other pools' queries (write_db's here) inside its transaction().
  const tx = r;
  await tx.query(void_`BEGIN`);
  try {
    const result = await swapBody(tx, writeDb, lead, s, cover, shadows, o);
    await tx.query(void_`COMMIT`);
    return { ...result, ms: performance.now() - result.ms };
  } catch (err) {
    await tx.query(void_`ROLLBACK`).catch(() => undefined);
    throw err;
  }
}

async function swapBody(tx: DatabaseConnection, writeDb: Db, lead: DatabaseConnection, s: Snapshot, cover: number, shadows: readonly Projection[], o: RunOptions): Promise<SwapResult> {
  {
    await tx.query(void_`SELECT FROM set_config('lock_timeout', ${`${o.lockTimeoutMs}ms`}, true)`);
    await tx.query(void_`LOCK TABLE processed_events IN SHARE ROW EXCLUSIVE MODE`);
    const t0 = performance.now();
    for (const p of o.targets) await tx.query(void_`LOCK TABLE ${id(p.table)} IN ACCESS EXCLUSIVE MODE`);
    await tx.query(void_`SELECT FROM set_config('lock_timeout', '0', true)`);

    // An event above the floor is deduplicated by its processed_events row. Had prune moved the floor past an id
    // not in S, that event's row (and outbox payload) could be gone before it was caught up: refuse, and rerun.
    let floor = await tx.oneFirst(sql.type(z.object({ floor: z.number() }))`SELECT event_id AS floor FROM processed_floor`);
    if (floor > s.floor && floor >= firstNotInS(s)) throw new RebuildError(`prune moved the retention floor to ${floor} during the rebuild, past events after its snapshot: run it again`);

    const caught = await catchUp(tx, writeDb, s, shadows);
    const inSnapshot = (col: FragmentSqlToken) => sql.fragment`${col}::bigint BETWEEN ${s.low} AND ${s.high} AND ${inS(s, sql.fragment`${col}::bigint`)}`;
    let marked = 0;
    let resolved = 0;
    if (o.others.length === 0) {
      // Everything rebuilt: every id up to `cover` is in S (or can never commit), so the floor rises to it; S's ids
      // above it are recorded one by one. S's dead letters are covered by the recomputation (it reads orders, not
      // events), as are those at or below the floor.
      if (cover > floor) await tx.query(void_`UPDATE processed_floor SET event_id = ${cover}, applied_at = clock_timestamp() AT TIME ZONE 'UTC'`);
      floor = Math.max(floor, cover);
      resolved += (await tx.query(void_`DELETE FROM dead_letters WHERE event_id::bigint <= ${floor}`)).rowCount;
      resolved += await tx.oneFirst(sql.type(z.object({ n: z.number() }))`
        WITH d AS (DELETE FROM dead_letters WHERE ${inSnapshot(sql.fragment`event_id`)} RETURNING event_id),
             i AS (INSERT INTO rebuild_pending (event_id) SELECT event_id FROM d ON CONFLICT DO NOTHING)
        SELECT count(*)::int AS n FROM d`);
      marked = (await tx.query(void_`
        INSERT INTO processed_events (event_id, processed_at)
        SELECT event_id, now() AT TIME ZONE 'UTC' FROM rebuild_pending WHERE event_id::bigint > ${floor} ORDER BY event_id
        ON CONFLICT (event_id) DO NOTHING`)).rowCount;
    } else {
      // Some rebuilt: the others keep their tables. Events of S not applied yet are applied to them, as a projector
      // would, and recorded; dead letters stay, and the rebuilt views leave out what theirs would add (verify's view).
      const letters = await tx.any(sql.type(z.object({ event_id: z.string(), topic: z.string(), payload: z.unknown() }))`
        SELECT event_id, topic, payload FROM dead_letters WHERE event_id::bigint > ${floor} AND ${inSnapshot(sql.fragment`event_id`)}`);
      const dead = new Set(letters.map((l) => l.event_id));
      const real = await realEvents(lead, letters, (x) => !dead.has(x));
      const minus = letters.filter((l) => real.has(l.event_id)).flatMap((l) => {
        try {
          const e = orderEvent(l.topic, l.payload);
          return e ? [{ id: l.event_id, event: { sign: (e.sign === 1 ? -1 : 1) as 1 | -1, order: e.order } }] : [];
        } catch {
          return []; // malformed: verify adds nothing for it either
        }
      });
      if (minus.length > 0) await applyRows(tx, shadows, minus, sql.fragment`SELECT unnest(${sql.array(minus.map((m) => m.id), 'text')}) AS event_id`);
      const pending = await tx.anyFirst(sql.type(z.object({ event_id: z.string() }))`
        SELECT event_id FROM rebuild_pending q WHERE event_id::bigint > ${floor}
           AND NOT EXISTS (SELECT 1 FROM processed_events p WHERE p.event_id = q.event_id)
           AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.event_id = q.event_id)`);
      for (let i = 0; i < pending.length; i += 1000) {
        const events = (await payloads(writeDb, pending.slice(i, i + 1000))).map((e) => ({ id: e.id, event: parse(e) }));
        marked += await applyRows(tx, o.others, events, undefined);
      }
    }
    for (const p of o.targets) await tx.query(void_`SELECT FROM rebuild_swap(${p.table}, ${shadowName(p.table)})`);
    // ms: when the locks were taken (the caller makes it a duration at COMMIT).
    return { ms: t0, floor, caught, marked, resolved };
  }
}

/**
 * Add events' rows to these tables in one statement. With `ids` (a query of
 * event_id), the rows of those events; without, the events are recorded in
 * processed_events and the rows of the newly recorded ones are added (the
 * projector's statement). Returns the events counted.
 */
async function applyRows(tx: CommonQueryMethods, tables: readonly Projection[], events: readonly { id: string; event: OrderEvent | undefined }[], ids: FragmentSqlToken | undefined): Promise<number> {
  if (events.length === 0) return 0;
  const applied = id('applied');
  const upserts = tables.flatMap((p, k) => {
    const rowsOf: EventRow[] = events.flatMap((e) => (e.event ? p.evolve(e.event).map((row) => ({ eventId: e.id, row })) : []));
    const u = upsertFragment(p, rowsOf, applied);
    return u ? [sql.fragment`, ${id(`v_${k}`)} AS (${u})`] : [];
  });
  const source =
    ids ??
    sql.fragment`INSERT INTO processed_events (event_id, processed_at) SELECT unnest(${sql.array(events.map((e) => e.id), 'text')}), now() AT TIME ZONE 'UTC'
      ON CONFLICT (event_id) DO NOTHING RETURNING event_id`;
  return tx.oneFirst(sql.type(z.object({ n: z.number() }))`
    WITH applied AS (${source})${upserts.length > 0 ? sql.join(upserts, sql.fragment``) : sql.fragment``}
    SELECT count(*)::int AS n FROM applied`);
}
