import { describe, problemCode, request, type Outcome } from './http.js';
import {
  adjust,
  ALLOWED_FROM,
  certainlyShort,
  expectedTotal,
  mayLackStock,
  product,
  TARGET,
  utcMicros,
  type Model,
  type OrderBody,
  type OrderModel,
  type Status,
  type Transition,
} from './model.js';
import type { ChaosSystem } from './system.js';
import type { Slot } from './supervisor.js';
import { sleep } from '../support/pipeline.js';

/**
 * Traffic against the API and what each answer means for the model. Every
 * answer is checked against what the faults allow:
 * 2xx, 409 when the model says it may happen, 503 problem+json, a refused or
 * broken connection; 504 for a read that waits on a consistency token.
 * Anything else (a 500, a wrong body, a hang) is a violation.
 */

function isUnavailable(o: Outcome): boolean {
  return o.kind === 'response' && o.status === 503 && (problemCode(o) === 'service_unavailable' || problemCode(o) === 'overloaded');
}

/**
 * Certainly not carried out: the connection was refused, or a stopping web
 * turned the request away before routing it (503 shutting_down). The model
 * books nothing, so were it carried out after all, the end-of-run checks
 * would find an order or a transition nobody was told about.
 */
function notCarriedOut(o: Outcome): boolean {
  return o.kind === 'refused' || (o.kind === 'response' && o.status === 503 && problemCode(o) === 'shutting_down');
}

/** The outcome is unknown: the request may or may not have been carried out. */
function isAmbiguous(o: Outcome): boolean {
  return isUnavailable(o) || o.kind === 'broken' || o.kind === 'hang';
}

function count(sys: ChaosSystem, what: string, o: Outcome): void {
  const label = o.kind === 'response' ? String(o.status) : o.kind;
  sys.journal.count(`answer:${what} ${label}`);
  // The timeline keeps the answers that faults explain; the 2xx are only counted.
  if (!(o.kind === 'response' && o.status < 300)) sys.journal.note(`${what} → ${describe(o).slice(0, 160)}`);
  if (o.kind === 'hang') sys.journal.violation('http', `${what}: no answer within ${o.ms} ms`);
}

/**
 * An answer outside the fault model: a violation, with what the web logged
 * about that request (its X-Request-Id), which says why it answered so.
 */
async function unexpected(sys: ChaosSystem, slot: Slot, what: string, o: Outcome): Promise<void> {
  let detail: string | undefined;
  const reqId = o.kind === 'response' ? o.headers['x-request-id'] : undefined;
  if (typeof reqId === 'string') {
    await sleep(100); // the web's log line may arrive just after the answer
    const lines = slot.output.split('\n').filter((l) => l.includes(reqId));
    detail = lines.length > 0 ? `${slot.name} logged for request ${reqId}:\n${lines.join('\n')}` : `${slot.name} logged nothing for request ${reqId}`;
  }
  sys.journal.violation('http', `${what}: unexpected answer ${describe(o)}`, detail);
}

interface OrderDoc {
  id: number;
  customer_id: number;
  status: string;
  total: string;
  created_at: string;
  items: { product_id: number; quantity: number; price: string; line_total: string; category: string }[];
}

/** Problems with a 201's order document, compared with the request and the model's prices. */
function orderDocProblems(m: Model, body: OrderBody, json: unknown): string[] {
  const d = json as Partial<OrderDoc> | undefined;
  const problems: string[] = [];
  if (!d || typeof d.id !== 'number' || d.id <= 0) return [`no order id in ${JSON.stringify(json)}`];
  if (d.customer_id !== body.customer_id) problems.push(`customer_id ${d.customer_id}, sent ${body.customer_id}`);
  if (d.status !== 'pending') problems.push(`status ${d.status}`);
  const items = d.items ?? [];
  if (items.length !== body.items.length) problems.push(`${items.length} items, sent ${body.items.length}`);
  body.items.forEach((line, i) => {
    const it = items[i];
    const p = product(m, line.product_id);
    if (!it || it.product_id !== line.product_id || it.quantity !== line.quantity || it.price !== p.price || it.category !== p.category) {
      problems.push(`item ${i}: ${JSON.stringify(it)}, want product ${line.product_id} × ${line.quantity} at ${p.price} in ${p.category}`);
    }
  });
  const want = expectedTotal(m, body.items);
  if (d.total !== want) problems.push(`total ${d.total}, want ${want}`);
  return problems;
}

/**
 * One POST /orders attempt and its bookkeeping. Stock is reserved from the
 * low bound while the request is in flight, so concurrent attempts (a burst)
 * count each other when a 409 is judged.
 * `resolving`: a retry of an earlier ambiguous attempt with the same key (its
 * low-bound reservation is still in place and is taken over here).
 */
export async function placeOrder(sys: ChaosSystem, m: Model, webIndex: number, body: OrderBody, key: string | undefined, resolving = false): Promise<Outcome> {
  if (!resolving) adjust(m, body.items, 'low', -1);
  const slot = sys.web(webIndex);
  const o = await request(slot.base, 'POST', '/orders', body, key === undefined ? {} : { 'Idempotency-Key': key });
  count(sys, 'POST /orders', o);
  // Give back the reservation, then book what the answer says happened.
  adjust(m, body.items, 'low', +1);
  const what = `POST /orders ${key ?? '(no key)'} ${JSON.stringify(body)}${resolving ? ' (retry of an ambiguous attempt)' : ''}`;

  if (o.kind === 'response' && o.status === 201) {
    const problems = orderDocProblems(m, body, o.json);
    if (problems.length > 0) sys.journal.violation('http', `${what}: 201 with a wrong order: ${problems.join('; ')}`, o.text);
    const short = certainlyShort(m, body.items);
    if (short.length > 0) sys.journal.violation('stock', `${what}: 201 although the model has at most ${short.map((l) => `${product(m, l.product_id).high} of product ${l.product_id}`).join(', ')}`);
    if (!resolving && o.headers['idempotent-replayed'] === 'true') sys.journal.violation('http', `${what}: a fresh request answered as a replay`, o.text);
    adjust(m, body.items, 'low', -1);
    adjust(m, body.items, 'high', -1);
    const doc = o.json as OrderDoc;
    if (typeof doc?.id === 'number') {
      if (m.orders.some((x) => x.id === doc.id)) {
        sys.journal.violation('http', `${what}: 201 with order ${doc.id}, which an earlier request already got`, o.text);
      } else {
        m.orders.push({
          id: doc.id,
          customerId: body.customer_id,
          key,
          lines: body.items,
          total: doc.total,
          items: (doc.items ?? []).map((i) => ({ product_id: i.product_id, quantity: i.quantity, price: i.price })),
          createdAt: doc.created_at,
          createdToken: String(o.headers['x-consistency-token'] ?? ''),
          status: new Set<Status>(['pending']),
          uncertain: false,
          cancel: 'no',
        });
      }
    }
    return o;
  }
  if (o.kind === 'response' && o.status === 409 && problemCode(o) === 'insufficient_stock') {
    if (!mayLackStock(m, body.items)) {
      sys.journal.violation('stock', `${what}: 409 insufficient_stock although the model has at least ${body.items.map((l) => `${product(m, l.product_id).low} of product ${l.product_id}`).join(', ')}`, o.text);
    }
    return o;
  }
  if (notCarriedOut(o)) return o; // never reached a web, or turned away by a stopping one: nothing happened
  if (isAmbiguous(o)) {
    adjust(m, body.items, 'low', -1);
    if (key !== undefined) m.pending.push({ key, body, reason: describe(o) });
    else m.ambiguousUnkeyed++;
    return o;
  }
  await unexpected(sys, slot, what, o);
  // A 500 may still have written the order: count it as ambiguous so the end-of-run checks stay sound.
  adjust(m, body.items, 'low', -1);
  if (key !== undefined) m.pending.push({ key, body, reason: describe(o) });
  else m.ambiguousUnkeyed++;
  return o;
}

/**
 * The same key and body again right after a 201: the stored answer must come
 * back (same order, Idempotent-Replayed), never a second order.
 */
export async function replayOrder(sys: ChaosSystem, m: Model, webIndex: number, body: OrderBody, key: string, first: OrderModel): Promise<void> {
  const slot = sys.web(webIndex);
  const o = await request(slot.base, 'POST', '/orders', body, { 'Idempotency-Key': key });
  count(sys, 'POST /orders replay', o);
  if (notCarriedOut(o) || isAmbiguous(o)) return; // a replay creates nothing either way
  const id = o.kind === 'response' ? (o.json as { id?: unknown } | undefined)?.id : undefined;
  if (o.kind === 'response' && o.status === 201 && id === first.id && o.headers['idempotent-replayed'] === 'true') return;
  await unexpected(sys, slot, `replay of ${key} (order ${first.id})`, o);
}

/** Retry one ambiguous keyed order: the stored answer tells whether the first attempt happened. */
export async function resolvePending(sys: ChaosSystem, m: Model, index: number, webIndex: number): Promise<boolean> {
  const p = m.pending.splice(index % m.pending.length, 1)[0];
  if (!p) return true;
  const o = await placeOrder(sys, m, webIndex, p.body, p.key, true);
  if (notCarriedOut(o)) {
    m.pending.push(p); // still unknown; the reservation stays
    adjust(m, p.body.items, 'low', -1);
    return false;
  }
  return !isAmbiguous(o);
}

/** POST /orders/:id/{pay,ship,cancel} on a confirmed order. */
export async function transition(sys: ChaosSystem, m: Model, order: OrderModel, verb: Transition, webIndex: number): Promise<void> {
  const target = TARGET[verb];
  const slot = sys.web(webIndex);
  const o = await request(slot.base, 'POST', `/orders/${order.id}/${verb}`);
  count(sys, `POST /orders/:id/${verb}`, o);
  const what = `POST /orders/${order.id}/${verb} (model: ${[...order.status].join('|')}${order.uncertain ? ', uncertain' : ''})`;
  const canLeave = [...order.status].some((s) => ALLOWED_FROM[verb].includes(s));
  const canStay = [...order.status].some((s) => !ALLOWED_FROM[verb].includes(s));

  if (o.kind === 'response' && o.status === 200) {
    const status = (o.json as { status?: unknown } | undefined)?.status;
    if (status !== target) sys.journal.violation('http', `${what}: 200 with status ${String(status)}`, o.text);
    if (!canLeave && !order.uncertain) sys.journal.violation('http', `${what}: 200 although the order cannot leave its status`, o.text);
    if (verb === 'cancel') {
      if (order.cancel === 'yes') sys.journal.violation('stock', `${what}: cancelled a second time (stock restored twice)`, o.text);
      // The stock comes back now: certainly (low), and also in high unless an ambiguous cancel already put it there.
      adjust(m, order.lines, 'low', +1);
      if (order.cancel === 'no') adjust(m, order.lines, 'high', +1);
      order.cancel = 'yes';
    }
    order.status = new Set([target]);
    return;
  }
  if (o.kind === 'response' && o.status === 409 && problemCode(o) === 'invalid_transition') {
    const current = (o.json as { current_status?: unknown } | undefined)?.current_status;
    if (!order.uncertain) {
      if (!canStay) sys.journal.violation('http', `${what}: 409 invalid_transition although the model allows it`, o.text);
      else if (typeof current === 'string' && order.status.has(current as Status)) order.status = new Set([current as Status]);
      else sys.journal.violation('http', `${what}: 409 says the order is ${String(current)}`, o.text);
    }
    return;
  }
  if (notCarriedOut(o)) return;
  if (!isAmbiguous(o)) await unexpected(sys, slot, what, o);
  // It may have happened, now or (a commit in flight when the connection broke) a little later;
  // unless the order certainly could not leave its status, so that the database refused it either way.
  if (!canLeave && !order.uncertain) return;
  order.uncertain = true;
  order.status.add(target);
  if (verb === 'cancel' && order.cancel === 'no') {
    order.cancel = 'maybe';
    adjust(m, order.lines, 'high', +1);
  }
}

/**
 * Read-your-writes under faults: an analytics read with the order's creation
 * token answers 200 only once that event is applied, so the customer's
 * last_order_date is at least the order's created_at; or 504 (not in time),
 * 503, a refused or broken connection.
 */
export async function readOwnWrite(sys: ChaosSystem, order: OrderModel, webIndex: number): Promise<void> {
  if (!order.createdToken) return;
  const slot = sys.web(webIndex);
  const o = await request(slot.base, 'GET', `/analytics/customers/${order.customerId}`, undefined, { 'X-Consistency-Token': order.createdToken });
  count(sys, 'GET /analytics/customers/:id (token)', o);
  const what = `GET /analytics/customers/${order.customerId} with token ${order.createdToken} (order ${order.id})`;
  if (o.kind === 'response' && o.status === 200) {
    const last = (o.json as { last_order_date?: unknown } | undefined)?.last_order_date;
    if (typeof last !== 'string' || utcMicros(last) < utcMicros(order.createdAt)) {
      sys.journal.violation('http', `${what}: 200 but last_order_date ${String(last)} is before the order's ${order.createdAt}`, o.text);
    }
    return;
  }
  if (o.kind === 'response' && o.status === 504 && problemCode(o) === 'consistency_timeout') return;
  if (notCarriedOut(o) || o.kind === 'broken' || isUnavailable(o)) return;
  if (o.kind !== 'hang') await unexpected(sys, slot, what, o);
}
