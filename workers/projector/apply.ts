import type { Pool, PoolClient } from '../../db/pool.js';
import { isDataError, isRetryable } from '../../db/pool.js';
import type { Deltas } from './deltas.js';
import { APPLIED_CHANNEL } from '../../lib/channels.js';

export interface ProjectionEvent {
  event_id: string;
  deltas: Deltas;
}

export interface ApplyResult {
  /** Event ids recorded by this call: their deltas are now in the views. */
  applied: string[];
  /** Event ids already processed (in processed_events, or at or below the retention floor): skipped. */
  duplicates: string[];
  /** Event ids an operator parked: never applied. */
  parked: string[];
}

/** What became of one event of a batch; an Error when it can never apply (its batch-mates were applied without it). */
export type Outcome = 'applied' | 'duplicate' | 'parked' | Error;

const MAX_TRIES = 5;

/**
 * Apply a batch of events exactly once, in one read_db transaction:
 *  1. record the ids in processed_events; ON CONFLICT DO NOTHING returns only
 *     the new ones. Ids at or below the retention floor count as processed
 *     and parked ids are never recorded (see recordProcessed);
 *  2. add the deltas of those new events to each view with one set-based upsert per view.
 * Rows are touched in key order and the views in a fixed order, so concurrent
 * batches wait on each other instead of deadlocking; a deadlock or
 * serialization failure anyway retries the whole transaction.
 */
export async function applyEvents(pool: Pool, events: ProjectionEvent[]): Promise<ApplyResult> {
  const byId = new Map<string, ProjectionEvent>();
  for (const e of events) if (!byId.has(e.event_id)) byId.set(e.event_id, e);
  const ids = [...byId.keys()].sort();
  for (let attempt = 1; ; attempt++) {
    const client = await pool.connect();
    let broken: Error | undefined;
    try {
      await client.query('BEGIN');
      const { applied, parked } = await recordProcessed(client, ids);
      await addDeltas(client, applied.map((id) => byId.get(id)!.deltas));
      // Wakes read-your-writes waiters in the web processes once this commits.
      if (applied.length > 0) await client.query(`SELECT pg_notify('${APPLIED_CHANNEL}', '')`);
      await client.query('COMMIT');
      const settled = new Set([...applied, ...parked]);
      return { applied, parked, duplicates: ids.filter((id) => !settled.has(id)) };
    } catch (err) {
      await client.query('ROLLBACK').catch((e: unknown) => (broken = e as Error));
      if (attempt >= MAX_TRIES || !isRetryable(err)) throw err;
    } finally {
      client.release(broken);
    }
  }
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
export async function applyIsolating(pool: Pool, events: ProjectionEvent[]): Promise<Outcome[]> {
  try {
    const { applied, parked } = await applyEvents(pool, events);
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
    return [...(await applyIsolating(pool, events.slice(0, mid))), ...(await applyIsolating(pool, events.slice(mid)))];
  }
}

/**
 * Insert the batch's ids into processed_events and return those inserted
 * (applied) and those parked. An id at or below processed_floor is left out:
 * its row may have been pruned, and it must still count as processed. A
 * parked id is left out: an operator decided it is never applied. Both are
 * read by this statement's snapshot, taken after it has its lock on
 * processed_events, and prune and park change them under a SHARE ROW
 * EXCLUSIVE lock on that table: a batch running alongside either sees the
 * floor or the parked row as committed, or holds them off until it commits.
 * A failed dead letter of an event that is applied now (replayed after a fix)
 * or was already is resolved in the same statement.
 */
async function recordProcessed(client: PoolClient, sortedIds: string[]): Promise<{ applied: string[]; parked: string[] }> {
  const { rows } = await client.query<{ event_id: string; parked: boolean }>(
    `WITH batch AS (
       SELECT id FROM unnest($1::text[]) AS id
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
       -- A dead letter of an event that is applied now, or was already (a duplicate), is resolved.
       DELETE FROM dead_letters d
        WHERE d.parked_at IS NULL AND d.event_id IN (SELECT id FROM batch)
          AND (d.event_id IN (SELECT event_id FROM inserted) OR EXISTS (SELECT 1 FROM processed_events p WHERE p.event_id = d.event_id))
     )
     SELECT event_id, false AS parked FROM inserted
     UNION ALL
     SELECT event_id, true FROM parked`,
    [sortedIds],
  );
  return { applied: rows.filter((r) => !r.parked).map((r) => r.event_id), parked: rows.filter((r) => r.parked).map((r) => r.event_id) };
}

/** Add the deltas of freshly recorded events to the four views. */
export async function addDeltas(client: PoolClient, all: Deltas[]): Promise<void> {
  const products = all.flatMap((d) => d.products);
  const categories = all.flatMap((d) => d.categories);
  const customers = all.flatMap((d) => d.customers);
  const hours = all.flatMap((d) => d.hours);
  if (products.length > 0) {
    await client.query(
      `INSERT INTO product_sales_view AS v (product_id, total_quantity_sold, total_revenue, order_count)
       SELECT product_id, sum(quantity), sum(revenue), sum(orders)
         FROM unnest($1::int[], $2::int[], $3::numeric[], $4::int[]) AS d (product_id, quantity, revenue, orders)
        GROUP BY product_id ORDER BY product_id
       ON CONFLICT (product_id) DO UPDATE SET
         total_quantity_sold = v.total_quantity_sold + EXCLUDED.total_quantity_sold,
         total_revenue = v.total_revenue + EXCLUDED.total_revenue,
         order_count = v.order_count + EXCLUDED.order_count`,
      [products.map((p) => p.product_id), products.map((p) => p.quantity), products.map((p) => p.revenue), products.map((p) => p.orders)],
    );
  }
  if (categories.length > 0) {
    await client.query(
      `INSERT INTO category_metrics_view AS v (category_name, total_revenue, total_orders)
       SELECT category, sum(revenue), sum(orders)
         FROM unnest($1::text[], $2::numeric[], $3::int[]) AS d (category, revenue, orders)
        GROUP BY category ORDER BY category
       ON CONFLICT (category_name) DO UPDATE SET
         total_revenue = v.total_revenue + EXCLUDED.total_revenue,
         total_orders = v.total_orders + EXCLUDED.total_orders`,
      [categories.map((c) => c.category), categories.map((c) => c.revenue), categories.map((c) => c.orders)],
    );
  }
  if (customers.length > 0) {
    await client.query(
      `INSERT INTO customer_ltv_view AS v (customer_id, total_spent, order_count, last_order_date)
       SELECT customer_id, sum(spent), sum(orders), max(last_order_date)
         FROM unnest($1::int[], $2::numeric[], $3::int[], $4::timestamp[]) AS d (customer_id, spent, orders, last_order_date)
        GROUP BY customer_id ORDER BY customer_id
       ON CONFLICT (customer_id) DO UPDATE SET
         total_spent = v.total_spent + EXCLUDED.total_spent,
         order_count = v.order_count + EXCLUDED.order_count,
         last_order_date = GREATEST(v.last_order_date, EXCLUDED.last_order_date)`,
      [customers.map((c) => c.customer_id), customers.map((c) => c.spent), customers.map((c) => c.orders), customers.map((c) => c.last_order_date)],
    );
  }
  if (hours.length > 0) {
    await client.query(
      `INSERT INTO hourly_sales_view AS v (hour_timestamp, total_orders, total_revenue)
       SELECT hour, sum(orders), sum(revenue)
         FROM unnest($1::timestamp[], $2::int[], $3::numeric[]) AS d (hour, orders, revenue)
        GROUP BY hour ORDER BY hour
       ON CONFLICT (hour_timestamp) DO UPDATE SET
         total_orders = v.total_orders + EXCLUDED.total_orders,
         total_revenue = v.total_revenue + EXCLUDED.total_revenue`,
      [hours.map((h) => h.hour), hours.map((h) => h.orders), hours.map((h) => h.revenue)],
    );
  }
}
