import assert from 'node:assert/strict';
import pg from 'pg';
import { PrivatePostgres } from './support/private-pg.js';
import { PrivateRedis, Proc, freePort } from './support/processes.js';
import { waitForDrain, assertConsistent, sleep } from './support/pipeline.js';
import { createProduct } from './support/web.js';
import { RUN_ID, testLog } from './support/env.js';
import { migrate } from '../db/migrate.js';
import { createDb, type Db } from '../db/pool.js';

/**
 * Backing services go away under every Procfile process: PostgreSQL stopped
 * (both databases), read_db alone refusing connections, Redis killed. No
 * process may exit; the web answers within 2 s (503 for what needs the
 * missing service, the rest as usual); afterwards the read model is exact.
 */
describe('outages of PostgreSQL and Redis (integration, private servers)', function () {
  this.timeout(180_000);
  let db: PrivatePostgres;
  let redis: PrivateRedis;
  let env: Record<string, string>;
  let writeDb: Db;
  let readDb: Db;
  let base: string;
  const procs: Proc[] = [];
  const admin = { authorization: `Basic ${Buffer.from('ops:correct horse battery').toString('base64')}` };

  before(async () => {
    db = await PrivatePostgres.create();
    redis = await PrivateRedis.start();
    await migrate(db.url('write_db'), 'write', testLog);
    await migrate(db.url('read_db'), 'read', testLog);
    const port = await freePort();
    env = {
      DATABASE_URL: db.url('write_db'),
      READ_DATABASE_URL: db.url('read_db'),
      REDIS_URL: redis.url,
      QUEUE_PREFIX: `op-test-${RUN_ID}-outage`,
      PORT: String(port),
      LOG_LEVEL: 'warn',
      ADMIN_PASSWORD: 'correct horse battery',
      RECONCILE_INTERVAL_MS: '300',
      RECONCILE_GRACE_MS: '1000',
      STALLED_INTERVAL_MS: '2000',
    };
    base = `http://127.0.0.1:${port}`;
    for (const script of ['api/main.js', 'workers/relay/main.js', 'workers/relay/main.js', 'workers/projector/main.js', 'workers/projector/main.js']) procs.push(new Proc(script, env).start());
    for (let i = 0; i < 100 && (await fetch(`${base}/readyz`).then((r) => r.status, () => 0)) !== 200; i++) await sleep(100);
    writeDb = createDb(env.DATABASE_URL!, { name: 'test', max: 2, log: testLog });
    readDb = createDb(env.READ_DATABASE_URL!, { name: 'test', max: 2, log: testLog });
  });
  after(async () => {
    for (const p of procs) await p.signal('SIGKILL');
    await writeDb?.end();
    await readDb?.end();
    await redis?.kill();
    await db?.destroy();
  });

  function assertAlive(): void {
    const dead = procs.filter((p) => p.child?.exitCode !== null || p.child?.signalCode !== null);
    assert.equal(dead.length, 0, `process(es) exited: ${dead.map((p) => `${p.script}: ${p.output.slice(-1500)}`).join('\n')}`);
  }

  interface Answer {
    what: string;
    status: number;
    ms: number;
  }

  /** One request, timed; status 0 for a connection error or no answer within 10 s. */
  async function timed(what: string, path: string, init: RequestInit = {}): Promise<Answer> {
    const t0 = Date.now();
    const status = await fetch(base + path, { ...init, signal: AbortSignal.timeout(10_000) }).then(
      async (r) => {
        await r.arrayBuffer();
        return r.status;
      },
      () => 0,
    );
    return { what, status, ms: Date.now() - t0 };
  }

  const order = (product: number, customer: number) =>
    timed('POST /orders', '/orders', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ customer_id: customer, items: [{ product_id: product, quantity: 1 }] }) });

  /** Requests of every kind for `seconds`, one round every 200 ms. */
  async function probe(product: number, seconds: number): Promise<Answer[]> {
    const answers: Answer[] = [];
    const end = Date.now() + seconds * 1000;
    for (let i = 0; Date.now() < end; i++) {
      answers.push(
        ...(await Promise.all([
          order(product, 1 + (i % 9)),
          timed('GET /analytics/categories', '/analytics/categories'),
          timed('GET /healthz', '/healthz'),
          timed('GET /readyz', '/readyz'),
          timed('GET /metrics', '/metrics'),
          timed('GET /', '/'),
          timed('GET /admin/queues', '/admin/queues', { headers: admin }),
        ])),
      );
      await sleep(200);
    }
    return answers;
  }

  function statuses(answers: Answer[], what: string): Set<number> {
    return new Set(answers.filter((a) => a.what === what).map((a) => a.status));
  }

  function assertQuick(answers: Answer[]): void {
    const slow = answers.filter((a) => a.ms > 2500 || a.status === 0);
    assert.equal(slow.length, 0, `answers slower than 2 s or none: ${JSON.stringify(slow.slice(0, 10))}`);
    const errors = answers.filter((a) => a.status === 500);
    assert.equal(errors.length, 0, `500s: ${JSON.stringify(errors.slice(0, 10))}`);
  }

  it('PostgreSQL stopped for 30 s: 503 within 2 s for what needs it, every process lives, and the read model is exact after', async () => {
    const product = await createProduct(base, { price: '4.20', stock: 1_000_000 });
    // Mid-burst: relays and workers hold clients inside transactions when the server goes.
    const burst = Promise.all(Array.from({ length: 25 }, async (_, c) => {
      for (let i = 0; i < 40; i++) await order(product, 100 + c);
    }));
    await sleep(700);
    await db.stop('fast');
    await burst;
    const during = await probe(product, 30);
    await db.start();
    await probe(product, 3);
    assertQuick(during);
    assert.deepEqual(statuses(during, 'POST /orders'), new Set([503]));
    assert.deepEqual(statuses(during, 'GET /healthz'), new Set([200]));
    assert.deepEqual(statuses(during, 'GET /readyz'), new Set([503]));
    assert.deepEqual(statuses(during, 'GET /metrics'), new Set([200]));
    assert.deepEqual(statuses(during, 'GET /'), new Set([200]));
    await waitForDrain(writeDb, readDb, 60_000);
    await assertConsistent(writeDb, readDb);
    assertAlive();
  });

  it('read_db alone refusing connections for 15 s: orders keep flowing, analytics answer 503, the read model catches up', async () => {
    const product = await createProduct(base, { price: '1.99', stock: 1_000_000 });
    const admin = new pg.Client({ connectionString: db.url('postgres') });
    await admin.connect();
    try {
      await admin.query('ALTER DATABASE read_db ALLOW_CONNECTIONS false');
      await admin.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'read_db'`);
      const during = await probe(product, 15);
      await admin.query('ALTER DATABASE read_db ALLOW_CONNECTIONS true');
      assertQuick(during);
      assert.deepEqual(statuses(during, 'POST /orders'), new Set([201]));
      assert.deepEqual(statuses(during, 'GET /analytics/categories'), new Set([503]));
      assert.deepEqual(statuses(during, 'GET /'), new Set([200]));
    } finally {
      await admin.query('ALTER DATABASE read_db ALLOW_CONNECTIONS true').catch(() => undefined);
      await admin.end();
    }
    await waitForDrain(writeDb, readDb, 60_000);
    await assertConsistent(writeDb, readDb);
    assertAlive();
  });

  it('Redis killed for 10 s and back empty: orders keep flowing, /metrics, the dashboard and Bull Board answer within 2 s, lost jobs come back', async () => {
    const product = await createProduct(base, { price: '0.35', stock: 1_000_000 });
    await probe(product, 1);
    await redis.kill();
    const during = await probe(product, 10);
    await redis.start();
    assertQuick(during);
    assert.deepEqual(statuses(during, 'POST /orders'), new Set([201]));
    assert.deepEqual(statuses(during, 'GET /metrics'), new Set([200]));
    assert.deepEqual(statuses(during, 'GET /'), new Set([200]));
    assert.deepEqual(statuses(during, 'GET /admin/queues'), new Set([503]));
    await waitForDrain(writeDb, readDb, 60_000);
    await assertConsistent(writeDb, readDb);
    assertAlive();
  });
});
