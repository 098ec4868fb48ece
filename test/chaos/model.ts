/**
 * The model of a chaos run: what the test knows about the system from the
 * answers it got. Faults make answers ambiguous (a 503 or a dropped
 * connection may come after a commit), so the model keeps bounds where it
 * cannot know: stock as [low, high], an order's status as a set of possible
 * values, orders whose creation is unknown as a list to resolve later.
 */

export type Status = 'pending' | 'paid' | 'shipped' | 'cancelled';
export type Transition = 'pay' | 'ship' | 'cancel';

export const TARGET: Record<Transition, Status> = { pay: 'paid', ship: 'shipped', cancel: 'cancelled' };
/** transition_order(): which statuses each transition leaves from. */
export const ALLOWED_FROM: Record<Transition, readonly Status[]> = {
  pay: ['pending'],
  ship: ['paid'],
  cancel: ['pending', 'paid'],
};

export interface ProductModel {
  id: number;
  name: string;
  category: string;
  /** Exact money as text with two decimals, as the API returns it. */
  price: string;
  initialStock: number;
  /** Stock if every ambiguous order happened and no ambiguous cancellation did. */
  low: number;
  /** Stock if no ambiguous order happened and every ambiguous cancellation did. */
  high: number;
}

export interface OrderLine {
  product_id: number;
  quantity: number;
}

export interface OrderBody {
  customer_id: number;
  items: OrderLine[];
}

/** An order the API confirmed (2xx): it must exist in write_db as answered. */
export interface OrderModel {
  id: number;
  customerId: number;
  key: string | undefined;
  lines: OrderLine[];
  /** The API's answer: total and items with their prices. */
  total: string;
  items: { product_id: number; quantity: number; price: string }[];
  createdAt: string;
  /** The event id (X-Consistency-Token) of the order's creation. */
  createdToken: string;
  /** Statuses the order may have now. */
  status: Set<Status>;
  /** A transition of it had an ambiguous answer: it may still land late, so its status checks are relaxed. */
  uncertain: boolean;
  /** Whether its cancellation (which restores stock) happened. */
  cancel: 'no' | 'maybe' | 'yes';
}

/** A keyed POST /orders whose answer was ambiguous: retried with the same key once faults heal. */
export interface PendingOrder {
  key: string;
  body: OrderBody;
  reason: string;
}

export type PoisonKind = 'malformed' | 'overflow';
export interface PoisonModel {
  eventId: number;
  kind: PoisonKind;
}

/** Faults in progress: commands check these so one fault is not started twice. */
export interface FaultFlags {
  pgDown: boolean;
  readDbBlocked: boolean;
  commitStall: boolean;
  redisDown: boolean;
}

export interface Model {
  products: ProductModel[];
  orders: OrderModel[];
  pending: PendingOrder[];
  /** Unkeyed orders with an ambiguous answer: they may or may not exist. */
  ambiguousUnkeyed: number;
  poison: PoisonModel[];
  faults: FaultFlags;
  nextKey: number;
  /** Idempotency keys are unique per harness run, not only per system run, for readable logs. */
  keyPrefix: string;
}

/** The catalogue every run starts with: shared categories, awkward prices, some stock scarce enough for 409s. */
export const CATALOGUE: readonly Omit<ProductModel, 'id' | 'low' | 'high'>[] = [
  { name: 'Hammer', category: 'tools', price: '19.99', initialStock: 30 },
  { name: 'Nail', category: 'tools', price: '0.10', initialStock: 1000 },
  { name: 'Apple', category: 'food', price: '3.33', initialStock: 15 },
  { name: 'Kite', category: 'toys', price: '7.05', initialStock: 60 },
  { name: 'Truffle', category: 'food', price: '1234.56', initialStock: 8 },
];

export function newModel(productIds: number[], keyPrefix: string): Model {
  return {
    products: CATALOGUE.map((p, i) => ({ ...p, id: productIds[i]!, low: p.initialStock, high: p.initialStock })),
    orders: [],
    pending: [],
    ambiguousUnkeyed: 0,
    poison: [],
    faults: { pgDown: false, readDbBlocked: false, commitStall: false, redisDown: false },
    nextKey: 1,
    keyPrefix,
  };
}

export function product(m: Model, id: number): ProductModel {
  const p = m.products.find((x) => x.id === id);
  if (!p) throw new Error(`no product ${id} in the model`);
  return p;
}

/** Money text → cents, exactly (never a float). */
export function cents(money: string): bigint {
  const m = /^(-?)(\d+)\.(\d{2})$/.exec(money);
  if (!m) throw new Error(`not money with two decimals: ${JSON.stringify(money)}`);
  const v = BigInt(m[2]!) * 100n + BigInt(m[3]!);
  return m[1] === '-' ? -v : v;
}

export function money(c: bigint): string {
  const sign = c < 0n ? '-' : '';
  const a = c < 0n ? -c : c;
  return `${sign}${a / 100n}.${String(a % 100n).padStart(2, '0')}`;
}

/** What an order should cost at the model's (fixed) prices. */
export function expectedTotal(m: Model, lines: OrderLine[]): string {
  return money(lines.reduce((s, l) => s + cents(product(m, l.product_id).price) * BigInt(l.quantity), 0n));
}

/** Stock bookkeeping of one order attempt: `sign` −1 takes the lines from a bound, +1 gives them back. */
export function adjust(m: Model, lines: OrderLine[], bound: 'low' | 'high', sign: 1 | -1): void {
  for (const l of lines) product(m, l.product_id)[bound] += sign * l.quantity;
}

/** Some line may lack stock (409 insufficient_stock is a possible answer). */
export function mayLackStock(m: Model, lines: OrderLine[]): boolean {
  return lines.some((l) => l.quantity > product(m, l.product_id).low);
}

/** Lines that certainly lack stock (a 201 would mean stock below zero). */
export function certainlyShort(m: Model, lines: OrderLine[]): OrderLine[] {
  return lines.filter((l) => l.quantity > product(m, l.product_id).high);
}

/** "2026-11-25T08:00:00.1Z" → "2026-11-25T08:00:00.100000": comparable as text at microsecond precision. */
export function utcMicros(ts: string): string {
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,6}))?Z?$/.exec(ts);
  if (!m) return ts;
  return `${m[1]}.${(m[2] ?? '').padEnd(6, '0')}`;
}
