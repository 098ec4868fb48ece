import assert from 'node:assert/strict';
import pg from 'pg';
import { createTestEnv, testLog, type TestEnv } from './support/env.js';
import { Proc, freePort } from './support/processes.js';
import { sleep } from './support/pipeline.js';
import { createProduct, call } from './support/web.js';
import { startOtlpReceiver, KIND, type ReceivedSpan } from './support/otlp.js';
import { createDb, sql } from '../db/pool.js';
import { placeOrder } from '../db/orders.js';
import { z } from 'zod';

/** Loaded into a process with --import: reports every tracing package it resolves, on stderr. */
const REPORT_SDK = `data:text/javascript,${encodeURIComponent(`
import { registerHooks } from 'node:module';
registerHooks({ resolve(specifier, context, next) {
  const r = next(specifier, context);
  if (/@opentelemetry[\\/\\\\](sdk-|exporter-|instrumentation|context-async-hooks|resources)|bullmq-otel/.test(r.url)) process.stderr.write('TRACING-LOADED ' + r.url + '\\n');
  return r;
} });`)}`;

async function waitForHealth(base: string, proc: Proc): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if ((await fetch(`${base}/healthz`).then((r) => r.status, () => 0)) === 200) return;
    if (proc.child?.exitCode !== null) break;
    await sleep(50);
  }
  throw new Error(`web did not come up: ${proc.output.slice(-2000)}`);
}

describe('tracing: one order, one trace across web, relay and worker (integration)', function () {
  this.timeout(120_000);
  let env: TestEnv;

  before(async () => {
    env = await createTestEnv();
  });

  it('with OTEL_* unset no tracing package is loaded, and with an endpoint set they are (the check can fail); a collector that is down costs no order and no clean exit', async () => {
    const run = async (extra: Record<string, string>) => {
      const port = await freePort();
      const web = new Proc('api/main.js', { ...env.env, PORT: String(port), LOG_LEVEL: 'warn', NODE_OPTIONS: `--import=${REPORT_SDK}`, ...extra }).start();
      try {
        const base = `http://127.0.0.1:${port}`;
        await waitForHealth(base, web);
        const product = await createProduct(base, { price: '1.00', stock: 10 });
        assert.equal((await call(base, 'POST', '/orders', { customer_id: 1, items: [{ product_id: product, quantity: 1 }] })).status, 201);
      } finally {
        const { code } = await web.signal('SIGTERM');
        assert.equal(code, 0, web.output.slice(-2000));
      }
      return web.output;
    };
    const off = await run({});
    assert.doesNotMatch(off, /TRACING-LOADED/, off.slice(-2000));
    const receiver = await startOtlpReceiver();
    try {
      const onOutput = await run({ OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url });
      assert.match(onOutput, /TRACING-LOADED /);
    } finally {
      await receiver.close();
    }
    // Nothing listens on this port: spans are lost, orders are not, and SIGTERM still exits 0 in time.
    const down = await run({ OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${await freePort()}`, SHUTDOWN_TIMEOUT_MS: '3000' });
    assert.match(down, /TRACING-LOADED /);
    const outbox = new pg.Client({ connectionString: env.config.DATABASE_URL });
    await outbox.connect();
    try {
      // Tracing off: the outbox row carries no traceparent.
      const { rows } = await outbox.query<{ traceparent: string | null }>('SELECT traceparent FROM outbox ORDER BY id LIMIT 1');
      assert.equal(rows[0]?.traceparent, null);
    } finally {
      await outbox.end();
    }
  });

  it('a group commit writes each order’s traceparent into that order’s own outbox row, on both paths of place_orders; the setting does not outlive its statement', async () => {
    const db = createDb(env.config.DATABASE_URL, { name: 'test', max: 1, log: testLog });
    try {
      const product = await db.oneFirst(sql.type(z.object({ id: z.number() }))`INSERT INTO products (name, category, price, stock) VALUES ('p', 'c', 1, 5) RETURNING id`);
      const tp = (n: number) => `00-${String(n).padStart(32, 'a')}-${String(n).padStart(16, 'b')}-01`;
      const placeOrders = (orders: object[]) =>
        db.oneFirst(sql.type(z.object({ r: z.array(z.record(z.string(), z.unknown())) }))`SELECT place_orders(${sql.jsonb(orders as never)}) AS r`);
      const traceOf = (eventId: unknown) => db.oneFirst(sql.type(z.object({ t: z.string().nullable() }))`SELECT traceparent AS t FROM outbox WHERE id = ${Number(eventId)}`);
      // Enough stock for all: orders_insert(), one statement; one order without a traceparent.
      const fits = await placeOrders([1, 2, 3].map((n) => ({ customer_id: n, items: [{ product_id: product, quantity: 1 }], ...(n === 2 ? {} : { traceparent: tp(n) }) })));
      assert.deepEqual(await Promise.all(fits.map((r) => traceOf(r.event_id))), [tp(1), null, tp(3)]);
      // Not enough for all (2 left, 3 wanted): order by order; the refused one writes nothing.
      const short = await placeOrders([4, 5, 6].map((n) => ({ customer_id: n, items: [{ product_id: product, quantity: n === 5 ? 3 : 1 }], ...(n === 6 ? {} : { traceparent: tp(n) }) })));
      assert.equal(short[1]?.message, 'insufficient_stock');
      assert.deepEqual(await Promise.all([short[0], short[2]].map((r) => traceOf(r?.event_id))), [tp(4), null]);
      // A single order names its traceparent in its statement; the next one on the same connection has none.
      await db.query(sql.unsafe`UPDATE products SET stock = 10`);
      const traced = await placeOrder(db, { customer_id: 8, items: [{ product_id: product, quantity: 1 }] }, undefined, tp(8));
      const plain = await placeOrder(db, { customer_id: 9, items: [{ product_id: product, quantity: 1 }] }, undefined, undefined);
      assert.deepEqual([await traceOf(traced.event_id), await traceOf(plain.event_id)], [tp(8), null]);
    } finally {
      await db.end();
    }
  });

  it('POST /orders → place_orders → relay publish → BullMQ process → projector.batch → read_db statement, over http/json and http/protobuf', async () => {
    const test = await createTestEnv({ RELAY_POLL_MS: '100' });
    const receiver = await startOtlpReceiver();
    const port = await freePort();
    const otel = { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, LOG_LEVEL: 'warn' };
    // The web exports JSON, the relay and the worker protobuf: both decoders see the same trace.
    const web = new Proc('api/main.js', { ...test.env, ...otel, PORT: String(port), OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' }).start();
    const relay = new Proc('workers/relay/main.js', { ...test.env, ...otel, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf' }).start();
    const worker = new Proc('workers/projector/main.js', { ...test.env, ...otel }).start();
    const write = new pg.Client({ connectionString: test.config.DATABASE_URL });
    const read = new pg.Client({ connectionString: test.config.READ_DATABASE_URL });
    try {
      const base = `http://127.0.0.1:${port}`;
      await waitForHealth(base, web);
      await Promise.all([write.connect(), read.connect()]);
      const product = await createProduct(base, { price: '2.50', stock: 10 });
      const placed = await call(base, 'POST', '/orders', { customer_id: 7, items: [{ product_id: product, quantity: 2 }] });
      assert.equal(placed.status, 201);
      const eventId = Number(placed.headers.get('x-consistency-token'));
      for (let i = 0; i < 200; i++) {
        const { rows } = await read.query('SELECT 1 FROM processed_events WHERE event_id = $1', [String(eventId)]);
        if (rows.length > 0) break;
        await sleep(50);
      }
      const { rows: outbox } = await write.query<{ traceparent: string | null }>('SELECT traceparent FROM outbox WHERE id = $1', [eventId]);
      // Stopping flushes each process's spans.
      for (const p of [web, relay, worker]) assert.equal((await p.signal('SIGTERM')).code, 0, p.output.slice(-2000));

      const spans = receiver.spans;
      const request = spans.find((s) => s.service === 'web' && s.name === 'POST /orders' && s.attributes['outbox.event_id'] === eventId);
      assert.ok(request, `no POST /orders span for event ${eventId}: ${spans.map((s) => `${s.service}:${s.name}`).join(', ')}`);
      const trace = spans.filter((s) => s.traceId === request.traceId);
      const byId = new Map(trace.map((s) => [s.spanId, s]));
      const one = (what: string, pred: (s: ReceivedSpan) => boolean): ReceivedSpan => {
        const found = trace.filter(pred);
        assert.equal(found.length, 1, `${what}: ${found.length} spans in the order's trace (${trace.map((s) => `${s.service}:${s.name}`).join(', ')})`);
        return found[0]!;
      };
      const linked = (s: ReceivedSpan, to: ReceivedSpan) => s.links.some((l) => l.spanId === to.spanId && l.traceId === to.traceId);

      // web: the request (the order's span), the group-commit transaction and its statement
      assert.equal(one('request', (s) => s.service === 'web' && s.name === 'POST /orders'), request);
      assert.equal(request.kind, KIND.server);
      assert.equal(request.parentSpanId, '');
      assert.equal(request.attributes['http.response.status_code'], 201);
      assert.equal(outbox[0]?.traceparent, `00-${request.traceId}-${request.spanId}-01`, 'the outbox row carries the request span');
      const transaction = one('place_orders', (s) => s.service === 'web' && s.name === 'place_orders');
      assert.equal(transaction.parentSpanId, request.spanId, 'a batch of one is the order span’s child');
      assert.ok(linked(transaction, request) && linked(request, transaction), 'the batch and the order link each other');
      assert.ok(trace.some((s) => s.service === 'web' && s.kind === KIND.client && s.parentSpanId === transaction.spanId && /postgres/.test(String(s.attributes['db.system.name'] ?? s.attributes['db.system']))), 'the order statement (pg instrumentation) under place_orders');

      // relay: the batch's publish span, in the order's trace and linking to it
      const publish = one('publish', (s) => s.service === 'relay' && s.kind === KIND.producer && s.name.startsWith('publish '));
      assert.equal(publish.parentSpanId, request.spanId);
      assert.ok(linked(publish, request));
      assert.equal(publish.attributes['messaging.message.id'], String(eventId));
      assert.equal(publish.attributes['messaging.batch.message_count'], 1);
      assert.ok(trace.some((s) => s.service === 'relay' && s.scope === 'bullmq' && s.name.startsWith('addBulk') && s.parentSpanId === publish.spanId), 'BullMQ’s addBulk under the publish span');

      // worker: BullMQ's process span continues the publish span; the projector batch and its read_db statement
      const processSpan = one('process', (s) => s.service === 'worker' && s.kind === KIND.consumer && s.name.startsWith('process '));
      assert.equal(processSpan.parentSpanId, publish.spanId);
      const projector = one('projector.batch', (s) => s.service === 'worker' && s.name === 'projector.batch');
      assert.equal(projector.parentSpanId, processSpan.spanId);
      assert.ok(linked(projector, processSpan) && linked(processSpan, projector));
      // The batch is one statement, so one implicit transaction: its span is the read_db commit.
      const commit = one('read_db statement', (s) => s.service === 'worker' && s.kind === KIND.client && s.parentSpanId === projector.spanId && s.name.startsWith('pg.query:WITH'));
      assert.match(String(commit.attributes['db.system.name'] ?? commit.attributes['db.system']), /postgres/);

      // One connected trace: every span but the request has its parent in it; three services, both encodings.
      for (const s of trace) if (s !== request) assert.ok(byId.has(s.parentSpanId), `${s.service}:${s.name} has a parent outside the trace`);
      assert.deepEqual([...new Set(trace.map((s) => s.service))].sort(), ['relay', 'web', 'worker']);
      assert.deepEqual([...new Set(trace.map((s) => s.encoding))].sort(), ['json', 'protobuf']);
      assert.ok(receiver.requests.every((r) => r.path === '/v1/traces'));
    } finally {
      for (const p of [web, relay, worker]) await p.signal('SIGKILL');
      await Promise.allSettled([write.end(), read.end()]);
      await receiver.close();
    }
  });

  it('one claim of several events in several jobs: one publish span, child of the first sampled order and linking to the sampled ones only, parent of every job; an unsampled order leaves no span downstream', async () => {
    const test = await createTestEnv({ RELAY_POLL_MS: '100', RELAY_JOB_EVENTS: '2' });
    const receiver = await startOtlpReceiver();
    const port = await freePort();
    const otel = { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, LOG_LEVEL: 'warn' };
    // Here the web exports protobuf (the default; the test above has it export JSON).
    const web = new Proc('api/main.js', { ...test.env, ...otel, PORT: String(port) }).start();
    const procs = [web];
    const read = new pg.Client({ connectionString: test.config.READ_DATABASE_URL });
    try {
      const base = `http://127.0.0.1:${port}`;
      await waitForHealth(base, web);
      await read.connect();
      const product = await createProduct(base, { price: '1.00', stock: 10 });
      // Four orders before any relay runs, so that one claim takes all four, in two jobs of two (RELAY_JOB_EVENTS);
      // the second's trace is not sampled.
      const unsampledTrace = '5'.repeat(32);
      const ids: number[] = [];
      for (const headers of [{}, { traceparent: `00-${unsampledTrace}-${'6'.repeat(16)}-00` }, {}, {}] as Record<string, string>[]) {
        const placed = await call(base, 'POST', '/orders', { customer_id: 1, items: [{ product_id: product, quantity: 1 }] }, headers);
        assert.equal(placed.status, 201);
        ids.push(Number(placed.headers.get('x-consistency-token')));
      }
      procs.push(new Proc('workers/relay/main.js', { ...test.env, ...otel }).start(), new Proc('workers/projector/main.js', { ...test.env, ...otel }).start());
      for (let i = 0; i < 200; i++) {
        const { rows } = await read.query('SELECT count(*)::int AS n FROM processed_events WHERE event_id = ANY ($1::text[])', [ids.map(String)]);
        if (rows[0].n === 4) break;
        await sleep(50);
      }
      // A fifth order, unsampled, once the relay and the worker run: its event travels alone, so its group commit
      // and its projector batch hold no sampled item.
      const fifth = await call(base, 'POST', '/orders', { customer_id: 1, items: [{ product_id: product, quantity: 1 }] }, { traceparent: `00-${'7'.repeat(32)}-${'8'.repeat(16)}-00` });
      assert.equal(fifth.status, 201);
      const fifthId = Number(fifth.headers.get('x-consistency-token'));
      const applied = async () => (await read.query('SELECT 1 FROM processed_events WHERE event_id = $1', [String(fifthId)])).rowCount === 1;
      for (let i = 0; i < 200 && !(await applied()); i++) await sleep(50);
      assert.ok(await applied(), 'the fifth order reached read_db');
      for (const p of procs) assert.equal((await p.signal('SIGTERM')).code, 0, p.output.slice(-2000));

      const spans = receiver.spans;
      assert.deepEqual(
        spans.filter((s) => !s.parentSpanId && s.kind !== KIND.server).map((s) => `${s.service} ${s.name}`),
        [],
        'every trace starts at a request: a batch with no sampled order or event records no span (it used to start a trace of its own)',
      );
      assert.ok(spans.filter((s) => s.name === 'projector.batch').length >= 1 && spans.filter((s) => s.name === 'place_orders').length >= 2, 'the sampled orders still have their batch spans');
      const request = (eventId: number) => spans.find((s) => s.service === 'web' && s.name === 'POST /orders' && s.attributes['outbox.event_id'] === eventId);
      const [first, second, third, fourth] = ids.map(request);
      assert.ok(first && third && fourth, 'the sampled orders have request spans');
      assert.equal(second, undefined, 'the unsampled order records no span');
      assert.deepEqual(spans.filter((s) => s.traceId === unsampledTrace), [], 'nothing downstream of the unsampled order records a span');
      const publish = spans.filter((s) => s.service === 'relay' && s.kind === KIND.producer && s.name.startsWith('publish '));
      assert.equal(publish.length, 1, `one publish span for the one claim: ${publish.map((s) => s.name).join(', ')}`);
      assert.equal(publish[0]!.attributes['messaging.batch.message_count'], 4);
      assert.equal(publish[0]!.traceId, first.traceId);
      assert.equal(publish[0]!.parentSpanId, first.spanId, 'child of the first sampled order');
      assert.deepEqual(publish[0]!.links.map((l) => l.spanId).sort(), [first.spanId, third.spanId, fourth.spanId].sort(), 'links to the sampled orders only');
      // The four events travel in two jobs, the messages: each job's process span is a child of the publish span (a
      // job carries one traceparent, not one per event: the second job's too, which does not hold the first order);
      // the projector batch links to the jobs' spans, once each, and each links back. So the fourth order's trace
      // reaches its projector batch: request ◀─ publish (link) ─▶ process ─▶ batch (links).
      const jobs = spans.filter((s) => s.service === 'worker' && s.kind === KIND.consumer);
      assert.equal(jobs.length, 2);
      for (const job of jobs) assert.equal(job.parentSpanId, publish[0]!.spanId);
      const batches = spans.filter((s) => s.service === 'worker' && s.name === 'projector.batch');
      const key = (l: { traceId: string; spanId: string }) => `${l.traceId}-${l.spanId}`;
      for (const batch of batches) {
        const linked = batch.links.map(key);
        assert.equal(new Set(linked).size, linked.length, 'a job is linked once, not once per event');
        assert.ok(linked.every((l) => jobs.some((j) => key(j) === l)), 'a batch links to its jobs');
        assert.ok(jobs.some((j) => j.spanId === batch.parentSpanId), 'a batch is its first job’s child');
      }
      for (const job of jobs) {
        const back = job.links.map((l) => l.spanId);
        assert.ok(back.length >= 1 && back.every((id) => batches.some((b) => b.spanId === id && b.links.some((l) => key(l) === key(job)))), 'each job links back to the batches that link to it');
      }
    } finally {
      for (const p of procs) await p.signal('SIGKILL');
      await read.end().catch(() => undefined);
      await receiver.close();
    }
  });
});
