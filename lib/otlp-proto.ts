import type { HrTime, Link, SpanContext } from '@opentelemetry/api';
import type { ReadableSpan } from '@opentelemetry/sdk-trace';

/**
 * OTLP/protobuf encoding of an ExportTraceServiceRequest, byte for byte what
 * @opentelemetry/otlp-transformer's ProtobufTraceSerializer writes (same
 * fields, same order: test/otlp-proto.unit.spec.ts compares the two), in
 * one pass and with Node's native writers: ids go from hex straight into the
 * buffer (the transformer allocates a Uint8Array per id) and strings are
 * written by Buffer#write (the transformer measures every string in a first
 * pass, then copies it char by char). Serializing was the largest single
 * cost of tracing in the web process (docs/operations.md, Tracing); this
 * halves it. Used by lib/tracing.ts for http/protobuf; http/json stays the
 * transformer's.
 */

type AttributeValue = unknown;
type Attributes = Record<string, AttributeValue>;

const HAS_IS_REMOTE = 0x100;
const IS_REMOTE = 0x200;
const MIN_INT64 = -(2 ** 63);
const MAX_INT64 = 2 ** 63;

class Writer {
  buf: Buffer;
  pos = 0;

  constructor(size = 64 * 1024) {
    this.buf = Buffer.allocUnsafe(size);
  }

  reset(): void {
    this.pos = 0;
  }

  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const bigger = Buffer.allocUnsafe(size);
    this.buf.copy(bigger, 0, 0, this.pos);
    this.buf = bigger;
  }

  tag(field: number, wire: number): void {
    this.varint((field << 3) | wire);
  }

  varint(value: number): void {
    this.room(10);
    const b = this.buf;
    if (value >= 0 && value <= 0xffffffff) {
      let v = value >>> 0;
      while (v > 127) {
        b[this.pos++] = (v & 127) | 128;
        v >>>= 7;
      }
      b[this.pos++] = v;
      return;
    }
    // 64-bit two's complement, as the transformer writes it.
    const abs = Math.abs(value);
    let low = abs >>> 0;
    let high = (abs / 4294967296) >>> 0;
    if (value < 0) {
      low = ~low >>> 0;
      high = ~high >>> 0;
      low = (low + 1) >>> 0;
      if (low === 0) high = (high + 1) >>> 0;
    }
    while (high > 0 || low > 127) {
      b[this.pos++] = (low & 127) | 128;
      low = ((low >>> 7) | (high << 25)) >>> 0;
      high >>>= 7;
    }
    b[this.pos++] = low & 127;
  }

  fixed32(v: number): void {
    this.room(4);
    this.buf.writeUInt32LE(v >>> 0, this.pos);
    this.pos += 4;
  }

  fixed64(low: number, high: number): void {
    this.room(8);
    this.buf.writeUInt32LE(low >>> 0, this.pos);
    this.buf.writeUInt32LE(high >>> 0, this.pos + 4);
    this.pos += 8;
  }

  double(v: number): void {
    this.room(8);
    this.buf.writeDoubleLE(v, this.pos);
    this.pos += 8;
  }

  /** Nanoseconds since the epoch of an HrTime, as fixed64 (the transformer's arithmetic: no BigInt, no precision lost). */
  hrTime([seconds, nanos]: HrTime): void {
    const fromLow16 = (seconds & 65535) * 1e9;
    const fromHigh = ((seconds / 65536) >>> 0) * 1e9;
    const low = (fromLow16 >>> 0) + (((fromHigh & 65535) * 65536) >>> 0) + nanos;
    const high = Math.floor(fromLow16 / 4294967296) + ((fromHigh / 65536) >>> 0) + Math.floor(low / 4294967296);
    this.fixed64(low >>> 0, high >>> 0);
  }

  /** A string, length-delimited, UTF-8. */
  string(s: string): void {
    const len = s.length;
    if (len < 43) {
      // At most 126 bytes of UTF-8: the length fits one byte, written after. ASCII (nearly always) by hand: cheaper
      // than a call into C++ for a few bytes.
      this.room(1 + len * 3);
      const b = this.buf;
      const at = this.pos + 1;
      let i = 0;
      for (; i < len; i++) {
        const c = s.charCodeAt(i);
        if (c > 127) break;
        b[at + i] = c;
      }
      const n = i === len ? len : b.write(s, at, 'utf8');
      b[this.pos] = n;
      this.pos = at + n;
      return;
    }
    const n = Buffer.byteLength(s, 'utf8');
    this.varint(n);
    this.room(n);
    this.pos += this.buf.write(s, this.pos, n, 'utf8');
  }

  /** Hex id (trace or span) as bytes, length-delimited, straight into the buffer (the SDK's ids are valid hex; a malformed pair would end the id there). */
  hexId(hex: string): void {
    this.room(1 + (hex.length >>> 1));
    const n = this.buf.write(hex, this.pos + 1, 'hex');
    this.buf[this.pos] = n;
    this.pos += 1 + n;
  }

  bytes(b: Uint8Array): void {
    this.varint(b.length);
    this.room(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }

  /** Start a length-delimited message: one byte is reserved for its length (most are short); end() moves it if longer. */
  start(): number {
    this.room(1);
    return this.pos++;
  }

  end(at: number): void {
    const len = this.pos - at - 1;
    if (len < 128) {
      this.buf[at] = len;
      return;
    }
    const size = len < 16384 ? 2 : len < 2097152 ? 3 : len < 268435456 ? 4 : 5;
    this.room(size - 1);
    this.buf.copyWithin(at + size, at + 1, this.pos);
    this.pos += size - 1;
    let v = len;
    let p = at;
    while (v > 127) {
      this.buf[p++] = (v & 127) | 128;
      v >>>= 7;
    }
    this.buf[p] = v;
  }

  /** Another writer's bytes, as they are. */
  append(other: Writer): void {
    this.room(other.pos);
    other.buf.copy(this.buf, this.pos, 0, other.pos);
    this.pos += other.pos;
  }

  finish(): Uint8Array {
    return new Uint8Array(this.buf.subarray(0, this.pos)); // a copy: the buffer is reused by the next export
  }
}

function attributes(w: Writer, attrs: Attributes, field: number): void {
  for (const key in attrs) {
    if (!Object.prototype.hasOwnProperty.call(attrs, key)) continue;
    w.tag(field, 2);
    const kv = w.start();
    w.tag(1, 2);
    w.string(key);
    w.tag(2, 2);
    const v = w.start();
    anyValue(w, attrs[key]);
    w.end(v);
    w.end(kv);
  }
}

function anyValue(w: Writer, value: AttributeValue): void {
  const t = typeof value;
  if (t === 'string') {
    w.tag(1, 2);
    w.string(value as string);
  } else if (t === 'boolean') {
    w.tag(2, 0);
    w.varint(value ? 1 : 0);
  } else if (t === 'number') {
    const n = value as number;
    if (Number.isInteger(n) && n >= MIN_INT64 && n < MAX_INT64) {
      w.tag(3, 0);
      w.varint(n);
    } else {
      w.tag(4, 1);
      w.double(n);
    }
  } else if (value instanceof Uint8Array) {
    w.tag(7, 2);
    w.bytes(value);
  } else if (Array.isArray(value)) {
    w.tag(5, 2);
    const list = w.start();
    for (const item of value) {
      w.tag(1, 2);
      const at = w.start();
      anyValue(w, item);
      w.end(at);
    }
    w.end(list);
  } else if (t === 'object' && value != null) {
    w.tag(6, 2);
    const list = w.start();
    attributes(w, value as Attributes, 1);
    w.end(list);
  }
}

function flags(traceFlags: number, isRemote: boolean | undefined): number {
  return (traceFlags & 255) | HAS_IS_REMOTE | (isRemote ? IS_REMOTE : 0);
}

/** Fields 1–3 of a Span and of a Link alike: trace_id, span_id, trace_state. */
function ids(w: Writer, ctx: SpanContext): void {
  w.tag(1, 2);
  w.hexId(ctx.traceId);
  w.tag(2, 2);
  w.hexId(ctx.spanId);
  const state = ctx.traceState?.serialize();
  if (state) {
    w.tag(3, 2);
    w.string(state);
  }
}

function link(w: Writer, l: Link): void {
  const ctx: SpanContext = l.context;
  ids(w, ctx);
  if (l.attributes) attributes(w, l.attributes, 4);
  w.tag(5, 0);
  w.varint(l.droppedAttributesCount || 0);
  w.tag(6, 5);
  w.fixed32(flags(ctx.traceFlags, ctx.isRemote));
}

function span(w: Writer, s: ReadableSpan): void {
  const ctx = s.spanContext();
  ids(w, ctx);
  if (s.parentSpanContext?.spanId) {
    w.tag(4, 2);
    w.hexId(s.parentSpanContext.spanId);
  }
  w.tag(5, 2);
  w.string(s.name);
  const kind = s.kind == null ? 0 : s.kind + 1;
  if (kind !== 0) {
    w.tag(6, 0);
    w.varint(kind);
  }
  w.tag(7, 1);
  w.hrTime(s.startTime);
  w.tag(8, 1);
  w.hrTime(s.endTime);
  if (s.attributes) attributes(w, s.attributes, 9);
  w.tag(10, 0);
  w.varint(s.droppedAttributesCount);
  for (const e of s.events) {
    w.tag(11, 2);
    const at = w.start();
    w.tag(1, 1);
    w.hrTime(e.time);
    w.tag(2, 2);
    w.string(e.name);
    if (e.attributes) attributes(w, e.attributes, 3);
    w.tag(4, 0);
    w.varint(e.droppedAttributesCount || 0);
    w.end(at);
  }
  w.tag(12, 0);
  w.varint(s.droppedEventsCount);
  for (const l of s.links) {
    w.tag(13, 2);
    const at = w.start();
    link(w, l);
    w.end(at);
  }
  w.tag(14, 0);
  w.varint(s.droppedLinksCount);
  w.tag(15, 2);
  const status = w.start();
  if (s.status.message) {
    w.tag(2, 2);
    w.string(s.status.message);
  }
  w.tag(3, 0);
  w.varint(s.status.code);
  w.end(status);
  w.tag(16, 5);
  w.fixed32(flags(ctx.traceFlags, s.parentSpanContext?.isRemote));
}

type Resource = ReadableSpan['resource'];
type Scope = ReadableSpan['instrumentationScope'];

/**
 * Spans encoded as they come, grouped by resource and then scope (by
 * identity, in order of appearance), each group's spans already framed as
 * ScopeSpans.spans; take() writes the ExportTraceServiceRequest around them.
 * A span is encoded when it is added, so nothing keeps it afterwards.
 */
class SpanBuffer {
  private groups = new Map<Resource, Map<Scope, Writer>>();
  /** Spans added since the last take(). */
  count = 0;

  add(s: ReadableSpan): void {
    let scopes = this.groups.get(s.resource);
    if (!scopes) this.groups.set(s.resource, (scopes = new Map()));
    let w = scopes.get(s.instrumentationScope);
    if (!w) scopes.set(s.instrumentationScope, (w = new Writer(4096)));
    w.tag(2, 2);
    const at = w.start();
    span(w, s);
    w.end(at);
    this.count++;
  }

  /** The ExportTraceServiceRequest of every span added since the last take() (empty when none). */
  take(): Uint8Array {
    const w = requestWriter;
    w.reset();
    for (const [resource, scopes] of this.groups) {
      if (![...scopes.values()].some((sw) => sw.pos > 0)) continue; // none of this resource's since the last take()
      w.tag(1, 2);
      const rs = w.start();
      w.tag(1, 2);
      const r = w.start();
      if (resource.attributes) attributes(w, resource.attributes, 1);
      w.tag(2, 0);
      w.varint(0);
      w.end(r);
      for (const [scope, spans] of scopes) {
        if (spans.pos === 0) continue;
        w.tag(2, 2);
        const ss = w.start();
        w.tag(1, 2);
        const sc = w.start();
        w.tag(1, 2);
        w.string(scope.name);
        if (scope.version) {
          w.tag(2, 2);
          w.string(scope.version);
        }
        const scopeAttributes = (scope as { attributes?: Attributes }).attributes;
        if (scopeAttributes) attributes(w, scopeAttributes, 3);
        const dropped = (scope as { droppedAttributesCount?: number }).droppedAttributesCount;
        if (dropped) {
          w.tag(4, 0);
          w.varint(dropped);
        }
        w.end(sc);
        w.append(spans);
        if (scope.schemaUrl) {
          w.tag(3, 2);
          w.string(scope.schemaUrl);
        }
        w.end(ss);
      }
      if (resource.schemaUrl) {
        w.tag(3, 2);
        w.string(resource.schemaUrl);
      }
      w.end(rs);
    }
    // Groups are kept (a process has one resource and a few scopes) and their writers reused.
    for (const scopes of this.groups.values()) for (const sw of scopes.values()) sw.reset();
    this.count = 0;
    return w.finish();
  }
}

const requestWriter = new Writer();

/** ExportTraceServiceRequest of these spans, grouped by resource and then scope (by identity, in order of appearance). */
export function serializeSpans(spans: readonly ReadableSpan[]): Uint8Array {
  const buffer = new SpanBuffer();
  for (const s of spans) buffer.add(s);
  return buffer.take();
}

export interface ExportTraceServiceResponse {
  partialSuccess?: { rejectedSpans?: number; errorMessage?: string };
}

/**
 * A collector's answer, an ExportTraceServiceResponse (field 1,
 * partial_success: 1 rejected_spans, varint; 2 error_message, string),
 * decoded as @opentelemetry/otlp-transformer decodes it — without loading
 * that package, which was a third of the time tracing took to start (55 of
 * about 160 ms, once per process). Unknown fields are skipped; a truncated
 * answer throws, as there.
 */
export function deserializeResponse(data: Uint8Array): ExportTraceServiceResponse {
  const response: ExportTraceServiceResponse = {};
  for (const r = new Reader(data); !r.done; ) {
    // Field and wire type split as the transformer splits them (>>> wraps a tag past 2^32, as there).
    const tag = r.varint();
    if (tag >>> 3 !== 1 || (tag & 7) !== 2) {
      r.skip(tag & 7);
      continue;
    }
    const partial: NonNullable<ExportTraceServiceResponse['partialSuccess']> = {};
    for (const p = new Reader(r.bytes()); !p.done; ) {
      const t = p.varint();
      const [field, wire] = [t >>> 3, t & 7];
      if (field === 1 && wire === 0) partial.rejectedSpans = p.varint();
      else if (field === 2 && wire === 2) partial.errorMessage = new TextDecoder().decode(p.bytes());
      else p.skip(wire);
    }
    response.partialSuccess = partial;
  }
  return response;
}

/** The fields of one protobuf message, read in order (what deserializeResponse needs, no more). */
class Reader {
  private pos = 0;
  constructor(private readonly buf: Uint8Array) {}

  get done(): boolean {
    return this.pos >= this.buf.length;
  }

  varint(): number {
    let value = 0;
    for (let shift = 0; this.pos < this.buf.length; shift += 7) {
      const b = this.buf[this.pos++]!;
      value += (b & 0x7f) * 2 ** shift;
      if ((b & 0x80) === 0) return value;
    }
    throw new Error('Truncated buffer: unexpected end of data while reading varint');
  }

  bytes(): Uint8Array {
    const length = this.varint();
    if (this.pos + length > this.buf.length) throw new Error(`Truncated buffer: expected ${length} bytes at position ${this.pos}, but only ${this.buf.length - this.pos} available`);
    this.pos += length;
    return this.buf.subarray(this.pos - length, this.pos);
  }

  skip(wire: number): void {
    if (wire === 0) this.varint();
    else if (wire === 1) this.pos += 8;
    else if (wire === 2) this.bytes();
    else if (wire === 5) this.pos += 4;
    else throw new Error(`Unknown wire type ${wire}, cannot safely skip`);
  }
}

/** When a batch of spans goes: at `maxExportBatchSize` spans, or `scheduledDelayMillis` after the first one (OTEL_BSP_*). */
export interface BatchOptions {
  maxExportBatchSize: number;
  scheduledDelayMillis: number;
  /** Spans waiting at most (the BatchSpanProcessor's maxQueueSize); past it a span is dropped. 2,048 by default. */
  maxQueueSize?: number;
  /** An export that failed, or spans dropped for a full queue (those spans are lost, as with the SDK's BatchSpanProcessor). */
  onError?: (err: unknown) => void;
}

/**
 * A span processor that encodes each sampled span as it ends and posts the
 * batches over OTLP/HTTP as protobuf: the SDK's BatchSpanProcessor and
 * OTLPTraceExporter in one, with @opentelemetry/otlp-exporter-base's
 * transport (the same OTEL_EXPORTER_OTLP_* headers, timeout, compression
 * and retries; the collector's answer decoded by deserializeResponse). As
 * the BatchSpanProcessor: one export at a time, batches of at most
 * `maxExportBatchSize`, at most `maxQueueSize` spans waiting (past that a
 * span is dropped, never the work), exports and their timers outside any
 * trace (tracing suppressed), nothing taken after shutdown. Unlike it, a
 * span is not kept until its batch goes — up to 128 spans or 200 ms, long
 * enough under load for the collector to move them to the old generation —
 * but encoded at once: only its bytes wait.
 */
export async function protobufSpanProcessor(url: string, options: BatchOptions): Promise<import('@opentelemetry/sdk-trace').SpanProcessor> {
  const [http, core, api] = await Promise.all([import('@opentelemetry/otlp-exporter-base/node-http'), import('@opentelemetry/core'), import('@opentelemetry/api')]);
  type Request = { bytes: Uint8Array; count: number };
  const serializer = { serializeRequest: (r: Request) => r.bytes, deserializeResponse };
  const config = http.convertLegacyHttpOptions({ url }, 'TRACES', 'v1/traces', { 'Content-Type': 'application/x-protobuf' });
  // The transformer's TraceExporterMetricsHelper, for the exporter's own metrics (spans per request).
  const delegate = http.createOtlpHttpExportDelegate(config, serializer, 'otlp_http_span_exporter', { name: 'span' as const, countItems: (r: Request) => r.count }, undefined);
  const maxQueue = options.maxQueueSize ?? 2048;
  // Exports, their retries and the batch timer run here: they record nothing and keep no ended span's context alive.
  const quiet = core.suppressTracing(api.ROOT_CONTEXT);
  const buffer = new SpanBuffer();
  const ready: Request[] = [];
  let waiting = 0; // spans in `ready`
  let sending: Promise<void> | undefined;
  let timer: NodeJS.Timeout | undefined;
  let dropped = 0;
  let closed = false;
  let shutdown: Promise<void> | undefined;

  /** The buffer's spans become a request, sent when the one before it has been. */
  const cut = () => {
    clearTimeout(timer);
    timer = undefined;
    if (buffer.count === 0) return;
    waiting += buffer.count;
    ready.push({ count: buffer.count, bytes: buffer.take() });
  };
  const send = () => {
    if (sending) return;
    const request = ready.shift();
    if (!request) return;
    waiting -= request.count;
    sending = new Promise<void>((resolve) =>
      api.context.with(quiet, () =>
        delegate.export(request, (result) => {
          if (result.code !== core.ExportResultCode.SUCCESS) options.onError?.(result.error ?? new Error('export failed'));
          resolve();
        }),
      ),
    ).then(() => {
      sending = undefined;
      if (dropped > 0) {
        options.onError?.(new Error(`${dropped} spans dropped: more than ${maxQueue} were waiting to be exported`));
        dropped = 0;
      }
      send();
    });
  };
  const flush = () => {
    cut();
    send();
  };
  const forceFlush = async () => {
    flush();
    while (sending) await sending;
  };
  return {
    onStart: () => undefined,
    onEnd: (s) => {
      if (closed || (s.spanContext().traceFlags & 1) === 0) return; // TraceFlags.SAMPLED: an unsampled span is not exported
      if (waiting + buffer.count >= maxQueue) {
        dropped++;
        return;
      }
      buffer.add(s);
      if (buffer.count >= options.maxExportBatchSize) flush();
      else timer ??= api.context.with(quiet, () => setTimeout(flush, options.scheduledDelayMillis).unref());
    },
    forceFlush,
    shutdown: () =>
      (shutdown ??= (async () => {
        closed = true;
        await forceFlush();
        await delegate.shutdown();
      })()),
  };
}
