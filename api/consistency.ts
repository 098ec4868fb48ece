import type { Subscriber } from 'pg-listen';
import { createListener } from '../lib/listen.js';
import type { Pool } from '../db/pool.js';
import type { Logger } from '../lib/logger.js';
import { APPLIED_CHANNEL } from '../lib/channels.js';

const FALLBACK_POLL_MS = 200;

interface Waiter {
  token: string;
  resolve: (applied: boolean) => void;
  timer: NodeJS.Timeout;
}

/**
 * Read-your-writes: waits until an event id (the X-Consistency-Token) is in
 * processed_events. All waiting requests share one check, run when the
 * projector signals a committed batch (LISTEN on read_db) and at most every
 * 200 ms otherwise, so many waiters cost one indexed query per batch, never a
 * loop per request.
 */
export class ConsistencyWaiter {
  private waiters = new Set<Waiter>();
  private subscriber: Subscriber | undefined;
  private poll: NodeJS.Timeout | undefined;
  private checking: Promise<void> | undefined;
  private again = false;

  constructor(
    private readonly readPool: Pool,
    private readonly readUrl: string,
    private readonly log: Logger,
  ) {}

  async start(): Promise<void> {
    this.subscriber = createListener(this.readUrl, 'web-consistency', this.log, 10_000);
    this.subscriber.notifications.on(APPLIED_CHANNEL, () => this.check());
    try {
      await this.subscriber.connect();
      await this.subscriber.listenTo(APPLIED_CHANNEL);
    } catch (err) {
      // The fallback poll still answers waiters; pg-listen keeps trying to reconnect.
      this.log.warn({ err: (err as Error).message }, 'consistency LISTEN unavailable; polling');
    }
  }

  async stop(): Promise<void> {
    for (const w of this.waiters) {
      clearTimeout(w.timer);
      w.resolve(false);
    }
    this.waiters.clear();
    clearInterval(this.poll);
    await this.subscriber?.close().catch(() => undefined);
  }

  /** Resolves true once the event is applied, false after timeoutMs. */
  async wait(token: string, timeoutMs: number): Promise<boolean> {
    if (await this.isApplied([token]).then((s) => s.has(token))) return true;
    return new Promise<boolean>((resolve) => {
      const waiter: Waiter = {
        token,
        resolve,
        timer: setTimeout(() => {
          this.waiters.delete(waiter);
          resolve(false);
        }, timeoutMs),
      };
      this.waiters.add(waiter);
      this.poll ??= setInterval(() => this.check(), FALLBACK_POLL_MS);
    });
  }

  private check(): void {
    if (this.waiters.size === 0) return;
    if (this.checking) {
      this.again = true;
      return;
    }
    this.checking = this.runCheck().finally(() => {
      this.checking = undefined;
      if (this.again) {
        this.again = false;
        this.check();
      }
    });
  }

  private async runCheck(): Promise<void> {
    const tokens = [...new Set([...this.waiters].map((w) => w.token))];
    let applied: Set<string>;
    try {
      applied = await this.isApplied(tokens);
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'consistency check failed');
      return;
    }
    for (const w of [...this.waiters]) {
      if (!applied.has(w.token)) continue;
      clearTimeout(w.timer);
      this.waiters.delete(w);
      w.resolve(true);
    }
    if (this.waiters.size === 0) {
      clearInterval(this.poll);
      this.poll = undefined;
    }
  }

  private async isApplied(tokens: string[]): Promise<Set<string>> {
    const { rows } = await this.readPool.query<{ event_id: string }>(
      'SELECT event_id FROM processed_events WHERE event_id = ANY ($1::text[])',
      [tokens],
    );
    return new Set(rows.map((r) => r.event_id));
  }
}
