import { z } from 'zod';
import type { CommonQueryMethods } from 'slonik';
import { sql } from './pool.js';
import { orderEvent, type OrderEvent } from '../workers/projector/events.js';
import { actualRows, expectedRows, type Projection, type ViewRows } from '../workers/projector/projection.js';
import { PROJECTIONS } from '../workers/projector/projections/index.js';

/**
 * SPEC §3 checked: every projection's view against its recomputation from
 * write_db (each projection module says what it must hold), and
 * processed_events against the outbox.
 */

export interface Difference {
  view: string;
  key: string;
  column: string;
  expected: string;
  actual: string;
}

export function diffRows(p: Projection, expected: ViewRows, actual: ViewRows): Difference[] {
  const out: Difference[] = [];
  const keys = new Set([...expected.keys(), ...actual.keys()]);
  for (const key of [...keys].sort()) {
    const e = expected.get(key);
    const a = actual.get(key);
    p.columns.forEach(({ name }, i) => {
      const ev = e?.[i] ?? '0';
      const av = a?.[i] ?? '0';
      if (ev !== av) out.push({ view: p.table, key, column: name, expected: e ? ev : '(no row)', actual: a ? av : '(no row)' });
    });
  }
  return out;
}

/**
 * Every view compared with its recomputation. Empty means the read model is
 * exactly right. `plus`: parked events, counted as if applied.
 */
export async function compareViews(write: CommonQueryMethods, read: CommonQueryMethods, plus: readonly OrderEvent[] = [], projections: readonly Projection[] = PROJECTIONS): Promise<Difference[]> {
  // One view at a time: `write` and `read` may be single connections inside a snapshot transaction.
  const diffs: Difference[] = [];
  for (const p of projections) diffs.push(...diffRows(p, await expectedRows(write, p), await actualRows(read, p, plus.flatMap((e) => p.evolve(e)))));
  return diffs;
}

export interface EventIdComparison {
  /** Outbox ids with no processed_events row that are not dead letters: not yet applied. */
  unprocessed: number[];
  /** Processed ids with no outbox row above the retention floor: should never happen. */
  unknown: string[];
  /** Dead letters waiting for a decision (replay or park). */
  failed: number[];
  /** Dead letters an operator parked, with the event they would have applied (when it describes write_db). */
  parked: { id: number; event: OrderEvent | undefined }[];
}

const idRow = z.object({ id: z.number() });
const letterRow = z.object({ event_id: z.string(), topic: z.string(), payload: z.unknown(), parked: z.boolean() });

/**
 * Which events are applied, by id. Ids at or below the retention floor
 * (processed_floor, see db/retention.ts) count as processed and may be gone
 * from both tables, as may ids below the lowest outbox id still present.
 */
export async function compareEventIds(write: CommonQueryMethods, read: CommonQueryMethods): Promise<EventIdComparison> {
  const floor = await read.oneFirst(sql.type(z.object({ floor: z.number() }))`SELECT event_id AS floor FROM processed_floor`);
  const outbox = await write.anyFirst(sql.type(idRow)`SELECT id FROM outbox WHERE id > ${floor} ORDER BY id`);
  const processed = await read.anyFirst(sql.type(z.object({ event_id: z.string() }))`SELECT event_id FROM processed_events`);
  const dead = await read.any(sql.type(letterRow)`SELECT event_id, topic, payload, parked_at IS NOT NULL AS parked FROM dead_letters ORDER BY event_id::bigint`);
  const ids = new Set(outbox.map(String));
  const done = new Set(processed);
  const letters = new Set(dead.map((d) => d.event_id));
  const lowest = outbox[0] ?? Infinity;
  const parked = dead.filter((d) => d.parked);
  const real = await realEvents(write, parked, (id) => done.has(id) || Number(id) <= floor);
  return {
    unprocessed: outbox.filter((id) => !done.has(String(id)) && !letters.has(String(id))),
    unknown: [...done].filter((id) => !ids.has(id) && Number(id) > floor && !(Number(id) < lowest)),
    failed: dead.filter((d) => !d.parked).map((d) => Number(d.event_id)),
    parked: parked.map((d) => ({ id: Number(d.event_id), event: real.has(d.event_id) ? eventOrUndefined(d.topic, d.payload) : undefined })),
  };
}

/**
 * Of these (parked) events, those whose effect the recomputation counts: the
 * order they carry exists (and, for a cancellation, is cancelled), and no
 * other event of the same topic for that order is applied. Only those would
 * have changed the views had they been applied; an event written by hand or
 * by a bug (no order behind it, or a second copy of an order's event) changes
 * no recomputation.
 */
export async function realEvents(write: CommonQueryMethods, events: readonly { event_id: string; topic: string; payload: unknown }[], applied: ReadonlySet<string> | ((id: string) => boolean)): Promise<Set<string>> {
  const isApplied = typeof applied === 'function' ? applied : (id: string) => applied.has(id);
  const orderId = (p: unknown) => (typeof p === 'object' && p !== null && Number.isInteger((p as { id?: unknown }).id) ? (p as { id: number }).id : undefined);
  const wanted = events.map((e) => orderId(e.payload)).filter((id): id is number => id !== undefined && id > 0 && id <= 2_147_483_647);
  if (wanted.length === 0) return new Set();
  const orders = await write.any(sql.type(z.object({ id: z.number(), status: z.string() }))`SELECT id, status FROM orders WHERE id = ANY (${sql.array(wanted, 'int4')})`);
  const status = new Map(orders.map((r) => [r.id, r.status]));
  // Other events of the same orders (one scan of the outbox; verify runs rarely and parked events are few).
  const twins = await write.any(sql.type(z.object({ id: z.number(), topic: z.string(), order_id: z.number() }))`
    SELECT id, topic, (payload->>'id')::int AS order_id FROM outbox
     WHERE CASE WHEN jsonb_typeof(payload->'id') = 'number' THEN (payload->>'id')::numeric END = ANY (${sql.array(wanted, 'numeric')})`);
  return new Set(
    events
      .filter((e) => {
        const order = orderId(e.payload) ?? 0;
        const s = status.get(order);
        if (s === undefined || (e.topic === 'order.cancelled' && s !== 'cancelled')) return false;
        return !twins.some((t) => t.order_id === order && t.topic === e.topic && String(t.id) !== e.event_id && isApplied(String(t.id)));
      })
      .map((e) => e.event_id),
  );
}

export function eventOrUndefined(topic: string, payload: unknown): OrderEvent | undefined {
  try {
    return orderEvent(topic, payload);
  } catch {
    return undefined; // malformed: it adds nothing anyone could compute
  }
}
