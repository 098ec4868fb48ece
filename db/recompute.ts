/** A pool or a client inside a transaction: anything that runs a query. */
export interface Queryable {
  query: Pool['query'];
}
import type { Pool } from './pool.js';

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

async function load(pool: Queryable, view: ViewName, inner: string): Promise<ViewRows> {
  const { rows } = await pool.query<Record<string, string | null>>(canonical(view, inner));
  const out: ViewRows = new Map();
  for (const r of rows) {
    const values = COLUMNS[view].map((c) => r[c] ?? 'null');
    // SPEC §3: a missing row counts as all zeros, so all-zero rows are left out on both sides.
    if (values.every((v) => v === '0' || v === 'null')) continue;
    out.set(r.key!, values);
  }
  return out;
}

export const expectedView = (write: Queryable, view: ViewName) => load(write, view, EXPECTED_SQL[view]);
export const actualView = (read: Queryable, view: ViewName) => load(read, view, ACTUAL_SQL[view]);

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

/** Every view compared with its recomputation. Empty means the read model is exactly right. */
export async function compareViews(write: Queryable, read: Queryable): Promise<Difference[]> {
  // One view at a time: `write` and `read` may be single clients inside a snapshot transaction.
  const diffs: Difference[] = [];
  for (const v of VIEW_NAMES) diffs.push(...diffRows(v, await expectedView(write, v), await actualView(read, v)));
  return diffs;
}

/**
 * Outbox ids with no processed_events row, and processed ids with no outbox
 * row. Ids below the lowest outbox id still present are taken as pruned from
 * the outbox (see docs/operations.md, Retention) and not reported.
 */
export async function compareEventIds(write: Queryable, read: Queryable): Promise<{ unprocessed: number[]; unknown: string[] }> {
  const { rows: outbox } = await write.query<{ id: number }>('SELECT id FROM outbox ORDER BY id');
  const { rows: processed } = await read.query<{ event_id: string }>('SELECT event_id FROM processed_events');
  const ids = new Set(outbox.map((r) => String(r.id)));
  const done = new Set(processed.map((r) => r.event_id));
  const lowest = outbox[0]?.id ?? Infinity;
  return {
    unprocessed: outbox.filter((r) => !done.has(String(r.id))).map((r) => r.id),
    unknown: [...done].filter((id) => !ids.has(id) && !(Number(id) < lowest)),
  };
}
