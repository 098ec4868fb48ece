import logUpdate from 'log-update';
import { commandLine, numberOption } from '../lib/cli.js';
import { runningSystem } from '../lib/running.js';

const USAGE = `usage: npm run loadgen [-- --rate R --duration S --customers N --cancel-ratio F --url URL]

Places orders through the HTTP API at a steady (open-loop) rate over
keep-alive connections and shows, live: orders sent, created, refused and
failed, the achieved rate and latency, and from /metrics the outbox and queue
backlog and the projection lag. Ctrl-C stops early and prints the summary.

  --rate R           orders per second (100)
  --duration S       seconds to run (30)
  --customers N      customer ids drawn from 1..N (1000)
  --cancel-ratio F   share of created orders cancelled right after (0)
  --url URL          the web to load (the one npm start runs, else http://localhost:$PORT)

exit 0 no errors · 1 some requests failed (5xx or no answer) · 2 bad option`;

const { values } = commandLine('loadgen', USAGE, {
  rate: { type: 'string' },
  duration: { type: 'string' },
  customers: { type: 'string' },
  'cancel-ratio': { type: 'string' },
  url: { type: 'string' },
});
const rate = numberOption('loadgen', 'rate', values.rate, 100, 0.1, 100_000);
const duration = numberOption('loadgen', 'duration', values.duration, 30, 1, 86_400);
const customers = Math.floor(numberOption('loadgen', 'customers', values.customers, 1000, 1, 2 ** 31 - 1));
const cancelRatio = numberOption('loadgen', 'cancel-ratio', values['cancel-ratio'], 0, 0, 1);
const base = (values.url ?? process.env.LOADGEN_URL ?? runningSystem()?.webs[0] ?? `http://localhost:${process.env.PORT ?? 3000}`).replace(/\/$/, '');
/** A live line where there is a terminal to redraw; a plain line every 5 s where there is not (CI, a pipe, a log file). */
const live = Boolean(process.stdout.isTTY && process.stdout.columns);

const stats = { sent: 0, ok: 0, refused: 0, errors: 0, cancelled: 0, answered: 0, latencies: [] as number[] };
/** A uniform sample of at most 20,000 latencies (reservoir sampling), so that a long run's percentiles stay cheap. */
function recordLatency(ms: number): void {
  stats.answered++;
  if (stats.latencies.length < 20_000) stats.latencies.push(ms);
  else {
    const i = Math.floor(Math.random() * stats.answered);
    if (i < 20_000) stats.latencies[i] = ms;
  }
}
let lastError = '';

async function productIds(): Promise<number[]> {
  const ids: number[] = [];
  let cursor: string | null = null;
  do {
    const res = await fetch(`${base}/products?limit=200${cursor ? `&cursor=${cursor}` : ''}`);
    if (!res.ok) throw new Error(`GET /products answered ${res.status}`);
    const page = (await res.json()) as { items: { id: number; stock: number }[]; next_cursor: string | null };
    ids.push(...page.items.filter((p) => p.stock > 0).map((p) => p.id));
    cursor = page.next_cursor;
  } while (cursor && ids.length < 1000);
  return ids;
}

async function placeOne(products: number[]): Promise<void> {
  const n = 1 + Math.floor(Math.random() * 3);
  const items = Array.from({ length: n }, () => ({ product_id: products[Math.floor(Math.random() * products.length)]!, quantity: 1 + Math.floor(Math.random() * 3) }));
  const body = JSON.stringify({ customer_id: 1 + Math.floor(Math.random() * customers), items });
  const t0 = performance.now();
  stats.sent++;
  try {
    const res = await fetch(`${base}/orders`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    const json = (await res.json()) as { id?: number; code?: string };
    recordLatency(performance.now() - t0);
    if (res.status === 201) {
      stats.ok++;
      if (Math.random() < cancelRatio && json.id) {
        const c = await fetch(`${base}/orders/${json.id}/cancel`, { method: 'POST' });
        await c.arrayBuffer();
        if (c.ok) stats.cancelled++;
      }
    } else if (res.status < 500) {
      stats.refused++;
      lastError = `${res.status} ${json.code ?? ''}`;
    } else {
      stats.errors++;
      lastError = `${res.status} ${json.code ?? ''}`;
    }
  } catch (err) {
    stats.errors++;
    lastError = (err as Error).message;
  }
}

/** Pipeline state from /metrics: backlog and the mean projection lag since the previous scrape (the last known one while no event was applied). */
let lagPrev = { sum: 0, count: 0 };
let lastLag = '–';
async function pipeline(): Promise<string> {
  try {
    const text = await (await fetch(`${base}/metrics`)).text();
    const metric = (re: RegExp) => Number(re.exec(text)?.[1] ?? NaN);
    const sum = metric(/^projection_lag_seconds_sum (\S+)/m);
    const count = metric(/^projection_lag_seconds_count (\S+)/m);
    if (count > lagPrev.count) lastLag = `${(((sum - lagPrev.sum) / (count - lagPrev.count)) * 1000).toFixed(0)} ms`;
    lagPrev = { sum, count };
    return `outbox ${metric(/^outbox_unpublished_events (\S+)/m)} · queue waiting ${metric(/^queue_jobs\{state="waiting"\} (\S+)/m)} · lag ${lastLag}`;
  } catch {
    return 'metrics unavailable';
  }
}

function pct(p: number): string {
  const s = [...stats.latencies].sort((a, b) => a - b);
  return s.length ? `${s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!.toFixed(1)} ms` : '–';
}

async function main(): Promise<void> {
  let products: number[];
  try {
    products = await productIds();
  } catch (err) {
    console.error(`loadgen: cannot reach ${base} (${(err as Error).message}); is the system running (npm start)?`);
    process.exit(1);
  }
  if (products.length === 0) {
    console.error('loadgen: no products with stock; add some with POST /products (npm start puts a demo catalogue into an empty database)');
    process.exit(1);
  }
  console.log(`loadgen: ${rate} orders/s for ${duration} s against ${base} (${products.length} products, ${customers} customers, cancel ratio ${cancelRatio})`);
  const start = performance.now();
  const inflight = new Set<Promise<void>>();
  let pipe = await pipeline();
  const line = () => {
    const elapsed = (performance.now() - start) / 1000;
    return (
      `${elapsed.toFixed(0).padStart(4)} s  sent ${stats.sent}  ok ${stats.ok}  refused ${stats.refused}  errors ${stats.errors}  ` +
      `rate ${(stats.ok / Math.max(elapsed, 0.001)).toFixed(0)}/s  p50 ${pct(50)}  in flight ${inflight.size}\n      ${pipe}${lastError ? `  · last problem: ${lastError}` : ''}`
    );
  };
  const render = () => (live ? logUpdate(line()) : console.log(line()));
  const ui = setInterval(render, live ? 250 : 5000);
  const scrape = setInterval(() => void pipeline().then((p) => (pipe = p)), 1000);
  let stopping = false;
  process.once('SIGINT', () => (stopping = true));
  while (!stopping) {
    const elapsed = (performance.now() - start) / 1000;
    if (elapsed >= duration) break;
    const due = Math.floor(elapsed * rate) - stats.sent;
    for (let i = 0; i < due; i++) {
      const p = placeOne(products).finally(() => inflight.delete(p));
      inflight.add(p);
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  await Promise.all(inflight);
  clearInterval(ui);
  clearInterval(scrape);
  render();
  if (live) logUpdate.done();
  const elapsed = (performance.now() - start) / 1000;
  console.log(
    `\nsummary: ${stats.sent} sent in ${elapsed.toFixed(1)} s · ${stats.ok} created (${(stats.ok / elapsed).toFixed(1)}/s) · ${stats.cancelled} cancelled · ` +
      `${stats.refused} refused · ${stats.errors} errors · latency p50 ${pct(50)} p99 ${pct(99)}`,
  );
  process.exit(stats.errors > 0 ? 1 : 0);
}

void main();
