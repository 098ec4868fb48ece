import assert from 'node:assert/strict';
import { routes } from '../api/server.js';
import { PROBLEMS } from '../api/errors.js';
import { openapiDocument, OPERATIONS } from '../api/openapi.js';
import { startTestWeb, call, createProduct, type WebFixture } from './support/web.js';

type Doc = { paths: Record<string, Record<string, { responses: Record<string, unknown> }>>; components: { schemas: { Problem: { properties: { code: { enum: string[] } } } } } };

const templ = (path: string) => path.replace(/:(\w+)/g, '{$1}');

describe('OpenAPI document (integration): /openapi.json stays true to the server', () => {
  let f: WebFixture;
  let doc: Doc;
  before(async () => {
    f = await startTestWeb();
    const r = await call(f.base, 'GET', '/openapi.json');
    assert.equal(r.status, 200);
    doc = r.json as Doc;
  });
  after(async () => f.stop());

  it('is OpenAPI 3.1 and describes exactly the routes the server has', () => {
    assert.equal((openapiDocument() as { openapi: string }).openapi, '3.1.0');
    const served = routes.map((r) => `${r.method} ${templ(r.path)}`).sort();
    assert.deepEqual(Object.keys(OPERATIONS).sort(), served);
    for (const r of routes) assert.ok(doc.paths[templ(r.path)]?.[r.method.toLowerCase()], `${r.method} ${r.path} is documented`);
  });

  it('lists every problem code the server can answer', () => {
    assert.deepEqual([...doc.components.schemas.Problem.properties.code.enum].sort(), Object.keys(PROBLEMS).sort());
  });

  it('documents every status the server answers to a battery of requests', async () => {
    const p = await createProduct(f.base, { price: 1, stock: 1 });
    const o = (await call(f.base, 'POST', '/orders', { customer_id: 1, items: [{ product_id: p, quantity: 1 }] })).json;
    const battery: [string, string, unknown?, Record<string, string>?][] = [
      ['GET', '/healthz'], ['GET', '/readyz'], ['GET', '/metrics'], ['GET', '/openapi.json'],
      ['POST', '/products', { name: 'a', category: 'b', price: '1.00', stock: 1 }], ['POST', '/products', { name: 'a' }], ['POST', '/products', 'x', { 'content-type': 'text/plain' }], ['POST', '/products', '{'],
      ['GET', '/products'], ['GET', '/products?limit=0'], ['GET', `/products/${p}`], ['GET', '/products/999999'], ['GET', '/products/x'],
      ['PATCH', `/products/${p}`, { stock: 5 }], ['PATCH', '/products/999999', { stock: 5 }], ['PATCH', `/products/${p}`, {}],
      ['POST', '/orders', { customer_id: 1, items: [{ product_id: p, quantity: 1 }] }], ['POST', '/orders', { customer_id: 1, items: [{ product_id: p, quantity: 100 }] }],
      ['POST', '/orders', { customer_id: 1, items: [{ product_id: 999999, quantity: 1 }] }], ['POST', '/orders', { customer_id: 1, items: [] }],
      ['GET', '/orders?customer_id=1'], ['GET', '/orders'], ['GET', `/orders/${o.id}`], ['GET', '/orders/999999'],
      ['POST', `/orders/${o.id}/ship`], ['POST', `/orders/${o.id}/pay`], ['POST', `/orders/${o.id}/ship`], ['POST', `/orders/${o.id}/cancel`], ['POST', '/orders/999999/pay'],
      ['GET', '/analytics/products/top'], ['GET', '/analytics/products/top?by=x'], ['GET', `/analytics/products/${p}`], ['GET', '/analytics/categories'],
      ['GET', '/analytics/customers/top'], ['GET', '/analytics/customers/1'], ['GET', '/analytics/hourly?from=x'], ['GET', '/analytics/hourly'],
      ['GET', '/admin'], ['GET', '/admin/projections'], ['POST', '/admin/actions/verify', 'a=1', { 'content-type': 'application/x-www-form-urlencoded' }],
    ];
    for (const [method, path, body, headers] of battery) {
      const r = await call(f.base, method, path, body, headers);
      const route = routes.find((rt) => rt.method === method && new RegExp(`^${rt.path.replace(/:\w+/g, '[^/]+')}$`).test(path.split('?')[0]!));
      assert.ok(route, `${method} ${path} matches a route`);
      const op = doc.paths[templ(route.path)]![method.toLowerCase()]!;
      assert.ok(op.responses[String(r.status)], `${method} ${path} answered ${r.status}, which is not documented`);
      if (r.status >= 400) assert.ok(Object.keys(PROBLEMS).includes(r.json.code), `${r.json.code} is a known problem code`);
    }
  });
});
