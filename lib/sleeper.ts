import { setTimeout as delay } from 'node:timers/promises';

/**
 * Sleeps that can be cut short: wake() ends the current sleeps (new work
 * arrived), stop() ends them and every later one at once (the process is
 * stopping). The loops (lib/loop.ts) and the projector's retries wait on one
 * of these, so a SIGTERM never waits out a backoff.
 */
export class Sleeper {
  private controller = new AbortController();
  stopped = false;

  async sleep(ms: number): Promise<void> {
    if (this.stopped) return;
    await delay(ms, undefined, { signal: this.controller.signal }).catch(() => undefined);
  }

  wake(): void {
    this.controller.abort();
    this.controller = new AbortController();
  }

  stop(): void {
    this.stopped = true;
    this.wake();
  }
}
