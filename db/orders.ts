import { Batcher } from '../lib/batcher.js';
import { z } from 'zod';
import { orderDocument, type Order } from '../lib/contract.js';
import { pgCode, sql, type Db } from './pool.js';
import { annotate, currentTraceparent, inBatchSpan, traced } from '../lib/tracing.js';

export type { Order, OrderItem } from '../lib/contract.js';

/** What every order change returns: the order and the id of the event it wrote (replayed: an Idempotency-Key returned an earlier result). */
const orderChange = z.object({ order: orderDocument, event_id: z.number().int(), replayed: z.boolean().optional() });
export type OrderChange = z.infer<typeof orderChange>;

/** An order the database turned down, as order_check() describes it. */
const problem = z.object({ code: z.string(), message: z.string(), detail: z.string() });
type Problem = z.infer<typeof problem>;

export type Transition = 'paid' | 'shipped' | 'cancelled';

export interface NewOrder {
  customer_id: number;
  items: { product_id: number; quantity: number }[];
}

/**
 * Place an order in one round trip (see place_order in the migrations): stock,
 * order, items and the outbox event commit together or not at all.
 */
export async function placeOrder(db: Db, order: NewOrder, idempotency?: { key: string; requestHash: string }, traceparent: string | null = currentTraceparent() ?? null): Promise<OrderChange> {
  const type = z.object({ r: z.union([orderChange, z.object({ problem, replayed: z.boolean().optional() })]) });
  const call = sql.fragment`place_order(${order.customer_id}, ${sql.array(order.items.map((i) => i.product_id), 'int4')}, ${sql.array(order.items.map((i) => i.quantity), 'int4')},
                       ${idempotency?.key ?? null}, ${idempotency?.requestHash ?? null})`;
  const r = await db.oneFirst(traceparent === null ? sql.prepared('place_order', type)`SELECT ${call} AS r` : sql.prepared('place_order_traced', type)`SELECT ${call} AS r FROM ${withTraceparent(traceparent)}`);
  // A keyed order refused for lack of stock: the refusal is its stored outcome (see place_order in write/0001).
  if ('problem' in r) throw Object.assign(rejection(r.problem), { replayed: r.replayed === true });
  return r;
}

/**
 * A one-row FROM item that names the transaction's traceparent for the outbox
 * rows it writes (write/0002: the column's default reads it). A subquery
 * calling a volatile function is not flattened, so it runs before the
 * SELECT list that writes.
 */
function withTraceparent(traceparent: string) {
  return sql.fragment`(SELECT set_config('op.traceparent', ${traceparent}, true)) AS trace`;
}

type Outcome = { change: OrderChange } | { error: unknown };
/** An order handed to group commit, with the traceparent its outbox row carries (tracing on). */
type Queued = NewOrder & { traceparent?: string };

/** SQLSTATE classes of a statement PostgreSQL refused and rolled back: data exception, integrity constraint, transaction rollback, ours. */
const STATEMENT_REJECTED = /^(22|23|40|OP)/;

/** An order place_orders() turned down, shaped like the error place_order raises (code = SQLSTATE, detail). */
function rejection(r: Problem): Error {
  return Object.assign(new Error(r.message), { code: r.code, detail: r.detail });
}

/**
 * Group commit of orders. While `concurrency` transactions are committing,
 * orders that arrive gather, and the next transaction places up to
 * `batchSize` of them with one place_orders() call: the per-transaction cost
 * (round trip, commit, WAL flush) is shared. Under light load an order goes
 * alone, at the end of the event-loop turn it arrived in. Each caller gets
 * its own result or its own error, exactly as from placeOrder(): an order
 * that cannot be placed does not hold back the others, and if PostgreSQL
 * rejects the batch statement as a whole (a constraint, a value out of
 * range, a deadlock: nothing of it was committed), its orders are placed
 * again one by one, so only the guilty one fails. Any other failure (a lost
 * connection, where the commit may or may not have happened) is every
 * order's error, as it would be for placeOrder().
 */
export class OrderIntake {
  private readonly batcher: Batcher<Queued, Outcome>;
  private readonly onBatch: (size: number) => void;

  constructor(
    private readonly db: Db,
    opts: { batchSize: number; concurrency: number; onBatch?: (size: number) => void },
  ) {
    this.onBatch = opts.onBatch ?? (() => undefined);
    this.batcher = new Batcher((orders) => this.flush(orders), opts.batchSize, 0, opts.concurrency);
  }

  async place(order: NewOrder): Promise<OrderChange> {
    // Tracing: the active span (the request's) is this order's: its outbox row carries that span's traceparent,
    // and the group commit's span links to it (no-ops when off).
    const traceparent = currentTraceparent();
    const outcome = await this.batcher.submit(traced(traceparent ? { ...order, traceparent } : order));
    if ('error' in outcome) throw outcome.error;
    annotate({ 'order.id': outcome.change.order.id, 'outbox.event_id': outcome.change.event_id });
    return outcome.change;
  }

  /** Resolves when every order handed in so far has been placed or refused (call before ending the pool). */
  drain(): Promise<void> {
    return this.batcher.drain();
  }

  private flush(orders: Queued[]): Promise<Outcome[]> {
    return inBatchSpan('place_orders', orders, () => this.placeBatch(orders));
  }

  private async placeBatch(orders: Queued[]): Promise<Outcome[]> {
    this.onBatch(orders.length);
    if (orders.length > 1) {
      try {
        const results = await this.db.oneFirst(sql.prepared('place_orders', z.object({ r: z.array(z.union([orderChange, problem])) }))`
          SELECT place_orders(${sql.jsonb(orders as unknown as Record<string, unknown>[])}) AS r`);
        return results.map((r) => ('code' in r ? { error: rejection(r) } : { change: r }));
      } catch (err) {
        if (!STATEMENT_REJECTED.test(pgCode(err) ?? '')) throw err;
        // Nothing was written: one by one, so that only the order at fault gets the error.
      }
    }
    // Each order its own traceparent or none (not the batch span's, which is active here).
    return Promise.all(orders.map(({ traceparent, ...o }) => placeOrder(this.db, o, undefined, traceparent ?? null).then((change) => ({ change }), (error: unknown) => ({ error }))));
  }
}

export async function transitionOrder(db: Db, id: number, to: Transition): Promise<OrderChange> {
  const traceparent = currentTraceparent();
  const type = z.object({ r: orderChange });
  return db.oneFirst(
    traceparent === undefined
      ? sql.prepared('transition_order', type)`SELECT transition_order(${id}, ${to}) AS r`
      : sql.prepared('transition_order_traced', type)`SELECT transition_order(${id}, ${to}) AS r FROM ${withTraceparent(traceparent)}`,
  );
}

export async function getOrder(db: Db, id: number): Promise<Order | undefined> {
  const doc = await db.oneFirst(sql.type(z.object({ doc: orderDocument.nullable() }))`SELECT order_document(${id}) AS doc`);
  return doc ?? undefined;
}

export function listOrders(db: Db, opts: { customerId: number; after: number; limit: number }): Promise<readonly Order[]> {
  return db.anyFirst(sql.type(z.object({ doc: orderDocument }))`
    SELECT order_document(id) AS doc FROM orders
     WHERE customer_id = ${opts.customerId} AND id > ${opts.after} ORDER BY id LIMIT ${opts.limit}`);
}
