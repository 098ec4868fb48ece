import type { RedisClient } from '../../lib/redis.js';
import type { Config } from '../../lib/config.js';
import type { Logger } from '../../lib/logger.js';
import { toJob, jobIdFor, eventIndexKey, isMultiEvent, type EventQueue, type EventQueues } from '../../lib/queue.js';
import { z } from 'zod';
import { sql, type Db } from '../../db/pool.js';
import { recordDeadLetter, resolvedIds } from '../../db/dead-letters.js';
import { outboxHorizon, snapshotXmin } from '../../db/outbox.js';


export interface ReconcileResult {
  watermark: number;
  /** Highest id looked at; ids in (watermark, cursor] that are not resolved are `pending`. */
  cursor: number;
  pending: number;
  scanned: number;
  requeued: number;
  /** Published, not yet processed, but their job is still in Redis (waiting, active or delayed). */
  inFlight: number;
  /** Jobs found in the failed set without a dead letter, now recorded as one. */
  deadLettered: number;
}

type JobState = 'missing' | 'failed' | 'present';

/**
 * Finds events that were published but never applied (Redis lost them:
 * restarted empty, flushed, failed over) and enqueues them again.
 *
 * An event is resolved when it is in processed_events (or at or below the
 * retention floor) or is a dead letter (failed for good, or parked: known
 * and listed, see db/dead-letters.ts). Three numbers:
 *  - the bound B: no transaction can still commit an outbox id ≤ B (see safeBound);
 *  - the watermark W, kept in read_db: every id ≤ W is resolved or never
 *    existed, so no tick looks below it again;
 *  - the cursor C, in memory: every id in (W, C] has been looked at; those
 *    not resolved then are in `pending` and are looked at again each tick.
 * Each tick checks the pending ids, then scans up to RECONCILE_PAGES_PER_TICK
 * pages of RECONCILE_PAGE_SIZE new ids above C
 * (C never passes B). W moves up to just below the lowest pending id. So one
 * event that never resolves holds W but not C: losses above it are still
 * found, however large the backlog; a larger backlog only takes more ticks.
 *
 * For each unresolved event published more than RECONCILE_GRACE_MS ago, one
 * pipelined look in Redis tells whether a job still carries it: its own
 * job (one event), or the several-event job the relay's index names (see
 * lib/queue.ts eventIndexKey), while that job is unfinished. Gone (or the job
 * finished without resolving it): enqueued again as a job of its own (under
 * its own job id, so a job that exists after all is not doubled). In the
 * failed set: recorded as a dead letter if the worker could not. Dead letters
 * whose job Redis lost are enqueued again too, so the failed set shows them.
 * Index entries of resolved events are deleted as the cursor passes them,
 * and any left over at or below the watermark by a sweep (sweepIndex).
 *
 * Any number of reconcilers may run (one per relay): re-enqueueing is
 * idempotent and W only moves up (GREATEST). A restarted reconciler starts
 * with C = W.
 */
export class Reconciler {
  /** Horizons taken at earlier ticks, waiting for every transaction older than their xid to end. */
  private horizons: { xid: bigint; seq: number }[] = [];
  /** The highest sequence value known to be settled. */
  private settled = 0;
  private cursor = 0;
  /** Unresolved ids in (W, cursor], in ascending order (a Set keeps insertion order, and ids are added ascending). */
  private pending = new Set<number>();
  /** Where the next re-check of pending ids starts, so a large pending set is covered over several ticks. */
  private recheckFrom = 0;
  /** Likewise for dead letters. */
  private deadFrom = 0;
  /** Where each partition's index sweep goes on (an HSCAN cursor). */
  private readonly sweepFrom = new Map<EventQueue, string>();

  constructor(
    private readonly writeDb: Db,
    private readonly readDb: Db,
    private readonly queues: EventQueues,
    /** The connection the queue uses, for cheap EXISTS checks on job keys. */
    private readonly redis: RedisClient,
    private readonly config: Config,
    private readonly log: Logger,
  ) {}

  /**
   * The highest outbox id that no transaction can still commit. Each tick
   * takes a horizon with outbox_horizon() (db/outbox.ts outboxHorizon): the last
   * id drawn, S, then a transaction id X of its own. Every writer gets its
   * transaction id before it draws an outbox id (outbox_next_id), so any
   * transaction holding an id ≤ S has an xid < X. Once a snapshot's xmin has
   * passed X, none of them is running: every id ≤ S is committed and
   * visible, or rolled back for good. (A snapshot's xmax would not do: it is
   * the latest *completed* xid + 1, and a running transaction newer than
   * that is in neither xip nor xmin.)
   */
  private async safeBound(): Promise<number> {
    this.horizons.push(await outboxHorizon(this.writeDb));
    // A new statement, after outbox_horizon()'s transaction committed.
    const xmin = await snapshotXmin(this.writeDb);
    for (const x of this.horizons) if (x.xid < xmin) this.settled = Math.max(this.settled, x.seq);
    this.horizons = this.horizons.filter((x) => x.xid >= xmin);
    return this.settled;
  }

  async tick(): Promise<ReconcileResult> {
    const bound = await this.safeBound();
    const start = await this.readDb.oneFirst(sql.type(z.object({ w: z.number() }))`SELECT last_event_id AS w FROM reconciler_watermark`);
    if (this.cursor < start) this.cursor = start;
    for (const id of this.pending) if (id <= start) this.pending.delete(id);
    const result: ReconcileResult = { watermark: start, cursor: this.cursor, pending: 0, scanned: 0, requeued: 0, inFlight: 0, deadLettered: 0 };

    // 1. Pending ids, looked at again, a budget's worth per tick.
    const recheck = [...this.pending].filter((id) => id >= this.recheckFrom);
    if (recheck.length < this.config.RECONCILE_PAGES_PER_TICK * this.config.RECONCILE_PAGE_SIZE) recheck.push(...[...this.pending].filter((id) => id < this.recheckFrom));
    const slice = recheck.slice(0, this.config.RECONCILE_PAGES_PER_TICK * this.config.RECONCILE_PAGE_SIZE);
    for (let i = 0; i < slice.length; i += this.config.RECONCILE_PAGE_SIZE) await this.check(slice.slice(i, i + this.config.RECONCILE_PAGE_SIZE), result);
    this.recheckFrom = slice.length < recheck.length ? recheck[slice.length]! : 0;

    // 2. New ids above the cursor, up to the bound.
    for (let page = 0; page < this.config.RECONCILE_PAGES_PER_TICK && this.cursor < bound; page++) {
      const ids = await this.writeDb.anyFirst(sql.type(z.object({ id: z.number() }))`SELECT id FROM outbox WHERE id > ${this.cursor} AND id <= ${bound} ORDER BY id LIMIT ${this.config.RECONCILE_PAGE_SIZE}`);
      for (const id of ids) this.pending.add(id);
      result.scanned += ids.length;
      await this.check([...ids], result);
      this.cursor = ids.length < this.config.RECONCILE_PAGE_SIZE ? bound : ids[ids.length - 1]!;
    }

    // 3. Dead letters whose job Redis lost: back into the failed set (they fail again, or apply after a fix).
    await this.restoreDeadLetters(result);

    const first = this.pending.values().next();
    const watermark = first.done ? this.cursor : first.value - 1;
    await this.sweepIndex(Math.max(watermark, start));
    if (watermark > start) {
      await this.readDb.query(sql.typeAlias('void')`UPDATE reconciler_watermark SET last_event_id = GREATEST(last_event_id, ${watermark})`);
    }
    if (result.requeued > 0) this.log.warn({ requeued: result.requeued, watermark }, 're-enqueued events that Redis lost');
    return { ...result, watermark: Math.max(watermark, start), cursor: this.cursor, pending: this.pending.size };
  }

  /**
   * Index entries outlive their event when a deletion failed (Redis away), a
   * relay re-enqueued rows after the cursor passed them, or the partitions
   * changed: a page of each partition's index a tick is looked through, and
   * entries at or below the watermark (resolved, for good) deleted.
   */
  private async sweepIndex(watermark: number): Promise<void> {
    await Promise.all(
      this.queues.all.map(async (queue) => {
        const key = eventIndexKey(queue);
        const [next, flat] = await this.redis.hscan(key, this.sweepFrom.get(queue) ?? '0', 'COUNT', this.config.RECONCILE_PAGE_SIZE);
        this.sweepFrom.set(queue, next);
        const stale = flat.filter((f, i) => i % 2 === 0 && Number(f) <= watermark);
        if (stale.length > 0) await this.redis.hdel(key, ...stale);
      }),
    ).catch(() => undefined); // best effort, as the deletions in check()
  }

  /** Drop the resolved ids from pending; re-enqueue the lost ones among the rest. */
  private async check(ids: number[], result: ReconcileResult): Promise<void> {
    if (ids.length === 0) return;
    const resolved = await resolvedIds(this.readDb, ids);
    const unresolved = ids.filter((id) => !resolved.has(id));
    for (const id of resolved) this.pending.delete(id);
    // Best effort: a stale entry is only ever read for an unresolved event.
    if (resolved.size > 0) {
      await Promise.all(this.queues.split([...resolved], (id) => id).map(([queue, part]) => this.redis.hdel(eventIndexKey(queue), ...part.map(String)))).catch(() => undefined);
    }
    if (unresolved.length === 0) return;
    const rows = await this.writeDb.any(sql.type(z.object({ id: z.number(), due: z.boolean() }))`
      SELECT id, (published_at IS NOT NULL AND published_at < (now() AT TIME ZONE 'UTC') - ${this.config.RECONCILE_GRACE_MS} * interval '1 millisecond') AS due
        FROM outbox WHERE id = ANY (${sql.array(unresolved, 'int4')})`);
    // Below the bound, an id missing from the outbox never existed (its transaction rolled back).
    const present = new Set(rows.map((r) => r.id));
    for (const id of unresolved) if (!present.has(id)) this.pending.delete(id);
    const due = rows.filter((r) => r.due).map((r) => r.id);
    if (due.length === 0) return;
    const states = await this.jobStates(due);
    const lost = due.filter((_, i) => states[i] === 'missing');
    const failed = due.filter((_, i) => states[i] === 'failed');
    result.inFlight += due.length - lost.length - failed.length;
    if (lost.length > 0) result.requeued += await this.requeue(lost);
    for (const id of failed) if (await this.recordFailed(id)) result.deadLettered++;
  }

  /**
   * For each event id: is its own job in the failed set, or still there
   * (waiting, active, delayed, completed), or is it in an unfinished job of
   * several events ('present'), or gone from Redis ('missing')?
   */
  private async jobStates(ids: number[]): Promise<JobState[]> {
    // One pipeline per partition: in a cluster, a pipeline's keys must share a slot's master.
    const states = new Map<number, JobState>();
    await Promise.all(
      this.queues.split(ids, (id) => id).map(async ([queue, part]) => {
        const got = await this.partitionStates(queue, part);
        part.forEach((id, i) => states.set(id, got[i]!));
      }),
    );
    return ids.map((id) => states.get(id)!);
  }

  private async partitionStates(queue: EventQueue, ids: number[]): Promise<JobState[]> {
    const pipeline = this.redis.pipeline();
    for (const id of ids) {
      pipeline.exists(queue.toKey(jobIdFor(id)));
      pipeline.zscore(queue.keys.failed!, jobIdFor(id));
    }
    pipeline.hmget(eventIndexKey(queue), ...ids.map(String));
    const replies = (await pipeline.exec()) ?? [];
    for (const [err] of replies) if (err) throw err;
    const carriers = (replies[2 * ids.length]?.[1] ?? []) as (string | null)[];
    const states = ids.map((_, i): JobState | undefined => (replies[2 * i]?.[1] === 0 ? undefined : replies[2 * i + 1]?.[1] !== null ? 'failed' : 'present'));
    // Events without a job of their own: does the job the index names still hold them, unfinished?
    const groups = [...new Set(ids.flatMap((_, i) => (states[i] === undefined && carriers[i] ? [carriers[i]] : [])))];
    const unfinished = new Set<string>();
    if (groups.length > 0) {
      const look = this.redis.pipeline();
      for (const g of groups) look.hmget(queue.toKey(g), 'name', 'finishedOn');
      const found = (await look.exec()) ?? [];
      groups.forEach((g, i) => {
        const [err, fields] = found[i] ?? [null, null];
        if (err) throw err;
        const [name, finishedOn] = (fields ?? [null, null]) as (string | null)[];
        if (name !== null && finishedOn === null) unfinished.add(g);
      });
    }
    return ids.map((_, i) => states[i] ?? (carriers[i] && unfinished.has(carriers[i]) ? 'present' : 'missing'));
  }

  private async requeue(ids: readonly number[]): Promise<number> {
    const rows = await this.writeDb.any(sql.type(z.object({ id: z.number(), topic: z.string(), payload: z.unknown(), created_at: z.string() }))`
      SELECT id, topic, payload, created_at FROM outbox WHERE id = ANY (${sql.array(ids, 'int4')}) ORDER BY id`);
    await Promise.all(this.queues.split(rows, (r) => r.id).map(([queue, part]) => queue.addBulk(part.map((r) => toJob(this.config, r)))));
    return rows.length;
  }

  /** A job in the failed set whose event has no dead letter (the worker died, or read_db was away, as it failed). */
  private async recordFailed(id: number): Promise<boolean> {
    const job = await this.queues.of(id).getJob(jobIdFor(id));
    if (!job || isMultiEvent(job.data)) return false;
    await recordDeadLetter(this.readDb, {
      event_id: String(id),
      topic: job.data.topic,
      payload: job.data.payload,
      error: job.failedReason || 'failed (no reason recorded)',
      attempts: job.attemptsMade,
    });
    this.pending.delete(id);
    return true;
  }

  private async restoreDeadLetters(result: ReconcileResult): Promise<void> {
    // A page per tick, in turn, however many there are.
    const ids = await this.readDb.anyFirst(sql.type(z.object({ id: z.number() }))`
      SELECT event_id::bigint AS id FROM dead_letters WHERE parked_at IS NULL AND event_id::bigint > ${this.deadFrom} ORDER BY 1 LIMIT ${this.config.RECONCILE_PAGE_SIZE}`);
    this.deadFrom = ids.length < this.config.RECONCILE_PAGE_SIZE ? 0 : ids[ids.length - 1]!;
    if (ids.length === 0) return;
    const states = await this.jobStates([...ids]);
    const lost = ids.filter((_, i) => states[i] === 'missing');
    if (lost.length > 0) {
      result.requeued += await this.requeue(lost);
      this.log.warn({ events: lost }, 're-enqueued dead letters whose job Redis lost');
    }
  }
}
