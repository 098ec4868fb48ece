import type pg from 'pg';
import { createDb, type Db } from '../../db/pool.js';
import { testLog } from '../support/env.js';
import { compareEventIds, compareViews } from '../../db/recompute.js';
import { Redis } from 'ioredis';
import { EventQueues, findEventJob, type JobData } from '../../lib/queue.js';
import type { Job } from 'bullmq';

type JobOf = (eventId: string) => Promise<Job<JobData> | undefined>;
import { sleep } from '../support/pipeline.js';
import { resolvePending } from './traffic.js';
import { QUEUE_NAME, type ChaosSystem } from './system.js';
import type { Model, Status } from './model.js';

/** SPEC-level promise: once healed, the pipeline drains within this. */
export const DRAIN_MS = 60_000;
/** How long unresolvable leftovers (only failed jobs remain) may sit before the drain stops waiting. */
const STUCK_MS = 8_000;

/** What the end of a run saw, for the per-run progress line. */
export interface EndState {
  events: number;
  orders: number;
  drainedMs: number;
  drained: boolean;
}

/**
 * The end of a run: heal every fault, make sure every process runs, learn
 * the outcome of every ambiguous keyed order, wait for the pipeline to
 * drain, then check the invariants. Violations go to the journal.
 */
export async function finishRun(sys: ChaosSystem): Promise<EndState> {
  const m = sys.model;
  sys.journal.note('end of commands: healing every fault');
  await sys.faults.healAll();
  await sys.supervisor.settle();
  await resolveAll(sys, m);

  const write = sys.pool('write');
  const read = sys.pool('read');
  const redis = new Redis({ host: '127.0.0.1', port: sys.infra.redis.port, maxRetriesPerRequest: 1 });
  redis.on('error', () => undefined);
  const queues = new EventQueues({ QUEUE_NAME, QUEUE_PARTITIONS: sys.partitions, QUEUE_PREFIX: sys.prefix }, redis);
  queues.on('error', () => undefined);
  const jobOf: JobOf = (id) => findEventJob(queues, redis, id);
  try {
    const t0 = Date.now();
    const drained = await drain(sys, write, read, queues, jobOf);
    const drainedMs = Date.now() - t0;
    sys.journal.note(drained ? `drained in ${drainedMs} ms` : `not drained after ${drainedMs} ms`);
    // The system's own comparisons (db/recompute.ts), through its SQL layer.
    const writeDb = createDb(sys.writeUrl, { name: 'chaos-harness', max: 2, log: testLog });
    const readDb = createDb(sys.readUrl, { name: 'chaos-harness', max: 2, log: testLog });
    try {
      await checkEvents(sys, writeDb, readDb, read, queues, jobOf);
      await checkViews(sys, writeDb, readDb);
    } finally {
      await Promise.allSettled([writeDb.end(), readDb.end()]);
    }
    await checkOrders(sys, write);
    await checkStock(sys, write);
    const { rows } = await write.query<{ n: number }>('SELECT count(*)::int AS n FROM outbox');
    return { events: rows[0]!.n, orders: m.orders.length, drainedMs, drained };
  } finally {
    await queues.close().catch(() => undefined);
    redis.disconnect();
  }
}

/** Retry every ambiguous keyed order until its answer is definite (faults are healed by now). */
async function resolveAll(sys: ChaosSystem, m: Model): Promise<void> {
  const deadline = Date.now() + 60_000;
  let web = 0;
  while (m.pending.length > 0) {
    if (Date.now() > deadline) {
      sys.journal.violation('http', `${m.pending.length} keyed order(s) still without a definite answer after 60 s of retries: ${m.pending.map((p) => `${p.key} (${p.reason})`).join(', ')}`);
      return;
    }
    const before = m.pending.length;
    const resolved = await resolvePending(sys, m, 0, web++);
    if (!resolved || m.pending.length >= before) await sleep(500);
  }
}

interface Snapshot {
  outbox: number[];
  processed: Set<string>;
  failed: Map<string, string>;
  deadLetters: Set<string> | undefined;
}

async function deadLetterIds(read: pg.Pool): Promise<Set<string> | undefined> {
  const { rows } = await read.query<{ t: string | null }>(`SELECT to_regclass('dead_letters')::text AS t`);
  if (!rows[0]?.t) return undefined; // the table is newer than this checkout
  const { rows: ids } = await read.query<{ event_id: string }>('SELECT event_id::text AS event_id FROM dead_letters');
  return new Set(ids.map((r) => r.event_id));
}

/** Outbox event id → failedReason, from BullMQ's failed set (job ids are evt-<id>). */
async function failedJobs(queues: EventQueues): Promise<Map<string, string>> {
  const jobs = (await Promise.all(queues.all.map((q) => q.getFailed(0, -1)))).flat();
  return new Map(jobs.filter((j) => j?.id).map((j) => [String(j.id).replace(/^evt-/, ''), j.failedReason ?? '']));
}

async function snapshot(write: pg.Pool, read: pg.Pool, queues: EventQueues): Promise<Snapshot> {
  const { rows: o } = await write.query<{ id: number }>('SELECT id FROM outbox ORDER BY id');
  const { rows: p } = await read.query<{ event_id: string }>('SELECT event_id FROM processed_events');
  return { outbox: o.map((r) => r.id), processed: new Set(p.map((r) => r.event_id)), failed: await failedJobs(queues), deadLetters: await deadLetterIds(read) };
}

/**
 * Until every outbox id is processed or is poison, and every poison event has
 * settled (failed set or dead_letters). Stops early when all that is left
 * are non-poison events sitting in the failed set: nothing brings those back.
 */
async function drain(sys: ChaosSystem, write: pg.Pool, read: pg.Pool, queues: EventQueues, jobOf: JobOf): Promise<boolean> {
  const poison = new Set(sys.model.poison.map((p) => String(p.eventId)));
  const deadline = Date.now() + DRAIN_MS;
  let stuckSince: number | undefined;
  let lastNote = 0;
  for (;;) {
    let s: Snapshot;
    try {
      s = await snapshot(write, read, queues);
    } catch (err) {
      if (Date.now() > deadline) {
        sys.journal.violation('harness', `cannot read the pipeline state: ${(err as Error).message}`);
        return false;
      }
      await sleep(500);
      continue;
    }
    const left = s.outbox.map(String).filter((id) => !s.processed.has(id) && !poison.has(id));
    const unsettled = [...poison].filter((id) => !s.failed.has(id) && !s.deadLetters?.has(id) && !s.processed.has(id));
    if (left.length === 0 && unsettled.length === 0) return true;
    const stuck = unsettled.length === 0 && (await allHopeless(left, s, write, read, jobOf));
    stuckSince = stuck ? (stuckSince ?? Date.now()) : undefined;
    if (Date.now() - lastNote > 5000) {
      lastNote = Date.now();
      const counts = await queues.counts('waiting', 'active', 'delayed', 'failed', 'prioritized').catch(() => ({}));
      sys.journal.note(`draining: ${left.length} event(s) not processed, ${unsettled.length} poison not settled; queue ${JSON.stringify(counts)}`);
    }
    if (stuckSince !== undefined && Date.now() - stuckSince > STUCK_MS) {
      sys.journal.violation('drain', `stopped waiting after ${STUCK_MS} ms without hope: each of the ${left.length} unprocessed event(s) sits in BullMQ's failed set, or is published, gone from Redis and at or below the reconciler's watermark (which nothing re-enqueues)`);
      return false;
    }
    if (Date.now() > deadline) {
      const counts = await queues.counts().catch(() => ({}));
      sys.journal.violation('drain', `not drained ${DRAIN_MS} ms after healing: ${left.length} event(s) unprocessed (${left.slice(0, 20).join(',')}), poison not settled: ${unsettled.join(',') || 'none'}`, `queue counts: ${JSON.stringify(counts)}`);
      return false;
    }
    await sleep(250);
  }
}

/**
 * Nothing will bring these events back: each is in the failed set (only a
 * replay would), or was published, has no job in Redis and lies at or below
 * the reconciler's watermark (the reconciler only looks above it).
 */
async function allHopeless(left: string[], s: Snapshot, write: pg.Pool, read: pg.Pool, jobOf: JobOf): Promise<boolean> {
  if (left.length === 0 || left.length > 200) return false;
  const rest = left.filter((id) => !s.failed.has(id));
  if (rest.length === 0) return true;
  try {
    const { rows: wm } = await read.query<{ w: string }>('SELECT last_event_id::text AS w FROM reconciler_watermark');
    const w = Number(wm[0]?.w ?? 0);
    const { rows } = await write.query<{ id: number }>('SELECT id FROM outbox WHERE id = ANY ($1::int[]) AND published_at IS NOT NULL', [rest.map(Number)]);
    const published = new Set(rows.map((r) => String(r.id)));
    for (const id of rest) {
      if (Number(id) > w || !published.has(id)) return false;
      if (await jobOf(id)) return false;
    }
    return true;
  } catch {
    return false;
  }
}

/** (1) none lost, (2) none applied twice, (5) failed/parked = exactly the poison. */
async function checkEvents(sys: ChaosSystem, writeDb: Db, readDb: Db, read: pg.Pool, queues: EventQueues, jobOf: JobOf): Promise<void> {
  const poison = new Map(sys.model.poison.map((p) => [String(p.eventId), p.kind]));
  const ids = await compareEventIds(writeDb, readDb);
  const write = sys.pool('write');
  const s = await snapshot(write, read, queues);

  const lost = ids.unprocessed.map(String).filter((id) => !poison.has(id));
  if (lost.length > 0) {
    const states = await Promise.all(
      lost.slice(0, 20).map(async (id) => {
        const job = await jobOf(id).catch(() => undefined);
        const state = job ? await job.getState().catch(() => '?') : 'no job in Redis';
        return `${id}: ${state}${job?.failedReason ? ` (${job.failedReason}, ${job.attemptsMade} attempts)` : ''}`;
      }),
    );
    sys.journal.violation('lost', `${lost.length} event(s) never applied: ${lost.slice(0, 50).join(',')}`, [...states, ...(await diagnose(sys, write, read, lost.slice(0, 20)))].join('\n'));
  }
  if (ids.unknown.length > 0) sys.journal.violation('applied-twice', `processed_events holds ids the outbox never had: ${ids.unknown.slice(0, 50).join(',')}`);
  const appliedPoison = [...poison.keys()].filter((id) => s.processed.has(id));
  if (appliedPoison.length > 0) sys.journal.violation('poison', `poison event(s) recorded as processed: ${appliedPoison.join(',')}`);

  const failedNotPoison = [...s.failed.keys()].filter((id) => !poison.has(id));
  if (failedNotPoison.length > 0) {
    sys.journal.violation('poison', `BullMQ's failed set holds ${failedNotPoison.length} event(s) that are not poison: ${failedNotPoison.slice(0, 50).join(',')}`, failedNotPoison.slice(0, 10).map((id) => `${id}: ${s.failed.get(id)}`).join('\n'));
  }
  const parkedNotPoison = [...(s.deadLetters ?? [])].filter((id) => !poison.has(id));
  if (parkedNotPoison.length > 0) sys.journal.violation('poison', `dead_letters holds ${parkedNotPoison.length} event(s) that are not poison: ${parkedNotPoison.slice(0, 50).join(',')}`);
  const nowhere = [...poison].filter(([id]) => !s.failed.has(id) && !s.deadLetters?.has(id));
  if (nowhere.length > 0) {
    const states = await Promise.all(
      nowhere.map(async ([id, kind]) => {
        const job = await jobOf(id).catch(() => undefined);
        return `${id} (${kind}): ${job ? await job.getState().catch(() => '?') : 'no job in Redis'}${job ? `, ${job.attemptsMade} attempts` : ''}`;
      }),
    );
    sys.journal.violation('poison', `poison event(s) neither in the failed set nor in dead_letters${s.deadLetters ? '' : ' (no dead_letters table)'}: ${nowhere.map(([id]) => id).join(',')}`, states.join('\n'));
  }
}

/** (3) every view equals the SPEC §3 recomputation. */
async function checkViews(sys: ChaosSystem, write: Db, read: Db): Promise<void> {
  const diffs = await compareViews(write, read);
  if (diffs.length > 0) {
    sys.journal.violation('views', `${diffs.length} difference(s) between the read model and SPEC §3`, diffs.slice(0, 30).map((d) => `${d.view}[${d.key}].${d.column}: expected ${d.expected}, actual ${d.actual}`).join('\n'));
  }
}

interface DbOrder {
  id: number;
  customer_id: number;
  total: string;
  status: Status;
  items: { product_id: number; quantity: number; price: string }[];
}

/** (4) every order the API confirmed is in write_db as answered; no more unknown orders than ambiguous attempts. */
async function checkOrders(sys: ChaosSystem, write: pg.Pool): Promise<void> {
  const m = sys.model;
  const { rows } = await write.query<DbOrder>(
    `SELECT o.id, o.customer_id, o.total::text AS total, o.status,
            coalesce((SELECT json_agg(json_build_object('product_id', i.product_id, 'quantity', i.quantity, 'price', i.price::text) ORDER BY i.id)
                        FROM order_items i WHERE i.order_id = o.id), '[]') AS items
       FROM orders o ORDER BY o.id`,
  );
  const byId = new Map(rows.map((r) => [r.id, r]));
  const { rows: keys } = await write.query<{ key: string; order_id: number }>('SELECT key, order_id FROM idempotency_keys');
  const keyOrder = new Map(keys.map((k) => [k.key, k.order_id]));
  const problems: string[] = [];
  for (const o of m.orders) {
    const db = byId.get(o.id);
    if (!db) {
      problems.push(`order ${o.id} (answered 201, total ${o.total}) is not in write_db`);
      continue;
    }
    if (db.customer_id !== o.customerId || db.total !== o.total || JSON.stringify(db.items) !== JSON.stringify(o.items)) {
      problems.push(`order ${o.id}: write_db has customer ${db.customer_id}, total ${db.total}, items ${JSON.stringify(db.items)}; the API answered customer ${o.customerId}, total ${o.total}, items ${JSON.stringify(o.items)}`);
    }
    if (!o.uncertain && !o.status.has(db.status)) problems.push(`order ${o.id} is ${db.status} in write_db; the answers say ${[...o.status].join('|')}`);
    if (o.key !== undefined && keyOrder.get(o.key) !== o.id) problems.push(`Idempotency-Key ${o.key} belongs to order ${keyOrder.get(o.key)} in write_db, the API answered order ${o.id}`);
  }
  const known = new Set(m.orders.map((o) => o.id));
  const extra = rows.filter((r) => !known.has(r.id));
  const allowed = m.ambiguousUnkeyed + m.pending.length;
  if (extra.length > allowed) problems.push(`${extra.length} order(s) in write_db the API never confirmed (${extra.slice(0, 20).map((r) => r.id).join(',')}), but only ${allowed} attempt(s) were ambiguous`);
  if (problems.length > 0) sys.journal.violation('orders', `${problems.length} problem(s) with confirmed orders`, problems.slice(0, 30).join('\n'));
}

/** Stock is what the orders left, never negative, and within the model's bounds. */
async function checkStock(sys: ChaosSystem, write: pg.Pool): Promise<void> {
  const { rows } = await write.query<{ id: number; stock: number; sold: number }>(
    `SELECT p.id, p.stock, coalesce((SELECT sum(i.quantity) FROM order_items i JOIN orders o ON o.id = i.order_id
                                       WHERE i.product_id = p.id AND o.status <> 'cancelled'), 0)::int AS sold
       FROM products p ORDER BY p.id`,
  );
  const problems: string[] = [];
  for (const r of rows) {
    const p = sys.model.products.find((x) => x.id === r.id);
    if (!p) continue;
    if (r.stock < 0) problems.push(`product ${r.id}: stock ${r.stock}`);
    if (r.stock !== p.initialStock - r.sold) problems.push(`product ${r.id}: stock ${r.stock}, but ${p.initialStock} less ${r.sold} sold in non-cancelled orders is ${p.initialStock - r.sold}`);
    if (r.stock < p.low || r.stock > p.high) problems.push(`product ${r.id}: stock ${r.stock} outside the model's bounds [${p.low}, ${p.high}]`);
  }
  if (problems.length > 0) sys.journal.violation('stock', `${problems.length} stock problem(s)`, problems.join('\n'));
}

/** Evidence for lost events: their outbox rows, the reconciler's watermark, sessions that may hold them, what the relays said. */
async function diagnose(sys: ChaosSystem, write: pg.Pool, read: pg.Pool, ids: string[]): Promise<string[]> {
  const lines: string[] = [];
  try {
    const { rows } = await write.query<{ id: number; created_at: string; published_at: string | null; now: string }>(
      `SELECT id, created_at, published_at, now() AT TIME ZONE 'UTC' AS now FROM outbox WHERE id = ANY ($1::int[]) ORDER BY id`,
      [ids.map(Number)],
    );
    for (const r of rows) lines.push(`outbox ${r.id}: created ${r.created_at}, published ${r.published_at ?? 'never'} (now ${r.now})`);
    const { rows: wm } = await read.query<{ w: string }>('SELECT last_event_id::text AS w FROM reconciler_watermark');
    lines.push(`reconciler watermark: ${wm[0]?.w ?? '?'}`);
    const { rows: sessions } = await sys.infra.pg.query<{ pid: number; app: string; state: string; xact: string | null; query: string }>(
      `SELECT pid, application_name AS app, state, xact_start::text AS xact, left(query, 120) AS query FROM pg_stat_activity
        WHERE datname = $1 AND pid <> pg_backend_pid() AND state <> 'idle'`,
      [sys.writeDb],
    );
    for (const x of sessions) lines.push(`write_db session ${x.pid} ${x.app} ${x.state} since ${x.xact ?? '-'}: ${x.query}`);
  } catch (err) {
    lines.push(`(diagnosis failed: ${(err as Error).message})`);
  }
  for (const slot of sys.supervisor.byRole('relay')) {
    const requeued = slot.output.match(/re-enqueued events that Redis lost[^\n]*/g) ?? [];
    lines.push(`${slot.name}: ${requeued.length} re-enqueue line(s) in its last output${requeued.length > 0 ? `, last: ${requeued.at(-1)}` : ''}`);
  }
  return lines;
}
