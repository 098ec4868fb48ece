import { z } from 'zod';
import type { CommonQueryMethods } from 'slonik';
import { isBusy, isUnavailable, sql } from '../../../db/pool.js';
import { signed } from '../events.js';
import type { Projection } from '../projection.js';

/** product_sales_view: per product, over items of orders not cancelled: quantity, revenue, number of orders. */
export interface ProductSalesRow {
  [column: string]: string | number;
  product_id: number;
  total_quantity_sold: number;
  total_revenue: string;
  order_count: number;
}

export const productSales: Projection<ProductSalesRow> = {
  table: 'product_sales_view',
  key: { name: 'product_id', type: 'int4' },
  columns: [
    { name: 'total_quantity_sold', type: 'int4', combine: 'sum' },
    { name: 'total_revenue', type: 'numeric', combine: 'sum' },
    { name: 'order_count', type: 'int4', combine: 'sum' },
  ],
  evolve({ sign, order }) {
    // order_count counts distinct orders: only the first item of a product counts the order.
    const seen = new Set<number>();
    return order.items.map((item) => {
      const first = !seen.has(item.product_id);
      seen.add(item.product_id);
      return { product_id: item.product_id, total_quantity_sold: sign * item.quantity, total_revenue: signed(item.line_total, sign), order_count: first ? sign : 0 };
    });
  },
  recompute: sql.fragment`
    SELECT i.product_id AS key, sum(i.quantity) AS total_quantity_sold,
           sum(i.quantity * i.price) AS total_revenue, count(DISTINCT i.order_id) AS order_count
      FROM order_items i JOIN orders o ON o.id = i.order_id
     WHERE o.status <> 'cancelled' GROUP BY i.product_id`,
  async panel({ read, write }) {
    const top = await withNames(write, await topProducts(read, 'revenue', 10));
    return {
      id: 'top-products',
      title: 'Top products',
      table: { headers: ['product', 'quantity', 'revenue', 'orders'], rows: top.map((p) => [p.name ?? `#${p.product_id}`, p.total_quantity_sold, p.total_revenue, p.order_count]), empty: 'No sales yet.' },
    };
  },
};

/*
 * Analytics over the view. Money leaves as two-decimal text. Sorts name
 * `v.<column>`: an unqualified ORDER BY total_revenue would sort by the text
 * output column ("9.00" above "10.00") instead of the NUMERIC, and miss the index.
 */
export const salesRow = z.object({ product_id: z.number(), total_quantity_sold: z.number(), total_revenue: z.string(), order_count: z.number() });
export type ProductSales = z.infer<typeof salesRow>;
/** What the API answers: the row plus the product's name from write_db's catalogue (null while write_db cannot be reached). */
export const namedSalesRow = salesRow.extend({ name: z.string().nullable() });
export type NamedProductSales = z.infer<typeof namedSalesRow>;

/**
 * Names the products of some rows. The name lives in write_db (the read model
 * keeps numbers only, SPEC §2): one indexed lookup for the page. When write_db
 * cannot be reached the numbers still answer, with name null.
 */
export async function withNames(write: CommonQueryMethods, rows: readonly ProductSales[]): Promise<NamedProductSales[]> {
  let names = new Map<number, string>();
  if (rows.length > 0) {
    try {
      const named = await write.any(sql.type(z.object({ id: z.number(), name: z.string() }))`
        SELECT id, name FROM products WHERE id = ANY (${sql.array(rows.map((p) => p.product_id), 'int4')})`);
      names = new Map(named.map((p) => [p.id, p.name]));
    } catch (err) {
      if (!isUnavailable(err) && !isBusy(err)) throw err;
    }
  }
  return rows.map((row) => ({ ...row, name: names.get(row.product_id) ?? null }));
}

export function topProducts(db: CommonQueryMethods, by: 'revenue' | 'quantity', limit: number): Promise<readonly ProductSales[]> {
  const order = by === 'revenue' ? sql.fragment`v.total_revenue DESC, v.product_id` : sql.fragment`v.total_quantity_sold DESC, v.product_id`;
  return db.any(sql.type(salesRow)`
    SELECT product_id, total_quantity_sold, round(v.total_revenue, 2)::text AS total_revenue, order_count
      FROM product_sales_view v WHERE v.order_count > 0 ORDER BY ${order} LIMIT ${limit}`);
}

/** One product's sales; zeros when it has none (SPEC §3: a missing row counts as all zeros). */
export async function productSalesOf(db: CommonQueryMethods, productId: number): Promise<ProductSales> {
  const row = await db.maybeOne(sql.type(salesRow)`
    SELECT product_id, total_quantity_sold, round(v.total_revenue, 2)::text AS total_revenue, order_count
      FROM product_sales_view v WHERE v.product_id = ${productId}`);
  return row ?? { product_id: productId, total_quantity_sold: 0, total_revenue: '0.00', order_count: 0 };
}
