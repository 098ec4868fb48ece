import { createHash } from 'node:crypto';
import { ApiError, fromDatabaseError } from './errors.js';
import { readJson, sendJson } from './http.js';
import type { Ctx, Route } from './router.js';
import { createOrderBody, decodeCursor, encodeCursor, parseBody, parseId, parseLimit } from './validate.js';
import { getOrder, listOrders, placeOrder, transitionOrder, type OrderChange, type Transition } from '../db/orders.js';

/** Header carrying the event id of a change; analytics requests may send it back to read their writes. */
export const CONSISTENCY_HEADER = 'X-Consistency-Token';

const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,255}$/;

function idempotencyKey(ctx: Ctx): string | undefined {
  const raw = ctx.req.headers['idempotency-key'];
  if (raw === undefined) return undefined;
  if (typeof raw !== 'string' || !IDEMPOTENCY_KEY.test(raw)) {
    throw new ApiError('validation_failed', 'Idempotency-Key must be 1 to 255 visible ASCII characters', {
      field: 'Idempotency-Key',
    });
  }
  return raw;
}

/** A refusal stored under an Idempotency-Key and replayed: the same problem, marked as a replay. */
function replayedRefusal(err: unknown): ApiError | undefined {
  if (!(err as { replayed?: boolean }).replayed) return undefined;
  const problem = fromDatabaseError(err);
  return problem && new ApiError(problem.code, problem.detail, problem.extra, { 'Idempotent-Replayed': 'true' });
}

function sendChange(ctx: Ctx, status: number, change: OrderChange): void {
  const headers: Record<string, string> = { [CONSISTENCY_HEADER]: String(change.event_id) };
  if (status === 201) headers.Location = `/orders/${change.order.id}`;
  if (change.replayed) headers['Idempotent-Replayed'] = 'true';
  ctx.deps.metrics.ordersChanged.inc({ event: status === 201 ? 'created' : change.order.status, replayed: String(!!change.replayed) });
  sendJson(ctx.res, status, change.order, headers);
}

function transition(to: Transition, verb: string): Route {
  return {
    method: 'POST',
    path: `/orders/:id/${verb}`,
    async handler(ctx) {
      const change = await transitionOrder(ctx.deps.writeDb, parseId(ctx.params[0], 'id'), to);
      sendChange(ctx, 200, change);
    },
  };
}

export const orderRoutes: Route[] = [
  {
    method: 'POST',
    path: '/orders',
    async handler(ctx) {
      const key = idempotencyKey(ctx);
      const body = parseBody(createOrderBody, await readJson(ctx.req));
      // Keyed orders go alone (the key's lock and stored response live in place_order); the rest through group commit.
      // The hash covers the validated body, so key order and spacing do not matter.
      const change =
        key === undefined
          ? await ctx.deps.orders.place(body)
          : await placeOrder(ctx.deps.writeDb, body, { key, requestHash: createHash('sha256').update(JSON.stringify(body)).digest('base64url') }).catch((err: unknown) => {
              throw replayedRefusal(err) ?? err;
            });
      sendChange(ctx, 201, change);
    },
  },
  {
    method: 'GET',
    path: '/orders',
    async handler({ res, url, deps }) {
      const customerId = parseId(url.searchParams.get('customer_id'), 'customer_id');
      const limit = parseLimit(url.searchParams.get('limit'));
      const after = decodeCursor(url.searchParams.get('cursor'));
      const items = await listOrders(deps.writeDb, { customerId, after, limit });
      const last = items.at(-1);
      sendJson(res, 200, { items, next_cursor: items.length === limit && last ? encodeCursor(last.id) : null });
    },
  },
  {
    method: 'GET',
    path: '/orders/:id',
    async handler({ res, params, deps }) {
      const order = await getOrder(deps.writeDb, parseId(params[0], 'id'));
      if (!order) throw new ApiError('order_not_found');
      sendJson(res, 200, order);
    },
  },
  transition('paid', 'pay'),
  transition('shipped', 'ship'),
  transition('cancelled', 'cancel'),
];
