import assert from 'node:assert/strict';
import { createDb, type Db } from '../db/pool.js';
import { createTestEnv, testLog } from './support/env.js';
import { cancelled, created, expectProjection, paid } from './support/projection-spec.js';
import { applyEvents } from '../workers/projector/apply.js';
import { orderEvent, InvalidEventError, hourOf, type OrderPayload } from '../workers/projector/events.js';
import { productSales } from '../workers/projector/projections/product-sales.js';
import { categoryMetrics } from '../workers/projector/projections/category-metrics.js';
import { customerLtv } from '../workers/projector/projections/customer-ltv.js';
import { hourlySales } from '../workers/projector/projections/hourly-sales.js';

const order: OrderPayload = {
  id: 10,
  customer_id: 3,
  total: '140.23',
  created_at: '2026-11-25T08:42:37.123456Z',
  items: [
    { product_id: 7, category: 'toys', quantity: 3, line_total: '0.30' },
    { product_id: 8, category: 'tools', quantity: 7, line_total: '139.93' },
  ],
};
const later: OrderPayload = { id: 11, customer_id: 3, total: '5.00', created_at: '2026-11-25T09:05:00.000000Z', items: [{ product_id: 7, category: 'toys', quantity: 1, line_total: '5.00' }] };
const repeated: OrderPayload = {
  ...order,
  id: 12,
  items: [
    { product_id: 7, category: 'toys', quantity: 1, line_total: '0.10' },
    { product_id: 7, category: 'toys', quantity: 2, line_total: '0.20' },
    { product_id: 9, category: 'toys', quantity: 1, line_total: '5.00' },
  ],
};

describe('events (unit): what projections read of an event', () => {
  it('order.created adds, order.cancelled takes away, paid and shipped change no view', () => {
    assert.deepEqual(orderEvent('order.created', order), { sign: 1, order });
    assert.equal(orderEvent('order.cancelled', order)?.sign, -1);
    assert.equal(orderEvent('order.paid', order), undefined);
    assert.equal(orderEvent('order.shipped', order), undefined);
    assert.equal(orderEvent('product.updated', {}), undefined);
  });

  it('refuses a malformed payload instead of guessing', () => {
    assert.throws(() => orderEvent('order.created', { ...order, total: 140.23 }), InvalidEventError);
    assert.throws(() => orderEvent('order.created', { ...order, items: [] }), InvalidEventError);
    assert.throws(() => orderEvent('order.cancelled', { ...order, created_at: '2026-11-25 08:42' }), InvalidEventError);
  });

  it('hourOf truncates a UTC timestamp to its hour', () => {
    assert.equal(hourOf('2026-01-01T23:59:59.999999Z'), '2026-01-01T23:00:00Z');
  });
});

describe('projections (unit): evolve is a pure function of the event', () => {
  it('product_sales_view counts an order once per product even when items repeat it', () => {
    assert.deepEqual(productSales.evolve({ sign: 1, order: repeated }).map((r) => r.order_count), [1, 0, 1]);
  });
  it('category_metrics_view counts an order once per category', () => {
    assert.deepEqual(categoryMetrics.evolve({ sign: 1, order: repeated }).map((r) => r.total_orders), [1, 0, 0]);
  });
  it('a cancellation is the creation with every sign flipped, except last_order_date', () => {
    assert.deepEqual(customerLtv.evolve({ sign: -1, order }), [{ customer_id: 3, total_spent: '-140.23', order_count: -1, last_order_date: order.created_at }]);
    assert.deepEqual(hourlySales.evolve({ sign: -1, order }), [{ hour_timestamp: '2026-11-25T08:00:00Z', total_orders: -1, total_revenue: '-140.23' }]);
  });
});

describe('projections (given events, then rows; real read_db)', function () {
  let db: Db;
  before(async () => {
    const env = await createTestEnv();
    db = createDb(env.config.READ_DATABASE_URL, { name: 'test', max: 2, log: testLog });
  });
  after(async () => db.end());

  describe('product_sales_view', () => {
    it('given an order, then quantity, revenue and one order per product', () =>
      expectProjection(db, productSales, {
        given: [created(order)],
        then: [
          { product_id: 7, total_quantity_sold: 3, total_revenue: '0.30', order_count: 1 },
          { product_id: 8, total_quantity_sold: 7, total_revenue: '139.93', order_count: 1 },
        ],
      }));
    it('given the same events delivered twice, then the same rows', () =>
      expectProjection(db, productSales, {
        given: [created(order), created(later)],
        times: 2,
        then: [
          { product_id: 7, total_quantity_sold: 4, total_revenue: '5.30', order_count: 2 },
          { product_id: 8, total_quantity_sold: 7, total_revenue: '139.93', order_count: 1 },
        ],
      }));
    it('given an order and its cancellation, in either order, then zeros', async () => {
      const zeros = [
        { product_id: 7, total_quantity_sold: 0, total_revenue: '0.00', order_count: 0 },
        { product_id: 8, total_quantity_sold: 0, total_revenue: '0.00', order_count: 0 },
      ];
      await expectProjection(db, productSales, { given: [created(order), cancelled(order)], then: zeros });
      await expectProjection(db, productSales, { given: [cancelled(order), created(order)], then: zeros });
    });
    it('given only events that change no view, then no rows, and the batch is still recorded as processed', async () => {
      await expectProjection(db, productSales, { given: [paid(order)], then: [] });
      const r = await applyEvents(db, [{ event_id: '900001', event: undefined }, { event_id: '900002', event: undefined }]);
      assert.deepEqual(r, { applied: ['900001', '900002'], parked: [], duplicates: [] });
      assert.deepEqual((await applyEvents(db, [{ event_id: '900001', event: undefined }])).duplicates, ['900001']);
    });
  });

  describe('category_metrics_view', () => {
    it('given orders, then revenue and orders per category at the time of sale', () =>
      expectProjection(db, categoryMetrics, {
        given: [created(order), created(repeated), paid(order)],
        times: 2,
        then: [
          { category_name: 'tools', total_revenue: '139.93', total_orders: 1 },
          { category_name: 'toys', total_revenue: '5.60', total_orders: 2 },
        ],
      }));
  });

  describe('customer_ltv_view', () => {
    it('given two orders and a cancellation, then what the one left spent, and the latest order date of any', () =>
      expectProjection(db, customerLtv, {
        given: [created(order), created(later), cancelled(later)],
        times: 2,
        then: [{ customer_id: 3, total_spent: '140.23', order_count: 1, last_order_date: '2026-11-25T09:05:00Z' }],
      }));
  });

  describe('hourly_sales_view', () => {
    it('given orders in two hours, then orders and revenue per UTC hour', () =>
      expectProjection(db, hourlySales, {
        given: [created(order), created(later), created(repeated)],
        times: 2,
        then: [
          { hour_timestamp: '2026-11-25T08:00:00Z', total_orders: 2, total_revenue: '280.46' },
          { hour_timestamp: '2026-11-25T09:00:00Z', total_orders: 1, total_revenue: '5.00' },
        ],
      }));
  });
});
