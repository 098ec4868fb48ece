import { withTransaction, type Pool } from './pool.js';

export interface PruneOptions {
  writePool: Pool;
  readPool: Pool;
  /** Keep events younger than this (ms); 0 prunes everything the bound allows. */
  keepMs: number;
  /** Ids deleted per transaction. */
  chunk?: number;
  onProgress?: (p: { floor: number; outbox: number }) => void;
  shouldStop?: () => boolean;
}

export interface PruneResult {
  /** The retention floor after this run: every id at or below it counts as processed. */
  floor: number;
  /** Outbox rows deleted (processed_events rows are deleted with them). */
  outbox: number;
  /** What held the floor where it is. */
  limitedBy: 'watermark' | 'dead_letter' | 'age' | 'nothing_to_prune';
}

/**
 * Delete old outbox and processed_events rows, below a floor proven safe:
 *  - at or below the reconciler's watermark, every event is applied or a
 *    dead letter (resolved), and no transaction can still commit an id there;
 *  - below the lowest dead letter still waiting for a decision, so that one
 *    can still be replayed and applied;
 *  - older than keepMs.
 * The floor is raised first, in read_db's processed_floor, under the same
 * lock projector batches take on processed_events: from its commit on, a
 * delivery of any id at or below it is skipped as a duplicate, whether or
 * not its processed_events row is still there. That is what makes deleting
 * those rows safe even while a relay's claim could still roll back (and
 * enqueue the event again) or a stalled job could be delivered again.
 * Then, chunk by chunk, processed_events rows and then outbox rows go. Rows a
 * relay still holds locked are skipped and go in the next run. verify and
 * rebuild read orders and order_items, never the outbox, and know the floor.
 */
export async function prune(opts: PruneOptions): Promise<PruneResult> {
  const chunk = opts.chunk ?? 10_000;
  const { rows: r } = await opts.readPool.query<{ watermark: string; dead: string | null; floor: string }>(
    `SELECT (SELECT last_event_id FROM reconciler_watermark)::text AS watermark,
            (SELECT min(event_id::bigint) - 1 FROM dead_letters WHERE parked_at IS NULL)::text AS dead,
            (SELECT event_id FROM processed_floor)::text AS floor`,
  );
  const watermark = Number(r[0]!.watermark);
  const dead = r[0]!.dead === null ? Infinity : Number(r[0]!.dead);
  const { rows: a } = await opts.writePool.query<{ id: number | null }>(
    `SELECT id FROM outbox WHERE id <= $1 AND created_at < (now() AT TIME ZONE 'UTC') - $2 * interval '1 millisecond' ORDER BY id DESC LIMIT 1`,
    [watermark, opts.keepMs],
  );
  const aged = a[0]?.id ?? 0;
  const target = Math.min(watermark, dead, aged);
  const limitedBy: PruneResult['limitedBy'] = target === watermark ? 'watermark' : target === dead ? 'dead_letter' : 'age';

  let floor = Number(r[0]!.floor);
  if (target > floor) {
    floor = await withTransaction(opts.readPool, async (c) => {
      await c.query('LOCK TABLE processed_events IN SHARE ROW EXCLUSIVE MODE');
      const { rows } = await c.query<{ floor: string }>('UPDATE processed_floor SET event_id = GREATEST(event_id, $1) RETURNING event_id::text AS floor', [target]);
      return Number(rows[0]!.floor);
    });
  }

  let outbox = 0;
  for (;;) {
    if (opts.shouldStop?.()) break;
    const { rows } = await opts.writePool.query<{ id: number }>('SELECT id FROM outbox WHERE id <= $1 ORDER BY id LIMIT $2', [floor, chunk]);
    if (rows.length === 0) break;
    const ids = rows.map((x) => x.id);
    await opts.readPool.query('DELETE FROM processed_events WHERE event_id = ANY ($1::text[])', [ids.map(String)]);
    const { rowCount } = await opts.writePool.query(
      'DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE id = ANY ($1::int[]) FOR UPDATE SKIP LOCKED)',
      [ids],
    );
    outbox += rowCount ?? 0;
    opts.onProgress?.({ floor, outbox });
    if ((rowCount ?? 0) === 0) break; // all locked by relays right now: the next run takes them
  }
  return { floor, outbox, limitedBy: outbox === 0 && target <= floor ? 'nothing_to_prune' : limitedBy };
}
