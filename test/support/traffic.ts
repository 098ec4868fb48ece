import assert from 'node:assert/strict';
import { call, createProduct } from './web.js';

/**
 * Concurrent orders through the API (25 at a time), spread over the given web
 * base URLs, with idempotent retries (every 5th, sent to another web),
 * payments (every 3rd) and cancellations (every 4th).
 */
export async function traffic(bases: string[], products: number[], n: number, tag: string): Promise<void> {
  const one = async (i: number) => {
    const base = bases[i % bases.length]!;
    const body = { customer_id: 1 + (i % 29), items: [{ product_id: products[i % products.length]!, quantity: 1 + (i % 3) }, { product_id: products[(i + 3) % products.length]!, quantity: 1 }] };
    const key = `${tag}-${i}`;
    const o = await call(base, 'POST', '/orders', body, { 'Idempotency-Key': key });
    assert.equal(o.status, 201, JSON.stringify(o.body));
    if (i % 5 === 0) assert.equal((await call(bases[(i + 1) % bases.length]!, 'POST', '/orders', body, { 'Idempotency-Key': key })).json.id, o.json.id);
    if (i % 3 === 0) await call(base, 'POST', `/orders/${o.json.id}/pay`);
    if (i % 4 === 0) await call(base, 'POST', `/orders/${o.json.id}/cancel`);
  };
  for (let i = 0; i < n; i += 25) await Promise.all(Array.from({ length: Math.min(25, n - i) }, (_, j) => one(i + j)));
}

/** Products in four categories with awkward prices and ample stock. */
export async function catalogue(base: string, n = 8): Promise<number[]> {
  const ids: number[] = [];
  for (let i = 0; i < n; i++) ids.push(await createProduct(base, { category: `c${i % 4}`, price: ['0.10', '19.99', '3.33', '7.05'][i % 4]!, stock: 1_000_000 }));
  return ids;
}
