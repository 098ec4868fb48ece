import { Batcher } from '../lib/batcher.js';
import { pgCode, type Pool } from './pool.js';

/** An order as order_document() in the write_db migrations builds it. */
export interface OrderItem {
  id: number;
  product_id: number;
  category: string;
  quantity: number;
  price: string;
  line_total: string;
}
export interface Order {
  id: number;
  customer_id: number;
  status: 'pending' | 'paid' | 'shipped' | 'cancelled';
  total: string;
  created_at: string;
  items: OrderItem[];
}

/** What every order change returns: the order and the id of the event it wrote. */
export interface OrderChange {
  order: Order;
  event_id: number;
  /** True when an Idempotency-Key replayed an earlier result. */
  replayed?: boolean;
}

export type Transition = 'paid' | 'shipped' | 'cancelled';

export interface NewOrder {
  customer_id: number;
  items: { product_id: number; quantity: number }[];
}

/**
 * Place an order in one round trip (see place_order in the migrations): stock,
 * order, items and the outbox event commit together or not at all.
 */
export async function placeOrder(
  pool: Pool,
  order: NewOrder,
  idempotency?: { key: string; requestHash: string },
): Promise<OrderChange> {
  const { rows } = await pool.query<{ r: OrderChange | { problem: Problem; replayed?: boolean } }>({
    name: 'place_order',
    text: 'SELECT place_order($1, $2::int[], $3::int[], $4, $5) AS r',
    values: [
      order.customer_id,
      order.items.map((i) => i.product_id),
      order.items.map((i) => i.quantity),
      idempotency?.key ?? null,
      idempotency?.requestHash ?? null,
    ],
  });
  const r = rows[0]!.r;
  // A keyed order refused for lack of stock: the refusal is its stored outcome (see place_order in write/0005).
  if ('problem' in r) throw Object.assign(rejection(r.problem), { replayed: r.replayed === true });
  return r;
}

/** An order the database turned down, as order_check() describes it. */
interface Problem {
  code: string;
  message: string;
  detail: string;
}

type Outcome = { change: OrderChange } | { error: unknown };

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
  private readonly batcher: Batcher<NewOrder, Outcome>;
  private readonly onBatch: (size: number) => void;

  constructor(
    private readonly pool: Pool,
    opts: { batchSize: number; concurrency: number; onBatch?: (size: number) => void },
  ) {
    this.onBatch = opts.onBatch ?? (() => undefined);
    this.batcher = new Batcher((orders) => this.flush(orders), opts.batchSize, 0, opts.concurrency);
  }

  async place(order: NewOrder): Promise<OrderChange> {
    const outcome = await this.batcher.submit(order);
    if ('error' in outcome) throw outcome.error;
    return outcome.change;
  }

  /** Resolves when every order handed in so far has been placed or refused (call before ending the pool). */
  drain(): Promise<void> {
    return this.batcher.drain();
  }

  private async flush(orders: NewOrder[]): Promise<Outcome[]> {
    this.onBatch(orders.length);
    if (orders.length > 1) {
      try {
        const { rows } = await this.pool.query<{ r: (OrderChange | Problem)[] }>({
          name: 'place_orders',
          text: 'SELECT place_orders($1::jsonb) AS r',
          values: [JSON.stringify(orders)],
        });
        return rows[0]!.r.map((r) => ('code' in r ? { error: rejection(r) } : { change: r }));
      } catch (err) {
        if (!STATEMENT_REJECTED.test(pgCode(err) ?? '')) throw err;
        // Nothing was written: one by one, so that only the order at fault gets the error.
      }
    }
    return Promise.all(orders.map((o) => placeOrder(this.pool, o).then((change) => ({ change }), (error: unknown) => ({ error }))));
  }
}

export async function transitionOrder(pool: Pool, id: number, to: Transition): Promise<OrderChange> {
  const { rows } = await pool.query<{ r: OrderChange }>({
    name: 'transition_order',
    text: 'SELECT transition_order($1, $2) AS r',
    values: [id, to],
  });
  return rows[0]!.r;
}

export async function getOrder(pool: Pool, id: number): Promise<Order | undefined> {
  const { rows } = await pool.query<{ doc: Order | null }>('SELECT order_document($1) AS doc', [id]);
  return rows[0]?.doc ?? undefined;
}

export async function listOrders(
  pool: Pool,
  opts: { customerId: number; after: number; limit: number },
): Promise<Order[]> {
  const { rows } = await pool.query<{ doc: Order }>(
    `SELECT order_document(id) AS doc FROM orders
      WHERE customer_id = $1 AND id > $2 ORDER BY id LIMIT $3`,
    [opts.customerId, opts.after, opts.limit],
  );
  return rows.map((r) => r.doc);
}
