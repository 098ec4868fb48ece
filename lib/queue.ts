import { Queue, type ConnectionOptions, type Job, type JobsOptions } from 'bullmq';
import type { Config } from './config.js';
import { jobIdFor, jobIdForEvents, type EventJobData, type JobData } from './contract.js';
import { bullmqTelemetry } from './tracing.js';

export { jobIdFor, jobIdForEvents, isMultiEvent, type EventJobData, type EventsJobData, type JobData } from './contract.js';

export type EventQueue = Queue<JobData>;

export function jobOptions(config: Pick<Config, 'JOB_ATTEMPTS' | 'JOB_BACKOFF_MS'>, jobId: string): JobsOptions {
  return {
    jobId,
    attempts: config.JOB_ATTEMPTS,
    backoff: { type: 'exponential', delay: config.JOB_BACKOFF_MS },
    // Completed jobs are only kept for a look in Bull Board: exactly-once rests
    // on processed_events, not on BullMQ remembering ids.
    removeOnComplete: { count: 1000 },
    // Failed jobs stay until someone replays them (npm run replay-failed).
    removeOnFail: false,
  };
}

/**
 * The queues' names, one per partition. One partition: QUEUE_NAME (today's
 * layout). Several: QUEUE_NAME-0, -1, … each in a hash tag of its own
 * ({order-events-0}), so every key of one queue hashes to one slot and a
 * Redis Cluster spreads the partitions over its masters.
 */
export function queueNames(config: Pick<Config, 'QUEUE_NAME' | 'QUEUE_PARTITIONS'>): string[] {
  const n = config.QUEUE_PARTITIONS;
  if (n === 1) return [config.QUEUE_NAME];
  return Array.from({ length: n }, (_, p) => {
    // The tag is chosen so that partition p hashes into the p-th n-th of the
    // slot space: on a cluster whose masters split the slots evenly (as
    // `redis-cli --cluster create` does), n partitions over n masters land
    // one on each, not where CRC16 happens to put consecutive names.
    const lo = Math.ceil((p * SLOTS) / n);
    const hi = Math.ceil(((p + 1) * SLOTS) / n);
    for (let k = 0; ; k++) {
      const tag = k === 0 ? `${config.QUEUE_NAME}-${p}` : `${config.QUEUE_NAME}-${p}-${k}`;
      const slot = keySlot(tag);
      if (slot >= lo && slot < hi) return `{${tag}}`;
    }
  });
}

const SLOTS = 16384;

/** Redis Cluster's hash slot of a hash tag: CRC16 (XMODEM) modulo 16384. */
export function keySlot(tag: string): number {
  let crc = 0;
  for (const byte of Buffer.from(tag)) {
    crc ^= byte << 8;
    for (let i = 0; i < 8; i++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc % SLOTS;
}

/** The partition of an event: its id modulo QUEUE_PARTITIONS, the same in the relay, the reconciler and a replay. */
export function partitionOf(config: Pick<Config, 'QUEUE_PARTITIONS'>, eventId: string | number): number {
  return config.QUEUE_PARTITIONS === 1 ? 0 : Number(BigInt(eventId) % BigInt(config.QUEUE_PARTITIONS));
}

/** Every partition's queue, on one connection (a Cluster routes each queue's commands to its master). */
export class EventQueues {
  readonly all: EventQueue[];

  constructor(
    private readonly config: Pick<Config, 'QUEUE_NAME' | 'QUEUE_PARTITIONS' | 'QUEUE_PREFIX'>,
    connection: ConnectionOptions,
  ) {
    this.all = queueNames(config).map((name) => new Queue<JobData>(name, { connection, prefix: config.QUEUE_PREFIX, telemetry: bullmqTelemetry() }));
  }

  /** The queue an event goes to. */
  of(eventId: string | number): EventQueue {
    return this.all[partitionOf(this.config, eventId)]!;
  }

  /** Events grouped by the queue they go to (partitions without events left out). */
  split<T>(items: readonly T[], idOf: (item: T) => string | number): [EventQueue, T[]][] {
    const by = new Map<EventQueue, T[]>();
    for (const item of items) {
      const q = this.of(idOf(item));
      let list = by.get(q);
      if (!list) by.set(q, (list = []));
      list.push(item);
    }
    return [...by];
  }

  /** Job counts summed over the partitions. */
  async counts(...types: Parameters<EventQueue['getJobCounts']>): Promise<Record<string, number>> {
    const each = await Promise.all(this.all.map((q) => q.getJobCounts(...types)));
    const sum: Record<string, number> = {};
    for (const c of each) for (const [k, v] of Object.entries(c)) sum[k] = (sum[k] ?? 0) + v;
    return sum;
  }

  on(event: 'error', listener: (err: Error) => void): void {
    for (const q of this.all) q.on(event, listener);
  }

  async waitUntilReady(): Promise<void> {
    await Promise.all(this.all.map((q) => q.waitUntilReady()));
  }

  async close(): Promise<void> {
    await Promise.all(this.all.map((q) => q.close()));
  }
}

export function createQueues(config: Config, connection: ConnectionOptions): EventQueues {
  return new EventQueues(config, connection);
}

/** The first partition's queue: what tests and tools that only know one queue use when QUEUE_PARTITIONS is 1. */
export function createQueue(config: Config, connection: ConnectionOptions): EventQueue {
  return new Queue<JobData>(queueNames(config)[0]!, { connection, prefix: config.QUEUE_PREFIX, telemetry: bullmqTelemetry() });
}

export interface OutboxEvent {
  id: number | string;
  topic: string;
  payload: unknown;
  created_at: string;
}

function eventData(row: OutboxEvent, traceparent?: string): EventJobData {
  const data: EventJobData = { event_id: String(row.id), topic: row.topic, payload: row.payload, created_at: row.created_at };
  if (traceparent !== undefined) data.traceparent = traceparent; // tracing: the worker continues the event's trace
  return data;
}

/** A job carrying one event, under the event's own job id. */
export function toJob(config: Pick<Config, 'JOB_ATTEMPTS' | 'JOB_BACKOFF_MS'>, row: OutboxEvent, traceparent?: string) {
  const data = eventData(row, traceparent);
  return { name: row.topic, data: data as JobData, opts: jobOptions(config, jobIdFor(row.id)) };
}

/**
 * Jobs for a relay batch (rows in id order): up to RELAY_JOB_EVENTS events a
 * job. A job of one event is an ordinary single-event job. `traceparentOf`
 * gives the traceparent of the job of rows [from, to), if any (tracing: see
 * PublishSpans); the events of a several-event job carry none.
 */
export function toJobs(config: Pick<Config, 'JOB_ATTEMPTS' | 'JOB_BACKOFF_MS' | 'RELAY_JOB_EVENTS'>, rows: readonly OutboxEvent[], traceparentOf: (from: number, to: number) => string | undefined = () => undefined) {
  const jobs = [];
  for (let i = 0; i < rows.length; i += config.RELAY_JOB_EVENTS) {
    const chunk = rows.slice(i, i + config.RELAY_JOB_EVENTS);
    const traceparent = traceparentOf(i, i + chunk.length);
    if (chunk.length === 1) {
      jobs.push(toJob(config, chunk[0]!, traceparent));
      continue;
    }
    // Tracing: the job is the message, with one traceparent (one per event made a job about 15 % larger,
    // 70 bytes on about 460 an event, which the worker paid for; docs/operations.md, Tracing).
    const events = chunk.map((row) => eventData(row));
    const jobId = jobIdForEvents(events.map((e) => e.event_id));
    const data: JobData = { events };
    if (traceparent !== undefined) data.traceparent = traceparent;
    jobs.push({ name: 'events', data, opts: jobOptions(config, jobId) });
  }
  return jobs;
}

/**
 * The Redis hash (in the queue's hash slot) that maps an event id to the
 * job carrying it when that job carries several: the reconciler's way to
 * tell whether Redis still holds an event. The relay writes the fields with
 * the jobs; the reconciler deletes them once the events are resolved.
 */
export function eventIndexKey(queue: EventQueue): string {
  return queue.toKey('event-jobs');
}

/** The job carrying an event: its own, or the several-event job the relay's index names; undefined when Redis has neither. */
export async function findEventJob(queue: EventQueue | EventQueues, redis: { hget(key: string, field: string): Promise<string | null> }, eventId: string | number): Promise<Job<JobData> | undefined> {
  if (queue instanceof EventQueues) queue = queue.of(eventId);
  const own = await queue.getJob(jobIdFor(eventId));
  if (own) return own;
  const carrier = await redis.hget(eventIndexKey(queue), String(eventId));
  return carrier ? ((await queue.getJob(carrier)) ?? undefined) : undefined;
}
