import { listen, type Listener } from '../../lib/listen.js';
import type { Queue } from 'bullmq';
import type { Config } from '../../lib/config.js';
import type { Logger } from '../../lib/logger.js';
import { toJob, type EventJobData } from '../../lib/queue.js';
import { CHANNELS } from '../../lib/contract.js';
import { z } from 'zod';
import { sql, type Db } from '../../db/pool.js';
import { Sleeper } from '../../lib/sleeper.js';


const outboxRow = z.object({ id: z.number(), topic: z.string(), payload: z.unknown(), created_at: z.string() });

/**
 * Move one batch of unpublished outbox rows to the queue. claim_outbox()
 * locks the oldest rows no other relay holds (SKIP LOCKED) and marks them
 * published, in a transaction that commits only once the jobs are in Redis:
 * if Redis refuses, the rollback unmarks them, and if we die after addBulk
 * but before COMMIT they are enqueued again under the same job ids, which
 * BullMQ and then processed_events deduplicate.
 *
 * No cursor is kept: each claim looks for published_at IS NULL from the
 * lowest id, so a row whose transaction commits late is never skipped.
 */
export async function relayBatch(db: Db, queue: Queue<EventJobData>, config: Config): Promise<number> {
  return db.transaction(async (tx) => {
    const rows = await tx.any(sql.type(outboxRow)`SELECT id, topic, payload, created_at FROM claim_outbox(${config.RELAY_BATCH_SIZE})`);
    if (rows.length === 0) return 0;
    const sorted = [...rows].sort((x, y) => x.id - y.id); // UPDATE … RETURNING has no order; enqueue oldest first
    await queue.addBulk(sorted.map((r) => toJob(config, r)));
    return rows.length;
  });
}

/**
 * The relay loop: a notification or the poll timer wakes it; it drains the
 * outbox batch by batch and sleeps again. LISTEN runs on its own connection
 * (pg-listen), checked every few seconds, and reconnects forever; a
 * reconnect triggers a catch-up pass, and the poll covers anything missed.
 */
export class Relay {
  private listener: Listener | undefined;
  private readonly sleeper = new Sleeper();
  private woken = false;
  private loopDone: Promise<void> | undefined;
  relayed = 0;

  constructor(
    private readonly db: Db,
    private readonly queue: Queue<EventJobData>,
    private readonly config: Config,
    private readonly log: Logger,
    private readonly onBatch: (n: number) => void = () => undefined,
  ) {}

  async start(): Promise<void> {
    this.listener = listen({
      url: this.config.DATABASE_URL,
      name: 'relay-listen',
      channel: CHANNELS.outbox,
      log: this.log,
      checkMs: 5000,
      onNotify: () => this.notify(),
      // Catch up on whatever was written while we were not listening.
      onConnect: () => this.notify(),
    });
    this.loopDone = this.loop();
  }

  /** Cut the current sleep short. */
  notify(): void {
    this.woken = true;
    this.sleeper.wake();
  }

  async stop(): Promise<void> {
    this.sleeper.stop();
    await this.loopDone;
    await this.listener?.close();
  }

  private async loop(): Promise<void> {
    let failures = 0;
    while (!this.sleeper.stopped) {
      this.woken = false;
      try {
        const n = await relayBatch(this.db, this.queue, this.config);
        failures = 0;
        if (n > 0) {
          this.relayed += n;
          this.onBatch(n);
          this.log.debug({ events: n }, 'relayed');
          if (n === this.config.RELAY_BATCH_SIZE) continue; // more waiting: no sleep
        }
      } catch (err) {
        failures++;
        // One line per outage, not one per retry.
        if (failures === 1 || failures % 20 === 0) this.log.warn({ err: (err as Error).message, failures }, 'relay batch failed; nothing was marked published; retrying');
        await this.sleeper.sleep(Math.min(100 * 2 ** failures, 5000));
        continue;
      }
      if (!this.woken) await this.sleeper.sleep(this.config.RELAY_POLL_MS);
    }
  }
}
