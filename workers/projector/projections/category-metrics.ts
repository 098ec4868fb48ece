import { z } from 'zod';
import type { CommonQueryMethods } from 'slonik';
import { sql } from '../../../db/pool.js';
import { signed } from '../events.js';
import type { Projection } from '../projection.js';

/**
 * category_metrics_view: per category at the time of sale (carried in the
 * event; write_db keeps it in order_item_categories, never read from
 * products.category), over items of orders not cancelled: revenue, number of
 * orders with at least one item in it.
 */
export interface CategoryRow {
  [column: string]: string | number;
  category_name: string;
  total_revenue: string;
  total_orders: number;
}

export const categoryMetrics: Projection<CategoryRow> = {
  table: 'category_metrics_view',
  hot: true,
  key: { name: 'category_name', type: 'text' },
  columns: [
    { name: 'total_revenue', type: 'numeric', combine: 'sum' },
    { name: 'total_orders', type: 'int4', combine: 'sum' },
  ],
  evolve({ sign, order }) {
    const seen = new Set<string>();
    return order.items.map((item) => {
      const first = !seen.has(item.category);
      seen.add(item.category);
      return { category_name: item.category, total_revenue: signed(item.line_total, sign), total_orders: first ? sign : 0 };
    });
  },
  recompute: sql.fragment`
    SELECT c.category AS key, sum(i.quantity * i.price) AS total_revenue, count(DISTINCT i.order_id) AS total_orders
      FROM order_items i JOIN orders o ON o.id = i.order_id JOIN order_item_categories c ON c.order_item_id = i.id
     WHERE o.status <> 'cancelled' GROUP BY c.category`,
  async panel({ read }) {
    const rows = await categoryList(read);
    return { id: 'categories', title: 'Categories', table: { headers: ['category', 'revenue', 'orders'], rows: rows.map((c) => [c.category_name, c.total_revenue, c.total_orders]), empty: 'No sales yet.' } };
  },
};

export const categoryRow = z.object({ category_name: z.string(), total_revenue: z.string(), total_orders: z.number() });
export type CategoryMetrics = z.infer<typeof categoryRow>;

/** Every category with sales, by revenue (money as two-decimal text). */
export function categoryList(db: CommonQueryMethods): Promise<readonly CategoryMetrics[]> {
  return db.any(sql.type(categoryRow)`
    SELECT category_name, round(v.total_revenue, 2)::text AS total_revenue, total_orders
      FROM category_metrics_view v WHERE v.total_orders <> 0 OR v.total_revenue <> 0
     ORDER BY v.total_revenue DESC, v.category_name`);
}
