import { z } from 'zod';
import type { CommonQueryMethods } from 'slonik';
import { sql, type Db } from './pool.js';

/** A row of read_db's dead_letters (migration read/0001): an event that failed for good. */
export const deadLetter = z.object({
  event_id: z.string(),
  topic: z.string(),
  payload: z.unknown(),
  error: z.string(),
  attempts: z.number(),
  failed_at: z.string(),
  parked_at: z.string().nullable(),
  park_reason: z.string().nullable(),
});
export type DeadLetter = z.infer<typeof deadLetter>;

const COLUMNS = sql.fragment`event_id, topic, payload, error, attempts, failed_at, parked_at, park_reason`;

/**
 * Record that an event failed for good. Nothing is recorded for an event that
 * is processed (another delivery applied it) or parked already; a repeated
 * failure updates the error. Under a SHARE lock on processed_events, which
 * waits for projector batches in flight and holds new ones off: otherwise a
 * batch applying this very event (a replay racing the reconciler's record of
 * its failure) could commit unseen, leaving the event applied and a dead
 * letter at once. Dead letters are rare; batches wait a moment.
 */
export async function recordDeadLetter(
  db: Db,
  e: { event_id: string; topic: string; payload: unknown; error: string; attempts: number },
): Promise<void> {
  await db.transaction(async (tx) => {
    await tx.query(sql.typeAlias('void')`LOCK TABLE processed_events IN SHARE MODE`);
    await tx.query(sql.typeAlias('void')`
      INSERT INTO dead_letters (event_id, topic, payload, error, attempts, failed_at)
      SELECT ${e.event_id}, ${e.topic}, ${sql.jsonb(toJson(e.payload))}, ${e.error.slice(0, 2000)}, ${e.attempts}, now() AT TIME ZONE 'UTC'
       WHERE NOT EXISTS (SELECT 1 FROM processed_events WHERE event_id = ${e.event_id})
         AND ${e.event_id}::bigint > (SELECT event_id FROM processed_floor)
      ON CONFLICT (event_id) DO UPDATE SET error = EXCLUDED.error, attempts = EXCLUDED.attempts, failed_at = EXCLUDED.failed_at
       WHERE dead_letters.parked_at IS NULL`);
  });
}

/** A payload as JSON slonik accepts (an object or array; anything else wrapped, null kept). */
function toJson(payload: unknown): Record<string, unknown> | unknown[] {
  if (Array.isArray(payload)) return payload;
  if (typeof payload === 'object' && payload !== null) return payload as Record<string, unknown>;
  return { value: payload ?? null };
}

export type DeadLetterState = 'failed' | 'parked' | 'all';

export function listDeadLetters(db: CommonQueryMethods, state: DeadLetterState = 'all', limit = 1000): Promise<readonly DeadLetter[]> {
  return db.any(sql.type(deadLetter)`
    SELECT ${COLUMNS} FROM dead_letters
     WHERE ${state} = 'all' OR (${state} = 'parked') = (parked_at IS NOT NULL)
     ORDER BY event_id::bigint LIMIT ${limit}`);
}

const counts = z.object({ failed: z.number(), parked: z.number() });

export function countDeadLetters(db: CommonQueryMethods): Promise<{ failed: number; parked: number }> {
  return db.one(sql.type(counts)`
    SELECT count(*) FILTER (WHERE parked_at IS NULL)::int AS failed, count(*) FILTER (WHERE parked_at IS NOT NULL)::int AS parked FROM dead_letters`);
}

/** The lowest dead letter waiting for a decision, or Infinity: no read-your-writes token above it is satisfied, and retention stays below it. */
export async function lowestFailed(db: CommonQueryMethods): Promise<number> {
  const id = await db.oneFirst(sql.type(z.object({ id: z.number().nullable() }))`
    SELECT min(event_id::bigint) AS id FROM dead_letters WHERE parked_at IS NULL`);
  return id ?? Infinity;
}

export type ParkResult = 'parked' | 'already_parked' | 'processed' | 'not_found';

/** Is the event applied (in processed_events, or at or below the retention floor)? */
function isProcessed(c: CommonQueryMethods, eventId: string): Promise<boolean> {
  return c.exists(sql.typeAlias('void')`
    SELECT FROM processed_events WHERE event_id = ${eventId}
    UNION ALL SELECT FROM processed_floor WHERE ${eventId}::bigint <= event_id`);
}

function isBelowFloor(c: CommonQueryMethods, eventId: string): Promise<boolean> {
  return c.exists(sql.typeAlias('void')`SELECT FROM processed_floor WHERE ${eventId}::bigint <= event_id`);
}

/**
 * Park a dead letter: it will never be applied. Under a SHARE ROW EXCLUSIVE
 * lock on processed_events (projector batches wait a moment; see
 * applyEvents in workers/projector/apply.ts), so an event cannot be both
 * applied and parked. A failed dead letter of an event found applied is
 * resolved on the way.
 */
export function parkDeadLetter(db: Db, eventId: string, reason: string): Promise<ParkResult> {
  return db.transaction(async (tx) => {
    await tx.query(sql.typeAlias('void')`LOCK TABLE processed_events IN SHARE ROW EXCLUSIVE MODE`);
    if (await isProcessed(tx, eventId)) {
      await tx.query(sql.typeAlias('void')`DELETE FROM dead_letters WHERE event_id = ${eventId} AND parked_at IS NULL`);
      return 'processed';
    }
    const row = await tx.maybeOne(sql.type(z.object({ parked: z.boolean() }))`
      SELECT parked_at IS NOT NULL AS parked FROM dead_letters WHERE event_id = ${eventId} FOR UPDATE`);
    if (!row) return 'not_found';
    if (row.parked) return 'already_parked';
    await tx.query(sql.typeAlias('void')`UPDATE dead_letters SET parked_at = now() AT TIME ZONE 'UTC', park_reason = ${reason} WHERE event_id = ${eventId}`);
    return 'parked';
  });
}

export type ReplayCheck = { ok: true; letter: DeadLetter } | { ok: false; why: 'not_found' | 'processed' | 'below_floor' };

/**
 * Make a dead letter replayable: unpark it if parked. Refused when it is
 * applied already (its row is then resolved) or at or below the retention
 * floor (a delivery would be skipped as a duplicate). Under the lock prune
 * raises the floor with, so a replay and a prune cannot pass each other.
 */
export function prepareReplay(db: Db, eventId: string): Promise<ReplayCheck> {
  return db.transaction(async (tx): Promise<ReplayCheck> => {
    await tx.query(sql.typeAlias('void')`LOCK TABLE processed_events IN SHARE ROW EXCLUSIVE MODE`);
    const letter = await tx.maybeOne(sql.type(deadLetter)`SELECT ${COLUMNS} FROM dead_letters WHERE event_id = ${eventId} FOR UPDATE`);
    if (!letter) return { ok: false, why: 'not_found' };
    if (await isBelowFloor(tx, eventId)) return { ok: false, why: 'below_floor' };
    if (await isProcessed(tx, eventId)) {
      await tx.query(sql.typeAlias('void')`DELETE FROM dead_letters WHERE event_id = ${eventId} AND parked_at IS NULL`);
      return { ok: false, why: 'processed' };
    }
    if (letter.parked_at) await tx.query(sql.typeAlias('void')`UPDATE dead_letters SET parked_at = NULL, park_reason = NULL WHERE event_id = ${eventId}`);
    return { ok: true, letter: { ...letter, parked_at: null, park_reason: null } };
  });
}

/** Of these event ids, those that are resolved: processed, at or below the retention floor, or dead letters (failed or parked). */
export async function resolvedIds(db: CommonQueryMethods, ids: readonly number[]): Promise<Set<number>> {
  if (ids.length === 0) return new Set();
  const text = ids.map(String);
  const found = await db.anyFirst(sql.type(z.object({ id: z.string() }))`
    SELECT p.event_id AS id FROM processed_events p WHERE p.event_id = ANY (${sql.array(text, 'text')})
    UNION
    SELECT d.event_id FROM dead_letters d WHERE d.event_id = ANY (${sql.array(text, 'text')})
    UNION
    SELECT i FROM unnest(${sql.array(text, 'text')}) AS i WHERE i::bigint <= (SELECT event_id FROM processed_floor)`);
  return new Set(found.map(Number));
}
