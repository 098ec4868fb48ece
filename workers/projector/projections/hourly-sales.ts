import { z } from 'zod';
import type { CommonQueryMethods } from 'slonik';
import { sql } from '../../../db/pool.js';
import { hourOf, signed } from '../events.js';
import type { Projection } from '../projection.js';

/** hourly_sales_view: per UTC hour of the order's creation, over orders not cancelled: number of orders, revenue. */
export interface HourlyRow {
  [column: string]: string | number;
  hour_timestamp: string;
  total_orders: number;
  total_revenue: string;
}

export const hourlySales: Projection<HourlyRow> = {
  table: 'hourly_sales_view',
  hot: true,
  key: { name: 'hour_timestamp', type: 'timestamp' },
  columns: [
    { name: 'total_orders', type: 'int4', combine: 'sum' },
    { name: 'total_revenue', type: 'numeric', combine: 'sum' },
  ],
  evolve({ sign, order }) {
    return [{ hour_timestamp: hourOf(order.created_at), total_orders: sign, total_revenue: signed(order.total, sign) }];
  },
  recompute: sql.fragment`
    SELECT date_trunc('hour', created_at) AS key, count(*) AS total_orders, sum(total) AS total_revenue
      FROM orders WHERE status <> 'cancelled' GROUP BY 1`,
  async panel({ read }) {
    // The last 24 UTC hours as fixed slots; a bar's height is only for drawing, its label carries the exact text.
    const byHour = new Map((await lastDay(read)).map((x) => [x.hour, x]));
    const now = new Date();
    const end = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate(), now.getUTCHours());
    const bars = Array.from({ length: 24 }, (_, i) => {
      const hour = new Date(end - (23 - i) * 3_600_000).toISOString().slice(0, 16) + 'Z';
      const x = byHour.get(hour) ?? { hour, orders: 0, revenue: '0.00', share: 0 };
      return { label: hour.slice(11, 16), value: x.revenue, share: x.share, title: `${hour}: ${x.revenue} (${x.orders} orders)` };
    });
    return { id: 'hourly', title: 'Revenue per hour (UTC)', wide: true, bars };
  },
};

export const hourRow = z.object({ hour_timestamp: z.string(), total_orders: z.number(), total_revenue: z.string() });
export type HourlySales = z.infer<typeof hourRow>;

/** Hours in [from, to] (ISO-8601 UTC instants; null: unbounded) with any sales. */
export function hoursBetween(db: CommonQueryMethods, from: string | null, to: string | null): Promise<readonly HourlySales[]> {
  return db.any(sql.type(hourRow)`
    SELECT hour_timestamp, total_orders, round(v.total_revenue, 2)::text AS total_revenue
      FROM hourly_sales_view v
     WHERE (${from}::timestamptz IS NULL OR v.hour_timestamp >= (${from}::timestamptz AT TIME ZONE 'UTC'))
       AND (${to}::timestamptz IS NULL OR v.hour_timestamp <= (${to}::timestamptz AT TIME ZONE 'UTC'))
       AND (v.total_orders <> 0 OR v.total_revenue <> 0)
     ORDER BY v.hour_timestamp`);
}

const chartRow = z.object({ hour: z.string(), orders: z.number(), revenue: z.string(), share: z.number() });
export type ChartHour = z.infer<typeof chartRow>;

/**
 * The last 24 hours for the dashboard's chart. `share` is revenue / the
 * largest hour's revenue, computed by PostgreSQL: only bar heights, never
 * money, are floats.
 */
export function lastDay(db: CommonQueryMethods): Promise<readonly ChartHour[]> {
  return db.any(sql.type(chartRow)`
    SELECT to_char(hour_timestamp, 'YYYY-MM-DD"T"HH24:MI"Z"') AS hour, total_orders AS orders, round(total_revenue, 2)::text AS revenue,
           coalesce(greatest(total_revenue, 0) / nullif(max(total_revenue) OVER (), 0), 0)::float8 AS share
      FROM hourly_sales_view
     WHERE total_orders <> 0 AND hour_timestamp > (now() AT TIME ZONE 'UTC') - interval '24 hours'
     ORDER BY hour_timestamp`);
}
