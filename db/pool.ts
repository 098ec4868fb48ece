import { createPool, createSqlTag, SchemaValidationError, type DatabasePool, type Interceptor, type QueryResultRow } from 'slonik';
import { createPgDriverFactory } from '@slonik/pg-driver';
import { z } from 'zod';
import pg from 'pg';
import client from 'prom-client';
import type { Logger } from '../lib/logger.js';
import type { Config } from '../lib/config.js';

/**
 * The SQL layer: slonik over pg, for every pool of the system (migrations and
 * LISTEN keep plain pg clients: multi-statement files, and a session of their
 * own). Queries are `sql` tagged templates, typed with a zod schema
 * (`sql.type(schema)`) and checked row by row at run time; values are always
 * bound parameters.
 */
export const sql = createSqlTag({
  typeAliases: {
    void: z.object({}).strict(),
  },
});

/**
 * Types as this system reads them. NUMERIC stays text (money never becomes a
 * float); `timestamp` (no zone) holds UTC by convention and reads as ISO-8601
 * text with a Z; int8 (counts, sums of integers) fits a JS number for any
 * count this system makes. slonik's defaults would make NUMERIC a float and
 * timestamps milliseconds.
 */
const TYPE_PARSERS = [
  { name: 'numeric', parse: (v: string) => v },
  { name: 'int8', parse: (v: string) => Number(v) },
  { name: 'timestamp', parse: (v: string) => `${v.replace(' ', 'T')}Z` },
  { name: 'timestamptz', parse: (v: string) => new Date(v).toISOString() },
  { name: 'date', parse: (v: string) => v },
];

/**
 * Every row of a query typed with sql.type(schema) is checked against it; a
 * mismatch is a SchemaValidationError. Synchronously (our schemas are plain
 * zod objects): slonik runs an async row transform through a queue of its
 * own and yields to the event loop every 100 rows. Measured (p50 of one
 * query, async → sync): 20 rows 0.19 → 0.10 ms, 168 rows 0.58 → 0.32 ms,
 * 500 rows 1.19 → 0.48 ms.
 */
const resultParser: Interceptor = {
  name: 'result-parser',
  transformRow: (context, query, row) => {
    if (!context.resultParser) return row;
    const result = context.resultParser['~standard'].validate(row);
    if (result instanceof Promise) throw new TypeError('result schemas must validate synchronously (no async refinements)');
    if (result.issues) throw new SchemaValidationError(query, row, result.issues);
    return result.value as QueryResultRow;
  },
};

/** Seconds since a query was handed to slonik (its context's queryInputTime, hrtime nanoseconds). */
const secondsSince = (queryInputTime: bigint | number) => Number(process.hrtime.bigint() - BigInt(queryInputTime)) / 1e9;

/** Slow statements are logged with their text (never their values), so a regression shows in the logs. */
function slowQueryLog(log: Logger, name: string, slowMs: number): Interceptor {
  return {
    name: 'slow-query-log',
    afterQueryExecution: (context, query) => {
      const ms = secondsSince(context.queryInputTime) * 1000;
      if (ms >= slowMs) log.warn({ pool: name, ms: Math.round(ms), sql: query.sql.replace(/\s+/g, ' ').slice(0, 300) }, 'slow query');
      return null;
    },
  };
}

/** Query durations by pool, observed by every pool given it (an interceptor). */
function createQueryMetrics(registry: client.Registry): client.Histogram<'pool'> {
  return new client.Histogram({
    name: 'db_query_duration_seconds',
    help: 'PostgreSQL statement durations, by pool (web-write, web-read, relay, worker, …)',
    labelNames: ['pool'],
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [registry],
  });
}

/**
 * The options every pool of a Procfile process shares: its logger, the
 * pipeline's timeouts, and query durations in the process's registry (call
 * once per registry).
 */
export function processPoolOptions(config: Pick<Config, 'PG_STATEMENT_TIMEOUT_MS' | 'PG_IDLE_IN_TRANSACTION_TIMEOUT_MS'>, log: Logger, registry: client.Registry) {
  return { log, statementTimeoutMs: config.PG_STATEMENT_TIMEOUT_MS, idleInTransactionMs: config.PG_IDLE_IN_TRANSACTION_TIMEOUT_MS, queryMetrics: createQueryMetrics(registry) };
}

function queryMetrics(histogram: client.Histogram<'pool'>, name: string): Interceptor {
  return {
    name: 'query-metrics',
    afterQueryExecution: (context) => {
      histogram.observe({ pool: name }, secondsSince(context.queryInputTime));
      return null;
    },
  };
}

export type Db = DatabasePool;

/**
 * A pg client nobody listens to must not take the process down.
 * @slonik/pg-driver connects a bare pg.Client to look up type ids whenever a
 * pool is created, and takes its 'error' listener off a pool client whose
 * connect failed; when the server ends such a session (a fast shutdown sends
 * 57P01 to every backend) pg emits 'error' on it, and an 'error' event nobody
 * listens to is an uncaught exception: the process exited 70 when PostgreSQL
 * stopped while a worker was creating its pool (found by the chaos test). The
 * query that used the client fails on its own and is retried like any other,
 * so here the event is only logged. Clients with a listener are untouched.
 */
let orphanLog: Logger | undefined;
const emit = pg.Client.prototype.emit;
pg.Client.prototype.emit = function (this: pg.Client, event: string | symbol, ...args: unknown[]): boolean {
  if (event === 'error' && this.listenerCount('error') === 0) {
    orphanLog?.warn({ err: (args[0] as Error | undefined)?.message, code: pgCode(args[0]) }, 'postgres connection without a listener ended; its query fails and is retried');
    return false;
  }
  return emit.call(this, event, ...args);
};

export interface DbOptions {
  /** application_name, and the name in logs. */
  name: string;
  max: number;
  log: Logger;
  /** statement_timeout, ms (0: none). */
  statementTimeoutMs?: number;
  /**
   * idle_in_transaction_session_timeout, ms (0: none). A process that stalls
   * inside a transaction (a relay waiting on Redis while it holds claimed
   * outbox rows) is cut off by the server, so its locks cannot be held for hours.
   */
  idleInTransactionMs?: number;
  /** How long to wait for a connection, ms. */
  connectionTimeoutMs?: number;
  slowQueryMs?: number;
  /** Where to observe query durations (processPoolOptions makes one per process). */
  queryMetrics?: client.Histogram<'pool'>;
  /**
   * Calls that may wait for a connection beyond `max`; past that a call fails
   * at once with PoolBusyError (the web answers 503 with Retry-After: load
   * shed early, instead of every request timing out in the queue). Unset: no limit.
   */
  maxWaiting?: number;
}

/** A pool's queue is full: the work was not started. */
export class PoolBusyError extends Error {
  override name = 'PoolBusyError';
  readonly code = 'POOL_BUSY';
}

/**
 * A slonik pool that can be created while the database is away.
 *
 * slonik's pg driver connects once when a pool is created (to look up type
 * ids), so a process starting during an outage would fail to start. This
 * returns at once; the pool is created on first use and, if that fails,
 * again on the next use: a query during an outage fails as fast as the
 * database refuses, and the first one after it is back creates the pool.
 */
export function createDb(url: string, opts: DbOptions): Db {
  orphanLog ??= opts.log;
  let pool: Promise<DatabasePool> | undefined;
  let ended = false;
  const get = (): Promise<DatabasePool> => {
    if (ended) return Promise.reject(new Error(`pool ${opts.name} has ended`));
    pool ??= createPool(sessionUrl(url, opts.name), {
      driverFactory: createPgDriverFactory(),
      maxPoolSize: opts.max,
      connectionTimeout: opts.connectionTimeoutMs ?? 5_000,
      statementTimeout: opts.statementTimeoutMs || 'DISABLE_TIMEOUT',
      idleInTransactionSessionTimeout: opts.idleInTransactionMs || 'DISABLE_TIMEOUT',
      idleTimeout: 30_000,
      // No session state is set anywhere but at connect: a DISCARD ALL after every release would only cost a round trip.
      resetConnection: async () => undefined,
      typeParsers: TYPE_PARSERS,
      interceptors: [resultParser, slowQueryLog(opts.log, opts.name, opts.slowQueryMs ?? 2_000), ...(opts.queryMetrics ? [queryMetrics(opts.queryMetrics, opts.name)] : [])],
    }).then(
      (p) => {
        p.on('error', (err) => opts.log.warn({ err: err.message, code: pgCode(err), pool: opts.name }, 'postgres pool error'));
        return p;
      },
      (err: unknown) => {
        pool = undefined;
        throw err;
      },
    );
    return pool;
  };
  const methods = ['any', 'anyFirst', 'exists', 'many', 'manyFirst', 'maybeOne', 'maybeOneFirst', 'one', 'oneFirst', 'query', 'transaction', 'connect'] as const;
  const lazy: Record<string, unknown> = {};
  let inFlight = 0;
  const limit = opts.maxWaiting === undefined ? Infinity : opts.max + opts.maxWaiting;
  for (const m of methods) {
    lazy[m] = async (...args: unknown[]) => {
      if (inFlight >= limit) throw new PoolBusyError(`${opts.name}: ${inFlight} queries running or waiting for a connection`);
      inFlight++;
      try {
        return await ((await get())[m] as (...a: unknown[]) => unknown)(...args);
      } finally {
        inFlight--;
      }
    };
  }
  lazy.end = async () => {
    ended = true;
    const p = await pool?.catch(() => undefined);
    await p?.end();
  };
  lazy.state = () => ({ state: pool ? 'ACTIVE' : 'NOT_CONNECTED' });
  lazy.on = () => lazy;
  return lazy as unknown as Db;
}

/** The URL with application_name set and sessions in UTC (timestamps without a zone hold UTC here). */
function sessionUrl(url: string, name: string): string {
  const u = new URL(url);
  if (!u.searchParams.has('application_name')) u.searchParams.set('application_name', name);
  u.searchParams.set('options', `${u.searchParams.get('options') ?? ''} -c TimeZone=UTC`.trim());
  return u.toString();
}

/** The SQLSTATE (or socket error code) of an error, or of the error it wraps (slonik keeps pg's error as `cause`). */
export function pgCode(err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  if ('code' in err && typeof err.code === 'string') return err.code;
  return 'cause' in err && err.cause !== err ? pgCode(err.cause) : undefined;
}

/**
 * One line saying what the database said: slonik wraps pg's error in its own
 * ("Query violates a check integrity constraint."), whose cause carries the
 * server's message (naming the constraint) and SQLSTATE.
 */
export function describeError(err: unknown): string {
  const own = (err as Error)?.message ?? String(err);
  let inner: unknown = (err as { cause?: unknown })?.cause;
  while (inner && (inner as { cause?: unknown }).cause && (inner as { cause?: unknown }).cause !== inner) inner = (inner as { cause?: unknown }).cause;
  const code = pgCode(err);
  const detail = inner instanceof Error && inner.message !== own ? `: ${inner.message}` : '';
  return `${own}${detail}${code ? ` (SQLSTATE ${code})` : ''}`;
}

/** The database's own error fields (DETAIL of a RAISE), wherever slonik keeps them. */
export function pgDetail(err: unknown): unknown {
  if (typeof err !== 'object' || err === null) return undefined;
  if ('detail' in err && err.detail !== undefined && err.detail !== null) return err.detail;
  return 'cause' in err && err.cause !== err ? pgDetail(err.cause) : undefined;
}

/** Deadlock or serialization failure: safe to retry the whole transaction at once. */
export function isRetryable(err: unknown): boolean {
  const code = pgCode(err);
  return code === '40P01' || code === '40001';
}

/** Node's socket errors and the messages pg and slonik give a lost or refused connection. */
const SOCKET_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN']);
const LOST_CONNECTION = /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error|Connection is closed|not queryable|Query read timeout|Backend has been terminated|has ended|Timeout while waiting for a connection|Failed to connect|connect ECONNREFUSED/i;

/**
 * The database is away or cannot take the work now: it said nothing about
 * the statement itself. SQLSTATE classes 08 (connection), 53 (out of
 * resources), 57P01–57P03 (shutting down, crashed, starting), 55000 (e.g. a
 * database not accepting connections), plus socket errors.
 */
export function isUnavailable(err: unknown): boolean {
  const code = pgCode(err);
  if (code !== undefined) {
    if (SOCKET_CODES.has(code)) return true;
    if (/^(08|53)/.test(code) || code === '57P01' || code === '57P02' || code === '57P03' || code === '55000') return true;
  }
  for (let e: unknown = err; typeof e === 'object' && e !== null; e = (e as { cause?: unknown }).cause) {
    if (LOST_CONNECTION.test((e as Error).message ?? '')) return true;
    if ((e as { cause?: unknown }).cause === e) break;
  }
  return false;
}

/**
 * The statement was refused for what it says about the data: SQLSTATE class
 * 22 (data exception: a value out of range, malformed input) or 23 (a
 * constraint). The same statement with the same data fails the same way
 * again. Anything else — the database away, read-only after a failover,
 * permissions, a missing table, a timeout, a deadlock, a bug — says nothing
 * about the data and must not condemn it.
 */
export function isDataError(err: unknown): boolean {
  return /^(22|23)/.test(pgCode(err) ?? '') || (err as Error)?.name === 'InvalidInputError';
}

/** Busy rather than away: a deadlock or serialization failure, a lock or statement timeout, a cancelled query. */
export function isBusy(err: unknown): boolean {
  const code = pgCode(err);
  return isRetryable(err) || code === '55P03' || code === '57014' || code === '25P03';
}
