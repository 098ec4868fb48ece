import assert from 'node:assert/strict';
import pg from 'pg';
import { startTestWeb, call, createProduct, type WebFixture } from './support/web.js';
import { sleep, waitForDrain } from './support/pipeline.js';
import { Proc } from './support/processes.js';
import { testLog, PG_ADMIN_URL } from './support/env.js';
import { startRelay, type RelayHandle } from '../workers/relay/start.js';
import { startProjector, type ProjectorHandle } from '../workers/projector/projector.js';
import { createQueues, jobIdFor, type EventQueue, type EventQueues } from '../lib/queue.js';
import { createRedis, type RedisClient } from '../lib/redis.js';
import { parkEvent, replayDeadLetter } from '../workers/dead-letters.js';
import { parkDeadLetter, recordDeadLetter } from '../db/dead-letters.js';
import { prune } from '../db/retention.js';
import { rebuild } from '../db/rebuild.js';

/**
 * Dead letters against retention, rebuild, replay and the projector's own
 * inserts. Each of these found a hole in an adversarial review (an event both
 * applied and parked or failed, or never applied and not listed, or an outage
 * condemning every event in flight); each failed before its fix.
 */
describe('dead letters, retention and rebuild together (integration)', function () {
  this.timeout(120_000);
  let f: WebFixture;
  let relay: RelayHandle | undefined;
  let worker: ProjectorHandle | undefined;
  let redis: RedisClient;
  let queues: EventQueues;
  let queue: EventQueue;
  const ops = () => ({ readDb: f.readDb, queues, config: f.env.config });

  beforeEach(async () => {
    f = await startTestWeb({ RECONCILE_INTERVAL_MS: '200', RECONCILE_GRACE_MS: '500', JOB_BACKOFF_MS: '50', CONSISTENCY_WAIT_MS: '1000' });
    redis = createRedis(f.env.config, 'producer', testLog, 'test');
    queues = createQueues(f.env.config, redis);
    queue = queues.all[0]!;
    relay = await startRelay(f.env.config, testLog);
    worker = await startProjector(f.env.config, testLog);
  });
  afterEach(async () => {
    await relay?.stop();
    await worker?.stop();
    relay = worker = undefined;
    await queue.close();
    redis.disconnect();
    await f.stop();
  });

  const one = async <T>(sql: string, params: unknown[] = [], pool: pg.Pool = f.read) => (await pool.query(sql, params)).rows[0] as T;
  const maxId = async () => Number((await one<{ m: string }>('SELECT max(id)::text AS m FROM outbox', [], f.write)).m);
  const watermark = async () => Number((await one<{ w: string }>('SELECT last_event_id::text AS w FROM reconciler_watermark')).w);
  const floor = async () => Number((await one<{ f: string }>('SELECT event_id::text AS f FROM processed_floor')).f);
  const until = async (what: string, cond: () => Promise<boolean>, ms = 15_000) => {
    const t = Date.now();
    while (Date.now() - t < ms) {
      if (await cond()) return;
      await sleep(50);
    }
    throw new Error(`timed out: ${what}`);
  };
  const verify = async (): Promise<{ code: number; out: string }> => {
    const p = new Proc('scripts/verify.js', f.env.env, ['--wait', '10']);
    try {
      await p.run();
      return { code: 0, out: p.output };
    } catch {
      return { code: 1, out: p.output };
    }
  };
  /** A real order whose event read_db refuses every time (as in the project's own poison test): its id, once it is a dead letter. */
  const poison = async (): Promise<{ e: number; x: number }> => {
    const a = await createProduct(f.base, { price: '1.00', stock: 1000 });
    const x = await createProduct(f.base, { price: '9.99', stock: 10 });
    await f.read.query(`ALTER TABLE product_sales_view ADD CONSTRAINT test_no_x CHECK (product_id <> ${x})`);
    await call(f.base, 'POST', '/orders', { customer_id: 1, items: [{ product_id: a, quantity: 1 }] });
    const r = await call(f.base, 'POST', '/orders', { customer_id: 50, items: [{ product_id: x, quantity: 1 }] });
    await call(f.base, 'POST', '/orders', { customer_id: 2, items: [{ product_id: a, quantity: 1 }] });
    const e = Number(r.headers.get('x-consistency-token'));
    await until('dead letter recorded', async () => (await f.read.query('SELECT 1 FROM dead_letters WHERE event_id = $1', [String(e)])).rows.length > 0);
    return { e, x };
  };

  it('a parked event pruned below the floor and then rebuilt counts once: verify passes', async () => {
    const { e } = await poison();
    assert.equal(await parkEvent(ops(), String(e), 'operator decision'), 'parked');
    await f.read.query('ALTER TABLE product_sales_view DROP CONSTRAINT test_no_x');
    await waitForDrain(f.writeDb, f.readDb, 15_000);
    const top = await maxId();
    await until('watermark at the top', async () => (await watermark()) >= top);
    const v0 = await verify();
    assert.equal(v0.code, 0, v0.out);
    const rows = (await f.read.query<{ id: string; at: Date }>('SELECT event_id::bigint::text AS id, processed_at AS at FROM processed_events ORDER BY event_id::bigint')).rows;
    const pr = await prune({ writeDb: f.writeDb, readDb: f.readDb, keepMs: 0 });
    assert.ok(pr.floor >= e, `floor ${pr.floor} passed the parked event ${e}`);
    // The floor's time: that of the highest row at or below it, whether or not the floor's own id had a row.
    const below = rows.filter((r) => Number(r.id) <= pr.floor).at(-1)!;
    const floorAt = (await f.read.query<{ at: Date }>('SELECT applied_at AS at FROM processed_floor')).rows[0]!.at;
    assert.equal(floorAt?.getTime(), below.at.getTime(), `the floor ${pr.floor} has the time of event ${below.id}`);
    const v1 = await verify();
    assert.equal(v1.code, 0, v1.out);
    await rebuild(f.env.config.DATABASE_URL, f.env.config.READ_DATABASE_URL);
    const v2 = await verify();
    await rebuild(f.env.config.DATABASE_URL, f.env.config.READ_DATABASE_URL);
    const v3 = await verify();
    assert.equal(v2.code, 0, 'verify should accept a read model that rebuild just recomputed');
    assert.equal(v3.code, 0);
  });

  it('a dead letter recorded while a replay of its event is being applied does not outlive the event: tokens, verify and prune go on', async () => {
    const { e, x } = await poison();
    // Suppose the dead letter could not be recorded when the job failed (read_db away for that statement): the job is
    // in the failed set and nothing is in dead_letters. Simulated by deleting the row.
    await f.read.query('DELETE FROM dead_letters WHERE event_id = $1', [String(e)]);
    await f.read.query('ALTER TABLE product_sales_view DROP CONSTRAINT test_no_x'); // the fix
    // A session that holds the view row of product x for a moment (any concurrent batch touching x does the same).
    const holder = new pg.Client({ connectionString: f.env.config.READ_DATABASE_URL });
    await holder.connect();
    await holder.query('BEGIN');
    await holder.query('INSERT INTO product_sales_view (product_id) VALUES ($1)', [x]);
    // The operator retries the failed job (replay --all does this for every failed job) ...
    await (await queue.getJob(jobIdFor(e)))!.retry('failed');
    // ... a worker takes it: its statement inserts e (deleting no dead letter: there is none yet), then waits on x's row.
    await until('worker waiting on the row lock', async () => (await f.read.query(`SELECT 1 FROM pg_stat_activity WHERE application_name = 'worker' AND wait_event_type = 'Lock'`)).rows.length > 0);
    // Meanwhile the reconciler, which saw e unresolved and its job in the failed set a moment earlier, records it
    // (Reconciler.recordFailed -> recordDeadLetter): processed_events does not show e yet, so the row goes in.
    // (It waits for the worker's batch to end: its lock conflicts with the batch's insert into processed_events.)
    const recording = recordDeadLetter(f.readDb, { event_id: String(e), topic: 'order.created', payload: {}, error: 'failed (no reason recorded)', attempts: 8 });
    await sleep(300);
    await holder.query('ROLLBACK');
    await holder.end();
    await recording;
    await until('e applied', async () => (await f.read.query('SELECT 1 FROM processed_events WHERE event_id = $1', [String(e)])).rows.length > 0);
    await sleep(500);
    assert.equal(await one('SELECT 1 FROM dead_letters WHERE event_id = $1', [String(e)]), undefined, 'applied, so not a dead letter');
    assert.equal(await parkDeadLetter(f.readDb, String(e), 'cannot park'), 'processed');
    assert.equal(await replayDeadLetter(ops(), String(e)), 'not_found');
    const still = (await f.read.query('SELECT 1 FROM dead_letters WHERE event_id = $1 AND parked_at IS NULL', [String(e)])).rows.length > 0;
    const v = await verify();
    assert.equal(v.code, 0, v.out);
    const p = await createProduct(f.base, { price: '3.00', stock: 10 });
    const o = await call(f.base, 'POST', '/orders', { customer_id: 99, items: [{ product_id: p, quantity: 1 }] });
    const t = o.headers.get('x-consistency-token')!;
    await until('new order applied', async () => (await f.read.query('SELECT 1 FROM processed_events WHERE event_id = $1', [t])).rows.length > 0);
    const ryw = await call(f.base, 'GET', '/analytics/customers/99', undefined, { 'X-Consistency-Token': t });
    assert.ok(!still, 'the dead letter of an applied event should not stay forever');
    assert.equal(ryw.status, 200);
  });

  it('a replay racing prune: the event is applied (or stays a visible decision), never stranded below the floor', async () => {
    const { e } = await poison();
    assert.equal(await parkEvent(ops(), String(e), 'decided'), 'parked');
    await f.read.query('ALTER TABLE product_sales_view DROP CONSTRAINT test_no_x'); // fixed: the operator wants it applied after all
    await waitForDrain(f.writeDb, f.readDb, 15_000);
    const top = await maxId();
    await until('watermark at the top', async () => (await watermark()) >= top);
    await worker!.stop();
    worker = undefined;
    // Widen prune's window between reading the lowest unparked dead letter and raising the floor
    // (its next query, on write_db, waits here; in production it is just the time between the statements).
    const blocker = new pg.Client({ connectionString: f.env.config.DATABASE_URL });
    await blocker.connect();
    await blocker.query('BEGIN');
    await blocker.query('LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE');
    const pruning = prune({ writeDb: f.writeDb, readDb: f.readDb, keepMs: 0 });
    await sleep(500); // prune has read: no unparked dead letter
    const r = await replayDeadLetter(ops(), String(e)); // reads the floor (below e), unparks, enqueues
    assert.equal(r, 'requeued');
    await blocker.query('COMMIT');
    await blocker.end();
    const pr = await pruning;
    assert.ok(pr.floor < e, `the floor (${pr.floor}) stays below the replayed event ${e}`);
    worker = await startProjector(f.env.config, testLog);
    await until('the replayed event applied', async () => (await f.read.query('SELECT 1 FROM processed_events WHERE event_id = $1', [String(e)])).rows.length > 0);
    assert.equal(await one('SELECT 1 FROM dead_letters WHERE event_id = $1', [String(e)]), undefined);
    const v = await verify();
    assert.equal(v.code, 0, v.out);
    const p = await createProduct(f.base, { price: '3.00', stock: 10 });
    const o = await call(f.base, 'POST', '/orders', { customer_id: 99, items: [{ product_id: p, quantity: 1 }] });
    const t = o.headers.get('x-consistency-token')!;
    await until('new order applied', async () => (await f.read.query('SELECT 1 FROM processed_events WHERE event_id = $1', [t])).rows.length > 0);
    assert.equal((await call(f.base, 'GET', '/analytics/customers/99', undefined, { 'X-Consistency-Token': t })).status, 200);
    assert.ok((await prune({ writeDb: f.writeDb, readDb: f.readDb, keepMs: 0 })).floor >= e, 'prune goes on past it');
    assert.equal(await floor() >= e, true);
  });

  it('read_db read-only for a moment (a failover) condemns nothing: every event of that moment is applied after', async () => {
    const a = await createProduct(f.base, { price: '1.00', stock: 1000 });
    const admin = new pg.Client({ connectionString: PG_ADMIN_URL });
    await admin.connect();
    try {
      await admin.query(`ALTER DATABASE ${f.env.readDb} SET default_transaction_read_only = on`);
      await admin.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'worker'`, [f.env.readDb]);
      const tokens: string[] = [];
      for (let i = 0; i < 5; i++) tokens.push((await call(f.base, 'POST', '/orders', { customer_id: 10 + i, items: [{ product_id: a, quantity: 1 }] })).headers.get('x-consistency-token')!);
      await sleep(2000);
      await admin.query(`ALTER DATABASE ${f.env.readDb} RESET default_transaction_read_only`);
      await admin.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() AND application_name IN ('worker', 'relay-reconciler')`, [f.env.readDb]);
      await sleep(5000); // read_db is writable again; give the pipeline time
      const applied = Number((await one<{ n: string }>('SELECT count(*)::text AS n FROM processed_events WHERE event_id = ANY ($1::text[])', [tokens])).n);
      const dead = Number((await one<{ n: string }>('SELECT count(*)::text AS n FROM dead_letters WHERE event_id = ANY ($1::text[])', [tokens])).n);
      const failed = await queue.getJobCounts('failed');
      assert.equal(applied, 5, 'an outage must not need an operator to replay events');
      assert.equal(dead, 0);
      assert.equal(failed.failed, 0);
    } finally {
      await admin.query(`ALTER DATABASE ${f.env.readDb} RESET default_transaction_read_only`).catch(() => undefined);
      await admin.end();
    }
  });
});
