import { ApiError } from './errors.js';
import { sendJson } from './http.js';
import type { Ctx, Route } from './router.js';
import { parseId, parseLimit } from './validate.js';
import { CONSISTENCY_HEADER } from './orders.js';
import { outboxBacklog } from '../db/outbox.js';

/**
 * Analytics over read_db only. Money leaves as two-decimal text; a key with
 * no row reads as zeros (SPEC §3: a missing row counts as all zeros).
 */

/**
 * Money as text. The views are aliased `v` and sorts name `v.<column>`:
 * an unqualified ORDER BY total_revenue would sort by this text output
 * column ("9.00" above "10.00") instead of the NUMERIC.
 */
const MONEY = (col: string) => `round(v.${col}, 2)::text`;

/** Read-your-writes: with X-Consistency-Token, wait (bounded) until that event is applied. */
async function consistent(ctx: Ctx): Promise<void> {
  const raw = ctx.req.headers[CONSISTENCY_HEADER.toLowerCase()];
  if (raw === undefined) return;
  if (typeof raw !== 'string' || !/^[1-9]\d{0,18}$/.test(raw)) {
    throw new ApiError('validation_failed', `${CONSISTENCY_HEADER} must be the token a write returned`, { field: CONSISTENCY_HEADER });
  }
  const waitMs = ctx.deps.config.CONSISTENCY_WAIT_MS;
  if (await ctx.deps.consistency.wait(raw, waitMs)) return;
  const backlog = await outboxBacklog(ctx.deps.writePool);
  throw new ApiError('consistency_timeout', `Event ${raw} was not in the read model after ${waitMs} ms`, {
    waited_ms: waitMs,
    outbox_backlog: backlog.unpublished,
    oldest_unpublished_age_seconds: backlog.oldestAgeSeconds,
  });
}

function parseTime(value: string | null, field: string): string | null {
  if (value === null) return null;
  // ISO-8601 with a date, optional time and zone; interpreted in UTC when no zone is given.
  const m = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?)?$/.exec(value);
  const ms = m ? Date.parse(/T.*(Z|[+-]\d{2}:\d{2})$/.test(value) || !value.includes('T') ? value : `${value}Z`) : NaN;
  if (!Number.isFinite(ms)) throw new ApiError('validation_failed', `${field} must be an ISO-8601 date or time, e.g. 2026-11-25T08:00:00Z`, { field });
  return new Date(ms).toISOString();
}

export const analyticsRoutes: Route[] = [
  {
    method: 'GET',
    path: '/analytics/products/top',
    async handler(ctx) {
      const by = ctx.url.searchParams.get('by') ?? 'revenue';
      if (by !== 'revenue' && by !== 'quantity') throw new ApiError('validation_failed', 'by must be revenue or quantity', { field: 'by' });
      const limit = parseLimit(ctx.url.searchParams.get('limit'), 'limit', 10, 100);
      await consistent(ctx);
      const order = by === 'revenue' ? 'v.total_revenue DESC, v.product_id' : 'v.total_quantity_sold DESC, v.product_id';
      const { rows } = await ctx.deps.readPool.query(
        `SELECT product_id, total_quantity_sold, ${MONEY('total_revenue')} AS total_revenue, order_count
           FROM product_sales_view v WHERE v.order_count > 0 ORDER BY ${order} LIMIT $1`,
        [limit],
      );
      sendJson(ctx.res, 200, { by, items: rows });
    },
  },
  {
    method: 'GET',
    path: '/analytics/products/:id',
    async handler(ctx) {
      const id = parseId(ctx.params[0], 'id');
      await consistent(ctx);
      const { rows } = await ctx.deps.readPool.query(
        `SELECT product_id, total_quantity_sold, ${MONEY('total_revenue')} AS total_revenue, order_count
           FROM product_sales_view v WHERE v.product_id = $1`,
        [id],
      );
      sendJson(ctx.res, 200, rows[0] ?? { product_id: id, total_quantity_sold: 0, total_revenue: '0.00', order_count: 0 });
    },
  },
  {
    method: 'GET',
    path: '/analytics/categories',
    async handler(ctx) {
      await consistent(ctx);
      const { rows } = await ctx.deps.readPool.query(
        `SELECT category_name, ${MONEY('total_revenue')} AS total_revenue, total_orders
           FROM category_metrics_view v WHERE v.total_orders <> 0 OR v.total_revenue <> 0
          ORDER BY v.total_revenue DESC, v.category_name`,
      );
      sendJson(ctx.res, 200, { items: rows });
    },
  },
  {
    method: 'GET',
    path: '/analytics/customers/top',
    async handler(ctx) {
      const limit = parseLimit(ctx.url.searchParams.get('limit'), 'limit', 10, 100);
      await consistent(ctx);
      const { rows } = await ctx.deps.readPool.query(
        `SELECT customer_id, ${MONEY('total_spent')} AS total_spent, order_count, last_order_date
           FROM customer_ltv_view v WHERE v.order_count > 0 ORDER BY v.total_spent DESC, v.customer_id LIMIT $1`,
        [limit],
      );
      sendJson(ctx.res, 200, { items: rows });
    },
  },
  {
    method: 'GET',
    path: '/analytics/customers/:id',
    async handler(ctx) {
      const id = parseId(ctx.params[0], 'id');
      await consistent(ctx);
      const { rows } = await ctx.deps.readPool.query(
        `SELECT customer_id, ${MONEY('total_spent')} AS total_spent, order_count, last_order_date
           FROM customer_ltv_view v WHERE v.customer_id = $1`,
        [id],
      );
      sendJson(ctx.res, 200, rows[0] ?? { customer_id: id, total_spent: '0.00', order_count: 0, last_order_date: null });
    },
  },
  {
    method: 'GET',
    path: '/analytics/hourly',
    async handler(ctx) {
      const from = parseTime(ctx.url.searchParams.get('from'), 'from');
      const to = parseTime(ctx.url.searchParams.get('to'), 'to');
      if (from && to && from > to) throw new ApiError('validation_failed', 'from must not be after to', { field: 'from' });
      await consistent(ctx);
      const { rows } = await ctx.deps.readPool.query(
        `SELECT hour_timestamp, total_orders, ${MONEY('total_revenue')} AS total_revenue
           FROM hourly_sales_view v
          WHERE ($1::timestamptz IS NULL OR hour_timestamp >= ($1::timestamptz AT TIME ZONE 'UTC'))
            AND ($2::timestamptz IS NULL OR hour_timestamp <= ($2::timestamptz AT TIME ZONE 'UTC'))
            AND (total_orders <> 0 OR total_revenue <> 0)
          ORDER BY hour_timestamp`,
        [from, to],
      );
      sendJson(ctx.res, 200, { from, to, items: rows });
    },
  },
];
