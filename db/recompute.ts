/** A pool or a client inside a transaction: anything that runs a query. */
export interface Queryable {
  query: Pool['query'];
}
import type { Pool } from './pool.js';
import { deltasFor, type Deltas } from '../workers/projector/deltas.js';

/**
 * SPEC §3 in SQL: what each read-model view must hold, computed from
 * write_db alone. Categories come from order_item_categories (the category at
 * the time of sale), never from products.category.
 */
export const EXPECTED_SQL = {
  product_sales_view: `
    SELECT i.product_id AS key, sum(i.quantity) AS total_quantity_sold,
           sum(i.quantity * i.price) AS total_revenue, count(DISTINCT i.order_id) AS order_count
      FROM order_items i JOIN orders o ON o.id = i.order_id
     WHERE o.status <> 'cancelled' GROUP BY i.product_id`,
  category_metrics_view: `
    SELECT c.category AS key, sum(i.quantity * i.price) AS total_revenue, count(DISTINCT i.order_id) AS total_orders
      FROM order_items i JOIN orders o ON o.id = i.order_id JOIN order_item_categories c ON c.order_item_id = i.id
     WHERE o.status <> 'cancelled' GROUP BY c.category`,
  customer_ltv_view: `
    SELECT customer_id AS key,
           coalesce(sum(total) FILTER (WHERE status <> 'cancelled'), 0) AS total_spent,
           count(*) FILTER (WHERE status <> 'cancelled') AS order_count,
           max(created_at) AS last_order_date
      FROM orders GROUP BY customer_id`,
  hourly_sales_view: `
    SELECT date_trunc('hour', created_at) AS key, count(*) AS total_orders, sum(total) AS total_revenue
      FROM orders WHERE status <> 'cancelled' GROUP BY 1`,
} as const;

export type ViewName = keyof typeof EXPECTED_SQL;
export const VIEW_NAMES = Object.keys(EXPECTED_SQL) as ViewName[];

const ACTUAL_SQL: Record<ViewName, string> = {
  product_sales_view: 'SELECT product_id AS key, total_quantity_sold, total_revenue, order_count FROM product_sales_view',
  category_metrics_view: 'SELECT category_name AS key, total_revenue, total_orders FROM category_metrics_view',
  customer_ltv_view: 'SELECT customer_id AS key, total_spent, order_count, last_order_date FROM customer_ltv_view',
  hourly_sales_view: 'SELECT hour_timestamp AS key, total_orders, total_revenue FROM hourly_sales_view',
};

/** Value columns of each view, in order. */
export const COLUMNS: Record<ViewName, string[]> = {
  product_sales_view: ['total_quantity_sold', 'total_revenue', 'order_count'],
  category_metrics_view: ['total_revenue', 'total_orders'],
  customer_ltv_view: ['total_spent', 'order_count', 'last_order_date'],
  hourly_sales_view: ['total_orders', 'total_revenue'],
};

/** key → values as canonical text (trailing zeros of NUMERIC trimmed, so 1.50 = 1.5 and 0.00 = 0). */
export type ViewRows = Map<string, string[]>;

function canonical(view: ViewName, inner: string): string {
  const cols = COLUMNS[view]
    .map((c) => (c === 'last_order_date' ? `to_char(${c}, 'YYYY-MM-DD"T"HH24:MI:SS.US') AS ${c}` : `trim_scale(${c}::numeric)::text AS ${c}`))
    .join(', ');
  const key = view === 'hourly_sales_view' ? `to_char(key, 'YYYY-MM-DD"T"HH24:MI:SS')` : 'key::text';
  return `SELECT ${key} AS key, ${cols} FROM (${inner}) t`;
}

async function load(pool: Queryable, view: ViewName, inner: string, params: unknown[] = []): Promise<ViewRows> {
  const { rows } = await pool.query<Record<string, string | null>>(canonical(view, inner), params);
  const out: ViewRows = new Map();
  for (const r of rows) {
    const values = COLUMNS[view].map((c) => r[c] ?? 'null');
    // SPEC §3: a missing row counts as all zeros, so all-zero rows are left out on both sides.
    if (values.every((v) => v === '0' || v === 'null')) continue;
    out.set(r.key!, values);
  }
  return out;
}

/** Delta rows of events, shaped as the view's rows (for adding events that are not applied to what is). */
const DELTA_ROWS: Record<ViewName, { sql: string; params: (all: Deltas[]) => unknown[] }> = {
  product_sales_view: {
    sql: 'SELECT product_id, quantity, revenue, orders FROM unnest($1::int[], $2::int[], $3::numeric[], $4::int[]) AS d (product_id, quantity, revenue, orders)',
    params: (all) => {
      const p = all.flatMap((d) => d.products);
      return [p.map((x) => x.product_id), p.map((x) => x.quantity), p.map((x) => x.revenue), p.map((x) => x.orders)];
    },
  },
  category_metrics_view: {
    sql: 'SELECT category, revenue, orders FROM unnest($1::text[], $2::numeric[], $3::int[]) AS d (category, revenue, orders)',
    params: (all) => {
      const c = all.flatMap((d) => d.categories);
      return [c.map((x) => x.category), c.map((x) => x.revenue), c.map((x) => x.orders)];
    },
  },
  customer_ltv_view: {
    sql: 'SELECT customer_id, spent, orders, last_order_date FROM unnest($1::int[], $2::numeric[], $3::int[], $4::timestamp[]) AS d (customer_id, spent, orders, last_order_date)',
    params: (all) => {
      const c = all.flatMap((d) => d.customers);
      return [c.map((x) => x.customer_id), c.map((x) => x.spent), c.map((x) => x.orders), c.map((x) => x.last_order_date)];
    },
  },
  hourly_sales_view: {
    sql: 'SELECT hour, orders, revenue FROM unnest($1::timestamp[], $2::int[], $3::numeric[]) AS d (hour, orders, revenue)',
    params: (all) => {
      const h = all.flatMap((d) => d.hours);
      return [h.map((x) => x.hour), h.map((x) => x.orders), h.map((x) => x.revenue)];
    },
  },
};

export const expectedView = (write: Queryable, view: ViewName) => load(write, view, EXPECTED_SQL[view]);

/**
 * The view as it is, or, given the deltas of events that are not applied
 * (parked ones), as it would be with them: what verify compares with the
 * recomputation, so that an operator's decision is not reported as an error.
 */
export function actualView(read: Queryable, view: ViewName, plus: Deltas[] = []): Promise<ViewRows> {
  if (plus.length === 0) return load(read, view, ACTUAL_SQL[view]);
  const cols = COLUMNS[view].map((c) => (c === 'last_order_date' ? `max(${c}) AS ${c}` : `sum(${c}) AS ${c}`)).join(', ');
  return load(read, view, `SELECT key, ${cols} FROM (${ACTUAL_SQL[view]} UNION ALL ${DELTA_ROWS[view].sql}) u GROUP BY key`, DELTA_ROWS[view].params(plus));
}

export interface Difference {
  view: ViewName;
  key: string;
  column: string;
  expected: string;
  actual: string;
}

export function diffRows(view: ViewName, expected: ViewRows, actual: ViewRows): Difference[] {
  const out: Difference[] = [];
  const keys = new Set([...expected.keys(), ...actual.keys()]);
  for (const key of [...keys].sort()) {
    const e = expected.get(key);
    const a = actual.get(key);
    COLUMNS[view].forEach((column, i) => {
      const ev = e?.[i] ?? '0';
      const av = a?.[i] ?? '0';
      if (ev !== av) out.push({ view, key, column, expected: e ? ev : '(no row)', actual: a ? av : '(no row)' });
    });
  }
  return out;
}

/**
 * Every view compared with its recomputation. Empty means the read model is
 * exactly right. `plus`: deltas of parked events, counted as if applied.
 */
export async function compareViews(write: Queryable, read: Queryable, plus: Deltas[] = []): Promise<Difference[]> {
  // One view at a time: `write` and `read` may be single clients inside a snapshot transaction.
  const diffs: Difference[] = [];
  for (const v of VIEW_NAMES) diffs.push(...diffRows(v, await expectedView(write, v), await actualView(read, v, plus)));
  return diffs;
}

export interface EventIdComparison {
  /** Outbox ids with no processed_events row that are not dead letters: not yet applied. */
  unprocessed: number[];
  /** Processed ids with no outbox row above the retention floor: should never happen. */
  unknown: string[];
  /** Dead letters waiting for a decision (replay or park). */
  failed: number[];
  /** Dead letters an operator parked, with what they would have added to the views. */
  parked: { id: number; deltas: Deltas | undefined }[];
}

/**
 * Which events are applied, by id. Ids at or below the retention floor
 * (processed_floor, see db/retention.ts) count as processed and may be gone
 * from both tables, as may ids below the lowest outbox id still present.
 */
export async function compareEventIds(write: Queryable, read: Queryable): Promise<EventIdComparison> {
  const { rows: f } = await read.query<{ floor: string }>('SELECT event_id::text AS floor FROM processed_floor');
  const floor = Number(f[0]?.floor ?? 0);
  const { rows: outbox } = await write.query<{ id: number }>('SELECT id FROM outbox WHERE id > $1 ORDER BY id', [floor]);
  const { rows: processed } = await read.query<{ event_id: string }>('SELECT event_id FROM processed_events');
  const { rows: dead } = await read.query<{ event_id: string; topic: string; payload: unknown; parked: boolean }>(
    'SELECT event_id, topic, payload, parked_at IS NOT NULL AS parked FROM dead_letters ORDER BY event_id::bigint',
  );
  const ids = new Set(outbox.map((r) => String(r.id)));
  const done = new Set(processed.map((r) => r.event_id));
  const letters = new Set(dead.map((d) => d.event_id));
  const lowest = outbox[0]?.id ?? Infinity;
  const parked = dead.filter((d) => d.parked);
  const real = await realEvents(write, parked, done);
  return {
    unprocessed: outbox.filter((r) => !done.has(String(r.id)) && !letters.has(String(r.id))).map((r) => r.id),
    unknown: [...done].filter((id) => !ids.has(id) && Number(id) > floor && !(Number(id) < lowest)),
    failed: dead.filter((d) => !d.parked).map((d) => Number(d.event_id)),
    parked: parked.map((d) => ({ id: Number(d.event_id), deltas: real.has(d.event_id) ? deltasOrUndefined(d.topic, d.payload) : undefined })),
  };
}

/**
 * Of these (parked) events, those whose effect the recomputation counts: the
 * order they carry exists (and, for a cancellation, is cancelled), and no
 * other event of the same topic for that order is applied. Only those would
 * have changed the views had they been applied; an event written by hand or
 * by a bug (no order behind it, or a second copy of an order's event) changes
 * no recomputation.
 */
async function realEvents(write: Queryable, events: { event_id: string; topic: string; payload: unknown }[], applied: Set<string>): Promise<Set<string>> {
  const orderId = (p: unknown) => (typeof p === 'object' && p !== null && Number.isInteger((p as { id?: unknown }).id) ? ((p as { id: number }).id) : undefined);
  const wanted = events.map((e) => orderId(e.payload)).filter((id): id is number => id !== undefined && id > 0 && id <= 2_147_483_647);
  if (wanted.length === 0) return new Set();
  const { rows } = await write.query<{ id: number; status: string }>('SELECT id, status FROM orders WHERE id = ANY ($1::int[])', [wanted]);
  const status = new Map(rows.map((r) => [r.id, r.status]));
  // Other events of the same orders (one scan of the outbox; verify runs rarely and parked events are few).
  const { rows: twins } = await write.query<{ id: number; topic: string; order_id: number }>(
    `SELECT id, topic, (payload->>'id')::int AS order_id FROM outbox
      WHERE CASE WHEN jsonb_typeof(payload->'id') = 'number' THEN (payload->>'id')::numeric END = ANY ($1::numeric[])`,
    [wanted],
  );
  return new Set(
    events
      .filter((e) => {
        const order = orderId(e.payload) ?? 0;
        const s = status.get(order);
        if (s === undefined || (e.topic === 'order.cancelled' && s !== 'cancelled')) return false;
        return !twins.some((t) => t.order_id === order && t.topic === e.topic && String(t.id) !== e.event_id && applied.has(String(t.id)));
      })
      .map((e) => e.event_id),
  );
}

function deltasOrUndefined(topic: string, payload: unknown): Deltas | undefined {
  try {
    return deltasFor(topic, payload);
  } catch {
    return undefined; // malformed: it adds nothing anyone could compute
  }
}
