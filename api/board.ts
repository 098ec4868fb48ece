import type { IncomingMessage, ServerResponse } from 'node:http';
import express from 'express';
import type { EventQueues } from '../lib/queue.js';
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { ExpressAdapter } from '@bull-board/express';
import type { RedisClient } from '../lib/redis.js';
import { ApiError } from './errors.js';
import { sendProblem } from './http.js';
import { requireAdmin, requireSameOrigin, type AuthThrottle } from './auth.js';

export const BOARD_PATH = '/admin/queues';

/**
 * Bull Board behind HTTP Basic auth (the admin password, throttled per
 * address). Read-only unless BOARD_WRITABLE: its add-job, retry and clean
 * actions write to the queue directly, past every check the system makes (a
 * job added there would be applied as if the relay had sent it); dead
 * letters are replayed and parked through /admin/events instead. When
 * writable, its changing requests must come from this site. Its official
 * Express adapter is mounted under /admin/queues only; the API itself stays
 * on plain node:http.
 */
export function createBoardHandler(queues: EventQueues, redis: RedisClient, opts: { password: string; writable: boolean; throttle: AuthThrottle }): (req: IncomingMessage, res: ServerResponse) => void {
  const adapter = new ExpressAdapter();
  adapter.setBasePath(BOARD_PATH);
  createBullBoard({ queues: queues.all.map((q) => new BullMQAdapter(q, { readOnlyMode: !opts.writable })), serverAdapter: adapter });
  const app = express();
  app.disable('x-powered-by');
  app.use(BOARD_PATH, adapter.getRouter() as express.Router);
  return (req, res) => {
    try {
      requireAdmin(req, opts.password, opts.throttle, 'bull-board');
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        if (!opts.writable) throw new ApiError('forbidden', 'Bull Board is read-only here (BOARD_WRITABLE is off); replay or park events through /admin/events');
        requireSameOrigin(req);
      }
      // BullMQ waits for a connection that is not ready, and the board's pages would hang with it.
      if (redis.status !== 'ready') throw new ApiError('service_unavailable', 'Redis is unavailable; Bull Board needs it', {}, { 'Retry-After': '1' });
    } catch (err) {
      sendProblem(res, err as ApiError);
      return;
    }
    res.setHeader('X-Frame-Options', 'DENY');
    app(req as express.Request, res as express.Response);
  };
}
