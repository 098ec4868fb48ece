import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import pg from 'pg';
import { projectRoot } from '../lib/paths.js';
import type { Logger } from '../lib/logger.js';
import { LOCKS, SQL_NAMES } from '../lib/contract.js';
import { pgCode } from './pool.js';

/**
 * The migration runner (Procfile `release`). Migrations are numbered SQL
 * files under db/migrations/{write,read}/, applied in order, each in its own
 * transaction together with its row in schema_migrations; a session advisory
 * lock makes concurrent runners take turns. Files are append-only: the
 * runner keeps each applied file's checksum and refuses to go on, in one
 * line naming the file, when an applied file has changed or is gone.
 *
 * It runs on a plain pg client, not through slonik: a migration file holds
 * many statements (the simple query protocol), and the advisory lock is held
 * by one session throughout.
 */
export type Schema = 'write' | 'read';

export interface Migration {
  version: number;
  name: string;
  /** The file with its {{TOKENS}} replaced by the names of lib/contract.ts. */
  sql: string;
  checksum: string;
}

export class MigrationError extends Error {
  override name = 'MigrationError';
}

/** Replace each {{NAME}} by lib/contract.ts's SQL_NAMES[NAME]; an unknown token is an error, never left in. */
export function render(text: string, file: string): string {
  return text.replace(/\{\{([A-Z_]+)\}\}/g, (_, name: string) => {
    const value = SQL_NAMES[name];
    if (value === undefined) throw new MigrationError(`${file}: unknown token {{${name}}} (not in lib/contract.ts SQL_NAMES)`);
    return String(value);
  });
}

export async function loadMigrations(schema: Schema): Promise<Migration[]> {
  const dir = path.join(projectRoot, 'db', 'migrations', schema);
  const files = (await fs.readdir(dir)).filter((f) => /^\d+_.+\.sql$/.test(f)).sort();
  const migrations: Migration[] = [];
  for (const file of files) {
    const version = Number(file.split('_')[0]);
    if (migrations.some((m) => m.version === version)) throw new MigrationError(`duplicate migration version ${version} in ${dir}`);
    const sql = render(await fs.readFile(path.join(dir, file), 'utf8'), file);
    // The checksum covers the rendered SQL: a changed name in lib/contract.ts changes what an applied migration would do, too.
    migrations.push({ version, name: file, sql, checksum: createHash('sha256').update(sql).digest('hex') });
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

/** Apply pending migrations; returns the versions applied. Throws MigrationError (one line) when applied files changed. */
export async function migrate(url: string, schema: Schema, log: Logger): Promise<number[]> {
  await ensureDatabase(url, log);
  const migrations = await loadMigrations(schema);
  const client = new pg.Client({ connectionString: url, options: '-c TimeZone=UTC' });
  await client.connect();
  const applied: number[] = [];
  try {
    await client.query('SELECT pg_advisory_lock($1)', [LOCKS.migrations]);
    await client.query(`CREATE TABLE IF NOT EXISTS schema_migrations (
      version    INTEGER PRIMARY KEY,
      name       TEXT NOT NULL,
      checksum   TEXT NOT NULL,
      applied_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'))`);
    const { rows: cols } = await client.query(`SELECT 1 FROM information_schema.columns WHERE table_name = 'schema_migrations' AND column_name = 'checksum'`);
    if (cols.length === 0) throw new MigrationError(`${schema}: this database was migrated before the first release (no checksums); recreate it (for npm start's own databases: delete .data/)`);
    const { rows } = await client.query<{ version: number; name: string; checksum: string }>('SELECT version, name, checksum FROM schema_migrations ORDER BY version');
    for (const done of rows) {
      const file = migrations.find((m) => m.version === done.version);
      if (!file || file.name !== done.name) {
        throw new MigrationError(`${schema} migration ${done.name} was applied but db/migrations/${schema}/${done.name} is gone; migrations are append-only (a database made before the first release must be recreated; for npm start's own databases: delete .data/)`);
      }
      if (file.checksum !== done.checksum) {
        throw new MigrationError(`${schema} migration ${done.name} changed after it was applied; migrations are append-only: revert the edit and add a new migration`);
      }
    }
    const done = new Set(rows.map((r) => r.version));
    for (const m of migrations) {
      if (done.has(m.version)) continue;
      await client.query('BEGIN');
      try {
        await client.query('INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)', [m.version, m.name, m.checksum]);
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
