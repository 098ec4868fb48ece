import type { Queue } from 'bullmq';
import type { RedisClient } from '../../lib/redis.js';
import type { Config } from '../../lib/config.js';
import type { Logger } from '../../lib/logger.js';
import { toJob, jobIdFor, type EventJobData } from '../../lib/queue.js';
import type { Pool } from '../../db/pool.js';

const PAGE = 1000;
const PAGES_PER_TICK = 20;

export interface ReconcileResult {
  watermark: number;
  scanned: number;
  requeued: number;
  /** Published, not yet processed, but their job is still in Redis (waiting, active, delayed or failed). */
  inFlight: number;
}

/**
 * Finds events that were published but never applied (Redis lost them:
 * restarted empty, flushed, failed over) and enqueues them again.
 *
 * It keeps a watermark W in read_db: every outbox id ≤ W is in
 * processed_events or will never exist. Each tick looks only above W, and
 * only up to a bound B below which no transaction can still commit an outbox
 * row: B is the sequence value seen at an earlier tick whose concurrent
 * transactions have all ended since (snapshot xmin has passed that tick's
 * xmax). Every write path assigns its transaction id (an UPDATE or row lock)
 * before it draws an outbox id, so a row whose id is ≤ B is visible by then.
 * Without that bound, a long transaction holding a low id could commit after
 * W had moved past it, and its event would never be checked.
 */
export class Reconciler {
  /** Sequence values seen at earlier ticks, waiting for that tick's concurrent transactions to end. */
  private horizons: { xmax: bigint; seq: number }[] = [];
  /** The highest sequence value already known to be settled. */
  private settled = 0;

  constructor(
    private readonly writePool: Pool,
    private readonly readPool: Pool,
    private readonly queue: Queue<EventJobData>,
    /** The connection the queue uses, for cheap EXISTS checks on job keys. */
    private readonly redis: RedisClient,
    private readonly config: Config,
    private readonly log: Logger,
  ) {}

  /** The highest outbox id that no open transaction can still add below. */
  private async safeBound(): Promise<number> {
    const { rows } = await this.writePool.query<{ xmin: string; xmax: string; seq: string; called: boolean }>(
      `SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS xmin,
              pg_snapshot_xmax(pg_current_snapshot())::text AS xmax,
              last_value::text AS seq, is_called AS called
         FROM outbox_id_seq`,
    );
    const r = rows[0]!;
    const xmin = BigInt(r.xmin);
    this.horizons.push({ xmax: BigInt(r.xmax), seq: r.called ? Number(r.seq) : Number(r.seq) - 1 });
    for (const h of this.horizons) if (h.xmax <= xmin) this.settled = Math.max(this.settled, h.seq);
    this.horizons = this.horizons.filter((h) => h.xmax > xmin);
    return this.settled;
  }

  async tick(): Promise<ReconcileResult> {
    const bound = await this.safeBound();
    const { rows: wm } = await this.readPool.query<{ w: string }>('SELECT last_event_id::text AS w FROM reconciler_watermark');
    const start = Number(wm[0]?.w ?? 0);
    let cursor = start;
    let firstUnresolved: number | undefined;
    let scanned = 0;
    let requeued = 0;
    let inFlight = 0;

    for (let page = 0; page < PAGES_PER_TICK && cursor < bound; page++) {
      const { rows } = await this.writePool.query<{ id: number; due: boolean }>(
        `SELECT id, (published_at IS NOT NULL AND published_at < (now() AT TIME ZONE 'UTC') - $3 * interval '1 millisecond') AS due
           FROM outbox WHERE id > $1 AND id <= $2 ORDER BY id LIMIT ${PAGE}`,
        [cursor, bound, this.config.RECONCILE_GRACE_MS],
      );
      if (rows.length === 0) {
        cursor = bound;
        break;
      }
      scanned += rows.length;
      const { rows: done } = await this.readPool.query<{ event_id: string }>(
        'SELECT event_id FROM processed_events WHERE event_id = ANY ($1::text[])',
        [rows.map((r) => String(r.id))],
      );
      const processed = new Set(done.map((d) => d.event_id));
      const missing = rows.filter((r) => !processed.has(String(r.id)));
      if (missing.length > 0) firstUnresolved ??= missing[0]!.id;
      const due = missing.filter((r) => r.due).map((r) => r.id);
      if (due.length > 0) {
        const lost = await this.notInRedis(due);
        inFlight += due.length - lost.length;
        if (lost.length > 0) {
          await this.requeue(lost);
          requeued += lost.length;
        }
      }
      cursor = rows.length < PAGE ? bound : rows[rows.length - 1]!.id;
    }

    const watermark = firstUnresolved !== undefined ? firstUnresolved - 1 : cursor;
    if (watermark > start) {
      await this.readPool.query('UPDATE reconciler_watermark SET last_event_id = GREATEST(last_event_id, $1)', [watermark]);
    }
    if (requeued > 0) this.log.warn({ requeued, watermark }, 're-enqueued events that Redis lost');
    return { watermark: Math.max(watermark, start), scanned, requeued, inFlight };
  }

  /** Of these event ids, those whose job hash no longer exists in Redis. */
  private async notInRedis(ids: number[]): Promise<number[]> {
    const pipeline = this.redis.pipeline();
    for (const id of ids) pipeline.exists(this.queue.toKey(jobIdFor(id)));
    const replies = (await pipeline.exec()) ?? [];
    return ids.filter((_, i) => {
      const [err, n] = replies[i] ?? [null, 0];
      if (err) throw err;
      return n === 0;
    });
  }

  private async requeue(ids: number[]): Promise<void> {
    const { rows } = await this.writePool.query<{ id: number; topic: string; payload: unknown; created_at: string }>(
      'SELECT id, topic, payload, created_at FROM outbox WHERE id = ANY ($1::int[]) ORDER BY id',
      [ids],
    );
    await this.queue.addBulk(rows.map((r) => toJob(this.config, r)));
  }
}
