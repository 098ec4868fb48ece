import type { ChildProcess } from 'node:child_process';
import { Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { getConfig } from '../lib/config.js';
import { applyEvents, type ProjectionEvent } from '../workers/projector/apply.js';
import { orderEvent } from '../workers/projector/events.js';
import { queueNames } from '../lib/queue.js';
import { RedisClusterFixture } from '../test/support/redis-cluster.js';
import { benchEnv, cpuCores, cpuSnapshot, seedProducts, sleep, startProc, stopProc, type BenchEnv } from './lib.js';

/**
 * The drain section's pieces: a standing backlog applied by N worker
 * processes, and the two limits it is compared with in the same run — BullMQ
 * moving the same jobs with a worker that does nothing, and the projector's
 * own SQL applying the same events without a queue.
 */

export interface DrainRun {
  /** Events/s the relay published the backlog at (process start-up included). */
  published: number;
  /** Events/s from the first event published to the last (the relay's start-up left out). */
  publishedSteady: number;
  /** Events/s from the workers' start (start-up included) to the last event applied. */
  applied: number;
  /** Events/s from the first event applied to the last. */
  steady: number;
  /** Cores used per process group while the workers drained. */
  cores?: [string, number][];
  /** Cores used per process group while the relay published the backlog. */
  publishCores?: [string, number][];
  seconds: number;
}

const PRODUCTS = 1000;

/**
 * A backlog of `events` order.created events written straight through place_order (500 a transaction).
 * `traced`: each outbox row carries a sampled traceparent of its own, as if a traced request had written it.
 */
export async function writeBacklog(env: BenchEnv, events: number, traced = false): Promise<void> {
  await seedProducts(env.write, PRODUCTS);
  const traceparent = traced ? `set_config('op.traceparent', '00-' || md5(g::text) || '-' || substr(md5(g::text || 's'), 1, 16) || '-01', true),` : '';
  for (let from = 1; from <= events; from += 500) {
    await env.write.query(
      `SELECT ${traceparent} place_order(1 + (g % 5000), ARRAY[1 + (g % ${PRODUCTS}), 1 + ((g * 7) % ${PRODUCTS})], ARRAY[1 + (g % 3), 1], NULL, NULL)
         FROM generate_series($1::int, $2::int) g`,
      [from, Math.min(events, from + 499)],
    );
  }
}

async function count(env: BenchEnv, sql: string): Promise<number> {
  const { rows } = await env.write.query<{ n: string }>(sql).catch(() => ({ rows: [{ n: '0' }] }));
  return Number(rows[0]!.n);
}

/**
 * One standing backlog: published by one relay, then applied by `workers` worker processes. `opts.env` goes to
 * every process, `opts.prepare` runs before the backlog is written, `opts.traced` gives every event a traceparent.
 */
export async function drainOnce(tag: string, backlog: number, workers: number, opts: { env?: Record<string, string>; prepare?: (env: BenchEnv) => Promise<void>; traced?: boolean } = {}): Promise<DrainRun & { env?: undefined }> {
  const env = await benchEnv(tag);
  Object.assign(env.env, opts.env);
  try {
    await opts.prepare?.(env);
    await writeBacklog(env, backlog, opts.traced);
    const tRelay = performance.now();
    const relay = startProc('workers/relay/main.js', env.env);
    const beforePublish = await cpuSnapshot(env, { relay });
    let firstPublished: { at: number; left: number } | undefined;
    for (;;) {
      const left = await count(env, 'SELECT count(*)::text AS n FROM outbox WHERE published_at IS NULL');
      if (left < backlog) firstPublished ??= { at: performance.now(), left };
      if (left === 0) break;
      await sleep(20);
    }
    const tPublished = performance.now();
    const publishSeconds = (tPublished - tRelay) / 1000;
    const published = backlog / publishSeconds;
    const publishedSteady = firstPublished!.left > 0 ? firstPublished!.left / ((tPublished - firstPublished!.at) / 1000) : published;
    const afterPublish = await cpuSnapshot(env, { relay });
    const publishCores = beforePublish && afterPublish ? cpuCores(beforePublish, afterPublish, publishSeconds) : undefined;
    const t0 = performance.now();
    const procs: Record<string, ChildProcess> = { relay };
    for (let i = 0; i < workers; i++) procs[workers === 1 ? 'worker' : `worker ${i + 1}`] = startProc('workers/projector/main.js', env.env);
    const before = await cpuSnapshot(env, procs);
    let tFirst: number | undefined;
    for (;;) {
      const { rows } = await env.read.query<{ n: string }>('SELECT count(*)::text AS n FROM processed_events');
      const n = Number(rows[0]!.n);
      if (n > 0) tFirst ??= performance.now();
      if (n >= backlog) break;
      await sleep(20);
    }
    const t1 = performance.now();
    const after = await cpuSnapshot(env, procs);
    await Promise.all(Object.values(procs).map(stopProc));
    const seconds = (t1 - t0) / 1000;
    return { published, publishedSteady, applied: backlog / seconds, steady: backlog / ((t1 - tFirst!) / 1000), cores: before && after ? cpuCores(before, after, seconds) : undefined, publishCores, seconds };
  } finally {
    await env.drop();
  }
}

/** A sample of the backlog's events as the relay sends them (topic and payload), for the two references. */
async function sampleEvents(env: BenchEnv, n: number): Promise<{ id: string; topic: string; payload: unknown; created_at: string }[]> {
  const { rows } = await env.write.query<{ id: string; topic: string; payload: unknown; created_at: string }>(
    `SELECT id::text, topic, payload, to_char(created_at, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at FROM outbox ORDER BY id LIMIT $1`,
    [n],
  );
  return rows;
}

/**
 * BullMQ alone on this machine's Redis: `events` events as jobs of
 * `perJob` events each (the relay's layout), taken by a Worker (this
 * process, concurrency as the projector's) whose processor does nothing.
 */
export async function bullmqNoop(events: number, perJob: number, concurrency: number): Promise<{ jobsPerSec: number; eventsPerSec: number }> {
  const env = await benchEnv('noop');
  const redis = new Redis(env.env.REDIS_URL!, { maxRetriesPerRequest: null });
  try {
    await writeBacklog(env, Math.min(events, 2000));
    const sample = await sampleEvents(env, 2000);
    const queue = new Queue('noop', { connection: redis, prefix: env.env.QUEUE_PREFIX });
    const jobs = Math.ceil(events / perJob);
    for (let j = 0; j < jobs; j += 1000) {
      await queue.addBulk(
        Array.from({ length: Math.min(1000, jobs - j) }, (_, k) => {
          const n = j + k;
          const data = perJob === 1 ? sample[n % sample.length]! : { events: Array.from({ length: perJob }, (_, e) => sample[(n * perJob + e) % sample.length]!) };
          return { name: 'e', data, opts: { jobId: `n-${n}`, removeOnComplete: { count: 1000 }, attempts: 8 } };
        }),
      );
    }
    let done = 0;
    const finished = Promise.withResolvers<void>();
    const t0 = performance.now();
    const workerRedis = new Redis(env.env.REDIS_URL!, { maxRetriesPerRequest: null });
    const worker = new Worker('noop', async () => undefined, { connection: workerRedis, prefix: env.env.QUEUE_PREFIX, concurrency });
    worker.on('completed', () => {
      if (++done === jobs) finished.resolve();
    });
    await finished.promise;
    const seconds = (performance.now() - t0) / 1000;
    await worker.close();
    await queue.close();
    workerRedis.disconnect(); // BullMQ leaves a connection it was given open (and this process running)
    return { jobsPerSec: jobs / seconds, eventsPerSec: (jobs * perJob) / seconds };
  } finally {
    redis.disconnect();
    await env.drop();
  }
}

/** The projector's statement alone: `events` events applied `batch` at a time, one after another, on a fresh read_db. */
export async function applyReference(events: number, batch: number): Promise<{ eventsPerSec: number }> {
  const env = await benchEnv('apply');
  try {
    await writeBacklog(env, events);
    const rows = await sampleEvents(env, events);
    const parsed: ProjectionEvent[] = rows.map((r) => ({ event_id: r.id, event: orderEvent(r.topic, r.payload) }));
    const t0 = performance.now();
    for (let i = 0; i < parsed.length; i += batch) await applyEvents(env.readDb, parsed.slice(i, i + batch));
    return { eventsPerSec: parsed.length / ((performance.now() - t0) / 1000) };
  } finally {
    await env.drop();
  }
}

export interface ClusterRun extends DrainRun {
  partitions: number;
  /** Per master: its port, the queue keys it held at the end, commands it ran per event and per second (publish and drain). */
  masters: { port: number; keys: number; commandsPerEvent: number; opsPerSec: number }[];
}

/** The drain on a private 3-master Redis Cluster with `partitions` queue partitions and `workers` worker processes. */
export async function clusterDrain(backlog: number, partitions: number, workers: number): Promise<ClusterRun> {
  const cluster = await RedisClusterFixture.start();
  try {
    const nodes = cluster.ports.map((port) => new Redis({ port, host: '127.0.0.1' }));
    const commands = async () => Promise.all(nodes.map(async (n) => Number(/^total_commands_processed:(\d+)/m.exec(await n.info('stats'))?.[1] ?? 0)));
    let c0: number[] = [];
    let prefix = '';
    const run = await drainOnce(`cluster${partitions}`, backlog, workers, { env: { REDIS_CLUSTER_NODES: cluster.nodes, QUEUE_PARTITIONS: String(partitions), REDIS_URL: `redis://127.0.0.1:${cluster.ports[0]}` }, prepare: async (env) => {
      prefix = getConfig(env.env).QUEUE_PREFIX;
      c0 = await commands();
    } });
    const c1 = await commands();
    const names = queueNames({ QUEUE_NAME: 'order-events', QUEUE_PARTITIONS: partitions });
    const masters = await Promise.all(
      nodes.map(async (n, i) => {
        const keys = (await n.keys(`${prefix}:*`)).filter((k) => names.some((q) => k.startsWith(`${prefix}:${q}:`))).length;
        const ran = c1[i]! - c0[i]!;
        return { port: cluster.ports[i]!, keys, commandsPerEvent: ran / backlog, opsPerSec: ran / (backlog / run.published + run.seconds) };
      }),
    );
    for (const n of nodes) n.disconnect();
    return { ...run, partitions, masters };
  } finally {
    await cluster.stop();
  }
}
