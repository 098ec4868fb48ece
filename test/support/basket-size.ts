import type { CommonQueryMethods } from 'slonik';
import { sql } from '../../db/pool.js';
import { signed } from '../../workers/projector/events.js';
import type { Projection } from '../../workers/projector/projection.js';

/**
 * A projection added the way docs/projections.md describes, used by the
 * tests to show that one module and one migration are all it takes:
 * orders and revenue by basket size (the number of items in an order).
 */
export const BASKET_SIZE_MIGRATION = sql.fragment`
  CREATE TABLE basket_size_view (
    items         INTEGER PRIMARY KEY,
    total_orders  INTEGER NOT NULL DEFAULT 0,
    total_revenue DECIMAL NOT NULL DEFAULT 0
  )`;

export const basketSize: Projection = {
  table: 'basket_size_view',
  key: { name: 'items', type: 'int4' },
  columns: [
    { name: 'total_orders', type: 'int4', combine: 'sum' },
    { name: 'total_revenue', type: 'numeric', combine: 'sum' },
  ],
  evolve: ({ sign, order }) => [{ items: order.items.length, total_orders: sign, total_revenue: signed(order.total, sign) }],
  recompute: sql.fragment`
    SELECT n AS key, count(*) AS total_orders, sum(total) AS total_revenue
      FROM (SELECT o.id, o.total, count(*) AS n FROM orders o JOIN order_items i ON i.order_id = o.id
             WHERE o.status <> 'cancelled' GROUP BY o.id, o.total) per_order
     GROUP BY n`,
};

export async function createBasketSizeTable(read: CommonQueryMethods): Promise<void> {
  await read.query(sql.typeAlias('void')`${BASKET_SIZE_MIGRATION}`);
}
