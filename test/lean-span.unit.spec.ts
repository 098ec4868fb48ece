import assert from 'node:assert/strict';
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, TraceFlags, trace, type Attributes, type Context, type Span, type SpanContext } from '@opentelemetry/api';
import { cleanAttributes, cleanSimpleAttributes, isTracingSuppressed, maybeAddAttribute, suppressTracing, TraceState } from '@opentelemetry/core';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { AlwaysOffSampler, AlwaysOnSampler, InMemorySpanExporter, ParentBasedSampler, SimpleSpanProcessor, TraceIdRatioBasedSampler, TracerProvider, type ReadableSpan, type Sampler, type SpanLimits } from '@opentelemetry/sdk-trace';
import { ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import { serializeSpans } from '../lib/otlp-proto.js';
import { startLeanSpan, type LeanSpans } from '../lib/lean-span.js';

const resource = resourceFromAttributes({ 'service.name': 'web' });

/** An SDK tracer and a lean-span setup with the same sampler, limits and exporter. */
function both(sampler: Sampler = new AlwaysOnSampler(), limits: SpanLimits = {}) {
  const memory = new InMemorySpanExporter();
  const processor = new SimpleSpanProcessor({ exporter: memory });
  const provider = new TracerProvider({ resource, sampler, spanLimits: limits, spanProcessors: [processor] });
  const tracer = provider.getTracer('order-pipeline');
  const setup: LeanSpans = {
    sampler,
    processor,
    resource,
    scope: (tracer as unknown as { instrumentationScope: LeanSpans['scope'] }).instrumentationScope,
    limits: (tracer as unknown as { _spanLimits: LeanSpans['limits'] })._spanLimits,
    attributeRules: { maybeAddAttribute, cleanAttributes, cleanSimpleAttributes },
    suppressed: isTracingSuppressed,
    parentOf: (ctx) => {
      const sc = trace.getSpanContext(ctx);
      return sc && trace.isSpanContextValid(sc) ? sc : undefined;
    },
  };
  const sdkSpan = (attributes: Attributes, parent: Context = ROOT_CONTEXT) => tracer.startSpan('POST', { kind: SpanKind.SERVER, attributes }, parent);
  const ourSpan = (attributes: Attributes, parent: Context = ROOT_CONTEXT) => startLeanSpan(setup, 'POST', SpanKind.SERVER, parent, attributes);
  return { memory, tracer, setup, sdkSpan, ourSpan };
}

const remote = (flags: number): Context =>
  trace.setSpanContext(ROOT_CONTEXT, { traceId: '0af7651916cd43dd8448eb211c80319c', spanId: 'b7ad6b7169203331', traceFlags: flags, isRemote: true, traceState: new TraceState('vendor=x') });

/** What an exporter sees of a span, but its ids and times (random, and the clock's). */
function observable(s: ReadableSpan) {
  return {
    name: s.name,
    kind: s.kind,
    traceFlags: s.spanContext().traceFlags,
    traceState: s.spanContext().traceState?.serialize(),
    parent: s.parentSpanContext,
    attributes: s.attributes,
    droppedAttributesCount: s.droppedAttributesCount,
    events: s.events.map((e) => ({ name: e.name, attributes: e.attributes, droppedAttributesCount: e.droppedAttributesCount ?? 0 })),
    droppedEventsCount: s.droppedEventsCount,
    links: s.links,
    droppedLinksCount: s.droppedLinksCount,
    status: s.status,
    ended: s.ended,
    resource: s.resource,
    scope: s.instrumentationScope,
  };
}

/** The same calls on a span: what a request's handling does to its span, and what it must not change once ended. */
function exercise(span: Span, link: SpanContext, error: Error): void {
  span.setAttribute('order.id', 42);
  span.setAttributes({ 'outbox.event_id': 7, flag: true, list: ['a', 'b'], dropped: undefined as unknown as string, nothing: null as unknown as string });
  span.setAttribute('order.id', 43); // an existing key: replaced
  span.addEvent('with attributes', { n: 1 });
  span.addEvent('with a time', [1_700_000_000, 5]);
  span.addLink({ context: link });
  span.setStatus({ code: SpanStatusCode.UNSET }); // changes nothing
  span.recordException(error);
  span.recordException('a string');
  span.setStatus({ code: SpanStatusCode.ERROR, message: 'failed' });
  span.updateName('POST /orders');
  assert.equal(span.isRecording(), true);
  span.end();
  assert.equal(span.isRecording(), false);
  // After end(), nothing changes (the SDK warns).
  span.setAttribute('late', 1);
  span.addLink({ context: link });
  span.addEvent('late');
  span.updateName('late');
  span.setStatus({ code: SpanStatusCode.OK });
  span.end();
}

describe('lean span (unit): made without the SDK, observed as an SDK span', () => {
  const link: SpanContext = { traceId: '4bf92f3577b34da6a3ce929d0e0e4736', spanId: '00f067aa0ba902b7', traceFlags: TraceFlags.SAMPLED };

  it('the same calls leave what the SDK span leaves, exported once, and serialize as the transformer does', () => {
    const { memory, sdkSpan, ourSpan } = both();
    for (const parent of [ROOT_CONTEXT, remote(TraceFlags.SAMPLED)]) {
      memory.reset();
      const theirs = sdkSpan({ 'http.request.method': 'POST' }, parent);
      const ours = ourSpan({ 'http.request.method': 'POST' }, parent);
      assert.ok(ours);
      const error = Object.assign(new Error('no stock'), { code: 'P0001' });
      exercise(theirs, link, error);
      exercise(ours, link, error);
      const [a, b] = memory.getFinishedSpans();
      assert.equal(memory.getFinishedSpans().length, 2, 'each exported once');
      assert.deepEqual(observable(b!), observable(a!));
      assert.equal(b!.events.length, 4);
      assert.equal(b!.status.code, SpanStatusCode.ERROR);
      // Its times: start before end, duration their difference.
      const ns = (t: [number, number]) => BigInt(t[0]) * 1_000_000_000n + BigInt(t[1]);
      assert.ok(ns(b!.endTime) >= ns(b!.startTime));
      assert.equal(ns(b!.duration), ns(b!.endTime) - ns(b!.startTime));
      assert.ok(Math.abs(Number(ns(b!.startTime) / 1_000_000n) - Date.now()) < 5000, 'start time is epoch time');
      assert.deepEqual(b!.events[1]!.time, [1_700_000_000, 5]);
      // Our serializer and the transformer write the same bytes for it.
      assert.ok(Buffer.from(serializeSpans([b!])).equals(Buffer.from(ProtobufTraceSerializer.serializeRequest([b!])!)));
      if (parent !== ROOT_CONTEXT) assert.equal(b!.spanContext().traceId, trace.getSpanContext(parent)!.traceId);
    }
  });

  it('times as the SDK takes them: the start from the wall clock, the rest monotonic from it; a performance time or a Date as given; an end before the start is the start', async () => {
    const { memory, sdkSpan, ourSpan } = both();
    const ns = (t: readonly [number, number]) => BigInt(t[0]) * 1_000_000_000n + BigInt(t[1]);
    const ours = ourSpan({})!;
    const theirs = sdkSpan({});
    await new Promise((r) => setTimeout(r, 20));
    const perf = performance.now();
    const date = new Date(Date.now() + 1000);
    for (const s of [theirs, ours]) {
      s.addEvent('performance time', perf);
      s.addEvent('a date', date);
      s.end();
    }
    const [a, b] = memory.getFinishedSpans();
    const close = (x: readonly [number, number], y: readonly [number, number], what: string) => assert.ok(Math.abs(Number(ns(x) - ns(y))) < 5_000_000, `${what}: within 5 ms of the SDK's`);
    close(b!.startTime, a!.startTime, 'start');
    close(b!.endTime, a!.endTime, 'end');
    close(b!.events[0]!.time, a!.events[0]!.time, 'an event at a performance time');
    assert.deepEqual(b!.events[1]!.time, a!.events[1]!.time);
    assert.ok(ns(b!.duration) >= 20_000_000n, 'the 20 ms it lasted');
    const early = ourSpan({})!;
    early.end(new Date(Date.now() - 60_000));
    assert.deepEqual(memory.getFinishedSpans()[2]!.endTime, early.startTime);
    assert.deepEqual(early.duration, [0, 0]);
    // The SDK's odd cases: a time given twice (the second wins), none given as null, an exception whose code is 0.
    memory.reset();
    for (const s of [sdkSpan({}), ourSpan({})!]) {
      s.addEvent('two times', [1_700_000_000, 1], [1_700_000_002, 2]);
      s.recordException(Object.assign(new Error('zero'), { code: 0, stack: 'at x' }));
      s.end(null as unknown as undefined);
    }
    const [c, d] = memory.getFinishedSpans();
    assert.deepEqual(observable(d!), observable(c!));
    assert.deepEqual(d!.events[0]!.time, [1_700_000_002, 2]);
    close(d!.endTime, c!.endTime, 'an end at null');
  });

  it('of every kind, the child of a local span, with links given at the start (past the limit, the last ones kept)', () => {
    const { memory, tracer, setup } = both(new ParentBasedSampler({ root: new AlwaysOnSampler() }), { linkCountLimit: 3 });
    const parentSpan = tracer.startSpan('request');
    const parent = trace.setSpan(ROOT_CONTEXT, parentSpan);
    const links = [1, 2, 3, 4, 5].map((i) => ({ context: { ...link, spanId: `000000000000000${i}` }, ...(i === 5 ? { attributes: { why: 'batch' } } : {}) }));
    for (const kind of [SpanKind.INTERNAL, SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.CLIENT, SpanKind.SERVER]) {
      memory.reset();
      tracer.startSpan('place_orders', { kind, links, attributes: { 'batch.size': 5 } }, parent).end();
      const ours = startLeanSpan(setup, 'place_orders', kind, parent, { 'batch.size': 5 }, links);
      assert.ok(ours);
      ours.end();
      const [a, b] = memory.getFinishedSpans();
      assert.deepEqual(observable(b!), observable(a!), `kind ${kind}`);
      assert.equal(b!.spanContext().traceId, parentSpan.spanContext().traceId);
      assert.deepEqual(b!.parentSpanContext, parentSpan.spanContext());
      assert.deepEqual(b!.links.map((l) => l.context.spanId.slice(-1)), ['3', '4', '5']);
      assert.equal(b!.droppedLinksCount, 2);
    }
  });

  it('the configured sampler decides, the parent\'s flag included; in a context that suppresses tracing there is none, as with the SDK', () => {
    assert.equal(both(new AlwaysOffSampler()).ourSpan({}), undefined);
    const always = both();
    assert.equal(always.ourSpan({}, suppressTracing(ROOT_CONTEXT)), undefined);
    assert.equal(always.sdkSpan({}, suppressTracing(ROOT_CONTEXT)).isRecording(), false);
    const parentBased = both(new ParentBasedSampler({ root: new AlwaysOnSampler() }));
    assert.equal(parentBased.ourSpan({}, remote(TraceFlags.NONE)), undefined, 'an unsampled parent: not sampled');
    assert.ok(parentBased.ourSpan({}, remote(TraceFlags.SAMPLED)));
    const tenth = both(new TraceIdRatioBasedSampler(0.1));
    let sampled = 0;
    for (let i = 0; i < 5000; i++) if (tenth.ourSpan({})) sampled++;
    assert.ok(sampled > 350 && sampled < 650, `about 1 in 10 sampled (${sampled} of 5000)`);
  });

  it('ids are valid, random and not reused; limits drop and count as the SDK does', () => {
    const { memory, sdkSpan, ourSpan } = both(new AlwaysOnSampler(), { attributeCountLimit: 3, attributeValueLengthLimit: 4, eventCountLimit: 2, linkCountLimit: 1 });
    const seen = new Set<string>();
    for (let i = 0; i < 2000; i++) {
      const { traceId, spanId } = ourSpan({})!.spanContext();
      assert.match(traceId, /^[0-9a-f]{32}$/);
      assert.match(spanId, /^[0-9a-f]{16}$/);
      assert.ok(trace.isSpanContextValid({ traceId, spanId, traceFlags: 1 }));
      assert.ok(!seen.has(traceId) && !seen.has(spanId));
      seen.add(traceId).add(spanId);
    }
    memory.reset();
    for (const s of [sdkSpan({ a: 'long value' }), ourSpan({ a: 'long value' })!]) {
      s.setAttributes({ b: ['longer', 'ok'], c: 1, d: 2, e: 3 });
      for (const e of ['e1', 'e2', 'e3']) s.addEvent(e);
      s.addLinks([{ context: link }, { context: link }]);
      s.end();
    }
    const [a, b] = memory.getFinishedSpans();
    assert.deepEqual(observable(b!), observable(a!));
    assert.deepEqual(b!.attributes, { a: 'long', b: ['long', 'ok'], c: 1 });
    assert.deepEqual([b!.droppedAttributesCount, b!.droppedEventsCount, b!.droppedLinksCount], [2, 1, 1]);
  });
});
