import type { Pool } from './pool.js';

/**
 * The analytics queries, over read_db only. Money leaves as two-decimal text;
 * a key with no row reads as zeros (SPEC §3: a missing row counts as all
 * zeros).
 *
 * The views are aliased `v` and sorts name `v.<column>`: an unqualified
 * ORDER BY total_revenue would sort by the text output column of MONEY
 * ("9.00" above "10.00") instead of the NUMERIC, and miss the index.
 */
const MONEY = (col: string) => `round(v.${col}, 2)::text`;

export interface ProductSales {
  product_id: number;
  total_quantity_sold: number;
  total_revenue: string;
  order_count: number;
}
export interface CategoryMetrics {
  category_name: string;
  total_revenue: string;
  total_orders: number;
}
export interface CustomerLtv {
  customer_id: number;
  total_spent: string;
  order_count: number;
  /** ISO-8601 UTC text (db/pool.ts parses TIMESTAMP so). */
  last_order_date: string | null;
}
export interface HourlySales {
  hour_timestamp: string;
  total_orders: number;
  total_revenue: string;
}

export async function topProducts(pool: Pool, by: 'revenue' | 'quantity', limit: number): Promise<ProductSales[]> {
  const order = by === 'revenue' ? 'v.total_revenue DESC, v.product_id' : 'v.total_quantity_sold DESC, v.product_id';
  const { rows } = await pool.query<ProductSales>(
    `SELECT product_id, total_quantity_sold, ${MONEY('total_revenue')} AS total_revenue, order_count
       FROM product_sales_view v WHERE v.order_count > 0 ORDER BY ${order} LIMIT $1`,
    [limit],
  );
  return rows;
}

export async function productSales(pool: Pool, id: number): Promise<ProductSales> {
  const { rows } = await pool.query<ProductSales>(
    `SELECT product_id, total_quantity_sold, ${MONEY('total_revenue')} AS total_revenue, order_count
       FROM product_sales_view v WHERE v.product_id = $1`,
    [id],
  );
  return rows[0] ?? { product_id: id, total_quantity_sold: 0, total_revenue: '0.00', order_count: 0 };
}

export async function categoryMetrics(pool: Pool): Promise<CategoryMetrics[]> {
  const { rows } = await pool.query<CategoryMetrics>(
    `SELECT category_name, ${MONEY('total_revenue')} AS total_revenue, total_orders
       FROM category_metrics_view v WHERE v.total_orders <> 0 OR v.total_revenue <> 0
      ORDER BY v.total_revenue DESC, v.category_name`,
  );
  return rows;
}

export async function topCustomers(pool: Pool, limit: number): Promise<CustomerLtv[]> {
  const { rows } = await pool.query<CustomerLtv>(
    `SELECT customer_id, ${MONEY('total_spent')} AS total_spent, order_count, last_order_date
       FROM customer_ltv_view v WHERE v.order_count > 0 ORDER BY v.total_spent DESC, v.customer_id LIMIT $1`,
    [limit],
  );
  return rows;
}

export async function customerLtv(pool: Pool, id: number): Promise<CustomerLtv> {
  const { rows } = await pool.query<CustomerLtv>(
    `SELECT customer_id, ${MONEY('total_spent')} AS total_spent, order_count, last_order_date
       FROM customer_ltv_view v WHERE v.customer_id = $1`,
    [id],
  );
  return rows[0] ?? { customer_id: id, total_spent: '0.00', order_count: 0, last_order_date: null };
}

/** Hours in [from, to] (ISO-8601 UTC instants; null: unbounded) with any sales. */
export async function hourlySales(pool: Pool, from: string | null, to: string | null): Promise<HourlySales[]> {
  const { rows } = await pool.query<HourlySales>(
    `SELECT hour_timestamp, total_orders, ${MONEY('total_revenue')} AS total_revenue
       FROM hourly_sales_view v
      WHERE ($1::timestamptz IS NULL OR hour_timestamp >= ($1::timestamptz AT TIME ZONE 'UTC'))
        AND ($2::timestamptz IS NULL OR hour_timestamp <= ($2::timestamptz AT TIME ZONE 'UTC'))
        AND (total_orders <> 0 OR total_revenue <> 0)
      ORDER BY hour_timestamp`,
    [from, to],
  );
  return rows;
}
