import type { Logger } from './logger.js';
import { Sleeper } from './sleeper.js';

export interface LoopOptions {
  /** For logs. */
  name: string;
  log: Logger;
  /** Sleep between rounds when nothing woke the loop (a poll: the backstop for lost wake-ups). */
  intervalMs: number;
  /** One round of work; true when there is more to do at once (no sleep). */
  work: () => Promise<boolean>;
  /** Called after each failed round, with the number of failures in a row (the loop backs off, capped at 5 s). */
  onError?: (err: unknown, failures: number) => void;
}

/**
 * A background loop of one kind of work, in the shape of pg-boss's worker and
 * graphile-worker's doNext/nudge: run a round, then sleep until notify() or
 * intervalMs; a round that says there is more runs again at once; a failed
 * round backs off (capped) and is logged once per outage, not per retry.
 * One round at a time: a notify() during a round makes the next one start
 * right after it. stop() ends any sleep and waits for the round in hand. The
 * relay, the reconciler, pruning and the read-your-writes check all run on one.
 */
export class Loop {
  private readonly sleeper = new Sleeper();
  private woken = false;
  private done: Promise<void> | undefined;

  constructor(private readonly opts: LoopOptions) {}

  start(): this {
    this.done ??= this.run();
    return this;
  }

  /** Cut the current sleep short, or have the next round start right after the current one. */
  notify(): void {
    this.woken = true;
    this.sleeper.wake();
  }

  async stop(): Promise<void> {
    this.sleeper.stop();
    await this.done;
  }

  get stopped(): boolean {
    return this.sleeper.stopped;
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.sleeper.stopped) {
      this.woken = false;
      try {
        const more = await this.opts.work();
        failures = 0;
        if (more) continue;
      } catch (err) {
        failures++;
        if (this.opts.onError) this.opts.onError(err, failures);
        else if (failures === 1 || failures % 20 === 0) this.opts.log.warn({ err: (err as Error).message, failures, loop: this.opts.name }, 'round failed; retrying');
        await this.sleeper.sleep(Math.min(100 * 2 ** failures, 5000));
        continue;
      }
      if (!this.woken) await this.sleeper.sleep(this.opts.intervalMs);
    }
  }
}
