import { z } from 'zod';
import type { CommonQueryMethods } from 'slonik';
import { sql } from '../../../db/pool.js';
import { signed } from '../events.js';
import type { Projection } from '../projection.js';

/**
 * customer_ltv_view: per customer, over orders not cancelled: total spent,
 * number of orders; last_order_date is the latest order of any status
 * (cancelled ones too), combined with GREATEST, so a cancellation leaves it.
 */
export interface CustomerRow {
  [column: string]: string | number;
  customer_id: number;
  total_spent: string;
  order_count: number;
  last_order_date: string;
}

export const customerLtv: Projection<CustomerRow> = {
  table: 'customer_ltv_view',
  key: { name: 'customer_id', type: 'int4' },
  columns: [
    { name: 'total_spent', type: 'numeric', combine: 'sum' },
    { name: 'order_count', type: 'int4', combine: 'sum' },
    { name: 'last_order_date', type: 'timestamp', combine: 'max' },
  ],
  evolve({ sign, order }) {
    return [{ customer_id: order.customer_id, total_spent: signed(order.total, sign), order_count: sign, last_order_date: order.created_at }];
  },
  recompute: sql.fragment`
    SELECT customer_id AS key,
           coalesce(sum(total) FILTER (WHERE status <> 'cancelled'), 0) AS total_spent,
           count(*) FILTER (WHERE status <> 'cancelled') AS order_count,
           max(created_at) AS last_order_date
      FROM orders GROUP BY customer_id`,
  async panel({ read }) {
    const rows = await topCustomers(read, 10);
    return { id: 'top-customers', title: 'Top customers', table: { headers: ['customer', 'spent', 'orders', 'last order'], rows: rows.map((c) => [c.customer_id, c.total_spent, c.order_count, c.last_order_date?.slice(0, 16).replace('T', ' ') ?? '']), empty: 'No customers yet.' } };
  },
};

export const customerRow = z.object({ customer_id: z.number(), total_spent: z.string(), order_count: z.number(), last_order_date: z.string().nullable() });
export type CustomerLtv = z.infer<typeof customerRow>;

export function topCustomers(db: CommonQueryMethods, limit: number): Promise<readonly CustomerLtv[]> {
  return db.any(sql.type(customerRow)`
    SELECT customer_id, round(v.total_spent, 2)::text AS total_spent, order_count, last_order_date
      FROM customer_ltv_view v WHERE v.order_count > 0 ORDER BY v.total_spent DESC, v.customer_id LIMIT ${limit}`);
}

/** One customer's lifetime value; zeros when they have none. */
export async function customerLtvOf(db: CommonQueryMethods, customerId: number): Promise<CustomerLtv> {
  const row = await db.maybeOne(sql.type(customerRow)`
    SELECT customer_id, round(v.total_spent, 2)::text AS total_spent, order_count, last_order_date
      FROM customer_ltv_view v WHERE v.customer_id = ${customerId}`);
  return row ?? { customer_id: customerId, total_spent: '0.00', order_count: 0, last_order_date: null };
}
