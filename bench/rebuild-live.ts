import { spawn } from 'node:child_process';
import path from 'node:path';
import process from 'node:process';
import { pathToFileURL } from 'node:url';
import { rebuild, type RebuildResult } from '../db/rebuild.js';
import { freePort } from '../scripts/local-services.js';
import { projectRoot } from '../lib/paths.js';
import { seedOrders } from './readside.js';
import { benchEnv, measureFreshness, percentile, seedProducts, startProc, stopProc, waitForHttp, type BenchEnv, type Freshness } from './lib.js';

/**
 * The blue/green rebuild measured (docs/rebuild.md):
 *  - speed: seconds per million orders and the swap's pause, on a read model
 *    that is up to date (the usual case: projectors running) and on an empty
 *    one (every event of the snapshot still to be counted processed: the swap
 *    raises the retention floor over them rather than writing a row each);
 *  - freshness (commit → processed_events, as bench/run.ts measures it) of
 *    orders offered at `rate`/s through the running pipeline, in windows
 *    interleaved: without a rebuild, while rebuilds of the whole history run
 *    back to back, and beside a busy loop at nice 19 (what one busy core
 *    costs on this machine, whatever keeps it busy).
 * A section for bench/run.ts: rebuildLive() returns its table rows and JSON.
 * Alone: `node dist/bench/rebuild-live.js [--orders N] [--seconds N] [--rate N] [--rounds N]`.
 */

export interface BenchRow {
  section: string;
  measure: string;
  value: string;
  reference?: string;
  ratio?: string;
}

export interface RebuildLiveOptions {
  /** Orders of history (1,000,000). */
  orders?: number;
  /** Length of each freshness measurement, s (15). */
  seconds?: number;
  /** Orders per second offered (200). */
  rate?: number;
  /** Rounds of interleaved freshness windows (2): without a rebuild, during rebuilds, beside a busy loop. */
  rounds?: number;
  products?: number;
  /** --parallel of the rebuilds run during the freshness measurement, one measurement each; undefined: the command's default ([undefined]). */
  parallel?: (number | undefined)[];
  say?: (line: string) => void;
}

export interface RebuildLiveResult {
  orders: number;
  cold: RebuildResult & { secondsPerMillionOrders: number };
  warm: RebuildResult & { secondsPerMillionOrders: number };
  rssMiB: number;
  /** Freshness without a rebuild, every such window pooled; the p99 of each. */
  baseline: Freshness & { windowsP99: number[] };
  duringRebuild: (Freshness & { parallel: number | undefined; rebuilds: number; swapMs: number[]; perPhase: { phase: string; samples: number; p99: number }[]; windowsP99: number[] })[];
  /** Beside a busy loop at nice 19 instead of a rebuild: what any one busy core costs. */
  busyLoop: Freshness & { windowsP99: number[] };
}

/** `npm run rebuild` in a child process; resolves with its output. `onPhase` hears each phase as it starts. */
function runRebuild(env: BenchEnv, parallel: number | undefined, onPhase: (phase: string) => void = () => undefined): Promise<string> {
  return new Promise((resolve, reject) => {
    onPhase('start');
    const child = spawn(process.execPath, [path.join(projectRoot, 'dist', 'scripts', 'rebuild.js'), ...(parallel === undefined ? [] : ['--parallel', String(parallel)])], { env: { ...process.env, ...env.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let phase = 'start';
    // Progress lines go to stderr (a line per phase change when it is not a terminal), the result to stdout.
    child.stderr.on('data', (b: Buffer) => {
      for (const line of b.toString().split('\n')) {
        const m = /^rebuild: (snapshot|copy|index|compare|catchup|swap|done)\b/.exec(line);
        if (m && m[1] !== phase) onPhase((phase = m[1]!));
      }
    });
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`rebuild exited ${code}: ${out}`))));
  });
}

/** Freshness samples of one mode, pooled over its windows. */
interface Pool {
  samples: number[];
  windows: Freshness[];
}

const pool = (): Pool => ({ samples: [], windows: [] });

function summary(p: Pool): Freshness {
  const sorted = [...p.samples].sort((a, b) => a - b);
  const sum = (k: 'answered' | 'failed') => p.windows.reduce((a, w) => a + w[k], 0);
  return { offered: p.windows[0]?.offered ?? 0, answered: sum('answered') / Math.max(1, p.windows.length), p50: percentile(sorted, 50), p99: percentile(sorted, 99), samples: sorted.length, failed: sum('failed') };
}

export async function rebuildLive(opts: RebuildLiveOptions = {}): Promise<{ rows: BenchRow[]; result: RebuildLiveResult }> {
  const orders = opts.orders ?? 1_000_000;
  const seconds = opts.seconds ?? 15;
  const rate = opts.rate ?? 200;
  const rounds = opts.rounds ?? 2;
  const parallels = opts.parallel ?? [undefined];
  const say = opts.say ?? ((l: string) => process.stderr.write(`${l}\n`));
  const perMillion = (r: RebuildResult) => (r.seconds * 1_000_000) / orders;
  const env = await benchEnv('rebuild');
  const rows: BenchRow[] = [];
  let rss = 0;
  const sampler = setInterval(() => (rss = Math.max(rss, process.memoryUsage().rss)), 100);
  try {
    const products = await seedProducts(env.write, opts.products ?? 1000);
    const t0 = performance.now();
    await seedOrders(env.write, orders, (n) => process.stderr.write(`\rbench: seeding orders ${n}/${orders}\x1b[K`));
    process.stderr.write('\r\x1b[K');
    say(`bench: seeded ${orders} orders in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
    await env.read.query('VACUUM ANALYZE');
    await env.write.query('CHECKPOINT'); // the seeding's VACUUM dirtied every page: written now, not during the first run
    // Cold: nothing processed yet (the swap raises the floor over the snapshot; `events` counts any id recorded one by one). Warm: all of it processed.
    const cold = await rebuild(env.writeUrl, env.readUrl);
    await env.read.query('VACUUM ANALYZE processed_events');
    rss = process.memoryUsage().rss;
    const warm = await rebuild(env.writeUrl, env.readUrl);
    rows.push({ section: 'rebuild', measure: `${orders} orders, read model up to date`, value: `${warm.seconds.toFixed(1)} s`, reference: `${perMillion(warm).toFixed(1)} s per million orders; swap ${warm.swapMs.toFixed(0)} ms` });
    rows.push({ section: 'rebuild', measure: `${orders} orders, read model empty (floor raised to ${cold.floor}, ${cold.events} events recorded one by one)`, value: `${cold.seconds.toFixed(1)} s`, reference: `${perMillion(cold).toFixed(1)} s per million orders; swap ${cold.swapMs.toFixed(0)} ms` });
    say(`bench: rebuild warm ${warm.seconds.toFixed(1)} s (swap ${warm.swapMs.toFixed(0)} ms), cold ${cold.seconds.toFixed(1)} s (swap ${cold.swapMs.toFixed(0)} ms)`);

    const relay = startProc('workers/relay/main.js', env.env);
    const worker = startProc('workers/projector/main.js', env.env);
    const port = await freePort(3903);
    const web = startProc('api/main.js', { ...env.env, PORT: String(port) });
    try {
      const base = `http://127.0.0.1:${port}`;
      await waitForHttp(`${base}/healthz`);
      // Settled first: the seeding's dirty pages and autovacuum's work would otherwise land in one measurement and not the other.
      await env.write.query('VACUUM ANALYZE');
      await env.write.query('CHECKPOINT');
      await measureFreshness(env, base, products, rate, 3); // warm-up at the rate measured: pools grown, code optimized
      // Windows of `seconds` interleaved — without a rebuild, during rebuilds (each --parallel), beside a busy loop at
      // nice 19 — `rounds` times, then once more without: each mode's samples pooled. The p99 of one window moves by
      // up to 2× from one window to the next here, so a single window before and one after said little.
      const baseline = pool();
      const hog = pool();
      const during = new Map(parallels.map((p) => [p, { ...pool(), rebuilds: 0, swaps: [] as number[], byPhase: new Map<string, number[]>() }]));
      const window = (into: Pool, onSample?: (at: number, ms: number) => void) =>
        measureFreshness(env, base, products, rate, seconds, (at, ms) => (into.samples.push(ms), onSample?.(at, ms))).then((r) => (into.windows.push(r), r));
      for (let round = 0; round < rounds; round++) {
        const off = await window(baseline);
        say(`bench: freshness at ${rate}/s without a rebuild: p50 ${off.p50.toFixed(1)} ms, p99 ${off.p99.toFixed(1)} ms`);
        for (const parallel of parallels) {
          const d = during.get(parallel)!;
          let rebuilding = true;
          // Which phase each order was answered in: where the rebuild costs freshness.
          const phases: { at: number; phase: string }[] = [];
          // Rebuilds as an operator runs them: `npm run rebuild`, its own process, back to back.
          const loop = (async () => {
            while (rebuilding) {
              const out = await runRebuild(env, parallel, (phase) => phases.push({ at: performance.now(), phase }));
              d.swaps.push(Number(/swap (\d+) ms/.exec(out)?.[1] ?? NaN));
              d.rebuilds++;
            }
          })();
          const on = await window(d, (at, ms) => {
            const phase = phases.findLast((p) => p.at <= at)?.phase ?? 'start';
            if (!d.byPhase.has(phase)) d.byPhase.set(phase, []);
            d.byPhase.get(phase)!.push(ms);
          });
          rebuilding = false;
          await loop;
          say(`bench: freshness at ${rate}/s during rebuilds --parallel ${parallel ?? 'default'}: p50 ${on.p50.toFixed(1)} ms, p99 ${on.p99.toFixed(1)} ms; swaps so far ${d.swaps.join(', ')} ms`);
        }
        // What one busy core costs here, whatever keeps it busy: the floor under any rebuild's figure on 2 cores.
        const loopAtNice19 = spawn('nice', ['-n', '19', process.execPath, '-e', 'for (;;) {}'], { stdio: 'ignore' });
        try {
          const h = await window(hog);
          say(`bench: freshness at ${rate}/s beside a busy loop at nice 19: p50 ${h.p50.toFixed(1)} ms, p99 ${h.p99.toFixed(1)} ms`);
        } finally {
          loopAtNice19.kill('SIGKILL');
        }
      }
      await window(baseline);
      const off = summary(baseline);
      const perWindow = (x: Pool) => x.windows.map((w) => w.p99.toFixed(0)).join(', ');
      rows.push({ section: 'rebuild', measure: `freshness at ${rate}/s, no rebuild (p50 / p99; ${baseline.windows.length} windows of ${seconds} s pooled)`, value: `${off.p50.toFixed(1)} / ${off.p99.toFixed(1)} ms`, reference: `p99 of each window: ${perWindow(baseline)} ms` });
      const duringRebuild: RebuildLiveResult['duringRebuild'] = [];
      for (const [parallel, d] of during) {
        const on = summary(d);
        const perPhase = [...d.byPhase].map(([phase, ms]) => ({ phase, samples: ms.length, p99: percentile(ms.sort((a, b) => a - b), 99) }));
        say(`bench:   p99 by phase the order was answered in: ${perPhase.map((p) => `${p.phase} ${p.p99.toFixed(1)} ms (${p.samples})`).join(', ')}`);
        rows.push({
          section: 'rebuild',
          measure: `freshness at ${rate}/s, rebuilding ${orders} orders${parallel === undefined ? '' : `, --parallel ${parallel}`} (p50 / p99; ${d.windows.length} windows pooled)`,
          value: `${on.p50.toFixed(1)} / ${on.p99.toFixed(1)} ms`,
          reference: `${d.rebuilds} rebuilds back to back; swap max ${Math.max(...d.swaps).toFixed(0)} ms; p99 of each window: ${perWindow(d)} ms`,
          ratio: `${(on.p99 / off.p99).toFixed(2)}×`,
        });
        rows.push({ section: 'rebuild', measure: `  p99 by phase the order was answered in (samples)`, value: perPhase.map((p) => `${p.phase} ${p.p99.toFixed(0)}`).join(', '), reference: perPhase.map((p) => `${p.samples}`).join(', ') });
        duringRebuild.push({ ...on, parallel, rebuilds: d.rebuilds, swapMs: d.swaps, perPhase, windowsP99: d.windows.map((w) => w.p99) });
      }
      const busy = summary(hog);
      rows.push({ section: 'rebuild', measure: `freshness at ${rate}/s beside a busy loop at nice 19 (p50 / p99)`, value: `${busy.p50.toFixed(1)} / ${busy.p99.toFixed(1)} ms`, reference: `one busy core, nothing else; p99 of each window: ${perWindow(hog)} ms`, ratio: `${(busy.p99 / off.p99).toFixed(2)}×` });
      return {
        rows,
        result: {
          orders,
          cold: { ...cold, secondsPerMillionOrders: perMillion(cold) },
          warm: { ...warm, secondsPerMillionOrders: perMillion(warm) },
          rssMiB: Math.round(rss / 2 ** 20),
          baseline: { ...off, windowsP99: baseline.windows.map((w) => w.p99) },
          duringRebuild,
          busyLoop: { ...busy, windowsP99: hog.windows.map((w) => w.p99) },
        },
      };
    } finally {
      await Promise.all([stopProc(web), stopProc(relay), stopProc(worker)]);
    }
  } finally {
    clearInterval(sampler);
    await env.drop();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const arg = (name: string, fallback: number) => {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? Number(process.argv[i + 1]) : fallback;
  };
  rebuildLive({ orders: arg('orders', 1_000_000), seconds: arg('seconds', 15), rate: arg('rate', 200), rounds: arg('rounds', 2), parallel: process.argv.includes('--parallel') ? process.argv.flatMap((a, i) => (process.argv[i - 1] === '--parallel' ? [a === 'default' ? undefined : Number(a)] : [])) : undefined })
    .then(({ rows, result }) => {
      for (const r of rows) console.log(`${r.measure.padEnd(60)} ${r.value.padEnd(20)} ${r.reference ?? ''} ${r.ratio ?? ''}`);
      console.log(JSON.stringify({ ...result, cold: { ...result.cold }, warm: { ...result.warm } }, null, 1));
    })
    .catch((err: unknown) => {
      console.error(err);
      process.exit(1);
    });
}
