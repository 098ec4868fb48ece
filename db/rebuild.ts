import { z } from 'zod';
import type { CommonQueryMethods, FragmentSqlToken } from 'slonik';
import { createDb, sql } from './pool.js';
import { createLogger } from '../lib/logger.js';
import { clear, insertRows, recomputedText, type Projection } from '../workers/projector/projection.js';
import { PROJECTIONS } from '../workers/projector/projections/index.js';

export interface RebuildProgress {
  phase: string;
  rows: number;
  total?: number;
}

export interface RebuildResult {
  events: number;
  /** Dead letters (failed or parked) whose events the recomputation now covers. */
  deadLettersResolved: number;
  rows: Record<string, number>;
  seconds: number;
}

const textRow = z.record(z.string(), z.string().nullable());

/** A query's rows, 20,000 at a time, through a cursor (the connection must be inside a transaction). */
async function* chunks(conn: CommonQueryMethods, name: string, query: FragmentSqlToken): AsyncGenerator<readonly Record<string, string | null>[]> {
  const cursor = sql.identifier([name]);
  await conn.query(sql.typeAlias('void')`DECLARE ${cursor} NO SCROLL CURSOR FOR ${query}`);
  for (;;) {
    const rows = await conn.any(sql.type(textRow)`FETCH 20000 FROM ${cursor}`);
    if (rows.length === 0) break;
    yield rows;
  }
  await conn.query(sql.typeAlias('void')`CLOSE ${cursor}`);
}

/**
 * Recompute the read model from write_db while orders keep flowing, ending
 * consistent with no event applied twice:
 *  1. lock processed_events in read_db against writes: projectors wait (they
 *     insert there before touching a view), readers do not;
 *  2. only then take a REPEATABLE READ snapshot of write_db: every event a
 *     projector applied before the lock was committed before the snapshot;
 *  3. replace every projection's view with its recomputation from that
 *     snapshot, and processed_events with exactly the snapshot's outbox ids
 *     (keeping ids of events already pruned from the outbox); dead letters
 *     among those ids are resolved (the recomputation reads orders, not
 *     events: a parked event of a real order is counted from then on);
 *  4. commit: waiting projectors resume; events of the snapshot are skipped
 *     as already processed, later ones are applied as usual.
 */
export async function rebuild(
  writeUrl: string,
  readUrl: string,
  onProgress: (p: RebuildProgress) => void = () => undefined,
  projections: readonly Projection[] = PROJECTIONS,
): Promise<RebuildResult> {
  const started = performance.now();
  const log = createLogger('warn', 'rebuild');
  const writeDb = createDb(writeUrl, { name: 'rebuild', max: 1, log });
  const readDb = createDb(readUrl, { name: 'rebuild', max: 1, log });
  const rows: Record<string, number> = {};
  try {
    return await readDb.connect((read) =>
      writeDb.connect(async (write) => {
        const end = async (how: 'COMMIT' | 'ROLLBACK') => {
          await read.query(how === 'COMMIT' ? sql.typeAlias('void')`COMMIT` : sql.typeAlias('void')`ROLLBACK`);
          await write.query(how === 'COMMIT' ? sql.typeAlias('void')`COMMIT` : sql.typeAlias('void')`ROLLBACK`);
        };
        await read.query(sql.typeAlias('void')`BEGIN`);
        try {
          await read.query(sql.typeAlias('void')`LOCK TABLE processed_events IN SHARE ROW EXCLUSIVE MODE`);
          await write.query(sql.typeAlias('void')`BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`);
          const total = await write.oneFirst(sql.type(z.object({ n: z.number() }))`SELECT count(*)::int AS n FROM outbox`);

          for (const p of projections) {
            await clear(read, p);
            let n = 0;
            const names = ['key', ...p.columns.map((c) => c.name)];
            for await (const batch of chunks(write, `rebuild_${p.table}`, recomputedText(p))) {
              await insertRows(read, p, batch.map((r) => names.map((c) => r[c] ?? null)));
              n += batch.length;
              onProgress({ phase: p.table, rows: n });
            }
            rows[p.table] = n;
          }

          // Ids at or below the retention floor count as processed whatever is in the tables (db/retention.ts);
          // ids below the lowest outbox id were pruned from it after being applied: keep both, so they stay deduplicated.
          const floor = await read.oneFirst(sql.type(z.object({ floor: z.number() }))`SELECT event_id AS floor FROM processed_floor`);
          const low = await write.oneFirst(sql.type(z.object({ low: z.number().nullable() }))`SELECT min(id) AS low FROM outbox WHERE id > ${floor}`);
          if (low !== null) await read.query(sql.typeAlias('void')`DELETE FROM processed_events WHERE event_id::bigint >= ${low} AND event_id::bigint > ${floor}`);
          // Events at or below the floor are in the snapshot too (pruned because old and settled): their dead letters are resolved.
          let resolved = (await read.query(sql.typeAlias('void')`DELETE FROM dead_letters WHERE event_id::bigint <= ${floor}`)).rowCount;
          let events = 0;
          for await (const batch of chunks(write, 'rebuild_events', sql.fragment`SELECT id::text AS id FROM outbox WHERE id > ${floor} ORDER BY id`)) {
            const ids = batch.map((r) => r.id!);
            await read.query(sql.typeAlias('void')`
              INSERT INTO processed_events (event_id, processed_at) SELECT id, now() AT TIME ZONE 'UTC' FROM unnest(${sql.array(ids, 'text')}) AS id`);
            // The recomputation covers these events whatever became of them: dead letters among them are resolved.
            resolved += (await read.query(sql.typeAlias('void')`DELETE FROM dead_letters WHERE event_id = ANY (${sql.array(ids, 'text')})`)).rowCount;
            events += batch.length;
            onProgress({ phase: 'processed_events', rows: events, total });
          }
          await end('COMMIT');
          // Fresh statistics, so the planner uses the views' indexes right away (ANALYZE cannot run inside the transaction above).
          for (const p of projections) await read.query(sql.typeAlias('void')`ANALYZE ${sql.identifier([p.table])}`);
          return { events, rows, deadLettersResolved: resolved, seconds: (performance.now() - started) / 1000 };
        } catch (err) {
          await end('ROLLBACK').catch(() => undefined);
          throw err;
        }
      }),
    );
  } finally {
    await Promise.allSettled([writeDb.end(), readDb.end()]);
  }
}
