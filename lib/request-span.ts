import { randomFillSync } from 'node:crypto';
import type { Attributes, AttributeValue, Context, Exception, HrTime, Link, Span, SpanContext, SpanKind, SpanStatus, TimeInput } from '@opentelemetry/api';
import type { ReadableSpan, Sampler, SpanLimits, SpanProcessor } from '@opentelemetry/sdk-trace';

/**
 * The span of one HTTP request, made without the SDK's Tracer: every
 * request of the web has one, and the SDK's costs several times what the
 * span needs (sampler, metrics of its own, attribute checks per call, a
 * context per option, two ids from Math.random, hrtimes) — in CPU profiles
 * of the web under load, starting and ending the request's span was the
 * largest part of tracing's cost (docs/performance.md, Tracing's cost).
 * It is an OpenTelemetry `Span` (the API's context, the pg instrumentation,
 * links and annotate() use it as any other) and a `ReadableSpan` (the
 * span processor exports it as any other), with the SDK's behaviour where
 * it is observable: the configured sampler decides, ids are random and
 * valid, attributes past the limit are dropped and counted, a second end()
 * or a change after end() is ignored, exceptions are events.
 */

/** What a request span needs of the tracing setup. */
export interface RequestSpans {
  sampler: Sampler;
  processor: SpanProcessor;
  resource: ReadableSpan['resource'];
  scope: ReadableSpan['instrumentationScope'];
  /** The SDK's span limits, as its tracer computed them from OTEL_*_LIMIT (SpanLimits: every field set). */
  limits: Required<SpanLimits>;
  /** @opentelemetry/core's attribute rules, which the SDK's spans apply (loaded with the SDK: this module loads nothing). */
  attributeRules: Pick<typeof import('@opentelemetry/core'), 'maybeAddAttribute' | 'cleanAttributes' | 'cleanSimpleAttributes'>;
}

const SAMPLED = 1; // TraceFlags.SAMPLED
const RECORD_AND_SAMPLED = 2; // SamplingDecision.RECORD_AND_SAMPLED
const SERVER = 1 as SpanKind; // SpanKind.SERVER
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

/** The time origin as an HrTime, and now() as one (the SDK's arithmetic: origin plus performance.now(), nanoseconds carried). */
const ORIGIN_MS = performance.timeOrigin;
const ORIGIN: HrTime = [Math.trunc(ORIGIN_MS / 1000), Math.round((ORIGIN_MS % 1000) * 1e6)];

function hrNow(): HrTime {
  const ms = performance.now();
  let seconds = ORIGIN[0] + Math.trunc(ms / 1000);
  let nanos = ORIGIN[1] + Math.round((ms % 1000) * 1e6);
  if (nanos >= 1e9) {
    seconds += 1;
    nanos -= 1e9;
  }
  return [seconds, nanos];
}

function toHr(time: TimeInput | undefined): HrTime {
  if (time === undefined) return hrNow();
  if (Array.isArray(time)) return time as HrTime;
  const ms = typeof time === 'number' ? (time < ORIGIN_MS ? ORIGIN_MS + time : time) : time.getTime(); // a performance.now() value, or epoch ms
  return [Math.trunc(ms / 1000), Math.round((ms % 1000) * 1e6)];
}

/**
 * A sampled SERVER span for a request whose parent is `parent` (a remote
 * span context from its traceparent header, or none), or undefined when the
 * sampler does not record and sample it.
 */
export function startRequestSpan(setup: RequestSpans, name: string, attributes: Attributes, parent: SpanContext | undefined, parentContext: Context): RequestSpan | undefined {
  const traceId = parent ? parent.traceId : randomHex(16);
  const decision = setup.sampler.shouldSample(parentContext, traceId, name, SERVER, attributes, []);
  if (decision.decision !== RECORD_AND_SAMPLED) return undefined;
  const ctx: SpanContext = { traceId, spanId: randomHex(8), traceFlags: SAMPLED, traceState: decision.traceState ?? parent?.traceState };
  const span = new RequestSpan(setup, name, ctx, parent);
  span.setAttributes(attributes);
  if (decision.attributes) span.setAttributes(decision.attributes);
  return span;
}

export class RequestSpan implements Span, ReadableSpan {
  readonly kind = SERVER;
  readonly startTime: HrTime = hrNow();
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
    private readonly setup: RequestSpans,
    public name: string,
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
    const timeOnly = attributesOrTime instanceof Date || typeof attributesOrTime === 'number' || Array.isArray(attributesOrTime);
    const at = toHr(timeOnly ? (attributesOrTime as TimeInput) : time);
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

  recordException(exception: Exception, time?: TimeInput): void {
    const attributes: Attributes = {};
    if (typeof exception === 'string') attributes['exception.message'] = exception;
    else if (exception) {
      const type = exception.code ?? exception.name;
      if (type) attributes['exception.type'] = String(type);
      if (exception.message) attributes['exception.message'] = exception.message;
      if (exception.stack) attributes['exception.stacktrace'] = exception.stack;
    }
    if (attributes['exception.type'] || attributes['exception.message']) this.addEvent('exception', attributes, time);
  }

  end(endTime?: TimeInput): void {
    if (this.ended) return;
    this.endTime = toHr(endTime);
    this.ended = true;
    this.setup.processor.onEnd(this);
  }
}
