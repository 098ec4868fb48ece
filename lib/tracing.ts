import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import type { IncomingMessage } from 'node:http';
import type { Context, Link, Span, SpanKind, Tracer } from '@opentelemetry/api';
import type { Telemetry } from 'bullmq';
import type { Config } from './config.js';
import type { Logger } from './logger.js';

/**
 * OpenTelemetry traces, off unless an OTLP endpoint is configured
 * (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT). Off,
 * nothing of the SDK is imported: every helper below is a test of one
 * module variable and a direct call. On (startTracing, from runProcess),
 * spans go over OTLP/HTTP (protobuf or JSON), one service.name per process
 * kind, and the pg instrumentation and BullMQ's Queue telemetry are on.
 *
 * The shape of one order's trace (docs/operations.md, Tracing):
 *   web     POST /orders ─▶ order.place (its traceparent goes into its outbox row)
 *   relay   publish order-events (one per event, child of order.place)
 *   worker  process order-events (one per job, child of publish: traceJobs)
 * Work done for many items at once — a place_orders transaction, a relay
 * batch, a projector batch — is one batch span whose parent is its first
 * item's context and which links to every item; each item's span links
 * back to it. A batch of one is a plain parent/child chain.
 */

type Api = typeof import('@opentelemetry/api');

interface On {
  api: Api;
  tracer: Tracer;
  telemetry: Telemetry;
  shutdown: () => Promise<void>;
}

let on: On | undefined;

/** The active tracing, if any (tests look at it). */
export function tracingEnabled(): boolean {
  return on !== undefined;
}

/** The traces endpoint the configuration names, or undefined: tracing off. */
export function tracesEndpoint(config: Pick<Config, 'OTEL_SDK_DISABLED' | 'OTEL_TRACES_EXPORTER' | 'OTEL_EXPORTER_OTLP_ENDPOINT' | 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'>): string | undefined {
  if (config.OTEL_SDK_DISABLED || config.OTEL_TRACES_EXPORTER === 'none') return undefined;
  if (config.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) return config.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT;
  if (config.OTEL_EXPORTER_OTLP_ENDPOINT) return `${config.OTEL_EXPORTER_OTLP_ENDPOINT.replace(/\/+$/, '')}/v1/traces`;
  return undefined;
}

/**
 * Start the SDK for one process kind (web, relay, worker, …), when an
 * endpoint is configured. Call before the process opens any connection.
 */
export async function startTracing(proc: string, config: Config, log: Logger): Promise<void> {
  const url = tracesEndpoint(config);
  if (!url || on) return;
  const protocol = config.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL ?? config.OTEL_EXPORTER_OTLP_PROTOCOL;
  const [api, core, hooks, resources, sdk, exporter, pgI, bullmqOtel] = await Promise.all([
    import('@opentelemetry/api'),
    import('@opentelemetry/core'),
    import('@opentelemetry/context-async-hooks'),
    import('@opentelemetry/resources'),
    import('@opentelemetry/sdk-trace'),
    protocol === 'http/json' ? import('@opentelemetry/exporter-trace-otlp-http') : import('@opentelemetry/exporter-trace-otlp-proto'),
    import('@opentelemetry/instrumentation-pg'),
    import('bullmq-otel'),
  ]);
  const serviceName = config.OTEL_SERVICE_NAME ? `${config.OTEL_SERVICE_NAME}-${proc}` : proc;
  const provider = new sdk.TracerProvider({
    resource: resources.defaultResource().merge(resources.detectResources({ detectors: [resources.envDetector] })).merge(resources.resourceFromAttributes({ 'service.name': serviceName, 'service.namespace': 'order-pipeline' })),
    sampler: sampler(sdk, config),
    spanProcessors: [new sdk.BatchSpanProcessor({ exporter: new exporter.OTLPTraceExporter({ url }) })],
  });
  api.context.setGlobalContextManager(new hooks.AsyncLocalStorageContextManager().enable());
  api.propagation.setGlobalPropagator(new core.W3CTraceContextPropagator());
  api.trace.setGlobalTracerProvider(provider);

  // The process's modules are loaded already (ESM imports come first), so the
  // require hooks of the instrumentations would never fire: their patches are
  // applied here to the loaded pg (CommonJS: one copy, shared).
  // Only statements and commands made inside a span get one of their own.
  // (pg-pool is not patched: slonik pools pg.Client connections itself.) ioredis is not instrumented:
  // BullMQ's spans say what its Redis commands do, and a span per job per command doubled the relay's
  // CPU per event (docs/operations.md, Tracing).
  const pgInstrumentation = new pgI.PgInstrumentation({ requireParentSpan: true, enhancedDatabaseReporting: false });
  pgInstrumentation.setTracerProvider(provider);
  for (const def of pgInstrumentation.getModuleDefinitions()) if (def.name === 'pg') def.patch?.(require(def.name), packageVersion(def.name));

  const stopping = { done: false };
  on = {
    api,
    tracer: api.trace.getTracer('order-pipeline'),
    telemetry: new bullmqOtel.BullMQOtel({ tracerName: 'bullmq' }) as unknown as Telemetry,
    shutdown: async () => {
      if (stopping.done) return;
      stopping.done = true;
      // Bounded: a collector that does not answer must not push the exit past the shutdown deadline.
      const bound = Math.min(2000, config.SHUTDOWN_TIMEOUT_MS / 4);
      const flushed = await Promise.race([
        provider.shutdown().then(
          () => true,
          (err: unknown) => (log.warn({ err: (err as Error).message }, 'could not export the last spans'), true),
        ),
        new Promise<false>((r) => setTimeout(() => r(false), bound).unref()),
      ]);
      if (!flushed) log.warn({ ms: bound }, 'the last spans were not exported in time; exiting without them');
    },
  };
  log.info({ endpoint: url, protocol: protocol ?? 'http/protobuf', service: serviceName }, 'tracing on');
}

const require = createRequire(import.meta.url);

/** The version of an installed package (its package.json, found from its entry point: not every package exports it). */
function packageVersion(name: string): string | undefined {
  for (let dir = path.dirname(require.resolve(name)); dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const file = path.join(dir, 'package.json');
    if (!fs.existsSync(file)) continue;
    const pkg = JSON.parse(fs.readFileSync(file, 'utf8')) as { name?: string; version?: string };
    if (pkg.name === name) return pkg.version;
  }
  return undefined;
}

/** Export what is buffered and stop (the process is about to exit). */
export async function stopTracing(): Promise<void> {
  await on?.shutdown();
}

function sampler(sdk: typeof import('@opentelemetry/sdk-trace'), config: Config) {
  const ratio = config.OTEL_TRACES_SAMPLER_ARG ?? 1;
  const root = (name: string) => (name.endsWith('always_off') ? new sdk.AlwaysOffSampler() : name.endsWith('traceidratio') ? new sdk.TraceIdRatioBasedSampler(ratio) : new sdk.AlwaysOnSampler());
  const name = config.OTEL_TRACES_SAMPLER;
  return name.startsWith('parentbased_') ? new sdk.ParentBasedSampler({ root: root(name) }) : root(name);
}

/** BullMQ's `telemetry` option for a Queue (the relay's addBulk span): undefined when tracing is off. */
export function bullmqTelemetry(): Telemetry | undefined {
  return on?.telemetry;
}

/**
 * W3C traceparent of the active span, when tracing is on and that span is
 * sampled (an unsampled trace records nothing downstream: its outbox row and
 * job carry none, and its statements are the plain ones).
 */
export function currentTraceparent(): string | undefined {
  if (!on) return undefined;
  const active = on.api.trace.getActiveSpan();
  if (!active || !(active.spanContext().traceFlags & on.api.TraceFlags.SAMPLED)) return undefined;
  const carrier: { traceparent?: string } = {};
  on.api.propagation.inject(on.api.context.active(), carrier);
  return carrier.traceparent;
}

function contextOf(o: On, traceparent: string | null | undefined): Context | undefined {
  if (!traceparent) return undefined;
  const ctx = o.api.propagation.extract(o.api.ROOT_CONTEXT, { traceparent });
  return o.api.trace.getSpanContext(ctx) ? ctx : undefined;
}

/** Run fn inside a new span (a child of the active one); errors are recorded on it. */
export async function inSpan<T>(name: string, fn: (span: Span | undefined) => Promise<T>, opts: { kind?: SpanKind; parent?: Context; links?: Link[] } = {}): Promise<T> {
  if (!on) return fn(undefined);
  const o = on;
  const span = o.tracer.startSpan(name, { kind: opts.kind, links: opts.links }, opts.parent);
  try {
    return await o.api.context.with(o.api.trace.setSpan(opts.parent ?? o.api.context.active(), span), () => fn(span));
  } catch (err) {
    failed(o, span, err);
    throw err;
  } finally {
    span.end();
  }
}

function failed(o: On, span: Span, err: unknown): void {
  span.recordException(err instanceof Error ? err : String(err));
  span.setStatus({ code: o.api.SpanStatusCode.ERROR, message: (err as Error)?.message });
}

/** Each batched item's span (the one active when it was handed in), or the remote context its traceparent names (see traced). */
const itemSpans = new WeakMap<object, Span | Context>();

/**
 * Remember, for `item` about to join a batch, the active span — or, given a
 * traceparent (an event carried in a job with others), that context: the
 * batch links to it, without a link back. No-op when off.
 */
export function traced<T extends object>(item: T, traceparent?: string): T {
  if (on) {
    const from = traceparent === undefined ? on.api.trace.getActiveSpan() : contextOf(on, traceparent);
    if (from) itemSpans.set(item, from);
  }
  return item;
}

/**
 * Run one batch's work inside a batch span: its parent is the first item's
 * span, it links to every item's span, and every item's span links back to
 * it. `items` are what traced() was given.
 */
export function inBatchSpan<T>(name: string, items: readonly object[], fn: () => Promise<T>, attributes: Record<string, string | number> = {}): Promise<T> {
  if (!on) return fn();
  const o = on;
  const contexts = items.flatMap((item): { ctx: Context; span: Span | undefined }[] => {
    const from = itemSpans.get(item);
    if (!from) return [];
    return 'spanContext' in from ? [{ ctx: o.api.trace.setSpan(o.api.ROOT_CONTEXT, from), span: from }] : [{ ctx: from, span: undefined }];
  });
  return inSpan(
    name,
    async (span) => {
      span?.setAttributes({ 'batch.size': items.length, ...attributes });
      if (span) for (const c of contexts) c.span?.addLink({ context: span.spanContext() });
      return fn();
    },
    { parent: contexts[0]?.ctx ?? o.api.ROOT_CONTEXT, links: contexts.map((c) => ({ context: o.api.trace.getSpanContext(c.ctx)! })) },
  );
}

/**
 * The relay's spans for one batch of outbox rows: a batch span (parent: the
 * first row's traceparent; links to every row's) and, for each row, a
 * PRODUCER span that continues the row's own trace and links to the batch.
 * `traceparent(i)` is what row i's job carries; `run` wraps the enqueueing.
 */
export interface PublishSpans {
  traceparent(i: number): string | undefined;
  run<T>(fn: () => Promise<T>): Promise<T>;
}

const NO_PUBLISH: PublishSpans = { traceparent: () => undefined, run: (fn) => fn() };

export function startPublish(queueName: string, rows: readonly { id: number | string; traceparent?: string | null }[]): PublishSpans {
  if (!on || rows.length === 0) return NO_PUBLISH;
  const o = on;
  const parents = rows.map((r) => contextOf(o, r.traceparent));
  // Spans only for events whose trace is sampled; an unsampled traceparent is passed on as it is (the
  // worker's spans follow it, unrecorded), an event written outside any trace gets none (cost: docs/operations.md).
  const sampled = parents.map((ctx) => (ctx && o.api.trace.getSpanContext(ctx)!.traceFlags & o.api.TraceFlags.SAMPLED ? ctx : undefined));
  const linked = sampled.flatMap((ctx) => (ctx ? [{ context: o.api.trace.getSpanContext(ctx)! }] : []));
  const batch = o.tracer.startSpan('relay.batch', { links: linked, attributes: { 'batch.size': rows.length } }, sampled.find((p) => p !== undefined) ?? o.api.ROOT_CONTEXT);
  const batchCtx = o.api.trace.setSpan(o.api.ROOT_CONTEXT, batch);
  const publish = sampled.map((ctx, i) =>
    ctx
      ? o.tracer.startSpan(
          `publish ${queueName}`,
          { kind: o.api.SpanKind.PRODUCER, links: [{ context: batch.spanContext() }], attributes: { 'messaging.system': 'bullmq', 'messaging.destination.name': queueName, 'messaging.message.id': String(rows[i]!.id) } },
          ctx,
        )
      : undefined,
  );
  const traceparents = publish.map((s, i) => {
    if (!s) return parents[i] ? (rows[i]!.traceparent ?? undefined) : undefined;
    const carrier: { traceparent?: string } = {};
    o.api.propagation.inject(o.api.trace.setSpan(o.api.ROOT_CONTEXT, s), carrier);
    return carrier.traceparent;
  });
  const spans = publish.filter((s) => s !== undefined);
  return {
    traceparent: (i) => traceparents[i],
    run: async (fn) => {
      try {
        return await o.api.context.with(batchCtx, fn);
      } catch (err) {
        for (const s of [batch, ...spans]) failed(o, s, err);
        throw err;
      } finally {
        for (const s of spans) s.end();
        batch.end();
      }
    },
  };
}

/**
 * Wrap a BullMQ processor: a job carrying a traceparent (`data.traceparent`,
 * put there by the relay) is processed inside a CONSUMER span continuing that
 * trace; a job without one, or whose trace is not sampled, costs nothing. Used instead of the Worker's own
 * `telemetry` option, whose three spans and context switches per job, traced
 * or not, cost the worker 45 % more CPU per event (docs/operations.md, Tracing).
 */
export function traceJobs<J extends { id?: string; data: { traceparent?: string } }, A extends unknown[], R>(queueName: string, processor: (job: J, ...rest: A) => Promise<R>): (job: J, ...rest: A) => Promise<R> {
  if (!on) return processor;
  const o = on;
  return (job, ...rest) => {
    const parent = contextOf(o, job.data?.traceparent);
    // An unsampled trace records nothing downstream either: no span, no context to carry.
    if (!parent || !(o.api.trace.getSpanContext(parent)!.traceFlags & o.api.TraceFlags.SAMPLED)) return processor(job, ...rest);
    return inSpan(`process ${queueName}`, async (span) => {
      span?.setAttributes({ 'messaging.system': 'bullmq', 'messaging.destination.name': queueName, 'messaging.operation.type': 'process', 'messaging.message.id': String(job.id) });
      return processor(job, ...rest);
    }, { kind: o.api.SpanKind.CONSUMER, parent });
  };
}

/**
 * The span of one HTTP request (SERVER), continuing a traceparent the client
 * sent; undefined when tracing is off. `end` names it after the route.
 */
export function requestSpan(req: IncomingMessage): { run<T>(fn: () => Promise<T>): Promise<T>; end(route: string, status: number): void } | undefined {
  if (!on) return undefined;
  const o = on;
  const parent = o.api.propagation.extract(o.api.ROOT_CONTEXT, req.headers);
  const method = req.method ?? 'GET';
  const span = o.tracer.startSpan(method, { kind: o.api.SpanKind.SERVER, attributes: { 'http.request.method': method } }, parent);
  const ctx = o.api.trace.setSpan(parent, span);
  return {
    run: (fn) => o.api.context.with(ctx, fn),
    end: (route, status) => {
      span.updateName(`${method} ${route}`);
      span.setAttributes({ 'http.route': route, 'http.response.status_code': status });
      if (status >= 500) span.setStatus({ code: o.api.SpanStatusCode.ERROR });
      span.end();
    },
  };
}
