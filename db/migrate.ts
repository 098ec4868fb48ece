import fs from 'node:fs/promises';
import path from 'node:path';
import pg from 'pg';
import { projectRoot } from '../lib/paths.js';
import type { Logger } from '../lib/logger.js';
import { pgCode } from './pool.js';

export type Schema = 'write' | 'read';

/** Arbitrary constant: the advisory lock key that serialises migration runners. */
const MIGRATION_LOCK = 741_100;

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

export async function loadMigrations(schema: Schema): Promise<Migration[]> {
  const dir = path.join(projectRoot, 'db', 'migrations', schema);
  const files = (await fs.readdir(dir)).filter((f) => /^\d+_.+\.sql$/.test(f)).sort();
  const migrations: Migration[] = [];
  for (const file of files) {
    const version = Number(file.split('_')[0]);
    if (migrations.some((m) => m.version === version)) throw new Error(`duplicate migration version ${version} in ${dir}`);
    migrations.push({ version, name: file, sql: await fs.readFile(path.join(dir, file), 'utf8') });
  }
  return migrations;
}

/** CREATE DATABASE if it is missing; tolerant of another runner doing the same at once. */
export async function ensureDatabase(url: string, log: Logger): Promise<void> {
  const target = new URL(url);
  const dbName = decodeURIComponent(target.pathname.slice(1));
  const probe = new pg.Client({ connectionString: url });
  try {
    await probe.connect();
    return;
  } catch (err) {
    if (pgCode(err) !== '3D000') throw err; // only "database does not exist" is ours to fix
  } finally {
    await probe.end().catch(() => undefined);
  }
  const admin = new URL(url);
  admin.pathname = '/postgres';
  const client = new pg.Client({ connectionString: admin.toString() });
  await client.connect();
  try {
    await client.query(`CREATE DATABASE ${pg.escapeIdentifier(dbName)}`);
    log.info({ database: dbName }, 'created database');
  } catch (err) {
    // 42P04 duplicate_database; 23505 when two CREATE DATABASE race on pg_database.
    if (pgCode(err) !== '42P04' && pgCode(err) !== '23505') throw err;
  } finally {
    await client.end();
  }
}

/**
 * Apply pending migrations, each in its own transaction together with its
 * record in schema_migrations. A session advisory lock makes concurrent
 * runners take turns; the later one finds nothing left to do.
 */
export async function migrate(url: string, schema: Schema, log: Logger): Promise<number[]> {
  await ensureDatabase(url, log);
  const migrations = await loadMigrations(schema);
  const client = new pg.Client({ connectionString: url, options: '-c TimeZone=UTC' });
  await client.connect();
  const applied: number[] = [];
  try {
    await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK]);
    await client.query(`CREATE TABLE IF NOT EXISTS schema_migrations (
      version    INTEGER PRIMARY KEY,
      name       TEXT NOT NULL,
      applied_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'))`);
    const { rows } = await client.query<{ version: number }>('SELECT version FROM schema_migrations');
    const done = new Set(rows.map((r) => r.version));
    for (const m of migrations) {
      if (done.has(m.version)) continue;
      await client.query('BEGIN');
      try {
        await client.query('INSERT INTO schema_migrations (version, name) VALUES ($1, $2)', [m.version, m.name]);
        await client.query(m.sql);
        await client.query('COMMIT');
      } catch (err) {
        await client.query('ROLLBACK');
        throw new Error(`migration ${schema}/${m.name} failed: ${(err as Error).message}`, { cause: err });
      }
      applied.push(m.version);
      log.info({ schema, migration: m.name }, 'applied migration');
    }
  } finally {
    await client.end();
  }
  return applied;
}
