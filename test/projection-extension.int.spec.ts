import assert from 'node:assert/strict';
import { z } from 'zod';
import { startTestWeb, call, createProduct, type WebFixture } from './support/web.js';
import { created, cancelled, expectProjection } from './support/projection-spec.js';
import { basketSize, createBasketSizeTable } from './support/basket-size.js';
import { sql } from '../db/pool.js';
import { applyEvents } from '../workers/projector/apply.js';
import { orderEvent } from '../workers/projector/events.js';
import { PROJECTIONS } from '../workers/projector/projections/index.js';
import { compareViews } from '../db/recompute.js';
import { rebuild } from '../db/rebuild.js';

/** docs/projections.md's worked example: a projection added as one module plus one migration. */
describe('adding a projection: one module, one migration (integration)', function () {
  this.timeout(60_000);
  let f: WebFixture;
  const all = [...PROJECTIONS, basketSize];

  before(async () => {
    f = await startTestWeb();
    await createBasketSizeTable(f.readDb);
  });
  after(async () => f.stop());

  it('given orders and a cancellation delivered twice, then orders and revenue per basket size', () => {
    const one = { id: 1, customer_id: 1, total: '2.50', created_at: '2026-11-25T10:00:00Z', items: [{ product_id: 1, category: 'a', quantity: 1, line_total: '2.50' }] };
    const two = { ...one, id: 2, total: '7.00', items: [...one.items, { product_id: 2, category: 'b', quantity: 2, line_total: '4.50' }] };
    return expectProjection(f.readDb, basketSize, {
      given: [created(one), created(two), created({ ...two, id: 3 }), cancelled({ ...two, id: 3 })],
      times: 2,
      then: [
        { items: 1, total_orders: 1, total_revenue: '2.50' },
        { items: 2, total_orders: 1, total_revenue: '7.00' },
      ],
    });
  });

  it('the projector, verify and rebuild take it like the others', async () => {
    await f.readDb.query(sql.typeAlias('void')`TRUNCATE basket_size_view, product_sales_view, category_metrics_view, customer_ltv_view, hourly_sales_view, processed_events`);
    const p = await createProduct(f.base, { price: '1.25', stock: 1000 });
    for (let i = 1; i <= 6; i++) {
      const o = await call(f.base, 'POST', '/orders', { customer_id: i, items: Array.from({ length: 1 + (i % 3) }, () => ({ product_id: p, quantity: 1 })) });
      if (i % 4 === 0) await call(f.base, 'POST', `/orders/${o.json.id}/cancel`);
    }
    const events = await f.writeDb.any(sql.type(z.object({ id: z.number(), topic: z.string(), payload: z.unknown() }))`SELECT id, topic, payload FROM outbox ORDER BY id`);
    await applyEvents(f.readDb, events.map((e) => ({ event_id: String(e.id), event: orderEvent(e.topic, e.payload) })), all);
    assert.deepEqual(await compareViews(f.writeDb, f.readDb, [], all), []);
    await f.readDb.query(sql.typeAlias('void')`UPDATE basket_size_view SET total_orders = total_orders + 1`);
    assert.ok((await compareViews(f.writeDb, f.readDb, [], all)).some((d) => d.view === 'basket_size_view'));
    await rebuild(f.env.config.DATABASE_URL, f.env.config.READ_DATABASE_URL, undefined, all);
    assert.deepEqual(await compareViews(f.writeDb, f.readDb, [], all), []);
  });
});
