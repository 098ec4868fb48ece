import { jobIdFor, toJob, type EventQueues } from '../lib/queue.js';
import { listDeadLetters, parkDeadLetter, prepareReplay, type ParkResult } from '../db/dead-letters.js';
import type { Db } from '../db/pool.js';
import type { Config } from '../lib/config.js';

/**
 * An operator's two decisions about an event that failed for good (a dead
 * letter, see db/dead-letters.ts), shared by `npm run events` and the admin
 * API: replay it (after a fix) or park it (never apply it).
 */

export interface Ops {
  readDb: Db;
  queues: EventQueues;
  config: Pick<Config, 'JOB_ATTEMPTS' | 'JOB_BACKOFF_MS'>;
}

export type ReplayResult = 'retried' | 'requeued' | 'in_queue' | 'not_found' | 'below_floor' | 'already_applied';

/**
 * Send an event back to the workers: unpark it if parked, then retry its job
 * in the failed set, or enqueue it again if Redis no longer has it. It stays a
 * dead letter until a worker applies it (or it fails again).
 */
export async function replayDeadLetter({ readDb, queues, config }: Ops, eventId: string): Promise<ReplayResult> {
  const queue = queues.of(eventId);
  const job = await queue.getJob(jobIdFor(eventId));
  const check = await prepareReplay(readDb, eventId);
  if (!check.ok) {
    // A job that failed before its dead letter could be recorded.
    if (check.why === 'not_found' && job && (await job.isFailed())) {
      await job.retry('failed');
      return 'retried';
    }
    return check.why === 'processed' ? 'already_applied' : check.why;
  }
  if (job && (await job.isFailed())) {
    await job.retry('failed');
    return 'retried';
  }
  if (job && !(await job.isCompleted())) return 'in_queue';
  // Gone from Redis, or a completed job of an earlier delivery (BullMQ would ignore an add under its id).
  await job?.remove();
  const dl = check.letter;
  const j = toJob(config, { id: eventId, topic: dl.topic, payload: dl.payload, created_at: dl.failed_at });
  await queue.add(j.name, j.data, j.opts);
  return 'requeued';
}

/** Every dead letter waiting for a decision, plus any job in BullMQ's failed set. */
export async function replayAllFailed(ops: Ops): Promise<number> {
  const { readDb, queues } = ops;
  let n = 0;
  for (const dl of await listDeadLetters(readDb, 'failed', 100_000)) {
    const r = await replayDeadLetter(ops, dl.event_id);
    if (r === 'retried' || r === 'requeued') n++;
  }
  let failed = 0;
  for (const queue of queues.all) {
    const { failed: f = 0 } = await queue.getJobCounts('failed');
    if (f > 0) await queue.retryJobs({ state: 'failed', count: 1000 });
    failed += f;
  }
  return n + failed;
}

/** Park an event: recorded with its reason in read_db, and its job leaves the failed set (a worker would skip it anyway). */
export async function parkEvent({ readDb, queues }: Ops, eventId: string, reason: string): Promise<ParkResult> {
  const r = await parkDeadLetter(readDb, eventId, reason);
  if (r === 'parked') {
    const job = await queues.of(eventId).getJob(jobIdFor(eventId));
    if (job && (await job.isFailed())) await job.remove();
  }
  return r;
}
