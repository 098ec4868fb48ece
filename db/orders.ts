import type { Pool } from './pool.js';

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

/**
 * Place an order in one round trip (see place_order in the migrations): stock,
 * order, items and the outbox event commit together or not at all.
 */
export async function placeOrder(
  pool: Pool,
  order: { customer_id: number; items: { product_id: number; quantity: number }[] },
  idempotency?: { key: string; requestHash: string },
): Promise<OrderChange> {
  const { rows } = await pool.query<{ r: OrderChange }>({
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
  return rows[0]!.r;
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
