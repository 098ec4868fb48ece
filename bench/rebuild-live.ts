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
 *    one (every event of the snapshot still to be recorded processed);
 *  - freshness (commit → processed_events, as bench/run.ts measures it) of
 *    orders offered at `rate`/s through the running pipeline, without a
 *    rebuild and then while rebuilds of the whole history run back to back.
 * A section for bench/run.ts: rebuildLive() returns its table rows and JSON.
 * Alone: `node dist/bench/rebuild-live.js [--orders N] [--seconds N] [--rate N]`.
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
  baseline: Freshness;
  baselineAfter: Freshness;
  duringRebuild: (Freshness & { parallel: number | undefined; rebuilds: number; swapMs: number[]; perPhase: { phase: string; samples: number; p99: number }[] })[];
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

export async function rebuildLive(opts: RebuildLiveOptions = {}): Promise<{ rows: BenchRow[]; result: RebuildLiveResult }> {
  const orders = opts.orders ?? 1_000_000;
  const seconds = opts.seconds ?? 15;
  const rate = opts.rate ?? 200;
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
    // Cold: nothing processed yet (every event of the snapshot is recorded at the swap). Warm: all of it processed.
    const cold = await rebuild(env.writeUrl, env.readUrl);
    await env.read.query('VACUUM ANALYZE processed_events');
    rss = process.memoryUsage().rss;
    const warm = await rebuild(env.writeUrl, env.readUrl);
    rows.push({ section: 'rebuild', measure: `${orders} orders, read model up to date`, value: `${warm.seconds.toFixed(1)} s`, reference: `${perMillion(warm).toFixed(1)} s per million orders; swap ${warm.swapMs.toFixed(0)} ms` });
    rows.push({ section: 'rebuild', measure: `${orders} orders, read model empty (${cold.events} events recorded)`, value: `${cold.seconds.toFixed(1)} s`, reference: `${perMillion(cold).toFixed(1)} s per million orders; swap ${cold.swapMs.toFixed(0)} ms` });
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
      const baseline = await measureFreshness(env, base, products, rate, seconds);
      say(`bench: freshness at ${rate}/s without a rebuild: p50 ${baseline.p50.toFixed(1)} ms, p99 ${baseline.p99.toFixed(1)} ms`);
      rows.push({ section: 'rebuild', measure: `freshness at ${rate}/s, no rebuild (p50 / p99)`, value: `${baseline.p50.toFixed(1)} / ${baseline.p99.toFixed(1)} ms`, reference: `${baseline.answered.toFixed(0)}/s answered${baseline.failed ? `, ${baseline.failed} failed` : ''}` });
      // Rebuilds as an operator runs them: `npm run rebuild`, its own process, back to back, at each --parallel.
      const duringRebuild: RebuildLiveResult['duringRebuild'] = [];
      for (const parallel of parallels) {
        let rebuilding = true;
        const swaps: number[] = [];
        // Which phase each order was answered in: where the rebuild costs freshness.
        const phases: { at: number; phase: string }[] = [];
        const loop = (async () => {
          while (rebuilding) {
            const out = await runRebuild(env, parallel, (phase) => phases.push({ at: performance.now(), phase }));
            swaps.push(Number(/swap (\d+) ms/.exec(out)?.[1] ?? NaN));
          }
        })();
        const byPhase = new Map<string, number[]>();
        const during = await measureFreshness(env, base, products, rate, seconds, (at, ms) => {
          const phase = phases.findLast((p) => p.at <= at)?.phase ?? 'start';
          if (!byPhase.has(phase)) byPhase.set(phase, []);
          byPhase.get(phase)!.push(ms);
        });
        rebuilding = false;
        await loop;
        const perPhase = [...byPhase].map(([phase, ms]) => ({ phase, samples: ms.length, p99: percentile(ms.sort((a, b) => a - b), 99) }));
        say(`bench: freshness at ${rate}/s during ${swaps.length} rebuild(s) --parallel ${parallel ?? 'default'}: p50 ${during.p50.toFixed(1)} ms, p99 ${during.p99.toFixed(1)} ms; swaps ${swaps.join(', ')} ms`);
        say(`bench:   p99 by phase the order was answered in: ${perPhase.map((p) => `${p.phase} ${p.p99.toFixed(1)} ms (${p.samples})`).join(', ')}`);
        rows.push({
          section: 'rebuild',
          measure: `freshness at ${rate}/s, rebuilding ${orders} orders${parallel === undefined ? '' : `, --parallel ${parallel}`} (p50 / p99)`,
          value: `${during.p50.toFixed(1)} / ${during.p99.toFixed(1)} ms`,
          reference: `${swaps.length} rebuilds back to back; swap max ${Math.max(...swaps).toFixed(0)} ms`,
          ratio: `${(during.p99 / baseline.p99).toFixed(2)}×`,
        });
        rows.push({ section: 'rebuild', measure: `  p99 by phase the order was answered in (samples)`, value: perPhase.map((p) => `${p.phase} ${p.p99.toFixed(0)}`).join(', '), reference: perPhase.map((p) => `${p.samples}`).join(', ') });
        duringRebuild.push({ ...during, parallel, rebuilds: swaps.length, swapMs: swaps, perPhase });
      }
      // And again without one, after: the ratios above are against the first; this says how much the baseline itself moves.
      const after = await measureFreshness(env, base, products, rate, seconds);
      rows.push({ section: 'rebuild', measure: `freshness at ${rate}/s, no rebuild, after (p50 / p99)`, value: `${after.p50.toFixed(1)} / ${after.p99.toFixed(1)} ms`, reference: `first: ${baseline.p99.toFixed(1)} ms p99` });
      return {
        rows,
        result: {
          orders,
          cold: { ...cold, secondsPerMillionOrders: perMillion(cold) },
          warm: { ...warm, secondsPerMillionOrders: perMillion(warm) },
          rssMiB: Math.round(rss / 2 ** 20),
          baseline,
          duringRebuild,
          baselineAfter: after,
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
  rebuildLive({ orders: arg('orders', 1_000_000), seconds: arg('seconds', 15), rate: arg('rate', 200), parallel: process.argv.includes('--parallel') ? process.argv.flatMap((a, i) => (process.argv[i - 1] === '--parallel' ? [a === 'default' ? undefined : Number(a)] : [])) : undefined })
    .then(({ rows, result }) => {
      for (const r of rows) console.log(`${r.measure.padEnd(60)} ${r.value.padEnd(20)} ${r.reference ?? ''} ${r.ratio ?? ''}`);
      console.log(JSON.stringify({ ...result, cold: { ...result.cold }, warm: { ...result.warm } }, null, 1));
    })
    .catch((err: unknown) => {
      console.error(err);
      process.exit(1);
    });
}
