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

export function createPool(url: string, max: number, log: Logger, name: string): pg.Pool {
  const pool = new pg.Pool({
    connectionString: url,
    max,
    idleTimeoutMillis: 30_000,
    connectionTimeoutMillis: 5_000,
    application_name: name,
    options: '-c TimeZone=UTC',
  });
  // An idle client losing its connection (server restart) emits here; the
  // pool discards it and opens a new one on the next query.
  pool.on('error', (err) => log.warn({ err, pool: name }, 'idle postgres client error'));
  return pool;
}

/** Run fn in a transaction; ROLLBACK on any error. */
export async function withTransaction<T>(
  pool: pg.Pool,
  fn: (client: pg.PoolClient) => Promise<T>,
  begin = 'BEGIN',
): Promise<T> {
  const client = await pool.connect();
  try {
    await client.query(begin);
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}

export function pgCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string'
    ? err.code
    : undefined;
}

/** Deadlock or serialization failure: safe to retry the whole transaction. */
export function isRetryable(err: unknown): boolean {
  const code = pgCode(err);
  return code === '40P01' || code === '40001';
}
