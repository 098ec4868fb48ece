import { listen, type Listener } from '../../lib/listen.js';
import type { Queue } from 'bullmq';
import type { Config } from '../../lib/config.js';
import type { Logger } from '../../lib/logger.js';
import { toJob, type EventJobData } from '../../lib/queue.js';
import { CHANNELS } from '../../lib/contract.js';
import { z } from 'zod';
import { sql, type Db } from '../../db/pool.js';
import { Loop } from '../../lib/loop.js';
import { startPublish } from '../../lib/tracing.js';


const outboxRow = z.object({ id: z.number(), topic: z.string(), payload: z.unknown(), created_at: z.string(), traceparent: z.string().nullable() });

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
    const rows = await tx.any(sql.type(outboxRow)`SELECT id, topic, payload, created_at, traceparent FROM claim_outbox(${config.RELAY_BATCH_SIZE})`);
    if (rows.length === 0) return 0;
    const sorted = [...rows].sort((x, y) => x.id - y.id); // UPDATE … RETURNING has no order; enqueue oldest first
    const publish = startPublish(config.QUEUE_NAME, sorted); // tracing: a batch span, one publish span per event (no-op when off)
    await publish.run(() => queue.addBulk(sorted.map((r, i) => toJob(config, r, publish.traceparent(i)))));
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
  private readonly loop: Loop;

  constructor(
    private readonly db: Db,
    private readonly queue: Queue<EventJobData>,
    private readonly config: Config,
    private readonly log: Logger,
    private readonly onBatch: (n: number) => void = () => undefined,
  ) {
    this.loop = new Loop({
      name: 'relay',
      log,
      intervalMs: config.RELAY_POLL_MS,
      work: async () => {
        const n = await relayBatch(this.db, this.queue, this.config);
        if (n > 0) this.onBatch(n);
        return n === this.config.RELAY_BATCH_SIZE; // more waiting: no sleep
      },
      onError: (err, failures) => {
        if (failures === 1 || failures % 20 === 0) this.log.warn({ err: (err as Error).message, failures }, 'relay batch failed; nothing was marked published; retrying');
      },
    });
  }

  start(): void {
    this.listener = listen({
      url: this.config.DATABASE_URL,
      name: 'relay-listen',
      channel: CHANNELS.outbox,
      log: this.log,
      checkMs: this.config.LISTEN_CHECK_MS,
      onNotify: () => this.loop.notify(),
      // Catch up on whatever was written while we were not listening.
      onConnect: () => this.loop.notify(),
    });
    this.loop.start();
  }

  /** Cut the current sleep short. */
  notify(): void {
    this.loop.notify();
  }

  async stop(): Promise<void> {
    await this.loop.stop();
    await this.listener?.close();
  }
}
