import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import type { IncomingMessage } from 'node:http';
import type { Context, Link, Span, SpanContext, SpanKind, Tracer } from '@opentelemetry/api';
import type { SpanProcessor } from '@opentelemetry/sdk-trace';
import type { Telemetry } from 'bullmq';
import type { Config } from './config.js';
import { startLeanSpan, type LeanSpans } from './lean-span.js';
import type { Logger } from './logger.js';

/**
 * OpenTelemetry traces, off unless an OTLP endpoint is configured
 * (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT). Off,
 * nothing of the SDK is imported: every helper below is a test of one
 * module variable and a direct call. On (startTracing, from runProcess),
 * spans go over OTLP/HTTP (protobuf or JSON), one service.name per process
 * kind, and the pg instrumentation and BullMQ's Queue telemetry are on. The
 * spans made here are lean spans (lib/lean-span.ts: the SDK's Tracer costs
 * several times as much); the instrumentations' are the SDK's.
 *
 * The shape of one order's trace (docs/operations.md, Tracing):
 *   web     POST /orders (its traceparent goes into its outbox row) ─▶ place_orders
 *   relay   publish order-events (one per claim and queue; child of its first sampled event's request)
 *   worker  process order-events (one per job: traceJobs) ─▶ projector.batch
 * Work done for many items at once — a place_orders transaction (of
 * orders), a relay batch (of outbox rows), a projector batch (of jobs'
 * events) — is one batch span whose parent is its first item's context and
 * which links to the items (up to MAX_LINKS; a job's events, once); an item
 * with a span of its own (an order's request, a job's) links back to it. A
 * batch of one is a plain parent/child chain.
 */

type Api = typeof import('@opentelemetry/api');

interface On {
  api: Api;
  /** A context in which the SDK records nothing (@opentelemetry/core's suppressTracing of the root context). */
  untraced: Context;
  /** @opentelemetry/core's suppressTracing: the same context, in which nothing is recorded. */
  suppress: (ctx: Context) => Context;
  /** @opentelemetry/core's traceparent parser (the W3C propagator's, without a Context made per call). */
  parseTraceParent: (traceparent: string) => SpanContext | null;
  /** What our own spans are made with (lib/lean-span.ts): the provider's sampler, processor, resource, scope and limits. */
  spans: LeanSpans;
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
  const [api, core, hooks, resources, sdk, processor, pgI, bullmqOtel] = await Promise.all([
    import('@opentelemetry/api'),
    import('@opentelemetry/core'),
    import('@opentelemetry/context-async-hooks'),
    import('@opentelemetry/resources'),
    import('@opentelemetry/sdk-trace'),
    spanProcessor(url, protocol, config, log),
    import('@opentelemetry/instrumentation-pg'),
    import('bullmq-otel'),
  ]);
  const serviceName = config.OTEL_SERVICE_NAME ? `${config.OTEL_SERVICE_NAME}-${proc}` : proc;
  const resource = resources.defaultResource().merge(resources.detectResources({ detectors: [resources.envDetector] })).merge(resources.resourceFromAttributes({ 'service.name': serviceName, 'service.namespace': 'order-pipeline' }));
  const rootSampler = sampler(sdk, config);
  const provider = new sdk.TracerProvider({ resource, sampler: rootSampler, spanProcessors: [processor] });
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
  const tracer = provider.getTracer('order-pipeline');
  on = {
    api,
    untraced: core.suppressTracing(api.ROOT_CONTEXT),
    suppress: core.suppressTracing,
    parseTraceParent: core.parseTraceParent,
    spans: {
      sampler: rootSampler,
      processor,
      resource,
      // The tracer's own scope object: the exporter groups spans by scope, by identity.
      scope: (tracer as { instrumentationScope?: LeanSpans['scope'] }).instrumentationScope ?? { name: 'order-pipeline' },
      limits: spanLimits(tracer),
      attributeRules: core,
      suppressed: core.isTracingSuppressed,
      parentOf: (ctx) => {
        const sc = api.trace.getSpanContext(ctx);
        return sc && api.trace.isSpanContextValid(sc) ? sc : undefined;
      },
    },
    telemetry: onlyInSampledTraces(api, core.suppressTracing, new bullmqOtel.BullMQOtel({ tracerName: 'bullmq' })),
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

/**
 * Where ended spans go: batches posted over OTLP/HTTP, as protobuf by our
 * own processor (lib/otlp-proto.ts: each span encoded as it ends), as JSON
 * by the SDK's BatchSpanProcessor and OTLPTraceExporter.
 */
async function spanProcessor(url: string, protocol: string | undefined, config: Config, log: Logger): Promise<SpanProcessor> {
  const batch = { maxExportBatchSize: config.OTEL_BSP_MAX_EXPORT_BATCH_SIZE, scheduledDelayMillis: config.OTEL_BSP_SCHEDULE_DELAY };
  if (protocol === 'http/json') {
    const [sdk, json] = await Promise.all([import('@opentelemetry/sdk-trace'), import('@opentelemetry/exporter-trace-otlp-http')]);
    return new sdk.BatchSpanProcessor({ exporter: new json.OTLPTraceExporter({ url }), ...batch });
  }
  let warned = 0;
  const onError = (err: unknown) => {
    // At most one line a minute: a collector that is down fails every batch.
    if (Date.now() - warned < 60_000) return;
    warned = Date.now();
    log.warn({ err: (err as Error)?.message ?? String(err), endpoint: url }, 'could not export spans (they are dropped)');
  };
  return (await import('./otlp-proto.js')).protobufSpanProcessor(url, { ...batch, onError });
}

/**
 * BullMQ's Queue telemetry, recording only inside a sampled trace: BullMQ
 * opens a span for every Queue operation (addBulk, close, retryJobs, …),
 * and outside a trace each became a trace of its own — an `addBulk` for
 * every claim of untraced or unsampled events, a `close` at every exit.
 * Outside a sampled span, its spans are started with tracing suppressed
 * (the SDK then makes a non-recording span and records nothing).
 */
function onlyInSampledTraces(api: Api, suppress: (ctx: Context) => Context, otel: { tracer: { startSpan(name: string, options: unknown, ctx?: Context): unknown } }): Telemetry {
  const tracer = otel.tracer;
  otel.tracer = {
    startSpan: (name, options, ctx) => {
      const parent = ctx ?? api.context.active();
      return tracer.startSpan(name, options, isSampled(api, api.trace.getSpanContext(parent)) ? parent : suppress(parent));
    },
  };
  return otel as unknown as Telemetry;
}

/**
 * The span limits the SDK's tracer holds (this SDK reads none from the
 * environment: 128 attributes, events and links a span, values of any
 * length): lean spans (lib/lean-span.ts) apply the same. A private field of
 * the SDK's Tracer; should it go, those defaults.
 */
function spanLimits(tracer: Tracer): LeanSpans['limits'] {
  const defaults = { attributeCountLimit: 128, attributeValueLengthLimit: Infinity, eventCountLimit: 128, linkCountLimit: 128, attributePerEventCountLimit: 128, attributePerLinkCountLimit: 128 };
  return { ...defaults, ...(tracer as { _spanLimits?: Partial<LeanSpans['limits']> })._spanLimits };
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
  const span = on && sampledActiveSpan(on);
  return span ? traceparentOf(span.spanContext()) : undefined;
}

/**
 * The W3C traceparent of a span context, as the W3C propagator writes it
 * (without its checks: a span of this SDK has valid ids, and nothing here
 * suppresses tracing).
 */
function traceparentOf(sc: { traceId: string; spanId: string; traceFlags: number }): string {
  return `00-${sc.traceId}-${sc.spanId}-${(sc.traceFlags & 0xff).toString(16).padStart(2, '0')}`;
}

/** Whether a span context (if any) is of a sampled trace. */
function isSampled<S extends { traceFlags: number }>(api: Api, sc: S | undefined): sc is S {
  return sc !== undefined && (sc.traceFlags & api.TraceFlags.SAMPLED) !== 0;
}

/** The active span, if it is sampled (an unsampled trace records nothing downstream). */
function sampledActiveSpan(o: On): Span | undefined {
  const active = o.api.trace.getActiveSpan();
  return active && isSampled(o.api, active.spanContext()) ? active : undefined;
}

/**
 * Run fn inside a new span (a child of `parent`, by default the active
 * one); errors are recorded on it. When the sampler does not sample it, fn
 * runs in `parent` with tracing suppressed: it records nothing (as an unsampled trace does downstream).
 */
export async function inSpan<T>(name: string, fn: (span: Span | undefined) => Promise<T>, opts: { kind?: SpanKind; parent?: Context; links?: Link[] } = {}): Promise<T> {
  if (!on) return fn(undefined);
  const o = on;
  const parent = opts.parent ?? o.api.context.active();
  const span = startLeanSpan(o.spans, name, opts.kind ?? o.api.SpanKind.INTERNAL, parent, undefined, opts.links);
  if (!span) return o.api.context.with(o.suppress(parent), () => fn(undefined));
  try {
    return await o.api.context.with(o.api.trace.setSpan(parent, span), () => fn(span));
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

/**
 * Links a batch span makes to its items, at most: the SDK's default span
 * limit (OTEL_SPAN_LINK_COUNT_LIMIT, 128), past which it drops them anyway.
 * Items past it still link back to the batch.
 */
const MAX_LINKS = 128;

/**
 * Each batched item's span (the one active when it was handed in: an
 * order's request, an event's job): a symbol-keyed property of the item
 * (JSON leaves it out). A WeakMap cost the web and the worker more: one
 * entry per order or event, and the collector's work on them.
 */
const ITEM_SPAN = Symbol('tracing.itemSpan');
type Traced = { [ITEM_SPAN]?: Span };

/** Remember, for `item` about to join a batch, the active span (if sampled): the batch links to it and it back. No-op when off. */
export function traced<T extends object>(item: T): T {
  if (on) {
    // An unsampled span is not an item's span (nor a batch's parent).
    const span = sampledActiveSpan(on);
    if (span && Object.isExtensible(item)) (item as Traced)[ITEM_SPAN] = span; // a frozen item goes unlinked
  }
  return item;
}

/** The span context of a sampled traceparent, or undefined (none, malformed, or not sampled: an unsampled trace records nothing downstream). */
function sampledSpanContext(o: On, traceparent: string | null | undefined): SpanContext | undefined {
  // What the W3C propagator extracts, without the Context it makes around it (the relay reads a claim's worth at once).
  const sc = traceparent ? o.parseTraceParent(traceparent) : null;
  if (!sc || !isSampled(o.api, sc)) return undefined;
  sc.isRemote = true;
  return sc;
}

/**
 * Run one batch's work inside a batch span: its parent is the first item's
 * span, it links to the items' spans (the first MAX_LINKS), and every item's
 * own span links back to it. `items` are what traced() was given. A batch
 * with no sampled item (orders of unsampled traces, events written outside
 * a trace) has no span, and its statements none either (it runs outside any
 * span): work outside a sampled trace records nothing, as in the relay and
 * the job wrapper, instead of starting a trace of its own.
 */
export function inBatchSpan<T>(name: string, items: readonly object[], fn: () => Promise<T>, attributes: Record<string, string | number> = {}): Promise<T> {
  if (!on) return fn();
  const o = on;
  const links: Link[] = [];
  // The events of one job share its span: it is linked (and links back) once.
  const spans = new Set<Span>();
  for (const item of items) {
    const span = (item as Traced)[ITEM_SPAN];
    if (span === undefined || spans.has(span)) continue;
    spans.add(span);
    if (links.length < MAX_LINKS) links.push({ context: span.spanContext() });
  }
  if (links.length === 0) return o.api.context.with(o.untraced, fn);
  return inSpan(
    name,
    async (span) => {
      span?.setAttributes({ 'batch.size': items.length, ...attributes });
      // An item's span may have ended already (its client went away): the SDK answers a link to an ended span with
      // an Error built for a warning, a cost the CPU profile of a load showed; such an item goes without its link back.
      if (span) for (const s of spans) if (s.isRecording()) s.addLink({ context: span.spanContext() });
      return fn();
    },
    { parent: o.api.trace.setSpanContext(o.api.ROOT_CONTEXT, links[0]!.context), links },
  );
}

/** Attributes for the active span (tracing on, a span active). */
export function annotate(attributes: Record<string, string | number>): void {
  const span = on?.api.trace.getActiveSpan();
  if (span?.isRecording()) span.setAttributes(attributes); // not on an ended span (see inBatchSpan)
}

/**
 * The relay's span for one claim's rows going to one queue: `publish <queue>`
 * (PRODUCER, one per batch as OpenTelemetry's messaging conventions have it
 * for batches). Each event's creation context is its outbox row's
 * traceparent (the request that wrote it); the span's parent is the first
 * sampled one and it links to the sampled ones (the first MAX_LINKS).
 * `traceparent(from, to)` is what the job of rows [from, to) carries. A job
 * of one event: the publish span for the row whose trace holds it, the
 * row's own for the other sampled rows (the worker continues the order's
 * trace), none for the rest. A job of several events (the message, as
 * OpenTelemetry's conventions see it): the publish span when any of its
 * rows is sampled — every such job's span is then a child of the publish
 * span, which links to its orders — else none. `run` wraps the enqueueing.
 */
export interface PublishSpans {
  traceparent(from: number, to: number): string | undefined;
  run<T>(fn: () => Promise<T>): Promise<T>;
}

const NO_PUBLISH: PublishSpans = { traceparent: () => undefined, run: (fn) => fn() };

export function startPublish(queueName: string, rows: readonly { id: number | string; traceparent?: string | null }[]): PublishSpans {
  if (!on || rows.length === 0) return NO_PUBLISH;
  const o = on;
  // Each row's traceparent parsed once: a sampled one is passed on as written (past the links too) and
  // linked; an unsampled or malformed one is not passed on (the worker would make no span for it).
  const sampled = rows.map((r) => sampledSpanContext(o, r.traceparent));
  const asWritten = (i: number) => (sampled[i] ? rows[i]!.traceparent! : undefined);
  let first = -1;
  const links: Link[] = [];
  for (let i = 0; i < rows.length && links.length < MAX_LINKS; i++) {
    const sc = sampled[i];
    if (!sc) continue;
    if (first < 0) first = i;
    links.push({ context: sc });
  }
  if (first < 0) return NO_PUBLISH; // no sampled trace: no span, nothing to carry
  const span = startLeanSpan(
    o.spans,
    `publish ${queueName}`,
    o.api.SpanKind.PRODUCER,
    o.api.trace.setSpanContext(o.api.ROOT_CONTEXT, links[0]!.context),
    { 'messaging.system': 'bullmq', 'messaging.operation.type': 'send', 'messaging.destination.name': queueName, 'messaging.batch.message_count': rows.length, ...(rows.length === 1 ? { 'messaging.message.id': String(rows[0]!.id) } : {}) },
    links,
  );
  // The publish span is unsampled only under a sampler that is not parent-based: then there is none to pass on,
  // and the enqueueing records nothing (BullMQ's span included).
  const spanCtx = span ? o.api.trace.setSpan(o.api.ROOT_CONTEXT, span) : o.untraced;
  const own = span ? traceparentOf(span.spanContext()) : undefined;
  return {
    traceparent: (from, to) => {
      if (to - from === 1) return from === first ? (own ?? asWritten(from)) : asWritten(from);
      for (let i = from; i < to; i++) if (sampled[i]) return own;
      return undefined;
    },
    run: async (fn) => {
      try {
        return await o.api.context.with(spanCtx, fn);
      } catch (err) {
        if (span) failed(o, span, err);
        throw err;
      } finally {
        span?.end();
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
    // An unsampled trace records nothing downstream either: no span, no context to carry.
    const sc = sampledSpanContext(o, job.data?.traceparent);
    if (!sc) return processor(job, ...rest);
    return inSpan(`process ${queueName}`, async (span) => {
      span?.setAttributes({ 'messaging.system': 'bullmq', 'messaging.destination.name': queueName, 'messaging.operation.type': 'process', 'messaging.message.id': String(job.id) });
      return processor(job, ...rest);
    }, { kind: o.api.SpanKind.CONSUMER, parent: o.api.trace.setSpanContext(o.api.ROOT_CONTEXT, sc) });
  };
}

/**
 * The span of one HTTP request (SERVER), continuing a traceparent the client
 * sent; undefined when tracing is off, and when the sampler does not sample
 * the request: an unsampled trace records nothing downstream (no
 * traceparent, no batch or statement span), so the request runs outside any
 * context, as with tracing off, instead of carrying a span nothing reads.
 * `end` names it after the route.
 */
export function requestSpan(req: IncomingMessage): { run<T>(fn: () => Promise<T>): Promise<T>; fail(err: unknown): void; end(route: string, status: number): void } | undefined {
  if (!on) return undefined;
  const o = on;
  // A traceparent header (and tracestate) as the W3C propagator reads them; most requests have none.
  const parent = req.headers.traceparent === undefined ? o.api.ROOT_CONTEXT : o.api.propagation.extract(o.api.ROOT_CONTEXT, req.headers);
  const method = req.method ?? 'GET';
  const span = startLeanSpan(o.spans, method, o.api.SpanKind.SERVER, parent, { 'http.request.method': method });
  if (!span) return undefined; // not sampled: the request runs outside any context
  const ctx = o.api.trace.setSpan(parent, span);
  return {
    run: (fn) => o.api.context.with(ctx, fn),
    // What went wrong, on the request's span (it is the order's span: there is no other).
    fail: (err) => span.recordException(err instanceof Error ? err : String(err)),
    end: (route, status) => {
      span.updateName(`${method} ${route}`);
      span.setAttributes({ 'http.route': route, 'http.response.status_code': status });
      if (status >= 500) span.setStatus({ code: o.api.SpanStatusCode.ERROR });
      span.end();
    },
  };
}
