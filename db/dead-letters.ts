import { withTransaction, type Pool } from './pool.js';
import type { Queryable } from './recompute.js';

/** A row of read_db's dead_letters (migration read/0002): an event that failed for good. */
export interface DeadLetter {
  event_id: string;
  topic: string;
  payload: unknown;
  error: string;
  attempts: number;
  failed_at: string;
  parked_at: string | null;
  park_reason: string | null;
}

const COLUMNS = 'event_id, topic, payload, error, attempts, failed_at, parked_at, park_reason';

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
  pool: Pool,
  e: { event_id: string; topic: string; payload: unknown; error: string; attempts: number },
): Promise<void> {
  await withTransaction(pool, async (c) => {
    await c.query('LOCK TABLE processed_events IN SHARE MODE');
    await c.query(
      `INSERT INTO dead_letters (event_id, topic, payload, error, attempts, failed_at)
       SELECT $1::text, $2::text, $3::jsonb, $4::text, $5::int, now() AT TIME ZONE 'UTC'
        WHERE NOT EXISTS (SELECT 1 FROM processed_events WHERE event_id = $1::text)
          AND $1::text::bigint > (SELECT event_id FROM processed_floor)
       ON CONFLICT (event_id) DO UPDATE SET error = EXCLUDED.error, attempts = EXCLUDED.attempts, failed_at = EXCLUDED.failed_at
        WHERE dead_letters.parked_at IS NULL`,
      [e.event_id, e.topic, JSON.stringify(e.payload ?? null), e.error.slice(0, 2000), e.attempts],
    );
  });
}

export type DeadLetterState = 'failed' | 'parked' | 'all';

export async function listDeadLetters(pool: Pool, state: DeadLetterState = 'all', limit = 1000): Promise<DeadLetter[]> {
  const { rows } = await pool.query<DeadLetter>(
    `SELECT ${COLUMNS} FROM dead_letters
      WHERE $1 = 'all' OR ($1 = 'parked') = (parked_at IS NOT NULL)
      ORDER BY event_id::bigint LIMIT $2`,
    [state, limit],
  );
  return rows;
}

export async function countDeadLetters(pool: Pool): Promise<{ failed: number; parked: number }> {
  const { rows } = await pool.query<{ failed: number; parked: number }>(
    `SELECT count(*) FILTER (WHERE parked_at IS NULL)::int AS failed, count(*) FILTER (WHERE parked_at IS NOT NULL)::int AS parked FROM dead_letters`,
  );
  return rows[0] ?? { failed: 0, parked: 0 };
}

export type ParkResult = 'parked' | 'already_parked' | 'processed' | 'not_found';

/** Is the event applied (in processed_events, or at or below the retention floor)? */
async function isProcessed(c: Queryable, eventId: string): Promise<boolean> {
  const { rows } = await c.query(
    'SELECT 1 FROM processed_events WHERE event_id = $1::text UNION ALL SELECT 1 FROM processed_floor WHERE $1::text::bigint <= event_id',
    [eventId],
  );
  return rows.length > 0;
}

/**
 * Park a dead letter: it will never be applied. Under a SHARE ROW EXCLUSIVE
 * lock on processed_events (projector batches wait a moment; see
 * recordProcessed in workers/projector/apply.ts), so an event cannot be both
 * applied and parked. A failed dead letter of an event found applied is
 * resolved on the way.
 */
export async function parkDeadLetter(pool: Pool, eventId: string, reason: string): Promise<ParkResult> {
  return withTransaction(pool, async (c) => {
    await c.query('LOCK TABLE processed_events IN SHARE ROW EXCLUSIVE MODE');
    if (await isProcessed(c, eventId)) {
      await c.query('DELETE FROM dead_letters WHERE event_id = $1 AND parked_at IS NULL', [eventId]);
      return 'processed';
    }
    const { rows } = await c.query<{ parked: boolean }>('SELECT parked_at IS NOT NULL AS parked FROM dead_letters WHERE event_id = $1 FOR UPDATE', [eventId]);
    if (rows.length === 0) return 'not_found';
    if (rows[0]!.parked) return 'already_parked';
    await c.query(`UPDATE dead_letters SET parked_at = now() AT TIME ZONE 'UTC', park_reason = $2 WHERE event_id = $1`, [eventId, reason]);
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
export async function prepareReplay(pool: Pool, eventId: string): Promise<ReplayCheck> {
  return withTransaction(pool, async (c) => {
    await c.query('LOCK TABLE processed_events IN SHARE ROW EXCLUSIVE MODE');
    const { rows } = await c.query<DeadLetter>(`SELECT ${COLUMNS} FROM dead_letters WHERE event_id = $1 FOR UPDATE`, [eventId]);
    const letter = rows[0];
    if (!letter) return { ok: false, why: 'not_found' };
    if (await isProcessed(c, eventId)) {
      const { rows: floor } = await c.query<{ below: boolean }>('SELECT $1::text::bigint <= event_id AS below FROM processed_floor', [eventId]);
      if (!floor[0]?.below) await c.query('DELETE FROM dead_letters WHERE event_id = $1 AND parked_at IS NULL', [eventId]);
      return { ok: false, why: floor[0]?.below ? 'below_floor' : 'processed' };
    }
    if (letter.parked_at) await c.query('UPDATE dead_letters SET parked_at = NULL, park_reason = NULL WHERE event_id = $1', [eventId]);
    return { ok: true, letter: { ...letter, parked_at: null, park_reason: null } };
  });
}

/** Of these event ids, those that are resolved: processed, at or below the retention floor, or dead letters (failed or parked). */
export async function resolvedIds(pool: Pool, ids: number[]): Promise<Set<number>> {
  if (ids.length === 0) return new Set();
  const { rows } = await pool.query<{ id: string }>(
    `SELECT p.event_id AS id FROM processed_events p WHERE p.event_id = ANY ($1::text[])
     UNION
     SELECT d.event_id FROM dead_letters d WHERE d.event_id = ANY ($1::text[])
     UNION
     SELECT i::text FROM unnest($1::text[]) AS i WHERE i::bigint <= (SELECT event_id FROM processed_floor)`,
    [ids.map(String)],
  );
  return new Set(rows.map((r) => Number(r.id)));
}
