import assert from 'node:assert/strict';
import { call, createProduct, startTestWeb, type WebFixture } from './support/web.js';

async function count(f: WebFixture, table: string): Promise<number> {
  const { rows } = await f.write.query<{ n: string }>(`SELECT count(*) AS n FROM ${table}`);
  return Number(rows[0]!.n);
}

async function snapshot(f: WebFixture): Promise<string> {
  const tables = ['products', 'orders', 'order_items', 'outbox', 'idempotency_keys'];
  const parts = await Promise.all(tables.map(async (t) => `${t}=${await count(f, t)}`));
  const { rows } = await f.write.query<{ s: string }>('SELECT coalesce(sum(stock), 0)::text AS s FROM products');
  return `${parts.join(' ')} stock=${rows[0]!.s}`;
}

describe('write side: orders and products over HTTP (integration)', function () {
  let f: WebFixture;
  let widget: number;
  let gadget: number;

  before(async () => {
    f = await startTestWeb();
    widget = await createProduct(f.base, { name: 'Widget', category: 'tools', price: '19.99', stock: 1000 });
    gadget = await createProduct(f.base, { name: 'Gadget', category: 'toys', price: 0.1, stock: 1000 });
  });
  after(async () => f.stop());

  describe('malformed and hostile requests get problem+json with the field named, and write nothing', () => {
    const huge = JSON.stringify({ customer_id: 1, items: [{ product_id: 1, quantity: 1 }], pad: 'x'.repeat(1024 * 1024) });
    const cases: Array<{ name: string; method: string; path: string; body?: unknown; headers?: Record<string, string>; status: number; code: string; field?: string }> = [
      { name: 'malformed JSON', method: 'POST', path: '/orders', body: '{"customer_id": 1,', status: 400, code: 'malformed_json' },
      { name: 'body is an array', method: 'POST', path: '/orders', body: [], status: 400, code: 'validation_failed', field: '(body)' },
      { name: 'missing customer_id', method: 'POST', path: '/orders', body: { items: [{ product_id: 1, quantity: 1 }] }, status: 400, code: 'validation_failed', field: 'customer_id' },
      { name: 'customer_id as string', method: 'POST', path: '/orders', body: { customer_id: '1', items: [{ product_id: 1, quantity: 1 }] }, status: 400, code: 'validation_failed', field: 'customer_id' },
      { name: 'customer_id negative', method: 'POST', path: '/orders', body: { customer_id: -4, items: [{ product_id: 1, quantity: 1 }] }, status: 400, code: 'validation_failed', field: 'customer_id' },
      { name: 'customer_id beyond int32', method: 'POST', path: '/orders', body: { customer_id: 2 ** 31, items: [{ product_id: 1, quantity: 1 }] }, status: 400, code: 'validation_failed', field: 'customer_id' },
      { name: 'items missing', method: 'POST', path: '/orders', body: { customer_id: 1 }, status: 400, code: 'validation_failed', field: 'items' },
      { name: 'items empty', method: 'POST', path: '/orders', body: { customer_id: 1, items: [] }, status: 400, code: 'validation_failed', field: 'items' },
      { name: 'items not an array', method: 'POST', path: '/orders', body: { customer_id: 1, items: { product_id: 1 } }, status: 400, code: 'validation_failed', field: 'items' },
      { name: 'too many items', method: 'POST', path: '/orders', body: { customer_id: 1, items: Array.from({ length: 101 }, () => ({ product_id: 1, quantity: 1 })) }, status: 400, code: 'validation_failed', field: 'items' },
      { name: 'quantity zero', method: 'POST', path: '/orders', body: { customer_id: 1, items: [{ product_id: 1, quantity: 0 }] }, status: 400, code: 'validation_failed', field: 'items[0].quantity' },
      { name: 'quantity fractional', method: 'POST', path: '/orders', body: { customer_id: 1, items: [{ product_id: 1, quantity: 1 }, { product_id: 1, quantity: 1.5 }] }, status: 400, code: 'validation_failed', field: 'items[1].quantity' },
      { name: 'quantity negative', method: 'POST', path: '/orders', body: { customer_id: 1, items: [{ product_id: 1, quantity: -3 }] }, status: 400, code: 'validation_failed', field: 'items[0].quantity' },
      { name: 'quantity as string', method: 'POST', path: '/orders', body: { customer_id: 1, items: [{ product_id: 1, quantity: '2' }] }, status: 400, code: 'validation_failed', field: 'items[0].quantity' },
      { name: 'product_id null', method: 'POST', path: '/orders', body: { customer_id: 1, items: [{ product_id: null, quantity: 2 }] }, status: 400, code: 'validation_failed', field: 'items[0].product_id' },
      { name: 'unknown field', method: 'POST', path: '/orders', body: { customer_id: 1, items: [{ product_id: 1, quantity: 1 }], coupon: 'FREE' }, status: 400, code: 'validation_failed', field: 'coupon' },
      { name: 'price smuggled into an item', method: 'POST', path: '/orders', body: { customer_id: 1, items: [{ product_id: 1, quantity: 1, price: '0.01' }] }, status: 400, code: 'validation_failed', field: 'items[0].price' },
      { name: 'unknown product', method: 'POST', path: '/orders', body: { customer_id: 1, items: [{ product_id: 999999, quantity: 1 }] }, status: 422, code: 'unknown_product' },
      { name: 'text/plain body', method: 'POST', path: '/orders', body: '{}', headers: { 'content-type': 'text/plain' }, status: 415, code: 'unsupported_media_type' },
      { name: 'body over 1 MiB', method: 'POST', path: '/orders', body: huge, status: 413, code: 'payload_too_large' },
      { name: 'bad Idempotency-Key', method: 'POST', path: '/orders', body: { customer_id: 1, items: [{ product_id: 1, quantity: 1 }] }, headers: { 'Idempotency-Key': 'x'.repeat(300) }, status: 400, code: 'validation_failed', field: 'Idempotency-Key' },
      { name: 'product without name', method: 'POST', path: '/products', body: { category: 'c', price: 1, stock: 1 }, status: 400, code: 'validation_failed', field: 'name' },
      { name: 'product blank name', method: 'POST', path: '/products', body: { name: '   ', category: 'c', price: 1, stock: 1 }, status: 400, code: 'validation_failed', field: 'name' },
      { name: 'price with three decimals', method: 'POST', path: '/products', body: { name: 'n', category: 'c', price: 1.999, stock: 1 }, status: 400, code: 'validation_failed', field: 'price' },
      { name: 'price as string with three decimals', method: 'POST', path: '/products', body: { name: 'n', category: 'c', price: '1.001', stock: 1 }, status: 400, code: 'validation_failed', field: 'price' },
      { name: 'negative price', method: 'POST', path: '/products', body: { name: 'n', category: 'c', price: -1, stock: 1 }, status: 400, code: 'validation_failed', field: 'price' },
      { name: 'price too large', method: 'POST', path: '/products', body: { name: 'n', category: 'c', price: '100000000.00', stock: 1 }, status: 400, code: 'validation_failed', field: 'price' },
      { name: 'price in exponent form', method: 'POST', path: '/products', body: { name: 'n', category: 'c', price: 1e21, stock: 1 }, status: 400, code: 'validation_failed', field: 'price' },
      { name: 'negative stock', method: 'POST', path: '/products', body: { name: 'n', category: 'c', price: 1, stock: -1 }, status: 400, code: 'validation_failed', field: 'stock' },
      { name: 'name over 255 characters', method: 'POST', path: '/products', body: { name: 'n'.repeat(256), category: 'c', price: 1, stock: 1 }, status: 400, code: 'validation_failed', field: 'name' },
      { name: 'PATCH with nothing', method: 'PATCH', path: '/products/1', body: {}, status: 400, code: 'validation_failed', field: '(body)' },
      { name: 'PATCH negative stock', method: 'PATCH', path: '/products/1', body: { stock: -5 }, status: 400, code: 'validation_failed', field: 'stock' },
      { name: 'PATCH unknown field', method: 'PATCH', path: '/products/1', body: { id: 7 }, status: 400, code: 'validation_failed', field: 'id' },
      { name: 'PATCH bad id', method: 'PATCH', path: '/products/abc', body: { stock: 5 }, status: 400, code: 'validation_failed', field: 'id' },
      { name: 'PATCH unknown product', method: 'PATCH', path: '/products/424242', body: { stock: 5 }, status: 404, code: 'product_not_found' },
      { name: 'GET order with huge id', method: 'GET', path: '/orders/99999999999', status: 400, code: 'validation_failed', field: 'id' },
      { name: 'bad percent-encoding', method: 'GET', path: '/products/%E0%A4%A', status: 400, code: 'validation_failed' },
      { name: 'orders without customer_id', method: 'GET', path: '/orders', status: 400, code: 'validation_failed', field: 'customer_id' },
      { name: 'garbage cursor', method: 'GET', path: '/products?cursor=!!!', status: 400, code: 'validation_failed', field: 'cursor' },
      { name: 'limit zero', method: 'GET', path: '/products?limit=0', status: 400, code: 'validation_failed', field: 'limit' },
      { name: 'unknown route', method: 'GET', path: '/nope', status: 404, code: 'not_found' },
      { name: 'wrong method', method: 'DELETE', path: '/orders', status: 405, code: 'method_not_allowed' },
      { name: 'pay unknown order', method: 'POST', path: '/orders/777777/pay', status: 404, code: 'order_not_found' },
    ];
    for (const c of cases) {
      it(`${c.name} → ${c.status} ${c.code}`, async () => {
        const before = await snapshot(f);
        const r = await call(f.base, c.method, c.path, c.body, c.headers);
        assert.equal(r.status, c.status, JSON.stringify(r.body));
        assert.match(r.headers.get('content-type') ?? '', /^application\/problem\+json/);
        assert.equal(r.json.code, c.code);
        assert.equal(r.json.status, c.status);
        assert.equal(typeof r.json.title, 'string');
        if (c.field !== undefined) assert.equal(r.json.field, c.field);
        assert.equal(await snapshot(f), before, 'nothing written');
      });
    }

    it('an order that overflows the DECIMAL(10,2) total → 422 total_out_of_range, nothing written', async () => {
      const dear = await createProduct(f.base, { price: '99999999.99', stock: 10 });
      const before = await snapshot(f);
      const r = await call(f.base, 'POST', '/orders', { customer_id: 1, items: [{ product_id: dear, quantity: 2 }] });
      assert.equal(r.status, 422);
      assert.equal(r.json.code, 'total_out_of_range');
      assert.equal(await snapshot(f), before);
    });

    it('405 names the allowed methods', async () => {
      const r = await call(f.base, 'PUT', '/products/1', { stock: 1 });
      assert.equal(r.status, 405);
      assert.equal(r.headers.get('allow'), 'GET, PATCH');
    });
  });

  describe('orders', () => {
    it('totals are exact on awkward prices (0.10 × 3, 19.99 × 7) and items keep their price', async () => {
      const r = await call(f.base, 'POST', '/orders', { customer_id: 42, items: [{ product_id: gadget, quantity: 3 }, { product_id: widget, quantity: 7 }] });
      assert.equal(r.status, 201, JSON.stringify(r.body));
      assert.equal(r.json.total, '140.23'); // 0.30 + 139.93
      assert.equal(r.json.status, 'pending');
      assert.deepEqual(r.json.items.map((i: { price: string; line_total: string }) => [i.price, i.line_total]), [['0.10', '0.30'], ['19.99', '139.93']]);
      assert.match(r.headers.get('x-consistency-token') ?? '', /^\d+$/);
      const got = await call(f.base, 'GET', `/orders/${r.json.id}`);
      assert.deepEqual(got.json, r.json);
    });

    it('a later price change does not touch past orders', async () => {
      const p = await createProduct(f.base, { price: '5.55', stock: 10 });
      const o = await call(f.base, 'POST', '/orders', { customer_id: 5, items: [{ product_id: p, quantity: 2 }] });
      await call(f.base, 'PATCH', `/products/${p}`, { price: '9.00', category: 'moved' });
      const again = await call(f.base, 'GET', `/orders/${o.json.id}`);
      assert.equal(again.json.total, '11.10');
      assert.equal(again.json.items[0].price, '5.55');
      assert.equal(again.json.items[0].category, 'tools');
    });

    it('refuses an order it cannot fill in full with 409 insufficient_stock and writes nothing', async () => {
      const p = await createProduct(f.base, { price: 1, stock: 2 });
      const before = await snapshot(f);
      const r = await call(f.base, 'POST', '/orders', { customer_id: 1, items: [{ product_id: widget, quantity: 1 }, { product_id: p, quantity: 3 }] });
      assert.equal(r.status, 409);
      assert.equal(r.json.code, 'insufficient_stock');
      assert.deepEqual(r.json.shortages, [{ product_id: p, requested: 3, available: 2 }]);
      assert.equal(await snapshot(f), before);
    });

    it('500 concurrent orders against scarce stock sell exactly the stock and never go negative', async function () {
      this.timeout(120_000);
      const a = await createProduct(f.base, { price: '2.50', stock: 137 });
      const b = await createProduct(f.base, { price: '1.00', stock: 90 });
      const results = await Promise.all(
        Array.from({ length: 500 }, (_, i) => {
          // Mixed item orders in both product orders, so a naive locking order would deadlock.
          const items = i % 3 === 0 ? [{ product_id: a, quantity: 1 }, { product_id: b, quantity: 1 }] : i % 3 === 1 ? [{ product_id: b, quantity: 1 }, { product_id: a, quantity: 1 }] : [{ product_id: a, quantity: 1 }];
          return call(f.base, 'POST', '/orders', { customer_id: 1000 + i, items });
        }),
      );
      const statuses = new Set(results.map((r) => r.status));
      assert.deepEqual([...statuses].sort(), [201, 409]);
      const { rows } = await f.write.query<{ id: number; stock: number; sold: string }>(
        `SELECT p.id, p.stock, coalesce(sum(i.quantity), 0)::text AS sold FROM products p LEFT JOIN order_items i ON i.product_id = p.id WHERE p.id = ANY($1) GROUP BY p.id ORDER BY p.id`,
        [[a, b]],
      );
      assert.deepEqual(rows.map((r) => [r.stock, r.sold]), [[0, '137'], [0, '90']]);
      const created = results.filter((r) => r.status === 201).length;
      const { rows: o } = await f.write.query<{ n: string }>(`SELECT count(DISTINCT i.order_id) AS n FROM order_items i WHERE i.product_id = ANY($1)`, [[a, b]]);
      assert.equal(Number(o[0]!.n), created);
    });

    it('20 concurrent requests with one Idempotency-Key create one order and answer identically', async () => {
      const before = await count(f, 'orders');
      const body = { customer_id: 77, items: [{ product_id: widget, quantity: 1 }] };
      const results = await Promise.all(Array.from({ length: 20 }, () => call(f.base, 'POST', '/orders', body, { 'Idempotency-Key': 'key-concurrent-1' })));
      assert.ok(results.every((r) => r.status === 201));
      const ids = new Set(results.map((r) => r.json.id));
      assert.equal(ids.size, 1);
      assert.equal(new Set(results.map((r) => JSON.stringify(r.json))).size, 1);
      assert.equal(new Set(results.map((r) => r.headers.get('x-consistency-token'))).size, 1);
      assert.equal(await count(f, 'orders'), before + 1);
      // Key order in the retry's JSON does not matter.
      const again = await call(f.base, 'POST', '/orders', JSON.stringify({ items: [{ quantity: 1, product_id: widget }], customer_id: 77 }), { 'Idempotency-Key': 'key-concurrent-1' });
      assert.equal(again.json.id, results[0]!.json.id);
      assert.equal(again.headers.get('idempotent-replayed'), 'true');
    });

    it('the same Idempotency-Key with a different body → 422 idempotency_key_reused', async () => {
      await call(f.base, 'POST', '/orders', { customer_id: 78, items: [{ product_id: widget, quantity: 1 }] }, { 'Idempotency-Key': 'key-reuse' });
      const before = await snapshot(f);
      const r = await call(f.base, 'POST', '/orders', { customer_id: 78, items: [{ product_id: widget, quantity: 2 }] }, { 'Idempotency-Key': 'key-reuse' });
      assert.equal(r.status, 422);
      assert.equal(r.json.code, 'idempotency_key_reused');
      assert.equal(await snapshot(f), before);
    });

    it('a keyed order refused for lack of stock stays refused under its key after a restock (Stripe: the outcome is stored)', async () => {
      const p = await createProduct(f.base, { price: '2.50', stock: 1 });
      const body = { customer_id: 31, items: [{ product_id: p, quantity: 2 }] };
      const first = await call(f.base, 'POST', '/orders', body, { 'Idempotency-Key': 'key-refused' });
      assert.equal(first.status, 409);
      assert.equal(first.json.code, 'insufficient_stock');
      assert.equal((await call(f.base, 'PATCH', `/products/${p}`, { stock: 100 })).status, 200);
      const before = await snapshot(f);
      const retry = await call(f.base, 'POST', '/orders', body, { 'Idempotency-Key': 'key-refused' });
      assert.equal(retry.status, 409);
      assert.deepEqual(retry.json, first.json);
      assert.equal(retry.headers.get('idempotent-replayed'), 'true');
      assert.equal(await snapshot(f), before);
      // Another body under the same key is still a reuse; a new key places the order.
      assert.equal((await call(f.base, 'POST', '/orders', { ...body, customer_id: 32 }, { 'Idempotency-Key': 'key-refused' })).json.code, 'idempotency_key_reused');
      assert.equal((await call(f.base, 'POST', '/orders', body, { 'Idempotency-Key': 'key-refused-2' })).status, 201);
    });

    it('a keyed request rejected by validation (400, 422 unknown_product) stores nothing: the key places an order later', async () => {
      const bad = await call(f.base, 'POST', '/orders', { customer_id: 33, items: [{ product_id: widget, quantity: 0 }] }, { 'Idempotency-Key': 'key-invalid' });
      assert.equal(bad.status, 400);
      const unknown = await call(f.base, 'POST', '/orders', { customer_id: 33, items: [{ product_id: 999_999, quantity: 1 }] }, { 'Idempotency-Key': 'key-invalid' });
      assert.equal(unknown.status, 422);
      assert.equal(unknown.json.code, 'unknown_product');
      const { rows } = await f.write.query(`SELECT 1 FROM idempotency_keys WHERE key = 'key-invalid'`);
      assert.equal(rows.length, 0);
      const ok = await call(f.base, 'POST', '/orders', { customer_id: 33, items: [{ product_id: widget, quantity: 1 }] }, { 'Idempotency-Key': 'key-invalid' });
      assert.equal(ok.status, 201);
    });

    it('pay → ship, cancel restores stock, and invalid transitions are 409', async () => {
      const p = await createProduct(f.base, { price: '3.33', stock: 10 });
      const o1 = await call(f.base, 'POST', '/orders', { customer_id: 9, items: [{ product_id: p, quantity: 4 }] });
      assert.equal((await call(f.base, 'POST', `/orders/${o1.json.id}/pay`)).json.status, 'paid');
      assert.equal((await call(f.base, 'POST', `/orders/${o1.json.id}/ship`)).json.status, 'shipped');
      const late = await call(f.base, 'POST', `/orders/${o1.json.id}/cancel`);
      assert.equal(late.status, 409);
      assert.equal(late.json.code, 'invalid_transition');
      assert.equal(late.json.current_status, 'shipped');

      const o2 = await call(f.base, 'POST', '/orders', { customer_id: 9, items: [{ product_id: p, quantity: 5 }] });
      assert.equal((await call(f.base, 'GET', `/products/${p}`)).json.stock, 1);
      const cancelled = await call(f.base, 'POST', `/orders/${o2.json.id}/cancel`);
      assert.equal(cancelled.json.status, 'cancelled');
      assert.equal((await call(f.base, 'GET', `/products/${p}`)).json.stock, 6);
      assert.equal((await call(f.base, 'POST', `/orders/${o2.json.id}/cancel`)).status, 409);
      assert.equal((await call(f.base, 'POST', `/orders/${o2.json.id}/ship`)).status, 409);

      const list = await call(f.base, 'GET', '/orders?customer_id=9');
      assert.deepEqual(list.json.items.map((o: { id: number }) => o.id), [o1.json.id, o2.json.id]);
    });

    it('every order change writes exactly one outbox event carrying what projections need', async () => {
      const p = await createProduct(f.base, { price: '7.77', stock: 10, category: 'kitchen' });
      const o = await call(f.base, 'POST', '/orders', { customer_id: 31, items: [{ product_id: p, quantity: 2 }] });
      const paid = await call(f.base, 'POST', `/orders/${o.json.id}/pay`);
      const cancelled = await call(f.base, 'POST', `/orders/${o.json.id}/cancel`);
      const { rows } = await f.write.query<{ id: number; topic: string; payload: { id: number; customer_id: number; total: string; created_at: string; items: { category: string; line_total: string }[] } }>(
        `SELECT id, topic, payload FROM outbox WHERE (payload->>'id')::int = $1 ORDER BY id`,
        [o.json.id],
      );
      assert.deepEqual(rows.map((r) => r.topic), ['order.created', 'order.paid', 'order.cancelled']);
      assert.deepEqual(rows.map((r) => String(r.id)), [o, paid, cancelled].map((r) => r.headers.get('x-consistency-token')));
      for (const r of rows) {
        assert.equal(r.payload.customer_id, 31);
        assert.equal(r.payload.total, '15.54');
        assert.equal(r.payload.created_at, o.json.created_at);
        assert.deepEqual(r.payload.items.map((i) => [i.category, i.line_total]), [['kitchen', '15.54']]);
      }
    });
  });

  describe('products', () => {
    it('creates, reads, patches and pages through products by category', async () => {
      const ids: number[] = [];
      for (let i = 0; i < 5; i++) ids.push(await createProduct(f.base, { name: `Pager ${i}`, category: 'paging', price: `${i}.05`, stock: i }));
      const page1 = await call(f.base, 'GET', '/products?category=paging&limit=2');
      assert.deepEqual(page1.json.items.map((p: { id: number }) => p.id), ids.slice(0, 2));
      const page2 = await call(f.base, 'GET', `/products?category=paging&limit=2&cursor=${page1.json.next_cursor}`);
      assert.deepEqual(page2.json.items.map((p: { id: number }) => p.id), ids.slice(2, 4));
      const page3 = await call(f.base, 'GET', `/products?category=paging&limit=2&cursor=${page2.json.next_cursor}`);
      assert.deepEqual(page3.json.items.map((p: { id: number }) => p.id), ids.slice(4));
      assert.equal(page3.json.next_cursor, null);
      const patched = await call(f.base, 'PATCH', `/products/${ids[0]}`, { price: 12, stock: 40 });
      assert.equal(patched.status, 200);
      assert.equal(patched.json.price, '12.00');
      assert.equal(patched.json.stock, 40);
      assert.equal(patched.json.name, 'Pager 0');
      assert.match(patched.json.created_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);
    });
  });
});

describe('group commit of POST /orders (integration)', function () {
  let f: WebFixture;
  // One transaction in flight, so that concurrent orders must gather into batches.
  before(async () => (f = await startTestWeb({ ORDER_BATCH_CONCURRENCY: '1', ORDER_BATCH_SIZE: '16' })));
  after(async () => f.stop());

  it('concurrent orders share transactions, yet each gets its own answer and only good ones are written', async function () {
    this.timeout(60_000);
    const plenty = await createProduct(f.base, { price: '3.10', stock: 1000 });
    const scarce = await createProduct(f.base, { price: '7.00', stock: 5 });
    const dear = await createProduct(f.base, { price: '99999999.99', stock: 10 });
    const { rows: before } = await f.write.query<{ n: string }>('SELECT count(*) AS n FROM outbox');
    // 120 orders: plenty of good ones, 30 for one of the scarce 5, 10 for an unknown product,
    // and 2 whose total overflows DECIMAL(10,2): that error aborts a whole batch statement.
    const kinds = Array.from({ length: 120 }, (_, i) => (i % 4 === 1 ? 'scarce' : i % 12 === 2 ? 'unknown' : i === 7 || i === 79 ? 'overflow' : 'good'));
    const results = await Promise.all(
      kinds.map((kind, i) => {
        const items =
          kind === 'scarce' ? [{ product_id: plenty, quantity: 1 }, { product_id: scarce, quantity: 1 }]
          : kind === 'unknown' ? [{ product_id: 987654, quantity: 1 }]
          : kind === 'overflow' ? [{ product_id: dear, quantity: 2 }]
          : [{ product_id: plenty, quantity: 1 + (i % 3) }];
        return call(f.base, 'POST', '/orders', { customer_id: 500 + i, items });
      }),
    );
    const by = (kind: string) => results.filter((_, i) => kinds[i] === kind);
    assert.ok(by('good').every((r) => r.status === 201), JSON.stringify(by('good').find((r) => r.status !== 201)?.body));
    assert.deepEqual(by('unknown').map((r) => [r.status, r.json.code, r.json.product_id]), by('unknown').map(() => [422, 'unknown_product', 987654]));
    assert.deepEqual(by('overflow').map((r) => [r.status, r.json.code]), [[422, 'total_out_of_range'], [422, 'total_out_of_range']]);
    const scarceStatuses = by('scarce').map((r) => r.status).sort();
    assert.deepEqual(scarceStatuses, [...Array(5).fill(201), ...Array(25).fill(409)]);
    assert.ok(by('scarce').filter((r) => r.status === 409).every((r) => r.json.code === 'insufficient_stock' && r.json.shortages[0].product_id === scarce));

    // Every 201 is its own order — the one its request asked for — as GET returns it, with its own event.
    results.forEach((r, i) => {
      if (r.status === 201) assert.equal(r.json.customer_id, 500 + i, `answer ${i} belongs to another request`);
    });
    const created = results.filter((r) => r.status === 201);
    assert.equal(new Set(created.map((r) => r.json.id)).size, created.length);
    for (const r of created.slice(0, 10)) assert.deepEqual((await call(f.base, 'GET', `/orders/${r.json.id}`)).json, r.json);
    const { rows: after } = await f.write.query<{ n: string }>('SELECT count(*) AS n FROM outbox');
    assert.equal(Number(after[0]!.n) - Number(before[0]!.n), created.length);
    const { rows: ev } = await f.write.query<{ id: number; order_id: number }>(
      `SELECT id, (payload->>'id')::int AS order_id FROM outbox WHERE (payload->>'id')::int = ANY ($1)`,
      [created.map((r) => r.json.id)],
    );
    const tokenOf = new Map(ev.map((e) => [e.order_id, String(e.id)]));
    assert.ok(created.every((r) => r.headers.get('x-consistency-token') === tokenOf.get(r.json.id)));

    // Stock moved by exactly what the 201s sold; nothing of a refused order was written.
    const sold = (id: number) => created.flatMap((r) => r.json.items).filter((i: { product_id: number }) => i.product_id === id).reduce((s: number, i: { quantity: number }) => s + i.quantity, 0);
    const { rows: stock } = await f.write.query<{ id: number; stock: number }>('SELECT id, stock FROM products WHERE id = ANY ($1) ORDER BY id', [[plenty, scarce, dear]]);
    assert.deepEqual(stock.map((s) => s.stock), [1000 - sold(plenty), 0, 10]);

    // And they really were grouped: orders committed in one transaction share its xmin.
    const { rows: tx } = await f.write.query<{ txs: string }>('SELECT count(DISTINCT xmin::text) AS txs FROM orders WHERE id = ANY ($1)', [created.map((r) => r.json.id)]);
    assert.ok(Number(tx[0]!.txs) < created.length / 2, `${tx[0]!.txs} transactions for ${created.length} orders`);
    const metrics = await call(f.base, 'GET', '/metrics');
    assert.match(String(metrics.body), /order_batch_size_count \d+/);
  });
});
