import assert from 'node:assert/strict';
import pg from 'pg';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { startTestWeb, call, type WebFixture } from './support/web.js';
import { traffic, catalogue } from './support/traffic.js';
import { waitForDrain, assertConsistent, sleep } from './support/pipeline.js';
import { PrivateRedis, Proc } from './support/processes.js';
import { createTestEnv, testLog } from './support/env.js';
import { startRelay, type RelayHandle } from '../workers/relay/start.js';
import { startProjector, type ProjectorHandle } from '../workers/projector/projector.js';
import { applyEvents } from '../workers/projector/apply.js';
import { orderEvent } from '../workers/projector/events.js';
import { createQueues, jobIdFor, toJob } from '../lib/queue.js';
import { createRedis } from '../lib/redis.js';
import { createDb } from '../db/pool.js';
import { relayBatch } from '../workers/relay/relay.js';
import { compareEventIds } from '../db/recompute.js';

describe('pipeline under faults (integration, real PostgreSQL and Redis)', function () {
  this.timeout(180_000);

  describe('in-process relay and worker', () => {
    let f: WebFixture;
    let relay: RelayHandle | undefined;
    let worker: ProjectorHandle | undefined;
    let products: number[];

    beforeEach(async () => {
      f = await startTestWeb({ RECONCILE_INTERVAL_MS: '300', RECONCILE_GRACE_MS: '500' });
      products = await catalogue(f.base);
    });
    afterEach(async () => {
      await relay?.stop();
      await worker?.stop();
      relay = worker = undefined;
      await f.stop();
    });

    it('applies an event delivered to many workers at once exactly once', async () => {
      const o = await call(f.base, 'POST', '/orders', { customer_id: 5, items: [{ product_id: products[1]!, quantity: 3 }] });
      const { rows } = await f.write.query<{ id: number; topic: string; payload: unknown }>('SELECT id, topic, payload FROM outbox WHERE (payload->>\'id\')::int = $1', [o.json.id]);
      const event = { event_id: String(rows[0]!.id), event: orderEvent(rows[0]!.topic, rows[0]!.payload) };
      const pool = createDb(f.env.config.READ_DATABASE_URL, { name: 'test', max: 10, log: testLog });
      try {
        const results = await Promise.all(Array.from({ length: 10 }, () => applyEvents(pool, [event, event])));
        assert.equal(results.filter((r) => r.applied.length === 1).length, 1);
        assert.equal(results.reduce((n, r) => n + r.duplicates.length, 0), 9);
      } finally {
        await pool.end();
      }
      const { rows: v } = await f.read.query('SELECT total_quantity_sold, total_revenue::text, order_count FROM product_sales_view');
      assert.deepEqual(v, [{ total_quantity_sold: 3, total_revenue: '59.97', order_count: 1 }]);
    });

    it('relays and reconciles a lower outbox id that commits after a higher one', async () => {
      relay = await startRelay(f.env.config, testLog);
      worker = await startProjector(f.env.config, testLog);
      const slow = new pg.Client({ connectionString: f.env.config.DATABASE_URL });
      await slow.connect();
      try {
        await slow.query('BEGIN');
        const { rows } = await slow.query<{ r: { event_id: number } }>('SELECT place_order(7, ARRAY[$1::int], ARRAY[2], NULL, NULL) AS r', [products[0]]);
        const lowId = rows[0]!.r.event_id;
        const later = await call(f.base, 'POST', '/orders', { customer_id: 8, items: [{ product_id: products[2]!, quantity: 1 }] });
        const highId = Number(later.headers.get('x-consistency-token'));
        assert.ok(highId > lowId);
        // Let the high id be applied and several reconcile ticks pass while the low id is uncommitted.
        for (let i = 0; i < 50; i++) {
          const { rows: p } = await f.read.query('SELECT 1 FROM processed_events WHERE event_id = $1', [String(highId)]);
          if (p.length > 0) break;
          await sleep(100);
        }
        await sleep(1500);
        const { rows: wm } = await f.read.query<{ w: string }>('SELECT last_event_id::text AS w FROM reconciler_watermark');
        assert.ok(Number(wm[0]!.w) < lowId, `watermark ${wm[0]!.w} must stay below the uncommitted id ${lowId}`);
        await slow.query('COMMIT');
      } finally {
        await slow.end();
      }
      await waitForDrain(f.writeDb, f.readDb, 20_000);
      await assertConsistent(f.writeDb, f.readDb);
    });

    it('loses nothing when the LISTEN connection is terminated (reconnects and catches up without waiting for the poll)', async () => {
      f.env.config.RELAY_POLL_MS = 600_000; // only notifications and reconnect catch-up can move events now
      relay = await startRelay(f.env.config, testLog);
      worker = await startProjector(f.env.config, testLog);
      await traffic([f.base], products, 20, 'listen-a');
      await waitForDrain(f.writeDb, f.readDb, 10_000);
      const killed = await f.write.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'relay-listen' AND datname = current_database()`);
      assert.equal(killed.rowCount, 1);
      await traffic([f.base], products, 20, 'listen-b');
      await waitForDrain(f.writeDb, f.readDb, 15_000);
      await assertConsistent(f.writeDb, f.readDb);
    });

    it('a completed job that removeOnComplete dropped is applied only once when the event comes again', async () => {
      relay = await startRelay(f.env.config, testLog);
      worker = await startProjector(f.env.config, testLog);
      await traffic([f.base], products, 10, 'again');
      await waitForDrain(f.writeDb, f.readDb);
      const queue = new Queue(f.env.config.QUEUE_NAME, { connection: { url: f.env.config.REDIS_URL }, prefix: f.env.config.QUEUE_PREFIX });
      try {
        const { rows } = await f.write.query<{ id: number; topic: string; payload: unknown; created_at: string }>('SELECT id, topic, payload, created_at FROM outbox ORDER BY id');
        // Drop the completed jobs as removeOnComplete eventually does, then deliver every event again.
        await queue.clean(0, 100_000, 'completed');
        await queue.addBulk(rows.map((r) => toJob(f.env.config, r)));
        for (let i = 0; i < 100; i++) {
          const counts = await queue.getJobCounts('waiting', 'active', 'completed');
          if (counts.waiting === 0 && counts.active === 0 && (counts.completed ?? 0) >= Math.min(rows.length, 1000)) break;
          await sleep(100);
        }
        const dup = (await worker.metrics.duplicates.get()).values[0]?.value ?? 0;
        assert.equal(dup, rows.length);
      } finally {
        await queue.close();
      }
      await assertConsistent(f.writeDb, f.readDb);
    });

    it('cancellation reverses an order exactly, whatever the arrival order', async () => {
      const o = await call(f.base, 'POST', '/orders', { customer_id: 99, items: [{ product_id: products[0]!, quantity: 3 }, { product_id: products[1]!, quantity: 1 }] });
      await call(f.base, 'POST', `/orders/${o.json.id}/cancel`);
      const { rows } = await f.write.query<{ id: number; topic: string; payload: unknown }>('SELECT id, topic, payload FROM outbox ORDER BY id DESC');
      // The cancellation arrives first.
      for (const r of rows) await applyEvents(f.readDb, [{ event_id: String(r.id), event: orderEvent(r.topic, r.payload) }]);
      const { rows: views } = await f.read.query(`SELECT (SELECT sum(total_revenue)::text FROM product_sales_view) AS p, (SELECT sum(total_orders) FROM category_metrics_view)::int AS c,
        (SELECT total_spent::text || '/' || order_count FROM customer_ltv_view WHERE customer_id = 99) AS cust, (SELECT sum(total_orders)::int FROM hourly_sales_view) AS h`);
      assert.deepEqual(views[0], { p: '0.00', c: 0, cust: '0.00/0', h: 0 });
      // last_order_date counts cancelled orders too.
      const { rows: last } = await f.read.query('SELECT 1 FROM customer_ltv_view WHERE customer_id = 99 AND last_order_date = $1::timestamp', [o.json.created_at]);
      assert.equal(last.length, 1);
      await assertConsistent(f.writeDb, f.readDb);
    });
  });

  describe('Procfile processes killed with SIGKILL, Redis flushed and restarted empty', () => {
    let f: WebFixture;
    let redis: PrivateRedis;
    const procs: Proc[] = [];

    before(async () => {
      redis = await PrivateRedis.start();
      f = await startTestWeb({ REDIS_URL: redis.url, RECONCILE_INTERVAL_MS: '500', RECONCILE_GRACE_MS: '1500', STALLED_INTERVAL_MS: '2000' });
    });
    after(async () => {
      for (const p of procs) await p.signal('SIGKILL');
      await f.stop();
      await redis.kill();
    });

    /** Drained, or an error carrying what the processes said at warn and above (their lines say why). */
    async function drained(): Promise<void> {
      try {
        await waitForDrain(f.writeDb, f.readDb, 90_000);
      } catch (err) {
        const said = procs.flatMap((p) => p.output.split('\n').filter((l) => /"level":("?(warn|error|fatal)"?|40|50|60)/.test(l)).slice(-5).map((l) => `${p.script}: ${l.slice(0, 400)}`));
        const queue = new Queue(f.env.config.QUEUE_NAME, { connection: { url: redis.url }, prefix: f.env.config.QUEUE_PREFIX });
        try {
          const ids = await compareEventIds(f.writeDb, f.readDb);
          const states = await Promise.all(ids.unprocessed.slice(0, 5).map(async (id) => `${id}: ${(await (await queue.getJob(jobIdFor(id)))?.getState()) ?? 'no job'}`));
          said.push(`queue ${JSON.stringify(await queue.getJobCounts())}; unprocessed jobs ${states.join(', ')}`);
        } finally {
          await queue.close();
        }
        throw new Error(`${(err as Error).message}\n${said.join('\n')}`, { cause: err });
      }
    }

    function spawnProc(script: string): Proc {
      const p = new Proc(script, { ...f.env.env, REDIS_URL: redis.url, LOG_LEVEL: 'info', RECONCILE_INTERVAL_MS: '500', RECONCILE_GRACE_MS: '1500', STALLED_INTERVAL_MS: '2000' }).start();
      procs.push(p);
      return p;
    }

    it('kill -9 of relays and workers mid-burst loses and doubles nothing', async () => {
      const products = await catalogue(f.base);
      let relays = [spawnProc('workers/relay/main.js'), spawnProc('workers/relay/main.js')];
      let workers = [spawnProc('workers/projector/main.js'), spawnProc('workers/projector/main.js')];
      await Promise.all([...relays, ...workers].map((p) => p.waitFor(/"msg":"(worker started|listening for outbox notifications)"/)));
      const load = traffic([f.base], products, 300, 'kill');
      for (let round = 0; round < 3; round++) {
        await sleep(400);
        await relays[round % 2]!.signal('SIGKILL');
        await workers[round % 2]!.signal('SIGKILL');
        await sleep(200);
        relays = [...relays, spawnProc('workers/relay/main.js')];
        workers = [...workers, spawnProc('workers/projector/main.js')];
      }
      await load;
      await drained();
      await assertConsistent(f.writeDb, f.readDb);
    });

    it('Redis FLUSHALL mid-burst, then Redis killed and restarted empty: the reconciler re-enqueues what was lost', async () => {
      const products = await catalogue(f.base);
      // Stop every worker so published jobs pile up in Redis, where the flush will lose them.
      for (const p of procs) if (p.script.includes('projector')) await p.signal('SIGKILL');
      const admin = new Redis(redis.url, { maxRetriesPerRequest: 1 });
      admin.on('error', () => undefined); // this test kills the server under it
      try {
        const load = traffic([f.base], products, 200, 'flush');
        await sleep(1000);
        const waiting = await admin.keys(`${f.env.config.QUEUE_PREFIX}:*`);
        assert.ok(waiting.length > 0, 'jobs are waiting in Redis before the flush');
        await admin.flushall(); // the private redis-server of this test, never the machine's
        await sleep(500);
        await redis.kill();
        await sleep(1000);
        await redis.start();
        await load;
      } finally {
        admin.disconnect();
      }
      spawnProc('workers/projector/main.js');
      spawnProc('workers/projector/main.js');
      await drained();
      await assertConsistent(f.writeDb, f.readDb);
      // The flush lost jobs that were already marked published: only the reconciler brings those back.
      assert.ok(procs.some((p) => /re-enqueued events that Redis lost/.test(p.output)), 'the reconciler re-enqueued lost events');
    });

    it('SIGTERM stops a relay and a worker cleanly within 10 s', async () => {
      const r = spawnProc('workers/relay/main.js');
      const w = spawnProc('workers/projector/main.js');
      await Promise.all([r.waitFor(/listening for outbox/), w.waitFor(/worker started/)]);
      const [rs, ws] = await Promise.all([r.signal('SIGTERM'), w.signal('SIGTERM')]);
      assert.equal(rs.code, 0, r.output.slice(-2000));
      assert.equal(ws.code, 0, w.output.slice(-2000));
      assert.ok(rs.ms < 10_000 && ws.ms < 10_000, `took ${rs.ms} and ${ws.ms} ms`);
    });
  });

  describe('Redis outages and the polling backstop', () => {
    let f: WebFixture;
    let redis: PrivateRedis;
    let relay: RelayHandle | undefined;
    let worker: ProjectorHandle | undefined;

    beforeEach(async () => {
      redis = await PrivateRedis.start();
      f = await startTestWeb({ REDIS_URL: redis.url, RECONCILE_INTERVAL_MS: '300', RECONCILE_GRACE_MS: '500' });
    });
    afterEach(async () => {
      await relay?.stop();
      await worker?.stop();
      relay = worker = undefined;
      await f.stop();
      await redis.kill();
    });

    it('while Redis is down nothing is marked published, and everything flows once it is back', async () => {
      relay = await startRelay(f.env.config, testLog);
      worker = await startProjector(f.env.config, testLog);
      const products = await catalogue(f.base);
      await redis.kill();
      await traffic([f.base], products, 20, 'down');
      await sleep(1500);
      const { rows } = await f.write.query<{ n: string }>('SELECT count(*)::text AS n FROM outbox WHERE published_at IS NOT NULL');
      assert.equal(rows[0]!.n, '0');
      await redis.start();
      await waitForDrain(f.writeDb, f.readDb, 30_000);
      await assertConsistent(f.writeDb, f.readDb);
    });

    it('events still flow by polling when no notification ever arrives', async () => {
      await f.write.query('DROP TRIGGER outbox_notify ON outbox');
      f.env.config.RELAY_POLL_MS = 200;
      relay = await startRelay(f.env.config, testLog);
      worker = await startProjector(f.env.config, testLog);
      await traffic([f.base], await catalogue(f.base), 20, 'poll');
      await waitForDrain(f.writeDb, f.readDb, 10_000);
      await assertConsistent(f.writeDb, f.readDb);
    });

    it('an event that cannot apply ends in the failed set after its attempts, and replay-failed sends it back', async () => {
      f.env.config.JOB_ATTEMPTS = 2;
      f.env.config.JOB_BACKOFF_MS = 10;
      worker = await startProjector(f.env.config, testLog);
      const queue = new Queue(f.env.config.QUEUE_NAME, { connection: { url: redis.url }, prefix: f.env.config.QUEUE_PREFIX });
      queue.on('error', () => undefined);
      try {
        await queue.add('order.created', { event_id: '1', topic: 'order.created', payload: { id: 1 }, created_at: '2026-01-01T00:00:00Z' }, { jobId: jobIdFor(1), attempts: 2 });
        for (let i = 0; i < 50 && (await queue.getJobCounts('failed')).failed === 0; i++) await sleep(100);
        assert.equal((await queue.getJobCounts('failed')).failed, 1);
        const job = await queue.getJob(jobIdFor(1));
        assert.match(job?.failedReason ?? '', /order\.created payload/);
        const firstTry = job!.processedOn!;
        const out = await new Proc('scripts/replay-failed.js', { ...f.env.env, REDIS_URL: redis.url }).run();
        assert.match(out, /replayed 1 failed job/);
        // The worker takes it again (and, the payload being what it is, fails it again).
        let again = firstTry;
        for (let i = 0; i < 50 && again === firstTry; i++) {
          await sleep(100);
          again = (await queue.getJob(jobIdFor(1)))?.processedOn ?? firstTry;
        }
        assert.ok(again > firstTry, 'the replayed job was processed again');
      } finally {
        await queue.close();
      }
    });

    it('warns at start when Redis may evict keys (maxmemory-policy is not noeviction)', async () => {
      const admin = new Redis(redis.url);
      await admin.config('SET', 'maxmemory-policy', 'allkeys-lru');
      admin.disconnect();
      const p = new Proc('workers/relay/main.js', { ...f.env.env, REDIS_URL: redis.url, LOG_LEVEL: 'info' }).start();
      try {
        await p.waitFor(/maxmemory-policy should be noeviction/);
      } finally {
        await p.signal('SIGKILL');
      }
    });
  });

  describe('known traps', () => {
    it('job ids never contain ":" nor look like integers, which BullMQ refuses', async () => {
      assert.equal(jobIdFor(42), 'evt-42');
      assert.throws(() => jobIdFor('4:2'));
      const queue = new Queue(`trap-${Date.now()}`, { connection: { url: process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379' }, prefix: 'op-test-trap' });
      try {
        await assert.rejects(queue.add('x', {}, { jobId: 'a:b' }), /cannot contain :/);
        await assert.rejects(queue.add('x', {}, { jobId: '42' }), /cannot be integers/);
        await queue.obliterate({ force: true });
      } finally {
        await queue.close();
      }
    });

    it('a long published outbox does not slow the relay: dead index entries are skipped, not rescanned', async () => {
      const env = await createTestEnv();
      const pool = new pg.Pool({ connectionString: env.config.DATABASE_URL, max: 1, application_name: 'test-relay' });
      const db = createDb(env.config.DATABASE_URL, { name: 'test-relay', max: 1, log: testLog });
      const redis = createRedis(env.config, 'producer', testLog, 'test-relay');
      const queues = createQueues(env.config, redis);
      const queue = queues.all[0]!;
      try {
        // Events trickle in and are relayed a few at a time, as under steady load.
        let relayed = 0;
        for (let i = 0; i < 100; i++) {
          await pool.query(`INSERT INTO outbox (topic, payload) SELECT 'test', '{}'::jsonb FROM generate_series(1, 50)`);
          relayed += await relayBatch(db, queues, redis, env.config);
        }
        assert.equal(relayed, 5000);
        assert.equal(await queue.count(), 5000 / env.config.RELAY_JOB_EVENTS, `jobs of ${env.config.RELAY_JOB_EVENTS} events`);
        // Every published row left a dead entry in outbox_unpublished_idx and a dead row version (no
        // VACUUM here). A bitmap scan of that index, or a plan cached while the table was small (a
        // sequential scan), visits the heap pages of all 5,000 on every claim; an index scan in id order
        // marks the dead entries once and then skips them: a claim reads the index's pages and its own
        // rows' pages only. Counted by EXPLAIN (ANALYZE, BUFFERS) of the relay's own claim, rolled back
        // (the statistics views flush late and would make the count a matter of timing).
        for (let i = 0; i < 5; i++) {
          await pool.query(`INSERT INTO outbox (topic, payload) VALUES ('test', '{}')`);
          assert.equal(await relayBatch(db, queues, redis, env.config), 1);
        }
        await pool.query(`INSERT INTO outbox (topic, payload) VALUES ('test', '{}')`);
        const c = await pool.connect();
        let plan: unknown;
        try {
          // Twice, rolled back each time: the first also reads the catalogues to plan the function's statement.
          for (let i = 0; i < 2; i++) {
            await c.query('BEGIN');
            plan = (await c.query(`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT * FROM claim_outbox(${env.config.RELAY_BATCH_SIZE})`)).rows[0]['QUERY PLAN'][0].Plan;
            await c.query('ROLLBACK');
          }
        } finally {
          await c.query('ROLLBACK');
          c.release();
        }
        const p = plan as { 'Actual Rows': number; 'Shared Hit Blocks': number; 'Shared Read Blocks': number };
        assert.equal(p['Actual Rows'], 1);
        const visited = p['Shared Hit Blocks'] + p['Shared Read Blocks'];
        assert.ok(visited <= 40, `one claim of one event over 5,000 published ones read ${visited} pages`);
      } finally {
        await queue.close();
        redis.disconnect();
        await pool.end();
        await db.end();
      }
    });
  });
});
