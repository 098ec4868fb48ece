import { sendJson } from './http.js';
import type { Route } from './router.js';
import { PROBLEMS } from './errors.js';
import { z } from 'zod';
import { orderDocument } from '../lib/contract.js';
import { createOrderBody, createProductBody, patchProductBody } from './validate.js';
import { parkBody, replayBody } from './admin.js';
import { product } from '../db/products.js';
import { deadLetter } from '../db/dead-letters.js';
import { statusReport } from '../db/status.js';
import { namedSalesRow } from '../workers/projector/projections/product-sales.js';
import { categoryRow } from '../workers/projector/projections/category-metrics.js';
import { customerRow } from '../workers/projector/projections/customer-ltv.js';
import { hourRow } from '../workers/projector/projections/hourly-sales.js';

/**
 * The OpenAPI 3.1 description of the HTTP API, served at /openapi.json.
 * test/openapi.int.spec.ts checks it against the router and against every
 * status the server answers in the test battery.
 */

type Op = { summary: string; body?: string; query?: string[]; headers?: string[]; responses: Record<string, string> };

const problem = (codes: string) => `problem: ${codes}`;
const json = (schema: string) => `json: ${schema}`;
const COMMON = { '500': problem('internal_error'), '503': problem('service_unavailable, overloaded, shutting_down') };
const BAD_ID = { '400': problem('validation_failed') };
const ADMIN = { '401': problem('unauthorized'), '404': problem('not_found (admin API off)'), '429': problem('too_many_requests') };
/** The admin API's changes: a foreign Origin is refused (a request without one, curl's, is not). */
const ADMIN_CHANGE = { ...ADMIN, '403': problem('forbidden (a foreign Origin)') };
const FORM = { ...ADMIN, '303': 'redirect', '403': problem('forbidden (no Origin, or a foreign one)'), '413': problem('payload_too_large'), '415': problem('unsupported_media_type (not a form)') };
const ANALYTICS = { '400': problem('validation_failed'), '504': problem('consistency_timeout') };

export const OPERATIONS: Record<string, Op> = {
  'GET /healthz': { summary: 'Liveness: 200 while the process runs', responses: { '200': json('Health') } },
  'GET /readyz': { summary: 'Readiness: write_db, read_db and Redis answer', responses: { '200': json('Readiness'), '503': json('Readiness') } },
  'GET /metrics': { summary: 'Prometheus metrics of this process plus the relays and workers', responses: { '200': 'text/plain', '401': problem('unauthorized (METRICS_TOKEN set; Bearer token missing or wrong)') } },
  'GET /': { summary: 'Dashboard (HTML): hourly revenue, top products, categories, top customers, pipeline state', responses: { '200': 'text/html' } },
  'GET /openapi.json': { summary: 'This document', responses: { '200': 'application/json' } },
  'POST /products': { summary: 'Create a product', body: 'NewProduct', responses: { '201': json('Product'), '400': problem('validation_failed, malformed_json'), '413': problem('payload_too_large'), '415': problem('unsupported_media_type') } },
  'GET /products': { summary: 'List products (keyset pagination)', query: ['category', 'limit', 'cursor'], responses: { '200': json('ProductPage'), '400': problem('validation_failed') } },
  'GET /products/{id}': { summary: 'One product', responses: { '200': json('Product'), ...BAD_ID, '404': problem('product_not_found') } },
  'PATCH /products/{id}': { summary: 'Change name, category, price or stock', body: 'ProductPatch', responses: { '200': json('Product'), '400': problem('validation_failed, malformed_json'), '404': problem('product_not_found'), '413': problem('payload_too_large'), '415': problem('unsupported_media_type') } },
  'POST /orders': {
    summary: 'Place an order: stock, order, items and its order.created event in one transaction',
    body: 'NewOrder',
    headers: ['Idempotency-Key'],
    responses: { '201': json('Order'), '400': problem('validation_failed, malformed_json'), '409': problem('insufficient_stock'), '413': problem('payload_too_large'), '415': problem('unsupported_media_type'), '422': problem('unknown_product, idempotency_key_reused, total_out_of_range') },
  },
  'GET /orders': { summary: "A customer's orders", query: ['customer_id', 'limit', 'cursor'], responses: { '200': json('OrderPage'), '400': problem('validation_failed') } },
  'GET /orders/{id}': { summary: 'One order with its items', responses: { '200': json('Order'), ...BAD_ID, '404': problem('order_not_found') } },
  'POST /orders/{id}/pay': { summary: 'pending → paid', responses: { '200': json('Order'), ...BAD_ID, '404': problem('order_not_found'), '409': problem('invalid_transition') } },
  'POST /orders/{id}/ship': { summary: 'paid → shipped', responses: { '200': json('Order'), ...BAD_ID, '404': problem('order_not_found'), '409': problem('invalid_transition') } },
  'POST /orders/{id}/cancel': { summary: 'pending or paid → cancelled; restores stock', responses: { '200': json('Order'), ...BAD_ID, '404': problem('order_not_found'), '409': problem('invalid_transition') } },
  'GET /analytics/products/top': { summary: 'Top products by revenue or quantity', query: ['by', 'limit'], headers: ['X-Consistency-Token'], responses: { '200': json('ProductSalesPage'), ...ANALYTICS } },
  'GET /analytics/products/{id}': { summary: "A product's sales", headers: ['X-Consistency-Token'], responses: { '200': json('ProductSales'), ...ANALYTICS } },
  'GET /analytics/categories': { summary: 'Revenue and orders per category (at time of sale)', headers: ['X-Consistency-Token'], responses: { '200': json('CategoryPage'), ...ANALYTICS } },
  'GET /analytics/customers/top': { summary: 'Top customers by lifetime value', query: ['limit'], headers: ['X-Consistency-Token'], responses: { '200': json('CustomerPage'), ...ANALYTICS } },
  'GET /analytics/customers/{id}': { summary: "A customer's lifetime value", headers: ['X-Consistency-Token'], responses: { '200': json('CustomerLtv'), ...ANALYTICS } },
  'GET /admin/events': { summary: 'Events that failed for good (dead letters); admin password', query: ['state'], responses: { '200': json('DeadLetterPage'), '400': problem('validation_failed'), ...ADMIN } },
  'POST /admin/events/{id}/replay': { summary: 'Send a dead letter back to the workers (unparks it); admin password; body {}', body: 'Empty', responses: { '202': json('EventAction'), '400': problem('validation_failed, malformed_json'), ...ADMIN_CHANGE, '404': problem('not_found (no such dead letter, or the admin API off)'), '409': problem('event_conflict'), '413': problem('payload_too_large'), '415': problem('unsupported_media_type') } },
  'POST /admin/events/{id}/park': { summary: 'Never apply this dead letter; verify reports it by id; admin password', body: 'Park', responses: { '200': json('EventAction'), '400': problem('validation_failed, malformed_json'), ...ADMIN_CHANGE, '404': problem('not_found (no such dead letter, or the admin API off)'), '409': problem('event_conflict'), '413': problem('payload_too_large'), '415': problem('unsupported_media_type') } },
  'GET /admin/projections': { summary: "Every projection's status: last applied event, lag behind the outbox, rows, last verify, rebuild state; admin password", responses: { '200': json('ProjectionStatusReport'), ...ADMIN } },
  'GET /admin': { summary: 'Admin view (HTML): outbox, relays and workers, projections, dead letters, verify, rebuild; admin password', responses: { '200': 'text/html', ...ADMIN } },
  'POST /admin/actions/events/{id}/replay': { summary: "The admin view's replay (HTML form); 303 back to /admin", responses: { ...FORM, ...BAD_ID } },
  'POST /admin/actions/events/{id}/park': { summary: "The admin view's park (HTML form with reason); 303 back to /admin", responses: { ...FORM, ...BAD_ID } },
  'POST /admin/actions/verify': { summary: 'Start npm run verify from the admin view (HTML form); 303 back to /admin', responses: FORM },
  'POST /admin/actions/rebuild': { summary: 'Start npm run rebuild from the admin view (HTML form; refused while one runs); 303 back to /admin', responses: FORM },
  'GET /analytics/hourly': { summary: 'Orders and revenue per UTC hour; buckets starting within [from, to]', query: ['from', 'to'], headers: ['X-Consistency-Token'], responses: { '200': json('HourlyPage'), ...ANALYTICS } },
};

const int = { type: 'integer' };
const page = (item: string) => ({ type: 'object', properties: { items: { type: 'array', items: { $ref: `#/components/schemas/${item}` } }, next_cursor: { type: ['string', 'null'] } } });
const list = (item: string, extra: Record<string, unknown> = {}) => ({ type: 'object', properties: { ...extra, items: { type: 'array', items: { $ref: `#/components/schemas/${item}` } } } });

/**
 * The zod schemas the server validates with, as JSON Schema (z.toJSONSchema):
 * request bodies as they are accepted (their input side: money as a number or
 * a string), answers as they are produced. A JSON Schema inside an OpenAPI
 * 3.1 document takes the document's dialect, so $schema is left out.
 */
function jsonSchema(schema: z.ZodType, io: 'input' | 'output'): Record<string, unknown> {
  return Object.fromEntries(Object.entries(z.toJSONSchema(schema, { io, unrepresentable: 'any' })).filter(([k]) => k !== '$schema'));
}
const request = (s: z.ZodType) => jsonSchema(s, 'input');
const answer = (s: z.ZodType) => jsonSchema(s, 'output');

const SCHEMAS: Record<string, unknown> = {
  Problem: {
    type: 'object',
    required: ['type', 'title', 'status', 'code'],
    properties: { type: { type: 'string' }, title: { type: 'string' }, status: int, code: { type: 'string', enum: Object.keys(PROBLEMS) }, detail: { type: 'string' }, instance: { type: 'string' }, field: { type: 'string', description: 'The offending field, for validation_failed' } },
  },
  Health: { type: 'object', properties: { status: { type: 'string' } } },
  Readiness: { type: 'object', properties: { status: { enum: ['ready', 'not_ready'] }, checks: { type: 'object', additionalProperties: { type: 'string' } } } },
  NewProduct: request(createProductBody),
  ProductPatch: request(patchProductBody),
  Product: answer(product),
  ProductPage: page('Product'),
  NewOrder: request(createOrderBody),
  Order: answer(orderDocument),
  OrderPage: page('Order'),
  ProductSales: answer(namedSalesRow),
  ProductSalesPage: list('ProductSales', { by: { enum: ['revenue', 'quantity'] } }),
  Category: answer(categoryRow),
  CategoryPage: list('Category'),
  CustomerLtv: answer(customerRow),
  CustomerPage: list('CustomerLtv'),
  Hourly: answer(hourRow),
  HourlyPage: list('Hourly', { from: { type: ['string', 'null'] }, to: { type: ['string', 'null'] } }),
  DeadLetter: answer(deadLetter),
  DeadLetterPage: list('DeadLetter', { state: { enum: ['failed', 'parked', 'all'] } }),
  Empty: request(replayBody),
  Park: request(parkBody),
  ProjectionStatusReport: answer(statusReport),
  EventAction: { type: 'object', properties: { event_id: { type: 'string' }, result: { type: 'string' } } },
};

const PARAMS: Record<string, { in: 'query' | 'header'; schema: unknown; description: string }> = {
  category: { in: 'query', schema: { type: 'string' }, description: 'Only products of this category' },
  limit: { in: 'query', schema: { type: 'integer', minimum: 1 }, description: 'Page size' },
  cursor: { in: 'query', schema: { type: 'string' }, description: 'next_cursor of the previous page' },
  customer_id: { in: 'query', schema: { type: 'integer', minimum: 1 }, description: 'The customer (required)' },
  by: { in: 'query', schema: { enum: ['revenue', 'quantity'] }, description: 'Ranking (default revenue)' },
  from: { in: 'query', schema: { type: 'string', format: 'date-time' }, description: 'ISO-8601, UTC when no zone' },
  state: { in: 'query', schema: { enum: ['failed', 'parked', 'all'] }, description: 'failed (default): waiting for a decision; parked; all' },
  to: { in: 'query', schema: { type: 'string', format: 'date-time' }, description: 'ISO-8601, UTC when no zone' },
  'Idempotency-Key': { in: 'header', schema: { type: 'string', maxLength: 255 }, description: 'Retry-safe creation: the same key and body return the original outcome (the order, or the 409 refusal), marked Idempotent-Replayed' },
  'X-Consistency-Token': { in: 'header', schema: { type: 'string' }, description: 'Token from a write; waits (bounded) until that write and every write committed before it are in the read model' },
};

function response(status: string, what: string): unknown {
  if (what.startsWith('problem:')) return { description: what.slice(9), content: { 'application/problem+json': { schema: { $ref: '#/components/schemas/Problem' } } } };
  if (what === 'redirect') return { description: 'See Other: back to the page (Location), with a notice', headers: { Location: { schema: { type: 'string' } } } };
  if (what.startsWith('json:')) return { description: status, content: { 'application/json': { schema: { $ref: `#/components/schemas/${what.slice(6)}` } } } };
  return { description: status, content: { [what]: {} } };
}

export function openapiDocument(): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const [key, op] of Object.entries(OPERATIONS)) {
    const [method, path] = key.split(' ') as [string, string];
    const params = [
      ...[...path.matchAll(/\{(\w+)\}/g)].map((m) => ({ name: m[1], in: 'path', required: true, schema: { type: 'integer', minimum: 1 } })),
      ...[...(op.query ?? []), ...(op.headers ?? [])].map((name) => ({ name, ...PARAMS[name], required: name === 'customer_id' })),
    ];
    const responses = Object.fromEntries(Object.entries({ ...op.responses, ...COMMON }).map(([s, w]) => [s, response(s, w)]));
    paths[path] ??= {};
    paths[path][method.toLowerCase()] = {
      summary: op.summary,
      ...(params.length ? { parameters: params } : {}),
      ...(op.body ? { requestBody: { required: true, content: { 'application/json': { schema: { $ref: `#/components/schemas/${op.body}` } } } } } : {}),
      responses,
    };
  }
  return {
    openapi: '3.1.0',
    info: { title: 'Order pipeline', version: '0.1.0', description: 'Order intake with a transactional outbox and an exactly-once read model. Errors are RFC 9457 problem details with a stable `code`.' },
    paths,
    components: { schemas: SCHEMAS },
  };
}

export const openapiRoutes: Route[] = [
  {
    method: 'GET',
    path: '/openapi.json',
    async handler({ res }) {
      sendJson(res, 200, openapiDocument());
    },
  },
];
