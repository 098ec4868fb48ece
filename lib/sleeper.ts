/**
 * Sleeps that can be cut short: wake() ends the current sleeps (new work
 * arrived), stop() ends them and every later one at once (the process is
 * stopping). The relay loop, the reconciler and the projector's retries wait
 * on one of these, so a SIGTERM never waits out a backoff.
 */
export class Sleeper {
  private wakers = new Set<() => void>();
  stopped = false;

  sleep(ms: number): Promise<void> {
    if (this.stopped) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.wakers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wakers.add(done);
    });
  }

  wake(): void {
    for (const w of [...this.wakers]) w();
  }

  stop(): void {
    this.stopped = true;
    this.wake();
  }
}
