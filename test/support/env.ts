import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { Redis } from 'ioredis';
import { getConfig, type Config } from '../../lib/config.js';
import { createLogger, type Logger } from '../../lib/logger.js';
import { migrate } from '../../db/migrate.js';

/**
 * Each test run gets its own databases and Redis key prefix, cloned from a
 * template migrated once per run, and removes them at the end. The machine's
 * shared PostgreSQL and Redis are never flushed or restarted.
 */
export const PG_ADMIN_URL = process.env.TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
export const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
export const RUN_ID = `${Date.now().toString(36)}${randomBytes(3).toString('hex')}`;
export const testLog: Logger = createLogger(process.env.TEST_LOG_LEVEL ?? 'silent', 'test');

const TEMPLATE = { write: `op_t_${RUN_ID}_tw`, read: `op_t_${RUN_ID}_tr` };
const created: string[] = [];
const prefixes: string[] = [];
let counter = 0;

export function dbUrl(name: string): string {
  const u = new URL(PG_ADMIN_URL);
  u.pathname = `/${name}`;
  return u.toString();
}

async function admin<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: PG_ADMIN_URL });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

const STALE_MS = 60 * 60 * 1000;

/** The start time encoded in a run id (base-36 milliseconds before the random part), or NaN. */
function runStarted(runId: string): number {
  return parseInt(runId.slice(0, -6), 36);
}

/**
 * A run that was killed (SIGKILL, a closed pipe) never reaches its teardown.
 * Each run therefore removes what runs started over an hour ago left behind;
 * runs going on now are younger and untouched.
 */
async function sweepStaleRuns(): Promise<void> {
  const stale = (id: string) => Date.now() - runStarted(id) > STALE_MS;
  await admin(async (c) => {
    const { rows } = await c.query<{ datname: string }>(`SELECT datname FROM pg_database WHERE datname ~ '^op_t_[0-9a-z]+_'`);
    const byRun = rows.map((r) => ({ name: r.datname, run: r.datname.split('_')[2]! })).filter((r) => stale(r.run));
    // Clones before their templates.
    byRun.sort((a, b) => Number(/_t[wr]$/.test(a.name)) - Number(/_t[wr]$/.test(b.name)));
    for (const r of byRun) await c.query(`DROP DATABASE IF EXISTS ${r.name} WITH (FORCE)`);
  });
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1, lazyConnect: true });
  try {
    await redis.connect();
    const runs = new Set<string>();
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', 'op-test-*', 'COUNT', 1000);
      cursor = next;
      for (const k of keys) runs.add(k.split(':')[0]!);
    } while (cursor !== '0');
    redis.disconnect();
    for (const prefix of runs) if (stale(prefix.split('-')[2] ?? '')) await deleteRedisPrefix(REDIS_URL, prefix);
  } catch {
    redis.disconnect();
  }
}

let templateReady: Promise<void> | undefined;
function ensureTemplates(): Promise<void> {
  templateReady ??= (async () => {
    await sweepStaleRuns();
    created.push(TEMPLATE.write, TEMPLATE.read);
    await migrate(dbUrl(TEMPLATE.write), 'write', testLog);
    await migrate(dbUrl(TEMPLATE.read), 'read', testLog);
  })();
  return templateReady;
}

export interface TestEnv {
  config: Config;
  /** Environment variables that make a child process use this env. */
  env: Record<string, string>;
  writeDb: string;
  readDb: string;
  prefix: string;
}

/** Fresh, migrated write_db and read_db plus a private Redis prefix. */
export async function createTestEnv(overrides: Record<string, string> = {}): Promise<TestEnv> {
  await ensureTemplates();
  counter += 1;
  const writeDb = `op_t_${RUN_ID}_${counter}w`;
  const readDb = `op_t_${RUN_ID}_${counter}r`;
  await admin(async (c) => {
    await c.query(`CREATE DATABASE ${writeDb} TEMPLATE ${TEMPLATE.write}`);
    created.push(writeDb);
    await c.query(`CREATE DATABASE ${readDb} TEMPLATE ${TEMPLATE.read}`);
    created.push(readDb);
  });
  const prefix = `op-test-${RUN_ID}-${counter}`;
  prefixes.push(prefix);
  const env: Record<string, string> = {
    DATABASE_URL: dbUrl(writeDb),
    READ_DATABASE_URL: dbUrl(readDb),
    REDIS_URL,
    QUEUE_PREFIX: prefix,
    LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'warn',
    PORT: '0',
    ...overrides,
  };
  return { config: getConfig(env), env, writeDb, readDb, prefix };
}

export async function deleteRedisPrefix(url: string, prefix: string): Promise<void> {
  const redis = new Redis(url, { maxRetriesPerRequest: 1, lazyConnect: true });
  try {
    await redis.connect();
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
      cursor = next;
      if (keys.length > 0) await redis.del(...keys);
    } while (cursor !== '0');
  } catch {
    // A Redis a test started and stopped itself has nothing left to clean.
  } finally {
    redis.disconnect();
  }
}

export async function cleanupAll(): Promise<void> {
  if (created.length > 0) {
    await admin(async (c) => {
      for (const name of created.reverse()) await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    });
    created.length = 0;
  }
  for (const p of prefixes) await deleteRedisPrefix(REDIS_URL, p);
  prefixes.length = 0;
}
