import assert from 'node:assert/strict';
import { startTestWeb, call, createProduct, type WebFixture } from './support/web.js';
import { waitForDrain, assertConsistent, sleep } from './support/pipeline.js';
import { PrivateRedis, Proc } from './support/processes.js';
import { testLog } from './support/env.js';
import { startRelay, type RelayHandle } from '../workers/relay/start.js';
import { startProjector, type ProjectorHandle } from '../workers/projector/projector.js';
import { rebuild } from '../db/rebuild.js';
import { createDb } from '../db/pool.js';
import { withNames } from '../workers/projector/projections/product-sales.js';

describe('read side and operations (integration)', function () {
  this.timeout(120_000);
  let redis: PrivateRedis;
  let f: WebFixture;
  let relay: RelayHandle;
  let worker: ProjectorHandle;
  let tools: number;
  let toys: number;

  before(async () => {
    redis = await PrivateRedis.start();
    f = await startTestWeb({ REDIS_URL: redis.url, ADMIN_PASSWORD: 'correct horse battery', CONSISTENCY_WAIT_MS: '3000' });
    relay = await startRelay(f.env.config, testLog);
    worker = await startProjector(f.env.config, testLog);
    tools = await createProduct(f.base, { name: 'Hammer', category: 'tools', price: '19.99', stock: 1000 });
    toys = await createProduct(f.base, { name: 'Marble', category: 'toys', price: '0.10', stock: 1000 });
    // A known data set: customer 1 buys twice, customer 2 once and cancels.
    await call(f.base, 'POST', '/orders', { customer_id: 1, items: [{ product_id: tools, quantity: 7 }, { product_id: toys, quantity: 3 }] }); // 139.93 + 0.30
    await call(f.base, 'POST', '/orders', { customer_id: 1, items: [{ product_id: toys, quantity: 10 }] }); // 1.00
    const c = await call(f.base, 'POST', '/orders', { customer_id: 2, items: [{ product_id: tools, quantity: 1 }] });
    await call(f.base, 'POST', `/orders/${c.json.id}/cancel`);
    await waitForDrain(f.writeDb, f.readDb);
  });
  after(async () => {
    await relay?.stop();
    await worker?.stop();
    await f?.stop();
    await redis?.kill();
  });

  describe('analytics endpoints', () => {
    it('serve the read model with money as two-decimal strings', async () => {
      assert.deepEqual((await call(f.base, 'GET', `/analytics/products/${tools}`)).json, { product_id: tools, total_quantity_sold: 7, total_revenue: '139.93', order_count: 1, name: 'Hammer' });
      assert.deepEqual((await call(f.base, 'GET', '/analytics/products/top?by=quantity&limit=1')).json.items, [{ product_id: toys, total_quantity_sold: 13, total_revenue: '1.30', order_count: 2, name: 'Marble' }]);
      assert.deepEqual((await call(f.base, 'GET', '/analytics/products/top')).json.items.map((p: { product_id: number }) => p.product_id), [tools, toys]);
      assert.deepEqual((await call(f.base, 'GET', '/analytics/categories')).json.items, [
        { category_name: 'tools', total_revenue: '139.93', total_orders: 1 },
        { category_name: 'toys', total_revenue: '1.30', total_orders: 2 },
      ]);
      const c1 = (await call(f.base, 'GET', '/analytics/customers/1')).json;
      assert.equal(c1.total_spent, '141.23');
      assert.equal(c1.order_count, 2);
      const c2 = (await call(f.base, 'GET', '/analytics/customers/2')).json;
      assert.deepEqual([c2.total_spent, c2.order_count, typeof c2.last_order_date], ['0.00', 0, 'string']);
      assert.deepEqual((await call(f.base, 'GET', '/analytics/customers/424242')).json, { customer_id: 424242, total_spent: '0.00', order_count: 0, last_order_date: null });
      assert.deepEqual((await call(f.base, 'GET', '/analytics/customers/top?limit=5')).json.items.map((c: { customer_id: number }) => c.customer_id), [1]);
      const hourly = (await call(f.base, 'GET', `/analytics/hourly?from=2000-01-01&to=2100-01-01T00:00:00Z`)).json;
      assert.equal(hourly.items.length, 1);
      assert.deepEqual([hourly.items[0].total_orders, hourly.items[0].total_revenue], [2, '141.23']);
      assert.equal((await call(f.base, 'GET', '/analytics/hourly?to=2000-01-01')).json.items.length, 0);
    });

    it('name products from write_db, and still answer (name null) when write_db cannot be reached', async () => {
      const rows = [{ product_id: tools, total_quantity_sold: 7, total_revenue: '139.93', order_count: 1 }];
      assert.deepEqual(await withNames(f.writeDb, rows), [{ ...rows[0], name: 'Hammer' }]);
      const gone = createDb('postgres://127.0.0.1:1/none', { name: 'gone', max: 1, log: testLog });
      try {
        assert.deepEqual(await withNames(gone, rows), [{ ...rows[0], name: null }]);
      } finally {
        await gone.end();
      }
    });

    it('ranks by amount, not by its text ("10.00" above "9.00")', async () => {
      const nine = await createProduct(f.base, { category: 'nine', price: '9.00', stock: 10 });
      const ten = await createProduct(f.base, { category: 'ten', price: '10.00', stock: 10 });
      await call(f.base, 'POST', '/orders', { customer_id: 601, items: [{ product_id: nine, quantity: 1 }] });
      const last = await call(f.base, 'POST', '/orders', { customer_id: 602, items: [{ product_id: ten, quantity: 1 }] });
      const token = { 'X-Consistency-Token': last.headers.get('x-consistency-token')! };
      await waitForDrain(f.writeDb, f.readDb);
      const products = (await call(f.base, 'GET', '/analytics/products/top?by=revenue&limit=100', undefined, token)).json.items.map((p: { product_id: number }) => p.product_id);
      assert.ok(products.indexOf(ten) < products.indexOf(nine), `products: ${products}`);
      const customers = (await call(f.base, 'GET', '/analytics/customers/top?limit=100')).json.items.map((c: { customer_id: number }) => c.customer_id);
      assert.ok(customers.indexOf(602) < customers.indexOf(601), `customers: ${customers}`);
      const categories = (await call(f.base, 'GET', '/analytics/categories')).json.items.map((c: { category_name: string }) => c.category_name);
      assert.ok(categories.indexOf('ten') < categories.indexOf('nine'), `categories: ${categories}`);
    });

    for (const [path, field] of [
      ['/analytics/products/top?by=price', 'by'],
      ['/analytics/products/top?limit=0', 'limit'],
      ['/analytics/customers/top?limit=abc', 'limit'],
      ['/analytics/hourly?from=yesterday', 'from'],
      ['/analytics/hourly?to=2026-13-45', 'to'],
      ['/analytics/hourly?from=2026-02-01&to=2026-01-01', 'from'],
      ['/analytics/products/0', 'id'],
    ] as const) {
      it(`${path} → 400 naming ${field}`, async () => {
        const r = await call(f.base, 'GET', path);
        assert.equal(r.status, 400);
        assert.equal(r.json.field, field);
        assert.match(r.headers.get('content-type') ?? '', /problem\+json/);
      });
    }
  });

  describe('read-your-writes', () => {
    it("an order's consistency token makes the next analytics read include it", async () => {
      for (let i = 0; i < 5; i++) {
        const o = await call(f.base, 'POST', '/orders', { customer_id: 500 + i, items: [{ product_id: tools, quantity: 1 }] });
        const token = o.headers.get('x-consistency-token')!;
        const r = await call(f.base, 'GET', `/analytics/customers/${500 + i}`, undefined, { 'X-Consistency-Token': token });
        assert.equal(r.status, 200);
        assert.deepEqual([r.json.total_spent, r.json.order_count], ['19.99', 1]);
      }
    });

    it('a token that never gets applied answers 504 with the lag, after the bound', async () => {
      // A write whose transaction stays open: its token was handed out, its event is not there.
      const open = await f.write.connect();
      try {
        await open.query('BEGIN');
        const { rows } = await open.query<{ id: number }>(`INSERT INTO outbox (topic, payload) VALUES ('order.paid', '{}') RETURNING id`);
        const r = await call(f.base, 'GET', '/analytics/categories', undefined, { 'X-Consistency-Token': String(rows[0]!.id) });
        assert.equal(r.status, 504);
        assert.equal(r.json.code, 'consistency_timeout');
        assert.equal(r.json.waited_ms, 3000);
        assert.equal(typeof r.json.outbox_backlog, 'number');
      } finally {
        await open.query('ROLLBACK');
        open.release();
      }
    });

    it('a token beyond every id handed out was never issued: 400 at once', async () => {
      const r = await call(f.base, 'GET', '/analytics/categories', undefined, { 'X-Consistency-Token': '999999999' });
      assert.equal(r.status, 400);
      assert.equal(r.json.field, 'X-Consistency-Token');
    });

    it('a malformed token is a 400 naming the header', async () => {
      const r = await call(f.base, 'GET', '/analytics/categories', undefined, { 'X-Consistency-Token': 'abc' });
      assert.equal(r.status, 400);
      assert.equal(r.json.field, 'X-Consistency-Token');
    });
  });

  describe('metrics, health, Bull Board', () => {
    it('/metrics carries the outbox, queue, lag, applied and HTTP series, including what workers and relays pushed', async () => {
      await sleep(5500); // one push interval
      const text = (await call(f.base, 'GET', '/metrics')).body as string;
      for (const series of ['outbox_unpublished_events 0', 'outbox_oldest_unpublished_age_seconds', 'queue_jobs{state="waiting"}', 'queue_jobs{state="failed"}', 'projection_lag_seconds_bucket', 'projection_events_applied_total', 'projection_duplicates_skipped_total', 'relay_events_relayed_total', 'orders_changes_total{event="created",replayed="false"}', 'http_request_duration_seconds_bucket']) {
        assert.ok(text.includes(series), `missing ${series}`);
      }
      const applied = Number(/projection_events_applied_total (\d+)/.exec(text)?.[1]);
      const { rows } = await f.read.query<{ n: string }>('SELECT count(*)::text AS n FROM processed_events');
      assert.equal(applied, Number(rows[0]!.n));
    });

    it('Bull Board answers 200 HTML with the password, 401 without or with a wrong one', async () => {
      const good = `Basic ${Buffer.from('admin:correct horse battery').toString('base64')}`;
      const ok = await fetch(`${f.base}/admin/queues`, { headers: { authorization: good } });
      assert.equal(ok.status, 200);
      assert.match(ok.headers.get('content-type') ?? '', /text\/html/);
      assert.match(await ok.text(), /bull/i);
      const api = await fetch(`${f.base}/admin/queues/api/queues`, { headers: { authorization: good } });
      assert.equal(api.status, 200);
      assert.ok(JSON.stringify(await api.json()).includes(f.env.config.QUEUE_NAME));
      assert.equal((await fetch(`${f.base}/admin/queues`)).status, 401);
      const wrong = await fetch(`${f.base}/admin/queues`, { headers: { authorization: `Basic ${Buffer.from('admin:wrong').toString('base64')}` } });
      assert.equal(wrong.status, 401);
      assert.match(wrong.headers.get('www-authenticate') ?? '', /^Basic/);
    });

    it('/readyz goes 503 when Redis dies and 200 when it is back, while the process stays up', async () => {
      assert.equal((await call(f.base, 'GET', '/readyz')).status, 200);
      await redis.kill();
      const t0 = Date.now();
      const down = await call(f.base, 'GET', '/readyz');
      assert.equal(down.status, 503);
      assert.ok(Date.now() - t0 < 3000);
      assert.notEqual(down.json.checks.redis, 'ok');
      assert.equal(down.json.checks.write_db, 'ok');
      assert.equal((await call(f.base, 'GET', '/healthz')).status, 200);
      await redis.start();
      let status = 0;
      for (let i = 0; i < 50 && status !== 200; i++) {
        await sleep(200);
        status = (await call(f.base, 'GET', '/readyz')).status;
      }
      assert.equal(status, 200);
    });
  });

  describe('verify and rebuild', () => {
    const run = (script: string) => new Proc(script, f.env.env);

    it('verify exits 0 on a healthy system, 1 after tampering, and 0 again after rebuild', async () => {
      await waitForDrain(f.writeDb, f.readDb);
      assert.match(await run('scripts/verify.js').run(), /verify: OK/);
      await f.read.query('UPDATE product_sales_view SET total_revenue = total_revenue + 0.01 WHERE product_id = $1', [tools]);
      await f.read.query(`DELETE FROM category_metrics_view WHERE category_name = 'toys'`);
      const bad = run('scripts/verify.js');
      await assert.rejects(bad.run(), /exited 1/);
      assert.match(bad.output, /product_sales_view\s+\d+\s+total_revenue\s+\d+\.\d+\s+\d+\.\d+/);
      assert.match(bad.output, /category_metrics_view\s+toys\s+total_revenue\s+1\.3\s+\(no row\)/);
      assert.match(await run('scripts/rebuild.js').run(), /rebuild: done/);
      assert.match(await run('scripts/verify.js').run(), /verify: OK/);
      await assertConsistent(f.writeDb, f.readDb);
    });

    it('an outbox pruned below the watermark still verifies, and rebuild keeps the pruned ids deduplicated', async () => {
      await waitForDrain(f.writeDb, f.readDb);
      const { rows } = await f.write.query<{ cut: number; n: number }>('SELECT (min(id) + max(id)) / 2 AS cut, count(*)::int AS n FROM outbox');
      const cut = rows[0]!.cut;
      await f.write.query('DELETE FROM outbox WHERE id <= $1', [cut]);
      assert.match(await run('scripts/verify.js').run(), /verify: OK/);
      assert.match(await run('scripts/rebuild.js').run(), /rebuild: done/);
      const { rows: kept } = await f.read.query('SELECT 1 FROM processed_events WHERE event_id = $1', [String(cut)]);
      assert.equal(kept.length, 1);
      assert.match(await run('scripts/verify.js').run(), /verify: OK/);
    });

    it('rebuild while orders flow ends consistent, with no event applied twice', async () => {
      let stop = false;
      const load = (async () => {
        let i = 0;
        while (!stop) {
          const o = await call(f.base, 'POST', '/orders', { customer_id: 900 + (i % 7), items: [{ product_id: toys, quantity: 1 }, { product_id: tools, quantity: 1 }] });
          if (i++ % 4 === 0) await call(f.base, 'POST', `/orders/${o.json.id}/cancel`);
        }
      })();
      await sleep(300);
      for (let i = 0; i < 3; i++) {
        await f.read.query('UPDATE customer_ltv_view SET order_count = order_count + 5');
        await rebuild(f.env.config.DATABASE_URL, f.env.config.READ_DATABASE_URL);
        await sleep(200);
      }
      stop = true;
      await load;
      await waitForDrain(f.writeDb, f.readDb);
      await assertConsistent(f.writeDb, f.readDb);
    });
  });
});
