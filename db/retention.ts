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
 * The floor is raised first, in read_db's processed_floor, under a lock that
 * conflicts with projector batches' inserts and with replay's unparking: from its commit on, a
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
  const { rows: w } = await opts.readPool.query<{ watermark: string; floor: string }>(
    'SELECT (SELECT last_event_id FROM reconciler_watermark)::text AS watermark, (SELECT event_id FROM processed_floor)::text AS floor',
  );
  const aged = await oldEnough(opts.writePool, Number(w[0]!.floor), Number(w[0]!.watermark), opts.keepMs);
  // The dead letters and the floor are read and moved under the lock replay unparks with, so neither passes the other.
  const { floor, limitedBy } = await withTransaction(opts.readPool, async (c) => {
    await c.query('LOCK TABLE processed_events IN SHARE ROW EXCLUSIVE MODE');
    const { rows } = await c.query<{ watermark: string; dead: string | null; floor: string }>(
      `SELECT (SELECT last_event_id FROM reconciler_watermark)::text AS watermark,
              (SELECT min(event_id::bigint) - 1 FROM dead_letters WHERE parked_at IS NULL)::text AS dead,
              (SELECT event_id FROM processed_floor)::text AS floor`,
    );
    const watermark = Number(rows[0]!.watermark);
    const dead = rows[0]!.dead === null ? Infinity : Number(rows[0]!.dead);
    const target = Math.min(watermark, dead, aged);
    const current = Number(rows[0]!.floor);
    const why: PruneResult['limitedBy'] = target <= current ? 'nothing_to_prune' : target === aged ? 'age' : target === dead ? 'dead_letter' : 'watermark';
    if (target <= current) return { floor: current, limitedBy: why };
    await c.query('UPDATE processed_floor SET event_id = $1', [target]);
    return { floor: target, limitedBy: why };
  });

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
  return { floor, outbox, limitedBy };
}

/**
 * The highest id such that every event above `from`, up to it and not above
 * `upTo`, was written more than keepMs ago. Walked in id order, because
 * created_at (its transaction's start) does not rise strictly with the id.
 */
async function oldEnough(pool: Pool, from: number, upTo: number, keepMs: number): Promise<number> {
  let last = from;
  while (last < upTo) {
    const { rows } = await pool.query<{ id: number; old: boolean }>(
      `SELECT id, created_at < (now() AT TIME ZONE 'UTC') - $3 * interval '1 millisecond' AS old
         FROM outbox WHERE id > $1 AND id <= $2 ORDER BY id LIMIT 10000`,
      [last, upTo, keepMs],
    );
    if (rows.length === 0) return upTo; // nothing left in between: pruned already, or never existed
    const young = rows.find((r) => !r.old);
    if (young) return young.id - 1;
    last = rows[rows.length - 1]!.id;
  }
  return upTo;
}
