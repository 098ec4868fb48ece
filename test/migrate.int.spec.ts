import assert from 'node:assert/strict';
import pg from 'pg';
import { createTestEnv, testLog } from './support/env.js';
import { Proc } from './support/processes.js';
import { migrate, render, MigrationError } from '../db/migrate.js';
import { CHANNELS, LOCKS, SQLSTATES, TOPICS } from '../lib/contract.js';

describe('migrations (integration)', function () {
  this.timeout(60_000);

  it('apply once; a changed applied file stops release with one line naming it', async () => {
    const env = await createTestEnv();
    assert.deepEqual(await migrate(env.config.DATABASE_URL, 'write', testLog), [], 'the template was migrated already: nothing left to do');
    const c = new pg.Client({ connectionString: env.config.DATABASE_URL });
    await c.connect();
    try {
      // As if the file had been edited after it was applied.
      await c.query(`UPDATE schema_migrations SET checksum = 'edited' WHERE name = '0001_baseline.sql'`);
    } finally {
      await c.end();
    }
    await assert.rejects(migrate(env.config.DATABASE_URL, 'write', testLog), (err: Error) => err instanceof MigrationError && /0001_baseline\.sql changed after it was applied/.test(err.message));
    const release = new Proc('db/release.js', env.env);
    await assert.rejects(release.run(), /exited 1/);
    const lines = release.output.trim().split('\n');
    assert.equal(lines.length, 1, release.output);
    assert.match(lines[0]!, /^release: write migration 0001_baseline\.sql changed after it was applied/);
  });

  it('the write side SQL speaks the contract: channel, topics, SQLSTATEs and lock keys come from lib/contract.ts', async () => {
    const env = await createTestEnv();
    const c = new pg.Client({ connectionString: env.config.DATABASE_URL });
    await c.connect();
    try {
      const def = async (fn: string) => (await c.query<{ d: string }>('SELECT pg_get_functiondef($1::regproc) AS d', [fn])).rows[0]!.d;
      assert.match(await def('outbox_notify'), new RegExp(`pg_notify\\('${CHANNELS.outbox}'`));
      const transition = await def('transition_order');
      for (const t of [TOPICS.paid, TOPICS.shipped, TOPICS.cancelled]) assert.ok(transition.includes(`'${t}'`), t);
      assert.ok(transition.includes(SQLSTATES.invalid_transition) && transition.includes(SQLSTATES.order_not_found));
      const place = await def('place_order');
      assert.ok(place.includes(`pg_advisory_xact_lock(${LOCKS.idempotencyKey},`) && place.includes(SQLSTATES.idempotency_key_reused));
      assert.ok((await def('order_insert')).includes(`'${TOPICS.created}'`));
    } finally {
      await c.end();
    }
    assert.throws(() => render('SELECT {{NO_SUCH_NAME}}', 'x.sql'), /unknown token \{\{NO_SUCH_NAME\}\}/);
  });
});
