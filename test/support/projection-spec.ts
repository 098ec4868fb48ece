import assert from 'node:assert/strict';
import { z } from 'zod';
import { sql, type Db } from '../../db/pool.js';
import { applyEvents, type ProjectionEvent } from '../../workers/projector/apply.js';
import { orderEvent, TOPICS, type OrderPayload } from '../../workers/projector/events.js';
import type { Projection, Row } from '../../workers/projector/projection.js';

/**
 * Projection specs in given / when / then form (after Emmett's): given these
 * events, applied this many times (each time the whole list, as a redelivery
 * would), then the view holds exactly these rows. Against a real read_db,
 * through the projector's own applyEvents with only this projection.
 */
export interface Spec {
  given: { topic: string; payload: OrderPayload }[];
  /** How many times the events are delivered (default 1): 2 shows a redelivery changes nothing. */
  times?: number;
  then: Row[];
}

let next = 0;

export async function expectProjection(db: Db, p: Projection, spec: Spec): Promise<void> {
  const table = sql.identifier([p.table]);
  await db.query(sql.typeAlias('void')`DELETE FROM ${table}`);
  // Fresh event ids per spec, so specs sharing a database never see each other's as duplicates.
  const events: ProjectionEvent[] = spec.given.map((e) => ({ event_id: String(++next), event: orderEvent(e.topic, e.payload) }));
  for (let i = 0; i < (spec.times ?? 1); i++) await applyEvents(db, events, [p]);
  const rows = await db.any(sql.type(z.record(z.string(), z.union([z.string(), z.number()])))`SELECT * FROM ${table} ORDER BY 1`);
  assert.deepEqual(rows, spec.then);
}

export const created = (payload: OrderPayload) => ({ topic: TOPICS.created, payload });
export const cancelled = (payload: OrderPayload) => ({ topic: TOPICS.cancelled, payload });
export const paid = (payload: OrderPayload) => ({ topic: TOPICS.paid, payload });
