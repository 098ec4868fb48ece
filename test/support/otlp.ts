import http from 'node:http';
import { gunzipSync } from 'node:zlib';

/** One span as an OTLP receiver sees it; ids in hex. */
export interface ReceivedSpan {
  service: string;
  scope: string;
  name: string;
  kind: number;
  traceId: string;
  spanId: string;
  parentSpanId: string;
  links: { traceId: string; spanId: string }[];
  attributes: Record<string, string | number | boolean>;
  /** Content type of the request that carried it. */
  encoding: 'json' | 'protobuf';
}

/** SpanKind as OTLP numbers it. */
export const KIND = { internal: 1, server: 2, client: 3, producer: 4, consumer: 5 } as const;

/**
 * A tiny OTLP/HTTP trace receiver (POST /v1/traces): decodes http/json, and
 * http/protobuf with the small wire-format reader below (the fields of
 * ExportTraceServiceRequest a test looks at).
 */
export async function startOtlpReceiver(): Promise<{ url: string; spans: ReceivedSpan[]; requests: { path: string; contentType: string }[]; close(): Promise<void> }> {
  const spans: ReceivedSpan[] = [];
  const requests: { path: string; contentType: string }[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      let body = Buffer.concat(chunks);
      if (req.headers['content-encoding'] === 'gzip') body = gunzipSync(body);
      const contentType = String(req.headers['content-type'] ?? '');
      requests.push({ path: req.url ?? '', contentType });
      try {
        spans.push(...(contentType.includes('json') ? fromJson(JSON.parse(body.toString('utf8'))) : fromProtobuf(body)));
        res.writeHead(200, { 'content-type': contentType.includes('json') ? 'application/json' : 'application/x-protobuf' });
        res.end(contentType.includes('json') ? '{}' : '');
      } catch (err) {
        res.writeHead(400);
        res.end(String(err));
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return { url: `http://127.0.0.1:${port}`, spans, requests, close: () => new Promise<void>((r) => server.close(() => r())) };
}

/* eslint-disable @typescript-eslint/no-explicit-any -- OTLP/JSON as parsed */
function fromJson(doc: any): ReceivedSpan[] {
  const out: ReceivedSpan[] = [];
  for (const rs of doc.resourceSpans ?? []) {
    const resource = jsonAttributes(rs.resource?.attributes);
    for (const ss of rs.scopeSpans ?? []) {
      for (const s of ss.spans ?? []) {
        out.push({
          service: String(resource['service.name']),
          scope: ss.scope?.name ?? '',
          name: s.name,
          kind: s.kind ?? 0,
          traceId: s.traceId,
          spanId: s.spanId,
          parentSpanId: s.parentSpanId ?? '',
          links: (s.links ?? []).map((l: any) => ({ traceId: l.traceId, spanId: l.spanId })),
          attributes: jsonAttributes(s.attributes),
          encoding: 'json',
        });
      }
    }
  }
  return out;
}

function jsonAttributes(list: any[] | undefined): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const a of list ?? []) {
    const v = a.value ?? {};
    out[a.key] = v.stringValue ?? (v.intValue !== undefined ? Number(v.intValue) : (v.doubleValue ?? v.boolValue ?? ''));
  }
  return out;
}
/* eslint-enable @typescript-eslint/no-explicit-any */

type Field = { no: number; wire: number; value: bigint | Buffer };

/** The fields of one protobuf message: varints as bigint, length-delimited as bytes (fixed64/32 skipped as bytes). */
function fields(buf: Buffer): Field[] {
  const out: Field[] = [];
  let i = 0;
  const varint = (): bigint => {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      const b = buf[i++]!;
      result |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) return result;
      shift += 7n;
    }
  };
  while (i < buf.length) {
    const key = Number(varint());
    const no = key >>> 3;
    const wire = key & 7;
    if (wire === 0) out.push({ no, wire, value: varint() });
    else if (wire === 2) {
      const len = Number(varint());
      out.push({ no, wire, value: buf.subarray(i, i + len) });
      i += len;
    } else if (wire === 1) {
      out.push({ no, wire, value: buf.subarray(i, i + 8) });
      i += 8;
    } else if (wire === 5) {
      out.push({ no, wire, value: buf.subarray(i, i + 4) });
      i += 4;
    } else throw new Error(`unsupported wire type ${wire}`);
  }
  return out;
}

const bytes = (fs: Field[], no: number) => fs.filter((f) => f.no === no).map((f) => f.value as Buffer);
const first = (fs: Field[], no: number) => bytes(fs, no)[0];

/** KeyValue (1 key, 2 AnyValue: 1 string, 2 bool, 3 int, 4 double). */
function protoAttributes(list: Buffer[]): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const kv of list) {
    const f = fields(kv);
    const key = first(f, 1)?.toString('utf8') ?? '';
    const any = fields(first(f, 2) ?? Buffer.alloc(0))[0];
    if (!any) continue;
    if (any.no === 1) out[key] = (any.value as Buffer).toString('utf8');
    else if (any.no === 2) out[key] = any.value === 1n;
    else if (any.no === 3) out[key] = Number(BigInt.asIntN(64, any.value as bigint));
    else if (any.no === 4) out[key] = (any.value as Buffer).readDoubleLE(0);
  }
  return out;
}

/** ExportTraceServiceRequest: 1 ResourceSpans (1 Resource, 2 ScopeSpans (1 scope, 2 Span)). */
function fromProtobuf(body: Buffer): ReceivedSpan[] {
  const out: ReceivedSpan[] = [];
  for (const rs of bytes(fields(body), 1)) {
    const rsf = fields(rs);
    const resource = protoAttributes(bytes(fields(first(rsf, 1) ?? Buffer.alloc(0)), 1));
    for (const ss of bytes(rsf, 2)) {
      const ssf = fields(ss);
      const scope = first(fields(first(ssf, 1) ?? Buffer.alloc(0)), 1)?.toString('utf8') ?? '';
      for (const s of bytes(ssf, 2)) {
        // Span: 1 trace_id, 2 span_id, 4 parent_span_id, 5 name, 6 kind, 9 attributes, 13 links (1 trace_id, 2 span_id).
        const f = fields(s);
        out.push({
          service: String(resource['service.name']),
          scope,
          name: first(f, 5)?.toString('utf8') ?? '',
          kind: Number((f.find((x) => x.no === 6)?.value as bigint | undefined) ?? 0n),
          traceId: first(f, 1)?.toString('hex') ?? '',
          spanId: first(f, 2)?.toString('hex') ?? '',
          parentSpanId: first(f, 4)?.toString('hex') ?? '',
          links: bytes(f, 13).map((l) => {
            const lf = fields(l);
            return { traceId: first(lf, 1)?.toString('hex') ?? '', spanId: first(lf, 2)?.toString('hex') ?? '' };
          }),
          attributes: protoAttributes(bytes(f, 9)),
          encoding: 'protobuf',
        });
      }
    }
  }
  return out;
}
