import assert from 'node:assert/strict';
import http from 'node:http';
import { gunzipSync } from 'node:zlib';
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, TraceFlags, trace, type Span } from '@opentelemetry/api';
import { TraceState } from '@opentelemetry/core';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider, type ReadableSpan } from '@opentelemetry/sdk-trace';
import { ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import { deserializeResponse, protobufSpanProcessor, serializeSpans } from '../lib/otlp-proto.js';

/** Spans of every shape the SDK makes, from two resources and three scopes. */
function spans(): ReadableSpan[] {
  const memory = new InMemorySpanExporter();
  const providers = [
    new TracerProvider({ resource: resourceFromAttributes({ 'service.name': 'web', 'service.namespace': 'order-pipeline', 'host.arch': 'x64', pid: 4242 }), spanProcessors: [new SimpleSpanProcessor({ exporter: memory })] }),
    new TracerProvider({ resource: resourceFromAttributes({ 'service.name': 'wörker ☃', list: ['a', 'b'] }), spanProcessors: [new SimpleSpanProcessor({ exporter: memory })] }),
  ];
  const remote = trace.setSpanContext(ROOT_CONTEXT, { traceId: '0af7651916cd43dd8448eb211c80319c', spanId: 'b7ad6b7169203331', traceFlags: TraceFlags.SAMPLED, isRemote: true, traceState: new TraceState('vendor=x,other=y') });
  for (const [p, provider] of providers.entries()) {
    const a = provider.getTracer('order-pipeline');
    const b = provider.getTracer('@opentelemetry/instrumentation-pg', '0.77.0');
    const c = provider.getTracer('bullmq', undefined, { schemaUrl: 'https://opentelemetry.io/schemas/1.30.0' });
    const root = a.startSpan('POST /orders', { kind: SpanKind.SERVER, attributes: { 'http.request.method': 'POST', 'http.route': '/orders', 'http.response.status_code': 201 } }, remote);
    const ctx = trace.setSpan(ROOT_CONTEXT, root);
    const children: Span[] = [];
    for (let i = 0; i < 3; i++) {
      children.push(
        a.startSpan(`place_orders ${i}`, { links: [{ context: root.spanContext() }, { context: trace.getSpanContext(remote)!, attributes: { why: 'batch', n: i } }], attributes: { 'batch.size': i + 1 } }, ctx),
      );
    }
    const q = b.startSpan('pg.query:SELECT', { kind: SpanKind.CLIENT, attributes: { 'db.query.text': `SELECT ${'x, '.repeat(200)}1 -- long: more than 16 KB once repeated`.repeat(30), 'server.port': 5432 } }, ctx);
    q.recordException(new Error('connection reset: ünïcode'));
    q.setStatus({ code: SpanStatusCode.ERROR, message: 'reset' });
    q.end();
    const numbers = c.startSpan('numbers', { kind: SpanKind.PRODUCER, attributes: { zero: 0, negative: -7, big: 2 ** 40, bigNegative: -(2 ** 40), max: Number.MAX_SAFE_INTEGER, double: 1.5, nan: Number.NaN, yes: true, no: false, emoji: '🙂 ok', strings: ['x', 'ÿ'], ints: [1, -2], empty: '', [`key ${p}`]: 'k'.repeat(300), e42: 'é'.repeat(42), e43: 'é'.repeat(43), snow60: '☃'.repeat(60), lone: '\ud800 lone', [`${'ü'.repeat(50)}`]: 'non-ASCII key', huge: 'h'.repeat(70_000 * (p + 1)) } });
    numbers.addEvent('an event', { at: 1 }, [1_700_000_000, 123_456_789]);
    numbers.addEvent('bare');
    numbers.end([1_700_000_001, 999_999_999]);
    c.startSpan('consumer', { kind: SpanKind.CONSUMER, root: true }).end();
    for (const s of children) {
      s.setStatus({ code: SpanStatusCode.OK });
      s.end();
    }
    root.end();
  }
  return memory.getFinishedSpans();
}

describe('OTLP/protobuf serializer and exporter (unit; the exporter against a local HTTP server)', () => {
  it('writes byte for byte what @opentelemetry/otlp-transformer writes', () => {
    const all = spans();
    assert.ok(all.length >= 14);
    const ours = Buffer.from(serializeSpans(all));
    const theirs = Buffer.from(ProtobufTraceSerializer.serializeRequest(all)!);
    assert.ok(ours.length > 2 * 65_536, 'longer than the writer\'s first buffer (it grows), with lengths of 3 bytes');
    assert.equal(ours.toString('hex'), theirs.toString('hex'));
  });

  it('each span alone, and an empty request', () => {
    for (const s of spans()) assert.equal(Buffer.from(serializeSpans([s])).toString('hex'), Buffer.from(ProtobufTraceSerializer.serializeRequest([s])!).toString('hex'), s.name);
    assert.equal(serializeSpans([]).length, 0);
  });

  it('reads a collector\'s answer as the transformer reads it, unknown fields and wire types skipped, a truncated one refused', () => {
    const varint = (n: number) => {
      const out: number[] = [];
      for (; n >= 0x80; n = Math.floor(n / 128)) out.push((n % 128) | 0x80);
      return [...out, n];
    };
    const field = (n: number, bytes: number[]) => [...varint((n << 3) | 2), ...varint(bytes.length), ...bytes];
    const text = (s: string) => [...Buffer.from(s, 'utf8')];
    const partial = (inner: number[]) => field(1, inner);
    const answers: number[][] = [
      [],
      partial([]),
      partial([...varint(1 << 3), ...varint(7)]),
      partial([...varint(1 << 3), ...varint(2 ** 40 + 3), ...field(2, text('quota exceeded: ünïcode ☃'))]),
      // Unknown fields of every wire type, before, inside and after; a field 1 of the wrong wire type.
      [...varint((9 << 3) | 0), ...varint(300), ...varint((8 << 3) | 1), 1, 2, 3, 4, 5, 6, 7, 8, ...varint((7 << 3) | 5), 1, 2, 3, 4, ...partial([...field(3, [1, 2]), ...varint((2 << 3) | 0), 5, ...field(2, text('x'))]), ...field(15, text('later'))],
      [...varint((1 << 3) | 0), 42],
      partial([...field(2, [0xff, 0xfe, 0x41])]), // not UTF-8: replacement characters, as TextDecoder makes them
      [...varint(2 ** 32 + ((1 << 3) | 2)), 2, ...varint(1 << 3), 7], // a tag past 2^32 (not canonical): field 1 all the same, as there
      partial([...varint(2 ** 32 + (1 << 3)), 9]),
    ];
    for (const a of answers) assert.deepEqual(deserializeResponse(Uint8Array.from(a)), ProtobufTraceSerializer.deserializeResponse(Uint8Array.from(a)), Buffer.from(a).toString('hex'));
    for (const truncated of [[...varint((1 << 3) | 2), 5, 1], [0x80], partial([...varint(1 << 3), 0x80])]) {
      assert.throws(() => deserializeResponse(Uint8Array.from(truncated)), /Truncated buffer/);
      assert.throws(() => ProtobufTraceSerializer.deserializeResponse(Uint8Array.from(truncated)), /Truncated buffer/);
    }
  });

  it('returns a copy: the next request does not overwrite the last', () => {
    const [a, b] = spans();
    const first = serializeSpans([a!]);
    const copy = Buffer.from(first).toString('hex');
    serializeSpans([b!, b!, b!]);
    assert.equal(Buffer.from(first).toString('hex'), copy);
  });

  it('the processor posts them as they end, in batches, to the URL with the OTEL_EXPORTER_OTLP_* headers and compression, as the SDK exporter does', async () => {
    const got: { path?: string; headers: http.IncomingHttpHeaders; body: Buffer }[] = [];
    const server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        got.push({ path: req.url, headers: req.headers, body: Buffer.concat(chunks) });
        res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end();
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const saved = { h: process.env.OTEL_EXPORTER_OTLP_HEADERS, c: process.env.OTEL_EXPORTER_OTLP_COMPRESSION };
    try {
      process.env.OTEL_EXPORTER_OTLP_HEADERS = 'x-tenant=shop';
      process.env.OTEL_EXPORTER_OTLP_COMPRESSION = 'gzip';
      const errors: unknown[] = [];
      const url = `http://127.0.0.1:${(server.address() as { port: number }).port}/v1/traces`;
      const processor = await protobufSpanProcessor(url, { maxExportBatchSize: 5, scheduledDelayMillis: 60_000, onError: (e) => errors.push(e) });
      const all = spans();
      const unsampled = { ...all[0]!, spanContext: () => ({ ...all[0]!.spanContext(), traceFlags: TraceFlags.NONE }) } as ReadableSpan;
      for (const s of [unsampled, ...all]) processor.onEnd(s);
      await processor.shutdown();
      processor.onEnd(all[0]!); // after shutdown: not exported
      await processor.forceFlush();
      assert.deepEqual(errors, []);
      // Batches of 5 as they ended (the unsampled one left out), the rest at shutdown.
      const batches: ReadableSpan[][] = [];
      for (let i = 0; i < all.length; i += 5) batches.push(all.slice(i, i + 5));
      assert.equal(got.length, batches.length);
      for (const [i, g] of got.entries()) {
        assert.equal(g.path, '/v1/traces');
        assert.equal(g.headers['content-type'], 'application/x-protobuf');
        assert.equal(g.headers['x-tenant'], 'shop');
        assert.equal(g.headers['content-encoding'], 'gzip');
        assert.ok(gunzipSync(g.body).equals(Buffer.from(ProtobufTraceSerializer.serializeRequest(batches[i]!)!)), `batch ${i}: the transformer's bytes`);
      }
    } finally {
      for (const [k, v] of [['OTEL_EXPORTER_OTLP_HEADERS', saved.h], ['OTEL_EXPORTER_OTLP_COMPRESSION', saved.c]] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  it('the processor sends a batch when its delay has passed, and says when an export fails', async () => {
    let requests = 0;
    const server = http.createServer((req, res) => {
      requests++;
      req.resume().on('end', () => res.writeHead(400).end());
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const errors: unknown[] = [];
      const processor = await protobufSpanProcessor(`http://127.0.0.1:${(server.address() as { port: number }).port}/v1/traces`, { maxExportBatchSize: 100, scheduledDelayMillis: 50, onError: (e) => errors.push(e) });
      processor.onEnd(spans()[0]!);
      const deadline = Date.now() + 5000;
      while (errors.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.equal(requests, 1, 'sent once its delay had passed, without a flush');
      assert.equal(errors.length, 1);
      await processor.shutdown();
      assert.equal(requests, 1, 'nothing left to send');
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
  it('the processor sends one export at a time and keeps at most maxQueueSize spans waiting; past that it drops them and says so', async () => {
    let open = 0;
    let most = 0;
    let requests = 0;
    const server = http.createServer((req, res) => {
      requests++;
      most = Math.max(most, ++open);
      req.resume().on('end', () =>
        setTimeout(() => {
          open--;
          res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end();
        }, 30),
      );
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const errors: unknown[] = [];
      const processor = await protobufSpanProcessor(`http://127.0.0.1:${(server.address() as { port: number }).port}/v1/traces`, { maxExportBatchSize: 10, scheduledDelayMillis: 60_000, maxQueueSize: 50, onError: (e) => errors.push(e) });
      const span = spans()[0]!;
      // 80 spans at once: the first batch goes, 50 wait (five batches), the other 20 are dropped.
      for (let i = 0; i < 80; i++) processor.onEnd(span);
      await processor.shutdown();
      assert.equal(most, 1, 'never two exports at once');
      assert.equal(requests, 6);
      assert.equal(errors.length, 1);
      assert.match(String(errors[0]), /20 spans dropped: more than 50 were waiting/);
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
});
