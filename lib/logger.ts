import { pino, type Logger } from 'pino';

export type { Logger };

/** JSON lines on stdout; `proc` says which Procfile process wrote the line. */
export function createLogger(level: string, proc: string): Logger {
  return pino({
    level,
    base: { proc, pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  });
}
