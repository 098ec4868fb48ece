import type { IncomingMessage, ServerResponse } from 'node:http';
import { ApiError, problemBody } from './errors.js';

export const MAX_BODY_BYTES = 1024 * 1024;

/** 413 for a body past its limit; the connection closes (the rest of the body is not read). */
function bodyTooLarge(detail: string): ApiError {
  return new ApiError('payload_too_large', detail, {}, { Connection: 'close' });
}

const JSON_TOO_LARGE = `A JSON body is at most ${MAX_BODY_BYTES / (1024 * 1024)} MiB`;

/** Read and parse a JSON body: 415 for another content type, 413 past 1 MiB, 400 for bad JSON. */
export async function readJson(req: IncomingMessage): Promise<unknown> {
  const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
  if (type !== 'application/json' && !(type?.startsWith('application/') && type.endsWith('+json'))) {
    throw new ApiError('unsupported_media_type', `Content-Type was ${JSON.stringify(type || null)}; this resource takes application/json`);
  }
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > MAX_BODY_BYTES) throw bodyTooLarge(JSON_TOO_LARGE);
  const text = await readBody(req);
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new ApiError('malformed_json', (err as Error).message);
  }
}

/**
 * The body as text, at most `maxBytes` (past it: 413 with `tooLarge` as its
 * detail). Read with 'data' and 'end'
 * events rather than an async iterator (for await), which made promises per
 * request: in CPU profiles of the web at full load with tracing on,
 * readJson's own time halved (docs/operations.md, Tracing).
 */
export function readBody(req: IncomingMessage, maxBytes = MAX_BODY_BYTES, tooLarge = JSON_TOO_LARGE): Promise<string> {
  // Closed already (a handler that awaited something first, and the client left): no event would ever come.
  if (req.destroyed) return Promise.reject(Object.assign(new Error('the request was closed before its body was read'), { code: 'ECONNRESET' }));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size <= maxBytes) chunks.push(chunk);
      else done(bodyTooLarge(tooLarge));
    };
    const onEnd = () => done();
    const onError = (err: Error) => done(err);
    const onClose = () => done(Object.assign(new Error('the request was closed before its body ended'), { code: 'ECONNRESET' }));
    const done = (err?: Error) => {
      req.off('data', onData).off('end', onEnd).off('error', onError).off('close', onClose);
      if (err) reject(err);
      else resolve(chunks.length === 1 ? chunks[0]!.toString('utf8') : Buffer.concat(chunks).toString('utf8'));
    };
    req.on('data', onData).on('end', onEnd).on('error', onError).on('close', onClose);
  });
}

export function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

export function sendProblem(res: ServerResponse, err: ApiError, instance?: string): void {
  const text = JSON.stringify(problemBody(err, instance));
  res.writeHead(err.status, {
    'Content-Type': 'application/problem+json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    ...err.headers,
  });
  res.end(text);
}
