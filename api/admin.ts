import { z } from 'zod';
import { ApiError } from './errors.js';
import { readJson, sendJson } from './http.js';
import type { Ctx, Route } from './router.js';
import { requireAdmin, requireSameOrigin } from './auth.js';
import { parseBody, parseId, storableText } from './validate.js';
import { listDeadLetters, type DeadLetterState } from '../db/dead-letters.js';
import { parkEvent, replayDeadLetter } from '../workers/dead-letters.js';
import { projectionStatuses } from '../db/status.js';

/**
 * Dead letters over HTTP, behind the same password as Bull Board (404 when
 * ADMIN_PASSWORD is unset; failed logins throttled per address): the list,
 * and an operator's two decisions. The POSTs take a JSON body (415
 * otherwise) and refuse a foreign Origin, so a page elsewhere cannot send
 * them with a browser's remembered credentials.
 */
export function admin(ctx: Ctx, changes = false): void {
  const password = ctx.deps.config.ADMIN_PASSWORD;
  if (!password) throw new ApiError('not_found', 'The admin API is off (ADMIN_PASSWORD is unset)');
  requireAdmin(ctx.req, password, ctx.deps.authThrottle, 'admin');
  if (changes) requireSameOrigin(ctx.req);
}

export const parkBody = z.strictObject({ reason: storableText.trim().min(1, 'must not be empty').max(1000, 'must be at most 1000 characters') });
export const replayBody = z.strictObject({});

function ops(ctx: Ctx) {
  return { readDb: ctx.deps.readDb, queues: ctx.deps.queues, config: ctx.deps.config };
}

export const adminRoutes: Route[] = [
  {
    method: 'GET',
    path: '/admin/projections',
    async handler(ctx) {
      admin(ctx);
      sendJson(ctx.res, 200, await projectionStatuses(ctx.deps.writeDb, ctx.deps.readDb), { 'Cache-Control': 'no-store' });
    },
  },
  {
    method: 'GET',
    path: '/admin/events',
    async handler(ctx) {
      admin(ctx);
      const state = ctx.url.searchParams.get('state') ?? 'failed';
      if (!['failed', 'parked', 'all'].includes(state)) throw new ApiError('validation_failed', 'state must be failed, parked or all', { field: 'state' });
      sendJson(ctx.res, 200, { state, items: await listDeadLetters(ctx.deps.readDb, state as DeadLetterState) });
    },
  },
  {
    method: 'POST',
    path: '/admin/events/:id/replay',
    async handler(ctx) {
      admin(ctx, true);
      const id = String(parseId(ctx.params[0], 'id'));
      parseBody(replayBody, await readJson(ctx.req));
      const result = await replayDeadLetter(ops(ctx), id);
      if (result === 'not_found') throw new ApiError('not_found', `Event ${id} is not a dead letter`);
      if (result === 'below_floor') throw new ApiError('event_conflict', `Event ${id} is below the retention floor and can no longer be applied`);
      if (result === 'already_applied') throw new ApiError('event_conflict', `Event ${id} is already applied`);
      sendJson(ctx.res, 202, { event_id: id, result });
    },
  },
  {
    method: 'POST',
    path: '/admin/events/:id/park',
    async handler(ctx) {
      admin(ctx, true);
      const id = String(parseId(ctx.params[0], 'id'));
      const { reason } = parseBody(parkBody, await readJson(ctx.req));
      const result = await parkEvent(ops(ctx), id, reason);
      if (result === 'not_found') throw new ApiError('not_found', `Event ${id} is not a dead letter`);
      if (result === 'processed') throw new ApiError('event_conflict', `Event ${id} is already applied`);
      sendJson(ctx.res, 200, { event_id: id, result });
    },
  },
];
