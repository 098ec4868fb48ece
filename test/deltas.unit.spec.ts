import assert from 'node:assert/strict';
import { deltasFor, hourOf, InvalidEventError, EMPTY } from '../workers/projector/deltas.js';

const order = {
  id: 10,
  customer_id: 3,
  status: 'pending',
  total: '140.23',
  created_at: '2026-11-25T08:42:37.123456Z',
  items: [
    { id: 1, product_id: 7, category: 'toys', quantity: 3, price: '0.10', line_total: '0.30' },
    { id: 2, product_id: 8, category: 'tools', quantity: 7, price: '19.99', line_total: '139.93' },
  ],
};

describe('deltasFor (unit): an event becomes additive view rows', () => {
  it('order.created adds quantity, revenue and one order per product, category, customer and hour', () => {
    assert.deepEqual(deltasFor('order.created', order), {
      products: [
        { product_id: 7, quantity: 3, revenue: '0.30', orders: 1 },
        { product_id: 8, quantity: 7, revenue: '139.93', orders: 1 },
      ],
      categories: [
        { category: 'toys', revenue: '0.30', orders: 1 },
        { category: 'tools', revenue: '139.93', orders: 1 },
      ],
      customers: [{ customer_id: 3, spent: '140.23', orders: 1, last_order_date: '2026-11-25T08:42:37.123456Z' }],
      hours: [{ hour: '2026-11-25T08:00:00Z', orders: 1, revenue: '140.23' }],
    });
  });

  it('order.cancelled is order.created with every sign flipped, except last_order_date', () => {
    const created = deltasFor('order.created', order);
    const cancelled = deltasFor('order.cancelled', { ...order, status: 'cancelled' });
    assert.deepEqual(cancelled.products.map((p) => [p.quantity, p.revenue, p.orders]), [[-3, '-0.30', -1], [-7, '-139.93', -1]]);
    assert.deepEqual(cancelled.customers[0], { ...created.customers[0], spent: '-140.23', orders: -1 });
    assert.deepEqual(cancelled.hours[0], { hour: '2026-11-25T08:00:00Z', orders: -1, revenue: '-140.23' });
  });

  it('counts an order once per product and per category even when items repeat them', () => {
    const d = deltasFor('order.created', {
      ...order,
      items: [
        { product_id: 7, category: 'toys', quantity: 1, line_total: '0.10' },
        { product_id: 7, category: 'toys', quantity: 2, line_total: '0.20' },
        { product_id: 9, category: 'toys', quantity: 1, line_total: '5.00' },
      ],
    });
    assert.deepEqual(d.products.map((p) => p.orders), [1, 0, 1]);
    assert.deepEqual(d.categories.map((c) => c.orders), [1, 0, 0]);
  });

  it('paid, shipped and unknown topics change no view', () => {
    assert.equal(deltasFor('order.paid', order), EMPTY);
    assert.equal(deltasFor('order.shipped', order), EMPTY);
    assert.equal(deltasFor('product.updated', {}), EMPTY);
  });

  it('refuses a malformed payload instead of guessing', () => {
    assert.throws(() => deltasFor('order.created', { ...order, total: 140.23 }), InvalidEventError);
    assert.throws(() => deltasFor('order.created', { ...order, items: [] }), InvalidEventError);
    assert.throws(() => deltasFor('order.cancelled', { ...order, created_at: '2026-11-25 08:42' }), InvalidEventError);
  });

  it('hourOf truncates a UTC timestamp to its hour', () => {
    assert.equal(hourOf('2026-01-01T23:59:59.999999Z'), '2026-01-01T23:00:00Z');
    assert.equal(hourOf('2026-01-01T00:00:00Z'), '2026-01-01T00:00:00Z');
  });
});
