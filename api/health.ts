import { sendJson } from './http.js';
import type { Route } from './router.js';
import type { Deps } from './deps.js';
import { checkBearer } from './auth.js';
import { ApiError } from './errors.js';
import { withTimeout } from '../lib/timeout.js';
import { sql } from '../db/pool.js';

const CHECK_TIMEOUT_MS = 1500;

export async function readiness(deps: Deps): Promise<{ ok: boolean; checks: Record<string, string> }> {
  const probes: Record<string, () => Promise<unknown>> = {
    // Through connections of their own: a pool busy with requests is not an outage.
    write_db: () => deps.probes.writeDb.query(sql.typeAlias('void')`SELECT`),
    read_db: () => deps.probes.readDb.query(sql.typeAlias('void')`SELECT`),
    // ioredis's own words for a closed connection ("Stream isn't writeable…") say nothing to an operator.
    redis: () => (deps.redis.status === 'ready' ? deps.redis.ping() : Promise.reject(new Error(`not connected (${deps.redis.status})`))),
  };
  const entries = await Promise.all(
    Object.entries(probes).map(async ([name, probe]) => {
      try {
        await withTimeout(probe(), CHECK_TIMEOUT_MS, name);
        return [name, 'ok'] as const;
      } catch (err) {
        return [name, (err as Error).message.replace(`${name}: `, '')] as const;
      }
    }),
  );
  const checks = Object.fromEntries(entries);
  return { ok: entries.every(([, v]) => v === 'ok'), checks };
}

export const healthRoutes: Route[] = [
  {
    method: 'GET',
    path: '/healthz',
    async handler({ res }) {
      sendJson(res, 200, { status: 'ok' });
    },
  },
  {
    method: 'GET',
    path: '/readyz',
    async handler({ res, deps }) {
      const { ok, checks } = await readiness(deps);
      sendJson(res, ok ? 200 : 503, { status: ok ? 'ready' : 'not_ready', checks });
    },
  },
  {
    method: 'GET',
    path: '/metrics',
    async handler({ req, res, deps }) {
      const token = deps.config.METRICS_TOKEN;
      if (token && !checkBearer(req.headers.authorization, token)) {
        throw new ApiError('unauthorized', '/metrics needs the bearer token (METRICS_TOKEN)', {}, { 'WWW-Authenticate': 'Bearer realm="metrics"' });
      }
      const text = await deps.metricsText();
      res.writeHead(200, { 'Content-Type': deps.metrics.registry.contentType });
      res.end(text);
    },
  },
];
