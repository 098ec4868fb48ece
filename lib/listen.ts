import pgListen, { type Subscriber } from 'pg-listen';
import type { Logger } from './logger.js';
import { Sleeper } from './sleeper.js';

export interface Listener {
  close(): Promise<void>;
}

/**
 * LISTEN on a wake-up channel (payloads are hints at most, never data), on a
 * connection of its own (never a pool's), for as long as the process runs.
 * pg-listen checks the connection every `checkMs` (a dead or half-open socket
 * is noticed) and reconnects forever once connected (its default gives up
 * after 3 s; retryTimeout 0 disables that). Its first connect is not retried,
 * and a client that failed to connect cannot be used again: so until the first
 * connect succeeds, each attempt gets a fresh subscriber, with capped backoff.
 * `onConnect` runs on every (re)connect, so the caller can catch up on what it
 * missed while not listening.
 */
export function listen(opts: {
  url: string;
  name: string;
  channel: string;
  log: Logger;
  checkMs: number;
  /** The notification's payload (a hint at most: see each channel's writer). */
  onNotify: (payload: string) => void;
  onConnect?: () => void;
}): Listener {
  const sleeper = new Sleeper();
  let current: Subscriber | undefined;
  const make = (): Subscriber => {
    const s = pgListen.default(
      { connectionString: opts.url, application_name: opts.name },
      { paranoidChecking: opts.checkMs, retryTimeout: 0, retryInterval: (attempt: number) => Math.min(100 * 2 ** attempt, 5000), parse: (x: string) => x },
    );
    s.events.on('reconnect', (attempt) => opts.log.warn({ attempt, listener: opts.name }, 'LISTEN connection lost; reconnecting'));
    s.events.on('error', (err) => opts.log.warn({ err: err.message, listener: opts.name }, 'LISTEN connection error'));
    s.events.on('connected', () => {
      opts.log.info({ listener: opts.name }, `listening for ${opts.channel} notifications`);
      opts.onConnect?.();
    });
    s.notifications.on(opts.channel, (payload: unknown) => opts.onNotify(typeof payload === 'string' ? payload : ''));
    return s;
  };
  const connecting = (async () => {
    for (let attempt = 0; !sleeper.stopped; attempt++) {
      const s = make();
      current = s;
      try {
        await s.connect();
        await s.listenTo(opts.channel);
        return;
      } catch (err) {
        await s.close().catch(() => undefined);
        if (attempt === 0 || attempt % 10 === 0) opts.log.warn({ err: (err as Error).message, attempt, listener: opts.name }, 'LISTEN connect failed; polling meanwhile');
        await sleeper.sleep(Math.min(200 * 2 ** attempt, 5000));
      }
    }
  })();
  return {
    async close() {
      sleeper.stop();
      await connecting;
      await current?.close().catch(() => undefined);
    },
  };
}
