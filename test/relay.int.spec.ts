import assert from 'node:assert/strict';
import pg from 'pg';
import { sleep } from './support/pipeline.js';
import { createTestEnv, testLog, type TestEnv } from './support/env.js';
import { Relay } from '../workers/relay/relay.js';
import { createQueues, type EventQueues } from '../lib/queue.js';
import { createRedis, type RedisClient } from '../lib/redis.js';
import { createDb, type Db } from '../db/pool.js';

/**
 * The relay's wake-ups: a notification names the highest outbox id its
 * statement wrote (write/0003), so one heard during a round whose claim took
 * that id starts no other round.
 */
describe('relay wake-ups (integration)', function () {
  this.timeout(60_000);
  let env: TestEnv;
  let write: pg.Pool;
  let db: Db;
  let redis: RedisClient;
  let queues: EventQueues;
  let relay: Relay | undefined;

  beforeEach(async () => {
    env = await createTestEnv({ RELAY_POLL_MS: '600000' }); // no poll: every round here is a notification's
    write = new pg.Pool({ connectionString: env.config.DATABASE_URL, max: 2 });
    db = createDb(env.config.DATABASE_URL, { name: 'test-relay', max: 2, log: testLog });
    redis = createRedis(env.config, 'producer', testLog, 'test');
    queues = createQueues(env.config, redis);
  });
  afterEach(async () => {
    await relay?.stop();
    await queues.close();
    redis.disconnect();
    await Promise.all([write.end(), db.end()]);
  });

  /** The relay's rounds (its claim transactions), each held at `gate` while one is set. */
  function counted(): { db: Db; rounds: () => number; hold: () => () => void } {
    let rounds = 0;
    let gate: Promise<void> | undefined;
    const wrapped = new Proxy(db, {
      get: (target, key, receiver) =>
        key === 'transaction'
          ? async (...args: Parameters<Db['transaction']>) => {
              rounds++;
              await gate;
              return target.transaction(...args);
            }
          : Reflect.get(target, key, receiver),
    });
    return {
      db: wrapped,
      rounds: () => rounds,
      hold: () => {
        const { promise, resolve } = Promise.withResolvers<void>();
        gate = promise;
        return () => {
          gate = undefined;
          resolve();
        };
      },
    };
  }

  const until = async (what: string, ok: () => boolean | Promise<boolean>) => {
    for (let i = 0; i < 200; i++) {
      if (await ok()) return;
      await sleep(25);
    }
    assert.fail(`timed out waiting for ${what}`);
  };
  const unpublished = async () => Number((await write.query<{ n: string }>('SELECT count(*)::text AS n FROM outbox WHERE published_at IS NULL')).rows[0]!.n);
  const insert = () => write.query(`INSERT INTO outbox (topic, payload) VALUES ('order.paid', '{}')`);

  it('a notification heard during a round whose claim took its row starts no empty round', async () => {
    const c = counted();
    relay = new Relay(c.db, queues, redis, env.config, testLog);
    relay.start();
    await until('the first round (on connect)', () => c.rounds() >= 1);
    await sleep(300); // listening, quiet
    const before = c.rounds();

    // A's notification starts a round, held before its claim; B commits meanwhile and is heard during it.
    const release = c.hold();
    await insert();
    await until("A's round", () => c.rounds() === before + 1);
    await insert();
    await sleep(300); // B's notification delivered while the round waits
    release();
    await until('A and B published', async () => (await unpublished()) === 0);
    await sleep(500);
    assert.equal(c.rounds(), before + 1, 'the round took A and B: B’s notification must not start another (the old relay ran an empty one)');
    // A notification that arrives after the round, for a row it took, wakes nothing either.
    const b = Number((await write.query<{ id: string }>('SELECT max(id)::text AS id FROM outbox')).rows[0]!.id);
    await write.query(`SELECT pg_notify('outbox', $1)`, [String(b)]);
    await sleep(300);
    assert.equal(c.rounds(), before + 1, 'a late notification for a row the last round took');
  });

  it('between rounds, a notification wakes the relay at once (payload or none)', async () => {
    const c = counted();
    relay = new Relay(c.db, queues, redis, env.config, testLog);
    relay.start();
    await until('the first round (on connect)', () => c.rounds() >= 1);
    await sleep(300);
    await insert();
    await until('published', async () => (await unpublished()) === 0);
    // An older trigger's empty payload still wakes it.
    const before = c.rounds();
    await write.query(`SELECT pg_notify('outbox', '')`);
    await until('a round', () => c.rounds() === before + 1);
  });
});
