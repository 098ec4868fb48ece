import { z } from 'zod';
import type { CommonQueryMethods } from 'slonik';
import { sql } from './pool.js';

/** Unpublished outbox rows and the age of the oldest, in seconds (0 when none): the relay's backlog. */
export async function outboxBacklog(db: CommonQueryMethods): Promise<{ unpublished: number; oldestAgeSeconds: number }> {
  const r = await db.one(sql.type(z.object({ n: z.number(), age: z.number().nullable() }))`
    SELECT count(*)::int AS n, extract(epoch FROM (now() AT TIME ZONE 'UTC') - min(created_at))::float8 AS age
      FROM outbox WHERE published_at IS NULL`);
  return { unpublished: r.n, oldestAgeSeconds: Math.max(0, r.age ?? 0) };
}

/** The highest outbox id handed out so far (committed or not): no write has a higher token. */
export function lastOutboxId(db: CommonQueryMethods): Promise<number> {
  return db.oneFirst(sql.type(z.object({ id: z.number() }))`SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS id FROM outbox_id_seq`);
}
