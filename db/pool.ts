import pg from 'pg';
import type { Logger } from '../lib/logger.js';

// `timestamp` (no zone) holds UTC by convention here; keep pg from shifting it
// through the local time zone by returning the text and treating it as UTC.
pg.types.setTypeParser(pg.types.builtins.TIMESTAMP, (s: string) => `${s.replace(' ', 'T')}Z`);
// int8 (count(*), sums of integers) fits a JS number for any count this system makes.
pg.types.setTypeParser(pg.types.builtins.INT8, (s: string) => Number(s));
// NUMERIC stays a string (pg's default): money never becomes a float.

export type Pool = pg.Pool;
export type PoolClient = pg.PoolClient;

export interface SessionLimits {
  /** statement_timeout of every session, ms (0: none). */
  statementTimeoutMs?: number;
  /**
   * idle_in_transaction_session_timeout, ms (0: none). A process that stalls
   * inside a transaction (a relay waiting on Redis while it holds claimed
   * outbox rows) is cut off by the server, so its locks cannot be held for hours.
   */
  idleInTransactionMs?: number;
}

export function createPool(url: string, max: number, log: Logger, name: string, limits: SessionLimits = {}): pg.Pool {
  const options = ['-c TimeZone=UTC'];
  if (limits.statementTimeoutMs) options.push(`-c statement_timeout=${limits.statementTimeoutMs}`);
  if (limits.idleInTransactionMs) options.push(`-c idle_in_transaction_session_timeout=${limits.idleInTransactionMs}`);
  const pool = new pg.Pool({
    connectionString: url,
    max,
    idleTimeoutMillis: 30_000,
    connectionTimeoutMillis: 5_000,
    application_name: name,
    options: options.join(' '),
  });
  // An idle client losing its connection (server restart) emits here; the
  // pool discards it and opens a new one on the next query.
  pool.on('error', (err) => log.warn({ err: err.message, code: pgCode(err), pool: name }, 'idle postgres client error'));
  // A client checked out with pool.connect() has no listener of the pool's:
  // when the server goes away between two of its queries it emits 'error',
  // and an 'error' nobody listens to kills the process. The query in flight
  // (or the next one) fails with that error anyway, so noting it is enough.
  pool.on('connect', (client) => {
    client.on('error', (err) => log.debug({ err: err.message, pool: name }, 'postgres client error'));
  });
  return pool;
}

/** Run fn in a transaction; ROLLBACK on any error. */
export async function withTransaction<T>(
  pool: pg.Pool,
  fn: (client: pg.PoolClient) => Promise<T>,
  begin = 'BEGIN',
): Promise<T> {
  const client = await pool.connect();
  let broken: unknown;
  try {
    await client.query(begin);
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK').catch((e: unknown) => (broken = e));
    throw err;
  } finally {
    // A client whose ROLLBACK failed is not reusable: the pool must close it.
    client.release(broken instanceof Error ? broken : undefined);
  }
}

/** The SQLSTATE (or socket error code) of an error, or of the error it wraps. */
export function pgCode(err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  if ('code' in err && typeof err.code === 'string') return err.code;
  return 'cause' in err && err.cause !== err ? pgCode(err.cause) : undefined;
}

/** Deadlock or serialization failure: safe to retry the whole transaction at once. */
export function isRetryable(err: unknown): boolean {
  const code = pgCode(err);
  return code === '40P01' || code === '40001';
}

/** Node's socket errors and the messages pg gives a lost or refused connection. */
const SOCKET_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN']);
const LOST_CONNECTION = /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error|Connection is closed|not queryable|Query read timeout/;

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
  return LOST_CONNECTION.test((err as Error)?.message ?? '');
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
  return /^(22|23)/.test(pgCode(err) ?? '');
}

/** Busy rather than away: a deadlock or serialization failure, a lock or statement timeout, a cancelled query. */
export function isBusy(err: unknown): boolean {
  const code = pgCode(err);
  return isRetryable(err) || code === '55P03' || code === '57014' || code === '25P03';
}
