import { z } from 'zod';
import { orderDocument, orderItem, TOPICS } from '../../lib/contract.js';

/**
 * The events projections understand, parsed once at the boundary: an order
 * document (as order_json() in the write_db migrations builds it) and
 * whether it adds to the views (order.created) or takes away what its
 * creation added (order.cancelled). order.paid and order.shipped change no
 * view. Money stays text: the sums happen in PostgreSQL NUMERIC.
 */

export { TOPICS };

/** What projections read of an order document (lib/contract.ts): its events carry the whole document. */
export const orderPayload = orderDocument.pick({ id: true, customer_id: true, total: true, created_at: true }).extend({
  items: z.array(orderItem.pick({ product_id: true, category: true, quantity: true, line_total: true })).min(1),
});
export type OrderPayload = z.infer<typeof orderPayload>;

/** An event that changes the views: +1 adds the order, −1 takes it away again. */
export interface OrderEvent {
  sign: 1 | -1;
  order: OrderPayload;
}

export class InvalidEventError extends Error {
  override name = 'InvalidEventError';
}

/** The event as projections see it; undefined for a topic that changes no view. Throws InvalidEventError for a malformed payload. */
export function orderEvent(topic: string, payload: unknown): OrderEvent | undefined {
  const sign = topic === TOPICS.created ? 1 : topic === TOPICS.cancelled ? -1 : 0;
  if (sign === 0) return undefined;
  const parsed = orderPayload.safeParse(payload);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new InvalidEventError(`${topic} payload: ${issue?.path.join('.') ?? ''} ${issue?.message ?? 'invalid'}`);
  }
  return { sign, order: parsed.data };
}

/** Money text with the event's sign ("0.00" stays unsigned). */
export function signed(money: string, sign: 1 | -1): string {
  return sign === 1 || /^0+\.0+$/.test(money) ? money : `-${money}`;
}

/** "2026-11-25T08:42:37.123Z" → "2026-11-25T08:00:00Z" (date_trunc('hour') in UTC). */
export function hourOf(utc: string): string {
  return `${utc.slice(0, 13)}:00:00Z`;
}
