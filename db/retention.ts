import { z } from 'zod';
import { sql, type Db } from './pool.js';
import { lowestFailed } from './dead-letters.js';
import { lastRecorded } from './status.js';

export interface PruneOptions {
  writeDb: Db;
  readDb: Db;
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
  limitedBy: 'watermark' | 'dead_letter' | 'age' | 'nothing_to_prune' | 'floor_above_bounds';
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
 * rebuild recompute the views from orders and order_items and know the floor:
 * the outbox ids they compare, and the payloads rebuild catches up, are
 * those above it.
 */
export async function prune(opts: PruneOptions): Promise<PruneResult> {
  const chunk = opts.chunk ?? 10_000;
  const start = await opts.readDb.one(sql.type(z.object({ watermark: z.number(), floor: z.number() }))`
    SELECT (SELECT last_event_id FROM reconciler_watermark) AS watermark, (SELECT event_id FROM processed_floor) AS floor`);
  const aged = await oldEnough(opts.writeDb, start.floor, start.watermark, opts.keepMs);
  // The dead letters and the floor are read and moved under the lock replay unparks with, so neither passes the other.
  const { floor, limitedBy } = await opts.readDb.transaction(async (tx) => {
    await tx.query(sql.typeAlias('void')`LOCK TABLE processed_events IN SHARE ROW EXCLUSIVE MODE`);
    const now = await tx.one(sql.type(z.object({ watermark: z.number(), floor: z.number() }))`
      SELECT (SELECT last_event_id FROM reconciler_watermark) AS watermark, (SELECT event_id FROM processed_floor) AS floor`);
    const dead = (await lowestFailed(tx)) - 1;
    const target = Math.min(now.watermark, dead, aged);
    // Below the floor: a full rebuild raised it past the watermark (db/rebuild.ts); its rows go as they age (below).
    const why: PruneResult['limitedBy'] = target < now.floor ? 'floor_above_bounds' : target === now.floor ? 'nothing_to_prune' : target === aged ? 'age' : target === dead ? 'dead_letter' : 'watermark';
    if (target <= now.floor) return { floor: now.floor, limitedBy: why };
    // The floor's time: that of the highest row at or below it (the id itself may be a gap or a resolved dead
    // letter); never earlier than the time it had (a full rebuild's swap may have set a later one).
    const at = (await lastRecorded(tx, target))?.at ?? null;
    await tx.query(sql.typeAlias('void')`UPDATE processed_floor SET event_id = ${target}, applied_at = greatest(applied_at, ${at}::timestamp)`);
    return { floor: target, limitedBy: why };
  });

  // A full rebuild may have raised the floor past events younger than keepMs (db/rebuild.ts): those stay until they age.
  const upTo = Math.min(floor, await youngestBelow(opts.writeDb, floor, opts.keepMs));
  let outbox = 0;
  for (;;) {
    if (opts.shouldStop?.()) break;
    const ids = await opts.writeDb.anyFirst(sql.type(z.object({ id: z.number() }))`SELECT id FROM outbox WHERE id <= ${upTo} ORDER BY id LIMIT ${chunk}`);
    if (ids.length === 0) break;
    await opts.readDb.query(sql.typeAlias('void')`DELETE FROM processed_events WHERE event_id = ANY (${sql.array(ids.map(String), 'text')})`);
    const { rowCount } = await opts.writeDb.query(sql.typeAlias('void')`
      DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE id = ANY (${sql.array([...ids], 'int4')}) FOR UPDATE SKIP LOCKED)`);
    outbox += rowCount;
    opts.onProgress?.({ floor, outbox });
    if (rowCount === 0) break; // all locked by relays right now: the next run takes them
  }
  return { floor, outbox, limitedBy };
}

/** Just below the lowest outbox id at or below `floor` written less than keepMs ago; `floor` when there is none. */
async function youngestBelow(db: Db, floor: number, keepMs: number): Promise<number> {
  const young = await db.oneFirst(sql.type(z.object({ id: z.number().nullable() }))`
    SELECT min(id) AS id FROM outbox WHERE id <= ${floor} AND created_at >= (now() AT TIME ZONE 'UTC') - ${keepMs} * interval '1 millisecond'`);
  return young === null ? floor : young - 1;
}

/**
 * The highest id such that every event above `from`, up to it and not above
 * `upTo`, was written more than keepMs ago. Walked in id order, because
 * created_at (its transaction's start) does not rise strictly with the id.
 */
async function oldEnough(db: Db, from: number, upTo: number, keepMs: number): Promise<number> {
  let last = from;
  while (last < upTo) {
    const rows = await db.any(sql.type(z.object({ id: z.number(), old: z.boolean() }))`
      SELECT id, created_at < (now() AT TIME ZONE 'UTC') - ${keepMs} * interval '1 millisecond' AS old
        FROM outbox WHERE id > ${last} AND id <= ${upTo} ORDER BY id LIMIT 10000`);
    if (rows.length === 0) return upTo; // nothing left in between: pruned already, or never existed
    const young = rows.find((r) => !r.old);
    if (young) return young.id - 1;
    last = rows[rows.length - 1]!.id;
  }
  return upTo;
}
