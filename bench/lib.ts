import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { createDb, type Db } from '../db/pool.js';
import { Redis } from 'ioredis';
import { migrate } from '../db/migrate.js';
import { createLogger } from '../lib/logger.js';
import { projectRoot } from '../lib/paths.js';
import { CHANNELS } from '../lib/contract.js';

export const log = createLogger('warn', 'bench');
export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface BenchEnv {
  env: Record<string, string>;
  writeUrl: string;
  readUrl: string;
  write: pg.Pool;
  read: pg.Pool;
  /** The system's SQL layer on read_db, for timing its own queries. */
  readDb: Db;
  drop(): Promise<void>;
}

const ADMIN = process.env.BENCH_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const REDIS = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379';

function urlFor(admin: string, db: string): string {
  const u = new URL(admin);
  u.pathname = `/${db}`;
  return u.toString();
}

/** Private, migrated databases and a Redis prefix for one benchmark (on the server of `admin`, the machine's by default). */
export async function benchEnv(tag: string, admin = ADMIN): Promise<BenchEnv> {
  const id = `${tag}_${Date.now().toString(36)}`;
  const writeUrl = urlFor(admin, `op_bench_${id}_w`);
  const readUrl = urlFor(admin, `op_bench_${id}_r`);
  await migrate(writeUrl, 'write', log);
  await migrate(readUrl, 'read', log);
  const prefix = `op-bench-${id}`;
  const write = new pg.Pool({ connectionString: writeUrl, max: 4 });
  const read = new pg.Pool({ connectionString: readUrl, max: 4 });
  write.on('error', () => undefined);
  read.on('error', () => undefined);
  const readDb = createDb(readUrl, { name: 'bench', max: 4, log });
  return {
    env: { DATABASE_URL: writeUrl, READ_DATABASE_URL: readUrl, REDIS_URL: REDIS, QUEUE_PREFIX: prefix, LOG_LEVEL: 'warn' },
    writeUrl,
    readUrl,
    write,
    read,
    readDb,
    async drop() {
      await write.end();
      await read.end();
      await readDb.end();
      const c = new pg.Client({ connectionString: admin });
      await c.connect();
      for (const u of [writeUrl, readUrl]) await c.query(`DROP DATABASE IF EXISTS ${new URL(u).pathname.slice(1)} WITH (FORCE)`);
      await c.end();
      const r = new Redis(REDIS);
      let cursor = '0';
      do {
        const [next, keys] = await r.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
        cursor = next;
        if (keys.length) await r.del(...keys);
      } while (cursor !== '0');
      r.disconnect();
    },
  };
}

/** Seed `n` products with ample stock; returns their ids. */
export async function seedProducts(pool: pg.Pool, n: number, stock = 1_000_000_000): Promise<number[]> {
  const { rows } = await pool.query<{ id: number }>(
    `INSERT INTO products (name, category, price, stock)
     SELECT 'Product ' || g, 'category-' || (g % 20), ((g * 37) % 9000 + 99) / 100.0, $2
       FROM generate_series(1, $1) g RETURNING id`,
    [n, stock],
  );
  return rows.map((r) => r.id);
}

export function startProc(script: string, env: Record<string, string>): ChildProcess {
  const child = spawn(process.execPath, [path.join(projectRoot, 'dist', script)], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'inherit'] });
  return child;
}

export async function stopProc(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await exited;
}

export async function waitForHttp(url: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      if ((await fetch(url)).ok) return;
    } catch {
      // not up yet
    }
    await sleep(100);
  }
  throw new Error(`${url} did not answer in ${timeoutMs} ms`);
}

/** CPU seconds per process, by group: label → pid → seconds. */
export type CpuSnapshot = Map<string, Map<number, number>>;

function procCpuSeconds(pid: number): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100; // utime + stime, in USER_HZ ticks
  } catch {
    return undefined;
  }
}

/**
 * Where the CPU goes during a run (Linux only: /proc): the given child
 * processes, the PostgreSQL backends of the bench databases (when the server
 * is on this machine), Redis (its INFO; the whole server) and this process
 * (the load generator). Take one before and one after, then cpuCores().
 * A backend that exits between the two is not counted; pools keep theirs.
 */
export async function cpuSnapshot(env: BenchEnv, procs: Record<string, ChildProcess>): Promise<CpuSnapshot | undefined> {
  if (!fs.existsSync('/proc/self/stat')) return undefined;
  const snap: CpuSnapshot = new Map();
  const add = (label: string, pid: number, seconds: number | undefined) => {
    if (seconds === undefined) return;
    if (!snap.has(label)) snap.set(label, new Map());
    snap.get(label)!.set(pid, seconds);
  };
  for (const [label, child] of Object.entries(procs)) if (child.pid) add(label, child.pid, procCpuSeconds(child.pid));
  if (['127.0.0.1', 'localhost', '[::1]'].includes(new URL(env.writeUrl).hostname)) {
    for (const [label, pool] of [['write_db', env.write], ['read_db', env.read]] as const) {
      const { rows } = await pool.query<{ pid: number }>('SELECT pid FROM pg_stat_activity WHERE datname = current_database()');
      for (const { pid } of rows) add(label, pid, procCpuSeconds(pid));
    }
  }
  const r = new Redis(REDIS);
  const info = await r.info('cpu').finally(() => r.disconnect());
  const field = (name: string) => Number(new RegExp(`^${name}:([\\d.]+)`, 'm').exec(info)?.[1] ?? 0);
  add('redis', 0, field('used_cpu_sys') + field('used_cpu_user'));
  const self = process.cpuUsage();
  add('load generator', process.pid, (self.user + self.system) / 1e6);
  return snap;
}

/** Cores used per group between two snapshots taken `seconds` apart, busiest first. */
export function cpuCores(before: CpuSnapshot, after: CpuSnapshot, seconds: number): [string, number][] {
  const out: [string, number][] = [];
  for (const [label, pids] of after) {
    let used = 0;
    for (const [pid, sec] of pids) used += sec - (before.get(label)?.get(pid) ?? 0);
    out.push([label, used / seconds]);
  }
  return out.sort((a, b) => b[1] - a[1]);
}

/** POST a JSON body over `agent`; resolves when the answer has been read, with the time its head arrived. */
export function postJson(agent: http.Agent, url: string, body: string): Promise<{ at: number; status: number; token: string | undefined }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => {
      const at = performance.now();
      const token = res.headers['x-consistency-token'];
      res.resume();
      res.on('error', reject);
      res.on('end', () => resolve({ at, status: res.statusCode ?? 0, token: typeof token === 'string' ? token : undefined }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** A random order of 1–3 items over the given products. */
export function randomOrder(products: number[], customers = 10_000): { customer_id: number; items: { product_id: number; quantity: number }[] } {
  const n = 1 + Math.floor(Math.random() * 3);
  const items = Array.from({ length: n }, () => ({ product_id: products[Math.floor(Math.random() * products.length)]!, quantity: 1 + Math.floor(Math.random() * 3) }));
  return { customer_id: 1 + Math.floor(Math.random() * customers), items };
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

type PgbenchResult = { tps: number; ordersPerSec: number; latencyMs: number };

/** pgbench with one script per order size (1–3 items, chosen at random), each written by `script(n)`. */
function runPgbench(url: string, products: number, seconds: number, clients: number, perTransaction: number, script: (n: number) => string): PgbenchResult {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'opbench-'));
  const scripts = [1, 2, 3].map((n) => {
    const vars = Array.from({ length: n }, (_, i) => `\\set p${i} random(1, ${products})\n\\set q${i} random(1, 3)`).join('\n');
    const file = path.join(dir, `order${n}.sql`);
    fs.writeFileSync(file, `\\set c random(1, 10000)\n${vars}\n${script(n)}\n`);
    return file;
  });
  const u = new URL(url);
  const args = ['-h', u.hostname, '-p', u.port || '5432', '-U', u.username || 'postgres', '-n', '-M', 'prepared', '-c', String(clients), '-j', '2', '-T', String(seconds), ...scripts.flatMap((s) => ['-f', s]), u.pathname.slice(1)];
  const res = spawnSync('pgbench', args, { encoding: 'utf8', env: { ...process.env, PGPASSWORD: decodeURIComponent(u.password) } });
  fs.rmSync(dir, { recursive: true, force: true });
  if (res.error || res.status !== 0) throw new Error(`pgbench failed (it comes with the PostgreSQL client packages): ${res.error?.message ?? res.stderr}`);
  const tps = Number(/tps = ([\d.]+)/.exec(res.stdout)?.[1]);
  const latencyMs = Number(/latency average = ([\d.]+) ms/.exec(res.stdout)?.[1]);
  return { tps, ordersPerSec: tps * perTransaction, latencyMs };
}

const itemList = (n: number, item: (i: number) => string, sep = ', ') => Array.from({ length: n }, (_, i) => item(i)).join(sep);

/**
 * pgbench running place_order() with random 1–3 item orders, the same
 * transaction the API runs; with `perTransaction` > 1, that many orders share
 * one transaction (what group commit of orders would do). Returns orders/s.
 */
export function pgbenchPlaceOrder(url: string, products: number, seconds: number, clients: number, perTransaction = 1): PgbenchResult {
  return runPgbench(url, products, seconds, clients, perTransaction, (n) => {
    const call = `SELECT place_order(:c, ARRAY[${itemList(n, (i) => `:p${i}`)}]::int[], ARRAY[${itemList(n, (i) => `:q${i}`)}]::int[], NULL, NULL);`;
    return perTransaction === 1 ? call : `BEGIN;\n${Array.from({ length: perTransaction }, () => call).join('\n')}\nCOMMIT;`;
  });
}

/**
 * The order transaction written out as plain statements, the way one would
 * without place_order(): lock the products in id order, take the stock,
 * insert the order, its items and an outbox row (its trigger included). No
 * stock check, no category rows, a two-field payload: less work than
 * place_order() does, so a reference no implementation of the full
 * transaction should expect to beat one order at a time.
 */
export function pgbenchPlainStatements(url: string, products: number, seconds: number, clients: number): PgbenchResult {
  return runPgbench(url, products, seconds, clients, 1, (n) => {
    const lines = `(VALUES ${itemList(n, (i) => `(:p${i}::int, :q${i}::int)`)}) l (p, q) JOIN products p ON p.id = l.p`;
    return [
      'BEGIN;',
      `SELECT id FROM products WHERE id IN (${itemList(n, (i) => `:p${i}`)}) ORDER BY id FOR UPDATE;`,
      itemList(n, (i) => `UPDATE products SET stock = stock - :q${i} WHERE id = :p${i};`, '\n'),
      `INSERT INTO orders (customer_id, total) SELECT :c, sum(l.q * p.price) FROM ${lines} RETURNING id AS order_id \\gset`,
      `INSERT INTO order_items (order_id, product_id, quantity, price) SELECT :order_id, l.p, l.q, p.price FROM ${lines};`,
      `INSERT INTO outbox (topic, payload) VALUES ('order.created', jsonb_build_object('id', :order_id::int, 'customer_id', :c::int));`,
      'COMMIT;',
    ].join('\n');
  });
}

export interface Freshness {
  offered: number;
  answered: number;
  p50: number;
  p99: number;
  samples: number;
  /** Requests that got no answer (a connection reset, say): not timed, and counted here instead of ending the bench. */
  failed: number;
}

/**
 * Orders sent at a steady (open-loop) rate over 32 keep-alive connections, as
 * many as the intake run uses, each timed from its 201 until its event is in
 * read_db. The checker looks up all pending tokens in one query each time the
 * projector announces a committed batch (LISTEN on its channel, as the web's
 * read-your-writes waiters do) and every 20 ms besides; it used to poll every
 * 2 ms, which cost read_db and this process 0.45 of the 2 cores at 200
 * orders/s: the measurement weighed on what it measured.
 * The connection bound matters: with a socket per in-flight request the web
 * process drowns in connections once the rate is above what the machine
 * sustains, and the load generator's own backlog then passes for freshness.
 * `answered` is orders answered per second over the run: above capacity,
 * orders wait in the agent before their transaction, which freshness (commit
 * → read_db) does not count.
 */
export async function measureFreshness(
  env: BenchEnv,
  base: string,
  products: number[],
  rate: number,
  seconds: number,
  /** Told of each sample: when its order was answered (performance.now()) and its freshness, ms. */
  onSample?: (at: number, ms: number) => void,
): Promise<Freshness> {
  const latencies: number[] = [];
  const pending = new Map<string, number>();
  let sending = true;
  const listener = new pg.Client({ connectionString: env.readUrl });
  await listener.connect();
  let wake: () => void = () => undefined;
  listener.on('notification', () => wake());
  await listener.query(`LISTEN ${CHANNELS.applied}`);
  const checker = (async () => {
    while (sending || pending.size > 0) {
      if (pending.size > 0) {
        const { rows } = await env.read.query<{ event_id: string }>('SELECT event_id FROM processed_events WHERE event_id = ANY ($1::text[])', [[...pending.keys()]]);
        const now = performance.now();
        for (const r of rows) {
          const at = pending.get(r.event_id)!;
          latencies.push(now - at);
          onSample?.(at, now - at);
          pending.delete(r.event_id);
        }
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 20);
        wake = () => (clearTimeout(timer), resolve());
      });
    }
  })();
  const run = await postPaced(base, products, rate, seconds, ({ at, token }) => {
    if (token) pending.set(token, at);
  });
  const answered = run.sent / run.seconds;
  sending = false;
  await checker;
  await listener.end();
  latencies.sort((a, b) => a - b);
  return { offered: rate, answered, p50: percentile(latencies, 50), p99: percentile(latencies, 99), samples: latencies.length, failed: run.failed };
}

/** Orders POSTed at a steady (open-loop) rate for `seconds`: how many were answered 201. */
export async function postAtRate(base: string, products: number[], rate: number, seconds: number): Promise<number> {
  let created = 0;
  await postPaced(base, products, rate, seconds, ({ status }) => void (status === 201 && created++));
  return created;
}

/**
 * Orders sent at a steady (open-loop) rate for `seconds` over 32 keep-alive
 * connections (as many as the intake run uses), each answer handed to
 * `onAnswer`. Resolves once all are answered: how many were sent, how many
 * got no answer (a connection reset, say), and the seconds from the first
 * send to the last answer.
 */
async function postPaced(base: string, products: number[], rate: number, seconds: number, onAnswer: (answer: Awaited<ReturnType<typeof postJson>>) => void): Promise<{ sent: number; failed: number; seconds: number }> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 32 });
  const requests: Promise<void>[] = [];
  let failed = 0;
  const interval = 1000 / rate;
  const start = performance.now();
  let sent = 0;
  for (; performance.now() - start < seconds * 1000; sent++) {
    const wait = start + sent * interval - performance.now();
    if (wait > 0) await sleep(wait);
    requests.push(postJson(agent, `${base}/orders`, JSON.stringify(randomOrder(products))).then(onAnswer, () => void failed++));
  }
  await Promise.all(requests);
  const elapsed = (performance.now() - start) / 1000;
  agent.destroy();
  return { sent, failed, seconds: elapsed };
}

/**
 * CPU per round trip of a bare loopback ping-pong (two sockets in this
 * process, one byte each way) at `rate` round trips per second: what a
 * wake-up costs on this machine. Each event crosses about a dozen of them.
 */
export async function wakeCost(rate: number, seconds = 3): Promise<number> {
  const server = net.createServer((s) => s.on('data', (d) => s.write(d)));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const client = net.connect((server.address() as { port: number }).port, '127.0.0.1');
  await new Promise((r) => client.once('connect', r));
  const n = Math.round(rate * seconds);
  let got = 0;
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  await new Promise<void>((done) => {
    client.on('data', (d: Buffer) => {
      got += d.length;
      if (got >= n) done();
    });
    let sent = 0;
    const tick = () => {
      const due = Math.min(n, Math.floor(((performance.now() - t0) * rate) / 1000));
      for (; sent < due; sent++) client.write('x');
      if (sent < n) setTimeout(tick, 1000 / rate);
    };
    tick();
  });
  const used = process.cpuUsage(c0);
  client.destroy();
  server.close();
  return (used.user + used.system) / n;
}
