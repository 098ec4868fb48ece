import { pino, type Logger } from 'pino';
import { maskUrls } from './redact.js';

export type { Logger };

/**
 * An error as a log line needs it: what happened, its code and the query's
 * name where the database said it, and where; never the objects an error may
 * carry (a pg error's client, with its connection parameters and type tables).
 * Passwords inside URLs are masked.
 */
export function serializeError(err: unknown): Record<string, unknown> {
  if (!(err instanceof Error)) return { message: maskUrls(String(err)) };
  const e = err as Error & { code?: unknown; detail?: unknown; routine?: unknown; cause?: unknown };
  const out: Record<string, unknown> = { type: e.name, message: maskUrls(e.message) };
  if (typeof e.code === 'string') out.code = e.code;
  if (typeof e.detail === 'string') out.detail = maskUrls(e.detail);
  if (e.stack) out.stack = maskUrls(e.stack.split('\n').slice(0, 8).join('\n'));
  if (e.cause instanceof Error && e.cause !== e) out.cause = serializeError(e.cause);
  return out;
}

/**
 * JSON lines on stdout; `proc` says which Procfile process wrote the line.
 * `pretty` (LOG_FORMAT=pretty, which npm start sets when it writes to a
 * terminal): coloured, human lines through pino-pretty, a development
 * dependency; without it installed, JSON lines all the same.
 */
export function createLogger(level: string, proc: string, pretty = false): Logger {
  return pino({
    ...(pretty && prettyAvailable() ? { transport: { target: 'pino-pretty', options: { colorize: true, translateTime: 'SYS:HH:MM:ss', ignore: 'pid,hostname,proc', singleLine: true } } } : {}),
    level,
    base: { proc, pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
    serializers: { err: serializeError, error: serializeError },
    redact: { paths: ['password', '*.password', 'config.ADMIN_PASSWORD', 'config.METRICS_TOKEN', 'headers.authorization', '*.headers.authorization'], censor: '***' },
  });
}

function prettyAvailable(): boolean {
  try {
    import.meta.resolve('pino-pretty');
    return true;
  } catch {
    return false;
  }
}
