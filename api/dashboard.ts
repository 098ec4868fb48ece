import type { Route } from './router.js';
import type { Deps } from './deps.js';
import { readPushedMetrics } from '../lib/metrics-push.js';
import { outboxBacklog } from '../db/outbox.js';
import { within } from '../lib/timeout.js';
import type pg from 'pg';

/** Mean projection lag over the workers' lifetime and their pushed histograms; undefined when none reported. */
async function projectionLagMs(deps: Deps): Promise<number | undefined> {
  let sum = 0;
  let count = 0;
  for (const metrics of await readPushedMetrics(deps.redis, deps.config.QUEUE_PREFIX)) {
    const lag = metrics.find((m) => m.name === 'projection_lag_seconds');
    for (const v of (lag?.values ?? []) as { metricName?: string; value: number }[]) {
      if (v.metricName === 'projection_lag_seconds_sum') sum += v.value;
      if (v.metricName === 'projection_lag_seconds_count') count += v.value;
    }
  }
  return count > 0 ? (sum / count) * 1000 : undefined;
}

/**
 * GET /: a server-rendered dashboard (no build step, no script): hourly
 * revenue as an inline SVG bar chart, top products, categories, and the live
 * state of the pipeline. It refreshes itself every 5 seconds.
 */

const esc = (s: unknown) =>
  String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

/** `share` is revenue / the largest hour's revenue, computed by PostgreSQL: only bar heights, never money, are floats. */
interface Hour { hour: string; orders: number; revenue: string; share: number }

/** The last 24 UTC hours as fixed slots; bar height is only for drawing, labels carry the exact text. */
function hourlyChart(hours: Hour[], now = new Date()): string {
  const byHour = new Map(hours.map((x) => [x.hour, x]));
  const end = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate(), now.getUTCHours());
  const slots = Array.from({ length: 24 }, (_, i) => {
    const hour = new Date(end - (23 - i) * 3_600_000).toISOString().slice(0, 16) + 'Z';
    return byHour.get(hour) ?? { hour, orders: 0, revenue: '0.00', share: 0 };
  });
  const w = 760;
  const h = 200;
  const bw = Math.floor((w - 40) / 24) - 4;
  const bars = slots
    .map((x, i) => {
      const bh = x.share > 0 ? Math.max(2, Math.round(x.share * (h - 50))) : 0;
      const xPos = 30 + i * (bw + 4);
      const label = i % 3 === 2 || i === 23 ? `<text x="${xPos + bw / 2}" y="${h - 5}" text-anchor="middle">${esc(x.hour.slice(11, 16))}</text>` : '';
      const value = bh > 0 ? `<text x="${xPos + bw / 2}" y="${h - 24 - bh}" text-anchor="middle">${esc(x.revenue)}</text>` : '';
      return `<g><title>${esc(x.hour)}: ${esc(x.revenue)} (${x.orders} orders)</title>${bh > 0 ? `<rect x="${xPos}" y="${h - 20 - bh}" width="${bw}" height="${bh}" rx="2"></rect>` : ''}${value}${label}</g>`;
    })
    .join('');
  return `<svg viewBox="0 0 ${w} ${h}" role="img" aria-label="Revenue per hour"><line x1="28" y1="${h - 20}" x2="${w - 8}" y2="${h - 20}" stroke="#ccd"></line>${bars}</svg>`;
}

function table(headers: string[], rows: (string | number)[][], empty: string): string {
  if (rows.length === 0) return `<p class="empty">${esc(empty)}</p>`;
  return `<table><thead><tr>${headers.map((x) => `<th>${esc(x)}</th>`).join('')}</tr></thead><tbody>${rows
    .map((r) => `<tr>${r.map((c) => `<td>${esc(c)}</td>`).join('')}</tr>`)
    .join('')}</tbody></table>`;
}

/** Each source gets this long; a service that is away leaves its part of the page marked unavailable. */
const SOURCE_TIMEOUT_MS = 1500;
const UNAVAILABLE = 'unavailable';

async function render(deps: Deps): Promise<string> {
  const read = <T extends pg.QueryResultRow>(sql: string) => within(deps.readPool.query<T>(sql).then((r) => r.rows), SOURCE_TIMEOUT_MS);
  const [hours, products, categories, totals, backlog] = await Promise.all([
    read<Hour>(
      `SELECT to_char(hour_timestamp, 'YYYY-MM-DD"T"HH24:MI"Z"') AS hour, total_orders AS orders, round(total_revenue, 2)::text AS revenue,
              coalesce(greatest(total_revenue, 0) / nullif(max(total_revenue) OVER (), 0), 0)::float8 AS share
         FROM hourly_sales_view
        WHERE total_orders <> 0 AND hour_timestamp > (now() AT TIME ZONE 'UTC') - interval '24 hours'
        ORDER BY hour_timestamp`,
    ),
    read<{ product_id: number; total_quantity_sold: number; revenue: string; order_count: number }>(
      `SELECT product_id, total_quantity_sold, round(total_revenue, 2)::text AS revenue, order_count
         FROM product_sales_view WHERE order_count > 0 ORDER BY total_revenue DESC, product_id LIMIT 10`,
    ),
    read<{ category_name: string; revenue: string; total_orders: number }>(
      `SELECT category_name, round(total_revenue, 2)::text AS revenue, total_orders
         FROM category_metrics_view WHERE total_orders <> 0 ORDER BY total_revenue DESC, category_name`,
    ),
    read<{ orders: number; revenue: string; events: number }>(
      `SELECT coalesce(sum(total_orders), 0)::int AS orders, round(coalesce(sum(total_revenue), 0), 2)::text AS revenue,
              (SELECT count(*) FROM processed_events)::int AS events
         FROM hourly_sales_view`,
    ),
    within(outboxBacklog(deps.writePool), SOURCE_TIMEOUT_MS),
  ]);
  const ids = (products ?? []).map((p) => p.product_id);
  const named = await within(deps.writePool.query<{ id: number; name: string }>('SELECT id, name FROM products WHERE id = ANY ($1::int[])', [ids]), SOURCE_TIMEOUT_MS);
  const names = new Map((named?.rows ?? []).map((p) => [p.id, p.name]));
  let waiting = 'Redis unavailable';
  let lag = '–';
  // BullMQ waits for a connection that is not ready: ask only when it is.
  if (deps.redis.status === 'ready') {
    const counts = await within(deps.queue.getJobCounts('waiting'), SOURCE_TIMEOUT_MS);
    if (counts) waiting = String(counts.waiting ?? 0);
    const ms = await within(projectionLagMs(deps), SOURCE_TIMEOUT_MS);
    if (ms !== undefined) lag = `${ms.toFixed(0)} ms`;
  }
  const t = totals?.[0] ?? { orders: UNAVAILABLE, revenue: UNAVAILABLE, events: UNAVAILABLE };
  const b = backlog ?? { unpublished: UNAVAILABLE, oldestAgeSeconds: 0 };
  const section = <T>(rows: T[] | undefined, draw: (rows: T[]) => string) => (rows ? draw(rows) : `<p class="empty">The read model is unavailable right now.</p>`);
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Order pipeline</title><link rel="icon" href="data:,">
<style>
body{font:15px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px}header h1{margin:0;font-size:18px}
main{display:grid;grid-template-columns:repeat(auto-fit,minmax(360px,1fr));gap:16px;padding:16px 24px}
section{background:#fff;border-radius:8px;padding:14px 18px;box-shadow:0 1px 2px #0001}
section.wide{grid-column:1/-1}h2{font-size:14px;text-transform:uppercase;letter-spacing:.04em;color:#5b6475;margin:0 0 10px}
.kpis{display:flex;gap:32px;flex-wrap:wrap}.kpi b{display:block;font-size:26px}.kpi span{color:#5b6475;font-size:13px}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:4px 6px;border-bottom:1px solid #eceef2}td:not(:first-child),th:not(:first-child){text-align:right}
svg{width:100%;height:auto}rect{fill:#3f7de0}text{font-size:10px;fill:#5b6475}.empty{color:#8a93a5}
</style></head><body>
<header><h1>Order pipeline</h1></header>
<main>
<section class="wide"><div class="kpis">
<div class="kpi" id="orders"><b>${esc(t.orders)}</b><span>orders (not cancelled)</span></div>
<div class="kpi" id="revenue"><b>${esc(t.revenue)}</b><span>revenue</span></div>
<div class="kpi" id="events"><b>${esc(t.events)}</b><span>events applied</span></div>
<div class="kpi" id="backlog"><b>${esc(b.unpublished)}</b><span>outbox backlog${typeof b.unpublished === 'number' && b.unpublished > 0 ? ` (oldest ${Math.round(b.oldestAgeSeconds)} s)` : ''}</span></div>
<div class="kpi" id="queue"><b>${esc(waiting)}</b><span>jobs waiting</span></div>
<div class="kpi" id="lag"><b>${esc(lag)}</b><span>projection lag (mean, commit → read model)</span></div>
</div></section>
<section class="wide"><h2>Revenue per hour (UTC)</h2>${section(hours, (rows) => hourlyChart(rows))}</section>
<section id="top-products"><h2>Top products</h2>${section(products, (rows) => table(['product', 'quantity', 'revenue', 'orders'], rows.map((p) => [names.get(p.product_id) ?? `#${p.product_id}`, p.total_quantity_sold, p.revenue, p.order_count]), 'No sales yet.'))}</section>
<section id="categories"><h2>Categories</h2>${section(categories, (rows) => table(['category', 'revenue', 'orders'], rows.map((c) => [c.category_name, c.revenue, c.total_orders]), 'No sales yet.'))}</section>
</main></body></html>`;
}

export const dashboardRoutes: Route[] = [
  {
    method: 'GET',
    path: '/',
    async handler({ res, deps }) {
      const html = await render(deps);
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
      res.end(html);
    },
  },
];
