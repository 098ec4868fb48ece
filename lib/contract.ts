import { z } from 'zod';

/**
 * The event contract, in one place: what the write side's SQL, the relay,
 * the projector and the API must agree on. The migrations use the SQL names
 * below as {{NAME}} tokens, rendered by db/migrate.ts from SQL_NAMES, so a
 * name is written once; changing one changes the rendered migration, whose
 * checksum then stops `release` (add a migration instead).
 */

/**
 * PostgreSQL NOTIFY channels: wake-ups, never data. The outbox's payload names
 * the highest id its statement wrote (write/0003: a relay skips a round its
 * last claim covered); the projector's is empty.
 */
export const CHANNELS = {
  /** write_db: the outbox trigger notifies here; relays listen. */
  outbox: 'outbox',
  /** read_db: the projector notifies here after a batch commits; web processes waiting on a consistency token listen. */
  applied: 'projection_applied',
} as const;

/** Every outbox row is one event; its topic says what happened to the order it carries. */
export const TOPICS = { created: 'order.created', paid: 'order.paid', shipped: 'order.shipped', cancelled: 'order.cancelled' } as const;

/** SQLSTATEs the write side's functions raise (class OP: ours); api/errors.ts turns each into a problem. */
export const SQLSTATES = {
  insufficient_stock: 'OP001',
  unknown_product: 'OP002',
  idempotency_key_reused: 'OP003',
  order_not_found: 'OP004',
  invalid_transition: 'OP005',
} as const;

/** Advisory lock keys (first halves of two-key locks): each names what it serialises. */
export const LOCKS = {
  /** Requests sharing an Idempotency-Key (with hashtext(key) as the second key). */
  idempotencyKey: 74110,
  /** Migration runners. */
  migrations: 741100,
  /** The blue/green rebuild (db/rebuild.ts): one at a time per read_db. */
  rebuild: 741101,
} as const;

/**
 * BullMQ job id of an event. BullMQ refuses integer-looking custom ids (they
 * collide with its own counter) and ids containing ':' (its key separator),
 * so the outbox id gets a prefix and nothing else.
 */
export function jobIdFor(eventId: string | number): string {
  const id = String(eventId);
  if (!/^\d+$/.test(id)) throw new Error(`event id must be digits, got ${JSON.stringify(id)}`);
  return `evt-${id}`;
}

/**
 * An order as the API returns it and as its events carry it: built by
 * order_json() and order_item_json() in the write_db migrations, described
 * here once — the API's answers, the events' payloads and /openapi.json
 * (through z.toJSONSchema) use this schema. Money is text with two decimals;
 * timestamps are UTC ISO-8601.
 */
export const MONEY = /^-?\d+\.\d{2}$/;
const money = z.string().regex(MONEY);
const utc = z.string().regex(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$/);

export const ORDER_STATUSES = ['pending', 'paid', 'shipped', 'cancelled'] as const;

export const orderItem = z.object({
  id: z.number().int(),
  product_id: z.number().int().positive(),
  /** The category at the time of sale. */
  category: z.string().min(1),
  quantity: z.number().int().positive(),
  price: money,
  line_total: money,
});

export const orderDocument = z.object({
  id: z.number().int().positive(),
  customer_id: z.number().int().positive(),
  status: z.enum(ORDER_STATUSES),
  total: money,
  created_at: utc,
  items: z.array(orderItem).min(1),
});

export type OrderItem = z.infer<typeof orderItem>;
export type Order = z.infer<typeof orderDocument>;

/** One outbox row as jobs carry it (the payload is an order document for the order.* topics). */
export interface EventJobData {
  event_id: string;
  topic: string;
  payload: unknown;
  created_at: string;
  /** A single-event job's W3C traceparent, when its trace is sampled (the relay's publish span for the event whose trace holds it, else the writer's): the worker continues it. In a job of several events, the events carry none. */
  traceparent?: string;
}

/**
 * What a job carries: one event (job id jobIdFor(event_id)), or several
 * events of one relay batch (job id jobIdForEvents(ids)). The relay sends
 * several per job so the queue's per-job cost is shared; one-event jobs are
 * what the reconciler re-enqueues, what a replay sends and where a failed
 * event ends up (the failed set holds single events, so each has its error).
 */
export type JobData = EventJobData | EventsJobData;

export interface EventsJobData {
  events: EventJobData[];
  /** The job's W3C traceparent: the relay's publish span's, when any of its events is sampled. The worker's job span continues it, and the projector batch links to that span. */
  traceparent?: string;
}

export function isMultiEvent(data: JobData): data is EventsJobData {
  return Array.isArray((data as EventsJobData).events);
}

/**
 * BullMQ job id of a job carrying several events (ids ascending): the first
 * and last id, the count and a hash of all of them, so a relay that dies
 * after enqueueing and a later relay claiming the same rows differently do
 * not collide. Nothing relies on it being unique: exactly-once rests on
 * processed_events, and the reconciler re-enqueues an event whose job has
 * finished without resolving it.
 */
export function jobIdForEvents(ids: readonly string[]): string {
  if (ids.length === 0 || !ids.every((id) => /^\d+$/.test(id))) throw new Error('event ids must be digits');
  if (ids.length === 1) return jobIdFor(ids[0]!);
  let h = 0x811c9dc5; // FNV-1a, 32 bits
  for (const id of ids) {
    for (let i = 0; i < id.length; i++) h = Math.imul(h ^ id.charCodeAt(i), 0x01000193);
    h = Math.imul(h ^ 44, 0x01000193);
  }
  return `evts-${ids[0]}-${ids[ids.length - 1]}-${ids.length}-${(h >>> 0).toString(16).padStart(8, '0')}`;
}

/** The names above as the migrations' {{TOKENS}}. */
export const SQL_NAMES: Record<string, string | number> = {
  OUTBOX_CHANNEL: CHANNELS.outbox,
  TOPIC_CREATED: TOPICS.created,
  TOPIC_PAID: TOPICS.paid,
  TOPIC_SHIPPED: TOPICS.shipped,
  TOPIC_CANCELLED: TOPICS.cancelled,
  ERR_INSUFFICIENT_STOCK: SQLSTATES.insufficient_stock,
  ERR_UNKNOWN_PRODUCT: SQLSTATES.unknown_product,
  ERR_IDEMPOTENCY_KEY_REUSED: SQLSTATES.idempotency_key_reused,
  ERR_ORDER_NOT_FOUND: SQLSTATES.order_not_found,
  ERR_INVALID_TRANSITION: SQLSTATES.invalid_transition,
  LOCK_IDEMPOTENCY_KEY: LOCKS.idempotencyKey,
};
