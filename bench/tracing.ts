import http from 'node:http';

/**
 * The tracing section's pieces: an OTLP/HTTP sink (answers every export with
 * 200 and counts what it got) and the two switches the section compares.
 */

export interface OtlpSink {
  endpoint: string;
  /** Export requests and bytes received so far. */
  received(): { requests: number; bytes: number };
  close(): Promise<void>;
}

export async function otlpSink(): Promise<OtlpSink> {
  let requests = 0;
  let bytes = 0;
  const server = http.createServer((req, res) => {
    requests++;
    req.on('data', (chunk: Buffer) => (bytes += chunk.length));
    req.on('end', () => res.writeHead(200, { 'content-type': String(req.headers['content-type'] ?? 'application/x-protobuf') }).end());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as { port: number }).port}`,
    received: () => ({ requests, bytes }),
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

/** The labels of the sampled modes (the bench's rows name them). */
export const TENTH = 'on, 1 in 10 sampled';
export const NONE = 'on, none sampled';

/**
 * Tracing off, on with every trace sampled (the default sampler), and with
 * `sampled` also on with 1 trace in 10 sampled and on with none sampled
 * (always_off: what tracing costs a request that is not recorded); each
 * exporting to `endpoint`.
 */
export function tracingModes(endpoint: string, sampled = false): [label: string, env: Record<string, string>][] {
  const on = { OTEL_EXPORTER_OTLP_ENDPOINT: endpoint };
  return [
    ['off', {}],
    ['on', on],
    ...(sampled
      ? ([
          [TENTH, { ...on, OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.1' }],
          [NONE, { ...on, OTEL_TRACES_SAMPLER: 'always_off' }],
        ] as [string, Record<string, string>][])
      : []),
  ];
}

