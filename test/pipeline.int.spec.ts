import assert from 'node:assert/strict';
import { startTestWeb, call, createProduct, type WebFixture } from './support/web.js';
import { waitForDrain, assertConsistent } from './support/pipeline.js';
import { testLog } from './support/env.js';
import { startRelay, type RelayHandle } from '../workers/relay/start.js';
import { startProjector, type ProjectorHandle } from '../workers/projector/projector.js';

describe('pipeline: outbox → relay → BullMQ → projector → read model (integration)', function () {
  let f: WebFixture;
  let relay: RelayHandle;
  let worker: ProjectorHandle;

  before(async () => {
    f = await startTestWeb({ RECONCILE_INTERVAL_MS: '500', RECONCILE_GRACE_MS: '1000' });
    relay = await startRelay(f.env.config, testLog);
    worker = await startProjector(f.env.config, testLog);
  });
  after(async () => {
    await relay?.stop();
    await worker?.stop();
    await f?.stop();
  });

  it('orders, payments and cancellations end in a read model equal to the recomputation', async () => {
    const products: number[] = [];
    for (let i = 0; i < 5; i++) products.push(await createProduct(f.base, { category: `cat-${i % 3}`, price: `${i + 1}.${(i * 17) % 100}`.replace(/\.(\d)$/, '.0$1'), stock: 10_000 }));
    const orders = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        call(f.base, 'POST', '/orders', {
          customer_id: 1 + (i % 17),
          items: [{ product_id: products[i % 5]!, quantity: 1 + (i % 4) }, { product_id: products[(i + 2) % 5]!, quantity: 2 }],
        }),
      ),
    );
    assert.ok(orders.every((o) => o.status === 201));
    await Promise.all(orders.filter((_, i) => i % 3 === 0).map((o) => call(f.base, 'POST', `/orders/${o.json.id}/pay`)));
    await Promise.all(orders.filter((_, i) => i % 5 === 0).map((o) => call(f.base, 'POST', `/orders/${o.json.id}/cancel`)));
    // A product moving to another category later must not move its past sales.
    await call(f.base, 'PATCH', `/products/${products[0]}`, { category: 'renamed' });
    await waitForDrain(f.writeDb, f.readDb);
    await assertConsistent(f.writeDb, f.readDb);
    const { rows } = await f.read.query<{ n: string }>(`SELECT count(*)::text AS n FROM category_metrics_view WHERE category_name = 'renamed'`);
    assert.equal(rows[0]!.n, '0');
  });
});
