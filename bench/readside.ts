import type pg from 'pg';
import type { Db } from '../db/pool.js';
import { productSalesOf, topProducts } from '../workers/projector/projections/product-sales.js';
import { categoryList } from '../workers/projector/projections/category-metrics.js';
import { customerLtvOf, topCustomers } from '../workers/projector/projections/customer-ltv.js';
import { hoursBetween } from '../workers/projector/projections/hourly-sales.js';
import { percentile } from './lib.js';

/**
 * Bulk data for the read-side and rebuild benchmarks: `orders` orders of two
 * items over the seeded products, 10 % cancelled, spread over 90 days, with
 * one outbox row per order event — written set-based, because how the rows
 * got there does not matter to what is measured.
 */
export async function seedOrders(write: pg.Pool, orders: number, onProgress: (done: number) => void): Promise<void> {
  const step = 100_000;
  for (let from = 1; from <= orders; from += step) {
    const to = Math.min(orders, from + step - 1);
    const client = await write.connect();
    try {
      await client.query('BEGIN');
      await client.query(
        `INSERT INTO orders (id, customer_id, total, status, created_at)
         SELECT g, 1 + ((g::bigint * 7919) % 50000)::int, 0, CASE WHEN g % 10 = 0 THEN 'cancelled' ELSE 'paid' END,
                timestamp '2026-01-01' + ((g * 37) % 2160) * interval '1 hour' + (g % 3600) * interval '1 second'
           FROM generate_series($1::int, $2::int) g`,
        [from, to],
      );
      await client.query(
        `WITH items AS (
           INSERT INTO order_items (order_id, product_id, quantity, price)
           SELECT g, p.id, 1 + (g + k) % 3, p.price
             FROM generate_series($1::int, $2::int) g
             CROSS JOIN (VALUES (1), (2)) AS k (k)
             JOIN products p ON p.id = 1 + ((g * 13 + k * 101) % 1000)
           RETURNING id, product_id)
         INSERT INTO order_item_categories (order_item_id, category)
         SELECT items.id, p.category FROM items JOIN products p ON p.id = items.product_id`,
        [from, to],
      );
      await client.query(
        `UPDATE orders o SET total = s.t
           FROM (SELECT order_id, sum(quantity * price) AS t FROM order_items WHERE order_id BETWEEN $1 AND $2 GROUP BY order_id) s
          WHERE o.id = s.order_id`,
        [from, to],
      );
      await client.query(
        `INSERT INTO outbox (topic, payload, published_at)
         SELECT CASE WHEN k = 1 THEN 'order.created' ELSE 'order.cancelled' END, jsonb_build_object('id', g), now()
           FROM generate_series($1::int, $2::int) g CROSS JOIN (VALUES (1), (2)) AS k (k)
          WHERE k = 1 OR g % 10 = 0`,
        [from, to],
      );
      await client.query('COMMIT');
    } finally {
      client.release();
    }
    onProgress(to);
  }
  await write.query(`SELECT setval('orders_id_seq', $1)`, [orders]);
  // As autovacuum leaves a history that has been there a while: the UPDATE above left a dead version of every
  // order, and no row has its hint bits yet. Without it, the first full read after seeding (a rebuild's, say)
  // paid for both, measured as a cold rebuild 1.7× slower than the next one.
  await write.query('VACUUM ANALYZE');
}

/**
 * Each analytics endpoint; the read-model query it runs (its projection module,
 * timed without HTTP); and the same answer computed on the fly from write_db.
 */
export const ON_THE_FLY: Record<string, { path: string; readModel: (read: Db) => Promise<unknown>; sql: string; params: unknown[] }> = {
  'product by id': {
    path: '/analytics/products/500',
    readModel: (read) => productSalesOf(read, 500),
    sql: `SELECT i.product_id, sum(i.quantity), sum(i.quantity * i.price), count(DISTINCT i.order_id)
            FROM order_items i JOIN orders o ON o.id = i.order_id WHERE i.product_id = $1 AND o.status <> 'cancelled' GROUP BY 1`,
    params: [500],
  },
  'top products': {
    path: '/analytics/products/top?by=revenue&limit=10',
    readModel: (read) => topProducts(read, 'revenue', 10),
    sql: `SELECT i.product_id, sum(i.quantity * i.price) AS r FROM order_items i JOIN orders o ON o.id = i.order_id
           WHERE o.status <> 'cancelled' GROUP BY 1 ORDER BY r DESC LIMIT 10`,
    params: [],
  },
  categories: {
    path: '/analytics/categories',
    readModel: (read) => categoryList(read),
    sql: `SELECT c.category, sum(i.quantity * i.price), count(DISTINCT i.order_id) FROM order_items i
            JOIN orders o ON o.id = i.order_id JOIN order_item_categories c ON c.order_item_id = i.id
           WHERE o.status <> 'cancelled' GROUP BY 1`,
    params: [],
  },
  'customer by id': {
    path: '/analytics/customers/4242',
    readModel: (read) => customerLtvOf(read, 4242),
    sql: `SELECT customer_id, sum(total) FILTER (WHERE status <> 'cancelled'), count(*) FILTER (WHERE status <> 'cancelled'), max(created_at)
            FROM orders WHERE customer_id = $1 GROUP BY 1`,
    params: [4242],
  },
  'top customers': {
    path: '/analytics/customers/top?limit=10',
    readModel: (read) => topCustomers(read, 10),
    sql: `SELECT customer_id, sum(total) AS s FROM orders WHERE status <> 'cancelled' GROUP BY 1 ORDER BY s DESC LIMIT 10`,
    params: [],
  },
  'hourly, 7 days': {
    path: '/analytics/hourly?from=2026-02-01T00:00:00Z&to=2026-02-08T00:00:00Z',
    readModel: (read) => hoursBetween(read, '2026-02-01T00:00:00.000Z', '2026-02-08T00:00:00.000Z'),
    sql: `SELECT date_trunc('hour', created_at), count(*), sum(total) FROM orders
           WHERE status <> 'cancelled' AND created_at >= '2026-02-01' AND created_at <= '2026-02-08' GROUP BY 1 ORDER BY 1`,
    params: [],
  },
};

export async function timeIt(runs: number, fn: () => Promise<unknown>): Promise<{ p50: number; p99: number }> {
  await fn(); // warm the cache and the plan
  const t: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await fn();
    t.push(performance.now() - t0);
  }
  t.sort((a, b) => a - b);
  return { p50: percentile(t, 50), p99: percentile(t, 99) };
}
