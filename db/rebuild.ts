import pg from 'pg';
import { EXPECTED_SQL, VIEW_NAMES, type ViewName } from './recompute.js';

const CHUNK = 20_000;

/** How each view's recomputed rows are written: column list and array types for unnest. */
const TARGET: Record<ViewName, { columns: string; types: string[] }> = {
  product_sales_view: { columns: 'product_id, total_quantity_sold, total_revenue, order_count', types: ['int', 'int', 'numeric', 'int'] },
  category_metrics_view: { columns: 'category_name, total_revenue, total_orders', types: ['text', 'numeric', 'int'] },
  customer_ltv_view: { columns: 'customer_id, total_spent, order_count, last_order_date', types: ['int', 'numeric', 'int', 'timestamp'] },
  hourly_sales_view: { columns: 'hour_timestamp, total_orders, total_revenue', types: ['timestamp', 'int', 'numeric'] },
};

export interface RebuildProgress {
  phase: ViewName | 'processed_events';
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

async function* chunks(client: pg.Client, name: string, sql: string): AsyncGenerator<Record<string, string | null>[]> {
  await client.query(`DECLARE ${name} NO SCROLL CURSOR FOR ${sql}`);
  for (;;) {
    const { rows } = await client.query<Record<string, string | null>>(`FETCH ${CHUNK} FROM ${name}`);
    if (rows.length === 0) break;
    yield rows;
  }
  await client.query(`CLOSE ${name}`);
}

/**
 * Recompute the read model from write_db while orders keep flowing, ending
 * consistent with no event applied twice:
 *  1. lock processed_events in read_db against writes: projectors wait (they
 *     insert there before touching a view), readers do not;
 *  2. only then take a REPEATABLE READ snapshot of write_db: every event a
 *     projector applied before the lock was committed before the snapshot;
 *  3. replace every view with the recomputation from that snapshot, and
 *     processed_events with exactly the snapshot's outbox ids (keeping ids
 *     of events already pruned from the outbox); dead letters among those
 *     ids are resolved (the recomputation reads orders, not events: a
 *     parked event of a real order is counted from then on);
 *  4. commit: waiting projectors resume; events of the snapshot are skipped
 *     as already processed, later ones are applied as usual.
 */
export async function rebuild(writeUrl: string, readUrl: string, onProgress: (p: RebuildProgress) => void = () => undefined): Promise<RebuildResult> {
  const started = performance.now();
  const write = new pg.Client({ connectionString: writeUrl, options: '-c TimeZone=UTC', application_name: 'rebuild' });
  const read = new pg.Client({ connectionString: readUrl, options: '-c TimeZone=UTC', application_name: 'rebuild' });
  await write.connect();
  await read.connect();
  const rows: Record<string, number> = {};
  try {
    await read.query('BEGIN');
    await read.query('LOCK TABLE processed_events IN SHARE ROW EXCLUSIVE MODE');
    await write.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    const { rows: count } = await write.query<{ n: string }>('SELECT count(*)::text AS n FROM outbox');
    const total = Number(count[0]!.n);

    for (const view of VIEW_NAMES) {
      const { columns, types } = TARGET[view];
      await read.query(`DELETE FROM ${view}`);
      rows[view] = 0;
      const names = columns.split(', ');
      const inner = EXPECTED_SQL[view];
      const select = `SELECT key::text AS ${names[0]}, ${names.slice(1).map((n) => `${n}::text`).join(', ')} FROM (${inner}) t`;
      for await (const batch of chunks(write, `rebuild_${view}`, select)) {
        const arrays = names.map((n) => batch.map((r) => r[n] ?? null));
        const params = types.map((t, i) => `$${i + 1}::${t}[]`).join(', ');
        await read.query(`INSERT INTO ${view} (${columns}) SELECT * FROM unnest(${params})`, arrays);
        rows[view] += batch.length;
        onProgress({ phase: view, rows: rows[view] });
      }
    }

    // Ids at or below the retention floor count as processed whatever is in the tables (db/retention.ts);
    // ids below the lowest outbox id were pruned from it after being applied: keep both, so they stay deduplicated.
    const { rows: f } = await read.query<{ floor: string }>('SELECT event_id::text AS floor FROM processed_floor');
    const floor = f[0]!.floor;
    const { rows: low } = await write.query<{ min: string | null }>('SELECT min(id)::text AS min FROM outbox WHERE id > $1', [floor]);
    await read.query(`DELETE FROM processed_events WHERE event_id::bigint >= $1::bigint AND event_id::bigint > $2::bigint`, [low[0]!.min, floor]);
    let events = 0;
    // Events at or below the floor are in the snapshot too (pruned because old and settled): their dead letters are resolved.
    let resolved = (await read.query('DELETE FROM dead_letters WHERE event_id::bigint <= $1::bigint', [floor])).rowCount ?? 0;
    for await (const batch of chunks(write, 'rebuild_events', `SELECT id::text AS id FROM outbox WHERE id > ${Number(floor)} ORDER BY id`)) {
      const ids = batch.map((r) => r.id);
      await read.query(`INSERT INTO processed_events (event_id, processed_at) SELECT id, now() AT TIME ZONE 'UTC' FROM unnest($1::text[]) AS id`, [ids]);
      // The recomputation covers these events whatever became of them: dead letters among them are resolved.
      const { rowCount } = await read.query('DELETE FROM dead_letters WHERE event_id = ANY ($1::text[])', [ids]);
      resolved += rowCount ?? 0;
      events += batch.length;
      onProgress({ phase: 'processed_events', rows: events, total });
    }
    await read.query('COMMIT');
    await write.query('COMMIT');
    // Fresh statistics, so the planner uses the views' indexes right away (ANALYZE cannot run inside the transaction above).
    await read.query(`ANALYZE ${VIEW_NAMES.join(', ')}`);
    return { events, rows, deadLettersResolved: resolved, seconds: (performance.now() - started) / 1000 };
  } catch (err) {
    await read.query('ROLLBACK').catch(() => undefined);
    await write.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    await write.end();
    await read.end();
  }
}
