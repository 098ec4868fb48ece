import assert from 'node:assert/strict';
import http from 'node:http';
import { Queue } from 'bullmq';
import { startTestWeb, call, createProduct, type WebFixture } from './support/web.js';
import { waitForDrain, assertConsistent, sleep } from './support/pipeline.js';
import { Proc, freePort } from './support/processes.js';
import { createTestEnv, testLog } from './support/env.js';
import { startRelay, type RelayHandle } from '../workers/relay/start.js';
import { startProjector, type ProjectorHandle } from '../workers/projector/projector.js';
import { toJob } from '../lib/queue.js';
import { prune } from '../db/retention.js';
import pg from 'pg';

/** POST a JSON body on a keep-alive agent; the status, or 'error' when the connection failed. */
function post(agent: http.Agent, port: number, path: string, body: unknown): Promise<{ status: number | 'error'; connection?: string; code?: string }> {
  const text = JSON.stringify(body);
  return new Promise((resolve) => {
    const req = http.request({ host: '127.0.0.1', port, path, method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) } }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, connection: res.headers.connection, code: undefined }));
      res.on('error', () => resolve({ status: 'error' }));
    });
    req.on('error', () => resolve({ status: 'error' }));
    req.end(text);
  });
}

describe('life cycle under load (integration)', function () {
  this.timeout(120_000);

  it('SIGHUP (its terminal closed), once running or still loading: a graceful stop, exit 0, as on SIGTERM', async () => {
    const env = await createTestEnv();
    const port = await freePort();
    const web = new Proc('api/main.js', { ...env.env, PORT: String(port), LOG_LEVEL: 'info' }).start();
    for (let i = 0; i < 100 && (await fetch(`http://127.0.0.1:${port}/readyz`).then((r) => r.status, () => 0)) !== 200; i++) await sleep(100);
    const { code } = await web.signal('SIGHUP');
    assert.equal(code, 0, web.output.slice(-1000));
    assert.match(web.output, /"signal":"SIGHUP".*"msg":"stopping"/);
    const loading = new Proc('workers/relay/main.js', env.env).start();
    await sleep(150);
    assert.equal((await loading.signal('SIGHUP')).code, 0, loading.output.slice(-500));
  });

  it('SIGTERM while a process is still loading its modules: exit 0, not killed by the signal', async () => {
    const env = await createTestEnv();
    for (const script of ['api/main.js', 'workers/relay/main.js', 'workers/projector/main.js']) {
      for (const delay of [150, 300]) {
        const p = new Proc(script, { ...env.env, PORT: String(await freePort()) }).start();
        await sleep(delay);
        const { code } = await p.signal('SIGTERM');
        assert.equal(code, 0, `${script} after SIGTERM at ${delay} ms: ${p.output.slice(-500)}`);
      }
    }
  });

  it('SIGTERM to a busy web: new requests refused, those in flight answered with Connection: close, exit 0 within 10 s, nothing committed unanswered', async () => {
    const env = await createTestEnv();
    const port = await freePort();
    const web = new Proc('api/main.js', { ...env.env, PORT: String(port), LOG_LEVEL: 'warn' }).start();
    const base = `http://127.0.0.1:${port}`;
    for (let i = 0; i < 100 && (await fetch(`${base}/healthz`).then((r) => r.status, () => 0)) !== 200; i++) await sleep(50);
    const product = await createProduct(base, { price: '1.00', stock: 10_000_000 });
    const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
    const results: { customer: number; status: number | 'error'; connection?: string; sentAt: number }[] = [];
    let next = 0;
    let signalledAt = Infinity;
    let stop = false;
    const loops = Array.from({ length: 16 }, async () => {
      while (!stop) {
        const customer = ++next;
        const sentAt = Date.now();
        const r = await post(agent, port, '/orders', { customer_id: customer, items: [{ product_id: product, quantity: 1 }] });
        results.push({ customer, ...r, sentAt });
        if (r.status !== 201) await sleep(5);
      }
    });
    await sleep(1000);
    signalledAt = Date.now();
    const { code, ms } = await web.signal('SIGTERM');
    stop = true;
    await Promise.all(loops);
    agent.destroy();
    assert.equal(code, 0, web.output.slice(-2000));
    assert.ok(ms < 10_000, `stopped in ${ms} ms`);

    const check = new pg.Client({ connectionString: env.config.DATABASE_URL });
    await check.connect();
    try {
      const { rows } = await check.query<{ customer_id: number }>('SELECT customer_id FROM orders');
      const committed = new Set(rows.map((r) => r.customer_id));
      const created = results.filter((r) => r.status === 201);
      assert.ok(created.length > 50, `load ran (${created.length} orders)`);
      for (const r of results) {
        // A 201 is committed; anything else (503 shutting_down, a connection error) is not.
        assert.equal(committed.has(r.customer), r.status === 201, `customer ${r.customer}: answer ${r.status}, committed ${committed.has(r.customer)}`);
      }
      assert.equal(committed.size, created.length);
      // No new work after the signal: only requests already in flight (one per connection) may still have been placed.
      const late = created.filter((r) => r.sentAt > signalledAt + 200);
      assert.equal(late.length, 0, `${late.length} orders sent after SIGTERM were placed`);
      assert.ok(results.some((r) => r.status === 503 || r.status === 'error' || r.connection === 'close'), 'the stop was seen by clients');
    } finally {
      await check.end();
    }
  });

  describe('retention', () => {
    let f: WebFixture;
    let relay: RelayHandle | undefined;
    let worker: ProjectorHandle | undefined;

    beforeEach(async () => {
      f = await startTestWeb({ RECONCILE_INTERVAL_MS: '100', RECONCILE_GRACE_MS: '300' });
    });
    afterEach(async () => {
      await relay?.stop();
      await worker?.stop();
      relay = worker = undefined;
      await f.stop();
    });

    it('pruning under load keeps the read model exact, and pruned events delivered again are skipped', async () => {
      relay = await startRelay(f.env.config, testLog);
      worker = await startProjector(f.env.config, testLog);
      const [a, b] = [await createProduct(f.base, { price: '3.33', stock: 1_000_000 }), await createProduct(f.base, { price: '0.10', stock: 1_000_000 })];
      let stop = false;
      const load = (async () => {
        for (let i = 0; !stop; i++) {
          const o = await call(f.base, 'POST', '/orders', { customer_id: 1 + (i % 13), items: [{ product_id: a, quantity: 1 + (i % 3) }, { product_id: b, quantity: 2 }] });
          if (i % 5 === 0) await call(f.base, 'POST', `/orders/${o.json.id}/cancel`);
        }
      })();
      // Every event as it was written, to deliver again once pruned.
      const all: { id: number; topic: string; payload: unknown; created_at: string }[] = [];
      let pruned = 0;
      for (let round = 0; round < 15; round++) {
        await sleep(150);
        const { rows } = await f.write.query<{ id: number; topic: string; payload: unknown; created_at: string }>('SELECT id, topic, payload, created_at FROM outbox WHERE id > $1 ORDER BY id', [all.at(-1)?.id ?? 0]);
        all.push(...rows);
        pruned += (await prune({ writeDb: f.writeDb, readDb: f.readDb, keepMs: 0 })).outbox;
      }
      stop = true;
      await load;
      const { rows: rest } = await f.write.query<{ id: number; topic: string; payload: unknown; created_at: string }>('SELECT id, topic, payload, created_at FROM outbox WHERE id > $1 ORDER BY id', [all.at(-1)?.id ?? 0]);
      all.push(...rest);
      assert.ok(pruned > 100, `pruned ${pruned} of ${all.length} events while orders flowed`);
      await waitForDrain(f.writeDb, f.readDb, 20_000);
      await assertConsistent(f.writeDb, f.readDb);
      assert.match(await new Proc('scripts/verify.js', f.env.env).run(), /verify: OK/);

      // Every event again, pruned ones included (completed jobs are gone, so BullMQ takes them).
      const queue = new Queue(f.env.config.QUEUE_NAME, { connection: { url: f.env.config.REDIS_URL }, prefix: f.env.config.QUEUE_PREFIX });
      try {
        await queue.clean(0, 1_000_000, 'completed');
        const before = (await worker.metrics.duplicates.get()).values[0]?.value ?? 0;
        await queue.addBulk(all.map((r) => toJob(f.env.config, r)));
        for (let i = 0; i < 200; i++) {
          if (((await worker.metrics.duplicates.get()).values[0]?.value ?? 0) - before >= all.length) break;
          await sleep(50);
        }
        assert.equal(((await worker.metrics.duplicates.get()).values[0]?.value ?? 0) - before, all.length);
      } finally {
        await queue.close();
      }
      await assertConsistent(f.writeDb, f.readDb);
    });
  });
});
