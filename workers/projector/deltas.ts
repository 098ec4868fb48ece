import { z } from 'zod';

/**
 * The pure heart of the read model: an event in, the rows it adds to each
 * view out. Every delta is additive (and last_order_date is combined with
 * GREATEST), so applying events in any order gives the same views, and
 * order.cancelled is order.created with its signs flipped.
 *
 * Money stays text: the sums happen in PostgreSQL NUMERIC.
 */

const moneyText = z.string().regex(/^\d+\.\d{2}$/);
const utcText = z.string().regex(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$/);

export const orderPayload = z.object({
  id: z.number().int().positive(),
  customer_id: z.number().int().positive(),
  total: moneyText,
  created_at: utcText,
  items: z
    .array(
      z.object({
        product_id: z.number().int().positive(),
        category: z.string().min(1),
        quantity: z.number().int().positive(),
        line_total: moneyText,
      }),
    )
    .min(1),
});
export type OrderPayload = z.infer<typeof orderPayload>;

export interface ProductDelta {
  product_id: number;
  quantity: number;
  revenue: string;
  orders: number;
}
export interface CategoryDelta {
  category: string;
  revenue: string;
  orders: number;
}
export interface CustomerDelta {
  customer_id: number;
  spent: string;
  orders: number;
  last_order_date: string;
}
export interface HourDelta {
  hour: string;
  orders: number;
  revenue: string;
}
export interface Deltas {
  products: ProductDelta[];
  categories: CategoryDelta[];
  customers: CustomerDelta[];
  hours: HourDelta[];
}

export const EMPTY: Deltas = Object.freeze({ products: [], categories: [], customers: [], hours: [] }) as Deltas;

export class InvalidEventError extends Error {
  override name = 'InvalidEventError';
}

/** "2026-11-25T08:42:37.123Z" → "2026-11-25T08:00:00Z" (date_trunc('hour') in UTC). */
export function hourOf(utc: string): string {
  return `${utc.slice(0, 13)}:00:00Z`;
}

function signed(money: string, sign: 1 | -1): string {
  return sign === 1 || /^0+\.0+$/.test(money) ? money : `-${money}`;
}

/** Rows one event adds to the views. Events with no effect on them (paid, shipped, unknown) yield EMPTY. */
export function deltasFor(topic: string, payload: unknown): Deltas {
  const sign = topic === 'order.created' ? 1 : topic === 'order.cancelled' ? -1 : 0;
  if (sign === 0) return EMPTY;
  const parsed = orderPayload.safeParse(payload);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new InvalidEventError(`${topic} payload: ${issue?.path.join('.') ?? ''} ${issue?.message ?? 'invalid'}`);
  }
  const o = parsed.data;
  const seenProducts = new Set<number>();
  const seenCategories = new Set<string>();
  const products: ProductDelta[] = [];
  const categories: CategoryDelta[] = [];
  for (const item of o.items) {
    // order_count / total_orders count distinct orders: only the first item of a product or category counts it.
    products.push({
      product_id: item.product_id,
      quantity: sign * item.quantity,
      revenue: signed(item.line_total, sign),
      orders: seenProducts.has(item.product_id) ? 0 : sign,
    });
    seenProducts.add(item.product_id);
    categories.push({
      category: item.category,
      revenue: signed(item.line_total, sign),
      orders: seenCategories.has(item.category) ? 0 : sign,
    });
    seenCategories.add(item.category);
  }
  return {
    products,
    categories,
    customers: [{ customer_id: o.customer_id, spent: signed(o.total, sign), orders: sign, last_order_date: o.created_at }],
    hours: [{ hour: hourOf(o.created_at), orders: sign, revenue: signed(o.total, sign) }],
  };
}
