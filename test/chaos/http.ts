import http from 'node:http';

/** A request longer than this is a hang: a failure under any fault the test injects. */
export const HANG_MS = 15_000;

/**
 * What came back from one HTTP request, sorted by what it tells the model:
 * - `response`: the server answered (any status);
 * - `refused`: the TCP connect was refused, so the request never reached a
 *   server and certainly changed nothing (the web was down);
 * - `broken`: the connection failed after the request may have been sent:
 *   the outcome is unknown (ambiguous);
 * - `hang`: no answer within HANG_MS.
 */
export type Outcome =
  | { kind: 'response'; status: number; headers: http.IncomingHttpHeaders; text: string; json: unknown; ms: number }
  | { kind: 'refused'; ms: number }
  | { kind: 'broken'; error: string; ms: number }
  | { kind: 'hang'; ms: number };

/**
 * One request on a fresh connection (no keep-alive pool): a pooled socket to
 * a web that was killed meanwhile would fail a request that never left, and
 * turn a certain "not sent" into an ambiguous one.
 */
export function request(
  base: string,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
  timeoutMs = HANG_MS,
): Promise<Outcome> {
  const url = new URL(path, base);
  const t0 = Date.now();
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise<Outcome>((resolve) => {
    let settled = false;
    let sent = false;
    const done = (o: Outcome) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(o);
    };
    const req = http.request(
      {
        host: url.hostname,
        port: url.port,
        path: url.pathname + url.search,
        method,
        agent: false,
        headers: {
          ...headers,
          ...(payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(payload)) }),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json: unknown;
          try {
            json = JSON.parse(text);
          } catch {
            json = undefined;
          }
          done({ kind: 'response', status: res.statusCode ?? 0, headers: res.headers, text, json, ms: Date.now() - t0 });
        });
        res.on('error', (err) => done({ kind: 'broken', error: err.message, ms: Date.now() - t0 }));
      },
    );
    const timer = setTimeout(() => {
      done({ kind: 'hang', ms: Date.now() - t0 });
      req.destroy();
    }, timeoutMs);
    req.on('socket', (socket) => socket.once('connect', () => (sent = true)));
    req.on('error', (err: Error & { code?: string }) => {
      const ms = Date.now() - t0;
      if (!sent && err.code === 'ECONNREFUSED') done({ kind: 'refused', ms });
      else done({ kind: 'broken', error: `${err.code ?? ''} ${err.message}`.trim(), ms });
    });
    req.end(payload);
  });
}

/** A short description of an outcome for the timeline and violation messages. */
export function describe(o: Outcome): string {
  switch (o.kind) {
    case 'response':
      return `${o.status} ${o.text.slice(0, 300)}`;
    case 'refused':
      return 'connection refused';
    case 'broken':
      return `connection error: ${o.error}`;
    case 'hang':
      return `no answer within ${o.ms} ms`;
  }
}

/** The machine code of a problem+json answer, if it is one. */
export function problemCode(o: Outcome): string | undefined {
  if (o.kind !== 'response') return undefined;
  const ct = String(o.headers['content-type'] ?? '');
  if (!ct.startsWith('application/problem+json')) return undefined;
  const code = (o.json as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}
