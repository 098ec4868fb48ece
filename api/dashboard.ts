import type { Route } from './router.js';
import type { Deps } from './deps.js';
import { readPushedMetrics } from '../lib/metrics-push.js';
import { lastOutboxId, outboxBacklog } from '../db/outbox.js';
import { lastApplied } from '../db/status.js';
import { within } from '../lib/timeout.js';
import { z } from 'zod';
import { sql } from '../db/pool.js';
import { PROJECTIONS } from '../workers/projector/projections/index.js';
import type { Panel, Projection } from '../workers/projector/projection.js';

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
 * GET /: a server-rendered dashboard (no build step, no script): the live
 * state of the pipeline, then every projection's panel (its module says what
 * it shows: the hourly chart, top products, categories, top customers). It
 * refreshes itself every 5 seconds. A service that is away leaves its part of
 * the page marked unavailable.
 */

const esc = (s: unknown) =>
  String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

/** Bars as an inline SVG; heights are shares (floats only for drawing), labels carry the exact text. */
function barChart(bars: NonNullable<Panel['bars']>, label: string): string {
  const w = 760;
  const h = 200;
  const bw = Math.floor((w - 40) / bars.length) - 4;
  const drawn = bars
    .map((x, i) => {
      const bh = x.share > 0 ? Math.max(2, Math.round(x.share * (h - 50))) : 0;
      const xPos = 30 + i * (bw + 4);
      const tick = i % 3 === 2 || i === bars.length - 1 ? `<text x="${xPos + bw / 2}" y="${h - 5}" text-anchor="middle">${esc(x.label)}</text>` : '';
      const value = bh > 0 ? `<text x="${xPos + bw / 2}" y="${h - 24 - bh}" text-anchor="middle">${esc(x.value)}</text>` : '';
      return `<g><title>${esc(x.title)}</title>${bh > 0 ? `<rect x="${xPos}" y="${h - 20 - bh}" width="${bw}" height="${bh}" rx="2"></rect>` : ''}${value}${tick}</g>`;
    })
    .join('');
  return `<svg viewBox="0 0 ${w} ${h}" role="img" aria-label="${esc(label)}"><line x1="28" y1="${h - 20}" x2="${w - 8}" y2="${h - 20}" stroke="#ccd"></line>${drawn}</svg>`;
}

function table(t: NonNullable<Panel['table']>): string {
  if (t.rows.length === 0) return `<p class="empty">${esc(t.empty)}</p>`;
  return `<table><thead><tr>${t.headers.map((x) => `<th>${esc(x)}</th>`).join('')}</tr></thead><tbody>${t.rows
    .map((r) => `<tr>${r.map((c, i) => (i === 0 ? `<td title="${esc(c)}">${esc(c)}</td>` : `<td>${esc(c)}</td>`)).join('')}</tr>`)
    .join('')}</tbody></table>`;
}

function section(p: Projection, panel: Panel | undefined): string {
  if (!panel) return `<section id="${esc(p.table)}"><h2>${esc(p.table)}</h2><p class="empty">The read model is unavailable right now.</p></section>`;
  const body = panel.bars ? barChart(panel.bars, panel.title) : panel.table ? table(panel.table) : '';
  return `<section id="${esc(panel.id)}"><h2>${esc(panel.title)}</h2>${body}</section>`;
}

/** Each source gets this long; a service that is away leaves its part of the page marked unavailable. */
const SOURCE_TIMEOUT_MS = 1500;
const UNAVAILABLE = 'unavailable';

const totalsRow = z.object({ orders: z.number(), revenue: z.string() });

async function render(deps: Deps): Promise<string> {
  const withPanels = PROJECTIONS.filter((p) => p.panel);
  const [totals, applied, backlog, ...panels] = await Promise.all([
    within(
      deps.readDb.one(sql.type(totalsRow)`
        SELECT coalesce(sum(total_orders), 0)::int AS orders, round(coalesce(sum(total_revenue), 0), 2)::text AS revenue
          FROM hourly_sales_view`),
      SOURCE_TIMEOUT_MS,
    ),
    // The last event applied, not a count of processed_events: prune and a full rebuild's floor shrink that table,
    // and counting it reads all of it. Found from write_db's last id down the index (db/status.ts).
    within(
      lastOutboxId(deps.writeDb).then((last) => lastApplied(deps.readDb, last)),
      SOURCE_TIMEOUT_MS,
    ),
    within(outboxBacklog(deps.writeDb), SOURCE_TIMEOUT_MS),
    ...withPanels.map((p) => within(p.panel!({ read: deps.readDb, write: deps.writeDb }), SOURCE_TIMEOUT_MS)),
  ]);
  let waiting = 'Redis unavailable';
  let lag = '–';
  // BullMQ waits for a connection that is not ready: ask only when it is.
  if (deps.redis.status === 'ready') {
    const counts = await within(deps.queues.counts('waiting'), SOURCE_TIMEOUT_MS);
    if (counts) waiting = String(counts.waiting ?? 0);
    const ms = await within(projectionLagMs(deps), SOURCE_TIMEOUT_MS);
    if (ms !== undefined) lag = `${ms.toFixed(0)} ms`;
  }
  const t = totals ?? { orders: UNAVAILABLE, revenue: UNAVAILABLE };
  const lastEvent = applied === undefined ? UNAVAILABLE : (applied?.id ?? '–');
  const b = backlog ?? { unpublished: UNAVAILABLE, oldestAgeSeconds: 0 };
  // Wide panels (charts) across the page first, then the others as cards in a grid of their own (a
  // full-width item in an auto-fit grid keeps every track alive, leaving empty columns beside the cards).
  const rendered = withPanels.map((p, i) => ({ p, panel: panels[i] as Panel | undefined }));
  const wide = rendered.filter((x) => x.panel?.wide).map(({ p, panel }) => section(p, panel)).join('\n');
  const cards = rendered.filter((x) => !x.panel?.wide).map(({ p, panel }) => section(p, panel)).join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Order pipeline</title><link rel="icon" href="data:,">
<style>
body{font:15px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px}header h1{margin:0;font-size:18px}
main{display:flex;flex-direction:column;gap:16px;padding:16px 24px}.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(340px,1fr));gap:16px}
section{background:#fff;border-radius:8px;padding:14px 18px;box-shadow:0 1px 2px #0001}
h2{font-size:14px;text-transform:uppercase;letter-spacing:.04em;color:#5b6475;margin:0 0 10px}
.kpis{display:flex;gap:32px;flex-wrap:wrap}.kpi b{display:block;font-size:26px}.kpi span{color:#5b6475;font-size:13px}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:4px 6px;border-bottom:1px solid #eceef2}td:not(:first-child),th:not(:first-child){text-align:right;white-space:nowrap}
td:first-child{max-width:0;width:100%;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
svg{width:100%;height:auto}rect{fill:#3f7de0}text{font-size:10px;fill:#5b6475}.empty{color:#8a93a5}
</style></head><body>
<header><h1>Order pipeline</h1></header>
<main>
<section><div class="kpis">
<div class="kpi" id="orders"><b>${esc(t.orders)}</b><span>orders (not cancelled)</span></div>
<div class="kpi" id="revenue"><b>${esc(t.revenue)}</b><span>revenue</span></div>
<div class="kpi" id="events"><b>${esc(lastEvent)}</b><span>last event applied</span></div>
<div class="kpi" id="backlog"><b>${esc(b.unpublished)}</b><span>outbox backlog${typeof b.unpublished === 'number' && b.unpublished > 0 ? ` (oldest ${Math.round(b.oldestAgeSeconds)} s)` : ''}</span></div>
<div class="kpi" id="queue"><b>${esc(waiting)}</b><span>jobs waiting</span></div>
<div class="kpi" id="lag"><b>${esc(lag)}</b><span>projection lag (mean, order placed → read model)</span></div>
</div></section>
${wide}
<div class="cards">
${cards}
</div>
</main></body></html>`;
}

export const dashboardRoutes: Route[] = [
  {
    method: 'GET',
    path: '/',
    async handler({ res, deps }) {
      const html = await render(deps);
      res.writeHead(200, {
        'Content-Type': 'text/html; charset=utf-8',
        'Cache-Control': 'no-store',
        // No script at all, inline styles only, no framing.
        'Content-Security-Policy': "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        'X-Frame-Options': 'DENY',
      });
      res.end(html);
    },
  },
];
