import pgListen, { type Subscriber } from 'pg-listen';
import type { Logger } from './logger.js';

/**
 * A LISTEN connection of its own (never a pool's) for wake-up channels: a
 * trivial query every `checkMs` detects a dead or half-open socket, and it
 * reconnects forever with capped backoff (pg-listen's default gives up after
 * 3 s; retryTimeout 0 disables that). Payloads are empty strings, not JSON.
 */
export function createListener(url: string, applicationName: string, log: Logger, checkMs: number): Subscriber {
  const subscriber = pgListen.default(
    { connectionString: url, application_name: applicationName },
    { paranoidChecking: checkMs, retryTimeout: 0, retryInterval: (attempt: number) => Math.min(100 * 2 ** attempt, 5000), parse: (s: string) => s },
  );
  subscriber.events.on('reconnect', (attempt) => log.warn({ attempt, listener: applicationName }, 'LISTEN connection lost; reconnecting'));
  subscriber.events.on('error', (err) => log.error({ err: err.message, listener: applicationName }, 'LISTEN connection error'));
  return subscriber;
}
