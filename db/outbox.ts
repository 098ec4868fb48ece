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

/**
 * A horizon of the outbox (outbox_horizon(), write migration 0001): the last
 * id drawn, `seq`, then a transaction id of the caller's own, `xid`. Every
 * writer gets its transaction id before it draws an outbox id, so once a
 * later snapshot's xmin (snapshotXmin) has passed `xid`, no id up to `seq`
 * can commit any more. The reconciler and the rebuild both reason from it.
 */
export async function outboxHorizon(db: CommonQueryMethods): Promise<{ seq: number; xid: bigint }> {
  const h = await db.one(sql.type(z.object({ seq: z.number(), xid: z.string() }))`SELECT seq, xid FROM outbox_horizon()`);
  return { seq: h.seq, xid: BigInt(h.xid) };
}

/** The xmin of the session's current snapshot: every transaction id below it has ended. */
export async function snapshotXmin(db: CommonQueryMethods): Promise<bigint> {
  return BigInt(await db.oneFirst(sql.type(z.object({ xmin: z.string() }))`SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS xmin`));
}
