import assert from 'node:assert/strict';
import { z } from 'zod';
import { SchemaValidationError } from 'slonik';
import { createDb, sql, type Db } from '../db/pool.js';
import pg from 'pg';
import { createTestEnv, testLog } from './support/env.js';

describe('SQL layer (integration, real PostgreSQL): how rows come back', function () {
  let db: Db;
  let url: string;
  before(async () => {
    const env = await createTestEnv();
    url = env.config.READ_DATABASE_URL;
    db = createDb(url, { name: 'test', max: 1, log: testLog });
  });
  after(async () => db.end());

  it('money stays text, timestamps are ISO-8601 UTC, int8 is a number', async () => {
    const row = await db.one(
      sql.type(z.object({ money: z.string(), at: z.string(), atz: z.string(), n: z.number() }))`
        SELECT 0.10::numeric + 0.20::numeric AS money, '2026-11-25 08:42:37.123456'::timestamp AS at,
               '2026-11-25 08:42:37+01'::timestamptz AS atz, 9007199254740991::int8 AS n`,
    );
    assert.deepEqual(row, { money: '0.30', at: '2026-11-25T08:42:37.123456Z', atz: '2026-11-25T07:42:37.000Z', n: 9007199254740991 });
  });

  it('every row is checked against its schema: one row out of 250 that does not fit fails the query', async () => {
    const rows = await db.any(sql.type(z.object({ g: z.number() }))`SELECT g FROM generate_series(1, 250) g`);
    assert.equal(rows.length, 250);
    await assert.rejects(
      db.any(sql.type(z.object({ g: z.number().max(200) }))`SELECT g FROM generate_series(1, 250) g`),
      (err: unknown) => err instanceof SchemaValidationError,
    );
  });

  it('refuses a schema that cannot validate synchronously', async () => {
    const asyncSchema = z.object({ g: z.number() }).refine(async () => true);
    await assert.rejects(db.any(sql.type(asyncSchema)`SELECT 1 AS g`), /validate synchronously/);
  });

  it('a session the server ends under a pg client nobody listens to is logged, not fatal (slonik looks up types on such a client)', async () => {
    const bare = new pg.Client({ connectionString: url });
    await bare.connect();
    const ended = new Promise((resolve) => bare.once('end', resolve));
    const pid = (await bare.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
    // As a fast shutdown does to every backend: 57P01, then the socket closes. Without the guard in db/pool.ts
    // the 'error' event is an uncaught exception (mocha fails the test; a process exits 70).
    assert.equal(await db.oneFirst(sql.type(z.object({ ok: z.boolean() }))`SELECT pg_terminate_backend(${pid}) AS ok`), true);
    await ended;
    await assert.rejects(bare.query('SELECT 1'));
  });
});
