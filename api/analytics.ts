import { ApiError } from './errors.js';
import { sendJson } from './http.js';
import type { Ctx, Route } from './router.js';
import { parseId, parseInstant, parseLimit } from './validate.js';
import { CONSISTENCY_HEADER } from './orders.js';
import { lastOutboxId, outboxBacklog } from '../db/outbox.js';
import { productSalesOf, topProducts, withNames } from '../workers/projector/projections/product-sales.js';
import { categoryList } from '../workers/projector/projections/category-metrics.js';
import { customerLtvOf, topCustomers } from '../workers/projector/projections/customer-ltv.js';
import { hoursBetween } from '../workers/projector/projections/hourly-sales.js';

/** Analytics over read_db only; each view's queries live in its projection module (workers/projector/projections/). */

/** Read-your-writes: with X-Consistency-Token, wait (bounded) until that write and every earlier one are applied (see ConsistencyWaiter). */
async function consistent(ctx: Ctx): Promise<void> {
  const raw = ctx.req.headers[CONSISTENCY_HEADER.toLowerCase()];
  if (raw === undefined) return;
  // Tokens are outbox ids, which are INTEGER: anything else was never issued.
  const token = typeof raw === 'string' && /^[1-9]\d{0,9}$/.test(raw) ? Number(raw) : NaN;
  // A token beyond every id handed out was never issued: refused now, not waited for.
  if (!(token <= 2_147_483_647) || token > (await lastOutboxId(ctx.deps.writeDb))) {
    throw new ApiError('validation_failed', `${CONSISTENCY_HEADER} must be the token a write returned`, { field: CONSISTENCY_HEADER });
  }
  const waitMs = ctx.deps.config.CONSISTENCY_WAIT_MS;
  if (await ctx.deps.consistency.wait(token, waitMs)) return;
  const backlog = await outboxBacklog(ctx.deps.writeDb);
  throw new ApiError('consistency_timeout', `Event ${raw} was not in the read model after ${waitMs} ms`, {
    waited_ms: waitMs,
    outbox_backlog: backlog.unpublished,
    oldest_unpublished_age_seconds: backlog.oldestAgeSeconds,
  });
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
      sendJson(ctx.res, 200, { by, items: await withNames(ctx.deps.writeDb, await topProducts(ctx.deps.readDb, by, limit)) });
    },
  },
  {
    method: 'GET',
    path: '/analytics/products/:id',
    async handler(ctx) {
      const id = parseId(ctx.params[0], 'id');
      await consistent(ctx);
      sendJson(ctx.res, 200, (await withNames(ctx.deps.writeDb, [await productSalesOf(ctx.deps.readDb, id)]))[0]);
    },
  },
  {
    method: 'GET',
    path: '/analytics/categories',
    async handler(ctx) {
      await consistent(ctx);
      sendJson(ctx.res, 200, { items: await categoryList(ctx.deps.readDb) });
    },
  },
  {
    method: 'GET',
    path: '/analytics/customers/top',
    async handler(ctx) {
      const limit = parseLimit(ctx.url.searchParams.get('limit'), 'limit', 10, 100);
      await consistent(ctx);
      sendJson(ctx.res, 200, { items: await topCustomers(ctx.deps.readDb, limit) });
    },
  },
  {
    method: 'GET',
    path: '/analytics/customers/:id',
    async handler(ctx) {
      const id = parseId(ctx.params[0], 'id');
      await consistent(ctx);
      sendJson(ctx.res, 200, await customerLtvOf(ctx.deps.readDb, id));
    },
  },
  {
    method: 'GET',
    path: '/analytics/hourly',
    async handler(ctx) {
      const from = parseInstant(ctx.url.searchParams.get('from'), 'from');
      const to = parseInstant(ctx.url.searchParams.get('to'), 'to');
      if (from && to && from > to) throw new ApiError('validation_failed', 'from must not be after to', { field: 'from' });
      await consistent(ctx);
      sendJson(ctx.res, 200, { from, to, items: await hoursBetween(ctx.deps.readDb, from, to) });
    },
  },
];
