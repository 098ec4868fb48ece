import { randomFillSync } from 'node:crypto';
import type { Attributes, AttributeValue, Context, Exception, HrTime, Link, Span, SpanContext, SpanKind, SpanStatus, TimeInput } from '@opentelemetry/api';
import type { ReadableSpan, Sampler, SpanLimits, SpanProcessor } from '@opentelemetry/sdk-trace';

/**
 * Spans made without the SDK's Tracer: the spans this code makes itself
 * (a request's, a group commit's, a relay's publish, a job's, a projector
 * batch's), one or more for every order and job. The SDK's Tracer costs
 * several times what such a span needs (metrics of its own, the start's
 * attributes checked twice, a context made per option, ids from Math.random):
 * in CPU profiles of the web under load, starting and ending the request's
 * span was the largest part of tracing's cost (docs/performance.md,
 * Tracing's cost). A lean span is an OpenTelemetry `Span` (the API's
 * context, the pg instrumentation, links and annotate() use it as any
 * other) and a `ReadableSpan` (the span processor exports it as any
 * other), with the SDK's behaviour where it is observable:
 * test/lean-span.unit.spec.ts makes each call on both and compares. The
 * configured sampler decides, ids are random and valid, times are taken as
 * the SDK takes them, attributes, events and links follow its rules and
 * limits, a change after end() is ignored. The pg instrumentation's and
 * BullMQ's spans are still the SDK's.
 */

/** What a lean span needs of the tracing setup (lib/tracing.ts makes it once). */
export interface LeanSpans {
  sampler: Sampler;
  processor: SpanProcessor;
  resource: ReadableSpan['resource'];
  scope: ReadableSpan['instrumentationScope'];
  /** The SDK's span limits, as its tracer holds them (SpanLimits: every field set). */
  limits: Required<SpanLimits>;
  /** @opentelemetry/core's attribute rules, which the SDK's spans apply (loaded with the SDK: this module loads nothing). */
  attributeRules: Pick<typeof import('@opentelemetry/core'), 'maybeAddAttribute' | 'cleanAttributes' | 'cleanSimpleAttributes'>;
  /** The API's trace.getSpanContext, when the context holds a valid one (isSpanContextValid): a parent. */
  parentOf(context: Context): SpanContext | undefined;
  /** @opentelemetry/core's isTracingSuppressed: in such a context the SDK makes no span, nor does this. */
  suppressed(context: Context): boolean;
}

const SAMPLED = 1; // TraceFlags.SAMPLED
const RECORD_AND_SAMPLED = 2; // SamplingDecision.RECORD_AND_SAMPLED
const UNSET = 0; // SpanStatusCode.UNSET
const OK = 1; // SpanStatusCode.OK
const ERROR = 2; // SpanStatusCode.ERROR
const DROP_LIMIT_REACHED = 2; // AddAttributeDecision.DROP_LIMIT_REACHED
const ADD_NEW = 3; // AddAttributeDecision.ADD_NEW

/** Random bytes for ids, taken 24 a span (a trace id and a span id) from a pool refilled by one call. */
const pool = Buffer.allocUnsafe(24 * 256);
let poolAt = pool.length;

function randomHex(bytes: number): string {
  if (poolAt + bytes > pool.length) {
    randomFillSync(pool);
    poolAt = 0;
  }
  const hex = pool.toString('hex', poolAt, (poolAt += bytes));
  // All zeros is not a valid id (a chance of 2^-64 at most): as the SDK's generator, make it valid.
  return hex.charCodeAt(hex.length - 1) === 48 && /^0+$/.test(hex) ? `${hex.slice(0, -1)}1` : hex;
}

/** @opentelemetry/core's isTimeInput: an HrTime, a number or a Date. */
function isTime(value: unknown): value is TimeInput {
  return typeof value === 'number' || value instanceof Date || (Array.isArray(value) && value.length === 2 && typeof value[0] === 'number' && typeof value[1] === 'number');
}

/** Milliseconds as an HrTime, and the sum of two: @opentelemetry/core's millisToHrTime and addHrTimes. */
function millisToHr(ms: number): HrTime {
  return [Math.trunc(ms / 1000), Math.round((ms % 1000) * 1e6)];
}

function addHr(a: HrTime, b: HrTime): HrTime {
  const out: HrTime = [a[0] + b[0], a[1] + b[1]];
  if (out[1] >= 1e9) {
    out[1] -= 1e9;
    out[0] += 1;
  }
  return out;
}

/**
 * A new sampled span, the child of the span in `parentContext` if any, or
 * undefined when the sampler does not record and sample it (the SDK's
 * non-recording span: nothing of it would be exported).
 */
export function startLeanSpan(setup: LeanSpans, name: string, kind: SpanKind, parentContext: Context, attributes: Attributes = {}, links: Link[] = []): LeanSpan | undefined {
  if (setup.suppressed(parentContext)) return undefined;
  const parent = setup.parentOf(parentContext);
  const traceId = parent ? parent.traceId : randomHex(16);
  const decision = setup.sampler.shouldSample(parentContext, traceId, name, kind, attributes, links);
  // RECORD_ONLY (a span recorded but not exported) is not made either: no sampler OTEL_TRACES_SAMPLER names decides it.
  if (decision.decision !== RECORD_AND_SAMPLED) return undefined;
  const ctx: SpanContext = { traceId, spanId: randomHex(8), traceFlags: SAMPLED, traceState: decision.traceState ?? parent?.traceState };
  const span = new LeanSpan(setup, name, kind, ctx, parent);
  span.setAttributes(attributes);
  if (decision.attributes) span.setAttributes(decision.attributes);
  // As the SDK: links given at the start past the limit keep the last ones.
  const limit = setup.limits.linkCountLimit;
  for (let i = Math.max(0, links.length - limit); i < links.length; i++) span.addLink(links[i]!);
  span.droppedLinksCount = Math.max(0, links.length - limit);
  setup.processor.onStart(span, parentContext);
  return span;
}

export class LeanSpan implements Span, ReadableSpan {
  // Times as the SDK's spans take them: the start from the wall clock, the rest from it plus the monotonic time
  // elapsed (timeOrigin + performance.now() drifts from the wall clock over a process's life; the pg
  // instrumentation's spans, children of this one, are SDK spans).
  private readonly startedAt = performance.now();
  private readonly startMs = Date.now();
  readonly startTime: HrTime = millisToHr(this.startMs);
  endTime: HrTime = [0, 0];
  status: SpanStatus = { code: UNSET };
  readonly attributes: Attributes = {};
  readonly links: Link[] = [];
  readonly events: ReadableSpan['events'] = [];
  ended = false;
  droppedAttributesCount = 0;
  droppedEventsCount = 0;
  droppedLinksCount = 0;
  private attributeCount = 0;

  constructor(
    private readonly setup: LeanSpans,
    public name: string,
    readonly kind: SpanKind,
    private readonly ctx: SpanContext,
    readonly parentSpanContext: SpanContext | undefined,
  ) {}

  get resource(): ReadableSpan['resource'] {
    return this.setup.resource;
  }

  get instrumentationScope(): ReadableSpan['instrumentationScope'] {
    return this.setup.scope;
  }

  get duration(): HrTime {
    if (!this.ended) return [-1, -1];
    let seconds = this.endTime[0] - this.startTime[0];
    let nanos = this.endTime[1] - this.startTime[1];
    if (nanos < 0) {
      seconds -= 1;
      nanos += 1e9;
    }
    return [seconds, nanos];
  }

  spanContext(): SpanContext {
    return this.ctx;
  }

  isRecording(): boolean {
    return !this.ended;
  }

  setAttribute(key: string, value: AttributeValue): this {
    if (this.ended) return this;
    const decision = this.setup.attributeRules.maybeAddAttribute({ key, value, attributes: this.attributes, limits: this.setup.limits, currentAttributesCount: this.attributeCount });
    if (decision === DROP_LIMIT_REACHED) this.droppedAttributesCount++;
    else if (decision === ADD_NEW) this.attributeCount++;
    return this;
  }

  setAttributes(attributes: Attributes): this {
    for (const key in attributes) if (Object.prototype.hasOwnProperty.call(attributes, key)) this.setAttribute(key, attributes[key] as AttributeValue);
    return this;
  }

  addEvent(name: string, attributesOrTime?: Attributes | TimeInput, time?: TimeInput): this {
    if (this.ended) return this;
    const limits = this.setup.limits;
    if (limits.eventCountLimit === 0) {
      this.droppedEventsCount++;
      return this;
    }
    if (this.events.length >= limits.eventCountLimit) {
      // As the SDK: the oldest event makes room.
      this.events.shift();
      this.droppedEventsCount++;
    }
    // As the SDK: a time in the second place is the event's time unless a time follows it.
    const timeOnly = isTime(attributesOrTime);
    const at = this.time(timeOnly && !isTime(time) ? attributesOrTime : time);
    const cleaned = this.setup.attributeRules.cleanSimpleAttributes(timeOnly ? undefined : (attributesOrTime as Attributes | undefined), { attributeCountLimit: limits.attributePerEventCountLimit, attributeValueLengthLimit: limits.attributeValueLengthLimit });
    this.events.push({ name, time: at, ...cleaned });
    return this;
  }

  addLink(link: Link): this {
    if (this.ended) return this;
    const limits = this.setup.limits;
    if (limits.linkCountLimit === 0) {
      this.droppedLinksCount++;
      return this;
    }
    if (this.links.length >= limits.linkCountLimit) {
      // As the SDK: the oldest link makes room.
      this.links.shift();
      this.droppedLinksCount++;
    }
    this.links.push({ context: link.context, ...this.setup.attributeRules.cleanAttributes(link.attributes, { attributeCountLimit: limits.attributePerLinkCountLimit, attributeValueLengthLimit: limits.attributeValueLengthLimit }) });
    return this;
  }

  addLinks(links: Link[]): this {
    for (const l of links) this.addLink(l);
    return this;
  }

  setStatus(status: SpanStatus): this {
    // The SDK's rules: UNSET changes nothing, OK is final, a message only with ERROR.
    if (this.ended || status.code === UNSET || this.status.code === OK) return this;
    this.status = status.code === ERROR && typeof status.message === 'string' ? { code: ERROR, message: status.message } : { code: status.code };
    return this;
  }

  updateName(name: string): this {
    if (!this.ended) this.name = name;
    return this;
  }

  /** A TimeInput as the SDK's Span reads it (_getTime): none is now; a number, performance time if not past now, else epoch ms. */
  private time(input?: TimeInput | null): HrTime {
    if (input == null) return addHr(this.startTime, millisToHr(performance.now() - this.startedAt));
    if (typeof input === 'number') return input <= performance.now() ? addHr(millisToHr(performance.timeOrigin), millisToHr(input + this.startMs - (this.startedAt + performance.timeOrigin))) : millisToHr(input);
    if (input instanceof Date) return millisToHr(input.getTime());
    return input as HrTime;
  }

  recordException(exception: Exception, time?: TimeInput): void {
    const attributes: Attributes = {};
    if (typeof exception === 'string') attributes['exception.message'] = exception;
    else if (exception) {
      // As the SDK: a code if it has a truthy one, else a name.
      if (exception.code) attributes['exception.type'] = String(exception.code);
      else if (exception.name) attributes['exception.type'] = exception.name;
      if (exception.message) attributes['exception.message'] = exception.message;
      if (exception.stack) attributes['exception.stacktrace'] = exception.stack;
    }
    if (attributes['exception.type'] || attributes['exception.message']) this.addEvent('exception', attributes, time);
  }

  end(endTime?: TimeInput): void {
    if (this.ended) return;
    this.endTime = this.time(endTime);
    // As the SDK: an end before the start is the start (a duration of 0).
    if (this.endTime[0] < this.startTime[0] || (this.endTime[0] === this.startTime[0] && this.endTime[1] < this.startTime[1])) this.endTime = [this.startTime[0], this.startTime[1]];
    this.setup.processor.onEnding?.(this);
    this.ended = true;
    this.setup.processor.onEnd(this);
  }
}
