import assert from 'node:assert/strict';
import net from 'node:net';
import { Queue } from 'bullmq';
import { startTestWeb, call, createProduct, type WebFixture } from './support/web.js';
import { sleep } from './support/pipeline.js';
import { Proc } from './support/processes.js';
import { createTestEnv, testLog } from './support/env.js';
import { startProjector, type ProjectorHandle } from '../workers/projector/projector.js';

const PASSWORD = 'correct horse battery';
const basic = (scheme = 'Basic', password = PASSWORD) => ({ authorization: `${scheme} ${Buffer.from(`ops:${password}`).toString('base64')}` });

/** Raw HTTP on a fresh socket: what the server sends back before it closes, or within `ms`. */
function raw(port: number, request: string | Buffer, ms = 2000): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let out = '';
    const done = () => {
      s.destroy();
      resolve(out);
    };
    s.on('data', (b) => (out += b.toString()));
    s.on('close', done);
    s.on('error', done);
    setTimeout(done, ms);
    s.write(request);
  });
}

/**
 * The hostile battery of issue 17, one test per finding; each failed on the
 * code before its fix.
 */
describe('hostile traffic (integration)', function () {
  this.timeout(60_000);
  let f: WebFixture;
  let port: number;

  before(async () => {
    f = await startTestWeb({ ADMIN_PASSWORD: PASSWORD, READ_POOL_SIZE: '1', WEB_POOL_QUEUE: '4', HTTP_KEEP_ALIVE_MS: '500' });
    port = f.web.port;
  });
  after(async () => f.stop());

  it('/metrics: concurrent scrapes share one snapshot (built at most once a second)', async () => {
    const bodies = await Promise.all(Array.from({ length: 200 }, () => call(f.base, 'GET', '/metrics').then((r) => r.body as string)));
    assert.equal(new Set(bodies).size, 1, 'every scrape in the same second got the same text');
    const t0 = Date.now();
    const order = await call(f.base, 'POST', '/orders', { customer_id: 1, items: [{ product_id: await createProduct(f.base, { price: '1.00', stock: 10 }), quantity: 1 }] });
    assert.equal(order.status, 201);
    assert.ok(Date.now() - t0 < 1000);
  });

  it('a saturated pool sheds load at once (503 overloaded, Retry-After) and /readyz stays about reachability', async () => {
    const lock = await f.read.connect();
    try {
      await lock.query('BEGIN');
      await lock.query('LOCK TABLE category_metrics_view IN ACCESS EXCLUSIVE MODE');
      // One connection, four waiting: the rest are refused at once.
      const pending = Array.from({ length: 5 }, () => call(f.base, 'GET', '/analytics/categories'));
      await sleep(200);
      const t0 = Date.now();
      const shed = await call(f.base, 'GET', '/analytics/categories');
      assert.equal(shed.status, 503);
      assert.equal(shed.json.code, 'overloaded');
      assert.equal(shed.headers.get('retry-after'), '1');
      assert.ok(Date.now() - t0 < 500, 'answered at once');
      assert.equal((await call(f.base, 'GET', '/readyz')).status, 200);
      await lock.query('ROLLBACK');
      assert.deepEqual((await Promise.all(pending)).map((r) => r.status), [200, 200, 200, 200, 200]);
    } finally {
      await lock.query('ROLLBACK').catch(() => undefined);
      lock.release();
    }
  });

  it('an order that waits on a row locked elsewhere past the statement timeout: 503 overloaded with Retry-After, nothing written', async () => {
    const g = await startTestWeb({ PG_STATEMENT_TIMEOUT_MS: '300' });
    const lock = await g.write.connect();
    try {
      const product = await createProduct(g.base, { price: '2.00', stock: 10 });
      await lock.query('BEGIN');
      await lock.query('SELECT 1 FROM products WHERE id = $1 FOR UPDATE', [product]);
      const r = await call(g.base, 'POST', '/orders', { customer_id: 5, items: [{ product_id: product, quantity: 1 }] });
      assert.deepEqual([r.status, r.json.code, r.headers.get('retry-after')], [503, 'overloaded', '1'], JSON.stringify(r.body));
      await lock.query('ROLLBACK');
      assert.equal((await g.write.query('SELECT count(*)::int AS n FROM orders')).rows[0].n, 0);
      assert.equal((await call(g.base, 'POST', '/orders', { customer_id: 5, items: [{ product_id: product, quantity: 1 }] })).status, 201);
    } finally {
      await lock.query('ROLLBACK').catch(() => undefined);
      lock.release();
      await g.stop();
    }
  });

  it('text PostgreSQL cannot store and dates it cannot represent are 400s naming the field', async () => {
    const nul = await call(f.base, 'POST', '/products', { name: 'a\u0000b', category: 'c', price: '1.00', stock: 1 });
    assert.deepEqual([nul.status, nul.json.field], [400, 'name']);
    const surrogate = await call(f.base, 'POST', '/products', { name: 'ok', category: 'x\ud800', price: '1.00', stock: 1 });
    assert.deepEqual([surrogate.status, surrogate.json.field], [400, 'category']);
    assert.deepEqual([(await call(f.base, 'GET', '/products?category=%00')).status], [400]);
    for (const from of ['0000-01-01', '2026-02-30', '2026-13-01', '2026-01-01T24:00:00Z']) {
      const r = await call(f.base, 'GET', `/analytics/hourly?from=${from}`);
      assert.deepEqual([r.status, r.json.field], [400, 'from'], from);
    }
    assert.equal((await call(f.base, 'GET', '/analytics/hourly?from=2024-02-29&to=9999-12-31T23:59:59Z')).status, 200);
  });

  it('Bull Board is read-only by default; admin changes refuse other origins and non-JSON bodies', async () => {
    const add = await fetch(`${f.base}/admin/queues/api/queues/${f.env.config.QUEUE_NAME}/add`, {
      method: 'POST',
      headers: { ...basic(), 'content-type': 'text/plain', origin: 'http://evil.example' },
      body: JSON.stringify({ name: 'order.created', data: { event_id: '888888' } }),
    });
    assert.equal(add.status, 403);
    const foreign = await call(f.base, 'POST', '/admin/events/1/park', { reason: 'x' }, { ...basic(), origin: 'http://evil.example' });
    assert.equal(foreign.status, 403);
    const form = await call(f.base, 'POST', '/admin/events/1/park', 'reason=x', { ...basic(), 'content-type': 'application/x-www-form-urlencoded' });
    assert.equal(form.status, 415);
  });

  it('the projector refuses a job whose id is not the one the relay gives its event', async () => {
    const env = await createTestEnv();
    let worker: ProjectorHandle | undefined;
    const queue = new Queue(env.config.QUEUE_NAME, { connection: { url: env.config.REDIS_URL }, prefix: env.config.QUEUE_PREFIX });
    try {
      worker = await startProjector(env.config, testLog);
      const payload = { id: 1, customer_id: 4242, total: '1000000.00', created_at: '2026-01-01T00:00:00Z', items: [{ product_id: 1, category: 'forged', quantity: 1, line_total: '1000000.00' }] };
      await queue.add('order.created', { event_id: '888888', topic: 'order.created', payload, created_at: payload.created_at }, { jobId: 'forged-1' });
      await queue.add('order.created', { event_id: '888889', topic: 'order.created', payload, created_at: payload.created_at });
      for (let i = 0; i < 50 && (await queue.getJobCounts('failed')).failed! < 2; i++) await sleep(100);
      assert.equal((await queue.getJobCounts('failed')).failed, 2);
      assert.equal((await worker.metrics.applied.get()).values[0]?.value ?? 0, 0, 'nothing applied');
    } finally {
      await worker?.stop();
      await queue.close();
    }
  });

  it('a client that goes away mid-upload is counted apart (499), not as a 5xx', async () => {
    for (let i = 0; i < 5; i++) {
      await new Promise<void>((resolve) => {
        const s = net.connect(port, '127.0.0.1', () => {
          s.write('POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"customer_id": 1,');
          setTimeout(() => {
            s.destroy();
            resolve();
          }, 50);
        });
      });
    }
    await sleep(1100); // past the shared snapshot of an earlier test
    const fresh = (await call(f.base, 'GET', '/metrics')).body as string;
    assert.match(fresh, /http_request_duration_seconds_count\{method="POST",route="\/orders",status="499"\} 5/);
    assert.doesNotMatch(fresh, /route="\/orders",status="503"/);
  });

  it('a secret in the configuration never reaches the one-line error', async () => {
    const env = await createTestEnv();
    const bad = new Proc('api/main.js', { ...env.env, DATABASE_URL: 'mysql://app:TopSecretPw@db/x' });
    await assert.rejects(bad.run(), /exited 78/);
    assert.doesNotMatch(bad.output, /TopSecretPw/);
    assert.match(bad.output, /DATABASE_URL/);
    const short = new Proc('api/main.js', { ...env.env, ADMIN_PASSWORD: 'hunter2' });
    await assert.rejects(short.run(), /exited 78/);
    assert.doesNotMatch(short.output, /hunter2/);
    assert.match(short.output, /ADMIN_PASSWORD/);
  });

  it('an idle kept-alive connection is closed after HTTP_KEEP_ALIVE_MS', async () => {
    const s = net.connect(port, '127.0.0.1');
    let closed = false;
    s.on('close', () => (closed = true));
    s.on('error', () => undefined);
    s.resume();
    s.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    // Node keeps a socket keepAliveTimeout plus its own buffer of one second.
    await sleep(2500);
    assert.ok(closed, 'closed by the server');
  });

  it('"//host/path" is not a route: 404, nothing written', async () => {
    const r = await call(f.base, 'POST', '//evil.example/products', { name: 'p', category: 'c', price: '1.00', stock: 1 });
    assert.equal(r.status, 404);
    const { rows } = await f.write.query(`SELECT 1 FROM products WHERE name = 'p' AND category = 'c'`);
    assert.equal(rows.length, 0);
  });

  it("Node's own refusals are problem+json; a body nobody reads ends the connection instead of being read", async () => {
    const bad = await raw(port, 'GARBAGE\r\n\r\n');
    assert.match(bad, /^HTTP\/1\.1 400/);
    assert.match(bad, /application\/problem\+json/);
    const big = await raw(port, `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`);
    assert.match(big, /^HTTP\/1\.1 431/);
    assert.match(big, /"code":"request_header_fields_too_large"/);
    // An endless body on a route that reads none: answered, then the connection closes (it would be read until the request timeout).
    const s = net.connect(port, '127.0.0.1');
    let closedAt = 0;
    const t0 = Date.now();
    s.on('close', () => (closedAt = Date.now()));
    s.on('error', () => undefined);
    s.write('POST /orders/1/pay HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n');
    const chunk = `10000\r\n${'x'.repeat(0x10000)}\r\n`;
    for (let i = 0; i < 40 && closedAt === 0; i++) {
      if (!s.destroyed) s.write(chunk);
      await sleep(25);
    }
    assert.ok(closedAt > 0 && closedAt - t0 < 1000, 'closed soon after the answer');
  });

  it('admin auth: a lowercase scheme works, guesses are throttled (429), HTML pages carry security headers', async () => {
    assert.equal((await call(f.base, 'GET', '/admin/events', undefined, basic('basic'))).status, 200);
    const statuses: number[] = [];
    for (let i = 0; i < 12; i++) statuses.push((await call(f.base, 'GET', '/admin/events', undefined, basic('Basic', `wrong-${i}`))).status);
    assert.deepEqual(statuses.slice(0, 10), Array(10).fill(401));
    assert.equal(statuses[11], 429);
    const locked = await call(f.base, 'GET', '/admin/events', undefined, basic());
    assert.equal(locked.status, 429, 'the address is locked out for the window, right password or not');
    assert.ok(Number(locked.headers.get('retry-after')) > 0);
    const page = await fetch(`${f.base}/`);
    assert.match(page.headers.get('content-security-policy') ?? '', /frame-ancestors 'none'/);
    assert.equal(page.headers.get('x-frame-options'), 'DENY');
  });
});
