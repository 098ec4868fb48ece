import { timingSafeEqual, createHash } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import express from 'express';
import type { Queue } from 'bullmq';
import type { RedisClient } from '../lib/redis.js';
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { ExpressAdapter } from '@bull-board/express';
import { ApiError } from './errors.js';
import { sendProblem } from './http.js';

export const BOARD_PATH = '/admin/queues';

/** Constant-time comparison of HTTP Basic credentials (any user name, the configured password). */
export function checkBasicAuth(header: string | undefined, password: string): boolean {
  const m = /^Basic ([A-Za-z0-9+/=]+)$/.exec(header ?? '');
  if (!m) return false;
  const decoded = Buffer.from(m[1]!, 'base64').toString('utf8');
  const given = decoded.slice(decoded.indexOf(':') + 1);
  // Hash both sides so the comparison takes the same time whatever the lengths.
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(password).digest();
  return decoded.includes(':') && timingSafeEqual(a, b);
}

/**
 * Bull Board (see, retry and clean jobs) behind HTTP Basic auth. Its official
 * Express adapter is mounted under /admin/queues only; the API itself stays
 * on plain node:http.
 */
export function createBoardHandler(queue: Queue, redis: RedisClient, password: string): (req: IncomingMessage, res: ServerResponse) => void {
  const adapter = new ExpressAdapter();
  adapter.setBasePath(BOARD_PATH);
  createBullBoard({ queues: [new BullMQAdapter(queue)], serverAdapter: adapter });
  const app = express();
  app.disable('x-powered-by');
  app.use(BOARD_PATH, adapter.getRouter() as express.Router);
  return (req, res) => {
    if (!checkBasicAuth(req.headers.authorization, password)) {
      sendProblem(res, new ApiError('unauthorized', 'Bull Board needs the admin password', {}, { 'WWW-Authenticate': 'Basic realm="bull-board", charset="UTF-8"' }));
      return;
    }
    // BullMQ waits for a connection that is not ready, and the board's pages would hang with it.
    if (redis.status !== 'ready') {
      sendProblem(res, new ApiError('service_unavailable', 'Redis is unavailable; Bull Board needs it', {}, { 'Retry-After': '1' }));
      return;
    }
    app(req as express.Request, res as express.Response);
  };
}
