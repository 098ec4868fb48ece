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

/**
 * Tracing off, on with every trace sampled (the default sampler), and with
 * `sampled` also on with 1 trace in 10 sampled; each exporting to `endpoint`.
 */
export function tracingModes(endpoint: string, sampled = false): [label: string, env: Record<string, string>][] {
  return [
    ['off', {}],
    ['on', { OTEL_EXPORTER_OTLP_ENDPOINT: endpoint }],
    ...(sampled ? [['on, 1 in 10 sampled', { OTEL_EXPORTER_OTLP_ENDPOINT: endpoint, OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.1' }] as [string, Record<string, string>]] : []),
  ];
}
