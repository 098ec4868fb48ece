import type { Pool } from './pool.js';

/** Unpublished outbox rows and the age of the oldest, in seconds (0 when none): the relay's backlog. */
export async function outboxBacklog(pool: Pool): Promise<{ unpublished: number; oldestAgeSeconds: number }> {
  const { rows } = await pool.query<{ n: number; age: number | null }>(
    `SELECT count(*)::int AS n, extract(epoch FROM (now() AT TIME ZONE 'UTC') - min(created_at))::float8 AS age
       FROM outbox WHERE published_at IS NULL`,
  );
  return { unpublished: rows[0]?.n ?? 0, oldestAgeSeconds: Math.max(0, rows[0]?.age ?? 0) };
}
