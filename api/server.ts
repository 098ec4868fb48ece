import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { ApiError, fromDatabaseError, problemBody, PROBLEMS } from './errors.js';
import { AuthThrottle } from './auth.js';
import type { Duplex } from 'node:stream';
import { maskUrls } from '../lib/redact.js';
import { sendProblem } from './http.js';
import { compile, match, type Route } from './router.js';
import type { Deps } from './deps.js';
import { healthRoutes } from './health.js';
import { productRoutes } from './products.js';
import { orderRoutes } from './orders.js';
import { OrderIntake } from '../db/orders.js';
import { createApiMetrics, metricsSnapshot } from './metrics.js';
import { analyticsRoutes } from './analytics.js';
import { adminRoutes } from './admin.js';
import { adminViewRoutes } from './admin-view.js';
import { AdminJobs } from './admin-jobs.js';
import { openapiRoutes } from './openapi.js';
import { dashboardRoutes } from './dashboard.js';
import { BOARD_PATH, createBoardHandler } from './board.js';
import { ConsistencyWaiter } from './consistency.js';
import { createQueues } from '../lib/queue.js';
import { createDb, processPoolOptions, isBusy, isUnavailable, PoolBusyError } from '../db/pool.js';
import client from 'prom-client';
import { createRedis } from '../lib/redis.js';
import type { Config } from '../lib/config.js';
import type { Logger } from '../lib/logger.js';
import { once, type Handle } from '../lib/lifecycle.js';
import { requestSpan } from '../lib/tracing.js';

export const routes: Route[] = [...healthRoutes, ...productRoutes, ...orderRoutes, ...analyticsRoutes, ...adminRoutes, ...adminViewRoutes, ...openapiRoutes, ...dashboardRoutes];

const REQUEST_ID = /^[\w.:-]{1,128}$/;

function classify(err: unknown): ApiError | undefined {
  if (err instanceof ApiError) return err;
  const db = fromDatabaseError(err);
  if (db) return db;
  if (err instanceof URIError) return new ApiError('validation_failed', 'The path is not valid percent-encoding', { field: '(path)' });
  if (err instanceof PoolBusyError) return new ApiError('overloaded', 'Too many requests are waiting for the database; try again', {}, { 'Retry-After': '1' });
  if (isBusy(err)) return new ApiError('overloaded', 'The database could not finish in time (a lock held elsewhere, a deadlock, or a statement timeout); try again', {}, { 'Retry-After': '1' });
  if (isUnavailable(err) || /Stream isn't writeable|Connection is closed|Redis did not answer/.test((err as Error)?.message ?? '')) {
    return new ApiError('service_unavailable', 'A database or Redis did not answer; try again', {}, { 'Retry-After': '1' });
  }
  return undefined;
}

/** What the web process knows about its own requests, for a graceful stop. */
export interface ServerState {
  /** Set by stop(): new requests are refused with 503 and Connection: close. */
  draining: boolean;
  /** Responses not yet finished. */
  inFlight: Set<http.ServerResponse>;
}

/** Headers on every answer; the dashboard adds a content security policy of its own. */
const SECURITY_HEADERS = { 'X-Content-Type-Options': 'nosniff', 'Referrer-Policy': 'no-referrer' };

/** Status recorded for a request whose client went away before its answer (nginx's convention; never sent). */
const CLIENT_CLOSED = 499;

export function createRequestListener(deps: Deps, state: ServerState = { draining: false, inFlight: new Set() }): http.RequestListener {
  const table = compile(routes);
  const board = deps.config.ADMIN_PASSWORD ? createBoardHandler(deps.queues, deps.redis, { password: deps.config.ADMIN_PASSWORD, writable: deps.config.BOARD_WRITABLE, throttle: deps.authThrottle }) : undefined;
  return (req, res) => {
    for (const [k, v] of Object.entries(SECURITY_HEADERS)) res.setHeader(k, v);
    // A body nobody reads is not drained (an endless one would be read until the request timeout): once the answer is out, the connection closes.
    res.once('finish', () => {
      if (!req.complete) req.socket.destroySoon();
    });
    const started = process.hrtime.bigint();
    const header = req.headers['x-request-id'];
    const requestId = typeof header === 'string' && REQUEST_ID.test(header) ? header : randomUUID();
    res.setHeader('X-Request-Id', requestId);
    if (state.draining) {
      // Arrived after SIGTERM (a kept-alive connection, or accepted just before the listener closed): not executed, safe to send elsewhere.
      deps.log.debug({ reqId: requestId, method: req.method, url: req.url }, 'turned away: shutting down');
      sendProblem(res, new ApiError('shutting_down', 'This process is stopping; send the request again', {}, { Connection: 'close', 'Retry-After': '0' }));
      return;
    }
    state.inFlight.add(res);
    res.once('close', () => state.inFlight.delete(res));
    const raw = req.url ?? '/';
    if (board && (raw === BOARD_PATH || raw.startsWith(`${BOARD_PATH}/`) || raw.startsWith(`${BOARD_PATH}?`))) {
      board(req, res);
      return;
    }
    const log = deps.log.child({ reqId: requestId });
    let routeName = '(unmatched)';
    // A path must start with one slash: "//evil.example/products" would otherwise parse as a host and route as /products.
    const url = raw.startsWith('/') && !raw.startsWith('//') ? new URL(raw, 'http://localhost') : undefined;
    const clientGone = () => req.readableAborted || (res.destroyed && !res.writableFinished);

    const handle = async (): Promise<void> => {
      if (!url) throw new ApiError('not_found', 'No route for that path');
      const found = match(table, req.method ?? 'GET', url.pathname);
      if (found.kind === 'none') throw new ApiError('not_found', `No route for ${url.pathname}`);
      if (found.kind === 'wrong_method') {
        routeName = found.path;
        throw new ApiError('method_not_allowed', `Allowed: ${found.allow.join(', ')}`, {}, { Allow: found.allow.join(', ') });
      }
      routeName = found.route.path;
      await found.route.handler({ req, res, url, params: found.params, log, deps });
    };

    const span = requestSpan(req); // tracing: undefined when off or not sampled
    (span ? span.run(handle) : handle())
      .catch((err: unknown) => {
        if (clientGone()) return; // nobody to answer; counted apart below
        span?.fail(err);
        const problem = classify(err);
        const instance = url?.pathname;
        if (problem) {
          // What an operator should look at is a warning; an expected answer (a 504 after the bound, a refusal while stopping) is not.
          if (problem.code === 'service_unavailable' || problem.code === 'overloaded') log.warn({ err }, problem.code === 'overloaded' ? 'shed load' : 'backing service unavailable');
          else log.debug({ code: problem.code, status: problem.status }, 'refused');
          sendProblem(res, problem, instance);
        } else {
          log.error({ err }, 'unhandled error');
          sendProblem(res, new ApiError('internal_error', 'Something went wrong; the request id identifies it in the logs'), instance);
        }
      })
      .finally(() => {
        const status = clientGone() ? CLIENT_CLOSED : res.statusCode;
        const seconds = Number(process.hrtime.bigint() - started) / 1e9;
        deps.metrics.httpDuration.observe({ method: req.method ?? '', route: routeName, status: String(status) }, seconds);
        span?.end(routeName, status);
        // Every request at debug; what an operator should see (errors, shed load) is logged above at warn and error.
        log.debug({ method: req.method, url: maskUrls(raw), route: routeName, status, ms: Math.round(seconds * 1e4) / 10 }, 'request');
      });
  };
}

/**
 * Node answers some requests before any route sees them (malformed HTTP,
 * headers too large, a request that took too long to arrive): as problem+json
 * too, then the connection closes.
 */
function answerClientError(err: Error & { code?: string }, socket: Duplex): void {
  if (!socket.writable || (err.code === 'ECONNRESET')) {
    socket.destroy();
    return;
  }
  const code = err.code === 'HPE_HEADER_OVERFLOW' ? 'request_header_fields_too_large' : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'request_timeout' : 'bad_request';
  const body = JSON.stringify(problemBody(new ApiError(code)));
  socket.end(
    `HTTP/1.1 ${PROBLEMS[code].status} ${http.STATUS_CODES[PROBLEMS[code].status]}\r\nContent-Type: application/problem+json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}

export function buildDeps(config: Config, log: Logger): Deps {
  const registry = new client.Registry();
  const limits = processPoolOptions(config, log, registry);
  const writeDb = createDb(config.DATABASE_URL, { ...limits, name: 'web-write', max: config.WRITE_POOL_SIZE, maxWaiting: config.WEB_POOL_QUEUE });
  const readDb = createDb(config.READ_DATABASE_URL, { ...limits, name: 'web-read', max: config.READ_POOL_SIZE, maxWaiting: config.WEB_POOL_QUEUE });
  const redis = createRedis(config, 'producer', log, 'web');
  const queues = createQueues(config, redis);
  const metrics = createApiMetrics({ writeDb, readDb, queues, redis }, registry);
  queues.on('error', (err) => log.debug({ err: err.message }, 'queue error'));
  return {
    config,
    log,
    writeDb,
    readDb,
    redis,
    queues,
    metrics,
    metricsText: metricsSnapshot(metrics, redis, config.QUEUE_PREFIX),
    orders: new OrderIntake(writeDb, {
      batchSize: config.ORDER_BATCH_SIZE,
      concurrency: Math.min(config.ORDER_BATCH_CONCURRENCY, config.WRITE_POOL_SIZE),
      onBatch: (size) => metrics.orderBatchSize.observe(size),
    }),
    consistency: new ConsistencyWaiter(writeDb, readDb, config, log),
    authThrottle: new AuthThrottle(),
    jobs: new AdminJobs(config, log),
    probes: {
      writeDb: createDb(config.DATABASE_URL, { log, name: 'web-probe', max: 1, statementTimeoutMs: 2000 }),
      readDb: createDb(config.READ_DATABASE_URL, { log, name: 'web-probe', max: 1, statementTimeoutMs: 2000 }),
    },
  };
}

export interface WebHandle extends Handle {
  server: http.Server;
  port: number;
}

/** Procfile `web`: the HTTP API on config.PORT. */
export async function startWeb(config: Config, log: Logger, deps = buildDeps(config, log)): Promise<WebHandle> {
  await deps.consistency.start();
  const state: ServerState = { draining: false, inFlight: new Set() };
  const server = http.createServer({ requestTimeout: 30_000 }, createRequestListener(deps, state));
  server.keepAliveTimeout = config.HTTP_KEEP_ALIVE_MS;
  // Past this many open connections new ones are refused: descriptors stay for the databases.
  server.maxConnections = config.HTTP_MAX_CONNECTIONS;
  server.on('clientError', answerClientError);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.PORT, () => resolve());
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : config.PORT;
  log.info({ port, board: config.ADMIN_PASSWORD ? BOARD_PATH : 'off (ADMIN_PASSWORD unset)' }, 'web listening');
  const stop = once(async () => {
    // Stop listening; refuse what arrives on open connections from now on
    // (503, not executed); let the requests in flight finish and answer them
    // with Connection: close; close idle connections. server.close() alone
    // would keep serving kept-alive connections for as long as clients send.
    state.draining = true;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const res of state.inFlight) if (!res.headersSent) res.setHeader('Connection', 'close');
    server.closeIdleConnections();
    await closed;
    // Handlers of requests whose client went away may still be queued for group commit.
    await deps.orders.drain();
    await deps.jobs.stop();
    await deps.consistency.stop();
    await deps.queues.close().catch(() => undefined);
    await Promise.allSettled([deps.writeDb.end(), deps.readDb.end(), deps.probes.writeDb.end(), deps.probes.readDb.end(), deps.redis.quit()]);
  });
  return { server, port, stop };
}
