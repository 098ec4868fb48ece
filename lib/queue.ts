import { Queue, type ConnectionOptions, type JobsOptions } from 'bullmq';
import type { Config } from './config.js';
import { jobIdFor, type EventJobData } from './contract.js';
import { bullmqTelemetry } from './tracing.js';

export { jobIdFor, type EventJobData } from './contract.js';

export function jobOptions(config: Pick<Config, 'JOB_ATTEMPTS' | 'JOB_BACKOFF_MS'>, eventId: string | number): JobsOptions {
  return {
    jobId: jobIdFor(eventId),
    attempts: config.JOB_ATTEMPTS,
    backoff: { type: 'exponential', delay: config.JOB_BACKOFF_MS },
    // Completed jobs are only kept for a look in Bull Board: exactly-once rests
    // on processed_events, not on BullMQ remembering ids.
    removeOnComplete: { count: 1000 },
    // Failed jobs stay until someone replays them (npm run replay-failed).
    removeOnFail: false,
  };
}

export function createQueue(config: Config, connection: ConnectionOptions): Queue<EventJobData> {
  return new Queue<EventJobData>(config.QUEUE_NAME, { connection, prefix: config.QUEUE_PREFIX, telemetry: bullmqTelemetry() });
}

export function toJob(config: Pick<Config, 'JOB_ATTEMPTS' | 'JOB_BACKOFF_MS'>, row: { id: number | string; topic: string; payload: unknown; created_at: string }, traceparent?: string) {
  const data: EventJobData = { event_id: String(row.id), topic: row.topic, payload: row.payload, created_at: row.created_at };
  if (traceparent !== undefined) data.traceparent = traceparent; // tracing: the worker continues the event's trace
  return { name: row.topic, data, opts: jobOptions(config, row.id) };
}
